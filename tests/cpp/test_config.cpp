// ModelConfig: presets match the Pythia / Llama tables, validate() names each bad field, and rotary_inv_freq()
// follows transformers' rope initialisation (default, linear, llama3).
#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/config.hpp"
#include "config_expect.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

struct Expected {
  const char* name;
  int hidden, heads, head_dim, ffn, layers, vocab, rotary_dims;
};

// The table of /work/shared/notes/gpt-neox-decode.md (transformers' GPTNeoXConfig of each model).
const Expected kPythia[] = {
    {"pythia-70m", 512, 8, 64, 2048, 6, 50304, 16},       {"pythia-160m", 768, 12, 64, 3072, 12, 50304, 16},
    {"pythia-410m", 1024, 16, 64, 4096, 24, 50304, 16},   {"pythia-1b", 2048, 8, 256, 8192, 16, 50304, 64},
    {"pythia-1.4b", 2048, 16, 128, 8192, 24, 50304, 32},  {"pythia-2.8b", 2560, 32, 80, 10240, 32, 50304, 20},
    {"pythia-6.9b", 4096, 32, 128, 16384, 32, 50432, 32}, {"pythia-12b", 5120, 40, 128, 20480, 36, 50688, 32},
    {"gpt-neox-20b", 6144, 64, 96, 24576, 44, 50432, 24},
};

struct LlamaExpected {
  const char* name;
  int hidden, heads, kv_heads, head_dim, ffn, layers, vocab;
  float rotary_base;
  cf::RopeType rope;
  float factor;  // llama3: low_freq_factor 1, high_freq_factor 4, original_max_positions 8192
  bool tied;
};

// The table of /work/shared/notes/llama-decode.md.
const LlamaExpected kLlama[] = {
    {"llama-2-7b", 4096, 32, 32, 128, 11008, 32, 32000, 1e4f, cf::RopeType::Default, 1.0f, false},
    {"tinyllama-1.1b", 2048, 32, 4, 64, 5632, 22, 32000, 1e4f, cf::RopeType::Default, 1.0f, false},
    {"llama-3-8b", 4096, 32, 8, 128, 14336, 32, 128256, 5e5f, cf::RopeType::Llama3, 8.0f, false},
    {"llama-3.2-1b", 2048, 32, 8, 64, 8192, 16, 128256, 5e5f, cf::RopeType::Llama3, 32.0f, true},
};

std::string validate_message(const cf::ModelConfig& c) {
  return cf_test::thrown_message<std::invalid_argument>([&] { c.validate(); });
}

// A random positive divisor of n.
int random_divisor(int n) {
  std::vector<int> divisors;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) divisors.push_back(d);
  return divisors[cf_test::uniform_int(0, static_cast<int>(divisors.size()) - 1)];
}

// A random valid Llama config (GQA, rope type and scaling drawn at random).
cf::ModelConfig random_llama() {
  cf::ModelConfig c = cf::model_config("llama-2-7b");
  c.heads = cf_test::uniform_int(1, 64);
  c.kv_heads = random_divisor(c.heads);
  c.head_dim = 2 * cf_test::uniform_int(1, 128);
  c.hidden = c.heads * c.head_dim;
  c.rotary_dims = 2 * cf_test::uniform_int(1, c.head_dim / 2);
  c.ffn = cf_test::uniform_int(1, 30000);
  c.layers = cf_test::uniform_int(1, 100);
  c.vocab = cf_test::uniform_int(1, 200000);
  c.rotary_base = static_cast<float>(cf_test::uniform(1.0, 1e6));
  c.norm_eps = static_cast<float>(cf_test::uniform(1e-8, 1e-3));
  c.tied_embeddings = cf_test::uniform_int(0, 1) == 1;
  c.rope_scaling.type = static_cast<cf::RopeType>(cf_test::uniform_int(0, 2));
  c.rope_scaling.factor = static_cast<float>(cf_test::uniform(0.1, 64.0));
  c.rope_scaling.low_freq_factor = static_cast<float>(cf_test::uniform(0.1, 4.0));
  c.rope_scaling.high_freq_factor = c.rope_scaling.low_freq_factor + static_cast<float>(cf_test::uniform(0.1, 8.0));
  c.rope_scaling.original_max_positions = cf_test::uniform_int(1, 1 << 17);
  return c;
}

