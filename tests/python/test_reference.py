"""The float64 reference (python/clusterfusion/reference.py) against transformers' GPT-NeoX, in float64 on the CPU.

transformers computes rotary cos/sin in float32 (and eager attention's softmax in float32), which would hide
float64-level errors. So the layer and model comparisons give transformers float64 cos/sin and use SDPA attention
(float64 throughout), and test_rotary_matches_transformers checks transformers' own float32 rotary separately.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import DynamicCache, GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.models.gpt_neox import modeling_gpt_neox as hf_neox

SHAPES = {
    "pythia-70m": dict(hidden_size=512, num_attention_heads=8, intermediate_size=2048, vocab_size=50304),
    "pythia-2.8b": dict(hidden_size=2560, num_attention_heads=32, intermediate_size=10240, vocab_size=50304),
}
RTOL = 1e-10  # float64 vs float64: only summation order differs


def pythia_config(shape, layers):
    config = GPTNeoXConfig(
        **SHAPES[shape], num_hidden_layers=layers, rotary_pct=0.25, rotary_emb_base=10000, layer_norm_eps=1e-5,
        use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False, max_position_embeddings=2048,
    )
    config._attn_implementation = "sdpa"  # eager attention rounds the softmax to float32
    return config


@torch.no_grad()
def randomize(module):
    """Realistic scales: weights and biases ~N(0, 0.02), LayerNorm weights ~N(1, 0.1)."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.LayerNorm):
            sub.weight.normal_(1.0, 0.1)
            sub.bias.normal_(0.0, 0.02)
        elif isinstance(sub, (torch.nn.Linear, torch.nn.Embedding)):
            for p in sub.parameters(recurse=False):
                p.normal_(0.0, 0.02)
    return module


