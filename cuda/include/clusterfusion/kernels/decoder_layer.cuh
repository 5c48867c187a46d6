// The fused decoder layer: one kernel body for every architecture (Model traits, model_traits.hpp) and head
// dimension, running phases kFirst..kLast of the model's phase list, with a grid barrier between phases.
//
// norm_qkv_rope_attend, block (head h, cluster rank r):
//   norm(input) -> its share of head h's q|k|v rows, broadcast to every block of the cluster (DSMEM)
//   -> [norm_up in the same phase: its share of the MLP's up rows] -> rotary, cache append (rank 0 of the
//   first head of a kv group) -> attention over its chunks of positions -> partials combined on rank 0 -> attn.
// norm_up: every block's share of the up rows (GELU(up + b), or silu(gate) * up with gate and up rows of the
//   same output as two dot products combined in the epilogue).
// proj_residual: a cluster owns output rows, its ranks split K (W_o's boxes, then W_down's), each holding only its
//   slice of attn | act (in two passes where one slice would not fit), and rank 0 adds the ranks' partial sums
//   to the residual.
#pragma once
#include <cuda_fp16.h>

#include "clusterfusion/kernels/cluster.cuh"
#include "clusterfusion/kernels/decode_attention.cuh"
#include "clusterfusion/kernels/dependent_launch.cuh"
#include "clusterfusion/kernels/grid_barrier.cuh"
#include "clusterfusion/kernels/layer_params.hpp"
#include "clusterfusion/kernels/model_traits.hpp"
#include "clusterfusion/kernels/norm.cuh"
#include "clusterfusion/kernels/planned_list.cuh"
#include "clusterfusion/kernels/special_registers.cuh"
#include "clusterfusion/kernels/weight_stream.cuh"

