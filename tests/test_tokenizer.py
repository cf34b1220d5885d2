"""dsv4.tokenizer: the tokenizer rebuilt from a GGUF (dsv4: tokenizer.huggingface.json; llama.cpp
layout: tokenizer.ggml.*), special tokens, and the streaming decoder that never breaks UTF-8."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dsv4 import _native
from dsv4.errors import FormatError, MissingComponentError
from dsv4.tokenizer import Tokenizer

TEXTS = [
    "def class return self: value index",
    "Beautiful is better than ugly.\n    import this\n\n\ttabs  and   spaces ",
    "héllo wörld 😀 日本語 – ünïcödé",
    "numbers 12345 and it's 3.14159",
    "<｜User｜>hi<｜Assistant｜><think>x</think>y<｜end▁of▁sentence｜>",
    "",
]


@pytest.fixture(scope="module")
def metadata(converted) -> dict:
    return dict(_native.gguf_read(str(converted()))["metadata"])


@pytest.fixture(scope="module")
def toks(converted, metadata) -> tuple[Tokenizer, Tokenizer]:
    lcpp = dict(_native.gguf_read(str(converted(llama_cpp=True)))["metadata"])
    assert "tokenizer.huggingface.json" not in lcpp
    return Tokenizer.from_metadata(metadata), Tokenizer.from_metadata(lcpp)


def test_both_sources_agree_and_round_trip(toks) -> None:
    hf, ggml = toks
    assert (hf.source, ggml.source) == ("tokenizer.huggingface.json", "tokenizer.ggml")
    assert hf.n_vocab == ggml.n_vocab == 512 and (hf.bos_id, hf.eos_id) == (ggml.bos_id, ggml.eos_id) == (0, 1)
    for text in TEXTS:
        for special in (False, True):
            ids = hf.encode(text, special=special)
            assert ggml.encode(text, special=special) == ids, (text, special)
            assert hf.decode(ids, special=True) == text
            assert ggml.decode(ids, special=True) == text


def test_encode_matches_the_original_tokenizer_json(toks, metadata) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    ref = HFTokenizer.from_str(metadata["tokenizer.huggingface.json"])
    hf, _ = toks
    for text in TEXTS:
        assert hf.encode(text, special=True) == ref.encode(text, add_special_tokens=False).ids


def test_special_tokens(toks) -> None:
    hf, _ = toks
    text = "<｜User｜>hi"
    parsed = hf.encode(text, special=True)
    assert parsed[0] == hf.token_id("<｜User｜>") == 3 and hf.is_special(3)
    plain = hf.encode(text, special=False)        # user text: the marker is just characters
    assert 3 not in plain and len(plain) > len(parsed) and hf.decode(plain) == text
    assert hf.decode(parsed) == "hi"               # special tokens are left out by default
    assert hf.decode(parsed, special=True) == text
    assert hf.encode("hi", add_bos=True) == [0, *hf.encode("hi")]


def test_incremental_decoding_never_breaks_utf8(toks) -> None:
    hf, _ = toks
    text = "héllo wörld 😀 日本語"
    ids = hf.encode(text)
    dec = hf.incremental_decoder()
    pieces = [dec.feed(t) for t in ids] + [dec.flush()]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    # The tiny vocabulary splits multi-byte characters across tokens: some tokens give no text yet.
    assert any(p == "" and hf.token_bytes(t) for p, t in zip(pieces, ids))
    # Arbitrary id sequences (invalid UTF-8 included): the pieces always join to decode(ids).
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq = [int(t) for t in rng.integers(0, hf.n_vocab, int(rng.integers(1, 24)))]
        for special in (False, True):
            dec = hf.incremental_decoder(special=special)
            assert "".join(dec.feed(t) for t in seq) + dec.flush() == hf.decode(seq, special=special)


def test_decode_matches_the_tokenizers_library(toks, metadata) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    ref = HFTokenizer.from_str(metadata["tokenizer.huggingface.json"])
    hf, _ = toks
    rng = np.random.default_rng(1)
    for _ in range(200):
        seq = [int(t) for t in rng.integers(8, hf.n_vocab, int(rng.integers(1, 24)))]  # no special ids
        assert hf.decode(seq) == ref.decode(seq, skip_special_tokens=False)


def test_model_rows_beyond_tokenizer_json_decode_to_nothing(metadata) -> None:
    tokens = list(metadata["tokenizer.ggml.tokens"]) + [f"[PAD{i}]" for i in range(512, 600)]
    tok = Tokenizer.from_metadata({**metadata, "tokenizer.ggml.tokens": tokens})
    assert tok.source == "tokenizer.huggingface.json" and tok.n_vocab == 600
    assert tok.decode([436, 590, 599]) == tok.decode([436])
    with pytest.raises(ValueError, match="600"):
        tok.decode([600])


def test_errors(toks, metadata) -> None:
    hf, _ = toks
    with pytest.raises(ValueError, match="invalid token ids.*512, -3"):
        hf.decode([5, 512, -3])
    with pytest.raises(TypeError):
        hf.encode(b"bytes")  # type: ignore[arg-type]
    no_tok = {k: v for k, v in metadata.items() if not k.startswith("tokenizer.")}
    with pytest.raises(MissingComponentError, match="has no tokenizer"):
        Tokenizer.from_metadata(no_tok, source_name="x.gguf")
    ggml_only = {k: v for k, v in metadata.items() if k != "tokenizer.huggingface.json"}
    with pytest.raises(FormatError, match="tokenizer.ggml.pre 'mystery'"):
        Tokenizer.from_metadata({**ggml_only, "tokenizer.ggml.pre": "mystery"})
    with pytest.raises(FormatError, match="tokenizer.ggml.model 'llama'"):
        Tokenizer.from_metadata({**ggml_only, "tokenizer.ggml.model": "llama"})
    with pytest.raises(FormatError, match="merges\\[0\\]"):
        Tokenizer.from_metadata({**ggml_only, "tokenizer.ggml.merges": ["abc"]})
    with pytest.raises(FormatError, match="cannot be loaded"):
        Tokenizer.from_metadata({**metadata, "tokenizer.huggingface.json": json.dumps({"model": 3})})
