"""The whole-model decode bridge without a GPU: argument checks of generate, the command line, the model
shapes behind `bench`, and the loading path (save_pretrained -> from_pretrained -> from_transformers) up to the
point where the library needs CUDA tensors."""

import os
import random
import subprocess
import sys
import types

import pytest

import clusterfusion as cf
from clusterfusion import cli, engine, weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


# ---- sampling and request arguments ------------------------------------------------------------------------

def test_sampling_params_keep_the_values():
    seed = random.getrandbits(64)
    top_k = random.randint(0, 100)
    params = engine.sampling_params(temperature=0.7, top_k=top_k, top_p=0.9, seed=seed)
    assert (params.top_k, params.seed) == (top_k, seed)
    assert params.temperature == pytest.approx(0.7) and params.top_p == pytest.approx(0.9)


def test_sampling_params_draw_a_seed_when_none_is_given():
    seeds = {engine.sampling_params(seed=None).seed for _ in range(4)}
    assert len(seeds) > 1 and all(0 <= s < 2**64 for s in seeds)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(temperature=-0.5), r"SamplingParams\.temperature: must be finite and >= 0"),
    (dict(temperature=float("inf")), r"SamplingParams\.temperature"),
    (dict(top_k=-1), r"SamplingParams\.top_k: must be >= 0"),
    (dict(top_k=2.5), r"top_k: expected an int, got 2\.5"),
    (dict(top_p=0.0), r"SamplingParams\.top_p: must be in \(0, 1\]"),
    (dict(top_p=1.5), r"SamplingParams\.top_p"),
    (dict(seed=-1), r"seed: expected an int in \[0, 2\*\*64\)"),
    (dict(seed=2**64), r"seed: expected an int"),
    (dict(seed="7"), r"seed: expected an int"),
])
def test_bad_sampling_arguments_are_named(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        engine.sampling_params(**kwargs)


def test_sampling_params_binding_validates():
    with pytest.raises(ValueError, match=r"SamplingParams\.top_p"):
        cf.SamplingParams(top_p=-0.1).validate()
    cf.SamplingParams(temperature=1.0, top_k=5, top_p=0.5, seed=3).validate()


def test_prompt_ids_from_lists_and_tensors():
    ids = [random.randrange(50000) for _ in range(random.randint(1, 20))]
    assert engine.prompt_ids(ids) == ids
    assert engine.prompt_ids(torch.tensor(ids)) == ids
    assert engine.prompt_ids(torch.tensor([ids])) == ids


@pytest.mark.parametrize("bad, pattern", [
    ([], "input_ids: expected at least one token"),
    ([1.5, 2], "input_ids: expected ints"),
    ([True], "input_ids: expected ints"),
    ("batch2", r"input_ids: expected shape \[L\] or \[1, L\] \(batch 1\), got \[2, 3\]"),
    ("3d", r"input_ids: expected shape \[L\] or \[1, L\]"),
])
def test_bad_prompts_are_named(bad, pattern):
    if bad == "batch2":
        bad = torch.zeros(2, 3, dtype=torch.int64)
    elif bad == "3d":
        bad = torch.zeros(1, 1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match=pattern):
        engine.prompt_ids(bad)


def test_eos_set():
    assert engine.eos_set(None) == frozenset()
    assert engine.eos_set([]) == engine.eos_set(False) == frozenset()
    assert engine.eos_set(7) == {7}
    assert engine.eos_set([3, 4]) == engine.eos_set((3, 4)) == {3, 4}
    for bad in (["a"], "a", True, [True], 2.0):
        with pytest.raises(ValueError, match=r"eos_token_id: expected an int, a list of ints, or \[\] / False"):
            engine.eos_set(bad)


def test_check_request():
    max_seq = random.randint(8, 64)
    prompt = [1] * random.randint(1, max_seq)
    engine.check_request(prompt, max_seq - len(prompt) + 1, max_seq, 100)  # the last step at max_seq - 1
    with pytest.raises(ValueError, match=rf"past max_seq {max_seq}"):
        engine.check_request(prompt, max_seq - len(prompt) + 2, max_seq, 100)
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 1"):
            engine.check_request(prompt, bad, max_seq, 100)
    with pytest.raises(ValueError, match=r"input_ids: expected tokens in 0\.\.99, got \[100, -1\]"):
        engine.check_request([5, 100, -1], 1, max_seq, 100)


# ---- generate()'s arguments as transformers users pass them ---------------------------------------------------

VOCAB, MAX_SEQ = 1000, 256


def request(input_ids=(5, 6, 7), **kwargs):
    kwargs.setdefault("model_eos_token_id", None)
    return engine.generation_request(list(input_ids) if isinstance(input_ids, tuple) else input_ids, max_seq=MAX_SEQ,
                                     vocab=VOCAB, **kwargs)


def test_request_defaults():
    req = request()
    assert (req.ids, req.max_new_tokens, req.stops) == ([5, 6, 7], 64, frozenset())
    assert (req.sampling.temperature, req.sampling.top_k, req.sampling.top_p) == (0.0, 0, 1.0)


def test_eos_defaults_to_the_models():
    assert request(model_eos_token_id=0).stops == {0}
    assert request(model_eos_token_id=[2, 32000 % VOCAB]).stops == {2, 0}
    assert request(model_eos_token_id=0, eos_token_id=None).stops == {0}  # None: the model's, as in transformers
    assert request(model_eos_token_id=0, eos_token_id=9).stops == {9}
    assert request(model_eos_token_id=0, eos_token_id=[]).stops == frozenset()  # no stop token
    assert request(model_eos_token_id=0, eos_token_id=False).stops == frozenset()


class FakeModel:
    def __init__(self, generation_eos, config_eos):
        self.generation_config = None if generation_eos == "absent" else types.SimpleNamespace(
            eos_token_id=generation_eos)
        self.config = types.SimpleNamespace(eos_token_id=config_eos)


def test_model_eos_token_id_prefers_the_generation_config():
    assert engine.model_eos_token_id(FakeModel(2, 0)) == 2
    assert engine.model_eos_token_id(FakeModel([1, 2], 0)) == [1, 2]
    assert engine.model_eos_token_id(FakeModel(None, 0)) == 0
    assert engine.model_eos_token_id(FakeModel("absent", 3)) == 3
    assert engine.model_eos_token_id(FakeModel(None, None)) is None
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=1, vocab_size=128,
        bos_token_id=1, eos_token_id=2))
    assert engine.model_eos_token_id(model) == 2


