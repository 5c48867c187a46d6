"""DecodeContext.load_prefix checks every tensor before it copies or writes anything (marker `gpu`): a negative or
an inconsistent extent from a DLPack producer is refused by name, and the context then decodes exactly as a context
that never saw the call. (A negative sequence length used to reach the device position, and the next step wrote
tokens[-4].)"""

import os
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from dlpack_claims import Claimed  # noqa: E402

pytestmark = pytest.mark.gpu

PROMPT = 5


@pytest.fixture(scope="module")
def engines():
    """Two engines over one random two-layer pythia-70m: one receives refused calls, the other none."""
    from clusterfusion import from_transformers
    from clusterfusion.cli import random_model

    model = random_model("pythia-70m", seed=int.from_bytes(os.urandom(4), "little"), layers=2)
    return from_transformers(model, max_seq=64), from_transformers(model, max_seq=64)


def test_refused_prefix_writes_nothing(engines):
    engine, control = engines
    cfg = engine.config
    heads, dim, layers = cfg.kv_heads, cfg.head_dim, cfg.layers
    prompt = torch.randint(0, cfg.vocab, (PROMPT,)).tolist()
    for e in engines:
        e.context.reset()
    assert engine.context.prefill(prompt) == control.context.prefill(prompt)

    def block(seq, kv_heads=heads):
        return torch.randn(1, kv_heads, seq, dim, device="cuda").half()

    def good():
        return [block(4) for _ in range(layers)]

    def with_item(tensors, i, tensor):
        tensors[i] = tensor
        return tensors

    shape = f"[1, {heads}, 4, {dim}]"
    cases = [
        (with_item(good(), 0, Claimed(block(4), shape=(1, heads, -4, dim))), good(),
         rf"keys[0]: expected non-negative extents, got shape [1, {heads}, -4, {dim}]"),
        ([Claimed(block(4), shape=(1, heads, -4, dim)) for _ in range(layers)],
         [Claimed(block(4), shape=(1, heads, -4, dim)) for _ in range(layers)],
         rf"keys[0]: expected non-negative extents, got shape [1, {heads}, -4, {dim}]"),
        (good(), with_item(good(), layers - 1, Claimed(block(4), shape=(1, heads, -1, dim))),
         rf"values[{layers - 1}]: expected non-negative extents, got shape [1, {heads}, -1, {dim}]"),
        (with_item(good(), 1, block(3)), good(), f"keys[1]: expected shape {shape}, got shape [1, {heads}, 3, {dim}]"),
        (good(), with_item(good(), 0, block(4, heads // 2)),
         f"values[0]: expected shape {shape}, got shape [1, {heads // 2}, 4, {dim}]"),
        (good()[1:], good(), f"keys: expected {layers} tensors (one per layer), got {layers - 1}"),
    ]
    for keys, values, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            engine.context.load_prefix(keys, values)
        assert engine.context.position == PROMPT
    with pytest.raises(IndexError, match=r"^keys\[0\]: 65 positions are past max_seq 64$"):
        engine.context.load_prefix([block(65)] * layers, [block(65)] * layers)
    assert engine.context.position == PROMPT

    for _ in range(3):
        assert engine.context.step() == control.context.step()
        assert torch.equal(engine.logits(), control.logits())
    end = PROMPT + 3
    assert engine.context.tokens(0, end + 1) == control.context.tokens(0, end + 1)
