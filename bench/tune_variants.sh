#!/usr/bin/env bash
# Builds bench/cpp/layer_timing for several settings of the kernel's tuning knobs (CF_BOX_ROWS, CF_WARPS,
# CF_STAGES: cuda/include/clusterfusion/kernels/neox_layer_params.hpp) side by side and times each, so
# variants are compared in one run on one GPU. Usage: bench/tune_variants.sh [model ctx] (default pythia-2.8b 512);
# variants via CF_VARIANTS="name:rows:warps:stages ...".
set -euo pipefail
model=${1:-pythia-2.8b}
ctx=${2:-512}
variants=${CF_VARIANTS:-"base:4:16:3 r4w16s2:4:16:2 r8w16s2:8:16:2 r4w8s6:4:8:6 r8w8s3:8:8:3"}
for v in $variants; do
  IFS=: read -r name rows warps stages <<<"$v"
  flags="-DCF_BOX_ROWS=$rows -DCF_WARPS=$warps -DCF_STAGES=$stages"
  (cmake -S . -B "build-tune-$name" -G Ninja -DCLUSTERFUSION_BUILD_TESTS=OFF -DCLUSTERFUSION_BUILD_BENCH=ON \
     -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_CUDA_FLAGS="$flags" >/dev/null &&
   cmake --build "build-tune-$name" --target layer_timing >/dev/null) &
done
wait
for v in $variants; do
  IFS=: read -r name rows warps stages <<<"$v"
  echo "### $name: $rows rows per box, $warps warps, $stages stages"
  "build-tune-$name/layer_timing" "$model" "$ctx" 30
done
