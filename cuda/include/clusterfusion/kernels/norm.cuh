// The norms of a decoder layer's input: LayerNorm (mean and centred variance, weight and bias) and RMSNorm
// (root mean square, weight only), statistics in float with fixed-order block reductions. Every block
// recomputes them (hidden is a few KB). Also the MLP activations.
#pragma once
#include <cuda_fp16.h>

#include "clusterfusion/kernels/block_reduce.cuh"
#include "clusterfusion/kernels/layer_params.hpp"
#include "clusterfusion/kernels/model_traits.hpp"

namespace clusterfusion::kernels {

__device__ __forceinline__ float half_at(const uint4& v, int e) {
  return __half2float(reinterpret_cast<const __half*>(&v)[e]);
}

struct NormStats {
  float mean, rstd;  // y = (x - mean) * rstd * w (+ b)
};

// Statistics of a vector the block visits through for_each(f), which calls f(value) for each of this thread's
// elements. RMSNorm has no mean.
template <NormKind kKind, class ForEach>
__device__ __forceinline__ NormStats norm_stats(ForEach&& for_each, int n, float eps, float* scratch) {
  float mean = 0.f;
  if constexpr (kKind == NormKind::LayerNorm) {
    float sum = 0.f;
    for_each([&](float v) { sum += v; });
    mean = block_sum(sum, scratch) / n;
  }
  float sq = 0.f;
  for_each([&](float v) {
    const float c = v - mean;
    sq += c * c;
  });
  return {mean, 1.0f / sqrtf(block_sum(sq, scratch) / n + eps)};
}

template <NormKind kKind>
__device__ __forceinline__ float normalized(float v, NormStats s, float w, float b) {
  const float n = (v - s.mean) * s.rstd;
  if constexpr (kKind == NormKind::LayerNorm) return fmaf(n, w, b);
  return n * w;
}

// One thread's share of a phase's norm inputs (the input vector and both norms' weights and biases), held
// in registers: loaded at kernel start, before the weight stream saturates memory, their latency stays short.
// The parameters and the input load separately: the input may come from the previous kernel or phase.
template <NormKind kKind>
struct NormInputs {
  static constexpr bool kBias = kKind == NormKind::LayerNorm;
  uint4 x[kLnVecs], w[2][kLnVecs], b[2][kLnVecs];

  __device__ void load_params(int which, const __half* w_, const __half* b_, int hidden) {
#pragma unroll
    for (int i = 0; i < kLnVecs; ++i) {
      const int v = threadIdx.x + i * blockDim.x;
      if (v < hidden / 8) {
        w[which][i] = reinterpret_cast<const uint4*>(w_)[v];
        if constexpr (kBias) b[which][i] = reinterpret_cast<const uint4*>(b_)[v];
      }
    }
  }
  // Through L2 (.cg): the input was just written by another kernel or block.
  __device__ void load_input(const __half* x_, int hidden) {
#pragma unroll
    for (int i = 0; i < kLnVecs; ++i) {
      const int v = threadIdx.x + i * blockDim.x;
      if (v < hidden / 8) x[i] = __ldcg(reinterpret_cast<const uint4*>(x_) + v);
    }
  }

  // dst[0] = norm 0 of x when wanted[0], dst[1] = norm 1 of x when wanted[1] (shared memory).
  __device__ void normalize(int hidden, float eps, bool want0, float* dst0, bool want1, float* dst1,
                            float* scratch) const {
    const NormStats s = norm_stats<kKind>(
        [&](auto&& f) {
#pragma unroll
          for (int i = 0; i < kLnVecs; ++i) {
            if (threadIdx.x + i * blockDim.x < hidden / 8) {
#pragma unroll
              for (int e = 0; e < 8; ++e) f(half_at(x[i], e));
            }
          }
        },
        hidden, eps, scratch);
#pragma unroll
    for (int i = 0; i < kLnVecs; ++i) {
      const int v = threadIdx.x + i * blockDim.x;
      if (v < hidden / 8) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float value = half_at(x[i], e);
          if (want0)
            dst0[v * 8 + e] = normalized<kKind>(value, s, half_at(w[0][i], e), kBias ? half_at(b[0][i], e) : 0.f);
          if (want1)
            dst1[v * 8 + e] = normalized<kKind>(value, s, half_at(w[1][i], e), kBias ? half_at(b[1][i], e) : 0.f);
        }
      }
    }
    __syncthreads();
  }
};

// Exact GELU, z * Phi(z), as GPT-NeoX's "gelu".
__device__ __forceinline__ float gelu_erf(float z) { return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f)); }
// SiLU, z * sigmoid(z), Llama's "silu".
__device__ __forceinline__ float silu(float z) { return z / (1.0f + __expf(-z)); }

}  // namespace clusterfusion::kernels
