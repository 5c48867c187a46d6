// The decode runtime: validation, device scratch, the captured step and its replay.
//
// Every kernel of the step reads the position from device_position_ (the embedding's token, the layers' cache
// slot and rotary angle, the sampler's Philox counter), and the selection kernel, the step's last node, advances
// it. So one captured graph, instantiated once, serves every position; the host only checks its own copy of the
// position against max_seq and keeps the cache's length in step. Every public method checks all its arguments
// before it launches or copies anything, holds mutex_ and runs on device_ (the header's contracts).
#include "clusterfusion/decode_context.hpp"

#include <stdexcept>
#include <string>
#include <utility>

#include "clusterfusion/cuda_check.hpp"
#include "clusterfusion/device_check.hpp"
#include "clusterfusion/device_guard.hpp"
#include "clusterfusion/kernels/decode_launch.hpp"
#include "token_selection.hpp"

namespace clusterfusion {

namespace {

template <typename T>
void device_alloc(T*& ptr, std::size_t count) {
  CF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), count * sizeof(T)));
}

const __half* half_ptr(const TensorView& t) { return static_cast<const __half*>(t.data); }

// The device the context lives on (the current one), once the arguments have been checked against it: done
// before the cache is allocated.
int checked_device(const ModelConfig& config, const ModelWeights& weights, int max_seq, cudaStream_t stream) {
  config.validate();
  weights.check(config);
  if (max_seq <= 0) throw std::invalid_argument("max_seq: must be > 0 (got " + std::to_string(max_seq) + ")");
  require_hopper();  // before any other CUDA call
  const int device = current_device();
  weights.check_device(config, device, "context");
  check_stream_device(stream, device, "context");
  return device;
}

kernels::NormKind final_norm_kind(const ModelConfig& c) {
  return c.norm == Norm::LayerNorm ? kernels::NormKind::LayerNorm : kernels::NormKind::RMSNorm;
}

std::string shape_text(int64_t heads, const std::string& seq, int64_t head_dim) {
  return "[1, " + std::to_string(heads) + ", " + seq + ", " + std::to_string(head_dim) + "]";
}

}  // namespace

DecodeContext::DecodeContext(const ModelConfig& config, const ModelWeights& weights, int max_seq,
                             std::optional<LayerMode> mode, cudaStream_t stream)
    : config_(config),
      weights_(weights),
      max_seq_(max_seq),
      device_(checked_device(config, weights, max_seq, stream)),
      stream_(stream),
      cache_(config_, max_seq) {
  for (int i = 0; i < config_.layers; ++i) {
    layers_.push_back(std::make_unique<DecoderLayer>(config_, weights_.layers[i], max_seq_));
    // Layer i follows the embedding or layer i-1, which write neither its weights nor the position.
    layers_.back()->set_overlap_previous_kernel(true);
  }
  const bool cooperative_ok = layers_.front()->plan().cooperative_supported;
  if (mode == LayerMode::Cooperative && !cooperative_ok)
    throw std::invalid_argument("mode: \"cooperative\" needs all " + std::to_string(layers_.front()->plan().blocks) +
                                " blocks of a layer resident at once, which this device cannot; use \"split\"");
  // Split by default: with each launch overlapping the one before, it is the faster mode on the H100 for both
  // Pythia shapes at every context (bench/results/layer_h100.json, *_graph_overlap rows).
  mode_ = mode.value_or(LayerMode::Split);
  kernels::LmHeadPlan lm_head;
  CF_CUDA_CHECK(kernels::plan_lm_head(config_.vocab, config_.hidden, final_norm_kind(config_), &lm_head));
  CF_CUDA_CHECK(kernels::prepare_decode_kernels());
  lm_head_blocks_ = lm_head.blocks;
  lm_head_smem_ = lm_head.smem;
  try {
    device_alloc(hidden_[0], config_.hidden);
    device_alloc(hidden_[1], config_.hidden);
    device_alloc(h1_, config_.hidden);
    device_alloc(attn_, config_.hidden);
    device_alloc(mlp_act_, config_.ffn);
    device_alloc(logits_, config_.vocab);
    CF_CUDA_CHECK(cudaMalloc(&partials_, lm_head_blocks_ * sizeof(kernels::ArgmaxPartial)));
    const std::size_t history = static_cast<std::size_t>(max_seq_) + 1;  // max_seq_ + 1 overflows int at INT_MAX
    device_alloc(tokens_, history);
    device_alloc(device_position_, 1);
    CF_CUDA_CHECK(cudaMemset(tokens_, 0, history * sizeof(int)));
    CF_CUDA_CHECK(cudaMemset(device_position_, 0, sizeof(int)));
    CF_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&host_token_), sizeof(int)));
    CF_CUDA_CHECK(cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking));
    CF_CUDA_CHECK(cudaEventCreateWithFlags(&step_done_, cudaEventDisableTiming));
  } catch (...) {
    release();
    throw;
  }
}

