// The KV cache: device memory for every layer, layout [layer][kv head][max_seq][head_dim] float16, so the
// cache of one head is one contiguous [max_seq, head_dim] matrix.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>

#include "clusterfusion/config.hpp"

namespace clusterfusion {

// The cache's shape and how many positions hold data, apart from the device memory so the bookkeeping is
// testable without a GPU. Every check throws before anything changes.
class KVCacheIndex {
 public:
  KVCacheIndex() = default;
  // Throws std::invalid_argument for an invalid config or max_seq <= 0.
  KVCacheIndex(const ModelConfig& config, int max_seq);

  int layers() const { return layers_; }
  int heads() const { return heads_; }
  int head_dim() const { return head_dim_; }
  int max_seq() const { return max_seq_; }
  int length() const { return length_; }

  // Throws std::out_of_range unless 0 <= layer < layers().
  void check_layer(int layer) const;
  // Throws std::out_of_range unless 0 <= position <= length() and position < max_seq().
  void check_append(int position) const;
  // Throws std::out_of_range unless 0 <= new_length <= max_seq().
  void set_length(int new_length);
  void reset() { length_ = 0; }

  std::size_t layer_elems() const { return static_cast<std::size_t>(heads_) * max_seq_ * head_dim_; }

 private:
  int layers_ = 0, heads_ = 0, head_dim_ = 0, max_seq_ = 0, length_ = 0;
};

// Not synchronised: use one from one thread at a time (DecodeContext serialises its own).
class KVCache {
 public:
  // Validates like KVCacheIndex, then allocates (and zeroes) the device memory on the current device, which
  // device() records; throws CudaError if that fails.
  KVCache(const ModelConfig& config, int max_seq);
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;
  // The moved-from cache is empty: no layers, no memory.
  KVCache(KVCache&& other) noexcept;
  KVCache& operator=(KVCache&& other) noexcept;

  const KVCacheIndex& index() const { return index_; }
  // The CUDA device of the memory (-1 for a moved-from cache).
  int device() const { return device_; }
  int layers() const { return index_.layers(); }
  int heads() const { return index_.heads(); }
  int head_dim() const { return index_.head_dim(); }
  int max_seq() const { return index_.max_seq(); }
  // Positions 0..length()-1 hold valid keys and values.
  int length() const { return index_.length(); }

  // Throws std::out_of_range unless 0 <= layer < layers().
  void check_layer(int layer) const { index_.check_layer(layer); }
  // Throws std::out_of_range (nothing changed) unless position <= length() and position < max_seq():
  // the slot a decode step at `position` will write.
  void check_append(int position) const { index_.check_append(position); }
  // Records that positions 0..new_length-1 are valid; throws std::out_of_range past max_seq.
  void set_length(int new_length) { index_.set_length(new_length); }
  void reset() { index_.reset(); }

  // Throw std::out_of_range for a layer outside 0..layers()-1.
  __half* keys(int layer) const { return layer_ptr(k_, layer); }
  __half* values(int layer) const { return layer_ptr(v_, layer); }
  std::size_t layer_elems() const { return index_.layer_elems(); }
  std::size_t bytes() const { return 2 * static_cast<std::size_t>(layers()) * layer_elems() * sizeof(__half); }

 private:
  __half* layer_ptr(__half* base, int layer) const;
  void release() noexcept;

  KVCacheIndex index_;
  int device_ = -1;
  __half* k_ = nullptr;
  __half* v_ = nullptr;
};

}  // namespace clusterfusion
