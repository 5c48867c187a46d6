"""Llama on the CPU: config_from_transformers for LlamaConfig (transformers 5.x and 4.x-style configs) against the
library's named configs, what it refuses, ModelConfig's kv_heads / rope_scaling / rotary_inv_freq, and the weight
schema against the parameters of real (tiny, randomly initialised) transformers models."""

import math
import random
import re
import types

import numpy as np
import pytest

import clusterfusion as cf
from clusterfusion import weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=8192)

# The four shapes of shared/notes/llama-decode.md, as their checkpoints' config.json have them.
LLAMA_SHAPES = {
    "llama-2-7b": dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                       intermediate_size=11008, num_hidden_layers=32, vocab_size=32000, rope_theta=10000.0,
                       rope_scaling=None, tie_word_embeddings=False, max_position_embeddings=4096),
    "tinyllama-1.1b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=64,
                           intermediate_size=5632, num_hidden_layers=22, vocab_size=32000, rope_theta=10000.0,
                           rope_scaling=None, tie_word_embeddings=False, max_position_embeddings=2048),
    "llama-3-8b": dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       intermediate_size=14336, num_hidden_layers=32, vocab_size=128256, rope_theta=500000.0,
                       rope_scaling=dict(LLAMA3_ROPE, factor=8.0), tie_word_embeddings=False,
                       max_position_embeddings=8192 * 2),
    "llama-3.2-1b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         intermediate_size=8192, num_hidden_layers=16, vocab_size=128256, rope_theta=500000.0,
                         rope_scaling=dict(LLAMA3_ROPE, factor=32.0), tie_word_embeddings=True,
                         max_position_embeddings=131072),
}


def llama_config(**kwargs):
    """A transformers LlamaConfig as the checkpoints write it (rms_norm_eps 1e-5, silu, no biases)."""
    kwargs = dict(dict(rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False, mlp_bias=False), **kwargs)
    return transformers.LlamaConfig(**kwargs)


def small_llama_hf(**overrides):
    heads = random.choice([2, 4, 8])
    kwargs = dict(hidden_size=heads * random.choice([16, 32, 64]), num_attention_heads=heads,
                  num_key_value_heads=random.choice([k for k in (1, 2, 4, 8) if heads % k == 0]),
                  intermediate_size=random.randint(1, 8) * 32, num_hidden_layers=random.randint(1, 3),
                  vocab_size=random.randint(64, 512), rope_theta=random.choice([10000.0, 500000.0]))
    kwargs.update(overrides)
    return llama_config(**kwargs)


def small_neox_hf(**overrides):
    heads = random.choice([2, 4, 8])
    kwargs = dict(hidden_size=heads * random.choice([16, 32, 64]), num_attention_heads=heads,
                  intermediate_size=random.randint(1, 8) * 32, num_hidden_layers=random.randint(1, 3),
                  vocab_size=random.randint(64, 512), rotary_pct=random.choice([0.25, 0.5, 1.0]))
    kwargs.update(overrides)
    return transformers.GPTNeoXConfig(**kwargs)


