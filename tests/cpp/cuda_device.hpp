// GPU tests skip, with the reason, on a machine with no usable CUDA device.
#pragma once
#include <string>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

namespace cf_test {

// Empty when a device is usable, otherwise why not.
inline std::string no_cuda_device_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // leave no error behind for the next check
    return std::string("no CUDA device: cudaGetDeviceCount failed with ") + cudaGetErrorName(status);
  }
  if (count == 0) return "no CUDA device: cudaGetDeviceCount returned 0";
  return {};
}

}  // namespace cf_test

// GTEST_SKIP returns from the test body, so this must be used in the test itself, not in a helper.
#define CF_REQUIRE_CUDA_DEVICE()                                                      \
  do {                                                                                \
    if (const std::string reason = ::cf_test::no_cuda_device_reason(); !reason.empty()) { \
      GTEST_SKIP() << reason;                                                         \
    }                                                                                 \
  } while (0)
