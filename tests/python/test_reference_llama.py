"""The float64 Llama reference (python/clusterfusion/reference.py) against transformers' Llama, in float64 on the CPU.

transformers computes rotary cos/sin in float32, eager attention's softmax in float32, and LlamaRMSNorm in float32
even for float64 input (it casts to float32 and back), which would hide float64-level errors. So the layer and model
comparisons give transformers float64 cos/sin (from the reference's inv_freq), float64 RMSNorm drop-ins and SDPA
attention (float64 throughout); test_inv_freq_matches_transformers, test_rotary_matches_transformers and
test_rms_norm_matches_transformers check transformers' own float32 pieces separately.

The layer and model tests run at the four real shapes; each shape's randomized model is built once (module-scoped
fixture) and its first layer serves the layer tests. The vocab is reduced where float64 embeddings would be large.
"""

import inspect
import types
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama as hf_llama

LLAMA3_8B_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192)
LLAMA32_ROPE = dict(LLAMA3_8B_ROPE, factor=32.0)
SHAPES = {
    "llama-2-7b": dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                       vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0, rope_scaling=None,
                       tie_word_embeddings=False),
    "tinyllama-1.1b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, intermediate_size=5632,
                           vocab_size=32000, max_position_embeddings=2048, rope_theta=10000.0, rope_scaling=None,
                           tie_word_embeddings=False),
    # The llama3 rope (factor 8) is Llama-3.1-8B's, and so are its 131072 positions (Llama-3-8B: default rope, 8192).
    "llama-3-8b": dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                       vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                       rope_scaling=LLAMA3_8B_ROPE, tie_word_embeddings=False),
    "llama-3.2-1b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192,
                         vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                         rope_scaling=LLAMA32_ROPE, tie_word_embeddings=True),
}
# The model test's vocab and depth: float64 [vocab, hidden] tables of the real vocab would be 1-4 GB per shape
# (TinyLlama's is 0.5 GB and kept); two layers where a layer is small (hidden 2048).
MODEL_VOCAB = {"llama-2-7b": 4096, "tinyllama-1.1b": 32000, "llama-3-8b": 4096, "llama-3.2-1b": 4096}
MODEL_LAYERS = {"llama-2-7b": 1, "tinyllama-1.1b": 2, "llama-3-8b": 1, "llama-3.2-1b": 2}
RTOL = 1e-10  # float64 vs float64: only summation order differs


def llama_config(shape, layers, vocab=None, **overrides):
    """A transformers LlamaConfig of a real shape. rope_theta / rope_scaling are given the 4.x way, which 5.x turns
    into rope_parameters."""
    kwargs = dict(SHAPES[shape], num_hidden_layers=layers, rms_norm_eps=1e-5, hidden_act="silu")
    if kwargs["rope_scaling"] is not None:
        kwargs["rope_scaling"] = dict(kwargs["rope_scaling"])  # LlamaConfig adds rope_theta to the dict it is given
    if vocab is not None:
        kwargs["vocab_size"] = vocab
    kwargs.update(overrides)
    config = LlamaConfig(**kwargs)
    config._attn_implementation = "sdpa"  # eager attention rounds the softmax to float32
    return config


def cache_kwarg(fn):
    """transformers 5.24 renamed the cache argument past_key_values -> cache (the old name is deprecated)."""
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


def fill_(param, rng, mean, std):
    array = param.detach().numpy()  # shares memory; numpy's generator is faster than torch's normal_
    rng.standard_normal(out=array)
    array *= std
    array += mean


@torch.no_grad()
def randomize(module, rng):
    """Realistic scales: linear and embedding weights ~N(0, 0.02), RMSNorm weights ~N(1, 0.1)."""
    for sub in module.modules():
        if isinstance(sub, hf_llama.LlamaRMSNorm):
            fill_(sub.weight, rng, 1.0, 0.1)
        elif isinstance(sub, (torch.nn.Linear, torch.nn.Embedding)):
            for p in sub.parameters(recurse=False):
                fill_(p, rng, 0.0, 0.02)
    return module


class Float64Rope(torch.nn.Module):
    """Drop-in for LlamaModel.rotary_emb with cos/sin in float64, from the reference's inv_freq (which
    test_inv_freq_matches_transformers checks against transformers' own)."""

    def __init__(self, cfg):
        super().__init__()
        self.inv_freq = torch.from_numpy(cfg.inv_freq())

    def forward(self, x, position_ids):
        freqs = position_ids[..., None].to(torch.float64) * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


