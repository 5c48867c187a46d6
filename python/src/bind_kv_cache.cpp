#include <cstdint>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "array_checks.hpp"
#include "bindings.hpp"
#include "clusterfusion/kv_cache.hpp"

namespace clusterfusion::python {

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// One layer's keys or values, [heads, max_seq, head_dim] float16 on the GPU, handed out without a copy through
// both DLPack (torch.from_dlpack, CuPy, JAX) and __cuda_array_interface__ (torch.as_tensor, Numba), since
// torch.as_tensor reads only the latter in the torch versions we meet. It keeps the Python KVCache, and so the
// device memory, alive for as long as it or any tensor made from it lives.
struct CacheView {
  nb::object cache;
  __half* data;
  int64_t heads, max_seq, head_dim;
  int device;
};

CacheView layer_view(const KVCache& cache, __half* data) {
  return {nb::find(cache), data, cache.heads(), cache.max_seq(), cache.head_dim(), cache.device()};
}

nb::tuple view_shape(const CacheView& v) { return nb::make_tuple(v.heads, v.max_seq, v.head_dim); }

// The DLPack export, by nanobind's array-API ndarray over the same memory (owned by the view object itself),
// which answers the consumer's max_version / dl_device / copy requests.
nb::object dlpack(nb::handle self, nb::kwargs kwargs) {
  const CacheView& v = nb::cast<const CacheView&>(self);
  const std::size_t shape[3] = {static_cast<std::size_t>(v.heads), static_cast<std::size_t>(v.max_seq),
                                static_cast<std::size_t>(v.head_dim)};
  nb::ndarray<nb::array_api, nb::device::cuda, nb::c_contig> array(v.data, 3, shape, self, nullptr, kFloat16,
                                                                   nb::device::cuda::value, v.device);
  return nb::cast(array).attr("__dlpack__")(**kwargs);
}

nb::dict cuda_array_interface(const CacheView& v) {
  nb::dict d;
  d["shape"] = view_shape(v);
  d["typestr"] = "<f2";
  d["data"] = nb::make_tuple(reinterpret_cast<std::uintptr_t>(v.data), false);
  d["strides"] = nb::none();  // C-contiguous
  d["stream"] = nb::none();   // the library's work is ordered by the caller's streams, not by this view
  d["version"] = 3;
  return d;
}

nb::str cache_repr(const KVCache& c) {
  return nb::str("KVCache(layers={}, heads={}, head_dim={}, max_seq={}, length={})")
      .format(c.layers(), c.heads(), c.head_dim(), c.max_seq(), c.length());
}

}  // namespace

void bind_kv_cache(nb::module_& m) {
  nb::class_<CacheView>(m, "CacheView",
                        "One layer's keys or values: a CUDA float16 [heads, max_seq, head_dim] view of the cache "
                        "memory for torch.from_dlpack / torch.as_tensor (zero-copy) and other DLPack or CUDA "
                        "array interface consumers.")
      .def_prop_ro("shape", &view_shape)
      .def_prop_ro("dtype", [](const CacheView&) { return "float16"; })
      .def_prop_ro("device", [](const CacheView& v) { return v.device; }, "The CUDA device ordinal.")
      .def_prop_ro("data_ptr", [](const CacheView& v) { return reinterpret_cast<std::uintptr_t>(v.data); })
      .def("__dlpack__", &dlpack)
      .def("__dlpack_device__",
           [](const CacheView& v) { return nb::make_tuple(int(nb::device::cuda::value), v.device); })
      .def_prop_ro("__cuda_array_interface__", &cuda_array_interface);

  nb::class_<KVCache>(m, "KVCache",
                      "Device memory for every layer's keys and values, [layer][head][max_seq][head_dim] float16 "
                      "(zeroed), on the CUDA device current when it is built (`device`). Allocating it raises "
                      "CudaError when there is no GPU or not enough memory. Not synchronised: its methods hold the "
                      "GIL, so Python threads take turns.")
      .def(nb::init<const ModelConfig&, int>(), "config"_a, "max_seq"_a)
      .def_prop_ro("layers", &KVCache::layers)
      .def_prop_ro("heads", &KVCache::heads)
      .def_prop_ro("head_dim", &KVCache::head_dim)
      .def_prop_ro("max_seq", &KVCache::max_seq)
      .def_prop_ro("device", &KVCache::device, "The CUDA device ordinal of the memory.")
      .def_prop_rw("length", &KVCache::length, &KVCache::set_length,
                   "Positions 0..length-1 hold valid keys and values. Set it after filling the cache through "
                   "keys()/values() (IndexError past max_seq); forward() advances it.")
      .def_prop_ro("bytes", &KVCache::bytes)
      .def("reset", &KVCache::reset, "Marks every position empty (length 0); the memory is kept.")
      .def(
          "keys", [](const KVCache& c, int layer) { return layer_view(c, c.keys(layer)); }, "layer"_a,
          "Layer `layer`'s keys as a CacheView [heads, max_seq, head_dim] (torch.from_dlpack / torch.as_tensor "
          "share the memory). IndexError for a layer out of range.")
      .def(
          "values", [](const KVCache& c, int layer) { return layer_view(c, c.values(layer)); }, "layer"_a,
          "Layer `layer`'s values, like keys().")
      .def("__repr__", &cache_repr);
}

}  // namespace clusterfusion::python
