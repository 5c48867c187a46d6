#!/usr/bin/env bash
# v40 (bench/NOTES.md): the weight stream seen box by box. Builds layer_timing twice from this tree, without and
# with -DCF_BOX_STAMPS=64, and runs both on three models (host position); the stamped build prints the box stream.
set -u
export PATH=/usr/local/cuda/bin:$PATH
S=$SECONDS
trap 'cd $OUT && tar czf v40.tgz *.txt 2>/dev/null; rm -f $OUT/*.txt' EXIT
for v in base: bs:-DCF_BOX_STAMPS=64; do name=${v%%:*} flags=${v#*:}
  (cmake -S . -B build-v-$name -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_TESTS=OFF -DCLUSTERFUSION_BUILD_BENCH=ON \
     -DCLUSTERFUSION_BUILD_PYTHON=OFF -DCLUSTERFUSION_BUILD_EXAMPLES=OFF -DCMAKE_CUDA_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" && \
   cmake --build build-v-$name --target layer_timing) > $OUT/build-$name.txt 2>&1 &
done
wait
echo "built at $((SECONDS - S)) s"
for m in pythia-2.8b llama-2-7b tinyllama-1.1b; do
  for v in base bs base bs; do echo "### $v"; timeout 90 build-v-$v/layer_timing $m 512 30; done > $OUT/$m.txt 2>&1
  echo "$m at $((SECONDS - S)) s"; grep -E "^### |split   .*overlapped|cooperative  overlapped" $OUT/$m.txt | paste - - - | awk '{print $2, $5, $10}'
done
