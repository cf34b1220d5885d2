"""dsv4.Model, the Python surface of the engine: logits for a fresh sequence, metadata, errors."""
from __future__ import annotations

import numpy as np
import pytest

import dsv4
from dsv4.errors import ContextOverflowError, FormatError

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")
from tests.reference import V4Model  # noqa: E402


def test_logits_match_reference_and_each_call_is_a_fresh_sequence(converted, convert_checkpoint) -> None:
    tokens = np.random.default_rng(3).integers(0, 512, 40)
    with torch.no_grad():
        ref = V4Model.load(convert_checkpoint).forward(torch.as_tensor(tokens)).logits.numpy()
    with dsv4.Model(converted(), n_ctx=64, exact=True) as model:
        assert (model.n_vocab, model.n_ctx_train, model.has_draft) == (512, 4096, True)
        assert model.metadata["general.architecture"] == "dsv4"
        assert model.metadata["dsv4.dspark.block_size"] == 5
        first = model.logits(tokens)
        assert first.shape == (40, 512) and first.dtype == np.float32
        assert np.abs(first - ref).max() / np.abs(ref).max() <= 1e-3
        assert np.array_equal(model.logits(tokens), first)          # not a continuation
        assert np.array_equal(model.logits(tokens[:7]), first[:7])  # prefixes agree
        mem = model.memory()
        assert mem["weight_bytes"] > 0 and mem["cache_bytes_per_token"] > 0


def test_errors(converted, tmp_path) -> None:
    with dsv4.Model(converted(), n_ctx=16) as model:
        with pytest.raises(ContextOverflowError, match="17 tokens"):
            model.logits(list(range(17)))
        with pytest.raises(ValueError, match="invalid token ids.*512, -1"):
            model.logits([1, 512, -1])
        assert model.logits([]).shape == (0, 512)
        model.logits([1, 2, 3])  # still usable after the errors
    with pytest.raises(FileNotFoundError):
        dsv4.Model(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(FormatError):
        dsv4.Model(bad)


def test_close_frees_and_later_use_raises(converted) -> None:
    model = dsv4.Model(converted(), n_ctx=16)
    model.close()
    with pytest.raises(ValueError, match="closed"):
        model.logits([1, 2])


def test_generate_speculative_equals_plain_at_temperature_zero(converted) -> None:
    prompt = [0, 5, 9, 33, 70, 101, 250]
    with dsv4.Model(converted(), n_ctx=256, exact=True) as model:
        plain, plain_stats = model.generate(prompt, max_tokens=120, speculative=False, ignore_eos=True)
        spec, stats = model.generate(prompt, max_tokens=120, speculative=True, ignore_eos=True)
        assert spec == plain and len(spec) == 120
        assert stats["rounds"] > 0 and stats["accepted"] <= stats["drafted"] and stats["tau"] >= 1.0
    with dsv4.Model(converted(), n_ctx=64, load_draft=False) as model:
        with pytest.raises(ValueError, match="draft"):
            model.generate(prompt, max_tokens=4, speculative=True)
        with pytest.raises(ContextOverflowError):
            model.generate(list(range(65)), max_tokens=4)
