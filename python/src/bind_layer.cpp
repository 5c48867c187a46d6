#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "array_checks.hpp"
#include "bindings.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "clusterfusion/device_check.hpp"
#include "clusterfusion/device_guard.hpp"
#include "weight_args.hpp"

namespace clusterfusion::python {

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Frees a layer on the device it was built on, whatever device is current then.
struct DeleteOnDevice {
  int device;
  void operator()(DecoderLayer* layer) const noexcept {
    const DeviceGuard on(device, std::nothrow);
    delete layer;
  }
};

// The C++ layer borrows its weights; the Python layer owns the arrays that hold them. Members are destroyed in
// reverse order, so the layer goes before the memory it points into. `device`: where the layer was built, and
// where every call runs.
struct PyDecoderLayer {
  std::vector<InArray> weights;
  ModelConfig config;
  int max_seq;
  int device;
  std::unique_ptr<DecoderLayer, DeleteOnDevice> layer;
};

ArraySpec cuda_spec(nb::dlpack::dtype dtype, std::vector<int64_t> shape) {
  return {nb::device::cuda::value, dtype, std::move(shape), 16};
}

void init_layer(PyDecoderLayer* self, const ModelConfig& config, int max_seq, nb::kwargs weights) {
  config.validate();  // the expected shapes mean nothing for an invalid config
  std::vector<InArray> owned;
  const LayerWeights views = layer_weights(weights, config, "", owned);
  require_hopper();  // before the first other CUDA call, as the layer itself would
  const int device = current_device();
  views.check_device(config, device, "layer", "");
  std::unique_ptr<DecoderLayer, DeleteOnDevice> layer(new DecoderLayer(config, views, max_seq),
                                                      DeleteOnDevice{device});
  new (self) PyDecoderLayer{std::move(owned), config, max_seq, device, std::move(layer)};
}

// The data of `array` once it is known to be on `device`.
template <typename Array>
void* on_device(const Array& array, const char* name, int device) {
  check_same_device(name, array.device_id(), device, "layer");
  return const_cast<void*>(static_cast<const void*>(array.data()));
}

// The buffers of one step, checked against the layer's config and device. h1 is needed by sequential-residual
// architectures only.
LayerIO make_io(const PyDecoderLayer& l, nb::handle x, nb::handle out, nb::handle attn, nb::handle mlp_act,
                nb::handle h1) {
  const ModelConfig& c = l.config;
  LayerIO io;
  io.x = on_device(to_checked_array<InArray>(x, "x", cuda_spec(kFloat16, {c.hidden})), "x", l.device);
  io.out = on_device(to_checked_array<OutArray>(out, "out", cuda_spec(kFloat16, {c.hidden})), "out", l.device);
  io.attn = static_cast<float*>(
      on_device(to_checked_array<OutArray>(attn, "attn", cuda_spec(kFloat32, {c.hidden})), "attn", l.device));
  io.mlp_act = static_cast<float*>(
      on_device(to_checked_array<OutArray>(mlp_act, "mlp_act", cuda_spec(kFloat32, {c.ffn})), "mlp_act", l.device));
  if (!c.parallel_residual || !h1.is_none())
    io.h1 = on_device(to_checked_array<OutArray>(h1, "h1", cuda_spec(kFloat16, {c.hidden})), "h1", l.device);
  return io;
}

// The stream of a step, once it and the cache are known to be on the layer's device (which the caller's
// DeviceGuard has made current, so 0 is that device's default stream).
cudaStream_t checked_stream(const PyDecoderLayer& l, const KVCache& cache, std::uintptr_t stream) {
  check_same_device("cache", cache.device(), l.device, "layer");
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  check_stream_device(s, l.device, "layer");
  return s;
}

nb::dict plan_dict(const LayerLaunchPlan& p) {
  nb::dict d;
  d["cluster_size"] = p.cluster_size;
  d["blocks"] = p.blocks;
  d["threads"] = p.threads;
  nb::list grids;
  for (const PhaseGrid& g : p.phase_grids) {
    nb::dict grid;
    grid["cluster_size"] = g.cluster_size;
    grid["blocks"] = g.blocks;
    grid["smem"] = g.smem;
    grids.append(grid);
  }
  d["phase_grids"] = grids;
  d["attention_chunks"] = p.attention_chunks;
  d["attention_helpers"] = p.attention_helpers;
  d["qkv_chunks"] = p.qkv_chunks;
  d["smem_cooperative"] = p.smem_cooperative;
  d["cooperative_supported"] = p.cooperative_supported;
  return d;
}

constexpr const char* kLayerDoc =
    "One decoder layer (GPT-NeoX or Llama, from config.arch) on the fused cluster kernels. The weights are "
    "keyword arguments named by weight_schema(config)['layer'] (GPT-NeoX: ln1_weight, ..., w_qkv, b_qkv, ...; "
    "Llama: ln1_weight, w_q, w_k, w_v, w_o, ln2_weight, w_gate, w_up, w_down): CUDA float16 tensors from any "
    "DLPack producer (torch, CuPy, JAX), row-major [out, in] as transformers stores them; the layer keeps them "
    "alive and reads them in place (no copy). Raises ValueError for an invalid config, a missing or unknown "
    "weight or a shape the kernels do not support, RuntimeError on a GPU without clusters/TMA, CudaError when "
    "CUDA fails.\n\n"
    "Step buffers: x, out [hidden] float16 (may be the same tensor); attn [hidden] and mlp_act [ffn] float32 "
    "scratch; h1 [hidden] float16 scratch (x + attention) for Llama. `stream` is a cudaStream_t as an int "
    "(torch.cuda.current_stream(device).cuda_stream); 0 is the default stream.\n\n"
    "Devices: the layer lives on the CUDA device current when it is built; every call runs there, whatever "
    "device is current in the calling thread. Weights, step buffers, a cache or a stream of another device raise "
    "ValueError naming them ('x: on cuda:1, the layer is on cuda:0').\n\n"
    "Threads: the layer and the KVCache it writes are not synchronised; their methods hold the GIL, so Python "
    "threads take turns, each call running whole.";

}  // namespace

