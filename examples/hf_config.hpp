// The ModelConfig of a transformers config.json (GPTNeoXConfig or LlamaConfig), for cf_generate: header-only so
// that the CPU tests and the fuzzer can reach it. The file comes with a downloaded checkpoint, so every number is
// checked before it is converted: sizes are integers in [1, INT_MAX], real numbers finite and in range of a
// float, each refusal naming the config.json field.
#pragma once
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <stdexcept>
#include <string>

#include "clusterfusion/config.hpp"
#include "clusterfusion/safetensors.hpp"

namespace cf_example {

namespace hf_config_detail {

namespace cf = clusterfusion;

inline const cf::JsonValue* rope_scope(const cf::JsonValue& config) {
  const cf::JsonValue* rope = config.find("rope_parameters");
  return rope != nullptr ? rope : config.find("rope_scaling");
}

// The number at `key` of the config or of its rope settings ("rope_parameters" in transformers 5, Llama's
// "rope_scaling" in 4.x), trying each name in turn, with the name found; nullptr when none has one (null
// counts as absent). A value of another kind is refused.
inline const cf::JsonValue* number_at(const cf::JsonValue& config, std::initializer_list<const char*> keys,
                                      const std::string& path, const char** found = nullptr) {
  for (const char* key : keys) {
    for (const cf::JsonValue* scope : {&config, rope_scope(config)}) {
      const cf::JsonValue* v = scope != nullptr ? scope->find(key) : nullptr;
      if (v == nullptr || v->kind == cf::JsonValue::Kind::Null) continue;
      if (v->kind != cf::JsonValue::Kind::Number) throw std::invalid_argument(path + ": " + key + ": expected a number");
      if (found != nullptr) *found = key;
      return v;
    }
  }
  return nullptr;
}

inline std::string number_text(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.15g", x);
  return text;
}

// A size: an integer in [1, INT_MAX]. `fallback` (when >= 1) stands for a missing value.
inline int count_at(const cf::JsonValue& config, std::initializer_list<const char*> keys, const std::string& path,
                    int fallback = 0) {
  const char* key = *keys.begin();
  const cf::JsonValue* v = number_at(config, keys, path, &key);
  if (v == nullptr) {
    if (fallback >= 1) return fallback;
    throw std::invalid_argument(path + ": no number for " + key);
  }
  const double x = v->number;
  if (!(x >= 1.0 && x <= double(INT_MAX)) || x != std::floor(x)) {
    throw std::invalid_argument(path + ": " + key + ": expected an integer in [1, " + std::to_string(INT_MAX) +
                                "], got " + number_text(x));
  }
  return static_cast<int>(x);
}

// A positive real number that a float holds (nonzero, finite). `fallback` (when > 0) stands for a missing value.
inline float positive_at(const cf::JsonValue& config, std::initializer_list<const char*> keys, const std::string& path,
                         double fallback = 0.0) {
  const char* key = *keys.begin();
  const cf::JsonValue* v = number_at(config, keys, path, &key);
  const double x = v != nullptr ? v->number : fallback;
  if (v == nullptr && !(fallback > 0.0)) throw std::invalid_argument(path + ": no number for " + key);
  if (!(x > 0.0 && x <= double(FLT_MAX)) || !(float(x) > 0.0f)) {
    throw std::invalid_argument(path + ": " + key + ": expected a positive number within the range of a float, got " +
                                number_text(x));
  }
  return static_cast<float>(x);
}

// The text at `key` of the config or of its rope settings, or `fallback`.
inline std::string text_at(const cf::JsonValue& config, const char* key, const std::string& fallback) {
  for (const cf::JsonValue* scope : {&config, rope_scope(config)}) {
    const cf::JsonValue* v = scope ? scope->find(key) : nullptr;
    if (v != nullptr && v->kind == cf::JsonValue::Kind::String) return v->text;
  }
  return fallback;
}

inline bool flag_at(const cf::JsonValue& config, const char* key, bool fallback) {
  const cf::JsonValue* v = config.find(key);
  return v != nullptr && v->kind == cf::JsonValue::Kind::Bool ? v->boolean : fallback;
}

}  // namespace hf_config_detail

// The ModelConfig that config.json's parsed contents `j` describe, refusing what the kernels do not compute;
// `path` names the file in messages. Throws std::invalid_argument.
inline clusterfusion::ModelConfig model_config_from_json(const clusterfusion::JsonValue& j, const std::string& path) {
  namespace cf = clusterfusion;
  using namespace hf_config_detail;
  if (j.kind != cf::JsonValue::Kind::Object) throw std::invalid_argument(path + ": expected a JSON object");
  const std::string type = text_at(j, "model_type", "");
  if (type != "gpt_neox" && type != "llama")
    throw std::invalid_argument(path + ": model_type: expected \"gpt_neox\" or \"llama\", got \"" + type + "\"");
  const bool llama = type == "llama";
  cf::ModelConfig c = cf::model_config(llama ? "llama-2-7b" : "pythia-70m");  // the architecture's recipe
  const std::string act = text_at(j, "hidden_act", "");
  if (act != (llama ? "silu" : "gelu"))
    throw std::invalid_argument(path + ": hidden_act: expected \"" + (llama ? "silu" : "gelu") + "\", got \"" + act + "\"");
  if (!llama && !flag_at(j, "use_parallel_residual", true))
    throw std::invalid_argument(path + ": use_parallel_residual: expected true");
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    if (llama && flag_at(j, bias, false))
      throw std::invalid_argument(path + ": " + bias + ": expected false (the Llama kernels have no biases)");
  }
  c.hidden = count_at(j, {"hidden_size"}, path);
  c.heads = count_at(j, {"num_attention_heads"}, path);
  c.kv_heads = llama ? count_at(j, {"num_key_value_heads"}, path, c.heads) : c.heads;
  if (number_at(j, {"head_dim"}, path) != nullptr) {
    c.head_dim = count_at(j, {"head_dim"}, path);
  } else if (c.hidden % c.heads != 0) {
    throw std::invalid_argument(path + ": hidden_size " + std::to_string(c.hidden) +
                                " is not a multiple of num_attention_heads " + std::to_string(c.heads));
  } else {
    c.head_dim = c.hidden / c.heads;
  }
  c.ffn = count_at(j, {"intermediate_size"}, path);
  c.layers = count_at(j, {"num_hidden_layers"}, path);
  c.vocab = count_at(j, {"vocab_size"}, path);
  double rotary_fraction = 1.0;
  if (!llama || rope_scope(j) != nullptr) {
    const char* key = "partial_rotary_factor";
    const cf::JsonValue* v = number_at(j, {"partial_rotary_factor", "rotary_pct"}, path, &key);
    if (v == nullptr && !llama) throw std::invalid_argument(path + ": no number for partial_rotary_factor");
    if (v != nullptr) rotary_fraction = v->number;
    if (!(rotary_fraction > 0.0 && rotary_fraction <= 1.0))
      throw std::invalid_argument(path + ": " + key + ": expected a fraction in (0, 1], got " + number_text(rotary_fraction));
  }
  c.rotary_dims = int(c.head_dim * rotary_fraction);
  c.rotary_base = positive_at(j, {"rope_theta", "rotary_emb_base"}, path, llama ? 10000.0 : 0.0);
  c.norm_eps = positive_at(j, {llama ? "rms_norm_eps" : "layer_norm_eps"}, path);
  c.tied_embeddings = llama && flag_at(j, "tie_word_embeddings", false);
  const std::string rope = text_at(j, "rope_type", text_at(j, "type", "default"));
  if (rope == "linear" || rope == "llama3") {
    c.rope_scaling.type = rope == "linear" ? cf::RopeType::Linear : cf::RopeType::Llama3;
    c.rope_scaling.factor = positive_at(j, {"factor"}, path);
  }
  if (rope == "llama3") {
    c.rope_scaling.low_freq_factor = positive_at(j, {"low_freq_factor"}, path);
    c.rope_scaling.high_freq_factor = positive_at(j, {"high_freq_factor"}, path);
    c.rope_scaling.original_max_positions = count_at(j, {"original_max_position_embeddings"}, path);
  } else if (rope != "linear" && rope != "default") {
    throw std::invalid_argument(path + ": rope_scaling: rope_type \"" + rope + "\" is not supported");
  }
  if (!llama && rope != "default") throw std::invalid_argument(path + ": rope_scaling: GPT-NeoX takes the default rope");
  c.validate();
  return c;
}

// The ModelConfig of `dir`/config.json. Throws std::runtime_error when the file cannot be read and
// std::invalid_argument when it is not a config the kernels compute.
inline clusterfusion::ModelConfig read_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) throw std::runtime_error(path + ": cannot open");
  // A FIFO would block forever, a device read forever.
  if (!std::filesystem::is_regular_file(status)) throw std::runtime_error(path + ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  clusterfusion::JsonValue j;
  try {
    j = clusterfusion::parse_json(text);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": " + e.what());
  }
  return model_config_from_json(j, path);
}

}  // namespace cf_example
