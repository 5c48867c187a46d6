// The weight schema: each architecture's tensors, their transformers names and their shapes for real models.
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/config.hpp"
#include "clusterfusion/weight_schema.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

using Shape = std::vector<int64_t>;
using L = cf::LayerSlot;
using M = cf::ModelSlot;

const cf::Architecture kArchs[] = {cf::Architecture::GPTNeoX, cf::Architecture::Llama};

// The keyword of every slot, by enum value (the order of the enum).
const char* const kLayerSlotNames[] = {"ln1_weight", "ln1_bias", "ln2_weight", "ln2_bias", "w_qkv", "b_qkv",
                                       "w_q",        "w_k",      "w_v",        "w_o",      "b_o",   "w_gate",
                                       "w_up",       "b_up",     "w_down",     "b_down"};
const char* const kModelSlotNames[] = {"embed_in", "final_norm_weight", "final_norm_bias", "lm_head"};
static_assert(std::size(kLayerSlotNames) == cf::kLayerSlots, "a layer slot without a name in this test");
static_assert(std::size(kModelSlotNames) == cf::kModelSlots, "a model slot without a name in this test");

std::string trace(cf::Architecture arch) { return cf::architecture_name(arch); }

// name -> shape of every tensor of a schema list.
std::map<std::string, Shape> shapes_of(const std::vector<cf::TensorSpec>& specs, const cf::ModelConfig& c) {
  std::map<std::string, Shape> shapes;
  for (const cf::TensorSpec& spec : specs) shapes[spec.name] = cf::shape_of(spec, c);
  return shapes;
}

std::map<std::string, std::string> hf_names_of(const std::vector<cf::TensorSpec>& specs) {
  std::map<std::string, std::string> names;
  for (const cf::TensorSpec& spec : specs) names[spec.name] = spec.hf_name;
  return names;
}

const cf::TensorSpec& spec_named(const std::vector<cf::TensorSpec>& specs, const std::string& name) {
  for (const cf::TensorSpec& spec : specs)
    if (name == spec.name) return spec;
  ADD_FAILURE() << "no tensor " << name;
  static const cf::TensorSpec none{};
  return none;
}

}  // namespace

TEST(WeightSchema, NamesAndSlotsAreUniqueWithinEachList) {
  for (const cf::Architecture arch : kArchs) {
    SCOPED_TRACE(trace(arch));
    const cf::WeightSchema& schema = cf::weight_schema(arch);
    EXPECT_EQ(schema.arch, arch);
    for (const bool layer : {true, false}) {
      SCOPED_TRACE(layer ? "layer" : "model");
      const std::vector<cf::TensorSpec>& specs = layer ? schema.layer : schema.model;
      const std::size_t slots = layer ? cf::kLayerSlots : cf::kModelSlots;
      EXPECT_FALSE(specs.empty());
      std::set<std::string> names, hf_names;
      std::set<int> seen;
      for (const cf::TensorSpec& spec : specs) {
        EXPECT_TRUE(names.insert(spec.name).second) << "name " << spec.name << " listed twice";
        EXPECT_TRUE(hf_names.insert(spec.hf_name).second) << "hf name " << spec.hf_name << " listed twice";
        EXPECT_TRUE(seen.insert(spec.slot).second) << "slot " << spec.slot << " listed twice";
        ASSERT_GE(spec.slot, 0) << spec.name;
        ASSERT_LT(static_cast<std::size_t>(spec.slot), slots) << spec.name;
        // The keyword is the slot's: the same slot has the same name in every architecture.
        EXPECT_STREQ(spec.name, layer ? kLayerSlotNames[spec.slot] : kModelSlotNames[spec.slot]);
        EXPECT_NE(spec.rows, cf::Dim::None) << spec.name;
      }
    }
  }
}

TEST(WeightSchema, EverySlotIsListedByAnArchitecture) {
  for (std::size_t s = 0; s < cf::kLayerSlots; ++s) {
    int listed = 0;
    for (const cf::Architecture arch : kArchs)
      for (const cf::TensorSpec& spec : cf::weight_schema(arch).layer) listed += spec.slot == static_cast<int>(s);
    EXPECT_GE(listed, 1) << "layer slot " << kLayerSlotNames[s] << " is in no schema";
  }
  for (std::size_t s = 0; s < cf::kModelSlots; ++s) {
    int listed = 0;
    for (const cf::Architecture arch : kArchs)
      for (const cf::TensorSpec& spec : cf::weight_schema(arch).model) listed += spec.slot == static_cast<int>(s);
    EXPECT_GE(listed, 1) << "model slot " << kModelSlotNames[s] << " is in no schema";
  }
}

