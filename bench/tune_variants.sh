#!/usr/bin/env bash
# Builds bench/cpp/layer_timing for several settings of the kernel's tuning knobs (CF_BOX_ROWS, CF_WARPS,
# CF_STAGES, CF_NORMALIZE_FIRST: cuda/include/clusterfusion/kernels/neox_layer_params.hpp) side by side and times each, so
# variants are compared in one run on one GPU. Usage: bench/tune_variants.sh [model ctx] (default pythia-2.8b 512);
# variants via CF_VARIANTS="name:rows:warps:stages[:normalize_first] ...".
set -euo pipefail
model=${1:-pythia-2.8b}
ctx=${2:-512}
variants=${CF_VARIANTS:-"base:8:16:2 normfirst:8:16:2:1 r8w12s2:8:12:2 r16w16s1:16:16:1"}
for v in $variants; do
  IFS=: read -r name rows warps stages norm_first <<<"$v"
  flags="-DCF_BOX_ROWS=$rows -DCF_WARPS=$warps -DCF_STAGES=$stages -DCF_NORMALIZE_FIRST=${norm_first:-0}"
  (cmake -S . -B "build-tune-$name" -G Ninja -DCLUSTERFUSION_BUILD_TESTS=OFF -DCLUSTERFUSION_BUILD_BENCH=ON \
     -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_CUDA_FLAGS="$flags" >/dev/null &&
   cmake --build "build-tune-$name" --target layer_timing >/dev/null) &
done
wait
for v in $variants; do
  IFS=: read -r name rows warps stages norm_first <<<"$v"
  echo "### $name: $rows rows per box, $warps warps, $stages stages, LayerNorm first: ${norm_first:-0}"
  "build-tune-$name/layer_timing" "$model" "$ctx" 30
done
