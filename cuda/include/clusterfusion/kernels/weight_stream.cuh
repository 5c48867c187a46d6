// Per-warp weight streaming: each warp owns a ring of kStages TMA boxes in shared memory and accumulates dot
// products of kBoxRows weight rows (one box row each) against float vectors in shared memory.
//
// Work is a list of jobs (kBoxRows output rows each) cut along K into `chunks` items, so that a block's items split
// evenly over its warps even when it has fewer jobs than warps (or into chunks the list is given, where a row's sum
// must not depend on the block's job count). Items go to warps round-robin; each item's row
// partial sums land in shared memory, and once the list is done they are added in chunk order (deterministic)
// and handed to the epilogue. A warp is its own producer and consumer, so the ring needs one mbarrier per slot
// and no block-wide sync; the producer runs kStages boxes ahead across lists, so the next list's (or phase's)
// weights are already in flight while the block waits on a cluster or grid barrier.
#pragma once
#include <cuda_fp16.h>

#include "clusterfusion/kernels/block_reduce.cuh"
#include "clusterfusion/kernels/dot.cuh"
#include "clusterfusion/kernels/layer_params.hpp"
#include "clusterfusion/kernels/special_registers.cuh"
#include "clusterfusion/kernels/tma.cuh"

namespace clusterfusion::kernels {

// A weight matrix read in full rows, dotted with the float vector `vec` in shared memory: `vec` holds the
// segment's boxes from box `first_box` on (256 floats each), so box k reads vec + (k - first_box) * 256. A list
// whose K is split (proj_residual) holds only the slice of the vector its boxes cover.
struct Segment {
  const CUtensorMap* map;
  const float* vec;
  int boxes;
  int first_box = 0;
};

// Jobs row0 + kBoxRows*j for j in [0, jobs), each the sum over boxes [box_begin, box_end) of its segments'
// boxes laid end to end; item i is chunk i % chunks of job i / chunks and goes to warp (first_warp + i) % kWarps.
struct JobList {
  int row0;
  int jobs;
  int chunks;
  int first_warp;
  int segments;
  Segment seg[2];
  int box_begin, box_end;

