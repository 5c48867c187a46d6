#!/usr/bin/env bash
# v65 (bench/NOTES.md): the attention as segments with a running softmax (branch attention-segments) against main, in
# one device call. Main's tree travels as build-a-src (ignored, so carried): here, before the call,
#   rm -rf build-a-src && mkdir build-a-src && git archive main | tar -x -C build-a-src
# and run with carry ["build-a-src"]:
#   bash bench/ab/v65.sh timing   layer_timing of main (base), this tree (seg: 9 rows per segment) and this tree with
#                                 -DCF_ATTENTION_UNROLL=6 (seg6), alternating, two rounds, position from device memory
#                                 (a variant's flags are separated by commas)
#   bash bench/ab/v65.sh tests    cf_gpu_tests of this tree (bitwise split against cooperative, against float64)
# V65_SHAPES="model:ctx ..." replaces the shapes, V65_VARIANTS="name:tree:flags ..." the variants (on branch
# segments-counted, v65 with v66: "base:build-a-src: both:.: seg:.:-DCF_COUNTED_STORES=0"). Outputs go to $OUT as one
# tarball.
set -u
export PATH=/usr/local/cuda/bin:$PATH
S=$SECONDS
mode=${1:-timing}
configure() {  # name source flags target
  cmake -S $2 -B build-v-$1 -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_TESTS=$([ $4 = layer_timing ] && echo OFF || echo ON) \
    -DCLUSTERFUSION_BUILD_BENCH=ON -DCLUSTERFUSION_BUILD_PYTHON=OFF -DCLUSTERFUSION_BUILD_EXAMPLES=OFF \
    -DCMAKE_CUDA_FLAGS="$3" -DCMAKE_CXX_FLAGS="$3" && cmake --build build-v-$1 --target $4
}
if [ "$mode" = tests ]; then
  trap 'cd $OUT && tar czf v65_tests.tgz *.txt 2>/dev/null; rm -f $OUT/*.txt' EXIT
  configure tests . "" cf_gpu_tests > $OUT/build-tests.txt 2>&1 || { tail -30 $OUT/build-tests.txt; exit 1; }
  timeout 400 build-v-tests/tests/cpp/cf_gpu_tests > $OUT/tests.txt 2>&1; rc=$?
  tail -5 $OUT/tests.txt; grep -E "FAILED|Failure" $OUT/tests.txt | head -20
  echo "rc $rc at $((SECONDS - S)) s"; exit $rc
fi
[ -f build-a-src/CMakeLists.txt ] || { echo "build-a-src (main's tree) is missing: see the header"; exit 2; }
trap 'cd $OUT && tar czf v65.tgz *.txt 2>/dev/null; rm -f $OUT/*.txt' EXIT
variants=${V65_VARIANTS:-"base:build-a-src: seg:.: seg6:.:-DCF_ATTENTION_UNROLL=6"}
shapes=${V65_SHAPES:-"tinyllama-1.1b:512 llama-2-7b:512 pythia-2.8b:512 pythia-6.9b:512 llama-3.2-1b:512 pythia-2.8b:2048"}
for v in $variants; do IFS=: read -r name src flags <<< "$v"
  configure $name $src "$(echo $flags | tr , ' ')" layer_timing > $OUT/build-$name.txt 2>&1 &
done
wait
echo "built at $((SECONDS - S)) s"; for v in $variants; do tail -1 $OUT/build-${v%%:*}.txt; done
for mc in $shapes; do m=${mc%%:*} ctx=${mc#*:}
  [ $((SECONDS - S)) -gt 500 ] && { echo "skipped $m $ctx: time"; continue; }
  for r in 1 2; do for v in $variants; do echo "### ${v%%:*} round $r"; timeout 60 build-v-${v%%:*}/layer_timing $m $ctx 30 device; done; done \
    > $OUT/$m-$ctx.txt 2>&1
  echo "$m $ctx at $((SECONDS - S)) s: $(grep -E '^### |split   .*overlapped' $OUT/$m-$ctx.txt | awk '/^###/{h=$2; next} {printf "%s %s  ", h, $3}')"
done