namespace clusterfusion::kernels {

// Splits `units` work units over `parts` as evenly as possible; part i gets [begin(i), begin(i+1)).
__device__ __forceinline__ int split_begin(int units, int parts, int i) { return units * i / parts; }

// The position of the new token: a launch parameter, or device memory written by an earlier kernel of the step
// (read through L2: it changes between launches).
__device__ __forceinline__ int step_position(const DecoderLayerParams& p) {
  return p.device_position != nullptr ? __ldcg(p.device_position) : p.position;
}

// Where a block is in the layer, stamped into p.timeline when set (see bench/cpp/layer_timing.cu).
enum TimelineMark {
  kMarkEntry, kMarkListed, kMarkPrimed, kMarkWaited, kMarkInput, kMarkNormed, kMarkClusterReady, kMarkQkv, kMarkUp,
  kMarkHeadReady, kMarkRotary, kMarkScores, kMarkSoftmax, kMarkValues, kMarkAttention, kMarkProj, kMarkEnd
};
static_assert(kMarkEnd + 1 == kTimelineMarks, "one stamp slot per mark");
__device__ __forceinline__ void stamp(const DecoderLayerParams& p, TimelineMark mark) {
  if (p.timeline == nullptr || threadIdx.x != 0) return;
  p.timeline[blockIdx.x * kTimelineStride + mark] = global_timer();
}

__device__ __forceinline__ const __half* layer_vec(const DecoderLayerParams& p, LayerVec v) {
  return v == LayerVec::X ? p.x : v == LayerVec::H1 ? p.h1 : p.out;
}
__device__ __forceinline__ __half* layer_out_vec(const DecoderLayerParams& p, LayerVec v) {
  return v == LayerVec::H1 ? p.h1 : p.out;
}

// The grid is `clusters` clusters of `ranks` blocks; in a phase that attends, cluster c < heads serves
// attention head c. Every block streams about the same number of bytes: head blocks carry their q|k|v rows,
// their KV-cache chunk and a fixed cost for the attention's latency-bound steps, and up rows (when the phase
// has them) fill each block up to the average (at least 1/kHeadSpareFloor of it); the other blocks' shares fall
// with the block index (kUpRampPercent).
struct NormPhaseShare {
  int qkv_units;  // kBoxRows-row units of the head's q|k|v rows, from qkv_first of them
  int qkv_first;
  int up_first;   // kBoxRows-row units of the up rows
  int up_units;
};

// Attention's rotary, reductions and cluster exchanges run after the block's weight stream (timeline,
// bench/NOTES.md); they are charged as this many bytes of streaming. Tunable at build time.
#ifndef CF_ATTENTION_FIXED_KB
#define CF_ATTENTION_FIXED_KB 256
#endif
constexpr long long kAttentionFixedBytes = CF_ATTENTION_FIXED_KB << 10;
// A head block's up rows are at least 1/kHeadSpareFloor of the average (its spare when its head costs less): of none,
// 1/16 and 1/32, with the ramp the best at ctx 512 on every shape (bench/NOTES.md v50, v51).
constexpr int kHeadSpareFloor = 32;

// Closed form: the blocks of a head cluster differ only by rank, the other blocks carry no head cost.
template <int kHeadDim>
__device__ __forceinline__ NormPhaseShare norm_phase_share(const DecoderLayerParams& p, int block, int position,
                                                           bool attend, bool up) {
  const int ranks = cluster_size(), rank = cluster_rank(), cluster = block / ranks;
  const int heads = attend ? p.heads : 0;
  const int head_units = 3 * kHeadDim / kBoxRows, up_units = up ? p.ffn / kBoxRows : 0, positions = position + 1;
  if (!attend) {
    // Without heads every block costs the average, which cancels from the general form below: the same shares
    // without its 64-bit chain, which a block that starts late pays on the critical path (bench/NOTES.md v39).
    const int first = ramp_begin<kUpRampPercent>(up_units, gridDim.x, block);
    const int last = ramp_begin<kUpRampPercent>(up_units, gridDim.x, block + 1);
    return NormPhaseShare{0, split_begin(head_units, ranks, rank), first, last - first};
  }
  const long long unit_bytes = 2LL * kBoxRows * p.hidden;
  auto qkv_units = [&](int r) { return split_begin(head_units, ranks, r + 1) - split_begin(head_units, ranks, r); };
  auto head_cost = [&](int r) {
    const int chunk = split_begin(positions, ranks, r + 1) - split_begin(positions, ranks, r);
    return qkv_units(r) * unit_bytes + chunk * (kHeadDim * 4LL) + kAttentionFixedBytes;  // K and V, float16
  };
  const long long total = heads * (head_units * unit_bytes + positions * (kHeadDim * 4LL)) +
                          heads * ranks * kAttentionFixedBytes + up_units * unit_bytes;
  const long long avg = quotient(total, gridDim.x);
  auto spare = [&](long long cost) { return max(avg / kHeadSpareFloor, avg - cost); };
  long long cluster_spare = 0, rank_spare = 0;  // of one head cluster; of its ranks before this block's
  for (int r = 0; r < ranks; ++r) {
    const long long s = spare(head_cost(r));
    cluster_spare += s;
    if (r < rank) rank_spare += s;
  }
  // The head clusters' spares first, then the other blocks' others x avg bytes, ramped.
  const int others = gridDim.x - heads * ranks, other = block - heads * ranks;
  const long long all = heads * cluster_spare + others * avg;
  const bool head_block = cluster < heads;
  auto ramped = [&](int i) { return heads * cluster_spare + ramp_begin<kUpRampPercent>(others * avg, others, i); };
  const long long before = head_block ? cluster * cluster_spare + rank_spare : ramped(other);
  const long long end = head_block ? before + spare(head_cost(rank)) : ramped(other + 1);
  NormPhaseShare share;
  share.qkv_units = head_block ? qkv_units(rank) : 0;
  share.qkv_first = split_begin(head_units, ranks, rank);
  share.up_first = int(quotient(up_units * before, all));
  share.up_units = int(quotient(up_units * end, all)) - share.up_first;
  return share;
}

// Head h's q|k|v rows as up to three pieces of the weight maps, in the order of the head's qkv vector in
// shared memory: GPT-NeoX's fused matrix (q|k|v interleaved per head), or Llama's q rows of head h and k and v
// rows of its kv head. A piece's row `row` lands at qkv[row + shift].
struct QkvPiece {
  int map, row0, units, shift;
};
template <class Model, int kHeadDim>
__device__ __forceinline__ QkvPiece qkv_piece(const DecoderLayerParams& p, int head, int piece) {
  constexpr int kUnits = kHeadDim / kBoxRows;
  if constexpr (Model::kFusedQkv) {
    const int row0 = head * 3 * kHeadDim;
    return piece == 0 ? QkvPiece{kMapQ, row0, 3 * kUnits, -row0} : QkvPiece{kMapQ, 0, 0, 0};
  } else {
    const int kv_head = head / (p.heads / p.kv_heads);
    const int row0 = piece == 0 ? head * kHeadDim : kv_head * kHeadDim;
    return QkvPiece{kMapQ + piece, row0, kUnits, piece * kHeadDim - row0};
  }
}

// List `index` of phases kFirst..kLast, in the order the stream runs them, before its chunks are chosen.
template <class Model, int kHeadDim, int kFirst, int kLast>
__device__ __forceinline__ JobList make_job_list(const DecoderLayerParams& p, const SmemLayout& L, unsigned char* smem,
                                                 int position, int index) {
  const int blocks = gridDim.x, block = blockIdx.x;
  const int ranks = cluster_size(), rank = cluster_rank(), cluster = block / ranks;
  const int k_boxes = p.hidden / kBoxCols;
  int i = index;
#pragma unroll
  for (int phase = kFirst; phase <= kLast; ++phase) {
    const PhaseSpec spec = Model::phase(phase);
    if (i >= phase_lists(spec)) {
      i -= phase_lists(spec);
      continue;
    }
    if (spec.attend || spec.up) {
      const NormPhaseShare share = norm_phase_share<kHeadDim>(p, block, position, spec.attend, spec.up);
      if (spec.attend) {
        if (i < kQkvLists) {
          // This rank's units [u0, u1) of the head's concatenated pieces.
          const int u0 = share.qkv_first, u1 = share.qkv_first + share.qkv_units;
          int piece_begin = 0;
          for (int piece = 0; piece < i; ++piece) piece_begin += qkv_piece<Model, kHeadDim>(p, cluster, piece).units;
          const QkvPiece q = qkv_piece<Model, kHeadDim>(p, cluster, i);
          const int lo = max(u0, piece_begin), hi = min(u1, piece_begin + q.units);
          return JobList{q.row0 + (lo - piece_begin) * kBoxRows, max(0, hi - lo), p.qkv_chunks, 0, 1,
                         {{&p.maps[q.map], reinterpret_cast<float*>(smem + L.a1), k_boxes}, {}}, 0, k_boxes};
        }
        i -= kQkvLists;
      }
      if (spec.up && i < kUpLists) {
        const int jobs = i == 1 || Model::kMlp == MlpKind::SwiGlu ? share.up_units : 0;
        return JobList{share.up_first * kBoxRows, jobs, 0, 0, 1,
                       {{&p.maps[i == 0 ? kMapGate : kMapUp], reinterpret_cast<float*>(smem + L.a2), k_boxes}, {}},
                       0, k_boxes};
      }
      if (spec.up) i -= kUpLists;
    }
    // Output rows (o_proj, down_proj), pass i. A cluster owns output rows; its ranks split their K and rank 0 adds
    // the ranks' partial sums (proj_residual), so rows are shared out in clusters, not blocks: finer balance. K
    // (W_o's boxes, then W_down's) is cut into L.proj_passes parts per rank, one list each (kProjLists, the unused
    // ones empty); a part reads its slice of the vector, boxes [b0, b1) end to end from L.proj_slice.
    const Segment o{&p.maps[kMapO], nullptr, k_boxes};
    const Segment down{&p.maps[kMapDown], nullptr, p.ffn / kBoxCols};
    const Segment first = spec.o_proj ? o : down;
    const int segments = spec.o_proj && spec.down_proj ? 2 : 1;
    const int boxes = first.boxes + (segments == 2 ? down.boxes : 0);
    const int out_units = p.hidden / kBoxRows;
    const int o0 = split_begin(out_units, blocks / ranks, cluster);
    const int o1 = split_begin(out_units, blocks / ranks, cluster + 1);
    const int passes = L.proj_passes, parts = ranks * passes;
    const float* slice = reinterpret_cast<const float*>(smem + L.proj_slice);
    const bool used = i < passes;
    const int b0 = used ? split_begin(boxes, parts, rank * passes + i) : 0;
    const int b1 = used ? split_begin(boxes, parts, rank * passes + i + 1) : 0;
    JobList list{o0 * kBoxRows, used ? o1 - o0 : 0, 0, 0, segments, {first, down}, b0, b1};
    const int in_first = min(max(first.boxes - b0, 0), b1 - b0);  // the slice's boxes of segment 0
    list.seg[0].vec = slice;
    list.seg[0].first_box = b0;
    list.seg[1].vec = slice + in_first * kBoxCols;
    list.seg[1].first_box = max(b0 - first.boxes, 0);
    return list;
  }
  __trap();  // index past the launch's lists
  return JobList{};
}

// Writes the job lists of phases kFirst..kLast, one warp per list: each list's arithmetic (divisions, the norm
// phase's share) is a serial chain, and on one thread a launch's chains added up to about a microsecond per list on
// the critical path of a block that starts late (bench/NOTES.md v38).
template <class Model, int kHeadDim, int kFirst, int kLast>
__device__ __forceinline__ void build_job_lists(const DecoderLayerParams& p, const SmemLayout& L, unsigned char* smem,
                                                int position) {
  constexpr int kCount = phase_list_base<Model>(kFirst, kLast + 1);
  static_assert(kCount <= kMaxJobLists, "the job lists' shared-memory region");
  auto* lists = reinterpret_cast<JobList*>(smem + SmemLayout::kJobLists);
  if (threadIdx.x % 32 == 0) {
    for (int l = int(threadIdx.x) / 32; l < kCount; l += kWarps) {
      JobList list = make_job_list<Model, kHeadDim, kFirst, kLast>(p, L, smem, position, l);
      choose_chunks(list);
      lists[l] = list;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) chain_job_lists(lists, kCount);
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
  // The row's terms that only exist once the previous kernel or phase is done (term 0 the residual, term 1 an
  // extra vector), loaded right after the wait as raw halves and added in order when read: their loads stay in
  // flight while the phase loads its input, instead of a round trip of their own before it (bench/NOTES.md v70).
  template <int kTerm, class Load>
  __device__ void add_later(Load&& load) {
    static_assert(kTerm == 0 || kTerm == 1, "two later terms");
    if (row < 0) return;
    (kTerm == 0 ? later0 : later1) = load(row);
    laters |= 1 << kTerm;
  }
  template <class Load>
  __device__ float get(int r, Load&& load) const {
    if (r != row) return load(r);
    float sum = value;
    if (laters & 1) sum += __half2float(later0);
    if (laters & 2) sum += __half2float(later1);
    return sum;
  }

 private:
  int laters = 0;  // bit t: term t was loaded
  __half later0, later1;
};

__device__ __forceinline__ float half_or_zero(const __half* v, int row) {
  return v != nullptr ? __half2float(v[row]) : 0.f;
}

// A head's positions 0..position (the last one is the new token) in `chunks` chunks; this block's are
// [first, last), shared out over the cluster's ranks. Chunk c is positions [begin(c), begin(c + 1)).
struct KvChunks {
  int position, chunks, first, last;
  __device__ KvChunks(int position, int chunks)
      : position(position),
        chunks(chunks),
        first(split_begin(chunks, cluster_size(), cluster_rank())),
        last(split_begin(chunks, cluster_size(), cluster_rank() + 1)) {}
  __device__ int begin(int c) const { return split_begin(position + 1, chunks, c); }
};

// Copies n0 floats from src0 then n1 from src1 (multiples of 4) that another block or kernel wrote (read through
// L2, .cg) into shared memory, end to end, with kCopyBatch 16-byte loads per thread in flight: one round trip per
// batch, not per load. A block that starts late loads behind every other block's weight stream, where each round
// trip costs microseconds.
constexpr int kCopyBatch = 8;
__device__ __forceinline__ void copy_from_l2(float* dst, const float* src0, int n0, const float* src1 = nullptr,
                                             int n1 = 0) {
  const int vecs0 = n0 / 4, vecs = vecs0 + n1 / 4;
  for (int base = 0; base < vecs; base += kCopyBatch * int(blockDim.x)) {
    float4 v[kCopyBatch];
#pragma unroll
    for (int u = 0; u < kCopyBatch; ++u) {
      const int i = base + u * int(blockDim.x) + int(threadIdx.x);
      if (i < vecs0) {
        v[u] = __ldcg(reinterpret_cast<const float4*>(src0) + i);
      } else if (i < vecs) {
        v[u] = __ldcg(reinterpret_cast<const float4*>(src1) + (i - vecs0));
      }
    }
#pragma unroll
    for (int u = 0; u < kCopyBatch; ++u) {
      const int i = base + u * int(blockDim.x) + int(threadIdx.x);
      if (i < vecs) reinterpret_cast<float4*>(dst)[i] = v[u];
    }
  }
}

// Boxes per warp a launch that overlaps the previous kernel issues before waiting for it, when its first phase
// starts with a norm; the rest are issued right after the norm's input loads, so that those loads are ahead of the
// whole ring fill of every block in the memory's queues and the fill still overlaps the norm (bench/NOTES.md v67).
// Tunable at build time.
#ifndef CF_EARLY_STAGES
#define CF_EARLY_STAGES 1
#endif
constexpr int kEarlyStages = CF_EARLY_STAGES;
static_assert(kEarlyStages >= 0 && kEarlyStages <= kStages, "CF_EARLY_STAGES: 0..CF_STAGES");

// One block's run of phases kFirst..kLast. The constructor is the prologue (everything that needs only the
// weights); run() waits for the previous kernel and executes the phases.
//
// Launched to overlap the previous kernel (p.overlap_previous, programmatic dependent launch), a block does
// everything that needs only the weights first, starts filling its weight ring, and only then waits for that kernel
// and reads the layer input. Otherwise the ring is filled once the first norm's input loads are issued: its ~17 MB
// over the grid would otherwise queue those loads behind them.
template <class Model, int kHeadDim, int kFirst, int kLast>
class LayerBlock {
  static constexpr PhaseSpec kFirstSpec = Model::phase(kFirst);
  static constexpr bool kFirstNorms = kFirstSpec.attend || kFirstSpec.up;
  static constexpr int kCount = kLast - kFirst + 1;
  static constexpr bool any_phase(bool PhaseSpec::*field) {
    bool any = false;
    for (int i = kFirst; i <= kLast; ++i) any = any || Model::phase(i).*field;
    return any;
  }
  // Phases of this launch before `phase` that run proj_residual: the parity of the kProjReceived phase that
  // `phase`'s exchange completes (Llama's cooperative launch projects twice, W_o then W_down).
  static constexpr uint32_t projections_before(int phase) {
    uint32_t n = 0;
    for (int i = kFirst; i < phase; ++i) n += Model::phase(i).o_proj || Model::phase(i).down_proj;
    return n;
  }
  static constexpr int attending_phases() {
    int n = 0;
    for (int i = kFirst; i <= kLast; ++i) n += Model::phase(i).attend;
    return n;
  }
  using Attention = DecodeAttention<kHeadDim>;

 public:
  // The launch's lists do not depend on the position: they can come from a planning launch (p.planned_lists).
  static constexpr bool kPlanned = lists_planned<Model>(kFirst, kLast);

  // `planned`: this thread's list when p.planned_lists is set (load_planned).
  __device__ LayerBlock(const DecoderLayerParams& p, unsigned char* smem, int position, const PlannedList& planned)
      : p_(p),
        smem_(smem),
        position_(position),
        layout_(layout(p)),
        lists_(reinterpret_cast<const JobList*>(smem + SmemLayout::kJobLists)),
        stream_(smem, lists_, total_lists()) {
    if (p.timeline != nullptr) stream_.stamp_boxes(p.timeline + blockIdx.x * kTimelineStride);
    if constexpr (kBoxStamps > 0) {
      if (p.timeline != nullptr && threadIdx.x == 0) p.timeline[(blockIdx.x + 1) * kTimelineStride - 1] = sm_id();
    }
    if (threadIdx.x == 0) init_exchanges();  // before this block announces that it has started
    // A launch that starts with proj_residual: announce that this block has started before any rank stores
    // into rank 0 (waited for in the phase).
    if constexpr (!kFirstNorms) cluster_arrive_relaxed();
    if constexpr (any_phase(&PhaseSpec::attend)) {
      norm_.load_params(0, p.norm_weight[0], p.norm_bias[0], p.hidden);
      if (threadIdx.x < p.rotary_dims / 2) inv_freq_ = p.inv_freq[threadIdx.x];
    }
    if constexpr (any_phase(&PhaseSpec::up)) norm_.load_params(1, p.norm_weight[1], p.norm_bias[1], p.hidden);
    if (kPlanned && p.planned_lists != nullptr) {
      if (threadIdx.x < total_lists())
        reinterpret_cast<JobList*>(smem + SmemLayout::kJobLists)[threadIdx.x] = planned.job_list(p.maps, smem);
      __syncthreads();
    } else {
      build_job_lists<Model, kHeadDim, kFirst, kLast>(p, layout_, smem, position);
    }
    stamp(p, kMarkListed);
    prefetch_constants();
    stream_.start();
    if (prime_early()) {
      stream_.prime(kFirstNorms ? kEarlyStages : kStages);
      stamp(p, kMarkPrimed);
    }
  }

  // Planning launch (p.write_planned_lists): builds this block's lists as a launch at p.position would (the lists of
  // any other position are the same: the host plans at 0, a test at others) and writes them to p.planned_lists,
  // nothing else.
  __device__ static void plan_lists(const DecoderLayerParams& p, unsigned char* smem) {
    static_assert(kPlanned, "only lists that do not depend on the position are planned");
    build_job_lists<Model, kHeadDim, kFirst, kLast>(p, layout(p), smem, p.position);
    if (threadIdx.x < total_lists()) {
      const auto* lists = reinterpret_cast<const JobList*>(smem + SmemLayout::kJobLists);
      static_cast<PlannedList*>(p.planned_lists)[blockIdx.x * total_lists() + threadIdx.x] =
          PlannedList(lists[threadIdx.x], p.maps, smem);
    }
  }
  // This thread's planned list (thread l < the launch's lists: list l), issued at entry so that its round trip is
  // the device position's (bench/NOTES.md v55); read-only after the planning launch, so through the texture path.
  __device__ static PlannedList load_planned(const DecoderLayerParams& p) {
    PlannedList planned;
    if (kPlanned && p.planned_lists != nullptr && threadIdx.x < total_lists()) {
      const auto* src = static_cast<const uint4*>(p.planned_lists) + (blockIdx.x * total_lists() + threadIdx.x) * 4;
      auto* dst = reinterpret_cast<uint4*>(&planned);
#pragma unroll
      for (int i = 0; i < 4; ++i) dst[i] = __ldg(src + i);
    }
    return planned;
  }

  // The most rows of SwiGLU's gate any block holds: SwiGLU's up rows are shared only in a phase without heads.
  __host__ __device__ static int gate_rows(int ffn, int blocks) {
    return Model::kMlp == MlpKind::SwiGlu ? ramp_most<kUpRampPercent>(ffn / kBoxRows, blocks) * kBoxRows : 0;
  }

  __device__ void run() {
    // The rotation now, while the previous kernel finishes (its inverse frequency was loaded at entry).
    if constexpr (any_phase(&PhaseSpec::attend)) {
      if (threadIdx.x < p_.rotary_dims / 2) rotation_ = {position_, inv_freq_};
    }
    wait_for_previous_kernel();
    stamp(p_, kMarkWaited);
    run_phase<kFirst>();
    stamp(p_, kMarkEnd);
  }

 private:
  static constexpr int total_lists() { return phase_list_base<Model>(kFirst, kLast + 1); }
  __device__ static SmemLayout layout(const DecoderLayerParams& p) {
    return SmemLayout(p.hidden, proj_columns<Model>(p.hidden, p.ffn), kHeadDim, p.max_seq, cluster_size(),
                      gridDim.x / cluster_size(), p.attention_chunks, gate_rows(p.ffn, gridDim.x));
  }
  // Only a launch of several phases of a model with a heads-only phase may have more attention chunks than ranks (the
  // plan spreads that phase over more blocks in split mode, LayerLaunchPlan); every other launch has one chunk per
  // rank and no loop, whose registers would spill.
  static constexpr bool chunk_loop() {
    bool spread = false;
    for (int i = 0; i < Model::kPhases; ++i) spread = spread || Model::phase(i).heads_only();
    return kFirst != kLast && spread;
  }
  static constexpr bool kChunkLoop = chunk_loop();
  __device__ bool prime_early() const { return p_.overlap_previous || !kFirstNorms; }

  template <int kPhase>
  __device__ void run_phase() {
    constexpr PhaseSpec spec = Model::phase(kPhase);
    constexpr bool first = kPhase == kFirst;
    // In the cooperative kernel the next phase's first weight boxes are already in flight across this barrier.
    if constexpr (!first) grid_barrier(p_.grid_barrier);
    constexpr int base = phase_list_base<Model>(kFirst, kPhase);
    if constexpr (spec.attend || spec.up) {
      norm_.load_input(layer_vec(p_, spec.input), p_.hidden);
      stamp(p_, kMarkInput);
      if (first && (!prime_early() || kEarlyStages < kStages)) {
        stream_.prime(prime_early() ? kStages - kEarlyStages : kStages);
        stamp(p_, kMarkPrimed);
      }
      // Arrives on the cluster barrier: this block has started, so the others may write its shared memory
      // once they have all arrived (attend waits).
      if constexpr (spec.attend) cluster_arrive_relaxed();
      norm_.normalize(p_.hidden, p_.eps, spec.attend, vec(layout_.a1), spec.up, vec(layout_.a2), scratch());
      stamp(p_, kMarkNormed);
      if constexpr (spec.attend) {
        attend<base>(spec.up, constants_[kPhase - kFirst]);
      } else {
        up_rows(base, constants_[kPhase - kFirst]);
      }
    }
    if constexpr (spec.o_proj || spec.down_proj) {
      const __half* residual = layer_vec(p_, spec.residual);
      constants_[kPhase - kFirst].out.add_later<0>([residual](int row) { return __ldcg(residual + row); });
      if (p_.residual_add != nullptr)
        constants_[kPhase - kFirst].out.add_later<1>([v = p_.residual_add](int row) { return __ldcg(v + row); });
      if constexpr (first) {
        cluster_wait();
        stamp(p_, kMarkClusterReady);
      }
      proj_residual<spec.o_proj, spec.down_proj, projections_before(kPhase) % 2>(
          base + phase_lists(spec) - kProjLists, residual, layer_out_vec(p_, spec.output), constants_[kPhase - kFirst]);
    }
    if constexpr (kPhase < kLast) run_phase<kPhase + 1>();
  }

  struct PhaseConstants {
    RowConstant qkv_bias, up_bias, out;  // b_qkv, b_up, and residual + biases of the output rows
  };

  __device__ void prefetch_constants() {
    for (int i = 0; i < kCount; ++i) {
      const PhaseSpec spec = Model::phase(kFirst + i);
      int l = phase_list_base<Model>(kFirst, kFirst + i);
      if (spec.attend) {
        if constexpr (Model::kBiases) constants_[i].qkv_bias.prefetch(lists_[l], qkv_bias());
        l += kQkvLists;
      }
      if (spec.up) {
        if constexpr (Model::kBiases) constants_[i].up_bias.prefetch(lists_[l + 1], up_bias());
        l += kUpLists;
      }
      if (spec.o_proj || spec.down_proj) constants_[i].out.prefetch(lists_[l], out_biases(spec.o_proj, spec.down_proj));
    }
  }

  // The output rows' biases of a proj_residual phase (none without biases).
  __device__ auto out_biases(bool o, bool down) const {
    const __half* o_bias = Model::kBiases && o ? p_.o_bias : nullptr;
    const __half* down_bias = Model::kBiases && down ? p_.down_bias : nullptr;
    return [o_bias, down_bias](int row) { return half_or_zero(o_bias, row) + half_or_zero(down_bias, row); };
  }
  __device__ auto qkv_bias() const {
    return [b = p_.qkv_bias](int row) { return __half2float(b[row]); };
  }
  __device__ auto up_bias() const {
    return [b = p_.up_bias](int row) { return __half2float(b[row]); };
  }

  // A launch's counted exchanges (SmemLayout::kExchangeBarriers): each barrier's phase completes once the bytes it
  // expects have landed (dsmem_store_counted), so no cluster barrier has to release them.
  enum Exchange { kQkvReceived, kPartialsReceived, kProjReceived };
  __device__ MBarrier* exchange(Exchange e) const {
    return reinterpret_cast<MBarrier*>(smem_ + SmemLayout::kExchangeBarriers) + e;
  }
  // Thread 0, before this block announces that it has started. Attending: a head's block receives its q|k|v (3 x
  // head_dim floats, each row from the rank that streams it), its rank 0 every chunk's (m, l, o), a block without a
  // head nothing. proj_residual: rank 0 receives every rank's partial sums, expected there once its rows are known.
  // In a cluster of one block the stores are plain and nothing is expected (receive()).
  __device__ void init_exchanges() const {
    static_assert(attending_phases() <= 1, "the attention's exchanges are expected once per launch");
    // An exchange lands in shared memory, so its bytes stay within an mbarrier's tx-count range (2^20 - 1).
    static_assert(kMaxSmemPerBlock < (1u << 20), "an exchange's bytes exceed an mbarrier's tx-count");
    constexpr bool kAttends = any_phase(&PhaseSpec::attend);
    constexpr bool kProjects = any_phase(&PhaseSpec::o_proj) || any_phase(&PhaseSpec::down_proj);
    if constexpr (kAttends) {
      const bool has_head = blockIdx.x / cluster_size() < p_.heads && cluster_size() > 1;
      exchange(kQkvReceived)->init(1);
      exchange(kPartialsReceived)->init(1);
      exchange(kQkvReceived)->arrive_expect_tx(has_head ? 3 * kHeadDim * 4 : 0);
      exchange(kPartialsReceived)->arrive_expect_tx(
          has_head && cluster_rank() == 0 ? p_.attention_chunks * (kHeadDim + 2) * 4 : 0);
    }
    if constexpr (kProjects) exchange(kProjReceived)->init(1);
    if constexpr (kAttends || kProjects) fence_barrier_init();
  }

  // Waits until use `parity` (0, 1, 0, ...) of exchange e has landed in this block: its counted bytes, or in a
  // cluster of one block the block's barrier after the plain stores.
  __device__ void receive(Exchange e, uint32_t parity = 0) const {
    if (cluster_size() == 1) {
      __syncthreads();
    } else {
      exchange(e)->wait_cluster(parity);
    }
  }

  __device__ int kv_head(int head) const { return head / (p_.heads / p_.kv_heads); }
  __device__ float* vec(std::size_t offset) const { return reinterpret_cast<float*>(smem_ + offset); }
  __device__ float* scratch() const { return vec(SmemLayout::kScratch); }

  // norm_qkv_rope_attend (lists base.. of the phase), with norm_up's lists in the same phase when `up`.
  template <int kBase>
  __device__ void attend(bool up, const PhaseConstants& c) {
    float* qkv = vec(layout_.qkv);
    const int ranks = cluster_size(), rank = cluster_rank(), head = blockIdx.x / ranks;

    cluster_wait();  // every block of the cluster has started (see run_phase): DSMEM stores are safe
    stamp(p_, kMarkClusterReady);
    // q|k|v rows of this head: every block of the cluster gets every row.
    for (int piece = 0; piece < kQkvLists; ++piece) {
      const int shift = qkv_piece<Model, kHeadDim>(p_, head, piece).shift;
      stream_.run(kBase + piece, [&](int row, float sum) {
        float value = sum;
        if constexpr (Model::kBiases) value += c.qkv_bias.get(row, qkv_bias());
        const float* local = qkv + row + shift;
        for (int dst = 0; dst < ranks; ++dst) dsmem_store_counted(local, dst, value, exchange(kQkvReceived));
      });
    }
    stamp(p_, kMarkQkv);
    if (up) up_rows(kBase + kQkvLists, c);
    stamp(p_, kMarkUp);
    receive(kQkvReceived);  // the head's q|k|v is complete in this block
    stamp(p_, kMarkHeadReady);
    if (head >= p_.heads) return;  // a cluster with no head: its share of up rows was its whole phase

    float* q = qkv;
    float* k = qkv + kHeadDim;
    float* v = qkv + 2 * kHeadDim;
    Attention::rotary(q, k, p_.rotary_dims, rotation_);
    const std::size_t head_offset = std::size_t(kv_head(head)) * p_.max_seq * kHeadDim;
    // The first query head of a kv group appends; the group's other clusters computed the same k and v.
    if (rank == 0 && head % (p_.heads / p_.kv_heads) == 0) {
      for (int e = threadIdx.x; e < kHeadDim; e += blockDim.x) {
        p_.k_cache[head_offset + std::size_t(position_) * kHeadDim + e] = __float2half_rn(k[e]);
        p_.v_cache[head_offset + std::size_t(position_) * kHeadDim + e] = __float2half_rn(v[e]);
      }
    }
    const KvChunks chunks(position_, p_.attention_chunks);
    float* combine = vec(layout_.combine);
    stamp(p_, kMarkRotary);
    const auto chunk_partial = [&](int c) {
      Attention::partial(q, k, v, p_.k_cache + head_offset, p_.v_cache + head_offset, position_, chunks.begin(c),
                         chunks.begin(c + 1), vec(layout_.scores), vec(layout_.partials), combine + c * (kHeadDim + 2),
                         exchange(kPartialsReceived), scratch(),
                         [this](AttentionStep step) { stamp(p_, TimelineMark(kMarkScores + int(step))); });
    };
    if constexpr (kChunkLoop) {
      for (int c = chunks.first; c < chunks.last; ++c) {
        if (c > chunks.first) __syncthreads();  // the last chunk's partials are read before they are rewritten
        chunk_partial(c);
      }
    } else {
      if (chunks.last != chunks.first + 1) __trap();  // the plan gives every other launch one chunk per rank
      chunk_partial(chunks.first);
    }
    if (rank == 0) {
      receive(kPartialsReceived);  // every chunk's partials are here
      Attention::combine_partials(combine, p_.attention_chunks, p_.attn + head * kHeadDim);
    }
    stamp(p_, kMarkAttention);
  }

  // norm_up's lists (gate, up) from list l: act = GELU(up + b_up), or silu(gate) * up.
  __device__ void up_rows(int l, const PhaseConstants& c) {
    if constexpr (Model::kMlp == MlpKind::SwiGlu) {
      float* gate = vec(layout_.gate);
      const int row0 = lists_[l].row0;
      stream_.run(l, [&](int row, float sum) { gate[row - row0] = sum; });
      stream_.run(l + 1, [&](int row, float sum) { p_.act[row] = silu(gate[row - row0]) * sum; });
    } else {
      stream_.run(l, [](int, float) {});
      stream_.run(l + 1, [&](int row, float sum) {
        float value = sum;
        if constexpr (Model::kBiases) value += c.up_bias.get(row, up_bias());
        p_.act[row] = gelu_erf(value);
      });
    }
  }

  // Copies the slice of the vector that proj_residual's list `list` reads into proj_slice: its boxes
  // [box_begin, box_end) of segment 0 (attn for W_o, else act) and then of segment 1 (act), end to end. The
  // vectors were written by other blocks of this launch (cooperative) or by the previous one.
  template <bool kO, bool kDown>
  __device__ void load_proj_slice(const JobList& list) const {
    const int b0 = list.box_begin, b1 = list.box_end, s0 = list.seg[0].boxes;
    const int n0 = max(0, min(b1, s0) - b0) * kBoxCols;
    const float* src0 = (kO ? p_.attn : p_.act) + min(b0, s0) * kBoxCols;
    if constexpr (kO && kDown) {
      const int m = max(b0, s0);
      copy_from_l2(vec(layout_.proj_slice), src0, n0, p_.act + (m - s0) * kBoxCols, max(0, b1 - m) * kBoxCols);
    } else {
      copy_from_l2(vec(layout_.proj_slice), src0, n0);
    }
  }

  // proj_residual (lists l .. l + kProjLists - 1, one per pass) after its inputs (attn and/or act) are complete in
  // global memory. Each pass loads its slice of the vector and stores its partial sums of the cluster's rows on
  // rank 0; rank 0 adds every rank's passes in K order. kParity: which use of kProjReceived this is.
  template <bool kO, bool kDown, uint32_t kParity>
  __device__ void proj_residual(int l, const __half* residual, __half* out, const PhaseConstants& c) {
    float* rank_partials = vec(layout_.rank_partials);
    const JobList& rows_of = lists_[l];
    const int rank = cluster_rank(), ranks = cluster_size(), row0 = rows_of.row0, rows = rows_of.jobs * kBoxRows;
    const int stride = layout_.rows_per_cluster, passes = layout_.proj_passes;
    for (int pass = 0; pass < passes; ++pass) {
      load_proj_slice<kO, kDown>(lists_[l + pass]);
      __syncthreads();
      if (pass == 0) stamp(p_, kMarkProj);
      float* partials = rank_partials + (rank * passes + pass) * stride;
      stream_.run(l + pass, [&](int row, float sum) {
        dsmem_store_counted(partials + (row - row0), 0, sum, exchange(kProjReceived));
      });
    }
    if (rank != 0) return;
    if (threadIdx.x == 0) exchange(kProjReceived)->arrive_expect_tx(ranks > 1 ? ranks * passes * rows * 4 : 0);
    receive(kProjReceived, kParity);  // every rank's partial sums are here
    const auto biases = out_biases(kO, kDown);
    const __half* extra = p_.residual_add;
    const auto constant = [&](int row) {
      const float value = biases(row) + __half2float(__ldcg(residual + row));
      return extra != nullptr ? value + __half2float(__ldcg(extra + row)) : value;
    };
    for (int t = threadIdx.x; t < rows; t += blockDim.x) {
      float sum = 0.f;
      for (int r = 0; r < ranks * passes; ++r) sum += rank_partials[r * stride + t];
      out[row0 + t] = __float2half_rn(sum + c.out.get(row0 + t, constant));
    }
  }

  const DecoderLayerParams& p_;
  unsigned char* smem_;
  int position_;
  SmemLayout layout_;
  const JobList* lists_;
  WarpStream stream_;
  NormInputs<Model::kNorm> norm_;
  double inv_freq_ = 0.0;
  typename Attention::Rotation rotation_;
  PhaseConstants constants_[kCount];
};

}  // namespace clusterfusion::kernels

namespace clusterfusion::kernels {

// Phases kFirst..kLast of one decoder layer for one new token; one block per SM, clusters of cluster_size.
template <class Model, int kHeadDim, int kFirst, int kLast>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) decoder_layer_kernel(const __grid_constant__ DecoderLayerParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  using Block = LayerBlock<Model, kHeadDim, kFirst, kLast>;
  if constexpr (Block::kPlanned) {
    if (p.write_planned_lists) {
      Block::plan_lists(p, smem);
      return;
    }
  } else if (p.write_planned_lists) {
    // The host plans only lists that do not depend on the position; run on, this launch would leave its table
    // unwritten, and a later launch would read whatever is there as its lists.
    __trap();
  }
  const PlannedList planned = Block::load_planned(p);
  // A device position past the cache (only possible through device_position: the host checks its own) makes
  // every block return before touching anything, the same decision in every block.
  const int position = step_position(p);
  if (position < 0 || position >= p.max_seq) return;
  stamp(p, kMarkEntry);
  // The next kernel is scheduled once every block of ours has passed here, so never ahead of one of ours; its
  // blocks then take the SMs ours leave.
  allow_next_kernel_to_start();
  Block block(p, smem, position, planned);
  block.run();
}

}  // namespace clusterfusion::kernels
