// The Llama decoder-layer kernels, for every supported head dimension.
#include "clusterfusion/kernels/decoder_layer_host.cuh"

namespace clusterfusion::kernels {
CF_MODEL_TEMPLATES(, Llama)
}  // namespace clusterfusion::kernels
