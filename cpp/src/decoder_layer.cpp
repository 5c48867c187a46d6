// Host side of the fused decoder layer: validation, tensor maps, cache bookkeeping, launches.
#include "clusterfusion/decoder_layer.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/device_guard.hpp"
#include "clusterfusion/kernels/layer_launch.hpp"
#include "clusterfusion/tensor_map.hpp"
#include "layer_shape.hpp"

namespace clusterfusion {

const char* layer_mode_name(LayerMode mode) { return mode == LayerMode::Split ? "split" : "cooperative"; }

LayerMode parse_layer_mode(const std::string& name) {
  if (name == "split") return LayerMode::Split;
  if (name == "cooperative") return LayerMode::Cooperative;
  throw std::invalid_argument("mode: expected \"split\" or \"cooperative\", got \"" + name + "\"");
}

namespace {

// The weight each tensor map streams (GPT-NeoX's fused q|k|v and Llama's q share the first).
struct MapSource {
  kernels::WeightMap map;
  LayerSlot slots[2];
};
constexpr MapSource kMapSources[] = {
    {kernels::kMapQ, {LayerSlot::w_qkv, LayerSlot::w_q}}, {kernels::kMapK, {LayerSlot::w_k, LayerSlot::w_k}},
    {kernels::kMapV, {LayerSlot::w_v, LayerSlot::w_v}},   {kernels::kMapO, {LayerSlot::w_o, LayerSlot::w_o}},
    {kernels::kMapGate, {LayerSlot::w_gate, LayerSlot::w_gate}}, {kernels::kMapUp, {LayerSlot::w_up, LayerSlot::w_up}},
    {kernels::kMapDown, {LayerSlot::w_down, LayerSlot::w_down}},
};

const __half* half_ptr(const TensorView& t) { return static_cast<const __half*>(t.data); }

void check_io_pointer(const void* ptr, const char* name, std::size_t align) {
  if (ptr == nullptr) throw std::invalid_argument(std::string("LayerIO.") + name + ": null pointer");
  if (reinterpret_cast<std::uintptr_t>(ptr) % align != 0)
    throw std::invalid_argument(std::string("LayerIO.") + name + ": expected " + std::to_string(align) +
                                "-byte alignment");
}

}  // namespace

DecoderLayer::DecoderLayer(const ModelConfig& config, const LayerWeights& weights, int max_seq)
    : config_(config), weights_(weights), max_seq_(max_seq), params_(new kernels::DecoderLayerParams{}) {
  config_.validate();
  weights_.check(config_);
  plan_ = plan_layer(config_, max_seq);  // after require_hopper(): a device is there
  CF_CUDA_CHECK(kernels::prepare_decoder_layer(layer_shape(config_, max_seq)));
  device_ = current_device();
  weights_.check_device(config_, device_, "layer");
  kernels::DecoderLayerParams& p = *params_;
  for (const MapSource& source : kMapSources) {
    for (const LayerSlot slot : source.slots) {
      const TensorView& w = weights_[slot];
      if (w.data == nullptr) continue;
      p.maps[source.map] = make_matrix_tensor_map(w.data, w.shape[0], w.shape[1], kernels::kBoxRows, kernels::kBoxCols);
    }
  }
  p.norm_weight[0] = half_ptr(weights_[LayerSlot::ln1_weight]);
  p.norm_weight[1] = half_ptr(weights_[LayerSlot::ln2_weight]);
  p.norm_bias[0] = half_ptr(weights_[LayerSlot::ln1_bias]);
  p.norm_bias[1] = half_ptr(weights_[LayerSlot::ln2_bias]);
  p.qkv_bias = half_ptr(weights_[LayerSlot::b_qkv]);
  p.o_bias = half_ptr(weights_[LayerSlot::b_o]);
  p.up_bias = half_ptr(weights_[LayerSlot::b_up]);
  p.down_bias = half_ptr(weights_[LayerSlot::b_down]);
  p.attention_chunks = plan_.attention_chunks;
  p.qkv_chunks = plan_.qkv_chunks;
  p.hidden = config_.hidden;
  p.heads = config_.heads;
  p.kv_heads = config_.kv_heads;
  p.ffn = config_.ffn;
  p.rotary_dims = config_.rotary_dims;
  p.eps = config_.norm_eps;
  const std::vector<double> inv_freq = config_.rotary_inv_freq();
  try {
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&inv_freq_), inv_freq.size() * sizeof(double)));
    CF_CUDA_CHECK(cudaMemcpy(inv_freq_, inv_freq.data(), inv_freq.size() * sizeof(double), cudaMemcpyHostToDevice));
    CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&grid_barrier_), sizeof(unsigned)));
    CF_CUDA_CHECK(cudaMemset(grid_barrier_, 0, sizeof(unsigned)));
    p.inv_freq = inv_freq_;
    p.grid_barrier = grid_barrier_;
    plan_job_lists();
  } catch (...) {
    cudaFree(inv_freq_);
    cudaFree(grid_barrier_);
    cudaFree(planned_lists_);
    throw;
  }
}