// transformers' default rope: base^(-2i/r), i < r/2.
std::vector<double> default_inv_freq(double base, int r) {
  std::vector<double> f(r / 2);
  for (int i = 0; i < r / 2; ++i) f[i] = std::pow(base, -2.0 * i / r);
  return f;
}

enum class Llama3Region { Kept, Blended, Divided };

// The llama3 rule as /work/shared/notes/llama-decode.md states it, written out independently of the library:
// wavelen = 2π / f; wavelen < P/hf: keep f; wavelen > P/l: f / factor; else s = (P/wavelen − l) / (hf − l),
// (1 − s)·f/factor + s·f.
double llama3_inv_freq(double f, const cf::RopeScaling& s, Llama3Region* region) {
  const double wavelen = 2.0 * std::acos(-1.0) / f;
  const double P = s.original_max_positions, l = s.low_freq_factor, hf = s.high_freq_factor;
  if (wavelen < P / hf) {
    *region = Llama3Region::Kept;
    return f;
  }
  if (wavelen > P / l) {
    *region = Llama3Region::Divided;
    return f / s.factor;
  }
  *region = Llama3Region::Blended;
  const double smooth = (P / wavelen - l) / (hf - l);
  return (1.0 - smooth) * f / s.factor + smooth * f;
}

// How far two correct double evaluations of the rule may differ. Kept and divided: a few ulps. Blended: an ulp of
// f moves P/wavelen by an ulp, and s = (P/wavelen − l) / (hf − l) amplifies that by (P/wavelen) / (hf − l) <=
// hf / (hf − l); the result moves by that change of s times f.
double llama3_tolerance(double f, const cf::RopeScaling& s, Llama3Region region) {
  if (region != Llama3Region::Blended) return 1e-15 * (region == Llama3Region::Kept ? f : f / s.factor);
  const double hf = s.high_freq_factor, l = s.low_freq_factor;
  return 1e-15 * f * std::max(1.0, hf / (hf - l));
}

}  // namespace

TEST(PythiaConfig, MatchesTheModelTable) {
  for (const Expected& e : kPythia) {
    SCOPED_TRACE(e.name);
    const cf::ModelConfig c = cf::pythia_config(e.name);
    EXPECT_EQ(c.arch, cf::Architecture::GPTNeoX);
    EXPECT_EQ(c.hidden, e.hidden);
    EXPECT_EQ(c.heads, e.heads);
    EXPECT_EQ(c.kv_heads, e.heads);  // no grouped-query attention in GPT-NeoX
    EXPECT_EQ(c.head_dim, e.head_dim);
    EXPECT_EQ(c.ffn, e.ffn);
    EXPECT_EQ(c.layers, e.layers);
    EXPECT_EQ(c.vocab, e.vocab);
    EXPECT_EQ(c.rotary_dims, e.rotary_dims);
    EXPECT_EQ(c.rotary_dims, c.head_dim / 4);  // rotary_pct = 0.25
    EXPECT_EQ(c.rotary_base, 10000.0f);
    EXPECT_EQ(c.rope_scaling.type, cf::RopeType::Default);
    EXPECT_EQ(c.norm_eps, 1e-5f);
    EXPECT_TRUE(c.parallel_residual);
    EXPECT_EQ(c.norm, cf::Norm::LayerNorm);
    EXPECT_EQ(c.activation, cf::Activation::GELU);
    EXPECT_FALSE(c.tied_embeddings);
    EXPECT_EQ(c.q_rows(), e.hidden);
    EXPECT_EQ(c.kv_rows(), e.hidden);
    EXPECT_EQ(c.qkv_rows(), 3 * e.hidden);
    EXPECT_EQ(c.group_size(), 1);
    EXPECT_NO_THROW(c.validate());
    cf_test::expect_same_config(cf::model_config(e.name), c);
  }
}

