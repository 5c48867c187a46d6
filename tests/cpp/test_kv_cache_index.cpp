// KV cache bookkeeping (KVCacheIndex) without a GPU, and what KVCache does when there is no device.
#include <functional>
#include <stdexcept>
#include <string>

#include <gtest/gtest.h>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/device_check.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "cuda_device.hpp"
#include "random_inputs.hpp"
#include "thrown_message.hpp"

namespace cf = clusterfusion;

namespace {

std::string out_of_range(const std::function<void()>& fn) { return cf_test::thrown_message<std::out_of_range>(fn); }

}  // namespace

TEST(KVCacheIndex, TakesItsShapeFromTheConfig) {
  const cf::ModelConfig c = cf::pythia_config("pythia-2.8b");
  const int max_seq = cf_test::uniform_int(1, 4096);
  const cf::KVCacheIndex index(c, max_seq);
  EXPECT_EQ(index.layers(), 32);
  EXPECT_EQ(index.heads(), 32);
  EXPECT_EQ(index.head_dim(), 80);
  EXPECT_EQ(index.max_seq(), max_seq);
  EXPECT_EQ(index.length(), 0);
  EXPECT_EQ(index.layer_elems(), std::size_t{32} * max_seq * 80);
}

TEST(KVCacheIndex, HoldsTheKvHeadsOfGroupedQueryAttention) {
  const int max_seq = cf_test::uniform_int(1, 4096);
  const struct {
    const char* name;
    int kv_heads, head_dim, layers;
  } models[] = {{"tinyllama-1.1b", 4, 64, 22}, {"llama-3-8b", 8, 128, 32}, {"llama-3.2-1b", 8, 64, 16},
                {"llama-2-7b", 32, 128, 32}};
  for (const auto& m : models) {
    SCOPED_TRACE(m.name);
    const cf::KVCacheIndex index(cf::model_config(m.name), max_seq);
    EXPECT_EQ(index.heads(), m.kv_heads);  // not the 32 query heads
    EXPECT_EQ(index.head_dim(), m.head_dim);
    EXPECT_EQ(index.layers(), m.layers);
    EXPECT_EQ(index.layer_elems(), std::size_t(m.kv_heads) * max_seq * m.head_dim);
  }

  // A random grouped config: the cache follows kv_heads, whatever heads is.
  cf::ModelConfig c = cf::model_config("tinyllama-1.1b");
  c.kv_heads = cf_test::uniform_int(1, 8);
  c.heads = c.kv_heads * cf_test::uniform_int(1, 8);
  c.head_dim = 2 * cf_test::uniform_int(1, 64);
  c.hidden = c.heads * c.head_dim;
  c.rotary_dims = c.head_dim;
  const cf::KVCacheIndex index(c, max_seq);
  EXPECT_EQ(index.heads(), c.kv_heads) << "heads " << c.heads;
  EXPECT_EQ(index.layer_elems(), std::size_t(c.kv_heads) * max_seq * c.head_dim);
}

TEST(KVCacheIndex, RejectsAKvHeadCountThatDoesNotDivideTheHeads) {
  cf::ModelConfig c = cf::model_config("tinyllama-1.1b");
  c.kv_heads = 5;
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { cf::KVCacheIndex(c, 16); }),
            "ModelConfig.kv_heads: must divide heads = 32 (got 5)");
}

TEST(KVCacheIndex, RejectsBadMaxSeqAndConfig) {
  const cf::ModelConfig c = cf::pythia_config("pythia-70m");
  const int bad = -cf_test::uniform_int(0, 100);
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { cf::KVCacheIndex(c, bad); }),
            "KVCache: max_seq must be > 0 (got " + std::to_string(bad) + ")");
  cf::ModelConfig broken = c;
  broken.head_dim = 0;
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([&] { cf::KVCacheIndex(broken, 16); }),
            "ModelConfig.head_dim: must be > 0 (got 0)");
}

