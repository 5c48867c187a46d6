// Token selection by one block: greedy from the argmax, or a draw from softmax(logits / T) restricted to
// top-k and top-p. Thresholds are found by radix selection over order-preserving keys of the logits (four
// passes of 8-bit digits), weighing each token by 1 (top-k) or by its probability (top-p). Probabilities are
// 40-bit fixed-point integers, so every sum, and therefore the token, is exact and run-to-run identical.
#pragma once
#include <climits>
#include <cmath>
#include <cstdint>

#include "clusterfusion/kernels/argmax.cuh"
#include "clusterfusion/kernels/dependent_launch.cuh"
#include "clusterfusion/kernels/philox.cuh"
#include "clusterfusion/kernels/decode_launch.hpp"

namespace clusterfusion::kernels {

constexpr int kSelectThreads = 1024;
constexpr float kMassScale = 1099511627776.0f;  // 2^40: the most likely token weighs exactly this much

using Mass = unsigned long long;

struct SelectShared {
  Mass hist[256];
  Mass warp_totals[kSelectThreads / 32];
  ArgmaxPartial argmax[kSelectThreads / 32];
  Mass above;  // the weight of the digits above the chosen one
  int digit;
  int token;
};

// Keys that order like the floats (NaN lowest): key(a) < key(b) iff a < b.
__device__ __forceinline__ uint32_t order_key(float v) {
  if (v != v) return 0u;
  const uint32_t bits = __float_as_uint(v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Every thread gets the sum of v over the threads before it (and the block's total). Contains two __syncthreads.
__device__ __forceinline__ Mass block_exclusive_scan(Mass v, Mass* warp_totals, Mass& total) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  Mass inclusive = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const Mass n = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += n;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  Mass before = 0;
  total = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) before += warp_totals[w];
    total += warp_totals[w];
  }
  __syncthreads();
  return before + inclusive - v;
}

// Among the tokens with key >= floor_key, the largest key K such that those with key >= K weigh at least
// `target` in all (target >= 1 and at most their total weight): with unit weights, the key of the target-th
// largest logit. Most significant digit first; each pass histograms the candidates that share the digits found.
template <typename WeightOf>
__device__ uint32_t radix_select(const float* __restrict__ logits, int vocab, uint32_t floor_key, Mass target,
                                 WeightOf weight_of, SelectShared& s) {
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) s.hist[d] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float logit = logits[i];
      const uint32_t key = order_key(logit);
      if (key >= floor_key && (key & mask) == prefix) {
        const Mass w = weight_of(logit);
        if (w != 0) atomicAdd(&s.hist[(key >> shift) & 255u], w);
      }
    }
    __syncthreads();
    // Thread t takes digit 255 - t: its inclusive scan is the weight of the digits >= 255 - t.
    const int digit = 255 - static_cast<int>(threadIdx.x);
    const Mass h = digit >= 0 ? s.hist[digit] : 0;
    Mass total;
    const Mass above = block_exclusive_scan(h, s.warp_totals, total);
    if (digit >= 0 && above < target && above + h >= target) {
      s.digit = digit;
      s.above = above;
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(s.digit) << shift;
    mask |= 255u << shift;
    target -= s.above;
    __syncthreads();
  }
  return prefix;
}

// A token drawn from the tokens with key >= floor_key, each with its fixed-point probability, by inverse CDF in
// token order: thread t owns a contiguous run of tokens, a block scan gives each run's start. -1 if they weigh 0.
template <typename WeightOf>
__device__ int draw(const float* __restrict__ logits, int vocab, uint32_t floor_key, WeightOf weight_of,
                    uint64_t random, SelectShared& s) {
  const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int lo = min(vocab, static_cast<int>(threadIdx.x) * chunk), hi = min(vocab, lo + chunk);
  Mass own = 0;
  for (int i = lo; i < hi; ++i) {
    if (order_key(logits[i]) >= floor_key) own += weight_of(logits[i]);
  }
  if (threadIdx.x == 0) s.token = -1;
  Mass total;
  const Mass start = block_exclusive_scan(own, s.warp_totals, total);
  const Mass target = __umul64hi(random, total);  // uniform in [0, total)
  if (total != 0 && start <= target && target < start + own) {
    Mass cumulative = start;
    for (int i = lo; i < hi; ++i) {
      if (order_key(logits[i]) >= floor_key) cumulative += weight_of(logits[i]);
      if (cumulative > target) {
        s.token = i;
        break;
      }
    }
  }
  __syncthreads();
  return s.token;
}

