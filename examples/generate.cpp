// Generation with a GPT-NeoX (Pythia) or Llama checkpoint from C++ alone: loads the weights from safetensors (the
// tensors the library's weight schema lists for the architecture), runs the
// prompt through the decode step, generates tokens and prints them with the time per output token.
//
//   cf_generate MODEL_DIR [--prompt 12,345,6789] [--new 128] [--max-seq N] [--mode split|cooperative]
//               [--temperature T] [--top-k K] [--top-p P] [--seed S]
//
// MODEL_DIR holds config.json and model.safetensors (or shards listed by model.safetensors.index.json), as
// transformers' save_pretrained writes them; F16, BF16 and F32 tensors are read as float16. There is no
// tokenizer here: the prompt and the output are token ids. TTFT covers the prompt (the standalone prefill, one
// decode step per token) and the first new token; TPOT is the mean time of the later steps, enqueued back to back
// (each takes its input token from the previous step on the device).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/decode_context.hpp"
#include "clusterfusion/safetensors.hpp"
#include "clusterfusion/weight_schema.hpp"

namespace cf = clusterfusion;

namespace {

struct Options {
  std::string model_dir;
  std::vector<int> prompt{12092, 13, 309, 1353, 247};  // any ids below the vocab size
  int new_tokens = 128;
  int max_seq = 0;  // 0: prompt + new tokens
  std::optional<cf::LayerMode> mode;
  cf::SamplingParams sampling;
};

[[noreturn]] void usage(const std::string& problem) {
  std::fprintf(stderr,
               "%s\nusage: cf_generate MODEL_DIR [--prompt ID,ID,...] [--new N] [--max-seq N] "
               "[--mode split|cooperative] [--temperature T] [--top-k K] [--top-p P] [--seed S]\n",
               problem.c_str());
  std::exit(2);
}

std::vector<int> parse_ids(const std::string& text) {
  std::vector<int> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) ids.push_back(std::stoi(item));
  if (ids.empty()) usage("--prompt: expected comma-separated token ids");
  return ids;
}

Options parse_options(int argc, char** argv) {
  if (argc < 2) usage("MODEL_DIR is missing");
  Options o;
  o.model_dir = argv[1];
  for (int i = 2; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(flag + ": expected a value");
    const std::string value = argv[i + 1];
    try {
      if (flag == "--prompt") o.prompt = parse_ids(value);
      else if (flag == "--new") o.new_tokens = std::stoi(value);
      else if (flag == "--max-seq") o.max_seq = std::stoi(value);
      else if (flag == "--mode") o.mode = cf::parse_layer_mode(value);
      else if (flag == "--temperature") o.sampling.temperature = std::stof(value);
      else if (flag == "--top-k") o.sampling.top_k = std::stoi(value);
      else if (flag == "--top-p") o.sampling.top_p = std::stof(value);
      else if (flag == "--seed") o.sampling.seed = std::stoull(value);
      else usage("unknown option " + flag);
    } catch (const std::logic_error& e) {  // stoi and friends, parse_layer_mode
      usage(flag + " " + value + ": " + e.what());
    }
  }
  if (o.new_tokens < 1) usage("--new: expected at least 1");
  return o;
}

// The number at `key` of a JSON object, or of its "rope_parameters" object (transformers 5 keeps the rotary
// settings there; 4.x's Llama "rope_scaling"), trying each name in turn.
// A negative fallback means the number is required.
double number_at(const cf::JsonValue& config, std::initializer_list<const char*> keys, const std::string& path,
                 double fallback = -1.0) {
  const cf::JsonValue* rope = config.find("rope_parameters");
  if (rope == nullptr) rope = config.find("rope_scaling");
  for (const char* key : keys) {
    for (const cf::JsonValue* scope : {&config, rope}) {
      const cf::JsonValue* v = scope ? scope->find(key) : nullptr;
      if (v != nullptr && v->kind == cf::JsonValue::Kind::Number) return v->number;
    }
  }
  if (fallback >= 0.0) return fallback;
  throw std::invalid_argument(path + ": no number for " + *keys.begin());
}

const cf::JsonValue* rope_scope(const cf::JsonValue& config) {
  const cf::JsonValue* rope = config.find("rope_parameters");
  return rope != nullptr ? rope : config.find("rope_scaling");
}

