#include "clusterfusion/host_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace clusterfusion::reference {

namespace {

using Vec = std::vector<double>;

void check_size(const Vec& v, const char* name, std::size_t expected) {
  if (v.size() != expected) {
    throw std::invalid_argument(std::string("reference::neox_layer: ") + name + ": expected " +
                                std::to_string(expected) + " values, got " + std::to_string(v.size()));
  }
}

// LayerNorm over all of x: mean and biased (divide by n) variance, as torch.nn.LayerNorm.
Vec layer_norm(const Vec& x, const Vec& weight, const Vec& bias, double eps) {
  const double n = static_cast<double>(x.size());
  double mean = 0.0;
  for (double xi : x) mean += xi;
  mean /= n;
  double var = 0.0;
  for (double xi : x) var += (xi - mean) * (xi - mean);
  var /= n;
  const double inv_std = 1.0 / std::sqrt(var + eps);
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - mean) * inv_std * weight[i] + bias[i];
  return y;
}

// y = W x + b, W row-major [b.size(), x.size()].
Vec linear(const Vec& w, const Vec& b, const Vec& x) {
  const std::size_t rows = b.size(), cols = x.size();
  Vec y(rows);
  for (std::size_t r = 0; r < rows; ++r) {
    double acc = b[r];
    const double* row = w.data() + r * cols;
    for (std::size_t c = 0; c < cols; ++c) acc += row[c] * x[c];
    y[r] = acc;
  }
  return y;
}

double gelu(double z) { return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0))); }

// NeoX rotate-half on the first `r` of the `d` values at `v`, position p; the rest pass through.
void rotate(double* v, int r, double base, int p) {
  const int half = r / 2;
  for (int i = 0; i < half; ++i) {
    const double theta = p * std::pow(base, -2.0 * i / r);
    const double c = std::cos(theta), s = std::sin(theta);
    const double x0 = v[i], x1 = v[i + half];
    v[i] = x0 * c - x1 * s;
    v[i + half] = x1 * c + x0 * s;
  }
}

}  // namespace

HostLayerResult neox_layer(const ModelConfig& config, const HostLayer& w, const std::vector<double>& x,
                           const std::vector<double>& k_cache, const std::vector<double>& v_cache,
                           int position) {
  config.validate();
  if (config.arch != Architecture::GPTNeoX) {
    throw std::invalid_argument("reference::neox_layer: config.arch: expected GPTNeoX, got Llama");
  }
  if (position < 0) {
    throw std::invalid_argument("reference::neox_layer: position: expected >= 0, got " + std::to_string(position));
  }
  const std::size_t h = config.hidden, f = config.ffn, heads = config.heads, d = config.head_dim;
  const std::size_t p = position;
  check_size(x, "x", h);
  check_size(w.ln1_w, "w.ln1_w", h);
  check_size(w.ln1_b, "w.ln1_b", h);
  check_size(w.ln2_w, "w.ln2_w", h);
  check_size(w.ln2_b, "w.ln2_b", h);
  check_size(w.w_qkv, "w.w_qkv", 3 * h * h);
  check_size(w.b_qkv, "w.b_qkv", 3 * h);
  check_size(w.w_o, "w.w_o", h * h);
  check_size(w.b_o, "w.b_o", h);
  check_size(w.w_up, "w.w_up", f * h);
  check_size(w.b_up, "w.b_up", f);
  check_size(w.w_down, "w.w_down", h * f);
  check_size(w.b_down, "w.b_down", h);
  check_size(k_cache, "k_cache", heads * p * d);
  check_size(v_cache, "v_cache", heads * p * d);

  HostLayerResult res;
  res.k.resize(heads * d);
  res.v.resize(heads * d);
  res.attn.resize(h);

  // Attention branch.
  const Vec qkv = linear(w.w_qkv, w.b_qkv, layer_norm(x, w.ln1_w, w.ln1_b, config.norm_eps));
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  Vec q(d), scores(p + 1);
  for (std::size_t j = 0; j < heads; ++j) {
    // Per-head interleaved layout: head j owns qkv[j*3d, (j+1)*3d) as q | k | v.
    const double* head = qkv.data() + j * 3 * d;
    double* k = res.k.data() + j * d;
    double* v = res.v.data() + j * d;
    std::copy(head, head + d, q.begin());
    std::copy(head + d, head + 2 * d, k);
    std::copy(head + 2 * d, head + 3 * d, v);
    rotate(q.data(), config.rotary_dims, config.rotary_base, position);
    rotate(k, config.rotary_dims, config.rotary_base, position);

    const double* kc = k_cache.data() + j * p * d;
    const double* vc = v_cache.data() + j * p * d;
    auto key = [&](std::size_t t) { return t < p ? kc + t * d : k; };
    auto value = [&](std::size_t t) { return t < p ? vc + t * d : v; };
    double max_score = -INFINITY;
    for (std::size_t t = 0; t <= p; ++t) {
      double s = 0.0;
      for (std::size_t e = 0; e < d; ++e) s += q[e] * key(t)[e];
      scores[t] = s * scale;
      max_score = std::max(max_score, scores[t]);
    }
    double denom = 0.0;
    for (double& s : scores) denom += (s = std::exp(s - max_score));
    double* o = res.attn.data() + j * d;
    for (std::size_t t = 0; t <= p; ++t) {
      const double weight = scores[t] / denom;
      for (std::size_t e = 0; e < d; ++e) o[e] += weight * value(t)[e];
    }
  }
  const Vec attn_out = linear(w.w_o, w.b_o, res.attn);

  // MLP branch: parallel residual, so LayerNorm2 reads the layer input x, not x + attention.
  res.mlp_act = linear(w.w_up, w.b_up, layer_norm(x, w.ln2_w, w.ln2_b, config.norm_eps));
  for (double& z : res.mlp_act) z = gelu(z);
  const Vec mlp_out = linear(w.w_down, w.b_down, res.mlp_act);

  res.out.resize(h);
  for (std::size_t i = 0; i < h; ++i) res.out[i] = x[i] + attn_out[i] + mlp_out[i];
  return res;
}

}  // namespace clusterfusion::reference
