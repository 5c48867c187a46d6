#include "clusterfusion/device_check.hpp"

namespace clusterfusion {

namespace {

std::string cuda_version_text(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

std::string status_text(const DeviceProbe& p) {
  return p.failed_call + ": " + cudaGetErrorName(p.status) + ": " + cudaGetErrorString(p.status);
}

}  // namespace

UnsupportedDeviceError::UnsupportedDeviceError(const std::string& found)
    : std::runtime_error(unsupported_device_message(found)), found_(found) {}

std::string unsupported_device_message(const std::string& found) {
  return "clusterfusion needs an NVIDIA GPU of compute capability 9.0 (H100/H200); found " + found;
}

DeviceProbe probe_device() {
  DeviceProbe p;
  cudaDriverGetVersion(&p.driver_version);  // sets 0 when there is no driver
  cudaRuntimeGetVersion(&p.runtime_version);
  auto record = [&p](cudaError_t status, const char* call) {
    if (status == cudaSuccess) return true;
    p.status = status;
    p.failed_call = call;
    cudaGetLastError();  // leave nothing behind for CF_CHECK_LAUNCH or a framework sharing the context
    return false;
  };
  if (!record(cudaGetDeviceCount(&p.device_count), "cudaGetDeviceCount") || p.device_count == 0) return p;
  if (!record(cudaGetDevice(&p.device), "cudaGetDevice")) return p;
  if (!record(cudaDeviceGetAttribute(&p.major, cudaDevAttrComputeCapabilityMajor, p.device),
              "cudaDeviceGetAttribute") ||
      !record(cudaDeviceGetAttribute(&p.minor, cudaDevAttrComputeCapabilityMinor, p.device),
              "cudaDeviceGetAttribute"))
    return p;
  if (p.major != 9 || p.minor != 0) {
    cudaDeviceProp prop;
    if (record(cudaGetDeviceProperties(&prop, p.device), "cudaGetDeviceProperties")) p.name = prop.name;
    p.status = cudaSuccess;  // the name is a courtesy: its failure is not what the check reports
    p.failed_call.clear();
  }
  return p;
}

std::string unsupported_device(const DeviceProbe& p) {
  if (p.driver_version == 0) return "no NVIDIA driver";
  if (p.status == cudaErrorInsufficientDriver)
    return "an NVIDIA driver for CUDA " + cuda_version_text(p.driver_version) + ", older than the CUDA " +
           cuda_version_text(p.runtime_version) + " runtime this library runs with (update the driver)";
  if (p.status == cudaErrorNoDevice || (p.status == cudaSuccess && p.device_count == 0)) return "no CUDA device";
  if (p.status != cudaSuccess) return "no usable CUDA device (" + status_text(p) + ")";
  if (p.major == 9 && p.minor == 0) return {};
  const std::string name = p.name.empty() ? "" : ", " + p.name + ",";
  return "device " + std::to_string(p.device) + name + " of compute capability " + std::to_string(p.major) + "." +
         std::to_string(p.minor);
}

void require_hopper() {
  const std::string found = unsupported_device(probe_device());
  if (!found.empty()) throw UnsupportedDeviceError(found);
}

}  // namespace clusterfusion
