"""Shared pytest setup: the `gpu` marker, a fresh reproducible seed per test, and the `ref` reference module."""

import importlib.util
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
