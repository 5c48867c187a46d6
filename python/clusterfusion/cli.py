"""The `clusterfusion` command line.

  clusterfusion generate --model PATH_OR_NAME --prompt TEXT [--max-new-tokens N] [sampling options]
  clusterfusion bench --model pythia-2.8b|llama-2-7b|...|PATH_OR_NAME [--prompt-tokens 32] [--decode-tokens 256]

`bench` with an embedded model name (pythia-70m ... gpt-neox-20b, llama-2-7b, tinyllama-1.1b, llama-3-8b,
llama-3.2-1b) that is not a local path builds a model with
random weights at that model's real shapes, so it runs on any Hopper GPU with no download.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._C import Architecture, ModelConfig, RopeType, model_names

EMBEDDED_MODELS = model_names()


def _llama_rope(c: ModelConfig) -> dict:
    rope = dict(rope_type="default", rope_theta=c.rotary_base)
    r = c.rope_scaling
    if r.type == RopeType.Linear:
        rope.update(rope_type="linear", factor=r.factor)
    elif r.type == RopeType.Llama3:
        rope.update(rope_type="llama3", factor=r.factor, low_freq_factor=r.low_freq_factor,
                    high_freq_factor=r.high_freq_factor, original_max_position_embeddings=r.original_max_positions)
    return rope


def hf_config_for(name: str, layers: int | None = None):
    """A transformers GPTNeoXConfig or LlamaConfig at the shapes of an embedded model (ValueError listing the
    names), with `layers` decoder layers instead of the model's when given."""
    c = ModelConfig.named(name)
    if layers is not None:
        c.layers = layers
    if c.arch == Architecture.GPTNeoX:
        from transformers import GPTNeoXConfig

        config = GPTNeoXConfig(hidden_size=c.hidden, num_attention_heads=c.heads, intermediate_size=c.ffn,
                               num_hidden_layers=c.layers, vocab_size=c.vocab, rotary_pct=c.rotary_dims / c.head_dim,
                               rotary_emb_base=c.rotary_base, layer_norm_eps=c.norm_eps, use_parallel_residual=True,
                               hidden_act="gelu", tie_word_embeddings=False, max_position_embeddings=2048)
    else:
        from transformers import LlamaConfig

        rope = _llama_rope(c)
        config = LlamaConfig(hidden_size=c.hidden, num_attention_heads=c.heads, num_key_value_heads=c.kv_heads,
                             head_dim=c.head_dim, intermediate_size=c.ffn, num_hidden_layers=c.layers,
                             vocab_size=c.vocab, rms_norm_eps=c.norm_eps, hidden_act="silu",
                             tie_word_embeddings=c.tied_embeddings, rope_theta=c.rotary_base, rope_scaling=rope,
                             max_position_embeddings=4 * rope.get("original_max_position_embeddings", 1024))
    config._attn_implementation = "sdpa"  # what from_pretrained picks on a CUDA machine
    return config


def random_model(name: str, device="cuda", seed: int = 0, layers: int | None = None):
    """A float16 causal LM with random weights at an embedded model's shapes (`layers` decoder layers when
    given): linear weights and biases and embeddings N(0, 0.02), norm weights N(1, 0.1) and biases N(0, 0.05)."""
    import torch
    from transformers import AutoModelForCausalLM

    # Built in float16 on the device (transformers' own initialisation, then every parameter is drawn again from
    # the seeded generator); buffers such as the rotary frequencies are computed as usual.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(hf_config_for(name, layers)).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                mean, std = (1.0, 0.1) if param_name.endswith("weight") else (0.0, 0.05)
            else:
                mean, std = 0.0, 0.02
            param.normal_(mean, std, generator=generator)
    return model


