#!/usr/bin/env python3
"""Per-layer decode time of the fused decoder layer (GPT-NeoX and Llama) beside transformers' own layer
(GPTNeoXLayer, LlamaDecoderLayer), on one GPU.

Modes: split, cooperative (one library call per layer, launch cost included), split_graph, cooperative_graph
(the same calls captured in a CUDA graph: kernel time only), split_graph_overlap, cooperative_graph_overlap (the
same graphs with each layer overlapping the previous kernel, DecoderLayer.overlap_previous_kernel, as the
whole-model step runs them), transformers_eager (the transformers layer's forward, eager) and transformers_graph
(the same captured in a CUDA graph). Each is timed at several context lengths ctx: the new token sits at
position ctx - 1 and attends to ctx positions.

Models are the library's embedded names (shapes from clusterfusion.cli.hf_config_for, random weights). Weights
rotate over enough distinct layers (1.2-1.8 GB) that the 50-60 MB L2 cannot serve them; the fused layers read
the transformers layers' parameters in place. The streaming-read bandwidth (torch.sum over 2 GiB of float16) is
measured in the same run, and bw_frac = (weight + KV bytes) / time / that bandwidth, the weight bytes summed
over the layer's tensors in the library's weight schema. Writes JSON (--out, rewritten after each model) and
prints a table last.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import shlex
import sys
from pathlib import Path

import torch

from gpu_measure import gpu_tag, median_event_ms, streaming_read_bw

# The embedded models benchmarked by default (shapes: clusterfusion.cli.hf_config_for), each with how many
# distinct layers to rotate over: 1.2-1.8 GB of weights, far beyond L2.
MODELS = {"pythia-2.8b": 8, "pythia-6.9b": 4, "llama-2-7b": 4, "tinyllama-1.1b": 16, "llama-3-8b": 4,
          "llama-3.2-1b": 12}
ROTATE_BYTES = 1.2e9  # the weights another embedded model (--models) rotates over, at least 4 layers
# transformers' decoder layer and rotary embedding class per model_type, in transformers.models.<type>.modeling_<type>
HF_CLASSES = {"gpt_neox": ("GPTNeoXLayer", "GPTNeoXRotaryEmbedding"),
              "llama": ("LlamaDecoderLayer", "LlamaRotaryEmbedding")}
MODES = ["split", "cooperative", "split_graph", "cooperative_graph", "split_graph_overlap",
         "cooperative_graph_overlap", "transformers_eager", "transformers_graph"]
# The seeds' ablation (GPT-NeoX only; --hybrid adds them): half the layer by the library, half by torch on the same
# weights, eager and in a CUDA graph. lib_attn: the library's norm_qkv_rope_attend_up phase (attention before W_o,
# the MLP activation), then torch's W_o, W_down and residual. lib_down: transformers' attention (through W_o) and
# MLP up, then the library's DecoderLayer.down_residual (out = x + attn_output + W_down act + b_down).
HYBRID_MODES = ["hybrid_lib_attn", "hybrid_lib_attn_graph", "hybrid_lib_down", "hybrid_lib_down_graph"]
DEFAULT_CTX = [16, 128, 512, 1024, 2048]
GRAPH_PASSES = 2  # passes over the rotated layers per graph replay
WARMUP = 5
CHECK_TOL = 5e-3  # each mode's last output against transformers eager, relative: flags a broken mode


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated embedded model names "
                        f"(default {','.join(MODELS)})")
    parser.add_argument("--ctx", default=None,
                        help=f"comma-separated context lengths (default {','.join(map(str, DEFAULT_CTX))})")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (graph replays) per row "
                        "(default 200, --quick 30)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and contexts 16, 512, 2048")
    parser.add_argument("--hybrid", action="store_true", help="also the seeds' hybrid modes "
                        f"({', '.join(HYBRID_MODES)}) for the GPT-NeoX models, and print their table")
    parser.add_argument("--out", default=None, help="JSON path, or an existing directory to write "
                        "layer_<gpu>.json into (default bench/results/layer_<gpu>.json)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    from clusterfusion import model_names

    if args.hybrid:
        args.modes += [m for m in HYBRID_MODES if m not in args.modes]
    for name, given, known in (("--models", args.models, model_names()), ("--modes", args.modes,
                                                                         MODES + HYBRID_MODES)):
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
    """The one method transformers' attention calls on its cache (update), over preallocated [1, kv_heads,
    max_seq, head_dim] keys and values: writes the new token at a fixed position and returns positions
    0..position. Shapes and addresses stay fixed, so a CUDA graph can capture it and every replay is the same
    decode step (transformers' StaticCache instead advances its position on every replay and attends over
    max_cache_len)."""

    def __init__(self, keys, values, position):
        self.keys, self.values, self.position = keys, values, position

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        p = self.position
        self.keys[:, :, p:p + 1].copy_(key_states)
        self.values[:, :, p:p + 1].copy_(value_states)
        return self.keys[:, :, :p + 1], self.values[:, :, :p + 1]


def hf_classes(hf_config):
    """(decoder layer class, rotary embedding class) of transformers for the config's model_type."""
    model_type = hf_config.model_type
    if model_type not in HF_CLASSES:
        raise ValueError(f"model_type {model_type!r}: expected one of {list(HF_CLASSES)}")
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    return tuple(getattr(module, name) for name in HF_CLASSES[model_type])


