"""The nanobind module clusterfusion._C and the Python package around it.

CPU tests: configs, the transformers bridge, the C++ reference against the Python one, and every tensor check
(a check runs before the C++ library sees a pointer, and the device is checked last, so CPU tensors reach each),
the weight keywords of DecoderLayer and DecodeContext for GPT-NeoX and Llama (the checks run in schema order, so
tensors ahead of the one under test are exported as CUDA tensors over CPU memory: see FakeCuda).
GPU tests (marker `gpu`): zero-copy cache views, the layer against the reference, and what the layer keeps alive.
"""

import ctypes
import gc
import random
import re
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import clusterfusion as cf

try:
    import torch
except ImportError:
    torch = None
try:
    import transformers
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox import modeling_gpt_neox as hf_neox
except ImportError:
    transformers = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")
needs_transformers = pytest.mark.skipif(transformers is None or torch is None, reason="needs transformers and torch")

# GPT-NeoX DecoderLayer keyword -> shape, in units of hidden (h) and ffn (f).
WEIGHT_DIMS = dict(ln1_weight="h", ln1_bias="h", ln2_weight="h", ln2_bias="h", w_qkv="3h,h", b_qkv="3h",
                   w_o="h,h", b_o="h", w_up="f,h", b_up="f", w_down="h,f", b_down="h")


def weight_shapes(cfg):
    sizes = {"h": cfg.hidden, "3h": 3 * cfg.hidden, "f": cfg.ffn}
    return {name: tuple(sizes[d] for d in dims.split(",")) for name, dims in WEIGHT_DIMS.items()}


def random_weights(cfg):
    """float64 weights at realistic scales: LayerNorm weights ~N(1, 0.1), the rest ~N(0, 0.02)."""
    w = {}
    for name, shape in weight_shapes(cfg).items():
        if name in ("ln1_weight", "ln2_weight"):
            w[name] = np.random.normal(1.0, 0.1, shape)
        else:
            w[name] = np.random.normal(0.0, 0.02, shape)
    return w


