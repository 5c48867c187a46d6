// Per-warp weight streaming: each warp owns a ring of kStages TMA boxes in shared memory and computes
// output-stationary dot products of 4 weight rows (one box row each) against float vectors in shared memory.
// A warp is its own producer and consumer, so the ring needs one mbarrier per slot and no block-wide sync;
// the producer runs kStages boxes ahead across job lists, so weights of the next phase are already in flight
// while the block waits on a cluster or grid barrier.
#pragma once
#include <cuda_fp16.h>

#include "clusterfusion/kernels/block_reduce.cuh"
#include "clusterfusion/kernels/neox_layer_params.hpp"
#include "clusterfusion/kernels/tma.cuh"

namespace clusterfusion::kernels {

// A weight matrix read in full rows, dotted with the float vector `vec` (shared memory, length boxes*256).
struct Segment {
  const CUtensorMap* map;
  const float* vec;
  int boxes;
};

// Jobs row0 + 4j for j in [0, jobs): each job produces 4 output rows as the sum over its segments.
// Job j goes to warp (first_warp + j) % kWarps, so consecutive lists keep the warps balanced.
struct JobList {
  int row0;
  int jobs;
  int first_warp;
  int segments;
  Segment seg[2];
};
constexpr int kMaxJobLists = 3;

// Sets up the lists in shared memory (thread 0), chaining first_warp from list to list.
__device__ __forceinline__ void chain_job_lists(JobList* lists, int count) {
  int warp = 0;
  for (int l = 0; l < count; ++l) {
    lists[l].first_warp = warp;
    warp = (warp + lists[l].jobs) % kWarps;
  }
}

class WarpStream {
 public:
  __device__ WarpStream(unsigned char* smem, const JobList* lists, int list_count)
      : lists_(lists), list_count_(list_count), warp_(threadIdx.x / 32), lane_(threadIdx.x % 32) {
    ring_ = smem + std::size_t(warp_) * kStages * kBoxBytes;
    bars_ = reinterpret_cast<MBarrier*>(smem + SmemLayout::kBarriers) + warp_ * kStages;
    if (lane_ == 0) {
      for (int s = 0; s < kStages; ++s) bars_[s].init(1);
      fence_barrier_init();
    }
    __syncwarp();
    policy_ = l2_evict_first_policy();
    list_ = -1;
    next_list();
  }

  // Fills the ring: call once, after the job lists are visible to the warp.
  __device__ void prime() {
    for (int s = 0; s < kStages; ++s) issue();
  }

  // Runs this warp's jobs of list `l` (which must be the list the consumer has reached), calling
  // epilogue(row, sum) once per job on every lane: lanes 0..3 hold the sums of rows row..row+3 (lane l has
  // row + l), the other lanes repeat them.
  template <class Epilogue>
  __device__ void run(int l, Epilogue&& epilogue) {
    const JobList& list = lists_[l];
    for (int j = first_job(list); j < list.jobs; j += kWarps) {
      float acc[kBoxRows] = {0.f, 0.f, 0.f, 0.f};
      for (int s = 0; s < list.segments; ++s) {
        const Segment seg = list.seg[s];
        for (int b = 0; b < seg.boxes; ++b) {
          const int slot = consumed_ % kStages;
          bars_[slot].wait((consumed_ / kStages) & 1);
          accumulate_box(ring_ + slot * kBoxBytes, seg.vec + b * kBoxCols, acc);
          __syncwarp();  // every lane has read the slot before it is refilled
          ++consumed_;
          issue();
        }
      }
      float mine = 0.f;
#pragma unroll
      for (int r = 0; r < kBoxRows; ++r) {
        const float sum = warp_sum(acc[r]);
        if ((lane_ % kBoxRows) == r) mine = sum;
      }
      epilogue(list.row0 + j * kBoxRows, mine);
    }
  }

 private:
  __device__ int first_job(const JobList& list) const { return (warp_ - list.first_warp + kWarps) % kWarps; }

  // Lane l takes columns 8l..8l+7 of each of the 4 box rows: 16-byte shared loads, conflict-free.
  __device__ void accumulate_box(const unsigned char* box, const float* vec, float (&acc)[kBoxRows]) const {
    const float4 va = reinterpret_cast<const float4*>(vec)[2 * lane_];
    const float4 vb = reinterpret_cast<const float4*>(vec)[2 * lane_ + 1];
#pragma unroll
    for (int r = 0; r < kBoxRows; ++r) {
      const uint4 w = reinterpret_cast<const uint4*>(box + r * kBoxCols * 2)[lane_];
      const float2 w0 = __half22float2(*reinterpret_cast<const __half2*>(&w.x));
      const float2 w1 = __half22float2(*reinterpret_cast<const __half2*>(&w.y));
      const float2 w2 = __half22float2(*reinterpret_cast<const __half2*>(&w.z));
      const float2 w3 = __half22float2(*reinterpret_cast<const __half2*>(&w.w));
      float a = acc[r];
      a = fmaf(w0.x, va.x, a);
      a = fmaf(w0.y, va.y, a);
      a = fmaf(w1.x, va.z, a);
      a = fmaf(w1.y, va.w, a);
      a = fmaf(w2.x, vb.x, a);
      a = fmaf(w2.y, vb.y, a);
      a = fmaf(w3.x, vb.z, a);
      a = fmaf(w3.y, vb.w, a);
      acc[r] = a;
    }
  }

  // Moves the producer cursor to the first job of this warp in the next non-empty list (or past the end).
  __device__ void next_list() {
    for (++list_; list_ < list_count_; ++list_) {
      job_ = first_job(lists_[list_]);
      if (job_ < lists_[list_].jobs) break;
    }
    seg_ = 0;
    box_ = 0;
  }

  // Issues the producer's next box (if any) into the next slot and advances the cursor.
  __device__ void issue() {
    if (list_ >= list_count_) return;
    const JobList& list = lists_[list_];
    const Segment& seg = list.seg[seg_];
    const int slot = issued_ % kStages;
    if (lane_ == 0) {
      bars_[slot].arrive_expect_tx(kBoxBytes);
      tma_load_2d(ring_ + slot * kBoxBytes, seg.map, &bars_[slot], box_ * kBoxCols, list.row0 + job_ * kBoxRows,
                  policy_);
    }
    ++issued_;
    if (++box_ < seg.boxes) return;
    box_ = 0;
    if (++seg_ < list.segments) return;
    seg_ = 0;
    job_ += kWarps;
    if (job_ >= list.jobs) next_list();
  }

  const JobList* lists_;
  int list_count_;
  int warp_, lane_;
  unsigned char* ring_;
  MBarrier* bars_;
  uint64_t policy_;
  int list_ = 0, job_ = 0, seg_ = 0, box_ = 0;  // producer cursor
  unsigned issued_ = 0, consumed_ = 0;
};

}  // namespace clusterfusion::kernels
