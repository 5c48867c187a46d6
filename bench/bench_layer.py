#!/usr/bin/env python3
"""Per-layer decode time of the fused GPT-NeoX layer beside transformers' own GPTNeoXLayer, on one GPU.

Modes: split, cooperative (one library call per layer, launch cost included), split_graph, cooperative_graph
(the same calls captured in a CUDA graph: kernel time only), split_graph_overlap, cooperative_graph_overlap (the
same graphs with each layer overlapping the previous kernel, NeoXLayer.overlap_previous_kernel, as the
whole-model step runs them), transformers (GPTNeoXLayer.forward, eager) and transformers_graph (the same
captured in a CUDA graph). Each is timed at several context lengths ctx: the new
token sits at position ctx - 1 and attends to ctx positions.

Weights rotate over enough distinct layers (1.3-1.6 GB) that the 50 MB L2 cannot serve them; the fused layers
read the transformers layers' parameters in place. The streaming-read bandwidth (torch.sum over 2 GiB of
float16) is measured in the same run, and bw_frac = (weight + KV bytes) / time / that bandwidth.
Writes JSON (--out) and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from gpu_measure import gpu_tag, median_event_ms, streaming_read_bw

# Model shapes (transformers GPTNeoXConfig fields) and how many layers to rotate over.
MODELS = {
    "pythia-2.8b": (dict(hidden_size=2560, num_attention_heads=32, intermediate_size=10240, vocab_size=50304), 8),
    "pythia-6.9b": (dict(hidden_size=4096, num_attention_heads=32, intermediate_size=16384, vocab_size=50432), 4),
}
MODES = ["split", "cooperative", "split_graph", "cooperative_graph", "split_graph_overlap",
         "cooperative_graph_overlap", "transformers_eager", "transformers_graph"]
DEFAULT_CTX = [16, 128, 512, 1024, 2048]
GRAPH_PASSES = 2  # passes over the rotated layers per graph replay
WARMUP = 5
CHECK_TOL = 5e-3  # each mode's last output against transformers eager, relative: flags a broken mode


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--ctx", default=None,
                        help=f"comma-separated context lengths (default {','.join(map(str, DEFAULT_CTX))})")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (graph replays) per row "
                        "(default 200, --quick 30)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and contexts 16, 512, 2048")
    parser.add_argument("--out", default=None, help="JSON path, or an existing directory to write "
                        "layer_<gpu>.json into (default bench/results/layer_<gpu>.json)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    for name, given, known in (("--models", args.models, MODELS), ("--modes", args.modes, MODES)):
        unknown = [v for v in given if v not in known]
        if unknown:
            parser.error(f"{name}: unknown {unknown}, expected some of {list(known)}")
    default_ctx = [16, 512, 2048] if args.quick else DEFAULT_CTX
    args.ctx = [int(c) for c in args.ctx.split(",")] if args.ctx else default_ctx
    if any(c < 1 for c in args.ctx):
        parser.error(f"--ctx: expected positive lengths, got {args.ctx}")
    if args.iters is None:
        args.iters = 30 if args.quick else 200
    return args



def output_path(out, gpu):
    if out is None:
        return Path(__file__).resolve().parent / "results" / f"layer_{gpu}.json"
    path = Path(out)
    return path / f"layer_{gpu}.json" if path.is_dir() else path




def captured(fn):
    """A CUDA graph of fn() (warmed up on a side stream first, as torch asks) and what the capture returned."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result


class FixedSlotCache:
    """The one method GPTNeoXAttention calls on its cache (update), over preallocated [1, heads, max_seq,
    head_dim] keys and values: writes the new token at a fixed position and returns positions 0..position.
    Shapes and addresses stay fixed, so a CUDA graph can capture it and every replay is the same decode step
    (transformers' StaticCache instead advances its position on every replay and attends over max_cache_len)."""

    def __init__(self, keys, values, position):
        self.keys, self.values, self.position = keys, values, position

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        p = self.position
        self.keys[:, :, p:p + 1].copy_(key_states)
        self.values[:, :, p:p + 1].copy_(value_states)
        return self.keys[:, :, :p + 1], self.values[:, :, :p + 1]


@torch.no_grad()
def random_hf_layers(hf_config, count, generator):
    """`count` float16 CUDA GPTNeoXLayers with weights at realistic scales (never zeros: they can run faster)."""
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

    layers = []
    for index in range(count):
        with torch.device("meta"):
            layer = GPTNeoXLayer(hf_config, layer_idx=index).half()
        layer = layer.to_empty(device="cuda").eval()
        for name, param in layer.named_parameters():
            mean, std = ((1.0, 0.1) if name.endswith("weight") else (0.0, 0.05)) if "layernorm" in name else (0.0, 0.02)
            param.normal_(mean, std, generator=generator)
        layers.append(layer)
    return layers


