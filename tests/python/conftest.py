"""Shared pytest setup: the `gpu` and `gpu2` markers, a fresh reproducible seed per test, and the `ref` reference
module."""

import importlib.util
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cuda_device_count():
    """The CUDA devices torch sees (0 without torch or without CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "gpu2: needs two CUDA GPUs (skipped with fewer); a gpu2 test is also a gpu "
                                       "test (selected by -m gpu)")


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker, so that -m gpu selects the gpu2 tests too
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu2" in item.keywords and "gpu" not in item.keywords:
            item.add_marker(pytest.mark.gpu)
    count = _cuda_device_count()
    if count >= 2:
        return
    no_gpu = pytest.mark.skip(reason="no CUDA GPU")
    one_gpu = pytest.mark.skip(reason=f"gpu2: needs two CUDA devices, torch sees {count}")
    for item in items:
        if count == 0 and "gpu" in item.keywords:
            item.add_marker(no_gpu)
        elif "gpu2" in item.keywords:
            item.add_marker(one_gpu)


@pytest.fixture(autouse=True)
def seed():
    """Seeds numpy, random and torch afresh for every test; set CF_TEST_SEED to replay a failing one."""
    value = int(os.environ.get("CF_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"CF_TEST_SEED={value}")
    random.seed(value)
    np.random.seed(value)
    try:
        import torch
    except ImportError:
        return value
    torch.manual_seed(value)
    return value


@pytest.fixture(scope="session")
def ref():
    """python/clusterfusion/reference.py loaded by path: the package __init__ needs the compiled extension."""
    path = REPO_ROOT / "python" / "clusterfusion" / "reference.py"
    spec = importlib.util.spec_from_file_location("clusterfusion_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def f64_weights():
    """Float64 NumPy weights of a transformers layer or model, keyed by the library's weight schema (what the
    reference takes): f64_weights.layer(hf_layer, hf_config), f64_weights.model(hf_model)."""
    from clusterfusion import config_from_transformers
    from clusterfusion.weights import layer_weights, model_weights

    def to_f64(tensor, name):
        return tensor.detach().cpu().double().numpy()

    class F64Weights:
        @staticmethod
        def layer(hf_layer, hf_config):
            return layer_weights(hf_layer, config_from_transformers(hf_config), convert=to_f64)

        @staticmethod
        def model(hf_model):
            return model_weights(hf_model, config_from_transformers(hf_model.config), convert=to_f64)

    return F64Weights