class Float64RMSNorm(torch.nn.Module):
    """Drop-in for LlamaRMSNorm that stays in float64 (LlamaRMSNorm computes in float32 whatever the input)."""

    def __init__(self, norm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.variance_epsilon

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def use_float64_norms(model):
    for name, module in list(model.named_modules()):
        if isinstance(module, hf_llama.LlamaRMSNorm):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, Float64RMSNorm(module))


def rel_err(actual, expected, name=None):
    """max |actual - expected| / max |expected|; printed when named (pytest -rP keeps the summaries)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    err = float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
    if name is not None:
        print(f"rel err {name}: {err:.1e}")
    return err


@pytest.fixture(scope="module", params=list(SHAPES))
def shape_model(request, ref, f64_weights):
    """A randomized float64 LlamaForCausalLM of one real shape (MODEL_LAYERS layers, MODEL_VOCAB vocab) with
    float64 rope and RMSNorm, its LlamaRefConfig and its weights. Deterministic per shape (the weights' seed is the
    shape's name); the tests' inputs follow CF_TEST_SEED."""
    shape = request.param
    config = llama_config(shape, layers=MODEL_LAYERS[shape], vocab=MODEL_VOCAB[shape])
    cfg = ref.LlamaRefConfig.from_transformers(config)
    with torch.device("meta"):  # skip transformers' own initialisation: randomize() overwrites every parameter
        model = LlamaForCausalLM(config).double()
    model = model.to_empty(device="cpu")
    if config.tie_word_embeddings:
        model.tie_weights()  # to_empty gives the tied parameter two storages
        assert model.lm_head.weight is model.model.embed_tokens.weight
    model = randomize(model, np.random.default_rng(zlib.crc32(shape.encode()))).eval()
    model.model.rotary_emb = Float64Rope(cfg)
    use_float64_norms(model)
    return types.SimpleNamespace(shape=shape, config=config, cfg=cfg, model=model,
                                 weights=f64_weights.model(model))


def test_llama_ref_config_from_transformers(ref):
    cfg = ref.LlamaRefConfig.from_transformers(llama_config("llama-3-8b", layers=32))
    assert cfg == ref.LlamaRefConfig(hidden=4096, heads=32, kv_heads=8, head_dim=128, ffn=14336, layers=32,
                                     vocab=128256, rope_theta=500000.0,
                                     rope_scaling=tuple(sorted(LLAMA3_8B_ROPE.items())), norm_eps=1e-5)
    hash(cfg)
    cfg = ref.LlamaRefConfig.from_transformers(llama_config("tinyllama-1.1b", layers=22))
    assert cfg == ref.LlamaRefConfig(hidden=2048, heads=32, kv_heads=4, head_dim=64, ffn=5632, layers=22,
                                     vocab=32000, rope_theta=10000.0, rope_scaling=(), norm_eps=1e-5)
    # transformers 4.x kept rope_theta and rope_scaling (with "type" in old checkpoints) as attributes.
    old = types.SimpleNamespace(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                intermediate_size=8192, num_hidden_layers=16, vocab_size=128256, hidden_act="silu",
                                rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=dict(LLAMA32_ROPE))
    assert "rope_theta" not in LLAMA32_ROPE
    new = ref.LlamaRefConfig.from_transformers(llama_config("llama-3.2-1b", layers=16))
    assert ref.LlamaRefConfig.from_transformers(old) == new
    old.rope_scaling = dict(type="linear", factor=2.0)
    assert ref.LlamaRefConfig.from_transformers(old).rope_scaling == (("factor", 2.0), ("rope_type", "linear"))
    old.rope_scaling = None
    assert ref.LlamaRefConfig.from_transformers(old).rope_scaling == ()


@pytest.mark.parametrize("field, value", [("attention_bias", True), ("mlp_bias", True), ("hidden_act", "gelu"),
                                          ("num_key_value_heads", 5)])
def test_llama_ref_config_refuses(ref, field, value):
    config = types.SimpleNamespace(**SHAPES["tinyllama-1.1b"], num_hidden_layers=1, rms_norm_eps=1e-5,
                                   hidden_act="silu", attention_bias=False, mlp_bias=False)
    ref.LlamaRefConfig.from_transformers(config)  # accepted as it is
    setattr(config, field, value)
    with pytest.raises(ValueError, match=rf"^hf_config\.{field}:"):
        ref.LlamaRefConfig.from_transformers(config)


def test_llama_ref_config_refuses_yarn(ref):
    config = llama_config("llama-3-8b", layers=1, rope_scaling=dict(rope_type="yarn", factor=4.0,
                                                                     original_max_position_embeddings=8192))
    with pytest.raises(ValueError, match=r"^rope_scaling.*'yarn'"):
        ref.LlamaRefConfig.from_transformers(config)


@pytest.mark.parametrize("rope_type", ["yarn", "longrope", "dynamic", "proportional"])
def test_rope_inv_freq_refuses_other_types(ref, rope_type):
    with pytest.raises(ValueError, match=rf"^rope_scaling.*'{rope_type}'"):
        ref.rope_inv_freq(128, 10000.0, dict(rope_type=rope_type, factor=4.0))
    with pytest.raises(ValueError, match=rf"^rope_scaling.*'{rope_type}'"):
        ref.LlamaRefConfig(hidden=256, heads=4, kv_heads=2, head_dim=64, ffn=512, layers=1, vocab=16,
                           rope_scaling=(("factor", 4.0), ("rope_type", rope_type)))


ROPES = {  # name: (head_dim, rope_theta, rope scaling dict, max_position_embeddings)
    "default": (128, 10000.0, None, 4096),
    "default-d64": (64, 10000.0, None, 2048),
    "linear": (128, 10000.0, dict(rope_type="linear", factor=4.0), 16384),
    "llama3-8b": (128, 500000.0, LLAMA3_8B_ROPE, 131072),
    "llama3.2": (64, 500000.0, LLAMA32_ROPE, 131072),
}


def rope_config(name):
    head_dim, theta, scaling, max_positions = ROPES[name]
    return LlamaConfig(hidden_size=32 * head_dim, num_attention_heads=32, num_key_value_heads=8,
                       rope_theta=theta, rope_scaling=dict(scaling) if scaling else None,
                       max_position_embeddings=max_positions)


@pytest.mark.parametrize("name", list(ROPES))
def test_inv_freq_matches_transformers(ref, name):
    """The float64 table against transformers' own (float32) ROPE_INIT_FUNCTIONS / default rope."""
    config = rope_config(name)
    cfg = ref.LlamaRefConfig.from_transformers(config)
    rope_type = config.rope_parameters["rope_type"]
    init = (hf_llama.LlamaRotaryEmbedding.compute_default_rope_parameters if rope_type == "default"
            else transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS[rope_type])
    expected, attention_scaling = init(config)
    assert attention_scaling == 1.0  # a frequency-only rope type
    got = cfg.inv_freq()
    assert got.dtype == np.float64 and got.shape == (cfg.head_dim // 2,)
    err = np.max(np.abs(got - expected.double().numpy()) / got)
    print(f"inv_freq {name}: max elementwise rel err vs transformers (float32) {err:.1e}")
    assert err < 1e-6  # float32 rounding
    base = ref.rope_inv_freq(cfg.head_dim, cfg.rope_theta, None)
    if rope_type == "linear":
        assert np.allclose(got, base / 4.0, rtol=1e-15, atol=0)
    if rope_type == "llama3":  # the three regimes of the piecewise rule all occur at these shapes
        factor = dict(cfg.rope_scaling)["factor"]
        kept, divided = got == base, np.isclose(got, base / factor, rtol=1e-15, atol=0)
        assert kept.any() and divided.any() and (~kept & ~divided).any()


@pytest.mark.parametrize("name", list(ROPES))
@pytest.mark.parametrize("position", [0, 1, 300, 8191])
def test_rotary_matches_transformers(ref, name, position):
    """ref.rotary_with_inv_freq with the config's table against transformers' own rotary module and
    apply_rotary_pos_emb (cos/sin in float32): agreement to float32 angle rounding."""
    config = rope_config(name)
    cfg = ref.LlamaRefConfig.from_transformers(config)
    q = torch.randn(1, cfg.heads, 1, cfg.head_dim, dtype=torch.float64)
    k = torch.randn(1, cfg.kv_heads, 1, cfg.head_dim, dtype=torch.float64)
    cos, sin = hf_llama.LlamaRotaryEmbedding(config)(q, torch.tensor([[position]]))
    hf_q, hf_k = hf_llama.apply_rotary_pos_emb(q, k, cos, sin)
    # float32 angles position * inv_freq are off by up to ~position * 2^-23, float32 cos/sin by ~2^-24.
    tol = 1e-7 + position * 2.0**-23
    got_q = ref.rotary_with_inv_freq(q[0, :, 0].numpy(), position, cfg.inv_freq())
    got_k = ref.rotary_with_inv_freq(k[0, :, 0].numpy(), position, cfg.inv_freq())
    assert rel_err(got_q, hf_q[0, :, 0].numpy(), "rotary q") < tol
    assert rel_err(got_k, hf_k[0, :, 0].numpy(), "rotary k") < tol


def test_rms_norm_matches_transformers(ref):
    """ref.rms_norm against transformers' own LlamaRMSNorm (float32 inside) and the float64 drop-in."""
    norm = hf_llama.LlamaRMSNorm(4096, eps=1e-5).double()
    randomize(norm, np.random.default_rng(0))
    x = torch.randn(3, 4096, dtype=torch.float64) * 0.3
    got = ref.rms_norm(x.numpy(), norm.weight.detach().numpy(), 1e-5)
    with torch.no_grad():
        assert rel_err(got, norm(x).numpy(), "rms_norm vs LlamaRMSNorm (float32 inside)") < 1e-6
        assert rel_err(got, Float64RMSNorm(norm)(x).numpy(), "rms_norm vs the float64 drop-in") < 1e-14


def test_silu_matches_torch(ref):
    z = np.concatenate([np.random.standard_normal(1000) * 5, [-800.0, -40.0, 0.0, 40.0, 800.0]])
    expected = torch.nn.functional.silu(torch.from_numpy(z)).numpy()
    assert np.max(np.abs(ref.silu(z) - expected) / np.maximum(np.abs(expected), 1e-300)) < 1e-14


def hf_layer_step(config, cfg, layer, x, past_k, past_v, position):
    """One decode step of a transformers LlamaDecoderLayer over a DynamicCache holding past_k/past_v
    [kv_heads, p, d]."""
    cache = DynamicCache(config=config)
    if position > 0:
        cache.update(past_k[None], past_v[None], layer_idx=0)
    captured = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args: captured.update(attn=args[0])),
        layer.post_attention_layernorm.register_forward_pre_hook(lambda m, args: captured.update(h1=args[0])),
        layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: captured.update(act=args[0])),
    ]
    rope = Float64Rope(cfg)
    try:
        with torch.no_grad():
            out = layer(x.reshape(1, 1, -1), use_cache=True, position_ids=torch.tensor([[position]]),
                        position_embeddings=rope(x, torch.tensor([[position]])),
                        **{cache_kwarg(hf_llama.LlamaDecoderLayer.forward): cache})
    finally:
        for hook in hooks:
            hook.remove()
    keys, values = cache.layers[0].keys, cache.layers[0].values  # [1, kv_heads, p + 1, d]
    assert keys.shape == (1, cfg.kv_heads, position + 1, cfg.head_dim)
    return dict(out=out.reshape(-1), h1=captured["h1"].reshape(-1), attn=captured["attn"].reshape(-1),
                act=captured["act"].reshape(-1), k=keys[0, :, position], v=values[0, :, position])


