// LayerWeights / ModelWeights checks: a correct set passes, each wrong or missing tensor is named, one at a time,
// and a tensor the architecture does not have is refused.
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/weights.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

using L = cf::LayerSlot;
using M = cf::ModelSlot;

// The checks never dereference: distinct 256-byte aligned stand-ins for device pointers.
cf::TensorView fake(std::vector<int64_t> shape) {
  static std::uintptr_t next = 0x7f0000000000;
  next += 256 * cf_test::uniform_int(1, 64);
  return cf::TensorView(reinterpret_cast<void*>(next), std::move(shape), cf::DType::Float16);
}

cf::ModelConfig small_neox() {
  cf::ModelConfig c = cf::pythia_config("pythia-70m");
  c.heads = cf_test::uniform_int(1, 8);
  c.kv_heads = c.heads;
  c.head_dim = 8 * cf_test::uniform_int(1, 8);
  c.hidden = c.heads * c.head_dim;
  c.rotary_dims = c.head_dim / 4;
  c.ffn = 8 * cf_test::uniform_int(1, 64);
  c.layers = cf_test::uniform_int(2, 6);
  c.vocab = cf_test::uniform_int(10, 1000);
  return c;
}

// Grouped-query attention with kv_heads < heads, and ffn != hidden so that a swapped dimension shows.
cf::ModelConfig small_llama() {
  cf::ModelConfig c = cf::model_config("tinyllama-1.1b");
  c.kv_heads = cf_test::uniform_int(1, 4);
  c.heads = c.kv_heads * cf_test::uniform_int(2, 4);
  c.head_dim = 8 * cf_test::uniform_int(1, 8);
  c.hidden = c.heads * c.head_dim;
  c.rotary_dims = c.head_dim;
  c.ffn = c.hidden + 8 * cf_test::uniform_int(1, 64);
  c.layers = cf_test::uniform_int(2, 6);
  c.vocab = cf_test::uniform_int(10, 1000);
  return c;
}

cf::ModelConfig small(cf::Architecture arch) { return arch == cf::Architecture::GPTNeoX ? small_neox() : small_llama(); }

// Written out per architecture rather than read from the schema, so the schema is checked against them.
cf::LayerWeights neox_layer(const cf::ModelConfig& c) {
  const int64_t h = c.hidden, f = c.ffn;
  cf::LayerWeights w;
  w[L::ln1_weight] = fake({h});
  w[L::ln1_bias] = fake({h});
  w[L::ln2_weight] = fake({h});
  w[L::ln2_bias] = fake({h});
  w[L::w_qkv] = fake({3 * h, h});
  w[L::b_qkv] = fake({3 * h});
  w[L::w_o] = fake({h, h});
  w[L::b_o] = fake({h});
  w[L::w_up] = fake({f, h});
  w[L::b_up] = fake({f});
  w[L::w_down] = fake({h, f});
  w[L::b_down] = fake({h});
  return w;
}

cf::LayerWeights llama_layer(const cf::ModelConfig& c) {
  const int64_t h = c.hidden, f = c.ffn, q = int64_t{c.heads} * c.head_dim, kv = int64_t{c.kv_heads} * c.head_dim;
  cf::LayerWeights w;
  w[L::ln1_weight] = fake({h});
  w[L::w_q] = fake({q, h});
  w[L::w_k] = fake({kv, h});
  w[L::w_v] = fake({kv, h});
  w[L::w_o] = fake({h, q});
  w[L::ln2_weight] = fake({h});
  w[L::w_gate] = fake({f, h});
  w[L::w_up] = fake({f, h});
  w[L::w_down] = fake({h, f});
  return w;
}

cf::LayerWeights layer_of(const cf::ModelConfig& c) {
  return c.arch == cf::Architecture::GPTNeoX ? neox_layer(c) : llama_layer(c);
}

cf::ModelWeights model_of(const cf::ModelConfig& c) {
  cf::ModelWeights m;
  m[M::embed_in] = fake({c.vocab, c.hidden});
  for (int i = 0; i < c.layers; ++i) m.layers.push_back(layer_of(c));
  m[M::final_norm_weight] = fake({c.hidden});
  if (c.arch == cf::Architecture::GPTNeoX) m[M::final_norm_bias] = fake({c.hidden});
  m[M::lm_head] = c.tied_embeddings ? m[M::embed_in] : fake({c.vocab, c.hidden});
  return m;
}

const cf::Architecture kArchs[] = {cf::Architecture::GPTNeoX, cf::Architecture::Llama};

std::string layer_message(const cf::LayerWeights& w, const cf::ModelConfig& c, const std::string& prefix) {
  return cf_test::thrown_message<std::invalid_argument>([&] { w.check(c, prefix); });
}