DecodeContext::~DecodeContext() {
  const DeviceGuard on(device_, std::nothrow);
  release();
}

void DecodeContext::release() noexcept {
  // Nothing may be freed under a running step; a destructor cannot throw, so failures here are ignored.
  if (step_done_) (void)cudaEventSynchronize(step_done_);
  if (graph_) (void)cudaGraphExecDestroy(graph_);
  if (step_done_) (void)cudaEventDestroy(step_done_);
  graph_ = nullptr;
  step_done_ = nullptr;
  if (capture_stream_) (void)cudaStreamDestroy(capture_stream_);
  capture_stream_ = nullptr;
  for (void* p : {static_cast<void*>(hidden_[0]), static_cast<void*>(hidden_[1]), static_cast<void*>(h1_),
                  static_cast<void*>(attn_),
                  static_cast<void*>(mlp_act_), static_cast<void*>(logits_), partials_, static_cast<void*>(tokens_),
                  static_cast<void*>(device_position_)}) {
    if (p) (void)cudaFree(p);
  }
  if (host_token_) (void)cudaFreeHost(host_token_);
  hidden_[0] = hidden_[1] = h1_ = nullptr;
  attn_ = mlp_act_ = logits_ = nullptr;
  partials_ = nullptr;
  tokens_ = device_position_ = host_token_ = nullptr;
}

int DecodeContext::position() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return position_;
}

SamplingParams DecodeContext::sampling() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return sampling_;
}

void DecodeContext::set_sampling(const SamplingParams& params) {
  params.validate();
  const std::lock_guard<std::mutex> lock(mutex_);
  const DeviceGuard on(device_);
  // The parameters are baked into the captured selection kernel: the next step captures again. A launch still
  // in flight is unaffected (CUDA frees an executable graph destroyed in flight when the launch completes).
  if (graph_) {
    CF_CUDA_CHECK(cudaGraphExecDestroy(graph_));
    graph_ = nullptr;
  }
  sampling_ = params;
}

void DecodeContext::reset() {
  const std::lock_guard<std::mutex> lock(mutex_);
  const DeviceGuard on(device_);
  CF_CUDA_CHECK(kernels::launch_store_int(device_position_, 0, stream_));
  cache_.reset();
  position_ = 0;
  has_token_ = false;
}

