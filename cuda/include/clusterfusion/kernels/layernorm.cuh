// LayerNorm of the layer input, twice (parallel residual: LN1 feeds attention, LN2 the MLP, both of x).
// Statistics in float with a centred second pass; every block recomputes them (hidden is a few KB).
#pragma once
#include <cuda_fp16.h>

#include "clusterfusion/kernels/block_reduce.cuh"
#include "clusterfusion/kernels/neox_layer_params.hpp"

namespace clusterfusion::kernels {

// One thread's share of the LayerNorm inputs (the layer input and both norms' weights and biases), loaded
// into registers at kernel start: issued before the weight stream saturates memory, their latency stays short.
// The norms' parameters and the input load separately: the input may come from the previous kernel.
struct LayerNormInputs {
  uint4 x[kLnVecs], w1[kLnVecs], b1[kLnVecs], w2[kLnVecs], b2[kLnVecs];

  __device__ void load_params(const __half* w1_, const __half* b1_, const __half* w2_, const __half* b2_,
                              int hidden) {
#pragma unroll
    for (int i = 0; i < kLnVecs; ++i) {
      const int v = threadIdx.x + i * blockDim.x;
      if (v < hidden / 8) {
        w1[i] = reinterpret_cast<const uint4*>(w1_)[v];
        b1[i] = reinterpret_cast<const uint4*>(b1_)[v];
        w2[i] = reinterpret_cast<const uint4*>(w2_)[v];
        b2[i] = reinterpret_cast<const uint4*>(b2_)[v];
      }
    }
  }
  // Through L2 (.cg): the input was just written by another kernel.
  __device__ void load_input(const __half* x_, int hidden) {
#pragma unroll
    for (int i = 0; i < kLnVecs; ++i) {
      const int v = threadIdx.x + i * blockDim.x;
      if (v < hidden / 8) x[i] = __ldcg(reinterpret_cast<const uint4*>(x_) + v);
    }
  }
};

__device__ __forceinline__ float half_at(const uint4& v, int e) {
  return __half2float(reinterpret_cast<const __half*>(&v)[e]);
}

// a1 = LN1(x), a2 = LN2(x) into shared memory.
__device__ __forceinline__ void layer_norm_pair(const LayerNormInputs& in, int hidden, float eps, float* a1,
                                                float* a2, float* scratch) {
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kLnVecs; ++i) {
    if (threadIdx.x + i * blockDim.x < hidden / 8) {
#pragma unroll
      for (int e = 0; e < 8; ++e) sum += half_at(in.x[i], e);
    }
  }
  const float mean = block_sum(sum, scratch) / hidden;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < kLnVecs; ++i) {
    if (threadIdx.x + i * blockDim.x < hidden / 8) {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float c = half_at(in.x[i], e) - mean;
        sq += c * c;
      }
    }
  }
  const float rstd = 1.0f / sqrtf(block_sum(sq, scratch) / hidden + eps);
#pragma unroll
  for (int i = 0; i < kLnVecs; ++i) {
    const int v = threadIdx.x + i * blockDim.x;
    if (v < hidden / 8) {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float n = (half_at(in.x[i], e) - mean) * rstd;
        a1[v * 8 + e] = fmaf(n, half_at(in.w1[i], e), half_at(in.b1[i], e));
        a2[v * 8 + e] = fmaf(n, half_at(in.w2[i], e), half_at(in.b2[i], e));
      }
    }
  }
  __syncthreads();
}

// Exact GELU, z * Phi(z), as GPT-NeoX's "gelu".
__device__ __forceinline__ float gelu_erf(float z) { return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f)); }

}  // namespace clusterfusion::kernels
