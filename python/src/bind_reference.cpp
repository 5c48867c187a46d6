#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "array_checks.hpp"
#include "bindings.hpp"
#include "clusterfusion/host_reference.hpp"
#include "clusterfusion/weight_schema.hpp"

namespace clusterfusion::python {

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using reference::HostLayer;
using Vec = std::vector<double>;

// The weights dict's keys (the GPT-NeoX schema's keywords) and where each lands in HostLayer.
struct HostSlot {
  const char* name;
  Vec HostLayer::*values;
};
constexpr HostSlot kHostSlots[12] = {
    {"ln1_weight", &HostLayer::ln1_w}, {"ln1_bias", &HostLayer::ln1_b}, {"ln2_weight", &HostLayer::ln2_w},
    {"ln2_bias", &HostLayer::ln2_b},   {"w_qkv", &HostLayer::w_qkv},    {"b_qkv", &HostLayer::b_qkv},
    {"w_o", &HostLayer::w_o},          {"b_o", &HostLayer::b_o},        {"w_up", &HostLayer::w_up},
    {"b_up", &HostLayer::b_up},        {"w_down", &HostLayer::w_down},  {"b_down", &HostLayer::b_down},
};

// The tensor's shape for config, from the GPT-NeoX weight schema.
std::vector<int64_t> schema_shape(const char* name, const ModelConfig& config) {
  for (const TensorSpec& spec : weight_schema(Architecture::GPTNeoX).layer) {
    if (std::string(spec.name) == name) return shape_of(spec, config);
  }
  throw std::logic_error(std::string("reference: ") + name + " is not in the GPT-NeoX weight schema");
}

Vec to_vec(nb::handle obj, const char* name, std::vector<int64_t> shape) {
  const ArraySpec spec{nb::device::cpu::value, kFloat64, std::move(shape), alignof(double)};
  const auto array = to_checked_array<InArray>(obj, name, spec);
  const auto* data = static_cast<const double*>(array.data());
  return Vec(data, data + array.size());
}

std::string slot_names() {
  std::string names;
  for (const HostSlot& s : kHostSlots) names += std::string(names.empty() ? "" : ", ") + s.name;
  return names;
}

HostLayer host_layer(const ModelConfig& config, const nb::dict& weights) {
  for (auto [key, value] : weights) {
    const std::string k = nb::str(key).c_str();
    bool known = false;
    for (const HostSlot& s : kHostSlots) known |= k == s.name;
    if (!known) throw nb::value_error(("weights: unexpected key '" + k + "' (expected " + slot_names() + ")").c_str());
  }
  HostLayer w;
  for (const HostSlot& s : kHostSlots) {
    if (!weights.contains(s.name)) throw nb::key_error((std::string("weights: missing '") + s.name + "'").c_str());
    w.*s.values = to_vec(weights[s.name], s.name, schema_shape(s.name, config));
  }
  return w;
}

// A float64 NumPy array that owns `values`.
nb::object to_numpy(Vec&& values, std::initializer_list<std::size_t> shape) {
  auto* owned = new Vec(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<Vec*>(p); });
  return nb::cast(nb::ndarray<nb::numpy, double>(owned->data(), shape, owner));
}

nb::dict reference_layer(const ModelConfig& config, const nb::dict& weights, nb::handle x, nb::handle k_cache,
                         nb::handle v_cache, int position) {
  config.validate();
  if (position < 0) throw nb::value_error(("position: expected >= 0, got " + std::to_string(position)).c_str());
  const int64_t heads = config.heads, d = config.head_dim;
  const HostLayer w = host_layer(config, weights);
  const Vec x_values = to_vec(x, "x", {config.hidden});
  const Vec k_values = to_vec(k_cache, "k_cache", {heads, position, d});
  const Vec v_values = to_vec(v_cache, "v_cache", {heads, position, d});
  auto r = reference::neox_layer(config, w, x_values, k_values, v_values, position);
  const auto h = static_cast<std::size_t>(heads), hd = static_cast<std::size_t>(d);
  nb::dict result;
  result["out"] = to_numpy(std::move(r.out), {static_cast<std::size_t>(config.hidden)});
  result["attn"] = to_numpy(std::move(r.attn), {static_cast<std::size_t>(config.hidden)});
  result["mlp_act"] = to_numpy(std::move(r.mlp_act), {static_cast<std::size_t>(config.ffn)});
  result["k"] = to_numpy(std::move(r.k), {h, hd});
  result["v"] = to_numpy(std::move(r.v), {h, hd});
  return result;
}

}  // namespace

void bind_reference(nb::module_& m) {
  m.def("reference_neox_layer", &reference_layer, "config"_a, "weights"_a, "x"_a.none(), "k_cache"_a.none(),
        "v_cache"_a.none(), "position"_a,
        "The C++ double-precision reference of one GPT-NeoX decode step (what the kernel tests compare "
        "against). weights: dict of float64 NumPy arrays keyed like DecoderLayer's GPT-NeoX keywords; x [hidden]; "
        "k_cache, v_cache [heads, position, head_dim] (the past). Returns dict(out, attn, mlp_act [ffn], "
        "k, v [heads, head_dim]) of float64 arrays.");
}

}  // namespace clusterfusion::python
