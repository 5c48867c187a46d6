// A block's job list as a planning launch writes it for later launches (bench/NOTES.md v55): position-independent
// lists are built once when the layer is built and loaded by each launch's blocks at entry.
#pragma once
#include "clusterfusion/kernels/weight_stream.cuh"

namespace clusterfusion::kernels {

// A JobList in global memory, written by one launch for a block of another (planned lists, decoder_layer.cuh): its
// tensor maps as indices into the launch's maps and its vectors as byte offsets into shared memory, -1 for none.
struct alignas(16) PlannedList {
  int row0, jobs, chunks, first_warp, segments, box_begin, box_end;
  int map[2], vec[2], boxes[2], first_box[2];
  int padding;  // a whole 64 bytes: four 16-byte loads and stores, every byte written

  __device__ PlannedList() = default;
  __device__ PlannedList(const JobList& list, const CUtensorMap* maps, const unsigned char* smem)
      : row0(list.row0), jobs(list.jobs), chunks(list.chunks), first_warp(list.first_warp), segments(list.segments),
        box_begin(list.box_begin), box_end(list.box_end), padding(0) {
    for (int s = 0; s < 2; ++s) {
      const Segment& seg = list.seg[s];
      map[s] = seg.map != nullptr ? int(seg.map - maps) : -1;
      vec[s] = seg.vec != nullptr ? int(reinterpret_cast<const unsigned char*>(seg.vec) - smem) : -1;
      boxes[s] = seg.boxes;
      first_box[s] = seg.first_box;
    }
  }
  __device__ JobList job_list(const CUtensorMap* maps, const unsigned char* smem) const {
    JobList list{row0, jobs, chunks, first_warp, segments, {}, box_begin, box_end};
    for (int s = 0; s < 2; ++s) {
      list.seg[s] = Segment{map[s] >= 0 ? maps + map[s] : nullptr,
                            vec[s] >= 0 ? reinterpret_cast<const float*>(smem + vec[s]) : nullptr, boxes[s],
                            first_box[s]};
    }
    return list;
  }
};
static_assert(sizeof(PlannedList) == 64, "four 16-byte loads per list");

}  // namespace clusterfusion::kernels
