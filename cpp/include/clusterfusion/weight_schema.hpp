// The tensors of each architecture, defined once: the library's name of every weight, the transformers
// parameter it is read from, and its shape as a function of the config. Validation, the bindings, the
// transformers bridges, the checkpoint loader and the references iterate this table.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "clusterfusion/config.hpp"

namespace clusterfusion {

// Every per-layer weight any architecture has. An architecture's schema lists the slots it fills; the others
// stay empty.
enum class LayerSlot {
  ln1_weight, ln1_bias,  // the attention norm
  ln2_weight, ln2_bias,  // the MLP norm
  w_qkv, b_qkv,          // GPT-NeoX: q|k|v rows interleaved per head, [3*hidden, hidden]
  w_q, w_k, w_v,         // Llama: three matrices, [heads*head_dim | kv_heads*head_dim, hidden]
  w_o, b_o,
  w_gate,                // SwiGLU: silu(w_gate n) * (w_up n)
  w_up, b_up,
  w_down, b_down,
  count
};
enum class ModelSlot { embed_in, final_norm_weight, final_norm_bias, lm_head, count };

constexpr std::size_t kLayerSlots = static_cast<std::size_t>(LayerSlot::count);
constexpr std::size_t kModelSlots = static_cast<std::size_t>(ModelSlot::count);

// A dimension of a weight in terms of the config.
enum class Dim { None, Hidden, QkvRows, QRows, KvRows, Ffn, Vocab };

struct TensorSpec {
  int slot;              // a LayerSlot or a ModelSlot
  const char* name;      // the library's keyword ("w_up")
  const char* hf_name;   // the transformers parameter, relative to the layer for layer tensors
  Dim rows, cols;        // cols None: a vector
};

struct WeightSchema {
  Architecture arch;
  std::vector<TensorSpec> layer;  // in a fixed order, the one the bindings take them in
  std::vector<TensorSpec> model;
  std::string layer_prefix;  // transformers' name of layer i is layer_prefix + i + "." + hf_name
  std::string lm_head_alias;  // another name checkpoints give the LM head ("embed_out.weight"), or empty
};

const WeightSchema& weight_schema(Architecture arch);
std::vector<int64_t> shape_of(const TensorSpec& spec, const ModelConfig& config);
// The transformers name of layer `layer`'s tensor.
std::string hf_layer_name(const WeightSchema& schema, int layer, const TensorSpec& spec);

}  // namespace clusterfusion
