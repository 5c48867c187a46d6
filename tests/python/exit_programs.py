"""Programs that use the package and then exit, for test_leaks.py. At interpreter exit nanobind checks that no
instance of a bound type is still alive and prints "nanobind: leaked N instances!" (then the types and functions
they keep) when one is. Each program runs in a fresh interpreter:

    PYTHONPATH=build/python python3 tests/python/exit_programs.py cpu|pinned|gpu

cpu     what runs without a GPU: every embedded config, the weight schema, the C++ reference, the command line's
        parser, generation requests, the transformers bridges on CPU models (when torch and transformers are
        installed), and the refusals of KVCache, DecoderLayer and DecodeContext; the exceptions of the failed calls
        are kept to the end, tracebacks and all, as a program that stops on one keeps its own. It also runs on a
        machine with a GPU, where only the KVCache it builds is real.
pinned  cpu, then every type of clusterfusion._C held past the module's teardown, as typing's caches or another
        extension may hold a type at exit: nothing the package itself keeps may be an instance, since nanobind
        would report it (and every type and function it keeps alive) at exit.
gpu     cpu, then what bench/sanitize_layer.py does (a DecoderLayer's forward in each mode over a KVCache filled
        through its views, for GPT-NeoX and Llama), a DecodeContext's steps, sampling, logits and prefix, a
        FusedLayer and an Engine's generation; some of these objects stay referenced from module globals until
        exit, so the module teardown frees them.
"""

import gc
import sys

import numpy as np

import clusterfusion as cf

kept = []  # objects and exceptions that live until the interpreter's teardown


def expect_error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - any refusal will do; its traceback is what is kept
        kept.append(error)
    else:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} raised nothing")


def attempt(fn, *args, **kwargs):
    """Keeps what fn returns or the exception it raises (KVCache: a cache with a GPU, UnsupportedDeviceError
    without)."""
    try:
        kept.append(fn(*args, **kwargs))
    except Exception as error:  # noqa: BLE001
        kept.append(error)


def cpu():
    from clusterfusion import cli, engine, quality
    from clusterfusion.weights import model_weights

    for name in cf.model_names():
        config = cf.ModelConfig.named(name)
        assert eval(repr(config), vars(cf)) == config
        config.validate()
        config.rotary_inv_freq()
        kept.append((config, config.rope_scaling, cf.weight_schema(config)))
        config.layers = 1
        attempt(cf.KVCache, config, 16)
        layer = {s["name"]: np.zeros(s["shape"], np.float16) for s in cf.weight_schema(config)["layer"]}
        expect_error(cf.DecoderLayer, config, 16, **layer)
        model = {s["name"]: np.zeros(s["shape"], np.float16) for s in cf.weight_schema(config)["model"]}
        expect_error(cf.DecodeContext, config, 16, layers=[layer], **model)
    kept.append(cf.ModelConfig(rope_scaling=cf.RopeScaling(type=cf.RopeType.Llama3, factor=8.0)))
    kept.append(cf.SamplingParams(temperature=0.5, top_k=3, top_p=0.9, seed=7))
    expect_error(cf.ModelConfig.named, "pythia-7b")
    expect_error(cf.ModelConfig(hidden=3).validate)

    config = cf.ModelConfig.named("pythia-70m")
    rng = np.random.default_rng(0)
    weights = {s["name"]: rng.normal(0, 0.02, s["shape"]) for s in cf.weight_schema(config)["layer"]}
    past = rng.normal(size=(config.heads, 3, config.head_dim))
    kept.append(cf.reference_neox_layer(config, weights, rng.normal(size=config.hidden), past, past, 3))
    expect_error(cf.reference_neox_layer, config, {}, rng.normal(size=config.hidden), past, past, 3)

    kept.append(cli.build_parser().parse_args(["bench", "--model", "pythia-70m"]))
    kept.append(engine.generation_request([1, 2, 3], max_seq=16, vocab=100, max_new_tokens=4, temperature=0.7,
                                          seed=1))
    expect_error(engine.generation_request, [1], max_seq=4, vocab=10, max_new_tokens=9)

    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        return
    for name in ("pythia-70m", "tinyllama-1.1b"):
        model = cli.random_model(name, device="cpu", layers=1)
        config = cf.config_from_transformers(model.config)
        kept.append(model_weights(model, config, convert=lambda tensor, name: (name, tuple(tensor.shape))))
        expect_error(cf.from_transformers, model)  # CPU parameters: TypeError naming one
        expect_error(cf.FusedLayer.from_transformers, model.base_model.layers[0], config, 16)
        logits = torch.randn(4, config.vocab)
        kept.append(quality.compare(logits, logits + 0.01))