TEST(PythiaConfig, UnknownNameListsTheKnownOnes) {
  const std::string msg =
      cf_test::thrown_message<std::invalid_argument>([] { cf::pythia_config("pythia-3b"); });
  EXPECT_EQ(msg.rfind("pythia_config: unknown model name 'pythia-3b' (known: ", 0), 0u) << msg;
  for (const Expected& e : kPythia) EXPECT_NE(msg.find(e.name), std::string::npos) << e.name << " in " << msg;
  // Only the Pythia family: pythia_config cannot build the others.
  for (const LlamaExpected& e : kLlama) EXPECT_EQ(msg.find(e.name), std::string::npos) << e.name << " in " << msg;
}

TEST(PythiaConfig, RefusesLlamaNames) {
  for (const LlamaExpected& e : kLlama) {
    SCOPED_TRACE(e.name);
    EXPECT_NO_THROW(cf::model_config(e.name));
    const std::string msg = cf_test::thrown_message<std::invalid_argument>([&] { cf::pythia_config(e.name); });
    EXPECT_EQ(msg.rfind(std::string("pythia_config: unknown model name '") + e.name + "'", 0), 0u) << msg;
  }
}

TEST(Llama2Config, MatchesLlama2_7B) {
  const cf::ModelConfig c = cf::llama2_7b_config();
  EXPECT_EQ(c.arch, cf::Architecture::Llama);
  EXPECT_EQ(c.hidden, 4096);
  EXPECT_EQ(c.heads, 32);
  EXPECT_EQ(c.kv_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.ffn, 11008);
  EXPECT_EQ(c.layers, 32);
  EXPECT_EQ(c.vocab, 32000);
  EXPECT_EQ(c.rotary_dims, 128);
  EXPECT_EQ(c.rotary_base, 10000.0f);
  EXPECT_EQ(c.rope_scaling.type, cf::RopeType::Default);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_FALSE(c.parallel_residual);
  EXPECT_EQ(c.norm, cf::Norm::RMSNorm);
  EXPECT_EQ(c.activation, cf::Activation::SiLU);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_NO_THROW(c.validate());
  cf_test::expect_same_config(cf::model_config("llama-2-7b"), c);
}

TEST(LlamaConfig, MatchesTheModelTable) {
  for (const LlamaExpected& e : kLlama) {
    SCOPED_TRACE(e.name);
    const cf::ModelConfig c = cf::model_config(e.name);
    EXPECT_EQ(c.arch, cf::Architecture::Llama);
    EXPECT_EQ(c.hidden, e.hidden);
    EXPECT_EQ(c.heads, e.heads);
    EXPECT_EQ(c.kv_heads, e.kv_heads);
    EXPECT_EQ(c.head_dim, e.head_dim);
    EXPECT_EQ(c.ffn, e.ffn);
    EXPECT_EQ(c.layers, e.layers);
    EXPECT_EQ(c.vocab, e.vocab);
    EXPECT_EQ(c.rotary_dims, e.head_dim);  // rotary on all head dims
    EXPECT_EQ(c.rotary_base, e.rotary_base);
    EXPECT_EQ(c.rope_scaling.type, e.rope);
    if (e.rope == cf::RopeType::Llama3) {
      EXPECT_EQ(c.rope_scaling.factor, e.factor);
      EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0f);
      EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0f);
      EXPECT_EQ(c.rope_scaling.original_max_positions, 8192);
    }
    EXPECT_EQ(c.norm_eps, 1e-5f);  // the checkpoints' rms_norm_eps, not LlamaConfig's default 1e-6
    EXPECT_FALSE(c.parallel_residual);
    EXPECT_EQ(c.norm, cf::Norm::RMSNorm);
    EXPECT_EQ(c.activation, cf::Activation::SiLU);
    EXPECT_EQ(c.tied_embeddings, e.tied);
    EXPECT_EQ(c.q_rows(), int64_t{e.heads} * e.head_dim);
    EXPECT_EQ(c.kv_rows(), int64_t{e.kv_heads} * e.head_dim);
    EXPECT_EQ(c.qkv_rows(), int64_t{e.heads + 2 * e.kv_heads} * e.head_dim);
    EXPECT_EQ(c.group_size(), e.heads / e.kv_heads);
    EXPECT_NO_THROW(c.validate());
  }
}