void DecodeContext::load_prefix(const std::vector<TensorView>& keys, const std::vector<TensorView>& values) {
  const int layers = config_.layers;
  const int64_t heads = config_.kv_heads, head_dim = config_.head_dim;
  for (const auto* list : {&keys, &values}) {
    if (list->size() != static_cast<std::size_t>(layers)) {
      throw std::invalid_argument(std::string(list == &keys ? "keys" : "values") + ": expected " +
                                  std::to_string(layers) + " tensors (one per layer), got " +
                                  std::to_string(list->size()));
    }
  }
  const TensorView& first = keys.front();
  if (first.shape.size() != 4) {
    throw std::invalid_argument("keys[0]: expected shape " + shape_text(heads, "seq", head_dim) + ", got " +
                                first.shape_str());
  }
  // keys[0] gives seq; check_tensor refuses a negative one, and every other tensor must agree with it.
  const int64_t seq = first.shape[2];
  check_tensor(first, "keys[0]", {1, heads, seq, head_dim}, DType::Float16, 2);
  if (seq > max_seq_) {
    throw std::out_of_range("keys[0]: " + std::to_string(seq) + " positions are past max_seq " +
                            std::to_string(max_seq_));
  }
  const std::lock_guard<std::mutex> lock(mutex_);
  const DeviceGuard on(device_);
  for (int l = 0; l < layers; ++l) {
    const std::string k = "keys[" + std::to_string(l) + "]", v = "values[" + std::to_string(l) + "]";
    check_tensor(keys[l], k.c_str(), {1, heads, seq, head_dim}, DType::Float16, 2);
    check_tensor(values[l], v.c_str(), {1, heads, seq, head_dim}, DType::Float16, 2);
    check_tensor_device(keys[l], k, device_, "context");
    check_tensor_device(values[l], v, device_, "context");
  }
  // One 2D copy per tensor: `heads` rows of seq * head_dim values, into rows max_seq * head_dim apart.
  const std::size_t row = static_cast<std::size_t>(seq) * head_dim * sizeof(__half);
  const std::size_t cache_row = static_cast<std::size_t>(max_seq_) * head_dim * sizeof(__half);
  if (seq > 0) {
    for (int l = 0; l < layers; ++l) {
      CF_CUDA_CHECK(cudaMemcpy2DAsync(cache_.keys(l), cache_row, keys[l].data, row, row, heads,
                                      cudaMemcpyDeviceToDevice, stream_));
      CF_CUDA_CHECK(cudaMemcpy2DAsync(cache_.values(l), cache_row, values[l].data, row, row, heads,
                                      cudaMemcpyDeviceToDevice, stream_));
    }
  }
  CF_CUDA_CHECK(kernels::launch_store_int(device_position_, static_cast<int>(seq), stream_));
  cache_.set_length(static_cast<int>(seq));
  position_ = static_cast<int>(seq);
  has_token_ = false;
}

void DecodeContext::enqueue(std::optional<int> token) {
  if (position_ >= max_seq_) {
    throw std::out_of_range("DecodeContext: position " + std::to_string(position_) + " is past max_seq " +
                            std::to_string(max_seq_) + " (the cache is full: reset() or use a larger max_seq)");
  }
  if (token && (*token < 0 || *token >= config_.vocab)) {
    throw std::invalid_argument("token: expected 0.." + std::to_string(config_.vocab - 1) + ", got " +
                                std::to_string(*token));
  }
  if (!token && !has_token_) {
    throw std::logic_error("DecodeContext: no token for position " + std::to_string(position_) +
                           " (no step has run since construction, reset() or load_prefix()): pass one");
  }
  // Captured before the token is stored, so a failing capture leaves tokens[position_] as it was.
  if (graph_ == nullptr) capture();
  if (token) {
    CF_CUDA_CHECK(kernels::launch_store_token(tokens_, device_position_, *token, stream_));
    has_token_ = true;  // tokens[position_] now holds this step's input
  }
  CF_CUDA_CHECK(cudaGraphLaunch(graph_, stream_));
  // The device has advanced its position: so does the host, before anything else can throw.
  ++position_;
  cache_.set_length(position_);
  has_token_ = true;  // the step writes its output at tokens[position_]
  CF_CUDA_CHECK(cudaEventRecord(step_done_, stream_));
}

int DecodeContext::read_last_token() const {
  if (!has_token_) throw std::logic_error("DecodeContext: no step has produced a token yet");
  CF_CUDA_CHECK(cudaMemcpyAsync(host_token_, tokens_ + position_, sizeof(int), cudaMemcpyDeviceToHost, stream_));
  CF_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return *host_token_;
}

void DecodeContext::enqueue_step(int token) {
  const std::lock_guard<std::mutex> lock(mutex_);
  const DeviceGuard on(device_);
  enqueue(token);
}

void DecodeContext::enqueue_step() {
  const std::lock_guard<std::mutex> lock(mutex_);
  const DeviceGuard on(device_);
  enqueue(std::nullopt);
}

int DecodeContext::last_token() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  const DeviceGuard on(device_);
  return read_last_token();
}

int DecodeContext::step(int token) {
  const std::lock_guard<std::mutex> lock(mutex_);
  const DeviceGuard on(device_);
  enqueue(token);
  return read_last_token();
}

int DecodeContext::step() {
  const std::lock_guard<std::mutex> lock(mutex_);
  const DeviceGuard on(device_);
  enqueue(std::nullopt);
  return read_last_token();
}

