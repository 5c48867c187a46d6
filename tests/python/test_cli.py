"""The first minutes of a new user, without a GPU: the command line checks its arguments before any work (no model,
no download, no GPU), a user error is one line and exit status 2, a machine without a compute capability 9.0 GPU
(or with a CPU-only torch) is one line and exit status 1; --version, help with defaults; and CMake refusing an
unsupported CUDA architecture at configure time."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import clusterfusion as cf
from clusterfusion import cli

REPO = Path(__file__).resolve().parents[2]
NEEDS = "clusterfusion needs an NVIDIA GPU of compute capability 9.0 (H100/H200); found "


def has_hopper() -> bool:
    try:
        cf.require_hopper()
    except cf.UnsupportedDeviceError:
        return False
    return True


@pytest.fixture
def no_work(monkeypatch):
    """Any step past the argument checks fails the test: the GPU check, loading a model or its config (the
    network, for a Hugging Face id), building random weights."""
    def forbidden(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} ran before the arguments were refused")
        return fail

    monkeypatch.setattr(cli, "require_gpu", forbidden("the GPU check"))
    monkeypatch.setattr(cli, "load_model", forbidden("load_model"))
    monkeypatch.setattr(cli, "random_model", forbidden("random_model"))
    monkeypatch.setattr(cli, "check_model_config", forbidden("reading the model's config"))


def run_main(argv, capsys):
    """(exit status, stderr lines) of cli.main, which must not raise."""
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.err.strip().splitlines()


def run_command(*args, timeout=120):
    """`python -m clusterfusion ARGS` in a fresh interpreter, offline: (exit status, stdout, stderr)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "clusterfusion", *args], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=REPO)
    return result.returncode, result.stdout, result.stderr


# ---- --model ---------------------------------------------------------------------------------------------------

