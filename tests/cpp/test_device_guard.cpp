// The device checks' messages, and tensors whose producer states their device: compared without a CUDA call,
// so on any machine. (Making a device current, asking CUDA where memory or a stream is: test_device_guard_gpu.cpp.)
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/config.hpp"
#include "clusterfusion/device_guard.hpp"
#include "clusterfusion/weight_schema.hpp"
#include "clusterfusion/weights.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

// Never dereferenced: the stated device decides.
void* fake_address() {
  return reinterpret_cast<void*>(std::uintptr_t{0x7f0000000000} + 4096 * cf_test::uniform_int(1, 1000));
}

template <std::size_t N>
void fill(std::array<cf::TensorView, N>& views, const std::vector<cf::TensorSpec>& specs, const cf::ModelConfig& c,
          int device) {
  for (const cf::TensorSpec& spec : specs)
    views[static_cast<std::size_t>(spec.slot)] = cf::TensorView(fake_address(), cf::shape_of(spec, c),
                                                                 cf::DType::Float16, device);
}

// Every schema tensor of `c`, stated on `device`.
cf::ModelWeights stated_weights(const cf::ModelConfig& c, int device) {
  cf::ModelWeights w;
  fill(w.views, cf::weight_schema(c.arch).model, c, device);
  w.layers.resize(c.layers);
  for (cf::LayerWeights& layer : w.layers) fill(layer.views, cf::weight_schema(c.arch).layer, c, device);
  return w;
}

}  // namespace

TEST(DeviceName, AsTorchWritesIt) {
  const int device = cf_test::uniform_int(0, 15);
  EXPECT_EQ(cf::device_name(device), "cuda:" + std::to_string(device));
}

TEST(CheckSameDevice, NamesTheArgumentAndBothDevices) {
  const int device = cf_test::uniform_int(0, 7), other = device + cf_test::uniform_int(1, 7);
  EXPECT_NO_THROW(cf::check_same_device("x", device, device, "layer"));
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>(
                [&] { cf::check_same_device("weights 'q_proj'", other, device, "context"); }),
            "weights 'q_proj': on cuda:" + std::to_string(other) + ", the context is on cuda:" +
                std::to_string(device));
}

TEST(CheckTensorDevice, AStatedDeviceIsComparedWithoutAskingCuda) {
  const int device = cf_test::uniform_int(0, 7), other = (device + 1) % 8;
  EXPECT_NO_THROW(cf::check_tensor_device(cf::TensorView(fake_address(), {8}, cf::DType::Float16, device), "keys[2]",
                                          device, "context"));
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] {
              cf::check_tensor_device(cf::TensorView(fake_address(), {8}, cf::DType::Float16, other), "keys[2]",
                                      device, "context");
            }),
            "keys[2]: on cuda:" + std::to_string(other) + ", the context is on cuda:" + std::to_string(device));
}

TEST(WeightsCheckDevice, NamesTheTensorOfAnotherDevice) {
  for (const char* name : {"pythia-70m", "llama-3.2-1b"}) {
    SCOPED_TRACE(name);
    cf::ModelConfig c = cf::model_config(name);
    c.layers = 3;
    cf::ModelWeights w = stated_weights(c, 0);
    EXPECT_NO_THROW(w.check_device(c, 0, "context"));

    const auto& layer_specs = cf::weight_schema(c.arch).layer;
    const cf::TensorSpec& spec = layer_specs[cf_test::uniform_int(0, int(layer_specs.size()) - 1)];
    const int layer = cf_test::uniform_int(0, c.layers - 1);
    w.layers[layer].views[static_cast<std::size_t>(spec.slot)].device = 1;
    const std::string tensor = std::string(spec.name);
    EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { w.check_device(c, 0, "context"); }),
              "layers[" + std::to_string(layer) + "]." + tensor + ": on cuda:1, the context is on cuda:0");
    EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>(
                  [&] { w.layers[layer].check_device(c, 0, "layer"); }),
              "layer." + tensor + ": on cuda:1, the layer is on cuda:0");
    EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>(
                  [&] { w.layers[layer].check_device(c, 0, "layer", ""); }),
              tensor + ": on cuda:1, the layer is on cuda:0");

    cf::ModelWeights model = stated_weights(c, 2);
    model[cf::ModelSlot::embed_in].device = 0;
    EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { model.check_device(c, 2, "context"); }),
              "embed_in: on cuda:0, the context is on cuda:2");
  }
}
