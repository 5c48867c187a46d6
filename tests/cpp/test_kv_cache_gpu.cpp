// KVCache on a device: the allocation's size and layout, zero fill, and move semantics.
#include <cstdint>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "cuda_device.hpp"
#include "random_inputs.hpp"

namespace cf = clusterfusion;

namespace {

std::vector<uint16_t> download(const __half* src, std::size_t n) {
  std::vector<uint16_t> host(n);
  CF_CUDA_CHECK(cudaMemcpy(host.data(), src, n * sizeof(__half), cudaMemcpyDeviceToHost));
  return host;
}

}  // namespace

TEST(KVCacheGpu, AllocatesEveryLayerContiguously) {
  CF_REQUIRE_CUDA_DEVICE();
  const cf::ModelConfig c = cf::pythia_config("pythia-2.8b");
  const int max_seq = cf_test::uniform_int(1, 64);
  const cf::KVCache cache(c, max_seq);
  const std::size_t layer = std::size_t{32} * max_seq * 80;
  EXPECT_EQ(cache.layer_elems(), layer);
  EXPECT_EQ(cache.bytes(), 2 * 32 * layer * sizeof(__half));
  EXPECT_EQ(cache.length(), 0);
  for (int l = 0; l < c.layers; ++l) {
    EXPECT_EQ(cache.keys(l) - cache.keys(0), static_cast<std::ptrdiff_t>(l * layer));
    EXPECT_EQ(cache.values(l) - cache.values(0), static_cast<std::ptrdiff_t>(l * layer));
  }
  // Keys and values are separate allocations that do not overlap.
  const auto k = reinterpret_cast<std::uintptr_t>(cache.keys(0)), v = reinterpret_cast<std::uintptr_t>(cache.values(0));
  EXPECT_TRUE(k + cache.bytes() / 2 <= v || v + cache.bytes() / 2 <= k);
  EXPECT_EQ(k % 256, 0u);  // TMA wants 16; cudaMalloc gives 256
  cudaPointerAttributes attr{};
  CF_CUDA_CHECK(cudaPointerGetAttributes(&attr, cache.keys(c.layers - 1)));
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  EXPECT_THROW(cache.keys(c.layers), std::out_of_range);
  EXPECT_THROW(cache.values(-1), std::out_of_range);
}

TEST(KVCacheGpu, StartsZeroedAndHoldsWhatIsWritten) {
  CF_REQUIRE_CUDA_DEVICE();
  cf::ModelConfig c = cf::pythia_config("pythia-70m");
  const cf::KVCache cache(c, cf_test::uniform_int(1, 32));
  const std::size_t n = cache.layer_elems() * c.layers;
  for (const __half* base : {cache.keys(0), cache.values(0)}) {
    for (uint16_t bits : download(base, n)) ASSERT_EQ(bits, 0u);
  }
  // The last layer's values end exactly at the allocation's end: a full round trip touches every byte of it.
  std::vector<uint16_t> data(cache.layer_elems());
  for (uint16_t& bits : data) bits = static_cast<uint16_t>(cf_test::uniform_int(0, 0xffff));
  CF_CUDA_CHECK(cudaMemcpy(cache.values(c.layers - 1), data.data(), data.size() * sizeof(__half),
                           cudaMemcpyHostToDevice));
  EXPECT_EQ(download(cache.values(c.layers - 1), data.size()), data);
}

TEST(KVCacheGpu, MoveLeavesTheSourceEmpty) {
  CF_REQUIRE_CUDA_DEVICE();
  const cf::ModelConfig c = cf::pythia_config("pythia-160m");
  cf::KVCache a(c, cf_test::uniform_int(2, 32));
  a.set_length(1);
  __half* keys = a.keys(0);
  const std::size_t bytes = a.bytes();

  cf::KVCache b(std::move(a));
  EXPECT_EQ(b.keys(0), keys);
  EXPECT_EQ(b.bytes(), bytes);
  EXPECT_EQ(b.length(), 1);
  EXPECT_EQ(a.layers(), 0);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  EXPECT_EQ(a.bytes(), 0u);
  EXPECT_THROW(a.keys(0), std::out_of_range);

  cf::KVCache d(c, 1);
  d = std::move(b);  // frees d's own memory, takes b's
  EXPECT_EQ(d.keys(0), keys);
  EXPECT_EQ(d.length(), 1);
  EXPECT_EQ(b.bytes(), 0u);
}
