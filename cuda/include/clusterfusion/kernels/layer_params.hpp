// What the fused decoder-layer kernels receive (one __grid_constant__ struct), how they lay out their shared
// memory, and the launch plan. Plain C++: shared by the host launcher and the device code.
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
// Bench knob (bench/NOTES.md v81): two blocks per SM, the running launch's and the next one's, so that the next
// launch's blocks enter, plan and prime while the running one streams. Needs kThreads * registers <= half the file.
#ifndef CF_CORESIDENT
#define CF_CORESIDENT 0
#endif
constexpr int kBlocksPerSm = CF_CORESIDENT ? 2 : 1;
constexpr int kLnVecs = 2;  // 16-byte vectors of the layer input per thread: hidden <= kLnVecs * 8 * kThreads
// Cache rows in flight per thread in the attention (DecodeAttention's tile: kUnroll positions per thread): 9 puts
// a block's chunk at ctx 512 (257 positions) in one tile at head_dim 128 (32 positions side by side); the sums do
// not depend on it.
constexpr int kAttentionUnroll = 9;
// Floats per thread of the attention's partials buffer: a tile's score partials or the values' group sums (8).
constexpr int kAttentionPartials = kAttentionUnroll > 8 ? kAttentionUnroll : 8;
constexpr int kMaxItems = 256;     // work items (job chunks) of one job list in one block
constexpr int kMaxJobLists = 9;    // the lists of every phase of one launch (Llama cooperative: 3 + 2 + 2 + 2)
// sm_90's opt-in maximum of dynamic shared memory per block (227 KB, H100 and H200 alike).
constexpr std::size_t kMaxSmemPerBlock = 232448;
// proj_residual runs a rank's K boxes in up to this many passes (one job list each, kProjLists in
// model_traits.hpp), reloading its slice of the vector between them; a second pass only where one slice would not
// fit in kMaxSmemPerBlock (a cluster of one block at the largest shapes).
constexpr int kProjPasses = 2;
// The up rows of the blocks that carry no head are shared with a slope (bench/NOTES.md v49): in an overlapped launch a
// block takes the SM its predecessor frees, so the later indices start last. The first block gets (1 + r/200) of
// the average, the last (1 - r/200); past r = 100 the first could pass kMaxItems items. Tunable at build time.
#ifndef CF_UP_RAMP_PERCENT
#define CF_UP_RAMP_PERCENT 30
#endif
constexpr int kUpRampPercent = CF_UP_RAMP_PERCENT;
static_assert(kUpRampPercent >= 0 && kUpRampPercent <= 100, "kUpRampPercent: 0..100");

// a / b for 0 <= a < 2^53 and b > 0. The correctly rounded double quotient of two exact doubles is within
// q 2^-53 < 1/b of the real quotient q, never across an integer, so truncating it gives the integer quotient, at a
// fraction of a 64-bit integer division's latency (bench/NOTES.md v54: the job lists are a late block's critical path).
__host__ __device__ constexpr long long quotient(long long a, long long b) {
  return static_cast<long long>(static_cast<double>(a) / static_cast<double>(b));
}

// Part i's first unit when `units` are split over `parts` with shares falling linearly with i (kRamp above): the
// sum of the first i shares, units (i + r i (parts - i) / (200 (parts - 1))) / parts, rounded down. Exact while
// units (200 (parts - 1) i + r i (parts - i)) < 2^53 (quotient): the norm share's bytes (under 1e9) times under 4e6.
template <int kRamp, class T>
__host__ __device__ constexpr T ramp_begin(T units, int parts, int i) {
  if (kRamp == 0 || parts < 2) return units * i / parts;
  const long long d = 200LL * (parts - 1);
  return T(quotient(units * (d * i + (long long)kRamp * i * (parts - i)), d * parts));
}
// The most units any part gets from ramp_begin: part 0's share, rounded up.
template <int kRamp>
__host__ __device__ constexpr int ramp_most(int units, int parts) {
  if (kRamp == 0) return (units + parts - 1) / parts;
  return int((units * (200LL + kRamp) + 200LL * parts - 1) / (200LL * parts));
}

constexpr int kTimelineMarks = 17;
// Tuning only (bench/NOTES.md v40): with -DCF_BOX_STAMPS=N, each warp also stamps its first N weight boxes (issued,
// reached by the consumer, arrived), after the block's marks, and the block's SM id follows them.
#ifndef CF_BOX_STAMPS
#define CF_BOX_STAMPS 0
#endif
constexpr int kBoxStamps = CF_BOX_STAMPS;
constexpr int kTimelineStride = kTimelineMarks + (kBoxStamps > 0 ? kWarps * kBoxStamps * 3 + 1 : 0);  // per block

// The weight matrices a layer streams (TMA tensor maps). GPT-NeoX's fused q|k|v matrix takes kMapQ.
enum WeightMap { kMapQ, kMapK, kMapV, kMapO, kMapGate, kMapUp, kMapDown, kWeightMaps };

