// LayerWeights / ModelWeights checks: a correct set passes, and each wrong tensor is named, one at a time.
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/weights.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

// The checks never dereference: distinct 256-byte aligned stand-ins for device pointers.
cf::TensorView fake(std::vector<int64_t> shape) {
  static std::uintptr_t next = 0x7f0000000000;
  next += 256 * cf_test::uniform_int(1, 64);
  return cf::TensorView(reinterpret_cast<void*>(next), std::move(shape), cf::DType::Float16);
}

cf::ModelConfig small_neox() {
  cf::ModelConfig c = cf::pythia_config("pythia-70m");
  c.heads = cf_test::uniform_int(1, 8);
  c.head_dim = 8 * cf_test::uniform_int(1, 8);
  c.hidden = c.heads * c.head_dim;
  c.rotary_dims = c.head_dim / 4;
  c.ffn = 8 * cf_test::uniform_int(1, 64);
  c.layers = cf_test::uniform_int(2, 6);
  c.vocab = cf_test::uniform_int(10, 1000);
  return c;
}

cf::LayerWeights neox_layer(const cf::ModelConfig& c) {
  const int64_t h = c.hidden, f = c.ffn;
  cf::LayerWeights w;
  w.ln1_weight = fake({h});
  w.ln1_bias = fake({h});
  w.ln2_weight = fake({h});
  w.ln2_bias = fake({h});
  w.w_qkv = fake({3 * h, h});
  w.b_qkv = fake({3 * h});
  w.w_o = fake({h, h});
  w.b_o = fake({h});
  w.w_up = fake({f, h});
  w.b_up = fake({f});
  w.w_down = fake({h, f});
  w.b_down = fake({h});
  return w;
}

cf::ModelWeights neox_model(const cf::ModelConfig& c) {
  cf::ModelWeights m;
  m.embed_in = fake({c.vocab, c.hidden});
  for (int i = 0; i < c.layers; ++i) m.layers.push_back(neox_layer(c));
  m.final_norm_weight = fake({c.hidden});
  m.final_norm_bias = fake({c.hidden});
  m.lm_head = fake({c.vocab, c.hidden});
  return m;
}

struct Slot {
  const char* name;
  cf::TensorView cf::LayerWeights::*member;
};

const Slot kSlots[] = {
    {"ln1_weight", &cf::LayerWeights::ln1_weight}, {"ln1_bias", &cf::LayerWeights::ln1_bias},
    {"ln2_weight", &cf::LayerWeights::ln2_weight}, {"ln2_bias", &cf::LayerWeights::ln2_bias},
    {"w_qkv", &cf::LayerWeights::w_qkv},           {"b_qkv", &cf::LayerWeights::b_qkv},
    {"w_o", &cf::LayerWeights::w_o},               {"b_o", &cf::LayerWeights::b_o},
    {"w_up", &cf::LayerWeights::w_up},             {"b_up", &cf::LayerWeights::b_up},
    {"w_down", &cf::LayerWeights::w_down},         {"b_down", &cf::LayerWeights::b_down},
};

std::string layer_message(const cf::LayerWeights& w, const cf::ModelConfig& c, const std::string& prefix) {
  return cf_test::thrown_message<std::invalid_argument>([&] { w.check(c, prefix); });
}

}  // namespace

TEST(LayerWeightsCheck, AcceptsNeoXShapes) {
  const cf::ModelConfig c = small_neox();
  EXPECT_NO_THROW(neox_layer(c).check(c));
}

TEST(LayerWeightsCheck, NamesEachWrongTensor) {
  const cf::ModelConfig c = small_neox();
  for (const Slot& slot : kSlots) {
    SCOPED_TRACE(slot.name);
    cf::LayerWeights w = neox_layer(c);
    cf::TensorView& t = w.*slot.member;
    const std::string want = t.shape_str();

    t.shape.back() += cf_test::uniform_int(1, 8);  // one dimension off
    EXPECT_EQ(layer_message(w, c, "layer"),
              std::string("layer.") + slot.name + ": expected shape " + want + ", got shape " + t.shape_str());

    // The same wrong tensor under the prefix ModelWeights::check passes.
    EXPECT_EQ(layer_message(w, c, "layers[7]").rfind(std::string("layers[7].") + slot.name + ": ", 0), 0u);

    w = neox_layer(c);
    (w.*slot.member).dtype = cf::DType::Float32;
    EXPECT_EQ(layer_message(w, c, "layer"),
              std::string("layer.") + slot.name + ": expected dtype float16, got dtype float32");

    w = neox_layer(c);
    (w.*slot.member).data = nullptr;
    EXPECT_EQ(layer_message(w, c, "layer"),
              std::string("layer.") + slot.name + ": expected a non-null device pointer, got nullptr");
  }
}

