// TensorView helpers and check_tensor's messages: one wrong property at a time.
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/tensor.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

// check_tensor never dereferences, so any address with the right alignment stands in for device memory.
void* fake_address(std::uintptr_t offset = 0) {
  return reinterpret_cast<void*>(std::uintptr_t{0x7f0000000000} + 4096 * cf_test::uniform_int(1, 1000) + offset);
}

std::string check_message(const cf::TensorView& v, std::initializer_list<int64_t> shape,
                          cf::DType dtype = cf::DType::Float16, std::size_t align = 16) {
  return cf_test::thrown_message<std::invalid_argument>([&] { cf::check_tensor(v, "w", shape, dtype, align); });
}

}  // namespace

TEST(DType, NamesAndSizes) {
  EXPECT_STREQ(cf::dtype_name(cf::DType::Float16), "float16");
  EXPECT_STREQ(cf::dtype_name(cf::DType::BFloat16), "bfloat16");
  EXPECT_STREQ(cf::dtype_name(cf::DType::Float32), "float32");
  EXPECT_STREQ(cf::dtype_name(cf::DType::Int32), "int32");
  EXPECT_STREQ(cf::dtype_name(cf::DType::Int64), "int64");
  EXPECT_STREQ(cf::dtype_name(cf::DType::Other), "other");
  EXPECT_EQ(cf::dtype_size(cf::DType::Float16), 2u);
  EXPECT_EQ(cf::dtype_size(cf::DType::BFloat16), 2u);
  EXPECT_EQ(cf::dtype_size(cf::DType::Float32), 4u);
  EXPECT_EQ(cf::dtype_size(cf::DType::Int32), 4u);
  EXPECT_EQ(cf::dtype_size(cf::DType::Int64), 8u);
  EXPECT_THROW(cf::dtype_size(cf::DType::Other), std::invalid_argument);
}

TEST(TensorView, NumelAndShapeString) {
  const int64_t a = cf_test::uniform_int(1, 5000), b = cf_test::uniform_int(1, 5000), c = cf_test::uniform_int(1, 9);
  const cf::TensorView v(fake_address(), {a, b, c}, cf::DType::Float16);
  EXPECT_EQ(v.numel(), a * b * c);
  EXPECT_EQ(v.shape_str(), "[" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + "]");
  const cf::TensorView scalar(fake_address(), {}, cf::DType::Float32);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.shape_str(), "[]");
  const cf::TensorView empty(fake_address(), {a, 0}, cf::DType::Float32);
  EXPECT_EQ(empty.numel(), 0);
}

TEST(CheckTensor, AcceptsAMatchingView) {
  const int64_t rows = cf_test::uniform_int(1, 4096), cols = 8 * cf_test::uniform_int(1, 512);
  EXPECT_NO_THROW(cf::check_tensor(cf::TensorView(fake_address(), {rows, cols}, cf::DType::Float16), "w",
                                   {rows, cols}));
  EXPECT_NO_THROW(cf::check_tensor(cf::TensorView(fake_address(4), {rows}, cf::DType::Float32), "w", {rows},
                                   cf::DType::Float32, 4));
}

TEST(CheckTensor, NullPointer) {
  EXPECT_EQ(check_message(cf::TensorView(nullptr, {4, 8}, cf::DType::Float16), {4, 8}),
            "w: expected a non-null device pointer, got nullptr");
}

TEST(CheckTensor, WrongShape) {
  const int64_t rows = cf_test::uniform_int(2, 4096), cols = cf_test::uniform_int(1, 4096);
  const std::string r = std::to_string(rows), c = std::to_string(cols);
  EXPECT_EQ(check_message(cf::TensorView(fake_address(), {cols, rows}, cf::DType::Float16), {rows, cols}),
            "w: expected shape [" + r + ", " + c + "], got shape [" + c + ", " + r + "]");
  EXPECT_EQ(check_message(cf::TensorView(fake_address(), {rows * cols}, cf::DType::Float16), {rows, cols}),
            "w: expected shape [" + r + ", " + c + "], got shape [" + std::to_string(rows * cols) + "]");
}

TEST(CheckTensor, NegativeExtentEvenWhereTheExpectedShapeHasIt) {
  // A caller that takes an extent from the view itself (load_prefix's sequence length) expects what it got.
  const int64_t seq = -cf_test::uniform_int(1, 4096);
  EXPECT_EQ(check_message(cf::TensorView(fake_address(), {1, 8, seq, 64}, cf::DType::Float16), {1, 8, seq, 64}),
            "w: expected non-negative extents, got shape [1, 8, " + std::to_string(seq) + ", 64]");
}

TEST(CheckTensor, WrongDtype) {
  EXPECT_EQ(check_message(cf::TensorView(fake_address(), {16}, cf::DType::Float32), {16}),
            "w: expected dtype float16, got dtype float32");
  EXPECT_EQ(check_message(cf::TensorView(fake_address(), {16}, cf::DType::Float16), {16}, cf::DType::Int32),
            "w: expected dtype int32, got dtype float16");
}

TEST(CheckTensor, Misaligned) {
  const int offset = 2 * cf_test::uniform_int(1, 7);
  const std::string msg = check_message(cf::TensorView(fake_address(offset), {16}, cf::DType::Float16), {16});
  EXPECT_EQ(msg.rfind("w: expected a 16-byte aligned pointer, got address 0x", 0), 0u) << msg;
  EXPECT_NE(msg.find("(offset " + std::to_string(offset) + " past a 16-byte boundary)"), std::string::npos) << msg;
  // A stricter alignment asked by the caller is enforced too.
  const std::string strict = check_message(cf::TensorView(fake_address(128), {16}, cf::DType::Float16), {16},
                                           cf::DType::Float16, 256);
  EXPECT_NE(strict.find("expected a 256-byte aligned pointer"), std::string::npos) << strict;
}

TEST(CheckTensor, ReportsNullBeforeShape) {
  EXPECT_EQ(check_message(cf::TensorView(nullptr, {3}, cf::DType::Float32), {4, 8}),
            "w: expected a non-null device pointer, got nullptr");
}
