// The cooperative mode's guarantees (issue 11): its grid barrier cannot wrap into a hang, its launches stay
// cooperative when they overlap the previous kernel (in a captured graph too, and with another stream's
// cooperative kernels on the device), and the kernels' shared-memory limit is set once to the device maximum,
// so plans of different sizes share a kernel from two threads or from a graph captured before the other ran.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "cuda_device.hpp"
#include "device_tensors.hpp"
#include "random_inputs.hpp"
#include "test_names.hpp"

namespace cf = clusterfusion;
using cf_test::DeviceBuffer;
using cf_test::HalfTensor;
using cf_test::RandomLayer;

namespace {

constexpr unsigned kFlip = 0x80000000u;  // grid_barrier.cuh: the barrier word is 0 or this between barriers

cf::ModelConfig one_layer(const char* model) {
  cf::ModelConfig config = cf::model_config(model);
  config.layers = 1;
  return config;
}

// Blocking: ordered after the legacy default stream's poison() and before its copies back.
struct Stream {
  cudaStream_t s = nullptr;
  Stream() { CF_CUDA_CHECK(cudaStreamCreate(&s)); }
  ~Stream() { cudaStreamDestroy(s); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

// Waits for `stream` at most `seconds`. A hung kernel cannot be stopped from the host: the test reports it and
// leaves the process, so that neither it nor the next test waits forever.
void finish_or_exit(cudaStream_t stream, double seconds, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  cudaError_t status;
  while ((status = cudaStreamQuery(stream)) == cudaErrorNotReady) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << what << ": not finished after " << seconds << " s (hung)";
      std::fflush(stdout);
      std::_Exit(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CF_CUDA_CHECK(status);
}

// One layer of `model` with random weights, a random past of `position` tokens and its buffers.
struct LayerRun {
  cf::ModelConfig config;
  RandomLayer weights;
  cf::DecoderLayer layer;
  cf::KVCache cache;
  int position;
  HalfTensor past, x;
  DeviceBuffer<__half> hidden_a, hidden_b, h1;
  DeviceBuffer<float> attn, act;

  LayerRun(const char* model, int max_seq, int position)
      : config(one_layer(model)),
        weights(config, cf_test::rng()),
        layer(config, weights.views(), max_seq),
        cache(config, max_seq),
        position(position),
        past({int64_t(cache.layer_elems())}, 0, 1, cf_test::rng()),
        x({config.hidden}, 0, 1, cf_test::rng()),
        hidden_a(config.hidden),
        hidden_b(config.hidden),
        h1(config.hidden),
        attn(config.hidden),
        act(config.ffn) {}

  // Enqueues on `stream` a chain of `steps` forwards at `position` from the same past, the first reading x and
  // each next one the output before it (as the layers of a model do).
  void enqueue(cf::LayerMode mode, cudaStream_t stream, int steps) {
    const std::size_t bytes = cache.layer_elems() * sizeof(__half);
    CF_CUDA_CHECK(cudaMemcpyAsync(cache.keys(0), past.dev, bytes, cudaMemcpyDeviceToDevice, stream));
    CF_CUDA_CHECK(cudaMemcpyAsync(cache.values(0), past.dev, bytes, cudaMemcpyDeviceToDevice, stream));
    cache.set_length(position);
    const __half* in = x.dev;
    for (int i = 0; i < steps; ++i) {
      __half* out = last_output(i + 1).dev;
      layer.forward(cache, 0, cf::LayerIO{in, out, h1.dev, attn.dev, act.dev}, position, mode, stream);
      in = out;
    }
  }
  DeviceBuffer<__half>& last_output(int steps) { return steps % 2 == 1 ? hidden_a : hidden_b; }
  std::vector<__half> output(int steps) { return last_output(steps).get(); }
};

bool same_bits(const std::vector<__half>& a, const std::vector<__half>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(__half)) == 0;
}

class Cooperative : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Models, Cooperative, ::testing::Values("pythia-70m", "tinyllama-1.1b"),
                         cf_test::ModelTestName());

// The old barrier counted arrivals in a 32-bit word that was never reset: from 4294967292 (32,537,631 launches of
// 132 blocks) the next launch hung. Now the word is 0 or 2^31 after every barrier; from 2^31, the state whose
// next barrier wraps it, and from 0, every launch finishes with split mode's bits and leaves the word where its
// number of barriers says. (The old counter hangs from 2^31, not a multiple of the grid, or else fails the word
// check after one launch.)
TEST_P(Cooperative, GridBarrierWordWrapsWithoutHangOrDrift) {
  CF_REQUIRE_HOPPER();
  LayerRun run(GetParam(), 256, 100);
  ASSERT_TRUE(run.layer.plan().cooperative_supported);
  const int barriers = static_cast<int>(run.layer.phase_names().size()) - 1;
  EXPECT_EQ(run.layer.debug_grid_barrier_word(), 0u);
  EXPECT_THROW(run.layer.debug_set_grid_barrier_word(4294967292u), std::invalid_argument);
  Stream stream;
  run.enqueue(cf::LayerMode::Split, stream.s, 1);
  CF_CUDA_CHECK(cudaStreamSynchronize(stream.s));
  const std::vector<__half> expected = run.output(1);
  for (const unsigned start : {kFlip, 0u}) {
    run.layer.debug_set_grid_barrier_word(start);
    unsigned word = start;
    for (int launch = 0; launch < 4; ++launch) {
      SCOPED_TRACE("from word " + std::to_string(start) + ", launch " + std::to_string(launch));
      run.last_output(1).poison();
      run.enqueue(cf::LayerMode::Cooperative, stream.s, 1);
      finish_or_exit(stream.s, 10.0, "a cooperative forward from barrier word " + std::to_string(word));
      EXPECT_TRUE(same_bits(run.output(1), expected));
      if (barriers % 2 == 1) word ^= kFlip;
      EXPECT_EQ(run.layer.debug_grid_barrier_word(), word);
    }
  }
}

// Kernel nodes of `graph` and its edges between two of them that let the second overlap the first.
struct GraphKernels {
  std::vector<cudaGraphNode_t> kernels;
  int programmatic_edges = 0;
  explicit GraphKernels(cudaGraph_t graph) {
    std::size_t count = 0;
    CF_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &count));
    std::vector<cudaGraphNode_t> nodes(count);
    CF_CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &count));
    for (cudaGraphNode_t node : nodes) {
      cudaGraphNodeType type;
      CF_CUDA_CHECK(cudaGraphNodeGetType(node, &type));
      if (type == cudaGraphNodeTypeKernel) kernels.push_back(node);
    }
    std::size_t edges = 0;
    CF_CUDA_CHECK(cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &edges));
    std::vector<cudaGraphNode_t> from(edges), to(edges);
    std::vector<cudaGraphEdgeData> data(edges);
    CF_CUDA_CHECK(cudaGraphGetEdges(graph, from.data(), to.data(), data.data(), &edges));
    for (std::size_t i = 0; i < edges; ++i)
      programmatic_edges += data[i].type == cudaGraphDependencyTypeProgrammatic;
  }
};

