// Attention of one new token over one head's KV cache, split across the blocks of a cluster
// (flash-decoding): the positions are cut into contiguous chunks, shared out over the blocks; each chunk's
// softmax partials (max m, sum l, unnormalised output o) go to rank 0 through distributed shared memory, which
// combines them in chunk order, so the result depends neither on timing nor on how many blocks share the head.
// Inside a block the same holds one level down: each segment of a warp keeps a running softmax of its positions,
// the segments merge by shuffles in a fixed tree and the warps in index order.
#pragma once
#ifndef CF_V_PREFETCH
#define CF_V_PREFETCH 0
#endif
#include <cuda_fp16.h>

#include "clusterfusion/kernels/cluster.cuh"
#include "clusterfusion/kernels/layer_params.hpp"

namespace clusterfusion::kernels {

// The steps of DecodeAttention::partial, in order, reported to its caller as each ends (the layer's timeline):
// every tile of the chunk through the segments' running softmax, the segments of each warp merged, the warps merged.
enum class AttentionStep { kTiles, kWarpMerge, kBlockMerge };

template <int kHeadDim>
struct DecodeAttention {
  static_assert(kHeadDim % 8 == 0, "head_dim must be a multiple of 8 (16-byte vectors)");
  // A cache row is kVecs 16-byte vectors, read by a segment of kSegLanes lanes (a power of two, so that its sums are
  // shuffles inside the segment), lane v its vector v; a warp holds kSegsPerWarp segments, the block kSegs, each
  // kAttentionUnroll rows in flight per tile. Head dims like 80 (10 vectors in 16 lanes) leave lanes idle.
  static constexpr int kVecs = kHeadDim / 8;
  static_assert(kVecs <= 32, "one cache row per warp at most");
  static constexpr int kSegLanes = kVecs <= 4 ? 4 : kVecs <= 8 ? 8 : kVecs <= 16 ? 16 : 32;
  static constexpr int kSegsPerWarp = 32 / kSegLanes;
  static constexpr int kSegs = kWarps * kSegsPerWarp;
  static constexpr int kUnroll = kAttentionUnroll;
  static constexpr int kTile = kSegs * kUnroll;
  static_assert(kHeadDim / 2 <= kThreads, "one thread per rotary pair");

  // Thread i's rotation at `position` for pair (i, i + rotary_dims/2), inverse frequency `inv_freq`: computed
  // before the layer's input is waited for, off the path from q|k|v to the scores. The angle is formed and reduced
  // modulo 2*pi in double, so it stays exact to float rounding at any cache length; sin and cos of the reduced
  // angle are then cheap in float.
  struct Rotation {
    float cos = 1.f, sin = 0.f;
    __device__ Rotation() = default;
    __device__ Rotation(int position, double inv_freq) {
      const double theta = position * inv_freq;
      constexpr double kTwoPi = 6.283185307179586;
      sincosf(float(theta - kTwoPi * rint(theta / kTwoPi)), &sin, &cos);
    }
  };

  // Rotates the first rotary_dims of q and k (rotate-half) and scales q by 1/sqrt(d). Thread i rotates pair
  // (i, i + rotary_dims/2) by `rotation`, its own (rotary_dims/2 <= blockDim.x).
  __device__ static void rotary(float* q, float* k, int rotary_dims, Rotation rotation) {
    const int half_dims = rotary_dims / 2;
    if (const int i = threadIdx.x; i < half_dims) {
      const float c = rotation.cos, s = rotation.sin;
      const float q0 = q[i], q1 = q[i + half_dims], k0 = k[i], k1 = k[i + half_dims];
      q[i] = q0 * c - q1 * s;
      q[i + half_dims] = q1 * c + q0 * s;
      k[i] = k0 * c - k1 * s;
      k[i + half_dims] = k1 * c + k0 * s;
    }
    __syncthreads();
    const float scale = rsqrtf(float(kHeadDim));
    for (int i = threadIdx.x; i < kHeadDim; i += blockDim.x) q[i] *= scale;
    __syncthreads();
  }