def layer_bytes(config, ctx):
    """Bytes one decode step of one layer must read: all weights, biases and LayerNorms, and ctx keys and values."""
    h, f = config.hidden, config.ffn
    weights = 3 * h * h + h * h + 2 * f * h
    vectors = 3 * h + h + f + h + 4 * h
    return 2 * (weights + vectors) + 2 * ctx * h * 2


def rel_err(out, x, expected):
    """‖(out − x) − (expected − x)‖ / ‖expected − x‖: the layer's update against transformers'."""
    delta, want = out.double() - x.double(), expected.double() - x.double()
    return float((delta - want).norm() / want.norm())


class ModelBench:
    """The rotated layers of one model shape, fused and transformers, on shared weights and a shared cache."""

    def __init__(self, cf, model, max_ctx):
        from transformers import GPTNeoXConfig
        from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

        shape, self.rotate = MODELS[model]
        self.model = model
        self.hf_config = GPTNeoXConfig(**shape, num_hidden_layers=self.rotate, rotary_pct=0.25,
                                       rotary_emb_base=10000, layer_norm_eps=1e-5, use_parallel_residual=True,
                                       hidden_act="gelu", tie_word_embeddings=False, max_position_embeddings=2048)
        self.hf_config._attn_implementation = "sdpa"  # what from_pretrained picks on a CUDA machine
        self.config = cf.config_from_transformers(self.hf_config)
        generator = torch.Generator(device="cuda").manual_seed(1234)
        self.hf_layers = random_hf_layers(self.hf_config, self.rotate, generator)
        self.rotary = GPTNeoXRotaryEmbedding(self.hf_config).to("cuda")
        self.fused = [cf.FusedNeoXLayer.from_transformers(layer, self.config, max_ctx).kernel
                      for layer in self.hf_layers]
        self.cache = cf.KVCache(self.config, max_ctx)
        self.kv = []  # per layer: the cache's keys and values as torch tensors [1, heads, max_seq, head_dim]
        for index in range(self.rotate):
            keys, values = torch.from_dlpack(self.cache.keys(index)), torch.from_dlpack(self.cache.values(index))
            keys.normal_(generator=generator)
            values.normal_(generator=generator)
            self.kv.append((keys[None], values[None]))
        self.x = torch.randn(self.config.hidden, device="cuda", generator=generator).half()
        self.out = torch.empty_like(self.x)
        self.attn = torch.empty(self.config.hidden, dtype=torch.float32, device="cuda")
        self.mlp_act = torch.empty(self.config.ffn, dtype=torch.float32, device="cuda")
        self.cooperative_supported = self.fused[0].plan["cooperative_supported"]

    def fused_call(self, index, position, mode):
        self.fused[index].forward(self.cache, index, self.x, self.out, self.attn, self.mlp_act, position,
                                  mode=mode, stream=torch.cuda.current_stream().cuda_stream)
        return self.out

    def hf_call(self, index, caches, cos_sin):
        return self.hf_layers[index](self.x.view(1, 1, -1), layer_past=caches[index], position_embeddings=cos_sin)

    def time_mode(self, mode, ctx, iters):
        """(us per layer, the output of the last layer's call) for one mode at context ctx."""
        position, last = ctx - 1, self.rotate - 1
        self.cache.length = position
        calls = self.rotate * GRAPH_PASSES
        if mode in ("split", "cooperative"):
            ms = median_event_ms(lambda i: self.fused_call(i % self.rotate, position, mode), iters, warmup=WARMUP)
            return ms * 1e3, self.fused_call(last, position, mode).clone()
        if mode.removesuffix("_overlap") in ("split_graph", "cooperative_graph"):
            fused_mode = mode.removesuffix("_overlap").removesuffix("_graph")
            for fused in self.fused:
                fused.overlap_previous_kernel = mode.endswith("_overlap")
            try:
                graph, _ = captured(
                    lambda: [self.fused_call(i % self.rotate, position, fused_mode) for i in range(calls)])
            finally:
                for fused in self.fused:
                    fused.overlap_previous_kernel = False
            ms = median_event_ms(lambda i: graph.replay(), iters, per_call=calls, warmup=WARMUP)
            return ms * 1e3, self.out.clone()
        position_ids = torch.tensor([[position]], device="cuda")
        cos_sin = self.rotary(self.x.view(1, 1, -1), position_ids)
        caches = [FixedSlotCache(keys, values, position) for keys, values in self.kv]
        if mode == "transformers_eager":
            ms = median_event_ms(lambda i: self.hf_call(i % self.rotate, caches, cos_sin), iters,
                                 warmup=WARMUP)
            return ms * 1e3, self.hf_call(last, caches, cos_sin).reshape(-1)
        graph, outputs = captured(lambda: [self.hf_call(i % self.rotate, caches, cos_sin) for i in range(calls)])
        ms = median_event_ms(lambda i: graph.replay(), iters, per_call=calls, warmup=WARMUP)
        return ms * 1e3, outputs[-1].reshape(-1).clone()

    def reference_out(self, ctx):
        """transformers' eager output of the last rotated layer at ctx, which every mode's output is checked
        against."""
        position = ctx - 1
        position_ids = torch.tensor([[position]], device="cuda")
        cos_sin = self.rotary(self.x.view(1, 1, -1), position_ids)
        caches = [FixedSlotCache(keys, values, position) for keys, values in self.kv]
        return self.hf_call(self.rotate - 1, caches, cos_sin).reshape(-1).clone()


