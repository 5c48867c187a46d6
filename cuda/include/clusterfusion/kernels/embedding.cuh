// The input of layer 0: one row of the embedding table, chosen by a token that lives on the device (written by
// the previous step's sampler or by the host), so a captured graph needs no host input.
#pragma once
#include <cstdint>

#include <cuda_fp16.h>

#include "clusterfusion/kernels/dependent_launch.cuh"

namespace clusterfusion::kernels {

// out = table[tokens[*position]], hidden / 8 16-byte vectors. Layer 0's blocks may start at once: the embedding
// takes a few SMs for a few round trips, and theirs plan and prime on the rest meanwhile.
__global__ void embedding_kernel(const __half* __restrict__ table, const int* __restrict__ tokens,
                                 const int* __restrict__ position, __half* __restrict__ out, int hidden) {
  allow_next_kernel_to_start();
  const int token = tokens[*position];
  const uint4* row = reinterpret_cast<const uint4*>(table + static_cast<std::size_t>(token) * hidden);
  uint4* dst = reinterpret_cast<uint4*>(out);
  for (int v = blockIdx.x * blockDim.x + threadIdx.x; v < hidden / 8; v += gridDim.x * blockDim.x) dst[v] = row[v];
}

// tokens[*position] = token: a token from the host, placed where the next step's embedding reads it.
__global__ void store_token_kernel(int* tokens, const int* position, int token) { tokens[*position] = token; }

__global__ void store_int_kernel(int* dst, int value) { *dst = value; }

}  // namespace clusterfusion::kernels
