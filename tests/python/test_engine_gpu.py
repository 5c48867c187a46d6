"""Whole-model decode on the GPU, against transformers' GPTNeoXForCausalLM / LlamaForCausalLM with random weights
at real shapes (pythia-2.8b, pythia-6.9b, llama-2-7b, tinyllama-1.1b, llama-3.2-1b):

- teacher-forced over 256 steps after a 32-token prompt: the library's logits and transformers' float16 logits,
  each against a float32 transformers run of the same weights; the library's max and mean |Δlogit| at most 1.1×
  transformers float16's, and every step where its top-1 differs from float32's is one where float32's margin
  between the two tokens is within float16 noise (two logits each off by the step's float16 error);
- greedy generation of 128 tokens against transformers float16 greedy: the match rate is reported, and at the
  first divergence each pick's float32 logit must lie within float16 noise (two logits each off by the step's
  error) of float32's best;
- tokens and logits bitwise identical across runs; sampling reproducible by seed; streaming and eos;
- the loading path save_pretrained -> from_pretrained -> from_transformers -> generate.

Every test is marked `gpu` (skipped without a CUDA device). CF_E2E_MODELS=pythia-2.8b limits the shapes.
"""

import copy
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402

pytestmark = pytest.mark.gpu

DEFAULT_SHAPES = "pythia-2.8b,pythia-6.9b,llama-2-7b,tinyllama-1.1b,llama-3.2-1b"
SHAPES = [m for m in os.environ.get("CF_E2E_MODELS", DEFAULT_SHAPES).split(",") if m]
PROMPT = 32
TEACHER_STEPS = 256
GREEDY_STEPS = 128
ERROR_FACTOR = 1.1  # the library's logit error may be at most this many times transformers float16's
STEP_FACTOR = 2.0  # the same for the max over a single step's logits, a noisier statistic


@pytest.fixture(scope="module")
def cf():
    """The package, imported once a test runs (the tests skip before this on a machine without a GPU)."""
    import clusterfusion

    return clusterfusion