def small_config():
    """A random small GPT-NeoX config the kernels support (hidden and ffn multiples of 256)."""
    heads, head_dim = random.choice([(4, 64), (8, 64), (4, 128), (16, 80), (8, 96)])
    hidden = heads * head_dim
    return cf.ModelConfig(hidden=hidden, heads=heads, head_dim=head_dim, ffn=random.choice([2, 4]) * hidden,
                          layers=random.randint(2, 4), vocab=512, rotary_dims=head_dim // 4)


def ref_config(ref, cfg):
    return ref.RefConfig(hidden=cfg.hidden, heads=cfg.heads, head_dim=cfg.head_dim, ffn=cfg.ffn, layers=cfg.layers,
                         vocab=cfg.vocab, rotary_dims=cfg.rotary_dims, rotary_base=cfg.rotary_base,
                         norm_eps=cfg.norm_eps)


def rel_err(actual, expected):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


# ---- the module ------------------------------------------------------------------------------------------------

def test_stubs_and_marker_sit_next_to_the_module():
    package = Path(cf._C.__file__).parent
    stub = (package / "_C.pyi").read_text()
    for name in ("class ModelConfig", "class RopeScaling", "class KVCache", "class DecoderLayer",
                 "class DecodeContext", "def weight_schema", "def model_names", "def reference_neox_layer",
                 "class CudaError(RuntimeError)"):
        assert name in stub
    assert (package / "py.typed").exists()


# ---- ModelConfig -----------------------------------------------------------------------------------------------

PYTHIA = {  # name: hidden, heads, head_dim, ffn, layers, vocab (gpt-neox-decode.md)
    "pythia-70m": (512, 8, 64, 2048, 6, 50304),
    "pythia-1b": (2048, 8, 256, 8192, 16, 50304),
    "pythia-2.8b": (2560, 32, 80, 10240, 32, 50304),
    "pythia-6.9b": (4096, 32, 128, 16384, 32, 50432),
    "gpt-neox-20b": (6144, 64, 96, 24576, 44, 50432),
}


@pytest.mark.parametrize("name", sorted(PYTHIA))
def test_pythia_configs(name):
    c = cf.ModelConfig.pythia(name)
    assert (c.hidden, c.heads, c.head_dim, c.ffn, c.layers, c.vocab) == PYTHIA[name]
    assert (c.rotary_dims, c.rotary_base, c.norm_eps) == (c.head_dim // 4, 10000.0, pytest.approx(1e-5))
    assert (c.arch, c.norm, c.activation, c.parallel_residual) == (
        cf.Architecture.GPTNeoX, cf.Norm.LayerNorm, cf.Activation.GELU, True)
    c.validate()


def test_unknown_pythia_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model name 'pythia-3b'.*pythia-2\.8b"):
        cf.ModelConfig.pythia("pythia-3b")


def test_llama2_7b():
    c = cf.ModelConfig.llama2_7b()
    assert (c.arch, c.hidden, c.heads, c.head_dim, c.ffn, c.vocab, c.rotary_dims) == (
        cf.Architecture.Llama, 4096, 32, 128, 11008, 32000, 128)
    assert (c.norm, c.activation, c.parallel_residual) == (cf.Norm.RMSNorm, cf.Activation.SiLU, False)
    c.validate()


def random_float32(low, high):
    return float(np.float32(random.uniform(low, high)))


def test_fields_are_read_write_and_repr_evaluates_back():
    c = cf.ModelConfig()
    rope = cf.RopeScaling(type=random.choice([cf.RopeType.Default, cf.RopeType.Linear, cf.RopeType.Llama3]),
                          factor=random_float32(1, 64), low_freq_factor=random_float32(0.5, 2),
                          high_freq_factor=random_float32(2, 8), original_max_positions=random.randint(1, 1 << 17))
    values = dict(hidden=random.randint(1, 9999), heads=random.randint(1, 99), kv_heads=random.randint(1, 99),
                  head_dim=random.randint(1, 256), ffn=random.randint(1, 99999), layers=random.randint(1, 99),
                  vocab=random.randint(1, 99999), rotary_dims=random.randint(1, 256),
                  rotary_base=random_float32(1, 1e6), rope_scaling=rope, norm_eps=random_float32(1e-7, 1e-3),
                  parallel_residual=False, arch=cf.Architecture.Llama, norm=cf.Norm.RMSNorm,
                  activation=cf.Activation.SiLU, tied_embeddings=random.choice([False, True]))
    for field, value in values.items():
        setattr(c, field, value)
    assert {field: getattr(c, field) for field in values} == values
    assert c == cf.ModelConfig(**values)
    assert eval(repr(c), vars(cf)) == c
    assert "norm_eps=" in repr(cf.ModelConfig.pythia("pythia-70m")) and "1e-05" in repr(cf.ModelConfig())
    c.layers += 1
    assert c != cf.ModelConfig(**values)
    c.layers -= 1
    c.rope_scaling.factor *= 2  # the field is the config's own, not a copy
    assert c.rope_scaling.factor == 2 * values["rope_scaling"].factor and c != cf.ModelConfig(**values)


def test_validate_names_the_field():
    c = cf.ModelConfig.pythia("pythia-70m")
    c.hidden += 1
    with pytest.raises(ValueError, match=r"^ModelConfig\.hidden: must equal heads \* head_dim"):
        c.validate()
    c = cf.ModelConfig.pythia("pythia-70m")
    c.rotary_dims = c.head_dim + 2
    with pytest.raises(ValueError, match=r"^ModelConfig\.rotary_dims"):
        c.validate()


# ---- config_from_transformers ----------------------------------------------------------------------------------

def random_hf_config(**overrides):
    heads = random.choice([2, 4, 8])
    head_dim = random.choice([16, 32, 64, 80])
    kwargs = dict(hidden_size=heads * head_dim, num_attention_heads=heads,
                  intermediate_size=random.randint(1, 8) * 64, num_hidden_layers=random.randint(1, 6),
                  vocab_size=random.randint(64, 1024), rotary_pct=random.choice([0.25, 0.5, 1.0]),
                  rotary_emb_base=random.choice([10000, 500000]), layer_norm_eps=random.choice([1e-5, 1e-6]))
    kwargs.update(overrides)
    return GPTNeoXConfig(**kwargs)


@needs_transformers
def test_config_from_transformers_matches_transformers_and_the_python_reference(ref):
    hf = random_hf_config()
    c = cf.config_from_transformers(hf)
    assert (c.hidden, c.heads, c.ffn, c.layers, c.vocab) == (
        hf.hidden_size, hf.num_attention_heads, hf.intermediate_size, hf.num_hidden_layers, hf.vocab_size)
    # The rotated dims as transformers' own attention computes them.
    assert c.rotary_dims == hf_neox.GPTNeoXAttention(hf, layer_idx=0).rotary_ndims
    # ModelConfig keeps rotary_base and norm_eps in float32.
    assert asdict(ref_config(ref, c)) == pytest.approx(asdict(ref.RefConfig.from_transformers(hf)), rel=1e-7)
    assert (c.arch, c.kv_heads, c.head_dim, c.rope_scaling, c.tied_embeddings) == (
        cf.Architecture.GPTNeoX, hf.num_attention_heads, hf.hidden_size // hf.num_attention_heads, cf.RopeScaling(),
        False)


@needs_transformers
def test_config_from_transformers_of_pythia_2_8b_is_the_builtin():
    hf = GPTNeoXConfig(hidden_size=2560, num_attention_heads=32, intermediate_size=10240, num_hidden_layers=32,
                       vocab_size=50304, rotary_pct=0.25, rotary_emb_base=10000, layer_norm_eps=1e-5)
    assert cf.config_from_transformers(hf) == cf.ModelConfig.pythia("pythia-2.8b")


def test_config_from_transformers_4x_attributes():
    """transformers 4.x kept the rotary settings in plain attributes, without rope_parameters."""
    base, pct = random.choice([10000, 20000]), random.choice([0.25, 0.5])
    hf4 = types.SimpleNamespace(model_type="gpt_neox", hidden_size=512, num_attention_heads=8,
                                intermediate_size=2048, num_hidden_layers=6, vocab_size=50304, hidden_act="gelu",
                                use_parallel_residual=True, rotary_pct=pct, rotary_emb_base=base,
                                rope_scaling=None, layer_norm_eps=1e-5)
    c = cf.config_from_transformers(hf4)
    assert (c.rotary_dims, c.rotary_base, c.hidden, c.head_dim) == (int(64 * pct), base, 512, 64)


@needs_transformers
@pytest.mark.parametrize("override, field", [
    (dict(hidden_act="gelu_new"), "hidden_act"),
    (dict(use_parallel_residual=False), "use_parallel_residual"),
    (dict(attention_bias=False), "attention_bias"),
    (dict(rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=10000.0, partial_rotary_factor=0.25)),
     r"rope_scaling: expected the default rope for GPT-NeoX, got 'linear'"),
])
def test_config_from_transformers_rejects_what_the_kernels_do_not_compute(override, field):
    with pytest.raises(ValueError, match=rf"^hf_config\.{field}"):
        cf.config_from_transformers(random_hf_config(**override))


@needs_transformers
def test_config_from_transformers_rejects_other_models():
    gpt2 = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=64, vocab_size=128)
    with pytest.raises(ValueError, match=r"^hf_config\.model_type: expected one of 'gpt_neox', 'llama', got 'gpt2'"):
        cf.config_from_transformers(gpt2)


