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
  attrs[1].id = cudaLaunchAttributeCooperative;
  attrs[1].val.cooperative = 1;
  config.attrs = attrs;
  config.numAttrs = cooperative ? 2 : 1;
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
  int device = 0;
  CF_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop;
  CF_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major < 9)
    throw std::runtime_error("the fused layer needs thread-block clusters and TMA (compute capability 9.0+), "
                             "device " + std::string(prop.name) + " is " + std::to_string(prop.major) + "." +
                             std::to_string(prop.minor));

  return CF_DISPATCH_HEAD_DIM(c.head_dim, D, [&] {
    LayerLaunchPlan plan;
    plan.threads = kThreads;
    // As many blocks per head as fit one per SM, up to the portable cluster size, but never more blocks than
    // the head has 4-row units of q|k|v.
    int cluster = int(std::min<std::size_t>(kMaxClusterSize, std::max(1, prop.multiProcessorCount / c.heads)));
    cluster = std::min(cluster, 3 * D / kBoxRows);
    for (; cluster > 1; --cluster) {
      if (c.heads * cluster <= prop.multiProcessorCount) break;
    }
    plan.cluster_size = cluster;
    plan.blocks = c.heads * cluster;
    const SmemLayout layout(c.hidden, c.ffn, D, max_seq, cluster);
    plan.smem_phase_a = layout.phase_a_end;
    plan.smem_phase_b = layout.phase_b_end;
    plan.smem_cooperative = std::max(layout.phase_a_end, layout.phase_b_end);
    const std::size_t limit = prop.sharedMemPerBlockOptin;
    if (plan.smem_phase_a > limit)
      throw std::invalid_argument("max_seq: " + std::to_string(max_seq) + " needs " +
                                  std::to_string(plan.smem_phase_a) + " bytes of shared memory per block, over the " +
                                  std::to_string(limit) + " available");
    if (plan.smem_phase_b > limit)
      throw std::invalid_argument("ModelConfig.ffn: " + std::to_string(c.ffn) + " needs " +
                                  std::to_string(plan.smem_phase_b) + " bytes of shared memory per block, over the " +
                                  std::to_string(limit) + " available");
    plan.cooperative_supported = max_active_clusters<D>(cluster, plan.smem_cooperative) >= c.heads;
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
  launch<64, false, true>(p, plan.blocks, 1, plan.smem_phase_b, false, stream);
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