struct DecoderLayerParams {
  CUtensorMap maps[kWeightMaps];
  const __half* norm_weight[2];  // the attention norm, the MLP norm
  const __half* norm_bias[2];    // LayerNorm only
  const __half *qkv_bias, *o_bias, *up_bias, *down_bias;  // architectures with biases only
  const double* inv_freq;  // [rotary_dims / 2] rotary inverse frequencies
  const __half* x;  // [hidden] the layer input
  __half* h1;       // [hidden] x + attention (sequential residual)
  __half* out;      // [hidden] the layer output
  const __half* residual_add;  // optional [hidden]: added to proj_residual's residual (down_residual's attn_output)
  float* attn;      // [heads * head_dim] attention outputs before W_o
  float* act;       // [ffn] the MLP activation before W_down
  __half* k_cache;  // this layer: [kv_heads][max_seq][head_dim]
  __half* v_cache;
  unsigned* grid_barrier;
  unsigned long long* timeline;  // optional: kTimelineStride global-timer stamps per block (kernel tuning)
  // The launch's job lists where they do not depend on the position (lists_planned, model_traits.hpp): a PlannedList
  // per list per block, written by a launch of the same kernel with write_planned_lists set (which does nothing
  // else), read by each block at entry; nullptr: every block builds its own.
  void* planned_lists;
  int position;
  const int* device_position;  // when set, the position is read from here (one CUDA graph for every step)
  int overlap_previous;        // launched to start while the previous kernel runs (see decoder_layer_kernel)
  int hidden, heads, kv_heads, ffn, max_seq, rotary_dims;
  // A head's positions are cut into this many chunks, one softmax partial each, combined in chunk order, whatever
  // the cluster size of the launch: the split and cooperative launches give the same bits (LayerLaunchPlan).
  int attention_chunks;
  // The K chunks (JobList::chunks) of every q|k|v job, fixed with attention_chunks so that a row's sum is the same
  // whichever rank computes it; 0: each list picks its own (choose_chunks).
  int qkv_chunks;
  float eps;
  int write_planned_lists;
};

__host__ __device__ constexpr std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// Shared memory of one block. The weight ring and its barriers come first and are common to every phase, so
// the cooperative kernel keeps streaming across its grid barriers; the phase-specific vectors follow, each
// phase's from kVectors on.
struct SmemLayout {
  static constexpr std::size_t kRingBytes = std::size_t(kWarps) * kStages * kBoxBytes;
  static constexpr std::size_t kBarriers = kRingBytes;
  static constexpr std::size_t kJobLists = kBarriers + align_up(kWarps * kStages * 8, 128);
  static constexpr std::size_t kJobListBytes = 80;  // sizeof(JobList), checked where it is defined
  // A launch's three counted exchanges, in the job lists' padding (so that no offset moves): the head's q|k|v in every
  // block, the head's chunk partials on rank 0, proj_residual's partial sums on rank 0 (LayerBlock::Exchange).
  static constexpr std::size_t kExchangeBarriers = kJobLists + kMaxJobLists * kJobListBytes;
  static constexpr std::size_t kScratch = kJobLists + align_up(kMaxJobLists * kJobListBytes, 128);  // reductions
  static_assert(kExchangeBarriers % 8 == 0 && kExchangeBarriers + 3 * 8 <= kScratch, "the exchanges' mbarriers");
  static constexpr std::size_t kItemPartials = kScratch + 128;  // kBoxRows row sums per work item
  static constexpr std::size_t kVectors = kItemPartials + kMaxItems * kBoxRows * 4;  // phase-specific vectors

  // norm_qkv_rope_attend and norm_up: the two norms of the input, the head's q|k|v, scores of one attention chunk,
  // reduction partials, the head's softmax partials (m, l, o) per chunk gathered on rank 0, and SwiGLU's gate
  // values of this block's rows.
  std::size_t a1, a2, qkv, scores, partials, combine, gate, norm_end;
  // proj_residual: a cluster's ranks split its K (proj_cols columns: the attention output for W_o, then the MLP
  // activation for W_down, laid end to end) into parts of whole boxes, proj_passes parts per rank; proj_slice holds
  // the part of the vector a pass reads (the largest any part gets), and rank_partials on rank 0 every part's
  // partial sums of the cluster's output rows, in K order.
  std::size_t proj_slice, rank_partials, proj_end;
  int proj_passes;       // 1, or kProjPasses where one pass's slice would not fit in kMaxSmemPerBlock
  int rows_per_cluster;  // the most output rows any cluster owns

  __host__ __device__ SmemLayout(int hidden, int proj_cols, int head_dim, int max_seq, int cluster, int clusters,
                                 int attention_chunks, int gate_rows) {
    const int chunk = (max_seq + attention_chunks - 1) / attention_chunks;
    a1 = kVectors;
    a2 = a1 + align_up(hidden * 4, 16);
    qkv = a2 + align_up(hidden * 4, 16);
    scores = qkv + align_up(3 * head_dim * 4, 16);
    partials = scores + align_up(chunk * 4, 16);
    combine = partials + align_up(kThreads * kAttentionPartials * 4, 16);
    gate = combine + align_up(attention_chunks * (head_dim + 2) * 4, 16);
    norm_end = gate + align_up(gate_rows * 4, 16);
    rows_per_cluster = (hidden / kBoxRows + clusters - 1) / clusters * kBoxRows;
    const int k_boxes = proj_cols / kBoxCols;
    for (proj_passes = 1;; ++proj_passes) {
      const int parts = cluster * proj_passes;
      proj_slice = kVectors;
      rank_partials = proj_slice + std::size_t((k_boxes + parts - 1) / parts) * kBoxCols * 4;
      proj_end = rank_partials + align_up(std::size_t(parts) * rows_per_cluster * 4, 16);
      if (proj_end <= kMaxSmemPerBlock || proj_passes == kProjPasses) break;
    }
  }
};

}  // namespace clusterfusion::kernels
