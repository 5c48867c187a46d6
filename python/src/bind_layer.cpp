#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include "array_checks.hpp"
#include "bindings.hpp"
#include "clusterfusion/neox_layer.hpp"

namespace clusterfusion::python {

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// The C++ layer borrows its weights; the Python layer owns the arrays that hold them. Members are destroyed in
// reverse order, so the layer goes before the memory it points into.
struct PyNeoXLayer {
  std::array<InArray, 12> weights;
  ModelConfig config;
  int max_seq;
  std::unique_ptr<NeoXLayer> layer;
};

// The keyword names, in the order of the __init__ arguments, with the LayerWeights slot each fills.
struct WeightSlot {
  const char* name;
  TensorView LayerWeights::*view;
};
constexpr WeightSlot kWeightSlots[12] = {
    {"ln1_weight", &LayerWeights::ln1_weight}, {"ln1_bias", &LayerWeights::ln1_bias},
    {"ln2_weight", &LayerWeights::ln2_weight}, {"ln2_bias", &LayerWeights::ln2_bias},
    {"w_qkv", &LayerWeights::w_qkv},           {"b_qkv", &LayerWeights::b_qkv},
    {"w_o", &LayerWeights::w_o},               {"b_o", &LayerWeights::b_o},
    {"w_up", &LayerWeights::w_up},             {"b_up", &LayerWeights::b_up},
    {"w_down", &LayerWeights::w_down},         {"b_down", &LayerWeights::b_down},
};

// GPT-NeoX's shapes, row-major [out, in] as transformers stores them, in kWeightSlots order.
std::array<std::vector<int64_t>, 12> weight_shapes(const ModelConfig& c) {
  const int64_t h = c.hidden, f = c.ffn;
  return {{{h}, {h}, {h}, {h}, {3 * h, h}, {3 * h}, {h, h}, {h}, {f, h}, {f}, {h, f}, {h}}};
}

ArraySpec cuda_spec(nb::dlpack::dtype dtype, std::vector<int64_t> shape) {
  return {nb::device::cuda::value, dtype, std::move(shape), 16};
}

void init_layer(PyNeoXLayer* self, const ModelConfig& config, int max_seq, const std::array<nb::handle, 12>& args) {
  config.validate();  // the expected shapes below mean nothing for an invalid config
  const auto shapes = weight_shapes(config);
  std::array<InArray, 12> arrays;
  LayerWeights views;
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    arrays[i] = to_checked_array<InArray>(args[i], kWeightSlots[i].name, cuda_spec(kFloat16, shapes[i]));
    views.*kWeightSlots[i].view = TensorView(const_cast<void*>(arrays[i].data()), shapes[i], DType::Float16);
  }
  auto layer = std::make_unique<NeoXLayer>(config, views, max_seq);
  new (self) PyNeoXLayer{std::move(arrays), config, max_seq, std::move(layer)};
}

// The buffers of one step, checked against the layer's config; `out` is skipped (left null) when absent.
LayerIO make_io(const ModelConfig& c, nb::handle x, nb::handle out, nb::handle attn, nb::handle mlp_act) {
  LayerIO io;
  io.x = to_checked_array<InArray>(x, "x", cuda_spec(kFloat16, {c.hidden})).data();
  if (out.is_valid()) io.out = to_checked_array<OutArray>(out, "out", cuda_spec(kFloat16, {c.hidden})).data();
  io.attn = static_cast<float*>(to_checked_array<OutArray>(attn, "attn", cuda_spec(kFloat32, {c.hidden})).data());
  io.mlp_act =
      static_cast<float*>(to_checked_array<OutArray>(mlp_act, "mlp_act", cuda_spec(kFloat32, {c.ffn})).data());
  return io;
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

nb::dict plan_dict(const LayerLaunchPlan& p) {
  nb::dict d;
  d["cluster_size"] = p.cluster_size;
  d["blocks"] = p.blocks;
  d["threads"] = p.threads;
  d["smem_phase_a"] = p.smem_phase_a;
  d["smem_phase_b"] = p.smem_phase_b;
  d["smem_cooperative"] = p.smem_cooperative;
  d["cooperative_supported"] = p.cooperative_supported;
  return d;
}

constexpr const char* kLayerDoc =
    "One GPT-NeoX decoder layer on the fused cluster kernels. The 12 weights are CUDA float16 tensors from any "
    "DLPack producer (torch, CuPy, JAX), row-major [out, in] as transformers stores them; the layer keeps them "
    "alive and reads them in place (no copy). Raises ValueError for an invalid config or a shape the kernels "
    "do not support, RuntimeError on a GPU without clusters/TMA, CudaError when CUDA fails.\n\n"
    "Step buffers: x, out [hidden] float16 (may be the same tensor); attn [hidden] and mlp_act [ffn] float32 "
    "scratch. `stream` is a cudaStream_t as an int (torch.cuda.current_stream().cuda_stream); 0 is the "
    "default stream.";

}  // namespace

