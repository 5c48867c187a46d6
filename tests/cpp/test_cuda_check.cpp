// CudaError's message format and the three checks, with statuses made up on the host.
#include <string>

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "clusterfusion/cuda_check.hpp"
#include "cuda_device.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

TEST(CudaError, MessageNamesCallFileLineAndReason) {
  const int line = cf_test::uniform_int(1, 100000);
  const cf::CudaError e("cudaMemcpy(dst, src, n, kind)", "src/a.cpp", line, "cudaErrorFoo: bar");
  EXPECT_EQ(std::string(e.what()),
            "cudaMemcpy(dst, src, n, kind) failed at src/a.cpp:" + std::to_string(line) + ": cudaErrorFoo: bar");
  EXPECT_EQ(e.call(), "cudaMemcpy(dst, src, n, kind)");
}

TEST(CheckCuda, SuccessDoesNotThrow) { EXPECT_NO_THROW(cf::check_cuda(cudaSuccess, "x()", "f.cpp", 1)); }

TEST(CheckCuda, FailureCarriesCudasNameAndString) {
  const cudaError_t errors[] = {cudaErrorInvalidValue, cudaErrorMemoryAllocation, cudaErrorInvalidDevice};
  const cudaError_t status = errors[cf_test::uniform_int(0, 2)];
  const std::string msg = cf_test::thrown_message<cf::CudaError>([&] { CF_CUDA_CHECK(status); });
  // The macro stringifies the expression and records this file and line.
  const std::string head = "status failed at " __FILE__ ":";
  EXPECT_EQ(msg.rfind(head, 0), 0u) << msg;
  const std::string tail = std::string(": ") + cudaGetErrorName(status) + ": " + cudaGetErrorString(status);
  ASSERT_GE(msg.size(), tail.size());
  EXPECT_EQ(msg.substr(msg.size() - tail.size()), tail) << msg;
}

TEST(CheckCu, SuccessDoesNotThrow) { EXPECT_NO_THROW(CF_CU_CHECK(CUDA_SUCCESS)); }

TEST(CheckCu, FailureIsNamedByTheDriverOrByNumber) {
  const std::string msg =
      cf_test::thrown_message<cf::CudaError>([] { cf::check_cu(CUDA_ERROR_INVALID_VALUE, "cuFoo(a)", "d.cpp", 7); });
  const std::string head = "cuFoo(a) failed at d.cpp:7: ";
  ASSERT_EQ(msg.rfind(head, 0), 0u) << msg;
  const std::string reason = msg.substr(head.size());
  if (cf_test::no_cuda_device_reason().empty()) {
    EXPECT_EQ(reason, "CUDA_ERROR_INVALID_VALUE: invalid argument");
    // Looking the names up leaves no runtime error behind for a later check_launch.
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  } else {
    // Possibly no driver to ask; either way the code itself must be in the message.
    EXPECT_TRUE(reason == "CUDA_ERROR_INVALID_VALUE: invalid argument" || reason.rfind("CUresult 1 (", 0) == 0)
        << reason;
  }
}

TEST(CheckLaunch, ReportsAPendingErrorAndLeavesItPending) {
  cudaGetLastError();
  // An invalid device ordinal fails on every machine, with or without a GPU, and is recorded as the last error;
  // here it stands for an error another component left pending before a launch.
  const cudaError_t pending = cudaSetDevice(-1);
  ASSERT_NE(pending, cudaSuccess);
  const std::string msg = cf_test::thrown_message<cf::CudaError>([] { CF_CHECK_LAUNCH("neox_phase_a"); });
  EXPECT_EQ(msg.rfind("neox_phase_a failed at " __FILE__ ":", 0), 0u) << msg;
  // Not ours to clear: its owner still finds it.
  EXPECT_EQ(cudaGetLastError(), pending);
  // Taken by its owner, it is gone, and the next check passes. Without a driver the runtime's initialization
  // failure is sticky: every check keeps failing, which is the truth.
  if (cf_test::no_cuda_device_reason().empty()) {
    EXPECT_NO_THROW(CF_CHECK_LAUNCH("neox_phase_b"));
  }
}
