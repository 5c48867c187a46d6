#!/usr/bin/env bash
# The one test command: configure and build once (C++ library, GoogleTest suite, Python extension), run the
# C++ tests with ctest, then pytest against the build tree, so nothing is compiled twice. GPU tests skip
# without a GPU. Usage: tests/run_tests.sh [-- PYTEST_ARGS...]   (env: BUILD_DIR=build, PYTHON=python3)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

pytest_args=()
if (($#)); then
  if [[ "$1" != "--" ]]; then
    echo "usage: $0 [-- PYTEST_ARGS...]" >&2
    exit 2
  fi
  shift
  pytest_args=("$@")
fi

# nvcc's usual home, when it is not on PATH already.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

build_dir="${BUILD_DIR:-build}"
# One interpreter for the extension and for pytest: resolve it once (pyenv shims hide the real one).
python="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"

configure=(-DCLUSTERFUSION_BUILD_PYTHON=ON -DCLUSTERFUSION_BUILD_TESTS=ON "-DPython_EXECUTABLE=$python")
# A build directory keeps the generator it was first configured with.
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null; then
  configure+=(-G Ninja)
fi
cmake -S . -B "$build_dir" "${configure[@]}"
cmake --build "$build_dir" -j "$(nproc)"

# Both suites run even when the first fails; the exit status reports either failing.
status=0
ctest --test-dir "$build_dir" --output-on-failure || status=1
PYTHONPATH="$build_dir/python${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest tests/python -q -rs "${pytest_args[@]}" ||
  status=1
exit "$status"
