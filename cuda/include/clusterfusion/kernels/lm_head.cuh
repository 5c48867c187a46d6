// After the last layer: the final norm (LayerNorm or RMSNorm), then logits = W_lm_head y, a memory-streaming GEMV
// over the [vocab, hidden] float16 LM head. Every block recomputes the norm (hidden is a few KB) into shared memory;
// then each warp owns whole vocab rows (strided over the grid), its lanes stream 16-byte vectors of the row
// with an evict-first hint (the head is read once per token and is larger than L2) and accumulate in float in
// a fixed order. Each block also leaves the argmax of its rows, so greedy selection reads a few hundred
// partials instead of the logits. No atomics: results do not depend on the grid size.
#pragma once
#include <climits>
#include <cstdint>

#include <cuda_fp16.h>

#include "clusterfusion/kernels/argmax.cuh"
#include "clusterfusion/kernels/block_reduce.cuh"
#include "clusterfusion/kernels/dependent_launch.cuh"
#include "clusterfusion/kernels/dot.cuh"
#include "clusterfusion/kernels/norm.cuh"

namespace clusterfusion::kernels {

constexpr int kLmHeadThreads = 512;
constexpr int kLmHeadUnroll = 4;  // 16-byte loads in flight per lane: 16 warps x 2 KB per block

// y = norm(x; w, b) into shared memory.
template <NormKind kNorm>
__device__ __forceinline__ void final_norm(const __half* __restrict__ x, const __half* __restrict__ w,
                                           const __half* __restrict__ b, int hidden, float eps, float* y,
                                           float* scratch) {
  const NormStats s = norm_stats<kNorm>(
      [&](auto&& f) {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) f(__half2float(x[i]));
      },
      hidden, eps, scratch);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float bias = kNorm == NormKind::LayerNorm ? __half2float(b[i]) : 0.f;
    y[i] = normalized<kNorm>(__half2float(x[i]), s, __half2float(w[i]), bias);
  }
  __syncthreads();
}

// One row's dot product with y, by one warp: lane l takes the 16-byte vectors l, l + 32, ...; the lanes' sums
// are combined by a butterfly, so every lane returns the same value.
__device__ __forceinline__ float row_dot(const uint4* __restrict__ row, const float* y, int vecs) {
  const int lane = threadIdx.x % 32;
  float acc = 0.f;
  for (int base = 0; base < vecs; base += 32 * kLmHeadUnroll) {
    uint4 w[kLmHeadUnroll];
#pragma unroll
    for (int u = 0; u < kLmHeadUnroll; ++u) {
      const int v = base + u * 32 + lane;
      if (v < vecs) w[u] = __ldcs(row + v);
    }
#pragma unroll
    for (int u = 0; u < kLmHeadUnroll; ++u) {
      const int v = base + u * 32 + lane;
      if (v < vecs) acc = dot8(w[u], y + v * 8, acc);
    }
  }
  return warp_sum(acc);
}

// logits[r] = W[r] . norm(x) for every vocab row r; partials[blockIdx.x] = the argmax of this block's rows.
// Dynamic shared memory: hidden floats. hidden must be a multiple of 8 and the grid at most vocab / warps blocks.
// Launched to overlap the last layer, its blocks take SMs as the layer's leave and wait for it before reading x.
template <NormKind kNorm>
__global__ void __launch_bounds__(kLmHeadThreads)
    final_norm_lm_head_kernel(const __half* __restrict__ x, const __half* __restrict__ norm_w,
                              const __half* __restrict__ norm_b, float eps, const __half* __restrict__ lm_head,
                              int vocab, int hidden, float* __restrict__ logits, ArgmaxPartial* __restrict__ partials) {
  extern __shared__ float y[];  // [hidden]
  __shared__ float scratch[kLmHeadThreads / 32];
  __shared__ ArgmaxPartial best_scratch[kLmHeadThreads / 32];
  allow_next_kernel_to_start();
  wait_for_previous_kernel();
  final_norm<kNorm>(x, norm_w, norm_b, hidden, eps, y, scratch);

  constexpr int kWarps = kLmHeadThreads / 32;
  const int vecs = hidden / 8;
  ArgmaxPartial best{-INFINITY, INT_MAX};
  for (int row = blockIdx.x * kWarps + threadIdx.x / 32; row < vocab; row += gridDim.x * kWarps) {
    const float logit = row_dot(reinterpret_cast<const uint4*>(lm_head + static_cast<std::size_t>(row) * hidden), y,
                                vecs);
    if (threadIdx.x % 32 == 0) logits[row] = logit;
    if (argmax_beats(comparable(logit), row, best.value, best.index)) best = {comparable(logit), row};
  }
  best = block_argmax(best, best_scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = best;
}

}  // namespace clusterfusion::kernels
