// A plain C++ (double precision) reference of one GPT-NeoX decode step of one layer, on host vectors.
// The kernel tests compare against it; it is itself tested against the Python float64 reference.
#pragma once
#include <vector>

#include "clusterfusion/config.hpp"

namespace clusterfusion::reference {

// Host copies of one layer's weights, row-major [out, in], as doubles.
struct HostLayer {
  std::vector<double> ln1_w, ln1_b, ln2_w, ln2_b;
  std::vector<double> w_qkv, b_qkv, w_o, b_o, w_up, b_up, w_down, b_down;
};

struct HostLayerResult {
  std::vector<double> out;      // [hidden] x + attn + mlp
  std::vector<double> attn;     // [hidden] per-head attention outputs, concatenated (before W_o)
  std::vector<double> mlp_act;  // [ffn] GELU(W_up LN2(x) + b_up)
  std::vector<double> k, v;     // [heads, head_dim]: the key (rotated) and value appended at `position`
};

// k_cache / v_cache: [heads][position][head_dim] (positions 0..position-1 of this layer).
HostLayerResult neox_layer(const ModelConfig& config, const HostLayer& w, const std::vector<double>& x,
                           const std::vector<double>& k_cache, const std::vector<double>& v_cache,
                           int position);

}  // namespace clusterfusion::reference
