#include "clusterfusion/config.hpp"

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace clusterfusion {

namespace {

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
  const bool neox = arch == Architecture::GPTNeoX;
  require_positive("hidden", hidden);
  require_positive("heads", heads);
  require_positive("head_dim", head_dim);
  if (static_cast<long long>(heads) * head_dim != hidden) {
    fail("hidden", "must equal heads * head_dim = " + std::to_string(heads) + " * " + std::to_string(head_dim) +
                       " = " + std::to_string(static_cast<long long>(heads) * head_dim),
         hidden);
  }
  require_positive("kv_heads", kv_heads);
  if (heads % kv_heads != 0) {
    fail("kv_heads", "must divide heads = " + std::to_string(heads), kv_heads);
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
  if (rope_scaling.type != RopeType::Default) {
    require_positive_finite("rope_scaling.factor", rope_scaling.factor);
  }
  if (rope_scaling.type == RopeType::Llama3) {
    require_positive_finite("rope_scaling.low_freq_factor", rope_scaling.low_freq_factor);
    require_positive_finite("rope_scaling.high_freq_factor", rope_scaling.high_freq_factor);
    if (!(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor)) {
      fail("rope_scaling.high_freq_factor", "must be > low_freq_factor", rope_scaling.high_freq_factor);
    }
    require_positive("rope_scaling.original_max_positions", rope_scaling.original_max_positions);
  }
  if (neox && kv_heads != heads) {
    fail("kv_heads", "GPTNeoX requires kv_heads == heads = " + std::to_string(heads), kv_heads);
  }
  if (neox && rope_scaling.type != RopeType::Default) {
    fail("rope_scaling.type", "GPTNeoX requires the default rope", rope_type_name(rope_scaling.type));
  }
  if (tied_embeddings && neox) fail("tied_embeddings", "GPTNeoX has a separate LM head", tied_embeddings);

  // The kernels implement exactly these two layer recipes; any other mix would be silently wrong math.
  const Norm want_norm = neox ? Norm::LayerNorm : Norm::RMSNorm;
  const Activation want_act = neox ? Activation::GELU : Activation::SiLU;
  const std::string arch_name = architecture_name(arch);
  if (norm != want_norm) fail("norm", arch_name + " requires " + name_of(want_norm), name_of(norm));
  if (activation != want_act) {
    fail("activation", arch_name + " requires " + name_of(want_act), name_of(activation));
  }
  if (parallel_residual != neox) {
    fail("parallel_residual", arch_name + " requires " + (neox ? "true" : "false"), parallel_residual);
  }
}

namespace {

// Every supported model's shape, as its transformers config has it (Pythia's vocab is the padded embedding
// size; Llama's rms_norm_eps is 1e-5 in these checkpoints' configs).
struct ModelShape {
  const char* name;
  Architecture arch;
  int hidden, heads, kv_heads, head_dim, ffn, layers, vocab;
  float rotary_base;
  RopeScaling rope;
  bool tied;
};

constexpr RopeScaling kDefaultRope{};
constexpr RopeScaling llama3_rope(float factor) { return {RopeType::Llama3, factor, 1.0f, 4.0f, 8192}; }

constexpr ModelShape kModels[] = {
    {"pythia-70m", Architecture::GPTNeoX, 512, 8, 8, 64, 2048, 6, 50304, 1e4f, kDefaultRope, false},
    {"pythia-160m", Architecture::GPTNeoX, 768, 12, 12, 64, 3072, 12, 50304, 1e4f, kDefaultRope, false},
    {"pythia-410m", Architecture::GPTNeoX, 1024, 16, 16, 64, 4096, 24, 50304, 1e4f, kDefaultRope, false},
    {"pythia-1b", Architecture::GPTNeoX, 2048, 8, 8, 256, 8192, 16, 50304, 1e4f, kDefaultRope, false},
    {"pythia-1.4b", Architecture::GPTNeoX, 2048, 16, 16, 128, 8192, 24, 50304, 1e4f, kDefaultRope, false},
    {"pythia-2.8b", Architecture::GPTNeoX, 2560, 32, 32, 80, 10240, 32, 50304, 1e4f, kDefaultRope, false},
    {"pythia-6.9b", Architecture::GPTNeoX, 4096, 32, 32, 128, 16384, 32, 50432, 1e4f, kDefaultRope, false},
    {"pythia-12b", Architecture::GPTNeoX, 5120, 40, 40, 128, 20480, 36, 50688, 1e4f, kDefaultRope, false},
    {"gpt-neox-20b", Architecture::GPTNeoX, 6144, 64, 64, 96, 24576, 44, 50432, 1e4f, kDefaultRope, false},
    {"llama-2-7b", Architecture::Llama, 4096, 32, 32, 128, 11008, 32, 32000, 1e4f, kDefaultRope, false},
    {"tinyllama-1.1b", Architecture::Llama, 2048, 32, 4, 64, 5632, 22, 32000, 1e4f, kDefaultRope, false},
    {"llama-3-8b", Architecture::Llama, 4096, 32, 8, 128, 14336, 32, 128256, 5e5f, llama3_rope(8.0f), false},
    {"llama-3.2-1b", Architecture::Llama, 2048, 32, 8, 64, 8192, 16, 128256, 5e5f, llama3_rope(32.0f), true},
};

ModelConfig config_of(const ModelShape& s) {
  const bool neox = s.arch == Architecture::GPTNeoX;
  ModelConfig c;
  c.arch = s.arch;
  c.hidden = s.hidden;
  c.heads = s.heads;
  c.kv_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.ffn = s.ffn;
  c.layers = s.layers;
  c.vocab = s.vocab;
  c.rotary_dims = neox ? s.head_dim / 4 : s.head_dim;  // Pythia: rotary_pct = 0.25
  c.rotary_base = s.rotary_base;
  c.rope_scaling = s.rope;
  c.norm_eps = 1e-5f;
  c.parallel_residual = neox;
  c.norm = neox ? Norm::LayerNorm : Norm::RMSNorm;
  c.activation = neox ? Activation::GELU : Activation::SiLU;
  c.tied_embeddings = s.tied;
  return c;
}

[[noreturn]] void unknown_model(const char* caller, const std::string& name, bool pythia_only) {
  std::string known;
  for (const ModelShape& s : kModels) {
    if (pythia_only && s.arch != Architecture::GPTNeoX) continue;
    known += std::string(known.empty() ? "" : ", ") + s.name;
  }
  throw std::invalid_argument(std::string(caller) + ": unknown model name '" + name + "' (known: " + known + ")");
}

}  // namespace

ModelConfig model_config(const std::string& name) {
  for (const ModelShape& s : kModels) {
    if (name == s.name) return config_of(s);
  }
  unknown_model("model_config", name, false);
}

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const ModelShape& s : kModels) names.emplace_back(s.name);
  return names;
}

