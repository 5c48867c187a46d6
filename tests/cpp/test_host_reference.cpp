// Properties of the double-precision reference layer that hold whatever the weights: each pins one step of
// the decode-step math (LayerNorm, GELU, rotary, softmax attention, parallel residual).
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/host_reference.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;
namespace ref = clusterfusion::reference;

namespace {

using Vec = std::vector<double>;

cf::ModelConfig tiny() {
  cf::ModelConfig c = cf::pythia_config("pythia-70m");
  c.heads = 3;
  c.kv_heads = 3;  // GPT-NeoX: every head has its own key and value
  c.head_dim = 16;
  c.hidden = 48;
  c.rotary_dims = 8;  // wider than head_dim/4 so several rotary pairs are exercised
  c.ffn = 40;
  c.layers = 1;
  c.vocab = 10;
  return c;
}

ref::HostLayer random_layer(const cf::ModelConfig& c) {
  const std::size_t h = c.hidden, f = c.ffn;
  const double s = 1.0 / std::sqrt(static_cast<double>(h));
  ref::HostLayer w;
  w.ln1_w = cf_test::normal_vector(h);
  w.ln1_b = cf_test::normal_vector(h, 0.1);
  w.ln2_w = cf_test::normal_vector(h);
  w.ln2_b = cf_test::normal_vector(h, 0.1);
  w.w_qkv = cf_test::normal_vector(3 * h * h, s);
  w.b_qkv = cf_test::normal_vector(3 * h, 0.1);
  w.w_o = cf_test::normal_vector(h * h, s);
  w.b_o = cf_test::normal_vector(h, 0.1);
  w.w_up = cf_test::normal_vector(f * h, s);
  w.b_up = cf_test::normal_vector(f, 0.1);
  w.w_down = cf_test::normal_vector(h * f, 1.0 / std::sqrt(static_cast<double>(f)));
  w.b_down = cf_test::normal_vector(h, 0.1);
  return w;
}

struct Cache {
  Vec k, v;
};

Cache random_cache(const cf::ModelConfig& c, int position) {
  const std::size_t n = static_cast<std::size_t>(c.heads) * position * c.head_dim;
  return {cf_test::normal_vector(n), cf_test::normal_vector(n)};
}

ref::HostLayerResult run(const cf::ModelConfig& c, const ref::HostLayer& w, const Vec& x, const Cache& cache,
                         int position) {
  return ref::neox_layer(c, w, x, cache.k, cache.v, position);
}

Vec matvec(const Vec& m, const Vec& x) {
  Vec y(m.size() / x.size(), 0.0);
  for (std::size_t r = 0; r < y.size(); ++r)
    for (std::size_t c = 0; c < x.size(); ++c) y[r] += m[r * x.size() + c] * x[c];
  return y;
}

// Standard normal CDF at a few points (tabulated, independent of std::erf).
struct CdfPoint {
  double z, phi;
};
constexpr CdfPoint kPhi[] = {{0.5, 0.69146246127401310}, {1.0, 0.84134474606854293},
                             {2.0, 0.97724986805182079}, {3.0, 0.99865010196836990}};

}  // namespace

TEST(HostReference, AtPositionZeroAttentionIsTheNewValue) {
  const cf::ModelConfig c = tiny();
  const ref::HostLayerResult r = run(c, random_layer(c), cf_test::normal_vector(c.hidden), {}, 0);
  ASSERT_EQ(r.attn.size(), r.v.size());
  for (std::size_t i = 0; i < r.v.size(); ++i) EXPECT_DOUBLE_EQ(r.attn[i], r.v[i]) << i;
}

TEST(HostReference, LayerNormUsesTheBiasedVariance) {
  cf::ModelConfig c = tiny();
  ref::HostLayer w = random_layer(c);
  // Route each head's v straight from the normalized input: at position 0, attn = LN1(x).
  const std::size_t h = c.hidden, d = c.head_dim;
  std::fill(w.w_qkv.begin(), w.w_qkv.end(), 0.0);
  std::fill(w.b_qkv.begin(), w.b_qkv.end(), 0.0);
  for (std::size_t j = 0; j < static_cast<std::size_t>(c.heads); ++j)
    for (std::size_t e = 0; e < d; ++e) w.w_qkv[(j * 3 * d + 2 * d + e) * h + j * d + e] = 1.0;
  std::fill(w.ln1_w.begin(), w.ln1_w.end(), 1.0);
  std::fill(w.ln1_b.begin(), w.ln1_b.end(), 0.0);

  const Vec x = cf_test::normal_vector(h, cf_test::uniform(0.01, 3.0));
  double mean = 0, var = 0;
  for (double xi : x) mean += xi / h;
  for (double xi : x) var += (xi - mean) * (xi - mean) / h;
  const Vec n = run(c, w, x, {}, 0).attn;
  double n_mean = 0, n_square = 0;
  for (double ni : n) n_mean += ni / h, n_square += ni * ni / h;
  EXPECT_NEAR(n_mean, 0.0, 1e-12);
  EXPECT_NEAR(n_square, var / (var + c.norm_eps), 1e-12);  // an unbiased (÷ h-1) variance misses by ~2%

  // The affine part: weight and bias per element.
  const ref::HostLayer plain = w;
  w.ln1_w = cf_test::normal_vector(h);
  w.ln1_b = cf_test::normal_vector(h);
  const Vec affine = run(c, w, x, {}, 0).attn;
  for (std::size_t i = 0; i < h; ++i) EXPECT_NEAR(affine[i], n[i] * w.ln1_w[i] + w.ln1_b[i], 1e-12) << i;
}

