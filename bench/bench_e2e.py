#!/usr/bin/env python3
"""End-to-end decode at batch 1: TTFT, TPOT and tokens/s of whole models, GPT-NeoX (Pythia) and Llama (random
weights at the real shapes of the library's embedded model names), after a short prompt, for

  transformers_eager     GPTNeoXForCausalLM / LlamaForCausalLM with a DynamicCache, one forward per token
                         (host-launch bound)
  transformers_graph     StaticCache, one decode step captured in a CUDA graph and replayed (the strong peer)
  transformers_compiled  the same step compiled by torch.compile (inductor) before capture (opt-in: slow to build)
  split, cooperative     the library's fused layers called from Python per layer; embedding, final norm and LM
                         head by torch
  clusterfusion_graph    the library's whole-step graph (DecodeContext, default mode: split, each layer's
                         launches overlapping the kernel before): steps fed by the device token
  clusterfusion_graph_cooperative  the same with the cooperative layer kernel

Each system generates once to the longest decode length with a CUDA event after every token; the row for N
tokens reads the first N (TTFT: prompt start to the first token; TPOT: mean time between tokens 1..N). The
streaming-read bandwidth (torch.sum over 2 GiB) is measured in the same run; floor_ms = bytes a step must read
(every tensor of the weight schema but the input embedding, a tied LM head counted once as the LM head, plus the
KV cache at the row's mean context) / that bandwidth. Beside it, gflop_per_token (step_flops at the same context:
2 FLOPs per multiply-add of every matrix the step reads, plus attention's 4 * heads * head_dim * ctx per layer) and
tflops, the achieved TFLOP/s (FLOPs per token / TPOT). at_ctx512 holds each system's mean step time at contexts
480..543 against the floor there (the issues' targets: <= 1.25x the floor for pythia-2.8b, <= 1.15x for
pythia-6.9b, >= 2x faster than transformers_graph; <= 1.25x for llama-2-7b, <= 2.5x for tinyllama-1.1b, both
faster than transformers_compiled, which runs only when --systems names it).
Runs on --device (default cuda:0), recorded in the JSON as `device`. Writes bench/results/e2e_<gpu>.json
(e2e_<gpu>_cudaN.json for --device cuda:N, N > 0; or --out) and a PNG beside it when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from bench_layer import layer_bytes, layer_flops, matrix_elements
from gpu_measure import gpu_tag, streaming_read_bw

SYSTEMS = ["transformers_eager", "transformers_graph", "transformers_compiled", "split", "cooperative",
           "clusterfusion_graph", "clusterfusion_graph_cooperative"]
DEFAULT_SYSTEMS = [s for s in SYSTEMS if s != "transformers_compiled"]
DEFAULT_MODELS = ["pythia-2.8b", "pythia-6.9b", "llama-2-7b", "tinyllama-1.1b", "llama-3-8b", "llama-3.2-1b"]
DEFAULT_DECODE = [16, 128, 512, 2048]
CTX_WINDOW = (480, 544)  # contexts whose step times make the "at ctx 512" figure
HOST_SAMPLE = 64  # enqueues whose host time is reported


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated embedded model names "
                        f"(clusterfusion.model_names(); default {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma-separated, of {SYSTEMS}")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    parser.add_argument("--decode", default=None, help="comma-separated decode lengths (default "
                        f"{','.join(map(str, DEFAULT_DECODE))}; --quick 16,512)")
    parser.add_argument("--eager-max", type=int, default=None, help="decode tokens for transformers_eager, which "
                        "is ~30x slower (default 128; --quick 32)")
    parser.add_argument("--quick", action="store_true", help="decode 16,512 and a short eager run")
    parser.add_argument("--out", default=None, help="JSON path, or a directory to write e2e_<gpu>.json into")
    parser.add_argument("--device", default="cuda:0", help="the GPU to run on, cuda:N (default cuda:0; recorded "
                        "in the JSON; the default JSON name gets a _cudaN suffix for N > 0)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--plot-from", default=None, metavar="JSON", help="only draw the PNG of an earlier run's "
                        "JSON (beside it), where matplotlib is installed")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"--systems: unknown {unknown}, expected some of {SYSTEMS}")
    args.decode = [int(n) for n in args.decode.split(",")] if args.decode else ([16, 512] if args.quick
                                                                                 else DEFAULT_DECODE)
    if args.prompt < 2 or any(n < 2 for n in args.decode):
        parser.error("--prompt and --decode: expected lengths >= 2")
    if args.eager_max is None:
        args.eager_max = 32 if args.quick else 128
    if not args.plot_from:
        from clusterfusion import model_names

        unknown = [m for m in args.models if m not in model_names()]
        if unknown:
            parser.error(f"--models: unknown {unknown}, expected some of {model_names()}")
        # Without CUDA at all, main() says so; otherwise the index must name one of the devices torch sees.
        count = torch.cuda.device_count() if torch.cuda.is_available() else None
        index = args.device[len("cuda:"):] if args.device.startswith("cuda:") else ""
        if not (index.isascii() and index.isdigit()) or (count is not None and int(index) >= count):
            parser.error(f"--device: expected cuda:N with N < device count ({count or 0}), got {args.device}")
        args.device = f"cuda:{int(index)}"
    return args




def step_bytes(config, ctx):
    """Bytes one decode step reads at context ctx (config: a clusterfusion ModelConfig): every model tensor of the
    weight schema but the input embedding (of which it reads one row), plus each layer's (bench_layer.layer_bytes:
    its tensors and its cache). A tied LM head (the embedding itself) is read whole every step as the LM head: the
    schema lists it as lm_head, counted once."""
    import clusterfusion as cf

    model = sum(math.prod(s["shape"]) for s in cf.weight_schema(config)["model"] if s["name"] != "embed_in")
    return 2 * model + config.layers * layer_bytes(config, ctx)


def step_flops(config, ctx):
    """FLOPs of one decode step at context ctx (the decode FLOPs per token): 2 per multiply-add of every matrix the
    step reads, each layer's (bench_layer.layer_flops: q|k|v, o, MLP, and attention's 4 * heads * head_dim * ctx)
    and the LM head's; the input embedding is a row lookup, not counted. Derived from the weight schema, so a tied
    LM head counts once, as the LM head."""
    import clusterfusion as cf

    head = matrix_elements(s for s in cf.weight_schema(config)["model"] if s["name"] != "embed_in")
    return 2 * head + config.layers * layer_flops(config, ctx)


class Timeline:
    """CUDA events: one at the start, one after each new token; elapsed times read once at the end."""

    def __init__(self, stream=None):
        self.stream = stream
        self.start = self._event()
        self.tokens = []

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record(self.stream) if self.stream is not None else event.record()
        return event

    def token(self):
        self.tokens.append(self._event())

    def times_ms(self):
        torch.cuda.synchronize()
        return [self.start.elapsed_time(e) for e in self.tokens]


# ---- the systems: each returns per-token times (ms since its prompt started) for `n` new tokens -----------------

@torch.no_grad()
def transformers_eager(model, prompt, n):
    from transformers import DynamicCache

    ids = torch.tensor([prompt], device="cuda")
    timeline = Timeline()
    cache = DynamicCache(config=model.config)
    out = model(ids, past_key_values=cache, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    timeline.token()
    for _ in range(n - 1):
        out = model(token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        timeline.token()
    return timeline.times_ms()


class StaticStep:
    """One greedy decode step of transformers with a StaticCache, on fixed tensors: the input token, its position,
    and a 4D boolean mask over the cache (a prepared mask goes to SDPA as is, no mask building at run time). Each
    call makes the new position visible, runs the model, writes the next token and advances the position, so
    replaying a captured call is the whole decode loop on the device."""

    def __init__(self, model, prompt, max_len):
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.device = model.device
        self.mask = torch.zeros(1, 1, 1, max_len, dtype=torch.bool, device=self.device)
        self.prompt = prompt

    def prefill(self):
        p = len(self.prompt)
        positions = torch.arange(p, device=self.device)
        out = self.model(torch.tensor([self.prompt], device=self.device), cache_position=positions,
                         past_key_values=self.cache, use_cache=True)
        self.token = out.logits[:, -1:].argmax(-1)
        self.position = torch.tensor([p], device=self.device)
        self.mask[..., :p] = True

    def __call__(self):
        self.mask.index_fill_(-1, self.position, True)
        out = self.model(self.token, position_ids=self.position.view(1, 1), cache_position=self.position,
                         past_key_values=self.cache, attention_mask=self.mask, use_cache=True)
        self.token.copy_(out.logits[:, -1:].argmax(-1))
        self.position.add_(1)


@torch.no_grad()
def transformers_graph(model, prompt, n, compiled=False):
    warmup = 3
    step = StaticStep(model, prompt, len(prompt) + n + warmup + 8)  # room for every replay (see the notes)
    run = torch.compile(step.__call__, mode="default") if compiled else step
    timeline = Timeline()
    step.prefill()
    timeline.token()
    first_ms = timeline.times_ms()[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (and compilation) off the capture stream, as torch asks
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    timeline = Timeline()
    for _ in range(n - 1):
        graph.replay()
        timeline.token()
    return [first_ms] + [first_ms + t for t in timeline.times_ms()]


def prefill_kv(model, prompt):
    """transformers' keys and values of prompt[:-1] per layer, [1, kv_heads, len - 1, head_dim] contiguous."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model.base_model(torch.tensor([prompt[:-1]], device=model.device), past_key_values=cache, use_cache=True)
    layers = cache.layers if hasattr(cache, "layers") else None
    keys = [l.keys for l in layers] if layers else list(cache.key_cache)
    values = [l.values for l in layers] if layers else list(cache.value_cache)
    return [k.contiguous() for k in keys], [v.contiguous() for v in values]


