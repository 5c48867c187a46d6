// The dynamic shared-memory limit of a kernel (cudaFuncAttributeMaxDynamicSharedMemorySize) belongs to the kernel,
// which the plans of every model with its architecture and head_dim share. Set per launch to that launch's need,
// it races with a launch of another plan (another thread, another context's stream, a graph captured while the
// value was larger). So it is set once per device and kernel, to the most the device allows, before the kernel's
// first launch or occupancy query. Plain C++ and the CUDA runtime only (the CPU tests include it).
#pragma once
#include <mutex>
#include <set>
#include <utility>

#include <cuda_runtime_api.h>

namespace clusterfusion::kernels {

// Runs set() once per (device, key) until it succeeds: callers of a key wait for the one running it, and a failure
// is returned to its caller and tried again by the next.
class OncePerDevice {
 public:
  template <class Set>
  cudaError_t run(int device, const void* key, Set&& set) {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (done_.count({device, key}) != 0) return cudaSuccess;
    const cudaError_t status = set();
    if (status == cudaSuccess) done_.insert({device, key});
    return status;
  }

 private:
  std::mutex mutex_;
  std::set<std::pair<int, const void*>> done_;
};

// Raises `kernel`'s dynamic shared-memory limit on the current device to the device's opt-in maximum less the
// kernel's static shared memory, once per device (the library never resets a device, which would undo it).
inline cudaError_t allow_max_dynamic_smem(const void* kernel) {
  static OncePerDevice once;
  int device = 0;
  if (const cudaError_t status = cudaGetDevice(&device); status != cudaSuccess) return status;
  return once.run(device, kernel, [&] {
    int optin = 0;
    if (const cudaError_t status = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
        status != cudaSuccess)
      return status;
    cudaFuncAttributes attrs;
    if (const cudaError_t status = cudaFuncGetAttributes(&attrs, kernel); status != cudaSuccess) return status;
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                optin - static_cast<int>(attrs.sharedSizeBytes));
  });
}

}  // namespace clusterfusion::kernels
