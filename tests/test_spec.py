"""The speculative loop (dsv4-spec.cpp) on the fixture: greedy speculative == greedy plain (fixed and
adaptive draft length), seeded
T > 0 runs reproduce, statistics are consistent, and the T = 1 sampler matches softmax of the target
logits (chi-square).

Fixture checkpoint -> `dsv4 convert` -> `_native.Context(float_activations=True)`. The fixture's
compressed layers use ratios 4 and 128 and the sliding window is 8, so prompts of lengths around
multiples of 4 put compression boundaries inside every verification block of a few hundred tokens.
"""
from __future__ import annotations


import numpy as np
import pytest

from dsv4 import _native
from dsv4.testing.fixture import FIXTURE_CONFIG

V = FIXTURE_CONFIG["vocab_size"]
N_GEN = 300
N_CTX = 512


@pytest.fixture(scope="module")
def model(converted):
    gguf = converted()  # the shared seed-0 fixture, converted once per session (conftest.py)
    m = _native.Model(str(gguf))
    assert m.has_draft
    return m, str(gguf)


@pytest.fixture(scope="module")
def ctx(model):
    return _native.Context(model[0], n_ctx=N_CTX, n_threads=2, n_batch=64, float_activations=True)


def prompt(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, V, n).astype(np.int32)


def check_stats(stats, n_tok, speculative):
    assert stats["n_generated"] == n_tok
    assert 0 <= stats["accepted"] <= stats["drafted"]
    assert stats["tau"] >= 1.0
    assert sum(stats["accepted_at"]) == stats["accepted"]
    assert sum(stats["verified_at"]) == stats["drafted"]
    assert all(v >= a for v, a in zip(stats["verified_at"], stats["accepted_at"]))
    at = stats["accepted_at"]
    assert all(at[k] >= at[k + 1] for k in range(len(at) - 1))  # a prefix is accepted
    # every round emits accepted + 1 tokens; the prefill emits the first (the last round may be cut)
    assert stats["rounds"] + stats["accepted"] + 1 >= n_tok
    if not speculative:
        assert stats["drafted"] == 0 and stats["tau"] == 1.0


@pytest.mark.parametrize("n_prompt,seed", [(1, 1), (7, 2), (13, 3), (30, 4), (61, 5)])
def test_greedy_speculative_equals_plain(ctx, n_prompt, seed):
    p = prompt(n_prompt, seed)
    plain, ps = ctx.generate(p, N_GEN, speculative=False, ignore_eos=True)
    check_stats(ps, N_GEN, False)
    assert len(plain) == N_GEN
    taus, drafted = [], {}
    # fixed gamma (trained 5, explicit 5, lowered to 2), then adaptive length at two thresholds
    for draft_max, thr in ((0, 0.0), (5, 0.0), (2, 0.0), (0, 0.3), (0, 0.7)):
        spec, ss = ctx.generate(p, N_GEN, speculative=True, draft_max=draft_max, confidence_threshold=thr,
                                ignore_eos=True)
        check_stats(ss, N_GEN, True)
        taus.append(ss["tau"])
        drafted[draft_max, thr] = ss["drafted"]
        mism = np.flatnonzero(np.asarray(spec) != np.asarray(plain))
        assert mism.size == 0, f"draft_max {draft_max}, threshold {thr}: first mismatch at {mism[:1]} of {N_GEN}"
        if draft_max == 2:
            assert max(k for k, a in enumerate(ss["verified_at"]) if a > 0 or k == 0) <= 1
    # the thresholds cut blocks (random weights: low confidences), the higher one more
    assert drafted[0, 0.7] < drafted[0, 0.3] < drafted[0, 0.0]
    print(f"prompt {n_prompt}: {N_GEN} tokens equal; tau (gamma 5, 5, 2, thr .3, .7) = {taus}, drafted {drafted}")


