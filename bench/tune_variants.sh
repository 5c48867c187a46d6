#!/usr/bin/env bash
# Builds bench/cpp/layer_timing for several settings of the kernel's tuning knobs (CF_BOX_ROWS, CF_WARPS,
# CF_STAGES, CF_ATTENTION_FIXED_KB in cuda/include/clusterfusion/kernels/, and any other -D flag) side by side
# and times each, so variants are compared in one run on one GPU. Usage: bench/tune_variants.sh [model ctx] (default pythia-2.8b 512);
# variants via CF_VARIANTS="name:rows:warps:stages[:attention_fixed_kb[:extra,-D,flags]] ...".
set -euo pipefail
model=${1:-pythia-2.8b}
ctx=${2:-512}
variants=${CF_VARIANTS:-"base:8:16:2:256 attn128:8:16:2:128 attn384:8:16:2:384 w12:8:12:2:256"}
for v in $variants; do
  IFS=: read -r name rows warps stages attn_kb extra <<<"$v"
  flags="-DCF_BOX_ROWS=$rows -DCF_WARPS=$warps -DCF_STAGES=$stages"
  flags+=" -DCF_ATTENTION_FIXED_KB=${attn_kb:-256} ${extra//,/ }"
  (cmake -S . -B "build-tune-$name" -G Ninja -DCLUSTERFUSION_BUILD_TESTS=OFF -DCLUSTERFUSION_BUILD_BENCH=ON \
     -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_CUDA_FLAGS="$flags" >/dev/null &&
   cmake --build "build-tune-$name" --target layer_timing >/dev/null) &
done
wait
for v in $variants; do
  IFS=: read -r name rows warps stages attn_kb extra <<<"$v"
  echo "### $name: $rows rows/box, $warps warps, $stages stages, attention ${attn_kb:-256} KB ${extra//,/ }"
  "build-tune-$name/layer_timing" "$model" "$ctx" 30
done
