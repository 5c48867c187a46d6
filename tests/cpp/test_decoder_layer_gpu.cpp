// The fused decoder layer on the GPU: GPT-NeoX against the double-precision host reference in both modes; for
// every architecture, split and cooperative bitwise equal, run-to-run determinism, the device position, and
// overlapped launches. (Llama's float64 comparisons run in tests/python/test_layer_gpu.py.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/host_reference.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "cuda_device.hpp"
#include "device_tensors.hpp"
#include "random_inputs.hpp"
#include "test_names.hpp"

namespace cf = clusterfusion;
using cf_test::DeviceBuffer;
using cf_test::HalfTensor;
using cf_test::RandomLayer;

namespace {


double to_double(float v) { return v; }
double to_double(__half v) { return __half2float(v); }

template <class T>
double rel_error(const std::vector<T>& got, const std::vector<double>& ref, const std::vector<double>* base = nullptr) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double g = to_double(got[i]) - (base ? (*base)[i] : 0.0);
    const double r = ref[i] - (base ? (*base)[i] : 0.0);
    if (!std::isfinite(g)) return INFINITY;
    num += (g - r) * (g - r);
    den += r * r;
  }
  return std::sqrt(num / den);
}

struct LayerCase {
  const char* model;
  std::vector<int> positions;
  int heads = 0;  // when set, the model's hidden split into this many heads (head_dim = hidden / heads)
  const char* label = nullptr;  // the test's name suffix, when the model's name would not do
};

cf::ModelConfig case_config(const LayerCase& tc) {
  cf::ModelConfig config = cf::pythia_config(tc.model);
  if (tc.heads > 0) {
    config.heads = config.kv_heads = tc.heads;
    config.head_dim = config.hidden / tc.heads;
    config.rotary_dims = config.head_dim / 4;  // rotary_pct 0.25, as every GPT-NeoX checkpoint
  }
  config.layers = 1;
  return config;
}

class NeoXLayerGpu : public ::testing::TestWithParam<LayerCase> {};

TEST_P(NeoXLayerGpu, MatchesHostReference) {
  CF_REQUIRE_HOPPER();
  const LayerCase& tc = GetParam();
  const cf::ModelConfig config = case_config(tc);
  const int h = config.hidden, f = config.ffn, d = config.head_dim, heads = config.heads;
  const int max_seq = 2048;
  auto& rng = cf_test::rng();

  const RandomLayer w(config, rng);
  const cf::reference::HostLayer host = w.neox_host();
  cf::DecoderLayer layer(config, w.views(), max_seq);
  cf::KVCache cache(config, max_seq);
  // Random past for every position: the test then moves through positions without refilling.
  HalfTensor past_k({heads, max_seq, d}, 0, 1, rng), past_v({heads, max_seq, d}, 0, 1, rng);
  const std::size_t cache_bytes = cache.layer_elems() * sizeof(__half);

  // One block per SM: every shape here fits the H100 at once, so the cooperative mode must be available.
  ASSERT_TRUE(layer.plan().cooperative_supported) << layer.plan().blocks << " blocks";
  // 80 heads are more clusters of two than an H100 or H200 holds: clusters of one block, whose proj_residual
  // runs its K in two passes (one slice of attn | act would not fit in shared memory).
  if (tc.heads == 80) {
    EXPECT_EQ(layer.plan().cluster_size, 1);
  }
  for (const int position : tc.positions) {
    for (const cf::LayerMode mode : {cf::LayerMode::Split, cf::LayerMode::Cooperative}) {
      SCOPED_TRACE(std::string(cf::layer_mode_name(mode)) + " position " + std::to_string(position));
      CF_CUDA_CHECK(cudaMemcpy(cache.keys(0), past_k.dev, cache_bytes, cudaMemcpyDeviceToDevice));
      CF_CUDA_CHECK(cudaMemcpy(cache.values(0), past_v.dev, cache_bytes, cudaMemcpyDeviceToDevice));
      cache.set_length(position);
      HalfTensor x({h}, 0, 1, rng);
      DeviceBuffer<__half> out(h);
      DeviceBuffer<float> attn(h), act(f);
      out.poison();
      attn.poison();
      act.poison();
      layer.forward(cache, 0, cf::LayerIO{x.dev, out.dev, nullptr, attn.dev, act.dev}, position, mode);
      CF_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_EQ(cache.length(), position + 1);

      std::vector<double> k_past(std::size_t(heads) * position * d), v_past(k_past.size());
      for (int hh = 0; hh < heads; ++hh)
        for (int t = 0; t < position; ++t)
          for (int e = 0; e < d; ++e) {
            const std::size_t src = (std::size_t(hh) * max_seq + t) * d + e, dst = (std::size_t(hh) * position + t) * d + e;
            k_past[dst] = past_k.host[src];
            v_past[dst] = past_v.host[src];
          }
      const auto ref = cf::reference::neox_layer(config, host, x.host, k_past, v_past, position);

      std::vector<__half> k_new(std::size_t(heads) * d), v_new(k_new.size());
      for (int hh = 0; hh < heads; ++hh) {
        const std::size_t off = (std::size_t(hh) * max_seq + position) * d;
        CF_CUDA_CHECK(cudaMemcpy(&k_new[hh * d], cache.keys(0) + off, d * sizeof(__half), cudaMemcpyDeviceToHost));
        CF_CUDA_CHECK(cudaMemcpy(&v_new[hh * d], cache.values(0) + off, d * sizeof(__half), cudaMemcpyDeviceToHost));
      }
      EXPECT_LT(rel_error(out.get(), ref.out, &x.host), 2e-3);
      EXPECT_LT(rel_error(attn.get(), ref.attn), 2e-3);
      EXPECT_LT(rel_error(act.get(), ref.mlp_act), 2e-3);
      EXPECT_LT(rel_error(k_new, ref.k), 2e-3);
      EXPECT_LT(rel_error(v_new, ref.v), 2e-3);
    }
  }
}

