"""The PyTorch reference (tests/reference/) on the tiny native-format fixture.

Main invariant (v4-model.md §8): in float32 with exact weights and no fake-quant, the cached
routes (token-by-token decode, chunked prefill) give the same logits as the full-sequence
forward. Tolerance: max|Δ| / max|ref| per row ≤ 1e-4. The two routes only differ in float32
summation order, so the expected error is ~1e-6 (measured ≈2e-6 over 300 tokens; float32 vs
float64 of the full forward is also ≈2e-6); 1e-4 leaves room for other BLAS builds while still
catching any semantic slip, which shows up at 1e-2 or more.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dsv4.testing.fixture import make_fixture  # noqa: E402
from tests.reference import ops  # noqa: E402
from tests.reference.config import Config  # noqa: E402
from tests.reference.dspark import DSparkDraft  # noqa: E402
from tests.reference.model import V4Model  # noqa: E402
from tests.reference.weights import dequant_fp4, dequant_fp8_block, read_safetensors, ue8m0_to_float  # noqa: E402

TOL = 1e-4
SEQ = 300          # crosses the window (8), CSA blocks (4), HCA blocks (128, 256)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max over rows of max|Δ| / max|ref|."""
    return float(((x - ref).abs().amax(-1) / ref.abs().amax(-1)).max())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The reference is dominated by tiny ops: one thread is as fast as two on an idle machine and,
    # unlike two, does not slow down ~20x when another process keeps the second core busy.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ckpt0(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("fixture_seed0"), seed=0)


@pytest.fixture(scope="module")
def model0(ckpt0):
    return V4Model.load(ckpt0)


def _tokens(seed: int, n: int = SEQ) -> torch.Tensor:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def full0(model0):
    return model0.forward(_tokens(0))


def _decode(model: V4Model, tokens: torch.Tensor, chunks: list[int]):
    cache = model.new_cache()
    outs, start = [], 0
    for n in chunks:
        outs.append(model.forward_incremental(tokens[start:start + n], cache, start=start))
        start += n
    assert start == len(tokens) == cache.length
    return outs, cache


def _check_routes_agree(model: V4Model, tokens: torch.Tensor, full, chunks: list[int]) -> float:
    outs, _ = _decode(model, tokens, chunks)
    logits = torch.cat([o.logits for o in outs])
    err = rel_err(logits, full.logits)
    assert err <= TOL, f"chunks {chunks[:4]}...: logits differ from the full forward by {err:.2e}"
    feats = torch.cat([o.features for o in outs])
    assert rel_err(feats, full.features) <= TOL
    # Same attended sets, row by row, in every layer (window, HCA entries, indexer top-k).
    for layer in range(model.cfg.n_layers):
        inc_comp = [c for o in outs for c in o.attn[layer].compressed]
        inc_raw = [r for o in outs for r in o.attn[layer].raw]
        for t in range(len(tokens)):
            assert torch.equal(inc_comp[t], full.attn[layer].compressed[t]), (layer, t)
            assert torch.equal(inc_raw[t], full.attn[layer].raw[t]), (layer, t)
    return err


# ---------------------------------------------------------------- weights and primitives

def test_dequant_agrees_with_numpy_codecs_on_fixture_tensors(ckpt0):
    """Our torch decode vs dsv4.quant (an independent numpy implementation) on real fixture
    bytes: FP8 with partial 128-blocks (wq_a is [192, 256]) and packed FP4 experts."""
    from dsv4.quant import decode_fp4_weight, decode_fp8_weight

    raw = {}
    for f in sorted(ckpt0.glob("*.safetensors")):
        raw.update(read_safetensors(f))
    for name in ("layers.0.attn.wq_a", "layers.1.attn.wq_b", "layers.2.attn.wo_a", "mtp.0.main_proj"):
        w, s = raw[f"{name}.weight"], raw[f"{name}.scale"]
        ours = dequant_fp8_block(w.data, s.data, (128, 128))
        theirs = decode_fp8_weight(w.data.numpy(), s.data.numpy())
        assert np.array_equal(ours.numpy(), theirs), name
    for name in ("layers.3.ffn.experts.5.w1", "layers.0.ffn.experts.0.w2"):
        w, s = raw[f"{name}.weight"], raw[f"{name}.scale"]
        ours = dequant_fp4(w.data, s.data)
        theirs = decode_fp4_weight(w.data.numpy(), s.data.numpy())
        assert np.array_equal(ours.numpy(), theirs), name


