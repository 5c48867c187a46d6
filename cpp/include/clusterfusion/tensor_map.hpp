// TMA tensor maps for float16 row-major matrices, encoded through the driver entry point that the runtime
// hands out (cudaGetDriverEntryPoint), so the library never links libcuda at build time.
#pragma once
#include <cstdint>

#include <cuda.h>

namespace clusterfusion {

// A map over a row-major [rows, cols] float16 matrix at `data` (16-byte aligned, cols*2 a multiple of 16),
// read in boxes of [box_rows, box_cols] elements with no swizzle. Throws CudaError / std::invalid_argument.
CUtensorMap make_matrix_tensor_map(const void* data, int64_t rows, int64_t cols, int box_rows, int box_cols);

}  // namespace clusterfusion