// pythia-12b and gpt-neox-20b: each rank of a cluster holds only its K slice of attn | act in proj_residual (the
// whole vectors did not fit in shared memory); 80 heads of 64 at pythia-12b's hidden and ffn: clusters of one
// block, proj_residual in two passes.
INSTANTIATE_TEST_SUITE_P(Pythia, NeoXLayerGpu,
                         ::testing::Values(LayerCase{"pythia-2.8b", {0, 1, 65, 511, 2047}},
                                           LayerCase{"pythia-6.9b", {0, 128, 1000}},
                                           LayerCase{"pythia-12b", {0, 777}},
                                           LayerCase{"gpt-neox-20b", {1, 2047}},
                                           LayerCase{"pythia-12b", {0, 1000}, 80, "neox_80_heads"}),
                         [](const auto& info) {
                           return cf_test::test_name(info.param.label ? info.param.label : info.param.model);
                         });

TEST(NeoXLayerGpuErrors, PositionPastCacheThrowsAndLaunchesNothing) {
  CF_REQUIRE_HOPPER();
  cf::ModelConfig config = cf::pythia_config("pythia-70m");
  config.layers = 1;
  auto& rng = cf_test::rng();
  const int h = config.hidden, f = config.ffn;
  const RandomLayer w(config, rng);
  cf::DecoderLayer layer(config, w.views(), 64);
  cf::KVCache cache(config, 64);
  HalfTensor x({h}, 0, 1, rng);
  DeviceBuffer<__half> out(h);
  DeviceBuffer<float> attn(h), act(f);
  cache.set_length(64);
  EXPECT_THROW(layer.forward(cache, 0, cf::LayerIO{x.dev, out.dev, nullptr, attn.dev, act.dev}, 64, cf::LayerMode::Split),
               std::out_of_range);
  cache.set_length(3);
  EXPECT_THROW(layer.forward(cache, 0, cf::LayerIO{x.dev, out.dev, nullptr, attn.dev, act.dev}, 5, cf::LayerMode::Split),
               std::out_of_range);
  EXPECT_THROW(layer.forward(cache, 1, cf::LayerIO{x.dev, out.dev, nullptr, attn.dev, act.dev}, 3, cf::LayerMode::Split),
               std::out_of_range);
  EXPECT_EQ(cache.length(), 3);
}

}  // namespace

namespace {

// A position read from device memory gives bitwise what the same position as a launch parameter gives, in
// both modes; a device position past the cache launches kernels that write nothing.
// The architectures and their GQA / rope variants at real shapes: MHA GPT-NeoX (pythia-12b and gpt-neox-20b too:
// proj_residual's K slices per rank, clusters of 3 and 2 on an H100 or H200), Llama with 8 query heads per kv
// head (head_dim 64) and with 4 (head_dim 128, llama3 rope).
class DecoderLayerGpu : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Models, DecoderLayerGpu,
                         ::testing::Values("pythia-2.8b", "pythia-12b", "gpt-neox-20b", "tinyllama-1.1b", "llama-3-8b"),
                         cf_test::ModelTestName());