DecoderLayer::~DecoderLayer() {
  const DeviceGuard on(device_, std::nothrow);
  cudaFree(inv_freq_);
  cudaFree(grid_barrier_);
  cudaFree(planned_lists_);
}

// Every launch whose job lists do not depend on the position gets them from a table written here once, by a planning
// launch of its kernel on its grid, instead of building them at entry (bench/NOTES.md v55).
void DecoderLayer::plan_job_lists() {
  std::vector<std::size_t> bytes(down_residual_launch() + 1);
  for (int i = 0; i < static_cast<int>(bytes.size()); ++i) bytes[i] = planned_lists_bytes(i);
  planned_offsets_.assign(bytes.size(), SIZE_MAX);
  std::size_t total = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] == 0) continue;
    planned_offsets_[i] = total;
    total += bytes[i];  // multiples of sizeof(PlannedList): every table stays aligned
  }
  if (total == 0) return;
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&planned_lists_), total));
  planned_bytes_ = total;
  kernels::DecoderLayerParams p = *params_;
  p.max_seq = max_seq_;
  launch_planning(p, planned_lists_);
}

DecoderLayer::PlannedLaunch DecoderLayer::planned_launch(int launch) const {
  if (launch == down_residual_launch()) return {0, 0, true};
  if (launch == cooperative_launch()) return {0, cooperative_launch() - 1, false};
  return {launch, launch, false};
}

std::size_t DecoderLayer::planned_lists_bytes(int launch) const {
  const kernels::LayerModel model = layer_model(config_.arch);
  const PlannedLaunch l = planned_launch(launch);
  if (l.down_residual)
    return model == kernels::LayerModel::GptNeoX ? kernels::down_residual_planned_lists_bytes(plan_.blocks) : 0;
  if (l.first != l.last && !plan_.cooperative_supported) return 0;
  return kernels::planned_lists_bytes(model, l.first, l.last, layer_grid(l.first, l.last).blocks);
}

// The planning launches of p's step (its position and cache length) into `table`, laid out as planned_lists_.
void DecoderLayer::launch_planning(kernels::DecoderLayerParams p, unsigned char* table) const {
  const kernels::LayerModel model = layer_model(config_.arch);
  const kernels::LayerShape shape = layer_shape(config_, max_seq_);
  p.write_planned_lists = 1;
  for (int i = 0; i < static_cast<int>(planned_offsets_.size()); ++i) {
    if (planned_offsets_[i] == SIZE_MAX) continue;
    p.planned_lists = table + planned_offsets_[i];
    const PlannedLaunch l = planned_launch(i);
    std::string what = "planning launch " + std::to_string(i);
    cudaError_t launched;
    if (l.down_residual) {
      what += " (down_residual)";
      launched = kernels::launch_down_residual(p, down_residual_grid(), nullptr);
    } else {
      what += l.first == l.last
                  ? " (phase " + std::to_string(l.first) + ": " + kernels::layer_phase_name(model, l.first) + ")"
                  : " (phases 0.." + std::to_string(l.last) + ": cooperative mode)";
      launched = kernels::launch_decoder_layer(p, shape, l.first, l.last, layer_grid(l.first, l.last), nullptr);
    }
    // Waited for one by one: a fault is reported as the launch that made it, and launches on any stream may read
    // the table once this returns.
    check_cuda(launched, what.c_str(), __FILE__, __LINE__);
    check_cuda(cudaStreamSynchronize(nullptr), what.c_str(), __FILE__, __LINE__);
  }
}

void* DecoderLayer::planned_lists(int launch) const {
  const std::size_t offset = planned_offsets_[launch];
  return offset == SIZE_MAX ? nullptr : planned_lists_ + offset;
}