TEST(KVCacheIndex, AppendsOnlyAtOrBeforeLength) {
  const int max_seq = cf_test::uniform_int(8, 512);
  cf::KVCacheIndex index(cf::pythia_config("pythia-70m"), max_seq);
  EXPECT_NO_THROW(index.check_append(0));
  EXPECT_EQ(out_of_range([&] { index.check_append(1); }),
            "KVCache: position 1 is past length 0 (the cache is empty; the next position to write is 0)");

  const int length = cf_test::uniform_int(1, max_seq - 2);
  index.set_length(length);
  EXPECT_EQ(index.length(), length);
  // Rewriting a held position (e.g. re-decoding after a rollback) is allowed; skipping one is not.
  for (int p : {0, length / 2, length}) EXPECT_NO_THROW(index.check_append(p)) << p;
  EXPECT_EQ(out_of_range([&] { index.check_append(length + 1); }),
            "KVCache: position " + std::to_string(length + 1) + " is past length " + std::to_string(length) +
                " (positions 0.." + std::to_string(length - 1) + " hold data; the next position to write is " +
                std::to_string(length) + ")");
  EXPECT_EQ(out_of_range([&] { index.check_append(-1); }), "KVCache: position -1 is negative");
  EXPECT_EQ(index.length(), length);  // failed checks change nothing
}

TEST(KVCacheIndex, FullCacheRejectsTheNextPosition) {
  const int max_seq = cf_test::uniform_int(1, 4096);
  cf::KVCacheIndex index(cf::pythia_config("pythia-160m"), max_seq);
  index.set_length(max_seq);
  EXPECT_NO_THROW(index.check_append(max_seq - 1));
  const std::string m = std::to_string(max_seq);
  EXPECT_EQ(out_of_range([&] { index.check_append(max_seq); }),
            "KVCache: position " + m + " is past max_seq " + m);
}

TEST(KVCacheIndex, SetLengthStaysWithinMaxSeq) {
  const int max_seq = cf_test::uniform_int(1, 4096);
  cf::KVCacheIndex index(cf::pythia_config("pythia-160m"), max_seq);
  const int length = cf_test::uniform_int(0, max_seq);
  index.set_length(length);
  EXPECT_EQ(out_of_range([&] { index.set_length(max_seq + 1); }),
            "KVCache: length " + std::to_string(max_seq + 1) + " is past max_seq " + std::to_string(max_seq));
  EXPECT_EQ(out_of_range([&] { index.set_length(-3); }), "KVCache: length -3 is negative");
  EXPECT_EQ(index.length(), length);
  index.reset();
  EXPECT_EQ(index.length(), 0);
}

TEST(KVCacheIndex, ChecksTheLayer) {
  cf::KVCacheIndex index(cf::pythia_config("pythia-70m"), 16);
  for (int layer = 0; layer < 6; ++layer) EXPECT_NO_THROW(index.check_layer(layer));
  EXPECT_EQ(out_of_range([&] { index.check_layer(6); }), "KVCache: layer 6 is outside 0..5 (6 layers)");
  EXPECT_EQ(out_of_range([&] { index.check_layer(-1); }), "KVCache: layer -1 is outside 0..5 (6 layers)");
}

TEST(KVCache, ValidatesBeforeTouchingTheDevice) {
  EXPECT_EQ(cf_test::thrown_message<std::invalid_argument>([] { cf::KVCache(cf::pythia_config("pythia-70m"), 0); }),
            "KVCache: max_seq must be > 0 (got 0)");
}

TEST(KVCache, WithoutADeviceTheDeviceCheckRefusesBeforeCudaMalloc) {
  if (cf_test::no_cuda_device_reason().empty()) GTEST_SKIP() << "a CUDA device is present";
  try {
    cf::KVCache cache(cf::pythia_config("pythia-70m"), cf_test::uniform_int(1, 64));
    FAIL() << "KVCache allocated with no CUDA device";
  } catch (const cf::UnsupportedDeviceError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("clusterfusion needs an NVIDIA GPU of compute capability 9.0", 0), 0u)
        << e.what();
  }
}
