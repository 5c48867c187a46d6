// GPU tests skip, with the reason, on a machine with no usable CUDA device.
#pragma once
#include <string>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "clusterfusion/cuda_check.hpp"

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

// The fused kernels need clusters and TMA: compute capability 9.0 or newer.
#define CF_REQUIRE_HOPPER()                                                                   \
  do {                                                                                        \
    CF_REQUIRE_CUDA_DEVICE();                                                                 \
    cudaDeviceProp prop;                                                                      \
    CF_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));                                         \
    if (prop.major < 9) GTEST_SKIP() << "needs compute capability 9.0+, got " << prop.name;  \
  } while (0)
