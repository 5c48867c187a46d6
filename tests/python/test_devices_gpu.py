"""Devices (marker `gpu`): a DecoderLayer, KVCache or DecodeContext lives on the device that was current when it was
built; every call runs there, and tensors, caches and streams of another device raise ValueError naming them. On
one GPU, "another device" is a DLPack producer claiming the next device id over real memory
(dlpack_claims.Claimed); with two GPUs or more, real memory, streams and engines of the second device too (those
tests, marked `gpu2`, skip on one GPU; test_two_gpus.py has the pythia-2.8b engines, threads and split weights)."""

import os
import random
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from dlpack_claims import Claimed  # noqa: E402

pytestmark = pytest.mark.gpu

MAX_SEQ = 64


@pytest.fixture(scope="module")
def cf():
    import clusterfusion

    return clusterfusion


@pytest.fixture(scope="module")
def model():
    from clusterfusion.cli import random_model

    return random_model("pythia-70m", seed=int.from_bytes(os.urandom(4), "little"), layers=2)


def refusal(name, owner, got, device):
    return f"^{re.escape(name)}: on cuda:{got}, the {owner} is on cuda:{device}$"


def layer_args(cf, model):
    from clusterfusion.weights import layer_weights

    config = cf.config_from_transformers(model.config)
    return config, layer_weights(model.gpt_neox.layers[0], config)


def step_buffers(config, device="cuda"):
    return dict(x=torch.randn(config.hidden, device=device).half(),
                out=torch.empty(config.hidden, device=device, dtype=torch.float16),
                attn=torch.empty(config.hidden, device=device), mlp_act=torch.empty(config.ffn, device=device))


def test_layer_refuses_weights_and_step_buffers_claimed_on_another_device(cf, model):
    config, weights = layer_args(cf, model)
    device = torch.cuda.current_device()
    other = device + 1
    name = random.choice(list(weights))
    claimed = dict(weights, **{name: Claimed(weights[name], device_id=other)})
    with pytest.raises(ValueError, match=refusal(name, "layer", other, device)):
        cf.DecoderLayer(config, MAX_SEQ, **claimed)

    layer = cf.DecoderLayer(config, MAX_SEQ, **weights)
    cache = cf.KVCache(config, MAX_SEQ)
    assert cache.device == device and cache.keys(0).device == device
    for name in ("x", "out", "attn", "mlp_act"):
        args = step_buffers(config)
        args[name] = Claimed(args[name], device_id=other)
        with pytest.raises(ValueError, match=refusal(name, "layer", other, device)):
            layer.forward(cache, 0, position=0, **args)
        assert cache.length == 0
    layer.forward(cache, 0, position=0, **step_buffers(config))
    assert cache.length == 1


def test_context_refuses_weights_and_prefix_claimed_on_another_device(cf, model):
    from clusterfusion.weights import model_weights

    config = cf.config_from_transformers(model.config)
    device = torch.cuda.current_device()
    other = device + 1
    for path in (["embed_in"], ["layers", 1, "w_up"]):
        weights = model_weights(model, config)
        owner = weights
        for key in path[:-1]:
            owner = owner[key]
        owner[path[-1]] = Claimed(owner[path[-1]], device_id=other)
        name = "layers[1].w_up" if len(path) > 1 else path[0]
        with pytest.raises(ValueError, match=refusal(name, "context", other, device)):
            cf.DecodeContext(config, MAX_SEQ, **weights)

    ctx = cf.DecodeContext(config, MAX_SEQ, **model_weights(model, config))
    assert ctx.device == device
    ctx.prefill([1, 2, 3])
    keys = [torch.zeros(1, config.kv_heads, 2, config.head_dim, device="cuda").half() for _ in range(config.layers)]
    values = [k.clone() for k in keys]
    values[1] = Claimed(values[1], device_id=other)
    with pytest.raises(ValueError, match=refusal("values[1]", "context", other, device)):
        ctx.load_prefix(keys, values)
    assert ctx.position == 3


@pytest.mark.gpu2
def test_calls_run_on_the_objects_device_whatever_is_current(cf, model):
    """Everything built on cuda:0, every call made with cuda:1 current: the same results, and cuda:1 stays
    current."""
    config, weights = layer_args(cf, model)
    with torch.cuda.device(0):
        engine = cf.from_transformers(model, max_seq=MAX_SEQ)
        fused = cf.FusedLayer(config, MAX_SEQ, weights)
        cache = cf.KVCache(config, MAX_SEQ)
        x = torch.randn(config.hidden, device="cuda:0").half()
    prompt = torch.randint(0, config.vocab, (6,)).tolist()
    with torch.cuda.device(0):
        expected = engine.generate(prompt, 8)
        expected_out = fused.forward(cache, 0, x, position=0).clone()
    cache.length = 0
    with torch.cuda.device(1):
        assert torch.equal(engine.generate(prompt, 8), expected)
        assert torch.equal(fused.forward(cache, 0, x, position=0), expected_out)
        assert torch.cuda.current_device() == 1


@pytest.mark.gpu2
def test_memory_caches_and_streams_of_another_device_are_refused(cf, model):
    from clusterfusion.weights import model_weights

    config, weights = layer_args(cf, model)
    with torch.cuda.device(0):
        layer = cf.DecoderLayer(config, MAX_SEQ, **weights)
        here = cf.KVCache(config, MAX_SEQ)
    buffers = step_buffers(config, "cuda:0")
    buffers["x"] = buffers["x"].to("cuda:1")
    with pytest.raises(ValueError, match=refusal("x", "layer", 1, 0)):
        layer.forward(here, 0, position=0, **buffers)
    with torch.cuda.device(1):
        there = cf.KVCache(config, MAX_SEQ)
        stream = torch.cuda.Stream()
    assert there.device == 1
    with pytest.raises(ValueError, match=refusal("cache", "layer", 1, 0)):
        layer.forward(there, 0, position=0, **step_buffers(config, "cuda:0"))
    with pytest.raises(ValueError, match=refusal("stream", "layer", 1, 0)):
        layer.forward(here, 0, position=0, stream=stream.cuda_stream, **step_buffers(config, "cuda:0"))
    assert here.length == 0 and there.length == 0
    with torch.cuda.device(0), pytest.raises(ValueError, match=refusal("stream", "context", 1, 0)):
        cf.DecodeContext(config, MAX_SEQ, stream=stream.cuda_stream, **model_weights(model, config))


@pytest.mark.gpu2
def test_an_engine_on_the_second_device(cf, model):
    """The model on cuda:1 while cuda:0 is current: generation equals that of the same model on cuda:0."""
    import copy

    first = cf.from_transformers(model, max_seq=MAX_SEQ)
    prompt = torch.randint(0, first.config.vocab, (6,)).tolist()
    expected = first.generate(prompt, 8)
    second = cf.from_transformers(copy.deepcopy(model).to("cuda:1"), max_seq=MAX_SEQ)
    assert second.context.device == 1
    with torch.cuda.device(0):
        got = second.generate(prompt, 8)
    assert got.device == torch.device("cuda:1")
    assert torch.equal(got.cpu(), expected.cpu())
