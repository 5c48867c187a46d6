// One decoder layer (any supported architecture) for one new token, computed by the fused cluster kernels.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime_api.h>

#include "clusterfusion/config.hpp"
#include "clusterfusion/kv_cache.hpp"
#include "clusterfusion/weights.hpp"

namespace clusterfusion {
namespace kernels {
struct DecoderLayerParams;
struct LayerGrid;
}

enum class LayerMode {
  Split,        // one launch per phase of the architecture
  Cooperative,  // one launch, a grid-wide barrier between the phases
};
const char* layer_mode_name(LayerMode mode);
LayerMode parse_layer_mode(const std::string& name);  // "split" | "cooperative"

// Device buffers of one decode step of one layer. x and out may be the same buffer.
struct LayerIO {
  const void* x = nullptr;  // [hidden] float16: the layer input
  void* out = nullptr;      // [hidden] float16: the layer output
  void* h1 = nullptr;       // [hidden] float16: x + attention (sequential residual, Llama); unused by GPT-NeoX
  float* attn = nullptr;    // [hidden] float32: concatenated per-head attention outputs (before W_o)
  float* mlp_act = nullptr; // [ffn] float32: the MLP activation (before W_down)
  // Optional, for kernel tuning: kernels::kTimelineStride global-timer stamps (ns) per block of the plan, at the
  // stages of the layer (16, and the weight boxes' in a -DCF_BOX_STAMPS build); in split mode one such row per
  // phase, in phase order.
  unsigned long long* timeline = nullptr;
};

// One phase's own launch (split mode): `blocks` blocks in clusters of `cluster_size`.
struct PhaseGrid {
  int cluster_size = 0;
  int blocks = 0;
  std::size_t smem = 0;  // dynamic shared memory per block
};

// How the kernels are laid out on the device for one config (computed once, from the device's properties).
struct LayerLaunchPlan {
  int cluster_size = 0;  // blocks per cluster; cluster c < heads computes attention head c
  int clusters = 0;      // >= heads; the rest stream MLP and output rows only
  int blocks = 0;        // clusters * cluster_size, at most one per SM
  int threads = 0;
  // Each phase's own launch: the grid above, except a phase whose work is the head clusters' alone (Llama's
  // norm_qkv_rope_attend), which runs one cluster per head, of the largest size that fits at once.
  std::vector<PhaseGrid> phase_grids;
  int attention_chunks = 0;  // a head's positions in this many chunks in every launch (the same bits in each mode)
  int qkv_chunks = 0;        // K chunks of every q|k|v job (0: each job list picks its own)
  std::size_t smem_cooperative = 0;
  bool cooperative_supported = false;
};

// Validates the shape against what the kernels support (std::invalid_argument naming the ModelConfig field or
// max_seq) and plans the grid on the current device.
LayerLaunchPlan plan_layer(const ModelConfig& config, int max_seq);

// Devices: the layer lives on the device that was current when it was built (device()); every call makes that
// device current for its duration and refuses a cache or a stream of another device ("stream: on cuda:1, the
// layer is on cuda:0"). Threads: not synchronised, like the KVCache it writes: one thread at a time.
class DecoderLayer {
 public:
  // Validates config and weights (throws std::invalid_argument naming the field or tensor, also for a weight of
  // another device than the current one), encodes the weights' TMA tensor maps and plans the job lists that do not
  // depend on the position (a few small launches on the legacy default stream, each waited for: a failed one throws
  // CudaError naming it, "planning launch 1 (phase 1: o_proj_residual) failed at ..."). The weights are borrowed:
  // they must outlive this object.
  DecoderLayer(const ModelConfig& config, const LayerWeights& weights, int max_seq);
  ~DecoderLayer();
  DecoderLayer(const DecoderLayer&) = delete;
  DecoderLayer& operator=(const DecoderLayer&) = delete;

  const ModelConfig& config() const { return config_; }
  const LayerLaunchPlan& plan() const { return plan_; }
  int device() const { return device_; }
  // The architecture's phases, named by what they do ("norm_qkv_rope_attend", "o_proj_residual", ...).
  std::vector<std::string> phase_names() const;

  // Off by default. On: every launch starts while the previous kernel in the stream finishes (programmatic
  // dependent launch): its blocks build their work lists and fill their weight rings as that kernel's blocks
  // leave the SMs, and wait for it only before reading their inputs. So the kernel just before a launch must not
  // write this layer's weights, biases, or the device position it reads (as in a chain of layers;
  // DecodeContext turns it on).
  void set_overlap_previous_kernel(bool on) { overlap_previous_ = on; }
  bool overlap_previous_kernel() const { return overlap_previous_; }

