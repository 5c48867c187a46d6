"""The `clusterfusion` command line: generation, whole-model decode timing and the decode-quality report on an
H100/H200.

  clusterfusion generate --model DIR_OR_ORG/NAME --prompt TEXT [--max-new-tokens N] [sampling options]
  clusterfusion bench [--model pythia-2.8b|llama-2-7b|...|DIR_OR_ORG/NAME] [--prompt-tokens 32] [--decode-tokens 256]
  clusterfusion eval [--model NAME|DIR_OR_ORG/NAME] [--text FILE | --tokens IDS] [--length 512] [--greedy 64]

`bench` and `eval` with an embedded model name (pythia-70m ... gpt-neox-20b, llama-2-7b, tinyllama-1.1b, llama-3-8b,
llama-3.2-1b) that is not a local directory builds a model with random weights at that model's real shapes, so it
runs on any H100/H200 with no download. Arguments are checked before any work: a user error prints one line and
exits with status 2; a machine without a compute capability 9.0 GPU (or with a CPU-only torch) prints one line and
exits with status 1.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import time
from pathlib import Path

from ._C import (Architecture, ModelConfig, RopeType, UnsupportedDeviceError, __version__, model_names,
                 require_hopper, unsupported_device_message)

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
    # Random weights have no end of text: no eos token, so generation runs to max_new_tokens.
    config.eos_token_id = None
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


class UsageError(Exception):
    """A user error: main() prints it as one line and exits with status 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with the defaults shown, except a None default (the help says what it means)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clusterfusion", description=__doc__.split("\n\n")[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", formatter_class=_HelpFormatter,
                              help="generate text from a prompt with a GPT-NeoX or Llama checkpoint",
                              description="Generate text from a prompt: the prompt through transformers, every new "
                                          "token through the library.")
    gen.add_argument("--model", required=True, help="a checkpoint directory (config.json, weights, tokenizer) or a "
                     "Hugging Face model id (org/name)")
    gen.add_argument("--prompt", required=True, help="the prompt text")
    gen.add_argument("--max-new-tokens", type=_positive_int, default=64, help="new tokens at most")
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sampling")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0: no limit")
    gen.add_argument("--top-p", type=float, default=1.0, help="sample among the most likely tokens whose "
                     "probability adds up to p; 1: no limit")
    gen.add_argument("--seed", type=int, default=None, help="makes sampling reproducible (default: a fresh one)")
    gen.add_argument("--max-seq", type=_positive_int, default=None, help="cache positions (default: the model's "
                     "max_position_embeddings)")
    gen.add_argument("--mode", choices=["split", "cooperative"], default=None, help="layer kernels (default: "
                     "split, the faster)")

    bench = commands.add_parser("bench", formatter_class=_HelpFormatter,
                                help="time whole-model decode (TTFT, TPOT, tokens/s)",
                                description="Time whole-model decode: a random prompt, then --decode-tokens greedy "
                                            "steps (no eos stop).")
    bench.add_argument("--model", default="pythia-2.8b", help=f"one of {', '.join(EMBEDDED_MODELS)} (random "
                       "weights at its real shapes unless a directory of that name exists), or a checkpoint "
                       "directory / Hugging Face model id (org/name)")
    bench.add_argument("--prompt-tokens", type=_positive_int, default=32, help="prompt length")
    bench.add_argument("--decode-tokens", type=_positive_int, default=256, help="timed new tokens")
    bench.add_argument("--mode", choices=["split", "cooperative"], default=None, help="layer kernels (default: "
                       "split, the faster)")
    bench.add_argument("--seed", type=int, default=0, help="for the random weights and prompt")

    ev = commands.add_parser("eval", formatter_class=_HelpFormatter,
                             help="the decode-quality report: the library against transformers float32 (and "
                                  "float16 beside it)",
                             description="Teacher-forced top-1, top-5/10 set overlap, logit errors and perplexity "
                                         "of the library's decode path against transformers float32, transformers "
                                         "float16 beside it, and free-running greedy agreement (definitions: "
                                         "clusterfusion.quality).")
    ev.add_argument("--model", default="pythia-70m", help=f"one of {', '.join(EMBEDDED_MODELS)} (random weights "
                    "at its real shapes, random tokens), or a checkpoint directory / Hugging Face model id")
    source = ev.add_mutually_exclusive_group()
    source.add_argument("--text", default=None, help="a text file, tokenized with the checkpoint's tokenizer")
    source.add_argument("--tokens", default=None, help="comma-separated token ids")
    ev.add_argument("--length", type=_positive_int, default=512, help="teacher-forced tokens: the first N of the "
                    "text or tokens, or N random ones when neither is given")
    ev.add_argument("--greedy", type=int, default=64, help="free-running greedy tokens (0: none)")
    ev.add_argument("--greedy-prompt", type=_positive_int, default=32, help="prompt tokens of the greedy run")
    ev.add_argument("--seed", type=int, default=0, help="for the random weights and tokens")
    ev.add_argument("--mode", choices=["split", "cooperative"], default=None, help="layer kernels (default: "
                    "split, the faster)")
    ev.add_argument("--json", default=None, help="also write the report here as JSON")
    return parser


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def looks_like_hub_id(name: str) -> bool:
    """org/name, as Hugging Face model ids are (a relative path of two parts reads the same: it is tried only when
    no such directory exists)."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def _known_names_hint(name: str) -> str:
    """The closest embedded names (difflib), then all of them: there are few."""
    close = difflib.get_close_matches(name, EMBEDDED_MODELS, n=3, cutoff=0.6)
    known = f"known models: {', '.join(EMBEDDED_MODELS)}"
    return f"did you mean {', '.join(close)}? ({known})" if close else known


def model_source(name: str, embedded: bool) -> str:
    """Where --model comes from, checked without going to the network: "directory", "embedded" (a known name, for
    bench: random weights), or "hub" (org/name, tried on Hugging Face). UsageError for anything else."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {name}: no config.json in this directory (expected a transformers checkpoint)")
        return "directory"
    if path.exists():
        raise UsageError(f"--model {name}: not a directory (expected a transformers checkpoint directory)")
    if embedded and name in EMBEDDED_MODELS:
        return "embedded"
    if looks_like_hub_id(name):
        return "hub"
    if embedded and "/" not in name and not name.startswith(("~", ".")):
        raise UsageError(f"--model {name}: neither a directory nor a known model; {_known_names_hint(name)}")
    raise UsageError(f"--model {name}: no such directory" + ("" if "/" in name else
                                                              " (nor a Hugging Face model id: org/name)"))


