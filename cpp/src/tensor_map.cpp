#include "clusterfusion/tensor_map.hpp"

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include <cudaTypedefs.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"

namespace clusterfusion {

namespace {

// Limits of cuTensorMapEncodeTiled (CUDA driver API reference).
constexpr int64_t kMaxGlobalDim = int64_t{1} << 32;
constexpr int64_t kMaxGlobalStride = int64_t{1} << 40;
constexpr int kMaxBoxDim = 256;
constexpr int64_t kStrideAlign = 16;

template <typename T>
[[noreturn]] void fail(const char* fn, const char* arg, const std::string& expected, const T& got) {
  std::ostringstream msg;
  msg << fn << ": " << arg << ": expected " << expected << ", got " << got;
  throw std::invalid_argument(msg.str());
}

// A box may overhang the matrix: TMA fills the part outside with zeros.
void check_box(const char* fn, const char* arg, int box) {
  if (box < 1 || box > kMaxBoxDim) fail(fn, arg, "1.." + std::to_string(kMaxBoxDim), box);
}

void validate(const char* fn, const void* data, int64_t rows, int64_t cols, int box_rows, int box_cols) {
  const int64_t elem = sizeof(__half);
  if (data == nullptr) fail(fn, "data", "a non-null device pointer", "nullptr");
  const auto address = reinterpret_cast<std::uintptr_t>(data);
  if (address % kStrideAlign != 0) fail(fn, "data", "a 16-byte aligned address", data);
  if (rows < 1 || rows > kMaxGlobalDim) fail(fn, "rows", "1..2^32", rows);
  if (cols < 1 || cols > kMaxGlobalDim) fail(fn, "cols", "1..2^32", cols);
  if ((cols * elem) % kStrideAlign != 0) fail(fn, "cols", "cols * 2 bytes (the row stride) a multiple of 16", cols);
  if (cols * elem >= kMaxGlobalStride) fail(fn, "cols", "cols * 2 bytes (the row stride) below 2^40", cols);
  check_box(fn, "box_rows", box_rows);
  check_box(fn, "box_cols", box_cols);
  if ((box_cols * elem) % kStrideAlign != 0) fail(fn, "box_cols", "box_cols * 2 bytes a multiple of 16", box_cols);
}

PFN_cuTensorMapEncodeTiled_v12000 load_encode_tiled() {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  CF_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
    throw CudaError("cudaGetDriverEntryPointByVersion(\"cuTensorMapEncodeTiled\")", __FILE__, __LINE__,
                    "the CUDA driver has no cuTensorMapEncodeTiled (query result " +
                        std::to_string(static_cast<int>(found)) + "; needs a CUDA 12+ driver)");
  }
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
}

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  // Looked up once; a failed lookup throws and the next call tries again.
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = load_encode_tiled();
  return fn;
}

// Dimension 0 is the innermost (contiguous) one; its stride is implicit.
CUtensorMap encode(cuuint32_t rank, const void* data, const cuuint64_t* dims, const cuuint64_t* strides,
                   const cuuint32_t* box) {
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  CUtensorMap map{};
  CF_CU_CHECK(encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, rank, const_cast<void*>(data), dims, strides,
                             box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
  return map;
}

}  // namespace

CUtensorMap make_matrix_tensor_map(const void* data, int64_t rows, int64_t cols, int box_rows, int box_cols) {
  validate("make_matrix_tensor_map", data, rows, cols, box_rows, box_cols);
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * sizeof(__half)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows)};
  return encode(2, data, dims, strides, box);
}

CUtensorMap make_column_slices_tensor_map(const void* data, int64_t rows, int64_t slices, int slice_cols,
                                          int box_rows) {
  constexpr const char* fn = "make_column_slices_tensor_map";
  if (slices < 1 || slices > kMaxGlobalDim) fail(fn, "slices", "1..2^32", slices);
  check_box(fn, "slice_cols", slice_cols);
  if ((slice_cols * sizeof(__half)) % kStrideAlign != 0)
    fail(fn, "slice_cols", "slice_cols * 2 bytes a multiple of 16", slice_cols);
  validate(fn, data, rows, slices * slice_cols, box_rows, slice_cols);
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(slice_cols), static_cast<cuuint64_t>(slices),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(slice_cols) * sizeof(__half),
                                 static_cast<cuuint64_t>(slices * slice_cols) * sizeof(__half)};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(slice_cols), 1, static_cast<cuuint32_t>(box_rows)};
  return encode(3, data, dims, strides, box);
}

}  // namespace clusterfusion
