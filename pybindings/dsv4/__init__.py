"""dsv4: DeepSeek-V4 + DSpark conversion to GGUF and native inference.

Sub-packages: ``dsv4.quant`` (tensor formats in numpy), ``dsv4.convert`` (checkpoint -> GGUF).
``dsv4.Model`` runs a GGUF: logits, generate (token ids, DSpark speculative decoding), and the text
API (tokenize/detokenize, create_completion, create_chat_completion with DeepSeek-V4's chat
encoding from ``dsv4.chat``; see ``dsv4.completion``).
"""
from __future__ import annotations

from dsv4.errors import (
    ContextOverflowError,
    ConversionError,
    Dsv4Error,
    FormatError,
    MissingComponentError,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # Model needs the native module; import it on first use so `import dsv4` stays light.
    if name == "Model":
        from dsv4.model import Model

        return Model
    raise AttributeError(f"module 'dsv4' has no attribute {name!r}")


__all__ = [
    "ContextOverflowError",
    "ConversionError",
    "Dsv4Error",
    "FormatError",
    "MissingComponentError",
    "Model",
    "__version__",
]
