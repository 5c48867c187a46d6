"""Engine: text generation with a transformers causal LM (GPTNeoXForCausalLM, LlamaForCausalLM), the prompt
through transformers and every decode step through the library's captured whole-model step (DecodeContext), the
weights shared in place.

torch and transformers are imported where they are used: the package itself needs neither.
"""

from __future__ import annotations

import secrets
from typing import Callable, Iterator

from ._C import DecodeContext, SamplingParams
from .config import config_from_transformers
from .weights import model_weights


def sampling_params(temperature=0.0, top_k=0, top_p=1.0, seed=None) -> SamplingParams:
    """Checked SamplingParams (ValueError naming the field). temperature 0 is greedy; seed None draws one."""
    if seed is None:
        seed = secrets.randbits(64)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise ValueError(f"top_k: expected an int, got {top_k!r}")
    params = SamplingParams(temperature=float(temperature), top_k=top_k, top_p=float(top_p), seed=seed)
    params.validate()
    return params


def prompt_ids(input_ids) -> list[int]:
    """The prompt as a list of ints, from a list or a [L] / [1, L] tensor (ValueError otherwise)."""
    if hasattr(input_ids, "tolist"):
        shape = tuple(input_ids.shape)
        if len(shape) == 2 and shape[0] == 1:
            input_ids = input_ids[0]
        elif len(shape) != 1:
            raise ValueError(f"input_ids: expected shape [L] or [1, L] (batch 1), got {list(shape)}")
        input_ids = input_ids.tolist()
    ids = list(input_ids)
    if not ids:
        raise ValueError("input_ids: expected at least one token, got none")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValueError(f"input_ids: expected ints, got {ids[:8]!r}")
    return ids


def eos_set(eos_token_id) -> frozenset:
    """The stop tokens: None (no stop), an int, or a list of ints."""
    if eos_token_id is None:
        return frozenset()
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValueError(f"eos_token_id: expected None, an int or a list of ints, got {eos_token_id!r}")
    return frozenset(ids)


def check_request(ids: list[int], max_new_tokens, max_seq: int, vocab: int) -> None:
    """ValueError naming the argument unless the prompt's tokens are in the vocab and the prompt plus
    max_new_tokens fit the cache."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
    # The n-th new token comes from the step at position len(ids) - 2 + n, which must be < max_seq.
    if len(ids) + max_new_tokens - 1 > max_seq:
        raise ValueError(f"max_new_tokens: {len(ids)} prompt tokens + {max_new_tokens} new ones need "
                         f"{len(ids) + max_new_tokens - 1} cache positions, past max_seq {max_seq}")
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"input_ids: expected tokens in 0..{vocab - 1}, got {bad[:8]}")


def _cache_tensors(cache):
    """Per-layer keys and values [1, heads, seq, head_dim] of a transformers DynamicCache (5.x or 4.x)."""
    if hasattr(cache, "layers"):
        return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    return list(cache.key_cache), list(cache.value_cache)


def _streamer_callback(streamer, prompt_tensor) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(on_token, on_end) for a callable(token) or a transformers streamer (put / end, given the prompt first)."""
    import torch

    if streamer is None:
        return (lambda token: None), (lambda: None)
    if hasattr(streamer, "put") and hasattr(streamer, "end"):
        streamer.put(prompt_tensor.cpu())
        return (lambda token: streamer.put(torch.tensor([token]))), streamer.end
    if callable(streamer):
        return streamer, (lambda: None)
    raise TypeError(f"streamer: expected a callable(token) or an object with put() and end(), got "
                    f"{type(streamer).__name__}")


