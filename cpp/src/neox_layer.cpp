// Host side of the fused GPT-NeoX layer: validation, tensor maps, cache bookkeeping, launches.
#include "clusterfusion/neox_layer.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/kernels/neox_layer_launch.hpp"
#include "clusterfusion/tensor_map.hpp"

namespace clusterfusion {

const char* layer_mode_name(LayerMode mode) { return mode == LayerMode::Split ? "split" : "cooperative"; }

LayerMode parse_layer_mode(const std::string& name) {
  if (name == "split") return LayerMode::Split;
  if (name == "cooperative") return LayerMode::Cooperative;
  throw std::invalid_argument("mode: expected \"split\" or \"cooperative\", got \"" + name + "\"");
}

namespace {

enum MapIndex { kMapQkv, kMapO, kMapUp, kMapDown };

CUtensorMap weight_map(const TensorView& w) {
  return make_matrix_tensor_map(w.data, w.shape[0], w.shape[1], kernels::kBoxRows, kernels::kBoxCols);
}

const __half* half_ptr(const TensorView& t) { return static_cast<const __half*>(t.data); }

void check_io_pointer(const void* ptr, const char* name, std::size_t align) {
  if (ptr == nullptr) throw std::invalid_argument(std::string("LayerIO.") + name + ": null pointer");
  if (reinterpret_cast<std::uintptr_t>(ptr) % align != 0)
    throw std::invalid_argument(std::string("LayerIO.") + name + ": expected " + std::to_string(align) +
                                "-byte alignment");
}

}  // namespace

NeoXLayer::NeoXLayer(const ModelConfig& config, const LayerWeights& weights, int max_seq)
    : config_(config), weights_(weights), max_seq_(max_seq) {
  config_.validate();
  weights_.check(config_);
  if (max_seq <= 0) throw std::invalid_argument("max_seq: must be positive (got " + std::to_string(max_seq) + ")");
  plan_ = kernels::plan_neox_layer(config_, max_seq);
  const CUtensorMap maps[4] = {weight_map(weights_.w_qkv), weight_map(weights_.w_o), weight_map(weights_.w_up),
                               weight_map(weights_.w_down)};
  static_assert(sizeof(CUtensorMap) == sizeof(maps_[0]), "CUtensorMap is 128 bytes");
  std::memcpy(maps_, maps, sizeof(maps));
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&grid_barrier_), sizeof(unsigned)));
  CF_CUDA_CHECK(cudaMemset(grid_barrier_, 0, sizeof(unsigned)));
}

NeoXLayer::~NeoXLayer() { cudaFree(grid_barrier_); }

void NeoXLayer::check_position(const KVCache& cache, int layer, int position) const {
  if (cache.heads() != config_.heads || cache.head_dim() != config_.head_dim)
    throw std::invalid_argument("cache: built for " + std::to_string(cache.heads()) + " heads of " +
                                std::to_string(cache.head_dim()) + ", the layer has " + std::to_string(config_.heads) +
                                " heads of " + std::to_string(config_.head_dim));
  if (cache.max_seq() > max_seq_)
    throw std::invalid_argument("cache: max_seq " + std::to_string(cache.max_seq()) +
                                " is larger than the layer's max_seq " + std::to_string(max_seq_));
  cache.check_layer(layer);
  cache.check_append(position);
}

