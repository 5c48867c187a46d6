// Host entry points of the whole-model decode kernels (defined in cuda/decode_kernels.cu): embedding lookup,
// final norm + LM head, token selection, and the two small stores that feed a captured step. Each returns the
// status of its CUDA calls.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/kernels/argmax_partial.hpp"
#include "clusterfusion/kernels/model_traits.hpp"

namespace clusterfusion::kernels {

// How a step picks its token (the runtime's SamplingParams, validated there).
struct TokenSelection {
  float temperature;  // 0: greedy
  int top_k;          // 0: no limit
  float top_p;        // 1: no limit
  std::uint64_t seed;
};

// The LM head's grid for one model on the current device: `blocks` argmax partials come out of it.
struct LmHeadPlan {
  int blocks = 0;
  std::size_t smem = 0;
};
// Throws std::invalid_argument naming ModelConfig.hidden for a size the kernel cannot take.
cudaError_t plan_lm_head(int vocab, int hidden, NormKind norm, LmHeadPlan* plan);

// Loads the step's other kernels (embedding, token selection, the stores) on the current device, so that none is
// first launched inside the step's graph capture.
cudaError_t prepare_decode_kernels();

// out = table[tokens[*position]] ([hidden] float16).
cudaError_t launch_embedding(const __half* table, const int* tokens, const int* position, __half* out, int hidden,
                             cudaStream_t stream);

struct LmHeadArgs {
  const __half* x;  // [hidden]: the last layer's output
  NormKind norm;
  const __half* norm_weight;
  const __half* norm_bias;  // LayerNorm only
  float eps;
  const __half* lm_head;  // [vocab, hidden]
  int vocab, hidden;
  float* logits;             // [vocab]
  ArgmaxPartial* partials;   // [plan.blocks]
};
// overlap_previous: started while the previous kernel in the stream (the last layer) finishes.
cudaError_t launch_final_norm_lm_head(const LmHeadArgs& args, const LmHeadPlan& plan, bool overlap_previous,
                                      cudaStream_t stream);

// Reads p = *position, writes tokens[p + 1], sets *position = p + 1. partials may be null (argmax over logits).
// overlap_previous: started while the previous kernel in the stream (the LM head) finishes.
cudaError_t launch_select_token(const float* logits, int vocab, const ArgmaxPartial* partials, int num_partials,
                                const TokenSelection& selection, int* position, int* tokens, bool overlap_previous,
                                cudaStream_t stream);

// tokens[*position] = token.
cudaError_t launch_store_token(int* tokens, const int* position, int token, cudaStream_t stream);
// *dst = value.
cudaError_t launch_store_int(int* dst, int value, cudaStream_t stream);

}  // namespace clusterfusion::kernels
