// Every decoder layer of a GPT-NeoX model for one new token in ONE cooperative launch (the "stack" mode): the
// layers run back to back with grid-wide barriers, each block's weight ring streaming on into the next layer.
#pragma once
#include <memory>
#include <vector>

#include <cuda_runtime_api.h>

#include "clusterfusion/kv_cache.hpp"
#include "clusterfusion/neox_layer.hpp"

namespace clusterfusion {

class NeoXStack {
 public:
  // Validates like NeoXLayer, for every layer. The weights and the cache are borrowed: they must outlive this.
  NeoXStack(const ModelConfig& config, const std::vector<LayerWeights>& layers, KVCache& cache);
  ~NeoXStack();
  NeoXStack(const NeoXStack&) = delete;
  NeoXStack& operator=(const NeoXStack&) = delete;

  const LayerLaunchPlan& plan() const { return layers_.front()->plan(); }
  int layers() const { return int(layers_.size()); }

  // x [hidden] float16 -> out [hidden] float16 through every layer at `position`, appending each layer's k/v.
  // Throws std::out_of_range if position >= max_seq or position > cache length (nothing launched).
  // timeline: optional stamps of the last layer (LayerIO::timeline).
  void forward(const void* x, void* out, int position, cudaStream_t stream = nullptr,
               unsigned long long* timeline = nullptr) const;

 private:
  ModelConfig config_;
  KVCache* cache_;
  std::vector<std::unique_ptr<NeoXLayer>> layers_;
  void* params_ = nullptr;   // device array of the layers' kernel parameters
  void* hidden_[2] = {nullptr, nullptr};
  float* attn_ = nullptr;
  float* mlp_act_ = nullptr;
  unsigned* grid_barrier_ = nullptr;
};

}  // namespace clusterfusion