def final_norm(model, config):
    """The model's final norm module (GPT-NeoX: final_layer_norm, LayerNorm; Llama: norm, RMSNorm): the module
    that holds the weight schema's final_norm_weight."""
    import clusterfusion as cf

    spec = next(s for s in cf.weight_schema(config)["model"] if s["name"] == "final_norm_weight")
    return model.get_submodule(spec["hf_name"].rsplit(".", 1)[0])


@torch.no_grad()
def library_layers(model, prompt, n, mode):
    """The fused layers from Python, one call per layer; embedding, final norm, LM head, argmax by torch."""
    import clusterfusion as cf

    config = cf.config_from_transformers(model.config)
    p = len(prompt)
    layers = [cf.FusedLayer.from_transformers(l, config, p + n) for l in model.base_model.layers]
    cache = cf.KVCache(config, p + n)
    head = model.get_output_embeddings()
    embed, norm = model.get_input_embeddings().weight, final_norm(model, config)
    buffers = [torch.empty(config.hidden, dtype=torch.float16, device="cuda") for _ in range(2)]
    timeline = Timeline()
    keys, values = prefill_kv(model, prompt)
    for i, (k, v) in enumerate(zip(keys, values)):
        torch.from_dlpack(cache.keys(i))[:, :p - 1].copy_(k[0])
        torch.from_dlpack(cache.values(i))[:, :p - 1].copy_(v[0])
    cache.length = p - 1
    token = torch.tensor(prompt[-1], device="cuda")
    for step in range(n):
        x = embed[token]
        for i, layer in enumerate(layers):
            out = buffers[i % 2]
            layer.forward(cache, i, x, p - 1 + step, out=out, mode=mode)
            x = out
        token = head(norm(x)).argmax()
        timeline.token()
    return timeline.times_ms()