def test_scalar_decodes_special_values():
    e = torch.tensor([0, 1, 126, 127, 128, 254, 255], dtype=torch.uint8)
    got = ue8m0_to_float(e)
    assert got[:6].tolist() == [2.0 ** -127, 2.0 ** -126, 0.5, 1.0, 2.0, 2.0 ** 127]
    assert math.isnan(got[6])
    # FP4: byte 0x9A = low nibble 0xA (-1.0, element 0), high nibble 0x9 (-0.5, element 1).
    w = torch.tensor([[0x9A] + [0x70] * 15], dtype=torch.uint8).view(torch.int8)
    x = dequant_fp4(w, torch.tensor([[128]], dtype=torch.uint8))
    assert x[0, :4].tolist() == [-2.0, -1.0, 0.0, 12.0]


def test_yarn_ramp_matches_release_values():
    """v4-model.md §4.6: low = 15, high = 25 for the release values; pair 16 keeps 0.90625 θ."""
    cfg = Config.from_dict({**_fixture_config(), "compress_rope_theta": 160000.0})
    base = 160000.0 ** (-2.0 * torch.arange(32, dtype=torch.float64) / 64)
    mult = ops.rope_frequencies(cfg, 4) / base
    assert torch.allclose(mult[:16], torch.ones(16, dtype=torch.float64))
    assert torch.allclose(mult[25:], torch.full((7,), 1 / 16, dtype=torch.float64))
    assert abs(float(mult[16]) - 0.90625) < 1e-12
    assert torch.equal(ops.rope_frequencies(cfg, 0), 10000.0 ** (-2.0 * torch.arange(32, dtype=torch.float64) / 64))


def _fixture_config() -> dict:
    from dsv4.testing.fixture import FIXTURE_CONFIG
    return dict(FIXTURE_CONFIG)


def test_rope_is_interleaved_on_the_last_dims_and_inverts():
    theta = torch.tensor([0.5, 0.25], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, 1.0, 0.0, 0.0, 1.0]])
    y = ops.rope_tail(x, torch.tensor([2]), theta, rope_dim=4)
    assert torch.equal(y[0, :2], x[0, :2])                     # nope dims untouched
    c0, s0 = math.cos(1.0), math.sin(1.0)                      # pair (x[2], x[3]) at angle 2 * 0.5
    assert torch.allclose(y[0, 2:4], torch.tensor([c0, s0]))
    back = ops.rope_tail(y, torch.tensor([2]), theta, rope_dim=4, inverse=True)
    assert torch.allclose(back, x, atol=1e-7)


def test_hadamard_is_orthonormal_sylvester():
    h = ops.hadamard(torch.eye(8, dtype=torch.float64))
    assert torch.allclose(h @ h, torch.eye(8, dtype=torch.float64))
    assert torch.allclose(h[1] * 8 ** 0.5, torch.tensor([1.0, -1, 1, -1, 1, -1, 1, -1], dtype=torch.float64))


def test_topk_orders_by_score_then_index():
    s = torch.tensor([0.0, 3.0, -0.0, 3.0, 0.0, -1.0])
    assert ops.topk_indices(s, 4).tolist() == [1, 3, 0, 2]


