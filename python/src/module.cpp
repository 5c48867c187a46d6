// clusterfusion._C: importing it defines types only; nothing here touches the GPU (the stub generator
// imports the module at build time, on machines that may have none).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/device_check.hpp"

NB_MODULE(_C, m) {
  m.doc() = "ClusterFusion's C++ library: fused GPT-NeoX decode kernels for Hopper GPUs.";
  m.attr("__version__") = CLUSTERFUSION_VERSION;
  // std::invalid_argument and std::out_of_range already become ValueError and IndexError (nanobind's
  // defaults); CudaError gets its own class so callers can tell a CUDA failure from bad input.
  nanobind::exception<clusterfusion::CudaError>(m, "CudaError", PyExc_RuntimeError);
  // No GPU the kernels run on (no driver, no device, another compute capability): KVCache, DecoderLayer and
  // DecodeContext raise it before any other CUDA call.
  nanobind::exception<clusterfusion::UnsupportedDeviceError>(m, "UnsupportedDeviceError", PyExc_RuntimeError);
  m.def("require_hopper", &clusterfusion::require_hopper,
        "Raise UnsupportedDeviceError unless the current CUDA device has compute capability 9.0 (H100/H200): "
        "\"clusterfusion needs an NVIDIA GPU of compute capability 9.0 (H100/H200); found ...\".");
  m.def("unsupported_device_message", &clusterfusion::unsupported_device_message, nanobind::arg("found"),
        "UnsupportedDeviceError's message for what was found instead of a compute capability 9.0 GPU.");
  clusterfusion::python::bind_config(m);
  clusterfusion::python::bind_kv_cache(m);
  clusterfusion::python::bind_layer(m);
  clusterfusion::python::bind_reference(m);
  clusterfusion::python::bind_decode(m);
}
