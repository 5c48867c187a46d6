"""The decode-quality report (clusterfusion.quality): each metric against an independent computation on random
logits and on a small random transformers model (CPU), and the whole report through the library's decode path
(GPU)."""

import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def quality():
    from clusterfusion import quality

    return quality


def random_logits(positions=37, vocab=211, scale=3.0):
    return torch.randn(positions, vocab, dtype=torch.float64) * scale


def noisy(logits, amount):
    return logits + amount * torch.randn_like(logits)


def test_top1_agreement_counts_rows_with_the_same_argmax(quality):
    a = random_logits()
    b = noisy(a, 0.5)
    expected = np.mean(np.argmax(a.numpy(), -1) == np.argmax(b.numpy(), -1))
    assert quality.top1_agreement(a, b) == pytest.approx(expected)
    assert 0.0 < expected < 1.0  # the noise flips some rows, not all: the test can tell a wrong count
    assert quality.top1_agreement(a, a) == 1.0


@pytest.mark.parametrize("k", [5, 10])
def test_topk_overlap_is_the_mean_set_overlap(quality, k):
    a = random_logits()
    b = noisy(a, 1.0)
    expected = np.mean([len(set(np.argsort(-x)[:k]) & set(np.argsort(-y)[:k])) / k
                        for x, y in zip(a.numpy(), b.numpy())])
    assert quality.topk_overlap(a, b, k) == pytest.approx(expected)
    assert 0.0 < expected < 1.0
    # Order inside the top k does not count; disjoint sets give 0.
    reversed_order = a.clone()
    top = a.topk(k, dim=-1)
    reversed_order.scatter_(-1, top.indices, top.values.flip(-1))
    assert quality.topk_overlap(reversed_order, a, k) == 1.0
    assert quality.topk_overlap(a, -a, k) == 0.0


def test_logit_errors_are_mean_and_max_absolute(quality):
    a = random_logits()
    b = noisy(a, 0.01)
    diff = np.abs(a.numpy() - b.numpy())
    mae, worst = quality.logit_errors(a, b)
    assert mae == pytest.approx(diff.mean()) and worst == pytest.approx(diff.max())


def test_perplexity_is_exp_mean_cross_entropy(quality):
    logits = random_logits()
    targets = torch.randint(0, logits.shape[1], (logits.shape[0],))
    expected = math.exp(torch.nn.functional.cross_entropy(logits, targets).item())
    assert quality.perplexity(logits, targets) == pytest.approx(expected, rel=1e-12)
    # Uniform logits: every token has probability 1 / vocab, the perplexity is the vocabulary size.
    assert quality.perplexity(torch.zeros(5, 97), torch.arange(5)) == pytest.approx(97.0)


def test_matching_prefix_stops_at_the_first_difference(quality):
    assert quality.matching_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert quality.matching_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert quality.matching_prefix([5], [6]) == 0


def tiny_llama():
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=300,
                                      max_position_embeddings=128)
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    return transformers.LlamaForCausalLM(config).eval()


def test_report_on_a_small_model(quality):
    """The report's plumbing on the CPU, a bfloat16 copy of a small random model standing in for float16: every
    figure equals the metric computed directly from the three systems' logits."""
    model = tiny_llama()
    ids = torch.randint(0, 300, (40,)).tolist()
    full = quality.transformers_logits(model, ids)
    half_model = type(model)(model.config).eval()
    half_model.load_state_dict(model.state_dict())
    half = quality.transformers_logits(half_model.to(torch.bfloat16), ids)
    library = full.double() + 1e-4 * torch.randn_like(full.double())  # a system slightly off float32
    targets = torch.tensor(ids[1:])
    greedy = ([1, 2, 3, 4], [1, 2, 7, 4], [1, 2, 3, 5])
    report = quality.quality_report(library, half, full, targets, greedy)
    assert report["positions"] == len(ids) - 1
    for name, logits in (("library", library), ("transformers_float16", half)):
        row = report[name]
        assert row["top1"] == quality.top1_agreement(logits, full)
        assert row["top5"] == quality.topk_overlap(logits, full, 5)
        assert (row["logits_mae"], row["logits_max"]) == quality.logit_errors(logits, full)
        assert row["perplexity"] == quality.perplexity(logits, targets)
    assert report["library"]["greedy_match"] == 3 and report["transformers_float16"]["greedy_match"] == 2
    assert report["library"]["greedy_rate"] == 0.75
    assert report["transformers_float32"]["perplexity"] == quality.perplexity(full, targets)
    # The small error stays small; bfloat16 is the noisier system.
    assert report["library"]["logits_max"] < report["transformers_float16"]["logits_max"]
    table = quality.format_report(report)
    assert "library" in table and "transformers_float16" in table and "3/4" in table.replace(" ", "")


@pytest.mark.gpu
@pytest.mark.parametrize("name, layers", [("pythia-70m", None), ("llama-3.2-1b", 2)])
def test_report_through_the_library(name, layers):
    """The whole report on a small random model: the library's errors against float32 are of transformers
    float16's order, and its perplexity matches float32's within what float16 moves it."""
    import clusterfusion as cf
    from clusterfusion import quality
    from clusterfusion.cli import random_model

    seed = int.from_bytes(os.urandom(4), "little")
    model = random_model(name, seed=seed, layers=layers)
    engine = cf.from_transformers(model, max_seq=160)
    ids = torch.randint(0, model.config.vocab_size, (128,), generator=torch.Generator().manual_seed(seed)).tolist()
    report = quality.evaluate(model, engine, ids, greedy_prompt=16, greedy_steps=16)
    ours, half, full = report["library"], report["transformers_float16"], report["transformers_float32"]
    detail = f"{name} seed {seed}: {report}"
    assert ours["logits_mae"] <= 1.5 * half["logits_mae"], detail
    assert ours["logits_max"] <= 2.0 * half["logits_max"], detail
    assert abs(ours["perplexity"] - full["perplexity"]) <= 2 * abs(half["perplexity"] - full["perplexity"]) + \
        1e-4 * full["perplexity"], detail
    assert 0 <= ours["greedy_match"] <= 16
