// DecodeContext on the GPU: each step's logits against the double-precision host reference of the whole model,
// the token selection against the logits it read, bitwise repeatability, the two prefill paths agreeing, both
// layer modes agreeing, steps enqueued back to back agreeing with one at a time, bad input; and select_token
// alone: greedy ties, top-k / top-p supports, and the sampled distribution against softmax(logits / temperature).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/decode_context.hpp"
#include "clusterfusion/host_reference.hpp"
#include "clusterfusion/sampling.hpp"
#include "cuda_device.hpp"
#include "device_tensors.hpp"
#include "random_inputs.hpp"
#include "random_model.hpp"
#include "thrown_message.hpp"
#include "test_names.hpp"

namespace cf = clusterfusion;
using cf_test::RandomModel;

namespace {


template <class T>
struct DeviceArray {
  T* dev = nullptr;
  std::size_t n;
  explicit DeviceArray(std::size_t count) : n(count) {
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev), n * sizeof(T)));
  }
  DeviceArray(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(dev); }
  void put(const std::vector<T>& host) {
    CF_CUDA_CHECK(cudaMemcpy(dev, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
};

template <class T>
std::vector<T> download(const T* dev, std::size_t n) {
  std::vector<T> host(n);
  CF_CUDA_CHECK(cudaMemcpy(host.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

double round_half(double v) { return __half2float(__double2half(v)); }

// The whole model in double precision, one token at a time. Layer outputs and cached keys/values are rounded to
// float16 as the GPU stores them, so the comparison measures the kernels' arithmetic, not storage rounding.
struct HostModel {
  const RandomModel& m;
  std::vector<std::vector<double>> k, v;  // per layer [heads][max_seq][head_dim]
  int max_seq;
  HostModel(const RandomModel& model, int seq) : m(model), max_seq(seq) {
    const std::size_t n = std::size_t(model.config.heads) * seq * model.config.head_dim;
    k.assign(model.config.layers, std::vector<double>(n));
    v.assign(model.config.layers, std::vector<double>(n));
  }

  std::vector<double> logits(int token, int position) {
    const cf::ModelConfig& c = m.config;
    const int h = c.hidden, d = c.head_dim, heads = c.heads;
    const std::vector<double>& embed = m.host("embed_in");
    std::vector<double> x(embed.begin() + std::size_t(token) * h, embed.begin() + std::size_t(token + 1) * h);
    for (int l = 0; l < c.layers; ++l) {
      std::vector<double> kp(std::size_t(heads) * position * d), vp(kp.size());
      for (int hh = 0; hh < heads; ++hh)
        for (int t = 0; t < position; ++t)
          for (int e = 0; e < d; ++e) {
            kp[(std::size_t(hh) * position + t) * d + e] = k[l][(std::size_t(hh) * max_seq + t) * d + e];
            vp[(std::size_t(hh) * position + t) * d + e] = v[l][(std::size_t(hh) * max_seq + t) * d + e];
          }
      const auto r = cf::reference::neox_layer(c, m.layers[l]->neox_host(), x, kp, vp, position);
      for (int hh = 0; hh < heads; ++hh)
        for (int e = 0; e < d; ++e) {
          k[l][(std::size_t(hh) * max_seq + position) * d + e] = round_half(r.k[hh * d + e]);
          v[l][(std::size_t(hh) * max_seq + position) * d + e] = round_half(r.v[hh * d + e]);
        }
      for (int i = 0; i < h; ++i) x[i] = round_half(r.out[i]);
    }
    double mean = 0, var = 0;
    for (double e : x) mean += e;
    mean /= h;
    for (double e : x) var += (e - mean) * (e - mean);
    const double rstd = 1.0 / std::sqrt(var / h + c.norm_eps);
    std::vector<double> y(h);
    const std::vector<double>&norm_w = m.host("final_norm_weight"), &norm_b = m.host("final_norm_bias");
    for (int i = 0; i < h; ++i) y[i] = (x[i] - mean) * rstd * norm_w[i] + norm_b[i];
    const std::vector<double>& head = m.host("lm_head");
    std::vector<double> out(c.vocab);
    for (int r = 0; r < c.vocab; ++r) {
      double acc = 0;
      for (int i = 0; i < h; ++i) acc += head[std::size_t(r) * h + i] * y[i];
      out[r] = acc;
    }
    return out;
  }
};

double rel_error(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// The largest value, ties to the lowest index: what the selection must pick under greedy decoding.
int argmax(const std::vector<float>& v) { return int(std::max_element(v.begin(), v.end()) - v.begin()); }

std::vector<float> context_logits(const cf::DecodeContext& ctx) {
  CF_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  return download(ctx.logits(), ctx.config().vocab);
}

// The architectures at small real shapes: GPT-NeoX, and Llama with grouped-query attention and a tied head.
class DecodeContextModels : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Models, DecodeContextModels, ::testing::Values("pythia-70m", "llama-3.2-1b"),
                         cf_test::ModelTestName());

std::vector<int> random_tokens(int n, int vocab) {
  std::vector<int> t(n);
  for (int& x : t) x = cf_test::uniform_int(0, vocab - 1);
  return t;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(DecodeContextGpu, GreedyStepsMatchHostReference) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config();
  const int max_seq = 64;
  const RandomModel model(config, cf_test::rng());
  cf::DecodeContext ctx(config, model.weights, max_seq);
  HostModel host(model, max_seq);
  EXPECT_EQ(ctx.position(), 0);

  // The prompt through the standalone prefill, then 12 greedy steps fed by the device token.
  const std::vector<int> prompt = random_tokens(5, config.vocab);
  int token = -1;
  for (int p = 0; p < 5 + 12; ++p) {
    SCOPED_TRACE("position " + std::to_string(p));
    const int input = p < 5 ? prompt[p] : token;
    token = p < 5 ? ctx.step(prompt[p]) : ctx.step();
    EXPECT_EQ(ctx.position(), p + 1);
    const std::vector<float> logits = context_logits(ctx);
    EXPECT_LT(rel_error(logits, host.logits(input, p)), 5e-3);
    EXPECT_EQ(token, argmax(logits));
    EXPECT_EQ(download(ctx.tokens() + p + 1, 1)[0], token);
  }
  // The history holds the prompt and then every produced token.
  const std::vector<int> history = download(ctx.tokens(), 5);
  EXPECT_EQ(history, prompt);
}

TEST_P(DecodeContextModels, StepsAreBitwiseRepeatableAndModesAgree) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config(GetParam());
  const RandomModel model(config, cf_test::rng());
  const std::vector<int> prompt = random_tokens(7, config.vocab);

  auto run = [&](cf::DecodeContext& ctx) {
    std::vector<std::vector<float>> logits;
    std::vector<int> tokens{ctx.prefill(prompt)};
    logits.push_back(context_logits(ctx));
    for (int i = 0; i < 20; ++i) {
      tokens.push_back(ctx.step());
      logits.push_back(context_logits(ctx));
    }
    return std::make_pair(tokens, logits);
  };
  cf::DecodeContext split(config, model.weights, 128, cf::LayerMode::Split);
  const auto first = run(split);
  split.reset();
  EXPECT_EQ(split.position(), 0);
  const auto again = run(split);
  EXPECT_EQ(first.first, again.first);
  for (std::size_t i = 0; i < first.second.size(); ++i) EXPECT_TRUE(same_bits(first.second[i], again.second[i])) << i;

  ASSERT_EQ(cf::DecodeContext(config, model.weights, 128).mode(), cf::LayerMode::Split);
  cf::DecodeContext coop(config, model.weights, 128, cf::LayerMode::Cooperative);
  const auto other = run(coop);
  EXPECT_EQ(first.first, other.first);
  for (std::size_t i = 0; i < first.second.size(); ++i) EXPECT_TRUE(same_bits(first.second[i], other.second[i])) << i;
}

// Steps enqueued back to back, as a serving loop runs them (no host wait in between), with launches that start
// while the one before them finishes: each must wait for its input, so the tokens and the last logits are those
// of one step at a time.
TEST_P(DecodeContextModels, EnqueuedStepsMatchStepByStep) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config(GetParam());
  const RandomModel model(config, cf_test::rng());
  const std::vector<int> prompt = random_tokens(7, config.vocab);
  constexpr int kSteps = 40;
  cf::DecodeContext ctx(config, model.weights, 128);
  std::vector<int> stepped{ctx.prefill(prompt)};
  for (int i = 0; i < kSteps; ++i) stepped.push_back(ctx.step());
  const std::vector<float> last = context_logits(ctx);

  ctx.reset();
  EXPECT_EQ(ctx.prefill(prompt), stepped[0]);
  for (int i = 0; i < kSteps; ++i) ctx.enqueue_step();
  const int end = static_cast<int>(prompt.size()) + kSteps + 1;
  EXPECT_EQ(ctx.tokens(static_cast<int>(prompt.size()), end), stepped);
  EXPECT_TRUE(same_bits(context_logits(ctx), last));
}

TEST_P(DecodeContextModels, LoadedPrefixMatchesStandalonePrefillBitwise) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config(GetParam());
  const int max_seq = 48;
  const RandomModel model(config, cf_test::rng());
  const std::vector<int> prompt = random_tokens(cf_test::uniform_int(2, 20), config.vocab);
  const int seq = int(prompt.size()) - 1;

  cf::DecodeContext a(config, model.weights, max_seq);
  const int token_a = a.prefill(prompt);
  const std::vector<float> logits_a = context_logits(a);

  // a's cache for positions 0..seq-1 in transformers' layout [1, kv_heads, seq, head_dim].
  const std::size_t per_layer = std::size_t(config.kv_heads) * seq * config.head_dim;
  const std::size_t row = std::size_t(seq) * config.head_dim * sizeof(__half);
  const std::size_t cache_row = std::size_t(max_seq) * config.head_dim * sizeof(__half);
  std::vector<std::unique_ptr<DeviceArray<__half>>> buffers;
  std::vector<cf::TensorView> keys, values;
  for (int l = 0; l < config.layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      buffers.push_back(std::make_unique<DeviceArray<__half>>(per_layer));
      const __half* src = kv == 0 ? a.cache().keys(l) : a.cache().values(l);
      CF_CUDA_CHECK(
          cudaMemcpy2D(buffers.back()->dev, row, src, cache_row, row, config.kv_heads, cudaMemcpyDeviceToDevice));
      (kv == 0 ? keys : values)
          .emplace_back(buffers.back()->dev, std::vector<int64_t>{1, config.kv_heads, seq, config.head_dim},
                        cf::DType::Float16);
    }
  }
  cf::DecodeContext b(config, model.weights, max_seq);
  b.load_prefix(keys, values);
  EXPECT_EQ(b.position(), seq);
  EXPECT_THROW(b.step(), std::logic_error);  // a loaded prefix has no device token for its next step
  EXPECT_EQ(b.step(prompt.back()), token_a);
  EXPECT_TRUE(same_bits(context_logits(b), logits_a));
  // Both continue alike from their device tokens.
  EXPECT_EQ(a.step(), b.step());
  EXPECT_TRUE(same_bits(context_logits(a), context_logits(b)));
}

TEST(DecodeContextGpu, FullCacheAndBadInputThrowBeforeEnqueuing) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config();
  const RandomModel model(config, cf_test::rng());
  const int max_seq = 4;
  cf::DecodeContext ctx(config, model.weights, max_seq);

  EXPECT_NE(cf_test::thrown_message<std::logic_error>([&] { ctx.step(); }).find("no token for position 0"),
            std::string::npos);
  EXPECT_NE(cf_test::thrown_message<std::invalid_argument>([&] { ctx.step(config.vocab); })
                .find("token: expected 0.." + std::to_string(config.vocab - 1) + ", got " +
                      std::to_string(config.vocab)),
            std::string::npos);
  EXPECT_THROW(ctx.step(-1), std::invalid_argument);
  EXPECT_THROW(ctx.prefill({}), std::invalid_argument);
  EXPECT_THROW(ctx.prefill(random_tokens(max_seq + 1, config.vocab)), std::out_of_range);
  EXPECT_EQ(ctx.position(), 0);

  ctx.prefill(random_tokens(max_seq, config.vocab));
  EXPECT_EQ(ctx.position(), max_seq);
  const std::string full = cf_test::thrown_message<std::out_of_range>([&] { ctx.step(); });
  EXPECT_NE(full.find("position 4 is past max_seq 4"), std::string::npos) << full;
  EXPECT_EQ(ctx.position(), max_seq);
  ctx.reset();
  EXPECT_EQ(ctx.position(), 0);
  EXPECT_NO_THROW(ctx.step(1));

  // load_prefix: the count, then each tensor's shape, named.
  const std::string count =
      cf_test::thrown_message<std::invalid_argument>([&] { ctx.load_prefix({}, {}); });
  EXPECT_NE(count.find("keys: expected 2 tensors (one per layer), got 0"), std::string::npos) << count;
  DeviceArray<__half> kv(std::size_t(config.heads) * 3 * config.head_dim);
  const cf::TensorView good(kv.dev, {1, config.heads, 3, config.head_dim}, cf::DType::Float16);
  const cf::TensorView bad(kv.dev, {1, config.heads, 2, config.head_dim}, cf::DType::Float16);
  const std::string shape = cf_test::thrown_message<std::invalid_argument>(
      [&] { ctx.load_prefix({good, good}, {good, bad}); });
  EXPECT_NE(shape.find("values[1]: expected shape [1, 8, 3, 64]"), std::string::npos) << shape;
  const cf::TensorView long_prefix(kv.dev, {1, config.heads, max_seq + 1, config.head_dim}, cf::DType::Float16);
  EXPECT_THROW(ctx.load_prefix({long_prefix, long_prefix}, {long_prefix, long_prefix}), std::out_of_range);
  EXPECT_EQ(ctx.position(), 1);

  EXPECT_THROW(ctx.set_sampling(cf::SamplingParams{-1.0f, 0, 1.0f, 0}), std::invalid_argument);
}

