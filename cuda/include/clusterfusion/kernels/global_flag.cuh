// A readiness flag in global memory between blocks of one launch that are resident together: the producer's block
// writes its data, then one thread raises the flag (release at GPU scope, after a __syncthreads that orders the
// block's writes before it); a consumer's thread waits for it (acquire) and a __syncthreads hands the data to the
// consumer's block. The flag goes back to 0 within the launch (its last reader clears it), so it holds no count
// that could wrap, and a launch that returns early raises none.
#pragma once

namespace clusterfusion::kernels {

__device__ __forceinline__ void raise_flag(unsigned* flag) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flag), "r"(1u) : "memory");
}

__device__ __forceinline__ void wait_flag(const unsigned* flag) {
  unsigned seen;
  do {
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(flag) : "memory");
  } while (seen == 0);
}

// By the flag's last reader, once no other reader can still be waiting for it: the next launch finds it 0.
__device__ __forceinline__ void clear_flag(unsigned* flag) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(flag), "r"(0u) : "memory");
}

}  // namespace clusterfusion::kernels
