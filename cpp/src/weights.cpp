#include "clusterfusion/weights.hpp"

#include <stdexcept>

namespace clusterfusion {

namespace {

struct Checker {
  const std::string& prefix;

  std::string name(const char* field) const { return prefix + "." + field; }

  void operator()(const TensorView& view, const char* field, std::initializer_list<int64_t> shape) const {
    check_tensor(view, name(field).c_str(), shape);
  }

  // A slot the architecture leaves empty must be empty: a filled one means the caller mapped the wrong model.
  void absent(const TensorView& view, const char* field, const char* why) const {
    if (view.data != nullptr || !view.shape.empty()) {
      throw std::invalid_argument(name(field) + ": expected no tensor (" + why + "), got shape " + view.shape_str());
    }
  }
};

}  // namespace

void LayerWeights::check(const ModelConfig& config, const std::string& prefix) const {
  config.validate();
  const int64_t h = config.hidden, f = config.ffn;
  const Checker c{prefix};
  c(ln1_weight, "ln1_weight", {h});
  c(ln2_weight, "ln2_weight", {h});
  c(w_qkv, "w_qkv", {3 * h, h});
  c(w_o, "w_o", {h, h});
  if (config.arch == Architecture::GPTNeoX) {
    c(ln1_bias, "ln1_bias", {h});
    c(ln2_bias, "ln2_bias", {h});
    c(b_qkv, "b_qkv", {3 * h});
    c(b_o, "b_o", {h});
    c(w_up, "w_up", {f, h});
    c(b_up, "b_up", {f});
    c(w_down, "w_down", {h, f});
    c(b_down, "b_down", {h});
    return;
  }
  // Llama: RMSNorm and bias-free projections; w_up holds gate and up stacked.
  c(w_up, "w_up", {2 * f, h});
  c(w_down, "w_down", {h, f});
  const char* why = "Llama has no norm or projection biases";
  c.absent(ln1_bias, "ln1_bias", why);
  c.absent(ln2_bias, "ln2_bias", why);
  c.absent(b_qkv, "b_qkv", why);
  c.absent(b_o, "b_o", why);
  c.absent(b_up, "b_up", why);
  c.absent(b_down, "b_down", why);
}

void ModelWeights::check(const ModelConfig& config) const {
  config.validate();
  if (layers.size() != static_cast<std::size_t>(config.layers)) {
    throw std::invalid_argument("layers: expected " + std::to_string(config.layers) + " layers, got " +
                                std::to_string(layers.size()));
  }
  const int64_t h = config.hidden, vocab = config.vocab;
  check_tensor(embed_in, "embed_in", {vocab, h});
  for (std::size_t i = 0; i < layers.size(); ++i) layers[i].check(config, "layers[" + std::to_string(i) + "]");
  check_tensor(final_norm_weight, "final_norm_weight", {h});
  if (config.norm == Norm::LayerNorm) {
    check_tensor(final_norm_bias, "final_norm_bias", {h});
  } else if (final_norm_bias.data != nullptr || !final_norm_bias.shape.empty()) {
    throw std::invalid_argument("final_norm_bias: expected no tensor (RMSNorm has no bias), got shape " +
                                final_norm_bias.shape_str());
  }
  check_tensor(lm_head, "lm_head", {vocab, h});
}

}  // namespace clusterfusion
