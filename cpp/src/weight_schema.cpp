#include "clusterfusion/weight_schema.hpp"

#include <stdexcept>

namespace clusterfusion {

namespace {

constexpr int slot(LayerSlot s) { return static_cast<int>(s); }
constexpr int slot(ModelSlot s) { return static_cast<int>(s); }

WeightSchema gpt_neox_schema() {
  using L = LayerSlot;
  using M = ModelSlot;
  return WeightSchema{
      Architecture::GPTNeoX,
      {
          {slot(L::ln1_weight), "ln1_weight", "input_layernorm.weight", Dim::Hidden, Dim::None},
          {slot(L::ln1_bias), "ln1_bias", "input_layernorm.bias", Dim::Hidden, Dim::None},
          {slot(L::ln2_weight), "ln2_weight", "post_attention_layernorm.weight", Dim::Hidden, Dim::None},
          {slot(L::ln2_bias), "ln2_bias", "post_attention_layernorm.bias", Dim::Hidden, Dim::None},
          {slot(L::w_qkv), "w_qkv", "attention.query_key_value.weight", Dim::QkvRows, Dim::Hidden},
          {slot(L::b_qkv), "b_qkv", "attention.query_key_value.bias", Dim::QkvRows, Dim::None},
          {slot(L::w_o), "w_o", "attention.dense.weight", Dim::Hidden, Dim::QRows},
          {slot(L::b_o), "b_o", "attention.dense.bias", Dim::Hidden, Dim::None},
          {slot(L::w_up), "w_up", "mlp.dense_h_to_4h.weight", Dim::Ffn, Dim::Hidden},
          {slot(L::b_up), "b_up", "mlp.dense_h_to_4h.bias", Dim::Ffn, Dim::None},
          {slot(L::w_down), "w_down", "mlp.dense_4h_to_h.weight", Dim::Hidden, Dim::Ffn},
          {slot(L::b_down), "b_down", "mlp.dense_4h_to_h.bias", Dim::Hidden, Dim::None},
      },
      {
          {slot(M::embed_in), "embed_in", "gpt_neox.embed_in.weight", Dim::Vocab, Dim::Hidden},
          {slot(M::final_norm_weight), "final_norm_weight", "gpt_neox.final_layer_norm.weight", Dim::Hidden,
           Dim::None},
          {slot(M::final_norm_bias), "final_norm_bias", "gpt_neox.final_layer_norm.bias", Dim::Hidden, Dim::None},
          {slot(M::lm_head), "lm_head", "lm_head.weight", Dim::Vocab, Dim::Hidden},
      },
      "gpt_neox.layers.",
      "embed_out.weight",
  };
}

WeightSchema llama_schema() {
  using L = LayerSlot;
  using M = ModelSlot;
  return WeightSchema{
      Architecture::Llama,
      {
          {slot(L::ln1_weight), "ln1_weight", "input_layernorm.weight", Dim::Hidden, Dim::None},
          {slot(L::w_q), "w_q", "self_attn.q_proj.weight", Dim::QRows, Dim::Hidden},
          {slot(L::w_k), "w_k", "self_attn.k_proj.weight", Dim::KvRows, Dim::Hidden},
          {slot(L::w_v), "w_v", "self_attn.v_proj.weight", Dim::KvRows, Dim::Hidden},
          {slot(L::w_o), "w_o", "self_attn.o_proj.weight", Dim::Hidden, Dim::QRows},
          {slot(L::ln2_weight), "ln2_weight", "post_attention_layernorm.weight", Dim::Hidden, Dim::None},
          {slot(L::w_gate), "w_gate", "mlp.gate_proj.weight", Dim::Ffn, Dim::Hidden},
          {slot(L::w_up), "w_up", "mlp.up_proj.weight", Dim::Ffn, Dim::Hidden},
          {slot(L::w_down), "w_down", "mlp.down_proj.weight", Dim::Hidden, Dim::Ffn},
      },
      {
          {slot(M::embed_in), "embed_in", "model.embed_tokens.weight", Dim::Vocab, Dim::Hidden},
          {slot(M::final_norm_weight), "final_norm_weight", "model.norm.weight", Dim::Hidden, Dim::None},
          {slot(M::lm_head), "lm_head", "lm_head.weight", Dim::Vocab, Dim::Hidden},
      },
      "model.layers.",
      "",
  };
}

int64_t extent(Dim d, const ModelConfig& c) {
  switch (d) {
    case Dim::None: return 0;
    case Dim::Hidden: return c.hidden;
    case Dim::QkvRows: return c.qkv_rows();
    case Dim::QRows: return c.q_rows();
    case Dim::KvRows: return c.kv_rows();
    case Dim::Ffn: return c.ffn;
    case Dim::Vocab: return c.vocab;
  }
  return 0;
}

}  // namespace

const WeightSchema& weight_schema(Architecture arch) {
  static const WeightSchema neox = gpt_neox_schema();
  static const WeightSchema llama = llama_schema();
  switch (arch) {
    case Architecture::GPTNeoX: return neox;
    case Architecture::Llama: return llama;
  }
  throw std::invalid_argument("ModelConfig.arch: unknown architecture");
}

std::vector<int64_t> shape_of(const TensorSpec& spec, const ModelConfig& config) {
  if (spec.cols == Dim::None) return {extent(spec.rows, config)};
  return {extent(spec.rows, config), extent(spec.cols, config)};
}

std::string hf_layer_name(const WeightSchema& schema, int layer, const TensorSpec& spec) {
  return schema.layer_prefix + std::to_string(layer) + "." + spec.hf_name;
}

}  // namespace clusterfusion
