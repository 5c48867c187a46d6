// Weights passed from Python as keyword -> tensor dicts, checked against the weight schema.
#pragma once
#include <array>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>

#include "array_checks.hpp"
#include "clusterfusion/weight_schema.hpp"
#include "clusterfusion/weights.hpp"

namespace clusterfusion::python {

// Checks every tensor `specs` lists in `tensors` (keyword -> CUDA float16 tensor of the schema's shape), keeps
// the arrays alive in `owned` and returns their views by slot, each stating its DLPack device id (checked by the
// C++ library against the device of the layer or context). Raises ValueError naming "<prefix>.<keyword>"
// for a missing tensor or a keyword the architecture does not have, TypeError / ValueError for a wrong tensor.
std::vector<std::pair<int, TensorView>> schema_views(nb::dict tensors, const std::vector<TensorSpec>& specs,
                                                     const ModelConfig& config, const std::string& prefix,
                                                     std::vector<InArray>& owned);

LayerWeights layer_weights(nb::dict tensors, const ModelConfig& config, const std::string& prefix,
                           std::vector<InArray>& owned);

}  // namespace clusterfusion::python