TEST_P(DecodeContextModels, SamplingIsReproducibleBySeed) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config(GetParam());
  const RandomModel model(config, cf_test::rng());
  const std::vector<int> prompt = random_tokens(4, config.vocab);
  cf::DecodeContext ctx(config, model.weights, 64);

  auto generate = [&](const cf::SamplingParams& params) {
    ctx.reset();
    ctx.set_sampling(params);
    std::vector<int> tokens{ctx.prefill(prompt)};
    for (int i = 0; i < 24; ++i) tokens.push_back(ctx.step());
    return tokens;
  };
  const cf::SamplingParams params{1.5f, 0, 1.0f, 1234};
  const std::vector<int> first = generate(params);
  EXPECT_EQ(generate(params), first);
  cf::SamplingParams other = params;
  other.seed = 99;
  // Temperature 1.5 over ~5000 near-uniform logits: two seeds agreeing on 25 draws is (almost) impossible.
  EXPECT_NE(generate(other), first);
  // top_k = 1 is greedy whatever the temperature.
  cf::SamplingParams top1 = params;
  top1.top_k = 1;
  EXPECT_EQ(generate(top1), generate(cf::SamplingParams{}));
}

// --- select_token alone, on logits the test chooses. ---

struct Selector {
  DeviceArray<float> logits;
  DeviceArray<int> position{1};
  DeviceArray<int> tokens;  // tokens[c + 1] is the draw with counter c
  int vocab;
  Selector(const std::vector<float>& values, int counters)
      : logits(values.size()), tokens(counters + 1), vocab(int(values.size())) {
    logits.put(values);
  }
  // `draws` selections with counters first, first + 1, ...: the tokens they picked.
  std::vector<int> run(const cf::SamplingParams& params, int draws, int first = 0) {
    position.put({first});
    tokens.put(std::vector<int>(tokens.n, -1));
    for (int i = 0; i < draws; ++i) cf::select_token(logits.dev, vocab, params, position.dev, tokens.dev);
    EXPECT_EQ(download(position.dev, 1)[0], first + draws);
    const std::vector<int> all = download(tokens.dev, tokens.n);
    return std::vector<int>(all.begin() + first + 1, all.begin() + first + 1 + draws);
  }
};

