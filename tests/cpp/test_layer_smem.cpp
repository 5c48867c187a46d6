// The decoder layer's shared memory per block (kernels::layer_smem, what plan_layer asks for) against sm_90's
// opt-in maximum, without a GPU: every Pythia / GPT-NeoX shape up to gpt-neox-20b fits in every phase and in the
// cooperative launch, at one cluster per head (the plan's bound) for every cluster size the plan may pick.
// Before proj_residual read only each rank's K slice of attn | act, pythia-12b and gpt-neox-20b did not
// (243328 and 263680 bytes at clusters of one block).
#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clusterfusion/config.hpp"
#include "clusterfusion/kernels/layer_launch.hpp"

namespace cf = clusterfusion;
namespace kernels = clusterfusion::kernels;

namespace {

constexpr std::size_t kHopperOptinSmem = 232448;  // cudaDeviceProp::sharedMemPerBlockOptin of H100 and H200
constexpr int kMaxClusterSize = 8;                 // plan_layer's (the portable limit)

kernels::LayerShape shape_of(const cf::ModelConfig& c, int max_seq) {
  return {c.arch == cf::Architecture::GPTNeoX ? kernels::LayerModel::GptNeoX : kernels::LayerModel::Llama,
          c.hidden, c.heads, c.kv_heads, c.head_dim, c.ffn, max_seq};
}

// The cluster sizes plan_layer considers for a config (it skips those with more ranks than q|k|v box rows).
int largest_cluster(const cf::ModelConfig& c) {
  return std::min(kMaxClusterSize, 3 * c.head_dim / kernels::kBoxRows);
}

// Every launch plan_layer may make (each phase alone, all of them cooperatively) fits `limit` at clusters of
// n = from..largest_cluster blocks, one cluster per head.
void expect_fits(const cf::ModelConfig& c, int max_seq, int from, std::size_t limit) {
  const kernels::LayerShape shape = shape_of(c, max_seq);
  const int phases = kernels::layer_phase_count(shape.model);
  for (int n = from; n <= largest_cluster(c); ++n) {
    for (int first = 0; first < phases; ++first) {
      EXPECT_LE(kernels::layer_smem(shape, first, first, n, c.heads, n), limit)
          << "max_seq " << max_seq << ", clusters of " << n << ", phase "
          << kernels::layer_phase_name(shape.model, first);
    }
    EXPECT_LE(kernels::layer_smem(shape, 0, phases - 1, n, c.heads, n), limit)
        << "max_seq " << max_seq << ", clusters of " << n << ", cooperative";
  }
}

std::vector<std::string> neox_names() {
  std::vector<std::string> names;
  for (const std::string& name : cf::model_names())
    if (cf::model_config(name).arch == cf::Architecture::GPTNeoX) names.push_back(name);
  return names;
}

}  // namespace

TEST(LayerSmem, TheLimitIsHoppersOptInMaximum) { EXPECT_EQ(kernels::kMaxSmemPerBlock, kHopperOptinSmem); }

TEST(LayerSmem, EveryNeoXShapeFitsAtItsContextLength) {
  const std::vector<std::string> names = neox_names();
  for (const char* expected : {"pythia-70m", "pythia-2.8b", "pythia-6.9b", "pythia-12b", "gpt-neox-20b"})
    ASSERT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    expect_fits(cf::model_config(name), 2048, 1, kHopperOptinSmem);  // max_position_embeddings of them all
  }
}

// Twice the context: the attention keeps no per-position buffer in shared memory (a running softmax per segment),
// so no launch may grow with max_seq.
TEST(LayerSmem, EveryNeoXShapeFitsAt4096Positions) {
  for (const std::string& name : neox_names()) {
    SCOPED_TRACE(name);
    expect_fits(cf::model_config(name), 4096, 1, kHopperOptinSmem);
  }
}

