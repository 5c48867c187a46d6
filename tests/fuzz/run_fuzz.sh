#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan, UBSan) and fuzzes each for SECONDS, starting from the committed seed
# corpus; inputs it finds go to the build directory, not to the corpus. A crash, a sanitizer report, an input
# slower than 10 s or one needing more than 1 GB fails the run, leaving the input as BUILD_DIR/crash-* (or
# timeout-*, oom-*): make it a regression test in tests/cpp/test_safetensors.cpp.
#   tests/fuzz/run_fuzz.sh [SECONDS]    (default 30 per target; env: BUILD_DIR=build-fuzz, CXX=clang++)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
seconds="${1:-30}"
build_dir="${BUILD_DIR:-build-fuzz}"
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"  # the configure step looks for the CUDA toolkit
fi

configure=(-DCMAKE_CXX_COMPILER="${CXX:-clang++}" -DCLUSTERFUSION_BUILD_FUZZ=ON -DCLUSTERFUSION_BUILD_TESTS=OFF
  -DCLUSTERFUSION_BUILD_EXAMPLES=OFF -DCLUSTERFUSION_BUILD_PYTHON=OFF)
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null; then
  configure+=(-G Ninja)
fi
cmake -S . -B "$build_dir" "${configure[@]}" >/dev/null
cmake --build "$build_dir" --target fuzz_safetensors fuzz_json

status=0
for target in safetensors json; do
  seeds="tests/fuzz/corpus/$target"
  found="$build_dir/corpus-$target"
  mkdir -p "$found"
  echo "== fuzz_$target: ${seconds} s from $seeds"
  "$build_dir/tests/fuzz/fuzz_$target" "$found" "$seeds" -dict=tests/fuzz/json.dict -max_total_time="$seconds" \
    -timeout=10 -rss_limit_mb=1024 -max_len=4096 -print_final_stats=1 -artifact_prefix="$build_dir/" \
    2>"$build_dir/fuzz_$target.log" || {
    status=1
    tail -n 60 "$build_dir/fuzz_$target.log"
  }
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$build_dir/fuzz_$target.log" || true
done
exit "$status"