  __device__ int items() const { return jobs * chunks; }
  // Boxes [chunk_begin(c), chunk_begin(c + 1)) of a job belong to chunk c.
  __device__ int chunk_begin(int c) const { return box_begin + ((box_end - box_begin) * c) / chunks; }
};
static_assert(sizeof(JobList) <= SmemLayout::kJobListBytes, "the job lists' shared-memory region");

// gcd(a, kWarps) for a > 0: with kWarps a power of two, a's lowest set bit capped at kWarps, not a loop of divisions
// on a late block's critical path.
__device__ __forceinline__ int gcd_with_warps(int a) {
  if constexpr ((kWarps & (kWarps - 1)) == 0) return min(a & -a, kWarps);
  int b = kWarps;
  while (b != 0) {
    const int t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// After filling row0/jobs/segments of a list: picks its chunk count if it has none (chunks 0: enough items for every
// warp to get the same number, within the partials buffer). A list given its chunks keeps them: its sums do not
// depend on its job count.
__device__ __forceinline__ void choose_chunks(JobList& list) {
  int chunks = list.chunks;
  if (chunks == 0) {
    chunks = list.jobs > 0 ? kWarps / gcd_with_warps(list.jobs) : 1;
    chunks = min(chunks, list.box_end - list.box_begin);
    while (chunks > 1 && list.jobs * chunks > kMaxItems) --chunks;
  }
  if (list.jobs * chunks > kMaxItems) __trap();  // the host plan keeps every list within the partials buffer
  list.chunks = chunks;
}

// Thread 0, once every list has its chunks: chains first_warp from list to list.
__device__ __forceinline__ void chain_job_lists(JobList* lists, int count) {
  int warp = 0;
  for (int l = 0; l < count; ++l) {
    lists[l].first_warp = warp;
    warp = (warp + lists[l].items()) % kWarps;
  }
}

class WarpStream {
 public:
  __device__ WarpStream(unsigned char* smem, const JobList* lists, int list_count)
      : lists_(lists),
        list_count_(list_count),
        partials_(reinterpret_cast<float*>(smem + SmemLayout::kItemPartials)),
        warp_(threadIdx.x / 32),
        lane_(threadIdx.x % 32) {
    ring_ = smem + std::size_t(warp_) * kStages * kBoxBytes;
    bars_ = reinterpret_cast<MBarrier*>(smem + SmemLayout::kBarriers) + warp_ * kStages;
    if (lane_ == 0) {
      for (int s = 0; s < kStages; ++s) bars_[s].init(1);
      fence_barrier_init();
    }
    __syncwarp();
    policy_ = l2_evict_first_policy();
  }

  // Points the producer at the first box: call once, after the job lists are visible to the warp.
  __device__ void start() {
    list_ = -1;
    next_list();
  }

  // Tuning only (kBoxStamps > 0): this warp's boxes are stamped into the block's timeline from here.
  __device__ void stamp_boxes(unsigned long long* block_timeline) {
    if constexpr (kBoxStamps > 0) {
      if (block_timeline != nullptr) box_stamps_ = block_timeline + kTimelineMarks + warp_ * kBoxStamps * 3;
    }
  }

  // Issues the first `boxes` boxes of the ring (kStages in all, over one or two calls), after start().
  __device__ void prime(int boxes) {
    for (int s = 0; s < boxes; ++s) issue();
  }

  // Runs list `l` (the list the consumer has reached) on the whole block, then calls epilogue(row, value)
  // once per output row, from one thread each. Starts and ends with every thread of the block in step. Before a warp
  // reads the vector of box k, it calls gate(k) (every lane): where the vector arrives in pieces (bench/NOTES.md v77).
  template <class Epilogue>
  __device__ void run(int l, Epilogue&& epilogue) {
    run(l, epilogue, [](int) {});
  }
  template <class Epilogue, class Gate>
  __device__ void run(int l, Epilogue&& epilogue, Gate&& gate) {
    const JobList& list = lists_[l];
    for (int i = first_item(list); i < list.items(); i += kWarps) {
      const int chunk = i % list.chunks;
      float acc[kBoxRows] = {};
      for (int k = list.chunk_begin(chunk), end = list.chunk_begin(chunk + 1); k < end; ++k) {
        const bool first = k < list.seg[0].boxes;
        const float* vec = first ? list.seg[0].vec + (k - list.seg[0].first_box) * kBoxCols
                                 : list.seg[1].vec + (k - list.seg[0].boxes - list.seg[1].first_box) * kBoxCols;
        const int slot = consumed_ % kStages;
        box_stamp(consumed_, 1);
        bars_[slot].wait((consumed_ / kStages) & 1);
        box_stamp(consumed_, 2);
        gate(k);
        accumulate_box(ring_ + slot * kBoxBytes, vec, acc);
        __syncwarp();  // every lane has read the slot before it is refilled
        ++consumed_;
        issue();
      }
#pragma unroll
      for (int r = 0; r < kBoxRows; ++r) {
        const float sum = warp_sum(acc[r]);
        if (lane_ == r) partials_[i * kBoxRows + r] = sum;
      }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < list.jobs * kBoxRows; t += blockDim.x) {
      const int job = t / kBoxRows, r = t % kBoxRows;
      float value = 0.f;
      for (int c = 0; c < list.chunks; ++c) value += partials_[(job * list.chunks + c) * kBoxRows + r];
      epilogue(list.row0 + t, value);
    }
    __syncthreads();  // the partials buffer is free for the next list
  }

 private:
  __device__ int first_item(const JobList& list) const { return (warp_ - list.first_warp + kWarps) % kWarps; }

  // Lane l takes columns 8l..8l+7 of each box row: 16-byte shared loads, conflict-free.
  __device__ void accumulate_box(const unsigned char* box, const float* vec, float (&acc)[kBoxRows]) const {
#pragma unroll
    for (int r = 0; r < kBoxRows; ++r)
      acc[r] = dot8(reinterpret_cast<const uint4*>(box + r * kBoxCols * 2)[lane_], vec + 8 * lane_, acc[r]);
  }

  // Points the producer cursor at item `item_` of list `list_`: its row and box range (divisions happen here,
  // once per item, not per box).
  __device__ void enter_item() {
    const JobList& list = lists_[list_];
    const int chunk = item_ % list.chunks;
    row_ = list.row0 + item_ / list.chunks * kBoxRows;
    box_ = list.chunk_begin(chunk);
    box_end_ = list.chunk_begin(chunk + 1);
    seg0_boxes_ = list.seg[0].boxes;
  }

  // Moves the producer cursor to this warp's first item in the next list that has one (or past the end).
  __device__ void next_list() {
    for (++list_; list_ < list_count_; ++list_) {
      item_ = first_item(lists_[list_]);
      if (item_ < lists_[list_].items()) {
        enter_item();
        return;
      }
    }
  }

  // Issues the producer's next box (if any) into the next slot and advances the cursor.
  __device__ void issue() {
    if (list_ >= list_count_) return;
    const int slot = issued_ % kStages;
    if (lane_ == 0) {
      const bool first = box_ < seg0_boxes_;
      const CUtensorMap* map = lists_[list_].seg[first ? 0 : 1].map;
      const int col = (first ? box_ : box_ - seg0_boxes_) * kBoxCols;
      bars_[slot].arrive_expect_tx(kBoxBytes);
      tma_load_2d(ring_ + slot * kBoxBytes, map, &bars_[slot], col, row_, policy_);
    }
    box_stamp(issued_, 0);
    ++issued_;
    if (++box_ < box_end_) return;
    item_ += kWarps;
    if (item_ < lists_[list_].items()) {
      enter_item();
    } else {
      next_list();
    }
  }

  // Box `box`'s stamp `what`: 0 issued, 1 reached by the consumer, 2 arrived (its wait returned).
  __device__ void box_stamp(unsigned box, int what) const {
    if constexpr (kBoxStamps > 0) {
      if (lane_ == 0 && box_stamps_ != nullptr && int(box) < kBoxStamps)
        box_stamps_[box * 3 + what] = global_timer();
    }
  }

  const JobList* lists_;
  int list_count_;
  unsigned long long* box_stamps_ = nullptr;
  float* partials_;
  int warp_, lane_;
  unsigned char* ring_;
  MBarrier* bars_;
  uint64_t policy_;
  // Producer cursor: list, item, the item's first row, the next box and the end of the item's boxes.
  int list_ = 0, item_ = 0, row_ = 0, box_ = 0, box_end_ = 0, seg0_boxes_ = 0;
  unsigned issued_ = 0, consumed_ = 0;
};

}  // namespace clusterfusion::kernels
