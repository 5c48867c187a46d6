// What the fused GPT-NeoX layer kernels receive (one __grid_constant__ struct) and how they lay out their
// shared memory. Plain C++: shared by the host launcher and the device code.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda.h>
#include <cuda_fp16.h>

namespace clusterfusion::kernels {

// Tuning knobs, overridable at build time (-DCF_BOX_ROWS=8 ...) to compare variants in one GPU session.
#ifndef CF_BOX_ROWS
#define CF_BOX_ROWS 8
#endif
#ifndef CF_WARPS
#define CF_WARPS 16
#endif
#ifndef CF_STAGES
#define CF_STAGES 2
#endif

// A TMA box is kBoxRows weight rows by 256 columns: one box row is one 512-byte run of a weight row.
constexpr int kBoxRows = CF_BOX_ROWS;
constexpr int kBoxCols = 256;
constexpr int kBoxBytes = kBoxRows * kBoxCols * 2;
constexpr int kWarps = CF_WARPS;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = CF_STAGES;  // boxes in flight per warp: 16 warps x 2 x 4 KB = 128 KB per SM
constexpr int kLnVecs = 2;  // 16-byte vectors of the layer input per thread: hidden <= kLnVecs * 8 * kThreads
constexpr int kMaxItems = 512;     // work items (job chunks) of one job list in one block
constexpr int kTimelineMarks = 12;

struct NeoXLayerParams {
  CUtensorMap w_qkv;   // [3*hidden, hidden]
  CUtensorMap w_o;     // [hidden, hidden]
  CUtensorMap w_up;    // [ffn, hidden]
  CUtensorMap w_down;  // [hidden, ffn]
  const __half *x, *ln1_w, *ln1_b, *ln2_w, *ln2_b, *b_qkv, *b_o, *b_up, *b_down;
  __half* k_cache;  // this layer: [heads][max_seq][head_dim]
  __half* v_cache;
  __half* out;
  float* attn;     // [hidden]
  float* mlp_act;  // [ffn]
  unsigned* grid_barrier;
  unsigned long long* timeline;  // optional: kTimelineMarks global-timer stamps per block (kernel tuning)
  int position;
  const int* device_position;  // when set, the position is read from here (one CUDA graph for every step)
  int overlap_previous;        // launched to start while the previous kernel runs (see neox_layer_kernel)
  int hidden, heads, ffn, max_seq, rotary_dims;
  float rotary_base, eps;
};

__host__ __device__ constexpr std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// Shared memory of one block. The weight ring and its barriers come first and are common to both phases, so
// the cooperative kernel keeps streaming across the grid barrier; the phase-specific vectors follow.
struct SmemLayout {
  static constexpr std::size_t kRingBytes = std::size_t(kWarps) * kStages * kBoxBytes;
  static constexpr std::size_t kBarriers = kRingBytes;
  static constexpr std::size_t kJobLists = kBarriers + align_up(kWarps * kStages * 8, 128);
  static constexpr std::size_t kScratch = kJobLists + 512;     // 32 floats for block reductions
  static constexpr std::size_t kItemPartials = kScratch + 128;  // 4 row sums per work item
  static constexpr std::size_t kVectors = kItemPartials + kMaxItems * 4 * 4;  // phase-specific vectors

  // Phase A: LN1(x), LN2(x), the head's q|k|v, scores of this block's positions, reduction partials, and
  // the cluster's softmax partials (m, l, o) gathered on rank 0.
  std::size_t a1, a2, qkv, scores, partials, combine, phase_a_end;
  // Phase B: the attention output, the MLP activation, and on rank 0 every rank's partial sums of the
  // cluster's output rows.
  std::size_t o, g, rank_partials, phase_b_end;
  int rows_per_cluster;  // the most output rows any cluster owns

  __host__ __device__ SmemLayout(int hidden, int ffn, int head_dim, int max_seq, int cluster, int clusters) {
    const int chunk = (max_seq + cluster - 1) / cluster;
    a1 = kVectors;
    a2 = a1 + align_up(hidden * 4, 16);
    qkv = a2 + align_up(hidden * 4, 16);
    scores = qkv + align_up(3 * head_dim * 4, 16);
    partials = scores + align_up(chunk * 4, 16);
    combine = partials + align_up(kThreads * 8 * 4, 16);
    phase_a_end = combine + align_up(cluster * (head_dim + 2) * 4, 16);
    o = kVectors;
    g = o + align_up(hidden * 4, 16);
    rank_partials = g + align_up(ffn * 4, 16);
    rows_per_cluster = (hidden / kBoxRows + clusters - 1) / clusters * kBoxRows;
    phase_b_end = rank_partials + align_up(std::size_t(cluster) * rows_per_cluster * 4, 16);
  }
};

}  // namespace clusterfusion::kernels
