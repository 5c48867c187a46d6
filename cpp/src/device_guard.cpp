#include "clusterfusion/device_guard.hpp"

#include <stdexcept>

#include <cudaTypedefs.h>

#include "clusterfusion/cuda_check.hpp"

namespace clusterfusion {

int current_device() {
  int device = 0;
  CF_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

std::string device_name(int device) { return "cuda:" + std::to_string(device); }

DeviceGuard::DeviceGuard(int device) {
  const int previous = current_device();
  if (previous == device) return;
  CF_CUDA_CHECK(cudaSetDevice(device));
  previous_ = previous;
}

DeviceGuard::DeviceGuard(int device, std::nothrow_t) noexcept {
  int previous = 0;
  // A failure is this guard's own error: cleared, so that nobody else takes it for theirs.
  if (cudaGetDevice(&previous) != cudaSuccess) {
    (void)cudaGetLastError();
    return;
  }
  if (previous == device) return;
  if (cudaSetDevice(device) == cudaSuccess) {
    previous_ = previous;
  } else {
    (void)cudaGetLastError();
  }
}

DeviceGuard::~DeviceGuard() {
  // A destructor cannot throw; the device to restore existed a moment ago, so this does not fail in practice.
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

void check_same_device(const std::string& name, int got, int device, const char* owner) {
  if (got == device) return;
  throw std::invalid_argument(name + ": on " + device_name(got) + ", the " + owner + " is on " +
                              device_name(device));
}

void check_tensor_device(const TensorView& view, const std::string& name, int device, const char* owner) {
  if (view.device >= 0) {
    check_same_device(name, view.device, device, owner);
    return;
  }
  cudaPointerAttributes attributes{};
  CF_CUDA_CHECK(cudaPointerGetAttributes(&attributes, view.data));
  if (attributes.type == cudaMemoryTypeDevice) check_same_device(name, attributes.device, device, owner);
}

namespace {

// The driver functions that tell a stream's device, looked up once through the runtime (the library does not
// link libcuda).
struct StreamContextApi {
  PFN_cuStreamGetCtx_v9020 stream_get_ctx = nullptr;
  PFN_cuCtxPushCurrent_v4000 push = nullptr;
  PFN_cuCtxGetDevice_v2000 get_device = nullptr;
  PFN_cuCtxPopCurrent_v4000 pop = nullptr;
};

void* driver_function(const char* name, int version) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  CF_CUDA_CHECK(cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
    throw CudaError(std::string("cudaGetDriverEntryPointByVersion(\"") + name + "\")", __FILE__, __LINE__,
                    std::string("the CUDA driver has no ") + name + " (query result " +
                        std::to_string(static_cast<int>(found)) + ")");
  }
  return fn;
}

const StreamContextApi& stream_context_api() {
  // A failed lookup throws and the next call tries again.
  static const StreamContextApi api{
      reinterpret_cast<PFN_cuStreamGetCtx_v9020>(driver_function("cuStreamGetCtx", 9020)),
      reinterpret_cast<PFN_cuCtxPushCurrent_v4000>(driver_function("cuCtxPushCurrent", 4000)),
      reinterpret_cast<PFN_cuCtxGetDevice_v2000>(driver_function("cuCtxGetDevice", 2000)),
      reinterpret_cast<PFN_cuCtxPopCurrent_v4000>(driver_function("cuCtxPopCurrent", 4000))};
  return api;
}

}  // namespace

int stream_device(cudaStream_t stream) {
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread) return current_device();
  const StreamContextApi& api = stream_context_api();
  CUcontext context = nullptr;
  CF_CU_CHECK(api.stream_get_ctx(reinterpret_cast<CUstream>(stream), &context));
  // A context's device is the current context's: push it, ask, pop it.
  CF_CU_CHECK(api.push(context));
  CUdevice device = 0;
  const CUresult status = api.get_device(&device);
  CUcontext popped = nullptr;
  CF_CU_CHECK(api.pop(&popped));
  check_cu(status, "cuCtxGetDevice(&device)", __FILE__, __LINE__);
  return static_cast<int>(device);
}

void check_stream_device(cudaStream_t stream, int device, const char* owner) {
  check_same_device("stream", stream_device(stream), device, owner);
}

}  // namespace clusterfusion