TEST(HostReference, GeluIsTheExactErfForm) {
  cf::ModelConfig c = tiny();
  ref::HostLayer w = random_layer(c);
  // W_up = 0 makes the pre-activation exactly b_up, so mlp_act = GELU(b_up).
  std::fill(w.w_up.begin(), w.w_up.end(), 0.0);
  w.b_up = cf_test::normal_vector(c.ffn, 2.0);
  for (std::size_t i = 0; i < std::size(kPhi); ++i) {
    w.b_up[2 * i] = kPhi[i].z;
    w.b_up[2 * i + 1] = -kPhi[i].z;
  }
  const Vec act = run(c, w, cf_test::normal_vector(c.hidden), {}, 0).mlp_act;
  for (std::size_t i = 0; i < std::size(kPhi); ++i) {
    // z·Φ(z) and -z·(1 - Φ(z)); the tanh approximation is off by ~1e-4 at these points.
    EXPECT_NEAR(act[2 * i], kPhi[i].z * kPhi[i].phi, 1e-14) << kPhi[i].z;
    EXPECT_NEAR(act[2 * i + 1], -kPhi[i].z * (1.0 - kPhi[i].phi), 1e-14) << -kPhi[i].z;
  }
  // Φ(z) + Φ(-z) = 1 gives GELU(z) - GELU(-z) = z for every z: check on random pairs.
  const Vec z = cf_test::normal_vector(c.ffn / 2, 2.0);
  for (std::size_t i = 0; i < z.size(); ++i) w.b_up[2 * i] = z[i], w.b_up[2 * i + 1] = -z[i];
  const Vec pairs = run(c, w, cf_test::normal_vector(c.hidden), {}, 0).mlp_act;
  for (std::size_t i = 0; i < z.size(); ++i) EXPECT_NEAR(pairs[2 * i] - pairs[2 * i + 1], z[i], 1e-13) << z[i];
}

TEST(HostReference, RotaryRotatesEachPairByPositionTimesFrequency) {
  cf::ModelConfig c = tiny();
  c.rotary_base = static_cast<float>(cf_test::uniform(100.0, 20000.0));
  const ref::HostLayer w = random_layer(c);
  const Vec x = cf_test::normal_vector(c.hidden);
  const int p = cf_test::uniform_int(1, 40);
  const ref::HostLayerResult at0 = run(c, w, x, {}, 0);  // θ = 0: the unrotated key
  const ref::HostLayerResult atp = run(c, w, x, random_cache(c, p), p);
  const int d = c.head_dim, r = c.rotary_dims;
  for (int j = 0; j < c.heads; ++j) {
    const double* k0 = at0.k.data() + j * d;
    const double* kp = atp.k.data() + j * d;
    for (int i = 0; i < r / 2; ++i) {
      SCOPED_TRACE("head " + std::to_string(j) + " pair " + std::to_string(i));
      const double theta = p * std::pow(static_cast<double>(c.rotary_base), -2.0 * i / r);
      EXPECT_NEAR(std::hypot(kp[i], kp[i + r / 2]), std::hypot(k0[i], k0[i + r / 2]), 1e-12);
      // Rotate-half pairs dim i with dim i + r/2 (not the adjacent dim, as GPT-J does).
      EXPECT_NEAR(kp[i], k0[i] * std::cos(theta) - k0[i + r / 2] * std::sin(theta), 1e-12);
      EXPECT_NEAR(kp[i + r / 2], k0[i + r / 2] * std::cos(theta) + k0[i] * std::sin(theta), 1e-12);
    }
    for (int e = r; e < d; ++e) EXPECT_DOUBLE_EQ(kp[e], k0[e]) << "pass-through dim " << e;
  }
  for (std::size_t i = 0; i < at0.v.size(); ++i) EXPECT_DOUBLE_EQ(atp.v[i], at0.v[i]) << "values are not rotated";
}