TEST(WeightSchema, GptNeoXTransformersNames) {
  const cf::WeightSchema& schema = cf::weight_schema(cf::Architecture::GPTNeoX);
  const std::map<std::string, std::string> layer = {
      {"ln1_weight", "input_layernorm.weight"},
      {"ln1_bias", "input_layernorm.bias"},
      {"ln2_weight", "post_attention_layernorm.weight"},
      {"ln2_bias", "post_attention_layernorm.bias"},
      {"w_qkv", "attention.query_key_value.weight"},
      {"b_qkv", "attention.query_key_value.bias"},
      {"w_o", "attention.dense.weight"},
      {"b_o", "attention.dense.bias"},
      {"w_up", "mlp.dense_h_to_4h.weight"},
      {"b_up", "mlp.dense_h_to_4h.bias"},
      {"w_down", "mlp.dense_4h_to_h.weight"},
      {"b_down", "mlp.dense_4h_to_h.bias"},
  };
  EXPECT_EQ(hf_names_of(schema.layer), layer);
  const std::map<std::string, std::string> model = {
      {"embed_in", "gpt_neox.embed_in.weight"},
      {"final_norm_weight", "gpt_neox.final_layer_norm.weight"},
      {"final_norm_bias", "gpt_neox.final_layer_norm.bias"},
      {"lm_head", "lm_head.weight"},
  };
  EXPECT_EQ(hf_names_of(schema.model), model);
  EXPECT_EQ(schema.layer_prefix, "gpt_neox.layers.");
  EXPECT_EQ(schema.lm_head_alias, "embed_out.weight");  // Pythia checkpoints' name of the LM head
  EXPECT_EQ(cf::hf_layer_name(schema, 3, spec_named(schema.layer, "w_up")), "gpt_neox.layers.3.mlp.dense_h_to_4h.weight");
}

TEST(WeightSchema, LlamaTransformersNames) {
  const cf::WeightSchema& schema = cf::weight_schema(cf::Architecture::Llama);
  // /work/shared/notes/llama-decode.md, "Parameters as transformers names them".
  const std::map<std::string, std::string> layer = {
      {"ln1_weight", "input_layernorm.weight"},
      {"w_q", "self_attn.q_proj.weight"},
      {"w_k", "self_attn.k_proj.weight"},
      {"w_v", "self_attn.v_proj.weight"},
      {"w_o", "self_attn.o_proj.weight"},
      {"ln2_weight", "post_attention_layernorm.weight"},
      {"w_gate", "mlp.gate_proj.weight"},
      {"w_up", "mlp.up_proj.weight"},
      {"w_down", "mlp.down_proj.weight"},
  };
  EXPECT_EQ(hf_names_of(schema.layer), layer);
  const std::map<std::string, std::string> model = {
      {"embed_in", "model.embed_tokens.weight"},
      {"final_norm_weight", "model.norm.weight"},
      {"lm_head", "lm_head.weight"},
  };
  EXPECT_EQ(hf_names_of(schema.model), model);
  EXPECT_EQ(schema.layer_prefix, "model.layers.");
  EXPECT_EQ(schema.lm_head_alias, "");
  EXPECT_EQ(cf::hf_layer_name(schema, 3, spec_named(schema.layer, "w_gate")), "model.layers.3.mlp.gate_proj.weight");
}

TEST(WeightSchema, HfLayerNameOfEveryTensorAndLayer) {
  for (const cf::Architecture arch : kArchs) {
    SCOPED_TRACE(trace(arch));
    const cf::WeightSchema& schema = cf::weight_schema(arch);
    const int layer = cf_test::uniform_int(0, 99);
    const std::string root = arch == cf::Architecture::GPTNeoX ? "gpt_neox" : "model";
    for (const cf::TensorSpec& spec : schema.layer) {
      EXPECT_EQ(cf::hf_layer_name(schema, layer, spec),
                root + ".layers." + std::to_string(layer) + "." + spec.hf_name);
    }
  }
}

TEST(WeightSchema, ShapesOfPythia2_8B) {
  const cf::ModelConfig c = cf::model_config("pythia-2.8b");
  const cf::WeightSchema& schema = cf::weight_schema(c.arch);
  const std::map<std::string, Shape> layer = {
      {"ln1_weight", {2560}},          {"ln1_bias", {2560}},         {"ln2_weight", {2560}},
      {"ln2_bias", {2560}},            {"w_qkv", {7680, 2560}},      {"b_qkv", {7680}},
      {"w_o", {2560, 2560}},           {"b_o", {2560}},              {"w_up", {10240, 2560}},
      {"b_up", {10240}},               {"w_down", {2560, 10240}},    {"b_down", {2560}},
  };
  EXPECT_EQ(shapes_of(schema.layer, c), layer);
  const std::map<std::string, Shape> model = {
      {"embed_in", {50304, 2560}},
      {"final_norm_weight", {2560}},
      {"final_norm_bias", {2560}},
      {"lm_head", {50304, 2560}},
  };
  EXPECT_EQ(shapes_of(schema.model, c), model);
}

