// The device an object lives on, and keeping every call there. KVCache and DecodeContext record the current CUDA
// device when they are built; every call of theirs that launches, copies, allocates or frees makes that device
// current for its duration (DeviceGuard) and refuses tensors and streams of another device, naming them:
//   layers[3].w_up: on cuda:1, the context is on cuda:0
#pragma once
#include <new>
#include <string>

#include <cuda_runtime_api.h>

#include "clusterfusion/tensor.hpp"

namespace clusterfusion {

// The current CUDA device (cudaGetDevice; CudaError when there is none).
int current_device();

// "cuda:<device>", as torch names it.
std::string device_name(int device);

// Makes `device` current for the guard's lifetime, then restores the device that was current before.
class DeviceGuard {
 public:
  // CudaError if the current device cannot be read or `device` cannot be made current.
  explicit DeviceGuard(int device);
  // For destructors: when `device` cannot be made current, the current device stays as it was.
  DeviceGuard(int device, std::nothrow_t) noexcept;
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;  // the device to restore; -1: none was changed
};

// Throws std::invalid_argument "<name>: on cuda:<got>, the <owner> is on cuda:<device>" unless got == device.
void check_same_device(const std::string& name, int got, int device, const char* owner);

// The same for a tensor: its stated device (TensorView::device) when there is one; otherwise where CUDA says its
// memory is, when that is one device's memory (managed and host memory are reachable from every device).
void check_tensor_device(const TensorView& view, const std::string& name, int device, const char* owner);

// The device `stream` belongs to: the current device for the default streams (0, cudaStreamLegacy,
// cudaStreamPerThread), else the device of the stream's context. Asked of the driver, which allows it while the
// stream captures a graph (cudaStreamGetDevice is refused then by some drivers, and the refusal breaks the capture).
int stream_device(cudaStream_t stream);

// check_same_device for a stream, named "stream".
void check_stream_device(cudaStream_t stream, int device, const char* owner);

}  // namespace clusterfusion
