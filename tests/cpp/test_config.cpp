// ModelConfig: presets match the Pythia / Llama-2 tables, and validate() names each bad field.
#include <cmath>
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "clusterfusion/config.hpp"
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

std::string validate_message(const cf::ModelConfig& c) {
  return cf_test::thrown_message<std::invalid_argument>([&] { c.validate(); });
}

}  // namespace

TEST(PythiaConfig, MatchesTheModelTable) {
  for (const Expected& e : kPythia) {
    SCOPED_TRACE(e.name);
    const cf::ModelConfig c = cf::pythia_config(e.name);
    EXPECT_EQ(c.arch, cf::Architecture::GPTNeoX);
    EXPECT_EQ(c.hidden, e.hidden);
    EXPECT_EQ(c.heads, e.heads);
    EXPECT_EQ(c.head_dim, e.head_dim);
    EXPECT_EQ(c.ffn, e.ffn);
    EXPECT_EQ(c.layers, e.layers);
    EXPECT_EQ(c.vocab, e.vocab);
    EXPECT_EQ(c.rotary_dims, e.rotary_dims);
    EXPECT_EQ(c.rotary_base, 10000.0f);
    EXPECT_EQ(c.norm_eps, 1e-5f);
    EXPECT_TRUE(c.parallel_residual);
    EXPECT_EQ(c.norm, cf::Norm::LayerNorm);
    EXPECT_EQ(c.activation, cf::Activation::GELU);
    EXPECT_EQ(c.qkv_rows(), 3 * e.hidden);
    EXPECT_NO_THROW(c.validate());
  }
}

TEST(PythiaConfig, UnknownNameListsTheKnownOnes) {
  const std::string msg =
      cf_test::thrown_message<std::invalid_argument>([] { cf::pythia_config("pythia-3b"); });
  EXPECT_NE(msg.find("'pythia-3b'"), std::string::npos) << msg;
  for (const Expected& e : kPythia) EXPECT_NE(msg.find(e.name), std::string::npos) << e.name << " in " << msg;
}

TEST(Llama2Config, MatchesLlama2_7B) {
  const cf::ModelConfig c = cf::llama2_7b_config();
  EXPECT_EQ(c.arch, cf::Architecture::Llama);
  EXPECT_EQ(c.hidden, 4096);
  EXPECT_EQ(c.heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.ffn, 11008);
  EXPECT_EQ(c.layers, 32);
  EXPECT_EQ(c.vocab, 32000);
  EXPECT_EQ(c.rotary_dims, 128);
  EXPECT_EQ(c.rotary_base, 10000.0f);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_FALSE(c.parallel_residual);
  EXPECT_EQ(c.norm, cf::Norm::RMSNorm);
  EXPECT_EQ(c.activation, cf::Activation::SiLU);
  EXPECT_NO_THROW(c.validate());
}

TEST(ModelConfigValidate, AcceptsRandomConsistentShapes) {
  for (int trial = 0; trial < 50; ++trial) {
    cf::ModelConfig c = cf::pythia_config("pythia-70m");
    c.heads = cf_test::uniform_int(1, 64);
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

TEST(ModelConfigValidate, ReportsTheRandomBadValue) {
  for (int trial = 0; trial < 20; ++trial) {
    cf::ModelConfig c = cf::pythia_config("pythia-410m");
    const int bad = -cf_test::uniform_int(0, 1 << 30);
    c.ffn = bad;
    EXPECT_EQ(validate_message(c), "ModelConfig.ffn: must be > 0 (got " + std::to_string(bad) + ")");
  }
}
