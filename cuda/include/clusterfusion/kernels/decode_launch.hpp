// Host entry points of the whole-model decode kernels (defined in cuda/decode_kernels.cu): embedding lookup,
// final LayerNorm + LM head, token selection, and the two small stores that feed a captured step.
#pragma once
#include <cstddef>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/kernels/argmax_partial.hpp"
#include "clusterfusion/sampling.hpp"

namespace clusterfusion::kernels {

// The LM head's grid for one model on the current device: `blocks` argmax partials come out of it.
struct LmHeadPlan {
  int blocks = 0;
  std::size_t smem = 0;
};
LmHeadPlan plan_lm_head(int vocab, int hidden);

// out = table[tokens[*position]] ([hidden] float16).
void launch_embedding(const __half* table, const int* tokens, const int* position, __half* out, int hidden,
                      cudaStream_t stream);

struct LmHeadArgs {
  const __half* x;  // [hidden]: the last layer's output
  const __half* norm_weight;
  const __half* norm_bias;
  float eps;
  const __half* lm_head;  // [vocab, hidden]
  int vocab, hidden;
  float* logits;             // [vocab]
  ArgmaxPartial* partials;   // [plan.blocks]
};
void launch_final_norm_lm_head(const LmHeadArgs& args, const LmHeadPlan& plan, cudaStream_t stream);

// Reads p = *position, writes tokens[p + 1], sets *position = p + 1. partials may be null (argmax over logits).
void launch_select_token(const float* logits, int vocab, const ArgmaxPartial* partials, int num_partials,
                         const SamplingParams& params, int* position, int* tokens, cudaStream_t stream);

// tokens[*position] = token.
void launch_store_token(int* tokens, const int* position, int token, cudaStream_t stream);
// *dst = value.
void launch_store_int(int* dst, int value, cudaStream_t stream);

}  // namespace clusterfusion::kernels
