#!/usr/bin/env bash
# v42 (bench/NOTES.md): are some SMs slower streamers whatever they run? layer_timing with -DCF_BOX_STAMPS=64 prints
# each block's SM and consumption rate per kernel; two processes per model (different block-to-SM placement).
set -u
export PATH=/usr/local/cuda/bin:$PATH
S=$SECONDS
trap 'cd $OUT && tar czf v42.tgz *.txt 2>/dev/null; rm -f $OUT/*.txt' EXIT
(cmake -S . -B build-v-bs -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_TESTS=OFF -DCLUSTERFUSION_BUILD_BENCH=ON \
   -DCLUSTERFUSION_BUILD_PYTHON=OFF -DCLUSTERFUSION_BUILD_EXAMPLES=OFF -DCMAKE_CUDA_FLAGS=-DCF_BOX_STAMPS=64 \
   -DCMAKE_CXX_FLAGS=-DCF_BOX_STAMPS=64 && cmake --build build-v-bs --target layer_timing) > $OUT/build.txt 2>&1
echo "built at $((SECONDS - S)) s"
for m in pythia-2.8b llama-2-7b tinyllama-1.1b; do
  for r in 1 2; do echo "### round $r"; timeout 90 build-v-bs/layer_timing $m 512 10; done > $OUT/$m.txt 2>&1
  grep -E "^### |r = " $OUT/$m.txt
done