@torch.no_grad()
def clusterfusion_graph(model, prompt, n, host_ms, mode=None):
    """The library's captured whole step, each step enqueued without waiting (its input is the previous step's
    output, on the device). host_ms receives the host time of each enqueue: the position check, one launch of the
    graph captured in the warm-up, and the binding's overhead."""
    import clusterfusion as cf

    engine = cf.from_transformers(model, max_seq=len(prompt) + n, mode=mode)
    context = engine.context
    for _ in engine.stream_tokens(prompt, 4):  # warm-up: the capture and instantiation
        pass
    timeline = Timeline()
    engine.prefill(prompt)
    context.enqueue_step(prompt[-1])
    timeline.stream = engine.stream
    timeline.token()
    for _ in range(n - 1):
        start = time.perf_counter()
        context.enqueue_step()
        host_ms.append((time.perf_counter() - start) * 1e3)
        timeline.token()
    return timeline.times_ms()


def run_system(system, model, prompt, n):
    """(per-token times in ms, extra row fields)."""
    extra = {}
    if system == "transformers_eager":
        times = transformers_eager(model, prompt, n)
    elif system in ("transformers_graph", "transformers_compiled"):
        times = transformers_graph(model, prompt, n, compiled=system == "transformers_compiled")
    elif system in ("split", "cooperative"):
        times = library_layers(model, prompt, n, system)
    else:
        host = []
        mode = "cooperative" if system == "clusterfusion_graph_cooperative" else None
        times = clusterfusion_graph(model, prompt, n, host, mode)
        # The first enqueues only: once the launch queue is full, an enqueue waits for the GPU.
        extra["host_ms_per_step"] = statistics.median(host[:HOST_SAMPLE])
    return times, extra


