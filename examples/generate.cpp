// Generation with a GPT-NeoX (Pythia) checkpoint from C++ alone: loads the weights from safetensors, runs the
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
// settings there), trying each name in turn.
double number_at(const cf::JsonValue& config, std::initializer_list<const char*> keys, const std::string& path) {
  const cf::JsonValue* rope = config.find("rope_parameters");
  for (const char* key : keys) {
    for (const cf::JsonValue* scope : {&config, rope}) {
      const cf::JsonValue* v = scope ? scope->find(key) : nullptr;
      if (v != nullptr && v->kind == cf::JsonValue::Kind::Number) return v->number;
    }
  }
  throw std::invalid_argument(path + ": no number for " + *keys.begin());
}

// The ModelConfig of a transformers GPTNeoXConfig, refusing what the kernels do not compute.
cf::ModelConfig read_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  const cf::JsonValue j = cf::parse_json(std::string(std::istreambuf_iterator<char>(in), {}));
  const cf::JsonValue* type = j.find("model_type");
  if (type == nullptr || type->text != "gpt_neox")
    throw std::invalid_argument(path + ": model_type: expected \"gpt_neox\"");
  const cf::JsonValue* act = j.find("hidden_act");
  if (act == nullptr || act->text != "gelu") throw std::invalid_argument(path + ": hidden_act: expected \"gelu\"");
  const cf::JsonValue* parallel = j.find("use_parallel_residual");
  if (parallel != nullptr && !parallel->boolean)
    throw std::invalid_argument(path + ": use_parallel_residual: expected true");
  cf::ModelConfig c;
  c.hidden = int(number_at(j, {"hidden_size"}, path));
  c.heads = int(number_at(j, {"num_attention_heads"}, path));
  c.head_dim = c.hidden / c.heads;
  c.ffn = int(number_at(j, {"intermediate_size"}, path));
  c.layers = int(number_at(j, {"num_hidden_layers"}, path));
  c.vocab = int(number_at(j, {"vocab_size"}, path));
  c.rotary_dims = int(c.head_dim * number_at(j, {"partial_rotary_factor", "rotary_pct"}, path));
  c.rotary_base = float(number_at(j, {"rope_theta", "rotary_emb_base"}, path));
  c.norm_eps = float(number_at(j, {"layer_norm_eps"}, path));
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

cf::ModelWeights load_weights(DeviceWeights& store, const cf::ModelConfig& c) {
  cf::ModelWeights w;
  w.embed_in = store.load("gpt_neox.embed_in.weight");
  for (int i = 0; i < c.layers; ++i) {
    const std::string p = "gpt_neox.layers." + std::to_string(i) + ".";
    cf::LayerWeights l;
    l.ln1_weight = store.load(p + "input_layernorm.weight");
    l.ln1_bias = store.load(p + "input_layernorm.bias");
    l.ln2_weight = store.load(p + "post_attention_layernorm.weight");
    l.ln2_bias = store.load(p + "post_attention_layernorm.bias");
    l.w_qkv = store.load(p + "attention.query_key_value.weight");
    l.b_qkv = store.load(p + "attention.query_key_value.bias");
    l.w_o = store.load(p + "attention.dense.weight");
    l.b_o = store.load(p + "attention.dense.bias");
    l.w_up = store.load(p + "mlp.dense_h_to_4h.weight");
    l.b_up = store.load(p + "mlp.dense_h_to_4h.bias");
    l.w_down = store.load(p + "mlp.dense_4h_to_h.weight");
    l.b_down = store.load(p + "mlp.dense_4h_to_h.bias");
    w.layers.push_back(l);
  }
  w.final_norm_weight = store.load("gpt_neox.final_layer_norm.weight");
  w.final_norm_bias = store.load("gpt_neox.final_layer_norm.bias");
  // Checkpoints name the output projection embed_out; a tied model stores only the input embedding.
  w.lm_head = store.contains("embed_out.weight")  ? store.load("embed_out.weight")
              : store.contains("lm_head.weight") ? store.load("lm_head.weight")
                                                 : w.embed_in;
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
