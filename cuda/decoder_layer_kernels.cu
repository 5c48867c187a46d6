// The architecture-independent entry points of the decoder-layer kernels: one switch over the models.
#include "clusterfusion/kernels/decoder_layer_host.cuh"

namespace clusterfusion::kernels {

CF_MODEL_TEMPLATES(extern, GptNeoX)
CF_MODEL_TEMPLATES(extern, Llama)

namespace {
template <class F>
auto with_model(LayerModel model, F&& f) {
  return model == LayerModel::GptNeoX ? f(GptNeoX{}) : f(Llama{});
}
}  // namespace

int layer_phase_count(LayerModel model) {
  return with_model(model, [](auto m) { return decltype(m)::kPhases; });
}

const char* layer_phase_name(LayerModel model, int phase) {
  return with_model(model, [phase](auto m) {
    using Model = decltype(m);
    return phase >= 0 && phase < Model::kPhases ? Model::kPhaseNames[phase] : "?";
  });
}

bool layer_phase_attends(LayerModel model, int phase) {
  return with_model(model, [phase](auto m) { return decltype(m)::phase(phase).attend; });
}

bool layer_phase_heads_only(LayerModel model, int phase) {
  return with_model(model, [phase](auto m) { return decltype(m)::phase(phase).heads_only(); });
}

std::size_t layer_smem(const LayerShape& shape, int first, int last, int cluster, int clusters, int attention_chunks) {
  return with_model(shape.model, [&](auto m) {
    return layer_smem<decltype(m)>(shape, first, last, cluster, clusters, attention_chunks);
  });
}

std::size_t planned_lists_bytes(LayerModel model, int first, int last, int blocks) {
  return with_model(model, [&](auto m) { return planned_lists_bytes<decltype(m)>(first, last, blocks); });
}

cudaError_t max_active_layer_clusters(const LayerShape& shape, int cluster, std::size_t smem, int* clusters) {
  return with_model(shape.model,
                    [&](auto m) { return max_active_clusters<decltype(m)>(shape, cluster, smem, clusters); });
}

cudaError_t prepare_decoder_layer(const LayerShape& shape) {
  return with_model(shape.model, [&](auto m) { return prepare_layer<decltype(m)>(shape); });
}

cudaError_t launch_decoder_layer(const DecoderLayerParams& p, const LayerShape& shape, int first, int last,
                                 const LayerGrid& grid, cudaStream_t stream) {
  return with_model(shape.model,
                    [&](auto m) { return launch_layer<decltype(m)>(p, shape, first, last, grid, stream); });
}

}  // namespace clusterfusion::kernels