def float64_rope(config, positions):
    """transformers' default rope (GPTNeoXRotaryEmbedding.forward), in float64: cos, sin [1, len, rotary_dims]."""
    head_dim = config.hidden_size // config.num_attention_heads
    dim = int(head_dim * config.rope_parameters["partial_rotary_factor"])
    base = config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = torch.as_tensor(positions, dtype=torch.float64).reshape(1, -1, 1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class Float64Rope(torch.nn.Module):
    """Drop-in for GPTNeoXModel.rotary_emb that keeps cos/sin in float64."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, x, position_ids):
        return float64_rope(self.config, position_ids[0])


def rel_err(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def test_ref_config_from_transformers(ref):
    cfg = ref.RefConfig.from_transformers(pythia_config("pythia-2.8b", layers=32))
    assert cfg == ref.RefConfig(hidden=2560, heads=32, head_dim=80, ffn=10240, layers=32, vocab=50304,
                                rotary_dims=20, rotary_base=10000.0, norm_eps=1e-5)


def test_gelu_is_exact_erf_form(ref):
    z = np.random.standard_normal(1000) * 3
    expected = torch.nn.functional.gelu(torch.from_numpy(z), approximate="none").numpy()
    assert rel_err(ref.gelu(z), expected) < 1e-14


@pytest.mark.parametrize("position", [0, 1, 300, 2047])
def test_rotary_matches_transformers(ref, position):
    """ref.rotary against transformers' own rope (cos/sin in float32): agreement to float32 angle rounding."""
    config = pythia_config("pythia-2.8b", layers=1)
    cfg = ref.RefConfig.from_transformers(config)
    q = torch.randn(1, cfg.heads, 1, cfg.head_dim, dtype=torch.float64)
    cos, sin = hf_neox.GPTNeoXRotaryEmbedding(config)(q, torch.tensor([[position]]))
    hf_q, _ = hf_neox.apply_rotary_pos_emb(q, q, cos, sin)
    got = ref.rotary(q[0, :, 0].numpy(), position, cfg.rotary_dims, cfg.rotary_base)
    # float32 angles position * inv_freq are off by up to ~position * 2^-23, float32 cos/sin by ~2^-24.
    assert rel_err(got, hf_q[0, :, 0].numpy()) < 1e-7 + position * 2.0**-23
    assert np.array_equal(got[:, cfg.rotary_dims:], q[0, :, 0, cfg.rotary_dims:].numpy())


def hf_layer_step(config, layer, x, past_k, past_v, position):
    """One decode step of a transformers GPTNeoXLayer over a DynamicCache holding past_k/past_v [heads, p, d]."""
    cache = DynamicCache(config=config)
    if position > 0:
        cache.update(past_k[None], past_v[None], layer_idx=0)
    captured = {}
    hooks = [
        layer.attention.dense.register_forward_pre_hook(lambda m, args: captured.update(attn=args[0])),
        layer.mlp.dense_4h_to_h.register_forward_pre_hook(lambda m, args: captured.update(mlp_act=args[0])),
    ]
    try:
        with torch.no_grad():
            out = layer(x.reshape(1, 1, -1), layer_past=cache, use_cache=True,
                        position_ids=torch.tensor([[position]]), position_embeddings=float64_rope(config, [position]))
    finally:
        for hook in hooks:
            hook.remove()
    keys, values = cache.layers[0].keys, cache.layers[0].values  # [1, heads, p + 1, d]
    assert keys.shape[2] == position + 1
    return dict(out=out.reshape(-1), attn=captured["attn"].reshape(-1), mlp_act=captured["mlp_act"].reshape(-1),
                k=keys[0, :, position], v=values[0, :, position])


@pytest.mark.parametrize("shape", ["pythia-70m", "pythia-2.8b"])
@pytest.mark.parametrize("position", [0, 1, 300])
def test_layer_matches_transformers(ref, f64_weights, shape, position):
    config = pythia_config(shape, layers=1)
    cfg = ref.RefConfig.from_transformers(config)
    with torch.device("meta"):  # skip transformers' own initialisation: randomize() overwrites every parameter
        layer = hf_neox.GPTNeoXLayer(config, layer_idx=0).double()
    layer = randomize(layer.to_empty(device="cpu")).eval()
    x = torch.randn(cfg.hidden, dtype=torch.float64)
    past_k = torch.randn(cfg.heads, position, cfg.head_dim, dtype=torch.float64)
    past_v = torch.randn(cfg.heads, position, cfg.head_dim, dtype=torch.float64)

    expected = hf_layer_step(config, layer, x, past_k, past_v, position)
    got = ref.neox_layer(cfg, f64_weights.layer(layer, config), x.numpy(), past_k.numpy(), past_v.numpy(),
                         position)

    for name in ("out", "attn", "mlp_act", "k", "v"):
        assert rel_err(got[name], expected[name].numpy()) < RTOL, name


def test_model_logits_match_transformers(ref, f64_weights):
    """Token-by-token decode of a short random sequence through a 2-layer pythia-70m-shaped model."""
    config = pythia_config("pythia-70m", layers=2)
    cfg = ref.RefConfig.from_transformers(config)
    model = randomize(GPTNeoXForCausalLM(config).double()).eval()
    model.gpt_neox.rotary_emb = Float64Rope(config)
    weights = f64_weights.model(model)
    assert not np.array_equal(weights["embed_in"], weights["lm_head"])  # untied, as in Pythia

    tokens = np.random.randint(0, cfg.vocab, size=6)
    cache = DynamicCache(config=config)
    k_caches, v_caches = ref.empty_caches(cfg)
    for position, token in enumerate(tokens):
        with torch.no_grad():
            hf_logits = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits
        step = ref.neox_model_step(cfg, weights, int(token), k_caches, v_caches, position)
        k_caches, v_caches = step["k_caches"], step["v_caches"]
        assert rel_err(step["logits"], hf_logits[0, -1].numpy()) < RTOL, f"position {position}"
    for layer in range(cfg.layers):
        assert rel_err(k_caches[layer], cache.layers[layer].keys[0].numpy()) < RTOL
        assert rel_err(v_caches[layer], cache.layers[layer].values[0].numpy()) < RTOL


def test_neox_layer_rejects_wrong_cache_shape(ref):
    cfg = ref.RefConfig(hidden=64, heads=2, head_dim=32, ffn=256, layers=1, vocab=16, rotary_dims=8)
    with pytest.raises(ValueError, match=r"k_cache/v_cache: expected shape \(2, 3, 32\)"):
        ref.neox_layer(cfg, {}, np.random.standard_normal(64), np.zeros((2, 2, 32)), np.zeros((2, 2, 32)), 3)