# ---- reference_neox_layer (C++) against reference.neox_layer (Python) ------------------------------------------

def random_step(cfg):
    position = random.randint(0, 9)
    past = (cfg.heads, position, cfg.head_dim)
    return (random_weights(cfg), np.random.standard_normal(cfg.hidden), np.random.standard_normal(past),
            np.random.standard_normal(past), position)


def test_cpp_reference_matches_python_reference(ref):
    heads, head_dim = random.choice([(2, 16), (4, 32), (3, 80)])
    cfg = cf.ModelConfig(hidden=heads * head_dim, heads=heads, head_dim=head_dim, ffn=random.randint(8, 200),
                         layers=1, vocab=8, rotary_dims=random.choice([head_dim // 4, head_dim // 2, head_dim]),
                         rotary_base=random.choice([10000.0, 500.0]))
    w, x, k_cache, v_cache, position = random_step(cfg)
    got = cf.reference_neox_layer(cfg, w, x, k_cache, v_cache, position)
    want = ref.neox_layer(ref_config(ref, cfg), w, x, k_cache, v_cache, position)
    assert set(got) == set(want) == {"out", "attn", "mlp_act", "k", "v"}
    for key in want:
        assert got[key].dtype == np.float64
        assert rel_err(got[key], want[key]) < 1e-10, key


def reference_args(cfg):
    w, x, k_cache, v_cache, position = random_step(cfg)
    return dict(config=cfg, weights=w, x=x, k_cache=k_cache, v_cache=v_cache, position=position)


def misaligned_float64(n):
    """n float64 values 4 bytes past an 8-byte boundary."""
    raw = np.zeros(8 * n + 16, dtype=np.uint8)
    start = (-raw.ctypes.data) % 8 + 4
    return raw[start:start + 8 * n].view(np.float64)


@pytest.mark.parametrize("case, error, message", [
    ("x float32", TypeError, r"^x: expected float64, got float32$"),
    ("x too long", ValueError, r"^x: expected shape \[{h}\], got \[{h1}\]$"),
    ("x strided", ValueError, r"^x: expected a contiguous tensor \(C order\)"),
    ("x misaligned", ValueError, r"^x: expected a data pointer aligned to 8 bytes"),
    ("x a list", TypeError, r"^x: expected a tensor \(any DLPack producer.*got list"),
    ("k_cache one position short", ValueError, r"^k_cache: expected shape \[{heads}, {p}, {d}\], got"),
    ("w_up transposed", ValueError, r"^w_up: expected shape \[{f}, {h}\], got \[{h}, {f}\]$"),
    ("w_up missing", KeyError, r"weights: missing 'w_up'"),
    ("extra weight", ValueError, r"^weights: unexpected key 'w_gate'"),
    ("negative position", ValueError, r"^position: expected >= 0, got -1$"),
])
def test_cpp_reference_argument_errors(case, error, message):
    cfg = cf.ModelConfig.pythia("pythia-70m")
    cfg.ffn = 3 * cfg.hidden  # keeps w_up's shape from being square
    args = reference_args(cfg)
    h = cfg.hidden
    if case == "x float32":
        args["x"] = args["x"].astype(np.float32)
    elif case == "x too long":
        args["x"] = np.random.standard_normal(h + 1)
    elif case == "x strided":
        args["x"] = np.random.standard_normal(2 * h)[::2]
    elif case == "x misaligned":
        args["x"] = misaligned_float64(h)
    elif case == "x a list":
        args["x"] = list(args["x"])
    elif case == "k_cache one position short":
        args["position"] += 1
    elif case == "w_up transposed":
        args["weights"]["w_up"] = np.ascontiguousarray(args["weights"]["w_up"].T)
    elif case == "w_up missing":
        del args["weights"]["w_up"]
    elif case == "extra weight":
        args["weights"]["w_gate"] = args["weights"]["w_up"]
    elif case == "negative position":
        args["position"] = -1
    message = message.format(h=h, h1=h + 1, f=cfg.ffn, heads=cfg.heads, d=cfg.head_dim, p=args["position"])
    with pytest.raises(error, match=message):
        cf.reference_neox_layer(**args)


# ---- DecoderLayer tensor checks, on the CPU --------------------------------------------------------------------

def torch_weights(cfg, device="cpu"):
    return {name: torch.from_numpy(w).to(device=device, dtype=torch.float16) for name, w in random_weights(cfg).items()}


def misaligned_half(n, device="cpu"):
    """n float16 values 2 bytes past a 16-byte boundary (allocators hand out 16-byte aligned memory)."""
    return torch.randn(n + 1, device=device).half()[1:]


@needs_torch
@pytest.mark.parametrize("case, error, message", [
    ("float32", TypeError, r"^ln1_weight: expected float16, got float32$"),
    ("bfloat16", TypeError, r"^ln1_weight: expected float16, got bfloat16$"),
    ("one too long", ValueError, r"^ln1_weight: expected shape \[{h}\], got \[{h1}\]$"),
    ("2-D", ValueError, r"^ln1_weight: expected shape \[{h}\], got \[1, {h}\]$"),
    ("strided", ValueError, r"^ln1_weight: expected a contiguous tensor \(C order\), got strides \[2\]"),
    ("misaligned", ValueError, r"^ln1_weight: expected a data pointer aligned to 16 bytes, got 0x[0-9a-f]+ \(2 bytes"),
    ("on the CPU", TypeError, r"^ln1_weight: expected a CUDA tensor, got cpu$"),
    ("requires grad", TypeError, r"^ln1_weight: expected a CUDA tensor, got cpu$"),  # accepted as a tensor
    ("None", TypeError, r"^ln1_weight: expected a tensor .*got NoneType"),
])
def test_layer_checks_each_tensor_before_the_library_sees_it(case, error, message):
    cfg = small_config()
    w = torch_weights(cfg)
    h = cfg.hidden
    w["ln1_weight"] = {
        "float32": lambda: torch.randn(h),
        "bfloat16": lambda: torch.randn(h, dtype=torch.bfloat16),
        "one too long": lambda: torch.randn(h + 1).half(),
        "2-D": lambda: torch.randn(1, h).half(),
        "strided": lambda: torch.randn(2 * h).half()[::2],
        "misaligned": lambda: misaligned_half(h),
        "on the CPU": lambda: torch.randn(h).half(),
        "requires grad": lambda: torch.randn(h).half().requires_grad_(),
        "None": lambda: None,
    }[case]()
    with pytest.raises(error, match=message.format(h=h, h1=h + 1)):
        cf.DecoderLayer(cfg, 64, **w)


@needs_torch
def test_a_negative_extent_is_refused_by_name():
    """nanobind passes on negative extents from a DLPack producer; the checks refuse them before the shape."""
    from dlpack_claims import Claimed

    cfg = small_config()
    w = torch_weights(cfg)
    h = cfg.hidden
    w["ln1_weight"] = Claimed(torch.zeros(h, dtype=torch.float16), shape=(-h,))
    with pytest.raises(ValueError, match=rf"^ln1_weight: expected non-negative extents, got shape \[-{h}\]$"):
        cf.DecoderLayer(cfg, 64, **w)


@needs_torch
def test_layer_rejects_an_invalid_config_before_the_tensors():
    cfg = small_config()
    w = torch_weights(cfg)
    cfg.heads += 1
    with pytest.raises(ValueError, match=r"^ModelConfig\.hidden"):
        cf.DecoderLayer(cfg, 64, **w)
    cfg = small_llama_config()
    w = cpu_layer_weights(cfg, LLAMA_WEIGHT_DIMS)
    cfg.kv_heads = cfg.heads + 1
    with pytest.raises(ValueError, match=rf"^ModelConfig\.kv_heads: must divide heads = {cfg.heads}"):
        cf.DecoderLayer(cfg, 64, **w)


# ---- the weight keywords of DecoderLayer and DecodeContext, GPT-NeoX and Llama, on the CPU ----------------------

# Llama DecoderLayer keyword -> shape: h hidden, kv the kv rows (kv_heads * head_dim), f ffn.
LLAMA_WEIGHT_DIMS = dict(ln1_weight="h", w_q="h,h", w_k="kv,h", w_v="kv,h", w_o="h,h", ln2_weight="h", w_gate="f,h",
                         w_up="f,h", w_down="h,f")
ARCH_DIMS = {"GPTNeoX": WEIGHT_DIMS, "Llama": LLAMA_WEIGHT_DIMS}


def small_llama_config(tied=False):
    """A random small Llama config with grouped-query attention (kv_heads < heads, so w_k is not w_q's shape)."""
    heads, head_dim = random.choice([(4, 64), (8, 64), (8, 128), (16, 64)])
    kv_heads = random.choice([k for k in (1, 2, 4, 8) if k < heads and heads % k == 0])
    hidden = heads * head_dim
    return cf.ModelConfig(arch=cf.Architecture.Llama, hidden=hidden, heads=heads, kv_heads=kv_heads,
                          head_dim=head_dim, ffn=random.choice([2, 3]) * hidden, layers=random.randint(2, 4),
                          vocab=512, rotary_dims=head_dim, rotary_base=500000.0, norm=cf.Norm.RMSNorm,
                          activation=cf.Activation.SiLU, parallel_residual=False, tied_embeddings=tied)


def arch_config(arch):
    return small_config() if arch == "GPTNeoX" else small_llama_config()


def layer_shapes(cfg, dims):
    sizes = {"h": cfg.hidden, "3h": 3 * cfg.hidden, "kv": cfg.kv_heads * cfg.head_dim, "f": cfg.ffn}
    return {name: tuple(sizes[d] for d in spec.split(",")) for name, spec in dims.items()}


class FakeCuda:
    """A CPU tensor that exports itself through DLPack as a CUDA tensor on device 0, so that the checks after its
    own run on a machine without a GPU (the weights are checked one by one in schema order). Only for arguments a
    later check refuses: a layer or context built on it would point the GPU at host memory."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __dlpack__(self, **kwargs):
        capsule = self.tensor.__dlpack__()
        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
        get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
        get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        name = get_name(capsule)
        # DLTensor.device.device_type sits after the data pointer; a versioned capsule puts version, manager
        # context, deleter and flags (32 bytes) before the DLTensor.
        offset = {b"dltensor": 8, b"dltensor_versioned": 40}[name]
        ctypes.c_int32.from_address(get_pointer(capsule, name) + offset).value = 2  # kDLCUDA
        return capsule

    def __dlpack_device__(self):
        return (2, 0)


def fake_layer_weights(cfg, dims):
    return {name: FakeCuda(torch.zeros(shape, dtype=torch.float16)) for name, shape in layer_shapes(cfg, dims).items()}


def cpu_layer_weights(cfg, dims):
    return {name: torch.zeros(shape, dtype=torch.float16) for name, shape in layer_shapes(cfg, dims).items()}


@needs_torch
def test_fake_cuda_tensors_pass_every_check_but_none_other():
    cfg = small_llama_config()
    w = fake_layer_weights(cfg, LLAMA_WEIGHT_DIMS)
    w["w_up"] = FakeCuda(torch.zeros(layer_shapes(cfg, LLAMA_WEIGHT_DIMS)["w_up"]))  # float32
    with pytest.raises(TypeError, match=r"^w_up: expected float16, got float32$"):  # not ln1_weight's device
        cf.DecoderLayer(cfg, 64, **w)


@needs_torch
@pytest.mark.parametrize("arch, foreign", [("GPTNeoX", "w_gate"), ("GPTNeoX", "w_q"), ("Llama", "w_qkv"),
                                           ("Llama", "b_o"), ("Llama", "ln1_bias")])
def test_layer_refuses_a_keyword_of_another_architecture(arch, foreign):
    cfg = arch_config(arch)
    w = cpu_layer_weights(cfg, ARCH_DIMS[arch])
    w[foreign] = torch.zeros(cfg.hidden, dtype=torch.float16)
    expected = ", ".join(ARCH_DIMS[arch])  # in schema order
    with pytest.raises(ValueError, match=rf"^{foreign}: not a weight of {arch} \(expected {expected}\)$"):
        cf.DecoderLayer(cfg, 64, **w)


@needs_torch
@pytest.mark.parametrize("arch", ["GPTNeoX", "Llama"])
def test_layer_names_a_missing_keyword(arch):
    cfg = arch_config(arch)
    names = list(ARCH_DIMS[arch])
    missing = random.choice(names)
    w = fake_layer_weights(cfg, ARCH_DIMS[arch])
    del w[missing]
    with pytest.raises(ValueError, match=rf"^{missing}: missing$"):
        cf.DecoderLayer(cfg, 64, **w)


@needs_torch
@pytest.mark.parametrize("case", ["q's shape (kv_heads taken for heads)", "transposed"])
def test_llama_layer_checks_w_k_against_the_kv_heads(case):
    cfg = small_llama_config()
    h, kv = cfg.hidden, cfg.kv_heads * cfg.head_dim
    w = fake_layer_weights(cfg, LLAMA_WEIGHT_DIMS)
    wrong = (h, h) if case.startswith("q") else (h, kv)
    w["w_k"] = FakeCuda(torch.zeros(wrong, dtype=torch.float16))
    with pytest.raises(ValueError, match=rf"^w_k: expected shape \[{kv}, {h}\], got \[{wrong[0]}, {wrong[1]}\]$"):
        cf.DecoderLayer(cfg, 64, **w)


@needs_torch
@pytest.mark.parametrize("arch", ["GPTNeoX", "Llama"])
def test_layer_checks_every_keyword_shape(arch):
    cfg = arch_config(arch)
    shapes = layer_shapes(cfg, ARCH_DIMS[arch])
    name = random.choice(list(shapes))
    w = fake_layer_weights(cfg, ARCH_DIMS[arch])
    wrong = (shapes[name][0] + 8,) + shapes[name][1:]
    w[name] = FakeCuda(torch.zeros(wrong, dtype=torch.float16))
    want, got = (", ".join(map(str, dims)) for dims in (shapes[name], wrong))
    with pytest.raises(ValueError, match=rf"^{name}: expected shape \[{want}\], got \[{got}\]$"):
        cf.DecoderLayer(cfg, 64, **w)


MODEL_DIMS = {"GPTNeoX": dict(embed_in="v,h", final_norm_weight="h", final_norm_bias="h", lm_head="v,h"),
              "Llama": dict(embed_in="v,h", final_norm_weight="h", lm_head="v,h")}


def model_tensors(cfg, arch, make=FakeCuda):
    sizes = {"h": cfg.hidden, "v": cfg.vocab}
    return {name: make(torch.zeros(tuple(sizes[d] for d in spec.split(",")), dtype=torch.float16))
            for name, spec in MODEL_DIMS[arch].items()}


def context_args(arch, tied=False):
    cfg = small_config() if arch == "GPTNeoX" else small_llama_config(tied)
    layers = [fake_layer_weights(cfg, ARCH_DIMS[arch]) for _ in range(cfg.layers)]
    return cfg, model_tensors(cfg, arch), layers


@needs_torch
@pytest.mark.parametrize("arch, foreign", [("Llama", "final_norm_bias"), ("Llama", "embed_out"),
                                           ("GPTNeoX", "norm_weight")])
def test_context_refuses_an_unknown_model_keyword(arch, foreign):
    cfg, tensors, layers = context_args(arch)
    tensors = {name: t.tensor for name, t in tensors.items()}  # on the CPU: the keywords are checked first
    tensors[foreign] = torch.zeros(cfg.hidden, dtype=torch.float16)
    expected = ", ".join(MODEL_DIMS[arch])
    with pytest.raises(ValueError, match=rf"^{foreign}: not a weight of {arch} \(expected {expected}\)$"):
        cf.DecodeContext(cfg, 64, layers=layers, **tensors)


@needs_torch
@pytest.mark.parametrize("arch, tied", [("GPTNeoX", False), ("Llama", False), ("Llama", True)])
def test_context_names_a_missing_model_tensor(arch, tied):
    """A tied LM head is still passed (as the embedding itself)."""
    cfg, tensors, layers = context_args(arch, tied)
    missing = random.choice(list(tensors)) if not tied else "lm_head"
    del tensors[missing]
    with pytest.raises(ValueError, match=rf"^{missing}: missing$"):
        cf.DecodeContext(cfg, 64, layers=layers, **tensors)


@needs_torch
@pytest.mark.parametrize("arch", ["GPTNeoX", "Llama"])
def test_context_checks_the_model_tensor_shapes(arch):
    cfg, tensors, layers = context_args(arch)
    tensors["embed_in"] = torch.zeros(cfg.hidden, cfg.vocab + 8, dtype=torch.float16)  # on the CPU: checked last
    with pytest.raises(ValueError, match=rf"^embed_in: expected shape \[{cfg.vocab}, {cfg.hidden}\], got "
                                         rf"\[{cfg.hidden}, {cfg.vocab + 8}\]$"):
        cf.DecodeContext(cfg, 64, layers=layers, **tensors)
    tensors = model_tensors(cfg, arch)
    tensors["lm_head"] = FakeCuda(torch.zeros(cfg.vocab + 1, cfg.hidden, dtype=torch.float16))
    with pytest.raises(ValueError, match=rf"^lm_head: expected shape \[{cfg.vocab}, {cfg.hidden}\]"):
        cf.DecodeContext(cfg, 64, layers=layers, **tensors)


@needs_torch
@pytest.mark.parametrize("arch", ["GPTNeoX", "Llama"])
def test_context_checks_the_layer_list(arch):
    cfg, tensors, layers = context_args(arch)
    with pytest.raises(ValueError, match=rf"^layers: expected {cfg.layers} dicts of layer weights, got "
                                         rf"{cfg.layers - 1}$"):
        cf.DecodeContext(cfg, 64, layers=layers[1:], **tensors)
    bad = random.randrange(cfg.layers)
    layers[bad] = list(layers[bad].values())
    with pytest.raises(TypeError, match=rf"^layers\[{bad}\]: expected a dict of the layer's weights"):
        cf.DecodeContext(cfg, 64, layers=layers, **tensors)


@needs_torch
@pytest.mark.parametrize("case", ["foreign keyword", "missing keyword", "w_k of q's shape"])
def test_context_names_the_layer_of_a_bad_weight(case):
    cfg, tensors, layers = context_args("Llama", tied=random.choice([False, True]))
    bad = random.randrange(cfg.layers)  # the layers before it pass every check
    h, kv = cfg.hidden, cfg.kv_heads * cfg.head_dim
    if case == "foreign keyword":
        layers[bad]["w_qkv"] = FakeCuda(torch.zeros(h + 2 * kv, h, dtype=torch.float16))
        message = rf"^layers\[{bad}\]\.w_qkv: not a weight of Llama \(expected ln1_weight, w_q, w_k,"
    elif case == "missing keyword":
        del layers[bad]["w_down"]
        message = rf"^layers\[{bad}\]\.w_down: missing$"
    else:
        layers[bad]["w_k"] = FakeCuda(torch.zeros(h, h, dtype=torch.float16))
        message = rf"^layers\[{bad}\]\.w_k: expected shape \[{kv}, {h}\], got \[{h}, {h}\]$"
    with pytest.raises(ValueError, match=message):
        cf.DecodeContext(cfg, 64, layers=layers, **tensors)


@needs_torch
def test_context_rejects_an_invalid_config_before_the_tensors():
    cfg, tensors, layers = context_args("Llama", tied=True)
    cfg.tied_embeddings, cfg.arch = True, cf.Architecture.GPTNeoX  # GPT-NeoX with a tied head: no such model
    cfg.kv_heads = cfg.heads
    cfg.norm, cfg.activation, cfg.parallel_residual = cf.Norm.LayerNorm, cf.Activation.GELU, True
    with pytest.raises(ValueError, match=r"^ModelConfig\.tied_embeddings: GPTNeoX has a separate LM head"):
        cf.DecodeContext(cfg, 64, layers=layers, **tensors)


def test_cuda_failures_raise_clusterfusion_cuda_error():
    """More memory than any GPU has: cudaMalloc fails and says so. Without a compute capability 9.0 GPU the
    device check refuses first."""
    assert issubclass(cf.CudaError, RuntimeError)
    try:
        cf.require_hopper()
    except cf.UnsupportedDeviceError as e:
        with pytest.raises(cf.UnsupportedDeviceError, match=f"^{re.escape(str(e))}$"):
            cf.KVCache(cf.ModelConfig.pythia("gpt-neox-20b"), 2**30)
        return
    with pytest.raises(cf.CudaError, match=r"^cudaMalloc\(.*\) failed at .*kv_cache\.cpp:\d+: cudaError"):
        cf.KVCache(cf.ModelConfig.pythia("gpt-neox-20b"), 2**30)
    if torch is not None and torch.cuda.is_available():
        # The failure must not linger as CUDA's last error, where the next library to check it (torch
        # after its own launches) would take it for its own.
        assert (torch.ones(4, device="cuda") * 2).sum().item() == 8


def test_kv_cache_rejects_max_seq_before_allocating():
    with pytest.raises(ValueError, match=r"max_seq must be > 0 \(got 0\)"):
        cf.KVCache(small_config(), 0)


@needs_transformers
def test_from_transformers_names_the_transformers_parameter():
    hf = random_hf_config()
    hf_layer = hf_neox.GPTNeoXLayer(hf, layer_idx=0)  # float32 on the CPU
    with pytest.raises(TypeError, match=r"^hf_layer\.input_layernorm\.weight: expected a float16 CUDA tensor, "
                                        r"got torch\.float32 on cpu"):
        cf.FusedLayer.from_transformers(hf_layer, cf.config_from_transformers(hf), 64)


@needs_transformers
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_from_transformers_names_the_transformers_parameter_of_a_llama_layer(dtype):
    from transformers.models.llama import modeling_llama as hf_llama

    hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                                  num_hidden_layers=1, vocab_size=128)
    hf_layer = hf_llama.LlamaDecoderLayer(hf, layer_idx=0).to(getattr(torch, dtype))  # on the CPU
    with pytest.raises(TypeError, match=rf"^hf_layer\.input_layernorm\.weight: expected a float16 CUDA tensor, "
                                        rf"got torch\.{dtype} on cpu"):
        cf.FusedLayer.from_transformers(hf_layer, cf.config_from_transformers(hf), 64)


# ---- on the GPU ------------------------------------------------------------------------------------------------

def fill_past(cache, layer, position):
    """Random keys and values at positions 0..position-1 of `layer`, written through the DLPack views."""
    for view in (cache.keys(layer), cache.values(layer)):
        torch.from_dlpack(view)[:, :position].normal_()
    cache.length = position


def cache_past(cache, layer, position):
    keys, values = torch.from_dlpack(cache.keys(layer)), torch.from_dlpack(cache.values(layer))
    return keys[:, :position].double().cpu().numpy(), values[:, :position].double().cpu().numpy()


@pytest.mark.gpu
@needs_torch
def test_cache_views_share_the_device_memory():
    cfg = small_config()
    max_seq = random.randint(8, 64)
    cache = cf.KVCache(cfg, max_seq)
    assert (cache.layers, cache.heads, cache.head_dim, cache.max_seq, cache.length) == (
        cfg.layers, cfg.heads, cfg.head_dim, max_seq, 0)
    layer = random.randrange(cfg.layers)
    key_view = cache.keys(layer)
    keys = torch.from_dlpack(key_view)
    assert keys.shape == (cfg.heads, max_seq, cfg.head_dim) == key_view.shape
    assert keys.dtype == torch.float16 and keys.is_cuda and keys.data_ptr() == key_view.data_ptr
    value_view = cache.values(layer)
    values = torch.as_tensor(value_view, device="cuda")  # through __cuda_array_interface__
    assert values.shape == keys.shape and values.dtype == torch.float16
    assert values.data_ptr() == value_view.data_ptr != keys.data_ptr()
    noise = torch.randn_like(keys)
    keys.copy_(noise)
    assert torch.equal(torch.from_dlpack(cache.keys(layer)), noise)  # a second view sees the write
    assert torch.from_dlpack(cache.keys((layer + 1) % cfg.layers)).abs().sum() == 0  # other layers: untouched
    with pytest.raises(IndexError, match=rf"layer {cfg.layers} is outside 0\.\.{cfg.layers - 1}"):
        cache.keys(cfg.layers)
    with pytest.raises(IndexError, match=r"past max_seq"):
        cache.length = max_seq + 1
    cache.length = max_seq
    cache.reset()
    assert cache.length == 0
    del cache
    gc.collect()
    torch.cuda.synchronize()
    assert torch.equal(keys, noise)  # the view keeps the cache alive


def gpu_layer_case(cfg):
    """A layer built from temporaries (nothing else references its tensors) and the float64 copies of its
    weights for the reference."""
    w16 = torch_weights(cfg, "cuda")
    w64 = {name: t.double().cpu().numpy() for name, t in w16.items()}
    max_seq = random.randint(16, 64)
    layer = cf.DecoderLayer(cfg, max_seq, **w16)
    del w16
    gc.collect()
    torch.cuda.empty_cache()
    torch.randn(64 << 20, device="cuda")  # reuse any freed memory, to catch a dropped weight
    return layer, w64, max_seq


def step_buffers(cfg):
    x = torch.randn(cfg.hidden, device="cuda").half()
    attn = torch.empty(cfg.hidden, device="cuda")
    mlp_act = torch.empty(cfg.ffn, device="cuda")
    return x, torch.empty_like(x), attn, mlp_act


@pytest.mark.gpu
@needs_torch
@pytest.mark.parametrize("mode", ["split", "cooperative"])
def test_layer_matches_the_reference_and_keeps_its_weights_alive(mode):
    cfg = small_config()
    layer, w64, max_seq = gpu_layer_case(cfg)
    if mode == "cooperative" and not layer.plan["cooperative_supported"]:
        pytest.skip(f"cooperative mode does not fit this device for {cfg}")
    cache = cf.KVCache(cfg, max_seq)
    index, position = random.randrange(cfg.layers), random.randrange(max_seq)
    fill_past(cache, index, position)
    x, out, attn, mlp_act = step_buffers(cfg)
    k_past, v_past = cache_past(cache, index, position)

    layer.forward(cache, index, x, out, attn, mlp_act, position, mode=mode)
    torch.cuda.synchronize()

    want = cf.reference_neox_layer(cfg, w64, x.double().cpu().numpy(), k_past, v_past, position)
    assert cache.length == position + 1
    keys, values = cache_past(cache, index, position + 1)
    assert rel_err(keys[:, position], want["k"]) < 5e-3
    assert rel_err(values[:, position], want["v"]) < 5e-3
    assert rel_err(attn.cpu(), want["attn"]) < 5e-3
    assert rel_err(mlp_act.cpu(), want["mlp_act"]) < 5e-3
    assert rel_err(out.double().cpu(), want["out"]) < 5e-3


@pytest.mark.gpu
@needs_torch
def test_the_phases_are_forward_one_call_each():
    cfg = small_config()
    layer, _, max_seq = gpu_layer_case(cfg)
    assert layer.phase_names == ["norm_qkv_rope_attend_up", "o_down_proj_residual"]
    assert len(layer.plan["phase_grids"]) == len(layer.phase_names)
    # GPT-NeoX's phases all run on the layer's clusters, one attention chunk per rank and per helper, each list's own K
    # chunks.
    for grid in layer.plan["phase_grids"]:
        assert (grid["cluster_size"], grid["blocks"]) == (layer.plan["cluster_size"], layer.plan["blocks"])
        assert grid["smem"] > 0
    chunks = layer.plan["cluster_size"] + layer.plan["attention_helpers"]
    assert (layer.plan["attention_chunks"], layer.plan["qkv_chunks"]) == (chunks, 0)
    position = random.randrange(max_seq)
    caches = [cf.KVCache(cfg, max_seq) for _ in range(2)]
    fill_past(caches[0], 0, position)
    for view in ("keys", "values"):
        torch.from_dlpack(getattr(caches[1], view)(0)).copy_(torch.from_dlpack(getattr(caches[0], view)(0)))
    caches[1].length = position
    x, out, attn, mlp_act = step_buffers(cfg)
    layer.forward(caches[0], 0, x, out, attn, mlp_act, position)
    x2, out2, attn2, mlp_act2 = x.clone(), torch.empty_like(out), torch.empty_like(attn), torch.empty_like(mlp_act)
    for phase in range(len(layer.phase_names)):
        layer.run_phase(caches[1], 0, phase, x2, out2, attn2, mlp_act2, position)
    torch.cuda.synchronize()
    assert caches[1].length == position + 1
    assert torch.equal(attn, attn2) and torch.equal(mlp_act, mlp_act2) and torch.equal(out, out2)


@pytest.mark.gpu
@needs_torch
def test_layer_step_argument_errors():
    cfg = small_config()
    layer, _, max_seq = gpu_layer_case(cfg)
    cache = cf.KVCache(cfg, max_seq)
    x, out, attn, mlp_act = step_buffers(cfg)
    h, f = cfg.hidden, cfg.ffn
    with pytest.raises(TypeError, match=r"^x: expected float16, got float32$"):
        layer.forward(cache, 0, x.float(), out, attn, mlp_act, 0)
    with pytest.raises(TypeError, match=r"^attn: expected float32, got float16$"):
        layer.forward(cache, 0, x, out, attn.half(), mlp_act, 0)
    with pytest.raises(ValueError, match=rf"^mlp_act: expected shape \[{f}\], got \[{h}\]$"):
        layer.forward(cache, 0, x, out, attn, attn, 0)
    with pytest.raises(ValueError, match=r"^out: expected a data pointer aligned to 16 bytes"):
        layer.forward(cache, 0, x, misaligned_half(h, "cuda"), attn, mlp_act, 0)
    with pytest.raises(TypeError, match=r"^x: expected a CUDA tensor, got cpu$"):
        layer.forward(cache, 0, x.cpu(), out, attn, mlp_act, 0)
    with pytest.raises(ValueError, match=r"^mode: expected \"split\" or \"cooperative\", got \"fast\""):
        layer.forward(cache, 0, x, out, attn, mlp_act, 0, mode="fast")
    with pytest.raises(IndexError, match=r"position 1 is past length 0"):
        layer.forward(cache, 0, x, out, attn, mlp_act, 1)
    with pytest.raises(IndexError, match=rf"layer {cfg.layers} is outside"):
        layer.forward(cache, cfg.layers, x, out, attn, mlp_act, 0)
    with pytest.raises(IndexError, match=r"^phase: expected 0\.\.1, got 2$"):
        layer.run_phase(cache, 0, 2, x, out, attn, mlp_act, 0)
    with pytest.raises(IndexError, match=r"^phase: expected 0\.\.1, got -1$"):
        layer.run_phase(cache, 0, -1, x, out, attn, mlp_act, 0)
    assert cache.length == 0  # nothing ran
    w = torch_weights(cfg, "cuda")
    w["w_up"] = w["w_up"].T.contiguous()
    with pytest.raises(ValueError, match=rf"^w_up: expected shape \[{f}, {h}\], got \[{h}, {f}\]$"):
        cf.DecoderLayer(cfg, max_seq, **w)


@pytest.mark.gpu
@needs_transformers
def test_fused_layer_from_transformers_matches_the_reference(ref, f64_weights):
    cfg = small_config()
    hf = GPTNeoXConfig(hidden_size=cfg.hidden, num_attention_heads=cfg.heads, intermediate_size=cfg.ffn,
                       num_hidden_layers=1, vocab_size=cfg.vocab, rotary_pct=0.25)
    hf_layer = hf_neox.GPTNeoXLayer(hf, layer_idx=0)
    with torch.no_grad():
        for name, p in hf_layer.named_parameters():
            p.normal_(1.0 if name.endswith("layernorm.weight") else 0.0, 0.02)
    hf_layer = hf_layer.half().cuda()
    fused = cf.FusedLayer.from_transformers(hf_layer, cf.config_from_transformers(hf), max_seq=16)
    cache = cf.KVCache(fused.config, 16)
    x = torch.randn(cfg.hidden, device="cuda").half()
    out = fused.forward(cache, 0, x, position=0)
    torch.cuda.synchronize()
    want = ref.neox_layer(ref.RefConfig.from_transformers(hf), f64_weights.layer(hf_layer, hf),
                          x.double().cpu().numpy(), np.zeros((cfg.heads, 0, cfg.head_dim)),
                          np.zeros((cfg.heads, 0, cfg.head_dim)), 0)
    assert rel_err(out.double().cpu(), want["out"]) < 5e-3
