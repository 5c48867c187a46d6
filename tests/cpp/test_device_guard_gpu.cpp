// Devices on the GPU: DeviceGuard makes a device current and gives the caller's back; a stream's device is read,
// also while the stream captures, without breaking the capture; KVCache and DecodeContext record their device and
// refuse tensors stated on another one. With two GPUs or more: objects built on one device run there when called
// from a thread whose current device is the other, and refuse that device's memory and streams.
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/decode_context.hpp"
#include "clusterfusion/device_guard.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "cuda_device.hpp"
#include "random_inputs.hpp"
#include "random_model.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

int device_count() {
  int count = 0;
  CF_CUDA_CHECK(cudaGetDeviceCount(&count));
  return count;
}

#define CF_REQUIRE_TWO_DEVICES()                                                     \
  do {                                                                               \
    CF_REQUIRE_HOPPER();                                                             \
    if (device_count() < 2) GTEST_SKIP() << "needs two CUDA devices";               \
  } while (0)

cf::ModelConfig small_config() {
  cf::ModelConfig c = cf::model_config("pythia-70m");
  c.layers = 2;
  c.vocab = 5003;
  return c;
}

std::string on_other(const std::string& name, int other, int device, const char* owner) {
  return name + ": on cuda:" + std::to_string(other) + ", the " + owner + " is on cuda:" + std::to_string(device);
}

// A stream of `device`, destroyed with the test.
struct Stream {
  cudaStream_t stream = nullptr;
  explicit Stream(int device) {
    const cf::DeviceGuard on(device);
    CF_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
  ~Stream() { cudaStreamDestroy(stream); }
};

}  // namespace

TEST(DeviceGuardGpu, GivesTheCallersDeviceBack) {
  CF_REQUIRE_CUDA_DEVICE();
  const int before = cf::current_device(), count = device_count();
  {
    const cf::DeviceGuard on(before);
    EXPECT_EQ(cf::current_device(), before);
  }
  EXPECT_EQ(cf::current_device(), before);
  // No such device: the throwing guard says so; the nothrow one (for destructors) changes nothing and leaves no
  // error behind.
  EXPECT_THROW(cf::DeviceGuard{count}, cf::CudaError);
  {
    const cf::DeviceGuard on(count, std::nothrow);
    EXPECT_EQ(cf::current_device(), before);
  }
  EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);
  if (count >= 2) {
    const int other = (before + 1) % count;
    {
      const cf::DeviceGuard on(other);
      EXPECT_EQ(cf::current_device(), other);
    }
    EXPECT_EQ(cf::current_device(), before);
  }
}

TEST(StreamDeviceGpu, DefaultAndCreatedStreamsAlsoWhileCapturing) {
  CF_REQUIRE_CUDA_DEVICE();
  const int device = cf::current_device();
  for (cudaStream_t s : {cudaStream_t{nullptr}, cudaStreamLegacy, cudaStreamPerThread})
    EXPECT_EQ(cf::stream_device(s), device);
  const Stream created(device);
  EXPECT_EQ(cf::stream_device(created.stream), device);
  // Asked while the stream captures, in each capture mode (torch captures in global mode), the capture survives.
  for (const cudaStreamCaptureMode mode :
       {cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal, cudaStreamCaptureModeRelaxed}) {
    SCOPED_TRACE(int(mode));
    CF_CUDA_CHECK(cudaStreamBeginCapture(created.stream, mode));
    EXPECT_EQ(cf::stream_device(created.stream), device);
    EXPECT_NO_THROW(cf::check_stream_device(created.stream, device, "layer"));
    cudaGraph_t graph = nullptr;
    EXPECT_EQ(cudaStreamEndCapture(created.stream, &graph), cudaSuccess);
    EXPECT_NE(graph, nullptr);
    if (graph) cudaGraphDestroy(graph);
  }
}

TEST(KVCacheDeviceGpu, RecordsTheCurrentDevice) {
  CF_REQUIRE_HOPPER();
  cf::KVCache cache(small_config(), 16);
  EXPECT_EQ(cache.device(), cf::current_device());
  cf::KVCache moved(std::move(cache));
  EXPECT_EQ(moved.device(), cf::current_device());
  EXPECT_EQ(cache.device(), -1);
}