@pytest.mark.parametrize("mask", [[1, 1, 1], [[1, 1, 1]], "tensor", "bool"])
def test_attention_mask_of_ones_is_accepted(mask):
    ids = torch.tensor([[5, 6, 7]])
    if mask == "tensor":
        mask = torch.ones_like(ids)
    elif mask == "bool":
        mask = torch.ones(1, 3, dtype=torch.bool)
    assert request(ids, attention_mask=mask).ids == [5, 6, 7]


@pytest.mark.parametrize("mask, pattern", [
    (torch.tensor([[0, 1, 1]]), r"attention_mask: expected all ones \(batch 1, no padding.*got 0 at positions \[0\]"),
    ([1, 0, 0], r"attention_mask: expected all ones.*at positions \[1, 2\]"),
    (torch.ones(1, 4, dtype=torch.int64), r"attention_mask: expected shape \[1, 3\] or \[3\] like input_ids "
                                          r"\(batch 1\), got \[1, 4\]"),
    (torch.ones(2, 3, dtype=torch.int64), r"attention_mask: expected shape \[1, 3\].*got \[2, 3\]"),
])
def test_other_attention_masks_are_refused_by_name(mask, pattern):
    with pytest.raises(ValueError, match=pattern):
        request(torch.tensor([[5, 6, 7]]), attention_mask=mask)


def test_do_sample():
    assert request(do_sample=False, temperature=0.8, top_k=5).sampling.temperature == 0.0  # greedy, as transformers
    assert request(do_sample=True).sampling.temperature == 1.0
    sampled = request(do_sample=True, temperature=0.7, top_k=40, top_p=0.9, seed=3).sampling
    assert (sampled.temperature, sampled.top_k, sampled.top_p, sampled.seed) == (pytest.approx(0.7), 40,
                                                                                  pytest.approx(0.9), 3)
    assert request(temperature=0.5).sampling.temperature == 0.5  # do_sample unset: temperature > 0 samples
    with pytest.raises(ValueError, match=r"temperature: 0 is greedy, and do_sample=True asks for sampling"):
        request(do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match=r"do_sample: expected True, False or None, got 'yes'"):
        request(do_sample="yes")
    with pytest.raises(ValueError, match=r"SamplingParams\.top_p"):  # checked even where greedy ignores it
        request(do_sample=False, top_p=2.0)


