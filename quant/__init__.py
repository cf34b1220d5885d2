"""Tensor formats of DeepSeek-V4 checkpoints and of dsv4 GGUF files, in numpy.

This package is the bit-level reference that the converter, the tests and the native kernels
(`native/src/dsv4-types.*`) agree on. See `docs/formats.md` (and the shared design note
`formats.md`) for the byte layouts.
"""
from __future__ import annotations

from .scalars import (
    E2M1_VALUES,
    bf16_to_f32,
    e2m1_to_f32,
    e4m3_to_f32,
    f32_to_bf16,
    f32_to_e2m1,
    f32_to_e4m3,
    f32_to_ue8m0_ceil,
    ue8m0_to_f32,
)
from .fp8 import FP8_BLOCK, decode_fp8_weight, encode_fp8_weight, fp8_scale_shape
from .fp4 import (
    FP4_BLOCK,
    MXFP4_BLOCK_BYTES,
    decode_fp4_weight,
    decode_mxfp4,
    encode_fp4_weight,
    fp4_to_mxfp4,
)
from .q8_0 import Q8_0_BLOCK, Q8_0_BLOCK_BYTES, dequantize_q8_0, quantize_q8_0

__all__ = [
    "E2M1_VALUES",
    "FP4_BLOCK",
    "FP8_BLOCK",
    "MXFP4_BLOCK_BYTES",
    "Q8_0_BLOCK",
    "Q8_0_BLOCK_BYTES",
    "bf16_to_f32",
    "decode_fp4_weight",
    "decode_fp8_weight",
    "decode_mxfp4",
    "dequantize_q8_0",
    "e2m1_to_f32",
    "e4m3_to_f32",
    "encode_fp4_weight",
    "encode_fp8_weight",
    "f32_to_bf16",
    "f32_to_e2m1",
    "f32_to_e4m3",
    "f32_to_ue8m0_ceil",
    "fp4_to_mxfp4",
    "fp8_scale_shape",
    "quantize_q8_0",
    "ue8m0_to_f32",
]