namespace {

kernels::NeoXLayerParams make_params(const ModelConfig& c, const LayerWeights& w, const unsigned char (*maps)[128],
                                     const KVCache* cache, int layer, const LayerIO& io, int position,
                                     unsigned* grid_barrier, bool overlap_previous) {
  kernels::NeoXLayerParams p = {};
  std::memcpy(&p.w_qkv, maps[kMapQkv], sizeof(CUtensorMap));
  std::memcpy(&p.w_o, maps[kMapO], sizeof(CUtensorMap));
  std::memcpy(&p.w_up, maps[kMapUp], sizeof(CUtensorMap));
  std::memcpy(&p.w_down, maps[kMapDown], sizeof(CUtensorMap));
  p.x = static_cast<const __half*>(io.x);
  p.ln1_w = half_ptr(w.ln1_weight);
  p.ln1_b = half_ptr(w.ln1_bias);
  p.ln2_w = half_ptr(w.ln2_weight);
  p.ln2_b = half_ptr(w.ln2_bias);
  p.b_qkv = half_ptr(w.b_qkv);
  p.b_o = half_ptr(w.b_o);
  p.b_up = half_ptr(w.b_up);
  p.b_down = half_ptr(w.b_down);
  if (cache != nullptr) {
    p.k_cache = cache->keys(layer);
    p.v_cache = cache->values(layer);
    p.max_seq = cache->max_seq();
  } else {
    p.max_seq = 1;  // phase B alone reads no cache
  }
  p.out = static_cast<__half*>(io.out);
  p.attn = io.attn;
  p.mlp_act = io.mlp_act;
  p.grid_barrier = grid_barrier;
  p.timeline = io.timeline;
  p.position = position;
  p.overlap_previous = overlap_previous;
  p.hidden = c.hidden;
  p.heads = c.heads;
  p.ffn = c.ffn;
  p.rotary_dims = c.rotary_dims;
  p.rotary_base = c.rotary_base;
  p.eps = c.norm_eps;
  return p;
}

// attn and mlp_act are read as float4; out is only written by phase B.
void check_io(const LayerIO& io, bool writes_out) {
  check_io_pointer(io.x, "x", 2);
  check_io_pointer(io.attn, "attn", 16);
  check_io_pointer(io.mlp_act, "mlp_act", 16);
  if (writes_out) check_io_pointer(io.out, "out", 2);
}

}  // namespace

void NeoXLayer::forward(KVCache& cache, int layer, const LayerIO& io, int position, LayerMode mode,
                        cudaStream_t stream) const {
  check_io(io, true);
  check_position(cache, layer, position);
  launch(make_params(config_, weights_, maps_, &cache, layer, io, position, grid_barrier_, overlap_previous_), mode,
         stream);
  cache.set_length(std::max(cache.length(), position + 1));
}

void NeoXLayer::forward_at_device_position(KVCache& cache, int layer, const LayerIO& io, const int* position,
                                           LayerMode mode, cudaStream_t stream) const {
  check_io(io, true);
  if (position == nullptr) throw std::invalid_argument("position: null pointer");
  check_position(cache, layer, 0);
  auto p = make_params(config_, weights_, maps_, &cache, layer, io, 0, grid_barrier_, overlap_previous_);
  p.device_position = position;
  launch(p, mode, stream);
}

void NeoXLayer::launch(const kernels::NeoXLayerParams& p, LayerMode mode, cudaStream_t stream) const {
  if (mode == LayerMode::Cooperative) {
    kernels::launch_neox_cooperative(p, plan_, config_.head_dim, stream);
  } else {
    kernels::launch_neox_phase_a(p, plan_, config_.head_dim, stream);
    kernels::NeoXLayerParams phase_b = p;
    if (phase_b.timeline != nullptr) phase_b.timeline += std::size_t(plan_.blocks) * kernels::kTimelineMarks;
    kernels::launch_neox_phase_b(phase_b, plan_, stream);
  }
}

void NeoXLayer::attention_mlp_up(KVCache& cache, int layer, const LayerIO& io, int position,
                                 cudaStream_t stream) const {
  check_io(io, false);
  check_position(cache, layer, position);
  const auto p =
      make_params(config_, weights_, maps_, &cache, layer, io, position, grid_barrier_, overlap_previous_);
  kernels::launch_neox_phase_a(p, plan_, config_.head_dim, stream);
  cache.set_length(std::max(cache.length(), position + 1));
}

void NeoXLayer::mlp_down_residual(const LayerIO& io, cudaStream_t stream) const {
  check_io(io, true);
  const auto p = make_params(config_, weights_, maps_, nullptr, 0, io, 0, grid_barrier_, overlap_previous_);
  kernels::launch_neox_phase_b(p, plan_, stream);
}

}  // namespace clusterfusion