ModelConfig pythia_config(const std::string& name) {
  for (const ModelShape& s : kModels) {
    if (name == s.name && s.arch == Architecture::GPTNeoX) return config_of(s);
  }
  unknown_model("pythia_config", name, true);
}

ModelConfig llama2_7b_config() { return model_config("llama-2-7b"); }

const char* architecture_name(Architecture arch) { return arch == Architecture::GPTNeoX ? "GPTNeoX" : "Llama"; }

const char* rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::Default: return "default";
    case RopeType::Linear: return "linear";
    case RopeType::Llama3: return "llama3";
  }
  return "?";
}

std::vector<double> ModelConfig::rotary_inv_freq() const {
  const int pairs = rotary_dims / 2;
  std::vector<double> inv_freq(static_cast<std::size_t>(pairs));
  const RopeScaling& s = rope_scaling;
  for (int i = 0; i < pairs; ++i) {
    const double f = 1.0 / std::pow(double(rotary_base), 2.0 * i / rotary_dims);
    double scaled = f;
    if (s.type == RopeType::Linear) {
      scaled = f / s.factor;
    } else if (s.type == RopeType::Llama3) {
      // Wavelengths shorter than original/high_freq_factor keep their frequency, longer than
      // original/low_freq_factor are divided by factor, and the band between is interpolated.
      const double pi = 3.14159265358979323846;
      const double wavelen = 2.0 * pi / f;
      const double low_wavelen = double(s.original_max_positions) / s.low_freq_factor;
      const double high_wavelen = double(s.original_max_positions) / s.high_freq_factor;
      if (wavelen > low_wavelen) {
        scaled = f / s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (double(s.original_max_positions) / wavelen - s.low_freq_factor) /
            (double(s.high_freq_factor) - double(s.low_freq_factor));
        scaled = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
    inv_freq[static_cast<std::size_t>(i)] = scaled;
  }
  return inv_freq;
}

}  // namespace clusterfusion
