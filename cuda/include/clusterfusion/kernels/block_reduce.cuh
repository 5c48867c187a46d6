// Deterministic block-wide reductions: warp butterflies, then a fixed-order pass over the warps' results.
#pragma once

namespace clusterfusion::kernels {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

#ifndef CF_UNROLLED_SUMS
#define CF_UNROLLED_SUMS 1
#endif

// `scratch` holds one float per warp. Every thread returns the same value. Contains two __syncthreads. The warps'
// results are combined in warp order by a loop unrolled over the most warps a block can have, so that their loads
// issue together instead of one shared-memory round trip per warp (bench/NOTES.md v59).
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  v = kMax ? warp_max(v) : warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  if constexpr (CF_UNROLLED_SUMS) {
#pragma unroll
    for (int w = 1; w < 32; ++w) {
      if (w < warps) r = kMax ? fmaxf(r, scratch[w]) : r + scratch[w];
    }
  } else {
    for (int w = 1; w < warps; ++w) r = kMax ? fmaxf(r, scratch[w]) : r + scratch[w];
  }
  __syncthreads();
  return r;
}
__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce<false>(v, scratch); }
__device__ __forceinline__ float block_max(float v, float* scratch) { return block_reduce<true>(v, scratch); }

}  // namespace clusterfusion::kernels
