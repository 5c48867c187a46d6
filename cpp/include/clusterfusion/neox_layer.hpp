// One GPT-NeoX decoder layer for one new token, computed by the fused cluster kernels.
#pragma once
#include <cuda_runtime_api.h>

#include "clusterfusion/config.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "clusterfusion/weights.hpp"

namespace clusterfusion {
namespace kernels {
struct NeoXLayerParams;
}

enum class LayerMode {
  Split,        // two launches: phase A, then phase B
  Cooperative,  // one launch, a grid-wide barrier between the phases
};
const char* layer_mode_name(LayerMode mode);
LayerMode parse_layer_mode(const std::string& name);  // "split" | "cooperative"

// Device buffers of one decode step of one layer. x and out may be the same buffer.
struct LayerIO {
  const void* x = nullptr;  // [hidden] float16: the layer input
  void* out = nullptr;      // [hidden] float16: x + attention + MLP
  float* attn = nullptr;    // [hidden] float32: concatenated per-head attention outputs (before W_o)
  float* mlp_act = nullptr; // [ffn] float32: GELU(W_up LN2(x) + b_up)
  // Optional, for kernel tuning: 12 global-timer stamps (ns) per block of the plan, at the stages of the layer;
  // in split mode twice that, phase A's kernel's stamps then phase B's.
  unsigned long long* timeline = nullptr;
};

// How the kernels are laid out on the device for one config (computed once, from the device's properties).
struct LayerLaunchPlan {
  int cluster_size = 0;  // blocks per cluster; cluster c < heads computes attention head c
  int clusters = 0;      // >= heads; the rest stream MLP and output rows only
  int blocks = 0;        // clusters * cluster_size, at most one per SM
  int threads = 0;
  std::size_t smem_phase_a = 0, smem_phase_b = 0, smem_cooperative = 0;
  bool cooperative_supported = false;
};

class NeoXLayer {
 public:
  // Validates config and weights (throws std::invalid_argument naming the field or tensor) and encodes the
  // weights' TMA tensor maps. The weights are borrowed: they must outlive this object.
  NeoXLayer(const ModelConfig& config, const LayerWeights& weights, int max_seq);
  ~NeoXLayer();
  NeoXLayer(const NeoXLayer&) = delete;
  NeoXLayer& operator=(const NeoXLayer&) = delete;

  const LayerLaunchPlan& plan() const { return plan_; }

  // Off by default. On: every launch starts while the previous kernel in the stream finishes (programmatic
  // dependent launch): its blocks build their work lists and fill their weight rings as that kernel's blocks
  // leave the SMs, and wait for it only before reading x (and attn, mlp_act). So the kernel just before a
  // launch must not write this layer's weights, biases, or the device position it reads (as in a chain of
  // layers; DecodeContext turns it on).
  void set_overlap_previous_kernel(bool on) { overlap_previous_ = on; }
  bool overlap_previous_kernel() const { return overlap_previous_; }

  // One decode step at `position` (cache holds 0..position-1 of `layer`): appends k/v at `position` and
  // writes io.out. Throws std::out_of_range if position >= cache.max_seq() or position > cache.length()
  // (nothing is launched, the cache is unchanged). Advances cache.length() to at least position + 1.
  void forward(KVCache& cache, int layer, const LayerIO& io, int position, LayerMode mode,
               cudaStream_t stream = nullptr) const;
  // Phase A alone (LayerNorm -> QKV -> rotary -> cache append -> attention into io.attn, and
  // LayerNorm2 -> MLP-up -> GELU into io.mlp_act). Same checks and cache bookkeeping as forward().
  void attention_mlp_up(KVCache& cache, int layer, const LayerIO& io, int position,
                        cudaStream_t stream = nullptr) const;
  // forward() for a CUDA graph that serves every step: the kernels read the position from `position` (device
  // memory, written by an earlier node of the graph). The caller checks positions and keeps cache.length(); a
  // position outside [0, cache.max_seq()) makes the kernels return without writing anything.
  void forward_at_device_position(KVCache& cache, int layer, const LayerIO& io, const int* position,
                                  LayerMode mode, cudaStream_t stream = nullptr) const;
  // Phase B alone: io.out = x + W_o io.attn + b_o + W_down io.mlp_act + b_down.
  void mlp_down_residual(const LayerIO& io, cudaStream_t stream = nullptr) const;

 private:
  void check_position(const KVCache& cache, int layer, int position) const;
  void launch(const kernels::NeoXLayerParams& p, LayerMode mode, cudaStream_t stream) const;
  ModelConfig config_;
  LayerWeights weights_;
  int max_seq_;
  LayerLaunchPlan plan_;
  alignas(64) unsigned char maps_[4][128];  // CUtensorMap for w_qkv, w_o, w_up, w_down
  unsigned* grid_barrier_ = nullptr;        // device counter for the cooperative mode
  bool overlap_previous_ = false;
};

}  // namespace clusterfusion
