#!/usr/bin/env bash
# The one GPU script, run from the repository root on the GPU machine: CMake build (with the Python module and
# ptxas resource usage), ctest and pytest side by side, compute-sanitizer (memcheck, racecheck, synccheck) on
# bench/sanitize_layer.py (pythia-2.8b, pythia-6.9b, llama-2-7b, tinyllama-1.1b: head sizes 80 and 128 of both
# architectures), then bench/bench_layer.py. A failing step is recorded and the next one still runs; each step is
# killed at its time limit so the whole run fits CF_BUDGET_S (default 540 s). Prints each step's status and the
# benchmark table last; logs, JUnit XML and the benchmark JSON go to $OUT.
#
# bench/cpp/layer_timing (the C++ timing with the per-block timeline) runs before bench_layer.py, for each
# benchmarked model at ctx 512.
#
# bench/bench_e2e.py --quick (whole-model decode) runs last, into bench.log, with its JSON printed there too
# instead of written to a file of its own, and no PNG: rebuild the PNG elsewhere with bench_e2e.py --plot-from.
#
# Both benchmarks run pythia-2.8b, pythia-6.9b, llama-2-7b, tinyllama-1.1b, llama-3-8b and llama-3.2-1b by
# default; --models (any of clusterfusion.model_names()) picks others, e.g. the Llama models alone, benchmarks only:
#   CF_SKIP_TESTS=1 CF_BENCH_ARGS="--quick --models llama-2-7b,tinyllama-1.1b,llama-3-8b,llama-3.2-1b" \
#   CF_E2E_ARGS="--quick --models llama-2-7b,tinyllama-1.1b,llama-3-8b,llama-3.2-1b" bash bench/gpu_check.sh
# and the Llama targets against transformers + torch.compile (compiling takes a minute or more per model: raise
# the caps):
#   CF_SKIP_TESTS=1 CF_BUDGET_S=580 CF_E2E_CAP_S=400 CF_BENCH_ARGS="--quick --models llama-2-7b,tinyllama-1.1b" \
#   CF_E2E_ARGS="--quick --models llama-2-7b,tinyllama-1.1b \
#   --systems transformers_graph,transformers_compiled,clusterfusion_graph" bash bench/gpu_check.sh
#
# Environment: OUT (default ./gpu_out), PYTHON (default python3), CF_SKIP_SANITIZER=1, CF_BENCH_ARGS="..."
# (extra bench_layer.py flags, e.g. "--quick" or "--models ..."), CF_E2E_ARGS="..." (bench_e2e.py flags replacing
# --quick, e.g. "--quick --models ..."), CF_SKIP_TESTS=1 (no ctest, pytest, sanitizer: a benchmark-only run),
# CF_SKIP_E2E=1, CF_E2E_CAP_S (default 150), CF_BUDGET_S.
set -euo pipefail

OUT=${OUT:-$PWD/gpu_out}
# One interpreter for the extension, pytest and the benchmark (pyenv shims and venvs hide the real one).
PYTHON=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
BUILD=build-gpu
BUDGET=${CF_BUDGET_S:-540}
BENCH_RESERVE=150  # seconds kept for the benchmark when the sanitizer runs long
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# nvcc and compute-sanitizer's usual home, when it is not on PATH already.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

names=()
results=()
durations=()

# record NAME STATUS SECONDS
record() {
  names+=("$1")
  results+=("$2")
  durations+=("$3")
}

# step NAME LOG CAP_SECONDS RESERVE_SECONDS COMMAND...: runs COMMAND (output appended to LOG) for at most
# CAP seconds, and never into the last RESERVE seconds of the budget.
step() {
  local name=$1 log=$2 cap=$3 reserve=$4 start=$SECONDS rc=0
  shift 4
  local limit=$((BUDGET - SECONDS - reserve))
  ((limit > cap)) && limit=$cap
  if ((limit < 10)); then
    echo "=== $name: skipped, time budget spent"
    record "$name" "skipped (time budget)" 0
    return 0
  fi
  echo "=== $name ($(date +%T), limit ${limit}s, log $log)"
  echo "=== $name: $*" >>"$log"
  local first_line
  first_line=$(wc -l <"$log")
  timeout --kill-after=15 "$limit" "$@" >>"$log" 2>&1 || rc=$?
  local status=pass
  if ((rc == 124 || rc == 137)); then
    status="FAIL (timeout ${limit}s)"
  elif ((rc != 0)); then
    status="FAIL (exit $rc)"
  fi
  record "$name" "$status" $((SECONDS - start))
  if ((rc != 0)); then
    echo "--- $name: $status; its last lines in $log:"
    tail -n "+$first_line" "$log" | tail -n 30
  fi
}