# ---- config_from_transformers(LlamaConfig) -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LLAMA_SHAPES))
def test_llama_checkpoint_configs_are_the_named_configs(name):
    shape = LLAMA_SHAPES[name]
    c = cf.config_from_transformers(llama_config(**shape))
    assert c == cf.ModelConfig.named(name)
    # And the fields themselves, so that a mistake shared by both sides shows.
    assert (c.arch, c.norm, c.activation, c.parallel_residual) == (
        cf.Architecture.Llama, cf.Norm.RMSNorm, cf.Activation.SiLU, False)
    assert (c.hidden, c.heads, c.kv_heads, c.head_dim, c.ffn, c.layers, c.vocab) == (
        shape["hidden_size"], shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"],
        shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"])
    assert (c.rotary_dims, c.rotary_base, c.tied_embeddings) == (
        shape["head_dim"], shape["rope_theta"], shape["tie_word_embeddings"])
    assert c.norm_eps == pytest.approx(1e-5, rel=1e-6)
    rope = shape["rope_scaling"]
    if rope is None:
        assert c.rope_scaling == cf.RopeScaling() and c.rope_scaling.type == cf.RopeType.Default
    else:
        assert (c.rope_scaling.type, c.rope_scaling.factor, c.rope_scaling.low_freq_factor,
                c.rope_scaling.high_freq_factor, c.rope_scaling.original_max_positions) == (
            cf.RopeType.Llama3, rope["factor"], 1.0, 4.0, 8192)
    assert c.group_size == c.heads // c.kv_heads and c.qkv_rows == (c.heads + 2 * c.kv_heads) * c.head_dim


def test_small_llama_configs_convert():
    hf = small_llama_hf(tie_word_embeddings=random.choice([False, True]))
    c = cf.config_from_transformers(hf)
    assert (c.hidden, c.heads, c.kv_heads, c.head_dim, c.rotary_dims, c.ffn, c.layers, c.vocab) == (
        hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.hidden_size // hf.num_attention_heads,
        hf.hidden_size // hf.num_attention_heads, hf.intermediate_size, hf.num_hidden_layers, hf.vocab_size)
    assert c.tied_embeddings == hf.tie_word_embeddings
    assert c.rotary_base == hf.rope_parameters["rope_theta"]


def test_llama_linear_rope_of_a_5x_config():
    factor = random.choice([2.0, 4.0, 0.5])
    hf = small_llama_hf(rope_scaling=dict(rope_type="linear", factor=factor))
    c = cf.config_from_transformers(hf)
    assert c.rope_scaling == cf.RopeScaling(type=cf.RopeType.Linear, factor=factor)


def llama_4x(**overrides):
    """A transformers 4.x-style Llama config: rope_theta and rope_scaling as plain attributes, no
    rope_parameters."""
    values = dict(model_type="llama", hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=1024, num_hidden_layers=2, vocab_size=1000, hidden_act="silu", rms_norm_eps=1e-5,
                  rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False, attention_bias=False,
                  mlp_bias=False, max_position_embeddings=4096)
    values.update(overrides)
    return types.SimpleNamespace(**values)


# (The expected RopeScaling as keyword arguments: pytest keeps parameters alive past the extension's teardown.)
@pytest.mark.parametrize("rope_scaling, expected", [
    (None, dict()),
    (dict(type="linear", factor=2.0), dict(type=cf.RopeType.Linear, factor=2.0)),
    (dict(rope_type="linear", factor=4.0), dict(type=cf.RopeType.Linear, factor=4.0)),
    (dict(rope_type="llama3", factor=8.0, low_freq_factor=2.0, high_freq_factor=8.0,
          original_max_position_embeddings=4096),
     dict(type=cf.RopeType.Llama3, factor=8.0, low_freq_factor=2.0, high_freq_factor=8.0,
          original_max_positions=4096)),
])
def test_llama_4x_style_configs(rope_scaling, expected):
    theta = random.choice([10000.0, 500000.0, 1e6])
    c = cf.config_from_transformers(llama_4x(rope_scaling=rope_scaling, rope_theta=theta))
    assert c.rope_scaling == cf.RopeScaling(**expected) and c.rotary_base == theta
    assert (c.arch, c.hidden, c.heads, c.kv_heads, c.head_dim, c.rotary_dims) == (
        cf.Architecture.Llama, 512, 8, 2, 64, 64)


def test_llama_4x_style_config_without_kv_heads_is_multi_head():
    """Llama-1-era configs have num_key_value_heads None (or no such attribute): one kv head per head."""
    c = cf.config_from_transformers(llama_4x(num_key_value_heads=None))
    assert c.kv_heads == c.heads == 8
    hf = llama_4x()
    del hf.num_key_value_heads
    assert cf.config_from_transformers(hf).kv_heads == 8


@pytest.mark.parametrize("override, message", [
    (dict(attention_bias=True), r"^hf_config\.attention_bias: expected False .*got True"),
    (dict(mlp_bias=True), r"^hf_config\.mlp_bias: expected False .*got True"),
    (dict(hidden_act="gelu"), r"^hf_config\.hidden_act: expected 'silu' \(SwiGLU\), got 'gelu'"),
    (dict(hidden_act="relu"), r"^hf_config\.hidden_act: expected 'silu'"),
    (dict(num_attention_heads=4, num_key_value_heads=3, hidden_size=256),
     r"^hf_config\.num_key_value_heads: 3 does not divide num_attention_heads 4"),
    (dict(rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=1024)),
     r"^hf_config\.rope_scaling: rope_type 'yarn' is not supported \(supported: default, linear, llama3\)"),
    (dict(rope_scaling=dict(rope_type="dynamic", factor=2.0)),
     r"^hf_config\.rope_scaling: rope_type 'dynamic' is not supported"),
])
def test_llama_config_refusals_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        cf.config_from_transformers(small_llama_hf(**override))


@pytest.mark.parametrize("override, message", [
    (dict(attention_bias=True), r"^hf_config\.attention_bias"),
    (dict(hidden_act="gelu_new"), r"^hf_config\.hidden_act"),
    (dict(num_key_value_heads=3), r"^hf_config\.num_key_value_heads: 3 does not divide num_attention_heads 8"),
    (dict(rope_scaling=dict(type="yarn", factor=4.0)), r"^hf_config\.rope_scaling: rope_type 'yarn'"),
    (dict(rope_scaling=dict(rope_type="longrope", factor=4.0)), r"^hf_config\.rope_scaling: rope_type 'longrope'"),
])
def test_llama_4x_style_refusals_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        cf.config_from_transformers(llama_4x(**override))


def test_a_head_dim_that_does_not_tile_hidden_is_refused():
    hf = llama_4x(head_dim=32)  # 8 heads of 32 are not hidden 512
    with pytest.raises(ValueError, match=r"^ModelConfig\.hidden: must equal heads \* head_dim"):
        cf.config_from_transformers(hf)


@pytest.mark.parametrize("model_type", ["gpt2", "mistral", None])
def test_other_model_types_are_refused_listing_the_accepted_ones(model_type):
    with pytest.raises(ValueError, match=rf"^hf_config\.model_type: expected one of 'gpt_neox', 'llama', got "
                                         rf"{model_type!r}$"):
        cf.config_from_transformers(llama_4x(model_type=model_type))
    if model_type == "gpt2":
        with pytest.raises(ValueError, match=r"^hf_config\.model_type: expected one of 'gpt_neox', 'llama', got "
                                             r"'gpt2'"):
            cf.config_from_transformers(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=64))


