#include "clusterfusion/kv_cache.hpp"

#include <stdexcept>
#include <string>
#include <utility>

#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/device_check.hpp"
#include "clusterfusion/device_guard.hpp"

namespace clusterfusion {

KVCacheIndex::KVCacheIndex(const ModelConfig& config, int max_seq) {
  config.validate();
  if (max_seq <= 0) throw std::invalid_argument("KVCache: max_seq must be > 0 (got " + std::to_string(max_seq) + ")");
  layers_ = config.layers;
  heads_ = config.kv_heads;  // the cache holds the kv heads (grouped-query attention)
  head_dim_ = config.head_dim;
  max_seq_ = max_seq;
}

void KVCacheIndex::check_layer(int layer) const {
  if (layer < 0 || layer >= layers_) {
    throw std::out_of_range("KVCache: layer " + std::to_string(layer) + " is outside 0.." +
                            std::to_string(layers_ - 1) + " (" + std::to_string(layers_) + " layers)");
  }
}

void KVCacheIndex::check_append(int position) const {
  const std::string at = "KVCache: position " + std::to_string(position);
  if (position < 0) throw std::out_of_range(at + " is negative");
  if (position >= max_seq_) throw std::out_of_range(at + " is past max_seq " + std::to_string(max_seq_));
  // Writing past length would leave a gap of never-written positions that attention would read.
  if (position > length_) {
    const std::string held =
        length_ == 0 ? "the cache is empty" : "positions 0.." + std::to_string(length_ - 1) + " hold data";
    throw std::out_of_range(at + " is past length " + std::to_string(length_) + " (" + held +
                            "; the next position to write is " + std::to_string(length_) + ")");
  }
}

void KVCacheIndex::set_length(int new_length) {
  const std::string at = "KVCache: length " + std::to_string(new_length);
  if (new_length < 0) throw std::out_of_range(at + " is negative");
  if (new_length > max_seq_) throw std::out_of_range(at + " is past max_seq " + std::to_string(max_seq_));
  length_ = new_length;
}

KVCache::KVCache(const ModelConfig& config, int max_seq) : index_(config, max_seq) {
  require_hopper();
  device_ = current_device();
  const std::size_t half_bytes = bytes() / 2;
  try {
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&k_), half_bytes));
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&v_), half_bytes));
    // Kernels may load whole tiles past length(); zeros there keep those lanes finite before masking.
    CF_CUDA_CHECK(cudaMemset(k_, 0, half_bytes));
    CF_CUDA_CHECK(cudaMemset(v_, 0, half_bytes));
  } catch (...) {
    release();
    throw;
  }
}

KVCache::~KVCache() { release(); }

KVCache::KVCache(KVCache&& other) noexcept
    : index_(std::exchange(other.index_, KVCacheIndex{})),
      device_(std::exchange(other.device_, -1)),
      k_(std::exchange(other.k_, nullptr)),
      v_(std::exchange(other.v_, nullptr)) {}

KVCache& KVCache::operator=(KVCache&& other) noexcept {
  if (this != &other) {
    release();
    index_ = std::exchange(other.index_, KVCacheIndex{});
    device_ = std::exchange(other.device_, -1);
    k_ = std::exchange(other.k_, nullptr);
    v_ = std::exchange(other.v_, nullptr);
  }
  return *this;
}

__half* KVCache::layer_ptr(__half* base, int layer) const {
  index_.check_layer(layer);
  return base + static_cast<std::size_t>(layer) * layer_elems();
}

void KVCache::release() noexcept {
  if (k_ || v_) {
    // A destructor must not throw; a failing cudaFree here means the context is already gone.
    const DeviceGuard on(device_, std::nothrow);
    if (k_) (void)cudaFree(k_);
    if (v_) (void)cudaFree(v_);
  }
  k_ = v_ = nullptr;
  device_ = -1;
  index_ = KVCacheIndex{};
}

}  // namespace clusterfusion
