// Thread-block cluster primitives: rank, distributed shared memory stores (plain and counted), the started handshake.
#pragma once
#include <cstdint>

#include "clusterfusion/kernels/tma.cuh"

namespace clusterfusion::kernels {

__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_size() {
  uint32_t n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
  return n;
}

// Stores `value` at the same shared-memory offset as `local` inside block `rank` of this cluster.
__device__ __forceinline__ void dsmem_store(const float* local, uint32_t rank, float value) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
  asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(remote), "f"(value) : "memory");
}

// Stores `value` at the same shared-memory offset as `local` inside block `rank` of this cluster and counts its 4
// bytes on that block's mbarrier at `bar`'s offset (st.async): the receiver learns of it by waiting on its barrier
// (MBarrier::wait_cluster), so the store needs no release on a cluster barrier (and no GPU-scope fence). st.async is
// undefined in a cluster of one block: there the store is plain, and the receiver's wait is a __syncthreads.
__device__ __forceinline__ void dsmem_store_counted(const float* local, uint32_t rank, float value, MBarrier* bar) {
  if (cluster_size() == 1) return dsmem_store(local, rank, value);
  uint32_t remote, remote_bar;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote_bar) : "r"(smem_addr(&bar->word)), "r"(rank));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(remote),
               "r"(__float_as_uint(value)), "r"(remote_bar)
               : "memory");
}

// The cluster barrier, only as the handshake that says "this block has started" (its shared memory and its exchange
// barriers may be written): the arrive publishes nothing, so it needs no GPU-scope fence on the way in (bench/NOTES.md
// v64); the exchange barriers' initialisation is published by fence_barrier_init, and the data itself travels as
// counted stores.
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
// Returns once every thread of the cluster has arrived.
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

}  // namespace clusterfusion::kernels
