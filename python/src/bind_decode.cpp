#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "array_checks.hpp"
#include "bindings.hpp"
#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/decode_context.hpp"
#include "clusterfusion/device_guard.hpp"
#include "weight_args.hpp"

namespace clusterfusion::python {

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// The C++ context borrows its weights; the Python object owns the arrays that hold them, and is destroyed
// after the context (members go in reverse order).
struct PyDecodeContext {
  std::vector<InArray> weights;
  std::uintptr_t stream;
  std::unique_ptr<DecodeContext> context;
};

ArraySpec cuda_spec(nb::dlpack::dtype dtype, std::vector<int64_t> shape, std::size_t align = 16) {
  return {nb::device::cuda::value, dtype, std::move(shape), align};
}

// Checks `obj` as a CUDA float16 tensor of `shape`, keeps it in `owned` and returns its view (with the device id
// DLPack states, for the context to check).
TensorView keep(std::vector<InArray>& owned, nb::handle obj, const std::string& name, std::vector<int64_t> shape,
                std::size_t align = 16) {
  owned.push_back(to_checked_array<InArray>(obj, name.c_str(), cuda_spec(kFloat16, shape, align)));
  return TensorView(const_cast<void*>(owned.back().data()), std::move(shape), DType::Float16,
                    owned.back().device_id());
}

void init_context(PyDecodeContext* self, const ModelConfig& config, int max_seq, nb::sequence layers,
                  const std::optional<std::string>& mode, std::uintptr_t stream, nb::kwargs model_tensors) {
  config.validate();  // the expected shapes mean nothing for an invalid config
  std::vector<InArray> owned;
  ModelWeights w;
  for (auto& [slot, view] : schema_views(model_tensors, weight_schema(config.arch).model, config, "", owned))
    w.views[static_cast<std::size_t>(slot)] = std::move(view);
  const std::size_t count = nb::len(layers);
  if (count != static_cast<std::size_t>(config.layers)) {
    throw nb::value_error(("layers: expected " + std::to_string(config.layers) + " dicts of layer weights, got " +
                           std::to_string(count))
                              .c_str());
  }
  for (std::size_t i = 0; i < count; ++i) {
    const std::string prefix = "layers[" + std::to_string(i) + "]";
    nb::dict dict;
    if (!nb::try_cast(layers[i], dict)) {
      throw nb::type_error((prefix + ": expected a dict of the layer's weights (weight_schema(config)['layer']), "
                                     "got " + std::string(nb::type_name(layers[i].type()).c_str()))
                               .c_str());
    }
    w.layers.push_back(layer_weights(dict, config, prefix, owned));
  }
  std::optional<LayerMode> parsed;
  if (mode) parsed = parse_layer_mode(*mode);
  auto context = std::make_unique<DecodeContext>(config, w, max_seq, parsed, reinterpret_cast<cudaStream_t>(stream));
  new (self) PyDecodeContext{std::move(owned), stream, std::move(context)};
}

std::vector<TensorView> prefix_views(std::vector<InArray>& owned, nb::sequence tensors, const char* name) {
  std::vector<TensorView> views;
  const std::size_t count = nb::len(tensors);
  for (std::size_t i = 0; i < count; ++i) {
    const std::string item = std::string(name) + "[" + std::to_string(i) + "]";
    InArray array;
    if (!nb::try_cast(tensors[i], array, /*convert=*/false)) raise_not_a_tensor(tensors[i], item.c_str(), false);
    std::vector<int64_t> shape(array.shape_ptr(), array.shape_ptr() + array.ndim());
    // The shape is the C++ library's to check (it names the expected one); dtype, negative extents, layout and
    // device type are ours.
    views.push_back(keep(owned, tensors[i], item, shape, 2));
  }
  return views;
}

nb::ndarray<nb::array_api, float, nb::device::cuda> logits_view(nb::handle self) {
  const PyDecodeContext& c = nb::cast<const PyDecodeContext&>(self);
  float* data = const_cast<float*>(c.context->logits());
  const std::size_t shape[1] = {static_cast<std::size_t>(c.context->config().vocab)};
  return nb::ndarray<nb::array_api, float, nb::device::cuda>(data, 1, shape, self, nullptr, kFloat32,
                                                             nb::device::cuda::value, c.context->device());
}

nb::str sampling_repr(const SamplingParams& p) {
  return nb::str("SamplingParams(temperature={}, top_k={}, top_p={}, seed={})")
      .format(p.temperature, p.top_k, p.top_p, p.seed);
}

constexpr const char* kContextDoc =
    "A whole-model decode runtime (GPT-NeoX or Llama) for one sequence at batch 1: KV cache, scratch, one fused "
    "layer per decoder layer, and a CUDA graph of the whole step (embedding -> layers -> final norm -> LM head "
    "-> token selection). Weights are CUDA float16 tensors from any DLPack producer, read in place and kept "
    "alive: the model tensors as keyword arguments named by weight_schema(config)['model'] (embed_in, "
    "final_norm_weight, final_norm_bias for GPT-NeoX, lm_head: the embedding itself when tied), and `layers`, "
    "one dict per layer keyed by weight_schema(config)['layer']. mode: None (split, the faster one), 'split' or "
    "'cooperative'. Every step runs on `stream` (a cudaStream_t as an int; 0 is the default stream).\n\n"
    "Devices: the context lives on the CUDA device current when it is built (`device`); every call runs there, "
    "whatever device is current in the calling thread. Weights, prefix tensors and a stream of another device "
    "raise ValueError naming them ('layers[3].w_up: on cuda:1, the context is on cuda:0').\n\n"
    "Threads: every method may be called from any thread. The calls are serialised inside the context, each "
    "running whole: step() returns the token of its own step, and set_sampling() or reset() from another thread "
    "take effect between two steps, never inside one. Methods that wait (step, prefill, last_token, tokens) "
    "release the GIL. The array logits() returns is overwritten by the next step of any thread.";

}  // namespace