struct Graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~Graph() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    if (graph != nullptr) cudaGraphDestroy(graph);
  }
};

// The overlapped cooperative launch was made without the cooperative attribute (co-residency assumed from the
// plan). Captured, every kernel node of an overlapped chain is cooperative and follows the one before through a
// programmatic edge, and the graph gives the bits of the ordinary chain.
TEST_P(Cooperative, OverlappedLaunchesStayCooperativeInAGraph) {
  CF_REQUIRE_HOPPER();
  constexpr int kSteps = 3;
  LayerRun run(GetParam(), 256, 100);
  ASSERT_TRUE(run.layer.plan().cooperative_supported);
  Stream stream;
  run.enqueue(cf::LayerMode::Cooperative, stream.s, kSteps);
  CF_CUDA_CHECK(cudaStreamSynchronize(stream.s));
  const std::vector<__half> expected = run.output(kSteps);

  run.layer.set_overlap_previous_kernel(true);
  Graph g;
  CF_CUDA_CHECK(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeThreadLocal));
  run.enqueue(cf::LayerMode::Cooperative, stream.s, kSteps);
  CF_CUDA_CHECK(cudaStreamEndCapture(stream.s, &g.graph));
  const GraphKernels nodes(g.graph);
  ASSERT_EQ(nodes.kernels.size(), std::size_t(kSteps));
  for (cudaGraphNode_t node : nodes.kernels) {
    cudaLaunchAttributeValue value = {};
    CF_CUDA_CHECK(cudaGraphKernelNodeGetAttribute(node, cudaLaunchAttributeCooperative, &value));
    EXPECT_EQ(value.cooperative, 1);
  }
  EXPECT_EQ(nodes.programmatic_edges, kSteps - 1);
  CF_CUDA_CHECK(cudaGraphInstantiate(&g.exec, g.graph, 0));
  run.last_output(kSteps).poison();
  CF_CUDA_CHECK(cudaGraphLaunch(g.exec, stream.s));
  finish_or_exit(stream.s, 10.0, "the captured overlapped cooperative chain");
  EXPECT_TRUE(same_bits(run.output(kSteps), expected));
}

