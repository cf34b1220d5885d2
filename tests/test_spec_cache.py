"""Exact rollback after verification (dsv4_context_state_digest, bound as _native.Context._state_digest).

A speculative round verifies [anchor, x_1..x_l] in one target pass and keeps [anchor, x_1..x_n]. When
the dropped rows finished a compressed entry (CSA ratio 4: a position = 3 mod 4; HCA ratio 128: a
position = 127 mod 128), every cache byte a continuation can read (window rings, compressed entries,
indexer keys, compressor inputs, DSpark rings; native/src/dsv4-kv-cache.h lists exactly which) must
equal that of a context that only ever ran the committed rows. Both contexts then continue with the
same tokens and digests.
"""
from __future__ import annotations

import numpy as np
import pytest

from dsv4 import _native
from dsv4.testing.fixture import FIXTURE_CONFIG

V = FIXTURE_CONFIG["vocab_size"]
RATIOS = [r for r in FIXTURE_CONFIG["compress_ratios"] if r > 0]
N_CTX = 320


@pytest.fixture(scope="module")
def model(converted):
    return _native.Model(str(converted()))


def new_ctx(model):
    return _native.Context(model, n_ctx=N_CTX, n_threads=2, float_activations=True)


def replay(model, seq: np.ndarray):
    """A context that ran only seq (in one prefill, with features into the DSpark rings)."""
    b = new_ctx(model)
    _, feats = b.decode(seq, 0, np.zeros(0, np.int32), True)
    b._draft_inject(feats, 0)
    return b


def boundaries_in(lo: int, hi: int) -> list[int]:
    """Ratios with a compressed entry finished by a position in [lo, hi]."""
    return sorted({r for r in RATIOS for t in range(lo, hi + 1) if t % r == r - 1})


@pytest.mark.parametrize("n_prompt,temperature", [(30, 0.0), (124, 0.0), (251, 0.0), (123, 1.0)])
def test_partly_rejected_round_leaves_the_bytes_of_a_clean_run(model, n_prompt, temperature):
    p = np.random.default_rng(n_prompt).integers(2, V, n_prompt).astype(np.int32)
    a = new_ctx(model)
    seq = list(p)
    anchor = a.spec_begin(p, temperature=temperature, seed=3)
    crossed: set[int] = set()
    checked = 0
    for _ in range(40):
        start = a.n_past
        out, info = a.spec_step(anchor, temperature=temperature)
        n_acc, ell = len(out) - 1, info["n_drafted"]
        seq += [anchor] + [int(t) for t in out[:-1]]  # the committed rows: anchor + accepted drafts
        anchor = int(out[-1])
        assert a.n_past == len(seq) == start + n_acc + 1
        dropped = boundaries_in(start + n_acc + 1, start + ell)
        if not dropped:
            continue
        # this round rolled back rows that finished compressed entries: compare every readable byte
        b = replay(model, np.array(seq, np.int32))
        da, db = a._state_digest(), b._state_digest()
        bad = [i for i, (x, y) in enumerate(zip(da, db)) if x != y]
        assert not bad, f"round at {start}: kept {n_acc} of {ell}, digests differ in {bad} (last = DSpark rings)"
        # and the same continuation from both
        oa, _ = a.spec_step(anchor, temperature=0.0)
        ob, _ = b.spec_step(anchor, temperature=0.0)
        np.testing.assert_array_equal(oa, ob)
        assert a._state_digest() == b._state_digest()
        crossed.update(dropped)
        checked += 1
        break
    assert checked, "no round dropped rows that finished a compressed entry"
    print(f"prompt {n_prompt}, T {temperature}: rolled back across ratio(s) {sorted(crossed)}; digests equal")
    if n_prompt in (124, 251):
        assert 128 in crossed  # an HCA entry was finished by a dropped row and undone


def test_digest_sees_a_changed_row(model):
    """Not a constant: one different committed row changes the digests of every layer and the rings."""
    seq = np.random.default_rng(5).integers(2, V, 131).astype(np.int32)
    other = seq.copy()
    other[-1] = (other[-1] + 1) % V
    da, db = replay(model, seq)._state_digest(), replay(model, other)._state_digest()
    assert all(x != y for x, y in zip(da, db))
    assert replay(model, seq)._state_digest() == da