std::pair<void*, std::size_t> DecoderLayer::debug_planned_lists_of_phase(int phase) const {
  const int phases = cooperative_launch();
  if (phase < 0 || phase >= phases)
    throw std::invalid_argument("debug_planned_lists_of_phase: phase must be in [0, " + std::to_string(phases) +
                                "), got " + std::to_string(phase));
  const std::size_t offset = planned_offsets_[phase];
  if (offset == SIZE_MAX) return {nullptr, 0};
  return {planned_lists_ + offset, planned_lists_bytes(phase)};
}

void DecoderLayer::debug_plan_job_lists(const KVCache& cache, int position, void* table) const {
  if (cache.max_seq() > max_seq_ || position < 0 || position >= cache.max_seq())
    throw std::invalid_argument("debug_plan_job_lists: expected a cache of at most the layer's max_seq " +
                                std::to_string(max_seq_) + " and a position in it, got " +
                                std::to_string(cache.max_seq()) + " and " + std::to_string(position));
  const DeviceGuard on(device_);
  kernels::DecoderLayerParams p = *params_;
  p.max_seq = cache.max_seq();
  p.position = position;
  launch_planning(p, static_cast<unsigned char*>(table));
}

unsigned DecoderLayer::debug_grid_barrier_word() const {
  const DeviceGuard on(device_);
  unsigned word = 0;
  CF_CUDA_CHECK(cudaMemcpy(&word, grid_barrier_, sizeof(word), cudaMemcpyDeviceToHost));
  return word;
}

void DecoderLayer::debug_set_grid_barrier_word(unsigned word) {
  // Any other value would release a barrier early or never (grid_barrier.cuh).
  if (word != 0 && word != 0x80000000u)
    throw std::invalid_argument("word: the grid barrier holds 0 or 2^31 between launches, got " +
                                std::to_string(word));
  const DeviceGuard on(device_);
  CF_CUDA_CHECK(cudaMemcpy(grid_barrier_, &word, sizeof(word), cudaMemcpyHostToDevice));
}

std::vector<std::string> DecoderLayer::phase_names() const {
  const kernels::LayerModel model = layer_model(config_.arch);
  std::vector<std::string> names;
  for (int i = 0; i < kernels::layer_phase_count(model); ++i) names.emplace_back(kernels::layer_phase_name(model, i));
  return names;
}

// Called under a DeviceGuard on device_, so that the default streams are this device's.
void DecoderLayer::check(const KVCache& cache, int layer, const LayerIO& io, int position,
                         cudaStream_t stream) const {
  // The norms read x and h1 as 16-byte vectors; attn and mlp_act are read as float4.
  check_io_pointer(io.x, "x", 16);
  check_io_pointer(io.out, "out", 2);
  if (!config_.parallel_residual) check_io_pointer(io.h1, "h1", 16);
  check_io_pointer(io.attn, "attn", 16);
  check_io_pointer(io.mlp_act, "mlp_act", 16);
  if (cache.heads() != config_.kv_heads || cache.head_dim() != config_.head_dim)
    throw std::invalid_argument("cache: built for " + std::to_string(cache.heads()) + " kv heads of " +
                                std::to_string(cache.head_dim()) + ", the layer has " +
                                std::to_string(config_.kv_heads) + " kv heads of " + std::to_string(config_.head_dim));
  if (cache.max_seq() > max_seq_)
    throw std::invalid_argument("cache: max_seq " + std::to_string(cache.max_seq()) +
                                " is larger than the layer's max_seq " + std::to_string(max_seq_));
  cache.check_layer(layer);
  cache.check_append(position);
  check_same_device("cache", cache.device(), device_, "layer");
  check_stream_device(stream, device_, "layer");
}

kernels::DecoderLayerParams DecoderLayer::step_params(const KVCache& cache, int layer, const LayerIO& io) const {
  kernels::DecoderLayerParams p = *params_;
  p.x = static_cast<const __half*>(io.x);
  p.h1 = static_cast<__half*>(io.h1);
  p.out = static_cast<__half*>(io.out);
  p.attn = io.attn;
  p.act = io.mlp_act;
  p.k_cache = cache.keys(layer);
  p.v_cache = cache.values(layer);
  p.max_seq = cache.max_seq();
  p.timeline = io.timeline;
  p.overlap_previous = overlap_previous_;
  return p;
}

void DecoderLayer::forward(KVCache& cache, int layer, const LayerIO& io, int position, LayerMode mode,
                           cudaStream_t stream) const {
  const DeviceGuard on(device_);
  check(cache, layer, io, position, stream);
  kernels::DecoderLayerParams p = step_params(cache, layer, io);
  p.position = position;
  launch(p, mode, stream);
  cache.set_length(std::max(cache.length(), position + 1));
}

