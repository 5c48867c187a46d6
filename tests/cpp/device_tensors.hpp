// Device tensors for the GPU tests: random float16 tensors (their rounded values kept on the host), scratch
// buffers that can be poisoned, and a decoder layer's random weights drawn by iterating the weight schema.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/host_reference.hpp"
#include "clusterfusion/weight_schema.hpp"
#include "clusterfusion/weights.hpp"

namespace cf_test {

namespace cf = clusterfusion;

// A device buffer of float16 values drawn from N(mean, std), with the values (as rounded) kept on the host.
// Drawn in fixed chunks, each from its own engine seeded by one draw of `rng` and the chunk's index, on as many
// threads as there are cores: the same seed gives the same values whatever the core count, and a gpt-neox-20b
// layer (604 M values) takes about a second instead of fifteen.
struct HalfTensor {
  std::vector<double> host;
  __half* dev = nullptr;
  std::vector<int64_t> shape;
  HalfTensor(std::vector<int64_t> s, double mean, double std, std::mt19937_64& rng) : shape(std::move(s)) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    constexpr int64_t kChunk = int64_t(1) << 20;
    const std::uint64_t seed = rng();
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<__half> h(n);
    host.resize(n);
    std::atomic<int64_t> next{0};
    auto draw = [&] {
      for (int64_t c = next++; c < chunks; c = next++) {
        std::seed_seq seq{std::uint32_t(seed), std::uint32_t(seed >> 32), std::uint32_t(c), std::uint32_t(c >> 32)};
        std::mt19937_64 engine(seq);
        std::normal_distribution<double> dist(mean, std);
        for (int64_t i = c * kChunk, end = std::min(n, i + kChunk); i < end; ++i) {
          h[i] = __double2half(dist(engine));
          host[i] = __half2float(h[i]);
        }
      }
    };
    const int64_t workers = std::min<int64_t>(chunks, std::max(1u, std::thread::hardware_concurrency()));
    std::vector<std::thread> threads;
    for (int64_t t = 1; t < workers; ++t) threads.emplace_back(draw);
    draw();
    for (auto& t : threads) t.join();
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev), n * sizeof(__half)));
    CF_CUDA_CHECK(cudaMemcpy(dev, h.data(), n * sizeof(__half), cudaMemcpyHostToDevice));
  }
  ~HalfTensor() { cudaFree(dev); }
  HalfTensor(const HalfTensor&) = delete;
  HalfTensor& operator=(const HalfTensor&) = delete;
  cf::TensorView view() const { return cf::TensorView(dev, shape, cf::DType::Float16); }
};

template <class T>
struct DeviceBuffer {
  T* dev = nullptr;
  std::size_t n;
  explicit DeviceBuffer(std::size_t count) : n(count) {
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev), n * sizeof(T)));
  }
  ~DeviceBuffer() { cudaFree(dev); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void poison() { CF_CUDA_CHECK(cudaMemset(dev, 0xff, n * sizeof(T))); }  // NaN in float16 and float32
  std::vector<T> get() const {
    std::vector<T> h(n);
    CF_CUDA_CHECK(cudaMemcpy(h.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

// A tensor of the schema at realistic scales: norm weights N(1, 0.1), norm biases N(0, 0.05), linear weights
// and biases N(0, 0.02), embeddings N(0, 1) (the layer tests' input scale), or N(0, 0.02) when the embedding is
// also the LM head (as transformers initialises it; at N(0, 1) every logit would be decided).
inline std::unique_ptr<HalfTensor> random_tensor(const cf::TensorSpec& spec, const cf::ModelConfig& c,
                                                 std::mt19937_64& rng) {
  const std::string name = spec.name;
  double mean = 0.0, std = 0.02;
  if (name == "ln1_weight" || name == "ln2_weight" || name == "final_norm_weight") mean = 1.0, std = 0.1;
  if (name == "ln1_bias" || name == "ln2_bias" || name == "final_norm_bias") std = 0.05;
  if (name == "embed_in" && !c.tied_embeddings) std = 1.0;
  return std::make_unique<HalfTensor>(cf::shape_of(spec, c), mean, std, rng);
}

// One decoder layer's weights, every tensor its architecture's schema lists.
struct RandomLayer {
  std::map<std::string, std::unique_ptr<HalfTensor>> tensors;
  cf::LayerWeights weights;
  RandomLayer(const cf::ModelConfig& c, std::mt19937_64& rng) {
    for (const cf::TensorSpec& spec : cf::weight_schema(c.arch).layer) {
      auto& t = tensors[spec.name] = random_tensor(spec, c, rng);
      weights.views[static_cast<std::size_t>(spec.slot)] = t->view();
    }
  }
  const cf::LayerWeights& views() const { return weights; }
  const std::vector<double>& host(const char* name) const { return tensors.at(name)->host; }
  // GPT-NeoX's tensors for the double-precision host reference.
  cf::reference::HostLayer neox_host() const {
    return {host("ln1_weight"), host("ln1_bias"), host("ln2_weight"), host("ln2_bias"), host("w_qkv"),
            host("b_qkv"),      host("w_o"),      host("b_o"),        host("w_up"),       host("b_up"),
            host("w_down"),     host("b_down")};
  }
};

}  // namespace cf_test
