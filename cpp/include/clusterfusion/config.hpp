// Model configuration: the shape and arithmetic choices of one decoder-only transformer.
#pragma once
#include <cstdint>
#include <string>

namespace clusterfusion {

enum class Architecture { GPTNeoX, Llama };
enum class Norm { LayerNorm, RMSNorm };
enum class Activation { GELU, SiLU };  // GELU is the exact erf form

struct ModelConfig {
  Architecture arch = Architecture::GPTNeoX;
  int hidden = 0;
  int heads = 0;
  int head_dim = 0;
  int ffn = 0;
  int layers = 0;
  int vocab = 0;
  int rotary_dims = 0;
  float rotary_base = 10000.0f;
  float norm_eps = 1e-5f;
  bool parallel_residual = true;
  Norm norm = Norm::LayerNorm;
  Activation activation = Activation::GELU;

  // Throws std::invalid_argument naming the first offending field, e.g. "ModelConfig.head_dim: ...".
  void validate() const;

  int qkv_rows() const { return 3 * hidden; }
};

// The Pythia family by name ("pythia-70m" ... "pythia-12b", "gpt-neox-20b"); throws std::invalid_argument
// listing the known names otherwise.
ModelConfig pythia_config(const std::string& name);
ModelConfig llama2_7b_config();

}  // namespace clusterfusion
