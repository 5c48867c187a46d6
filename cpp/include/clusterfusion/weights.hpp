// Views of a model's weights as the model stores them (row-major [out, in] float16, transformers' layout).
#pragma once
#include <string>
#include <vector>

#include "clusterfusion/config.hpp"
#include "clusterfusion/tensor.hpp"

namespace clusterfusion {

// One GPT-NeoX decoder layer. Llama fills the same slots with its own meaning (see check()): norm biases
// and linear biases absent, w_qkv = [q; k; v] stacked by the caller, w_up = [gate; up].
struct LayerWeights {
  TensorView ln1_weight, ln1_bias;   // [hidden]
  TensorView ln2_weight, ln2_bias;   // [hidden]
  TensorView w_qkv, b_qkv;           // [3*hidden, hidden], [3*hidden] (per-head interleaved q|k|v)
  TensorView w_o, b_o;               // [hidden, hidden], [hidden]
  TensorView w_up, b_up;             // [ffn, hidden], [ffn]
  TensorView w_down, b_down;         // [hidden, ffn], [hidden]

  // Throws std::invalid_argument naming the tensor ("layers[3].w_up: expected [10240, 2560] ...").
  void check(const ModelConfig& config, const std::string& prefix = "layer") const;
};

struct ModelWeights {
  TensorView embed_in;                       // [vocab, hidden]
  std::vector<LayerWeights> layers;          // config.layers of them
  TensorView final_norm_weight, final_norm_bias;  // [hidden]
  TensorView lm_head;                        // [vocab, hidden]

  void check(const ModelConfig& config) const;
};

}  // namespace clusterfusion