def check_model_config(name: str) -> None:
    """Reads the checkpoint's config (config.json only) and refuses what the kernels do not compute (UsageError
    naming the field), before any weight is loaded."""
    from transformers import AutoConfig

    from .config import config_from_transformers

    try:
        hf_config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UsageError(f"--model {name}: {str(e).strip().splitlines()[0]}") from None
    try:
        config_from_transformers(hf_config)
    except ValueError as e:
        raise UsageError(f"--model {name}: not a model the kernels compute: {e}") from None


def require_gpu() -> None:
    """UnsupportedDeviceError unless the current CUDA device has compute capability 9.0 and torch can use it (the
    command line runs the model through torch; ModuleNotFoundError without torch)."""
    require_hopper()
    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            found = f"torch {torch.__version__}, built without CUDA (install a CUDA build of torch)"
        else:
            found = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
        raise UnsupportedDeviceError(unsupported_device_message(found))


def model_for_bench(name: str):
    """(model, description): (None, ...) for an embedded name that is not a local directory (random weights),
    else the checkpoint."""
    if model_source(name, embedded=True) == "embedded":
        return None, f"{name} shapes, random weights"
    return load_model(name), name


def embedded_or_loaded_model(name: str, seed: int):
    """(model, description) for bench and eval: random weights at an embedded model's shapes, else the checkpoint
    (a Hugging Face id's config checked first)."""
    if model_source(name, embedded=True) == "hub":
        check_model_config(name)
    model, description = model_for_bench(name)
    if model is None:
        print(f"building {description} ...", file=sys.stderr, flush=True)
        model = random_model(name, seed=seed)
    return model, description


def check_generate(args) -> None:
    """Everything about generate's arguments that needs no GPU and no download (UsageError)."""
    from .engine import sampling_params

    try:
        sampling_params(args.temperature, args.top_k, args.top_p, args.seed)
    except ValueError as e:
        raise UsageError(_option_text(str(e))) from None
    if model_source(args.model, embedded=False) == "directory":
        check_model_config(args.model)


def check_bench(args) -> None:
    if model_source(args.model, embedded=True) == "directory":
        check_model_config(args.model)


def _option_text(message: str) -> str:
    """A sampling error in the command line's words: "SamplingParams.top_p: ..." -> "--top-p: ..."."""
    field, sep, rest = message.partition(": ")
    field = field.removeprefix("SamplingParams.")
    if sep and field in ("temperature", "top_k", "top_p", "seed"):
        return f"--{field.replace('_', '-')}: {rest}"
    return message


