"""Two GPUs in one process (marker `gpu2`: skipped unless torch sees two CUDA devices): a pythia-2.8b model per
device, each engine running on its own device whatever device is current, two engines decoding at the same time
from two threads, weights split across the devices refused, and the whole-model benchmark on either GPU with the
same TPOT.

The models have pythia-2.8b's shapes with random weights and LAYERS decoder layers (clusterfusion.cli.random_model),
the second a copy of the first on cuda:1. A stream, a step buffer or a KV cache of the other device is refused by the
layer and the context in test_devices_gpu.py (test_memory_caches_and_streams_of_another_device_are_refused, also
`gpu2`); this file adds weights split across the two devices.

On the two-GPU machine: PYTHONPATH=build-gpu/python python3 -m pytest tests/python -m gpu2 -v -rs
"""

import copy
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.gpu2

REPO = Path(__file__).resolve().parents[2]
MODEL = "pythia-2.8b"
LAYERS = 4
MAX_SEQ = 160
PROMPT = 12
NEW = 48
SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.95)


@pytest.fixture(scope="module")
def cf():
    import clusterfusion

    return clusterfusion


@pytest.fixture(scope="module")
def models():
    """The same random weights on cuda:0 and on cuda:1 (a copy)."""
    from clusterfusion.cli import random_model

    first = random_model(MODEL, device="cuda:0", seed=int.from_bytes(os.urandom(4), "little"), layers=LAYERS)
    return first, copy.deepcopy(first).to("cuda:1")


@pytest.fixture(scope="module")
def engines(cf, models):
    """One engine per device, both built while cuda:0 is current."""
    with torch.cuda.device(0):
        built = [cf.from_transformers(model, max_seq=MAX_SEQ) for model in models]
    assert [e.context.device for e in built] == [0, 1]
    return built


def requests(vocab):
    """A greedy and a sampled request (generate()'s keyword arguments) for a fresh random prompt."""
    prompt = torch.randint(0, vocab, (PROMPT,)).tolist()
    greedy = dict(input_ids=prompt, max_new_tokens=NEW, eos_token_id=[])
    return [greedy, dict(greedy, **SAMPLING, seed=random.getrandbits(64))]


def generate_with_current(engine, current, request):
    """engine.generate(**request) while cuda:<current> is current; checks that it stays current and that the
    result is on the engine's device."""
    with torch.cuda.device(current):
        out = engine.generate(**request)
        assert torch.cuda.current_device() == current
    assert out.device == torch.device(f"cuda:{engine.context.device}")
    return out.cpu()


@pytest.mark.parametrize("device", [1, 0], ids=["model_on_cuda1_cuda0_current", "model_on_cuda0_cuda1_current"])
def test_an_engine_generates_the_same_tokens_on_either_device(engines, device):
    """The engine on `device` while the other device is current generates, greedy and sampled, the tokens of the
    same weights on the other device (run with its own device current)."""
    other = 1 - device
    for request in requests(engines[0].config.vocab):
        expected = generate_with_current(engines[other], other, request)
        got = generate_with_current(engines[device], other, request)
        assert torch.equal(got, expected), (f"cuda:{device} with cuda:{other} current differs from cuda:{other} "
                                            f"({'sampled' if 'seed' in request else 'greedy'}):\n{got}\n{expected}")
        assert got.shape == (1, PROMPT + NEW)


def test_two_engines_decode_at_once_from_two_threads(engines):
    """One thread per engine (each with the other device current), started together, three rounds of a greedy and
    a sampled request each; every output equals the engine's solo run of the same request, and the threads'
    generations overlapped in time (the context releases the GIL while it waits)."""
    vocab = engines[0].config.vocab
    rounds = [requests(vocab) for _ in engines]  # different prompts and seeds per engine
    solo = [[generate_with_current(engine, engine.context.device, r) for r in rounds[i]]
            for i, engine in enumerate(engines)]

    repeats = 3
    barrier = threading.Barrier(len(engines))
    outputs = [[] for _ in engines]
    spans = [[] for _ in engines]
    errors = []

    def worker(i):
        try:
            engine = engines[i]
            torch.cuda.set_device(1 - engine.context.device)  # this thread's current device: the other one
            barrier.wait(timeout=60)
            for _ in range(repeats):
                for request in rounds[i]:
                    start = time.perf_counter()
                    outputs[i].append(engine.generate(**request).cpu())
                    spans[i].append((start, time.perf_counter()))
        except BaseException as error:  # noqa: BLE001 - reported on the main thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a decoding thread did not finish in 600 s"
    if errors:
        raise errors[0]
    for i in range(len(engines)):
        assert len(outputs[i]) == repeats * len(rounds[i])
        for k, out in enumerate(outputs[i]):
            expected = solo[i][k % len(rounds[i])]
            assert torch.equal(out, expected), f"cuda:{i}, generation {k}: differs from its solo run"
    (first_start, first_end), (second_start, second_end) = ((s[0][0], s[-1][1]) for s in spans)
    assert first_start < second_end and second_start < first_end, f"the threads did not overlap: {spans}"