TEST(SelectTokenGpu, GreedyPicksTheLowestIndexOfTiedMaxima) {
  CF_REQUIRE_CUDA_DEVICE();
  std::vector<float> logits(3000);
  for (float& x : logits) x = float(cf_test::uniform(-4, 4));
  const int first = cf_test::uniform_int(0, 1499), second = cf_test::uniform_int(1500, 2999);
  logits[first] = logits[second] = 9.0f;
  logits[first == 0 ? 1 : first - 1] = NAN;  // NaN never wins
  Selector s(logits, 3);
  EXPECT_EQ(s.run(cf::SamplingParams{}, 3), (std::vector<int>{first, first, first}));
}

// Logits log(p) over a small vocab: the frequencies of many draws must match the expected distribution.
void expect_frequencies(const std::vector<int>& drawn, const std::vector<double>& expected) {
  std::vector<double> count(expected.size(), 0);
  for (int t : drawn) {
    ASSERT_GE(t, 0);
    ASSERT_LT(t, int(expected.size()));
    count[t] += 1;
  }
  const double n = double(drawn.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double p = expected[i], sigma = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(count[i] / n, p, 5 * sigma + 1e-9) << "token " << i;
  }
}

TEST(SelectTokenGpu, DrawsFollowTemperatureTopKAndTopP) {
  CF_REQUIRE_CUDA_DEVICE();
  const std::vector<double> p = {0.4, 0.3, 0.15, 0.1, 0.05};
  std::vector<float> logits;
  for (double q : p) logits.push_back(float(std::log(q)) + 3.0f);  // softmax ignores the shift
  logits.push_back(-INFINITY);  // never drawn
  const int draws = 6000;
  Selector s(logits, draws);
  const auto seed = static_cast<std::uint64_t>(cf_test::uniform_int(0, 1 << 30));

  auto normalized = [](std::vector<double> w) {
    double sum = 0;
    for (double x : w) sum += x;
    for (double& x : w) x /= sum;
    return w;
  };
  // Temperature 1: p itself; temperature 2: p^(1/2), renormalized.
  expect_frequencies(s.run({1.0f, 0, 1.0f, seed}, draws), {0.4, 0.3, 0.15, 0.1, 0.05, 0.0});
  std::vector<double> sqrt_p;
  for (double q : p) sqrt_p.push_back(std::sqrt(q));
  sqrt_p.push_back(0.0);
  expect_frequencies(s.run({2.0f, 0, 1.0f, seed}, draws), normalized(sqrt_p));
  // top_k 2: the two largest, renormalized. top_p 0.65: the smallest set with mass >= 0.65 is {0, 1}; top_p 0.35
  // is {0} alone.
  expect_frequencies(s.run({1.0f, 2, 1.0f, seed}, draws), normalized({0.4, 0.3, 0, 0, 0, 0}));
  expect_frequencies(s.run({1.0f, 0, 0.65f, seed}, draws), normalized({0.4, 0.3, 0, 0, 0, 0}));
  EXPECT_EQ(s.run({1.0f, 0, 0.35f, seed}, 50), std::vector<int>(50, 0));
  // top_k 3 then top_p 0.8 of the renormalized three (0.47, 0.35, 0.18): {0, 1} holds 0.82.
  expect_frequencies(s.run({1.0f, 3, 0.8f, seed}, draws), normalized({0.4, 0.3, 0, 0, 0, 0}));
}

