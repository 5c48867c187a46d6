// Every CUDA runtime/driver call goes through CF_CUDA_CHECK / CF_CU_CHECK: a failure becomes a
// clusterfusion::CudaError whose message names the call, the file:line and CUDA's own error string.
#pragma once
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

namespace clusterfusion {

class CudaError : public std::runtime_error {
 public:
  CudaError(const std::string& call, const char* file, int line, const std::string& reason);
  const std::string& call() const noexcept { return call_; }

 private:
  std::string call_;
};

// Throws CudaError if `status` is not cudaSuccess.
void check_cuda(cudaError_t status, const char* call, const char* file, int line);
// Same for a driver-API status (CUresult, passed as int so this header needs no <cuda.h>).
void check_cu(int status, const char* call, const char* file, int line);
// After a <<<>>> launch, which returns no status: throws CudaError naming `what` if a CUDA error is pending
// (cudaPeekAtLastError). The error is left pending, since it may predate the launch and be another component's.
// A status-returning launch (cudaLaunchKernelEx, as the library's own launches are) through CF_CUDA_CHECK
// reports the launch's own error only.
void check_launch(const char* what, const char* file, int line);

}  // namespace clusterfusion

#define CF_CUDA_CHECK(expr) ::clusterfusion::check_cuda((expr), #expr, __FILE__, __LINE__)
#define CF_CU_CHECK(expr) ::clusterfusion::check_cu(static_cast<int>(expr), #expr, __FILE__, __LINE__)
#define CF_CHECK_LAUNCH(what) ::clusterfusion::check_launch((what), __FILE__, __LINE__)
