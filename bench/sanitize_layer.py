#!/usr/bin/env python3
"""The program compute-sanitizer runs (bench/gpu_check.sh: memcheck, racecheck, synccheck): one forward of the
fused layer per mode at each model shape, with a one-layer cache and a position whose past spans several
attention tiles in every block of a cluster. Random weights at realistic scales and a random past; exits 1
if an output is not finite (the sanitizer's own findings set its exit code).

    PYTHONPATH=build-gpu/python compute-sanitizer --tool memcheck python3 bench/sanitize_layer.py
"""

import argparse
import sys

import torch

MODELS = ["pythia-2.8b", "pythia-6.9b"]
MODES = ["split", "cooperative"]


def random_weights(config):
    """NeoXLayer's keyword arguments: linear weights and biases N(0, 0.02), LayerNorm weights N(1, 0.1)."""
    h, f = config.hidden, config.ffn

    def normal(shape, mean=0.0, std=0.02):
        return torch.empty(shape, device="cuda").normal_(mean, std).half()

    return dict(ln1_weight=normal(h, 1.0, 0.1), ln1_bias=normal(h, 0.0, 0.05), ln2_weight=normal(h, 1.0, 0.1),
                ln2_bias=normal(h, 0.0, 0.05), w_qkv=normal((3 * h, h)), b_qkv=normal(3 * h), w_o=normal((h, h)),
                b_o=normal(h), w_up=normal((f, h)), b_up=normal(f), w_down=normal((h, f)), b_down=normal(h))


def run_model(cf, model, max_seq, position):
    """One forward per mode; returns the names of the outputs that are not all finite."""
    config = cf.ModelConfig.pythia(model)
    config.layers = 1
    weights = random_weights(config)
    layer = cf.NeoXLayer(config, max_seq, **weights)
    cache = cf.KVCache(config, max_seq)
    for view in (cache.keys(0), cache.values(0)):
        torch.from_dlpack(view)[:, :position].normal_()
    cache.length = position
    x = torch.randn(config.hidden, device="cuda").half()
    bad = []
    for mode in MODES:
        nan = float("nan")
        out = torch.full((config.hidden,), nan, dtype=torch.float16, device="cuda")
        attn = torch.full((config.hidden,), nan, device="cuda")
        mlp_act = torch.full((config.ffn,), nan, device="cuda")
        layer.forward(cache, 0, x, out, attn, mlp_act, position, mode=mode,
                      stream=torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        finite = {name: bool(torch.isfinite(t).all()) for name, t in (("out", out), ("attn", attn),
                                                                      ("mlp_act", mlp_act))}
        print(f"{model} {mode} position {position}: finite {finite}, plan {layer.plan}", flush=True)
        bad += [f"{model} {mode} {name}" for name, ok in finite.items() if not ok]
    return bad


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated Pythia names")
    parser.add_argument("--max-seq", type=int, default=1024)
    parser.add_argument("--position", type=int, default=900)
    args = parser.parse_args()
    import clusterfusion as cf

    torch.manual_seed(0)
    bad = []
    for model in args.models.split(","):
        bad += run_model(cf, model, args.max_seq, args.position)
    if bad:
        print(f"non-finite outputs: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