TEST_P(DecoderLayerGpu, DevicePositionMatchesHostPositionAndRefusesPastTheCache) {
  CF_REQUIRE_HOPPER();
  cf::ModelConfig config = cf::model_config(GetParam());
  config.layers = 1;
  const int max_seq = 512, position = 300;
  auto& rng = cf_test::rng();
  const RandomLayer w(config, rng);
  cf::DecoderLayer layer(config, w.views(), max_seq);
  cf::KVCache cache(config, max_seq);
  HalfTensor past_k({int64_t(cache.layer_elems())}, 0, 1, rng), past_v({int64_t(cache.layer_elems())}, 0, 1, rng);
  HalfTensor x({config.hidden}, 0, 1, rng);
  DeviceBuffer<float> attn(config.hidden), act(config.ffn);
  DeviceBuffer<__half> h1(config.hidden);
  DeviceBuffer<int> device_position(1);
  auto reset_cache = [&] {
    CF_CUDA_CHECK(cudaMemcpy(cache.keys(0), past_k.dev, cache.layer_elems() * 2, cudaMemcpyDeviceToDevice));
    CF_CUDA_CHECK(cudaMemcpy(cache.values(0), past_v.dev, cache.layer_elems() * 2, cudaMemcpyDeviceToDevice));
    cache.set_length(position);
  };
  auto cache_bytes = [&] {
    std::vector<__half> k(cache.layer_elems()), v(cache.layer_elems());
    CF_CUDA_CHECK(cudaMemcpy(k.data(), cache.keys(0), k.size() * 2, cudaMemcpyDeviceToHost));
    CF_CUDA_CHECK(cudaMemcpy(v.data(), cache.values(0), v.size() * 2, cudaMemcpyDeviceToHost));
    k.insert(k.end(), v.begin(), v.end());
    return k;
  };
  for (const cf::LayerMode mode : {cf::LayerMode::Split, cf::LayerMode::Cooperative}) {
    SCOPED_TRACE(cf::layer_mode_name(mode));
    reset_cache();
    DeviceBuffer<__half> expected(config.hidden), got(config.hidden);
    layer.forward(cache, 0, cf::LayerIO{x.dev, expected.dev, h1.dev, attn.dev, act.dev}, position, mode);
    const auto expected_cache = cache_bytes();

    reset_cache();
    got.poison();
    CF_CUDA_CHECK(cudaMemcpy(device_position.dev, &position, sizeof(int), cudaMemcpyHostToDevice));
    layer.forward_at_device_position(cache, 0, cf::LayerIO{x.dev, got.dev, h1.dev, attn.dev, act.dev}, device_position.dev,
                                     mode);
    CF_CUDA_CHECK(cudaDeviceSynchronize());
    const auto a = expected.get(), b = got.get();
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 2));
    EXPECT_TRUE(cache_bytes() == expected_cache);

    reset_cache();
    got.poison();
    const auto before = cache_bytes();
    CF_CUDA_CHECK(cudaMemcpy(device_position.dev, &max_seq, sizeof(int), cudaMemcpyHostToDevice));
    layer.forward_at_device_position(cache, 0, cf::LayerIO{x.dev, got.dev, h1.dev, attn.dev, act.dev}, device_position.dev,
                                     mode);
    CF_CUDA_CHECK(cudaDeviceSynchronize());
    const auto untouched = got.get();
    for (const __half h : untouched) ASSERT_TRUE(std::isnan(__half2float(h)));
    EXPECT_TRUE(cache_bytes() == before);
  }
}

}  // namespace

