#include <cstdio>
#include <cstdlib>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.hpp"
#include "clusterfusion/config.hpp"
#include "clusterfusion/weight_schema.hpp"

namespace clusterfusion::python {

namespace nb = nanobind;
using namespace nb::literals;

namespace {

bool same_rope(const RopeScaling& a, const RopeScaling& b) {
  return a.type == b.type && a.factor == b.factor && a.low_freq_factor == b.low_freq_factor &&
         a.high_freq_factor == b.high_freq_factor && a.original_max_positions == b.original_max_positions;
}

bool same_config(const ModelConfig& a, const ModelConfig& b) {
  return a.arch == b.arch && a.hidden == b.hidden && a.heads == b.heads && a.kv_heads == b.kv_heads &&
         a.head_dim == b.head_dim && a.ffn == b.ffn && a.layers == b.layers && a.vocab == b.vocab &&
         a.rotary_dims == b.rotary_dims && a.rotary_base == b.rotary_base && same_rope(a.rope_scaling, b.rope_scaling) &&
         a.norm_eps == b.norm_eps && a.parallel_residual == b.parallel_residual && a.norm == b.norm &&
         a.activation == b.activation && a.tied_embeddings == b.tied_embeddings;
}

// The float32 as Python prints the shortest decimal that reads back as it (1e-05, 10000.0), not as the double
// it widens to (9.999999747378752e-06).
nb::str float32_repr(float value) {
  char text[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, static_cast<double>(value));
    if (std::strtof(text, nullptr) == value) break;
  }
  return nb::repr(nb::float_(std::strtod(text, nullptr)));
}

nb::str rope_repr(const RopeScaling& r) {
  return nb::str("RopeScaling(type={}, factor={}, low_freq_factor={}, high_freq_factor={}, "
                 "original_max_positions={})")
      .format(nb::cast(r.type), float32_repr(r.factor), float32_repr(r.low_freq_factor),
              float32_repr(r.high_freq_factor), r.original_max_positions);
}

// Evaluates back to an equal config (floats and enums print as Python writes them).
nb::str config_repr(const ModelConfig& c) {
  return nb::str("ModelConfig(arch={}, hidden={}, heads={}, kv_heads={}, head_dim={}, ffn={}, layers={}, vocab={}, "
                 "rotary_dims={}, rotary_base={}, rope_scaling={}, norm_eps={}, parallel_residual={}, norm={}, "
                 "activation={}, tied_embeddings={})")
      .format(nb::cast(c.arch), c.hidden, c.heads, c.kv_heads, c.head_dim, c.ffn, c.layers, c.vocab, c.rotary_dims,
              float32_repr(c.rotary_base), rope_repr(c.rope_scaling), float32_repr(c.norm_eps), c.parallel_residual,
              nb::cast(c.norm), nb::cast(c.activation), c.tied_embeddings);
}

nb::list spec_list(const std::vector<TensorSpec>& specs, const ModelConfig& c) {
  nb::list out;
  for (const TensorSpec& spec : specs) {
    nb::dict d;
    d["name"] = spec.name;
    d["hf_name"] = spec.hf_name;
    d["shape"] = nb::tuple(nb::cast(shape_of(spec, c)));
    out.append(d);
  }
  return out;
}

// The weight schema of config's architecture with the config's shapes.
nb::dict schema_dict(const ModelConfig& c) {
  c.validate();
  const WeightSchema& schema = weight_schema(c.arch);
  nb::dict d;
  d["layer"] = spec_list(schema.layer, c);
  d["model"] = spec_list(schema.model, c);
  d["layer_prefix"] = schema.layer_prefix;
  d["lm_head_alias"] = schema.lm_head_alias;
  return d;
}

}  // namespace

