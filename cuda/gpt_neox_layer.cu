// The GPT-NeoX decoder-layer kernels, for every supported head dimension.
#include "clusterfusion/kernels/decoder_layer_host.cuh"

namespace clusterfusion::kernels {
CF_MODEL_TEMPLATES(, GptNeoX)

// The down-projection alone: one kernel (it does not attend, so no head dimension of its own).
std::size_t down_residual_smem(const LayerShape& shape, int cluster, int clusters) {
  return layer_smem<GptNeoXDownResidual>(shape, 0, 0, cluster, clusters, cluster);  // it does not attend
}

std::size_t down_residual_planned_lists_bytes(int blocks) {
  return planned_lists_bytes<GptNeoXDownResidual>(0, 0, blocks);
}

cudaError_t launch_down_residual(const DecoderLayerParams& p, const LayerGrid& grid, cudaStream_t stream) {
  return launch_kernel<GptNeoXDownResidual, 64, 0, 0>(p, grid.blocks, grid.cluster, grid.smem, false, stream);
}
}  // namespace clusterfusion::kernels
