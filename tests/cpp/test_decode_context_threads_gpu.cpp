// DecodeContext's threading contract: calls from several threads are serialised, each running whole. Two threads
// stepping one context while a third sets the sampling again and again (dropping the captured graph each time)
// and a fourth reads it must produce exactly the tokens of the same steps run one after another.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/decode_context.hpp"
#include "cuda_device.hpp"
#include "random_inputs.hpp"
#include "random_model.hpp"

namespace cf = clusterfusion;

namespace {

// Runs `body` on `count` threads at once; rethrows the first exception any of them threw.
template <class Body>
void run_threads(int count, Body body) {
  std::vector<std::exception_ptr> errors(count);
  std::vector<std::thread> threads;
  for (int i = 0; i < count; ++i) {
    threads.emplace_back([&, i] {
      try {
        body(i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace

TEST(DecodeContextThreadsGpu, ConcurrentStepsAndSamplingChangesEqualASerialReplay) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config();
  const cf_test::RandomModel model(config, cf_test::rng());
  // Sampling, so that a step run with a stale graph or at a wrong position would show in the tokens (each draw's
  // Philox counter is its position).
  const cf::SamplingParams params{0.9f, 0, 0.95f, static_cast<std::uint64_t>(cf_test::uniform_int(0, 1 << 30))};
  std::vector<int> prompt(4);
  for (int& t : prompt) t = cf_test::uniform_int(0, config.vocab - 1);
  constexpr int kSteppers = 2, kStepsEach = 40, kMaxSeq = 128;

  cf::DecodeContext ctx(config, model.weights, kMaxSeq);
  ctx.set_sampling(params);
  ctx.prefill(prompt);
  std::vector<std::vector<int>> returned(kSteppers);
  std::atomic<int> steppers_done{0};
  std::vector<int> positions_seen;
  run_threads(kSteppers + 2, [&](int i) {
    if (i < kSteppers) {
      for (int s = 0; s < kStepsEach; ++s) returned[i].push_back(ctx.step());
      ++steppers_done;
    } else if (i == kSteppers) {
      // The same parameters every time: each call drops the graph, so the steppers recapture as they go, and
      // the tokens must not change.
      while (steppers_done < kSteppers) {
        ctx.set_sampling(params);
        std::this_thread::sleep_for(std::chrono::microseconds(200));  // a mutex need not be fair
      }
    } else {
      while (steppers_done < kSteppers) {
        positions_seen.push_back(ctx.position());
        EXPECT_EQ(ctx.sampling().seed, params.seed);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
  });
  const int end = int(prompt.size()) + kSteppers * kStepsEach;
  EXPECT_EQ(ctx.position(), end);
  // Every position a reader saw lies between two whole steps, in order.
  EXPECT_TRUE(std::is_sorted(positions_seen.begin(), positions_seen.end()));
  for (const int p : positions_seen) EXPECT_TRUE(p >= int(prompt.size()) && p <= end) << p;

  cf::DecodeContext serial(config, model.weights, kMaxSeq);
  serial.set_sampling(params);
  std::vector<int> expected{serial.prefill(prompt)};
  for (int s = 0; s < kSteppers * kStepsEach; ++s) expected.push_back(serial.step());
  EXPECT_EQ(ctx.tokens(0, end + 1), serial.tokens(0, end + 1));
  // Each step() returned the token of its own step: together, the serial run's tokens after the prefill's.
  std::vector<int> all;
  for (const auto& r : returned) all.insert(all.end(), r.begin(), r.end());
  std::vector<int> serial_steps(expected.begin() + 1, expected.end());
  std::sort(all.begin(), all.end());
  std::sort(serial_steps.begin(), serial_steps.end());
  EXPECT_EQ(all, serial_steps);
}

TEST(DecodeContextThreadsGpu, ResetsBetweenStepsNeverTearAStep) {
  CF_REQUIRE_HOPPER();
  const cf::ModelConfig config = cf_test::small_model_config();
  const cf_test::RandomModel model(config, cf_test::rng());
  const int token = cf_test::uniform_int(0, config.vocab - 1);
  cf::DecodeContext ctx(config, model.weights, 64), serial(config, model.weights, 64);
  // From a reset, the first step's output depends on nothing else: every step(token) at position 0 returns it.
  const int first = serial.step(token);
  std::atomic<bool> stop{false};
  run_threads(3, [&](int i) {
    if (i == 0) {
      for (int s = 0; s < 60; ++s) {
        ctx.reset();
        EXPECT_EQ(ctx.step(token), first);
      }
      stop = true;
    } else {
      // Steps at whatever position the context is in: they must neither fail nor corrupt the one above.
      while (!stop) {
        try {
          ctx.step();
        } catch (const std::logic_error&) {  // no device token right after a reset, or the cache is full
        }
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  });
}