TEST(WeightSchema, ShapesOfLlama2_7B) {
  const cf::ModelConfig c = cf::model_config("llama-2-7b");
  const cf::WeightSchema& schema = cf::weight_schema(c.arch);
  const std::map<std::string, Shape> layer = {
      {"ln1_weight", {4096}},       {"w_q", {4096, 4096}},        {"w_k", {4096, 4096}},
      {"w_v", {4096, 4096}},        {"w_o", {4096, 4096}},        {"ln2_weight", {4096}},
      {"w_gate", {11008, 4096}},    {"w_up", {11008, 4096}},      {"w_down", {4096, 11008}},
  };
  EXPECT_EQ(shapes_of(schema.layer, c), layer);
  const std::map<std::string, Shape> model = {
      {"embed_in", {32000, 4096}}, {"final_norm_weight", {4096}}, {"lm_head", {32000, 4096}}};
  EXPECT_EQ(shapes_of(schema.model, c), model);
}

TEST(WeightSchema, ShapesOfTinyLlama) {
  const cf::ModelConfig c = cf::model_config("tinyllama-1.1b");
  const cf::WeightSchema& schema = cf::weight_schema(c.arch);
  // 4 kv heads of 64: k and v have 256 rows.
  const std::map<std::string, Shape> layer = {
      {"ln1_weight", {2048}},      {"w_q", {2048, 2048}},       {"w_k", {256, 2048}},
      {"w_v", {256, 2048}},        {"w_o", {2048, 2048}},       {"ln2_weight", {2048}},
      {"w_gate", {5632, 2048}},    {"w_up", {5632, 2048}},      {"w_down", {2048, 5632}},
  };
  EXPECT_EQ(shapes_of(schema.layer, c), layer);
  const std::map<std::string, Shape> model = {
      {"embed_in", {32000, 2048}}, {"final_norm_weight", {2048}}, {"lm_head", {32000, 2048}}};
  EXPECT_EQ(shapes_of(schema.model, c), model);
}

TEST(WeightSchema, ShapesOfLlama3_2_1B) {
  const cf::ModelConfig c = cf::model_config("llama-3.2-1b");
  const cf::WeightSchema& schema = cf::weight_schema(c.arch);
  // 8 kv heads of 64: k and v have 512 rows.
  const std::map<std::string, Shape> layer = {
      {"ln1_weight", {2048}},      {"w_q", {2048, 2048}},       {"w_k", {512, 2048}},
      {"w_v", {512, 2048}},        {"w_o", {2048, 2048}},       {"ln2_weight", {2048}},
      {"w_gate", {8192, 2048}},    {"w_up", {8192, 2048}},      {"w_down", {2048, 8192}},
  };
  EXPECT_EQ(shapes_of(schema.layer, c), layer);
  // Tied: the LM head still has its slot (the embedding is passed there).
  const std::map<std::string, Shape> model = {
      {"embed_in", {128256, 2048}}, {"final_norm_weight", {2048}}, {"lm_head", {128256, 2048}}};
  EXPECT_EQ(shapes_of(schema.model, c), model);
}

TEST(WeightSchema, ShapesFollowARandomGqaConfig) {
  for (int trial = 0; trial < 20; ++trial) {
    cf::ModelConfig c = cf::model_config("tinyllama-1.1b");
    c.kv_heads = cf_test::uniform_int(1, 8);
    c.heads = c.kv_heads * cf_test::uniform_int(1, 8);
    c.head_dim = 8 * cf_test::uniform_int(1, 32);
    c.hidden = c.heads * c.head_dim;
    c.ffn = cf_test::uniform_int(1, 20000);
    c.vocab = cf_test::uniform_int(1, 200000);
    const int64_t h = c.hidden, f = c.ffn, q = int64_t{c.heads} * c.head_dim, kv = int64_t{c.kv_heads} * c.head_dim;
    const std::map<std::string, Shape> layer = {
        {"ln1_weight", {h}}, {"w_q", {q, h}},      {"w_k", {kv, h}},    {"w_v", {kv, h}},    {"w_o", {h, q}},
        {"ln2_weight", {h}}, {"w_gate", {f, h}},   {"w_up", {f, h}},    {"w_down", {h, f}},
    };
    EXPECT_EQ(shapes_of(cf::weight_schema(c.arch).layer, c), layer)
        << "heads " << c.heads << " kv_heads " << c.kv_heads << " head_dim " << c.head_dim;
    const std::map<std::string, Shape> model = {
        {"embed_in", {c.vocab, h}}, {"final_norm_weight", {h}}, {"lm_head", {c.vocab, h}}};
    EXPECT_EQ(shapes_of(cf::weight_schema(c.arch).model, c), model);
  }
}

TEST(WeightSchema, UnknownArchitectureIsRefused) {
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([] { cf::weight_schema(static_cast<cf::Architecture>(7)); }),
            "ModelConfig.arch: unknown architecture");
}