std::vector<int> DecodeContext::tokens(int start, int stop) const {
  const long long end = static_cast<long long>(max_seq_) + 1;
  if (start < 0 || stop < start || stop > end) {
    throw std::out_of_range("tokens: expected 0 <= start <= stop <= " + std::to_string(end) + ", got " +
                            std::to_string(start) + ", " + std::to_string(stop));
  }
  std::vector<int> out(static_cast<std::size_t>(stop - start));
  if (out.empty()) return out;
  const std::lock_guard<std::mutex> lock(mutex_);
  const DeviceGuard on(device_);
  CF_CUDA_CHECK(cudaStreamSynchronize(stream_));
  CF_CUDA_CHECK(cudaMemcpy(out.data(), tokens_ + start, out.size() * sizeof(int), cudaMemcpyDeviceToHost));
  return out;
}

int DecodeContext::prefill(const std::vector<int>& prompt) {
  if (prompt.empty()) throw std::invalid_argument("prompt: expected at least one token, got none");
  for (std::size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= config_.vocab) {
      throw std::invalid_argument("prompt[" + std::to_string(i) + "]: expected 0.." +
                                  std::to_string(config_.vocab - 1) + ", got " + std::to_string(prompt[i]));
    }
  }
  const std::lock_guard<std::mutex> lock(mutex_);
  const long long end = static_cast<long long>(position_) + static_cast<long long>(prompt.size());
  if (end > max_seq_) {
    throw std::out_of_range("prompt: " + std::to_string(prompt.size()) + " tokens from position " +
                            std::to_string(position_) + " are past max_seq " + std::to_string(max_seq_));
  }
  const DeviceGuard on(device_);
  for (const int token : prompt) enqueue(token);
  return read_last_token();
}

void DecodeContext::enqueue_kernels(cudaStream_t stream) {
  const int hidden = config_.hidden;
  CF_CUDA_CHECK(kernels::launch_embedding(half_ptr(weights_[ModelSlot::embed_in]), tokens_, device_position_,
                                          hidden_[0], hidden, stream));
  for (int l = 0; l < config_.layers; ++l) {
    const LayerIO io{hidden_[l % 2], hidden_[(l + 1) % 2], h1_, attn_, mlp_act_};
    layers_[l]->forward_at_device_position(cache_, l, io, device_position_, mode_, stream);
  }
  const kernels::LmHeadArgs head{hidden_[config_.layers % 2],
                                 final_norm_kind(config_),
                                 half_ptr(weights_[ModelSlot::final_norm_weight]),
                                 half_ptr(weights_[ModelSlot::final_norm_bias]),
                                 config_.norm_eps,
                                 half_ptr(weights_[ModelSlot::lm_head]),
                                 config_.vocab,
                                 hidden,
                                 logits_,
                                 static_cast<kernels::ArgmaxPartial*>(partials_)};
  CF_CUDA_CHECK(
      kernels::launch_final_norm_lm_head(head, kernels::LmHeadPlan{lm_head_blocks_, lm_head_smem_}, true, stream));
  // Last: it reads the step's position and then advances it.
  CF_CUDA_CHECK(kernels::launch_select_token(logits_, config_.vocab,
                                             static_cast<const kernels::ArgmaxPartial*>(partials_), lm_head_blocks_,
                                             token_selection(sampling_), device_position_, tokens_, true, stream));
}

void DecodeContext::capture() {
  CF_CUDA_CHECK(cudaStreamBeginCapture(capture_stream_, cudaStreamCaptureModeThreadLocal));
  try {
    enqueue_kernels(capture_stream_);
  } catch (...) {
    cudaGraph_t broken = nullptr;
    // Ending an invalidated capture fails; that error is this call's own to clear, nothing older is.
    if (cudaStreamEndCapture(capture_stream_, &broken) != cudaSuccess) (void)cudaGetLastError();
    if (broken) (void)cudaGraphDestroy(broken);
    throw;
  }
  cudaGraph_t captured = nullptr;
  CF_CUDA_CHECK(cudaStreamEndCapture(capture_stream_, &captured));
  const cudaError_t status = cudaGraphInstantiate(&graph_, captured, 0);
  (void)cudaGraphDestroy(captured);
  if (status != cudaSuccess) graph_ = nullptr;
  CF_CUDA_CHECK(status);
}

}  // namespace clusterfusion
