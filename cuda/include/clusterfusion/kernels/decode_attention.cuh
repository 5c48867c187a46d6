// Attention of one new token over one head's KV cache, split across blocks (flash-decoding): the positions are cut
// into contiguous chunks, shared out over the blocks of the head's cluster and its helpers; each chunk's softmax
// partials (max m, sum l, unnormalised output o) go to the cluster's rank 0, which combines them in chunk order, so
// the result depends neither on timing nor on how many blocks share the head.
#pragma once
#include <cuda_fp16.h>

#include "clusterfusion/kernels/block_reduce.cuh"
#include "clusterfusion/kernels/layer_params.hpp"

namespace clusterfusion::kernels {

// The steps of DecodeAttention::partial, in order, reported to its caller as each ends (the layer's timeline).
enum class AttentionStep { kScores, kSoftmax, kValues };

template <int kHeadDim>
struct DecodeAttention {
  static_assert(kHeadDim % 8 == 0, "head_dim must be a multiple of 8 (16-byte vectors)");
  // A cache row is kVecs 16-byte vectors: a thread owns one vector of one position, kGroups positions side
  // by side, kUnroll loads in flight per thread. Head dims like 80 (10 vectors) leave a few threads idle.
  static constexpr int kVecs = kHeadDim / 8;
  static constexpr int kGroups = kThreads / kVecs;
  static constexpr int kUnroll = kAttentionUnroll;
  static constexpr int kTile = kGroups * kUnroll;
  static_assert(kTile * kVecs <= kThreads * kAttentionPartials, "score partials must fit the partials buffer");
  static_assert(kGroups * kVecs * 8 <= kThreads * kAttentionPartials, "value partials must fit the partials buffer");
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

  // The softmax partials of positions [t0, t1) of 0..position. q is rotated and scaled; k_new and v_new are the
  // new token's key and value. Hands (m, l, o[kHeadDim]) to store(i, value) as i = 0, 1, 2 + e (rank 0's shared
  // memory, or global memory for a helper, bench/NOTES.md v75); calls done(step) as each AttentionStep ends.
  template <class Store, class Done>
  __device__ static void partial(const float* q, const float* k_new, const float* v_new, const __half* k_cache,
                                 const __half* v_cache, int position, int t0, int t1, float* scores,
                                 float* partials, float* scratch, Store&& store, Done&& done) {
    const int vec = threadIdx.x % kVecs, group = threadIdx.x / kVecs;
    const bool active = group < kGroups;
    float qv[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) qv[e] = q[vec * 8 + e];

    // Scores: per tile, each thread dots its vectors, then one thread per position sums them in order.
    for (int base = t0; base < t1; base += kTile) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = base + group + u * kGroups;
        if (active && t < t1 && t != position) raw[u] = load_vec(k_cache, t, vec);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = base + group + u * kGroups;
        if (active && t < t1) {
          float kv[8];
          row_vec(raw[u], k_new, t, position, vec, kv);
          float d = 0.f;
#pragma unroll
          for (int e = 0; e < 8; ++e) d = fmaf(qv[e], kv[e], d);
          partials[(u * kGroups + group) * kVecs + vec] = d;
        }
      }
      __syncthreads();
      for (int i = threadIdx.x; i < kTile && base + i < t1; i += blockDim.x) {
        const float* p = partials + i * kVecs;  // i = u * kGroups + group: position base + i
        float s = 0.f;
        for (int v = 0; v < kVecs; ++v) s += p[v];
        scores[base + i - t0] = s;
      }
      __syncthreads();
    }
    done(AttentionStep::kScores);
    float m = -INFINITY;
    for (int i = threadIdx.x; i < t1 - t0; i += blockDim.x) m = fmaxf(m, scores[i]);
    m = block_max(m, scratch);
    float l = 0.f;
    for (int i = threadIdx.x; i < t1 - t0; i += blockDim.x) {
      const float p = __expf(scores[i] - m);
      scores[i] = p;
      l += p;
    }
    l = block_sum(l, scratch);  // its barriers also publish the probabilities
    done(AttentionStep::kSoftmax);

    // Values: each thread accumulates its vector over its positions, then the groups are summed in order.
    float o[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int base = t0; base < t1; base += kTile) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = base + group + u * kGroups;
        if (active && t < t1 && t != position) raw[u] = load_vec(v_cache, t, vec);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = base + group + u * kGroups;
        if (active && t < t1) {
          float vv[8];
          row_vec(raw[u], v_new, t, position, vec, vv);
          const float p = scores[t - t0];
#pragma unroll
          for (int e = 0; e < 8; ++e) o[e] = fmaf(p, vv[e], o[e]);
        }
      }
    }
    if (active) {
#pragma unroll
      for (int e = 0; e < 8; ++e) partials[(group * kVecs + vec) * 8 + e] = o[e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kHeadDim; e += blockDim.x) {
      float s = 0.f;
      for (int g = 0; g < kGroups; ++g) s += partials[g * kHeadDim + e];
      store(2 + e, s);
    }
    if (threadIdx.x == 0) {
      store(0, m);
      store(1, l);
    }
    done(AttentionStep::kValues);
  }

  // On rank 0, once every chunk's partials have landed: merges the head's `chunks` partials in chunk order into
  // out[kHeadDim].
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
