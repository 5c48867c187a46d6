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
#include "clusterfusion/kernels/dependent_launch.cuh"
#include "clusterfusion/kernels/grid_barrier.cuh"
#include "clusterfusion/kernels/layernorm.cuh"
#include "clusterfusion/kernels/neox_layer_params.hpp"
#include "clusterfusion/kernels/weight_stream.cuh"

namespace clusterfusion::kernels {

// Splits `units` work units over `parts` as evenly as possible; part i gets [begin(i), begin(i+1)).
__device__ __forceinline__ int split_begin(int units, int parts, int i) { return units * i / parts; }

enum JobListId { kQkvJobs = 0, kUpJobs = 1, kOutJobs = 2 };

// The position of the new token: a launch parameter, or device memory written by an earlier kernel of the step
// (read through L2: it changes between launches).
__device__ __forceinline__ int step_position(const NeoXLayerParams& p) {
  return p.device_position != nullptr ? __ldcg(p.device_position) : p.position;
}

// Where a block is in the layer, stamped into p.timeline when set (see bench/cpp/layer_timing.cu).
enum TimelineMark {
  kMarkEntry, kMarkListed, kMarkPrimed, kMarkInput, kMarkNormed, kMarkClusterReady, kMarkQkv, kMarkUp, kMarkHeadReady, kMarkAttention, kMarkPhaseB, kMarkEnd
};
__device__ __forceinline__ void stamp(const NeoXLayerParams& p, TimelineMark mark) {
  if (p.timeline == nullptr || threadIdx.x != 0) return;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  p.timeline[blockIdx.x * kTimelineMarks + mark] = t;
}

// The grid is `clusters` clusters of `ranks` blocks; cluster c < heads serves attention head c. Every block
// streams about the same number of phase-A bytes: head blocks carry their q|k|v rows, their KV-cache chunk and
// a fixed cost for the attention's latency-bound steps, and W_up rows fill each block up to the average (at
// least a sixteenth of it, which bounds any block's job count).
struct PhaseAShare {
  int qkv_units;   // kBoxRows-row units of the head's q|k|v rows, and where they start
  int qkv_first;
  int up_first;    // kBoxRows-row units of W_up
  int up_units;
};

// Attention's rotary, reductions and cluster barriers run after the block's weight stream (timeline,
// bench/NOTES.md); they are charged as this many bytes of streaming. Tunable at build time.
#ifndef CF_ATTENTION_FIXED_KB
#define CF_ATTENTION_FIXED_KB 256
#endif
constexpr long long kAttentionFixedBytes = CF_ATTENTION_FIXED_KB << 10;

// Closed form: the blocks of a head cluster differ only by rank, the other blocks carry no head cost.
template <int kHeadDim>
__device__ __forceinline__ PhaseAShare phase_a_share(const NeoXLayerParams& p, int block) {
  const int ranks = cluster_size(), rank = cluster_rank(), cluster = block / ranks;
  const int head_units = 3 * kHeadDim / kBoxRows, up_units = p.ffn / kBoxRows, positions = step_position(p) + 1;
  const long long unit_bytes = 2LL * kBoxRows * p.hidden;
  auto qkv_units = [&](int r) { return split_begin(head_units, ranks, r + 1) - split_begin(head_units, ranks, r); };
  auto head_cost = [&](int r) {
    const int chunk = split_begin(positions, ranks, r + 1) - split_begin(positions, ranks, r);
    return qkv_units(r) * unit_bytes + chunk * (kHeadDim * 4LL) + kAttentionFixedBytes;  // K and V, float16
  };
  const long long total = p.heads * (head_units * unit_bytes + positions * (kHeadDim * 4LL)) +
                          p.heads * ranks * kAttentionFixedBytes + up_units * unit_bytes;
  const long long avg = total / gridDim.x;
  auto spare = [&](long long cost) { return max(avg / 16, avg - cost); };
  long long cluster_spare = 0, rank_spare = 0;  // of one head cluster; of its ranks before this block's
  for (int r = 0; r < ranks; ++r) {
    const long long s = spare(head_cost(r));
    cluster_spare += s;
    if (r < rank) rank_spare += s;
  }
  const long long all = p.heads * cluster_spare + (gridDim.x - p.heads * ranks) * avg;
  const bool head_block = cluster < p.heads;
  const long long before = head_block ? cluster * cluster_spare + rank_spare
                                      : p.heads * cluster_spare + (block - p.heads * ranks) * avg;
  const long long mine = head_block ? spare(head_cost(rank)) : avg;
  PhaseAShare share;
  share.qkv_units = head_block ? qkv_units(rank) : 0;
  share.qkv_first = cluster * head_units + split_begin(head_units, ranks, rank);
  share.up_first = int(up_units * before / all);
  share.up_units = int(up_units * (before + mine) / all) - share.up_first;
  return share;
}

// Thread 0 writes the job lists of this block: phase A's (qkv, up) and phase B's. Lists a kernel does not run
// get zero jobs.
template <int kHeadDim>
__device__ __forceinline__ void build_job_lists(const NeoXLayerParams& p, const SmemLayout& L, unsigned char* smem,
                                                bool phase_a, bool phase_b) {
  auto* lists = reinterpret_cast<JobList*>(smem + SmemLayout::kJobLists);
  if (threadIdx.x == 0) {
    const int blocks = gridDim.x, block = blockIdx.x;
    const PhaseAShare share = phase_a ? phase_a_share<kHeadDim>(p, block) : PhaseAShare{0, 0, 0, 0};
    const int k_boxes = p.hidden / kBoxCols;
    lists[kQkvJobs] = JobList{share.qkv_first * kBoxRows, share.qkv_units, 1, 0, 1,
                              {{&p.w_qkv, reinterpret_cast<float*>(smem + L.a1), k_boxes}, {}}, 0, k_boxes};
    lists[kUpJobs] = JobList{share.up_first * kBoxRows, share.up_units, 1, 0, 1,
                             {{&p.w_up, reinterpret_cast<float*>(smem + L.a2), k_boxes}, {}}, 0, k_boxes};
    // Phase B: a cluster owns output rows; its ranks split their K (W_o's boxes, then W_down's) and rank 0
    // adds the ranks' partial sums (phase_b), so rows are shared out in clusters, not blocks: finer balance.
    const int ranks = cluster_size(), rank = cluster_rank(), cluster = block / ranks;
    const int out_units = p.hidden / kBoxRows, out_boxes = k_boxes + p.ffn / kBoxCols;
    const int o0 = split_begin(out_units, blocks / ranks, cluster), o1 = split_begin(out_units, blocks / ranks, cluster + 1);
    lists[kOutJobs] = JobList{o0 * kBoxRows, phase_b ? o1 - o0 : 0, 1, 0, 2,
                              {{&p.w_o, reinterpret_cast<float*>(smem + L.o), k_boxes},
                               {&p.w_down, reinterpret_cast<float*>(smem + L.g), p.ffn / kBoxCols}},
                              split_begin(out_boxes, ranks, rank), split_begin(out_boxes, ranks, rank + 1)};
    finish_job_lists(lists, kMaxJobLists);
  }
  __syncthreads();
}

// An epilogue constant (bias, residual) of the row a thread handles first in a list, loaded at kernel start:
// read later, behind the saturated weight stream, each such load would cost microseconds.
struct RowConstant {
  int row = -1;
  float value = 0.f;