  // One decode step at `position` (cache holds 0..position-1 of `layer`): appends k/v at `position` and
  // writes io.out. Throws std::out_of_range if position >= cache.max_seq() or position > cache.length()
  // (nothing is launched, the cache is unchanged). Advances cache.length() to at least position + 1.
  void forward(KVCache& cache, int layer, const LayerIO& io, int position, LayerMode mode,
               cudaStream_t stream = nullptr) const;
  // forward() for a CUDA graph that serves every step: the kernels read the position from `position` (device
  // memory, written by an earlier node of the graph). The caller checks positions and keeps cache.length(); a
  // position outside [0, cache.max_seq()) makes the kernels return without writing anything.
  void forward_at_device_position(KVCache& cache, int layer, const LayerIO& io, const int* position,
                                  LayerMode mode, cudaStream_t stream = nullptr) const;
  // Phase `phase` alone (split mode's launch of it), reading and writing the buffers of io it uses. Same checks
  // as forward(); the phase that attends appends k/v and advances cache.length().
  void run_phase(KVCache& cache, int layer, const LayerIO& io, int position, int phase,
                 cudaStream_t stream = nullptr) const;

  // GPT-NeoX (parallel residual) only: out = x + attn_output + W_down mlp_act + b_down, the MLP's down-projection
  // and the residual for an attention output computed elsewhere (attn_output: [hidden] float16, already through
  // W_o and b_o), in one launch on the layer's grid: forward's o_down_proj_residual phase without W_o. x, attn_output
  // and out [hidden] float16 (out may be x or attn_output), mlp_act [ffn] float32 (16-byte aligned). Throws
  // std::invalid_argument for a Llama layer or a null or misaligned pointer. No cache: nothing else is touched.
  void down_residual(const void* x, const void* attn_output, const float* mlp_act, void* out,
                     cudaStream_t stream = nullptr) const;

  // For tests and debugging, synchronous, with no launch of this layer in flight: the word of the cooperative
  // kernel's grid barrier, 0 or 2^31 between launches (cuda/include/clusterfusion/kernels/grid_barrier.cuh).
  // Setting anything else throws std::invalid_argument.
  unsigned debug_grid_barrier_word() const;
  void debug_set_grid_barrier_word(unsigned word);
  // For tests: the job lists planned when the layer was built (of every launch whose lists do not depend on the
  // position; device memory, debug_planned_lists_bytes() of it), and whether launches read them (on by default; off,
  // every block builds its own at entry).
  void* debug_planned_lists() const { return planned_lists_; }
  std::size_t debug_planned_lists_bytes() const { return planned_bytes_; }
  // For tests: the part of that table that split mode's phase `phase` reads ({nullptr, 0} where that launch builds
  // its lists at entry). Throws std::invalid_argument for a phase outside the layer's phase list.
  std::pair<void*, std::size_t> debug_planned_lists_of_phase(int phase) const;
  void debug_set_planned_lists(bool on) { use_planned_ = on; }
  // For tests, synchronous: writes to `table` (device memory laid out as debug_planned_lists()) the lists that the
  // blocks of each of those launches build at entry in a step at `position` with `cache` (the planning launches at
  // that position and cache length instead of 0 and the layer's max_seq). Throws std::invalid_argument for a cache
  // longer than the layer's max_seq or a position outside it.
  void debug_plan_job_lists(const KVCache& cache, int position, void* table) const;

 private:
  void check(const KVCache& cache, int layer, const LayerIO& io, int position, cudaStream_t stream) const;
  kernels::DecoderLayerParams step_params(const KVCache& cache, int layer, const LayerIO& io) const;
  kernels::LayerGrid layer_grid(int first, int last) const;  // phase first alone, or every phase (first < last)
  void launch(const kernels::DecoderLayerParams& p, int first, int last, cudaStream_t stream) const;
  void launch(const kernels::DecoderLayerParams& p, LayerMode mode, cudaStream_t stream) const;
  // The launches whose job lists are planned, by index: split mode's phase i, cooperative_launch() (every phase),
  // down_residual_launch() (GPT-NeoX's down projection alone).
  struct PlannedLaunch {
    int first, last;  // the layer kernel's phases, unless down_residual
    bool down_residual;
  };
  PlannedLaunch planned_launch(int launch) const;
  int cooperative_launch() const { return static_cast<int>(plan_.phase_grids.size()); }
  int down_residual_launch() const { return cooperative_launch() + 1; }
  std::size_t planned_lists_bytes(int launch) const;  // 0 where that launch builds its lists at entry or never runs
  void plan_job_lists();
  void launch_planning(kernels::DecoderLayerParams p, unsigned char* table) const;
  kernels::LayerGrid down_residual_grid() const;
  // Launch i's planned job lists; nullptr where it builds them at entry.
  void* planned_lists(int launch) const;
  ModelConfig config_;
  LayerWeights weights_;
  int max_seq_;
  int device_ = -1;  // the current device at construction: every call runs there
  LayerLaunchPlan plan_;
  std::unique_ptr<kernels::DecoderLayerParams> params_;  // all but the step's buffers, filled once
  double* inv_freq_ = nullptr;         // device: the rotary inverse frequencies
  unsigned* grid_barrier_ = nullptr;   // device word of the cooperative mode's grid barrier
  unsigned char* planned_lists_ = nullptr;   // device: every launch's planned job lists, one allocation
  std::vector<std::size_t> planned_offsets_;  // per launch (planned_lists), SIZE_MAX for none
  std::size_t planned_bytes_ = 0;
  bool use_planned_ = true;
  bool overlap_previous_ = false;
};

}  // namespace clusterfusion