TEST(ModelNames, ListsEveryPresetOnceAndEachValidates) {
  const std::vector<std::string> names = cf::model_names();
  std::set<std::string> want;
  for (const Expected& e : kPythia) want.insert(e.name);
  for (const LlamaExpected& e : kLlama) want.insert(e.name);
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), want);
  EXPECT_EQ(names.size(), want.size()) << "a name is listed twice";
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const cf::ModelConfig c = cf::model_config(name);
    EXPECT_NO_THROW(c.validate());
    const bool pythia = name.rfind("pythia-", 0) == 0 || name == "gpt-neox-20b";
    EXPECT_EQ(c.arch, pythia ? cf::Architecture::GPTNeoX : cf::Architecture::Llama);
  }
}

TEST(ModelNames, UnknownNameListsTheKnownOnes) {
  // A random name that no preset has.
  const std::string bad = "llama-" + std::to_string(cf_test::uniform_int(4, 999)) + "b";
  const std::string msg = cf_test::thrown_message<std::invalid_argument>([&] { cf::model_config(bad); });
  EXPECT_EQ(msg.rfind("model_config: unknown model name '" + bad + "' (known: ", 0), 0u) << msg;
  for (const std::string& name : cf::model_names())
    EXPECT_NE(msg.find(name), std::string::npos) << name << " in " << msg;
}

TEST(ModelConfigValidate, AcceptsRandomConsistentShapes) {
  for (int trial = 0; trial < 50; ++trial) {
    cf::ModelConfig c = cf::pythia_config("pythia-70m");
    c.heads = cf_test::uniform_int(1, 64);
    c.kv_heads = c.heads;
    c.head_dim = 2 * cf_test::uniform_int(1, 128);
    c.hidden = c.heads * c.head_dim;
    c.rotary_dims = 2 * cf_test::uniform_int(1, c.head_dim / 2);
    c.ffn = cf_test::uniform_int(1, 30000);
    c.layers = cf_test::uniform_int(1, 100);
    c.vocab = cf_test::uniform_int(1, 100000);
    c.norm_eps = static_cast<float>(cf_test::uniform(1e-8, 1e-3));
    c.rotary_base = static_cast<float>(cf_test::uniform(1.0, 1e6));
    EXPECT_NO_THROW(c.validate()) << "heads " << c.heads << " head_dim " << c.head_dim;
  }
}

TEST(ModelConfigValidate, AcceptsRandomConsistentLlamaShapes) {
  for (int trial = 0; trial < 50; ++trial) {
    const cf::ModelConfig c = random_llama();
    EXPECT_NO_THROW(c.validate()) << "heads " << c.heads << " kv_heads " << c.kv_heads << " rope "
                                  << cf::rope_type_name(c.rope_scaling.type);
  }
}

struct BadField {
  const char* what;
  std::function<void(cf::ModelConfig&)> corrupt;
  const char* message;
};

