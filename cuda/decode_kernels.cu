// Launches the whole-model decode kernels: embedding, final LayerNorm + LM head, token selection.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/kernels/decode_launch.hpp"
#include "clusterfusion/kernels/embedding.cuh"
#include "clusterfusion/kernels/lm_head.cuh"
#include "clusterfusion/kernels/sampling.cuh"

namespace clusterfusion::kernels {

LmHeadPlan plan_lm_head(int vocab, int hidden) {
  if (hidden % 8 != 0)
    throw std::invalid_argument("ModelConfig.hidden: the LM head reads 16-byte vectors, hidden must be a multiple "
                                "of 8 (got " + std::to_string(hidden) + ")");
  LmHeadPlan plan;
  plan.smem = static_cast<std::size_t>(hidden) * sizeof(float);
  auto* kernel = &final_norm_lm_head_kernel;
  CF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem)));
  int device = 0, sms = 0, per_sm = 0;
  CF_CUDA_CHECK(cudaGetDevice(&device));
  CF_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CF_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kLmHeadThreads, plan.smem));
  if (per_sm == 0)
    throw std::invalid_argument("ModelConfig.hidden: " + std::to_string(hidden) + " floats of LayerNorm output do "
                                "not fit in one block's shared memory");
  // Two resident blocks per SM keep ~64 KB of loads in flight there; every block owns at least one row per warp.
  const int warps = kLmHeadThreads / 32;
  plan.blocks = std::max(1, std::min(std::min(per_sm, 2) * sms, vocab / warps));
  return plan;
}

void launch_embedding(const __half* table, const int* tokens, const int* position, __half* out, int hidden,
                      cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int blocks = (hidden / 8 + kThreads - 1) / kThreads;
  embedding_kernel<<<blocks, kThreads, 0, stream>>>(table, tokens, position, out, hidden);
  CF_CHECK_LAUNCH("embedding_kernel");
}

void launch_final_norm_lm_head(const LmHeadArgs& a, const LmHeadPlan& plan, cudaStream_t stream) {
  final_norm_lm_head_kernel<<<plan.blocks, kLmHeadThreads, plan.smem, stream>>>(
      a.x, a.norm_weight, a.norm_bias, a.eps, a.lm_head, a.vocab, a.hidden, a.logits, a.partials);
  CF_CHECK_LAUNCH("final_norm_lm_head_kernel");
}

void launch_select_token(const float* logits, int vocab, const ArgmaxPartial* partials, int num_partials,
                         const SamplingParams& params, int* position, int* tokens, cudaStream_t stream) {
  select_token_kernel<<<1, kSelectThreads, 0, stream>>>(logits, vocab, partials, num_partials, params, position,
                                                         tokens);
  CF_CHECK_LAUNCH("select_token_kernel");
}

void launch_store_token(int* tokens, const int* position, int token, cudaStream_t stream) {
  store_token_kernel<<<1, 1, 0, stream>>>(tokens, position, token);
  CF_CHECK_LAUNCH("store_token_kernel");
}

void launch_store_int(int* dst, int value, cudaStream_t stream) {
  store_int_kernel<<<1, 1, 0, stream>>>(dst, value);
  CF_CHECK_LAUNCH("store_int_kernel");
}

}  // namespace clusterfusion::kernels