namespace {

// A chain of layers launched to overlap the kernel before each (programmatic dependent launch: each layer
// reads the previous one's output) gives bitwise the output and cache of the same chain launched the ordinary
// way, in both modes.
TEST_P(DecoderLayerGpu, OverlappedChainMatchesOrdinaryLaunchesBitwise) {
  CF_REQUIRE_HOPPER();
  cf::ModelConfig config = cf::model_config(GetParam());
  config.layers = 4;
  const int max_seq = 512, position = 300;
  auto& rng = cf_test::rng();
  const RandomLayer w(config, rng);
  cf::DecoderLayer layer(config, w.views(), max_seq);
  EXPECT_FALSE(layer.overlap_previous_kernel());
  cf::KVCache cache(config, max_seq);
  HalfTensor past({int64_t(cache.layer_elems())}, 0, 1, rng), x({config.hidden}, 0, 1, rng);
  DeviceBuffer<__half> hidden_a(config.hidden), hidden_b(config.hidden), h1(config.hidden);
  DeviceBuffer<float> attn(config.hidden), act(config.ffn);
  // The output and every cache layer after the chain, starting from x and the same past in every layer.
  auto run_chain = [&](cf::LayerMode mode, bool overlap) {
    for (int l = 0; l < config.layers; ++l) {
      CF_CUDA_CHECK(cudaMemcpy(cache.keys(l), past.dev, cache.layer_elems() * 2, cudaMemcpyDeviceToDevice));
      CF_CUDA_CHECK(cudaMemcpy(cache.values(l), past.dev, cache.layer_elems() * 2, cudaMemcpyDeviceToDevice));
    }
    cache.set_length(position);
    hidden_a.poison();
    hidden_b.poison();
    attn.poison();
    act.poison();
    layer.set_overlap_previous_kernel(overlap);
    const __half* in = x.dev;
    for (int l = 0; l < config.layers; ++l) {
      __half* out = l % 2 == 0 ? hidden_a.dev : hidden_b.dev;
      layer.forward(cache, l, cf::LayerIO{in, out, h1.dev, attn.dev, act.dev}, position, mode);
      in = out;
    }
    CF_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<__half> state = (config.layers % 2 == 1 ? hidden_a : hidden_b).get();
    for (int l = 0; l < config.layers; ++l) {
      std::vector<__half> k(cache.layer_elems()), v(cache.layer_elems());
      CF_CUDA_CHECK(cudaMemcpy(k.data(), cache.keys(l), k.size() * 2, cudaMemcpyDeviceToHost));
      CF_CUDA_CHECK(cudaMemcpy(v.data(), cache.values(l), v.size() * 2, cudaMemcpyDeviceToHost));
      state.insert(state.end(), k.begin(), k.end());
      state.insert(state.end(), v.begin(), v.end());
    }
    return state;
  };
  for (const cf::LayerMode mode : {cf::LayerMode::Split, cf::LayerMode::Cooperative}) {
    SCOPED_TRACE(cf::layer_mode_name(mode));
    const auto ordinary = run_chain(mode, false);
    for (int h = 0; h < config.hidden; ++h) ASSERT_TRUE(std::isfinite(__half2float(ordinary[h]))) << h;
    for (int repeat = 0; repeat < 3; ++repeat) {
      const auto overlapped = run_chain(mode, true);
      ASSERT_EQ(ordinary.size(), overlapped.size());
      EXPECT_EQ(0, std::memcmp(ordinary.data(), overlapped.data(), ordinary.size() * 2)) << "repeat " << repeat;
    }
  }
}

}  // namespace