def run_generate(args) -> int:
    from transformers import AutoTokenizer

    from .engine import from_transformers

    if model_source(args.model, embedded=False) == "hub":
        check_model_config(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_model(args.model)
    engine = from_transformers(model, max_seq=args.max_seq, mode=args.mode)
    ids = tokenizer(args.prompt)["input_ids"]
    # The model's stop tokens, else the tokenizer's.
    eos = None if engine.eos_token_id is not None else tokenizer.eos_token_id
    try:
        tokens = engine.stream_tokens(ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                                      eos)
    except ValueError as e:  # the prompt does not fit --max-seq, or its tokens the vocab
        raise UsageError(_option_text(str(e))) from None
    start = time.perf_counter()
    times, new = [], []
    print(args.prompt, end="", flush=True)
    for token in tokens:
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

    model, description = embedded_or_loaded_model(args.model, args.seed)
    engine = from_transformers(model, max_seq=args.prompt_tokens + args.decode_tokens, mode=args.mode)
    generator = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, engine.config.vocab, (args.prompt_tokens,), generator=generator).tolist()
    no_stop = []  # every decode step is timed, eos or not
    for _ in engine.stream_tokens(prompt, min(8, args.decode_tokens), eos_token_id=no_stop):  # warm-up
        pass
    start = time.perf_counter()
    times = []
    tokens = engine.stream_tokens(prompt, args.decode_tokens, eos_token_id=no_stop)
    for _ in progress(tokens, args.decode_tokens, "decode"):
        times.append(time.perf_counter())
    print(f"{description}:", file=sys.stderr)
    report(args.prompt_tokens, times, start, engine.mode)
    return 0


def _token_list(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--tokens: expected comma-separated token ids, got {text[:40]!r}") from None
    if len(ids) < 2:
        raise UsageError(f"--tokens: expected at least 2 token ids, got {len(ids)}")
    return ids


def check_eval(args) -> None:
    source = model_source(args.model, embedded=True)
    if args.text is not None:
        if source == "embedded":
            raise UsageError(f"--text: {args.model} has random weights and no tokenizer; give --tokens, or a "
                             "checkpoint directory as --model")
        if not Path(args.text).is_file():
            raise UsageError(f"--text {args.text}: no such file")
    if args.tokens is not None:
        _token_list(args.tokens)
    if args.greedy < 0:
        raise UsageError(f"--greedy: expected an int >= 0, got {args.greedy}")
    if source == "directory":
        check_model_config(args.model)


def run_eval(args) -> int:
    import json

    import torch

    from . import quality
    from .engine import from_transformers

    model, description = embedded_or_loaded_model(args.model, args.seed)
    if args.text is not None:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(args.model)(Path(args.text).read_text())["input_ids"][:args.length]
    elif args.tokens is not None:
        ids = _token_list(args.tokens)[:args.length]
    else:
        generator = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, model.config.vocab_size, (args.length,), generator=generator).tolist()
    if len(ids) < 2:
        raise UsageError(f"the evaluated sequence has {len(ids)} token(s); at least 2 are needed")
    greedy_prompt = min(args.greedy_prompt, len(ids))
    max_seq = max(len(ids), greedy_prompt + args.greedy)
    engine = from_transformers(model, max_seq=max_seq, mode=args.mode)
    result = quality.evaluate(model, engine, ids, greedy_prompt, args.greedy, progress)
    result.update(model=description, command=" ".join(["clusterfusion", *sys.argv[1:]]))
    print(f"{description}:")
    print(quality.format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


# What the command line runs the model with (not dependencies of the package).
_RUNTIME_PACKAGES = ("torch", "transformers")


def main(argv=None) -> int:
    """The command line; returns the exit status: 0, 1 without a usable GPU, 2 for a user error."""
    args = build_parser().parse_args(argv)
    check, run = {"generate": (check_generate, run_generate), "bench": (check_bench, run_bench),
                  "eval": (check_eval, run_eval)}[args.command]
    try:
        check(args)  # arguments first: no GPU, no download, no model
        require_gpu()
        return run(args)
    except UsageError as e:
        print(f"clusterfusion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except UnsupportedDeviceError as e:
        print(e, file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name not in _RUNTIME_PACKAGES:
            raise
        print(f"clusterfusion {args.command}: {e.name} is not installed (the command line needs a CUDA build of "
              f"torch, and transformers: pip install torch transformers)", file=sys.stderr)
        return 1
