"""clusterfusion.DecoderLayer on the GPU, for GPT-NeoX and Llama at real shapes: against the float64 reference
and against transformers' own float16 layer (GPTNeoXLayer, LlamaDecoderLayer), its phases alone, run-to-run
determinism in every mode, a 4096-position cache, and bad input.

Every test is marked `gpu` (skipped without a CUDA device). Layers get random weights at realistic scales;
the KV cache gets a random past (N(0, 1)) in positions < p, written through its DLPack views.
"""

import inspect
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402
from transformers.models.gpt_neox import modeling_gpt_neox as hf_neox  # noqa: E402
from transformers.models.llama import modeling_llama as hf_llama  # noqa: E402

pytestmark = pytest.mark.gpu

NEOX_SHAPES = ["pythia-2.8b", "pythia-6.9b"]
# The largest GPT-NeoX layers (0.63 and 0.91 GB of float16 weights): proj_residual holds only each rank's K slice of
# attn | act (the whole vectors did not fit in shared memory). "neox-80-heads" is pythia-12b's hidden and ffn in
# 80 heads of 64: more heads than an H100 or H200 holds clusters of two, so clusters of one block, whose
# proj_residual runs its K in two passes. Few positions: the rest is the same code as above.
BIG_NEOX_SHAPES = ["pythia-12b", "gpt-neox-20b", "neox-80-heads"]
SYNTHETIC_SHAPES = {"neox-80-heads": ("pythia-12b", 80)}  # name -> (embedded model, heads)
LLAMA_SHAPES = ["llama-2-7b", "tinyllama-1.1b", "llama-3-8b", "llama-3.2-1b"]
SHAPES = NEOX_SHAPES + BIG_NEOX_SHAPES + LLAMA_SHAPES
MAX_SEQ = 2048
POSITIONS = [0, 1, 2, 63, 64, 65, 127, 128, 511, 1000, 2047]
BIG_POSITIONS = [0, 777, 2047]
LLAMA_POSITIONS = [0, 1, 65, 300, 2047]  # the attention tiles and the cluster split are the same code as above
MODES = ["split", "cooperative"]
REL_TOL = 2e-3
HF_FACTOR = 1.5  # never worse than this many times transformers' own float16 error


@pytest.fixture(scope="module")
def cf():
    """The package, imported only once a test runs: it needs the compiled extension, which a machine without a
    GPU build may lack (the tests skip there before this runs)."""
    import clusterfusion

    return clusterfusion


class Family:
    """What differs between the architectures in these tests: transformers' classes and the reference."""

    def __init__(self, ref, llama):
        self.llama = llama
        self.layer_class = hf_llama.LlamaDecoderLayer if llama else hf_neox.GPTNeoXLayer
        self.rotary_class = hf_llama.LlamaRotaryEmbedding if llama else hf_neox.GPTNeoXRotaryEmbedding
        self.ref_config = (ref.LlamaRefConfig if llama else ref.RefConfig).from_transformers
        self.ref_layer = ref.llama_layer if llama else ref.neox_layer


def hf_config(shape):
    from clusterfusion.cli import hf_config_for

    model, heads = SYNTHETIC_SHAPES.get(shape, (shape, None))
    config = hf_config_for(model)
    if heads is not None:  # the same hidden in more, smaller heads (rotary_pct, hence a quarter of each, kept)
        config.num_attention_heads = heads
    config.num_hidden_layers = 1
    return config


@torch.no_grad()
def random_hf_layer(family, config, generator):
    """A float16 CUDA decoder layer: linear weights and biases N(0, 0.02), norm weights N(1, 0.1) and biases
    N(0, 0.05)."""
    with torch.device("meta"):  # skip transformers' own initialisation: every parameter is drawn below
        layer = family.layer_class(config, layer_idx=0).half()
    layer = layer.to_empty(device="cuda").eval()
    for name, param in layer.named_parameters():
        if "layernorm" in name:
            mean, std = (1.0, 0.1) if name.endswith("weight") else (0.0, 0.05)
        else:
            mean, std = 0.0, 0.02
        param.normal_(mean, std, generator=generator)
    return layer