// The text at `key` of the config or of its rope settings, or `fallback`.
std::string text_at(const cf::JsonValue& config, const char* key, const std::string& fallback) {
  for (const cf::JsonValue* scope : {&config, rope_scope(config)}) {
    const cf::JsonValue* v = scope ? scope->find(key) : nullptr;
    if (v != nullptr && v->kind == cf::JsonValue::Kind::String) return v->text;
  }
  return fallback;
}

bool flag_at(const cf::JsonValue& config, const char* key, bool fallback) {
  const cf::JsonValue* v = config.find(key);
  return v != nullptr && v->kind == cf::JsonValue::Kind::Bool ? v->boolean : fallback;
}

// The ModelConfig of a transformers GPTNeoXConfig or LlamaConfig, refusing what the kernels do not compute.
cf::ModelConfig read_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  const cf::JsonValue j = cf::parse_json(std::string(std::istreambuf_iterator<char>(in), {}));
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
  c.hidden = int(number_at(j, {"hidden_size"}, path));
  c.heads = int(number_at(j, {"num_attention_heads"}, path));
  c.kv_heads = llama && j.find("num_key_value_heads") ? int(number_at(j, {"num_key_value_heads"}, path)) : c.heads;
  c.head_dim = j.find("head_dim") ? int(number_at(j, {"head_dim"}, path)) : c.heads > 0 ? c.hidden / c.heads : 0;
  c.ffn = int(number_at(j, {"intermediate_size"}, path));
  c.layers = int(number_at(j, {"num_hidden_layers"}, path));
  c.vocab = int(number_at(j, {"vocab_size"}, path));
  const double rotary_fraction =
      llama && !rope_scope(j) ? 1.0 : number_at(j, {"partial_rotary_factor", "rotary_pct"}, path, llama ? 1.0 : -1.0);
  c.rotary_dims = int(c.head_dim * rotary_fraction);
  c.rotary_base = float(number_at(j, {"rope_theta", "rotary_emb_base"}, path, llama ? 10000.0 : -1.0));
  c.norm_eps = float(number_at(j, {llama ? "rms_norm_eps" : "layer_norm_eps"}, path));
  c.tied_embeddings = llama && flag_at(j, "tie_word_embeddings", false);
  const std::string rope = text_at(j, "rope_type", text_at(j, "type", "default"));
  if (rope == "linear" || rope == "llama3") {
    c.rope_scaling.type = rope == "linear" ? cf::RopeType::Linear : cf::RopeType::Llama3;
    c.rope_scaling.factor = float(number_at(j, {"factor"}, path));
  }
  if (rope == "llama3") {
    c.rope_scaling.low_freq_factor = float(number_at(j, {"low_freq_factor"}, path));
    c.rope_scaling.high_freq_factor = float(number_at(j, {"high_freq_factor"}, path));
    c.rope_scaling.original_max_positions = int(number_at(j, {"original_max_position_embeddings"}, path));
  } else if (rope != "linear" && rope != "default") {
    throw std::invalid_argument(path + ": rope_scaling: rope_type \"" + rope + "\" is not supported");
  }
  if (!llama && rope != "default") throw std::invalid_argument(path + ": rope_scaling: GPT-NeoX takes the default rope");
  c.validate();
  return c;
}

// Every tensor of the checkpoint, by name, copied to the GPU as float16; owns the device memory.
class DeviceWeights {
 public:
  explicit DeviceWeights(const std::string& dir) {
    for (const std::string& file : cf::checkpoint_files(dir)) files_.push_back(std::make_unique<cf::SafetensorsFile>(file));
  }
  ~DeviceWeights() {
    for (auto& [name, ptr] : device_) cudaFree(ptr);
  }
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  bool contains(const std::string& name) const {
    for (const auto& f : files_) {
      if (f->contains(name)) return true;
    }
    return false;
  }

  cf::TensorView load(const std::string& name) {
    for (const auto& f : files_) {
      if (!f->contains(name)) continue;
      const std::vector<std::uint16_t> host = f->read_half(name);
      void* dev = nullptr;
      CF_CUDA_CHECK(cudaMalloc(&dev, host.size() * sizeof(std::uint16_t)));
      device_[name] = dev;
      CF_CUDA_CHECK(cudaMemcpy(dev, host.data(), host.size() * sizeof(std::uint16_t), cudaMemcpyHostToDevice));
      bytes_ += host.size() * sizeof(std::uint16_t);
      return cf::TensorView(dev, f->at(name).shape, cf::DType::Float16);
    }
    throw std::out_of_range("checkpoint: no tensor '" + name + "'");
  }