  // Vector `vec` of cache row t: 16 bytes through the read-only path (the cache is not written while read).
  __device__ static uint4 load_vec(const __half* cache, int t, int vec) {
    uint4 raw;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(raw.x), "=r"(raw.y), "=r"(raw.z), "=r"(raw.w)
                 : "l"(cache + std::size_t(t) * kHeadDim + vec * 8));
    return raw;
  }

  // Asks L1 for vector `vec` of cache row t (no register, nothing waits for it).
  __device__ static void prefetch_l1(const __half* cache, int t, int vec) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(cache + std::size_t(t) * kHeadDim + vec * 8));
  }

  // Vector `vec` of position t as 8 floats: the loaded cache vector, or the new token's (not yet in the cache).
  __device__ static void row_vec(uint4 raw, const float* fresh, int t, int position, int vec, float (&out)[8]) {
    if (t == position) {
#pragma unroll
      for (int e = 0; e < 8; ++e) out[e] = fresh[vec * 8 + e];
      return;
    }
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 f = __half22float2(h[e]);
      out[2 * e] = f.x;
      out[2 * e + 1] = f.y;
    }
  }

  // A running softmax over some positions: max m of their scores, l = sum of exp(s - m), and this lane's 8
  // components of o = sum of exp(s - m) v. Empty: m = -inf, l = 0, o = 0.
  struct Running {
    float m = -INFINITY, l = 0.f;
    float o[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  };
  // exp(m - to) for to >= m, 0 for an empty max (no inf - inf).
  __device__ static float weight(float m, float to) { return m == -INFINITY ? 0.f : __expf(m - to); }
  // A lane's state merged with its shuffle partner's, the lower segment's terms first (`upper`: this lane is in the
  // upper one), so that both lanes of the pair compute the same bits.
  __device__ static Running merge(const Running& mine, const Running& other, bool upper) {
    Running r;
    r.m = fmaxf(mine.m, other.m);
    const float a = weight(upper ? other.m : mine.m, r.m), b = weight(upper ? mine.m : other.m, r.m);
    r.l = fmaf(upper ? mine.l : other.l, b, __fmul_rn(upper ? other.l : mine.l, a));
#pragma unroll
    for (int e = 0; e < 8; ++e)
      r.o[e] = fmaf(upper ? mine.o[e] : other.o[e], b, __fmul_rn(upper ? other.o[e] : mine.o[e], a));
    return r;
  }

  // The softmax partials of positions [t0, t1) of 0..position. q is rotated and scaled; k_new and v_new are the
  // new token's key and value. Writes (m, l, o[kHeadDim]) into `slot` of rank 0's shared memory, counted on rank
  // 0's barrier `received`, through this block's `partials` (kWarps x (kHeadDim + 2) floats, SmemLayout::partials);
  // calls done(step) as each AttentionStep ends.
  template <class Done>
  __device__ static void partial(const float* q, const float* k_new, const float* v_new, const __half* k_cache,
                                 const __half* v_cache, int position, int t0, int t1, float* partials, float* slot,
                                 MBarrier* received, Done&& done) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int vec = lane % kSegLanes, seg = warp * kSegsPerWarp + lane / kSegLanes;
    const bool reads = vec < kVecs;

    // Per tile, segment g takes positions base + g + u * kSegs: its lanes dot their vectors and sum them by
    // shuffles, then fold the tile into the segment's running softmax with the values' rows.
    Running run;
    for (int base = t0; base < t1; base += kTile) {
      float s[kUnroll];
      {
        float qv[8];  // loaded per tile: not held in registers through the values
#pragma unroll
        for (int e = 0; e < 8; ++e) qv[e] = reads ? q[vec * 8 + e] : 0.f;
        uint4 raw[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int t = base + seg + u * kSegs;
          if (reads && t < t1 && t != position) {
            raw[u] = load_vec(k_cache, t, vec);
#if CF_V_PREFETCH  // v65 A/B only (1: on)
            prefetch_l1(v_cache, t, vec);  // the values' rows travel to L1 under the scores
#endif
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int t = base + seg + u * kSegs;
          float d = 0.f;
          if (reads && t < t1) {
            float kv[8];
            row_vec(raw[u], k_new, t, position, vec, kv);
#pragma unroll
            for (int e = 0; e < 8; ++e) d = fmaf(qv[e], kv[e], d);
          }
#pragma unroll
          for (int off = kSegLanes / 2; off > 0; off /= 2) d += __shfl_xor_sync(0xffffffffu, d, off);
          s[u] = t < t1 ? d : -INFINITY;
        }
      }
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = base + seg + u * kSegs;
        if (reads && t < t1 && t != position) raw[u] = load_vec(v_cache, t, vec);
      }
      float m = run.m;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) m = fmaxf(m, s[u]);
      // Rounded products and sums (no contraction into fma): every kernel that inlines this computes the same bits.
      const float a = weight(run.m, m);
      run.m = m;
      run.l = __fmul_rn(run.l, a);
#pragma unroll
      for (int e = 0; e < 8; ++e) run.o[e] = __fmul_rn(run.o[e], a);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = base + seg + u * kSegs;
        const float p = weight(s[u], m);
        run.l = __fadd_rn(run.l, p);
        if (reads && t < t1) {
          float vv[8];
          row_vec(raw[u], v_new, t, position, vec, vv);
#pragma unroll
          for (int e = 0; e < 8; ++e) run.o[e] = fmaf(p, vv[e], run.o[e]);
        }
      }
    }
    done(AttentionStep::kTiles);

    // The segments of a warp, pairwise in a fixed tree; segment 0's lanes then hold the warp's partials.