std::string model_message(const cf::ModelWeights& m, const cf::ModelConfig& c) {
  return cf_test::thrown_message<std::invalid_argument>([&] { m.check(c); });
}

// The specs of `of`'s schema whose slot `in`'s schema does not list.
std::vector<cf::TensorSpec> only_in(const std::vector<cf::TensorSpec>& of, const std::vector<cf::TensorSpec>& in) {
  std::set<int> listed;
  for (const cf::TensorSpec& spec : in) listed.insert(spec.slot);
  std::vector<cf::TensorSpec> out;
  for (const cf::TensorSpec& spec : of)
    if (!listed.count(spec.slot)) out.push_back(spec);
  return out;
}

std::set<std::string> names_of(const std::vector<cf::TensorSpec>& specs) {
  std::set<std::string> names;
  for (const cf::TensorSpec& spec : specs) names.insert(spec.name);
  return names;
}

}  // namespace

TEST(LayerWeightsCheck, AcceptsNeoXShapes) {
  const cf::ModelConfig c = small_neox();
  EXPECT_NO_THROW(neox_layer(c).check(c));
}

TEST(LayerWeightsCheck, AcceptsLlamaShapes) {
  const cf::ModelConfig c = small_llama();
  EXPECT_NO_THROW(llama_layer(c).check(c)) << "heads " << c.heads << " kv_heads " << c.kv_heads;
  for (const char* name : {"llama-2-7b", "tinyllama-1.1b", "llama-3-8b", "llama-3.2-1b"}) {
    const cf::ModelConfig real = cf::model_config(name);
    EXPECT_NO_THROW(llama_layer(real).check(real)) << name;
  }
}

TEST(LayerWeightsCheck, NamesEachWrongTensor) {
  for (const cf::Architecture arch : kArchs) {
    SCOPED_TRACE(cf::architecture_name(arch));
    const cf::ModelConfig c = small(arch);
    for (const cf::TensorSpec& spec : cf::weight_schema(arch).layer) {
      SCOPED_TRACE(spec.name);
      const auto slot = static_cast<L>(spec.slot);
      cf::LayerWeights w = layer_of(c);
      cf::TensorView& t = w[slot];
      const std::string want = t.shape_str();

      t.shape.back() += cf_test::uniform_int(1, 8);  // one dimension off
      EXPECT_EQ(layer_message(w, c, "layer"),
                std::string("layer.") + spec.name + ": expected shape " + want + ", got shape " + t.shape_str());

      // The same wrong tensor under the prefix ModelWeights::check passes.
      EXPECT_EQ(layer_message(w, c, "layers[7]").rfind(std::string("layers[7].") + spec.name + ": ", 0), 0u);

      w = layer_of(c);
      w[slot].dtype = cf::DType::Float32;
      EXPECT_EQ(layer_message(w, c, "layer"),
                std::string("layer.") + spec.name + ": expected dtype float16, got dtype float32");

      w = layer_of(c);
      w[slot].data = nullptr;
      EXPECT_EQ(layer_message(w, c, "layer"),
                std::string("layer.") + spec.name + ": expected a non-null device pointer, got nullptr");

      // Missing altogether: an empty view.
      w = layer_of(c);
      w[slot] = cf::TensorView{};
      EXPECT_EQ(layer_message(w, c, "layer"),
                std::string("layer.") + spec.name + ": expected a non-null device pointer, got nullptr");
    }
  }
}

TEST(LayerWeightsCheck, TransposedMatrixIsNamed) {
  cf::ModelConfig c = small_neox();
  c.ffn = c.hidden + 8;  // distinct dims so a transpose is visible
  cf::LayerWeights w = neox_layer(c);
  std::swap(w[L::w_up].shape[0], w[L::w_up].shape[1]);
  const std::string h = std::to_string(c.hidden), f = std::to_string(c.ffn);
  EXPECT_EQ(layer_message(w, c, "layer"),
            "layer.w_up: expected shape [" + f + ", " + h + "], got shape [" + h + ", " + f + "]");

  // Llama's k: [kv_heads*head_dim, hidden], which differs from hidden under grouped-query attention.
  const cf::ModelConfig g = small_llama();
  cf::LayerWeights lw = llama_layer(g);
  std::swap(lw[L::w_k].shape[0], lw[L::w_k].shape[1]);
  const std::string gh = std::to_string(g.hidden), kv = std::to_string(g.kv_rows());
  EXPECT_EQ(layer_message(lw, g, "layer"),
            "layer.w_k: expected shape [" + kv + ", " + gh + "], got shape [" + gh + ", " + kv + "]");
}

