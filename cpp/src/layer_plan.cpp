// The launch plan of the decoder-layer kernels: what the kernels support, and the grid for this device.
#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "clusterfusion/device_check.hpp"
#include "clusterfusion/kernels/layer_launch.hpp"
#include "layer_shape.hpp"

// Build-time knob for the A/B of bench/NOTES.md v36: the cluster size of a phase that only the head clusters
// work in. 0: the largest that fits (heads clusters resident at once, one block per SM); -1: the layer's own;
// n: n only, where it fits.
#ifndef CF_HEAD_PHASE_CLUSTER
#define CF_HEAD_PHASE_CLUSTER 0
#endif

namespace clusterfusion {

namespace {

constexpr int kMaxClusterSize = 8;  // the portable limit

void require_multiple(const char* field, int value, int of) {
  if (value % of != 0)
    throw std::invalid_argument(std::string("ModelConfig.") + field + ": must be a multiple of " + std::to_string(of) +
                                " for the TMA boxes (got " + std::to_string(value) + ")");
}

}  // namespace

LayerLaunchPlan plan_layer(const ModelConfig& c, int max_seq) {
  c.validate();
  if (max_seq <= 0) throw std::invalid_argument("max_seq: must be positive (got " + std::to_string(max_seq) + ")");
  require_multiple("hidden", c.hidden, kernels::kBoxCols);
  require_multiple("ffn", c.ffn, kernels::kBoxCols);
  constexpr int kMaxHidden = kernels::kLnVecs * 8 * kernels::kThreads;
  if (c.hidden > kMaxHidden)
    throw std::invalid_argument("ModelConfig.hidden: at most " + std::to_string(kMaxHidden) + " (got " +
                                std::to_string(c.hidden) + ")");
  const kernels::LayerShape shape = layer_shape(c, max_seq);
  const int phases = kernels::layer_phase_count(shape.model);
  require_hopper();
  int device = 0;
  CF_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop;
  CF_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major < 9)
    throw std::runtime_error("the fused layer needs thread-block clusters and TMA (compute capability 9.0+), "
                             "device " + std::string(prop.name) + " is " + std::to_string(prop.major) + "." +
                             std::to_string(prop.minor));