void bind_config(nb::module_& m) {
  nb::enum_<Architecture>(m, "Architecture")
      .value("GPTNeoX", Architecture::GPTNeoX)
      .value("Llama", Architecture::Llama);
  nb::enum_<Norm>(m, "Norm").value("LayerNorm", Norm::LayerNorm).value("RMSNorm", Norm::RMSNorm);
  nb::enum_<Activation>(m, "Activation", "GELU is the exact erf form, not the tanh approximation.")
      .value("GELU", Activation::GELU)
      .value("SiLU", Activation::SiLU);

  nb::enum_<RopeType>(m, "RopeType", "transformers' rope types that change the rotary frequencies only.")
      .value("Default", RopeType::Default)
      .value("Linear", RopeType::Linear)
      .value("Llama3", RopeType::Llama3);
  const RopeScaling r{};
  nb::class_<RopeScaling>(m, "RopeScaling",
                          "How the rotary frequencies derive from rotary_base (transformers' rope_scaling / "
                          "rope_parameters): factor for Linear and Llama3, the other fields for Llama3.")
      .def(
          "__init__",
          [](RopeScaling* self, RopeType type, float factor, float low, float high, int original) {
            new (self) RopeScaling{type, factor, low, high, original};
          },
          nb::kw_only(), "type"_a = r.type, "factor"_a = r.factor, "low_freq_factor"_a = r.low_freq_factor,
          "high_freq_factor"_a = r.high_freq_factor, "original_max_positions"_a = r.original_max_positions)
      .def_rw("type", &RopeScaling::type)
      .def_rw("factor", &RopeScaling::factor)
      .def_rw("low_freq_factor", &RopeScaling::low_freq_factor)
      .def_rw("high_freq_factor", &RopeScaling::high_freq_factor)
      .def_rw("original_max_positions", &RopeScaling::original_max_positions)
      .def("__eq__", &same_rope, nb::is_operator())
      .def("__repr__", &rope_repr);

  // Default arguments are plain values or None, never an instance of a bound class: nanobind keeps a default for
  // as long as the function lives, so where the type outlives the module's teardown, the instance (and every type
  // and function it keeps) is reported leaked at exit. Hence rope_scaling=None for RopeScaling()
  // (tests/python/test_leaks.py).
  const ModelConfig d{};
  nb::class_<ModelConfig>(m, "ModelConfig",
                          "The shape and arithmetic choices of one decoder-only transformer. Fields are plain "
                          "values: call validate() to check them.")
      .def(
          "__init__",
          [](ModelConfig* self, Architecture arch, int hidden, int heads, std::optional<int> kv_heads, int head_dim,
             int ffn, int layers, int vocab, int rotary_dims, float rotary_base,
             const std::optional<RopeScaling>& rope_scaling, float norm_eps, bool parallel_residual, Norm norm,
             Activation activation, bool tied_embeddings) {
            ModelConfig* c = new (self) ModelConfig();
            c->arch = arch;
            c->hidden = hidden;
            c->heads = heads;
            c->kv_heads = kv_heads.value_or(heads);
            if (rope_scaling) c->rope_scaling = *rope_scaling;  // else ModelConfig's own default
            c->tied_embeddings = tied_embeddings;
            c->head_dim = head_dim;
            c->ffn = ffn;
            c->layers = layers;
            c->vocab = vocab;
            c->rotary_dims = rotary_dims;
            c->rotary_base = rotary_base;
            c->norm_eps = norm_eps;
            c->parallel_residual = parallel_residual;
            c->norm = norm;
            c->activation = activation;
          },
          nb::kw_only(), "arch"_a = d.arch, "hidden"_a = d.hidden, "heads"_a = d.heads,
          "kv_heads"_a.none() = nb::none(), "head_dim"_a = d.head_dim, "ffn"_a = d.ffn, "layers"_a = d.layers,
          "vocab"_a = d.vocab, "rotary_dims"_a = d.rotary_dims, "rotary_base"_a = d.rotary_base,
          "rope_scaling"_a.none() = nb::none(), "norm_eps"_a = d.norm_eps, "parallel_residual"_a = d.parallel_residual,
          "norm"_a = d.norm, "activation"_a = d.activation, "tied_embeddings"_a = d.tied_embeddings,
          "kv_heads defaults to heads (multi-head attention), rope_scaling to RopeScaling() (the default rope).")
      .def_rw("arch", &ModelConfig::arch)
      .def_rw("hidden", &ModelConfig::hidden)
      .def_rw("heads", &ModelConfig::heads)
      .def_rw("kv_heads", &ModelConfig::kv_heads,
              "Key/value heads (grouped-query attention): query head j reads kv head j // (heads // kv_heads).")
      .def_rw("head_dim", &ModelConfig::head_dim)
      .def_rw("ffn", &ModelConfig::ffn)
      .def_rw("layers", &ModelConfig::layers)
      .def_rw("vocab", &ModelConfig::vocab)
      .def_rw("rotary_dims", &ModelConfig::rotary_dims, "Leading dims of each head that rotary rotates.")
      .def_rw("rotary_base", &ModelConfig::rotary_base)
      .def_rw("rope_scaling", &ModelConfig::rope_scaling)
      .def_rw("norm_eps", &ModelConfig::norm_eps)
      .def_rw("parallel_residual", &ModelConfig::parallel_residual)
      .def_rw("norm", &ModelConfig::norm)
      .def_rw("activation", &ModelConfig::activation)
      .def_rw("tied_embeddings", &ModelConfig::tied_embeddings, "The LM head is the input embedding.")
      .def_prop_ro("qkv_rows", &ModelConfig::qkv_rows)
      .def_prop_ro("group_size", &ModelConfig::group_size)
      .def("rotary_inv_freq", &ModelConfig::rotary_inv_freq,
           "The rotary inverse frequencies (rotary_dims // 2 floats, double precision) the kernels use.")
      .def("validate", &ModelConfig::validate,
           "Raises ValueError naming the first offending field, e.g. 'ModelConfig.head_dim: ...'.")
      .def_static("pythia", &pythia_config, "name"_a,
                  "A Pythia model by name ('pythia-70m' ... 'pythia-12b', 'gpt-neox-20b').")
      .def_static("llama2_7b", &llama2_7b_config)
      .def_static("named", &model_config, "name"_a,
                  "A supported model's shape by name: the Pythia family and 'llama-2-7b', 'tinyllama-1.1b', "
                  "'llama-3-8b', 'llama-3.2-1b' (model_names() lists them).")
      .def("__eq__", &same_config, nb::is_operator())
      .def("__repr__", &config_repr);

  m.def("model_names", &model_names, "The names ModelConfig.named accepts.");
  m.def("weight_schema", &schema_dict, "config"_a,
        "The tensors of config's architecture: {'layer': [...], 'model': [...], 'layer_prefix', 'lm_head_alias'}, "
        "each tensor a dict(name=the library's keyword, hf_name=the transformers parameter (relative to the "
        "layer for layer tensors), shape=its shape for this config).");
}

}  // namespace clusterfusion::python