def test_generation_config_is_read():
    gc = transformers.GenerationConfig(max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9,
                                       eos_token_id=[3, 4], pad_token_id=0, bos_token_id=1)
    req = request(generation_config=gc, model_eos_token_id=2)
    assert (req.max_new_tokens, req.stops) == (5, {3, 4})
    assert (req.sampling.temperature, req.sampling.top_k, req.sampling.top_p) == (
        pytest.approx(0.7), 50, pytest.approx(0.9))  # top_k unset: transformers' 50
    # Arguments override the generation_config.
    req = request(generation_config=gc, max_new_tokens=9, top_k=7, do_sample=False, eos_token_id=[])
    assert (req.max_new_tokens, req.sampling.temperature, req.stops) == (9, 0.0, frozenset())


def test_generation_config_temperature_alone_stays_greedy():
    """As in transformers: without do_sample=True a generation_config's temperature does not sample."""
    req = request(generation_config=transformers.GenerationConfig(temperature=0.6, top_p=0.9))
    assert req.sampling.temperature == 0.0


def test_generation_config_max_length_counts_the_prompt():
    assert request(generation_config=transformers.GenerationConfig(max_length=30)).max_new_tokens == 27
    with pytest.raises(ValueError, match=r"generation_config\.max_length: 3 leaves no room for a new token after 3 "
                                         r"prompt tokens"):
        request(generation_config=transformers.GenerationConfig(max_length=3))


def test_a_models_own_generation_config_is_accepted():
    for hf in (transformers.GPTNeoXConfig(), transformers.LlamaConfig()):
        gc = transformers.GenerationConfig.from_model_config(hf)
        assert request(generation_config=gc).stops == {hf.eos_token_id}


@pytest.mark.parametrize("field, value", [("num_beams", 4), ("repetition_penalty", 1.3), ("min_new_tokens", 5),
                                          ("min_p", 0.1), ("no_repeat_ngram_size", 3)])
def test_generation_config_settings_the_engine_does_not_compute_are_refused(field, value):
    gc = transformers.GenerationConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"generation_config\.{field}: {value!r} is not supported"):
        request(generation_config=gc)


def test_generation_config_must_be_one():
    with pytest.raises(TypeError, match="generation_config: expected a transformers GenerationConfig, got dict"):
        request(generation_config=dict(max_new_tokens=4))


def test_unknown_keywords_are_refused_by_name():
    with pytest.raises(TypeError, match=r"generate\(\) got unsupported keyword arguments num_beams, "
                                        r"repetition_penalty \(supported: max_new_tokens, .*generation_config"):
        request(num_beams=2, repetition_penalty=1.1)
    with pytest.raises(TypeError, match=r"stream_tokens\(\) got unsupported keyword argument streamer "):
        request(streamer=print, caller="stream_tokens")
    assert request(pad_token_id=0).ids == [5, 6, 7]  # batch 1 has no padding: accepted, unused


class FakeContext:
    """DecodeContext's part that generate() drives, replaying scripted tokens (no GPU)."""

    def __init__(self, tokens, max_seq=64):
        self.tokens, self.max_seq, self.mode = list(tokens), max_seq, "split"
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def set_sampling(self, **kwargs):
        self.calls.append(("set_sampling", kwargs))

    def step(self, token=None):
        self.calls.append(("step", token))
        return self.tokens.pop(0)


def fake_engine(tokens, eos_token_id):
    e = engine.Engine.__new__(engine.Engine)  # no GPU: the pieces generate() reads
    e.model, e.device, e.eos_token_id = None, "cpu", eos_token_id
    e.config = cf.ModelConfig.named("pythia-70m")
    e.context = FakeContext(tokens)
    return e


def test_engine_generate_stops_at_the_models_eos_by_default():
    e = fake_engine([11, 12, 0, 13, 14], eos_token_id=0)
    assert e.generate([7], max_new_tokens=5).tolist() == [[7, 11, 12, 0]]  # the eos token is returned
    e = fake_engine([11, 12, 0, 13, 14], eos_token_id=0)
    assert e.generate([7], max_new_tokens=5, eos_token_id=[]).tolist() == [[7, 11, 12, 0, 13, 14]]


def test_engine_generate_takes_transformers_arguments():
    e = fake_engine([11, 12, 2, 13], eos_token_id=None)
    ids = torch.tensor([[7]])
    gc = transformers.GenerationConfig(max_new_tokens=4, eos_token_id=2)
    out = e.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc, do_sample=False)
    assert out.tolist() == [[7, 11, 12, 2]]
    (name, sampling), *steps = [c for c in e.context.calls if c != "reset"]
    assert name == "set_sampling" and (sampling["temperature"], sampling["top_k"], sampling["top_p"]) == (0.0, 0, 1.0)
    assert steps == [("step", 7), ("step", None), ("step", None)]


