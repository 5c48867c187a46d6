// The fused GPT-NeoX decoder layer: phase A (one cluster per attention head) and phase B (output-stationary
// rows of the hidden state), as device functions shared by the split and the cooperative kernels.
//
// Phase A, block (head h, cluster rank r):
//   LN1(x), LN2(x) -> its share of head h's q|k|v rows, broadcast to every block of the cluster (DSMEM)
//   -> its share of GELU(W_up LN2(x) + b_up) rows -> rotary, cache append (rank 0)
//   -> attention over its chunk of positions -> partials combined on rank 0 -> attn[h*d .. h*d+d).
// Phase B, every block: out = x + W_o attn + b_o + W_down act + b_down for its rows of the hidden state.
#pragma once
#include <cuda_fp16.h>

#include "clusterfusion/kernels/cluster.cuh"
#include "clusterfusion/kernels/decode_attention.cuh"
#include "clusterfusion/kernels/grid_barrier.cuh"
#include "clusterfusion/kernels/layernorm.cuh"
#include "clusterfusion/kernels/neox_layer_params.hpp"
#include "clusterfusion/kernels/weight_stream.cuh"

namespace clusterfusion::kernels {

// Splits `units` work units over `parts` as evenly as possible; part i gets [begin(i), begin(i+1)).
__device__ __forceinline__ int split_begin(int units, int parts, int i) {
  return static_cast<int>((static_cast<long long>(units) * i) / parts);
}

enum JobListId { kQkvJobs = 0, kUpJobs = 1, kOutJobs = 2 };

// Thread 0 writes the job lists of this block: phase A's (qkv, up) and, for the cooperative kernel or the
// phase B kernel, phase B's. Lists a kernel does not run get zero jobs.
__device__ __forceinline__ void build_job_lists(const NeoXLayerParams& p, const SmemLayout& L, unsigned char* smem,
                                                int head_dim, bool phase_a, bool phase_b) {
  auto* lists = reinterpret_cast<JobList*>(smem + SmemLayout::kJobLists);
  if (threadIdx.x == 0) {
    const int blocks = gridDim.x, block = blockIdx.x;
    const int ranks = cluster_size(), rank = cluster_rank(), head = block / ranks;
    const int head_units = 3 * head_dim / kBoxRows;
    const int q0 = split_begin(head_units, ranks, rank), q1 = split_begin(head_units, ranks, rank + 1);
    lists[kQkvJobs] = JobList{head * 3 * head_dim + q0 * kBoxRows, phase_a ? q1 - q0 : 0, 0, 1,
                              {{&p.w_qkv, reinterpret_cast<float*>(smem + L.a1), p.hidden / kBoxCols}, {}}};
    const int up_units = p.ffn / kBoxRows;
    const int u0 = split_begin(up_units, blocks, block), u1 = split_begin(up_units, blocks, block + 1);
    lists[kUpJobs] = JobList{u0 * kBoxRows, phase_a ? u1 - u0 : 0, 0, 1,
                             {{&p.w_up, reinterpret_cast<float*>(smem + L.a2), p.hidden / kBoxCols}, {}}};
    const int out_units = p.hidden / kBoxRows;
    const int o0 = split_begin(out_units, blocks, block), o1 = split_begin(out_units, blocks, block + 1);
    lists[kOutJobs] = JobList{o0 * kBoxRows, phase_b ? o1 - o0 : 0, 0, 2,
                              {{&p.w_o, reinterpret_cast<float*>(smem + L.o), p.hidden / kBoxCols},
                               {&p.w_down, reinterpret_cast<float*>(smem + L.g), p.ffn / kBoxCols}}};
    chain_job_lists(lists, kMaxJobLists);
  }
  __syncthreads();
}

template <int kHeadDim>
__device__ __forceinline__ void phase_a(const NeoXLayerParams& p, const SmemLayout& L, unsigned char* smem,
                                        WarpStream& stream) {
  using Attention = DecodeAttention<kHeadDim>;
  float* a1 = reinterpret_cast<float*>(smem + L.a1);
  float* a2 = reinterpret_cast<float*>(smem + L.a2);
  float* qkv = reinterpret_cast<float*>(smem + L.qkv);
  float* scratch = reinterpret_cast<float*>(smem + SmemLayout::kScratch);
  const int ranks = cluster_size(), rank = cluster_rank(), head = blockIdx.x / ranks;
  const int lane = threadIdx.x % 32;

  cluster_arrive();  // this block has started: others may write its shared memory once all have
  layer_norm_pair(p.x, p.ln1_w, p.ln1_b, p.ln2_w, p.ln2_b, p.hidden, p.eps, a1, a2, scratch);
  cluster_wait();

  // q|k|v rows of this head: every block of the cluster gets every row.
  stream.run(kQkvJobs, [&](int row, float sum) {
    if (lane < kBoxRows) {
      const int r = row + lane;
      const float value = sum + __half2float(p.b_qkv[r]);
      const float* local = qkv + (r - head * 3 * kHeadDim);
      for (int dst = 0; dst < ranks; ++dst) dsmem_store(local, dst, value);
    }
  });
  cluster_arrive();

  stream.run(kUpJobs, [&](int row, float sum) {
    if (lane < kBoxRows) p.mlp_act[row + lane] = gelu_erf(sum + __half2float(p.b_up[row + lane]));
  });
  cluster_wait();  // the head's q|k|v is complete in every block

  float* q = qkv;
  float* k = qkv + kHeadDim;
  float* v = qkv + 2 * kHeadDim;
  const int position = p.position;
  Attention::rotary(q, k, position, p.rotary_dims, p.rotary_base);
  const std::size_t head_offset = std::size_t(head) * p.max_seq * kHeadDim;
  if (rank == 0) {
    for (int e = threadIdx.x; e < kHeadDim; e += blockDim.x) {
      p.k_cache[head_offset + std::size_t(position) * kHeadDim + e] = __float2half_rn(k[e]);
      p.v_cache[head_offset + std::size_t(position) * kHeadDim + e] = __float2half_rn(v[e]);
    }
  }
  const int positions = position + 1;
  float* combine = reinterpret_cast<float*>(smem + L.combine);
  Attention::partial(q, k, v, p.k_cache + head_offset, p.v_cache + head_offset, position,
                     split_begin(positions, ranks, rank), split_begin(positions, ranks, rank + 1),
                     reinterpret_cast<float*>(smem + L.scores), reinterpret_cast<float*>(smem + L.partials),
                     combine, scratch);
  cluster_sync();  // every rank's partials are on rank 0; no shared memory is touched remotely after this
  if (rank == 0) Attention::combine_partials(combine, ranks, p.attn + head * kHeadDim);
}

// Phase B after its inputs (attn, mlp_act) are complete in global memory.
__device__ __forceinline__ void phase_b(const NeoXLayerParams& p, const SmemLayout& L, unsigned char* smem,
                                        WarpStream& stream) {
  float* o = reinterpret_cast<float*>(smem + L.o);
  float* g = reinterpret_cast<float*>(smem + L.g);
  // Written by other blocks of this launch (cooperative) or the previous one: read through L2 (.cg).
  for (int i = threadIdx.x; i < p.hidden / 4; i += blockDim.x)
    reinterpret_cast<float4*>(o)[i] = __ldcg(reinterpret_cast<const float4*>(p.attn) + i);
  for (int i = threadIdx.x; i < p.ffn / 4; i += blockDim.x)
    reinterpret_cast<float4*>(g)[i] = __ldcg(reinterpret_cast<const float4*>(p.mlp_act) + i);
  __syncthreads();
  const int lane = threadIdx.x % 32;
  stream.run(kOutJobs, [&](int row, float sum) {
    if (lane < kBoxRows) {
      const int r = row + lane;
      const float bias = __half2float(p.b_o[r]) + __half2float(p.b_down[r]);
      p.out[r] = __float2half_rn(__half2float(p.x[r]) + (sum + bias));
    }
  });
}

// One kernel body for the three launches: phase A alone, phase B alone, or both with a grid barrier between.
template <int kHeadDim, bool kPhaseA, bool kPhaseB>
__global__ void __launch_bounds__(kThreads, 1) neox_layer_kernel(const __grid_constant__ NeoXLayerParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const SmemLayout layout(p.hidden, p.ffn, kHeadDim, p.max_seq, cluster_size());
  build_job_lists(p, layout, smem, kHeadDim, kPhaseA, kPhaseB);
  WarpStream stream(smem, reinterpret_cast<const JobList*>(smem + SmemLayout::kJobLists), kMaxJobLists);
  stream.prime();
  if constexpr (kPhaseA) phase_a<kHeadDim>(p, layout, smem, stream);
  // In the cooperative kernel phase B's first weight boxes are already in flight across this barrier.
  if constexpr (kPhaseA && kPhaseB) grid_barrier(p.grid_barrier);
  if constexpr (kPhaseB) phase_b(p, layout, smem, stream);
}

}  // namespace clusterfusion::kernels