TEST(LayerWeightsCheck, InvalidConfigIsReportedFirst) {
  cf::ModelConfig c = small_neox();
  const cf::LayerWeights w = neox_layer(c);
  c.hidden += 1;
  EXPECT_EQ(layer_message(w, c, "layer").rfind("ModelConfig.hidden: ", 0), 0u);

  cf::ModelConfig g = small_llama();
  const cf::LayerWeights lw = llama_layer(g);
  g.kv_heads = g.heads + 1;
  EXPECT_EQ(layer_message(lw, g, "layer").rfind("ModelConfig.kv_heads: ", 0), 0u);
}

TEST(LayerWeightsCheck, LlamaHasSeparateGateAndUp) {
  const cf::ModelConfig c = cf::llama2_7b_config();
  const int64_t h = c.hidden, f = c.ffn;
  const cf::LayerWeights w = llama_layer(c);
  EXPECT_NO_THROW(w.check(c));

  // The old stacked gate|up matrix in w_up is now the wrong shape ...
  cf::LayerWeights stacked = w;
  stacked[L::w_up] = fake({2 * f, h});
  stacked[L::w_gate] = cf::TensorView{};
  EXPECT_EQ(layer_message(stacked, c, "layer"),
            "layer.w_gate: expected a non-null device pointer, got nullptr");
  stacked[L::w_gate] = fake({f, h});
  EXPECT_EQ(layer_message(stacked, c, "layer"), "layer.w_up: expected shape [11008, 4096], got shape [22016, 4096]");

  // ... and so is a fused qkv in w_q.
  cf::LayerWeights fused = w;
  fused[L::w_q] = fake({3 * h, h});
  EXPECT_EQ(layer_message(fused, c, "layer"), "layer.w_q: expected shape [4096, 4096], got shape [12288, 4096]");
}

TEST(LayerWeightsCheck, LlamaRefusesEachNeoXOnlyTensor) {
  const cf::ModelConfig neox = small_neox();
  const cf::ModelConfig c = small_llama();
  const std::vector<cf::TensorSpec> extra =
      only_in(cf::weight_schema(cf::Architecture::GPTNeoX).layer, cf::weight_schema(cf::Architecture::Llama).layer);
  EXPECT_EQ(names_of(extra),
            (std::set<std::string>{"ln1_bias", "ln2_bias", "w_qkv", "b_qkv", "b_o", "b_up", "b_down"}));
  for (const cf::TensorSpec& spec : extra) {
    SCOPED_TRACE(spec.name);
    cf::LayerWeights w = llama_layer(c);
    w[static_cast<L>(spec.slot)] = fake(cf::shape_of(spec, neox));
    const std::string got = w[static_cast<L>(spec.slot)].shape_str();
    EXPECT_EQ(layer_message(w, c, "layer"),
              std::string("layer.") + spec.name + ": expected no tensor (Llama has none), got shape " + got);
    EXPECT_EQ(layer_message(w, c, "layers[2]"),
              std::string("layers[2].") + spec.name + ": expected no tensor (Llama has none), got shape " + got);

    // A stale pointer without a shape, or a shape without a pointer, is a filled slot as well.
    w[static_cast<L>(spec.slot)].shape.clear();
    EXPECT_EQ(layer_message(w, c, "layer"),
              std::string("layer.") + spec.name + ": expected no tensor (Llama has none), got shape []");
    w[static_cast<L>(spec.slot)] = cf::TensorView(nullptr, {c.hidden}, cf::DType::Float16);
    EXPECT_EQ(layer_message(w, c, "layer"), std::string("layer.") + spec.name +
                                                ": expected no tensor (Llama has none), got shape [" +
                                                std::to_string(c.hidden) + "]");
  }
}

TEST(LayerWeightsCheck, NeoXRefusesEachLlamaOnlyTensor) {
  const cf::ModelConfig llama = small_llama();
  const cf::ModelConfig c = small_neox();
  const std::vector<cf::TensorSpec> extra =
      only_in(cf::weight_schema(cf::Architecture::Llama).layer, cf::weight_schema(cf::Architecture::GPTNeoX).layer);
  EXPECT_EQ(names_of(extra), (std::set<std::string>{"w_q", "w_k", "w_v", "w_gate"}));
  for (const cf::TensorSpec& spec : extra) {
    SCOPED_TRACE(spec.name);
    cf::LayerWeights w = neox_layer(c);
    w[static_cast<L>(spec.slot)] = fake(cf::shape_of(spec, llama));
    EXPECT_EQ(layer_message(w, c, "layer"), std::string("layer.") + spec.name +
                                                ": expected no tensor (GPTNeoX has none), got shape " +
                                                w[static_cast<L>(spec.slot)].shape_str());
  }
}

