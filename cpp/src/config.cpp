#include "clusterfusion/config.hpp"

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace clusterfusion {

namespace {

const char* name_of(Architecture a) { return a == Architecture::GPTNeoX ? "GPTNeoX" : "Llama"; }
const char* name_of(Norm n) { return n == Norm::LayerNorm ? "LayerNorm" : "RMSNorm"; }
const char* name_of(Activation a) { return a == Activation::GELU ? "GELU" : "SiLU"; }

template <typename T>
[[noreturn]] void fail(const char* field, const std::string& what, const T& got) {
  std::ostringstream msg;
  msg << std::boolalpha << "ModelConfig." << field << ": " << what << " (got " << got << ")";
  throw std::invalid_argument(msg.str());
}

void require_positive(const char* field, int value) {
  if (value <= 0) fail(field, "must be > 0", value);
}

void require_positive_finite(const char* field, float value) {
  if (!(value > 0.0f) || !std::isfinite(value)) fail(field, "must be a finite value > 0", value);
}

}  // namespace

void ModelConfig::validate() const {
  require_positive("hidden", hidden);
  require_positive("heads", heads);
  require_positive("head_dim", head_dim);
  if (static_cast<long long>(heads) * head_dim != hidden) {
    fail("hidden", "must equal heads * head_dim = " + std::to_string(heads) + " * " + std::to_string(head_dim) +
                       " = " + std::to_string(static_cast<long long>(heads) * head_dim),
         hidden);
  }
  require_positive("ffn", ffn);
  require_positive("layers", layers);
  require_positive("vocab", vocab);
  require_positive("rotary_dims", rotary_dims);
  // Rotate-half pairs dim i with dim i + rotary_dims/2.
  if (rotary_dims % 2 != 0) fail("rotary_dims", "must be even", rotary_dims);
  if (rotary_dims > head_dim) {
    fail("rotary_dims", "must be <= head_dim = " + std::to_string(head_dim), rotary_dims);
  }
  require_positive_finite("rotary_base", rotary_base);
  require_positive_finite("norm_eps", norm_eps);

  // The kernels implement exactly these two layer recipes; any other mix would be silently wrong math.
  const bool neox = arch == Architecture::GPTNeoX;
  const Norm want_norm = neox ? Norm::LayerNorm : Norm::RMSNorm;
  const Activation want_act = neox ? Activation::GELU : Activation::SiLU;
  const std::string arch_name = name_of(arch);
  if (norm != want_norm) fail("norm", arch_name + " requires " + name_of(want_norm), name_of(norm));
  if (activation != want_act) {
    fail("activation", arch_name + " requires " + name_of(want_act), name_of(activation));
  }
  if (parallel_residual != neox) {
    fail("parallel_residual", arch_name + " requires " + (neox ? "true" : "false"), parallel_residual);
  }
}

namespace {

struct PythiaShape {
  const char* name;
  int hidden, heads, head_dim, ffn, layers, vocab;
};

// transformers' GPTNeoXConfig of each model (vocab is the padded embedding size).
constexpr PythiaShape kPythia[] = {
    {"pythia-70m", 512, 8, 64, 2048, 6, 50304},        {"pythia-160m", 768, 12, 64, 3072, 12, 50304},
    {"pythia-410m", 1024, 16, 64, 4096, 24, 50304},    {"pythia-1b", 2048, 8, 256, 8192, 16, 50304},
    {"pythia-1.4b", 2048, 16, 128, 8192, 24, 50304},   {"pythia-2.8b", 2560, 32, 80, 10240, 32, 50304},
    {"pythia-6.9b", 4096, 32, 128, 16384, 32, 50432},  {"pythia-12b", 5120, 40, 128, 20480, 36, 50688},
    {"gpt-neox-20b", 6144, 64, 96, 24576, 44, 50432},
};

}  // namespace

ModelConfig pythia_config(const std::string& name) {
  for (const PythiaShape& s : kPythia) {
    if (name != s.name) continue;
    ModelConfig c;
    c.arch = Architecture::GPTNeoX;
    c.hidden = s.hidden;
    c.heads = s.heads;
    c.head_dim = s.head_dim;
    c.ffn = s.ffn;
    c.layers = s.layers;
    c.vocab = s.vocab;
    c.rotary_dims = s.head_dim / 4;  // rotary_pct = 0.25
    c.rotary_base = 10000.0f;
    c.norm_eps = 1e-5f;
    c.parallel_residual = true;
    c.norm = Norm::LayerNorm;
    c.activation = Activation::GELU;
    return c;
  }
  std::string known;
  for (const PythiaShape& s : kPythia) known += std::string(known.empty() ? "" : ", ") + s.name;
  throw std::invalid_argument("pythia_config: unknown model name '" + name + "' (known: " + known + ")");
}

ModelConfig llama2_7b_config() {
  ModelConfig c;
  c.arch = Architecture::Llama;
  c.hidden = 4096;
  c.heads = 32;
  c.head_dim = 128;
  c.ffn = 11008;
  c.layers = 32;
  c.vocab = 32000;
  c.rotary_dims = 128;
  c.rotary_base = 10000.0f;
  c.norm_eps = 1e-5f;
  c.parallel_residual = false;
  c.norm = Norm::RMSNorm;
  c.activation = Activation::SiLU;
  return c;
}

}  // namespace clusterfusion