def rows_for(model_name, system, prompt_len, times, decode, bytes_at, read_bw, extra, flops_at=None):
    """One row per decode length n: TPOT over tokens 1..n, the floor and (flops_at given) the decode FLOPs per
    token and the achieved TFLOP/s, both at the mean context of those steps, prompt_len + n / 2."""
    rows = []
    for n in decode:
        if n > len(times):
            continue
        tpot = (times[n - 1] - times[0]) / (n - 1)
        ctx = prompt_len + n / 2
        floor = bytes_at(ctx) / read_bw * 1e3
        row = dict(model=model_name, system=system, prompt_tokens=prompt_len, decode_tokens=n,
                   ttft_ms=times[0], tpot_ms=tpot, tok_s=1e3 / tpot, floor_ms=floor)
        if flops_at is not None:
            flops = flops_at(ctx)
            row.update(gflop_per_token=flops / 1e9, tflops=achieved_tflops(flops, tpot))
        rows.append({**row, **extra})
    return rows


def achieved_tflops(flops_per_token, tpot_ms):
    """TFLOP/s at flops_per_token FLOPs every tpot_ms milliseconds."""
    return flops_per_token / (tpot_ms * 1e-3) / 1e12


def at_ctx512(times, prompt_len):
    """Mean step time over the steps whose context (the tokens attended to) lies in CTX_WINDOW; None if the run
    was too short. Token i (0-based) comes from the step at position prompt_len - 1 + i, context prompt_len + i."""
    lo, hi = CTX_WINDOW
    first, last = lo - prompt_len, hi - prompt_len
    if first < 1 or last > len(times):
        return None
    return (times[last - 1] - times[first - 1]) / (last - first)


def error_text(error):
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def run(args, save=None):
    """The result dict; save(result) after each model, so that a run cut short keeps the models it finished."""
    import clusterfusion as cf
    from clusterfusion.cli import progress, random_model

    # Everything below runs on args.device: models, buffers and events are made on the current device ("cuda").
    device = getattr(args, "device", "cuda:0")
    torch.cuda.set_device(device)
    device_name = torch.cuda.get_device_name()
    read_bw = streaming_read_bw()
    print(f"{device_name} ({device}): streaming read {read_bw / 1e12:.3f} TB/s", flush=True)
    result = dict(gpu=gpu_tag(device_name), device=device, device_name=device_name, read_bw_TBps=read_bw / 1e12,
                  command=shlex.join(["python3", *sys.argv]), floor_ms={}, gflop_per_token={}, at_ctx512={},
                  rows=[], errors=[])
    longest = max(args.decode)
    for model_name in args.models:
        bytes_at = lambda ctx, c=cf.ModelConfig.named(model_name): step_bytes(c, ctx)  # noqa: E731
        flops_at = lambda ctx, c=cf.ModelConfig.named(model_name): step_flops(c, ctx)  # noqa: E731
        result["floor_ms"][model_name] = bytes_at(0) / read_bw * 1e3
        result["gflop_per_token"][model_name] = flops_at(0) / 1e9
        floor512 = bytes_at(512) / read_bw * 1e3
        result["at_ctx512"][model_name] = {"floor_ms": floor512, "gflop_per_token": flops_at(512) / 1e9}
        try:
            model = random_model(model_name, seed=1234)
        except Exception as error:  # record it and go on with the other models
            message = f"{model_name}: model build: {error_text(error)}"
            print(message, flush=True)
            result["errors"].append(message)
            torch.cuda.empty_cache()
            continue
        prompt = torch.randint(0, model.config.vocab_size, (args.prompt,),
                               generator=torch.Generator().manual_seed(1)).tolist()
        for system in progress(args.systems, len(args.systems), model_name):
            n = min(longest, args.eager_max) if system == "transformers_eager" else longest
            try:
                times, extra = run_system(system, model, prompt, n)
            except Exception as error:  # record it and go on with the other systems
                message = f"{model_name} {system}: {error_text(error)}"
                print(message, flush=True)
                result["errors"].append(message)
                continue
            finally:
                torch.cuda.empty_cache()
            result["rows"] += rows_for(model_name, system, args.prompt, times, args.decode, bytes_at, read_bw, extra,
                                       flops_at)
            ms = at_ctx512(times, args.prompt)
            if ms is not None:
                result["at_ctx512"][model_name][system] = dict(
                    tpot_ms=ms, vs_floor=ms / floor512, tflops=achieved_tflops(flops_at(512), ms))
        del model
        torch.cuda.empty_cache()
        if save is not None:
            save(result)
    return result