void bind_layer(nb::module_& m) {
  nb::class_<PyNeoXLayer>(m, "NeoXLayer", kLayerDoc)
      .def(
          "__init__",
          [](PyNeoXLayer* self, const ModelConfig& config, int max_seq, nb::handle ln1_weight, nb::handle ln1_bias,
             nb::handle ln2_weight, nb::handle ln2_bias, nb::handle w_qkv, nb::handle b_qkv, nb::handle w_o,
             nb::handle b_o, nb::handle w_up, nb::handle b_up, nb::handle w_down, nb::handle b_down) {
            init_layer(self, config, max_seq,
                       {ln1_weight, ln1_bias, ln2_weight, ln2_bias, w_qkv, b_qkv, w_o, b_o, w_up, b_up, w_down,
                        b_down});
          },
          "config"_a, "max_seq"_a, nb::kw_only(), "ln1_weight"_a.none(), "ln1_bias"_a.none(),
          "ln2_weight"_a.none(), "ln2_bias"_a.none(), "w_qkv"_a.none(), "b_qkv"_a.none(), "w_o"_a.none(),
          "b_o"_a.none(), "w_up"_a.none(), "b_up"_a.none(), "w_down"_a.none(), "b_down"_a.none())
      .def_prop_ro("config", [](const PyNeoXLayer& l) { return l.config; })
      .def_prop_ro("max_seq", [](const PyNeoXLayer& l) { return l.max_seq; })
      .def_prop_ro("plan", [](const PyNeoXLayer& l) { return plan_dict(l.layer->plan()); },
                   "How the kernels are laid out on this device (cluster size, blocks, threads, shared memory).")
      .def_prop_rw(
          "overlap_previous_kernel", [](const PyNeoXLayer& l) { return l.layer->overlap_previous_kernel(); },
          [](PyNeoXLayer& l, bool on) { l.layer->set_overlap_previous_kernel(on); },
          "False by default. True: each launch starts while the previous kernel in the stream finishes "
          "(programmatic dependent launch) and waits for it only before reading x, attn and mlp_act; so that "
          "kernel must not write this layer's weights or biases (as in a chain of layers).")
      .def(
          "forward",
          [](const PyNeoXLayer& l, KVCache& cache, int layer, nb::handle x, nb::handle out, nb::handle attn,
             nb::handle mlp_act, int position, const std::string& mode, std::uintptr_t stream) {
            const LayerMode parsed = parse_layer_mode(mode);
            l.layer->forward(cache, layer, make_io(l.config, x, out, attn, mlp_act), position, parsed,
                             as_stream(stream));
          },
          "cache"_a, "layer"_a, "x"_a.none(), "out"_a.none(), "attn"_a.none(), "mlp_act"_a.none(), "position"_a,
          "mode"_a = "split",
          "stream"_a = 0,
          "One decode step at `position` of cache layer `layer`: appends k/v there and writes out = x + "
          "attention + MLP. mode: 'split' (two launches) or 'cooperative' (one, with a grid barrier). "
          "IndexError (nothing launched) unless position <= cache.length and position < cache.max_seq.")
      .def(
          "attention_mlp_up",
          [](const PyNeoXLayer& l, KVCache& cache, int layer, nb::handle x, nb::handle attn, nb::handle mlp_act,
             int position, std::uintptr_t stream) {
            l.layer->attention_mlp_up(cache, layer, make_io(l.config, x, nb::handle(), attn, mlp_act), position,
                                      as_stream(stream));
          },
          "cache"_a, "layer"_a, "x"_a.none(), "attn"_a.none(), "mlp_act"_a.none(), "position"_a, "stream"_a = 0,
          "Phase A alone: attention into attn and GELU(W_up LN2(x) + b_up) into mlp_act; appends k/v.")
      .def(
          "mlp_down_residual",
          [](const PyNeoXLayer& l, nb::handle x, nb::handle out, nb::handle attn, nb::handle mlp_act,
             std::uintptr_t stream) {
            l.layer->mlp_down_residual(make_io(l.config, x, out, attn, mlp_act), as_stream(stream));
          },
          "x"_a.none(), "out"_a.none(), "attn"_a.none(), "mlp_act"_a.none(), "stream"_a = 0,
          "Phase B alone: out = x + W_o attn + b_o + W_down mlp_act + b_down.");
}

}  // namespace clusterfusion::python