def test_gpt_neox_still_converts():
    rotary_pct = random.choice([0.25, 0.5, 1.0])
    hf = small_neox_hf(rotary_pct=rotary_pct)
    c = cf.config_from_transformers(hf)
    head_dim = hf.hidden_size // hf.num_attention_heads
    assert (c.arch, c.norm, c.activation, c.parallel_residual, c.tied_embeddings) == (
        cf.Architecture.GPTNeoX, cf.Norm.LayerNorm, cf.Activation.GELU, True, False)
    assert (c.heads, c.kv_heads, c.head_dim, c.rotary_dims) == (
        hf.num_attention_heads, hf.num_attention_heads, head_dim, int(head_dim * rotary_pct))
    assert c.rope_scaling == cf.RopeScaling()
    pythia = transformers.GPTNeoXConfig(hidden_size=512, num_attention_heads=8, intermediate_size=2048,
                                        num_hidden_layers=6, vocab_size=50304, rotary_pct=0.25,
                                        rotary_emb_base=10000, layer_norm_eps=1e-5)
    assert cf.config_from_transformers(pythia) == cf.ModelConfig.named("pythia-70m")


def test_gpt_neox_4x_style_with_rope_scaling_is_refused():
    hf4 = types.SimpleNamespace(model_type="gpt_neox", hidden_size=512, num_attention_heads=8,
                                intermediate_size=2048, num_hidden_layers=6, vocab_size=50304, hidden_act="gelu",
                                use_parallel_residual=True, rotary_pct=0.25, rotary_emb_base=10000,
                                rope_scaling=dict(type="linear", factor=2.0), layer_norm_eps=1e-5)
    with pytest.raises(ValueError, match=r"^hf_config\.rope_scaling: expected the default rope for GPT-NeoX, got "
                                         r"'linear'"):
        cf.config_from_transformers(hf4)
    hf4.rope_scaling = None
    assert cf.config_from_transformers(hf4) == cf.ModelConfig.named("pythia-70m")


