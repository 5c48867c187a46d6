// A grid-wide barrier for a cooperative launch, on one 32-bit word that keeps no count between barriers (the
// scheme of cooperative_groups' grid sync). Block 0 adds 2^31 - (blocks - 1), every other block adds 1: the sum
// stays below 2^31 until the last block arrives, so the top bit flips exactly then, the low 31 bits are back to
// 0, and the word is 0 or 2^31 after every barrier. No number of launches can wrap it into a hang (a counter that
// only grew did, after 2^32 arrivals), and launches of any grid size may share it. The word starts at 0 (or 2^31).
#pragma once

namespace clusterfusion::kernels {

constexpr unsigned kGridBarrierFlip = 0x80000000u;

__device__ __forceinline__ void grid_barrier(unsigned* word) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned blocks = gridDim.x * gridDim.y * gridDim.z;
    const bool block0 = blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0;
    const unsigned add = block0 ? kGridBarrierFlip - (blocks - 1) : 1u;
    // acq_rel: publishes this block's writes (ordered before by __syncthreads) and chains the arrivals.
    unsigned before;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;" : "=r"(before) : "l"(word), "r"(add) : "memory");
    // Seen flipped is this barrier's flip: the next barrier's needs this block's arrival.
    unsigned seen;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(word) : "memory");
    } while (((seen ^ before) & kGridBarrierFlip) == 0);
  }
  __syncthreads();
}

}  // namespace clusterfusion::kernels