class Engine:
    """Generation for one GPTNeoXForCausalLM or LlamaForCausalLM (float16, CUDA) at batch 1. The library reads the model's parameters
    in place: keep the model unchanged while the engine lives. Use from_transformers(model)."""

    def __init__(self, model, max_seq: int | None = None, mode: str | None = None):
        import torch

        self.model = model
        self.config = config_from_transformers(model.config)
        weights = model_weights(model, self.config)
        self.device = weights["embed_in"].device
        if max_seq is None:
            max_seq = model.config.max_position_embeddings
        with torch.cuda.device(self.device):
            self.stream = torch.cuda.Stream()
            self.context = DecodeContext(self.config, max_seq, mode=mode, stream=self.stream.cuda_stream, **weights)

    @property
    def max_seq(self) -> int:
        return self.context.max_seq

    @property
    def mode(self) -> str:
        return self.context.mode

    def logits(self):
        """The last step's logits as a torch float32 [vocab] CUDA tensor sharing the library's buffer (valid until
        the next step)."""
        import torch

        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return torch.from_dlpack(self.context.logits())

    def prefill(self, ids: list[int]) -> None:
        """Positions 0..len(ids)-2 through transformers into the library's cache; the last prompt token is left
        for the first decode step, which then yields the first new token."""
        import torch

        self.context.reset()
        if len(ids) == 1:
            return
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # transformers 4.x
            cache = DynamicCache()
        with torch.no_grad(), torch.cuda.device(self.device):
            self.model.base_model(input_ids=torch.tensor([ids[:-1]], device=self.device), past_key_values=cache,
                                  use_cache=True)
            keys, values = _cache_tensors(cache)
            keys = [k.contiguous() for k in keys]  # transformers keeps the first update's transposed view
            values = [v.contiguous() for v in values]
            self.stream.wait_stream(torch.cuda.current_stream())
        self.context.load_prefix(keys, values)  # waits for its copies, so the tensors may go

    def stream_tokens(self, input_ids, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                      top_p: float = 1.0, seed: int | None = None, eos_token_id=None) -> Iterator[int]:
        """The new tokens one by one, as each step finishes; stops after max_new_tokens or an eos token (which is
        yielded). Arguments are checked here, before anything runs (ValueError naming the argument)."""
        ids = prompt_ids(input_ids)
        check_request(ids, max_new_tokens, self.max_seq, self.config.vocab)
        stops = eos_set(eos_token_id)
        params = sampling_params(temperature, top_k, top_p, seed)
        self.context.set_sampling(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                  seed=params.seed)
        return self._generate(ids, max_new_tokens, stops)

    def _generate(self, ids, max_new_tokens, stops) -> Iterator[int]:
        self.prefill(ids)
        token = self.context.step(ids[-1])
        for i in range(max_new_tokens):
            if i > 0:
                token = self.context.step()
            yield token
            if token in stops:
                return

    def generate(self, input_ids, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, eos_token_id=None, streamer=None):
        """The prompt followed by the new tokens, a torch int64 [1, L + n] tensor on the model's device (as
        transformers' generate returns). streamer: a callable(token) called per new token, or a transformers
        streamer (TextStreamer, TextIteratorStreamer). temperature 0 is greedy; seed makes sampling
        reproducible (None: a fresh one)."""
        import torch

        tokens = self.stream_tokens(input_ids, max_new_tokens, temperature, top_k, top_p, seed, eos_token_id)
        ids = prompt_ids(input_ids)
        on_token, on_end = _streamer_callback(streamer, torch.tensor([ids]))
        new = []
        for token in tokens:
            new.append(token)
            on_token(token)
        on_end()
        return torch.tensor([ids + new], dtype=torch.int64, device=self.device)


def from_transformers(model, max_seq: int | None = None, mode: str | None = None) -> Engine:
    """An Engine for a transformers GPTNeoXForCausalLM or LlamaForCausalLM in float16 on CUDA, sharing its weights (no copy).
    max_seq defaults to the model's max_position_embeddings; mode None picks split (the faster mode once the
    layers' launches overlap). Raises ValueError for a config the kernels do not implement and TypeError for a
    parameter that is not float16 on CUDA, naming it."""
    return Engine(model, max_seq=max_seq, mode=mode)
