// Host side of the decoder-layer kernels for one architecture: shared memory and occupancy for the runtime's
// plan, and the launches of its phases; templates instantiated once per architecture (cuda/<model>_layer.cu).
#pragma once
#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "clusterfusion/kernels/decoder_layer.cuh"
#include "clusterfusion/kernels/dispatch.hpp"
#include "clusterfusion/kernels/layer_launch.hpp"
#include "clusterfusion/kernels/smem_limit.hpp"

namespace clusterfusion::kernels {

#define CF_RETURN_IF_ERROR(expr)                 \
  do {                                           \
    if (const cudaError_t status_ = (expr); status_ != cudaSuccess) return status_; \
  } while (0)

template <class Model, int kHeadDim, int kFirst, int kLast>
cudaError_t launch_kernel(const DecoderLayerParams& p, int blocks, int cluster, std::size_t smem, bool cooperative,
                          cudaStream_t stream) {
  auto* kernel = &decoder_layer_kernel<Model, kHeadDim, kFirst, kLast>;
  CF_RETURN_IF_ERROR(allow_max_dynamic_smem(reinterpret_cast<const void*>(kernel)));
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attrs[3];
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[0].val.clusterDim.x = cluster;
  attrs[0].val.clusterDim.y = 1;
  attrs[0].val.clusterDim.z = 1;
  config.attrs = attrs;
  config.numAttrs = 1;
  // Cooperative also when overlapping the previous kernel (the two attributes combine): the grid barrier needs
  // every block resident, which only this attribute guarantees; the plan's occupancy knows nothing of other
  // kernels on the device (other streams, contexts, MPS clients).
  if (cooperative) {
    attrs[config.numAttrs].id = cudaLaunchAttributeCooperative;
    attrs[config.numAttrs].val.cooperative = 1;
    ++config.numAttrs;
  }
  // Starts while the previous kernel finishes (programmatic dependent launch).
  if (p.overlap_previous) {
    attrs[config.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[config.numAttrs].val.programmaticStreamSerializationAllowed = 1;
    ++config.numAttrs;
  }
  return cudaLaunchKernelEx(&config, kernel, p);
}

// How many clusters of `cluster` blocks of the cooperative kernel fit on the device at once.
template <class Model, int kHeadDim>
cudaError_t max_active_clusters_of(int cluster, std::size_t smem, int* clusters) {
  auto* kernel = &decoder_layer_kernel<Model, kHeadDim, 0, Model::kPhases - 1>;
  CF_RETURN_IF_ERROR(allow_max_dynamic_smem(reinterpret_cast<const void*>(kernel)));
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
  return cudaOccupancyMaxActiveClusters(clusters, kernel, &config);
}

// Shared memory of a launch of phases first..last with `cluster`-block clusters, `clusters` of them, a head's
// positions in `attention_chunks` chunks.
template <class Model>
std::size_t layer_smem(const LayerShape& s, int first, int last, int cluster, int clusters, int attention_chunks) {
  const int blocks = cluster * clusters;
  const SmemLayout layout(s.hidden, proj_columns<Model>(s.hidden, s.ffn),
                          launch_head_dim<Model>(first, last, s.head_dim), cluster, clusters,
                          attention_chunks, LayerBlock<Model, 64, 0, 0>::gate_rows(s.ffn, blocks));
  std::size_t smem = 0;
  for (int i = first; i <= last; ++i) {
    const PhaseSpec spec = Model::phase(i);
    if (spec.attend || spec.up) smem = std::max(smem, layout.norm_end);
    if (spec.o_proj || spec.down_proj) smem = std::max(smem, layout.proj_end);
  }
  return smem;
}

// Bytes of the planned job lists of a launch of phases first..last on `blocks` blocks; 0 where they follow the
// position.
template <class Model>
constexpr std::size_t planned_lists_bytes(int first, int last, int blocks) {
  return lists_planned<Model>(first, last)
             ? std::size_t(blocks) * phase_list_base<Model>(first, last + 1) * sizeof(PlannedList)
             : 0;
}

// Phase `phase` alone, from kPhase on.
template <class Model, int kHeadDim, int kPhase = 0>
cudaError_t launch_phase(const DecoderLayerParams& p, const LayerGrid& grid, int phase, cudaStream_t stream) {
  if (phase == kPhase) {
    constexpr int D = launch_head_dim<Model>(kPhase, kPhase, kHeadDim);
    return launch_kernel<Model, D, kPhase, kPhase>(p, grid.blocks, grid.cluster, grid.smem, false, stream);
  }
  if constexpr (kPhase + 1 < Model::kPhases) {
    return launch_phase<Model, kHeadDim, kPhase + 1>(p, grid, phase, stream);
  } else {
    return cudaErrorInvalidValue;
  }
}

template <class Model>
cudaError_t launch_layer(const DecoderLayerParams& p, const LayerShape& s, int first, int last, const LayerGrid& grid,
                         cudaStream_t stream) {
  constexpr int kLast = Model::kPhases - 1;
  if (first == last) {
    return CF_DISPATCH_HEAD_DIM(s.head_dim, D, [&] { return launch_phase<Model, D>(p, grid, first, stream); });
  }
  if (first != 0 || last != kLast)
    throw std::invalid_argument("phases: a launch runs one phase or all of them (got " + std::to_string(first) +
                                ".." + std::to_string(last) + ")");
  return CF_DISPATCH_HEAD_DIM(s.head_dim, D, [&] {
    return launch_kernel<Model, D, 0, kLast>(p, grid.blocks, grid.cluster, grid.smem, true, stream);
  });
}

// Every kernel of the layer at one head_dim, each phase's and the all-phases one: loaded and its shared-memory limit
// raised now, not at its first launch: with lazy module loading, first launches inside the step's graph capture
// cleared another component's pending CUDA error (tests/cpp/test_pending_error_gpu.cpp; not with eager loading).
template <class Model, int kHeadDim, int kPhase = 0>
cudaError_t prepare_kernels() {
  constexpr int D = launch_head_dim<Model>(kPhase, kPhase, kHeadDim);
  CF_RETURN_IF_ERROR(
      allow_max_dynamic_smem(reinterpret_cast<const void*>(&decoder_layer_kernel<Model, D, kPhase, kPhase>)));
  if constexpr (kPhase + 1 < Model::kPhases) {
    return prepare_kernels<Model, kHeadDim, kPhase + 1>();
  } else {
    return allow_max_dynamic_smem(
        reinterpret_cast<const void*>(&decoder_layer_kernel<Model, kHeadDim, 0, Model::kPhases - 1>));
  }
}

template <class Model>
cudaError_t prepare_layer(const LayerShape& s) {
  return CF_DISPATCH_HEAD_DIM(s.head_dim, D, [&] { return prepare_kernels<Model, D>(); });
}

template <class Model>
cudaError_t max_active_clusters(const LayerShape& s, int cluster, std::size_t smem, int* clusters) {
  return CF_DISPATCH_HEAD_DIM(s.head_dim, D,
                              [&] { return max_active_clusters_of<Model, D>(cluster, smem, clusters); });
}

#undef CF_RETURN_IF_ERROR

// The templates above that the entry points use, instantiated (EXTERN empty) or declared (extern) per model.
#define CF_MODEL_TEMPLATES(EXTERN, Model)                                                                    \
  EXTERN template std::size_t layer_smem<Model>(const LayerShape&, int, int, int, int, int);                  \
  EXTERN template cudaError_t max_active_clusters<Model>(const LayerShape&, int, std::size_t, int*);         \
  EXTERN template cudaError_t prepare_layer<Model>(const LayerShape&);                                       \
  EXTERN template cudaError_t launch_layer<Model>(const DecoderLayerParams&, const LayerShape&, int, int,    \
                                                  const LayerGrid&, cudaStream_t);

}  // namespace clusterfusion::kernels
