"""ModelConfig from a transformers GPTNeoXConfig or LlamaConfig, refusing every setting the fused kernels do not
compute."""

from __future__ import annotations

from ._C import Activation, Architecture, ModelConfig, Norm, RopeScaling, RopeType

# transformers' rope types that only change the rotary frequencies, as the kernels' table computes them.
_ROPE_TYPES = {"default": RopeType.Default, "linear": RopeType.Linear, "llama3": RopeType.Llama3}


def _rope_settings(hf_config) -> dict:
    """The rope settings as one dict (rope_type, rope_theta, partial_rotary_factor, factor, ...). transformers
    5.x keeps them in `rope_parameters`; 4.x in `rope_scaling` plus rope_theta (Llama) or rotary_pct and
    rotary_emb_base (GPT-NeoX)."""
    rope = getattr(hf_config, "rope_parameters", None)
    if rope:
        return dict(rope)
    settings = dict(getattr(hf_config, "rope_scaling", None) or {})
    settings.setdefault("rope_type", settings.pop("type", "default"))
    for key, attr in (("rope_theta", "rope_theta"), ("rope_theta", "rotary_emb_base"),
                      ("partial_rotary_factor", "rotary_pct")):
        if settings.get(key) is None and getattr(hf_config, attr, None) is not None:
            settings[key] = getattr(hf_config, attr)
    return settings


def _rope_scaling(settings: dict) -> RopeScaling:
    """The kernels' RopeScaling for transformers' rope settings; ValueError naming rope_scaling for a type that
    also scales attention (yarn, longrope) or that the kernels do not compute (dynamic)."""
    rope_type = settings.get("rope_type", "default")
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"hf_config.rope_scaling: rope_type {rope_type!r} is not supported (supported: "
                         f"{', '.join(_ROPE_TYPES)})")
    scaling = RopeScaling(type=_ROPE_TYPES[rope_type])
    if rope_type in ("linear", "llama3"):
        scaling.factor = float(settings["factor"])
    if rope_type == "llama3":
        scaling.low_freq_factor = float(settings["low_freq_factor"])
        scaling.high_freq_factor = float(settings["high_freq_factor"])
        scaling.original_max_positions = int(settings["original_max_position_embeddings"])
    return scaling


def _head_dim(hf_config) -> int:
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def _gpt_neox(hf_config) -> ModelConfig:
    if hf_config.hidden_act != "gelu":
        raise ValueError(f"hf_config.hidden_act: expected 'gelu' (exact erf GELU), got {hf_config.hidden_act!r}")
    if not hf_config.use_parallel_residual:
        raise ValueError("hf_config.use_parallel_residual: expected True (the kernels fuse the parallel "
                         "attention and MLP branches), got False")
    if not getattr(hf_config, "attention_bias", True):
        raise ValueError("hf_config.attention_bias: expected True (the kernels add the QKV and output biases), "
                         "got False")
    settings = _rope_settings(hf_config)
    if settings.get("rope_type", "default") != "default":
        raise ValueError(f"hf_config.rope_scaling: expected the default rope for GPT-NeoX, got "
                         f"{settings.get('rope_type')!r}")
    rotary_pct, rotary_base = settings.get("partial_rotary_factor"), settings.get("rope_theta")
    if rotary_pct is None or rotary_base is None:
        raise ValueError("hf_config.rope_parameters: expected rope_theta and partial_rotary_factor (or 4.x's "
                         f"rotary_emb_base and rotary_pct), got base {rotary_base!r}, fraction {rotary_pct!r}")
    # transformers' own rule for the head size and the rotated dims (GPTNeoXAttention.rotary_ndims).
    head_dim = _head_dim(hf_config)
    return ModelConfig(
        arch=Architecture.GPTNeoX, hidden=hf_config.hidden_size, heads=hf_config.num_attention_heads,
        kv_heads=hf_config.num_attention_heads, head_dim=head_dim, ffn=hf_config.intermediate_size,
        layers=hf_config.num_hidden_layers, vocab=hf_config.vocab_size, rotary_dims=int(head_dim * rotary_pct),
        rotary_base=float(rotary_base), norm_eps=float(hf_config.layer_norm_eps), parallel_residual=True,
        norm=Norm.LayerNorm, activation=Activation.GELU, tied_embeddings=False,
    )


def _llama(hf_config) -> ModelConfig:
    if hf_config.hidden_act != "silu":
        raise ValueError(f"hf_config.hidden_act: expected 'silu' (SwiGLU), got {hf_config.hidden_act!r}")
    for field in ("attention_bias", "mlp_bias"):
        if getattr(hf_config, field, False):
            raise ValueError(f"hf_config.{field}: expected False (the Llama kernels have no projection biases), "
                             "got True")
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    if heads % kv_heads != 0:
        raise ValueError(f"hf_config.num_key_value_heads: {kv_heads} does not divide num_attention_heads {heads}")
    settings = _rope_settings(hf_config)
    head_dim = _head_dim(hf_config)
    rotary_fraction = settings.get("partial_rotary_factor", 1.0)
    return ModelConfig(
        arch=Architecture.Llama, hidden=hf_config.hidden_size, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        ffn=hf_config.intermediate_size, layers=hf_config.num_hidden_layers, vocab=hf_config.vocab_size,
        rotary_dims=int(head_dim * rotary_fraction), rotary_base=float(settings["rope_theta"]),
        rope_scaling=_rope_scaling(settings), norm_eps=float(hf_config.rms_norm_eps), parallel_residual=False,
        norm=Norm.RMSNorm, activation=Activation.SiLU,
        tied_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
    )


_ARCHITECTURES = {"gpt_neox": _gpt_neox, "llama": _llama}


def config_from_transformers(hf_config) -> ModelConfig:
    """The ModelConfig of a transformers GPTNeoXConfig (Pythia, GPT-NeoX-20B) or LlamaConfig (Llama 2 and 3,
    TinyLlama).

    Raises ValueError naming the field for what the kernels do not implement: another model type, GPT-NeoX with
    an activation other than exact-erf "gelu", sequential residuals or no biases, Llama with biases or another
    activation than "silu", a kv head count that does not divide the heads, or a rope type that is not
    default, linear or llama3 (for Llama; GPT-NeoX: default only).
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in _ARCHITECTURES:
        raise ValueError(f"hf_config.model_type: expected one of {', '.join(map(repr, _ARCHITECTURES))}, "
                         f"got {model_type!r}")
    config = _ARCHITECTURES[model_type](hf_config)
    config.validate()
    return config
