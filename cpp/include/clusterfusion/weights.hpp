// Views of a model's weights as the model stores them (row-major [out, in] float16, transformers' layout),
// one slot per tensor of the weight schema.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "clusterfusion/config.hpp"
#include "clusterfusion/tensor.hpp"
#include "clusterfusion/weight_schema.hpp"

namespace clusterfusion {

// One decoder layer: the slots its architecture's schema lists are filled, the others empty.
struct LayerWeights {
  std::array<TensorView, kLayerSlots> views;

  TensorView& operator[](LayerSlot s) { return views[static_cast<std::size_t>(s)]; }
  const TensorView& operator[](LayerSlot s) const { return views[static_cast<std::size_t>(s)]; }

  // Throws std::invalid_argument naming the tensor ("layers[3].w_up: expected [10240, 2560] ...") for a
  // schema tensor that is missing or misshapen, or a filled slot the architecture does not have.
  void check(const ModelConfig& config, const std::string& prefix = "layer") const;
  // Throws std::invalid_argument naming the tensor ("layers[3].w_up: on cuda:1, the context is on cuda:0") for a
  // schema tensor on another device than `device` (check_tensor_device); `owner` is what lives there.
  void check_device(const ModelConfig& config, int device, const char* owner,
                    const std::string& prefix = "layer") const;
};

struct ModelWeights {
  std::array<TensorView, kModelSlots> views;  // embed_in, final norm, lm_head
  std::vector<LayerWeights> layers;           // config.layers of them

  TensorView& operator[](ModelSlot s) { return views[static_cast<std::size_t>(s)]; }
  const TensorView& operator[](ModelSlot s) const { return views[static_cast<std::size_t>(s)]; }

  void check(const ModelConfig& config) const;
  // LayerWeights::check_device for every tensor, the layers' named "layers[i].<name>".
  void check_device(const ModelConfig& config, int device, const char* owner) const;
};

}  // namespace clusterfusion