// Two chains of overlapped cooperative launches on two streams at once (two contexts of a server, say), each
// grid as large as the device holds: without the cooperative guarantee both grids can be partly resident, each
// waiting at its grid barrier for blocks the other keeps out. Both finish, with the bits of a chain alone.
TEST_P(Cooperative, OverlappedChainsOnTwoStreamsAllFinish) {
  CF_REQUIRE_HOPPER();
  constexpr int kSteps = 8, kRounds = 20;
  LayerRun a(GetParam(), 256, 100), b(GetParam(), 256, 50);
  ASSERT_TRUE(a.layer.plan().cooperative_supported);
  Stream sa, sb;
  a.enqueue(cf::LayerMode::Cooperative, sa.s, kSteps);
  b.enqueue(cf::LayerMode::Cooperative, sb.s, kSteps);
  CF_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<__half> expected_a = a.output(kSteps), expected_b = b.output(kSteps);
  a.layer.set_overlap_previous_kernel(true);
  b.layer.set_overlap_previous_kernel(true);
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    a.enqueue(cf::LayerMode::Cooperative, sa.s, kSteps);
    b.enqueue(cf::LayerMode::Cooperative, sb.s, kSteps);
    finish_or_exit(sa.s, 20.0, "stream a's overlapped cooperative chain");
    finish_or_exit(sb.s, 20.0, "stream b's overlapped cooperative chain");
    EXPECT_TRUE(same_bits(a.output(kSteps), expected_a));
    EXPECT_TRUE(same_bits(b.output(kSteps), expected_b));
  }
}

// The kernel's dynamic shared-memory limit was set on every launch to that launch's need: a plan that needs less
// lowered it under a plan that needs more (the two share the kernel: same architecture and head_dim). Now it is
// the device's maximum from the first launch on: a graph captured for the larger plan replays after the smaller
// one ran, and the two run from two threads at once.
TEST(KernelSharedMemoryLimit, SetOnceToTheDeviceMaximum) {
  CF_REQUIRE_HOPPER();
  LayerRun large("pythia-410m", 4096, 1000), small("pythia-70m", 64, 40);
  ASSERT_EQ(large.config.head_dim, small.config.head_dim);
  ASSERT_GT(large.layer.plan().smem_cooperative, small.layer.plan().smem_cooperative);
  ASSERT_TRUE(large.layer.plan().cooperative_supported && small.layer.plan().cooperative_supported);
  const cf::LayerMode modes[] = {cf::LayerMode::Split, cf::LayerMode::Cooperative};
  Stream stream;
  std::vector<__half> expected_large[2], expected_small[2];
  for (int m = 0; m < 2; ++m) {
    large.enqueue(modes[m], stream.s, 1);
    CF_CUDA_CHECK(cudaStreamSynchronize(stream.s));
    expected_large[m] = large.output(1);
    small.enqueue(modes[m], stream.s, 1);
    CF_CUDA_CHECK(cudaStreamSynchronize(stream.s));
    expected_small[m] = small.output(1);
  }

  Graph g;
  CF_CUDA_CHECK(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeThreadLocal));
  large.enqueue(cf::LayerMode::Cooperative, stream.s, 1);
  CF_CUDA_CHECK(cudaStreamEndCapture(stream.s, &g.graph));
  CF_CUDA_CHECK(cudaGraphInstantiate(&g.exec, g.graph, 0));
  small.enqueue(cf::LayerMode::Cooperative, stream.s, 1);
  CF_CUDA_CHECK(cudaStreamSynchronize(stream.s));
  const GraphKernels nodes(g.graph);
  ASSERT_EQ(nodes.kernels.size(), 1u);
  cudaKernelNodeParams params = {};
  CF_CUDA_CHECK(cudaGraphKernelNodeGetParams(nodes.kernels[0], &params));
  cudaFuncAttributes attrs;
  CF_CUDA_CHECK(cudaFuncGetAttributes(&attrs, params.func));
  int device = 0, optin = 0;
  CF_CUDA_CHECK(cudaGetDevice(&device));
  CF_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  EXPECT_EQ(attrs.maxDynamicSharedSizeBytes, optin - static_cast<int>(attrs.sharedSizeBytes));
  large.last_output(1).poison();
  CF_CUDA_CHECK(cudaGraphLaunch(g.exec, stream.s));
  finish_or_exit(stream.s, 10.0, "the large plan's graph");
  EXPECT_TRUE(same_bits(large.output(1), expected_large[1]));

  // Each thread alternates the modes on its own stream; a failed launch throws CudaError in the thread.
  constexpr int kRuns = 200;
  auto loop = [&](LayerRun& run, const std::vector<__half>* expected, std::string* error) {
    try {
      Stream own;
      for (int i = 0; i < kRuns && error->empty(); ++i) {
        run.enqueue(modes[i % 2], own.s, 1);
        finish_or_exit(own.s, 10.0, "a forward in a thread");
        if (!same_bits(run.output(1), expected[i % 2])) *error = "run " + std::to_string(i) + " differs";
      }
    } catch (const std::exception& e) {
      *error = e.what();
    }
  };
  std::string error_large, error_small;
  std::thread t_large(loop, std::ref(large), expected_large, &error_large);
  std::thread t_small(loop, std::ref(small), expected_small, &error_small);
  t_large.join();
  t_small.join();
  EXPECT_EQ(error_large, "");
  EXPECT_EQ(error_small, "");
}

}  // namespace
