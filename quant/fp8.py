"""FP8 E4M3 linear weights with UE8M0 scales per 128x128 block (DeepSeek-V4's dense format)."""
from __future__ import annotations

import numpy as np

from .scalars import e4m3_to_f32, f32_to_e4m3, f32_to_ue8m0_ceil, ue8m0_to_f32

FP8_BLOCK = 128
E4M3_MAX = 448.0


def fp8_scale_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """Shape of the block-scale grid: one scale per 128x128 tile, partial edge tiles included."""
    return (-(-out_features // FP8_BLOCK), -(-in_features // FP8_BLOCK))


def _expand_blocks(scale: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    s = np.repeat(np.repeat(scale, FP8_BLOCK, axis=0), FP8_BLOCK, axis=1)
    return s[:rows, :cols]


def decode_fp8_weight(weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """W[i, j] = e4m3(weight[i, j]) * scale[i // 128, j // 128].

    `weight` holds raw e4m3 bytes [out, in] (uint8/int8). `scale` is either UE8M0 bytes (uint8,
    as in the checkpoint) or already-decoded float32 scales (as stored in a dsv4 GGUF).
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"FP8 weight must be 2-D, got shape {weight.shape}")
    want = fp8_scale_shape(*weight.shape)
    scale = np.asarray(scale)
    if scale.shape != want:
        raise ValueError(f"FP8 scale shape {scale.shape} does not match weight {weight.shape} (want {want})")
    s = ue8m0_to_f32(scale) if scale.dtype in (np.uint8, np.int8) else scale.astype(np.float32)
    return (e4m3_to_f32(weight) * _expand_blocks(s, weight.shape)).astype(np.float32)


def encode_fp8_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize float32 [out, in] to (e4m3 bytes [out, in], UE8M0 scale bytes [grid]).

    Each tile's scale is the smallest power of two with amax / scale <= 448, as DeepSeek's
    act_quant/weight quantizer does (amax floored at 1e-4).
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"FP8 weight must be 2-D, got shape {w.shape}")
    rows, cols = w.shape
    gr, gc = fp8_scale_shape(rows, cols)
    padded = np.zeros((gr * FP8_BLOCK, gc * FP8_BLOCK), dtype=np.float32)
    padded[:rows, :cols] = w
    tiles = padded.reshape(gr, FP8_BLOCK, gc, FP8_BLOCK)
    amax = np.maximum(np.abs(tiles).max(axis=(1, 3)), np.float32(1e-4))
    scale_bytes = f32_to_ue8m0_ceil(amax / np.float32(E4M3_MAX))
    s = _expand_blocks(ue8m0_to_f32(scale_bytes), (rows, cols))
    q = f32_to_e4m3(np.clip(w / s, -E4M3_MAX, E4M3_MAX))
    return q, scale_bytes
