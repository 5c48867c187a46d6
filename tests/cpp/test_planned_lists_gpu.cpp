// Planned job lists (bench/NOTES.md v55): a launch whose job lists do not depend on the position reads them from a
// table that a planning launch wrote when the layer was built. Every launch must give the bits it gives when each
// block builds its own lists at entry, in both modes, at positions in the first and a later attention tile.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "cuda_device.hpp"
#include "device_tensors.hpp"
#include "random_inputs.hpp"
#include "test_names.hpp"

namespace cf = clusterfusion;
using cf_test::DeviceBuffer;
using cf_test::HalfTensor;
using cf_test::RandomLayer;

namespace {

constexpr int kMaxSeq = 640;

cf::ModelConfig one_layer(const char* model) {
  cf::ModelConfig config = cf::model_config(model);
  config.layers = 1;
  return config;
}

// What one forward writes: the output, h1, attn, the MLP activation and the cache row it appends.
struct Written {
  std::vector<__half> out, h1, keys, values;
  std::vector<float> attn, act;
};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

struct LayerRun {
  cf::ModelConfig config;
  RandomLayer weights;
  cf::DecoderLayer layer;
  cf::KVCache cache;
  HalfTensor past, x, attn_output;
  DeviceBuffer<__half> out, h1;
  DeviceBuffer<float> attn, act;

  explicit LayerRun(const char* model)
      : config(one_layer(model)),
        weights(config, cf_test::rng()),
        layer(config, weights.views(), kMaxSeq),
        cache(config, kMaxSeq),
        past({int64_t(cache.layer_elems())}, 0, 1, cf_test::rng()),
        x({config.hidden}, 0, 1, cf_test::rng()),
        attn_output({config.hidden}, 0, 1, cf_test::rng()),
        out(config.hidden),
        h1(config.hidden),
        attn(config.hidden),
        act(config.ffn) {}

  void poison() {
    out.poison();
    h1.poison();
    attn.poison();
    act.poison();
  }

  // One forward at `position` over the same random past, every written buffer poisoned first.
  Written forward(cf::LayerMode mode, int position) {
    const std::size_t bytes = cache.layer_elems() * sizeof(__half);
    CF_CUDA_CHECK(cudaMemcpy(cache.keys(0), past.dev, bytes, cudaMemcpyDeviceToDevice));
    CF_CUDA_CHECK(cudaMemcpy(cache.values(0), past.dev, bytes, cudaMemcpyDeviceToDevice));
    cache.set_length(position);
    poison();
    layer.forward(cache, 0, cf::LayerIO{x.dev, out.dev, h1.dev, attn.dev, act.dev}, position, mode);
    CF_CUDA_CHECK(cudaDeviceSynchronize());
    Written w{out.get(), config.parallel_residual ? std::vector<__half>{} : h1.get(), {}, {}, attn.get(), act.get()};
    std::vector<__half> keys(cache.layer_elems()), values(cache.layer_elems());
    CF_CUDA_CHECK(cudaMemcpy(keys.data(), cache.keys(0), bytes, cudaMemcpyDeviceToHost));
    CF_CUDA_CHECK(cudaMemcpy(values.data(), cache.values(0), bytes, cudaMemcpyDeviceToHost));
    w.keys = std::move(keys);
    w.values = std::move(values);
    return w;
  }

  std::vector<__half> down_residual() {
    out.poison();
    layer.down_residual(x.dev, attn_output.dev, act.dev, out.dev);
    CF_CUDA_CHECK(cudaDeviceSynchronize());
    return out.get();
  }
};

void expect_same(const Written& planned, const Written& built) {
  EXPECT_TRUE(same_bits(planned.out, built.out)) << "out";
  EXPECT_TRUE(same_bits(planned.h1, built.h1)) << "h1";
  EXPECT_TRUE(same_bits(planned.attn, built.attn)) << "attn";
  EXPECT_TRUE(same_bits(planned.act, built.act)) << "act";
  EXPECT_TRUE(same_bits(planned.keys, built.keys)) << "keys";
  EXPECT_TRUE(same_bits(planned.values, built.values)) << "values";
}

bool all_finite(const std::vector<__half>& v) {
  for (const __half h : v)
    if (!std::isfinite(__half2float(h))) return false;
  return true;
}

class PlannedLists : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Models, PlannedLists, ::testing::Values("pythia-70m", "pythia-1.4b", "tinyllama-1.1b"),
                         cf_test::ModelTestName());

TEST_P(PlannedLists, SameBitsAsListsBuiltAtEntry) {
  CF_REQUIRE_HOPPER();
  LayerRun run(GetParam());
  // GPT-NeoX plans its proj phase and down_residual, Llama every launch.
  ASSERT_GT(run.layer.debug_planned_lists_bytes(), 0u);
  std::vector<cf::LayerMode> modes{cf::LayerMode::Split};
  if (run.layer.plan().cooperative_supported) modes.push_back(cf::LayerMode::Cooperative);
  for (const int position : {cf_test::uniform_int(1, 200), cf_test::uniform_int(400, kMaxSeq - 1)}) {
    for (const cf::LayerMode mode : modes) {
      SCOPED_TRACE(std::string(cf::layer_mode_name(mode)) + " at position " + std::to_string(position));
      run.layer.debug_set_planned_lists(false);
      const Written built = run.forward(mode, position);
      run.layer.debug_set_planned_lists(true);
      const Written planned = run.forward(mode, position);
      EXPECT_TRUE(all_finite(planned.out));
      expect_same(planned, built);
    }
  }
  // The launches read the table: with every planned list emptied (no jobs) the layer computes other bits.
  const std::size_t bytes = run.layer.debug_planned_lists_bytes();
  std::vector<unsigned char> table(bytes);
  CF_CUDA_CHECK(cudaMemcpy(table.data(), run.layer.debug_planned_lists(), bytes, cudaMemcpyDeviceToHost));
  const int position = cf_test::uniform_int(1, kMaxSeq - 1);
  const Written planned = run.forward(cf::LayerMode::Split, position);
  CF_CUDA_CHECK(cudaMemset(run.layer.debug_planned_lists(), 0, bytes));
  const Written emptied = run.forward(cf::LayerMode::Split, position);
  CF_CUDA_CHECK(cudaMemcpy(run.layer.debug_planned_lists(), table.data(), bytes, cudaMemcpyHostToDevice));
  EXPECT_FALSE(same_bits(emptied.out, planned.out)) << "a split forward did not read its planned lists";
  EXPECT_TRUE(same_bits(run.forward(cf::LayerMode::Split, position).out, planned.out)) << "restored";

  if (run.config.parallel_residual) {
    run.layer.debug_set_planned_lists(false);
    const std::vector<__half> built = run.down_residual();
    run.layer.debug_set_planned_lists(true);
    const std::vector<__half> planned = run.down_residual();
    EXPECT_TRUE(all_finite(planned));
    EXPECT_TRUE(same_bits(planned, built)) << "down_residual";
  }
}

}  // namespace