void DecoderLayer::forward_at_device_position(KVCache& cache, int layer, const LayerIO& io, const int* position,
                                              LayerMode mode, cudaStream_t stream) const {
  if (position == nullptr) throw std::invalid_argument("position: null pointer");
  const DeviceGuard on(device_);
  check(cache, layer, io, 0, stream);
  kernels::DecoderLayerParams p = step_params(cache, layer, io);
  p.device_position = position;
  launch(p, mode, stream);
}

void DecoderLayer::run_phase(KVCache& cache, int layer, const LayerIO& io, int position, int phase,
                             cudaStream_t stream) const {
  const int phases = static_cast<int>(plan_.phase_grids.size());
  if (phase < 0 || phase >= phases)
    throw std::out_of_range("phase: expected 0.." + std::to_string(phases - 1) + ", got " + std::to_string(phase));
  const DeviceGuard on(device_);
  check(cache, layer, io, position, stream);
  kernels::DecoderLayerParams p = step_params(cache, layer, io);
  p.position = position;
  launch(p, phase, phase, stream);
  if (kernels::layer_phase_attends(layer_model(config_.arch), phase))
    cache.set_length(std::max(cache.length(), position + 1));
}

void DecoderLayer::down_residual(const void* x, const void* attn_output, const float* mlp_act, void* out,
                                 cudaStream_t stream) const {
  if (!config_.parallel_residual || layer_model(config_.arch) != kernels::LayerModel::GptNeoX)
    throw std::invalid_argument("down_residual: GPT-NeoX (parallel residual) layers only");
  check_io_pointer(x, "x", 2);
  check_io_pointer(attn_output, "attn_output", 2);
  check_io_pointer(mlp_act, "mlp_act", 16);
  check_io_pointer(out, "out", 2);
  const DeviceGuard on(device_);
  check_stream_device(stream, device_, "layer");
  kernels::DecoderLayerParams p = *params_;
  p.x = static_cast<const __half*>(x);
  p.residual_add = static_cast<const __half*>(attn_output);
  p.act = const_cast<float*>(mlp_act);
  p.out = static_cast<__half*>(out);
  p.position = 0;  // unused: the launch neither attends nor touches a cache
  p.max_seq = max_seq_;
  p.overlap_previous = overlap_previous_;
  p.planned_lists = use_planned_ ? planned_lists(down_residual_launch()) : nullptr;
  CF_CUDA_CHECK(kernels::launch_down_residual(p, down_residual_grid(), stream));
}

kernels::LayerGrid DecoderLayer::down_residual_grid() const {
  return kernels::LayerGrid{plan_.blocks, plan_.cluster_size,
                            kernels::down_residual_smem(layer_shape(config_, max_seq_), plan_.cluster_size,
                                                        plan_.clusters)};
}

void DecoderLayer::launch(const kernels::DecoderLayerParams& p, LayerMode mode, cudaStream_t stream) const {
  const int phases = static_cast<int>(plan_.phase_grids.size());
  if (mode == LayerMode::Cooperative) {
    if (!plan_.cooperative_supported)
      throw std::runtime_error("cooperative mode: the " + std::to_string(plan_.blocks) +
                               " blocks of this config do not fit on the device at once; use split mode");
    launch(p, 0, phases - 1, stream);
    return;
  }
  for (int i = 0; i < phases; ++i) {
    kernels::DecoderLayerParams phase = p;
    if (phase.timeline != nullptr) phase.timeline += std::size_t(i) * plan_.blocks * kernels::kTimelineStride;
    launch(phase, i, i, stream);
  }
}

kernels::LayerGrid DecoderLayer::layer_grid(int first, int last) const {
  return first == last ? kernels::LayerGrid{plan_.phase_grids[first].blocks, plan_.phase_grids[first].cluster_size,
                                            plan_.phase_grids[first].smem}
                       : kernels::LayerGrid{plan_.blocks, plan_.cluster_size, plan_.smem_cooperative};
}

void DecoderLayer::launch(const kernels::DecoderLayerParams& p, int first, int last, cudaStream_t stream) const {
  kernels::DecoderLayerParams q = p;
  q.planned_lists = use_planned_ ? planned_lists(first == last ? first : cooperative_launch()) : nullptr;
  CF_CUDA_CHECK(
      kernels::launch_decoder_layer(q, layer_shape(config_, max_seq_), first, last, layer_grid(first, last), stream));
}

}  // namespace clusterfusion
