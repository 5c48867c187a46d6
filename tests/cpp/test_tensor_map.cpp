// make_matrix_tensor_map rejects bad arguments by name before it asks the driver for anything.
#include <cstdint>
#include <string>

#include <gtest/gtest.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/tensor_map.hpp"
#include "cuda_device.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

const void* aligned_address(std::uintptr_t offset = 0) {
  return reinterpret_cast<const void*>(std::uintptr_t{0x7f0000000000} + 256 * cf_test::uniform_int(1, 1000) +
                                       offset);
}

std::string message(const void* data, int64_t rows, int64_t cols, int box_rows, int box_cols) {
  return cf_test::thrown_message<std::invalid_argument>(
      [&] { cf::make_matrix_tensor_map(data, rows, cols, box_rows, box_cols); });
}

}  // namespace

TEST(TensorMapArguments, Data) {
  EXPECT_EQ(message(nullptr, 64, 64, 16, 64),
            "make_matrix_tensor_map: data: expected a non-null device pointer, got nullptr");
  const std::string msg = message(aligned_address(8), 64, 64, 16, 64);
  EXPECT_EQ(msg.rfind("make_matrix_tensor_map: data: expected a 16-byte aligned address, got 0x", 0), 0u) << msg;
}

TEST(TensorMapArguments, RowsAndCols) {
  EXPECT_EQ(message(aligned_address(), 0, 64, 16, 64), "make_matrix_tensor_map: rows: expected 1..2^32, got 0");
  EXPECT_EQ(message(aligned_address(), 64, -8, 16, 64), "make_matrix_tensor_map: cols: expected 1..2^32, got -8");
  EXPECT_EQ(message(aligned_address(), (int64_t{1} << 32) + 1, 64, 16, 64),
            "make_matrix_tensor_map: rows: expected 1..2^32, got 4294967297");
  const int64_t odd_cols = 8 * cf_test::uniform_int(1, 1000) + cf_test::uniform_int(1, 7);
  EXPECT_EQ(message(aligned_address(), 64, odd_cols, 16, 8),
            "make_matrix_tensor_map: cols: expected cols * 2 bytes (the row stride) a multiple of 16, got " +
                std::to_string(odd_cols));
}

TEST(TensorMapArguments, BoxDims) {
  EXPECT_EQ(message(aligned_address(), 512, 512, 0, 64), "make_matrix_tensor_map: box_rows: expected 1..256, got 0");
  EXPECT_EQ(message(aligned_address(), 512, 512, 257, 64),
            "make_matrix_tensor_map: box_rows: expected 1..256, got 257");
  EXPECT_EQ(message(aligned_address(), 512, 512, 16, 264),
            "make_matrix_tensor_map: box_cols: expected 1..256, got 264");
  const int box_cols = 8 * cf_test::uniform_int(0, 31) + cf_test::uniform_int(1, 7);
  EXPECT_EQ(message(aligned_address(), 512, 512, 16, box_cols),
            "make_matrix_tensor_map: box_cols: expected box_cols * 2 bytes a multiple of 16, got " +
                std::to_string(box_cols));
}

TEST(TensorMapArguments, ValidArgumentsReachTheDriver) {
  if (cf_test::no_cuda_device_reason().empty()) GTEST_SKIP() << "a CUDA device is present (the GPU tests encode maps)";
  // With no driver the encode function cannot be looked up: a CudaError, not an argument error.
  EXPECT_THROW(cf::make_matrix_tensor_map(aligned_address(), 2560, 2560, 64, 128), cf::CudaError);
}