TEST(ModelConfigValidate, NamesEachBadFieldOfPythia) {
  const BadField cases[] = {
      {"hidden", [](auto& c) { c.hidden = 0; }, "ModelConfig.hidden: must be > 0 (got 0)"},
      {"heads", [](auto& c) { c.heads = -1; }, "ModelConfig.heads: must be > 0 (got -1)"},
      {"head_dim", [](auto& c) { c.head_dim = 0; }, "ModelConfig.head_dim: must be > 0 (got 0)"},
      {"hidden vs heads", [](auto& c) { c.hidden = 2561; },
       "ModelConfig.hidden: must equal heads * head_dim = 32 * 80 = 2560 (got 2561)"},
      {"kv_heads zero", [](auto& c) { c.kv_heads = 0; }, "ModelConfig.kv_heads: must be > 0 (got 0)"},
      {"kv_heads negative", [](auto& c) { c.kv_heads = -4; }, "ModelConfig.kv_heads: must be > 0 (got -4)"},
      {"kv_heads not dividing", [](auto& c) { c.kv_heads = 5; },
       "ModelConfig.kv_heads: must divide heads = 32 (got 5)"},
      {"ffn", [](auto& c) { c.ffn = 0; }, "ModelConfig.ffn: must be > 0 (got 0)"},
      {"layers", [](auto& c) { c.layers = 0; }, "ModelConfig.layers: must be > 0 (got 0)"},
      {"vocab", [](auto& c) { c.vocab = -5; }, "ModelConfig.vocab: must be > 0 (got -5)"},
      {"rotary_dims zero", [](auto& c) { c.rotary_dims = 0; }, "ModelConfig.rotary_dims: must be > 0 (got 0)"},
      {"rotary_dims odd", [](auto& c) { c.rotary_dims = 21; }, "ModelConfig.rotary_dims: must be even (got 21)"},
      {"rotary_dims wide", [](auto& c) { c.rotary_dims = 82; },
       "ModelConfig.rotary_dims: must be <= head_dim = 80 (got 82)"},
      {"rotary_base", [](auto& c) { c.rotary_base = 0.0f; },
       "ModelConfig.rotary_base: must be a finite value > 0 (got 0)"},
      {"rotary_base nan", [](auto& c) { c.rotary_base = NAN; },
       "ModelConfig.rotary_base: must be a finite value > 0 (got nan)"},
      {"norm_eps", [](auto& c) { c.norm_eps = -0.5f; },
       "ModelConfig.norm_eps: must be a finite value > 0 (got -0.5)"},
      {"norm_eps inf", [](auto& c) { c.norm_eps = INFINITY; },
       "ModelConfig.norm_eps: must be a finite value > 0 (got inf)"},
      {"tied_embeddings", [](auto& c) { c.tied_embeddings = true; },
       "ModelConfig.tied_embeddings: GPTNeoX has a separate LM head (got true)"},
      {"norm", [](auto& c) { c.norm = cf::Norm::RMSNorm; },
       "ModelConfig.norm: GPTNeoX requires LayerNorm (got RMSNorm)"},
      {"activation", [](auto& c) { c.activation = cf::Activation::SiLU; },
       "ModelConfig.activation: GPTNeoX requires GELU (got SiLU)"},
      {"parallel_residual", [](auto& c) { c.parallel_residual = false; },
       "ModelConfig.parallel_residual: GPTNeoX requires true (got false)"},
  };
  for (const BadField& bad : cases) {
    SCOPED_TRACE(bad.what);
    cf::ModelConfig c = cf::pythia_config("pythia-2.8b");
    bad.corrupt(c);
    EXPECT_EQ(validate_message(c), bad.message);
  }
}

TEST(ModelConfigValidate, NamesEachBadFieldOfLlama) {
  const BadField cases[] = {
      {"kv_heads zero", [](auto& c) { c.kv_heads = 0; }, "ModelConfig.kv_heads: must be > 0 (got 0)"},
      {"kv_heads not dividing", [](auto& c) { c.kv_heads = 5; },
       "ModelConfig.kv_heads: must divide heads = 32 (got 5)"},
      {"kv_heads above heads", [](auto& c) { c.kv_heads = 64; },
       "ModelConfig.kv_heads: must divide heads = 32 (got 64)"},
      {"norm", [](auto& c) { c.norm = cf::Norm::LayerNorm; },
       "ModelConfig.norm: Llama requires RMSNorm (got LayerNorm)"},
      {"activation", [](auto& c) { c.activation = cf::Activation::GELU; },
       "ModelConfig.activation: Llama requires SiLU (got GELU)"},
      {"parallel_residual", [](auto& c) { c.parallel_residual = true; },
       "ModelConfig.parallel_residual: Llama requires false (got true)"},
  };
  for (const BadField& bad : cases) {
    SCOPED_TRACE(bad.what);
    cf::ModelConfig c = cf::llama2_7b_config();
    bad.corrupt(c);
    EXPECT_EQ(validate_message(c), bad.message);
  }
}

