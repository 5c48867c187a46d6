#include "weight_args.hpp"

#include <nanobind/stl/string.h>

namespace clusterfusion::python {

std::vector<std::pair<int, TensorView>> schema_views(nb::dict tensors, const std::vector<TensorSpec>& specs,
                                                     const ModelConfig& config, const std::string& prefix,
                                                     std::vector<InArray>& owned) {
  auto name_of = [&](const std::string& key) { return prefix.empty() ? key : prefix + "." + key; };
  for (auto [key, value] : tensors) {
    const std::string k = nb::cast<std::string>(nb::str(key));
    bool known = false;
    for (const TensorSpec& spec : specs) known = known || k == spec.name;
    if (!known) {
      std::string expected;
      for (const TensorSpec& spec : specs) expected += std::string(expected.empty() ? "" : ", ") + spec.name;
      throw nb::value_error((name_of(k) + ": not a weight of " + architecture_name(config.arch) + " (expected " +
                             expected + ")")
                                .c_str());
    }
  }
  for (const TensorSpec& spec : specs) {
    if (!tensors.contains(spec.name)) throw nb::value_error((name_of(spec.name) + ": missing").c_str());
  }
  std::vector<std::pair<int, TensorView>> views;
  for (const TensorSpec& spec : specs) {
    const std::string name = name_of(spec.name);
    std::vector<int64_t> shape = shape_of(spec, config);
    owned.push_back(to_checked_array<InArray>(tensors[spec.name], name.c_str(),
                                              {nb::device::cuda::value, kFloat16, shape, 16}));
    views.emplace_back(spec.slot, TensorView(const_cast<void*>(owned.back().data()), std::move(shape), DType::Float16,
                                             owned.back().device_id()));
  }
  return views;
}

LayerWeights layer_weights(nb::dict tensors, const ModelConfig& config, const std::string& prefix,
                           std::vector<InArray>& owned) {
  LayerWeights w;
  for (auto& [slot, view] : schema_views(tensors, weight_schema(config.arch).layer, config, prefix, owned))
    w.views[static_cast<std::size_t>(slot)] = std::move(view);
  return w;
}

}  // namespace clusterfusion::python
