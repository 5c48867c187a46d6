// The device check: its message for each thing a machine can have instead of a compute capability 9.0 GPU
// (probes made up on the host), and, on a machine without one (this suite runs anywhere), the constructors that
// need the GPU refusing with that message before any other CUDA call.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "clusterfusion/decode_context.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "clusterfusion/device_check.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "clusterfusion/weight_schema.hpp"
#include "clusterfusion/weights.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

const std::string kNeeds = "clusterfusion needs an NVIDIA GPU of compute capability 9.0 (H100/H200); found ";

// A probe of a machine whose runtime and driver are both CUDA 13.0 and whose current device is `device`.
cf::DeviceProbe probe_of(int major, int minor, const std::string& name, int device = 0) {
  cf::DeviceProbe p;
  p.driver_version = p.runtime_version = 13000;
  p.device_count = device + 1;
  p.device = device;
  p.major = major;
  p.minor = minor;
  p.name = name;
  return p;
}

// Empty when this machine's current device is compute capability 9.0.
std::string this_machine() { return cf::unsupported_device(cf::probe_device()); }

#define CF_SKIP_ON_HOPPER()                                                                \
  do {                                                                                     \
    if (this_machine().empty()) GTEST_SKIP() << "this machine has a compute capability 9.0 GPU"; \
  } while (0)

// The checks never dereference: distinct 256-byte aligned stand-ins for device pointers.
cf::TensorView fake(std::vector<int64_t> shape) {
  static std::uintptr_t next = 0x7f0000000000;
  next += 256 * cf_test::uniform_int(1, 64);
  return cf::TensorView(reinterpret_cast<void*>(next), std::move(shape), cf::DType::Float16);
}

cf::LayerWeights fake_layer(const cf::ModelConfig& c) {
  cf::LayerWeights w;
  for (const cf::TensorSpec& spec : cf::weight_schema(c.arch).layer) w.views[spec.slot] = fake(cf::shape_of(spec, c));
  return w;
}

cf::ModelWeights fake_model(const cf::ModelConfig& c) {
  cf::ModelWeights m;
  for (const cf::TensorSpec& spec : cf::weight_schema(c.arch).model) m.views[spec.slot] = fake(cf::shape_of(spec, c));
  for (int i = 0; i < c.layers; ++i) m.layers.push_back(fake_layer(c));
  return m;
}

cf::ModelConfig some_model() {
  const char* names[] = {"pythia-70m", "tinyllama-1.1b", "llama-3.2-1b"};
  return cf::model_config(names[cf_test::uniform_int(0, 2)]);
}

}  // namespace

TEST(UnsupportedDeviceError, MessageSaysWhatIsNeededAndWhatWasFound) {
  const cf::UnsupportedDeviceError e("no CUDA device");
  EXPECT_EQ(std::string(e.what()), kNeeds + "no CUDA device");
  EXPECT_EQ(e.found(), "no CUDA device");
  EXPECT_EQ(cf::unsupported_device_message("x"), kNeeds + "x");
  // A runtime_error, not an argument error (Python: a RuntimeError).
  static_assert(std::is_base_of_v<std::runtime_error, cf::UnsupportedDeviceError>);
}

TEST(UnsupportedDevice, NoDriver) {
  cf::DeviceProbe p;
  p.runtime_version = 13000;
  p.status = cudaErrorInsufficientDriver;  // what the runtime says when libcuda is not there at all
  p.failed_call = "cudaGetDeviceCount";
  EXPECT_EQ(cf::unsupported_device(p), "no NVIDIA driver");
}

TEST(UnsupportedDevice, DriverOlderThanTheRuntime) {
  cf::DeviceProbe p;
  p.driver_version = 12040;
  p.runtime_version = 13000;
  p.status = cudaErrorInsufficientDriver;
  p.failed_call = "cudaGetDeviceCount";
  EXPECT_EQ(cf::unsupported_device(p),
            "an NVIDIA driver for CUDA 12.4, older than the CUDA 13.0 runtime this library runs with (update the "
            "driver)");
}

TEST(UnsupportedDevice, NoDevice) {
  cf::DeviceProbe p = probe_of(0, 0, "");
  p.device_count = 0;
  p.device = -1;
  EXPECT_EQ(cf::unsupported_device(p), "no CUDA device");
  p.status = cudaErrorNoDevice;
  p.failed_call = "cudaGetDeviceCount";
  EXPECT_EQ(cf::unsupported_device(p), "no CUDA device");
}