TEST(ModelConfigValidate, NamesEachBadRopeScalingField) {
  const BadField llama3_cases[] = {
      {"factor zero", [](auto& c) { c.rope_scaling.factor = 0.0f; },
       "ModelConfig.rope_scaling.factor: must be a finite value > 0 (got 0)"},
      {"factor nan", [](auto& c) { c.rope_scaling.factor = NAN; },
       "ModelConfig.rope_scaling.factor: must be a finite value > 0 (got nan)"},
      {"low_freq_factor", [](auto& c) { c.rope_scaling.low_freq_factor = -1.0f; },
       "ModelConfig.rope_scaling.low_freq_factor: must be a finite value > 0 (got -1)"},
      {"high_freq_factor", [](auto& c) { c.rope_scaling.high_freq_factor = INFINITY; },
       "ModelConfig.rope_scaling.high_freq_factor: must be a finite value > 0 (got inf)"},
      {"high equal to low", [](auto& c) { c.rope_scaling.high_freq_factor = 1.0f; },
       "ModelConfig.rope_scaling.high_freq_factor: must be > low_freq_factor (got 1)"},
      {"high below low", [](auto& c) { c.rope_scaling.low_freq_factor = 6.0f; },
       "ModelConfig.rope_scaling.high_freq_factor: must be > low_freq_factor (got 4)"},
      {"original_max_positions", [](auto& c) { c.rope_scaling.original_max_positions = 0; },
       "ModelConfig.rope_scaling.original_max_positions: must be > 0 (got 0)"},
  };
  for (const char* name : {"llama-3-8b", "llama-3.2-1b"}) {
    for (const BadField& bad : llama3_cases) {
      SCOPED_TRACE(std::string(name) + ": " + bad.what);
      cf::ModelConfig c = cf::model_config(name);
      bad.corrupt(c);
      EXPECT_EQ(validate_message(c), bad.message);
    }
  }

  // Linear reads the factor only; default reads none of the fields.
  cf::ModelConfig linear = cf::model_config("tinyllama-1.1b");
  linear.rope_scaling.type = cf::RopeType::Linear;
  linear.rope_scaling.factor = static_cast<float>(cf_test::uniform(0.5, 16.0));
  linear.rope_scaling.low_freq_factor = -1.0f;
  linear.rope_scaling.high_freq_factor = -2.0f;
  linear.rope_scaling.original_max_positions = 0;
  EXPECT_NO_THROW(linear.validate());
  linear.rope_scaling.factor = -linear.rope_scaling.factor;
  EXPECT_EQ(validate_message(linear).rfind("ModelConfig.rope_scaling.factor: must be a finite value > 0 (got -", 0),
            0u);
  cf::ModelConfig plain = linear;
  plain.rope_scaling.type = cf::RopeType::Default;
  EXPECT_NO_THROW(plain.validate());
}

TEST(ModelConfigValidate, TiedEmbeddingsOnlyForLlama) {
  cf::ModelConfig llama = cf::model_config("tinyllama-1.1b");
  llama.tied_embeddings = true;
  EXPECT_NO_THROW(llama.validate());
  cf::ModelConfig neox = cf::pythia_config(kPythia[cf_test::uniform_int(0, std::size(kPythia) - 1)].name);
  neox.tied_embeddings = true;
  EXPECT_EQ(validate_message(neox), "ModelConfig.tied_embeddings: GPTNeoX has a separate LM head (got true)");
}

TEST(ModelConfigValidate, ReportsTheRandomBadValue) {
  for (int trial = 0; trial < 20; ++trial) {
    cf::ModelConfig c = cf::pythia_config("pythia-410m");
    const int bad = -cf_test::uniform_int(0, 1 << 30);
    c.ffn = bad;
    EXPECT_EQ(validate_message(c), "ModelConfig.ffn: must be > 0 (got " + std::to_string(bad) + ")");
  }
}

TEST(ModelConfigValidate, ReportsTheRandomNonDividingKvHeads) {
  for (int trial = 0; trial < 20; ++trial) {
    cf::ModelConfig c = random_llama();
    c.heads = cf_test::uniform_int(2, 64);
    c.hidden = c.heads * c.head_dim;
    int kv = 0;
    do kv = cf_test::uniform_int(1, 2 * c.heads);
    while (c.heads % kv == 0);
    c.kv_heads = kv;
    EXPECT_EQ(validate_message(c), "ModelConfig.kv_heads: must divide heads = " + std::to_string(c.heads) +
                                       " (got " + std::to_string(kv) + ")");
  }
}