def test_engine_refuses_unknown_keywords_before_anything_runs():
    e = fake_engine([11], eos_token_id=None)
    with pytest.raises(TypeError, match=r"generate\(\) got unsupported keyword argument num_beams"):
        e.generate([7], num_beams=4)
    with pytest.raises(TypeError, match=r"stream_tokens\(\) got unsupported keyword argument top_a"):
        e.stream_tokens([7], top_a=0.1)  # checked at the call, not at the first token
    with pytest.raises(ValueError, match="attention_mask: expected all ones"):
        e.stream_tokens(torch.tensor([[3, 7]]), attention_mask=torch.tensor([[0, 1]]))
    assert e.context.calls == []


def test_random_weights_have_no_eos():
    """bench and the tests' random models generate to max_new_tokens: random weights have no end of text."""
    for name in ("pythia-70m", "tinyllama-1.1b"):
        assert cli.hf_config_for(name).eos_token_id is None
    assert engine.model_eos_token_id(cli.random_model("pythia-70m", device="cpu")) is None


# ---- the command line ----------------------------------------------------------------------------------------

def test_cli_generate_arguments():
    args = cli.build_parser().parse_args(["generate", "--model", "some/dir", "--prompt", "Hello", "--max-new-tokens",
                                          "5", "--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--seed",
                                          "11", "--mode", "split"])
    assert (args.command, args.model, args.prompt, args.max_new_tokens) == ("generate", "some/dir", "Hello", 5)
    assert (args.temperature, args.top_k, args.top_p, args.seed, args.mode) == (0.8, 40, 0.9, 11, "split")


def test_cli_bench_defaults():
    args = cli.build_parser().parse_args(["bench"])
    assert (args.model, args.prompt_tokens, args.decode_tokens, args.mode) == ("pythia-2.8b", 32, 256, None)


@pytest.mark.parametrize("name", ["llama-2-7b", "tinyllama-1.1b", "llama-3-8b", "llama-3.2-1b"])
def test_cli_bench_takes_a_llama_model(name, tmp_path, monkeypatch):
    args = cli.build_parser().parse_args(["bench", "--model", name, "--decode-tokens", "16"])
    assert (args.command, args.model, args.decode_tokens) == ("bench", name, 16)
    assert name in cli.EMBEDDED_MODELS
    monkeypatch.chdir(tmp_path)
    assert cli.model_for_bench(name) == (None, f"{name} shapes, random weights")


def test_embedded_models_are_the_library_names():
    assert cli.EMBEDDED_MODELS == cf.model_names()
    assert {"pythia-70m", "pythia-2.8b", "gpt-neox-20b", "llama-2-7b", "tinyllama-1.1b", "llama-3-8b",
            "llama-3.2-1b"} <= set(cli.EMBEDDED_MODELS)


@pytest.mark.parametrize("argv", [
    [],
    ["generate", "--prompt", "x"],                       # no --model
    ["generate", "--model", "m"],                        # no --prompt
    ["generate", "--model", "m", "--prompt", "x", "--max-new-tokens", "0"],
    ["bench", "--decode-tokens", "-4"],
    ["bench", "--mode", "fast"],
    ["serve"],
])
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert "usage: clusterfusion" in capsys.readouterr().err