# ---- ModelConfig: kv_heads, rope_scaling, repr, rotary_inv_freq -------------------------------------------------

def test_kv_heads_defaults_to_heads():
    heads = random.randint(1, 64)
    assert cf.ModelConfig(heads=heads).kv_heads == heads
    assert cf.ModelConfig(heads=heads, kv_heads=None).kv_heads == heads
    assert cf.ModelConfig(heads=heads, kv_heads=1).kv_heads == 1
    assert cf.ModelConfig(heads=8, kv_heads=2).group_size == 4
    c = cf.ModelConfig(hidden=512, heads=8, head_dim=64, kv_heads=2)
    assert c.qkv_rows == 512 + 2 * 2 * 64


def test_kv_heads_must_divide_heads():
    c = cf.ModelConfig.named("tinyllama-1.1b")
    c.validate()
    c.kv_heads = 5
    with pytest.raises(ValueError, match=r"^ModelConfig\.kv_heads: must divide heads = 32 \(got 5\)"):
        c.validate()
    c.kv_heads = 0
    with pytest.raises(ValueError, match=r"^ModelConfig\.kv_heads: must be > 0"):
        c.validate()


@pytest.mark.parametrize("field, value, message", [
    ("factor", 0.0, r"^ModelConfig\.rope_scaling\.factor: must be a finite value > 0"),
    ("factor", float("nan"), r"^ModelConfig\.rope_scaling\.factor"),
    ("low_freq_factor", 4.0, r"^ModelConfig\.rope_scaling\.high_freq_factor: must be > low_freq_factor"),
    ("original_max_positions", 0, r"^ModelConfig\.rope_scaling\.original_max_positions: must be > 0"),
])
def test_rope_scaling_is_validated(field, value, message):
    c = cf.ModelConfig.named("llama-3-8b")
    setattr(c.rope_scaling, field, value)
    with pytest.raises(ValueError, match=message):
        c.validate()


def test_a_tied_gpt_neox_head_is_invalid():
    c = cf.ModelConfig.named("pythia-70m")
    c.tied_embeddings = True
    with pytest.raises(ValueError, match=r"^ModelConfig\.tied_embeddings: GPTNeoX has a separate LM head"):
        c.validate()


def test_gpt_neox_has_neither_grouped_queries_nor_scaled_rope():
    c = cf.ModelConfig.named("pythia-70m")
    c.kv_heads = c.heads // 2
    with pytest.raises(ValueError, match=rf"^ModelConfig\.kv_heads: GPTNeoX requires kv_heads == heads = {c.heads} "
                                         rf"\(got {c.heads // 2}\)"):
        c.validate()
    c = cf.ModelConfig.named("pythia-70m")
    c.rope_scaling = cf.RopeScaling(type=random.choice([cf.RopeType.Linear, cf.RopeType.Llama3]), factor=2.0)
    with pytest.raises(ValueError, match=r"^ModelConfig\.rope_scaling\.type: GPTNeoX requires the default rope"):
        c.validate()


def test_llama_recipe_is_enforced():
    c = cf.ModelConfig.named("llama-2-7b")
    c.norm = cf.Norm.LayerNorm
    with pytest.raises(ValueError, match=r"^ModelConfig\.norm: Llama requires RMSNorm"):
        c.validate()
    c = cf.ModelConfig.named("llama-2-7b")
    c.parallel_residual = True
    with pytest.raises(ValueError, match=r"^ModelConfig\.parallel_residual: Llama requires false"):
        c.validate()


@pytest.mark.parametrize("name", cf.model_names())
def test_named_configs_are_valid_and_repr_round_trips(name):
    c = cf.ModelConfig.named(name)
    c.validate()
    again = eval(repr(c), vars(cf))
    assert again == c and repr(again) == repr(c)
    assert again.rope_scaling == c.rope_scaling


