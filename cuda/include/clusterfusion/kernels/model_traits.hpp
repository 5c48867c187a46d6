// What a decoder-layer architecture is, to the kernels: its norm, its MLP, how q|k|v are stored, whether its
// projections have biases, and its list of phases (one launch each in split mode). A phase is a combination of
// three operations, named by what they do:
//   norm_qkv_rope_attend  head clusters: norm(input) -> q|k|v rows -> rotary -> cache append -> attention -> attn
//   norm_up               every block's share of the MLP's up rows: act = GELU(W_up n + b) or silu(W_gate n) * W_up n
//   proj_residual         output rows: output = residual + W_o attn and/or W_down act (+ biases)
// Adding an architecture is one traits struct here plus its host glue (weights, config).
#pragma once
#include "clusterfusion/kernels/layer_params.hpp"

namespace clusterfusion::kernels {

enum class NormKind { LayerNorm, RMSNorm };  // LayerNorm with bias; RMSNorm without
enum class MlpKind { Gelu, SwiGlu };         // act = GELU(up); act = silu(gate) * up

// The [hidden] float16 vectors a phase reads and writes: the layer input, the sequential residual's middle
// (x + attention) and the layer output.
enum class LayerVec { X, H1, Out };

struct PhaseSpec {
  bool attend;      // norm_qkv_rope_attend of `input` (the attention norm)
  bool up;          // norm_up of `input` (the MLP norm)
  bool o_proj;      // proj_residual with W_o attn ...
  bool down_proj;   // ... and/or W_down act
  LayerVec input;   // normalised by attend / up
  LayerVec residual, output;  // of proj_residual

  // Only the head clusters have work: the phase attends and streams no other rows.
  __host__ __device__ constexpr bool heads_only() const { return attend && !up && !o_proj && !down_proj; }
};

// Parallel residual: out = x + attention(LN1 x) + MLP(LN2 x); two phases.
struct GptNeoX {
  static constexpr NormKind kNorm = NormKind::LayerNorm;
  static constexpr MlpKind kMlp = MlpKind::Gelu;
  static constexpr bool kFusedQkv = true;  // one matrix, q|k|v rows interleaved per head
  static constexpr bool kBiases = true;
  static constexpr int kPhases = 2;
  static constexpr const char* kPhaseNames[kPhases] = {"norm_qkv_rope_attend_up", "o_down_proj_residual"};
  __host__ __device__ static constexpr PhaseSpec phase(int i) {
    return i == 0 ? PhaseSpec{true, true, false, false, LayerVec::X, LayerVec::X, LayerVec::X}
                  : PhaseSpec{false, false, true, true, LayerVec::X, LayerVec::X, LayerVec::Out};
  }
};

// GPT-NeoX's MLP down-projection alone, for an attention output computed elsewhere (DecoderLayer::down_residual):
// out = x + attn_output + W_down act + b_down, attn_output (already through W_o and b_o) added to the residual
// through DecoderLayerParams::residual_add. Not a phase list of forward(): one launch, the o_down_proj_residual
// phase without W_o.
struct GptNeoXDownResidual : GptNeoX {
  static constexpr int kPhases = 1;
  static constexpr const char* kPhaseNames[kPhases] = {"down_proj_residual"};
  __host__ __device__ static constexpr PhaseSpec phase(int) {
    return PhaseSpec{false, false, false, true, LayerVec::X, LayerVec::X, LayerVec::Out};
  }
};

// Sequential residual: h1 = x + attention(RMSNorm x); out = h1 + MLP(RMSNorm h1); four phases.
struct Llama {
  static constexpr NormKind kNorm = NormKind::RMSNorm;
  static constexpr MlpKind kMlp = MlpKind::SwiGlu;
  static constexpr bool kFusedQkv = false;  // three matrices, q of every head, then k and v of the kv heads
  static constexpr bool kBiases = false;
  static constexpr int kPhases = 4;
  static constexpr const char* kPhaseNames[kPhases] = {"norm_qkv_rope_attend", "o_proj_residual", "norm_gate_up",
                                                       "down_proj_residual"};
  __host__ __device__ static constexpr PhaseSpec phase(int i) {
    return i == 0   ? PhaseSpec{true, false, false, false, LayerVec::X, LayerVec::X, LayerVec::X}
           : i == 1 ? PhaseSpec{false, false, true, false, LayerVec::X, LayerVec::X, LayerVec::H1}
           : i == 2 ? PhaseSpec{false, true, false, false, LayerVec::H1, LayerVec::X, LayerVec::X}
                    : PhaseSpec{false, false, false, true, LayerVec::X, LayerVec::H1, LayerVec::Out};
  }
};

// The head dimension a launch of phases first..last is compiled for: its own when it attends; the others do
// not depend on it, so one instantiation (64) serves every config.
template <class Model>
__host__ __device__ constexpr int launch_head_dim(int first, int last, int head_dim) {
  bool attends = false;
  for (int i = first; i <= last; ++i) attends = attends || Model::phase(i).attend;
  return attends ? head_dim : 64;
}

// Job lists a phase runs, in stream order: q|k|v pieces, gate and up, output rows (one list per pass over a
// rank's K, layer_params.hpp; the second is empty where one pass fits).
constexpr int kQkvLists = 3;
constexpr int kUpLists = 2;
constexpr int kProjLists = kProjPasses;
__host__ __device__ constexpr int phase_lists(const PhaseSpec& s) {
  return (s.attend ? kQkvLists : 0) + (s.up ? kUpLists : 0) + (s.o_proj || s.down_proj ? kProjLists : 0);
}

// Whether the job lists of a launch of phases first..last are the same at every position, so that they can be planned
// once (bench/NOTES.md v55): only the norm share of a phase that attends and streams up rows follows the position.
template <class Model>
__host__ __device__ constexpr bool lists_planned(int first, int last) {
  bool planned = true;
  for (int i = first; i <= last; ++i) planned = planned && !(Model::phase(i).attend && Model::phase(i).up);
  return planned;
}

// The K of a model's proj_residual phase, in columns: W_o's (hidden) and/or W_down's (ffn), laid end to end.
template <class Model>
__host__ __device__ constexpr int proj_columns(int hidden, int ffn) {
  int cols = 0;
  for (int i = 0; i < Model::kPhases; ++i) {
    const PhaseSpec s = Model::phase(i);
    const int k = (s.o_proj ? hidden : 0) + (s.down_proj ? ffn : 0);
    cols = k > cols ? k : cols;
  }
  return cols;
}
// Index of phase `phase`'s first list in a launch that starts at phase `first`.
template <class Model>
__host__ __device__ constexpr int phase_list_base(int first, int phase) {
  int base = 0;
  for (int i = first; i < phase; ++i) base += phase_lists(Model::phase(i));
  return base;
}

}  // namespace clusterfusion::kernels