  template <class Load>
  __device__ void prefetch(const JobList& list, Load&& load) {
    if (threadIdx.x < list.jobs * kBoxRows) {
      row = list.row0 + threadIdx.x;
      value = load(row);
    }
  }
  // Adds the row's term that only exists once the previous kernel is done (the layer input).
  template <class Load>
  __device__ void add_later(Load&& load) {
    if (row >= 0) value += load(row);
  }
  template <class Load>
  __device__ float get(int r, Load&& load) const {
    return r == row ? value : load(r);
  }
};

// What a block reads before its weight stream starts: the LayerNorm inputs and its epilogue constants.
struct BlockInputs {
  LayerNormInputs ln;
  RowConstant qkv_bias, up_bias, out_constant;  // b_qkv, b_up, and x + b_o + b_down
};

__device__ __forceinline__ auto qkv_bias_of(const NeoXLayerParams& p) {
  return [&p](int row) { return __half2float(p.b_qkv[row]); };
}
__device__ __forceinline__ auto up_bias_of(const NeoXLayerParams& p) {
  return [&p](int row) { return __half2float(p.b_up[row]); };
}
__device__ __forceinline__ auto out_biases_of(const NeoXLayerParams& p) {
  return [&p](int row) { return __half2float(p.b_o[row]) + __half2float(p.b_down[row]); };
}
__device__ __forceinline__ auto layer_input_of(const NeoXLayerParams& p) {
  return [&p](int row) { return __half2float(__ldcg(p.x + row)); };
}
__device__ __forceinline__ auto out_constant_of(const NeoXLayerParams& p) {
  return [&p](int row) { return layer_input_of(p)(row) + out_biases_of(p)(row); };
}

// LN1(x) and LN2(x) into shared memory. Also arrives on the cluster barrier: this block has started, so the
// others may write its shared memory once they have all arrived (phase_a waits).
__device__ __forceinline__ void normalize(const NeoXLayerParams& p, const SmemLayout& L, unsigned char* smem,
                                          const BlockInputs& in) {
  cluster_arrive();
  layer_norm_pair(in.ln, p.hidden, p.eps, reinterpret_cast<float*>(smem + L.a1),
                  reinterpret_cast<float*>(smem + L.a2), reinterpret_cast<float*>(smem + SmemLayout::kScratch));
  stamp(p, kMarkNormed);
}

// This block's positions of its head's cache: [begin, end) of 0..position (the last one is the new token).
struct KvChunk {
  int begin, end;
  __device__ KvChunk(const NeoXLayerParams& p)
      : begin(split_begin(step_position(p) + 1, cluster_size(), cluster_rank())),
        end(split_begin(step_position(p) + 1, cluster_size(), cluster_rank() + 1)) {}
};

// Asks L2 for this block's cached keys and values at kernel start, so that attention, which runs after the
// block's weight stream, finds them there instead of paying DRAM latency behind the other blocks' streams.
template <int kHeadDim>
__device__ __forceinline__ void prefetch_kv_chunk(const NeoXLayerParams& p) {
  const int head = blockIdx.x / cluster_size();
  if (threadIdx.x != 0 || head >= p.heads) return;
  const KvChunk chunk(p);
  const int cached_end = min(chunk.end, step_position(p));  // the new token is not in the cache yet
  if (cached_end <= chunk.begin) return;
  const std::size_t offset = (std::size_t(head) * p.max_seq + chunk.begin) * kHeadDim;
  const uint32_t bytes = uint32_t(cached_end - chunk.begin) * kHeadDim * 2;
  bulk_prefetch_l2(p.k_cache + offset, bytes);
  bulk_prefetch_l2(p.v_cache + offset, bytes);
}

template <int kHeadDim>
__device__ __forceinline__ void phase_a(const NeoXLayerParams& p, const SmemLayout& L, unsigned char* smem,
                                        WarpStream& stream, const BlockInputs& in) {
  using Attention = DecodeAttention<kHeadDim>;
  float* qkv = reinterpret_cast<float*>(smem + L.qkv);
  float* scratch = reinterpret_cast<float*>(smem + SmemLayout::kScratch);
  const int ranks = cluster_size(), rank = cluster_rank(), head = blockIdx.x / ranks;

  cluster_wait();  // every block of the cluster has started (see normalize): DSMEM stores are safe
  stamp(p, kMarkClusterReady);

  // q|k|v rows of this head: every block of the cluster gets every row.
  stream.run(kQkvJobs, [&](int row, float sum) {
    const float value = sum + in.qkv_bias.get(row, qkv_bias_of(p));
    const float* local = qkv + (row - head * 3 * kHeadDim);
    for (int dst = 0; dst < ranks; ++dst) dsmem_store(local, dst, value);
  });
  stamp(p, kMarkQkv);
  cluster_arrive();

  stream.run(kUpJobs,
             [&](int row, float sum) { p.mlp_act[row] = gelu_erf(sum + in.up_bias.get(row, up_bias_of(p))); });
  stamp(p, kMarkUp);
  cluster_wait();  // the head's q|k|v is complete in every block
  stamp(p, kMarkHeadReady);
  if (head >= p.heads) return;  // a cluster with no head: its share of W_up was its whole phase A

  float* q = qkv;
  float* k = qkv + kHeadDim;
  float* v = qkv + 2 * kHeadDim;
  const int position = step_position(p);
  Attention::rotary(q, k, position, p.rotary_dims, p.rotary_base);
  const std::size_t head_offset = std::size_t(head) * p.max_seq * kHeadDim;
  if (rank == 0) {
    for (int e = threadIdx.x; e < kHeadDim; e += blockDim.x) {
      p.k_cache[head_offset + std::size_t(position) * kHeadDim + e] = __float2half_rn(k[e]);
      p.v_cache[head_offset + std::size_t(position) * kHeadDim + e] = __float2half_rn(v[e]);
    }
  }
  const KvChunk chunk(p);
  float* combine = reinterpret_cast<float*>(smem + L.combine);
  Attention::partial(q, k, v, p.k_cache + head_offset, p.v_cache + head_offset, position, chunk.begin, chunk.end,
                     reinterpret_cast<float*>(smem + L.scores), reinterpret_cast<float*>(smem + L.partials),
                     combine, scratch);
  cluster_sync();  // every rank's partials are on rank 0; no shared memory is touched remotely after this
  if (rank == 0) Attention::combine_partials(combine, ranks, p.attn + head * kHeadDim);
  stamp(p, kMarkAttention);
}

// Copies n floats (n a multiple of 4) that another block or kernel wrote (read through L2, .cg) into shared
// memory with kCopyBatch 16-byte loads per thread in flight: one round trip per batch, not per load. A block
// that starts late loads behind every other block's weight stream, where each round trip costs microseconds
// (bench/NOTES.md v15).
constexpr int kCopyBatch = 8;
__device__ __forceinline__ void copy_from_l2(float* dst, const float* src, int n) {
  const int vecs = n / 4;
  for (int base = 0; base < vecs; base += kCopyBatch * int(blockDim.x)) {
    float4 v[kCopyBatch];
#pragma unroll
    for (int u = 0; u < kCopyBatch; ++u) {
      const int i = base + u * int(blockDim.x) + int(threadIdx.x);
      if (i < vecs) v[u] = __ldcg(reinterpret_cast<const float4*>(src) + i);
    }
#pragma unroll
    for (int u = 0; u < kCopyBatch; ++u) {
      const int i = base + u * int(blockDim.x) + int(threadIdx.x);
      if (i < vecs) reinterpret_cast<float4*>(dst)[i] = v[u];
    }
  }
}

// Phase B after its inputs (attn, mlp_act) are complete in global memory.
__device__ __forceinline__ void phase_b(const NeoXLayerParams& p, const SmemLayout& L, unsigned char* smem,
                                        WarpStream& stream, const BlockInputs& in) {
  float* o = reinterpret_cast<float*>(smem + L.o);
  float* g = reinterpret_cast<float*>(smem + L.g);
  float* rank_partials = reinterpret_cast<float*>(smem + L.rank_partials);
  // Written by other blocks of this launch (cooperative) or the previous one.
  copy_from_l2(o, p.attn, p.hidden);
  copy_from_l2(g, p.mlp_act, p.ffn);
  __syncthreads();
  stamp(p, kMarkPhaseB);
  const JobList& rows_of = reinterpret_cast<const JobList*>(smem + SmemLayout::kJobLists)[kOutJobs];
  const int rank = cluster_rank(), ranks = cluster_size(), row0 = rows_of.row0, rows = rows_of.jobs * kBoxRows;
  stream.run(kOutJobs, [&](int row, float sum) {
    dsmem_store(rank_partials + rank * L.rows_per_cluster + (row - row0), 0, sum);
  });
  cluster_sync();  // every rank's partial sums are on rank 0
  if (rank != 0) return;
  for (int t = threadIdx.x; t < rows; t += blockDim.x) {
    float sum = 0.f;
    for (int r = 0; r < ranks; ++r) sum += rank_partials[r * L.rows_per_cluster + t];
    p.out[row0 + t] = __float2half_rn(sum + in.out_constant.get(row0 + t, out_constant_of(p)));
  }
}

// One kernel body for the three launches: phase A alone, phase B alone, or both with a grid barrier between.
//
// Launched to overlap the previous kernel (p.overlap_previous, programmatic dependent launch), a block does
// everything that needs only the weights first, fills its weight ring, and only then waits for that kernel and
// reads the layer input. Otherwise the ring is filled after LayerNorm: its ~17 MB over the grid would queue
// the LayerNorm loads behind them (bench/NOTES.md v7).
template <int kHeadDim, bool kPhaseA, bool kPhaseB>
__global__ void __launch_bounds__(kThreads, 1) neox_layer_kernel(const __grid_constant__ NeoXLayerParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  // A device position past the cache (only possible through device_position: the host checks its own) makes
  // every block return before touching anything, the same decision in every block.
  if (const int position = step_position(p); position < 0 || position >= p.max_seq) return;
  stamp(p, kMarkEntry);
  // The next kernel is scheduled once every block of ours has passed here, so never ahead of one of ours; its
  // blocks then take the SMs ours leave.
  allow_next_kernel_to_start();
  const SmemLayout layout(p.hidden, p.ffn, kHeadDim, p.max_seq, cluster_size(), gridDim.x / cluster_size());
  // The phase B kernel alone: announce that this block has started before any rank stores into rank 0.
  if constexpr (!kPhaseA) cluster_arrive();
  BlockInputs in;
  if constexpr (kPhaseA) {
    in.ln.load_params(p.ln1_w, p.ln1_b, p.ln2_w, p.ln2_b, p.hidden);
    prefetch_kv_chunk<kHeadDim>(p);
  }
  build_job_lists<kHeadDim>(p, layout, smem, kPhaseA, kPhaseB);
  stamp(p, kMarkListed);
  const auto* lists = reinterpret_cast<const JobList*>(smem + SmemLayout::kJobLists);
  in.qkv_bias.prefetch(lists[kQkvJobs], qkv_bias_of(p));
  in.up_bias.prefetch(lists[kUpJobs], up_bias_of(p));
  in.out_constant.prefetch(lists[kOutJobs], out_biases_of(p));
  WarpStream stream(smem, lists, kMaxJobLists);
  const bool prime_early = p.overlap_previous || !kPhaseA;
  if (prime_early) {
    stream.prime();
    stamp(p, kMarkPrimed);
  }
  wait_for_previous_kernel();
  if constexpr (kPhaseA) in.ln.load_input(p.x, p.hidden);
  in.out_constant.add_later(layer_input_of(p));
  stamp(p, kMarkInput);
  if constexpr (kPhaseA) normalize(p, layout, smem, in);
  if (!prime_early) {
    stream.prime();
    stamp(p, kMarkPrimed);
  }
  if constexpr (kPhaseA) phase_a<kHeadDim>(p, layout, smem, stream, in);
  // In the cooperative kernel phase B's first weight boxes are already in flight across this barrier.
  if constexpr (kPhaseA && kPhaseB) grid_barrier(p.grid_barrier);
  if constexpr (!kPhaseA) {
    cluster_wait();
    stamp(p, kMarkClusterReady);
  }
  if constexpr (kPhaseB) phase_b(p, layout, smem, stream, in);
  stamp(p, kMarkEnd);
}

}  // namespace clusterfusion::kernels
