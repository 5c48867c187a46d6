#!/usr/bin/env python3
"""The long-run check (issue: hardening; not CI): one DecodeContext decodes without pause for --minutes through
reset() cycles, each request with its own sampling (greedy, or temperature / top-k / top-p with its own seed),
prompt and length, while a second context over the same weights replays every request; every token of the two
must agree. Device memory (cudaMemGetInfo) must be where it was after the first request (within 4 MiB), and a watchdog ends the
run with exit 2 if no step returns for --hang-s seconds. Exit 1 on any disagreement or leak. Prints progress and
a JSON summary (also written to --out).

    PYTHONPATH=build-gpu/python python3 bench/soak_decode.py --model pythia-160m --minutes 5 --out soak.json
"""

import argparse
import json
import os
import random
import sys
import threading
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pythia-160m", help="an embedded model name, random weights")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the model's)")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--max-seq", type=int, default=512)
    parser.add_argument("--seed", type=int, default=None, help="the requests' random seed (default: random)")
    parser.add_argument("--hang-s", type=float, default=60.0, help="watchdog: seconds without a step")
    parser.add_argument("--out", default=None, help="JSON summary path")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error(f"--minutes: must be positive, got {args.minutes}")
    if args.max_seq < 8:
        parser.error(f"--max-seq: at least 8, got {args.max_seq}")
    return args


def random_request(rng, vocab, max_seq):
    """A prompt, a decode length that fits max_seq, and the sampling of one request."""
    prompt_len = rng.randint(1, max_seq // 4)
    sampling = dict(temperature=0.0, top_k=0, top_p=1.0, seed=0)
    if rng.random() < 0.75:
        sampling = dict(temperature=rng.choice([0.5, 0.8, 1.0, 1.3]), top_k=rng.choice([0, 1, 20, 200]),
                        top_p=rng.choice([1.0, 0.9, 0.5]), seed=rng.getrandbits(63))
    return dict(prompt=[rng.randrange(vocab) for _ in range(prompt_len)],
                new_tokens=rng.randint(1, max_seq - prompt_len), sampling=sampling)


def run_request(context, request, progress):
    """reset, sampling, prefill, then one step per new token; the generated tokens."""
    context.reset()
    context.set_sampling(**request["sampling"])
    tokens = [context.prefill(request["prompt"])]
    progress()
    for _ in range(request["new_tokens"] - 1):
        tokens.append(context.step())
        progress()
    return tokens


def main():
    args = parse_args()
    import torch

    import clusterfusion as cf
    from clusterfusion.cli import random_model
    from clusterfusion.weights import model_weights

    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    rng = random.Random(seed)
    model = random_model(args.model, layers=args.layers, seed=seed)
    config = cf.config_from_transformers(model.config)
    weights = model_weights(model, config)
    contexts = [cf.DecodeContext(config, args.max_seq, **weights) for _ in range(2)]

    last_step = [time.monotonic()]

    def progress():
        last_step[0] = time.monotonic()

    def watchdog():
        while True:
            time.sleep(1.0)
            if time.monotonic() - last_step[0] > args.hang_s:
                print(f"HANG: no step returned for {args.hang_s:.0f} s", file=sys.stderr, flush=True)
                os._exit(2)

    threading.Thread(target=watchdog, daemon=True).start()

    summary = dict(model=args.model, layers=config.layers, max_seq=args.max_seq, seed=seed, minutes=args.minutes,
                   requests=0, steps=0, mismatches=[], command=" ".join([sys.executable] + sys.argv))
    free_after_first = None
    start = time.monotonic()
    while time.monotonic() - start < args.minutes * 60:
        request = random_request(rng, config.vocab, args.max_seq)
        got = run_request(contexts[0], request, progress)
        replay = run_request(contexts[1], request, progress)
        summary["requests"] += 1
        summary["steps"] += 2 * len(got)
        if got != replay:
            first = next(i for i, (a, b) in enumerate(zip(got, replay)) if a != b)
            summary["mismatches"].append(dict(request=summary["requests"], sampling=request["sampling"],
                                              prompt_len=len(request["prompt"]), first_difference=first))
        if free_after_first is None:
            torch.cuda.synchronize()
            free_after_first = torch.cuda.mem_get_info()[0]
        if summary["requests"] % 20 == 0:
            elapsed = time.monotonic() - start
            print(f"{elapsed:7.1f} s: {summary['requests']} requests, {summary['steps']} steps, "
                  f"{len(summary['mismatches'])} mismatches", flush=True)
    torch.cuda.synchronize()
    summary["seconds"] = round(time.monotonic() - start, 1)
    summary["free_bytes_lost"] = free_after_first - torch.cuda.mem_get_info()[0]
    summary["steps_per_s"] = round(summary["steps"] / summary["seconds"], 1)
    # The driver's own bookkeeping (graph re-instantiation on set_sampling) may move a page or two; a leak of
    # anything per request would add up over thousands of requests.
    ok = not summary["mismatches"] and summary["free_bytes_lost"] <= 4 << 20
    summary["ok"] = ok
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
