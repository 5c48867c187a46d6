"""ModelConfig from a transformers GPTNeoXConfig, refusing every setting the fused kernels do not compute."""

from __future__ import annotations

from ._C import Activation, Architecture, ModelConfig, Norm


def _rope_settings(hf_config):
    """(rope_type, rotary fraction, base). transformers 5.x keeps them in `rope_parameters` (rope_type,
    partial_rotary_factor, rope_theta); 4.x in `rotary_pct`, `rotary_emb_base` and `rope_scaling`."""
    rope = getattr(hf_config, "rope_parameters", None)
    if rope:
        return (rope.get("rope_type", "default"), rope.get("partial_rotary_factor", 1.0), rope.get("rope_theta"))
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    return rope_type, getattr(hf_config, "rotary_pct", None), getattr(hf_config, "rotary_emb_base", None)


def config_from_transformers(hf_config) -> ModelConfig:
    """The ModelConfig of a transformers GPTNeoXConfig (Pythia, GPT-NeoX-20B).

    Raises ValueError naming the field for what the kernels do not implement: another model type, an
    activation other than exact-erf "gelu", sequential residuals, projections without bias, or scaled RoPE.
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "gpt_neox":
        raise ValueError(f"hf_config.model_type: expected 'gpt_neox', got {model_type!r}")
    if hf_config.hidden_act != "gelu":
        raise ValueError(f"hf_config.hidden_act: expected 'gelu' (exact erf GELU), got {hf_config.hidden_act!r}")
    if not hf_config.use_parallel_residual:
        raise ValueError("hf_config.use_parallel_residual: expected True (the kernels fuse the parallel "
                         "attention and MLP branches), got False")
    if not getattr(hf_config, "attention_bias", True):
        raise ValueError("hf_config.attention_bias: expected True (the kernels add the QKV and output biases), "
                         "got False")

    rope_type, rotary_pct, rotary_base = _rope_settings(hf_config)
    if rope_type != "default":
        raise ValueError(f"hf_config.rope_parameters['rope_type']: expected 'default' (unscaled RoPE), "
                         f"got {rope_type!r}")
    if rotary_pct is None or rotary_base is None:
        raise ValueError("hf_config.rope_parameters: expected rope_theta and partial_rotary_factor (or 4.x's "
                         f"rotary_emb_base and rotary_pct), got base {rotary_base!r}, fraction {rotary_pct!r}")

    # transformers' own rule for the head size and the rotated dims (GPTNeoXAttention.rotary_ndims).
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    config = ModelConfig(
        arch=Architecture.GPTNeoX,
        hidden=hf_config.hidden_size,
        heads=hf_config.num_attention_heads,
        head_dim=head_dim,
        ffn=hf_config.intermediate_size,
        layers=hf_config.num_hidden_layers,
        vocab=hf_config.vocab_size,
        rotary_dims=int(head_dim * rotary_pct),
        rotary_base=float(rotary_base),
        norm_eps=float(hf_config.layer_norm_eps),
        parallel_residual=True,
        norm=Norm.LayerNorm,
        activation=Activation.GELU,
    )
    config.validate()
    return config