def test_python_dash_m_prints_help():
    result = subprocess.run([sys.executable, "-m", "clusterfusion", "bench", "--help"], capture_output=True,
                            text=True, env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--decode-tokens" in result.stdout and "pythia-6.9b" in result.stdout and "llama-3-8b" in result.stdout


def test_bench_picks_random_weights_for_an_embedded_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no directory called pythia-6.9b here
    model, description = cli.model_for_bench("pythia-6.9b")
    assert model is None and description == "pythia-6.9b shapes, random weights"


@pytest.mark.parametrize("name", cli.EMBEDDED_MODELS)
def test_embedded_shapes_map_back_to_their_config(name):
    """The transformers config `bench` builds is the library's own config of that model."""
    assert cf.config_from_transformers(cli.hf_config_for(name)) == cf.ModelConfig.named(name)


def test_hf_config_for_tinyllama_is_its_llama_config():
    hf = cli.hf_config_for("tinyllama-1.1b")
    assert isinstance(hf, transformers.LlamaConfig) and hf.model_type == "llama"
    assert (hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim, hf.intermediate_size,
            hf.num_hidden_layers, hf.vocab_size) == (2048, 32, 4, 64, 5632, 22, 32000)
    assert (hf.hidden_act, hf.tie_word_embeddings, hf.attention_bias, hf.mlp_bias) == ("silu", False, False, False)
    assert hf.rms_norm_eps == pytest.approx(1e-5, rel=1e-6)  # the checkpoint's, not LlamaConfig's default 1e-6
    rope = getattr(hf, "rope_parameters", None) or dict(hf.rope_scaling, rope_theta=hf.rope_theta)
    assert rope.get("rope_type", "default") == "default" and rope["rope_theta"] == 10000.0


def test_hf_config_for_llama_3_carries_its_rope_scaling():
    hf = cli.hf_config_for("llama-3.2-1b")
    rope = getattr(hf, "rope_parameters", None) or dict(hf.rope_scaling, rope_theta=hf.rope_theta)
    assert {k: rope[k] for k in ("rope_type", "factor", "low_freq_factor", "high_freq_factor",
                                 "original_max_position_embeddings", "rope_theta")} == dict(
        rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192, rope_theta=500000.0)
    assert hf.tie_word_embeddings and hf.max_position_embeddings > 8192


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model name 'pythia-3b'.*pythia-2\.8b.*tinyllama-1\.1b"):
        cli.hf_config_for("pythia-3b")


def test_progress_without_tqdm_prints_tenths(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    total = random.randint(10, 40)
    assert list(cli.progress(range(total), total, "steps")) == list(range(total))
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"steps: {total}/{total}" and 1 < len(lines) <= 10


# ---- loading a checkpoint, up to the GPU boundary ---------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    """A pythia-70m-shaped model with random weights, written by save_pretrained (safetensors)."""
    path = tmp_path_factory.mktemp("pythia-70m-random")
    model = cli.random_model("pythia-70m", device="cpu", seed=random.randrange(2**31))
    model.save_pretrained(path)
    return path, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_from_pretrained_reads_back_what_was_saved(saved_checkpoint):
    path, saved = saved_checkpoint
    assert (path / "model.safetensors").exists()
    loaded = transformers.GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float16)
    assert cf.config_from_transformers(loaded.config) == cf.ModelConfig.pythia("pythia-70m")
    params = dict(loaded.named_parameters())
    assert set(params) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(params[name], tensor), name


def test_from_transformers_refuses_cpu_weights_by_name(saved_checkpoint):
    path, _ = saved_checkpoint
    loaded = transformers.GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"gpt_neox\.embed_in\.weight: expected a float16 CUDA tensor, got "
                                        r"torch\.float16 on cpu"):
        cf.from_transformers(loaded)


def test_from_transformers_refuses_float32_by_name(saved_checkpoint):
    path, _ = saved_checkpoint
    loaded = transformers.GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float32)
    with pytest.raises(TypeError, match=r"gpt_neox\.embed_in\.weight: expected a float16 CUDA tensor, got "
                                        r"torch\.float32"):
        weights.model_weights(loaded, cf.config_from_transformers(loaded.config))


def test_from_transformers_refuses_another_architecture():
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=64, vocab_size=128)
    with pytest.raises(ValueError, match="model_type: expected one of 'gpt_neox', 'llama', got 'gpt2'"):
        cf.from_transformers(transformers.GPT2LMHeadModel(config))


@pytest.mark.parametrize("tied", [False, True])
def test_from_transformers_takes_a_llama_model_up_to_the_gpu(tied):
    """A float16 LlamaForCausalLM on the CPU: the config converts, and the first weight is refused by name."""
    hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                                  num_hidden_layers=2, vocab_size=256, rms_norm_eps=1e-5, tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(hf).half()
    assert cf.config_from_transformers(model.config).tied_embeddings == tied
    with pytest.raises(TypeError, match=r"^model\.embed_tokens\.weight: expected a float16 CUDA tensor, got "
                                        r"torch\.float16 on cpu"):
        cf.from_transformers(model)


@pytest.mark.gpu
def test_generate_stops_at_the_models_eos_on_the_gpu():
    """engine.generate(ids) stops at the model's generation_config.eos_token_id (the eos token is returned);
    eos_token_id=[] runs to max_new_tokens."""
    model = cli.random_model("pythia-70m", seed=random.randrange(2**31))
    e = cf.from_transformers(model, max_seq=64)
    prompt = [random.randrange(e.config.vocab) for _ in range(5)]
    full = e.generate(prompt, 16, eos_token_id=[])[0, 5:].tolist()
    assert len(full) == 16
    model.generation_config.eos_token_id = full[6]
    e = cf.from_transformers(model, max_seq=64)
    assert e.generate(prompt, 16)[0, 5:].tolist() == full[:full.index(full[6]) + 1]
    assert list(e.stream_tokens(prompt, 16, eos_token_id=False)) == full