void bind_decode(nb::module_& m) {
  nb::class_<SamplingParams>(m, "SamplingParams",
                             "How a decode step picks its token: greedy when temperature == 0, else a draw from "
                             "softmax(logits / temperature) cut to top_k (0: no limit) and then top_p (1: no "
                             "limit), with a Philox generator keyed by seed and counted by position.")
      .def(
          "__init__",
          [](SamplingParams* self, float temperature, int top_k, float top_p, std::uint64_t seed) {
            new (self) SamplingParams{temperature, top_k, top_p, seed};
          },
          nb::kw_only(), "temperature"_a = 0.0f, "top_k"_a = 0, "top_p"_a = 1.0f, "seed"_a = 0)
      .def_rw("temperature", &SamplingParams::temperature)
      .def_rw("top_k", &SamplingParams::top_k)
      .def_rw("top_p", &SamplingParams::top_p)
      .def_rw("seed", &SamplingParams::seed)
      .def("validate", &SamplingParams::validate, "Raises ValueError naming the first offending field.")
      .def("__repr__", &sampling_repr);

  nb::class_<PyDecodeContext>(m, "DecodeContext", kContextDoc)
      .def(
          "__init__",
          &init_context, "config"_a, "max_seq"_a, nb::kw_only(), "layers"_a, "mode"_a = nb::none(), "stream"_a = 0,
          "weights"_a)
      .def_prop_ro("config", [](const PyDecodeContext& c) { return c.context->config(); })
      .def_prop_ro("max_seq", [](const PyDecodeContext& c) { return c.context->max_seq(); })
      .def_prop_ro("mode", [](const PyDecodeContext& c) { return std::string(layer_mode_name(c.context->mode())); })
      .def_prop_ro("stream", [](const PyDecodeContext& c) { return c.stream; })
      .def_prop_ro("device", [](const PyDecodeContext& c) { return c.context->device(); },
                   "The CUDA device ordinal the context lives on.")
      .def_prop_ro(
          "position",
          [](const PyDecodeContext& c) {
            const nb::gil_scoped_release release;  // waits while another thread's step() holds the context
            return c.context->position();
          },
          "Positions 0..position-1 are in the cache; the next step computes `position`.")
      .def_prop_ro("sampling", [](const PyDecodeContext& c) {
        const nb::gil_scoped_release release;
        return c.context->sampling();
      })
      .def(
          "set_sampling",
          [](PyDecodeContext& c, float temperature, int top_k, float top_p, std::uint64_t seed) {
            c.context->set_sampling(SamplingParams{temperature, top_k, top_p, seed});
          },
          nb::kw_only(), "temperature"_a = 0.0f, "top_k"_a = 0, "top_p"_a = 1.0f, "seed"_a = 0,
          nb::call_guard<nb::gil_scoped_release>(),
          "How later steps pick their token (ValueError for an invalid value, naming it).")
      .def("reset", [](PyDecodeContext& c) { c.context->reset(); }, nb::call_guard<nb::gil_scoped_release>(),
           "Position 0, empty cache.")
      .def(
          "load_prefix",
          [](PyDecodeContext& c, nb::sequence keys, nb::sequence values) {
            std::vector<InArray> owned;
            const auto k = prefix_views(owned, keys, "keys");
            const auto v = prefix_views(owned, values, "values");
            const nb::gil_scoped_release release;
            c.context->load_prefix(k, v);
            // The copies are asynchronous: the sources must live until they are done. On the context's device,
            // where stream 0 is the default stream the copies went to.
            const DeviceGuard on(c.context->device());
            CF_CUDA_CHECK(cudaStreamSynchronize(c.context->stream()));
          },
          "keys"_a, "values"_a,
          "Copies a prefill computed elsewhere into the cache: per layer, keys and values [1, kv_heads, seq, "
          "head_dim] float16 CUDA tensors of the context's device (transformers' cache layout, rotated keys). "
          "Sets position = seq; the next step needs a token. ValueError (count, shape, negative or inconsistent "
          "extents, dtype, device) / IndexError (seq > max_seq) before anything is copied or written.")
      .def(
          "enqueue_step",
          [](PyDecodeContext& c, std::optional<int> token) {
            if (token) {
              c.context->enqueue_step(*token);
            } else {
              c.context->enqueue_step();
            }
          },
          "token"_a = nb::none(), nb::call_guard<nb::gil_scoped_release>(),
          "Enqueues one step at `position` with `token` as input, or, when None, the token the previous step "
          "produced (RuntimeError if there is none). IndexError at max_seq (nothing enqueued). Does not wait.")
      .def(
          "step",
          [](PyDecodeContext& c, std::optional<int> token) { return token ? c.context->step(*token) : c.context->step(); },
          "token"_a = nb::none(), nb::call_guard<nb::gil_scoped_release>(),
          "enqueue_step(token), then waits and returns the token the step produced.")
      .def(
          "last_token", [](const PyDecodeContext& c) { return c.context->last_token(); },
          nb::call_guard<nb::gil_scoped_release>(), "Waits for the stream; the token the last step produced.")
      .def(
          "prefill", [](PyDecodeContext& c, const std::vector<int>& prompt) { return c.context->prefill(prompt); },
          "prompt"_a, nb::call_guard<nb::gil_scoped_release>(),
          "The decode step over each prompt token in turn; returns the token after the last one.")
      .def("logits", &logits_view,
           "The last step's logits, a zero-copy [vocab] float32 CUDA array (torch.from_dlpack); overwritten by the "
           "next step.")
      .def(
          "tokens", [](const PyDecodeContext& c, int start, int stop) { return c.context->tokens(start, stop); },
          "start"_a, "stop"_a, nb::call_guard<nb::gil_scoped_release>(),
          "The device token history tokens[start:stop] (waits for the stream): tokens[p] is the input of the step "
          "at p, so a step at p produced tokens[p + 1].");
}

}  // namespace clusterfusion::python
