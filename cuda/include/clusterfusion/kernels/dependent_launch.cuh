// Programmatic dependent launch (sm_90): a kernel launched with programmatic stream serialization may start
// while the kernel before it in the stream is still running. It does the work that needs none of that kernel's
// results first, then waits for it. Both instructions are no-ops in a kernel launched the ordinary way.
#pragma once

namespace clusterfusion::kernels {

// Lets the next kernel in the stream be scheduled once every block of this one has called this (or exited).
// Its blocks still take an SM only when one of ours leaves it.
__device__ __forceinline__ void allow_next_kernel_to_start() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// Waits until the previous kernel in the stream has completed and its memory writes are visible to this one.
__device__ __forceinline__ void wait_for_previous_kernel() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

}  // namespace clusterfusion::kernels