  // One block per SM. Pick the cluster size N and cluster count C with the most blocks C*N such that every
  // head gets a cluster (C >= heads) and all C clusters are resident at once (the cooperative grid barrier
  // needs it; the split kernels then also run in one wave). Clusters beyond the heads stream MLP and output
  // rows only. Ties go to the larger N, which spreads each head's attention over more blocks.
  const std::size_t limit = prop.sharedMemPerBlockOptin;
  auto fill = [&](LayerLaunchPlan& plan, int n, int clusters, int chunks) {
    plan.cluster_size = n;
    plan.clusters = clusters;
    plan.blocks = clusters * n;
    plan.attention_chunks = chunks;
    plan.phase_grids.clear();
    for (int i = 0; i < phases; ++i)
      plan.phase_grids.push_back({n, n * clusters, kernels::layer_smem(shape, i, i, n, clusters, chunks)});
    plan.smem_cooperative = kernels::layer_smem(shape, 0, phases - 1, n, clusters, chunks);
  };
  const int units = 3 * c.head_dim / kernels::kBoxRows;  // a head's q|k|v jobs: at most one rank each
  LayerLaunchPlan plan;
  plan.threads = kernels::kThreads;
  for (int n = kMaxClusterSize; n >= 1; --n) {
    if (n > units || (kernels::kBlocksPerSm > 1 && n != 2)) continue;
    // Shared memory shrinks as clusters grow (fewer output rows each): bound it at the fewest admissible
    // clusters, one per head, for the occupancy query.
    const std::size_t smem_bound = kernels::layer_smem(shape, 0, phases - 1, n, c.heads, n);
    if (smem_bound > limit) continue;
    int resident = 0;
    CF_CUDA_CHECK(kernels::max_active_layer_clusters(shape, n, smem_bound, &resident));
    const int clusters = std::min(resident, prop.multiProcessorCount / n);
    if (clusters < c.heads || clusters * n <= plan.blocks) continue;
    fill(plan, n, clusters, n);
    plan.cooperative_supported = true;
  }
  if (plan.blocks == 0) {
    // More heads than resident clusters: the split kernels still run (in waves), the cooperative one cannot.
    for (int i = 0; i < phases; ++i) {
      const std::size_t smem = kernels::layer_smem(shape, i, i, 1, c.heads, 1);
      if (smem <= limit) continue;
      const std::string what = kernels::layer_phase_attends(shape.model, i)
                                   ? "max_seq: " + std::to_string(max_seq)
                                   : "ModelConfig.ffn: " + std::to_string(c.ffn);
      throw std::invalid_argument(what + " needs " + std::to_string(smem) +
                                  " bytes of shared memory per block, over the " + std::to_string(limit) +
                                  " available");
    }
    fill(plan, 1, c.heads, 1);
    return plan;
  }
  if (kernels::kBlocksPerSm > 1) {
    // v81: launches alternate between more and less than half an SM's shared memory, so that each SM holds one block
    // of the running launch and one of the next, never two of one launch.
    const std::size_t sm = prop.sharedMemPerMultiprocessor, reserved = prop.reservedSharedMemPerBlock;
    const std::size_t big = sm / 2 - reserved + 16;
    // CF_CORESIDENT=2: the same plan with every launch over half, so one block per SM (the control of the A/B).
    const int step = CF_CORESIDENT == 2 ? 1 : 2;
    for (int i = 0; i < phases; i += step) plan.phase_grids[i].smem = std::max(plan.phase_grids[i].smem, big);
    for (int i = 0; i < phases && step == 2; ++i) {
      const std::size_t pair = plan.phase_grids[i].smem + plan.phase_grids[(i + 1) % phases].smem + 2 * reserved;
      const std::size_t three = plan.phase_grids[i & ~1].smem + 2 * plan.phase_grids[i | 1].smem + 3 * reserved;
      if (phases % 2 != 0 || plan.phase_grids[i].cluster_size != 2 || pair > sm || three <= sm ||
          plan.phase_grids[i | 1].smem >= big)
        throw std::invalid_argument("CF_CORESIDENT: phase " + std::to_string(i) + " does not pair (" +
                                    std::to_string(plan.phase_grids[i].smem) + " bytes)");
    }
    return plan;
  }
  // A phase with no rows beyond the heads' (Llama's norm_qkv_rope_attend) leaves the other clusters idle while the
  // head clusters stream q|k|v: in split mode it runs on one cluster per head of the largest size M whose heads
  // clusters are resident at once on one block per SM (the all-phases kernel's occupancy stands in for the
  // phase's own). So that the cooperative launch, on the layer's own clusters, still gives the same bits, every
  // launch cuts a head's positions into M attention chunks and each q|k|v job along K into the chunks that
  // balance an M-cluster's warps. The chunk count serves every attending phase, so a model spreads only when its one
  // attending phase is heads-only; M * heads stays within the plan's blocks (the timeline's rows per phase).
  int heads_only = -1, attending = 0;
  for (int i = 0; i < phases; ++i) {
    attending += kernels::layer_phase_attends(shape.model, i);
    if (kernels::layer_phase_heads_only(shape.model, i)) heads_only = i;
  }
  if (heads_only < 0 || attending != 1 || CF_HEAD_PHASE_CLUSTER < 0) return plan;
  const int most_jobs = (units + plan.cluster_size - 1) / plan.cluster_size;
  for (int m = std::min(kMaxClusterSize, units); m > plan.cluster_size; --m) {
    if (c.heads * m > plan.blocks || (CF_HEAD_PHASE_CLUSTER > 0 && m != CF_HEAD_PHASE_CLUSTER)) continue;
    if (units % m != 0) continue;
    const int qkv_chunks = kernels::kWarps / std::gcd(units / m, kernels::kWarps);
    if (qkv_chunks > c.hidden / kernels::kBoxCols || most_jobs * qkv_chunks > kernels::kMaxItems) continue;
    LayerLaunchPlan spread = plan;
    fill(spread, plan.cluster_size, plan.clusters, m);
    spread.qkv_chunks = qkv_chunks;
    const std::size_t smem = kernels::layer_smem(shape, heads_only, heads_only, m, c.heads, m);
    if (smem > limit || spread.smem_cooperative > limit) continue;
    int resident = 0, resident_all = 0;
    CF_CUDA_CHECK(kernels::max_active_layer_clusters(shape, m, smem, &resident));
    CF_CUDA_CHECK(kernels::max_active_layer_clusters(shape, plan.cluster_size, spread.smem_cooperative, &resident_all));
    if (resident < c.heads || resident_all < plan.clusters) continue;
    spread.phase_grids[heads_only] = {m, m * c.heads, smem};
    return spread;
  }
  return plan;
}

}  // namespace clusterfusion
