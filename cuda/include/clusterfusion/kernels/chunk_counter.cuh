// Readiness of a vector in 256-column chunks between consecutive kernels (bench/NOTES.md v77): a producer block adds
// the number of values it has written to each chunk's counter (release at GPU scope, after a __syncthreads that orders
// its block's writes before it); a consumer waits until a chunk's count is complete (acquire). Every counter goes back
// to 0 within the consuming launch, so none holds a count that could wrap.
#pragma once

namespace clusterfusion::kernels {

__device__ __forceinline__ void add_release(unsigned* counter, unsigned n) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(counter), "r"(n) : "memory");
}

// Polls with a pause between tries (CF_POLL_PAUSE_NS, 0: none), so that waiting warps stay out of the memory's queues.
#ifndef CF_POLL_PAUSE_NS
#define CF_POLL_PAUSE_NS 0
#endif
__device__ __forceinline__ void wait_count(const unsigned* counter, unsigned complete) {
  unsigned seen;
  for (;;) {
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
    if (seen == complete) return;
    if constexpr (CF_POLL_PAUSE_NS > 0) __nanosleep(CF_POLL_PAUSE_NS);
  }
}

// Returns the count before this arrival; acq_rel: the arrival follows the caller's reads, and the last arriver sees
// every earlier arrival's.
__device__ __forceinline__ unsigned arrive_acq_rel(unsigned* counter) {
  unsigned before;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(before) : "l"(counter) : "memory");
  return before;
}

}  // namespace clusterfusion::kernels