// The attention's state per block is a running softmax per segment: no launch's shared memory depends on max_seq.
TEST(LayerSmem, NoLaunchGrowsWithTheContext) {
  for (const char* name : {"pythia-2.8b", "gpt-neox-20b", "llama-2-7b", "tinyllama-1.1b"}) {
    SCOPED_TRACE(name);
    const cf::ModelConfig c = cf::model_config(name);
    const kernels::LayerShape s512 = shape_of(c, 512), s32k = shape_of(c, 32768);
    const int phases = kernels::layer_phase_count(s512.model);
    for (int first = 0; first < phases; ++first)
      EXPECT_EQ(kernels::layer_smem(s512, first, first, 2, c.heads, 2),
                kernels::layer_smem(s32k, first, first, 2, c.heads, 2))
          << kernels::layer_phase_name(s512.model, first);
    EXPECT_EQ(kernels::layer_smem(s512, 0, phases - 1, 2, c.heads, 2),
              kernels::layer_smem(s32k, 0, phases - 1, 2, c.heads, 2));
  }
}

// The Llama shapes that ran before keep fitting.
TEST(LayerSmem, LlamaShapesFit) {
  for (const char* name : {"llama-2-7b", "tinyllama-1.1b", "llama-3-8b", "llama-3.2-1b"}) {
    SCOPED_TRACE(name);
    expect_fits(cf::model_config(name), 4096, 1, kHopperOptinSmem);
  }
}

// Where plan_layer spreads Llama's heads-only phase over clusters of m > n (n the layer's cluster size), every
// launch cuts a head's positions into m attention chunks: that phase alone on its clusters of m, and the
// cooperative kernel on clusters of n, fit too. On the H200 the plan is n = 2, m = 3 for every Llama shape; were
// these launches to outgrow the limit, the planner would quietly stop spreading.
TEST(LayerSmem, LlamaSpreadLaunchesFit) {
  for (const char* name : {"llama-2-7b", "tinyllama-1.1b", "llama-3-8b", "llama-3.2-1b"}) {
    SCOPED_TRACE(name);
    const cf::ModelConfig c = cf::model_config(name);
    const kernels::LayerShape shape = shape_of(c, 4096);
    const int phases = kernels::layer_phase_count(shape.model);
    int heads_only = -1;
    for (int i = 0; i < phases; ++i)
      if (kernels::layer_phase_heads_only(shape.model, i)) heads_only = i;
    ASSERT_GE(heads_only, 0);
    const int units = 3 * c.head_dim / kernels::kBoxRows;
    for (int n = 1; n < largest_cluster(c); ++n) {
      for (int m = n + 1; m <= largest_cluster(c); ++m) {
        if (units % m != 0) continue;
        EXPECT_LE(kernels::layer_smem(shape, heads_only, heads_only, m, c.heads, m), kHopperOptinSmem)
            << "heads-only phase on clusters of " << m;
        EXPECT_LE(kernels::layer_smem(shape, 0, phases - 1, n, c.heads, m), kHopperOptinSmem)
            << "cooperative on clusters of " << n << ", " << m << " attention chunks";
      }
    }
  }
}

// proj_residual holds only a rank's slice of K (attn | act): its shared memory shrinks as the cluster grows (it
// grew before, with the ranks' partial sums on rank 0, while every rank held the whole K).
TEST(LayerSmem, ProjResidualShrinksWithTheCluster) {
  for (const char* name : {"pythia-12b", "gpt-neox-20b", "llama-2-7b"}) {
    SCOPED_TRACE(name);
    const cf::ModelConfig c = cf::model_config(name);
    const kernels::LayerShape shape = shape_of(c, 2048);
    const int proj = kernels::layer_phase_count(shape.model) - 1;
    ASSERT_FALSE(kernels::layer_phase_attends(shape.model, proj));
    std::size_t previous = kernels::layer_smem(shape, proj, proj, 2, c.heads, 2);
    for (int n = 3; n <= kMaxClusterSize; ++n) {
      const std::size_t smem = kernels::layer_smem(shape, proj, proj, n, c.heads, n);
      EXPECT_LT(smem, previous) << "clusters of " << n;
      previous = smem;
    }
  }
}
