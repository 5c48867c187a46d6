// Model configuration: the shape and arithmetic choices of one decoder-only transformer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace clusterfusion {

enum class Architecture { GPTNeoX, Llama };
enum class Norm { LayerNorm, RMSNorm };
enum class Activation { GELU, SiLU };  // GELU is the exact erf form

// How the rotary frequencies are derived from rotary_base (transformers' rope types that change the
// frequencies only; a type that also scales attention, such as yarn, has no value here).
enum class RopeType { Default, Linear, Llama3 };

struct RopeScaling {
  RopeType type = RopeType::Default;
  float factor = 1.0f;                // Linear, Llama3
  float low_freq_factor = 1.0f;       // Llama3
  float high_freq_factor = 4.0f;      // Llama3
  int original_max_positions = 8192;  // Llama3
};

struct ModelConfig {
  Architecture arch = Architecture::GPTNeoX;
  int hidden = 0;
  int heads = 0;
  int kv_heads = 0;  // grouped-query attention: query head j reads kv head j / (heads / kv_heads)
  int head_dim = 0;
  int ffn = 0;
  int layers = 0;
  int vocab = 0;
  int rotary_dims = 0;
  float rotary_base = 10000.0f;
  RopeScaling rope_scaling;
  float norm_eps = 1e-5f;
  bool parallel_residual = true;
  Norm norm = Norm::LayerNorm;
  Activation activation = Activation::GELU;
  bool tied_embeddings = false;  // the LM head is the input embedding

  // Throws std::invalid_argument naming the first offending field, e.g. "ModelConfig.head_dim: ...".
  void validate() const;

  int64_t q_rows() const { return int64_t(heads) * head_dim; }
  int64_t kv_rows() const { return int64_t(kv_heads) * head_dim; }
  int64_t qkv_rows() const { return q_rows() + 2 * kv_rows(); }
  int group_size() const { return heads / kv_heads; }  // query heads per kv head

  // The rotary inverse frequencies of pairs (i, i + rotary_dims/2), i < rotary_dims/2, in double, as
  // transformers' rope initialisation computes them for rope_scaling.
  std::vector<double> rotary_inv_freq() const;
};

// A supported model's shape by name: the Pythia family ("pythia-70m" ... "pythia-12b", "gpt-neox-20b") and
// the Llama family ("llama-2-7b", "tinyllama-1.1b", "llama-3-8b", "llama-3.2-1b"). Throws
// std::invalid_argument listing the known names otherwise.
ModelConfig model_config(const std::string& name);
std::vector<std::string> model_names();
// The Pythia family only (throws for other names, listing the Pythia ones).
ModelConfig pythia_config(const std::string& name);
ModelConfig llama2_7b_config();

const char* architecture_name(Architecture arch);
const char* rope_type_name(RopeType type);

}  // namespace clusterfusion
