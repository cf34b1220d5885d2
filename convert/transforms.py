"""The byte transforms of the converter, written for throughput, each bit-exact with `dsv4.quant`.

* FP4 -> MXFP4 repack: the hot loop (routed experts are ~87% of a V4 checkpoint). Done in
  cache-sized pieces with a handful of 64-bit numpy operations instead of per-nibble indexing;
  tests check it against `quant.fp4_to_mxfp4` on every byte value.
* FP8 dequantization in 128-row bands (one scale row at a time), for --outtype q8_0/bf16.
* I64 -> I32 expert tables with a range check.
"""
from __future__ import annotations

import numpy as np

from dsv4.quant import e4m3_to_f32, f32_to_bf16, quantize_q8_0, ue8m0_to_f32

try:  # the native module is optional at convert time; its Q8_0 encoder is faster and bit-exact
    from dsv4 import _native as _nat  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _nat = None

MXFP4_BLOCK_BYTES = 17
FP4_BLOCK_BYTES = 16  # one 32-element FP4 block in the checkpoint: 16 packed bytes
_LO = np.uint64(0x0F0F0F0F0F0F0F0F)
_HI = np.uint64(0xF0F0F0F0F0F0F0F0)
_FOUR, _EIGHT = np.uint64(4), np.uint16(8)


class Fp4Repacker:
    """Repack DeepSeek FP4 blocks to ggml MXFP4 blocks, `piece` blocks at a time.

    A checkpoint block is 16 bytes, a = bytes 0..7 and b = bytes 8..15, byte t holding codes 2t
    (low nibble) and 2t+1 (high). MXFP4 byte j holds codes j (low) and j+16 (high). So MXFP4 byte
    2u is lo(a[u]) | lo(b[u]) << 4 and byte 2u+1 is hi(a[u]) | hi(b[u]) << 4: two nibble merges on
    whole 64-bit words, then an interleave of their bytes, which widening uint8 -> uint16 does.
    Scratch arrays are reused so the working set stays in cache.
    """

    def __init__(self, piece: int = 16384):
        self.piece = piece
        self._lo = np.empty(piece, np.uint64)
        self._hi = np.empty(piece, np.uint64)
        self._tmp = np.empty(piece, np.uint64)
        self._w = np.empty(piece * 8, np.uint16)
        self._h = np.empty(piece * 8, np.uint16)

    def _piece(self, src: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
        n = src.shape[0]
        v = src.view(np.uint64)  # (n, 2): a, b
        a, b = v[:, 0], v[:, 1]
        lo, hi, t = self._lo[:n], self._hi[:n], self._tmp[:n]
        np.bitwise_and(a, _LO, out=lo)
        np.bitwise_and(b, _LO, out=t)
        t <<= _FOUR
        lo |= t                              # bytes 2u of the block
        np.right_shift(a, _FOUR, out=hi)
        hi &= _LO
        np.bitwise_and(b, _HI, out=t)
        hi |= t                              # bytes 2u+1
        w, h = self._w[: n * 8], self._h[: n * 8]
        w[...] = lo.view(np.uint8)
        h[...] = hi.view(np.uint8)
        h <<= _EIGHT
        w |= h
        out[:, 0] = scale
        qs = np.ndarray((n,), dtype="V16", buffer=out, offset=1, strides=(MXFP4_BLOCK_BYTES,))
        qs[...] = w.view("V16")

    def repack(self, src: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
        """src: uint8 [n, 16] checkpoint blocks; scale: uint8 [n]; out: uint8 [n, 17] (written)."""
        n = src.shape[0]
        if src.shape != (n, FP4_BLOCK_BYTES) or scale.shape != (n,) or out.shape != (n, MXFP4_BLOCK_BYTES):
            raise ValueError(f"FP4 repack: shapes {src.shape}, {scale.shape}, {out.shape} do not match")
        if not src.flags.c_contiguous:
            src = np.ascontiguousarray(src)
        for i in range(0, n, self.piece):
            j = min(n, i + self.piece)
            self._piece(src[i:j], scale[i:j], out[i:j])

    def __call__(self, packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Whole-tensor form, as quant.fp4_to_mxfp4: [out, in/2], [out, in/32] -> [out, in/32*17]."""
        rows = packed.shape[0]
        nb = scale.shape[1]
        out = np.empty((rows * nb, MXFP4_BLOCK_BYTES), np.uint8)
        self.repack(np.ascontiguousarray(packed).view(np.uint8).reshape(rows * nb, FP4_BLOCK_BYTES),
                    np.ascontiguousarray(scale).view(np.uint8).reshape(rows * nb), out)
        return out.reshape(rows, nb * MXFP4_BLOCK_BYTES)


# e4m3 byte -> float32, from quant's bit-field decoder: a lookup is exact and ~10x faster.
_E4M3_LUT = e4m3_to_f32(np.arange(256, dtype=np.uint8))
FP8_BLOCK = 128


def decode_ue8m0(scale: np.ndarray) -> np.ndarray:
    return ue8m0_to_f32(np.asarray(scale).view(np.uint8))


def dequant_fp8_band(weight_rows: np.ndarray, scale_row: np.ndarray) -> np.ndarray:
    """Rows [r, r+128) of an FP8 weight (e4m3 bytes) times their decoded block scales -> float32.

    The last block on either axis may be partial; the scale row is cut to the columns.
    """
    cols = weight_rows.shape[1]
    vals = _E4M3_LUT[weight_rows.view(np.uint8)]
    vals *= np.repeat(scale_row.astype(np.float32), FP8_BLOCK)[:cols]
    return vals


def encode_q8_0(x: np.ndarray) -> np.ndarray:
    """float32 [rows, n] -> Q8_0 bytes; ggml's reference rounding (native when built, else numpy)."""
    if _nat is not None and hasattr(_nat, "quantize_q8_0"):
        return np.asarray(_nat.quantize_q8_0(np.ascontiguousarray(x, dtype=np.float32)))
    return quantize_q8_0(x)


def encode_bf16(x: np.ndarray) -> np.ndarray:
    return f32_to_bf16(x)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
