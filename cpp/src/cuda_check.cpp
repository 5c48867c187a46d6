#include "clusterfusion/cuda_check.hpp"

#include <cuda.h>
#include <cudaTypedefs.h>

namespace clusterfusion {

CudaError::CudaError(const std::string& call, const char* file, int line, const std::string& reason)
    : std::runtime_error(call + " failed at " + file + ":" + std::to_string(line) + ": " + reason), call_(call) {}

void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  // Clear CUDA's "last error" so a framework sharing the context (torch) does not report ours as its own.
  cudaGetLastError();
  throw CudaError(call, file, line, std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status));
}

namespace {

// The library does not link libcuda, so the driver's own error strings come through the runtime's entry
// point; with no driver there is nobody to ask and the numeric code is all we have.
std::string describe_cu(int status) {
  const auto code = static_cast<CUresult>(status);
  void* name_fn = nullptr;
  void* string_fn = nullptr;
  cudaDriverEntryPointQueryResult found_name{}, found_string{};
  const bool have_fns =
      cudaGetDriverEntryPointByVersion("cuGetErrorName", &name_fn, 6000, cudaEnableDefault, &found_name) ==
          cudaSuccess &&
      cudaGetDriverEntryPointByVersion("cuGetErrorString", &string_fn, 6000, cudaEnableDefault, &found_string) ==
          cudaSuccess &&
      found_name == cudaDriverEntryPointSuccess && found_string == cudaDriverEntryPointSuccess && name_fn &&
      string_fn;
  const char* name = nullptr;
  const char* text = nullptr;
  if (have_fns && reinterpret_cast<PFN_cuGetErrorName_v6000>(name_fn)(code, &name) == CUDA_SUCCESS &&
      reinterpret_cast<PFN_cuGetErrorString_v6000>(string_fn)(code, &text) == CUDA_SUCCESS && name && text) {
    return std::string(name) + ": " + text;
  }
  return "CUresult " + std::to_string(status) + " (no CUDA driver to name it, or an unknown code)";
}

}  // namespace

void check_cu(int status, const char* call, const char* file, int line) {
  if (status == CUDA_SUCCESS) return;
  throw CudaError(call, file, line, describe_cu(status));
}

void check_launch(const char* what, const char* file, int line) {
  // Peeked, not taken: the pending error may be older than the launch and belong to other code, which must
  // still find it.
  const cudaError_t status = cudaPeekAtLastError();
  if (status == cudaSuccess) return;
  throw CudaError(what, file, line, std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status));
}

}  // namespace clusterfusion