def test_eos_stops(ctx):
    p = prompt(9, 11)
    full, _ = ctx.generate(p, N_GEN, speculative=False, ignore_eos=True)
    toks, stats = ctx.generate(p, N_GEN, speculative=True)
    eos_id = 1  # the fixture's EOS
    if eos_id in list(full):
        k = list(full).index(eos_id)
        assert list(toks) == list(full[:k + 1]) and stats["stop_reason"] == "eos"
    else:
        assert list(toks) == list(full) and stats["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("speculative", [False, True])
def test_sampled_runs_reproduce(ctx, speculative):
    p = prompt(11, 6)
    a, sa = ctx.generate(p, 120, temperature=1.0, seed=1234, speculative=speculative, ignore_eos=True)
    b, _ = ctx.generate(p, 120, temperature=1.0, seed=1234, speculative=speculative, ignore_eos=True)
    c, _ = ctx.generate(p, 120, temperature=1.0, seed=99, speculative=speculative, ignore_eos=True)
    np.testing.assert_array_equal(a, b)
    assert list(a) != list(c)
    check_stats(sa, 120, speculative)
    k, _ = ctx.generate(p, 60, temperature=0.8, top_k=20, top_p=0.9, seed=5, speculative=speculative, ignore_eos=True)
    k2, _ = ctx.generate(p, 60, temperature=0.8, top_k=20, top_p=0.9, seed=5, speculative=speculative, ignore_eos=True)
    np.testing.assert_array_equal(k, k2)


def test_no_draft_speculative_is_an_error(model):
    bare = _native.Model(model[1], False)
    assert not bare.has_draft
    ctx = _native.Context(bare, n_ctx=64, n_threads=2, float_activations=True)
    with pytest.raises(Exception, match="draft"):
        ctx.generate(prompt(5, 1), 4)
    toks, stats = ctx.generate(prompt(5, 1), 4, speculative=False, ignore_eos=True)
    assert len(toks) == 4 and stats["rounds"] == 3
    with pytest.raises(Exception):
        ctx.generate(np.zeros(0, np.int32), 4, speculative=False)


def test_context_full_stops(model):
    small = _native.Context(model[0], n_ctx=40, n_threads=2, float_activations=True)
    p = prompt(30, 8)
    toks, stats = small.generate(p, 100, speculative=True, ignore_eos=True)
    plain, _ = small.generate(p, 100, speculative=False, ignore_eos=True)
    assert stats["stop_reason"] == "context_full"
    np.testing.assert_array_equal(toks, plain)
    assert len(toks) == 40 - 30 + 1


def softmax(x, t=1.0):
    z = np.asarray(x, np.float64) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def chi2_pvalue(counts, probs):
    from scipy.stats import chi2

    n = counts.sum()
    exp = probs * n
    big = exp >= 5
    obs_b, exp_b = list(counts[big]), list(exp[big])
    obs_b.append(counts[~big].sum())
    exp_b.append(exp[~big].sum())
    obs_b, exp_b = np.array(obs_b, np.float64), np.array(exp_b, np.float64)
    keep = exp_b > 0
    stat = float((((obs_b - exp_b) ** 2)[keep] / exp_b[keep]).sum())
    return float(chi2.sf(stat, keep.sum() - 1))


def test_speculative_t1_marginal_matches_target(model):
    """Token 2 at T = 1 goes through the draft + rejection sampling (one draft, then residual or
    accepted draft); over many seeds its distribution must be the target's marginal
    sum_t1 p(t1) p(. | t1) (chi-square), and a biased expectation (T = 0.5) must be rejected."""
    pytest.importorskip("scipy")
    m = model[0]
    p = prompt(6, 21)
    n = len(p)
    c = _native.Context(m, n_ctx=64, n_threads=2, float_activations=True)
    l1, _ = c.decode(p, 0, np.array([n - 1], np.int32))
    p1, p1b = softmax(l1[0]), softmax(l1[0], 0.5)
    marg, margb = np.zeros(V), np.zeros(V)
    for t1 in range(V):
        if p1[t1] < 1e-9:
            continue
        l2, _ = c.decode(np.array([t1], np.int32), n, np.array([0], np.int32))
        c.truncate(n)
        marg += p1[t1] * softmax(l2[0])
        margb += p1b[t1] * softmax(l2[0], 0.5)
    n_seed = 3000
    c1, c2 = np.zeros(V, np.int64), np.zeros(V, np.int64)
    acc = 0
    for seed in range(n_seed):
        toks, st = c.generate(p, 3, temperature=1.0, seed=seed, speculative=True, ignore_eos=True)
        c1[toks[0]] += 1
        c2[toks[1]] += 1
        acc += st["accepted_at"][0]
    pv1, pv2, pvb = chi2_pvalue(c1, p1), chi2_pvalue(c2, marg), chi2_pvalue(c2, margb)
    print(f"{n_seed} seeds, draft accepted in {acc}: p-values first {pv1:.3g}, second {pv2:.3g}, biased {pvb:.3g}")
    assert acc > 0  # the accept path ran
    assert pv1 > 1e-3 and pv2 > 1e-3
    assert pvb < 1e-6


def test_adaptive_length_cuts_by_confidence(model, ctx):
    """The confidence threshold cuts each block before the first draft whose sigmoid(c_k) is below it,
    and c_k depends only on the drafts before x_k: recompute the first round's cut from the draft
    hooks, for thresholds just below and above each confidence of that round (so every cut point
    0..gamma that the confidences allow is exercised), and compare it with the round's verified count."""
    cuts = set()
    for seed in (12, 18):  # prompts whose first-round confidences allow cuts 0, 5 (12) and 0, 1, 4, 5 (18)
        p = prompt(17, seed)
        anchor = int(ctx.generate(p, 1, speculative=False)[0][0])
        # round 1: anchor at position len(p); the rings hold the prompt's features (the last W stay)
        c = _native.Context(model[0], n_ctx=64, n_threads=2, float_activations=True)
        _, feats = c.decode(p, 0, np.zeros(0, np.int32), True)
        c._draft_inject(feats, 0)
        base, x_post = c._draft_block(anchor, len(p) - 1)
        drafts, _ = c._draft_greedy(base, anchor)
        _, conf = c._draft_heads(base, x_post, anchor, drafts)
        sig = 1.0 / (1.0 + np.exp(-conf.astype(np.float64)))
        for thr in sorted({float(np.clip(v + e, 1e-4, 0.9999)) for v in sig for e in (-1e-4, 1e-4)}):
            below = sig < thr
            expect = int(np.argmax(below)) if below.any() else len(sig)
            # stop at the first token of round 1, so the stats hold that round alone
            toks, st = ctx.generate(p, 50, speculative=True, confidence_threshold=thr, ignore_eos=True,
                                    on_token=lambda t, seen=[]: seen.append(t) or len(seen) < 2)
            assert toks[0] == anchor and st["rounds"] == 1
            assert st["drafted"] == expect, f"threshold {thr}: sigmoid(c) {sig}"
            cuts.add(expect)
        print(f"prompt seed {seed}: sigmoid(c) of round 1 {np.round(sig, 3)}")
    print(f"cuts exercised {sorted(cuts)}")
    assert {0, len(sig)} < cuts  # no draft, the whole block, and at least one cut inside it
    with pytest.raises(ValueError, match="confidence_threshold"):
        ctx.generate(p, 4, speculative=True, confidence_threshold=1.0)
    with pytest.raises(ValueError, match="confidence_threshold"):
        ctx.generate(p, 4, speculative=True, confidence_threshold=float("nan"))
