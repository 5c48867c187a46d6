// clusterfusion._C: importing it defines types only; nothing here touches the GPU (the stub generator
// imports the module at build time, on machines that may have none).
#include <nanobind/nanobind.h>

#include "bindings.hpp"
#include "clusterfusion/cuda_check.hpp"

NB_MODULE(_C, m) {
  m.doc() = "ClusterFusion's C++ library: fused GPT-NeoX decode kernels for Hopper GPUs.";
  m.attr("__version__") = CLUSTERFUSION_VERSION;
  // std::invalid_argument and std::out_of_range already become ValueError and IndexError (nanobind's
  // defaults); CudaError gets its own class so callers can tell a CUDA failure from bad input.
  nanobind::exception<clusterfusion::CudaError>(m, "CudaError", PyExc_RuntimeError);
  clusterfusion::python::bind_config(m);
  clusterfusion::python::bind_kv_cache(m);
  clusterfusion::python::bind_layer(m);
  clusterfusion::python::bind_reference(m);
  clusterfusion::python::bind_decode(m);
}
