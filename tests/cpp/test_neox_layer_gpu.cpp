// The fused GPT-NeoX layer on the GPU against the double-precision host reference, both modes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/host_reference.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "clusterfusion/neox_layer.hpp"
#include "cuda_device.hpp"
#include "random_inputs.hpp"

namespace cf = clusterfusion;

namespace {


// A device buffer of float16 values drawn from N(mean, std), with the values (as rounded) kept on the host.
struct HalfTensor {
  std::vector<double> host;
  __half* dev = nullptr;
  std::vector<int64_t> shape;
  HalfTensor(std::vector<int64_t> s, double mean, double std, std::mt19937_64& rng) : shape(std::move(s)) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::normal_distribution<double> dist(mean, std);
    std::vector<__half> h(n);
    host.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      h[i] = __double2half(dist(rng));
      host[i] = __half2float(h[i]);
    }
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev), n * sizeof(__half)));
    CF_CUDA_CHECK(cudaMemcpy(dev, h.data(), n * sizeof(__half), cudaMemcpyHostToDevice));
  }
  ~HalfTensor() { cudaFree(dev); }
  cf::TensorView view() const { return cf::TensorView(dev, shape, cf::DType::Float16); }
};

// One layer's weights at realistic scales: linear weights and biases N(0, 0.02), LayerNorm weights ~1.
struct RandomLayer {
  HalfTensor ln1_w, ln1_b, ln2_w, ln2_b, w_qkv, b_qkv, w_o, b_o, w_up, b_up, w_down, b_down;
  RandomLayer(const cf::ModelConfig& c, std::mt19937_64& rng)
      : ln1_w({c.hidden}, 1, 0.1, rng), ln1_b({c.hidden}, 0, 0.05, rng), ln2_w({c.hidden}, 1, 0.1, rng),
        ln2_b({c.hidden}, 0, 0.05, rng), w_qkv({3 * c.hidden, c.hidden}, 0, 0.02, rng),
        b_qkv({3 * c.hidden}, 0, 0.02, rng), w_o({c.hidden, c.hidden}, 0, 0.02, rng), b_o({c.hidden}, 0, 0.02, rng),
        w_up({c.ffn, c.hidden}, 0, 0.02, rng), b_up({c.ffn}, 0, 0.02, rng), w_down({c.hidden, c.ffn}, 0, 0.02, rng),
        b_down({c.hidden}, 0, 0.02, rng) {}
  cf::LayerWeights views() const {
    return {ln1_w.view(), ln1_b.view(), ln2_w.view(), ln2_b.view(), w_qkv.view(), b_qkv.view(),
            w_o.view(),   b_o.view(),   w_up.view(),  b_up.view(),  w_down.view(), b_down.view()};
  }
  cf::reference::HostLayer host() const {
    return {ln1_w.host, ln1_b.host, ln2_w.host, ln2_b.host, w_qkv.host, b_qkv.host,
            w_o.host,   b_o.host,   w_up.host,  b_up.host,  w_down.host, b_down.host};
  }
};

