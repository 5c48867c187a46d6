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
#include "hf_config.hpp"

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

// Every tensor of the checkpoint, by name, copied to the GPU as float16; owns the device memory.
class DeviceWeights {
 public:
  // A tensor in two shards is refused: which copy the index means is not ours to guess.
  explicit DeviceWeights(const std::string& dir) {
    std::map<std::string, const std::string*> shard_of;
    for (const std::string& file : cf::checkpoint_files(dir)) {
      files_.push_back(std::make_unique<cf::SafetensorsFile>(file));
      for (const auto& tensor : files_.back()->tensors()) {
        const auto [it, fresh] = shard_of.emplace(tensor.first, &files_.back()->path());
        if (!fresh) {
          throw std::invalid_argument("checkpoint: tensor '" + tensor.first + "' is in both " + *it->second + " and " +
                                      file);
        }
      }
    }
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
  const cf::ModelConfig config = cf_example::read_config(o.model_dir);
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