def _flops_cells(row):
    """The GFLOP/token and TFLOP/s cells (blank for a result written before these columns existed)."""
    if "gflop_per_token" not in row:
        return f"{'':>9} {'':>7}"
    return f"{row['gflop_per_token']:9.3f} {row['tflops']:7.3f}"


def table(result):
    lines = [f"{result['device_name']}: read {result['read_bw_TBps']:.3f} TB/s",
             f"{'model':<14} {'system':<31} {'decode':>6} {'ttft_ms':>9} {'tpot_ms':>8} {'tok/s':>7} {'floor':>7} "
             f"{'x floor':>7} {'GFLOP/tok':>9} {'TFLOP/s':>7}"]
    for r in result["rows"]:
        lines.append(f"{r['model']:<14} {r['system']:<31} {r['decode_tokens']:>6} {r['ttft_ms']:9.2f} "
                     f"{r['tpot_ms']:8.3f} {r['tok_s']:7.1f} {r['floor_ms']:7.3f} {r['tpot_ms'] / r['floor_ms']:7.2f} "
                     f"{_flops_cells(r)}")
    for model, entry in result["at_ctx512"].items():
        parts = [f"{s} {v['tpot_ms']:.3f} ms ({v['vs_floor']:.2f}x" + (f", {v['tflops']:.3f} TFLOP/s)" if "tflops" in v
                                                                     else ")")
                 for s, v in entry.items() if isinstance(v, dict)]
        flops = f", {entry['gflop_per_token']:.3f} GFLOP/token" if "gflop_per_token" in entry else ""
        lines.append(f"at ctx 512, {model} (floor {entry['floor_ms']:.3f} ms{flops}): " + ", ".join(parts))
    lines += [f"error: {e}" for e in result["errors"]]
    return "\n".join(lines)


def plot(result, path):
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["floor_ms"])
    cols = min(3, len(models))  # up to three models per row
    grid_rows = -(-len(models) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(6 * cols, 4.5 * grid_rows), squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, models):
        rows = [r for r in result["rows"] if r["model"] == model]
        for system in dict.fromkeys(r["system"] for r in rows):
            pts = [(r["decode_tokens"], r["tpot_ms"]) for r in rows if r["system"] == system]
            ax.plot(*zip(*pts), marker="o", label=system)
        floor = sorted({(r["decode_tokens"], r["floor_ms"]) for r in rows})
        if floor:
            ax.plot(*zip(*floor), "k--", label="bandwidth floor")
        ax.set(xscale="log", yscale="log", xlabel="decode tokens", ylabel="TPOT (ms)",
               title=f"{model}, {result['gpu']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=120)
    return png


def main(argv=None):
    args = parse_args(argv)
    if args.plot_from:
        path = Path(args.plot_from)
        png = plot(json.loads(path.read_text()), path)
        print(f"wrote {png}" if png else "matplotlib is not installed")
        return 0 if png else 1
    if not torch.cuda.is_available():
        sys.exit("bench_e2e.py: no CUDA device")
    path = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    if path.is_dir() or not path.suffix:
        suffix = "" if args.device == "cuda:0" else "_" + args.device.replace(":", "")
        path = path / f"e2e_{gpu_tag(torch.cuda.get_device_name(args.device))}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    save = lambda result: path.write_text(json.dumps(result, indent=1) + "\n")  # noqa: E731
    result = run(args, save)
    save(result)
    print(f"wrote {path}")
    if not args.no_plot:
        png = plot(result, path)
        if png:
            print(f"wrote {png}")
    print(table(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
