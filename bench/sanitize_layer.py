#!/usr/bin/env python3
"""The program compute-sanitizer runs (bench/gpu_check.sh: memcheck, racecheck, synccheck): one forward of the
fused decoder layer per mode for each model named (GPT-NeoX or Llama, any embedded name; default pythia-2.8b),
with a one-layer cache and a position whose past spans several attention tiles in every block of a cluster.
The layer's tensors come from the weight schema (random, at realistic scales), and so does a random past; exits 1
if an output is not finite (the sanitizer's own findings set its exit code).

    PYTHONPATH=build-gpu/python compute-sanitizer --tool memcheck python3 bench/sanitize_layer.py \
        [--models pythia-2.8b,llama-2-7b] [--heads 80]

--heads splits each model's hidden into that many heads: `--models pythia-12b --heads 80` runs clusters of one
block on an H100 or H200, whose proj_residual takes its K in two passes.
"""

import argparse
import math
import sys

import torch

DEFAULT_MODELS = ["pythia-2.8b"]
MODES = ["split", "cooperative"]


def random_weights(cf, config):
    """DecoderLayer's keyword arguments, one per tensor of weight_schema(config)['layer'] at its shape: norm
    weights N(1, 0.1) and biases N(0, 0.05), every other weight and bias N(0, 0.02), as
    clusterfusion.cli.random_model draws them."""
    weights = {}
    for spec in cf.weight_schema(config)["layer"]:
        if "norm" in spec["hf_name"]:
            mean, std = (0.0, 0.05) if spec["name"].endswith("bias") else (1.0, 0.1)
        else:
            mean, std = 0.0, 0.02
        weights[spec["name"]] = torch.empty(spec["shape"], device="cuda").normal_(mean, std).half()
    return weights


def run_model(cf, model, max_seq, position, heads=None):
    """One forward per mode; returns the names of the outputs that are not all finite."""
    config = cf.ModelConfig.named(model)
    config.layers = 1
    if heads is not None:
        if config.hidden % heads != 0:
            raise SystemExit(f"--heads: {heads} does not divide {model}'s hidden {config.hidden}")
        rotary_fraction, mha = config.rotary_dims / config.head_dim, config.kv_heads == config.heads
        config.heads = heads
        if mha:
            config.kv_heads = heads
        config.head_dim = config.hidden // heads
        config.rotary_dims = int(config.head_dim * rotary_fraction)
        model = f"{model} ({heads} heads)"
    weights = random_weights(cf, config)
    print(f"{model}: {len(weights)} layer tensors, {sum(math.prod(w.shape) for w in weights.values()):,} elements",
          flush=True)
    layer = cf.DecoderLayer(config, max_seq, **weights)
    cache = cf.KVCache(config, max_seq)
    for view in (cache.keys(0), cache.values(0)):
        torch.from_dlpack(view)[:, :position].normal_()
    cache.length = position
    x = torch.randn(config.hidden, device="cuda").half()
    bad = []
    for mode in MODES:
        if mode == "cooperative" and not layer.plan["cooperative_supported"]:
            print(f"{model} {mode}: not supported on this device for this config, skipped", flush=True)
            continue
        nan = float("nan")
        out = torch.full((config.hidden,), nan, dtype=torch.float16, device="cuda")
        attn = torch.full((config.hidden,), nan, device="cuda")
        mlp_act = torch.full((config.ffn,), nan, device="cuda")
        h1 = torch.full((config.hidden,), nan, dtype=torch.float16, device="cuda")
        layer.forward(cache, 0, x, out, attn, mlp_act, position, mode=mode, h1=h1,
                      stream=torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        outputs = [("out", out), ("attn", attn), ("mlp_act", mlp_act)]
        if not config.parallel_residual:  # h1 (x + attention) is written by sequential-residual layers only
            outputs.append(("h1", h1))
        finite = {name: bool(torch.isfinite(t).all()) for name, t in outputs}
        print(f"{model} {mode} position {position}: finite {finite}, plan {layer.plan}", flush=True)
        bad += [f"{model} {mode} {name}" for name, ok in finite.items() if not ok]
    return bad


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated embedded model names (clusterfusion.model_names(); default "
                        f"{','.join(DEFAULT_MODELS)})")
    parser.add_argument("--max-seq", type=int, default=1024)
    parser.add_argument("--position", type=int, default=900)
    parser.add_argument("--heads", type=int, default=None, help="split each model's hidden into this many heads")
    args = parser.parse_args()
    import clusterfusion as cf

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in cf.model_names()]
    if unknown:
        parser.error(f"--models: unknown {unknown}, expected some of {cf.model_names()}")
    torch.manual_seed(0)
    bad = []
    for model in models:
        bad += run_model(cf, model, args.max_seq, args.position, args.heads)
    if bad:
        print(f"non-finite outputs: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
