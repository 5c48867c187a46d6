// The pieces of the clusterfusion._C module, one function per topic (module.cpp calls them in order).
#pragma once
#include <nanobind/nanobind.h>

namespace clusterfusion::python {

void bind_config(nanobind::module_& m);     // ModelConfig and its enums
void bind_kv_cache(nanobind::module_& m);   // KVCache
void bind_layer(nanobind::module_& m);      // DecoderLayer
void bind_reference(nanobind::module_& m);  // reference_neox_layer (the C++ double-precision reference)
void bind_decode(nanobind::module_& m);     // SamplingParams and DecodeContext (the whole-model decode runtime)

}  // namespace clusterfusion::python
