#!/usr/bin/env bash
# v82 (bench/NOTES.md): the whole step's TPOT of this tree against a base tree, in one call, then this tree's GPU test
# suite. Run from the repository root on the GPU machine, with the base exported here and carried:
#   rm -rf build-a-src && mkdir build-a-src && git archive main | tar -x -C build-a-src
# Builds both trees' Python modules side by side (this one with its tests, in build-gpu), runs bench/bench_e2e.py
# --quick --systems clusterfusion_graph on V82_MODELS with each module, two rounds alternating, prints each run's
# TPOT at ctx 512, then one round of bench/gpu_test_rounds.sh on build-gpu. Logs and JSON go to $OUT.
set -u
S=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
models=${V82_MODELS:-pythia-2.8b,pythia-6.9b,llama-2-7b,tinyllama-1.1b}
configure() {  # source build tests
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_PYTHON=ON \
    -DCLUSTERFUSION_BUILD_TESTS="$3" -DPython_EXECUTABLE="$PYTHON" && cmake --build "$2" -j16
}
configure build-a-src build-a-src/build OFF >"$OUT/build-a.txt" 2>&1 &
configure . build-gpu ON >"$OUT/build-b.txt" 2>&1 &
wait
for t in a b; do tail -1 "$OUT/build-$t.txt"; done
echo "built at $((SECONDS - S)) s"
for r in 1 2; do
  for t in a b; do
    module=build-gpu/python
    [ $t = a ] && module=build-a-src/build/python
    PYTHONPATH=$module timeout 150 "$PYTHON" bench/bench_e2e.py --quick --models "$models" \
      --systems clusterfusion_graph --no-plot --out "$OUT/e2e-$t-$r.json" >"$OUT/e2e-$t-$r.txt" 2>&1
    echo "$t round $r at $((SECONDS - S)) s: $("$PYTHON" -c "
import json, sys
d = json.load(open(sys.argv[1]))
print('  '.join(f\"{m} {v['clusterfusion_graph']['tpot_ms']:.4f}\" for m, v in d['at_ctx512'].items()))
" "$OUT/e2e-$t-$r.json" 2>&1 | tail -1)"
  done
done
OUT="$OUT/tests" CF_SKIP_BUILD=1 timeout 300 bash bench/gpu_test_rounds.sh 1
echo "rc $? at $((SECONDS - S)) s"