TEST(RotaryInvFreq, DefaultIsBaseToTheMinusTwoIOverR) {
  std::vector<cf::ModelConfig> configs;
  for (const std::string& name : cf::model_names()) {
    const cf::ModelConfig c = cf::model_config(name);
    if (c.rope_scaling.type == cf::RopeType::Default) configs.push_back(c);
  }
  for (int trial = 0; trial < 20; ++trial) {
    cf::ModelConfig c = random_llama();
    c.rope_scaling.type = cf::RopeType::Default;
    configs.push_back(c);
  }
  for (const cf::ModelConfig& c : configs) {
    SCOPED_TRACE("rotary_dims " + std::to_string(c.rotary_dims) + " base " + std::to_string(c.rotary_base));
    const std::vector<double> got = c.rotary_inv_freq();
    const std::vector<double> want = default_inv_freq(c.rotary_base, c.rotary_dims);
    ASSERT_EQ(got.size(), static_cast<std::size_t>(c.rotary_dims / 2));
    EXPECT_EQ(got[0], 1.0);
    for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-15 * want[i]) << i;
  }
}

TEST(RotaryInvFreq, PythiaRotatesAQuarterOfEachHead) {
  for (const Expected& e : kPythia) {
    SCOPED_TRACE(e.name);
    const cf::ModelConfig c = cf::pythia_config(e.name);
    const std::vector<double> got = c.rotary_inv_freq();
    ASSERT_EQ(got.size(), static_cast<std::size_t>(e.head_dim / 8));
    // Pair i turns at 10000^(-2i / (head_dim/4)): the exponent is over the rotated dims, not the head.
    const std::vector<double> want = default_inv_freq(10000.0, e.head_dim / 4);
    for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-15 * want[i]) << i;
  }
}

TEST(RotaryInvFreq, LinearDividesEveryFrequencyByTheFactor) {
  for (int trial = 0; trial < 20; ++trial) {
    cf::ModelConfig c = random_llama();
    c.rope_scaling.type = cf::RopeType::Linear;
    c.rope_scaling.factor = static_cast<float>(cf_test::uniform(0.25, 64.0));
    SCOPED_TRACE("factor " + std::to_string(c.rope_scaling.factor));
    const std::vector<double> got = c.rotary_inv_freq();
    const std::vector<double> base = default_inv_freq(c.rotary_base, c.rotary_dims);
    ASSERT_EQ(got.size(), base.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      const double want = base[i] / c.rope_scaling.factor;
      EXPECT_NEAR(got[i], want, 1e-15 * want) << i;
    }
  }
}

TEST(RotaryInvFreq, Llama3KeepsDividesAndBlendsThePresets) {
  for (const char* name : {"llama-3-8b", "llama-3.2-1b"}) {
    SCOPED_TRACE(name);
    const cf::ModelConfig c = cf::model_config(name);
    ASSERT_EQ(c.rope_scaling.type, cf::RopeType::Llama3);
    const std::vector<double> got = c.rotary_inv_freq();
    const std::vector<double> base = default_inv_freq(c.rotary_base, c.rotary_dims);
    ASSERT_EQ(got.size(), static_cast<std::size_t>(c.head_dim / 2));
    int kept = 0, blended = 0, divided = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      Llama3Region region;
      const double want = llama3_inv_freq(base[i], c.rope_scaling, &region);
      EXPECT_NEAR(got[i], want, llama3_tolerance(base[i], c.rope_scaling, region)) << i;
      switch (region) {
        case Llama3Region::Kept:
          ++kept;
          EXPECT_NEAR(got[i], base[i], 1e-15 * base[i]) << "kept " << i;
          break;
        case Llama3Region::Divided:
          ++divided;
          EXPECT_NEAR(got[i], base[i] / c.rope_scaling.factor, 1e-15 * got[i]) << "divided " << i;
          break;
        case Llama3Region::Blended:
          ++blended;
          // Strictly between the two: the interpolation is not one of the ends.
          EXPECT_LT(got[i], base[i]) << "blended " << i;
          EXPECT_GT(got[i], base[i] / c.rope_scaling.factor) << "blended " << i;
          break;
      }
    }
    // All three regions are exercised (llama-3-8b: pairs 0..28 kept, 29..34 blended, 35..63 divided).
    EXPECT_GT(kept, 0);
    EXPECT_GT(blended, 0);
    EXPECT_GT(divided, 0);
    EXPECT_EQ(kept + blended + divided, static_cast<int>(got.size()));
  }
  // The frequencies fall with i, and scaling keeps that order.
  const std::vector<double> f = cf::model_config("llama-3-8b").rotary_inv_freq();
  EXPECT_TRUE(std::is_sorted(f.rbegin(), f.rend()));
}

