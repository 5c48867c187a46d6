// The kernels' view of a config (private to the library).
#pragma once
#include "clusterfusion/config.hpp"
#include "clusterfusion/kernels/layer_launch.hpp"

namespace clusterfusion {

inline kernels::LayerModel layer_model(Architecture arch) {
  return arch == Architecture::GPTNeoX ? kernels::LayerModel::GptNeoX : kernels::LayerModel::Llama;
}

inline kernels::LayerShape layer_shape(const ModelConfig& c, int max_seq) {
  return {layer_model(c.arch), c.hidden, c.heads, c.kv_heads, c.head_dim, c.ffn, max_seq};
}

}  // namespace clusterfusion