TEST(HostReference, ZeroQueryAttendsUniformlyOverCacheAndNewToken) {
  const cf::ModelConfig c = tiny();
  ref::HostLayer w = random_layer(c);
  const std::size_t h = c.hidden, d = c.head_dim;
  for (std::size_t j = 0; j < static_cast<std::size_t>(c.heads); ++j) {
    for (std::size_t e = 0; e < d; ++e) {
      const std::size_t row = j * 3 * d + e;  // the q rows of head j
      std::fill(w.w_qkv.begin() + row * h, w.w_qkv.begin() + (row + 1) * h, 0.0);
      w.b_qkv[row] = 0.0;
    }
  }
  const int p = cf_test::uniform_int(1, 30);
  const Cache cache = random_cache(c, p);
  const ref::HostLayerResult r = run(c, w, cf_test::normal_vector(h), cache, p);
  for (std::size_t j = 0; j < static_cast<std::size_t>(c.heads); ++j) {
    for (std::size_t e = 0; e < d; ++e) {
      double mean = r.v[j * d + e];
      for (int t = 0; t < p; ++t) mean += cache.v[(j * p + t) * d + e];
      mean /= p + 1;
      EXPECT_NEAR(r.attn[j * d + e], mean, 1e-12) << "head " << j << " dim " << e;
    }
  }
}

TEST(HostReference, DominantKeySelectsItsValueWithoutOverflow) {
  const cf::ModelConfig c = tiny();
  ref::HostLayer w = random_layer(c);
  const std::size_t h = c.hidden, d = c.head_dim;
  // q = k (same rows and biases, same rotation), so a cached key of M·k scores M times the new token's.
  for (std::size_t j = 0; j < static_cast<std::size_t>(c.heads); ++j) {
    for (std::size_t e = 0; e < d; ++e) {
      const std::size_t q_row = j * 3 * d + e, k_row = q_row + d;
      std::copy(w.w_qkv.begin() + k_row * h, w.w_qkv.begin() + (k_row + 1) * h, w.w_qkv.begin() + q_row * h);
      w.b_qkv[q_row] = w.b_qkv[k_row];
    }
  }
  const Vec x = cf_test::normal_vector(h);
  const int p = cf_test::uniform_int(2, 20);
  Cache cache = random_cache(c, p);
  const Vec k = run(c, w, x, cache, p).k;  // the new key does not depend on the cache
  const int hot = cf_test::uniform_int(0, p - 1);
  // Scores around 1e5: exp() overflows unless the softmax subtracts the maximum first.
  for (std::size_t j = 0; j < static_cast<std::size_t>(c.heads); ++j)
    for (std::size_t e = 0; e < d; ++e) cache.k[(j * p + hot) * d + e] = 1e4 * k[j * d + e];
  const ref::HostLayerResult r = run(c, w, x, cache, p);
  for (std::size_t j = 0; j < static_cast<std::size_t>(c.heads); ++j)
    for (std::size_t e = 0; e < d; ++e)
      EXPECT_NEAR(r.attn[j * d + e], cache.v[(j * p + hot) * d + e], 1e-12) << "head " << j << " dim " << e;
}

TEST(HostReference, OutputIsInputPlusBothBranches) {
  const cf::ModelConfig c = tiny();
  ref::HostLayer w = random_layer(c);
  const Vec x = cf_test::normal_vector(c.hidden);
  const int p = cf_test::uniform_int(0, 10);
  const Cache cache = random_cache(c, p);
  const ref::HostLayerResult r = run(c, w, x, cache, p);
  const Vec attn_out = matvec(w.w_o, r.attn), mlp_out = matvec(w.w_down, r.mlp_act);
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(r.out[i], x[i] + attn_out[i] + w.b_o[i] + mlp_out[i] + w.b_down[i], 1e-12) << i;
  }
  // Parallel residual: the MLP reads LN2(x), so changing the attention branch leaves it untouched.
  w.w_o = cf_test::normal_vector(w.w_o.size());
  w.w_qkv = cf_test::normal_vector(w.w_qkv.size());
  const ref::HostLayerResult other = run(c, w, x, cache, p);
  for (std::size_t i = 0; i < r.mlp_act.size(); ++i) EXPECT_DOUBLE_EQ(other.mlp_act[i], r.mlp_act[i]) << i;
}

TEST(HostReference, RejectsWrongSizesByName) {
  const cf::ModelConfig c = tiny();
  ref::HostLayer w = random_layer(c);
  const Vec x = cf_test::normal_vector(c.hidden);
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>(
                [&] { ref::neox_layer(c, w, Vec(x.begin(), x.end() - 1), {}, {}, 0); }),
            "reference::neox_layer: x: expected 48 values, got 47");
  const Cache short_cache = random_cache(c, 2);
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { run(c, w, x, short_cache, 3); }),
            "reference::neox_layer: k_cache: expected 144 values, got 96");
  w.b_up.pop_back();
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { run(c, w, x, {}, 0); }),
            "reference::neox_layer: w.b_up: expected 40 values, got 39");
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>(
                [&] { ref::neox_layer(cf::llama2_7b_config(), random_layer(c), x, {}, {}, 0); }),
            "reference::neox_layer: config.arch: expected GPTNeoX, got Llama");
}
