// Instantiates the fused GPT-NeoX layer kernels for each supported head_dim and launches them.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/kernels/dispatch.hpp"
#include "clusterfusion/kernels/neox_layer.cuh"
#include "clusterfusion/kernels/neox_layer_launch.hpp"

namespace clusterfusion::kernels {
namespace {

constexpr std::size_t kMaxClusterSize = 8;  // the portable limit

template <int kHeadDim, bool kPhaseA, bool kPhaseB>
void launch(const NeoXLayerParams& p, int blocks, int cluster, std::size_t smem, bool cooperative,
            cudaStream_t stream) {
  auto* kernel = &neox_layer_kernel<kHeadDim, kPhaseA, kPhaseB>;
  CF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[0].val.clusterDim.x = cluster;
  attrs[0].val.clusterDim.y = 1;
  attrs[0].val.clusterDim.z = 1;
  config.attrs = attrs;
  config.numAttrs = 1;
  if (p.overlap_previous) {
    // Starts while the previous kernel finishes (programmatic dependent launch). The cooperative attribute is
    // left out: the plan keeps the grid within the clusters the device holds at once, so every block is
    // resident once the previous kernel's blocks have left, which is all the grid barrier needs.
    attrs[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[1].val.programmaticStreamSerializationAllowed = 1;
    config.numAttrs = 2;
  } else if (cooperative) {
    attrs[1].id = cudaLaunchAttributeCooperative;
    attrs[1].val.cooperative = 1;
    config.numAttrs = 2;
  }
  CF_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
  CF_CHECK_LAUNCH("neox_layer_kernel");
}

// How many clusters of `cluster` blocks of the cooperative kernel fit on the device at once.
template <int kHeadDim>
int max_active_clusters(int cluster, std::size_t smem) {
  auto* kernel = &neox_layer_kernel<kHeadDim, true, true>;
  CF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(cluster);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = cluster;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  config.attrs = &attr;
  config.numAttrs = 1;
  int clusters = 0;
  CF_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config));
  return clusters;
}

}  // namespace

LayerLaunchPlan plan_neox_layer(const ModelConfig& c, int max_seq) {
  c.validate();
  if (c.arch != Architecture::GPTNeoX)
    throw std::invalid_argument("ModelConfig.arch: the fused layer implements GPT-NeoX only");
  if (c.hidden % kBoxCols != 0)
    throw std::invalid_argument("ModelConfig.hidden: must be a multiple of " + std::to_string(kBoxCols) +
                                " for the TMA boxes (got " + std::to_string(c.hidden) + ")");
  if (c.ffn % kBoxCols != 0)
    throw std::invalid_argument("ModelConfig.ffn: must be a multiple of " + std::to_string(kBoxCols) +
                                " for the TMA boxes (got " + std::to_string(c.ffn) + ")");
  if (c.hidden > kLnVecs * 8 * kThreads)
    throw std::invalid_argument("ModelConfig.hidden: at most " + std::to_string(kLnVecs * 8 * kThreads) +
                                " (got " + std::to_string(c.hidden) + ")");
  int device = 0;
  CF_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop;
  CF_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major < 9)
    throw std::runtime_error("the fused layer needs thread-block clusters and TMA (compute capability 9.0+), "
                             "device " + std::string(prop.name) + " is " + std::to_string(prop.major) + "." +
                             std::to_string(prop.minor));

  return CF_DISPATCH_HEAD_DIM(c.head_dim, D, [&] {
    // One block per SM. Pick the cluster size N and cluster count C with the most blocks C*N such that every
    // head gets a cluster (C >= heads) and all C clusters are resident at once (the cooperative grid barrier
    // needs it; the split kernels then also run in one wave). Clusters beyond the heads stream W_up and
    // phase B only. Ties go to the larger N, which spreads each head's attention over more blocks.
    const std::size_t limit = prop.sharedMemPerBlockOptin;
    LayerLaunchPlan plan;
    plan.threads = kThreads;
    for (int n = int(kMaxClusterSize); n >= 1; --n) {
      if (n > 3 * D / kBoxRows) continue;
      // Shared memory shrinks as clusters grow (fewer output rows each): bound it at the fewest admissible
      // clusters, one per head, for the occupancy query.
      const int most = prop.multiProcessorCount / n;
      const SmemLayout bound(c.hidden, c.ffn, D, max_seq, n, c.heads);
      const std::size_t smem_bound = std::max(bound.phase_a_end, bound.phase_b_end);
      if (smem_bound > limit) continue;
      const int clusters = std::min(max_active_clusters<D>(n, smem_bound), most);
      const SmemLayout layout(c.hidden, c.ffn, D, max_seq, n, clusters);
      const std::size_t smem = std::max(layout.phase_a_end, layout.phase_b_end);
      if (clusters < c.heads || clusters * n <= plan.blocks) continue;
      plan.cluster_size = n;
      plan.clusters = clusters;
      plan.blocks = clusters * n;
      plan.smem_phase_a = layout.phase_a_end;
      plan.smem_phase_b = layout.phase_b_end;
      plan.smem_cooperative = smem;
      plan.cooperative_supported = true;
    }
    if (plan.blocks == 0) {
      const SmemLayout layout(c.hidden, c.ffn, D, max_seq, 1, c.heads);
      if (layout.phase_a_end > limit)
        throw std::invalid_argument("max_seq: " + std::to_string(max_seq) + " needs " +
                                    std::to_string(layout.phase_a_end) +
                                    " bytes of shared memory per block, over the " + std::to_string(limit) +
                                    " available");
      if (layout.phase_b_end > limit)
        throw std::invalid_argument("ModelConfig.ffn: " + std::to_string(c.ffn) + " needs " +
                                    std::to_string(layout.phase_b_end) +
                                    " bytes of shared memory per block, over the " + std::to_string(limit) +
                                    " available");
      // More heads than resident clusters: the split kernels still run (in waves), the cooperative one cannot.
      plan.cluster_size = 1;
      plan.clusters = c.heads;
      plan.blocks = c.heads;
      plan.smem_phase_a = layout.phase_a_end;
      plan.smem_phase_b = layout.phase_b_end;
      plan.smem_cooperative = std::max(layout.phase_a_end, layout.phase_b_end);
    }
    return plan;
  });
}

void launch_neox_phase_a(const NeoXLayerParams& p, const LayerLaunchPlan& plan, int head_dim, cudaStream_t stream) {
  CF_DISPATCH_HEAD_DIM(head_dim, D, [&] {
    launch<D, true, false>(p, plan.blocks, plan.cluster_size, plan.smem_phase_a, false, stream);
  });
}

void launch_neox_phase_b(const NeoXLayerParams& p, const LayerLaunchPlan& plan, cudaStream_t stream) {
  // Phase B does not depend on head_dim: one instantiation serves every config.
  launch<64, false, true>(p, plan.blocks, plan.cluster_size, plan.smem_phase_b, false, stream);
}

void launch_neox_cooperative(const NeoXLayerParams& p, const LayerLaunchPlan& plan, int head_dim,
                             cudaStream_t stream) {
  if (!plan.cooperative_supported)
    throw std::runtime_error("cooperative mode: the " + std::to_string(plan.blocks) +
                             " blocks of this config do not fit on the device at once; use split mode");
  CF_DISPATCH_HEAD_DIM(head_dim, D, [&] {
    launch<D, true, true>(p, plan.blocks, plan.cluster_size, plan.smem_cooperative, true, stream);
  });
}

}  // namespace clusterfusion::kernels