class Setup:
    """One layer of a model shape: the transformers layer, the fused layer on the same memory, its float64
    weights, and a KV cache of MAX_SEQ positions."""

    def __init__(self, cf, ref, shape):
        from clusterfusion.weights import layer_weights

        # Its own seed (CF_TEST_SEED replays it), as module-scoped draws would otherwise depend on test order.
        self.seed = int(os.environ.get("CF_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
        generator = torch.Generator(device="cuda").manual_seed(self.seed)
        self.shape = shape
        self.family = Family(ref, shape in LLAMA_SHAPES)
        self.hf_config = hf_config(shape)
        self.ref_cfg = self.family.ref_config(self.hf_config)
        self.config = cf.config_from_transformers(self.hf_config)
        self.hf_layer = random_hf_layer(self.family, self.hf_config, generator)
        self.rotary = self.family.rotary_class(self.hf_config).to("cuda")
        self.ref_weights = layer_weights(self.hf_layer, self.config, convert=lambda t, name: f64(t))
        self.layer = cf.FusedLayer.from_transformers(self.hf_layer, self.config, MAX_SEQ).kernel
        self.cache = cf.KVCache(self.config, MAX_SEQ)

    def __repr__(self):
        return f"{self.shape} (setup seed {self.seed})"


@pytest.fixture(scope="module")
def setup(request, cf, ref):
    """Parametrized indirectly with a shape name; built once per module and shape."""
    return Setup(cf, ref, request.param)


def stream():
    return torch.cuda.current_stream().cuda_stream


def cache_views(cache, layer=0):
    return torch.from_dlpack(cache.keys(layer)), torch.from_dlpack(cache.values(layer))


def fill_past(cache, position):
    """Random keys and values N(0, 1) in positions < position of layer 0; the cache then holds exactly those."""
    keys, values = cache_views(cache)
    keys[:, :position].normal_()
    values[:, :position].normal_()
    cache.length = position
    return keys[:, :position].clone(), values[:, :position].clone()


def nan_buffers(config):
    """out, attn, mlp_act, h1 poisoned with NaN, so an element a kernel leaves unwritten cannot pass."""
    nan = float("nan")
    return (torch.full((config.hidden,), nan, dtype=torch.float16, device="cuda"),
            torch.full((config.hidden,), nan, dtype=torch.float32, device="cuda"),
            torch.full((config.ffn,), nan, dtype=torch.float32, device="cuda"),
            torch.full((config.hidden,), nan, dtype=torch.float16, device="cuda"))


def random_x(config):
    return torch.randn(config.hidden, device="cuda").half()


def run_forward(layer, cache, x, position, mode):
    """out, attn, mlp_act and h1 (None for a parallel residual) of one step."""
    out, attn, mlp_act, h1 = nan_buffers(layer.config)
    layer.forward(cache, 0, x, out, attn, mlp_act, position, mode=mode, h1=h1, stream=stream())
    torch.cuda.synchronize()
    written = dict(out=out, attn=attn, mlp_act=mlp_act)
    if not layer.config.parallel_residual:
        written["h1"] = h1
    for name, tensor in written.items():
        assert torch.isfinite(tensor).all(), f"{mode}: {name} has non-finite elements"
    return out, attn, mlp_act, written.get("h1")


def appended_kv(cache, position):
    keys, values = cache_views(cache)
    return keys[:, position].clone(), values[:, position].clone()


def f64(tensor):
    return tensor.detach().double().cpu().numpy()


def rel_err(actual, expected):
    """‖actual − expected‖ / ‖expected‖ over all elements (float64)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def reference_step(ref, s, x, past_k, past_v, position):
    """The float64 reference's out, attn, mlp_act, k, v (and h1 for Llama)."""
    expected = s.family.ref_layer(s.ref_cfg, s.ref_weights, f64(x), f64(past_k), f64(past_v), position)
    if "act" in expected:
        expected["mlp_act"] = expected.pop("act")
    return expected


def _cache_keyword(layer):
    """The name the layer's forward gives its cache argument (transformers renamed it over 5.x)."""
    parameters = inspect.signature(layer.forward).parameters
    return next(name for name in ("layer_past", "past_key_values", "cache") if name in parameters)


@torch.no_grad()
def transformers_step(s, x, past_k, past_v, position):
    """transformers' own float16 layer for one token over a DynamicCache holding the same past:
    (out [hidden], k, v [kv_heads, head_dim] as it appends them)."""
    hf_cache = DynamicCache(config=s.hf_config)
    if position > 0:
        hf_cache.update(past_k[None], past_v[None], layer_idx=0)
    hidden = x.reshape(1, 1, -1)
    position_ids = torch.tensor([[position]], device="cuda")
    cos_sin = s.rotary(hidden, position_ids)  # float32 angles, cast to float16, as the model does
    out = s.hf_layer(hidden, use_cache=True, position_ids=position_ids, position_embeddings=cos_sin,
                     cache_position=position_ids[0], **{_cache_keyword(s.hf_layer): hf_cache})
    out = out[0] if isinstance(out, tuple) else out
    keys, values = hf_cache.layers[0].keys, hf_cache.layers[0].values  # [1, kv_heads, position + 1, head_dim]
    assert keys.shape[2] == position + 1
    return out.reshape(-1), keys[0, :, position], values[0, :, position]


def errors_vs_reference(expected, x, out, k, v):
    """Relative errors of the layer's update out − x and of the appended k and v."""
    x64 = f64(x)
    return dict(out=rel_err(f64(out) - x64, expected["out"] - x64), k=rel_err(f64(k), expected["k"]),
                v=rel_err(f64(v), expected["v"]))


def check_step(ref, s, layer, cache, position):
    """Both modes at `position` against the float64 reference (≤ REL_TOL) and against transformers' float16
    layer on the same inputs (≤ HF_FACTOR times its error)."""
    past_k, past_v = fill_past(cache, position)
    x = random_x(s.config)
    expected = reference_step(ref, s, x, past_k, past_v, position)
    hf_errors = errors_vs_reference(expected, x, *transformers_step(s, x, past_k, past_v, position))
    for mode in MODES:
        out = run_forward(layer, cache, x, position, mode)[0]
        assert cache.length == position + 1
        errors = errors_vs_reference(expected, x, out, *appended_kv(cache, position))
        for name, err in errors.items():
            context = f"{s} position {position} {mode} {name}: {err:.3g} (transformers float16: {hf_errors[name]:.3g})"
            assert err <= REL_TOL, context
            assert err <= HF_FACTOR * hf_errors[name], context


@pytest.mark.parametrize("setup, position",
                         [(shape, p) for shape in NEOX_SHAPES for p in POSITIONS] +
                         [(shape, p) for shape in BIG_NEOX_SHAPES for p in BIG_POSITIONS] +
                         [(shape, p) for shape in LLAMA_SHAPES for p in LLAMA_POSITIONS], indirect=["setup"])
def test_layer_matches_reference_within_transformers_error(ref, setup, position):
    check_step(ref, setup, setup.layer, setup.cache, position)


@pytest.mark.parametrize("position", [1, 1000])
@pytest.mark.parametrize("setup", list(SHAPES), indirect=True)
def test_phases_alone_match_reference_and_forward(ref, setup, position):
    """Each phase alone (run_phase, in order) leaves bit for bit what forward leaves: attn and mlp_act (against
    the reference too), h1 and out."""
    s, layer, cache = setup, setup.layer, setup.cache
    past_k, past_v = fill_past(cache, position)
    x = random_x(s.config)
    expected = reference_step(ref, s, x, past_k, past_v, position)
    forward = run_forward(layer, cache, x, position, "split")

    out, attn, mlp_act, h1 = nan_buffers(s.config)
    keys, values = cache_views(cache)
    keys[:, :position], values[:, :position] = past_k, past_v  # the same past again (forward appended to it)
    cache.length = position
    for phase, name in enumerate(layer.phase_names):
        layer.run_phase(cache, 0, phase, x, out, attn, mlp_act, position, h1=h1, stream=stream())
        torch.cuda.synchronize()
        if "attend" in name:
            assert cache.length == position + 1, name
            assert rel_err(f64(attn), expected["attn"]) <= REL_TOL, s
            assert torch.equal(attn, forward[1]), f"{s}: {name} alone differs"
    assert rel_err(f64(mlp_act), expected["mlp_act"]) <= REL_TOL, s
    assert torch.equal(mlp_act, forward[2]), f"{s}: mlp_act of the phases alone differs"
    if forward[3] is not None:
        # h1 is stored in float16 like x, so its update (W_o attn, small beside x) carries x's rounding: each
        # element within half a float16 ulp of the exact h1 plus REL_TOL of the update's largest element.
        exact, update = expected["h1"], expected["h1"] - f64(x)
        bound = np.abs(exact) * 2.0**-11 + REL_TOL * np.abs(update).max()
        assert (np.abs(f64(h1) - exact) <= bound).all(), s
        assert torch.equal(h1.view(torch.int16), forward[3].view(torch.int16)), s
    assert torch.equal(out.view(torch.int16), forward[0].view(torch.int16)), s


def cache_bits(cache):
    keys, values = cache_views(cache)
    return keys.view(torch.int16).clone(), values.view(torch.int16).clone()


@pytest.mark.parametrize("setup", list(SHAPES), indirect=True)
def test_modes_are_deterministic_and_identical(setup):
    """50 runs of each mode, launched the ordinary way and overlapping the previous kernel, give the same bits
    (out and the whole cache layer); all four agree."""
    s, layer, cache = setup, setup.layer, setup.cache
    assert layer.overlap_previous_kernel is False
    position = 777  # splits unevenly over a cluster and over the attention tiles
    fill_past(cache, position)
    x = random_x(s.config)
    results = {}
    try:
        for mode in MODES:
            for overlap in (False, True):
                layer.overlap_previous_kernel = overlap
                first_out, first_cache = None, None
                for run in range(50):
                    out = run_forward(layer, cache, x, position, mode)[0]
                    bits = out.view(torch.int16).clone(), cache_bits(cache)
                    if first_out is None:
                        first_out, first_cache = bits
                        continue
                    assert torch.equal(bits[0], first_out), f"{s} {mode} overlap={overlap}: out differs on run {run}"
                    same_cache = all(torch.equal(a, b) for a, b in zip(bits[1], first_cache))
                    assert same_cache, f"{s} {mode} overlap={overlap}: cache differs on run {run}"
                results[mode, overlap] = first_out, first_cache
    finally:
        layer.overlap_previous_kernel = False
    (first_key, first), *others = results.items()
    for key, other in others:
        assert torch.equal(first[0], other[0]), f"{s}: out of {key} differs from {first_key}"
        assert all(torch.equal(a, b) for a, b in zip(first[1], other[1])), f"{s}: cache of {key} differs from {first_key}"


@pytest.mark.parametrize("setup", ["neox-80-heads"], indirect=True)
def test_80_heads_run_in_clusters_of_one_block(setup):
    """The shape above that exercises proj_residual's two passes does get clusters of one block (more heads than
    the device holds clusters of two), at least one per head."""
    plan = setup.layer.plan
    assert plan["cluster_size"] == 1, plan
    assert plan["blocks"] >= setup.config.heads, plan


@pytest.mark.parametrize("setup", ["pythia-2.8b", "tinyllama-1.1b"], indirect=True)
def test_cache_of_4096_positions(cf, ref, setup):
    """Past transformers' 2048 positions: a layer and cache of 4096, the last position."""
    long_seq = 4096
    layer = cf.FusedLayer.from_transformers(setup.hf_layer, setup.config, long_seq).kernel
    cache = cf.KVCache(setup.config, long_seq)
    check_step(ref, setup, layer, cache, long_seq - 1)


# --- Bad input: a clear exception naming the argument, and the cache left as it was. ---

def assert_cache_unchanged(cache, before_bits, before_length):
    assert cache.length == before_length
    after = cache_bits(cache)
    assert all(torch.equal(a, b) for a, b in zip(after, before_bits)), "the cache bytes changed"


def step_args(config):
    """Valid step buffers: x (random), out, attn, mlp_act, h1."""
    out, attn, mlp_act, h1 = nan_buffers(config)
    return dict(x=random_x(config), out=out, attn=attn, mlp_act=mlp_act, h1=h1)


def misaligned(tensor):
    """A view of the same shape and dtype one element past a 16-byte boundary."""
    buffer = torch.empty(tensor.numel() + 16, dtype=tensor.dtype, device=tensor.device)
    return buffer[1:tensor.numel() + 1]


def strided(tensor):
    """A view of the same shape and dtype with stride 2 (not contiguous)."""
    return torch.empty(2 * tensor.numel(), dtype=tensor.dtype, device=tensor.device)[::2]


# name -> (argument to replace, how, expected exception, message pattern)
BAD_STEP_ARGS = {
    "x_wrong_shape": ("x", lambda t: torch.empty(t.numel() + 8, dtype=t.dtype, device=t.device), ValueError,
                      r"x: expected shape \["),
    "x_2d": ("x", lambda t: t.reshape(1, -1), ValueError, r"x: expected shape \["),
    "x_float32": ("x", lambda t: t.float(), TypeError, "x: expected float16, got float32"),
    "x_on_cpu": ("x", lambda t: t.cpu(), TypeError, "x: expected a CUDA tensor, got cpu"),
    "x_not_contiguous": ("x", strided, ValueError, "x: expected a contiguous tensor"),
    "x_misaligned": ("x", misaligned, ValueError, "x: expected a data pointer aligned to 16 bytes"),
    "out_float32": ("out", lambda t: t.float(), TypeError, "out: expected float16, got float32"),
    "out_on_cpu": ("out", lambda t: t.cpu(), TypeError, "out: expected a CUDA tensor, got cpu"),
    "attn_float16": ("attn", lambda t: t.half(), TypeError, "attn: expected float32, got float16"),
    "attn_misaligned": ("attn", misaligned, ValueError, "attn: expected a data pointer aligned to 16 bytes"),
    "mlp_act_wrong_shape": ("mlp_act", lambda t: t[:-4], ValueError, r"mlp_act: expected shape \["),
    "mlp_act_misaligned": ("mlp_act", misaligned, ValueError, "mlp_act: expected a data pointer aligned to 16 bytes"),
    "h1_float32": ("h1", lambda t: t.float(), TypeError, "h1: expected float16, got float32"),
    "h1_missing": ("h1", lambda t: None, TypeError, "h1"),
}


@pytest.mark.parametrize("case", list(BAD_STEP_ARGS))
@pytest.mark.parametrize("setup", ["pythia-2.8b", "tinyllama-1.1b"], indirect=True)
def test_bad_step_buffer_raises_and_leaves_cache(setup, case):
    argument, make_bad, error, pattern = BAD_STEP_ARGS[case]
    if argument == "h1" and setup.config.parallel_residual:
        pytest.skip("GPT-NeoX has no h1")
    position = 100
    fill_past(setup.cache, position)
    before = cache_bits(setup.cache)
    args = step_args(setup.config)
    args[argument] = make_bad(args[argument])
    for mode in MODES:
        with pytest.raises(error, match=pattern):
            setup.layer.forward(setup.cache, 0, args["x"], args["out"], args["attn"], args["mlp_act"], position,
                                mode=mode, h1=args["h1"], stream=stream())
    with pytest.raises(error, match=pattern):
        setup.layer.run_phase(setup.cache, 0, 0, args["x"], args["out"], args["attn"], args["mlp_act"], position,
                              h1=args["h1"], stream=stream())
    torch.cuda.synchronize()
    assert_cache_unchanged(setup.cache, before, position)


@pytest.mark.parametrize("setup", ["pythia-2.8b"], indirect=True)
def test_bad_position_raises_index_error_and_leaves_cache(setup):
    cache, layer = setup.cache, setup.layer
    args = step_args(setup.config)
    call = dict(x=args["x"], out=args["out"], attn=args["attn"], mlp_act=args["mlp_act"], stream=stream())

    fill_past(cache, MAX_SEQ)  # full: the next position would be max_seq itself
    before = cache_bits(cache)
    for mode in MODES:
        with pytest.raises(IndexError, match=f"position {MAX_SEQ} is past max_seq {MAX_SEQ}"):
            layer.forward(cache, 0, position=MAX_SEQ, mode=mode, **call)
    torch.cuda.synchronize()
    assert_cache_unchanged(cache, before, MAX_SEQ)

    fill_past(cache, 10)
    before = cache_bits(cache)
    for mode in MODES:
        with pytest.raises(IndexError, match="position 11 is past length 10"):
            layer.forward(cache, 0, position=11, mode=mode, **call)
    with pytest.raises(IndexError, match="position 11 is past length 10"):
        layer.run_phase(cache, 0, 0, position=11, **call)
    torch.cuda.synchronize()
    assert_cache_unchanged(cache, before, 10)


@pytest.mark.parametrize("setup", ["pythia-2.8b"], indirect=True)
def test_unknown_mode_raises_value_error_and_leaves_cache(setup):
    position = 5
    fill_past(setup.cache, position)
    before = cache_bits(setup.cache)
    args = step_args(setup.config)
    with pytest.raises(ValueError, match='mode: expected "split" or "cooperative", got "fast"'):
        setup.layer.forward(setup.cache, 0, args["x"], args["out"], args["attn"], args["mlp_act"], position,
                            mode="fast", stream=stream())
    torch.cuda.synchronize()
    assert_cache_unchanged(setup.cache, before, position)


def layer_weights(setup):
    """DecoderLayer's keyword arguments from the setup's transformers layer (detached views)."""
    from clusterfusion.weights import layer_weights as schema_weights

    return schema_weights(setup.hf_layer, setup.config)


@pytest.mark.parametrize("weight", ["w_up", "ln1_weight"])
@pytest.mark.parametrize("dtype, name", [pytest.param(torch.float32, "float32", id="float32"),
                                         pytest.param(torch.bfloat16, "bfloat16", id="bfloat16")])
@pytest.mark.parametrize("setup", ["pythia-2.8b"], indirect=True)
def test_weights_of_another_dtype_are_refused(cf, setup, weight, dtype, name):
    weights = layer_weights(setup)
    weights[weight] = weights[weight].to(dtype)
    with pytest.raises(TypeError, match=f"{weight}: expected float16, got {name}"):
        cf.DecoderLayer(setup.config, MAX_SEQ, **weights)


@pytest.mark.parametrize("setup", ["pythia-2.8b"], indirect=True)
def test_cpu_weights_are_refused(cf, setup):
    weights = layer_weights(setup)
    weights["w_qkv"] = weights["w_qkv"].cpu()
    with pytest.raises(TypeError, match="w_qkv: expected a CUDA tensor, got cpu"):
        cf.DecoderLayer(setup.config, MAX_SEQ, **weights)


@pytest.mark.parametrize("setup", ["tinyllama-1.1b"], indirect=True)
def test_llama_weight_errors_name_the_tensor(cf, setup):
    """A bias Llama does not have, a missing matrix, and k_proj of the query heads' shape are refused by name."""
    weights = layer_weights(setup)
    with pytest.raises(ValueError, match=r"b_o: not a weight of Llama"):
        cf.DecoderLayer(setup.config, MAX_SEQ, b_o=weights["ln1_weight"], **weights)
    missing = dict(weights)
    del missing["w_gate"]
    with pytest.raises(ValueError, match=r"w_gate: missing"):
        cf.DecoderLayer(setup.config, MAX_SEQ, **missing)
    wrong = dict(weights, w_k=weights["w_q"])
    with pytest.raises(ValueError, match=r"w_k: expected shape \[256, 2048\]"):
        cf.DecoderLayer(setup.config, MAX_SEQ, **wrong)


def test_unsupported_head_dim_is_refused(cf):
    """head_dim 72 (32 heads of a 2304 hidden): valid for the config, not compiled into the kernels. hidden is a
    multiple of 256 so that the TMA box check, which comes first, passes."""
    hidden, ffn = 2304, 9216
    config = cf.ModelConfig(hidden=hidden, heads=32, head_dim=72, ffn=ffn, layers=1, vocab=50304, rotary_dims=18)
    config.validate()

    def weight(*shape):
        return torch.randn(*shape, device="cuda").mul_(0.02).half()

    weights = dict(ln1_weight=weight(hidden), ln1_bias=weight(hidden), ln2_weight=weight(hidden),
                   ln2_bias=weight(hidden), w_qkv=weight(3 * hidden, hidden), b_qkv=weight(3 * hidden),
                   w_o=weight(hidden, hidden), b_o=weight(hidden), w_up=weight(ffn, hidden), b_up=weight(ffn),
                   w_down=weight(hidden, ffn), b_down=weight(hidden))
    with pytest.raises(ValueError, match="head_dim: 72 is not supported"):
        cf.DecoderLayer(config, MAX_SEQ, **weights)


# ---- down_residual: the seeds' MLP-only op -----------------------------------------------------------------------

@pytest.mark.parametrize("setup", NEOX_SHAPES + BIG_NEOX_SHAPES, indirect=True)
def test_down_residual_matches_the_float64_formula(setup):
    """out = x + attn_output + W_down mlp_act + b_down (attn_output computed elsewhere, through W_o already),
    against float64; repeatable bit for bit, and the same bits when out is x or attn_output."""
    s, c = setup, setup.config
    x = random_x(c)
    attn_output = (0.5 * torch.randn(c.hidden, device="cuda")).half()
    mlp_act = torch.randn(c.ffn, device="cuda")
    out = torch.full((c.hidden,), float("nan"), dtype=torch.float16, device="cuda")
    s.layer.down_residual(x, attn_output, mlp_act, out, stream=stream())
    torch.cuda.synchronize()
    w = s.ref_weights
    update = w["w_down"] @ f64(mlp_act) + w["b_down"]
    expected = f64(x) + f64(attn_output) + update
    assert rel_err(f64(out), expected) <= REL_TOL, s
    assert rel_err(f64(out) - f64(x) - f64(attn_output), update) <= REL_TOL, s
    again = torch.empty_like(out)
    s.layer.down_residual(x, attn_output, mlp_act, again, stream=stream())
    in_place_x, in_place_attn = x.clone(), attn_output.clone()
    s.layer.down_residual(in_place_x, attn_output, mlp_act, in_place_x, stream=stream())
    s.layer.down_residual(x, in_place_attn, mlp_act, in_place_attn, stream=stream())
    torch.cuda.synchronize()
    for other in (again, in_place_x, in_place_attn):
        assert torch.equal(other, out), s


@pytest.mark.parametrize("setup", ["tinyllama-1.1b"], indirect=True)
def test_down_residual_is_gpt_neox_only(setup):
    c = setup.config
    x = random_x(c)
    with pytest.raises(ValueError, match="down_residual: GPT-NeoX"):
        setup.layer.down_residual(x, x, torch.zeros(c.ffn, device="cuda"), torch.empty_like(x))
