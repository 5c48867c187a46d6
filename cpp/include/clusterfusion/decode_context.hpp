// A whole-model decode runtime for one sequence at batch 1, for any supported architecture: the KV cache, the
// scratch buffers, one fused layer per decoder layer, and a CUDA graph of the whole decode step (embedding
// lookup -> every layer -> final norm -> LM head -> token selection). Tokens and the position live on the device: a step reads its input
// token from the device token history and writes the next one there, so steps chain with no host round trip.
//
// Threads: every method may be called from any thread. Calls are serialised by a mutex inside the context, each
// running whole before the next begins: step() (enqueue_step and last_token together) returns the token of its own
// step, and set_sampling() or reset() take effect between two steps, never inside one. The device buffers behind
// logits() and tokens() are outside that: read them on stream() (or after synchronizing it) and only while no
// other thread enqueues steps.
//
// Devices: the context lives on the device that was current when it was built (device()); every call makes that
// device current for its duration and restores the caller's. Weights, prefix tensors and the stream of another
// device are refused, naming them ("layers[3].w_up: on cuda:1, the context is on cuda:0").
#pragma once
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <cuda_runtime_api.h>

#include "clusterfusion/config.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "clusterfusion/decoder_layer.hpp"
#include "clusterfusion/sampling.hpp"
#include "clusterfusion/tensor.hpp"
#include "clusterfusion/weights.hpp"

namespace clusterfusion {

class DecodeContext {
 public:
  // Validates the config and every weight (std::invalid_argument naming it, also for a weight or a stream of
  // another device), builds the layers (their TMA maps cover the cache at max_seq) and allocates the cache and
  // scratch on the current device. The weights are borrowed and must outlive the context. `mode` picks how each
  // layer runs; by default Split (the faster one with overlapped launches, bench/results/layer_h100.json). Every
  // step runs on `stream`, a stream of the current device.
  DecodeContext(const ModelConfig& config, const ModelWeights& weights, int max_seq,
                std::optional<LayerMode> mode = std::nullopt, cudaStream_t stream = nullptr);
  ~DecodeContext();
  DecodeContext(const DecodeContext&) = delete;
  DecodeContext& operator=(const DecodeContext&) = delete;

  const ModelConfig& config() const { return config_; }
  int max_seq() const { return max_seq_; }
  LayerMode mode() const { return mode_; }
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  // The cache's memory; its length changes with every step (position() is the synchronised view of it).
  const KVCache& cache() const { return cache_; }
  // Positions 0..position()-1 are in the cache; the next step computes position().
  int position() const;

  // Device buffers: the logits of the last step ([vocab] float32) and the token history ([max_seq + 1] int32,
  // tokens[p] is the input of the step at p, so tokens[position()] is the last step's output). Valid until the
  // next step is enqueued; read them on stream() or after synchronizing it.
  const float* logits() const { return logits_; }
  const int* tokens() const { return tokens_; }
  // Waits for stream() and copies tokens[start:stop] to the host; std::out_of_range unless
  // 0 <= start <= stop <= max_seq() + 1.
  std::vector<int> tokens(int start, int stop) const;

  // How later steps choose their token (validated, std::invalid_argument). Default: greedy.
  void set_sampling(const SamplingParams& params);
  SamplingParams sampling() const;

  // Forgets the sequence: position 0, empty cache (the memory is kept).
  void reset();

  // Prefill computed elsewhere: per layer, the keys and values of positions 0..seq-1 in transformers' layout
  // [1, kv_heads, seq, head_dim] float16 (contiguous memory of the context's device), already rotated. Copies them
  // into the cache on stream() and sets position() = seq; the next step needs a token from the host. Throws
  // std::invalid_argument (wrong count, shape, negative extent, dtype, device; naming "keys[3]") or
  // std::out_of_range (seq > max_seq) before anything is copied or written.
  void load_prefix(const std::vector<TensorView>& keys, const std::vector<TensorView>& values);

  // Enqueues one decode step at position() on stream(), with `token` (0 <= token < vocab, else
  // std::invalid_argument) as its input, or without one, with the token the previous step produced
  // (std::logic_error if there is none: after construction, reset() or load_prefix()). Throws
  // std::out_of_range when position() == max_seq(); a throwing check enqueues and writes nothing. Does not wait
  // for the GPU.
  void enqueue_step(int token);
  void enqueue_step();
  // Waits for stream() and returns the token the last step produced (tokens[position()]).
  int last_token() const;
  // enqueue_step then last_token, as one call: no other thread's call comes between them.
  int step(int token);
  int step();
  // The standalone prefill: the decode step over every token of `prompt` in turn (slower than a batched
  // prefill, needs nothing else). Returns the token after the last one. std::invalid_argument if empty, and
  // every token and the length are checked before the first step.
  int prefill(const std::vector<int>& prompt);

 private:
  // The callers of these hold mutex_ and a DeviceGuard on device_.
  void enqueue(std::optional<int> token);
  int read_last_token() const;
  void enqueue_kernels(cudaStream_t stream);
  void capture();
  void release() noexcept;

  mutable std::mutex mutex_;  // serialises every call (the threading contract above)
  ModelConfig config_;
  ModelWeights weights_;
  int max_seq_;
  int device_;  // the current device at construction: every call runs there
  LayerMode mode_ = LayerMode::Split;
  cudaStream_t stream_;
  cudaStream_t capture_stream_ = nullptr;  // stream_ may be the legacy default stream, which cannot capture
  KVCache cache_;
  std::vector<std::unique_ptr<DecoderLayer>> layers_;
  int lm_head_blocks_ = 0;
  std::size_t lm_head_smem_ = 0;
  SamplingParams sampling_;
  int position_ = 0;
  bool has_token_ = false;  // tokens[position_] holds the next step's input

  // Device scratch (one allocation each).
  __half* hidden_[2] = {nullptr, nullptr};  // [hidden] float16: layer inputs and outputs, ping-pong
  __half* h1_ = nullptr;                    // [hidden] float16: x + attention (sequential residual)
  float* attn_ = nullptr;                   // [hidden]
  float* mlp_act_ = nullptr;                // [ffn]
  float* logits_ = nullptr;                 // [vocab]
  void* partials_ = nullptr;                // [lm_head_blocks_] argmax partials of the LM head
  int* tokens_ = nullptr;                   // [max_seq + 1]
  int* device_position_ = nullptr;          // the position of the next step, advanced by the step itself
  int* host_token_ = nullptr;               // pinned: where last_token() reads the token back

  // The whole step, captured once and replayed at every position (each node reads *device_position_);
  // null until the first step and after set_sampling(), whose parameters are baked into the selection node.
  cudaGraphExec_t graph_ = nullptr;
  cudaEvent_t step_done_ = nullptr;  // recorded after every launch of graph_
};

}  // namespace clusterfusion
