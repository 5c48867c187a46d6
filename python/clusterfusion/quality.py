"""The decode-quality report: the library's decode path against transformers on the same weights, teacher-forced
over a token sequence and free-running greedy, with transformers float16 beside it as the yardstick.

Definitions. Position t (0 <= t < n - 1) holds the logits after tokens[0..t], which predict tokens[t + 1]:
- top1: the fraction of positions where the system's argmax equals transformers float32's argmax.
- top5, top10: the mean over positions of |topk(system) & topk(float32)| / k, the overlap of the two sets of the k
  largest logits (order ignored).
- logits_mae: the mean over positions and vocabulary of |system - float32|; logits_max: the largest such value.
- perplexity: exp of the mean over positions of -log softmax(logits)[tokens[t + 1]], computed in float64.
- greedy: free-running greedy decoding from the prompt for N new tokens; greedy_match is the number of leading new
  tokens equal to transformers float32 greedy's (N when all are), greedy_rate that count over N.
A report holds these for the library and for transformers float16, each against transformers float32, and the
perplexity of transformers float32 itself.

torch is imported where it is used.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

TOP_K = (5, 10)


def topk_overlap(logits, reference, k: int) -> float:
    """Mean over rows of |topk(logits) & topk(reference)| / k, for [positions, vocab] tensors."""
    mine = logits.topk(k, dim=-1).indices
    theirs = reference.topk(k, dim=-1).indices
    shared = (mine[:, :, None] == theirs[:, None, :]).any(-1).sum(-1)
    return float(shared.double().mean() / k)


def top1_agreement(logits, reference) -> float:
    return float((logits.argmax(-1) == reference.argmax(-1)).double().mean())


def logit_errors(logits, reference) -> tuple[float, float]:
    """(mean, max) of |logits - reference| over every element."""
    diff = (logits.double() - reference.double()).abs()
    return float(diff.mean()), float(diff.max())


def perplexity(logits, targets) -> float:
    """exp(mean NLL) of targets [positions] under logits [positions, vocab], in float64."""
    import torch

    log_probs = torch.log_softmax(logits.double(), dim=-1)
    nll = -log_probs.gather(-1, targets.reshape(-1, 1).to(log_probs.device)).mean()
    return math.exp(float(nll))


def matching_prefix(tokens: Sequence[int], reference: Sequence[int]) -> int:
    """How many leading tokens agree."""
    count = 0
    for a, b in zip(tokens, reference):
        if a != b:
            break
        count += 1
    return count


def compare(logits, reference) -> dict:
    """The teacher-forced metrics of `logits` against `reference` (both [positions, vocab])."""
    mae, worst = logit_errors(logits, reference)
    result = dict(top1=top1_agreement(logits, reference), logits_mae=mae, logits_max=worst)
    for k in TOP_K:
        result[f"top{k}"] = topk_overlap(logits, reference, k)
    return result


def transformers_logits(model, ids: Sequence[int]):
    """A transformers causal LM's float32 logits [len(ids) - 1, vocab] over ids, teacher-forced in one forward."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(torch.tensor([list(ids)], device=device), use_cache=False).logits[0, :-1].float()
    return out


def transformers_greedy(model, prompt: Sequence[int], steps: int) -> list[int]:
    """Greedy decoding by the transformers model itself (its own cache), `steps` new tokens."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(torch.tensor([list(prompt)], device=device), max_new_tokens=steps, do_sample=False,
                             min_new_tokens=steps, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def library_teacher_forced(engine, ids: Sequence[int], progress: Callable = lambda it, total, desc: it):
    """The library's float32 logits [len(ids) - 1, vocab]: every position through its own decode step (the
    standalone prefill), none through transformers."""
    import torch

    context = engine.context
    context.reset()
    rows = []
    for token in progress(ids[:-1], len(ids) - 1, "library"):
        context.step(token)
        rows.append(engine.logits().clone())
    return torch.stack(rows)


def quality_report(library_logits, float16_logits, float32_logits, targets, greedy=None) -> dict:
    """The report from the three systems' teacher-forced logits ([positions, vocab], predicting `targets`) and,
    optionally, greedy = (library tokens, float16 tokens, float32 tokens)."""
    report = dict(positions=int(targets.numel()),
                  library=compare(library_logits, float32_logits),
                  transformers_float16=compare(float16_logits, float32_logits))
    report["library"]["perplexity"] = perplexity(library_logits, targets)
    report["transformers_float16"]["perplexity"] = perplexity(float16_logits, targets)
    report["transformers_float32"] = dict(perplexity=perplexity(float32_logits, targets))
    if greedy is not None:
        ours, half, full = greedy
        for name, tokens in (("library", ours), ("transformers_float16", half)):
            match = matching_prefix(tokens, full)
            report[name].update(greedy_match=match, greedy_rate=match / max(1, len(full)))
        report["greedy_tokens"] = len(full)
    return report


def evaluate(model, engine, ids: Sequence[int], greedy_prompt: int = 0, greedy_steps: int = 0,
             progress: Callable = lambda it, total, desc: it) -> dict:
    """The report for a float16 CUDA transformers model and its Engine over ids (teacher-forced), and greedy
    decoding of greedy_steps tokens after the first greedy_prompt ids when both are > 0. A float32 copy of the
    model is made for the reference (twice the model's memory)."""
    import copy

    import torch

    if len(ids) < 2:
        raise ValueError(f"ids: expected at least 2 tokens, got {len(ids)}")
    if len(ids) > engine.max_seq:
        raise ValueError(f"ids: {len(ids)} tokens are past the engine's max_seq {engine.max_seq}")
    targets = torch.tensor(list(ids[1:]), device=engine.device)
    library = library_teacher_forced(engine, ids, progress)
    half = transformers_logits(model, ids)
    full_model = copy.deepcopy(model).float()
    full = transformers_logits(full_model, ids)
    greedy = None
    if greedy_prompt > 0 and greedy_steps > 0:
        prompt = list(ids[:greedy_prompt])
        ours = engine.generate(prompt, greedy_steps, eos_token_id=[])[0, len(prompt):].tolist()
        greedy = (ours, transformers_greedy(model, prompt, greedy_steps),
                  transformers_greedy(full_model, prompt, greedy_steps))
    del full_model
    torch.cuda.empty_cache()
    return quality_report(library, half, full, targets, greedy)


def format_report(report: dict) -> str:
    """A readable table of a report: one row per system."""
    columns = ["top1", "top5", "top10", "logits_mae", "logits_max", "perplexity", "greedy_match"]
    lines = [f"{report['positions']} teacher-forced positions, against transformers float32 "
             f"(perplexity {report['transformers_float32']['perplexity']:.4f})",
             f"{'system':<22}" + "".join(f"{c:>13}" for c in columns)]
    for name in ("library", "transformers_float16"):
        row = report[name]
        cells = []
        for c in columns:
            value = row.get(c)
            if value is None:
                cells.append(f"{'-':>13}")
            elif c == "greedy_match":
                cells.append(f"{value:>6}/{report['greedy_tokens']:<6}")
            elif c.startswith("top"):
                cells.append(f"{100 * value:>12.2f}%")
            else:
                cells.append(f"{value:>13.5g}")
        lines.append(f"{name:<22}" + "".join(cells))
    return "\n".join(lines)
