"""The step-wise C API (dsv4_spec_begin / dsv4_spec_step, bound as _native.Context.spec_begin /
spec_step): begin + steps give exactly what dsv4_generate gives (it is built on them), greedy and
seeded at T = 1; max_out and draft_max bound a round; misuse is a clear ValueError.
"""
from __future__ import annotations

import numpy as np
import pytest

from dsv4 import _native
from dsv4.testing.fixture import FIXTURE_CONFIG

V = FIXTURE_CONFIG["vocab_size"]
BLOCK = FIXTURE_CONFIG["dspark_block_size"]


@pytest.fixture(scope="module")
def model(converted):
    return _native.Model(str(converted()))


@pytest.fixture(scope="module")
def ctx(model):
    return _native.Context(model, n_ctx=256, n_threads=2, float_activations=True)


def prompt(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, V, n).astype(np.int32)


def run_steps(ctx, p, n_tok, **kw):
    """begin + steps until n_tok tokens; returns (tokens, per-round (n_drafted, n_tokens))."""
    begin_kw = {k: v for k, v in kw.items() if k in ("temperature", "top_k", "top_p", "seed", "speculative")}
    step_kw = {k: v for k, v in kw.items() if k != "seed"}
    toks = [ctx.spec_begin(p, **begin_kw)]
    rounds = []
    while len(toks) < n_tok:
        n_before = ctx.n_past
        out, info = ctx.spec_step(toks[-1], max_out=n_tok - len(toks), **step_kw)
        assert 1 <= len(out) <= info["n_drafted"] + 1 and info["draft_s"] >= 0 and info["verify_s"] > 0
        assert ctx.n_past == n_before + len(out)  # anchor + accepted drafts committed, the new anchor not run
        rounds.append((info["n_drafted"], len(out)))
        toks.extend(int(t) for t in out)
    return toks, rounds


@pytest.mark.parametrize("kw", [
    dict(speculative=True),
    dict(speculative=False),
    dict(speculative=True, draft_max=3, confidence_threshold=0.3),
    dict(speculative=True, temperature=1.0, seed=77),
    dict(speculative=True, temperature=0.8, top_k=40, top_p=0.9, seed=5),
])
def test_steps_equal_generate(ctx, kw):
    p = prompt(21, 4)
    ref, stats = ctx.generate(p, 90, ignore_eos=True, **kw)
    toks, rounds = run_steps(ctx, p, 90, **kw)
    assert toks == [int(t) for t in ref]
    assert len(rounds) == stats["rounds"] and sum(d for d, _ in rounds) == stats["drafted"]
    cap = kw.get("draft_max", BLOCK) if kw["speculative"] else 0
    assert max(d for d, _ in rounds) <= cap


def test_max_out_bounds_the_round(ctx):
    p = prompt(9, 2)
    anchor = ctx.spec_begin(p)
    for max_out in (1, 2, 4):
        n_past = ctx.n_past
        out, info = ctx.spec_step(anchor, max_out=max_out)
        assert info["n_drafted"] <= max_out - 1 and len(out) <= max_out
        assert ctx.n_past == n_past + len(out)
        anchor = int(out[-1])


def test_misuse_is_a_value_error(converted, ctx):
    p = prompt(9, 3)
    anchor = ctx.spec_begin(p)
    with pytest.raises(ValueError, match="not a token id"):
        ctx.spec_step(V)
    with pytest.raises(ValueError, match="max_out"):
        ctx.spec_step(anchor, max_out=0)
    # a plain decode does not feed the draft rings: a speculative step after it is refused ...
    ctx.decode(np.array([anchor], np.int32), ctx.n_past, np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="draft rings"):
        ctx.spec_step(anchor)
    # ... a plain step is fine
    out, info = ctx.spec_step(anchor, speculative=False)
    assert len(out) == 1 and info["n_drafted"] == 0
    ctx.truncate(0)
    with pytest.raises(ValueError, match="draft rings"):
        ctx.spec_step(anchor)
    bare = _native.Context(_native.Model(str(converted()), False), n_ctx=64, n_threads=2)
    with pytest.raises(ValueError, match="draft"):
        bare.spec_begin(p)
    with pytest.raises(ValueError, match="empty prompt"):
        ctx.spec_begin(np.zeros(0, np.int32))