def refusal(name, got, device):
    return f"^{re.escape(name)}: on cuda:{got}, the context is on cuda:{device}$"


@pytest.mark.parametrize("device", [0, 1])
def test_a_context_refuses_weights_split_across_the_devices(cf, models, device):
    """DecodeContext on cuda:<device> (current) with one layer tensor, then the LM head, on the other device: a
    ValueError naming it, in the C++ side's words ("layers[3].w_up: on cuda:1, the context is on cuda:0")."""
    from clusterfusion.weights import model_weights

    other = 1 - device
    config = cf.config_from_transformers(models[device].config)
    layer = LAYERS - 1
    with torch.cuda.device(device):
        weights = model_weights(models[device], config)
        weights["layers"][layer]["w_up"] = weights["layers"][layer]["w_up"].to(f"cuda:{other}")
        with pytest.raises(ValueError, match=refusal(f"layers[{layer}].w_up", other, device)):
            cf.DecodeContext(config, MAX_SEQ, **weights)

        weights = model_weights(models[device], config)
        weights["lm_head"] = weights["lm_head"].to(f"cuda:{other}")
        with pytest.raises(ValueError, match=refusal("lm_head", other, device)):
            cf.DecodeContext(config, MAX_SEQ, **weights)

        ctx = cf.DecodeContext(config, MAX_SEQ, **model_weights(models[device], config))  # the same, unsplit
        assert ctx.device == device


def test_from_transformers_refuses_a_model_split_across_the_devices(cf, models):
    """A model on cuda:0 with its last decoder layer moved to cuda:1: from_transformers (its context on the
    embedding's device, cuda:0) refuses it, naming the layer's first weight of the schema."""
    split = copy.deepcopy(models[0])
    layer = LAYERS - 1
    split.base_model.layers[layer].to("cuda:1")
    config = cf.config_from_transformers(split.config)
    first = cf.weight_schema(config)["layer"][0]["name"]
    with torch.cuda.device(1), pytest.raises(ValueError, match=refusal(f"layers[{layer}].{first}", 1, 0)):
        cf.from_transformers(split, max_seq=MAX_SEQ)
    del split
    torch.cuda.empty_cache()


# The benchmark on both GPUs: bench/bench_e2e.py --device cuda:0, then cuda:1, TPOT compared.
BENCH_MODEL = "pythia-1b"
BENCH_DECODE = 512
TPOT_TOLERANCE = 0.05


def test_the_whole_model_benchmark_gives_the_same_tpot_on_either_gpu(tmp_path):
    """bench_e2e.py's clusterfusion_graph on BENCH_MODEL, decode BENCH_DECODE tokens, once per device: each JSON
    records its device, and the two TPOTs (each the mean over BENCH_DECODE - 1 steps) agree within
    TPOT_TOLERANCE of the smaller."""
    tpot = {}
    for device in ("cuda:0", "cuda:1"):
        out = tmp_path / f"e2e_{device.replace(':', '')}.json"
        command = [sys.executable, str(REPO / "bench" / "bench_e2e.py"), "--device", device, "--models", BENCH_MODEL,
                   "--systems", "clusterfusion_graph", "--decode", f"16,{BENCH_DECODE}", "--no-plot", "--out", str(out)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert result.returncode == 0, (f"{' '.join(command)}: exit {result.returncode}\n{result.stdout}\n"
                                        f"{result.stderr}")
        data = json.loads(out.read_text())
        assert data["device"] == device and not data["errors"]
        row = next(r for r in data["rows"]
                   if r["system"] == "clusterfusion_graph" and r["decode_tokens"] == BENCH_DECODE)
        tpot[device] = row["tpot_ms"]
        print(f"{device}: {data['device_name']}, read {data['read_bw_TBps']:.3f} TB/s, TPOT {row['tpot_ms']:.4f} ms")
    low, high = sorted(tpot.values())
    assert high <= low * (1 + TPOT_TOLERANCE), f"TPOT differs by more than {TPOT_TOLERANCE:.0%}: {tpot}"