#pragma unroll
    for (int off = kSegLanes; off < 32; off *= 2) {
      Running other;
      other.m = __shfl_xor_sync(0xffffffffu, run.m, off);
      other.l = __shfl_xor_sync(0xffffffffu, run.l, off);
#pragma unroll
      for (int e = 0; e < 8; ++e) other.o[e] = __shfl_xor_sync(0xffffffffu, run.o[e], off);
      run = merge(run, other, lane & off);
    }
    float* mine = partials + warp * (kHeadDim + 2);
    if (lane < kSegLanes && reads) {
#pragma unroll
      for (int e = 0; e < 8; ++e) mine[2 + vec * 8 + e] = run.o[e];
    }
    if (lane == 0) {
      mine[0] = run.m;
      mine[1] = run.l;
    }
    __syncthreads();
    done(AttentionStep::kWarpMerge);

    // The warps in index order, one output component per thread.
    for (int e = threadIdx.x; e < kHeadDim; e += blockDim.x) {
      float m = -INFINITY;
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, partials[w * (kHeadDim + 2)]);
      float l = 0.f, o = 0.f;
      for (int w = 0; w < kWarps; ++w) {
        const float* p = partials + w * (kHeadDim + 2);
        const float a = weight(p[0], m);
        l = fmaf(p[1], a, l);
        o = fmaf(p[2 + e], a, o);
      }
      dsmem_store_counted(slot + 2 + e, 0, o, received);
      if (e == 0) {
        dsmem_store_counted(slot, 0, m, received);
        dsmem_store_counted(slot + 1, 0, l, received);
      }
    }
    done(AttentionStep::kBlockMerge);
  }

  // On rank 0, after a cluster barrier: merges the head's `chunks` partials in chunk order into out[kHeadDim].
  __device__ static void combine_partials(const float* combine, int chunks, float* out) {
    for (int e = threadIdx.x; e < kHeadDim; e += blockDim.x) {
      float m = -INFINITY;
      for (int c = 0; c < chunks; ++c) m = fmaxf(m, combine[c * (kHeadDim + 2)]);
      float l = 0.f, o = 0.f;
      for (int c = 0; c < chunks; ++c) {
        const float* slot = combine + c * (kHeadDim + 2);
        if (slot[1] == 0.f) continue;  // a chunk with no positions
        const float w = __expf(slot[0] - m);
        l = fmaf(slot[1], w, l);
        o = fmaf(slot[2 + e], w, o);
      }
      out[e] = o / l;
    }
  }
};

}  // namespace clusterfusion::kernels
