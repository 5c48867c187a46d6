#!/usr/bin/env bash
# v49 and v50 (bench/NOTES.md): shares that fall with the block index, and the head blocks' floor of up rows.
# The knobs below exist at 6f65086 (in main's history): the merge kept the winner as constants and removed them.
#   timing: layer_timing built as
#     r0   main's shares
#     r15  CF_LATE_RAMP_PERCENT=15 CF_LATE_RAMP_PROJ_PERCENT=15
#     r30  both 30
#     u30  up rows only, 30
#     p30  output rows only, 30
#     r50  both 50
#     f0   CF_HEAD_SPARE_FLOOR=0 (v50)
#   on five shapes, two rounds alternating; prints the split overlapped row of each and keeps every run's output.
#   V49_VARIANTS="name:flag,flag ..." and V49_SHAPES="model:ctx ..." replace the lists (the second call); V49_ARGS=device
#   times with the position read from device memory, as the step graph reads it.
#   tests VARIANT_FLAGS...: cf_gpu_tests built with the given -D flags (bitwise split against cooperative, against
#   float64), e.g. bash bench/ab/v49.sh tests -DCF_LATE_RAMP_PERCENT=30 -DCF_HEAD_SPARE_FLOOR=0
set -u
export PATH=/usr/local/cuda/bin:$PATH
S=$SECONDS
mode=${1:-timing}
configure() {  # name flags target
  cmake -S . -B build-v-$1 -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_TESTS=$([ $3 = layer_timing ] && echo OFF || echo ON) \
    -DCLUSTERFUSION_BUILD_BENCH=ON -DCLUSTERFUSION_BUILD_PYTHON=OFF -DCLUSTERFUSION_BUILD_EXAMPLES=OFF \
    -DCMAKE_CUDA_FLAGS="$2" -DCMAKE_CXX_FLAGS="$2" && cmake --build build-v-$1 --target $3
}
if [ "$mode" = tests ]; then
  shift
  trap 'cd $OUT && tar czf v49_tests.tgz *.txt 2>/dev/null; rm -f $OUT/*.txt' EXIT
  configure tests "$*" cf_gpu_tests > $OUT/build-tests.txt 2>&1 || { tail -30 $OUT/build-tests.txt; exit 1; }
  echo "built at $((SECONDS - S)) s with: $*"
  timeout 400 build-v-tests/tests/cpp/cf_gpu_tests > $OUT/tests.txt 2>&1; rc=$?
  tail -5 $OUT/tests.txt; grep -E "FAILED|Failure" $OUT/tests.txt | head -20
  echo "rc $rc at $((SECONDS - S)) s"; exit $rc
fi
trap 'cd $OUT && tar czf v49.tgz *.txt 2>/dev/null; rm -f $OUT/*.txt' EXIT
variants=${V49_VARIANTS:-"r0: r15:-DCF_LATE_RAMP_PERCENT=15,-DCF_LATE_RAMP_PROJ_PERCENT=15 r30:-DCF_LATE_RAMP_PERCENT=30,-DCF_LATE_RAMP_PROJ_PERCENT=30
  u30:-DCF_LATE_RAMP_PERCENT=30 p30:-DCF_LATE_RAMP_PROJ_PERCENT=30
  r50:-DCF_LATE_RAMP_PERCENT=50,-DCF_LATE_RAMP_PROJ_PERCENT=50 f0:-DCF_HEAD_SPARE_FLOOR=0"}
shapes=${V49_SHAPES:-"pythia-2.8b:512 llama-2-7b:512 tinyllama-1.1b:512 pythia-6.9b:512 pythia-2.8b:2048"}
for v in $variants; do configure ${v%%:*} "$(echo ${v#*:} | tr , ' ')" layer_timing > $OUT/build-${v%%:*}.txt 2>&1 & done
wait
echo "built at $((SECONDS - S)) s"; for v in $variants; do tail -1 $OUT/build-${v%%:*}.txt; done
for mc in $shapes; do m=${mc%%:*} ctx=${mc#*:}
  [ $((SECONDS - S)) -gt 500 ] && { echo "skipped $m $ctx: time"; continue; }
  for r in 1 2; do for v in $variants; do echo "### ${v%%:*} round $r"; timeout 60 build-v-${v%%:*}/layer_timing $m $ctx 30 ${V49_ARGS:-}; done; done \
    > $OUT/$m-$ctx.txt 2>&1
  echo "$m $ctx at $((SECONDS - S)) s: $(grep -E '^### |split   .*overlapped' $OUT/$m-$ctx.txt | awk '/^###/{h=$2; next} {printf "%s %s  ", h, $3}')"
done
