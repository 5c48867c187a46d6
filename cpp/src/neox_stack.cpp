// Host side of the stack mode: one device array of per-layer kernel parameters, built once.
#include "clusterfusion/neox_stack.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/kernels/neox_layer_launch.hpp"

namespace clusterfusion {

NeoXStack::NeoXStack(const ModelConfig& config, const std::vector<LayerWeights>& layers, KVCache& cache)
    : config_(config), cache_(&cache) {
  if (layers.empty()) throw std::invalid_argument("layers: at least one layer is needed");
  if (int(layers.size()) > cache.layers())
    throw std::invalid_argument("layers: " + std::to_string(layers.size()) + " layers but the cache holds " +
                                std::to_string(cache.layers()));
  for (std::size_t l = 0; l < layers.size(); ++l)
    layers_.push_back(std::make_unique<NeoXLayer>(config, layers[l], cache.max_seq()));
  CF_CUDA_CHECK(cudaMalloc(&hidden_[0], config.hidden * sizeof(__half)));
  CF_CUDA_CHECK(cudaMalloc(&hidden_[1], config.hidden * sizeof(__half)));
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&attn_), config.hidden * sizeof(float)));
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&mlp_act_), config.ffn * sizeof(float)));
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&grid_barrier_), sizeof(unsigned)));
  CF_CUDA_CHECK(cudaMemset(grid_barrier_, 0, sizeof(unsigned)));
  // x, out and the position are set per step by the kernel (NeoXStackArgs); everything else is fixed here.
  std::vector<kernels::NeoXLayerParams> params(layers_.size());
  const LayerIO io{hidden_[0], hidden_[1], attn_, mlp_act_};
  for (std::size_t l = 0; l < layers_.size(); ++l)
    layers_[l]->write_params(&params[l], cache, int(l), io, 0, grid_barrier_);
  const std::size_t bytes = params.size() * sizeof(kernels::NeoXLayerParams);
  CF_CUDA_CHECK(cudaMalloc(&params_, bytes));
  CF_CUDA_CHECK(cudaMemcpy(params_, params.data(), bytes, cudaMemcpyHostToDevice));
}

NeoXStack::~NeoXStack() {
  for (void* p : {params_, hidden_[0], hidden_[1], static_cast<void*>(attn_), static_cast<void*>(mlp_act_),
                  static_cast<void*>(grid_barrier_)})
    cudaFree(p);
}

void NeoXStack::forward(const void* x, void* out, int position, cudaStream_t stream,
                        unsigned long long* timeline) const {
  if (x == nullptr || out == nullptr) throw std::invalid_argument("x, out: null pointer");
  layers_.front()->check_position(*cache_, int(layers_.size()) - 1, position);
  kernels::NeoXStackArgs a = {};
  a.layers = static_cast<const kernels::NeoXLayerParams*>(params_);
  a.count = int(layers_.size());
  a.position = position;
  a.x = static_cast<const __half*>(x);
  a.out = static_cast<__half*>(out);
  a.hidden[0] = static_cast<__half*>(hidden_[0]);
  a.hidden[1] = static_cast<__half*>(hidden_[1]);
  a.timeline = timeline;
  kernels::launch_neox_stack(a, plan(), config_.head_dim, stream);
  cache_->set_length(std::max(cache_->length(), position + 1));
}

}  // namespace clusterfusion