void bind_layer(nb::module_& m) {
  nb::class_<PyDecoderLayer>(m, "DecoderLayer", kLayerDoc)
      .def("__init__", &init_layer, "config"_a, "max_seq"_a, "weights"_a)
      .def_prop_ro("config", [](const PyDecoderLayer& l) { return l.config; })
      .def_prop_ro("max_seq", [](const PyDecoderLayer& l) { return l.max_seq; })
      .def_prop_ro("plan", [](const PyDecoderLayer& l) { return plan_dict(l.layer->plan()); },
                   "How the kernels are laid out on this device (cluster size, blocks, threads, shared memory).")
      .def_prop_ro("phase_names", [](const PyDecoderLayer& l) { return l.layer->phase_names(); },
                   "The architecture's phases in order, named by what they do; split mode launches each.")
      .def_prop_rw(
          "overlap_previous_kernel", [](const PyDecoderLayer& l) { return l.layer->overlap_previous_kernel(); },
          [](PyDecoderLayer& l, bool on) { l.layer->set_overlap_previous_kernel(on); },
          "Launch each kernel to start while the previous one in the stream finishes (programmatic dependent "
          "launch). Off by default; only valid when the kernel just before writes neither this layer's weights "
          "nor its inputs' producers' memory it reads early (as in a chain of layers).")
      .def(
          "forward",
          [](const PyDecoderLayer& l, KVCache& cache, int layer, nb::handle x, nb::handle out, nb::handle attn,
             nb::handle mlp_act, int position, const std::string& mode, nb::handle h1, std::uintptr_t stream) {
            const LayerMode parsed = parse_layer_mode(mode);
            const LayerIO io = make_io(l, x, out, attn, mlp_act, h1);
            const DeviceGuard on(l.device);
            l.layer->forward(cache, layer, io, position, parsed, checked_stream(l, cache, stream));
          },
          "cache"_a, "layer"_a, "x"_a.none(), "out"_a.none(), "attn"_a.none(), "mlp_act"_a.none(), "position"_a,
          "mode"_a = "split", "h1"_a.none() = nb::none(), "stream"_a = 0,
          "One decode step at `position` of cache layer `layer`: appends k/v there and writes out = the layer's "
          "output. mode: 'split' (one launch per phase) or 'cooperative' (one, with grid barriers). IndexError "
          "(nothing launched) unless position <= cache.length and position < cache.max_seq; every argument is "
          "checked before anything is launched.")
      .def(
          "run_phase",
          [](const PyDecoderLayer& l, KVCache& cache, int layer, int phase, nb::handle x, nb::handle out,
             nb::handle attn, nb::handle mlp_act, int position, nb::handle h1, std::uintptr_t stream) {
            const LayerIO io = make_io(l, x, out, attn, mlp_act, h1);
            const DeviceGuard on(l.device);
            l.layer->run_phase(cache, layer, io, position, phase, checked_stream(l, cache, stream));
          },
          "cache"_a, "layer"_a, "phase"_a, "x"_a.none(), "out"_a.none(), "attn"_a.none(), "mlp_act"_a.none(),
          "position"_a, "h1"_a.none() = nb::none(), "stream"_a = 0,
          "Phase `phase` (an index into phase_names) alone, as split mode launches it: the attending phase "
          "writes attn (and appends k/v), the up phase mlp_act, the projections h1 or out. Same checks as "
          "forward.")
      .def(
          "down_residual",
          [](const PyDecoderLayer& l, nb::handle x, nb::handle attn_output, nb::handle mlp_act, nb::handle out,
             std::uintptr_t stream) {
            const ModelConfig& c = l.config;
            const void* xp =
                on_device(to_checked_array<InArray>(x, "x", cuda_spec(kFloat16, {c.hidden})), "x", l.device);
            const void* ap = on_device(
                to_checked_array<InArray>(attn_output, "attn_output", cuda_spec(kFloat16, {c.hidden})),
                "attn_output", l.device);
            const auto* mp = static_cast<const float*>(on_device(
                to_checked_array<InArray>(mlp_act, "mlp_act", cuda_spec(kFloat32, {c.ffn})), "mlp_act", l.device));
            void* op =
                on_device(to_checked_array<OutArray>(out, "out", cuda_spec(kFloat16, {c.hidden})), "out", l.device);
            const DeviceGuard on(l.device);
            l.layer->down_residual(xp, ap, mp, op, reinterpret_cast<cudaStream_t>(stream));
          },
          "x"_a.none(), "attn_output"_a.none(), "mlp_act"_a.none(), "out"_a.none(), "stream"_a = 0,
          "GPT-NeoX only: out = x + attn_output + W_down mlp_act + b_down, the MLP's down-projection and the "
          "residual for an attention output computed elsewhere (attn_output [hidden] float16, already through "
          "W_o and b_o; x, out [hidden] float16, out may be x or attn_output; mlp_act [ffn] float32, e.g. what "
          "run_phase's first phase leaves). One launch on the layer's grid: the o_down_proj_residual phase "
          "without W_o. ValueError for a Llama layer.");
}

}  // namespace clusterfusion::python
