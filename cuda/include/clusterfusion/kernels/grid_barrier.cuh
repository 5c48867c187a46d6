// A grid-wide barrier for a cooperative launch: one integer counter, never reset. Every launch that uses a
// counter has the same number of blocks, so the counter is a multiple of that number between launches.
#pragma once

namespace clusterfusion::kernels {

__device__ __forceinline__ void grid_barrier(unsigned* counter) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned blocks = gridDim.x * gridDim.y * gridDim.z;
    __threadfence();
    const unsigned arrived = atomicAdd(counter, 1u);
    const unsigned target = (arrived / blocks + 1) * blocks;
    unsigned seen;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
    } while (static_cast<int>(seen - target) < 0);
    __threadfence();
  }
  __syncthreads();
}

}  // namespace clusterfusion::kernels