@torch.no_grad()
def run(args):
    import clusterfusion as cf

    device_name = torch.cuda.get_device_name()
    gpu = gpu_tag(device_name)
    read_bw = streaming_read_bw(max(10, args.iters // 10))
    torch.cuda.empty_cache()  # the 2 GiB buffer
    print(f"{device_name}: streaming read {read_bw / 1e12:.3f} TB/s (torch.sum over 2 GiB float16)", flush=True)
    rows = []
    for model in args.models:
        bench = ModelBench(cf, model, max(args.ctx))
        print(f"{model}: {bench.rotate} layers rotated ({bench.rotate * layer_bytes(bench.config, 0) / 1e9:.2f} GB "
              f"of weights), plan {bench.fused[0].plan}", flush=True)
        for ctx in args.ctx:
            expected = bench.reference_out(ctx)
            for mode in args.modes:
                row = dict(model=model, mode=mode, ctx=ctx, us=None, bytes=layer_bytes(bench.config, ctx),
                           bw_frac=None)
                if mode.startswith("cooperative") and not bench.cooperative_supported:
                    row["error"] = "cooperative mode not supported on this device for this config"
                else:
                    try:
                        us, out = bench.time_mode(mode, ctx, args.iters)
                        torch.cuda.synchronize()
                        row.update(us=us, bw_frac=row["bytes"] / (us * 1e-6) / read_bw,
                                   rel_err_vs_transformers=rel_err(out, bench.x, expected))
                        if not row["rel_err_vs_transformers"] <= CHECK_TOL:
                            row["error"] = (f"output differs from transformers eager: relative error "
                                            f"{row['rel_err_vs_transformers']:.3g} > {CHECK_TOL}")
                    except Exception as error:  # record the failure and go on with the other modes
                        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                if "error" in row:
                    print(f"  {model} ctx {ctx} {mode}: {row['error']}", flush=True)
                rows.append(row)
        del bench
        torch.cuda.empty_cache()
    return dict(gpu=gpu, device_name=device_name, read_bw_TBps=read_bw / 1e12,
                command=shlex.join(["python3", *sys.argv]), iters=args.iters, rows=rows)


def table(result, modes):
    """One line per (model, ctx): µs per layer for each mode, then the fraction of streaming-read bandwidth."""
    cells = {(r["model"], r["ctx"], r["mode"]): r for r in result["rows"]}
    keys = sorted({(r["model"], r["ctx"]) for r in result["rows"]}, key=lambda k: (list(MODELS).index(k[0]), k[1]))
    short = {"split": "split", "cooperative": "coop", "split_graph": "split_g", "cooperative_graph": "coop_g",
             "split_graph_overlap": "split_go", "cooperative_graph_overlap": "coop_go",
             "transformers_eager": "hf", "transformers_graph": "hf_g"}
    head = " ".join(f"{short[m]:>8}" for m in modes)
    lines = [f"read bandwidth {result['read_bw_TBps']:.3f} TB/s on {result['gpu']}; us per layer | fraction of "
             "read bandwidth",
             f"{'model':<12} {'ctx':>5} {head} | {head}"]
    for model, ctx in keys:
        rows = [cells.get((model, ctx, m)) for m in modes]
        us = " ".join(f"{r['us']:8.1f}" if r and r["us"] is not None else f"{'-':>8}" for r in rows)
        frac = " ".join(f"{r['bw_frac']:8.3f}" if r and r["bw_frac"] is not None else f"{'-':>8}" for r in rows)
        lines.append(f"{model:<12} {ctx:>5} {us} | {frac}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_layer.py: no CUDA device")
    result = run(args)
    path = output_path(args.out, result["gpu"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    print(table(result, args.modes))
    failed = [r for r in result["rows"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