def rotated_layers(model, config):
    """How many distinct layers of `model` to rotate over: MODELS' count, else >= ROTATE_BYTES of weights."""
    return MODELS.get(model) or max(4, math.ceil(ROTATE_BYTES / layer_bytes(config, 0)))


@torch.no_grad()
def random_hf_layers(hf_config, count, generator, device="cuda"):
    """`count` float16 CUDA transformers decoder layers (the class of the config's model_type) with weights at
    realistic scales, as clusterfusion.cli.random_model draws them (never zeros: they can run faster)."""
    layer_class, _ = hf_classes(hf_config)
    layers = []
    for index in range(count):
        with torch.device("meta"):
            layer = layer_class(hf_config, layer_idx=index).half()
        layer = layer.to_empty(device=device).eval()
        for name, param in layer.named_parameters():
            mean, std = ((1.0, 0.1) if name.endswith("weight") else (0.0, 0.05)) if "norm" in name else (0.0, 0.02)
            param.normal_(mean, std, generator=generator)
        layers.append(layer)
    return layers


def layer_bytes(config, ctx):
    """Bytes one decode step of one layer must read: every tensor of the layer in the weight schema (matrices,
    biases, norms), and ctx keys and values of its kv heads."""
    import clusterfusion as cf

    weights = sum(math.prod(spec["shape"]) for spec in cf.weight_schema(config)["layer"])
    return 2 * weights + 2 * ctx * config.kv_heads * config.head_dim * 2


def matrix_elements(specs):
    """Elements of the matrices (2-D tensors) among weight-schema entries: each is one multiply-add per decoded
    token when the matrix is applied to a vector. Vectors (biases, norm weights) are not counted."""
    return sum(math.prod(spec["shape"]) for spec in specs if len(spec["shape"]) == 2)


def layer_flops(config, ctx):
    """FLOPs of one decode step of one layer at context ctx: 2 per multiply-add of every matrix of the layer in
    the weight schema (q|k|v, o, MLP), plus attention over ctx positions: q.k and p.v, each a multiply-add per
    query head, head_dim element and position, 4 * heads * head_dim * ctx. Norms, biases, rotary, softmax and
    activations are not counted (a few FLOPs per element of a vector, < 0.1% of the total)."""
    import clusterfusion as cf

    return 2 * matrix_elements(cf.weight_schema(config)["layer"]) + 4 * config.heads * config.head_dim * ctx


def rel_err(out, x, expected):
    """‖(out − x) − (expected − x)‖ / ‖expected − x‖: the layer's update against transformers'."""
    delta, want = out.double() - x.double(), expected.double() - x.double()
    return float((delta - want).norm() / want.norm())


