"""Text <-> token ids for a dsv4 GGUF, rebuilt with the `tokenizers` library from the file itself.

Two sources, in order of preference (gguf-layout.md §3):
  * `tokenizer.huggingface.json` (dsv4 layout): the original tokenizer.json, loaded as is;
  * the `tokenizer.ggml.*` arrays (both layouts; the only source in llama.cpp `deepseek4` files):
    tokens, token types, merges and special ids, with the pre-tokenizer named by
    `tokenizer.ggml.pre` (the split regexes llama.cpp uses for that name).

V4's vocabulary is byte-level BPE: every normal token stands for a fixed byte string. Decoding
joins those bytes and turns them into text once, so a multi-byte character split across tokens
decodes correctly; `IncrementalDecoder` does the same token by token and holds back an incomplete
UTF-8 sequence until the token that completes it arrives, so streamed text never shows a broken
character and the pieces join to exactly `decode(ids)`.
"""
from __future__ import annotations

import codecs
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from dsv4.errors import FormatError, MissingComponentError

# llama.cpp token types (gguf-py TokenType), as convert/vocab.py writes them.
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED, _TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer split regexes by `tokenizer.ggml.pre` name (the same expressions llama.cpp applies
# for these names; each is split "isolated", then bytes are mapped without a further regex).
_PRE_SPLITS: dict[str, list[str]] = {
    # DeepSeek-V3 (and V4): digits in groups of up to three, CJK runs, then words/punctuation/space.
    "deepseek-v3": [
        r"\p{N}{1,3}",
        r"[一-龥぀-ゟ゠-ヿ]+",
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
        r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ],
}
_GPT2_PRE = ("gpt2", "default", "")  # the ByteLevel pre-tokenizer's own GPT-2 regex


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class Tokenizer:
    """A byte-level BPE tokenizer with V4's special tokens (BOS, EOS, chat markers).

    `encode(text, special=False)` treats special-token text in `text` as ordinary characters (safe for
    user input); `special=True` turns it into the special tokens (for rendered chat prompts).
    `decode(ids, special=False)` leaves special tokens out; `special=True` writes their text.
    """

    def __init__(self, hf_tokenizer: Any, *, bos_id: int | None, eos_id: int | None, source: str,
                 n_vocab: int = 0) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.source = source
        self.bos_id = bos_id
        self.eos_id = eos_id
        self._special_tok = hf_tokenizer
        # A second instance that splits special-token text like any other text (tokenizers keeps
        # this as a per-instance flag, so one instance per mode keeps encode thread-safe).
        self._plain_tok = HFTokenizer.from_str(hf_tokenizer.to_str())
        self._plain_tok.encode_special_tokens = True
        # The model's vocabulary may have more rows than tokenizer.json names (ids without text).
        self.n_vocab = max(int(hf_tokenizer.get_vocab_size(with_added_tokens=True)), n_vocab)
        self._token_bytes, self._special_ids = self._byte_table(hf_tokenizer)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, source_name: str = "the GGUF") -> "Tokenizer":
        """Rebuild the tokenizer stored in a GGUF's metadata (a FormatError names what is missing)."""
        n_vocab = len(metadata.get("tokenizer.ggml.tokens") or [])
        bos = _opt_id(metadata, "tokenizer.ggml.bos_token_id")
        eos = _opt_id(metadata, "tokenizer.ggml.eos_token_id")
        hf_json = metadata.get("tokenizer.huggingface.json")
        if isinstance(hf_json, str) and hf_json:
            from tokenizers import Tokenizer as HFTokenizer

            try:
                tok = HFTokenizer.from_str(hf_json)
            except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
                raise FormatError(f"{source_name}: tokenizer.huggingface.json cannot be loaded: {exc}") from exc
            return cls(tok, bos_id=bos, eos_id=eos, source="tokenizer.huggingface.json", n_vocab=n_vocab)
        return cls(_from_ggml_arrays(metadata, source_name), bos_id=bos, eos_id=eos, source="tokenizer.ggml",
                   n_vocab=n_vocab)

    def _byte_table(self, tok: Any) -> tuple[list[bytes], frozenset[int]]:
        """Each id's bytes (special/added tokens: their UTF-8 text) and the set of special ids."""
        byte_of = _byte_decoder()
        added = tok.get_added_tokens_decoder()
        table: list[bytes] = [b""] * self.n_vocab
        special: set[int] = set()
        for i in range(self.n_vocab):
            if i in added:
                table[i] = added[i].content.encode("utf-8")
                if added[i].special:
                    special.add(i)
                continue
            piece = tok.id_to_token(i)
            if piece is None:
                continue
            try:
                table[i] = bytes(byte_of[c] for c in piece)
            except KeyError:
                # Not a byte-level piece (e.g. a `[PAD123]` hole of a llama.cpp vocabulary): no text.
                table[i] = b""
        return table, frozenset(special)

    # -- text -> ids -----------------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        tok = self._special_tok if special else self._plain_tok
        ids = tok.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise MissingComponentError("add_bos=True but the model's tokenizer has no BOS token "
                                            "(tokenizer.ggml.bos_token_id)")
            ids = [self.bos_id, *ids]
        return ids

    # -- ids -> text -----------------------------------------------------------------------------
    def token_bytes(self, token_id: int, *, special: bool = False) -> bytes:
        """The bytes token_id stands for (b"" for a special token unless special=True)."""
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"invalid token id {token_id} (vocabulary has {self.n_vocab})")
        if token_id in self._special_ids and not special:
            return b""
        return self._token_bytes[token_id]

    def decode(self, ids: Iterable[int], *, special: bool = False) -> str:
        ids = [int(t) for t in ids]
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"invalid token ids (vocabulary has {self.n_vocab}): "
                             + ", ".join(str(t) for t in bad[:8]))
        return b"".join(self.token_bytes(t, special=special) for t in ids).decode("utf-8", errors="replace")

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def token_id(self, text: str) -> int | None:
        """The id of a token given its exact text (special tokens included), or None."""
        return self._special_tok.token_to_id(text)

    def incremental_decoder(self, *, special: bool = False) -> "IncrementalDecoder":
        return IncrementalDecoder(self, special=special)


