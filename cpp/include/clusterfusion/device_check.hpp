// The one device check. The kernels are compiled for sm_90a (TMA, thread-block clusters, setmaxnreg), whose
// code runs on compute capability 9.0 only: H100 and H200. Everything that needs the GPU (KVCache, DecoderLayer
// through plan_layer, DecodeContext) calls require_hopper() before any other CUDA call, so a machine without
// such a GPU gets one sentence instead of the first failing CUDA call:
//   clusterfusion needs an NVIDIA GPU of compute capability 9.0 (H100/H200); found no NVIDIA driver
#pragma once
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

namespace clusterfusion {

// No GPU the library can run on: no driver, no device, or a device of another compute capability.
// (Python: clusterfusion.UnsupportedDeviceError, a RuntimeError.)
class UnsupportedDeviceError : public std::runtime_error {
 public:
  // `found`: what there is instead, e.g. "no CUDA device" or "device 0, NVIDIA A100-SXM4-80GB, of compute
  // capability 8.0"; what() is unsupported_device_message(found).
  explicit UnsupportedDeviceError(const std::string& found);
  const std::string& found() const noexcept { return found_; }

 private:
  std::string found_;
};

// "clusterfusion needs an NVIDIA GPU of compute capability 9.0 (H100/H200); found " + found.
std::string unsupported_device_message(const std::string& found);

// What the CUDA runtime says about the current device, as require_hopper() reads it.
struct DeviceProbe {
  int driver_version = 0;   // cudaDriverGetVersion: 0 when no NVIDIA driver is loaded
  int runtime_version = 0;  // cudaRuntimeGetVersion: the runtime this library runs with
  cudaError_t status = cudaSuccess;  // the first failing query (cudaGetDeviceCount, cudaGetDevice, ...)
  std::string failed_call;           // its name, when status is not cudaSuccess
  int device_count = 0;
  int device = -1;  // the current device
  int major = 0;    // its compute capability
  int minor = 0;
  std::string name;  // filled only when the capability is not 9.0 (the name costs a property query)
};

// Queries the runtime (no exception: failures are recorded in the probe).
DeviceProbe probe_device();

// Empty when the probe shows a compute capability 9.0 device, else the "found ..." text of the message.
std::string unsupported_device(const DeviceProbe& probe);

// Throws UnsupportedDeviceError unless the current CUDA device has compute capability 9.0. Leaves no CUDA
// error behind for a later check.
void require_hopper();

}  // namespace clusterfusion