template <class T>
struct DeviceBuffer {
  T* dev = nullptr;
  std::size_t n;
  explicit DeviceBuffer(std::size_t count) : n(count) { CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev), n * sizeof(T))); }
  ~DeviceBuffer() { cudaFree(dev); }
  void poison() { CF_CUDA_CHECK(cudaMemset(dev, 0xff, n * sizeof(T))); }  // NaN in float16 and float32
  std::vector<T> get() const {
    std::vector<T> h(n);
    CF_CUDA_CHECK(cudaMemcpy(h.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

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
};

class NeoXLayerGpu : public ::testing::TestWithParam<LayerCase> {};

TEST_P(NeoXLayerGpu, MatchesHostReference) {
  CF_REQUIRE_HOPPER();
  const LayerCase& tc = GetParam();
  cf::ModelConfig config = cf::pythia_config(tc.model);
  config.layers = 1;
  const int h = config.hidden, f = config.ffn, d = config.head_dim, heads = config.heads;
  const int max_seq = 2048;
  auto& rng = cf_test::rng();

  const RandomLayer w(config, rng);
  const cf::reference::HostLayer host = w.host();
  cf::NeoXLayer layer(config, w.views(), max_seq);
  cf::KVCache cache(config, max_seq);
  // Random past for every position: the test then moves through positions without refilling.
  HalfTensor past_k({heads, max_seq, d}, 0, 1, rng), past_v({heads, max_seq, d}, 0, 1, rng);
  const std::size_t cache_bytes = cache.layer_elems() * sizeof(__half);

  // One block per SM: both Pythia shapes fit the H100 at once, so the cooperative mode must be available.
  ASSERT_TRUE(layer.plan().cooperative_supported) << layer.plan().blocks << " blocks";
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
      layer.forward(cache, 0, cf::LayerIO{x.dev, out.dev, attn.dev, act.dev}, position, mode);
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

INSTANTIATE_TEST_SUITE_P(Pythia, NeoXLayerGpu,
                         ::testing::Values(LayerCase{"pythia-2.8b", {0, 1, 65, 511, 2047}},
                                           LayerCase{"pythia-6.9b", {0, 128, 1000}}),
                         [](const auto& info) { return std::string(info.param.model == std::string("pythia-2.8b") ? "pythia_2_8b" : "pythia_6_9b"); });

TEST(NeoXLayerGpuErrors, PositionPastCacheThrowsAndLaunchesNothing) {
  CF_REQUIRE_HOPPER();
  cf::ModelConfig config = cf::pythia_config("pythia-70m");
  config.layers = 1;
  auto& rng = cf_test::rng();
  const int h = config.hidden, f = config.ffn;
  const RandomLayer w(config, rng);
  cf::NeoXLayer layer(config, w.views(), 64);
  cf::KVCache cache(config, 64);
  HalfTensor x({h}, 0, 1, rng);
  DeviceBuffer<__half> out(h);
  DeviceBuffer<float> attn(h), act(f);
  cache.set_length(64);
  EXPECT_THROW(layer.forward(cache, 0, cf::LayerIO{x.dev, out.dev, attn.dev, act.dev}, 64, cf::LayerMode::Split),
               std::out_of_range);
  cache.set_length(3);
  EXPECT_THROW(layer.forward(cache, 0, cf::LayerIO{x.dev, out.dev, attn.dev, act.dev}, 5, cf::LayerMode::Split),
               std::out_of_range);
  EXPECT_THROW(layer.forward(cache, 1, cf::LayerIO{x.dev, out.dev, attn.dev, act.dev}, 3, cf::LayerMode::Split),
               std::out_of_range);
  EXPECT_EQ(cache.length(), 3);
}

}  // namespace

namespace {

// A position read from device memory gives bitwise what the same position as a launch parameter gives, in
// both modes; a device position past the cache launches kernels that write nothing.
TEST(NeoXLayerGpuDevicePosition, MatchesHostPositionAndRefusesPastTheCache) {
  CF_REQUIRE_HOPPER();
  cf::ModelConfig config = cf::pythia_config("pythia-2.8b");
  config.layers = 1;
  const int max_seq = 512, position = 300;
  auto& rng = cf_test::rng();
  const RandomLayer w(config, rng);
  cf::NeoXLayer layer(config, w.views(), max_seq);
  cf::KVCache cache(config, max_seq);
  HalfTensor past_k({int64_t(cache.layer_elems())}, 0, 1, rng), past_v({int64_t(cache.layer_elems())}, 0, 1, rng);
  HalfTensor x({config.hidden}, 0, 1, rng);
  DeviceBuffer<float> attn(config.hidden), act(config.ffn);
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
    layer.forward(cache, 0, cf::LayerIO{x.dev, expected.dev, attn.dev, act.dev}, position, mode);
    const auto expected_cache = cache_bytes();

    reset_cache();
    got.poison();
    CF_CUDA_CHECK(cudaMemcpy(device_position.dev, &position, sizeof(int), cudaMemcpyHostToDevice));
    layer.forward_at_device_position(cache, 0, cf::LayerIO{x.dev, got.dev, attn.dev, act.dev}, device_position.dev,
                                     mode);
    CF_CUDA_CHECK(cudaDeviceSynchronize());
    const auto a = expected.get(), b = got.get();
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 2));
    EXPECT_TRUE(cache_bytes() == expected_cache);

    reset_cache();
    got.poison();
    const auto before = cache_bytes();
    CF_CUDA_CHECK(cudaMemcpy(device_position.dev, &max_seq, sizeof(int), cudaMemcpyHostToDevice));
    layer.forward_at_device_position(cache, 0, cf::LayerIO{x.dev, got.dev, attn.dev, act.dev}, device_position.dev,
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
TEST(NeoXLayerGpuOverlap, ChainMatchesOrdinaryLaunchesBitwise) {
  CF_REQUIRE_HOPPER();
  cf::ModelConfig config = cf::pythia_config("pythia-2.8b");
  config.layers = 4;
  const int max_seq = 512, position = 300;
  auto& rng = cf_test::rng();
  const RandomLayer w(config, rng);
  cf::NeoXLayer layer(config, w.views(), max_seq);
  EXPECT_FALSE(layer.overlap_previous_kernel());
  cf::KVCache cache(config, max_seq);
  HalfTensor past({int64_t(cache.layer_elems())}, 0, 1, rng), x({config.hidden}, 0, 1, rng);
  DeviceBuffer<__half> hidden_a(config.hidden), hidden_b(config.hidden);
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
      layer.forward(cache, l, cf::LayerIO{in, out, attn.dev, act.dev}, position, mode);
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
