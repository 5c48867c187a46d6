// Fresh random inputs for every run; the seed is printed so a failure can be replayed with CF_TEST_SEED=<seed>.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace cf_test {

inline std::mt19937_64& rng() {
  static std::mt19937_64 engine = [] {
    const char* fixed = std::getenv("CF_TEST_SEED");
    const std::uint64_t seed = fixed ? std::strtoull(fixed, nullptr, 10) : std::random_device{}();
    std::printf("[cf_test] random seed %llu (set CF_TEST_SEED to replay)\n", static_cast<unsigned long long>(seed));
    return std::mt19937_64(seed);
  }();
  return engine;
}

inline int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng()); }

inline double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng()); }

inline std::vector<double> normal_vector(std::size_t n, double stddev = 1.0) {
  std::normal_distribution<double> dist(0.0, stddev);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng());
  return v;
}

}  // namespace cf_test
