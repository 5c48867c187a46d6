"""Float64 NumPy reference of one GPT-NeoX (Pythia) or Llama decode step: the spec the kernels are tested against.

Written from the project's decode-step notes (gpt-neox-decode.md, llama-decode.md) and checked against transformers'
GPTNeoX in tests/python/test_reference.py and Llama in tests/python/test_reference_llama.py. Everything is float64 so
that it can serve as ground truth for float16 kernels. Imports only NumPy. Weights are dicts keyed by the library's
weight schema (clusterfusion.weights.layer_weights / model_weights with a float64 `convert` give them from a
transformers model).
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


def _model_step(cfg, weights, token, k_caches, v_caches, position, layer, final_norm):
    """Embedding row -> `layer` over every layer (appending each one's k and v) -> `final_norm` -> LM head."""
    if len(weights["layers"]) != cfg.layers:
        raise ValueError(f"weights['layers']: expected {cfg.layers} layers, got {len(weights['layers'])}")
    if len(k_caches) != cfg.layers or len(v_caches) != cfg.layers:
        raise ValueError(f"k_caches/v_caches: expected {cfg.layers} layers, got {len(k_caches)} and {len(v_caches)}")
    if not 0 <= token < cfg.vocab:
        raise ValueError(f"token: expected 0 <= token < {cfg.vocab}, got {token}")
    for name in ("embed_in", "lm_head"):
        if np.shape(weights[name]) != (cfg.vocab, cfg.hidden):
            raise ValueError(f"weights[{name!r}]: expected shape {(cfg.vocab, cfg.hidden)}, "
                             f"got {np.shape(weights[name])}")

    x = np.asarray(weights["embed_in"][token], dtype=np.float64)
    new_k, new_v = [], []
    for w, k_cache, v_cache in zip(weights["layers"], k_caches, v_caches):
        step = layer(cfg, w, x, k_cache, v_cache, position)
        x = step["out"]
        new_k.append(np.concatenate([k_cache, step["k"][:, None, :]], axis=1))
        new_v.append(np.concatenate([v_cache, step["v"][:, None, :]], axis=1))
    y = final_norm(x)
    return dict(logits=weights["lm_head"] @ y, hidden=y, k_caches=new_k, v_caches=new_v)


def neox_model_step(cfg, weights, token, k_caches, v_caches, position):
    """The whole model for one token at `position`. k_caches / v_caches: per layer [heads, position, head_dim].

    Returns dict(logits [vocab], hidden [hidden] (the final LayerNorm's output), k_caches, v_caches (per layer,
    now [heads, position + 1, head_dim]: pass them to the next step)).
    """
    return _model_step(cfg, weights, token, k_caches, v_caches, position, neox_layer,
                       lambda x: layer_norm(x, weights["final_norm_weight"], weights["final_norm_bias"], cfg.norm_eps))


def empty_caches(cfg):
    """Per-layer k and v caches holding no positions, for the first neox_model_step or llama_model_step
    ([kv_heads, 0, head_dim] for a LlamaRefConfig, [heads, 0, head_dim] for a RefConfig)."""
    kv_heads = getattr(cfg, "kv_heads", cfg.heads)
    empty = [np.zeros((kv_heads, 0, cfg.head_dim)) for _ in range(cfg.layers)]
    return empty, [c.copy() for c in empty]


# ---------------------------------------------------------------------------------------------------------------------
# Llama (Llama-2, TinyLlama, Llama-3, Llama-3.2): RMSNorm, SwiGLU, grouped-query attention, sequential residual.
# ---------------------------------------------------------------------------------------------------------------------

def _rope_type(params):
    """The rope type of a rope scaling dict: 5.x names it rope_type, 4.x type; none (or None) is the default rope."""
    return params.get("rope_type", params.get("type")) or "default"


def rope_inv_freq(head_dim, rope_theta, rope_scaling=None):
    """The d/2 rotary inverse frequencies as transformers' ROPE_INIT_FUNCTIONS compute them, but in float64.

    rope_scaling: None, {} or () for the default rope theta^(-2i/d); else transformers' rope scaling dict (or its
    items, as LlamaRefConfig keeps them) with rope_type (4.x: type) "default", "linear" (every frequency / factor) or
    "llama3" (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: long wavelengths / factor,
    short ones kept, a linear blend between). Other types (yarn, longrope, dynamic, ...) raise ValueError: they also
    scale attention or depend on the sequence length.
    """
    params = dict(rope_scaling or ())
    rope_type = _rope_type(params)
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim: expected a positive even number, got {head_dim}")
    inv_freq = 1.0 / float(rope_theta) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if rope_type == "default":
        return inv_freq

    def get(key):
        if key not in params:
            raise ValueError(f"rope_scaling: rope type {rope_type!r} needs {key!r}, got {params!r}")
        return float(params[key])

    if rope_type == "linear":
        return inv_freq / get("factor")
    if rope_type == "llama3":
        factor, low, high = get("factor"), get("low_freq_factor"), get("high_freq_factor")
        old_context = get("original_max_position_embeddings")
        wavelen = 2.0 * math.pi / inv_freq
        smooth = (old_context / wavelen - low) / (high - low)
        blended = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
        return np.where(wavelen < old_context / high, inv_freq,
                        np.where(wavelen > old_context / low, inv_freq / factor, blended))
    raise ValueError(f"rope_scaling: rope type {rope_type!r} is not implemented (only 'default', 'linear' and "
                     "'llama3': frequency-only tables)")


def _rope_scaling_items(params):
    """transformers' rope scaling dict (rope_theta taken out) as LlamaRefConfig.rope_scaling: its sorted items, the
    4.x key "type" renamed rope_type, () for the default rope."""
    params = dict(params or ())
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    factor = params.pop("partial_rotary_factor", 1.0)
    if factor != 1.0:
        raise ValueError(f"rope_scaling['partial_rotary_factor']: expected 1.0 (Llama rotates all head_dim dims), "
                         f"got {factor!r}")
    if _rope_type(params) == "default":
        return ()
    return tuple(sorted(params.items()))


@dataclass(frozen=True)
class LlamaRefConfig:
    """The shape and constants of a Llama model. rope_scaling: the sorted items of transformers' rope scaling dict
    (without rope_theta), hashable; () for the default rope."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    layers: int
    vocab: int
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.kv_heads <= 0 or self.heads % self.kv_heads:
            raise ValueError(f"kv_heads: expected a divisor of heads ({self.heads}), got {self.kv_heads}")
        if isinstance(self.rope_scaling, dict):  # accept the dict itself; keep it hashable
            object.__setattr__(self, "rope_scaling", _rope_scaling_items(self.rope_scaling))
        self.inv_freq()  # refuses an unknown rope type now, not at the first step

    def inv_freq(self) -> np.ndarray:
        """The head_dim / 2 rotary inverse frequencies, float64 (rope_inv_freq)."""
        return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)

    @classmethod
    def from_transformers(cls, hf_config) -> LlamaRefConfig:
        """From a transformers LlamaConfig; 5.x keeps the rope settings in rope_parameters (rope_type, rope_theta,
        factor, ...), 4.x in rope_theta and rope_scaling. Raises ValueError naming the field for what the reference
        does not compute: biases, an activation other than SiLU, heads not a multiple of kv heads, a rope type
        other than default / linear / llama3."""
        for field in ("attention_bias", "mlp_bias"):
            if getattr(hf_config, field, False):
                raise ValueError(f"hf_config.{field}: expected False (Llama has no biases), got True")
        if hf_config.hidden_act != "silu":
            raise ValueError(f"hf_config.hidden_act: expected 'silu', got {hf_config.hidden_act!r}")
        heads = hf_config.num_attention_heads
        kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
        if heads % kv_heads:
            raise ValueError(f"hf_config.num_key_value_heads: expected a divisor of num_attention_heads ({heads}), "
                             f"got {kv_heads}")

        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        if rope:
            rope_theta = rope.pop("rope_theta", None)
        else:
            rope_theta = getattr(hf_config, "rope_theta", None)
            rope = dict(getattr(hf_config, "rope_scaling", None) or {})
        if rope_theta is None:
            raise ValueError("hf_config.rope_parameters: no rope_theta found (and no 4.x rope_theta attribute)")
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        rope_inv_freq(head_dim, rope_theta, rope)  # a yarn / longrope / dynamic rope is refused here, by name
        return cls(
            hidden=hf_config.hidden_size,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            ffn=hf_config.intermediate_size,
            layers=hf_config.num_hidden_layers,
            vocab=hf_config.vocab_size,
            rope_theta=float(rope_theta),
            rope_scaling=_rope_scaling_items(rope),
            norm_eps=float(hf_config.rms_norm_eps),
        )


def rms_norm(x, w, eps):
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * w (no mean subtraction, no bias)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def silu(x):
    """SiLU z * sigmoid(z) = z / (1 + e^-z), written so that no exponential overflows."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, x / (1.0 + e), x * e / (1.0 + e))


def rotary_with_inv_freq(x, position, inv_freq):
    """Rotary embedding ("rotate half") on all head_dim dims of each row of x [n, head_dim]: pair (i, i + d/2) is
    rotated by angle position * inv_freq[i]."""
    x = np.asarray(x, dtype=np.float64)
    half = x.shape[-1] // 2
    if np.shape(inv_freq) != (half,) or x.shape[-1] != 2 * half:
        raise ValueError(f"inv_freq: expected shape ({half},) for rows of {x.shape[-1]} (even) dims, "
                         f"got {np.shape(inv_freq)}")
    theta = position * np.asarray(inv_freq, dtype=np.float64)
    cos, sin = np.cos(theta), np.sin(theta)
    lo, hi = x[..., :half], x[..., half:]
    return np.concatenate([lo * cos - hi * sin, hi * cos + lo * sin], axis=-1)


def _llama_layer_shapes(cfg):
    d = cfg.head_dim
    return dict(
        ln1_weight=(cfg.hidden,), ln2_weight=(cfg.hidden,),
        w_q=(cfg.heads * d, cfg.hidden), w_k=(cfg.kv_heads * d, cfg.hidden), w_v=(cfg.kv_heads * d, cfg.hidden),
        w_o=(cfg.hidden, cfg.heads * d),
        w_gate=(cfg.ffn, cfg.hidden), w_up=(cfg.ffn, cfg.hidden), w_down=(cfg.hidden, cfg.ffn),
    )


def llama_layer(cfg, w, x, k_cache, v_cache, position):
    """One Llama decoder layer for one token at `position`, with k_cache / v_cache [kv_heads, position, head_dim]
    the past. Query head j reads kv head j // (heads // kv_heads).

    Returns dict(out [hidden], h1 [hidden] (x + W_o attn), attn [heads * head_dim] (per-head outputs concatenated,
    before W_o), act [ffn] (SiLU(W_gate n) * W_up n), k, v [kv_heads, head_dim] (k rotated): the cache rows for
    `position`).
    """
    x = np.asarray(x, dtype=np.float64)
    d, group = cfg.head_dim, cfg.heads // cfg.kv_heads
    past = (cfg.kv_heads, position, d)
    if np.shape(k_cache) != past or np.shape(v_cache) != past:
        raise ValueError(f"k_cache/v_cache: expected shape {past}, got {np.shape(k_cache)} and {np.shape(v_cache)}")
    if x.shape != (cfg.hidden,):
        raise ValueError(f"x: expected shape ({cfg.hidden},), got {x.shape}")
    for name, shape in _llama_layer_shapes(cfg).items():
        if name not in w or np.shape(w[name]) != shape:
            raise ValueError(f"w[{name!r}]: expected shape {shape}, got {np.shape(w[name]) if name in w else None}")
    inv_freq = cfg.inv_freq()

    # Attention half: RMSNorm, separate q / k / v projections, rotary on q and k, grouped-query attention.
    a = rms_norm(x, w["ln1_weight"], cfg.norm_eps)
    q = rotary_with_inv_freq((w["w_q"] @ a).reshape(cfg.heads, d), position, inv_freq)
    k = rotary_with_inv_freq((w["w_k"] @ a).reshape(cfg.kv_heads, d), position, inv_freq)
    v = (w["w_v"] @ a).reshape(cfg.kv_heads, d)

    keys = np.concatenate([np.asarray(k_cache, dtype=np.float64), k[:, None, :]], axis=1)    # [kv_heads, p+1, d]
    values = np.concatenate([np.asarray(v_cache, dtype=np.float64), v[:, None, :]], axis=1)
    q_groups = q.reshape(cfg.kv_heads, group, d)  # query head j = kv * group + g reads kv head kv = j // group
    scores = np.einsum("kgd,ktd->kgt", q_groups, keys) / math.sqrt(d)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    attn = np.einsum("kgt,ktd->kgd", probs, values).reshape(cfg.heads * d)
    h1 = x + w["w_o"] @ attn

    # MLP half: sequential residual, so the second RMSNorm normalises h1; SwiGLU.
    n = rms_norm(h1, w["ln2_weight"], cfg.norm_eps)
    act = silu(w["w_gate"] @ n) * (w["w_up"] @ n)
    out = h1 + w["w_down"] @ act

    return dict(out=out, h1=h1, attn=attn, act=act, k=k, v=v)


def llama_model_step(cfg, weights, token, k_caches, v_caches, position):
    """The whole Llama model for one token at `position`. k_caches / v_caches: per layer [kv_heads, position,
    head_dim]; weights: embed_in [vocab, hidden], layers (list of llama_layer dicts), final_norm_weight [hidden],
    lm_head [vocab, hidden] (the same array as embed_in when tied).

    Returns dict(logits [vocab], hidden [hidden] (the final RMSNorm's output), k_caches, v_caches (per layer, now
    [kv_heads, position + 1, head_dim]: pass them to the next step)).
    """
    return _model_step(cfg, weights, token, k_caches, v_caches, position, llama_layer,
                       lambda x: rms_norm(x, weights["final_norm_weight"], cfg.norm_eps))