TEST(DecodeContextDevicesGpu, RefusesTensorsStatedOnAnotherDeviceByName) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = small_config();
  const cf_test::RandomModel model(config, cf_test::rng());
  const int device = cf::current_device(), other = device + 1;

  cf::ModelWeights weights = model.weights;
  const int layer = cf_test::uniform_int(0, config.layers - 1);
  weights.layers[layer][cf::LayerSlot::w_up].device = other;
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { cf::DecodeContext(config, weights, 32); }),
            on_other("layers[" + std::to_string(layer) + "].w_up", other, device, "context"));
  weights = model.weights;
  weights[cf::ModelSlot::lm_head].device = other;
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { cf::DecodeContext(config, weights, 32); }),
            on_other("lm_head", other, device, "context"));

  cf::DecodeContext ctx(config, model.weights, 32);
  EXPECT_EQ(ctx.device(), device);
  ctx.prefill({1, 2, 3});
  cf_test::DeviceBuffer<__half> kv(std::size_t(config.kv_heads) * 2 * config.head_dim);
  const cf::TensorView here(kv.dev, {1, config.kv_heads, 2, config.head_dim}, cf::DType::Float16, device);
  const cf::TensorView there(kv.dev, {1, config.kv_heads, 2, config.head_dim}, cf::DType::Float16, other);
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { ctx.load_prefix({here, here}, {here, there}); }),
            on_other("values[1]", other, device, "context"));
  EXPECT_EQ(ctx.position(), 3);
  EXPECT_NO_THROW(ctx.load_prefix({here, here}, {here, here}));
  EXPECT_EQ(ctx.position(), 2);
}

TEST(DecodeContextDevicesGpu, RunsOnItsDeviceWhateverTheCallersIs) {
  CF_REQUIRE_TWO_DEVICES();
  const cf::ModelConfig config = small_config();
  const std::vector<int> prompt{cf_test::uniform_int(0, config.vocab - 1), cf_test::uniform_int(0, config.vocab - 1)};
  const cf::DeviceGuard on_first(0);
  const cf_test::RandomModel model(config, cf_test::rng());
  cf::DecodeContext ctx(config, model.weights, 32), control(config, model.weights, 32);
  std::vector<int> expected{control.prefill(prompt)};
  for (int i = 0; i < 4; ++i) expected.push_back(control.step());

  CF_CUDA_CHECK(cudaSetDevice(1));
  std::vector<int> got{ctx.prefill(prompt)};
  for (int i = 0; i < 4; ++i) got.push_back(ctx.step());
  EXPECT_EQ(got, expected);
  EXPECT_EQ(cf::current_device(), 1);  // the caller's device is given back
  ctx.reset();
  ctx.set_sampling(cf::SamplingParams{0.7f, 0, 1.0f, 5});
  EXPECT_NO_THROW(ctx.step(prompt[0]));
  EXPECT_EQ(ctx.tokens(0, 1), std::vector<int>{prompt[0]});
  EXPECT_EQ(cf::current_device(), 1);
}

TEST(DecodeContextDevicesGpu, RefusesMemoryAndStreamsOfAnotherDevice) {
  CF_REQUIRE_TWO_DEVICES();
  const cf::ModelConfig config = small_config();
  const cf::DeviceGuard on_first(0);
  const cf_test::RandomModel here(config, cf_test::rng());
  {
    // Unstated devices (plain C++ pointers): CUDA says where the memory is. Model tensors are checked first.
    const cf::DeviceGuard on_second(1);
    const cf_test::RandomModel there(config, cf_test::rng());
    const cf::DeviceGuard back(0);
    EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { cf::DecodeContext(config, there.weights, 32); }),
              on_other("embed_in", 1, 0, "context"));
    cf::ModelWeights mixed = here.weights;
    mixed.layers[1] = there.weights.layers[1];
    EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { cf::DecodeContext(config, mixed, 32); }),
              on_other("layers[1].ln1_weight", 1, 0, "context"));
  }
  const Stream second(1);
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>(
                [&] { cf::DecodeContext(config, here.weights, 32, std::nullopt, second.stream); }),
            on_other("stream", 1, 0, "context"));
  const Stream first(0);
  EXPECT_NO_THROW(cf::DecodeContext(config, here.weights, 32, std::nullopt, first.stream));
}
