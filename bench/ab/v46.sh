#!/usr/bin/env bash
# v46 (bench/NOTES.md): how many weight bytes each SM keeps in flight. layer_timing built with the ring at
#   base  16 warps x 2 stages of 4 KB boxes (128 KB per SM, ~17 MB over 132 SMs: main's)
#   s1    16 warps x 1 stage  (64 KB)
#   w12   12 warps x 2 stages (96 KB)
#   w8     8 warps x 2 stages (64 KB)
# on five shapes, two rounds alternating; prints the split overlapped row of each and keeps every run's output.
set -u
export PATH=/usr/local/cuda/bin:$PATH
S=$SECONDS
trap 'cd $OUT && tar czf v46.tgz *.txt 2>/dev/null; rm -f $OUT/*.txt' EXIT
variants="base:16:2 s1:16:1 w12:12:2 w8:8:2"
for v in $variants; do IFS=: read -r name warps stages <<<"$v"
  flags="-DCF_WARPS=$warps -DCF_STAGES=$stages"
  (cmake -S . -B build-v-$name -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_TESTS=OFF -DCLUSTERFUSION_BUILD_BENCH=ON \
     -DCLUSTERFUSION_BUILD_PYTHON=OFF -DCLUSTERFUSION_BUILD_EXAMPLES=OFF -DCMAKE_CUDA_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" && \
   cmake --build build-v-$name --target layer_timing) > $OUT/build-$name.txt 2>&1 &
done
wait
echo "built at $((SECONDS - S)) s"; for v in $variants; do tail -1 $OUT/build-${v%%:*}.txt; done
for mc in tinyllama-1.1b:512 llama-2-7b:512 pythia-2.8b:512 pythia-6.9b:512 pythia-2.8b:2048; do m=${mc%%:*} ctx=${mc#*:}
  for r in 1 2; do for v in $variants; do echo "### ${v%%:*} round $r"; timeout 90 build-v-${v%%:*}/layer_timing $m $ctx 30; done; done \
    > $OUT/$m-$ctx.txt 2>&1
  echo "$m $ctx at $((SECONDS - S)) s: $(grep -E '^### |split   .*overlapped' $OUT/$m-$ctx.txt | awk '/^###/{h=$2; next} {printf "%s %s  ", h, $3}')"
done
