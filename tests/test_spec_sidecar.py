"""The DSpark draft from a llama.cpp `dflash` sidecar (dsv4_model_params.draft_path, dsv4.Model(draft=)).

`dsv4 convert --llama-cpp` writes the deepseek4 target and the mtp-<name> dflash sidecar. With
`--outtype bf16` every draft weight is exact (FP8 -> BF16), so target + sidecar must draft exactly
what our dsv4 file drafts: the same base logits, x_post, Markov logits and confidences bit for bit,
and the same speculative tokens. The default Q8_0 sidecar re-quantizes the draft's dense weights:
measured against the dsv4 draft on the same features, bounded. A file that is not a dflash sidecar,
or one made for another model, is a FormatError naming the problem.
"""
from __future__ import annotations

import numpy as np
import pytest

import dsv4
from dsv4 import _native
from dsv4.convert.arch import sidecar_path
from dsv4.errors import FormatError
from dsv4.testing.fixture import FIXTURE_CONFIG

V = FIXTURE_CONFIG["vocab_size"]


def draft_outputs(model, seed: int):
    """Draft block, Markov logits and confidences at p = 39 after the target ran 40 tokens."""
    c = _native.Context(model, n_ctx=512, n_threads=2, float_activations=True)
    p = np.random.default_rng(seed).integers(2, V, 40).astype(np.int32)
    _, feats = c.decode(p, 0, np.zeros(0, np.int32), True)
    c._draft_inject(feats, 0)
    anchor = int(p[seed % 40])
    base, x_post = c._draft_block(anchor, 39)
    drafts, _ = c._draft_greedy(base, anchor)
    markov, conf = c._draft_heads(base, x_post, anchor, drafts)
    return base, x_post, markov, conf


def spec_tokens(model, prompt_seed: int, **kw):
    c = _native.Context(model, n_ctx=512, n_threads=2, float_activations=True)
    p = np.random.default_rng(prompt_seed).integers(2, V, 60 + prompt_seed).astype(np.int32)
    return c.generate(p, 150, ignore_eos=True, **kw)


def test_bf16_sidecar_drafts_exactly_like_the_dsv4_file(converted):
    ours = _native.Model(str(converted()))
    target = converted(llama_cpp=True, outtype="bf16")
    theirs = _native.Model(str(target), True, str(sidecar_path(target)))
    assert theirs.arch == "deepseek4" and theirs.has_draft and theirs.n_tap == ours.n_tap
    for seed in (1, 2):
        for a, b in zip(draft_outputs(ours, seed), draft_outputs(theirs, seed)):
            np.testing.assert_array_equal(a, b)
    for seed in (0, 3):
        a, sa = spec_tokens(ours, seed)
        b, sb = spec_tokens(theirs, seed)
        np.testing.assert_array_equal(a, b)
        assert sa["drafted"] == sb["drafted"] and sa["accepted_at"] == sb["accepted_at"]
        t1a, _ = spec_tokens(ours, seed, temperature=1.0, seed=seed)
        t1b, _ = spec_tokens(theirs, seed, temperature=1.0, seed=seed)
        np.testing.assert_array_equal(t1a, t1b)
    # a sidecar also replaces the draft inside a dsv4 file
    mixed = _native.Model(str(converted()), True, str(sidecar_path(target)))
    np.testing.assert_array_equal(draft_outputs(mixed, 1)[0], draft_outputs(ours, 1)[0])


def test_q8_0_sidecar_is_within_its_quantization_error(converted):
    """Same features (the dsv4 target), draft from the Q8_0 sidecar vs the dsv4 draft: exact f32
    activations, so the difference is the Q8_0 rounding of the draft's dense weights through its
    stages. Measured on the fixture: max rel error of the base logits 1.0e-2 .. 1.75e-2 over seeds
    0-4; bound 5e-2 (a wrong tensor gives O(1)). Argmax is not compared: with random weights
    the top logits are near-ties that Q8_0 error can swap."""
    ours = _native.Model(str(converted()))
    target = converted(llama_cpp=True)
    mixed = _native.Model(str(converted()), True, str(sidecar_path(target)))
    errs = []
    for seed in range(3):
        a, b = draft_outputs(ours, seed), draft_outputs(mixed, seed)
        errs.append(float(np.abs(a[0] - b[0]).max() / np.abs(a[0]).max()))
    print(f"Q8_0 sidecar vs dsv4 draft, base logits max rel err per seed: {np.round(errs, 4)}")
    assert max(errs) < 5e-2
    # deepseek4 Q8_0 target + its sidecar: speculative decoding stays lossless
    full = _native.Model(str(target), True, str(sidecar_path(target)))
    spec, _ = spec_tokens(full, 1)
    plain, _ = spec_tokens(full, 1, speculative=False)
    np.testing.assert_array_equal(spec, plain)


def test_model_draft_argument(converted):
    target = converted(llama_cpp=True, outtype="bf16")
    with dsv4.Model(target, n_ctx=256, n_threads=2, draft=sidecar_path(target)) as m:
        assert m.has_draft
        toks, stats = m.generate([5, 6, 7, 8], 20, ignore_eos=True)
        assert len(toks) == 20 and stats["drafted"] > 0
    with dsv4.Model(target, n_ctx=256, n_threads=2) as m:  # deepseek4 alone: no draft
        assert not m.has_draft
        with pytest.raises(ValueError, match="draft"):
            m.generate([5, 6, 7], 4, speculative=True)
    with pytest.raises(FileNotFoundError, match="draft"):
        dsv4.Model(target, draft=str(target) + ".missing")


@pytest.fixture(scope="module")
def other_model_sidecars(tmp_path_factory):
    """Sidecars of fixtures with another vocabulary / another width."""
    from dsv4.convert.main import convert
    from dsv4.testing.fixture import make_fixture

    out = {}
    for name, over in (("vocab", dict(vocab_size=384)), ("width", dict(hidden_size=128))):
        d = tmp_path_factory.mktemp(f"other-{name}")
        ckpt = make_fixture(d / "ckpt", seed=1, shards=1, **over)
        convert(ckpt, d / "m.gguf", llama_cpp=True)
        out[name] = sidecar_path(d / "m.gguf")
    return out


def test_wrong_sidecar_is_a_clear_error(converted, other_model_sidecars):
    target = str(converted(llama_cpp=True, outtype="bf16"))
    with pytest.raises(FormatError, match="not a DSpark draft sidecar.*deepseek4"):
        _native.Model(target, True, target)
    with pytest.raises(FormatError, match="not a DSpark draft sidecar.*dsv4"):
        _native.Model(target, True, str(converted()))
    with pytest.raises(FormatError, match="vocabulary has 384 tokens but the target model has 512"):
        _native.Model(target, True, str(other_model_sidecars["vocab"]))
    with pytest.raises(FormatError, match="embedding_length = 128 but the target model has 256"):
        _native.Model(target, True, str(other_model_sidecars["width"]))
    with pytest.raises(FormatError, match="dflash sidecar|architecture dflash"):
        _native.Model(str(other_model_sidecars["vocab"]))  # a sidecar is not a model by itself
