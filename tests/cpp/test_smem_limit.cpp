// The once-per-(device, kernel) registry behind the kernels' shared-memory limit (smem_limit.hpp): one successful
// run per key, failures returned and retried, and concurrent callers of a key all waiting for the one run.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "../../cuda/include/clusterfusion/kernels/smem_limit.hpp"

namespace {

using clusterfusion::kernels::OncePerDevice;

const char kKernels[2] = {};  // two addresses standing for two kernels
const void* const kKernelA = &kKernels[0];
const void* const kKernelB = &kKernels[1];

TEST(OncePerDevice, RunsOncePerDeviceAndKernel) {
  OncePerDevice once;
  int runs = 0;
  auto set = [&] {
    ++runs;
    return cudaSuccess;
  };
  EXPECT_EQ(once.run(0, kKernelA, set), cudaSuccess);
  EXPECT_EQ(once.run(0, kKernelA, set), cudaSuccess);
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(once.run(1, kKernelA, set), cudaSuccess);
  EXPECT_EQ(once.run(0, kKernelB, set), cudaSuccess);
  EXPECT_EQ(runs, 3);
  EXPECT_EQ(once.run(1, kKernelA, set), cudaSuccess);
  EXPECT_EQ(once.run(0, kKernelB, set), cudaSuccess);
  EXPECT_EQ(runs, 3);
}

TEST(OncePerDevice, FailureIsReturnedAndTriedAgain) {
  OncePerDevice once;
  int runs = 0;
  auto fail_first = [&] { return ++runs == 1 ? cudaErrorInvalidValue : cudaSuccess; };
  EXPECT_EQ(once.run(0, kKernelA, fail_first), cudaErrorInvalidValue);
  EXPECT_EQ(once.run(0, kKernelA, fail_first), cudaSuccess);
  EXPECT_EQ(once.run(0, kKernelA, fail_first), cudaSuccess);
  EXPECT_EQ(runs, 2);
}

// No caller returns before the limit is set: a launch after run() never sees the old limit.
TEST(OncePerDevice, ConcurrentCallersReturnOnlyOnceItHasRun) {
  OncePerDevice once;
  std::atomic<int> runs{0};
  std::atomic<bool> set_done{false};
  std::atomic<int> early{0};
  auto slow_set = [&] {
    ++runs;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    set_done = true;
    return cudaSuccess;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      if (once.run(0, kKernelA, slow_set) != cudaSuccess || !set_done) ++early;
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(early, 0);
}

}  // namespace
