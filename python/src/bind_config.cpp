#include <cstdio>
#include <cstdlib>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "clusterfusion/config.hpp"

namespace clusterfusion::python {

namespace nb = nanobind;
using namespace nb::literals;

namespace {

bool same_config(const ModelConfig& a, const ModelConfig& b) {
  return a.arch == b.arch && a.hidden == b.hidden && a.heads == b.heads && a.head_dim == b.head_dim &&
         a.ffn == b.ffn && a.layers == b.layers && a.vocab == b.vocab && a.rotary_dims == b.rotary_dims &&
         a.rotary_base == b.rotary_base && a.norm_eps == b.norm_eps && a.parallel_residual == b.parallel_residual &&
         a.norm == b.norm && a.activation == b.activation;
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

// Evaluates back to an equal config (floats and enums print as Python writes them).
nb::str config_repr(const ModelConfig& c) {
  return nb::str("ModelConfig(arch={}, hidden={}, heads={}, head_dim={}, ffn={}, layers={}, vocab={}, "
                 "rotary_dims={}, rotary_base={}, norm_eps={}, parallel_residual={}, norm={}, activation={})")
      .format(nb::cast(c.arch), c.hidden, c.heads, c.head_dim, c.ffn, c.layers, c.vocab, c.rotary_dims,
              float32_repr(c.rotary_base), float32_repr(c.norm_eps), c.parallel_residual, nb::cast(c.norm),
              nb::cast(c.activation));
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

  const ModelConfig d{};
  nb::class_<ModelConfig>(m, "ModelConfig",
                          "The shape and arithmetic choices of one decoder-only transformer. Fields are plain "
                          "values: call validate() to check them.")
      .def(
          "__init__",
          [](ModelConfig* self, Architecture arch, int hidden, int heads, int head_dim, int ffn, int layers,
             int vocab, int rotary_dims, float rotary_base, float norm_eps, bool parallel_residual, Norm norm,
             Activation activation) {
            ModelConfig* c = new (self) ModelConfig();
            c->arch = arch;
            c->hidden = hidden;
            c->heads = heads;
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
          nb::kw_only(), "arch"_a = d.arch, "hidden"_a = d.hidden, "heads"_a = d.heads, "head_dim"_a = d.head_dim,
          "ffn"_a = d.ffn, "layers"_a = d.layers, "vocab"_a = d.vocab, "rotary_dims"_a = d.rotary_dims,
          "rotary_base"_a = d.rotary_base, "norm_eps"_a = d.norm_eps, "parallel_residual"_a = d.parallel_residual,
          "norm"_a = d.norm, "activation"_a = d.activation)
      .def_rw("arch", &ModelConfig::arch)
      .def_rw("hidden", &ModelConfig::hidden)
      .def_rw("heads", &ModelConfig::heads)
      .def_rw("head_dim", &ModelConfig::head_dim)
      .def_rw("ffn", &ModelConfig::ffn)
      .def_rw("layers", &ModelConfig::layers)
      .def_rw("vocab", &ModelConfig::vocab)
      .def_rw("rotary_dims", &ModelConfig::rotary_dims, "Leading dims of each head that rotary rotates.")
      .def_rw("rotary_base", &ModelConfig::rotary_base)
      .def_rw("norm_eps", &ModelConfig::norm_eps)
      .def_rw("parallel_residual", &ModelConfig::parallel_residual)
      .def_rw("norm", &ModelConfig::norm)
      .def_rw("activation", &ModelConfig::activation)
      .def_prop_ro("qkv_rows", &ModelConfig::qkv_rows)
      .def("validate", &ModelConfig::validate,
           "Raises ValueError naming the first offending field, e.g. 'ModelConfig.head_dim: ...'.")
      .def_static("pythia", &pythia_config, "name"_a,
                  "A Pythia model by name ('pythia-70m' ... 'pythia-12b', 'gpt-neox-20b').")
      .def_static("llama2_7b", &llama2_7b_config)
      .def("__eq__", &same_config, nb::is_operator())
      .def("__repr__", &config_repr);
}

}  // namespace clusterfusion::python