class Setup:
    """A float16 model with random weights at one shape, its engine, and a float32 copy made on demand."""

    def __init__(self, cf, shape):
        from clusterfusion.cli import random_model

        self.seed = int(os.environ.get("CF_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
        self.shape = shape
        self.model = random_model(shape, seed=self.seed)
        self.engine = cf.from_transformers(self.model, max_seq=PROMPT + TEACHER_STEPS + 16)
        self.vocab = self.engine.config.vocab
        self.generator = torch.Generator().manual_seed(self.seed)

    def tokens(self, n):
        return torch.randint(0, self.vocab, (n,), generator=self.generator).tolist()

    @torch.no_grad()
    def logits(self, ids, dtype):
        """transformers' logits over a whole sequence (teacher forcing), float32 [len(ids), vocab], with the
        weights in `dtype` (a float32 copy is made and dropped for float32)."""
        model = self.model if dtype == torch.float16 else copy.deepcopy(self.model).to(dtype)
        out = model(torch.tensor([ids], device="cuda"), use_cache=False).logits[0].float()
        del model
        torch.cuda.empty_cache()
        return out

    def __repr__(self):
        return f"{self.shape} (seed {self.seed})"


@pytest.fixture(scope="module", params=SHAPES)
def setup(request, cf):
    return Setup(cf, request.param)


def library_teacher_forced(engine, ids, first, steps):
    """The library's logits after each of ids[first : first + steps], the positions before `first` prefilled
    through transformers: float32 [steps, vocab]."""
    engine.prefill(ids[:first + 1])  # loads positions 0..first-1
    rows = []
    for j in range(steps):
        engine.context.step(ids[first + j])
        rows.append(engine.logits().clone())
    return torch.stack(rows)


def logit_errors(logits, reference):
    diff = (logits - reference).abs()
    top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return dict(max=diff.max().item(), mean=diff.mean().item(), top1=top1)


def test_teacher_forced_logits_within_transformers_float16_error(setup):
    ids = setup.tokens(PROMPT + TEACHER_STEPS)
    first = PROMPT - 1  # the last prompt token: its step gives the first predicted token
    window = slice(first, first + TEACHER_STEPS)
    fp32 = setup.logits(ids[:first + TEACHER_STEPS], torch.float32)[window]
    fp16 = setup.logits(ids[:first + TEACHER_STEPS], torch.float16)[window]
    lib = library_teacher_forced(setup.engine, ids, first, TEACHER_STEPS)
    assert torch.isfinite(lib).all()
    hf, ours = logit_errors(fp16, fp32), logit_errors(lib, fp32)
    summary = f"{setup}: library {ours}, transformers float16 {hf}"
    print(summary)
    assert ours["max"] <= ERROR_FACTOR * hf["max"], summary
    assert ours["mean"] <= ERROR_FACTOR * hf["mean"], summary
    # Top-1 counts of near-ties are a coin toss on random weights; a disagreement must be a near-tie: float32's
    # margin between its token and ours within what two logits, each off by float16's error, can bridge.
    noise = (fp16 - fp32).abs().amax(-1)
    ours_top, best = lib.argmax(-1), fp32.amax(-1)
    for i in torch.nonzero(ours_top != fp32.argmax(-1)).flatten().tolist():
        margin = (best[i] - fp32[i, ours_top[i]]).item()
        assert margin <= 2 * ERROR_FACTOR * noise[i].item(), f"{summary}; step {i}: margin {margin:.4g}"


@torch.no_grad()
def transformers_greedy(model, prompt, steps):
    cache = DynamicCache(config=model.config)
    out = model(torch.tensor([prompt], device="cuda"), past_key_values=cache, use_cache=True)
    tokens = [int(out.logits[0, -1].argmax())]
    for _ in range(steps - 1):
        out = model(torch.tensor([[tokens[-1]]], device="cuda"), past_key_values=cache, use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


def test_greedy_generation_matches_transformers_up_to_float16_ties(setup):
    prompt = setup.tokens(PROMPT)
    ours = setup.engine.generate(prompt, GREEDY_STEPS)[0, PROMPT:].tolist()
    theirs = transformers_greedy(setup.model, prompt, GREEDY_STEPS)
    assert len(ours) == len(theirs) == GREEDY_STEPS
    match = sum(a == b for a, b in zip(ours, theirs)) / GREEDY_STEPS
    divergence = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    print(f"{setup}: greedy token match rate {match:.3f}, first divergence at step {divergence}")
    if divergence is None:
        return
    # At the first divergence both saw the same prefix, and each pick must be a near-tie of float32's best: a token
    # chosen under logits each off by at most e from float32's lies within 2e of float32's max. e is transformers
    # float16's error at this step, times STEP_FACTOR for the library (the teacher-forced test bounds its error by
    # that). Several tokens can lie that close (seen: a third token within float16 noise of float32's top two), so
    # neither pick has to be float32's first or second.
    prefix = prompt + ours[:divergence]
    fp32 = setup.logits(prefix, torch.float32)[-1]
    fp16 = setup.logits(prefix, torch.float16)[-1]
    noise = (fp16 - fp32).abs().max().item()
    best = fp32.max().item()
    below = {name: best - fp32[token].item() for name, token in (("library", ours[divergence]),
                                                                  ("transformers", theirs[divergence]))}
    detail = (f"{setup} step {divergence}: library {ours[divergence]}, transformers {theirs[divergence]}, float32 "
              f"best {int(fp32.argmax())}, below it by {below}, transformers float16 noise {noise:.4g}")
    assert below["library"] <= 2 * STEP_FACTOR * noise, detail
    assert below["transformers"] <= 2 * STEP_FACTOR * noise, detail


def test_tokens_and_logits_are_bitwise_repeatable(setup):
    """The library alone (its standalone prefill, then greedy steps): the same bits on every run."""
    prompt = setup.tokens(PROMPT)
    runs = []
    for _ in range(3):
        engine = setup.engine
        engine.context.reset()
        tokens, logits = [engine.context.prefill(prompt)], [engine.logits().clone()]
        for _ in range(48):
            tokens.append(engine.context.step())
            logits.append(engine.logits().clone())
        runs.append((tokens, torch.stack(logits).view(torch.int32)))
    for tokens, logits in runs[1:]:
        assert tokens == runs[0][0], setup
        assert torch.equal(logits, runs[0][1]), setup


def test_sampling_is_reproducible_by_seed(setup):
    prompt = setup.tokens(PROMPT)
    options = dict(max_new_tokens=40, temperature=1.2, top_k=100, top_p=0.95)
    first = setup.engine.generate(prompt, seed=5, **options)
    assert torch.equal(setup.engine.generate(prompt, seed=5, **options), first), setup
    assert not torch.equal(setup.engine.generate(prompt, seed=6, **options), first), setup
    # top_k=1 is greedy whatever the temperature.
    assert torch.equal(setup.engine.generate(prompt, max_new_tokens=20, temperature=0.7, top_k=1, seed=1),
                       setup.engine.generate(prompt, max_new_tokens=20)), setup


def test_streaming_and_eos(setup):
    prompt = setup.tokens(PROMPT)
    full = setup.engine.generate(prompt, 24)[0, PROMPT:].tolist()
    seen = []
    streamed = setup.engine.generate(prompt, 24, streamer=seen.append)[0, PROMPT:].tolist()
    assert streamed == full and seen == full
    assert list(setup.engine.stream_tokens(prompt, 24)) == full
    stop = full[10]
    until = full.index(stop) + 1  # generation ends with the first eos token, which is returned
    assert setup.engine.generate(prompt, 24, eos_token_id=[stop])[0, PROMPT:].tolist() == full[:until]


def test_single_token_prompt_runs_without_transformers_prefill(cf, setup):
    """A one-token prompt needs no prefill: the first step is the library's alone, and its logits are within
    (a small multiple of) transformers float16's error of float32."""
    token = setup.tokens(1)
    setup.engine.prefill(token)
    assert setup.engine.context.position == 0
    setup.engine.context.step(token[0])
    lib = setup.engine.logits().clone()
    fp32 = setup.logits(token, torch.float32)[0]
    fp16 = setup.logits(token, torch.float16)[0]
    assert (lib - fp32).abs().max() <= STEP_FACTOR * (fp16 - fp32).abs().max(), setup


def test_request_past_max_seq_is_refused(setup):
    with pytest.raises(ValueError, match="past max_seq"):
        setup.engine.generate(setup.tokens(PROMPT), setup.engine.max_seq)


def test_float32_model_is_refused(cf):
    from clusterfusion.cli import random_model

    model = random_model("pythia-70m").float()
    with pytest.raises(TypeError, match=r"gpt_neox\.embed_in\.weight: expected a float16 CUDA tensor, got "
                                        r"torch\.float32 on cuda"):
        cf.from_transformers(model)


# Small models of each architecture for the loading paths: pythia-70m, and two layers at Llama-3.2-1B's shapes
# (grouped-query attention, llama3 rope, a tied LM head).
SMALL_MODELS = [("pythia-70m", None), ("llama-3.2-1b", 2)]


@pytest.mark.parametrize("name, layers", SMALL_MODELS)
def test_save_pretrained_from_pretrained_generate(cf, tmp_path, name, layers):
    """The real loading path on a checkpoint the test writes: the reloaded model's engine generates exactly what
    the original model's engine does, and its first logits are transformers' within float16 error."""
    from clusterfusion.cli import load_model, random_model

    original = random_model(name, seed=int.from_bytes(os.urandom(4), "little"), layers=layers)
    original.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    reloaded = dict(loaded.named_parameters())
    for name, param in original.named_parameters():
        assert torch.equal(param, reloaded[name]), name

    prompt = torch.randint(0, original.config.vocab_size, (12,)).tolist()
    expected = cf.from_transformers(original, max_seq=64).generate(prompt, 32)
    engine = cf.from_transformers(loaded, max_seq=64)
    assert torch.equal(engine.generate(prompt, 32), expected)

    engine.prefill(prompt)
    engine.context.step(prompt[-1])
    lib = engine.logits().clone()
    with torch.no_grad():
        fp16 = loaded(torch.tensor([prompt], device="cuda")).logits[0, -1].float()
        fp32 = copy.deepcopy(loaded).float()(torch.tensor([prompt], device="cuda")).logits[0, -1]
    assert (lib - fp32).abs().max() <= STEP_FACTOR * (fp16 - fp32).abs().max()


@pytest.mark.parametrize("name, layers", SMALL_MODELS)
def test_cpp_example_generates_what_the_library_does_from_python(cf, tmp_path, name, layers):
    """examples/generate (cf_generate) reads the save_pretrained checkpoint itself (safetensors, config.json) and
    must produce the tokens of the same standalone prefill and greedy steps run through the Python binding: the
    same float16 weights and max_seq give bitwise the same computation."""
    import subprocess
    from pathlib import Path

    from clusterfusion.cli import random_model

    binary = Path(cf._C.__file__).resolve().parents[2] / "cf_generate"
    if not binary.exists():
        pytest.skip(f"{binary} not built (CLUSTERFUSION_BUILD_EXAMPLES=OFF)")
    model = random_model(name, seed=int.from_bytes(os.urandom(4), "little"), layers=layers)
    model.save_pretrained(tmp_path)
    prompt = torch.randint(0, model.config.vocab_size, (9,)).tolist()
    new, max_seq = 24, 64

    context = cf.from_transformers(model, max_seq=max_seq).context
    expected = [context.prefill(prompt)] + [context.step() for _ in range(new - 1)]

    result = subprocess.run([str(binary), str(tmp_path), "--prompt", ",".join(map(str, prompt)), "--new", str(new),
                             "--max-seq", str(max_seq)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("tokens:"))
    assert [int(t) for t in line.split()[1:]] == expected, result.stdout
    assert "TPOT" in result.stdout


@torch.no_grad()
def test_llama_greedy_follows_transformers_float32(cf):
    """A small random Llama (two layers at TinyLlama's shapes): the library's greedy tokens equal transformers
    float32 greedy's until a step where float32's two best tokens are within float16 noise of each other (random
    weights make such near-ties; there either token is right), and that step's token is one of those two."""
    from clusterfusion.cli import random_model

    seed = int.from_bytes(os.urandom(4), "little")
    model = random_model("tinyllama-1.1b", seed=seed, layers=2)
    prompt = torch.randint(0, model.config.vocab_size, (12,), generator=torch.Generator().manual_seed(seed)).tolist()
    steps = 32
    ours = cf.from_transformers(model, max_seq=64).generate(prompt, steps)[0, len(prompt):].tolist()
    fp32 = copy.deepcopy(model).float()
    theirs = transformers_greedy(fp32, prompt, steps)
    divergence = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    print(f"llama greedy vs float32 (seed {seed}): first divergence at step {divergence} of {steps}")
    if divergence is None:
        return
    prefix = torch.tensor([prompt + ours[:divergence]], device="cuda")
    exact = fp32(prefix).logits[0, -1]
    noise = (model(prefix).logits[0, -1].float() - exact).abs().max().item()
    top2 = exact.topk(2)
    gap = (top2.values[0] - top2.values[1]).item()
    detail = f"seed {seed} step {divergence}: ours {ours[divergence]}, float32 top-2 {top2.indices.tolist()} gap {gap:.4g}"
    assert ours[divergence] in top2.indices.tolist(), detail
    assert gap <= 2 * ERROR_FACTOR * noise, f"{detail}, float16 noise {noise:.4g}"
