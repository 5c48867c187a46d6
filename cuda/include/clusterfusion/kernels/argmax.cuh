// Deterministic argmax: the largest value wins, ties go to the lowest index, NaN never wins (it counts as
// -inf, so a row of NaN still yields a valid index). The result does not depend on how the work was split.
#pragma once
#include <climits>
#include <cmath>

#include "clusterfusion/kernels/argmax_partial.hpp"

namespace clusterfusion::kernels {

__device__ __forceinline__ float comparable(float v) { return v == v ? v : -INFINITY; }

// Whether (v, i) beats (best_v, best_i); the empty candidate is (-inf, INT_MAX).
__device__ __forceinline__ bool argmax_beats(float v, int i, float best_v, int best_i) {
  return v > best_v || (v == best_v && i < best_i);
}

__device__ __forceinline__ ArgmaxPartial argmax_combine(ArgmaxPartial a, ArgmaxPartial b) {
  return argmax_beats(b.value, b.index, a.value, a.index) ? b : a;
}

__device__ __forceinline__ ArgmaxPartial warp_argmax(ArgmaxPartial p) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const ArgmaxPartial other{__shfl_xor_sync(0xffffffffu, p.value, o), __shfl_xor_sync(0xffffffffu, p.index, o)};
    p = argmax_combine(p, other);
  }
  return p;
}

// `scratch` holds one partial per warp. Every thread returns the block's result. Contains two __syncthreads.
__device__ __forceinline__ ArgmaxPartial block_argmax(ArgmaxPartial p, ArgmaxPartial* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  p = warp_argmax(p);
  if (lane == 0) scratch[warp] = p;
  __syncthreads();
  ArgmaxPartial r = scratch[0];
  for (int w = 1; w < warps; ++w) r = argmax_combine(r, scratch[w]);
  __syncthreads();
  return r;
}

}  // namespace clusterfusion::kernels
