"""Scalar codecs: E4M3 (fp8 'fn'), UE8M0, E2M1 (fp4) and BF16, all as uint8/uint16 <-> float32.

Decoders build their result from bit fields (no lookup of another library), so they are an
independent check on ml_dtypes and on the native decoders.
"""
from __future__ import annotations

import numpy as np

# E2M1 magnitudes for codes 0..7; bit 3 of a code is the sign.
E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)


def _u8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.int8:
        return a.view(np.uint8)
    if a.dtype != np.uint8:
        raise TypeError(f"expected uint8 or int8 bytes, got {a.dtype}")
    return a


def e4m3_to_f32(b: np.ndarray) -> np.ndarray:
    """Decode float8_e4m3fn bytes: bias 7, subnormals at exponent 0, 0x7F/0xFF are NaN."""
    b = _u8(b).astype(np.uint32)
    sign = np.where(b & 0x80, -1.0, 1.0).astype(np.float32)
    exp = ((b >> 3) & 0xF).astype(np.int32)
    man = (b & 0x7).astype(np.float32)
    normal = (1.0 + man / 8.0) * np.exp2(exp - 7).astype(np.float32)
    subnormal = (man / 8.0) * np.float32(2.0**-6)
    out = sign * np.where(exp == 0, subnormal, normal).astype(np.float32)
    return np.where((b & 0x7F) == 0x7F, np.float32(np.nan), out).astype(np.float32)


def ue8m0_to_f32(b: np.ndarray) -> np.ndarray:
    """Decode float8_e8m0fnu bytes: 2^(e-127); 0xFF is NaN; e=0 is the float32 subnormal 2^-127."""
    e = _u8(b).astype(np.int32)
    out = np.ldexp(np.float32(1.0), np.minimum(e, 254) - 127).astype(np.float32)
    return np.where(e == 0xFF, np.float32(np.nan), out).astype(np.float32)


def e2m1_to_f32(codes: np.ndarray) -> np.ndarray:
    """Decode 4-bit E2M1 codes (values 0..15 in a uint8 array)."""
    c = np.asarray(codes).astype(np.uint8)
    if np.any(c > 15):
        raise ValueError("E2M1 codes must be in 0..15")
    mag = E2M1_VALUES[c & 0x7]
    return np.where(c & 0x8, -mag, mag).astype(np.float32)


def _nearest_even_code(x_abs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the grid value nearest to x_abs, ties to the even index (grid ascending)."""
    hi = np.searchsorted(grid, x_abs, side="left").clip(0, len(grid) - 1)
    lo = (hi - 1).clip(0, len(grid) - 1)
    d_lo = x_abs - grid[lo]
    d_hi = grid[hi] - x_abs
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    return np.where(pick_hi, hi, lo)


# Non-negative finite E4M3 values indexed by their 7-bit code 0x00..0x7E (ascending).
_E4M3_GRID = e4m3_to_f32(np.arange(0x7F, dtype=np.uint8))


def f32_to_e4m3(x: np.ndarray) -> np.ndarray:
    """Encode float32 to E4M3 bytes: round to nearest even, saturate to +-448, NaN -> 0x7F."""
    x = np.asarray(x, dtype=np.float32)
    mag = np.minimum(np.abs(x), np.float32(448.0))
    code = _nearest_even_code(mag, _E4M3_GRID).astype(np.uint8)
    code = np.where(np.signbit(x), code | 0x80, code).astype(np.uint8)
    return np.where(np.isnan(x), np.uint8(0x7F), code).astype(np.uint8)


def f32_to_e2m1(x: np.ndarray) -> np.ndarray:
    """Encode float32 to E2M1 codes (0..15): round to nearest even, saturate to +-6."""
    x = np.asarray(x, dtype=np.float32)
    if np.any(np.isnan(x)):
        raise ValueError("E2M1 has no NaN")
    mag = np.minimum(np.abs(x), np.float32(6.0))
    code = _nearest_even_code(mag, E2M1_VALUES).astype(np.uint8)
    return np.where(np.signbit(x), code | 0x8, code).astype(np.uint8)


def f32_to_ue8m0_ceil(x: np.ndarray) -> np.ndarray:
    """The UE8M0 byte of the smallest power of two >= x (x > 0, finite): a block scale."""
    x = np.asarray(x, dtype=np.float32)
    if np.any(~np.isfinite(x)) or np.any(x <= 0):
        raise ValueError("UE8M0 scales need positive finite inputs")
    mant, exp = np.frexp(x)  # x = mant * 2^exp, mant in [0.5, 1)
    e = np.where(mant == 0.5, exp - 1, exp).astype(np.int32)
    return np.clip(e + 127, 0, 254).astype(np.uint8)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Encode float32 to bf16 bits (uint16), round to nearest even; NaN stays a quiet NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = ((u >> 16) | np.uint32(0x0040)).astype(np.uint16)
    is_nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(is_nan, nan, rounded).astype(np.uint16)


def bf16_to_f32(b: np.ndarray) -> np.ndarray:
    """Decode bf16 bits (uint16, or int16/bytes viewed as such) to float32: exact."""
    b = np.asarray(b)
    if b.dtype != np.uint16:
        b = b.view(np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)
