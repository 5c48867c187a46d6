"""Engine: text generation with a transformers causal LM (GPTNeoXForCausalLM, LlamaForCausalLM), the prompt
through transformers and every decode step through the library's captured whole-model step (DecodeContext), the
weights shared in place.

torch and transformers are imported where they are used: the package itself needs neither.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
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
    """The stop tokens: an int, a list of ints, or none ([], False or None)."""
    if eos_token_id is None or eos_token_id is False:
        return frozenset()
    ids = [eos_token_id] if isinstance(eos_token_id, int) and not isinstance(eos_token_id, bool) else eos_token_id
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        ids = [ids]
    ids = list(ids)
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValueError(f"eos_token_id: expected an int, a list of ints, or [] / False for no stop token, got "
                         f"{eos_token_id!r}")
    return frozenset(ids)


def model_eos_token_id(model):
    """The model's stop token(s), as transformers' generate uses them: generation_config.eos_token_id, else
    config.eos_token_id; None when neither has one."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    return eos


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


def check_attention_mask(attention_mask, length: int) -> None:
    """None, or all ones of shape [L] or [1, L] for a prompt of L tokens: batch 1 without padding, the only mask the
    engine computes. ValueError naming attention_mask otherwise."""
    if attention_mask is None:
        return
    shape = tuple(attention_mask.shape) if hasattr(attention_mask, "shape") else None
    values = attention_mask.tolist() if hasattr(attention_mask, "tolist") else attention_mask
    if shape is None:
        values = list(values)
        shape = (1, len(values[0])) if values and isinstance(values[0], (list, tuple)) else (len(values),)
    if shape not in ((length,), (1, length)):
        raise ValueError(f"attention_mask: expected shape [1, {length}] or [{length}] like input_ids (batch 1), got "
                         f"{list(shape)}")
    if len(shape) == 2:
        values = values[0]
    zeros = [i for i, v in enumerate(values) if v != 1]
    if zeros:
        raise ValueError(f"attention_mask: expected all ones (batch 1, no padding: the engine attends to every "
                         f"prompt token), got {values[zeros[0]]!r} at positions {zeros[:8]}")


# The GenerationConfig fields the engine reads, and those it may ignore (token ids that only matter with padding
# or for encoder-decoders, cache and output switches, metadata).
_GENERATION_FIELDS = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id")
_IGNORED_GENERATION_FIELDS = {"bos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache",
                              "transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash"}
# Where a GenerationConfig leaves them unset, its sampling takes transformers' defaults.
_TRANSFORMERS_SAMPLING_DEFAULTS = dict(top_k=50, top_p=1.0)


def _transformers_default_params() -> dict:
    from transformers import GenerationConfig

    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    return dict(defaults()) if defaults is not None else GenerationConfig().to_dict()


def generation_settings(generation_config) -> dict:
    """The settings the engine takes from a transformers GenerationConfig: those of _GENERATION_FIELDS that it
    sets (that differ from GenerationConfig()'s, so the same under transformers 4.x and 5.x). ValueError naming
    generation_config.<field> for a set field the engine does not compute (num_beams, repetition_penalty,
    min_new_tokens, ...); TypeError for something that is not a GenerationConfig."""
    if not hasattr(generation_config, "to_diff_dict"):
        raise TypeError(f"generation_config: expected a transformers GenerationConfig, got "
                        f"{type(generation_config).__name__}")
    defaults = None
    given = generation_config.to_diff_dict()  # the fields set (4.x fills the others in, 5.x leaves them None)
    for field, value in given.items():
        if field in _GENERATION_FIELDS or field in _IGNORED_GENERATION_FIELDS:
            continue
        if value is None or value is False or (isinstance(value, (list, tuple, dict)) and not value):
            continue
        if defaults is None:
            defaults = _transformers_default_params()
        if field in defaults and value == defaults[field]:
            continue
        raise ValueError(f"generation_config.{field}: {value!r} is not supported (the engine decodes one sequence, "
                         f"greedy or sampled with temperature, top_k and top_p)")
    return {field: given[field] for field in _GENERATION_FIELDS if given.get(field) is not None}


