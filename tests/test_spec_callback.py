"""Model.generate's on_token callback (dsv4_generate's token callback through pybindings/bind_model.cpp).

Each token reaches the callback in order as it is decided; a falsy return stops with stop_reason
"interrupted"; an exception raised in the callback (KeyboardInterrupt included) and a real SIGINT
during the native compute stop the generation and are re-raised in Python, after which the model
gives exactly the tokens of an untouched one.
"""
from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import dsv4
from dsv4.testing.fixture import FIXTURE_CONFIG

V = FIXTURE_CONFIG["vocab_size"]
PROMPT = [int(t) for t in np.random.default_rng(3).integers(2, V, 13)]


@pytest.fixture(scope="module")
def model(converted):
    with dsv4.Model(converted(), n_ctx=4096, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def reference(model):
    """What an untouched model generates: plain and speculative, 80 tokens."""
    return {spec: model.generate(PROMPT, 80, speculative=spec, ignore_eos=True)[0] for spec in (False, True)}


@pytest.mark.parametrize("speculative", [False, True])
def test_callback_sees_every_token_in_order(model, reference, speculative):
    seen: list[int] = []
    toks, stats = model.generate(PROMPT, 80, speculative=speculative, ignore_eos=True, on_token=seen.append)
    assert seen == toks == reference[speculative]
    assert stats["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("speculative", [False, True])
@pytest.mark.parametrize("stop_after", [1, 2, 7])
def test_false_stops_and_model_stays_usable(model, reference, speculative, stop_after):
    seen: list[int] = []

    def cb(tok: int) -> bool:
        seen.append(tok)
        return len(seen) < stop_after

    toks, stats = model.generate(PROMPT, 80, speculative=speculative, ignore_eos=True, on_token=cb)
    assert stats["stop_reason"] == "interrupted"
    assert toks == seen == reference[speculative][:stop_after]
    assert stats["n_generated"] == stop_after
    # None and truthy returns continue.
    assert model.generate(PROMPT, 80, speculative=speculative, ignore_eos=True, on_token=lambda t: None)[0] == \
        reference[speculative]
    assert model.generate(PROMPT, 80, speculative=speculative, ignore_eos=True, on_token=lambda t: 1)[0] == \
        reference[speculative]


class Boom(Exception):
    pass


@pytest.mark.parametrize("speculative", [False, True])
@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_exception_in_callback_is_reraised(model, reference, speculative, exc):
    seen: list[int] = []

    def cb(tok: int) -> None:
        seen.append(tok)
        if len(seen) == 5:
            raise exc("from the callback")

    with pytest.raises(exc, match="from the callback"):
        model.generate(PROMPT, 80, speculative=speculative, ignore_eos=True, on_token=cb)
    assert seen == reference[speculative][:5]  # stopped at once
    for spec in (False, True):
        assert model.generate(PROMPT, 80, speculative=spec, ignore_eos=True)[0] == reference[spec]


def test_bad_callback_is_a_type_error(model):
    with pytest.raises(TypeError, match="on_token"):
        model.generate(PROMPT, 4, on_token=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # wrong arity: the TypeError of the call itself comes back
        model.generate(PROMPT, 4, on_token=lambda: None)  # type: ignore[arg-type, misc]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_sigint_during_native_compute_interrupts(model, reference):
    """A SIGINT sent while generate runs (GIL released) raises KeyboardInterrupt at the next token,
    long before the 4,000 tokens asked for, and the model is still usable."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is handled by someone else here")
    seen: list[int] = []
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.generate(PROMPT, 4000, speculative=True, ignore_eos=True, on_token=seen.append)
    finally:
        timer.cancel()
    assert 0 < len(seen) < 4000
    assert seen == model.generate(PROMPT, len(seen), speculative=False, ignore_eos=True)[0]
    for spec in (False, True):
        assert model.generate(PROMPT, 80, speculative=spec, ignore_eos=True)[0] == reference[spec]
