"""The native DSpark draft forward pass (dsv4-dspark.cpp) against tests/reference/dspark.py.

Fixture checkpoint -> `dsv4 convert` -> `_native.Context(float_activations=True)`. The target
features come from the engine's own decode (features=True); the last <= W committed rows are
injected into both the engine's rings and the reference ring, then the block pass runs at several
p (crossing the ring wrap, W = 8 on the fixture). Compared: base logits U, x_post (pre-norm),
Markov-corrected logits and raw confidences, at max|d|/max|ref| <= 1e-3; the greedy chain at T = 0
must equal the reference's.
"""
from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from dsv4 import _native  # noqa: E402
from dsv4.testing.fixture import FIXTURE_CONFIG  # noqa: E402
from tests.reference import V4Model  # noqa: E402
from tests.reference.dspark import DSparkDraft  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-3
N_TOK = 300
P_LIST = (0, 3, 7, 8, 20, 299)


def rel_err(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def setup(convert_checkpoint, converted):
    ckpt, gguf = convert_checkpoint, converted()  # the shared seed-0 fixture and its dsv4 conversion
    tokens = np.random.default_rng(7).integers(0, FIXTURE_CONFIG["vocab_size"], N_TOK).astype(np.int32)
    model = _native.Model(str(gguf))
    assert model.has_draft
    ctx = _native.Context(model, n_ctx=N_TOK + 16, n_threads=2, n_batch=64, float_activations=True)
    _, feats = ctx.decode(tokens, 0, np.zeros(0, np.int32), True)
    ref = DSparkDraft(V4Model.load(ckpt))
    return model, feats, tokens, ref


@pytest.mark.parametrize("p", P_LIST)
def test_draft_block_matches_reference(setup, p):
    model, feats, tokens, ref = setup
    W = ref.cfg.window
    ctx = _native.Context(model, n_ctx=N_TOK + 16, n_threads=2, n_batch=64, float_activations=True)
    lo = max(0, p + 1 - W)
    ctx._draft_inject(feats[lo:p + 1], lo)
    ring = ref.new_ring()
    with torch.no_grad():
        ref.inject(ring, torch.as_tensor(feats[lo:p + 1]), list(range(lo, p + 1)))
    anchor = int(tokens[(p + 1) % N_TOK])
    gamma = ref.gamma
    base, x_post = ctx._draft_block(anchor, p, gamma)
    with torch.no_grad():
        blk = ref.block(ring, anchor, p, gamma)
        r_drafts, r_ell = ref.greedy_chain(blk.base_logits, anchor)
        r_markov = ref.markov_logits(blk.base_logits, anchor, r_drafts)
        r_conf = ref.confidences(blk.x_post, anchor, r_drafts)
    e_base = rel_err(base, blk.base_logits.numpy())
    e_x = rel_err(x_post, blk.x_post.numpy())
    drafts, ell = ctx._draft_greedy(base, anchor)
    markov, conf = ctx._draft_heads(base, x_post, anchor, r_drafts.numpy())
    e_markov = rel_err(markov, r_markov.numpy())
    e_ell = rel_err(ell, r_ell.numpy())
    e_conf = rel_err(conf, r_conf.numpy())
    print(f"p {p:3d}: base {e_base:.2e}  x_post {e_x:.2e}  markov {e_markov:.2e}  greedy-ell {e_ell:.2e}  conf {e_conf:.2e}")
    assert e_base <= TOL and e_x <= TOL and e_markov <= TOL and e_ell <= TOL and e_conf <= TOL
    np.testing.assert_array_equal(drafts, r_drafts.numpy())


def test_inject_in_pieces_and_wrap_equal_one_inject(setup):
    """Injecting every committed row in pieces (back-fill across many ring wraps) gives the same
    block as injecting only the last W rows at once, bit for bit."""
    model, feats, tokens, ref = setup
    W, p = ref.cfg.window, 150
    a = _native.Context(model, n_ctx=N_TOK + 16, n_threads=2, n_batch=64, float_activations=True)
    b = _native.Context(model, n_ctx=N_TOK + 16, n_threads=2, n_batch=64, float_activations=True)
    for s in range(0, p + 1, 37):
        a._draft_inject(feats[s:min(p + 1, s + 37)], s)
    b._draft_inject(feats[p + 1 - W:p + 1], p + 1 - W)
    ra, rb = a._draft_block(int(tokens[3]), p), b._draft_block(int(tokens[3]), p)
    np.testing.assert_array_equal(ra[0], rb[0])
    np.testing.assert_array_equal(ra[1], rb[1])
    with pytest.raises(Exception):
        a._draft_inject(feats[p:p + 1], p)  # not after the positions held
