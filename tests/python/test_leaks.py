"""nanobind's check at interpreter exit: a program that used the package ends without "nanobind: leaked ..." on
stderr, that is with no instance of a bound type left alive by the package. Each program (exit_programs.py) runs in
a fresh interpreter, since the check runs only when one exits.

The package's own objects must never hold an instance of a bound type for the module's lifetime (a default argument
that is one, a cache, a module global): CPython does not promise to free every type at exit (typing's caches or
another extension may still hold one), and nanobind stays silent about types and functions kept that way only while
no instance of theirs is left. The `pinned` program holds every type past the teardown to check exactly that, here
without a GPU.

Under compute-sanitizer, bench/sanitize_layer.py ended with the report while no Python object held its frames: the
tool's host backtraces keep a reference to every Python frame above the innermost one at each kernel launch, so the
locals of those frames outlive the interpreter (bench/results/sanitizer_host_backtraces_h200.txt: a torch-only
program shows it). bench/gpu_check.sh therefore asks for device backtraces only, and the last test here runs the
program under the tool that way."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REPORT = "nanobind: leaked"
TIMEOUT_S = 600
SANITIZE_MODELS = "pythia-2.8b,pythia-6.9b,llama-2-7b,tinyllama-1.1b"  # bench/gpu_check.sh's
# The sanitizer program plain, and with the environment gpu_check.sh gives it under compute-sanitizer (without
# torch's caching allocator).
SANITIZE_ENVS = {"plain": {}, "no_caching": {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}}
# compute-sanitizer as gpu_check.sh runs it (one model: instrumented runs are slow), where the tool is installed.
SANITIZER = shutil.which("compute-sanitizer") or (
    "/usr/local/cuda/bin/compute-sanitizer" if Path("/usr/local/cuda/bin/compute-sanitizer").exists() else None)
SANITIZER_ARGS = ["--tool", "memcheck", "--error-exitcode", "1", "--show-backtrace", "device",
                  "--kernel-name", "kns=decoder_layer"]


def start(args, tool=(), **extra_env):
    """`python ARGS` from the repository root, offline (and with `extra_env`), under `tool` (a command line) if
    given, started and not waited for: each program's time is mostly its interpreter's imports, so the programs of a
    group run side by side."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra_env)
    return subprocess.Popen([*tool, sys.executable, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def finish(program):
    """Waits for a started program; returns its stdout after checking its exit status and that nanobind reported
    nothing."""
    try:
        stdout, stderr = program.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        program.kill()
        stdout, stderr = program.communicate()
        pytest.fail(f"still running after {TIMEOUT_S} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    output = f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
    assert program.returncode == 0, f"exit status {program.returncode}\n{output}"
    # nanobind writes its report with fprintf, sometimes right after other text on the same line.
    assert REPORT not in stderr, f"nanobind found objects of the package alive at exit\n{output}"
    return stdout


def started(programs):
    """A module fixture's value: the programs, killed at teardown if a test left one running."""
    yield programs
    for program in programs.values():
        if program.poll() is None:
            program.kill()
            program.communicate()


@pytest.fixture(scope="module")
def cpu_programs():
    yield from started({name: start([HERE / "exit_programs.py", name]) for name in ("cpu", "pinned")})


@pytest.fixture(scope="module")
def gpu_programs():
    pytest.importorskip("torch")
    programs = {name: start([REPO / "bench" / "sanitize_layer.py", "--models", SANITIZE_MODELS], **env)
                for name, env in SANITIZE_ENVS.items()}
    if importlib.util.find_spec("transformers") is not None:
        programs["gpu"] = start([HERE / "exit_programs.py", "gpu"])
    if SANITIZER is not None:
        programs["sanitizer"] = start([REPO / "bench" / "sanitize_layer.py", "--models", "tinyllama-1.1b"],
                                      tool=[SANITIZER, *SANITIZER_ARGS], **SANITIZE_ENVS["no_caching"])
    yield from started(programs)


@pytest.mark.parametrize("program", ["cpu", "pinned"])
def test_programs_without_a_gpu_exit_with_nothing_left(cpu_programs, program):
    assert f"{program}: done" in finish(cpu_programs[program])


def test_the_check_sees_a_leaked_instance():
    """The check this file relies on: an instance left alive at exit is reported on stderr."""
    script = ("import ctypes, clusterfusion as cf; "
              "ctypes.pythonapi.Py_IncRef(ctypes.py_object(cf.ModelConfig.named('pythia-70m')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert REPORT in result.stderr and 'of type "clusterfusion._C.ModelConfig"' in result.stderr, result.stderr


def test_no_function_of_the_module_keeps_an_instance_as_a_default():
    """What `pinned` checks at exit, checked directly: no default argument of a function or method of
    clusterfusion._C is an instance of a bound class (nanobind keeps defaults for the function's lifetime)."""
    import clusterfusion._C as C

    def defaults(owner):
        for name in dir(owner):
            for signature in getattr(getattr(owner, name, None), "__nb_signature__", None) or ():
                for value in signature[2] or ():
                    yield f"{getattr(owner, '__name__', owner)}.{name}", value

    owners = [C] + [obj for obj in vars(C).values() if isinstance(obj, type)]
    bound = [(where, value) for owner in owners for where, value in defaults(owner)
             if type(type(value)).__name__ == "nb_type"]
    assert not bound, f"defaults that are instances of bound classes: {bound}"


@pytest.mark.gpu
def test_gpu_program_exits_with_nothing_left(gpu_programs):
    """DecoderLayer, KVCache and its views, DecodeContext, FusedLayer and Engine (needs torch and transformers)."""
    pytest.importorskip("transformers")
    assert "gpu: done" in finish(gpu_programs["gpu"])


@pytest.mark.gpu
@pytest.mark.parametrize("env", list(SANITIZE_ENVS))
def test_sanitize_layer_exits_with_nothing_left(gpu_programs, env):
    """The program of the report itself, at the shapes bench/gpu_check.sh gives it (SANITIZE_ENVS)."""
    assert "finite" in finish(gpu_programs[env])


@pytest.mark.gpu
@pytest.mark.skipif(SANITIZER is None, reason="compute-sanitizer not found (PATH, /usr/local/cuda/bin)")
def test_sanitize_layer_under_compute_sanitizer_exits_with_nothing_left(gpu_programs):
    """gpu_check.sh's memcheck run (one model): no error (the tool's exit status) and nothing left at exit."""
    assert "finite" in finish(gpu_programs["sanitizer"])