namespace {

// Each phase's own launch runs on the layer's clusters, except a phase that only the head clusters work in
// (Llama's norm_qkv_rope_attend): one cluster per head, at least as large, whose size is the attention's chunk
// count in every launch (and fixes the q|k|v jobs' K chunks when it is larger).
TEST_P(DecoderLayerGpu, PlanSpreadsOnlyTheHeadsOnlyPhase) {
  CF_REQUIRE_HOPPER();
  cf::ModelConfig config = cf::model_config(GetParam());
  config.layers = 1;
  const RandomLayer w(config, cf_test::rng());
  const cf::DecoderLayer layer(config, w.views(), 1024);
  const cf::LayerLaunchPlan& plan = layer.plan();
  const std::vector<std::string> phases = layer.phase_names();
  ASSERT_EQ(plan.phase_grids.size(), phases.size());
  int spread = plan.cluster_size;
  for (std::size_t i = 0; i < phases.size(); ++i) {
    SCOPED_TRACE(phases[i]);
    const cf::PhaseGrid& g = plan.phase_grids[i];
    if (config.arch == cf::Architecture::Llama && phases[i] == "norm_qkv_rope_attend" &&
        g.cluster_size != plan.cluster_size) {
      EXPECT_GT(g.cluster_size, plan.cluster_size);
      EXPECT_EQ(g.blocks, config.heads * g.cluster_size);
      EXPECT_LE(g.blocks, plan.blocks);
      spread = g.cluster_size;
    } else {
      EXPECT_EQ(g.cluster_size, plan.cluster_size);
      EXPECT_EQ(g.blocks, plan.blocks);
    }
  }
  // Helpers (GPT-NeoX's attending phase streams up rows) add their chunks before the ranks', only where every block is
  // resident at once.
  if (plan.attention_helpers > 0) {
    EXPECT_EQ(config.arch, cf::Architecture::GPTNeoX);
    EXPECT_TRUE(plan.cooperative_supported);
    EXPECT_LE(config.heads * (plan.cluster_size + plan.attention_helpers), plan.blocks);
  }
  EXPECT_EQ(plan.attention_chunks, spread + plan.attention_helpers);
  EXPECT_EQ(plan.qkv_chunks > 0, spread > plan.cluster_size);
}

// Split and cooperative launches give the same bits (output, h1, scratch and cache), and 50 runs of each give the
// same bits again, from fresh random inputs at positions across several attention tiles and at the first ones.
TEST_P(DecoderLayerGpu, ModesBitwiseEqualAndRepeatable) {
  CF_REQUIRE_HOPPER();
  cf::ModelConfig config = cf::model_config(GetParam());
  config.layers = 1;
  const int max_seq = 1024;
  auto& rng = cf_test::rng();
  const RandomLayer w(config, rng);
  cf::DecoderLayer layer(config, w.views(), max_seq);
  ASSERT_TRUE(layer.plan().cooperative_supported);
  cf::KVCache cache(config, max_seq);
  HalfTensor past({int64_t(cache.layer_elems())}, 0, 1, rng), x({config.hidden}, 0, 1, rng);
  DeviceBuffer<__half> out(config.hidden), h1(config.hidden);
  DeviceBuffer<float> attn(config.hidden), act(config.ffn);
  // Past the attention tiles, and the first positions, where some attention chunks are empty.
  for (const int position : {cf_test::uniform_int(300, max_seq - 1), 0, 2}) {
    SCOPED_TRACE("position " + std::to_string(position));
    auto run = [&](cf::LayerMode mode) {
      CF_CUDA_CHECK(cudaMemcpy(cache.keys(0), past.dev, cache.layer_elems() * 2, cudaMemcpyDeviceToDevice));
      CF_CUDA_CHECK(cudaMemcpy(cache.values(0), past.dev, cache.layer_elems() * 2, cudaMemcpyDeviceToDevice));
      cache.set_length(position);
      out.poison();
      h1.poison();
      attn.poison();
      act.poison();
      layer.forward(cache, 0, cf::LayerIO{x.dev, out.dev, h1.dev, attn.dev, act.dev}, position, mode);
      CF_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<unsigned char> bytes;
      auto append = [&](const auto& v) {
        const auto* p = reinterpret_cast<const unsigned char*>(v.data());
        bytes.insert(bytes.end(), p, p + v.size() * sizeof(v[0]));
      };
      append(out.get());
      append(attn.get());
      append(act.get());
      if (!config.parallel_residual) append(h1.get());
      std::vector<__half> k(cache.layer_elems()), v(cache.layer_elems());
      CF_CUDA_CHECK(cudaMemcpy(k.data(), cache.keys(0), k.size() * 2, cudaMemcpyDeviceToHost));
      CF_CUDA_CHECK(cudaMemcpy(v.data(), cache.values(0), v.size() * 2, cudaMemcpyDeviceToHost));
      append(k);
      append(v);
      return bytes;
    };
    const auto first = run(cf::LayerMode::Split);
    const auto outputs = out.get();
    for (const __half value : outputs) ASSERT_TRUE(std::isfinite(__half2float(value)));
    EXPECT_TRUE(run(cf::LayerMode::Cooperative) == first) << "cooperative differs from split";
    for (int repeat = 0; repeat < 50; ++repeat) {
      const cf::LayerMode mode = repeat % 2 == 0 ? cf::LayerMode::Split : cf::LayerMode::Cooperative;
      ASSERT_TRUE(run(mode) == first) << "run " << repeat << " (" << cf::layer_mode_name(mode) << ") differs";
    }
  }
}

}  // namespace