// The sum of the weights of the tokens with key >= floor_key.
template <typename WeightOf>
__device__ Mass total_weight(const float* __restrict__ logits, int vocab, uint32_t floor_key, WeightOf weight_of,
                             SelectShared& s) {
  Mass own = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (order_key(logits[i]) >= floor_key) own += weight_of(logits[i]);
  }
  Mass total;
  block_exclusive_scan(own, s.warp_totals, total);
  return total;
}

// A sampled token (temperature > 0), or -1 when no token has weight (non-finite logits).
__device__ int sample_token(const float* __restrict__ logits, int vocab, float max_logit, const TokenSelection& p,
                            int position, SelectShared& s) {
  const float inv_temperature = 1.0f / p.temperature;
  // NaN (from a non-finite logit) fails the comparison and weighs 0.
  const auto mass = [=](float logit) -> Mass {
    const float prob = expf((logit - max_logit) * inv_temperature);
    return prob > 0.0f ? static_cast<Mass>(prob * kMassScale) : 0;
  };
  uint32_t floor_key = 0;
  if (p.top_k > 0 && p.top_k < vocab) {
    floor_key = radix_select(logits, vocab, 0u, static_cast<Mass>(p.top_k), [](float) -> Mass { return 1; }, s);
  }
  if (p.top_p < 1.0f) {
    const Mass kept = total_weight(logits, vocab, floor_key, mass, s);
    if (kept == 0) return -1;
    const double want = ceil(static_cast<double>(p.top_p) * static_cast<double>(kept));
    const Mass target = want < 1.0 ? 1 : (want > static_cast<double>(kept) ? kept : static_cast<Mass>(want));
    floor_key = radix_select(logits, vocab, floor_key, target, mass, s);
  }
  return draw(logits, vocab, floor_key, mass, philox_u64(p.seed, static_cast<uint64_t>(position)), s);
}

// One block of kSelectThreads. The argmax comes from the LM head's per-block partials when given, otherwise from
// the logits. Writes tokens[p + 1] and advances *position, p = *position on entry (the Philox counter).
__global__ void __launch_bounds__(kSelectThreads)
    select_token_kernel(const float* __restrict__ logits, int vocab, const ArgmaxPartial* __restrict__ partials,
                        int num_partials, TokenSelection params, int* position, int* tokens) {
  __shared__ SelectShared s;
  wait_for_previous_kernel();  // launched to overlap the LM head: its logits and partials
  const int p = *position;
  ArgmaxPartial best{-INFINITY, INT_MAX};
  if (partials != nullptr) {
    for (int i = threadIdx.x; i < num_partials; i += blockDim.x) best = argmax_combine(best, partials[i]);
  } else {
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      if (argmax_beats(comparable(logits[i]), i, best.value, best.index)) best = {comparable(logits[i]), i};
    }
  }
  best = block_argmax(best, s.argmax);
  int token = best.index;
  if (params.temperature > 0.0f && params.top_k != 1) {
    const int drawn = sample_token(logits, vocab, best.value, params, p, s);
    if (drawn >= 0) token = drawn;
  }
  __syncthreads();  // every thread has read *position
  if (threadIdx.x == 0) {
    tokens[p + 1] = token;
    *position = p + 1;
  }
}

}  // namespace clusterfusion::kernels
