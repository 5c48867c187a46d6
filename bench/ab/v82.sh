#!/usr/bin/env bash
# v82, v83 (bench/NOTES.md): the whole step's TPOT of two builds, a and b, in one call, then b's GPU test suite. Run
# from the repository root on the GPU machine. V82_A and V82_B are "SOURCE:FLAG,FLAG..." (-D flags for CUDA and C++;
# default a = build-a-src, b = this tree), a base tree exported here and carried, e.g.
#   rm -rf build-a-src && mkdir build-a-src && git archive main | tar -x -C build-a-src
# or this tree twice with different knobs (v83): V82_A=.:-DCF_TAIL_OVERLAP=0 V82_B=.:-DCF_TAIL_OVERLAP=2.
# Builds both Python modules side by side (b with its tests, in build-gpu; a in build-v82a), runs bench/bench_e2e.py
# --quick --systems clusterfusion_graph on V82_MODELS with each module, two rounds alternating, prints each run's
# TPOT at ctx 512, then one round of bench/gpu_test_rounds.sh on build-gpu (V82_TESTS=0: none). Logs and JSON go to
# $OUT.
set -u
S=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
models=${V82_MODELS:-pythia-2.8b,pythia-6.9b,llama-2-7b,tinyllama-1.1b}
A=${V82_A:-build-a-src:}
B=${V82_B:-.:}
configure() {  # source:flags build tests
  local flags
  flags=$(echo "${1#*:}" | tr , ' ')
  cmake -S "${1%%:*}" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_PYTHON=ON \
    -DCLUSTERFUSION_BUILD_TESTS="$3" -DPython_EXECUTABLE="$PYTHON" -DCMAKE_CUDA_FLAGS="$flags" \
    -DCMAKE_CXX_FLAGS="$flags" && cmake --build "$2" -j16
}
configure "$A" build-v82a OFF >"$OUT/build-a.txt" 2>&1 &
configure "$B" build-gpu "$([ "${V82_TESTS:-1}" = 0 ] && echo OFF || echo ON)" >"$OUT/build-b.txt" 2>&1 &
wait
for t in a b; do tail -1 "$OUT/build-$t.txt"; done
echo "built at $((SECONDS - S)) s"
for r in 1 2; do
  for t in a b; do
    module=build-gpu/python
    [ $t = a ] && module=build-v82a/python
    PYTHONPATH=$module timeout 150 "$PYTHON" bench/bench_e2e.py --quick --models "$models" \
      --systems clusterfusion_graph --no-plot --out "$OUT/e2e-$t-$r.json" >"$OUT/e2e-$t-$r.txt" 2>&1
    echo "$t round $r at $((SECONDS - S)) s: $("$PYTHON" -c "
import json, sys
d = json.load(open(sys.argv[1]))
print('  '.join(f\"{m} {v['clusterfusion_graph']['tpot_ms']:.4f}\" for m, v in d['at_ctx512'].items()))
" "$OUT/e2e-$t-$r.json" 2>&1 | tail -1)"
  done
done
[ "${V82_TESTS:-1}" = 0 ] && exit 0
OUT="$OUT/tests" CF_SKIP_BUILD=1 timeout 300 bash bench/gpu_test_rounds.sh 1
echo "rc $? at $((SECONDS - S)) s"
