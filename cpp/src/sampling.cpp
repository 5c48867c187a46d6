#include "clusterfusion/sampling.hpp"

#include <cmath>
#include <sstream>
#include <stdexcept>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/kernels/decode_launch.hpp"
#include "token_selection.hpp"

namespace clusterfusion {

namespace {

template <typename T>
[[noreturn]] void fail(const char* field, const char* what, T got) {
  std::ostringstream msg;
  msg << "SamplingParams." << field << ": " << what << " (got " << got << ")";
  throw std::invalid_argument(msg.str());
}

}  // namespace

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) fail("temperature", "must be finite and >= 0", temperature);
  if (top_k < 0) fail("top_k", "must be >= 0 (0: no limit)", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p", "must be in (0, 1] (1: no limit)", top_p);
}

kernels::TokenSelection token_selection(const SamplingParams& p) {
  return {p.temperature, p.top_k, p.top_p, p.seed};
}

void select_token(const float* logits, int vocab, const SamplingParams& params, int* position, int* tokens,
                  cudaStream_t stream) {
  params.validate();
  if (vocab <= 0) throw std::invalid_argument("vocab: must be > 0 (got " + std::to_string(vocab) + ")");
  if (logits == nullptr || position == nullptr || tokens == nullptr)
    throw std::invalid_argument("select_token: logits, position and tokens must be device pointers, got a null one");
  CF_CUDA_CHECK(kernels::launch_select_token(logits, vocab, nullptr, 0, token_selection(params), position, tokens,
                                             false, stream));
}

}  // namespace clusterfusion