def layer_inputs(cfg, position):
    """A random layer input and past cache at realistic scales (|k| ~ 0.02 * sqrt(hidden) ~ 1, like W_k a)."""
    x = torch.randn(cfg.hidden, dtype=torch.float64)
    past_k = torch.randn(cfg.kv_heads, position, cfg.head_dim, dtype=torch.float64)
    past_v = torch.randn(cfg.kv_heads, position, cfg.head_dim, dtype=torch.float64)
    return x, past_k, past_v


@pytest.mark.parametrize("position", [0, 1, 300])
def test_layer_matches_transformers(ref, shape_model, position):
    config, cfg = shape_model.config, shape_model.cfg
    layer = shape_model.model.model.layers[0]
    x, past_k, past_v = layer_inputs(cfg, position)

    expected = hf_layer_step(config, cfg, layer, x, past_k, past_v, position)
    got = ref.llama_layer(cfg, shape_model.weights["layers"][0], x.numpy(), past_k.numpy(), past_v.numpy(),
                          position)

    for name in ("out", "h1", "attn", "act", "k", "v"):
        assert rel_err(got[name], expected[name].numpy(), f"layer {name}") < RTOL, name


def test_layer_test_catches_wrong_gqa_mapping(ref, shape_model):
    """The layer test would catch the classic GQA slip, query head j reading kv head j % kv_heads instead of
    j // (heads / kv_heads). That mapping equals the reference run with the query heads relabelled: slot
    s = (j % kv_heads) * group + j // kv_heads holds head j (rows of W_q, columns of W_o moved alike)."""
    cfg = shape_model.cfg
    if cfg.kv_heads == cfg.heads:
        pytest.skip("multi-head attention: every mapping is the identity")
    position, group, d = 300, cfg.heads // cfg.kv_heads, cfg.head_dim
    x, past_k, past_v = layer_inputs(cfg, position)
    expected = hf_layer_step(shape_model.config, cfg, shape_model.model.model.layers[0], x, past_k, past_v, position)

    w = dict(shape_model.weights["layers"][0])
    head_of_slot = np.empty(cfg.heads, dtype=int)
    for j in range(cfg.heads):
        head_of_slot[(j % cfg.kv_heads) * group + j // cfg.kv_heads] = j
    rows = (head_of_slot[:, None] * d + np.arange(d)).reshape(-1)
    w["w_q"], w["w_o"] = w["w_q"][rows], w["w_o"][:, rows]
    wrong = ref.llama_layer(cfg, w, x.numpy(), past_k.numpy(), past_v.numpy(), position)
    assert rel_err(wrong["out"], expected["out"].numpy(), "wrong GQA mapping, out") > 1e3 * RTOL
    assert rel_err(wrong["attn"][np.argsort(rows)], expected["attn"].numpy(), "wrong GQA mapping, attn") > 1e3 * RTOL


def test_model_logits_match_transformers(ref, shape_model):
    """Token-by-token decode of a short random sequence through the shape's model."""
    config, cfg, model, weights = shape_model.config, shape_model.cfg, shape_model.model, shape_model.weights
    assert len(weights["layers"]) == cfg.layers == MODEL_LAYERS[shape_model.shape]
    assert np.shares_memory(weights["embed_in"], weights["lm_head"]) == config.tie_word_embeddings

    tokens = np.random.randint(0, cfg.vocab, size=5)
    cache = DynamicCache(config=config)
    k_caches, v_caches = ref.empty_caches(cfg)
    for position, token in enumerate(tokens):
        with torch.no_grad():
            hf_logits = model(input_ids=torch.tensor([[token]]), use_cache=True,
                              **{cache_kwarg(LlamaForCausalLM.forward): cache}).logits
        step = ref.llama_model_step(cfg, weights, int(token), k_caches, v_caches, position)
        k_caches, v_caches = step["k_caches"], step["v_caches"]
        assert rel_err(step["logits"], hf_logits[0, -1].numpy(), "model logits") < RTOL, f"position {position}"
    for layer in range(cfg.layers):
        assert k_caches[layer].shape == (cfg.kv_heads, len(tokens), cfg.head_dim)
        assert rel_err(k_caches[layer], cache.layers[layer].keys[0].numpy(), "model k cache") < RTOL
        assert rel_err(v_caches[layer], cache.layers[layer].values[0].numpy(), "model v cache") < RTOL


def test_llama_layer_rejects_wrong_shapes(ref):
    cfg = ref.LlamaRefConfig(hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=128, layers=1, vocab=16)
    x = np.random.standard_normal(64)
    with pytest.raises(ValueError, match=r"k_cache/v_cache: expected shape \(2, 3, 16\)"):
        ref.llama_layer(cfg, {}, x, np.zeros((4, 3, 16)), np.zeros((4, 3, 16)), 3)
    w = dict(ln1_weight=np.ones(64), ln2_weight=np.ones(64), w_q=np.zeros((64, 64)), w_k=np.zeros((64, 64)),
             w_v=np.zeros((32, 64)), w_o=np.zeros((64, 64)), w_gate=np.zeros((128, 64)), w_up=np.zeros((128, 64)),
             w_down=np.zeros((64, 128)))
    with pytest.raises(ValueError, match=r"w\['w_k'\]: expected shape \(32, 64\)"):
        ref.llama_layer(cfg, w, x, np.zeros((2, 3, 16)), np.zeros((2, 3, 16)), 3)
    w["w_k"] = np.zeros((32, 64))
    assert ref.llama_layer(cfg, w, x, np.zeros((2, 3, 16)), np.zeros((2, 3, 16)), 3)["out"].shape == (64,)
    with pytest.raises(ValueError, match=r"^kv_heads:"):
        ref.LlamaRefConfig(hidden=64, heads=4, kv_heads=3, head_dim=16, ffn=128, layers=1, vocab=16)


def test_empty_caches_use_kv_heads(ref):
    k, v = ref.empty_caches(ref.LlamaRefConfig(hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=128, layers=3,
                                               vocab=16))
    assert len(k) == len(v) == 3 and k[0].shape == v[2].shape == (2, 0, 16)
    k, _ = ref.empty_caches(ref.RefConfig(hidden=64, heads=4, head_dim=16, ffn=128, layers=1, vocab=16,
                                          rotary_dims=4))
    assert k[0].shape == (4, 0, 16)