def test_bench_model_typo_suggests_the_closest_known_names(no_work, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = run_main(["bench", "--model", "pythia-7b"], capsys)
    assert status == 2
    assert len(err) == 1, err
    assert err[0].startswith("clusterfusion bench: error: --model pythia-7b: neither a directory nor a known model; "
                             "did you mean pythia-"), err
    assert "known models: " + ", ".join(cf.model_names()) in err[0]


def test_bench_model_typo_is_refused_at_once_without_a_traceback():
    """In a fresh process, offline: nothing is loaded and nothing is looked up (it took 29 s on the network)."""
    start = time.perf_counter()
    status, out, err = run_command("bench", "--model", "lama-2-7b")
    assert status == 2, err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err, err
    assert "--model lama-2-7b: neither a directory nor a known model; did you mean llama-2-7b" in err
    assert time.perf_counter() - start < 60


def test_unknown_name_without_close_matches_lists_the_known_ones(no_work, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = run_main(["bench", "--model", "qqqq"], capsys)
    assert status == 2
    assert err == [f"clusterfusion bench: error: --model qqqq: neither a directory nor a known model; known models: "
                   f"{', '.join(cf.model_names())}"]


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_missing_directory_is_named(command, no_work, capsys, tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    argv = [command, "--model", str(missing)] + (["--prompt", "hi"] if command == "generate" else [])
    status, err = run_main(argv, capsys)
    assert status == 2
    assert err == [f"clusterfusion {command}: error: --model {missing}: no such directory"]


def test_generate_missing_directory_without_a_traceback():
    status, out, err = run_command("generate", "--model", "/no/such/dir", "--prompt", "Hello")
    assert status == 2, err
    assert err.strip() == "clusterfusion generate: error: --model /no/such/dir: no such directory"


def test_generate_bare_name_is_neither_a_directory_nor_a_hub_id(no_work, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = run_main(["generate", "--model", "pythia-2.8b", "--prompt", "hi"], capsys)
    assert status == 2
    assert err == ["clusterfusion generate: error: --model pythia-2.8b: no such directory (nor a Hugging Face model "
                   "id: org/name)"]


@pytest.mark.parametrize("name, embedded, source", [
    ("EleutherAI/pythia-70m", False, "hub"),
    ("meta-llama/Llama-3.2-1B", True, "hub"),
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", False, "hub"),
    ("pythia-2.8b", True, "embedded"),
    ("llama-3.2-1b", True, "embedded"),
])
def test_model_source(name, embedded, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.model_source(name, embedded=embedded) == source


@pytest.mark.parametrize("name", ["/no/such/dir", "./missing", "../missing/model", "a/b/c", "~/no-such-model-dir"])
def test_paths_that_are_not_hub_ids_are_not_tried(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for embedded in (False, True):
        with pytest.raises(cli.UsageError, match=rf"^--model {name}: no such directory$"):
            cli.model_source(name, embedded=embedded)


def test_a_directory_needs_a_config(tmp_path, monkeypatch):
    with pytest.raises(cli.UsageError, match="no config.json in this directory"):
        cli.model_source(str(tmp_path), embedded=False)
    (tmp_path / "config.json").write_text("{}")
    assert cli.model_source(str(tmp_path), embedded=False) == "directory"
    # A directory of an embedded model's name is the checkpoint, not random weights.
    (tmp_path / "pythia-70m").mkdir()
    (tmp_path / "pythia-70m" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert cli.model_source("pythia-70m", embedded=True) == "directory"


def test_a_file_is_not_a_checkpoint(tmp_path, capsys, no_work):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\0")
    status, err = run_main(["bench", "--model", str(path)], capsys)
    assert status == 2 and err == [f"clusterfusion bench: error: --model {path}: not a directory (expected a "
                                   f"transformers checkpoint directory)"]


def test_checkpoint_of_another_architecture_is_refused_before_its_weights(tmp_path, capsys, monkeypatch):
    transformers = pytest.importorskip("transformers")
    transformers.GPT2Config(n_layer=1, n_head=2, n_embd=64, vocab_size=128, bos_token_id=0,
                            eos_token_id=0).save_pretrained(tmp_path)
    monkeypatch.setattr(cli, "require_gpu", lambda: pytest.fail("the GPU check ran before the config was read"))
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    status, err = run_main(["generate", "--model", str(tmp_path), "--prompt", "hi"], capsys)
    assert status == 2
    assert err == [f"clusterfusion generate: error: --model {tmp_path}: not a model the kernels compute: "
                   f"hf_config.model_type: expected one of 'gpt_neox', 'llama', got 'gpt2'"]


# ---- sampling options --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, message", [
    ("--temperature", "-0.5", "--temperature: must be finite and >= 0 (got -0.5)"),
    ("--temperature", "inf", "--temperature: must be finite and >= 0 (got inf)"),
    ("--top-k", "-1", "--top-k: must be >= 0 (0: no limit) (got -1)"),
    ("--top-p", "0", "--top-p: must be in (0, 1] (1: no limit) (got 0)"),
    ("--top-p", "1.5", "--top-p: must be in (0, 1] (1: no limit) (got 1.5)"),
    ("--seed", "-1", "--seed: expected an int in [0, 2**64), got -1"),
])
def test_sampling_options_are_checked_before_the_model_loads(option, value, message, no_work, capsys):
    status, err = run_main(["generate", "--model", "EleutherAI/pythia-70m", "--prompt", "hi", option, value], capsys)
    assert status == 2
    assert err == [f"clusterfusion generate: error: {message}"]


def test_argparse_errors_exit_2_without_a_traceback():
    status, out, err = run_command("generate", "--model", "x/y", "--prompt", "hi", "--top-k", "2.5")
    assert status == 2 and "Traceback" not in err
    assert "argument --top-k: invalid int value: '2.5'" in err


# ---- the GPU ---------------------------------------------------------------------------------------------------

@pytest.mark.skipif(has_hopper(), reason="this machine has a compute capability 9.0 GPU")
@pytest.mark.parametrize("argv", [["bench"], ["bench", "--model", "tinyllama-1.1b"],
                                  ["generate", "--model", "EleutherAI/pythia-70m", "--prompt", "hi"]])
def test_without_a_hopper_gpu_one_line_and_exit_1(argv):
    status, out, err = run_command(*argv)
    assert status == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(NEEDS), err
    with pytest.raises(cf.UnsupportedDeviceError) as info:
        cf.require_hopper()
    assert lines[0] == str(info.value)


def test_the_check_names_a_cpu_only_torch(monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(cli, "require_hopper", lambda: None)  # as on an H100 with the wrong torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(cli, "random_model", lambda *a, **k: pytest.fail("work began without a usable GPU"))
    status, err = run_main(["bench"], capsys)
    assert status == 1
    assert err == [f"{NEEDS}torch {torch.__version__}, built without CUDA (install a CUDA build of torch)"]


def test_the_check_names_a_cuda_torch_that_sees_no_device(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(cli, "require_hopper", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(cf.UnsupportedDeviceError, match=r"sees no CUDA device$") as info:
        cli.require_gpu()
    assert str(info.value) == f"{NEEDS}torch {torch.__version__} (CUDA 13.0) sees no CUDA device"


@pytest.mark.parametrize("package", ["torch", "transformers"])
def test_without_torch_or_transformers_one_line_and_exit_1(package, monkeypatch, capsys, tmp_path):
    """They are not dependencies of the package (the kernels take any DLPack tensor); the command line needs them."""
    (tmp_path / "config.json").write_text('{"model_type": "gpt_neox"}')
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ModuleNotFoundError
    monkeypatch.setattr(cli, "require_hopper", lambda: None)
    argv = ["generate", "--model", str(tmp_path), "--prompt", "hi"] if package == "transformers" else ["bench"]
    status, err = run_main(argv, capsys)
    assert status == 1
    assert err == [f"clusterfusion {argv[0]}: {package} is not installed (the command line needs a CUDA build of "
                   f"torch, and transformers: pip install torch transformers)"]

@pytest.mark.skipif(has_hopper(), reason="this machine has a compute capability 9.0 GPU")
def test_the_library_raises_the_same_message():
    with pytest.raises(cf.UnsupportedDeviceError) as info:
        cf.require_hopper()
    message = str(info.value)
    assert message.startswith(NEEDS) and isinstance(info.value, RuntimeError)
    with pytest.raises(cf.UnsupportedDeviceError, match=f"^{re.escape(message)}$"):
        cf.KVCache(cf.ModelConfig.named("pythia-70m"), 16)
    assert cf._C.unsupported_device_message("no CUDA device") == NEEDS + "no CUDA device"


# ---- --version and help ------------------------------------------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"clusterfusion {cf.__version__}"


@pytest.mark.parametrize("command, defaults", [
    ("bench", ["(default: pythia-2.8b)", "(default: 32)", "(default: 256)", "(default: 0)",
               "(default: split, the faster)"]),
    ("generate", ["(default: 64)", "(default: 0.0)", "(default: 1.0)", "(default: a fresh one)",
                  "(default: the model's max_position_embeddings)"]),
])
def test_help_shows_the_defaults(command, defaults, capsys):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in defaults:
        assert default in text, (default, text)
    assert "(default: None)" not in text


# ---- the CUDA architecture, at configure time ------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake")
@pytest.mark.parametrize("arch", ["80", "90", "native", "90a;100a"])
def test_cmake_refuses_other_cuda_architectures_at_configure_time(arch, tmp_path):
    result = subprocess.run(["cmake", "-S", str(REPO), "-B", str(tmp_path / "build"),
                             f"-DCMAKE_CUDA_ARCHITECTURES={arch}"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    message = (f"CMAKE_CUDA_ARCHITECTURES={arch} is not supported: clusterfusion builds for 90a only (Hopper: "
               f"H100/H200); configure with -DCMAKE_CUDA_ARCHITECTURES=90a or leave it unset")
    assert message in [line.strip() for line in output.splitlines()], output  # one line, not wrapped
    assert "ptxas" not in output and "Check for working CUDA compiler" not in output, output


@pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake")
def test_cmake_takes_90a(tmp_path):
    """The architecture check lets sm_90a through (the configure may still stop later where there is no nvcc)."""
    result = subprocess.run(["cmake", "-S", str(REPO), "-B", str(tmp_path / "build"),
                             "-DCMAKE_CUDA_ARCHITECTURES=90a-real", "-DCLUSTERFUSION_BUILD_TESTS=OFF",
                             "-DCLUSTERFUSION_BUILD_EXAMPLES=OFF"],
                            capture_output=True, text=True, timeout=300)
    assert "is not supported" not in result.stdout + result.stderr

# ---- what a new user reads and installs ------------------------------------------------------------------------

def test_test_extras_have_what_the_test_command_needs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower() for spec in project["optional-dependencies"]["test"]}
    # tests/run_tests.sh builds the extension (nanobind) and runs pytest on the bridges and the CLI.
    assert {"pytest", "nanobind", "torch", "transformers", "safetensors", "numpy"} <= names


def test_the_package_is_apache_2_licensed():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_readme_starts_with_install_then_a_quickstart_quoting_the_h200_results():
    import json

    readme = (REPO / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert sections[:3] == ["Install", "Quickstart", "Commands"], sections
    for text in ("pip install .", "pip install '.[test]'", "cmake --install build --prefix", "CMAKE_PREFIX_PATH",
                 "find_package(clusterfusion REQUIRED)", "clusterfusion bench --model pythia-2.8b",
                 "bash bench/gpu_check.sh", "tests/run_tests.sh", "libgtest-dev", "ninja-build"):
        assert text in readme, text
    results = json.loads((REPO / "bench/results/e2e_h200_neox_compiled_dd7f673.json").read_text())
    row = next(r for r in results["rows"] if r["model"] == "pythia-2.8b" and r["system"] == "clusterfusion_graph"
               and r["decode_tokens"] == 512)
    # The quickstart quotes the benchmark's figures as the benchmark's (not as the command's own output).
    quoted = (f"TTFT {row['ttft_ms']:.1f} ms and TPOT\n{row['tpot_ms']:.2f} ms, {1e3 / row['tpot_ms']:.0f} "
              "tokens/s")
    assert quoted in readme, quoted


def test_the_readme_and_the_gpu_script_speak_of_the_project_only():
    header = "".join(l for l in (REPO / "bench/gpu_check.sh").read_text().splitlines(keepends=True)
                     if l.startswith("#"))
    for text in ((REPO / "README.md").read_text(), header):
        assert "at most 8 files" not in text and "$OUT holds" not in text


# ---- on the GPU machine ----------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_the_gpu_machine_passes_the_check():
    cf.require_hopper()
    cli.require_gpu()


@pytest.mark.gpu
def test_bench_times_every_step_on_the_gpu(capsys):
    """Random weights have no eos, and bench asks for none: all --decode-tokens steps run."""
    assert cli.main(["bench", "--model", "pythia-70m", "--prompt-tokens", "4", "--decode-tokens", "12"]) == 0
    err = capsys.readouterr().err
    assert "pythia-70m shapes, random weights:" in err and "4 prompt tokens, 12 new (split layers): TTFT" in err


# --- eval: arguments checked before any work -------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "pythia-7b"], "neither a directory nor a known model"),
    (["eval", "--model", "pythia-70m", "--text", "notes.txt"], "--text: pythia-70m has random weights and no "
                                                               "tokenizer"),
    (["eval", "--model", "pythia-70m", "--tokens", "1,x,3"], "--tokens: expected comma-separated token ids"),
    (["eval", "--model", "pythia-70m", "--tokens", "7"], "--tokens: expected at least 2 token ids"),
    (["eval", "--model", "pythia-70m", "--greedy", "-1"], "--greedy: expected an int >= 0"),
])
def test_eval_refuses_bad_arguments_in_one_line(capsys, argv, message):
    from clusterfusion import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_eval_parser_defaults():
    from clusterfusion import cli

    args = cli.build_parser().parse_args(["eval"])
    assert (args.model, args.length, args.greedy, args.greedy_prompt) == ("pythia-70m", 512, 64, 32)
    with pytest.raises(SystemExit):  # --text and --tokens are exclusive
        cli.build_parser().parse_args(["eval", "--text", "a", "--tokens", "1,2"])


@pytest.mark.gpu
def test_eval_runs_on_an_embedded_model(tmp_path, capsys):
    import json

    from clusterfusion import cli

    out = tmp_path / "report.json"
    assert cli.main(["eval", "--model", "pythia-70m", "--length", "64", "--greedy", "8", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["positions"] == 63 and report["greedy_tokens"] == 8
    assert "library" in capsys.readouterr().out
