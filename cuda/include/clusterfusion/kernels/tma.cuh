// Shared-memory mbarriers and TMA bulk tensor loads (sm_90): the two halves of a weight-streaming ring.
#pragma once
#include <cstdint>

#include <cuda.h>

namespace clusterfusion::kernels {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One mbarrier: 8 bytes of shared memory that counts arrivals and TMA transaction bytes of one phase.
struct MBarrier {
  uint64_t word;

  __device__ __forceinline__ void init(uint32_t arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(&word)), "r"(arrivals) : "memory");
  }
  // Arrive once and announce `bytes` of TMA traffic that must land before the phase completes.
  __device__ __forceinline__ void arrive_expect_tx(uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(&word)), "r"(bytes)
                 : "memory");
  }
  // Spin until the phase with parity `phase` has completed.
  __device__ __forceinline__ void wait(uint32_t phase) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "wait_loop:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra wait_loop;\n"
        "}\n" ::"r"(smem_addr(&word)),
        "r"(phase)
        : "memory");
  }
  // As wait, acquiring at cluster scope: for bytes that other blocks of the cluster completed on this barrier
  // (st.async), whose completion releases at cluster scope.
  __device__ __forceinline__ void wait_cluster(uint32_t phase) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "wait_cluster_loop:\n"
        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra wait_cluster_loop;\n"
        "}\n" ::"r"(smem_addr(&word)),
        "r"(phase)
        : "memory");
  }
};

// Makes mbarrier initialisation visible to the async (TMA) proxy and to the rest of the cluster.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// An L2 policy for data read exactly once (weights): evict it first, keep the KV cache and activations.
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// Loads the box at element coordinates (col, row) of a 2D tensor map into shared memory at `dst`,
// completing `bytes` of transaction on `bar`.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, MBarrier* bar, int col, int row,
                                            uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(row), "r"(smem_addr(&bar->word)), "l"(policy)
      : "memory");
}

}  // namespace clusterfusion::kernels