def pinned():
    import ctypes

    cpu()
    for obj in vars(cf._C).values():
        if isinstance(obj, type):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))  # never released


def sanitize_layer_steps(torch, name, max_seq=256, position=200):
    """bench/sanitize_layer.py's run_model at one model's shape, with a shorter cache."""
    config = cf.ModelConfig.named(name)
    config.layers = 1
    weights = {s["name"]: (torch.randn(s["shape"], device="cuda") * 0.02).half()
               for s in cf.weight_schema(config)["layer"]}
    layer = cf.DecoderLayer(config, max_seq, **weights)
    cache = cf.KVCache(config, max_seq)
    for view in (cache.keys(0), cache.values(0)):
        torch.from_dlpack(view)[:, :position].normal_()
    values = torch.as_tensor(cache.values(0), device="cuda")  # through __cuda_array_interface__
    cache.length = position
    x = torch.randn(config.hidden, device="cuda").half()
    out, h1 = torch.empty_like(x), torch.empty_like(x)
    attn, mlp_act = torch.empty(config.hidden, device="cuda"), torch.empty(config.ffn, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    for mode in ("split", "cooperative"):
        if mode == "cooperative" and not layer.plan["cooperative_supported"]:
            continue
        layer.forward(cache, 0, x, out, attn, mlp_act, position, mode=mode, h1=h1, stream=stream)
    layer.run_phase(cache, 0, 0, x, out, attn, mlp_act, position, h1=h1, stream=stream)
    expect_error(layer.forward, cache, 0, x, out, attn, mlp_act, max_seq, h1=h1, stream=stream)
    torch.cuda.synchronize()
    return layer, cache, values


def gpu():
    import torch

    from clusterfusion import cli
    from clusterfusion.weights import model_weights

    cpu()
    # GPT-NeoX and Llama; the refused forward's traceback keeps each call's frame, and with it the layer, the cache
    # and the tensors, alive to the end.
    for name in ("pythia-70m", "tinyllama-1.1b"):
        kept.append(sanitize_layer_steps(torch, name))

    model = cli.random_model("pythia-70m", layers=2)
    config = cf.config_from_transformers(model.config)
    context = cf.DecodeContext(config, 64, **model_weights(model, config))
    context.prefill([1, 2, 3])
    context.set_sampling(temperature=0.8, top_k=5, seed=1)
    context.step()
    context.enqueue_step()
    kept.append((context.last_token(), context.tokens(0, context.position), context.sampling))
    kept.append(torch.from_dlpack(context.logits()))
    keys = [torch.randn(1, config.kv_heads, 4, config.head_dim, device="cuda").half() for _ in range(config.layers)]
    context.load_prefix(keys, [k.clone() for k in keys])
    context.step(5)
    expect_error(context.load_prefix, keys[:1], keys[:1])
    kept.append(context)

    fused = cf.FusedLayer.from_transformers(model.gpt_neox.layers[0], config, 64)
    cache = cf.KVCache(config, 64)
    kept.append((fused, cache, fused.forward(cache, 0, torch.randn(config.hidden, device="cuda").half(), 0)))

    engine = cf.from_transformers(model, max_seq=64)
    kept.append(engine.generate([1, 2, 3], max_new_tokens=4))
    kept.append(engine.logits())
    tokens = engine.stream_tokens([4, 5], max_new_tokens=3)
    next(tokens)
    kept.append((engine, tokens))  # a generation left suspended
    expect_error(engine.generate, [1, 2, 3], max_new_tokens=64)
    torch.cuda.synchronize()


if __name__ == "__main__":
    {"cpu": cpu, "pinned": pinned, "gpu": gpu}[sys.argv[1]]()
    gc.collect()
    print(f"{sys.argv[1]}: done, {len(kept)} objects kept to the end", flush=True)