TEST(SelectTokenGpu, SameSeedAndCounterGiveTheSameTokenOnAFullVocab) {
  CF_REQUIRE_CUDA_DEVICE();
  std::vector<float> logits(50304);
  for (float& x : logits) x = float(cf_test::uniform(-3, 3));
  Selector s(logits, 200);
  const cf::SamplingParams params{0.9f, 50, 0.95f, 77};
  const std::vector<int> first = s.run(params, 200);
  EXPECT_EQ(s.run(params, 200), first);
  // Counters 100..199 alone reproduce the second half: a draw depends on (seed, counter) only.
  const std::vector<int> tail = s.run(params, 100, 100);
  EXPECT_EQ(tail, std::vector<int>(first.begin() + 100, first.end()));
  // Every draw is among the 50 largest logits.
  std::vector<float> sorted = logits;
  std::nth_element(sorted.begin(), sorted.begin() + 49, sorted.end(), std::greater<float>());
  const float kth = sorted[49];
  for (int t : first) EXPECT_GE(logits[t], kth) << t;
  cf::SamplingParams other = params;
  other.seed = 78;
  EXPECT_NE(s.run(other, 200), first);
}

TEST(SelectTokenGpu, InvalidParametersAreRefusedByName) {
  // Validation comes before any device work: no GPU needed.
  int* none = nullptr;
  const std::string msg = cf_test::thrown_message<std::invalid_argument>(
      [&] { cf::select_token(nullptr, 10, cf::SamplingParams{0.5f, -2, 1.0f, 0}, none, none); });
  EXPECT_NE(msg.find("SamplingParams.top_k"), std::string::npos) << msg;
  EXPECT_THROW(cf::select_token(nullptr, 10, cf::SamplingParams{NAN, 0, 1.0f, 0}, none, none), std::invalid_argument);
  EXPECT_THROW(cf::select_token(nullptr, 10, cf::SamplingParams{1.0f, 0, 1.5f, 0}, none, none), std::invalid_argument);
  EXPECT_THROW(cf::select_token(nullptr, 10, cf::SamplingParams{}, none, none), std::invalid_argument);
}

}  // namespace
