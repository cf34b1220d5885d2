"""ggml Q8_0: blocks of 32 values as an F16 scale d = amax/127 followed by 32 int8 (34 bytes).

Bit-exact with ggml's reference quantizer (quantize_row_q8_0_ref): d and 1/d in float32, round
half away from zero, d stored as float16.
"""
from __future__ import annotations

import numpy as np

Q8_0_BLOCK = 32
Q8_0_BLOCK_BYTES = 34


def _round_half_away(x: np.ndarray) -> np.ndarray:
    # roundf. Not floor(|x| + 0.5): for |x| = 0.49999997 that sum rounds up to 1.0 in float32.
    # |x| - floor(|x|) is exact, so comparing it with 0.5 is too.
    a = np.abs(x)
    f = np.floor(a)
    return np.sign(x) * (f + (a - f >= np.float32(0.5)))


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """float32 [..., n] (n % 32 == 0) -> uint8 [..., n/32 * 34]."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[-1]
    if n % Q8_0_BLOCK:
        raise ValueError(f"Q8_0 needs rows that are a multiple of {Q8_0_BLOCK}, got {n}")
    blocks = x.reshape(-1, Q8_0_BLOCK)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = _round_half_away(blocks * inv).astype(np.int8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(*x.shape[:-1], (n // Q8_0_BLOCK) * Q8_0_BLOCK_BYTES)


def dequantize_q8_0(b: np.ndarray) -> np.ndarray:
    """uint8 [..., nb * 34] -> float32 [..., nb * 32]."""
    b = np.asarray(b)
    if b.dtype != np.uint8:
        b = b.view(np.uint8)
    if b.shape[-1] % Q8_0_BLOCK_BYTES:
        raise ValueError(f"Q8_0 row of {b.shape[-1]} bytes is not a whole number of 34-byte blocks")
    nb = b.shape[-1] // Q8_0_BLOCK_BYTES
    blk = b.reshape(-1, Q8_0_BLOCK_BYTES)
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(np.float32)
    q = np.ascontiguousarray(blk[:, 2:]).view(np.int8).astype(np.float32)
    return (q * d).reshape(*b.shape[:-1], nb * Q8_0_BLOCK)
