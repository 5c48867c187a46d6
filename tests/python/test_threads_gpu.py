"""DecodeContext from several Python threads (marker `gpu`). Its step methods release the GIL; the calls are
serialised inside the context, each running whole, so steps and sampling changes made concurrently give exactly the
tokens of the same calls made one after another."""

import os
import random
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.gpu

STEPPERS = 2
STEPS = 40


@pytest.fixture(scope="module")
def engines():
    from clusterfusion import from_transformers
    from clusterfusion.cli import random_model

    model = random_model("pythia-70m", seed=int.from_bytes(os.urandom(4), "little"), layers=2)
    return from_transformers(model, max_seq=128), from_transformers(model, max_seq=128)


def run_threads(*targets):
    """Runs each target on its own thread, all at once; re-raises the first exception any of them raised."""
    errors = []

    def guarded(target):
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - reported on the main thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_concurrent_steps_and_set_sampling_equal_a_serial_replay(engines):
    engine, control = engines
    ctx, serial = engine.context, control.context
    # Sampling: a step on a stale graph or at a wrong position would draw another token (the Philox counter of a
    # draw is its position).
    params = dict(temperature=0.9, top_k=0, top_p=0.95, seed=random.getrandbits(64))
    prompt = torch.randint(0, engine.config.vocab, (4,)).tolist()
    ctx.reset()
    ctx.set_sampling(**params)
    ctx.prefill(prompt)

    returned = [[] for _ in range(STEPPERS)]
    finished = []  # one entry per stepper done (list.append is atomic)
    positions = []

    def stepper(i):
        def run():
            try:
                for _ in range(STEPS):
                    returned[i].append(ctx.step())
            finally:
                finished.append(i)
        return run

    def sampler():
        # The same parameters each time: every call drops the captured graph, so the steppers recapture as they
        # go, and the tokens must not change.
        while len(finished) < STEPPERS:
            ctx.set_sampling(**params)
            time.sleep(0.0005)  # a lock need not be fair: leave the steppers their turns

    def reader():
        while len(finished) < STEPPERS:
            positions.append(ctx.position)
            assert ctx.sampling.seed == params["seed"]
            time.sleep(0.0005)

    run_threads(*(stepper(i) for i in range(STEPPERS)), sampler, reader)

    end = len(prompt) + STEPPERS * STEPS
    assert ctx.position == end
    assert positions == sorted(positions) and all(len(prompt) <= p <= end for p in positions)
    serial.reset()
    serial.set_sampling(**params)
    expected = [serial.prefill(prompt)] + [serial.step() for _ in range(STEPPERS * STEPS)]
    assert ctx.tokens(0, end + 1) == serial.tokens(0, end + 1)
    # Each step() returned the token of its own step.
    assert sorted(sum(returned, [])) == sorted(expected[1:])


def test_resets_from_another_thread_never_tear_a_step(engines):
    engine, control = engines
    ctx = engine.context
    token = random.randrange(engine.config.vocab)
    control.context.reset()
    control.context.set_sampling()
    first = control.context.step(token)  # from a reset, step(token) depends on nothing else
    ctx.reset()
    ctx.set_sampling()
    stop = threading.Event()
    seen = []

    def resetter():
        try:
            for _ in range(60):
                ctx.reset()
                seen.append(ctx.step(token))
        finally:
            stop.set()

    def stepper():
        while not stop.is_set():
            try:
                ctx.step()
            except (RuntimeError, IndexError):  # no device token right after a reset, or the cache is full
                pass
            time.sleep(0.0002)

    run_threads(resetter, stepper, stepper)
    assert seen == [first] * 60
