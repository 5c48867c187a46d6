// Planned job lists (bench/NOTES.md v55): a launch whose job lists do not depend on the position reads them from a
// table that a planning launch wrote when the layer was built. The table must hold, byte for byte, the lists each
// block builds at entry at any position and cache length, and every launch must give the bits it gives when each
// block builds its own lists at entry, in both modes, at positions in the first and a later attention tile, also
// overlapped and at a device position.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "clusterfusion/kernels/layer_launch.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "cuda_device.hpp"
#include "device_tensors.hpp"
#include "random_inputs.hpp"
#include "test_names.hpp"

namespace cf = clusterfusion;
namespace kernels = clusterfusion::kernels;
using cf_test::DeviceBuffer;
using cf_test::HalfTensor;
using cf_test::RandomLayer;

namespace {

constexpr int kMaxSeq = 640;
constexpr int kShortSeq = 100;  // a cache or a layer shorter than kMaxSeq (other attention chunk lengths)

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
  DeviceBuffer<int> device_position{1};

  explicit LayerRun(const char* model, int cache_seq = kMaxSeq)
      : config(one_layer(model)),
        weights(config, cf_test::rng()),
        layer(config, weights.views(), kMaxSeq),
        cache(config, cache_seq),
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

  // One forward at `position` (read from device memory if at_device_position) over the same random past, every
  // written buffer poisoned first.
  Written forward(cf::LayerMode mode, int position, bool at_device_position = false) {
    const std::size_t bytes = cache.layer_elems() * sizeof(__half);
    CF_CUDA_CHECK(cudaMemcpy(cache.keys(0), past.dev, bytes, cudaMemcpyDeviceToDevice));
    CF_CUDA_CHECK(cudaMemcpy(cache.values(0), past.dev, bytes, cudaMemcpyDeviceToDevice));
    cache.set_length(position);
    poison();
    const cf::LayerIO io{x.dev, out.dev, h1.dev, attn.dev, act.dev};
    if (at_device_position) {
      CF_CUDA_CHECK(cudaMemcpy(device_position.dev, &position, sizeof(int), cudaMemcpyHostToDevice));
      layer.forward_at_device_position(cache, 0, io, device_position.dev, mode);
    } else {
      layer.forward(cache, 0, io, position, mode);
    }
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

// The layer's table, byte for byte, against the lists every planned launch's blocks build at entry in a step at
// `position` with `cache`, written over poison.
void expect_table_built_at_entry(const cf::DecoderLayer& layer, const cf::KVCache& cache, int position) {
  SCOPED_TRACE("cache max_seq " + std::to_string(cache.max_seq()) + ", position " + std::to_string(position));
  const std::size_t bytes = layer.debug_planned_lists_bytes();
  ASSERT_GT(bytes, 0u);
  std::vector<unsigned char> planned(bytes);
  CF_CUDA_CHECK(cudaMemcpy(planned.data(), layer.debug_planned_lists(), bytes, cudaMemcpyDeviceToHost));
  DeviceBuffer<unsigned char> built(bytes);
  built.poison();
  layer.debug_plan_job_lists(cache, position, built.dev);
  const std::vector<unsigned char> got = built.get();
  const auto differ = std::mismatch(planned.begin(), planned.end(), got.begin()).first;
  EXPECT_TRUE(differ == planned.end()) << "the table differs first in its 64-byte record "
                                       << (differ - planned.begin()) / 64 << " of " << bytes / 64;
}

class PlannedLists : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Models, PlannedLists, ::testing::Values("pythia-70m", "pythia-1.4b", "tinyllama-1.1b"),
                         cf_test::ModelTestName());

TEST_P(PlannedLists, TableIsTheListsBuiltAtEntry) {
  CF_REQUIRE_HOPPER();
  LayerRun run(GetParam());
  const cf::KVCache short_cache(run.config, kShortSeq);
  expect_table_built_at_entry(run.layer, run.cache, cf_test::uniform_int(1, 200));
  expect_table_built_at_entry(run.layer, run.cache, cf_test::uniform_int(400, kMaxSeq - 1));
  expect_table_built_at_entry(run.layer, short_cache, cf_test::uniform_int(0, kShortSeq - 1));
  SCOPED_TRACE("a layer of max_seq " + std::to_string(kShortSeq));
  const cf::DecoderLayer short_layer(run.config, run.weights.views(), kShortSeq);
  expect_table_built_at_entry(short_layer, short_cache, cf_test::uniform_int(0, kShortSeq - 1));
}

// A cache shorter than the layer's max_seq, launches overlapping the previous kernel, the position in device memory
// (as in DecodeContext's step graph).
TEST_P(PlannedLists, SameBitsOverlappedAtDevicePositionWithShortCache) {
  CF_REQUIRE_HOPPER();
  LayerRun run(GetParam(), kShortSeq);
  run.layer.set_overlap_previous_kernel(true);
  std::vector<cf::LayerMode> modes{cf::LayerMode::Split};
  if (run.layer.plan().cooperative_supported) modes.push_back(cf::LayerMode::Cooperative);
  const int position = cf_test::uniform_int(1, kShortSeq - 1);
  for (const cf::LayerMode mode : modes) {
    SCOPED_TRACE(std::string(cf::layer_mode_name(mode)) + " at position " + std::to_string(position));
    run.layer.debug_set_planned_lists(false);
    const Written built = run.forward(mode, position, true);
    run.layer.debug_set_planned_lists(true);
    const Written planned = run.forward(mode, position, true);
    EXPECT_TRUE(all_finite(planned.out));
    expect_same(planned, built);
  }
}

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
  // The launches read the table: with every planned list emptied (no jobs) the layer computes other bits. An
  // attending launch keeps its lists: its blocks wait for the bytes of every q|k|v row, and an emptied list sends none.
  const std::size_t bytes = run.layer.debug_planned_lists_bytes();
  std::vector<unsigned char> table(bytes);
  CF_CUDA_CHECK(cudaMemcpy(table.data(), run.layer.debug_planned_lists(), bytes, cudaMemcpyDeviceToHost));
  const int position = cf_test::uniform_int(1, kMaxSeq - 1);
  const Written planned = run.forward(cf::LayerMode::Split, position);
  const kernels::LayerModel model =
      run.config.arch == cf::Architecture::GPTNeoX ? kernels::LayerModel::GptNeoX : kernels::LayerModel::Llama;
  std::size_t emptied_bytes = 0;
  for (int phase = 0; phase < kernels::layer_phase_count(model); ++phase) {
    const auto [lists, phase_bytes] = run.layer.debug_planned_lists_of_phase(phase);
    if (kernels::layer_phase_attends(model, phase) || phase_bytes == 0) continue;
    CF_CUDA_CHECK(cudaMemset(lists, 0, phase_bytes));
    emptied_bytes += phase_bytes;
  }
  ASSERT_GT(emptied_bytes, 0u);
  EXPECT_THROW(run.layer.debug_planned_lists_of_phase(-1), std::invalid_argument);
  EXPECT_THROW(run.layer.debug_planned_lists_of_phase(kernels::layer_phase_count(model)), std::invalid_argument);
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