DEFAULT_MAX_NEW_TOKENS = 64
# What generate() and stream_tokens() take besides input_ids (for the message refusing anything else).
_GENERATE_ARGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "eos_token_id", "attention_mask",
                  "do_sample", "generation_config", "pad_token_id")


@dataclass(frozen=True)
class GenerationRequest:
    """A checked request: the prompt, how many tokens at most, the token selection and the stop tokens."""
    ids: list
    max_new_tokens: int
    sampling: SamplingParams
    stops: frozenset


def generation_request(input_ids, *, max_seq: int, vocab: int, model_eos_token_id=None, max_new_tokens=None,
                       temperature=None, top_k=None, top_p=None, seed=None, eos_token_id=None, attention_mask=None,
                       do_sample=None, generation_config=None, pad_token_id=None, caller: str = "generate",
                       **unknown) -> GenerationRequest:
    """Resolve and check the arguments of Engine.generate / stream_tokens, touching no GPU.

    An argument left None takes the value the generation_config sets, if one is given, else the default:
    max_new_tokens 64 (a generation_config's max_length, when it sets that and not max_new_tokens, counts the
    prompt, as in transformers), greedy, top_k 0 (no limit; with a generation_config transformers' 50), top_p 1,
    a fresh seed, and the model's eos_token_id. do_sample=False is greedy whatever the temperature; do_sample=True
    samples at the temperature (1.0 when none is given). With do_sample unset, a temperature argument > 0 samples,
    while a generation_config's temperature alone does not (as in transformers). eos_token_id: an int or a list;
    [] or False: no stop token. pad_token_id is accepted and unused (batch 1 has no padding).

    Raises TypeError naming keyword arguments the engine does not take, and ValueError naming the argument for a
    bad value, an attention_mask other than all ones, or a generation_config setting the engine does not compute.
    """
    if unknown:
        raise TypeError(f"{caller}() got unsupported keyword argument{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(sorted(unknown))} (supported: {', '.join(_GENERATE_ARGS)})")
    ids = prompt_ids(input_ids)
    check_attention_mask(attention_mask, len(ids))
    config = {} if generation_config is None else generation_settings(generation_config)

    if max_new_tokens is None:
        max_new_tokens = config.get("max_new_tokens")
    if max_new_tokens is None and "max_length" in config:
        max_new_tokens = config["max_length"] - len(ids)
        if max_new_tokens < 1:
            raise ValueError(f"generation_config.max_length: {config['max_length']} leaves no room for a new token "
                             f"after {len(ids)} prompt tokens (set max_new_tokens)")
    if max_new_tokens is None:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    check_request(ids, max_new_tokens, max_seq, vocab)

    if do_sample is None:
        do_sample = config.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ValueError(f"do_sample: expected True, False or None, got {do_sample!r}")
    defaults = _TRANSFORMERS_SAMPLING_DEFAULTS if generation_config is not None else dict(top_k=0, top_p=1.0)
    top_k = top_k if top_k is not None else config.get("top_k", defaults["top_k"])
    top_p = top_p if top_p is not None else config.get("top_p", defaults["top_p"])
    if do_sample is None:
        temperature = 0.0 if temperature is None else temperature
    elif do_sample:
        temperature = temperature if temperature is not None else config.get("temperature", 1.0)
        if not temperature:
            raise ValueError("temperature: 0 is greedy, and do_sample=True asks for sampling: give a temperature > 0 "
                             "or do_sample=False")
    elif temperature is None:
        temperature = 0.0
    sampling = sampling_params(temperature, top_k, top_p, seed)  # every value is checked, used or not
    if do_sample is False or sampling.temperature == 0.0:  # greedy: top_k and top_p have no effect
        sampling = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, seed=sampling.seed)

    if eos_token_id is None:
        eos_token_id = config.get("eos_token_id", model_eos_token_id)
    return GenerationRequest(ids=ids, max_new_tokens=max_new_tokens, sampling=sampling, stops=eos_set(eos_token_id))


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
    """Generation for one GPTNeoXForCausalLM or LlamaForCausalLM (float16, CUDA) at batch 1. The library reads the
    model's parameters in place: keep the model unchanged while the engine lives. Use from_transformers(model).

    Every call runs on the model's device, whatever device is current. One generation at a time: the context
    serialises each of its calls, but a generate() is many of them, so two threads generating with one engine
    would interleave their requests."""

    def __init__(self, model, max_seq: int | None = None, mode: str | None = None):
        import torch

        self.model = model
        self.config = config_from_transformers(model.config)
        weights = model_weights(model, self.config)
        self.device = weights["embed_in"].device
        if max_seq is None:
            max_seq = model.config.max_position_embeddings
        # generate()'s stop tokens when it is given none: the model's (settable).
        self.eos_token_id = model_eos_token_id(model)
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

    def request(self, input_ids, caller: str = "generate", **kwargs) -> GenerationRequest:
        """The checked request for generate / stream_tokens' arguments (see generation_request)."""
        return generation_request(input_ids, max_seq=self.max_seq, vocab=self.config.vocab,
                                  model_eos_token_id=self.eos_token_id, caller=caller, **kwargs)

    def stream_tokens(self, input_ids, max_new_tokens: int | None = None, temperature: float | None = None,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      eos_token_id=None, **kwargs) -> Iterator[int]:
        """The new tokens one by one, as each step finishes; stops after max_new_tokens or an eos token (which is
        yielded). Takes generate()'s arguments but streamer. Arguments are checked here, before anything runs
        (TypeError naming an unsupported keyword, ValueError naming the argument)."""
        req = self.request(input_ids, caller="stream_tokens", max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id, **kwargs)
        params = req.sampling
        self.context.set_sampling(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                  seed=params.seed)
        return self._generate(req.ids, req.max_new_tokens, req.stops)

    def _generate(self, ids, max_new_tokens, stops) -> Iterator[int]:
        self.prefill(ids)
        token = self.context.step(ids[-1])
        for i in range(max_new_tokens):
            if i > 0:
                token = self.context.step()
            yield token
            if token in stops:
                return

    def generate(self, input_ids, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None, eos_token_id=None,
                 streamer=None, **kwargs):
        """The prompt followed by the new tokens, a torch int64 [1, L + n] tensor on the model's device (as
        transformers' generate returns).

        input_ids: a list of ints or a [L] / [1, L] tensor. max_new_tokens: default 64. temperature 0 (default) is
        greedy; seed makes sampling reproducible (None: a fresh one); top_k 0 and top_p 1 do not limit.
        eos_token_id: default the model's (generation_config.eos_token_id, else config.eos_token_id); an int or a
        list; [] or False: no stop token. streamer: a callable(token) called per new token, or a transformers
        streamer (TextStreamer, TextIteratorStreamer).
        Also takes what transformers' generate takes at batch 1: attention_mask (all ones), do_sample (False:
        greedy; True: sampling, temperature 1.0 unless given), generation_config (a GenerationConfig whose
        max_new_tokens, max_length, do_sample, temperature, top_k, top_p and eos_token_id apply where the
        arguments are None), pad_token_id (unused). Any other keyword raises TypeError naming it; the rules in
        full are generation_request's."""
        import torch

        req = self.request(input_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, seed=seed, eos_token_id=eos_token_id, **kwargs)
        on_token, on_end = _streamer_callback(streamer, torch.tensor([req.ids]))
        params = req.sampling
        self.context.set_sampling(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                  seed=params.seed)
        new = []
        for token in self._generate(req.ids, req.max_new_tokens, req.stops):
            new.append(token)
            on_token(token)
        on_end()
        return torch.tensor([req.ids + new], dtype=torch.int64, device=self.device)


def from_transformers(model, max_seq: int | None = None, mode: str | None = None) -> Engine:
    """An Engine for a transformers GPTNeoXForCausalLM or LlamaForCausalLM in float16 on CUDA, sharing its weights
    (no copy). max_seq defaults to the model's max_position_embeddings; mode None picks split (the faster mode once
    the layers' launches overlap). Raises ValueError for a config the kernels do not implement, TypeError for a
    parameter that is not float16 on CUDA, naming it, and UnsupportedDeviceError without a compute capability 9.0
    GPU."""
    return Engine(model, max_seq=max_seq, mode=mode)
