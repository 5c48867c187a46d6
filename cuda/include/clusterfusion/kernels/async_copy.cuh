// Asynchronous 16-byte copies from global to shared memory (cp.async, sm_80+): a thread issues them, goes on, and
// waits for its own copies before it reads them; through L2 only (.cg), as data another kernel wrote.
#pragma once
#include "clusterfusion/kernels/tma.cuh"

namespace clusterfusion::kernels {

__device__ __forceinline__ void async_copy_16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

// Closes this thread's copies issued so far into one group.
__device__ __forceinline__ void async_copy_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until every copy this thread issued has landed; they are then visible to this thread.
__device__ __forceinline__ void async_copy_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

}  // namespace clusterfusion::kernels
