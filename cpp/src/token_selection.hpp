// SamplingParams as the selection kernel takes them (private to the library).
#pragma once
#include "clusterfusion/kernels/decode_launch.hpp"
#include "clusterfusion/sampling.hpp"

namespace clusterfusion {

kernels::TokenSelection token_selection(const SamplingParams& params);

}  // namespace clusterfusion