class IncrementalDecoder:
    """Token ids in, text out as soon as it is complete UTF-8; the pieces join to decode(ids)."""

    def __init__(self, tokenizer: Tokenizer, *, special: bool = False) -> None:
        self._tok = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Text completed by this token ("" while a multi-byte character is still incomplete)."""
        return self._utf8.decode(self._tok.token_bytes(int(token_id), special=self._special))

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete sequence becomes U+FFFD, as decode() does)."""
        return self._utf8.decode(b"", final=True)


def _opt_id(metadata: Mapping[str, Any], key: str) -> int | None:
    value = metadata.get(key)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _from_ggml_arrays(metadata: Mapping[str, Any], source_name: str) -> Any:
    """A `tokenizers` BPE from llama.cpp's `tokenizer.ggml.*` arrays (model gpt2 = byte-level BPE)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        missing = [k for k, v in (("tokenizer.ggml.model", model), ("tokenizer.ggml.tokens", tokens)) if v is None]
        raise MissingComponentError(f"{source_name} has no tokenizer: neither tokenizer.huggingface.json nor "
                          f"{', '.join(missing)}; text needs a tokenizer (token ids still work)")
    if model != "gpt2":
        raise FormatError(f"{source_name}: tokenizer.ggml.model {model!r} is not supported (only 'gpt2', byte-level BPE)")
    types: Sequence[int] = metadata.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise FormatError(f"{source_name}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    merges_raw: Sequence[str] = metadata.get("tokenizer.ggml.merges") or []
    merges: list[tuple[str, str]] = []
    for i, m in enumerate(merges_raw):
        parts = m.split(" ")
        if len(parts) != 2:
            raise FormatError(f"{source_name}: tokenizer.ggml.merges[{i}] = {m!r} is not two space-separated pieces")
        merges.append((parts[0], parts[1]))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise FormatError(f"{source_name}: tokenizer.ggml.tokens has duplicate entries")
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = str(metadata.get("tokenizer.ggml.pre") or "")
    if pre in _PRE_SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in _PRE_SPLITS[pre]]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre in _GPT2_PRE:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise FormatError(f"{source_name}: tokenizer.ggml.pre {pre!r} is not supported "
                          f"(known: {', '.join(sorted([*_PRE_SPLITS, 'gpt2']))})")
    tok.decoder = decoders.ByteLevel()
    # Control and user-defined tokens are matched whole in the text, as llama.cpp does.
    added = [AddedToken(tokens[i], special=types[i] == _TOKEN_CONTROL, normalized=False)
             for i in range(len(tokens)) if types[i] in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)]
    tok.add_tokens(added)
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise FormatError(f"{source_name}: the tokenizer rebuilt from tokenizer.ggml.* has "
                          f"{tok.get_vocab_size(with_added_tokens=True)} tokens, expected {len(tokens)}")
    return tok


__all__ = ["IncrementalDecoder", "Tokenizer"]
