"""Float64 NumPy reference of one GPT-NeoX (Pythia) decode step: the spec the kernels are tested against.

Written from the project's decode-step notes (gpt-neox-decode.md) and checked against transformers' GPTNeoX in
tests/python/test_reference.py. Everything is float64 so that it can serve as ground truth for float16 kernels.
Imports only NumPy (torch tensors are accepted by the *_from_transformers helpers through their own methods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RefConfig:
    """The shape and constants of a GPT-NeoX model (mirrors clusterfusion::ModelConfig)."""

    hidden: int
    heads: int
    head_dim: int
    ffn: int
    layers: int
    vocab: int
    rotary_dims: int
    rotary_base: float = 10000.0
    norm_eps: float = 1e-5

    @classmethod
    def from_transformers(cls, hf_config) -> RefConfig:
        """From a transformers GPTNeoXConfig; 5.x keeps the rotary settings in rope_parameters, 4.x in
        rotary_pct / rotary_emb_base."""
        head_dim = hf_config.hidden_size // hf_config.num_attention_heads
        rope = getattr(hf_config, "rope_parameters", None) or {}
        rotary_pct = rope.get("partial_rotary_factor", getattr(hf_config, "rotary_pct", None))
        rotary_base = rope.get("rope_theta", getattr(hf_config, "rotary_emb_base", None))
        if rotary_pct is None or rotary_base is None:
            raise ValueError(f"hf_config: no rotary settings found (rope_parameters={rope!r}, "
                             "and no rotary_pct / rotary_emb_base attributes)")
        if not getattr(hf_config, "use_parallel_residual", True):
            raise ValueError("hf_config.use_parallel_residual: expected True (the reference is parallel-residual), "
                             "got False")
        if hf_config.hidden_act != "gelu":
            raise ValueError(f"hf_config.hidden_act: expected 'gelu' (exact erf), got {hf_config.hidden_act!r}")
        return cls(
            hidden=hf_config.hidden_size,
            heads=hf_config.num_attention_heads,
            head_dim=head_dim,
            ffn=hf_config.intermediate_size,
            layers=hf_config.num_hidden_layers,
            vocab=hf_config.vocab_size,
            rotary_dims=int(head_dim * rotary_pct),
            rotary_base=float(rotary_base),
            norm_eps=float(hf_config.layer_norm_eps),
        )


def layer_norm(x, w, b, eps):
    """LayerNorm over the last axis; biased variance (divide by n), as torch.nn.LayerNorm."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    """Exact GELU z * Phi(z) with the erf form (Pythia's "gelu", not the tanh approximation)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def rotary(x, position, rotary_dims, base):
    """NeoX rotary embedding ("rotate half") on the first rotary_dims of each row of x [heads, head_dim].

    Pair (i, i + r/2) is rotated by angle position * base^(-2i/r); dims r.. pass through.
    """
    x = np.asarray(x, dtype=np.float64)
    half = rotary_dims // 2
    inv_freq = 1.0 / base ** (np.arange(half, dtype=np.float64) * 2.0 / rotary_dims)
    theta = position * inv_freq
    cos, sin = np.cos(theta), np.sin(theta)
    lo, hi = x[:, :half], x[:, half:rotary_dims]
    y = x.copy()
    y[:, :half] = lo * cos - hi * sin
    y[:, half:rotary_dims] = hi * cos + lo * sin
    return y


def neox_layer(cfg, w, x, k_cache, v_cache, position):
    """One decoder layer for one token at `position`, with k_cache / v_cache [heads, position, head_dim] the past.

    Returns dict(out [hidden], attn [hidden] (per-head outputs concatenated, before W_o),
    mlp_act [ffn] (GELU(W_up LN2(x) + b_up)), k, v [heads, head_dim] (k rotated): the cache rows for `position`).
    """
    x = np.asarray(x, dtype=np.float64)
    past = (cfg.heads, position, cfg.head_dim)
    if np.shape(k_cache) != past or np.shape(v_cache) != past:
        raise ValueError(f"k_cache/v_cache: expected shape {past}, got {np.shape(k_cache)} and {np.shape(v_cache)}")
    d = cfg.head_dim

    # Attention branch: LN1, fused QKV laid out per head as [q | k | v], rotary on q and k.
    a = layer_norm(x, w["ln1_weight"], w["ln1_bias"], cfg.norm_eps)
    qkv = (w["w_qkv"] @ a + w["b_qkv"]).reshape(cfg.heads, 3 * d)
    q = rotary(qkv[:, :d], position, cfg.rotary_dims, cfg.rotary_base)
    k = rotary(qkv[:, d:2 * d], position, cfg.rotary_dims, cfg.rotary_base)
    v = qkv[:, 2 * d:]

    keys = np.concatenate([np.asarray(k_cache, dtype=np.float64), k[:, None, :]], axis=1)    # [heads, p+1, d]
    values = np.concatenate([np.asarray(v_cache, dtype=np.float64), v[:, None, :]], axis=1)
    scores = np.einsum("hd,htd->ht", q, keys) / math.sqrt(d)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    attn = np.einsum("ht,htd->hd", probs, values).reshape(cfg.hidden)
    attn_out = w["w_o"] @ attn + w["b_o"]

    # MLP branch: parallel residual, so LN2 normalises the layer input x, not x + attn.
    m = layer_norm(x, w["ln2_weight"], w["ln2_bias"], cfg.norm_eps)
    mlp_act = gelu(w["w_up"] @ m + w["b_up"])
    mlp_out = w["w_down"] @ mlp_act + w["b_down"]

    return dict(out=x + attn_out + mlp_out, attn=attn, mlp_act=mlp_act, k=k, v=v)


def neox_model_step(cfg, weights, token, k_caches, v_caches, position):
    """The whole model for one token at `position`. k_caches / v_caches: per layer [heads, position, head_dim].

    Returns dict(logits [vocab], hidden [hidden] (the final LayerNorm's output), k_caches, v_caches (per layer,
    now [heads, position + 1, head_dim]: pass them to the next step)).
    """
    if len(weights["layers"]) != cfg.layers:
        raise ValueError(f"weights['layers']: expected {cfg.layers} layers, got {len(weights['layers'])}")
    if len(k_caches) != cfg.layers or len(v_caches) != cfg.layers:
        raise ValueError(f"k_caches/v_caches: expected {cfg.layers} layers, got {len(k_caches)} and {len(v_caches)}")
    if not 0 <= token < cfg.vocab:
        raise ValueError(f"token: expected 0 <= token < {cfg.vocab}, got {token}")

    x = np.asarray(weights["embed_in"][token], dtype=np.float64)
    new_k, new_v = [], []
    for w, k_cache, v_cache in zip(weights["layers"], k_caches, v_caches):
        step = neox_layer(cfg, w, x, k_cache, v_cache, position)
        x = step["out"]
        new_k.append(np.concatenate([k_cache, step["k"][:, None, :]], axis=1))
        new_v.append(np.concatenate([v_cache, step["v"][:, None, :]], axis=1))
    y = layer_norm(x, weights["final_norm_weight"], weights["final_norm_bias"], cfg.norm_eps)
    return dict(logits=weights["lm_head"] @ y, hidden=y, k_caches=new_k, v_caches=new_v)


def empty_caches(cfg):
    """Per-layer k and v caches holding no positions, for the first neox_model_step."""
    empty = [np.zeros((cfg.heads, 0, cfg.head_dim)) for _ in range(cfg.layers)]
    return empty, [c.copy() for c in empty]


def _f64(module, attr, name):
    tensor = getattr(module, attr)
    if tensor is None:
        raise ValueError(f"{name}: expected a tensor, got None (GPT-NeoX as Pythia has it uses biases everywhere)")
    return tensor.detach().cpu().double().numpy()


def layer_weights_from_transformers(hf_layer) -> dict:
    """A transformers GPTNeoXLayer's parameters as the float64 dict neox_layer takes."""
    ln1, ln2 = hf_layer.input_layernorm, hf_layer.post_attention_layernorm
    qkv, o = hf_layer.attention.query_key_value, hf_layer.attention.dense
    up, down = hf_layer.mlp.dense_h_to_4h, hf_layer.mlp.dense_4h_to_h
    return dict(
        ln1_weight=_f64(ln1, "weight", "input_layernorm.weight"),
        ln1_bias=_f64(ln1, "bias", "input_layernorm.bias"),
        ln2_weight=_f64(ln2, "weight", "post_attention_layernorm.weight"),
        ln2_bias=_f64(ln2, "bias", "post_attention_layernorm.bias"),
        w_qkv=_f64(qkv, "weight", "attention.query_key_value.weight"),
        b_qkv=_f64(qkv, "bias", "attention.query_key_value.bias"),
        w_o=_f64(o, "weight", "attention.dense.weight"),
        b_o=_f64(o, "bias", "attention.dense.bias"),
        w_up=_f64(up, "weight", "mlp.dense_h_to_4h.weight"),
        b_up=_f64(up, "bias", "mlp.dense_h_to_4h.bias"),
        w_down=_f64(down, "weight", "mlp.dense_4h_to_h.weight"),
        b_down=_f64(down, "bias", "mlp.dense_4h_to_h.bias"),
    )


def model_weights_from_transformers(hf_model) -> dict:
    """A GPTNeoXForCausalLM's parameters as the float64 dict neox_model_step takes: embed_in [vocab, hidden],
    layers (list of layer dicts), final_norm_weight, final_norm_bias [hidden], lm_head [vocab, hidden]."""
    base = hf_model.base_model
    return dict(
        embed_in=_f64(base.embed_in, "weight", "embed_in.weight"),
        layers=[layer_weights_from_transformers(layer) for layer in base.layers],
        final_norm_weight=_f64(base.final_layer_norm, "weight", "final_layer_norm.weight"),
        final_norm_bias=_f64(base.final_layer_norm, "bias", "final_layer_norm.bias"),
        lm_head=_f64(hf_model.get_output_embeddings(), "weight", "lm_head.weight"),
    )