TEST(ModelWeightsCheck, AcceptsEachArchitecture) {
  for (const cf::Architecture arch : kArchs) {
    const cf::ModelConfig c = small(arch);
    EXPECT_NO_THROW(model_of(c).check(c)) << cf::architecture_name(arch);
  }
  // Tied: the LM head slot holds the embedding itself.
  cf::ModelConfig tied = small_llama();
  tied.tied_embeddings = true;
  const cf::ModelWeights m = model_of(tied);
  EXPECT_EQ(m[M::lm_head].data, m[M::embed_in].data);
  EXPECT_NO_THROW(m.check(tied));
}

TEST(ModelWeightsCheck, WrongLayerCount) {
  for (const cf::Architecture arch : kArchs) {
    SCOPED_TRACE(cf::architecture_name(arch));
    const cf::ModelConfig c = small(arch);
    cf::ModelWeights m = model_of(c);
    m.layers.pop_back();
    EXPECT_EQ(model_message(m, c),
              "layers: expected " + std::to_string(c.layers) + " layers, got " + std::to_string(c.layers - 1));
    m = model_of(c);
    m.layers.push_back(layer_of(c));
    EXPECT_EQ(model_message(m, c),
              "layers: expected " + std::to_string(c.layers) + " layers, got " + std::to_string(c.layers + 1));
  }
}

TEST(ModelWeightsCheck, NamesTheLayerIndex) {
  const cf::ModelConfig c = small_neox();
  cf::ModelWeights m = model_of(c);
  const int i = cf_test::uniform_int(0, c.layers - 1);
  m.layers[i][L::b_down].shape = {c.hidden + 1};
  EXPECT_EQ(model_message(m, c), "layers[" + std::to_string(i) + "].b_down: expected shape [" +
                                     std::to_string(c.hidden) + "], got shape [" + std::to_string(c.hidden + 1) +
                                     "]");

  const cf::ModelConfig g = small_llama();
  cf::ModelWeights lm = model_of(g);
  const int j = cf_test::uniform_int(0, g.layers - 1);
  lm.layers[j][L::b_o] = fake({g.hidden});
  EXPECT_EQ(model_message(lm, g), "layers[" + std::to_string(j) + "].b_o: expected no tensor (Llama has none), got shape [" +
                                      std::to_string(g.hidden) + "]");
  lm = model_of(g);
  lm.layers[j][L::w_v] = cf::TensorView{};
  EXPECT_EQ(model_message(lm, g),
            "layers[" + std::to_string(j) + "].w_v: expected a non-null device pointer, got nullptr");
}

TEST(ModelWeightsCheck, NamesEachWrongTopLevelTensor) {
  for (const cf::Architecture arch : kArchs) {
    SCOPED_TRACE(cf::architecture_name(arch));
    const cf::ModelConfig c = small(arch);
    const std::string v = std::to_string(c.vocab), h = std::to_string(c.hidden);
    for (const cf::TensorSpec& spec : cf::weight_schema(arch).model) {
      SCOPED_TRACE(spec.name);
      const auto slot = static_cast<M>(spec.slot);
      const std::string name = spec.name;
      const std::string want = name == "embed_in" || name == "lm_head" ? "[" + v + ", " + h + "]" : "[" + h + "]";
      cf::ModelWeights m = model_of(c);
      m[slot].shape.insert(m[slot].shape.begin(), 1);
      EXPECT_EQ(model_message(m, c), name + ": expected shape " + want + ", got shape [1, " + want.substr(1));

      m = model_of(c);
      m[slot] = cf::TensorView{};
      EXPECT_EQ(model_message(m, c), name + ": expected a non-null device pointer, got nullptr");
    }
  }
}

TEST(ModelWeightsCheck, LlamaHasNoFinalNormBias) {
  const cf::ModelConfig c = small_llama();
  cf::ModelWeights m = model_of(c);
  m[M::final_norm_bias] = fake({c.hidden});
  EXPECT_EQ(model_message(m, c), "final_norm_bias: expected no tensor (Llama has none), got shape [" +
                                     std::to_string(c.hidden) + "]");
}

TEST(ModelWeightsCheck, TiedLlamaStillNeedsItsLmHeadSlot) {
  cf::ModelConfig c = small_llama();
  c.tied_embeddings = true;
  cf::ModelWeights m = model_of(c);
  m[M::lm_head] = cf::TensorView{};
  EXPECT_EQ(model_message(m, c), "lm_head: expected a non-null device pointer, got nullptr");
}
