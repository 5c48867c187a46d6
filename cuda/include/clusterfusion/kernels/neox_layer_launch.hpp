// Host entry points of the fused GPT-NeoX layer kernels (defined in cuda/neox_layer_kernels.cu).
#pragma once
#include <cuda_runtime_api.h>

#include "clusterfusion/kernels/neox_layer_params.hpp"
#include "clusterfusion/neox_layer.hpp"

namespace clusterfusion::kernels {

// Chooses the cluster size and checks shared memory and co-residency for this config on the current device.
LayerLaunchPlan plan_neox_layer(const ModelConfig& config, int max_seq);

void launch_neox_phase_a(const NeoXLayerParams& p, const LayerLaunchPlan& plan, int head_dim, cudaStream_t stream);
void launch_neox_phase_b(const NeoXLayerParams& p, const LayerLaunchPlan& plan, cudaStream_t stream);
void launch_neox_cooperative(const NeoXLayerParams& p, const LayerLaunchPlan& plan, int head_dim,
                             cudaStream_t stream);

}  // namespace clusterfusion::kernels
