#include "clusterfusion/tensor.hpp"

#include <cstdint>
#include <sstream>
#include <stdexcept>

namespace clusterfusion {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Float32: return "float32";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::Other: break;
  }
  return "other";
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float16:
    case DType::BFloat16: return 2;
    case DType::Float32:
    case DType::Int32: return 4;
    case DType::Int64: return 8;
    case DType::Other: break;
  }
  throw std::invalid_argument("dtype_size: DType::Other has no known element size");
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

std::string format_shape(const int64_t* dims, std::size_t rank) {
  std::string s = "[";
  for (std::size_t i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

[[noreturn]] void fail(const char* name, const std::string& expected, const std::string& got) {
  throw std::invalid_argument(std::string(name) + ": expected " + expected + ", got " + got);
}

}  // namespace

std::string TensorView::shape_str() const { return format_shape(shape.data(), shape.size()); }

void check_tensor(const TensorView& view, const char* name, std::initializer_list<int64_t> shape, DType dtype,
                  std::size_t align) {
  if (view.data == nullptr) fail(name, "a non-null device pointer", "nullptr");
  // Checked on its own: a caller may take an extent from the view itself (load_prefix's sequence length).
  for (const int64_t d : view.shape) {
    if (d < 0) fail(name, "non-negative extents", "shape " + view.shape_str());
  }
  const std::vector<int64_t> want(shape);
  if (view.shape != want) {
    fail(name, "shape " + format_shape(want.data(), want.size()), "shape " + view.shape_str());
  }
  if (view.dtype != dtype) {
    fail(name, std::string("dtype ") + dtype_name(dtype), std::string("dtype ") + dtype_name(view.dtype));
  }
  const auto address = reinterpret_cast<std::uintptr_t>(view.data);
  if (align > 1 && address % align != 0) {
    std::ostringstream got;
    got << "address " << view.data << " (offset " << address % align << " past a " << align << "-byte boundary)";
    fail(name, "a " + std::to_string(align) + "-byte aligned pointer", got.str());
  }
}

}  // namespace clusterfusion
