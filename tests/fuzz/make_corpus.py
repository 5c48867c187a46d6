#!/usr/bin/env python3
"""Writes the fuzzers' seed corpus: small valid safetensors files, written by the Hugging Face writer (the format's
reference) and read back by its reader, and the JSON that checkpoints carry (config.json, the shard index).

    tests/fuzz/make_corpus.py [OUT_DIR]    (default: tests/fuzz/corpus; needs numpy and safetensors)

The files are committed; run this again only to change them.
"""
import json
import pathlib
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent / "corpus")
st_dir, json_dir = out / "safetensors", out / "json"
st_dir.mkdir(parents=True, exist_ok=True)
json_dir.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)

files = {
    "empty": ({}, None),
    "one_f16": ({"w": rng.standard_normal((2, 3)).astype(np.float16)}, None),
    "f32_bias_metadata": (
        {"layer.weight": rng.standard_normal((4, 2)).astype(np.float32), "layer.bias": np.zeros(4, np.float32)},
        {"format": "pt", "note": "caf\u00e9 \u2603"},
    ),
    "ints_and_bools": (
        {"ids": np.arange(3, dtype=np.int64), "mask": np.array([True, False]), "u8": np.arange(5, dtype=np.uint8),
         "i32": np.array([-1, 7], np.int32), "i16": np.array([3], np.int16), "f64": np.array([0.5])},
        None,
    ),
    "zero_size_and_scalar": (
        {"empty": np.zeros((0, 4), np.float16), "scalar": np.array(1.5, np.float32),
         "rank8": np.ones((1, 1, 1, 1, 1, 1, 1, 2), np.float16)},
        None,
    ),
    "gpt_neox_layer": (
        {"gpt_neox.layers.0.attention.query_key_value.weight": rng.standard_normal((6, 2)).astype(np.float16),
         "gpt_neox.layers.0.attention.query_key_value.bias": rng.standard_normal(6).astype(np.float16),
         "gpt_neox.layers.0.input_layernorm.weight": np.ones(2, np.float16),
         "gpt_neox.embed_in.weight": rng.standard_normal((5, 2)).astype(np.float16)},
        {"format": "pt"},
    ),
    "unicode_names": ({"\u00e9\u00e8": np.ones(1, np.float16), "\U0001f600": np.ones(2, np.float16)}, None),
}
for name, (tensors, metadata) in files.items():
    path = st_dir / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    back = load_file(str(path))
    assert sorted(back) == sorted(tensors), name

configs = {
    "config_pythia_70m.json": {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_act": "gelu", "hidden_size": 512,
        "num_attention_heads": 8, "intermediate_size": 2048, "num_hidden_layers": 6, "vocab_size": 50304,
        "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-05, "use_parallel_residual": True,
        "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "float16"},
    "config_llama_3_2_1b.json": {
        "model_type": "llama", "hidden_act": "silu", "hidden_size": 2048, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192, "num_hidden_layers": 16,
        "vocab_size": 128256, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": True,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "attention_bias": False, "mlp_bias": False, "eos_token_id": [128001, 128008], "pad_token_id": None},
    "config_llama_v5.json": {
        "model_type": "llama", "hidden_act": "silu", "hidden_size": 4096, "num_attention_heads": 32,
        "intermediate_size": 11008, "num_hidden_layers": 32, "vocab_size": 32000, "rms_norm_eps": 1e-06,
        "head_dim": None, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}},
    "index.json": {
        "metadata": {"total_size": 1234},
        "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors",
                       "c.weight": "model-00001-of-00002.safetensors"}},
    "kinds.json": [1, -2.5e3, 0, -0.0, 1E+2, True, False, None, "q\"\\/\b\f\n\r\t\u00e9\U0001f600", {}, [], {"a": [{}]}],
}
for name, value in configs.items():
    (json_dir / name).write_text(json.dumps(value, ensure_ascii=name != "kinds.json", indent=1 if "index" in name else None))
print(f"{len(files)} safetensors files and {len(configs)} JSON files in {out}")