def load_model(name_or_path: str, device="cuda"):
    """A checkpoint through transformers' from_pretrained, in float16 on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float16).to(device).eval()


def progress(iterable, total: int, desc: str):
    """tqdm when it is installed; otherwise a line at every tenth of the way."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, total=total, desc=desc, leave=False)
        return
    marks = {max(1, total * k // 10) for k in range(1, 11)}
    for i, item in enumerate(iterable, 1):
        yield item
        if i in marks:
            print(f"{desc}: {i}/{total}", file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clusterfusion", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="generate text from a prompt with a GPT-NeoX checkpoint")
    gen.add_argument("--model", required=True, help="a checkpoint directory or a Hugging Face model id")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=_positive_int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="0: no limit")
    gen.add_argument("--top-p", type=float, default=1.0, help="1: no limit")
    gen.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    gen.add_argument("--max-seq", type=_positive_int, default=None, help="cache positions (default: the model's)")
    gen.add_argument("--mode", choices=["split", "cooperative"], default=None, help="layer kernels (default: "
                     "split, the faster)")

    bench = commands.add_parser("bench", help="time whole-model decode (TTFT, TPOT, tokens/s)")
    bench.add_argument("--model", default="pythia-2.8b", help=f"one of {', '.join(EMBEDDED_MODELS)} (random "
                       "weights at its real shapes unless a directory of that name exists), or a checkpoint "
                       "directory / Hugging Face model id")
    bench.add_argument("--prompt-tokens", type=_positive_int, default=32)
    bench.add_argument("--decode-tokens", type=_positive_int, default=256)
    bench.add_argument("--mode", choices=["split", "cooperative"], default=None)
    bench.add_argument("--seed", type=int, default=0, help="for the random weights and prompt")
    return parser


def model_for_bench(name: str):
    """(model, description): random weights for an embedded name that is not a local path, else the checkpoint."""
    if name in EMBEDDED_MODELS and not Path(name).exists():
        return None, f"{name} shapes, random weights"
    return load_model(name), name


def run_generate(args) -> int:
    from transformers import AutoTokenizer

    from .engine import from_transformers

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_model(args.model)
    engine = from_transformers(model, max_seq=args.max_seq, mode=args.mode)
    ids = tokenizer(args.prompt)["input_ids"]
    start = time.perf_counter()
    times, new = [], []
    print(args.prompt, end="", flush=True)
    for token in engine.stream_tokens(ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                      args.seed, tokenizer.eos_token_id):
        times.append(time.perf_counter())
        previous = tokenizer.decode(new)
        new.append(token)
        print(tokenizer.decode(new)[len(previous):], end="", flush=True)
    print()
    report(len(ids), times, start, engine.mode)
    return 0


def report(prompt_tokens: int, times: list[float], start: float, mode: str) -> None:
    ttft = (times[0] - start) * 1e3
    tpot = (times[-1] - times[0]) * 1e3 / (len(times) - 1) if len(times) > 1 else float("nan")
    print(f"{prompt_tokens} prompt tokens, {len(times)} new ({mode} layers): TTFT {ttft:.2f} ms, "
          f"TPOT {tpot:.3f} ms, {1e3 / tpot:.1f} tokens/s", file=sys.stderr)


def run_bench(args) -> int:
    import torch

    from .engine import from_transformers

    model, description = model_for_bench(args.model)
    if model is None:
        print(f"building {description} ...", file=sys.stderr, flush=True)
        model = random_model(args.model, seed=args.seed)
    engine = from_transformers(model, max_seq=args.prompt_tokens + args.decode_tokens, mode=args.mode)
    generator = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, engine.config.vocab, (args.prompt_tokens,), generator=generator).tolist()
    for _ in engine.stream_tokens(prompt, min(8, args.decode_tokens)):  # warm-up: capture, caches, clocks
        pass
    start = time.perf_counter()
    times = []
    for _ in progress(engine.stream_tokens(prompt, args.decode_tokens), args.decode_tokens, "decode"):
        times.append(time.perf_counter())
    print(f"{description}:", file=sys.stderr)
    report(args.prompt_tokens, times, start, engine.mode)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_generate(args) if args.command == "generate" else run_bench(args)
