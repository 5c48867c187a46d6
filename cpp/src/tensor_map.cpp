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
[[noreturn]] void fail(const char* arg, const std::string& expected, const T& got) {
  std::ostringstream msg;
  msg << "make_matrix_tensor_map: " << arg << ": expected " << expected << ", got " << got;
  throw std::invalid_argument(msg.str());
}

// A box may overhang the matrix: TMA fills the part outside with zeros.
void check_box(const char* arg, int box) {
  if (box < 1 || box > kMaxBoxDim) fail(arg, "1.." + std::to_string(kMaxBoxDim), box);
}

void validate(const void* data, int64_t rows, int64_t cols, int box_rows, int box_cols) {
  const int64_t elem = sizeof(__half);
  if (data == nullptr) fail("data", "a non-null device pointer", "nullptr");
  const auto address = reinterpret_cast<std::uintptr_t>(data);
  if (address % kStrideAlign != 0) fail("data", "a 16-byte aligned address", data);
  if (rows < 1 || rows > kMaxGlobalDim) fail("rows", "1..2^32", rows);
  if (cols < 1 || cols > kMaxGlobalDim) fail("cols", "1..2^32", cols);
  if ((cols * elem) % kStrideAlign != 0) fail("cols", "cols * 2 bytes (the row stride) a multiple of 16", cols);
  if (cols * elem >= kMaxGlobalStride) fail("cols", "cols * 2 bytes (the row stride) below 2^40", cols);
  check_box("box_rows", box_rows);
  check_box("box_cols", box_cols);
  if ((box_cols * elem) % kStrideAlign != 0) fail("box_cols", "box_cols * 2 bytes a multiple of 16", box_cols);
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

}  // namespace

CUtensorMap make_matrix_tensor_map(const void* data, int64_t rows, int64_t cols, int box_rows, int box_cols) {
  validate(data, rows, cols, box_rows, box_cols);
  // Dimension 0 is the innermost (contiguous) one; the stride of dimension 0 is implicit.
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * sizeof(__half)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  CUtensorMap map{};
  CF_CU_CHECK(encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, const_cast<void*>(data), dims, strides, box,
                             elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
  return map;
}

}  // namespace clusterfusion