TEST(UnsupportedDevice, OtherFailuresAreNamed) {
  cf::DeviceProbe p = probe_of(0, 0, "");
  p.status = cudaErrorDevicesUnavailable;
  p.failed_call = "cudaGetDevice";
  EXPECT_EQ(cf::unsupported_device(p), std::string("no usable CUDA device (cudaGetDevice: ") +
                                           cudaGetErrorName(cudaErrorDevicesUnavailable) + ": " +
                                           cudaGetErrorString(cudaErrorDevicesUnavailable) + ")");
}

TEST(UnsupportedDevice, OtherCapabilitiesNameTheDevice) {
  const int device = cf_test::uniform_int(0, 7);
  EXPECT_EQ(cf::unsupported_device(probe_of(8, 0, "NVIDIA A100-SXM4-80GB", device)),
            "device " + std::to_string(device) + ", NVIDIA A100-SXM4-80GB, of compute capability 8.0");
  EXPECT_EQ(cf::unsupported_device(probe_of(8, 9, "NVIDIA L4")), "device 0, NVIDIA L4, of compute capability 8.9");
  // sm_90a code does not run on Blackwell either.
  EXPECT_EQ(cf::unsupported_device(probe_of(10, 0, "NVIDIA B200")),
            "device 0, NVIDIA B200, of compute capability 10.0");
  EXPECT_EQ(cf::unsupported_device(probe_of(7, 5, "")), "device 0 of compute capability 7.5");
}

TEST(UnsupportedDevice, HopperPasses) {
  EXPECT_EQ(cf::unsupported_device(probe_of(9, 0, "NVIDIA H200", cf_test::uniform_int(0, 7))), "");
  EXPECT_EQ(cf::unsupported_device(probe_of(9, 0, "")), "");
}

TEST(RequireHopper, AgreesWithTheProbeOfThisMachine) {
  const std::string found = this_machine();
  if (found.empty()) {
    EXPECT_NO_THROW(cf::require_hopper());
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    return;
  }
  EXPECT_EQ(cf_test::thrown_message<cf::UnsupportedDeviceError>([] { cf::require_hopper(); }), kNeeds + found);
}

// The constructors that need the GPU: the message of the check, not the first failing CUDA call
// (cudaErrorInsufficientDriver from cudaMalloc, before the check existed).
TEST(RequireHopper, KVCacheChecksTheDeviceFirst) {
  CF_SKIP_ON_HOPPER();
  const std::string msg = cf_test::thrown_message<cf::UnsupportedDeviceError>(
      [] { cf::KVCache cache(some_model(), cf_test::uniform_int(1, 4096)); });
  EXPECT_EQ(msg, kNeeds + this_machine());
}

TEST(RequireHopper, PlanLayerChecksTheDeviceFirst) {
  CF_SKIP_ON_HOPPER();
  const std::string msg =
      cf_test::thrown_message<cf::UnsupportedDeviceError>([] { cf::plan_layer(some_model(), 512); });
  EXPECT_EQ(msg, kNeeds + this_machine());
}

TEST(RequireHopper, DecoderLayerChecksTheDeviceAfterItsArguments) {
  CF_SKIP_ON_HOPPER();
  const cf::ModelConfig c = some_model();
  const std::string msg = cf_test::thrown_message<cf::UnsupportedDeviceError>(
      [&] { cf::DecoderLayer layer(c, fake_layer(c), 512); });
  EXPECT_EQ(msg, kNeeds + this_machine());
  // Wrong arguments are still reported as such, GPU or not.
  EXPECT_THROW(cf::DecoderLayer(c, cf::LayerWeights{}, 512), std::invalid_argument);
}

TEST(RequireHopper, DecodeContextChecksTheDeviceAfterItsArguments) {
  CF_SKIP_ON_HOPPER();
  cf::ModelConfig c = some_model();
  c.layers = cf_test::uniform_int(1, 3);
  const std::string msg = cf_test::thrown_message<cf::UnsupportedDeviceError>(
      [&] { cf::DecodeContext ctx(c, fake_model(c), 256); });
  EXPECT_EQ(msg, kNeeds + this_machine());
  EXPECT_THROW(cf::DecodeContext(c, fake_model(c), 0), std::invalid_argument);
}