def test_fake_quant_values_are_on_their_grids():
    x = torch.randn(3, 192, generator=torch.Generator().manual_seed(0)) * 5
    q8 = ops.fp8_fakequant(x, 64)
    assert torch.equal(ops.fp8_fakequant(q8, 64), q8)          # idempotent: e4m3 * 2^k per block
    q4 = ops.fp4_fakequant(x, 32)
    assert torch.equal(ops.fp4_fakequant(q4, 32), q4)
    # Round-to-nearest-even on the E2M1 grid (scale 1 for a block whose amax is 6).
    v = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] + [0.0] * 24)
    assert ops.fp4_fakequant(v)[:8].tolist() == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def test_sink_attention_matches_the_literal_formula():
    """§4.2: p_i = exp(s_i - M) / (sum_i exp(s_i - M) + exp(sink_h - M)), M = max_i s_i; o = sum p_i kv_i."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 8, generator=g, dtype=torch.float64)
    bank = torch.randn(5, 8, generator=g, dtype=torch.float64)
    sink = torch.tensor([0.3, -2.0], dtype=torch.float64)
    visible = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    got = ops.sink_attention(q, bank, visible, sink, 8 ** -0.5)
    for m in range(3):
        for h in range(2):
            idx = torch.nonzero(visible[m]).flatten()
            s = (bank[idx] @ q[m, h]) * 8 ** -0.5
            M = s.max()
            p = torch.exp(s - M) / (torch.exp(s - M).sum() + torch.exp(sink[h] - M))
            assert torch.allclose(got[m, h], p @ bank[idx])


def test_mhc_comb_rows_are_sources_and_columns_destinations():
    """§3.2-3.3: after Sinkhorn every destination column sums to ~1, and
    h_new[k] = post[k] * x + sum_j C[j][k] * res[j]."""
    from tests.reference.mhc import hc_post, sinkhorn

    g = torch.Generator().manual_seed(0)
    c = sinkhorn(torch.randn(2, 4, 4, generator=g, dtype=torch.float64), 20, 1e-6)
    assert torch.allclose(c.sum(-2), torch.ones(2, 4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(c.sum(-1), torch.ones(2, 4, dtype=torch.float64), atol=1e-3)
    x, res, post = torch.randn(2, 3, generator=g), torch.randn(2, 4, 3, generator=g), torch.rand(2, 4, generator=g)
    comb = torch.rand(2, 4, 4, generator=g)
    got = hc_post(x, res, post, comb)
    for s_ in range(2):
        for k in range(4):
            want = post[s_, k] * x[s_] + sum(comb[s_, j, k] * res[s_, j] for j in range(4))
            assert torch.allclose(got[s_, k], want, atol=1e-6)


def test_overlap_compressor_pools_half_a_of_previous_and_half_b_of_current_block(model0):
    """§4.5 with r = 4: entry j = per-channel softmax over 8 candidates, (a, g) of channel ch
    from the 4 tokens of block j-1 and of channel Dc+ch from the 4 tokens of block j."""
    comp = model0.layers[1].attn.compressor
    assert comp.ratio == 4 and comp.overlap
    x = torch.randn(12, model0.cfg.dim, generator=torch.Generator().manual_seed(0))
    a, g = comp._values_gates(x, torch.arange(12))
    Dc = comp.width
    entries = comp.full(x)
    assert entries.shape == (3, Dc)
    for j in range(3):
        prev = list(range(4 * (j - 1), 4 * j)) if j > 0 else []
        cur = list(range(4 * j, 4 * j + 4))
        vals = torch.stack([a[t, :Dc] for t in prev] + [a[t, Dc:] for t in cur])      # [4 or 8, Dc]
        gates = torch.stack([g[t, :Dc] for t in prev] + [g[t, Dc:] for t in cur])
        pooled = (torch.softmax(gates, dim=0) * vals).sum(0)
        want = comp._finish(pooled[None], torch.tensor([j]))[0]                         # norm + RoPE at 4j
        assert rel_err(entries[j:j + 1], want[None]) <= 1e-6, j


# ---------------------------------------------------------------- target: full vs cached routes

def test_full_forward_prefixes_are_causal(model0, full0):
    toks = _tokens(0)
    for n in (1, 3, 4, 5, 8, 9, 20, 129, 257):
        assert rel_err(model0.forward(toks[:n]).logits, full0.logits[:n]) <= TOL, n


def test_token_by_token_decode_matches_full_forward_across_window_csa_hca(model0, full0):
    _check_routes_agree(model0, _tokens(0), full0, [1] * SEQ)

    cfg = model0.cfg
    csa = [i for i in range(cfg.n_layers) if cfg.compress_ratios[i] == 4]
    hca = [i for i in range(cfg.n_layers) if cfg.compress_ratios[i] == 128]
    assert csa and hca and any(cfg.compress_ratios[i] == 0 for i in range(cfg.n_layers))
    for i in csa:
        info = full0.attn[i]
        pruned = [t for t in range(SEQ) if len(info.compressed[t]) < info.n_visible_compressed[t]]
        assert pruned, "the indexer never dropped a visible compressed entry"
        assert len(info.compressed[SEQ - 1]) == cfg.index_topk
    for i in hca:
        info = full0.attn[i]
        assert info.compressed[254].tolist() == [0]
        assert info.compressed[255].tolist() == [0, 1]            # positions 255.. see 2 entries
        assert info.compressed[SEQ - 1].tolist() == [0, 1]
    for t in (0, 7, 8, 299):
        assert full0.attn[0].raw[t].tolist() == list(range(max(0, t - cfg.window + 1), t + 1))


@pytest.mark.parametrize("chunks", [
    [5] * 60,
    [7] * 42 + [6],
    [3, 17, 9, 100, 1, 170],     # chunks longer than the window and than an HCA block
    [SEQ],
], ids=["chunks5", "chunks7", "irregular", "one_chunk"])
def test_chunked_prefill_matches_full_forward(model0, full0, chunks):
    _check_routes_agree(model0, _tokens(0), full0, chunks)


def test_second_seed_decode_and_chunks_match_full_forward(tmp_path):
    model = V4Model.load(make_fixture(tmp_path / "seed1", seed=1))
    toks = _tokens(1)
    full = model.forward(toks)
    # Single-token steps around the window, the first HCA boundary and the second, chunks between.
    _check_routes_agree(model, toks, full, [1] * 20 + [9] * 11 + [1] * 16 + [13] * 8 + [1] * 20 + [41])
    _check_routes_agree(model, toks, full, [11, 2, 130, 1, 1, 155])


def test_swiglu_clamp_changes_output_and_routes_still_agree(tmp_path):
    """swiglu_limit 2 makes the clamp fire with unit-scale random weights (v4-model.md §11)."""
    loose = V4Model.load(make_fixture(tmp_path / "clamp", seed=2, shards=1, swiglu_limit=2.0))
    strict = V4Model.load(make_fixture(tmp_path / "noclamp", seed=2, shards=1))
    toks = _tokens(2, 40)
    full = loose.forward(toks)
    assert rel_err(strict.forward(toks).logits, full.logits) > 1e-3
    _check_routes_agree(loose, toks, full, [3] * 12 + [4])


def test_cache_snapshot_restores_state_exactly(model0):
    toks = _tokens(0, 140)
    cache = model0.new_cache()
    model0.forward_incremental(toks[:125], cache)
    snap = cache.clone()
    a = model0.forward_incremental(toks[125:135], cache).logits          # crosses an HCA boundary
    model0.forward_incremental(_tokens(9, 10), snap.clone())              # a rejected branch
    b = model0.forward_incremental(toks[125:135], snap).logits
    assert torch.equal(a, b)


def test_fake_quant_mode_runs_and_cached_route_mostly_agrees(ckpt0):
    """Optional official fake-quant (v4-model.md §7.3). Quantisation boundaries amplify the
    1e-6 route difference into occasional flips, so only most rows must agree to 1e-4."""
    model = V4Model.load(ckpt0, fake_quant=True)
    toks = _tokens(0, 64)
    full = model.forward(toks)
    outs, cache = _decode(model, toks, [8] * 8)
    logits = torch.cat([o.logits for o in outs])
    per_row = (logits - full.logits).abs().amax(-1) / full.logits.abs().amax(-1)
    assert torch.isfinite(logits).all()
    assert float(per_row.median()) <= TOL and float((per_row <= TOL).float().mean()) >= 0.9
    nope = model.cfg.nope_dim
    ring = cache.layers[0].ring[:, :nope]
    assert torch.equal(ops.fp8_fakequant(ring, 64), ring)               # KV cache is e4m3 * 2^k per 64


# ---------------------------------------------------------------- DSpark draft

@pytest.fixture(scope="module")
def draft0(model0):
    return DSparkDraft(model0)


def test_features_are_mean_over_hc_copies_after_tapped_layers(model0, full0):
    cfg = model0.cfg
    assert full0.features.shape == (SEQ, len(cfg.dspark_target_layer_ids) * cfg.dim)
    # The last tapped layer here is the last trunk layer: its output is the final residual.
    if cfg.dspark_target_layer_ids[-1] == cfg.n_layers - 1:
        assert torch.equal(full0.features[:, -cfg.dim:], full0.hidden.mean(dim=1))


@pytest.mark.parametrize("p", [0, 3, 7, 8, 20, 299])
def test_draft_block_sees_exactly_window_ring_plus_block(draft0, full0, p):
    ring = draft0.new_ring()
    draft0.inject(ring, full0.features[:p + 1], torch.arange(p + 1))
    blk = draft0.block(ring, anchor=int(full0.logits[p].argmax()), p=p)
    W, g = draft0.cfg.window, draft0.gamma
    assert blk.visible.tolist() == list(range(max(0, p + 1 - W), p + 1 + g))
    assert blk.positions.tolist() == list(range(p + 1, p + 1 + g))
    assert blk.base_logits.shape == (g, draft0.cfg.vocab_size)


def test_ring_holds_exactly_last_window_committed_positions(draft0, full0):
    W = draft0.cfg.window
    one_shot = draft0.new_ring()
    draft0.inject(one_shot, full0.features[:60], torch.arange(60))
    ring, committed = draft0.new_ring(), 0
    for n in [1, 3, 2, 6, 1, 5, 4, 11, 2, 1, 6, 6, 3, 1, 8]:        # accept patterns: anchor + drafts
        draft0.inject(ring, full0.features[committed:committed + n], torch.arange(committed, committed + n))
        committed += n
        assert ring.positions() == list(range(max(0, committed - W), committed))
    assert committed == 60
    assert torch.equal(ring.pos, one_shot.pos)
    assert rel_err(ring.kv.flatten(0, 1), one_shot.kv.flatten(0, 1)) <= 1e-6


def test_block_logits_do_not_depend_on_how_the_ring_was_filled(draft0, full0):
    p, W = 40, draft0.cfg.window
    anchor = int(full0.logits[p].argmax())
    all_at_once, one_by_one, tail_only = draft0.new_ring(), draft0.new_ring(), draft0.new_ring()
    draft0.inject(all_at_once, full0.features[:p + 1], torch.arange(p + 1))
    for t in range(p + 1):
        draft0.inject(one_by_one, full0.features[t:t + 1], [t])
    draft0.inject(tail_only, full0.features[p + 1 - W:p + 1], torch.arange(p + 1 - W, p + 1))   # prefill style
    ref = draft0.block(all_at_once, anchor, p)
    for ring in (one_by_one, tail_only):
        blk = draft0.block(ring, anchor, p)
        assert rel_err(blk.base_logits, ref.base_logits) <= 1e-5
        assert rel_err(blk.x_post, ref.x_post) <= 1e-5


def test_markov_greedy_chain_is_the_argmax_chain(draft0, full0):
    p = 30
    ring = draft0.new_ring()
    draft0.inject(ring, full0.features[:p + 1], torch.arange(p + 1))
    anchor = int(full0.logits[p].argmax())
    blk = draft0.block(ring, anchor, p)
    drafts, ell = draft0.greedy_chain(blk.base_logits, anchor)
    corrected = draft0.markov_logits(blk.base_logits, anchor, drafts)
    assert rel_err(ell, corrected) <= 1e-6          # same sums, batched vs one row at a time
    assert drafts.tolist() == corrected.argmax(-1).tolist()
    # Row k depends on the drafts only through prev_k = x_{k-1} (prev_1 = anchor).
    other = drafts.clone()
    other[1] = (other[1] + 1) % draft0.cfg.vocab_size
    changed = draft0.markov_logits(blk.base_logits, anchor, other)
    assert rel_err(changed[:2], corrected[:2]) <= 1e-6
    assert rel_err(changed[2:3], corrected[2:3]) > 1e-3
    assert rel_err(changed[3:], corrected[3:]) <= 1e-6
    assert rel_err(corrected, blk.base_logits) > 1e-2    # the Markov bias is not negligible


def test_confidence_is_a_raw_logit_on_prenorm_hidden_and_markov_embedding(draft0, full0):
    p = 12
    ring = draft0.new_ring()
    draft0.inject(ring, full0.features[:p + 1], torch.arange(p + 1))
    anchor = int(full0.logits[p].argmax())
    blk = draft0.block(ring, anchor, p)
    drafts, _ = draft0.greedy_chain(blk.base_logits, anchor)
    conf = draft0.confidences(blk.x_post, anchor, drafts)
    assert conf.shape == (draft0.gamma,)
    d = draft0.cfg.dim
    w = draft0.conf_w[0]
    prev = [anchor] + drafts[:-1].tolist()
    for k in range(draft0.gamma):
        expect = w[:d] @ blk.x_post[k] + w[d:] @ draft0.markov_w1[prev[k]]
        assert abs(float(conf[k] - expect)) <= 1e-5 * max(1.0, abs(float(expect)))


def test_draft_from_decode_features_matches_draft_from_full_features(model0, draft0, full0):
    """End to end: prefill by chunks with capture, inject every committed row, draft."""
    toks = _tokens(0, 50)
    outs, _ = _decode(model0, toks, [13, 20, 17])
    feats = torch.cat([o.features for o in outs])
    ring_a, ring_b = draft0.new_ring(), draft0.new_ring()
    draft0.inject(ring_a, feats, torch.arange(50))
    draft0.inject(ring_b, full0.features[:50], torch.arange(50))
    anchor = int(outs[-1].logits[-1].argmax())
    a, b = draft0.block(ring_a, anchor, 49), draft0.block(ring_b, anchor, 49)
    assert rel_err(a.base_logits, b.base_logits) <= TOL
    assert torch.equal(draft0.greedy_chain(a.base_logits, anchor)[0], draft0.greedy_chain(b.base_logits, anchor)[0])