TEST(LayerWeightsCheck, TransposedMatrixIsNamed) {
  cf::ModelConfig c = small_neox();
  c.ffn = c.hidden + 8;  // distinct dims so a transpose is visible
  cf::LayerWeights w = neox_layer(c);
  std::swap(w.w_up.shape[0], w.w_up.shape[1]);
  const std::string h = std::to_string(c.hidden), f = std::to_string(c.ffn);
  EXPECT_EQ(layer_message(w, c, "layer"),
            "layer.w_up: expected shape [" + f + ", " + h + "], got shape [" + h + ", " + f + "]");
}

TEST(LayerWeightsCheck, InvalidConfigIsReportedFirst) {
  cf::ModelConfig c = small_neox();
  const cf::LayerWeights w = neox_layer(c);
  c.hidden += 1;
  EXPECT_EQ(layer_message(w, c, "layer").rfind("ModelConfig.hidden: ", 0), 0u);
}

TEST(LayerWeightsCheck, LlamaHasNoBiasesAndAStackedGateUp) {
  const cf::ModelConfig c = cf::llama2_7b_config();
  const int64_t h = c.hidden, f = c.ffn;
  cf::LayerWeights w;
  w.ln1_weight = fake({h});
  w.ln2_weight = fake({h});
  w.w_qkv = fake({3 * h, h});
  w.w_o = fake({h, h});
  w.w_up = fake({2 * f, h});
  w.w_down = fake({h, f});
  EXPECT_NO_THROW(w.check(c));

  cf::LayerWeights with_bias = w;
  with_bias.b_o = fake({h});
  EXPECT_EQ(layer_message(with_bias, c, "layer"),
            "layer.b_o: expected no tensor (Llama has no norm or projection biases), got shape [4096]");

  cf::LayerWeights ungated = w;
  ungated.w_up = fake({f, h});
  EXPECT_EQ(layer_message(ungated, c, "layer"),
            "layer.w_up: expected shape [22016, 4096], got shape [11008, 4096]");
}

TEST(ModelWeightsCheck, AcceptsNeoXShapes) {
  const cf::ModelConfig c = small_neox();
  EXPECT_NO_THROW(neox_model(c).check(c));
}

TEST(ModelWeightsCheck, WrongLayerCount) {
  const cf::ModelConfig c = small_neox();
  cf::ModelWeights m = neox_model(c);
  m.layers.pop_back();
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { m.check(c); }),
            "layers: expected " + std::to_string(c.layers) + " layers, got " + std::to_string(c.layers - 1));
}

TEST(ModelWeightsCheck, NamesTheLayerIndex) {
  const cf::ModelConfig c = small_neox();
  cf::ModelWeights m = neox_model(c);
  const int i = cf_test::uniform_int(0, c.layers - 1);
  m.layers[i].b_down.shape = {c.hidden + 1};
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { m.check(c); }),
            "layers[" + std::to_string(i) + "].b_down: expected shape [" + std::to_string(c.hidden) +
                "], got shape [" + std::to_string(c.hidden + 1) + "]");
}

TEST(ModelWeightsCheck, NamesEachWrongTopLevelTensor) {
  const cf::ModelConfig c = small_neox();
  const std::string v = std::to_string(c.vocab), h = std::to_string(c.hidden);
  const struct {
    const char* name;
    cf::TensorView cf::ModelWeights::*member;
    std::string want;
  } slots[] = {
      {"embed_in", &cf::ModelWeights::embed_in, "[" + v + ", " + h + "]"},
      {"final_norm_weight", &cf::ModelWeights::final_norm_weight, "[" + h + "]"},
      {"final_norm_bias", &cf::ModelWeights::final_norm_bias, "[" + h + "]"},
      {"lm_head", &cf::ModelWeights::lm_head, "[" + v + ", " + h + "]"},
  };
  for (const auto& slot : slots) {
    SCOPED_TRACE(slot.name);
    cf::ModelWeights m = neox_model(c);
    (m.*slot.member).shape.insert((m.*slot.member).shape.begin(), 1);
    EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { m.check(c); }),
              std::string(slot.name) + ": expected shape " + slot.want + ", got shape [1, " + slot.want.substr(1));
  }
}
