#include "clusterfusion/weights.hpp"

#include <stdexcept>

#include "clusterfusion/device_guard.hpp"

namespace clusterfusion {

namespace {

std::string name_in(const std::string& prefix, const char* name) {
  return prefix.empty() ? std::string(name) : prefix + "." + name;
}

// Every slot of `views` is either a schema tensor of the right shape or, when the schema does not list it, empty.
template <std::size_t N, class SlotName>
void check_slots(const std::array<TensorView, N>& views, const std::vector<TensorSpec>& specs,
                 const ModelConfig& config, const std::string& prefix, SlotName&& slot_name) {
  std::array<bool, N> listed{};
  for (const TensorSpec& spec : specs) {
    listed[static_cast<std::size_t>(spec.slot)] = true;
    const std::vector<int64_t> shape = shape_of(spec, config);
    const TensorView& view = views[static_cast<std::size_t>(spec.slot)];
    const std::string name = name_in(prefix, spec.name);
    if (shape.size() == 1) {
      check_tensor(view, name.c_str(), {shape[0]});
    } else {
      check_tensor(view, name.c_str(), {shape[0], shape[1]});
    }
  }
  for (std::size_t s = 0; s < N; ++s) {
    const TensorView& view = views[s];
    if (listed[s] || (view.data == nullptr && view.shape.empty())) continue;
    throw std::invalid_argument(name_in(prefix, slot_name(s)) + ": expected no tensor (" +
                                architecture_name(config.arch) + " has none), got shape " + view.shape_str());
  }
}

template <std::size_t N>
void check_slots_device(const std::array<TensorView, N>& views, const std::vector<TensorSpec>& specs, int device,
                        const char* owner, const std::string& prefix) {
  for (const TensorSpec& spec : specs)
    check_tensor_device(views[static_cast<std::size_t>(spec.slot)], name_in(prefix, spec.name), device, owner);
}

// A slot's keyword, from whichever architecture's schema lists it.
const char* slot_name(bool layer, std::size_t slot) {
  for (const Architecture arch : {Architecture::GPTNeoX, Architecture::Llama}) {
    const WeightSchema& schema = weight_schema(arch);
    for (const TensorSpec& spec : layer ? schema.layer : schema.model) {
      if (static_cast<std::size_t>(spec.slot) == slot) return spec.name;
    }
  }
  return "?";
}

}  // namespace

void LayerWeights::check(const ModelConfig& config, const std::string& prefix) const {
  config.validate();
  check_slots(views, weight_schema(config.arch).layer, config, prefix, [](std::size_t s) { return slot_name(true, s); });
}

void LayerWeights::check_device(const ModelConfig& config, int device, const char* owner,
                                const std::string& prefix) const {
  check_slots_device(views, weight_schema(config.arch).layer, device, owner, prefix);
}

void ModelWeights::check(const ModelConfig& config) const {
  config.validate();
  if (layers.size() != static_cast<std::size_t>(config.layers)) {
    throw std::invalid_argument("layers: expected " + std::to_string(config.layers) + " layers, got " +
                                std::to_string(layers.size()));
  }
  check_slots(views, weight_schema(config.arch).model, config, "", [](std::size_t s) { return slot_name(false, s); });
  for (std::size_t i = 0; i < layers.size(); ++i) layers[i].check(config, "layers[" + std::to_string(i) + "]");
}

void ModelWeights::check_device(const ModelConfig& config, int device, const char* owner) const {
  check_slots_device(views, weight_schema(config.arch).model, device, owner, "");
  for (std::size_t i = 0; i < layers.size(); ++i)
    layers[i].check_device(config, device, owner, "layers[" + std::to_string(i) + "]");
}

}  // namespace clusterfusion
