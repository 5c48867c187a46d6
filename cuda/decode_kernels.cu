// Launches the whole-model decode kernels: embedding, final norm + LM head, token selection.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "clusterfusion/kernels/decode_launch.hpp"
#include "clusterfusion/kernels/embedding.cuh"
#include "clusterfusion/kernels/lm_head.cuh"
#include "clusterfusion/kernels/sampling.cuh"

namespace clusterfusion::kernels {

namespace {

#define CF_RETURN_IF_ERROR(expr)                                                    \
  do {                                                                              \
    if (const cudaError_t status_ = (expr); status_ != cudaSuccess) return status_; \
  } while (0)

// A launch through the runtime call that returns the launch's own status. cudaGetLastError after <<<>>> would
// also return, and clear, an error that other code left pending, and report it as this launch's.
// overlap: programmatic dependent launch, the kernel starting while the previous one in the stream finishes (it
// waits for that one before reading its results).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), int blocks, int threads, std::size_t smem, bool overlap,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr = {};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attr;
  config.numAttrs = overlap ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

template <class F>
auto with_norm(NormKind norm, F&& f) {
  return norm == NormKind::LayerNorm ? f(&final_norm_lm_head_kernel<NormKind::LayerNorm>)
                                     : f(&final_norm_lm_head_kernel<NormKind::RMSNorm>);
}

}  // namespace

cudaError_t plan_lm_head(int vocab, int hidden, NormKind norm, LmHeadPlan* out) {
  if (hidden % 8 != 0)
    throw std::invalid_argument("ModelConfig.hidden: the LM head reads 16-byte vectors, hidden must be a multiple "
                                "of 8 (got " + std::to_string(hidden) + ")");
  LmHeadPlan plan;
  plan.smem = static_cast<std::size_t>(hidden) * sizeof(float);
  int device = 0, sms = 0, per_sm = 0;
  CF_RETURN_IF_ERROR(with_norm(norm, [&](auto kernel) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem));
  }));
  CF_RETURN_IF_ERROR(cudaGetDevice(&device));
  CF_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CF_RETURN_IF_ERROR(with_norm(norm, [&](auto kernel) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kLmHeadThreads, plan.smem);
  }));
  if (per_sm == 0)
    throw std::invalid_argument("ModelConfig.hidden: " + std::to_string(hidden) + " floats of the final norm's "
                                "output do not fit in one block's shared memory");
  // Two resident blocks per SM keep ~64 KB of loads in flight there; every block owns at least one row per warp.
  const int warps = kLmHeadThreads / 32;
  plan.blocks = std::max(1, std::min(std::min(per_sm, 2) * sms, vocab / warps));
  *out = plan;
  return cudaSuccess;
}

cudaError_t prepare_decode_kernels() {
  cudaFuncAttributes attrs;
  for (const void* kernel : {reinterpret_cast<const void*>(&embedding_kernel),
                             reinterpret_cast<const void*>(&select_token_kernel),
                             reinterpret_cast<const void*>(&store_token_kernel),
                             reinterpret_cast<const void*>(&store_int_kernel)}) {
    CF_RETURN_IF_ERROR(cudaFuncGetAttributes(&attrs, kernel));
  }
  return cudaSuccess;
}

cudaError_t launch_embedding(const __half* table, const int* tokens, const int* position, __half* out, int hidden,
                             cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int blocks = (hidden / 8 + kThreads - 1) / kThreads;
  return launch(embedding_kernel, blocks, kThreads, 0, false, stream, table, tokens, position, out, hidden);
}

cudaError_t launch_final_norm_lm_head(const LmHeadArgs& a, const LmHeadPlan& plan, bool overlap_previous,
                                      cudaStream_t stream) {
  return with_norm(a.norm, [&](auto kernel) {
    return launch(kernel, plan.blocks, kLmHeadThreads, plan.smem, overlap_previous, stream, a.x, a.norm_weight,
                  a.norm_bias, a.eps, a.lm_head, a.vocab, a.hidden, a.logits, a.partials);
  });
}

cudaError_t launch_select_token(const float* logits, int vocab, const ArgmaxPartial* partials, int num_partials,
                                const TokenSelection& selection, int* position, int* tokens, bool overlap_previous,
                                cudaStream_t stream) {
  return launch(select_token_kernel, 1, kSelectThreads, 0, overlap_previous, stream, logits, vocab, partials,
                num_partials, selection, position, tokens);
}

cudaError_t launch_store_token(int* tokens, const int* position, int token, cudaStream_t stream) {
  return launch(store_token_kernel, 1, 1, 0, false, stream, tokens, position, token);
}

cudaError_t launch_store_int(int* dst, int value, cudaStream_t stream) {
  return launch(store_int_kernel, 1, 1, 0, false, stream, dst, value);
}

}  // namespace clusterfusion::kernels
