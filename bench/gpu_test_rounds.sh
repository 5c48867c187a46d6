#!/usr/bin/env bash
# The GPU test suite (ctest and pytest, as bench/gpu_check.sh runs them) ROUNDS times in a row, each round with
# fresh random seeds, to show that the suite does not flake: run from the repository root on the GPU machine.
#   bash bench/gpu_test_rounds.sh [ROUNDS]    (default 3)
# Each round runs ctest and pytest side by side, pytest in three processes (test_engine_gpu.py, test_layer_gpu.py,
# the other files): the tests check values, never times, and none reads the device's free memory, so sharing the
# GPU changes nothing they check. Logs (pytest's with the tests' printed summaries) and JUnit XML per round go to
# $OUT (default ./gpu_rounds); prints one line per process and round, and exits 1 if any failed.
# CF_SKIP_BUILD=1 takes build-gpu as it is: bench/gpu_check.sh runs one round that way, after its own build.
set -uo pipefail
ROUNDS=${1:-3}
OUT=${OUT:-$PWD/gpu_rounds}
PYTHON=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
BUILD=build-gpu
mkdir -p "$OUT"
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH="/usr/local/cuda/bin:$PATH"; fi

if [[ ${CF_SKIP_BUILD:-0} != 1 ]]; then
  start=$SECONDS
  if ! { cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUSTERFUSION_BUILD_PYTHON=ON \
    -DPython_EXECUTABLE="$PYTHON" && cmake --build "$BUILD" -j16; } >"$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"
    exit 1
  fi
  echo "built in $((SECONDS - start)) s"
fi

# shard NAME: pytest's arguments for that shard; together the shards are tests/python, each file once.
shard() {
  case $1 in
    engine) echo tests/python/test_engine_gpu.py ;;
    layer) echo tests/python/test_layer_gpu.py ;;
    rest) echo tests/python --ignore=tests/python/test_engine_gpu.py --ignore=tests/python/test_layer_gpu.py ;;
  esac
}

failed=0
for round in $(seq 1 "$ROUNDS"); do
  t0=$SECONDS
  declare -A pids=()
  ctest --test-dir "$BUILD" --output-on-failure --timeout 90 >"$OUT/ctest-$round.log" 2>&1 &
  pids[ctest]=$!
  for name in engine layer rest; do
    # shellcheck disable=SC2046  # shard's output is a list of arguments
    env PYTHONPATH="$BUILD/python" "$PYTHON" -m pytest $(shard "$name") -rs -rP -p no:cacheprovider \
      --junitxml="$OUT/pytest-$name-$round.xml" >"$OUT/pytest-$name-$round.log" 2>&1 &
    pids[pytest-$name]=$!
  done
  for name in "${!pids[@]}"; do
    status=pass
    wait "${pids[$name]}" || { status=FAIL; failed=1; }
    log="$OUT/${name}-$round.log"
    summary=$(grep -E "tests passed|^=+ .*(passed|failed|error|skipped).* =+$" "$log" | tail -1)
    echo "round $round  $name  $status  $summary"
    [[ $status == FAIL ]] && grep -E "^(FAILED|ERROR) |\(Failed\)|\*\*\*Failed" "$log" | head -20
  done
  unset pids
  echo "round $round took $((SECONDS - t0)) s"
done
exit "$failed"