nvidia-smi -L || true
"$PYTHON" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "transformers", transformers.__version__)' || true

: >"$OUT/build.log"
step configure "$OUT/build.log" 120 0 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCLUSTERFUSION_BUILD_PYTHON=ON -DCLUSTERFUSION_BUILD_BENCH=ON -DCLUSTERFUSION_PTXAS_VERBOSE=ON \
  -DPython_EXECUTABLE="$PYTHON"
if [[ ${results[0]} == pass ]]; then
  # -k 0: build every target that can be built, so one broken file leaves the rest testable.
  step build "$OUT/build.log" 420 0 cmake --build "$BUILD" -j16 -- -k 0

  if [[ ${CF_SKIP_TESTS:-0} == 1 ]]; then
    record tests "skipped (CF_SKIP_TESTS=1)" 0
  else
    # One round of bench/gpu_test_rounds.sh: ctest beside three pytest processes, its logs and JUnit XML in
    # $OUT/tests. About 145 s on the H200, where ctest then pytest took about 380 s.
    : >"$OUT/tests.log"
    step tests "$OUT/tests.log" 300 0 env OUT="$OUT/tests" PYTHON="$PYTHON" CF_SKIP_BUILD=1 \
      bash bench/gpu_test_rounds.sh 1

    : >"$OUT/sanitizer.log"
    if [[ ${CF_SKIP_SANITIZER:-0} == 1 ]]; then
      record sanitizer "skipped (CF_SKIP_SANITIZER=1)" 0
    else
      # Instrument only the library's kernels (torch's own would multiply the run time), where the tool can.
      only_ours=()
      sanitizer_help=$(compute-sanitizer --help 2>/dev/null || true)
      if [[ $sanitizer_help == *"--kernel-name "* ]]; then
        only_ours=(--kernel-name kns=decoder_layer)
      fi
      for tool in memcheck racecheck synccheck; do
        # Without torch's caching allocator every tensor is its own allocation, so memcheck sees its bounds.
        # Device backtraces only: the tool's host backtraces keep a reference to each Python frame above the
        # innermost at every kernel launch (bench/results/sanitizer_host_backtraces_h200.txt), so the program's
        # objects outlived the interpreter and nanobind reported them leaked.
        step "sanitizer $tool" "$OUT/sanitizer.log" 150 "$BENCH_RESERVE" env \
          PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONPATH="$BUILD/python" compute-sanitizer --tool "$tool" --error-exitcode 1 \
          --show-backtrace device ${only_ours[@]+"${only_ours[@]}"} "$PYTHON" bench/sanitize_layer.py \
          --models pythia-2.8b,pythia-6.9b,llama-2-7b,tinyllama-1.1b
      done
    fi
  fi

  # Kernel-level view: per-layer time of each mode and the per-block timeline of one overlapped layer per mode.
  : >"$OUT/timing.log"
  step timing "$OUT/timing.log" 150 0 bash -c "rc=0; for model in pythia-2.8b pythia-6.9b llama-2-7b tinyllama-1.1b \
    llama-3-8b llama-3.2-1b; do $BUILD/layer_timing \$model 512 || rc=1; done; exit \$rc"

  : >"$OUT/bench.log"
  # shellcheck disable=SC2086  # CF_BENCH_ARGS is a list of flags
  step bench "$OUT/bench.log" 300 0 env PYTHONPATH="$BUILD/python" "$PYTHON" bench/bench_layer.py --out "$OUT" \
    ${CF_BENCH_ARGS:-}

  if [[ ${CF_SKIP_E2E:-0} == 1 ]]; then
    record e2e "skipped (CF_SKIP_E2E=1)" 0
  else
    # shellcheck disable=SC2086  # CF_E2E_ARGS is a list of flags
    step e2e "$OUT/bench.log" "${CF_E2E_CAP_S:-150}" 0 bash -c "env PYTHONPATH='$BUILD/python' '$PYTHON' bench/bench_e2e.py \
      --out '$BUILD/e2e' --no-plot ${CF_E2E_ARGS:---quick}; status=\$?; cat '$BUILD'/e2e/e2e_*.json; exit \$status"
  fi
else
  for name in build tests sanitizer bench e2e; do record "$name" "skipped (configure failed)" 0; done
fi

echo
echo "=== summary ($SECONDS s in all; logs in $OUT)"
failed=0
for i in "${!names[@]}"; do
  printf '%-20s %-28s %5ss\n' "${names[$i]}" "${results[$i]}" "${durations[$i]}"
  [[ ${results[$i]} == FAIL* ]] && failed=1
done
if [[ -s $OUT/bench.log ]]; then
  echo
  sed -n '/^wrote /,$p' "$OUT/bench.log"
fi
exit "$failed"
