"""Exception classes raised by dsv4. Messages name the culprit (file, tensor, key) and what to do."""
from __future__ import annotations


class Dsv4Error(Exception):
    """Base class of every error dsv4 raises on purpose."""


class FormatError(Dsv4Error):
    """A file (GGUF, safetensors, config) is malformed, truncated or inconsistent."""


class ConversionError(Dsv4Error):
    """A checkpoint cannot be converted: missing or unexpected tensors, bad dtypes or shapes."""


class ContextOverflowError(Dsv4Error, ValueError):
    """The prompt (plus requested tokens) does not fit in the context window."""


class MissingComponentError(Dsv4Error, ValueError):
    """The model file lacks what a call needs (its tokenizer, the DSpark draft for speculative decoding)."""