def test_repr_round_trips_rope_scaling():
    rope = cf.RopeScaling(type=random.choice([cf.RopeType.Linear, cf.RopeType.Llama3]),
                          factor=float(np.float32(random.uniform(1, 64))),
                          low_freq_factor=float(np.float32(random.uniform(0.5, 2))),
                          high_freq_factor=float(np.float32(random.uniform(2, 8))),
                          original_max_positions=random.randint(1024, 1 << 17))
    assert eval(repr(rope), vars(cf)) == rope
    c = cf.ModelConfig.named("tinyllama-1.1b")
    c.rope_scaling = rope
    assert eval(repr(c), vars(cf)) == c
    other = eval(repr(c), vars(cf))
    other.rope_scaling.original_max_positions += 1
    assert other != c  # the comparison looks at rope_scaling


def test_unknown_name_lists_every_model():
    with pytest.raises(ValueError, match=r"unknown model name 'llama-4'.*pythia-70m.*llama-2-7b.*tinyllama-1\.1b.*"
                                         r"llama-3-8b.*llama-3\.2-1b"):
        cf.ModelConfig.named("llama-4")
    assert cf.model_names()[-4:] == ["llama-2-7b", "tinyllama-1.1b", "llama-3-8b", "llama-3.2-1b"]


def rope_config(rotary_dims, base, rope_scaling=None):
    head_dim = rotary_dims
    return cf.ModelConfig(arch=cf.Architecture.Llama, hidden=4 * head_dim, heads=4, head_dim=head_dim, ffn=64,
                          layers=1, vocab=64, rotary_dims=rotary_dims, rotary_base=base,
                          rope_scaling=rope_scaling or cf.RopeScaling(), norm=cf.Norm.RMSNorm,
                          activation=cf.Activation.SiLU, parallel_residual=False)


