// Choosing the next token from the logits, on the device: greedy, or sampling with temperature, top-k and
// top-p from a seeded counter-based generator (Philox), so the same seed gives the same tokens.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

namespace clusterfusion {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (the largest logit; ties go to the lowest token id)
  int top_k = 0;             // keep the k largest logits (and any tied with the k-th); 0: no limit
  float top_p = 1.0f;        // then keep the smallest most-likely set with probability >= top_p; 1: no limit
  std::uint64_t seed = 0;    // the Philox key; the counter is the position of the step

  // Throws std::invalid_argument naming the field, e.g. "SamplingParams.top_p: must be in (0, 1] (got 0)".
  void validate() const;
};

// The decode step's last stage on its own: picks a token from `logits` ([vocab] float32, device memory) as
// `params` say (validated first), with Philox counter p = *position. Writes tokens[p + 1] and sets
// *position = p + 1 (`position` and `tokens` are device ints). The same inputs give the same token.
// Probabilities are softmax(logits / temperature) in 40-bit fixed point, so the selection is exact integer
// arithmetic; tokens whose probability relative to the best is below 2^-40 are never drawn.
void select_token(const float* logits, int vocab, const SamplingParams& params, int* position, int* tokens,
                  cudaStream_t stream = nullptr);

}  // namespace clusterfusion
