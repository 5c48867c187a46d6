#!/usr/bin/env bash
# Compares source trees of the project side by side on one GPU, in one run: builds each tree's layer_timing and
# Python module in parallel, then for each tree `layer_timing MODEL CTX` per model and (unless CF_SKIP_E2E=1) this
# repository's bench/bench_e2e.py --quick on the models with the tree's own module (systems: CF_E2E_SYSTEMS, default
# clusterfusion_graph). For A/B between revisions: the GPU machine has no git, so export each revision here first
# and carry the folders there, e.g.
#   mkdir build-a-src && git archive main | tar -x -C build-a-src    (build-*/ is ignored, so carry it; carried
#   again, it replaces the copy there and the build inside it)
#   bash bench/compare_trees.sh "pythia-2.8b llama-2-7b" 512 build-a-src .
# Logs and the bench_e2e JSON go to $OUT (default ./compare_out), one file per tree (numbered in argument order) and
# model. A tree that does not build is reported and skipped.
set -euo pipefail
if (($# < 3)); then
  echo "usage: $0 \"MODEL ...\" CTX TREE [TREE ...]" >&2
  exit 2
fi
models=$1
ctx=$2
shift 2
trees=("$@")
here=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$PWD/compare_out}
mkdir -p "$OUT"
PYTHON=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
names=()
for i in "${!trees[@]}"; do
  label=$(basename "$(cd "${trees[$i]}" && pwd)")
  [[ $(cd "${trees[$i]}" && pwd) == "$here" ]] && label=this-tree
  names+=("$((i + 1))-$label")
done
for i in "${!trees[@]}"; do
  tree=${trees[$i]} name=${names[$i]}
  (cmake -S "$tree" -B "$tree/build-compare" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_TESTS=OFF \
     -DCLUSTERFUSION_BUILD_BENCH=ON -DCLUSTERFUSION_BUILD_PYTHON=ON -DPython_EXECUTABLE="$PYTHON" >"$OUT/build-$name.log" 2>&1 &&
   cmake --build "$tree/build-compare" -j16 >>"$OUT/build-$name.log" 2>&1 && echo "$name: built" ||
   echo "$name: BUILD FAILED (see $OUT/build-$name.log)") &
done
wait
built=()
for i in "${!trees[@]}"; do
  if [[ -x ${trees[$i]}/build-compare/layer_timing ]] &&
    compgen -G "${trees[$i]}/build-compare/python/clusterfusion/_C*" >/dev/null; then
    built+=("$i")
  else
    echo "${names[$i]}: skipped (no layer_timing or Python module)"
  fi
done
for model in $models; do
  for i in "${built[@]}"; do
    echo "### ${names[$i]} $model ctx $ctx"
    "${trees[$i]}/build-compare/layer_timing" "$model" "$ctx" >"$OUT/timing-${names[$i]}-$model.log" 2>&1 || echo "(exit $?)"
    grep -E "clusters|us/layer" "$OUT/timing-${names[$i]}-$model.log" || tail -3 "$OUT/timing-${names[$i]}-$model.log"
  done
done
[[ ${CF_SKIP_E2E:-0} == 1 ]] && exit 0
for i in "${built[@]}"; do
  echo "### ${names[$i]} whole step"
  PYTHONPATH="${trees[$i]}/build-compare/python" "$PYTHON" "$here/bench/bench_e2e.py" --quick --models "${models// /,}" \
    --systems "${CF_E2E_SYSTEMS:-clusterfusion_graph}" --no-plot --out "$OUT/e2e-${names[$i]}.json" \
    >"$OUT/e2e-${names[$i]}.log" 2>&1 || echo "(exit $?)"
  grep -E "^at ctx" "$OUT/e2e-${names[$i]}.log" || tail -3 "$OUT/e2e-${names[$i]}.log"
done
