"""dsv4: DeepSeek-V4 + DSpark conversion to GGUF and native inference.

Sub-packages: ``dsv4.quant`` (tensor formats in numpy), ``dsv4.convert`` (checkpoint -> GGUF).
"""
from __future__ import annotations

from dsv4.errors import (
    ContextOverflowError,
    ConversionError,
    Dsv4Error,
    FormatError,
)

__version__ = "0.1.0"

__all__ = [
    "ContextOverflowError",
    "ConversionError",
    "Dsv4Error",
    "FormatError",
    "__version__",
]