  std::size_t bytes() const { return bytes_; }

 private:
  std::vector<std::unique_ptr<cf::SafetensorsFile>> files_;
  std::map<std::string, void*> device_;
  std::size_t bytes_ = 0;
};

// The schema's tensors of the architecture, by their transformers names; a tied LM head is the embedding.
cf::ModelWeights load_weights(DeviceWeights& store, const cf::ModelConfig& c) {
  const cf::WeightSchema& schema = cf::weight_schema(c.arch);
  cf::ModelWeights w;
  for (const cf::TensorSpec& spec : schema.model) {
    cf::TensorView& view = w.views[static_cast<std::size_t>(spec.slot)];
    if (store.contains(spec.hf_name)) {
      view = store.load(spec.hf_name);
    } else if (!schema.lm_head_alias.empty() && spec.slot == int(cf::ModelSlot::lm_head) &&
               store.contains(schema.lm_head_alias)) {
      view = store.load(schema.lm_head_alias);
    }
  }
  if (c.tied_embeddings && w[cf::ModelSlot::lm_head].data == nullptr) w[cf::ModelSlot::lm_head] = w[cf::ModelSlot::embed_in];
  for (const cf::TensorSpec& spec : schema.model) {
    if (w.views[static_cast<std::size_t>(spec.slot)].data == nullptr)
      throw std::out_of_range("checkpoint: no tensor '" + std::string(spec.hf_name) + "'");
  }
  for (int i = 0; i < c.layers; ++i) {
    cf::LayerWeights layer;
    for (const cf::TensorSpec& spec : schema.layer)
      layer.views[static_cast<std::size_t>(spec.slot)] = store.load(cf::hf_layer_name(schema, i, spec));
    w.layers.push_back(layer);
  }
  return w;
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

int run(const Options& o) {
  const cf::ModelConfig config = read_config(o.model_dir);
  DeviceWeights store(o.model_dir);
  const cf::ModelWeights weights = load_weights(store, config);
  const int needed = int(o.prompt.size()) + o.new_tokens - 1;
  cf::DecodeContext ctx(config, weights, o.max_seq > 0 ? o.max_seq : needed, o.mode);
  ctx.set_sampling(o.sampling);
  std::printf("%s: %d layers, hidden %d, vocab %d, %.2f GB of weights; %s layers, max_seq %d\n",
              o.model_dir.c_str(), config.layers, config.hidden, config.vocab, store.bytes() / 1e9,
              cf::layer_mode_name(ctx.mode()), ctx.max_seq());

  // Warm-up: the capture and instantiation, then the same again from position 0.
  ctx.prefill(o.prompt);
  ctx.reset();

  const auto start = std::chrono::steady_clock::now();
  ctx.prefill(o.prompt);  // returns after the first new token is on the host
  const double ttft = ms_since(start);
  const auto decode = std::chrono::steady_clock::now();
  for (int i = 1; i < o.new_tokens; ++i) ctx.enqueue_step();
  const int last = o.new_tokens > 1 ? ctx.last_token() : -1;
  const double decode_ms = ms_since(decode);

  const int first = int(o.prompt.size());
  std::vector<int> tokens(o.new_tokens);
  CF_CUDA_CHECK(cudaMemcpy(tokens.data(), ctx.tokens() + first, tokens.size() * sizeof(int), cudaMemcpyDeviceToHost));
  if (o.new_tokens > 1 && tokens.back() != last) throw std::logic_error("the token history disagrees with last_token()");
  std::printf("tokens:");
  for (int t : tokens) std::printf(" %d", t);
  std::printf("\n%zu prompt tokens, %d new: TTFT %.2f ms", o.prompt.size(), o.new_tokens, ttft);
  if (o.new_tokens > 1) {
    const double tpot = decode_ms / (o.new_tokens - 1);
    std::printf(", TPOT %.3f ms, %.1f tokens/s", tpot, 1e3 / tpot);
  }
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse_options(argc, argv);
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cf_generate: %s\n", e.what());
    return 1;
  }
}
