// quotient, ramp_begin and ramp_most (layer_params.hpp), the up rows' shares that fall with the block index: quotient
// is integer division below 2^53; the parts cover the units exactly once, each part is its linear weight's share
// within one unit, and no part exceeds ramp_most (what the gate's shared memory is sized by). Without a ramp the
// parts are the even split.
#include <cstdlib>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/config.hpp"
#include "clusterfusion/kernels/layer_params.hpp"
#include "random_inputs.hpp"

namespace cf = clusterfusion;
namespace kernels = clusterfusion::kernels;

namespace {

template <int kRamp>
void expect_ramp(long long units, int parts) {
  SCOPED_TRACE(::testing::Message() << "ramp " << kRamp << ", " << units << " units over " << parts << " parts");
  ASSERT_EQ(kernels::ramp_begin<kRamp>(units, parts, 0), 0);
  ASSERT_EQ(kernels::ramp_begin<kRamp>(units, parts, parts), units);
  // Part i's weight is (d + r (parts - 2i - 1)) / d of the average, d = 200 (parts - 1).
  const long long d = parts > 1 ? 200LL * (parts - 1) : 200;
  for (int i = 0; i < parts; ++i) {
    const long long share =
        kernels::ramp_begin<kRamp>(units, parts, i + 1) - kernels::ramp_begin<kRamp>(units, parts, i);
    const long long exact = units * (d + (parts > 1 ? kRamp * (parts - 2LL * i - 1) : 0));  // x d x parts
    ASSERT_LT(std::llabs(share * d * parts - exact), d * parts) << "part " << i;
    if (units < (1LL << 31)) {
      ASSERT_LE(share, kernels::ramp_most<kRamp>(int(units), parts)) << "part " << i;
    }
    if (kRamp == 0) {
      ASSERT_EQ(kernels::ramp_begin<kRamp>(units, parts, i), units * i / parts);
    }
  }
}

template <int kRamp>
void expect_ramp_everywhere() {
  std::vector<long long> units;
  for (long long u = 0; u < 200; ++u) units.push_back(u);
  // The up rows' units (8-row boxes) of every supported model, and a byte count of the size the share splits.
  for (const char* name : {"pythia-70m", "pythia-1.4b", "pythia-2.8b", "pythia-6.9b", "pythia-12b", "gpt-neox-20b",
                           "llama-2-7b", "tinyllama-1.1b", "llama-3.2-1b", "llama-3-8b"})
    units.push_back(cf::model_config(name).ffn / kernels::kBoxRows);
  units.push_back(68LL * 7'000'000);
  for (const long long u : units)
    for (int parts = 1; parts <= 140; ++parts) expect_ramp<kRamp>(u, parts);
}

// quotient (the shares' 64-bit divisions in double precision) against integer division, up to its bound of 2^53.
TEST(RampShares, QuotientIsIntegerDivisionBelow2To53) {
  auto& rng = cf_test::rng();
  for (int n = 0; n < 200000; ++n) {
    const int a_shift = 11 + int(rng() % 40), b_shift = 11 + int(rng() % 53);  // below 2^53, all magnitudes
    const long long a = static_cast<long long>(rng() >> a_shift);
    const long long b = 1 + static_cast<long long>(rng() >> b_shift);
    ASSERT_EQ(kernels::quotient(a, b), a / b) << a << " / " << b;
    ASSERT_EQ(kernels::quotient(a - a % b, b), a / b) << a - a % b << " / " << b;  // exact quotients
  }
  const long long top = (1LL << 53) - 1;
  for (const long long b : {1LL, 2LL, 3LL, 7LL, 132LL, 13400LL * 68, (1LL << 26) + 1, top})
    EXPECT_EQ(kernels::quotient(top, b), top / b) << b;
}

TEST(RampShares, WithoutARampThePartsAreTheEvenSplit) { expect_ramp_everywhere<0>(); }
TEST(RampShares, TheKernelsRamp) { expect_ramp_everywhere<kernels::kUpRampPercent>(); }
TEST(RampShares, TheSteepestAllowedRamp) { expect_ramp_everywhere<100>(); }

TEST(RampShares, TheFirstPartGetsMoreThanTheLast) {
  const int units = 1280, parts = 68;  // pythia-2.8b's up rows over the blocks that carry no head
  const auto share = [&](int i) {
    return kernels::ramp_begin<30>(units, parts, i + 1) - kernels::ramp_begin<30>(units, parts, i);
  };
  // 1.15 and 0.85 of the average, 18.8 units.
  EXPECT_EQ(share(0), 21);
  EXPECT_EQ(share(parts - 1), 16);
  EXPECT_EQ(kernels::ramp_most<30>(units, parts), 22);
}

}  // namespace
