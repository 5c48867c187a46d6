// Host entry points of the fused decoder-layer kernels (defined in cuda/decoder_layer_kernels.cu): what the
// runtime's launch plan needs (shared memory, co-resident clusters) and the launches of any phase of a model's
// phase list. Plain C++ and CUDA runtime types only.
#pragma once
#include <cstddef>

#include <cuda_runtime_api.h>

#include "clusterfusion/kernels/layer_params.hpp"

namespace clusterfusion::kernels {

enum class LayerModel { GptNeoX, Llama };

struct LayerShape {
  LayerModel model;
  int hidden, heads, kv_heads, head_dim, ffn, max_seq;
};

// One launch: `blocks` blocks in clusters of `cluster`, `smem` bytes of dynamic shared memory each.
struct LayerGrid {
  int blocks, cluster;
  std::size_t smem;
};

int layer_phase_count(LayerModel model);
const char* layer_phase_name(LayerModel model, int phase);  // "norm_qkv_rope_attend", ...
bool layer_phase_attends(LayerModel model, int phase);
// Whether only the head clusters have work in the phase (it attends and streams no up rows beside).
bool layer_phase_heads_only(LayerModel model, int phase);

// Dynamic shared memory of a launch of phases first..last on `clusters` clusters of `cluster` blocks, a head's
// positions in `attention_chunks` chunks (DecoderLayerParams).
std::size_t layer_smem(const LayerShape& shape, int first, int last, int cluster, int clusters, int attention_chunks);
// How many clusters of `cluster` blocks of the all-phases kernel with `smem` bytes fit on the current device.
cudaError_t max_active_layer_clusters(const LayerShape& shape, int cluster, std::size_t smem, int* clusters);

// Loads every kernel a layer of this shape launches and raises its shared-memory limit, on the current device:
// called when the layer is built, so that no launch (in a graph capture, say) is a kernel's first.
cudaError_t prepare_decoder_layer(const LayerShape& shape);

// Launches phase `first` alone (first == last), or every phase as one cooperative launch with grid barriers
// (first == 0, last == the last phase; a planning launch, p.write_planned_lists, without the cooperative attribute).
// Throws std::invalid_argument for an unsupported head_dim or phase range.
cudaError_t launch_decoder_layer(const DecoderLayerParams& p, const LayerShape& shape, int first, int last,
                                 const LayerGrid& grid, cudaStream_t stream);

// Planned job lists (DecoderLayerParams::planned_lists): their bytes for a launch of phases first..last on `blocks`
// blocks, 0 where the lists follow the position and every block builds its own. Launched with p.write_planned_lists
// set and p.planned_lists pointing at that many bytes of device memory, a kernel writes them and does nothing else
// (a kernel whose lists are not planned traps).
std::size_t planned_lists_bytes(LayerModel model, int first, int last, int blocks);

// GPT-NeoX's down_proj_residual alone (model_traits.hpp, GptNeoXDownResidual): out = x + residual_add + W_down act
// + b_down, one launch on the layer's grid; its dynamic shared memory on `clusters` clusters of `cluster` blocks.
std::size_t down_residual_smem(const LayerShape& shape, int cluster, int clusters);
std::size_t down_residual_planned_lists_bytes(int blocks);
cudaError_t launch_down_residual(const DecoderLayerParams& p, const LayerGrid& grid, cudaStream_t stream);

}  // namespace clusterfusion::kernels
