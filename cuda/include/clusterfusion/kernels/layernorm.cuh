// LayerNorm of the layer input, twice (parallel residual: LN1 feeds attention, LN2 the MLP, both of x).
// Statistics in float with a centred second pass; every block recomputes them (hidden is a few KB).
#pragma once
#include <cuda_fp16.h>

#include "clusterfusion/kernels/block_reduce.cuh"

namespace clusterfusion::kernels {

__device__ __forceinline__ void layer_norm_pair(const __half* __restrict__ x, const __half* __restrict__ w1,
                                                const __half* __restrict__ b1, const __half* __restrict__ w2,
                                                const __half* __restrict__ b2, int hidden, float eps, float* a1,
                                                float* a2, float* scratch) {
  float sum = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = __half2float(x[i]);
    a1[i] = v;
    sum += v;
  }
  const float mean = block_sum(sum, scratch) / hidden;
  float sq = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float c = a1[i] - mean;
    sq += c * c;
  }
  const float rstd = 1.0f / sqrtf(block_sum(sq, scratch) / hidden + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float n = (a1[i] - mean) * rstd;
    a1[i] = fmaf(n, __half2float(w1[i]), __half2float(b1[i]));
    a2[i] = fmaf(n, __half2float(w2[i]), __half2float(b2[i]));
  }
  __syncthreads();
}

// Exact GELU, z * Phi(z), as GPT-NeoX's "gelu".
__device__ __forceinline__ float gelu_erf(float z) { return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f)); }

}  // namespace clusterfusion::kernels
