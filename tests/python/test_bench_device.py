"""CPU tests of bench_e2e.py's --device option: cuda:N with N below the device count torch reports (faked here),
anything else refused naming the option. The runs on two real GPUs are test_two_gpus.py's (`gpu2`)."""

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # the bench modules import it (CPU build suffices)
pytest.importorskip("clusterfusion._C")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_e2e  # noqa: E402


@pytest.fixture
def two_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("given, expected", [(None, "cuda:0"), ("cuda:1", "cuda:1"), ("cuda:01", "cuda:1")])
def test_device_default_and_accepted(two_devices, given, expected):
    argv = ["--models", "pythia-70m"] + (["--device", given] if given else [])
    assert bench_e2e.parse_args(argv).device == expected


@pytest.mark.parametrize("given", ["cuda:2", "cuda", "cuda:-1", "cpu", "1", "cuda:1x"])
def test_device_refused_naming_the_option(two_devices, capsys, given):
    with pytest.raises(SystemExit) as raised:
        bench_e2e.parse_args(["--models", "pythia-70m", "--device", given])
    assert raised.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --device: expected cuda:N with N < device count (2), got {given}")
