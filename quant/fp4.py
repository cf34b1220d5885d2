"""FP4 E2M1 routed-expert weights (DeepSeek order) and their lossless repack to ggml MXFP4.

Checkpoint layout: bytes [out, in/2], element 2t in the low nibble of byte t and 2t+1 in the high
nibble, plus UE8M0 scales [out, in/32]. MXFP4 (ggml type 39): per 32 elements, 17 bytes: the E8M0
byte, then qs[16] with element j in the low nibble of qs[j] and element j+16 in the high nibble.
"""
from __future__ import annotations

import numpy as np

from .scalars import _u8, e2m1_to_f32, f32_to_e2m1, f32_to_ue8m0_ceil, ue8m0_to_f32

FP4_BLOCK = 32
MXFP4_BLOCK_BYTES = 17
E2M1_MAX = 6.0
# ggml's kvalues_mxfp4: twice the E2M1 value of each code (so scales are 2^(e-128)).
_MXFP4_KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


def _check_fp4_shapes(packed: np.ndarray, scale: np.ndarray) -> tuple[int, int]:
    if packed.ndim != 2 or scale.ndim != 2:
        raise ValueError(f"FP4 weight and scale must be 2-D, got {packed.shape} and {scale.shape}")
    rows, half = packed.shape
    cols = half * 2
    if cols % FP4_BLOCK:
        raise ValueError(f"FP4 weight inner size {cols} is not a multiple of {FP4_BLOCK}")
    if scale.shape != (rows, cols // FP4_BLOCK):
        raise ValueError(f"FP4 scale shape {scale.shape} does not match weight [{rows}, {cols}]")
    return rows, cols


def unpack_fp4_codes(packed: np.ndarray) -> np.ndarray:
    """[out, in/2] bytes -> [out, in] codes, low nibble = even element."""
    p = _u8(packed)
    codes = np.empty((p.shape[0], p.shape[1] * 2), dtype=np.uint8)
    codes[:, 0::2] = p & 0x0F
    codes[:, 1::2] = p >> 4
    return codes


def decode_fp4_weight(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """W[i, j] = e2m1(code[i, j]) * ue8m0(scale[i, j // 32])."""
    packed, scale = _u8(packed), _u8(scale)
    _check_fp4_shapes(packed, scale)
    s = np.repeat(ue8m0_to_f32(scale), FP4_BLOCK, axis=1)
    return (e2m1_to_f32(unpack_fp4_codes(packed)) * s).astype(np.float32)


def encode_fp4_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize float32 [out, in] to (packed bytes [out, in/2], UE8M0 scales [out, in/32]).

    Scale per 32 inputs: the smallest power of two with amax / scale <= 6 (amax floored at
    6 * 2^-126, as DeepSeek's fp4 quantizer); elements rounded to nearest even on the E2M1 grid.
    """
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    if cols % FP4_BLOCK:
        raise ValueError(f"FP4 needs the inner size to be a multiple of {FP4_BLOCK}, got {cols}")
    blocks = w.reshape(rows, cols // FP4_BLOCK, FP4_BLOCK)
    amax = np.maximum(np.abs(blocks).max(axis=2), np.float32(E2M1_MAX * 2.0**-126))
    scale = f32_to_ue8m0_ceil(amax / np.float32(E2M1_MAX))
    codes = f32_to_e2m1(blocks / ue8m0_to_f32(scale)[:, :, None]).reshape(rows, cols)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed, scale


def fp4_to_mxfp4(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Repack DeepSeek FP4 to MXFP4 blocks: uint8 [out, in/32 * 17]. Only nibble order changes."""
    packed, scale = _u8(packed), _u8(scale)
    rows, cols = _check_fp4_shapes(packed, scale)
    nb = cols // FP4_BLOCK
    codes = unpack_fp4_codes(packed).reshape(rows, nb, FP4_BLOCK)
    out = np.empty((rows, nb, MXFP4_BLOCK_BYTES), dtype=np.uint8)
    out[:, :, 0] = scale
    out[:, :, 1:] = codes[:, :, :16] | (codes[:, :, 16:] << 4)
    return out.reshape(rows, nb * MXFP4_BLOCK_BYTES)


def _e8m0_to_f32_half(e: np.ndarray) -> np.ndarray:
    """2^(e-128) exactly as ggml computes it (e=0 and e=1 are float32 subnormals; no NaN)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def decode_mxfp4(blocks: np.ndarray, n_elements_per_row: int | None = None) -> np.ndarray:
    """Decode MXFP4 bytes [..., n_blocks * 17] to float32 [..., n_blocks * 32], as ggml does."""
    b = _u8(blocks)
    if b.shape[-1] % MXFP4_BLOCK_BYTES:
        raise ValueError(f"MXFP4 row of {b.shape[-1]} bytes is not a whole number of 17-byte blocks")
    nb = b.shape[-1] // MXFP4_BLOCK_BYTES
    blk = b.reshape(*b.shape[:-1], nb, MXFP4_BLOCK_BYTES)
    d = _e8m0_to_f32_half(blk[..., 0])[..., None]
    qs = blk[..., 1:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    vals = _MXFP4_KVALUES[codes] * d
    out = vals.reshape(*b.shape[:-1], nb * FP4_BLOCK).astype(np.float32)
    if n_elements_per_row is not None and out.shape[-1] != n_elements_per_row:
        raise ValueError(f"MXFP4 row decodes to {out.shape[-1]} values, expected {n_elements_per_row}")
    return out
