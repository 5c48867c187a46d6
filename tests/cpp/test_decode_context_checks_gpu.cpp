// DecodeContext checks every argument before it copies or launches anything: a refused call leaves the position,
// the device's position, the token history and the cache as they were, so the steps after it are those of a
// context that never saw it.
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/decode_context.hpp"
#include "cuda_device.hpp"
#include "device_tensors.hpp"
#include "random_inputs.hpp"
#include "random_model.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

// Every byte of the cache and the token history.
std::vector<unsigned char> device_state(const cf::DecodeContext& ctx) {
  CF_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  const cf::KVCache& cache = ctx.cache();
  const std::size_t layer_bytes = cache.layer_elems() * sizeof(__half);
  const std::size_t history = (std::size_t(ctx.max_seq()) + 1) * sizeof(int);
  std::vector<unsigned char> bytes(2 * cache.layers() * layer_bytes + history);
  unsigned char* at = bytes.data();
  for (int l = 0; l < cache.layers(); ++l) {
    for (const __half* src : {cache.keys(l), cache.values(l)}) {
      CF_CUDA_CHECK(cudaMemcpy(at, src, layer_bytes, cudaMemcpyDeviceToHost));
      at += layer_bytes;
    }
  }
  CF_CUDA_CHECK(cudaMemcpy(at, ctx.tokens(), history, cudaMemcpyDeviceToHost));
  return bytes;
}

std::vector<float> logits(const cf::DecodeContext& ctx) {
  CF_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  std::vector<float> out(ctx.config().vocab);
  CF_CUDA_CHECK(cudaMemcpy(out.data(), ctx.logits(), out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// `ctx` (which refused calls) and `control` (which saw none) decode alike from here.
void expect_same_continuation(cf::DecodeContext& ctx, cf::DecodeContext& control) {
  ASSERT_EQ(ctx.position(), control.position());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(ctx.step(), control.step());
    EXPECT_TRUE(same_bits(logits(ctx), logits(control)));
  }
}

}  // namespace

TEST(DecodeContextChecksGpu, RefusedLoadPrefixWritesNothing) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config();
  const cf_test::RandomModel model(config, cf_test::rng());
  const int max_seq = 32;
  cf::DecodeContext ctx(config, model.weights, max_seq), control(config, model.weights, max_seq);
  std::vector<int> prompt(5);
  for (int& t : prompt) t = cf_test::uniform_int(0, config.vocab - 1);
  ASSERT_EQ(ctx.prefill(prompt), control.prefill(prompt));
  const std::vector<unsigned char> before = device_state(ctx);

  const int64_t heads = config.kv_heads, dim = config.head_dim;
  cf_test::DeviceBuffer<__half> kv(std::size_t(heads) * 8 * dim);
  kv.poison();
  auto view = [&](std::vector<int64_t> shape) { return cf::TensorView(kv.dev, std::move(shape), cf::DType::Float16); };
  const cf::TensorView good = view({1, heads, 4, dim}), negative = view({1, heads, -4, dim}),
                       shorter = view({1, heads, 3, dim}), few_heads = view({1, heads - 1, 4, dim}),
                       too_long = view({1, heads, max_seq + 1, dim}), rank3 = view({heads, 4, dim});
  const std::string h = std::to_string(heads), d = std::to_string(dim);
  struct Case {
    std::vector<cf::TensorView> keys, values;
    std::string message;
  };
  const std::vector<Case> invalid = {
      // A producer reporting a negative sequence length: once written to the device position, the next step
      // wrote tokens[-4].
      {{negative, negative}, {negative, negative},
       "keys[0]: expected non-negative extents, got shape [1, " + h + ", -4, " + d + "]"},
      {{good, good},
       {negative, good},
       "values[0]: expected non-negative extents, got shape [1, " + h + ", -4, " + d + "]"},
      {{good, shorter}, {good, good},
       "keys[1]: expected shape [1, " + h + ", 4, " + d + "], got shape [1, " + h + ", 3, " + d + "]"},
      {{good, good}, {good, few_heads},
       "values[1]: expected shape [1, " + h + ", 4, " + d + "], got shape [1, " + std::to_string(heads - 1) + ", 4, " +
           d + "]"},
      {{rank3, rank3},
       {rank3, rank3},
       "keys[0]: expected shape [1, " + h + ", seq, " + d + "], got [" + h + ", 4, " + d + "]"},
      {{good}, {good, good}, "keys: expected 2 tensors (one per layer), got 1"},
  };
  for (const Case& c : invalid) {
    SCOPED_TRACE(c.message);
    const std::string msg =
        cf_test::thrown_message<std::invalid_argument>([&] { ctx.load_prefix(c.keys, c.values); });
    EXPECT_EQ(msg.rfind(c.message, 0), 0u) << msg;
    EXPECT_EQ(ctx.position(), int(prompt.size()));
  }
  EXPECT_THROW(ctx.load_prefix({too_long, too_long}, {too_long, too_long}), std::out_of_range);
  EXPECT_EQ(ctx.position(), int(prompt.size()));
  EXPECT_TRUE(device_state(ctx) == before);
  expect_same_continuation(ctx, control);
}

TEST(DecodeContextChecksGpu, RefusedStepsWriteNothing) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config();
  const cf_test::RandomModel model(config, cf_test::rng());
  const int max_seq = 8;
  cf::DecodeContext ctx(config, model.weights, max_seq), control(config, model.weights, max_seq);
  const std::vector<int> prompt{cf_test::uniform_int(0, config.vocab - 1), cf_test::uniform_int(0, config.vocab - 1)};
  ASSERT_EQ(ctx.prefill(prompt), control.prefill(prompt));
  const std::vector<unsigned char> before = device_state(ctx);
  EXPECT_THROW(ctx.step(config.vocab), std::invalid_argument);
  EXPECT_THROW(ctx.enqueue_step(-1), std::invalid_argument);
  EXPECT_THROW(ctx.prefill({1, config.vocab}), std::invalid_argument);  // the bad token is the second
  EXPECT_THROW(ctx.prefill(std::vector<int>(max_seq, 1)), std::out_of_range);
  EXPECT_THROW(ctx.set_sampling(cf::SamplingParams{0.5f, -1, 1.0f, 0}), std::invalid_argument);
  EXPECT_EQ(ctx.position(), int(prompt.size()));
  EXPECT_TRUE(device_state(ctx) == before);
  expect_same_continuation(ctx, control);
}