static void expect_llama3_rule(bool exact_factor_difference) {
  int regions[3] = {0, 0, 0};
  for (int trial = 0; trial < 50; ++trial) {
    cf::ModelConfig c = random_llama();
    c.rope_scaling.type = cf::RopeType::Llama3;
    c.rope_scaling.factor = static_cast<float>(cf_test::uniform(1.0, 64.0));
    c.rope_scaling.original_max_positions = cf_test::uniform_int(16, 1 << 17);
    if (exact_factor_difference) {
      // Multiples of 1/16 below 16: high - low is exact in float as in double.
      c.rope_scaling.low_freq_factor = cf_test::uniform_int(1, 64) / 16.0f;
      c.rope_scaling.high_freq_factor = c.rope_scaling.low_freq_factor + cf_test::uniform_int(1, 128) / 16.0f;
    }
    ASSERT_NO_THROW(c.validate());
    SCOPED_TRACE("rotary_dims " + std::to_string(c.rotary_dims) + " base " + std::to_string(c.rotary_base) +
                 " factor " + std::to_string(c.rope_scaling.factor) + " low " +
                 std::to_string(c.rope_scaling.low_freq_factor) + " high " +
                 std::to_string(c.rope_scaling.high_freq_factor) + " P " +
                 std::to_string(c.rope_scaling.original_max_positions));
    const std::vector<double> got = c.rotary_inv_freq();
    const std::vector<double> base = default_inv_freq(c.rotary_base, c.rotary_dims);
    ASSERT_EQ(got.size(), base.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      Llama3Region region;
      const double want = llama3_inv_freq(base[i], c.rope_scaling, &region);
      EXPECT_NEAR(got[i], want, llama3_tolerance(base[i], c.rope_scaling, region))
          << i << " region " << static_cast<int>(region);
      ++regions[static_cast<int>(region)];
    }
  }
  // Over the trials every region is met (kept, blended, divided).
  for (int r = 0; r < 3; ++r) EXPECT_GT(regions[r], 0) << "region " << r;
}

TEST(RotaryInvFreq, Llama3MatchesTheRuleForRandomSettings) { expect_llama3_rule(true); }

// Factors whose difference is not exact in float: the blend's denominator must be formed in double.
TEST(RotaryInvFreq, Llama3MatchesTheRuleForArbitraryFactors) { expect_llama3_rule(false); }

TEST(ModelConfigValidate, GptNeoxNeedsAsManyKvHeadsAsHeadsAndTheDefaultRope) {
  cf::ModelConfig c = cf::model_config("pythia-2.8b");
  c.kv_heads = 8;
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { c.validate(); }),
            "ModelConfig.kv_heads: GPTNeoX requires kv_heads == heads = 32 (got 8)");
  c = cf::model_config("pythia-2.8b");
  c.rope_scaling.type = cf::RopeType::Linear;
  c.rope_scaling.factor = 2.0f;
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { c.validate(); }),
            "ModelConfig.rope_scaling.type: GPTNeoX requires the default rope (got linear)");
}

TEST(ModelConfigRows, CountPastIntWithoutOverflow) {
  // heads * head_dim = 2^31: one past INT_MAX.
  cf::ModelConfig c;
  c.heads = c.kv_heads = 1 << 16;
  c.head_dim = 1 << 15;
  EXPECT_EQ(c.q_rows(), int64_t{1} << 31);
  EXPECT_EQ(c.kv_rows(), int64_t{1} << 31);
  EXPECT_EQ(c.qkv_rows(), int64_t{3} << 31);
  c.hidden = 8;
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { c.validate(); }),
            "ModelConfig.hidden: must equal heads * head_dim = 65536 * 32768 = 2147483648 (got 8)");
}