def test_rotary_inv_freq_default_and_linear_against_numpy():
    dims = random.choice([16, 32, 64, 80, 128])
    base = float(np.float32(random.choice([10000.0, 500000.0, random.uniform(100, 1e6)])))
    want = 1.0 / base ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    got = np.array(rope_config(dims, base).rotary_inv_freq())
    assert got.shape == (dims // 2,) and got[0] == 1.0
    np.testing.assert_allclose(got, want, rtol=1e-13)
    factor = float(np.float32(random.uniform(1.5, 16)))
    linear = cf.RopeScaling(type=cf.RopeType.Linear, factor=factor)
    np.testing.assert_allclose(np.array(rope_config(dims, base, linear).rotary_inv_freq()), want / factor, rtol=1e-13)


def llama3_inv_freq_numpy(dims, base, factor, low, high, original):
    """The llama3 rule as shared/notes/llama-decode.md writes it."""
    inv_freq = 1.0 / base ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    out = []
    for f in inv_freq:
        wavelen = 2 * math.pi / f
        if wavelen < original / high:
            out.append(f)
        elif wavelen > original / low:
            out.append(f / factor)
        else:
            s = (original / wavelen - low) / (high - low)
            out.append((1 - s) * f / factor + s * f)
    return np.array(out)


@pytest.mark.parametrize("name", ["llama-3-8b", "llama-3.2-1b"])
def test_rotary_inv_freq_llama3_against_numpy_and_transformers(name):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    c = cf.ModelConfig.named(name)
    r = c.rope_scaling
    got = np.array(c.rotary_inv_freq())
    want = llama3_inv_freq_numpy(c.rotary_dims, c.rotary_base, r.factor, r.low_freq_factor, r.high_freq_factor,
                                 r.original_max_positions)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # All three regimes occur: kept, divided by the factor, and interpolated.
    unscaled = 1.0 / c.rotary_base ** (np.arange(0, c.rotary_dims, 2) / c.rotary_dims)
    ratio = got / unscaled
    assert ratio[0] == 1.0 and ratio[-1] == pytest.approx(1 / r.factor)
    assert np.any((ratio < 1.0 - 1e-9) & (ratio > 1 / r.factor + 1e-9))
    hf = llama_config(**LLAMA_SHAPES[name])
    hf_inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    np.testing.assert_allclose(got, hf_inv_freq.double().numpy(), rtol=1e-6)  # transformers computes in float32


# ---- the weight schema ----------------------------------------------------------------------------------------

def test_weight_schema_of_pythia_2_8b():
    s = cf.weight_schema(cf.ModelConfig.named("pythia-2.8b"))
    h, f, v = 2560, 10240, 50304
    assert [(t["name"], t["hf_name"], t["shape"]) for t in s["layer"]] == [
        ("ln1_weight", "input_layernorm.weight", (h,)),
        ("ln1_bias", "input_layernorm.bias", (h,)),
        ("ln2_weight", "post_attention_layernorm.weight", (h,)),
        ("ln2_bias", "post_attention_layernorm.bias", (h,)),
        ("w_qkv", "attention.query_key_value.weight", (3 * h, h)),
        ("b_qkv", "attention.query_key_value.bias", (3 * h,)),
        ("w_o", "attention.dense.weight", (h, h)),
        ("b_o", "attention.dense.bias", (h,)),
        ("w_up", "mlp.dense_h_to_4h.weight", (f, h)),
        ("b_up", "mlp.dense_h_to_4h.bias", (f,)),
        ("w_down", "mlp.dense_4h_to_h.weight", (h, f)),
        ("b_down", "mlp.dense_4h_to_h.bias", (h,)),
    ]
    assert [(t["name"], t["hf_name"], t["shape"]) for t in s["model"]] == [
        ("embed_in", "gpt_neox.embed_in.weight", (v, h)),
        ("final_norm_weight", "gpt_neox.final_layer_norm.weight", (h,)),
        ("final_norm_bias", "gpt_neox.final_layer_norm.bias", (h,)),
        ("lm_head", "lm_head.weight", (v, h)),
    ]
    assert (s["layer_prefix"], s["lm_head_alias"]) == ("gpt_neox.layers.", "embed_out.weight")


def test_weight_schema_of_tinyllama():
    s = cf.weight_schema(cf.ModelConfig.named("tinyllama-1.1b"))
    h, kv, f, v = 2048, 4 * 64, 5632, 32000
    assert [(t["name"], t["hf_name"], t["shape"]) for t in s["layer"]] == [
        ("ln1_weight", "input_layernorm.weight", (h,)),
        ("w_q", "self_attn.q_proj.weight", (h, h)),
        ("w_k", "self_attn.k_proj.weight", (kv, h)),
        ("w_v", "self_attn.v_proj.weight", (kv, h)),
        ("w_o", "self_attn.o_proj.weight", (h, h)),
        ("ln2_weight", "post_attention_layernorm.weight", (h,)),
        ("w_gate", "mlp.gate_proj.weight", (f, h)),
        ("w_up", "mlp.up_proj.weight", (f, h)),
        ("w_down", "mlp.down_proj.weight", (h, f)),
    ]
    assert [(t["name"], t["hf_name"], t["shape"]) for t in s["model"]] == [
        ("embed_in", "model.embed_tokens.weight", (v, h)),
        ("final_norm_weight", "model.norm.weight", (h,)),
        ("lm_head", "lm_head.weight", (v, h)),
    ]
    assert (s["layer_prefix"], s["lm_head_alias"]) == ("model.layers.", "")


def test_weight_schema_refuses_an_invalid_config():
    c = cf.ModelConfig.named("llama-3-8b")
    c.kv_heads = 3
    with pytest.raises(ValueError, match=r"^ModelConfig\.kv_heads"):
        cf.weight_schema(c)


def tiny_model(arch, tied=False):
    """A randomly initialised float32 transformers causal LM on the CPU, and its ModelConfig."""
    if arch == "llama":
        hf = small_llama_hf(tie_word_embeddings=tied)
        model = transformers.LlamaForCausalLM(hf)
    else:
        hf = small_neox_hf()
        model = transformers.GPTNeoXForCausalLM(hf)
    return model.eval(), cf.config_from_transformers(hf)


def identity(seen):
    def convert(tensor, name):
        seen.append(name)
        return tensor
    return convert


class Renamed:
    """A model whose named_parameters() renames or drops some (as another transformers version would)."""

    def __init__(self, model, rename=None, drop=()):
        self.model, self.rename, self.drop = model, rename or {}, set(drop)

    def named_parameters(self):
        for name, p in self.model.named_parameters():
            if name not in self.drop:
                yield self.rename.get(name, name), p


@pytest.mark.parametrize("arch, tied", [("gpt_neox", False), ("llama", False), ("llama", True)])
def test_model_weights_cover_every_parameter_and_share_it(arch, tied):
    model, config = tiny_model(arch, tied)
    schema = cf.weight_schema(config)
    params = dict(model.named_parameters())
    seen = []
    w = weights.model_weights(model, config, convert=identity(seen))
    assert set(w) == {t["name"] for t in schema["model"]} | {"layers"}
    assert len(w["layers"]) == config.layers
    for t in schema["model"]:
        assert tuple(w[t["name"]].shape) == t["shape"], t["name"]
    for i, layer in enumerate(w["layers"]):
        assert set(layer) == {t["name"] for t in schema["layer"]}
        for t in schema["layer"]:
            hf_name = f"{schema['layer_prefix']}{i}.{t['hf_name']}"
            assert layer[t["name"]] is params[hf_name], hf_name  # the model's own tensor
            assert tuple(layer[t["name"]].shape) == t["shape"], hf_name
    # Every transformers parameter is some keyword's (the tied head is the embedding, listed once).
    assert set(seen) == set(params)
    assert len(seen) == len(params) + (1 if tied else 0)
    embed = params[schema["model"][0]["hf_name"]]
    assert w["embed_in"] is embed and w["embed_in"].data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert w["lm_head"].data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert (w["lm_head"].data_ptr() == w["embed_in"].data_ptr()) == tied
    if tied:
        assert model.state_dict()["lm_head.weight"].data_ptr() == embed.data_ptr()


def test_model_weights_take_the_4x_gpt_neox_head_name():
    """transformers 4.x named GPT-NeoX's head embed_out."""
    model, config = tiny_model("gpt_neox")
    w = weights.model_weights(Renamed(model, rename={"lm_head.weight": "embed_out.weight"}), config,
                              convert=lambda t, name: t)
    assert w["lm_head"] is dict(model.named_parameters())["lm_head.weight"]


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_a_missing_parameter_is_named(arch):
    model, config = tiny_model(arch)
    name = random.choice([n for n, _ in model.named_parameters()])
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}: missing \(the model's parameters do not "
                                         rf"match the weight schema\)$"):
        weights.model_weights(Renamed(model, drop=[name]), config, convert=lambda t, n: t)


def test_an_untied_llama_without_its_head_names_it():
    model, config = tiny_model("llama", tied=False)
    with pytest.raises(ValueError, match=r"^lm_head\.weight: missing"):
        weights.model_weights(Renamed(model, drop=["lm_head.weight"]), config, convert=lambda t, n: t)


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_layer_weights_of_one_decoder_layer(arch):
    model, config = tiny_model(arch)
    index = random.randrange(config.layers)
    hf_layer = model.base_model.layers[index]
    seen = []
    w = weights.layer_weights(hf_layer, config, convert=identity(seen))
    schema = cf.weight_schema(config)["layer"]
    assert list(w) == [t["name"] for t in schema]
    assert seen == [f"hf_layer.{t['hf_name']}" for t in schema]
    params = dict(hf_layer.named_parameters())
    for t in schema:
        assert w[t["name"]] is params[t["hf_name"]] and tuple(w[t["name"]].shape) == t["shape"]


def test_the_default_conversion_refuses_cpu_and_float32_by_name():
    model, config = tiny_model("llama")
    with pytest.raises(TypeError, match=r"^model\.embed_tokens\.weight: expected a float16 CUDA tensor, got "
                                        r"torch\.float32 on cpu"):
        weights.model_weights(model, config)