def layer_call_keywords(layer_class):
    """How the layer's forward takes the cache (GPTNeoXLayer: layer_past; LlamaDecoderLayer: past_key_values in
    transformers 5.x, cache in later ones) and whether it takes cache_position."""
    params = inspect.signature(layer_class.forward).parameters
    cache = next((k for k in ("layer_past", "past_key_values", "cache", "past_key_value") if k in params), None)
    if cache is None:
        raise TypeError(f"{layer_class.__name__}.forward: no cache argument among {list(params)}")
    return cache, "cache_position" in params


class ModelBench:
    """The rotated layers of one model shape, fused and transformers, on shared weights and a shared cache."""

    def __init__(self, cf, model, max_ctx):
        from clusterfusion.cli import hf_config_for

        self.model = model
        config = cf.ModelConfig.named(model)
        self.rotate = rotated_layers(model, config)
        self.hf_config = hf_config_for(model, layers=self.rotate)
        self.config = cf.config_from_transformers(self.hf_config)
        layer_class, rotary_class = hf_classes(self.hf_config)
        self.cache_keyword, self.takes_cache_position = layer_call_keywords(layer_class)
        generator = torch.Generator(device="cuda").manual_seed(1234)
        self.hf_layers = random_hf_layers(self.hf_config, self.rotate, generator)
        self.rotary = rotary_class(self.hf_config).to("cuda")
        self.fused = [cf.FusedLayer.from_transformers(layer, self.config, max_ctx).kernel
                      for layer in self.hf_layers]
        self.cache = cf.KVCache(self.config, max_ctx)
        self.kv = []  # per layer: the cache's keys and values as torch tensors [1, kv_heads, max_seq, head_dim]
        for index in range(self.rotate):
            keys, values = torch.from_dlpack(self.cache.keys(index)), torch.from_dlpack(self.cache.values(index))
            keys.normal_(generator=generator)
            values.normal_(generator=generator)
            self.kv.append((keys[None], values[None]))
        self.x = torch.randn(self.config.hidden, device="cuda", generator=generator).half()
        self.out = torch.empty_like(self.x)
        scratch = cf.allocate_scratch(self.config)
        self.attn, self.mlp_act, self.h1 = scratch["attn"], scratch["mlp_act"], scratch["h1"]
        self.cooperative_supported = self.fused[0].plan["cooperative_supported"]

    def fused_call(self, index, position, mode):
        self.fused[index].forward(self.cache, index, self.x, self.out, self.attn, self.mlp_act, position,
                                  mode=mode, h1=self.h1, stream=torch.cuda.current_stream().cuda_stream)
        return self.out

    def hf_inputs(self, position):
        """The keyword arguments of a transformers layer call at `position` (apart from the cache): the rotary
        cos/sin from the model's rotary class, and cache_position where the layer's forward takes it."""
        position_ids = torch.tensor([[position]], device=self.x.device)
        kwargs = dict(position_embeddings=self.rotary(self.x.view(1, 1, -1), position_ids))
        if self.takes_cache_position:
            kwargs["cache_position"] = position_ids[0]
        return kwargs

    def hf_call(self, index, caches, kwargs):
        out = self.hf_layers[index](self.x.view(1, 1, -1), **{self.cache_keyword: caches[index]}, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def hybrid_call(self, index, position, mode, caches, kwargs):
        """One layer of a hybrid mode (HYBRID_MODES), GPT-NeoX: out [hidden] float16."""
        import torch.nn.functional as F

        hf = self.hf_layers[index]
        if mode == "hybrid_lib_attn":  # the library's attention and MLP up; torch's W_o, W_down and residual
            self.fused[index].run_phase(self.cache, index, 0, self.x, self.out, self.attn, self.mlp_act, position,
                                        h1=self.h1, stream=torch.cuda.current_stream().cuda_stream)
            attn_out = hf.attention.dense(self.attn.half())
            mlp_out = hf.mlp.dense_4h_to_h(self.mlp_act.half())
            return torch.add(self.x + attn_out, mlp_out, out=self.out)
        # transformers' attention (through W_o and b_o) and MLP up; the library's down-projection and residual
        x = self.x.view(1, 1, -1)
        attn_out, _ = hf.attention(hf.input_layernorm(x), attention_mask=None,
                                   **{self.cache_keyword: caches[index]}, **kwargs)
        act = hf.mlp.act(hf.mlp.dense_h_to_4h(hf.post_attention_layernorm(x)))
        self.mlp_act.copy_(act.reshape(-1))
        self.fused[index].down_residual(self.x, attn_out.reshape(-1), self.mlp_act, self.out,
                                        stream=torch.cuda.current_stream().cuda_stream)
        return self.out

    def time_mode(self, mode, ctx, iters):
        """(us per layer, the output of the last layer's call) for one mode at context ctx."""
        position, last = ctx - 1, self.rotate - 1
        self.cache.length = position
        calls = self.rotate * GRAPH_PASSES
        if mode in HYBRID_MODES:
            base = mode.removesuffix("_graph")
            kwargs = self.hf_inputs(position)
            kwargs.pop("cache_position", None)
            caches = [FixedSlotCache(keys, values, position) for keys, values in self.kv]
            call = lambda i: self.hybrid_call(i % self.rotate, position, base, caches, kwargs)  # noqa: E731
            if mode == base:
                ms = median_event_ms(call, iters, warmup=WARMUP)
                return ms * 1e3, call(last).clone()
            graph, _ = captured(lambda: [call(i) for i in range(calls)])
            ms = median_event_ms(lambda i: graph.replay(), iters, per_call=calls, warmup=WARMUP)
            return ms * 1e3, self.out.clone()
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
        kwargs = self.hf_inputs(position)
        caches = [FixedSlotCache(keys, values, position) for keys, values in self.kv]
        if mode == "transformers_eager":
            ms = median_event_ms(lambda i: self.hf_call(i % self.rotate, caches, kwargs), iters,
                                 warmup=WARMUP)
            return ms * 1e3, self.hf_call(last, caches, kwargs).reshape(-1)
        graph, outputs = captured(lambda: [self.hf_call(i % self.rotate, caches, kwargs) for i in range(calls)])
        ms = median_event_ms(lambda i: graph.replay(), iters, per_call=calls, warmup=WARMUP)
        return ms * 1e3, outputs[-1].reshape(-1).clone()

    def reference_out(self, ctx):
        """transformers' eager output of the last rotated layer at ctx, which every mode's output is checked
        against."""
        position = ctx - 1
        caches = [FixedSlotCache(keys, values, position) for keys, values in self.kv]
        return self.hf_call(self.rotate - 1, caches, self.hf_inputs(position)).reshape(-1).clone()


def error_text(error):
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


@torch.no_grad()
def run(args, save=None):
    """The result dict; save(result) after each model, so that a run cut short keeps the models it finished."""
    import clusterfusion as cf

    device_name = torch.cuda.get_device_name()
    gpu = gpu_tag(device_name)
    read_bw = streaming_read_bw(max(10, args.iters // 10))
    torch.cuda.empty_cache()  # the 2 GiB buffer
    print(f"{device_name}: streaming read {read_bw / 1e12:.3f} TB/s (torch.sum over 2 GiB float16)", flush=True)
    rows = []
    result = dict(gpu=gpu, device_name=device_name, read_bw_TBps=read_bw / 1e12,
                  command=shlex.join(["python3", *sys.argv]), iters=args.iters, rows=rows)
    for model in args.models:
        try:
            bench = ModelBench(cf, model, max(args.ctx))
        except Exception as error:  # a model that cannot be built: its rows record why, the other models run
            print(f"  {model}: setup failed: {error_text(error)}", flush=True)
            config = cf.ModelConfig.named(model)
            rows += [dict(model=model, mode=mode, ctx=ctx, us=None, bytes=layer_bytes(config, ctx), bw_frac=None,
                          error=f"setup failed: {error_text(error)}") for ctx in args.ctx for mode in args.modes]
            torch.cuda.empty_cache()
            continue
        print(f"{model}: {bench.rotate} layers rotated ({bench.rotate * layer_bytes(bench.config, 0) / 1e9:.2f} GB "
              f"of weights), plan {bench.fused[0].plan}", flush=True)
        for ctx in args.ctx:
            expected = bench.reference_out(ctx)
            for mode in args.modes:
                row = dict(model=model, mode=mode, ctx=ctx, us=None, bytes=layer_bytes(bench.config, ctx),
                           bw_frac=None)
                if mode in HYBRID_MODES and not bench.config.parallel_residual:
                    continue  # GPT-NeoX only: no row
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
                        row["error"] = error_text(error)
                if "error" in row:
                    print(f"  {model} ctx {ctx} {mode}: {row['error']}", flush=True)
                rows.append(row)
        del bench
        torch.cuda.empty_cache()
        if save is not None:
            save(result)
    return result


def table(result, modes):
    """One line per (model, ctx): µs per layer for each mode, then the fraction of streaming-read bandwidth."""
    cells = {(r["model"], r["ctx"], r["mode"]): r for r in result["rows"]}
    order = list(dict.fromkeys(r["model"] for r in result["rows"]))  # models in the order they ran
    keys = sorted({(r["model"], r["ctx"]) for r in result["rows"]}, key=lambda k: (order.index(k[0]), k[1]))
    short = {"split": "split", "cooperative": "coop", "split_graph": "split_g", "cooperative_graph": "coop_g",
             "split_graph_overlap": "split_go", "cooperative_graph_overlap": "coop_go",
             "transformers_eager": "hf", "transformers_graph": "hf_g", "hybrid_lib_attn": "h_attn",
             "hybrid_lib_attn_graph": "h_attn_g", "hybrid_lib_down": "h_down", "hybrid_lib_down_graph": "h_down_g"}
    head = " ".join(f"{short[m]:>8}" for m in modes)
    lines = [f"read bandwidth {result['read_bw_TBps']:.3f} TB/s on {result['gpu']}; us per layer | fraction of "
             "read bandwidth",
             f"{'model':<14} {'ctx':>5} {head} | {head}"]
    for model, ctx in keys:
        rows = [cells.get((model, ctx, m)) for m in modes]
        us = " ".join(f"{r['us']:8.1f}" if r and r["us"] is not None else f"{'-':>8}" for r in rows)
        frac = " ".join(f"{r['bw_frac']:8.3f}" if r and r["bw_frac"] is not None else f"{'-':>8}" for r in rows)
        lines.append(f"{model:<14} {ctx:>5} {us} | {frac}")
    return "\n".join(lines)


# The seeds' hybrid table: (column, mode), us per layer in a CUDA graph and eager.
HYBRID_TABLE = [("lib attn+up, torch down", "hybrid_lib_attn"), ("torch attn+up, lib down", "hybrid_lib_down"),
                ("fully fused (split)", "split"), ("transformers", "transformers")]


def hybrid_table(result):
    """The seeds' ablation per GPT-NeoX model and ctx: us per layer, graph (eager) for each column; empty when no
    hybrid row ran."""
    cells = {(r["model"], r["ctx"], r["mode"]): r for r in result["rows"]}
    keys = list(dict.fromkeys((r["model"], r["ctx"]) for r in result["rows"] if r["mode"] in HYBRID_MODES))
    if not keys:
        return ""

    def us(model, ctx, mode):
        r = cells.get((model, ctx, mode))
        return f"{r['us']:.1f}" if r and r["us"] is not None else "-"

    lines = ["hybrid table (us per layer: CUDA graph (eager))",
             f"{'model':<14} {'ctx':>5} " + " ".join(f"{name:>26}" for name, _ in HYBRID_TABLE)]
    for model, ctx in keys:
        cols = []
        for _, mode in HYBRID_TABLE:
            graph = f"{mode}_graph" if mode != "split" else "split_graph_overlap"
            cols.append(f"{us(model, ctx, graph) + ' (' + us(model, ctx, mode if mode != 'transformers' else 'transformers_eager') + ')':>26}")
        lines.append(f"{model:<14} {ctx:>5} " + " ".join(cols))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_layer.py: no CUDA device")
    path = output_path(args.out, gpu_tag(torch.cuda.get_device_name()))
    path.parent.mkdir(parents=True, exist_ok=True)
    save = lambda result: path.write_text(json.dumps(result, indent=1) + "\n")  # noqa: E731
    result = run(args, save)
    save(result)
    print(f"wrote {path}")
    print(table(result, args.modes))
    hybrid = hybrid_table(result)
    if hybrid:
        print(hybrid)
    failed = [r for r in result["rows"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
