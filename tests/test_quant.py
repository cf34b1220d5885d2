"""Tensor formats, three ways: the numpy codecs (dsv4.quant), the native decoders (dsv4._native,
native/src/dsv4-types.*) and independent oracles (ml_dtypes for the scalar formats, gguf-py for
Q8_0 and MXFP4, numpy's own float16).

Decoders are compared on float32 bit patterns, so -0 vs +0 and NaN payloads count. numpy and
native must agree bit for bit everywhere; against ml_dtypes a NaN only has to be a NaN (ml_dtypes
keeps the sign of e4m3 NaNs and canonicalises bf16 NaNs; our decoders do neither).
"""
from __future__ import annotations

import re

import gguf
import ml_dtypes  # a declared test dependency ('.[test]'): the oracle for fp8/fp4/bf16 scalars
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from dsv4 import _native as native
from dsv4 import quant

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # inf results are cases under test


ALL_BYTES = np.arange(256, dtype=np.uint8)
ALL_U16 = np.arange(65536, dtype=np.uint32).astype(np.uint16)


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray, *, nan_equal: bool = False, what: str = "") -> None:
    """Equal float32 bit patterns; with nan_equal, any NaN matches any NaN."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == np.float32 and expected.dtype == np.float32, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    a = np.ascontiguousarray(actual).view(np.uint32)
    e = np.ascontiguousarray(expected).view(np.uint32)
    bad = a != e
    if nan_equal:
        bad &= ~(np.isnan(actual) & np.isnan(expected))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} differ; first at {idx}: "
            f"got {actual[idx]!r} (0x{int(a[idx]):08x}), want {expected[idx]!r} (0x{int(e[idx]):08x})"
        )


def bits_f32(u: int | list[int]) -> np.ndarray:
    return np.array(u, dtype=np.uint32).view(np.float32)


def positive_zero(x: np.ndarray) -> np.ndarray:
    """-0 -> +0 (x + 0.0 is exact otherwise): for formats that agree on values but not on the zero sign."""
    return (x + np.float32(0.0)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Scalars, exhaustively


def test_e4m3_all_bytes_native_matches_numpy_bit_for_bit():
    assert_bits_equal(native.decode_e4m3(ALL_BYTES), quant.e4m3_to_f32(ALL_BYTES), what="e4m3 native vs quant")


def test_e4m3_all_bytes_match_ml_dtypes():
    want = ALL_BYTES.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    assert_bits_equal(native.decode_e4m3(ALL_BYTES), want, nan_equal=True, what="e4m3 native vs ml_dtypes")
    assert_bits_equal(quant.e4m3_to_f32(ALL_BYTES), want, nan_equal=True, what="e4m3 quant vs ml_dtypes")


def test_e4m3_special_values():
    v = native.decode_e4m3(ALL_BYTES)
    assert v[0x7E] == 448.0 and v[0xFE] == -448.0
    assert v[0x01] == 2.0**-9 and v[0x07] == 7 * 2.0**-9  # subnormals
    assert v[0x08] == 2.0**-6  # smallest normal
    assert v[0x38] == 1.0
    assert v.view(np.uint32)[0x80] == 0x80000000  # -0
    assert np.isnan(v[[0x7F, 0xFF]]).all()
    assert np.isnan(v).sum() == 2


def test_ue8m0_all_bytes_match_numpy_and_ml_dtypes():
    got = native.decode_ue8m0(ALL_BYTES)
    assert_bits_equal(got, quant.ue8m0_to_f32(ALL_BYTES), what="ue8m0 native vs quant")
    want = ALL_BYTES.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    assert_bits_equal(got, want, nan_equal=True, what="ue8m0 native vs ml_dtypes")


def test_ue8m0_special_values():
    v = native.decode_ue8m0(ALL_BYTES)
    assert v.view(np.uint32)[0] == 0x00400000  # 2^-127, a float32 subnormal
    assert v[1] == 2.0**-126 and v[127] == 1.0 and v[254] == 2.0**127
    assert np.isnan(v[255]) and np.isnan(v).sum() == 1


def test_e2m1_all_codes_match_numpy_and_ml_dtypes():
    codes = np.arange(16, dtype=np.uint8)
    got = native.decode_e2m1(codes)
    assert_bits_equal(got, quant.e2m1_to_f32(codes), what="e2m1 native vs quant")
    assert_bits_equal(got, codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32), what="e2m1 native vs ml_dtypes")
    assert got.view(np.uint32)[8] == 0x80000000  # code 8 is -0


def test_e2m1_codes_above_15_are_rejected():
    with pytest.raises(ValueError, match=r"decode_e2m1: E2M1 code 16 at index 2"):
        native.decode_e2m1(np.array([0, 15, 16], dtype=np.uint8))
    with pytest.raises(ValueError):
        quant.e2m1_to_f32(np.array([16], dtype=np.uint8))


def test_bf16_all_patterns_decode_exactly():
    got = native.bf16_to_f32(ALL_U16)
    assert_bits_equal(got, quant.bf16_to_f32(ALL_U16), what="bf16 native vs quant")
    assert_bits_equal(got, bits_f32(ALL_U16.astype(np.uint32) << 16), what="bf16 native vs shift")
    assert_bits_equal(got, ALL_U16.view(ml_dtypes.bfloat16).astype(np.float32), nan_equal=True,
                      what="bf16 native vs ml_dtypes")


def _f32_probe_patterns(seed: int) -> np.ndarray:
    """float32 bit patterns that stress narrowing: every f16/bf16 value's neighbourhood, halfway
    points, specials, plus random bits."""
    rng = np.random.default_rng(seed)
    halves = ALL_U16.view(np.float16).astype(np.float32).view(np.uint32).astype(np.int64)
    # Around every f16 value: +-1 ulp of f32, and the f32 midpoints to the next f16 (+-1 ulp).
    mid = halves + (1 << 12)
    near = np.concatenate([halves + d for d in (-1, 0, 1)] + [mid + d for d in (-1, 0, 1)])
    # Around every bf16 value the same way.
    bf = ALL_U16.astype(np.int64) << 16
    near_bf = np.concatenate([bf + d for d in (-1, 0, 1, 0x7FFF, 0x8000, 0x8001)])
    specials = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00000001,
                         0x007FFFFF, 0x00800000, 0x33000000, 0x33000001, 0x337FFFFF, 0x38800000,
                         0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x7F800001, 0x7FC00000,
                         0xFFC00001, 0x7FFFFFFF], dtype=np.int64)
    rand = rng.integers(0, 2**32, size=1 << 20, dtype=np.int64)
    allp = np.concatenate([near, near_bf, specials, rand]) & 0xFFFFFFFF
    return allp.astype(np.uint32)


def test_f32_to_bf16_matches_numpy_and_ml_dtypes():
    x = _f32_probe_patterns(1).view(np.float32)
    got = native.f32_to_bf16(x)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, quant.f32_to_bf16(x))  # NaNs included
    with np.errstate(invalid="ignore"):
        ml = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    finite_or_inf = ~np.isnan(x)
    np.testing.assert_array_equal(got[finite_or_inf], ml[finite_or_inf])
    nan_out = got[~finite_or_inf]
    assert ((nan_out & 0x7FC0) == 0x7FC0).all(), "NaN must stay a quiet NaN"
    assert ((nan_out >> 15) == (x[~finite_or_inf].view(np.uint32) >> 31)).all(), "NaN keeps its sign"


def test_f16_all_patterns_decode_like_numpy():
    got = native.f16_to_f32(ALL_U16)
    assert_bits_equal(got, ALL_U16.view(np.float16).astype(np.float32), what="f16 native vs numpy")
    # float16 arrays are accepted as their bits.
    assert_bits_equal(native.f16_to_f32(ALL_U16.view(np.float16)), got, what="f16 from float16 dtype")


def test_f32_to_f16_matches_numpy():
    x = _f32_probe_patterns(2).view(np.float32)
    got = native.f32_to_f16(x)
    assert got.dtype == np.uint16
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    not_nan = ~np.isnan(x)
    np.testing.assert_array_equal(got[not_nan], want[not_nan])
    # numpy keeps a signalling NaN signalling when its payload survives; ours always sets the
    # quiet bit (as F16C does), and keeps the sign.
    nan_out = got[~not_nan]
    assert ((nan_out & 0x7E00) == 0x7E00).all()
    assert ((nan_out >> 15) == (x[~not_nan].view(np.uint32) >> 31)).all()


# --------------------------------------------------------------------------------------------
# Q8_0 (ggml type 8)


def _q8_0_inputs(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal((7, 256)).astype(np.float32)
    wide = (rng.standard_normal((3, 4, 64)) * np.exp2(rng.integers(-30, 30, (3, 4, 1)))).astype(np.float32)
    sparse = np.where(rng.random((5, 96)) < 0.8, 0, rng.standard_normal((5, 96))).astype(np.float32)
    sparse[0, :32] = 0  # an all-zero block: d = 0, id = 0
    # d = 1 exactly (amax 127), so x * id = x: halfway values round away from zero, and
    # 0.49999997 (the float just below 0.5) must round to 0 as roundf does.
    halves = np.tile(np.float32([127, -0.5, 0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 126.5,
                                 -126.5, 3.4999998, 64.5, -64.5, 0.0, -0.0] * 2), (2, 1))
    ints = rng.integers(-127, 128, (4, 128)).astype(np.float32)
    return [normal, wide, sparse, halves, ints]


@pytest.mark.parametrize("case", range(5))
def test_quantize_q8_0_matches_gguf_py(case):
    x = _q8_0_inputs(10)[case]
    want = gguf_quantize(x, GGMLQuantizationType.Q8_0)
    got = native.quantize_q8_0(x)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want, err_msg="native Q8_0 vs gguf-py")
    np.testing.assert_array_equal(quant.quantize_q8_0(x), want, err_msg="quant Q8_0 vs gguf-py")


def test_quantize_q8_0_rounds_like_roundf():
    x = np.zeros(32, dtype=np.float32)
    x[:6] = [127, 2.5, -2.5, 0.49999997, -0.49999997, 1.4999999]
    for q in (native.quantize_q8_0(x), quant.quantize_q8_0(x)):
        assert q[:2].view(np.float16)[0] == 1.0
        np.testing.assert_array_equal(q[2:8].view(np.int8), [127, 3, -3, 0, 0, 1])


@pytest.mark.parametrize("case", range(5))
def test_dequantize_q8_0_matches_gguf_py_and_numpy(case):
    q = gguf_quantize(_q8_0_inputs(11)[case], GGMLQuantizationType.Q8_0)
    got = native.dequantize_q8_0(q)
    assert_bits_equal(got, quant.dequantize_q8_0(q), what="Q8_0 decode native vs quant")
    assert_bits_equal(got, gguf_dequantize(q, GGMLQuantizationType.Q8_0), what="Q8_0 decode native vs gguf-py")


def test_dequantize_q8_0_of_arbitrary_bytes():
    # Any bytes are a valid Q8_0 row, f16 infinities and NaNs included.
    raw = np.random.default_rng(12).integers(0, 256, (64, 34 * 5), dtype=np.uint8)
    got = native.dequantize_q8_0(raw)
    with np.errstate(invalid="ignore"):
        assert_bits_equal(got, quant.dequantize_q8_0(raw), what="Q8_0 decode native vs quant")
        assert_bits_equal(got, gguf_dequantize(raw, GGMLQuantizationType.Q8_0), nan_equal=True,
                          what="Q8_0 decode native vs gguf-py")


def test_q8_0_round_trip_error_is_within_half_a_step():
    x = np.random.default_rng(13).standard_normal((16, 128)).astype(np.float32)
    y = native.dequantize_q8_0(native.quantize_q8_0(x))
    d = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    # d is stored as f16 (relative error <= 2^-11), so allow a hair over half a step.
    assert (np.abs(y - x).reshape(-1, 32) <= d * (0.5 + 127 * 2.0**-11) + 1e-12).all()


# --------------------------------------------------------------------------------------------
# MXFP4 (ggml type 39)


def test_decode_mxfp4_matches_gguf_py_for_every_scale_byte():
    rng = np.random.default_rng(20)
    raw = rng.integers(0, 256, (256, 17 * 3), dtype=np.uint8)
    raw[:, 0] = ALL_BYTES  # every e in the first block, e = 0, 1 (subnormal scales) and 255 (finite) included
    got = native.decode_mxfp4(raw)
    assert got.shape == (256, 96)
    assert_bits_equal(got, gguf_dequantize(raw, GGMLQuantizationType.MXFP4), what="MXFP4 native vs gguf-py")
    assert_bits_equal(got, quant.decode_mxfp4(raw), what="MXFP4 native vs quant")
    assert not np.isnan(got).any()  # e = 255 is the finite 2^127 in ggml, not NaN


def test_decode_mxfp4_of_gguf_py_quantized_data():
    x = (np.random.default_rng(21).standard_normal((4, 2, 128)) * 3).astype(np.float32)
    q = gguf_quantize(x, GGMLQuantizationType.MXFP4)
    assert_bits_equal(native.decode_mxfp4(q), gguf_dequantize(q, GGMLQuantizationType.MXFP4),
                      what="MXFP4 native vs gguf-py")


# --------------------------------------------------------------------------------------------
# FP8 E4M3 weights with 128 x 128 block scales

FP8_SHAPES = [(300, 200), (128, 128), (129, 257), (1, 1), (256, 130), (127, 385), (0, 7)]


def _fp8_case(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight = rng.integers(0, 256, shape, dtype=np.uint8)  # NaN codes included
    scale = rng.integers(100, 150, quant.fp8_scale_shape(*shape), dtype=np.uint8)
    return weight, scale


def _fp8_oracle(weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The formula with ml_dtypes decoding and explicit tile indexing."""
    w = weight.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    s = scale.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    i = np.arange(weight.shape[0])[:, None] // 128
    j = np.arange(weight.shape[1])[None, :] // 128
    return (w * s[i, j]).astype(np.float32)


@pytest.mark.parametrize("shape", FP8_SHAPES)
def test_decode_fp8_weight_with_ue8m0_scales(shape):
    weight, scale = _fp8_case(shape, 30)
    got = native.decode_fp8_weight(weight, scale)
    assert got.shape == shape and got.dtype == np.float32
    assert_bits_equal(got, quant.decode_fp8_weight(weight, scale), what="FP8 native vs quant")
    assert_bits_equal(got, _fp8_oracle(weight, scale), nan_equal=True, what="FP8 native vs ml_dtypes formula")


@pytest.mark.parametrize("shape", FP8_SHAPES)
def test_decode_fp8_weight_with_f32_scales(shape):
    weight, scale = _fp8_case(shape, 31)
    s32 = (np.random.default_rng(32).random(scale.shape) + 0.5).astype(np.float32)  # not powers of two
    got = native.decode_fp8_weight(weight, s32)
    assert_bits_equal(got, quant.decode_fp8_weight(weight, s32), what="FP8 f32-scale native vs quant")
    # Decoded UE8M0 scales as F32 (the dsv4 GGUF's .scale tensor) give the same weight.
    assert_bits_equal(native.decode_fp8_weight(weight, quant.ue8m0_to_f32(scale)),
                      native.decode_fp8_weight(weight, scale), what="FP8 f32 vs ue8m0 scales")


def test_decode_fp8_weight_uses_the_right_tile_at_partial_edges():
    weight = np.full((129, 257), 0x38, dtype=np.uint8)  # every element 1.0
    scale = np.array([[120, 121, 122], [123, 124, 125]], dtype=np.uint8)
    got = native.decode_fp8_weight(weight, scale)
    for (i, j) in [(0, 0), (127, 127), (128, 0), (0, 128), (128, 255), (128, 256), (127, 256)]:
        assert got[i, j] == 2.0 ** (int(scale[i // 128, j // 128]) - 127), (i, j)


def test_decode_fp8_weight_accepts_int8_ml_dtypes_and_strided_inputs():
    weight, scale = _fp8_case((300, 200), 33)
    want = native.decode_fp8_weight(weight, scale)
    assert_bits_equal(native.decode_fp8_weight(weight.view(np.int8), scale.view(np.int8)), want, what="int8 views")
    assert_bits_equal(native.decode_fp8_weight(weight.view(ml_dtypes.float8_e4m3fn),
                                               scale.view(ml_dtypes.float8_e8m0fnu)), want, what="ml_dtypes views")
    big = np.zeros((300, 400), dtype=np.uint8)
    big[:, ::2] = weight  # a strided, non-contiguous view
    assert_bits_equal(native.decode_fp8_weight(big[:, ::2], scale), want, what="strided weight")


# --------------------------------------------------------------------------------------------
# DeepSeek FP4 experts and the MXFP4 repack


def _fp4_case(rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    packed = rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
    scale = rng.integers(0, 256, (rows, cols // 32), dtype=np.uint8)  # 0 (subnormal) and 255 (NaN) included
    return packed, scale


def _fp4_oracle(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    lo = (packed & 0x0F).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    hi = (packed >> 4).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    vals = np.stack([lo, hi], axis=-1).reshape(packed.shape[0], packed.shape[1] * 2)  # low nibble = even element
    s = scale.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    return (vals * np.repeat(s, 32, axis=1)).astype(np.float32)


@pytest.mark.parametrize("rows,cols", [(1, 32), (8, 256), (33, 96), (0, 64)])
def test_decode_fp4_weight_matches_numpy_and_ml_dtypes(rows, cols):
    packed, scale = _fp4_case(rows, cols, 40)
    got = native.decode_fp4_weight(packed, scale)
    assert got.shape == (rows, cols)
    assert_bits_equal(got, quant.decode_fp4_weight(packed, scale), what="FP4 native vs quant")
    assert_bits_equal(got, _fp4_oracle(packed, scale), nan_equal=True, what="FP4 native vs ml_dtypes formula")


def test_fp4_low_nibble_is_the_even_element():
    packed = np.zeros((1, 16), dtype=np.uint8)
    packed[0, 0] = 0x21  # element 0: code 1 (0.5), element 1: code 2 (1.0)
    packed[0, 15] = 0xF7  # element 30: code 7 (6.0), element 31: code 15 (-6.0)
    scale = np.array([[127]], dtype=np.uint8)
    for w in (native.decode_fp4_weight(packed, scale), quant.decode_fp4_weight(packed, scale)):
        assert w[0, 0] == 0.5 and w[0, 1] == 1.0 and w[0, 30] == 6.0 and w[0, 31] == -6.0
        assert (w[0, 2:30] == 0).all()


def test_fp4_to_mxfp4_bytes_match_numpy():
    packed, scale = _fp4_case(17, 192, 41)
    got = native.fp4_to_mxfp4(packed, scale)
    assert got.dtype == np.uint8 and got.shape == (17, 6 * 17)
    np.testing.assert_array_equal(got, quant.fp4_to_mxfp4(packed, scale))
    np.testing.assert_array_equal(got.reshape(17, 6, 17)[:, :, 0], scale)  # scale byte unchanged


def _every_code_every_scale() -> tuple[np.ndarray, np.ndarray]:
    """Rows 0..254, row r with scale byte r on both blocks; each block holds every code in both
    nibble positions (even and odd elements, first and second half of the block)."""
    scales = np.arange(255, dtype=np.uint8)
    block0 = np.arange(32) % 16
    block1 = (np.arange(32) * 7 + 3) % 16
    codes = np.tile(np.concatenate([block0, block1]).astype(np.uint8), (255, 1))
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed, np.stack([scales, scales], axis=1)


def test_fp4_to_mxfp4_is_lossless_for_every_code_and_scale():
    packed, scale = _every_code_every_scale()
    original = native.decode_fp4_weight(packed, scale)
    assert not np.isnan(original).any()
    repacked = native.fp4_to_mxfp4(packed, scale)
    # MXFP4 decodes code 8 (E2M1 -0) as +0 (ggml's kvalues are integers); every other value is the
    # same float, so compare bits with zeros made positive.
    want = positive_zero(original)
    assert_bits_equal(positive_zero(native.decode_mxfp4(repacked)), want, what="native repack, native decode")
    assert_bits_equal(positive_zero(gguf_dequantize(repacked, GGMLQuantizationType.MXFP4)), want,
                      what="native repack, gguf-py decode")
    assert_bits_equal(positive_zero(quant.decode_mxfp4(quant.fp4_to_mxfp4(packed, scale))),
                      positive_zero(quant.decode_fp4_weight(packed, scale)), what="quant repack, quant decode")


def test_fp4_scale_255_is_nan_in_the_checkpoint_but_finite_in_mxfp4():
    # The one byte the repack does not preserve in value: UE8M0 0xFF is NaN, ggml's E8M0 0xFF is 2^127.
    packed = np.full((1, 16), 0x11, dtype=np.uint8)
    scale = np.array([[255]], dtype=np.uint8)
    assert np.isnan(native.decode_fp4_weight(packed, scale)).all()
    assert (native.decode_mxfp4(native.fp4_to_mxfp4(packed, scale)) == 2.0**127).all()


# --------------------------------------------------------------------------------------------
# The numpy encoders, checked through the native decoders


def test_encode_fp8_weight_round_trips_values_on_the_grid():
    rng = np.random.default_rng(50)
    weight = rng.integers(0, 256, (260, 300), dtype=np.uint8)
    weight[(weight & 0x7F) == 0x7F] = 0x00  # no NaNs
    weight[::128, ::128] = 0x7E  # every tile holds 448, so its scale is recovered exactly
    scale = rng.integers(100, 150, quant.fp8_scale_shape(260, 300), dtype=np.uint8)
    w = native.decode_fp8_weight(weight, scale)
    q, s = quant.encode_fp8_weight(w)
    np.testing.assert_array_equal(s, scale)
    np.testing.assert_array_equal(q, weight)


def test_encode_fp8_weight_error_bound():
    w = (np.random.default_rng(51).standard_normal((200, 300)) * 0.02).astype(np.float32)
    q, s = quant.encode_fp8_weight(w)
    assert q.shape == w.shape and s.shape == quant.fp8_scale_shape(200, 300) == (2, 3)
    back = native.decode_fp8_weight(q, s)
    assert_bits_equal(back, quant.decode_fp8_weight(q, s), what="decode of encoded FP8")
    step = np.repeat(np.repeat(quant.ue8m0_to_f32(s), 128, 0), 128, 1)[:200, :300]
    # 3 mantissa bits: half an ulp is 2^-4 of the value; subnormals (|x| < 2^-6 * scale) step 2^-9 * scale.
    bound = np.maximum(np.abs(w) * 2.0**-4, step * 2.0**-10)
    assert (np.abs(back - w) <= bound).all()


def test_encode_fp4_weight_round_trips_values_on_the_grid():
    rng = np.random.default_rng(52)
    codes = rng.integers(0, 16, (40, 128), dtype=np.uint8)
    codes[:, ::32] = 7  # every block holds 6.0, so its scale is recovered exactly
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    scale = rng.integers(100, 150, (40, 4), dtype=np.uint8)
    w = native.decode_fp4_weight(packed, scale)
    p2, s2 = quant.encode_fp4_weight(w)
    np.testing.assert_array_equal(s2, scale)
    np.testing.assert_array_equal(p2, packed)  # -0 (code 8) survives too


def test_encode_fp4_weight_error_bound():
    w = np.random.default_rng(53).standard_normal((16, 256)).astype(np.float32)
    packed, scale = quant.encode_fp4_weight(w)
    back = native.decode_fp4_weight(packed, scale)
    assert_bits_equal(back, quant.decode_fp4_weight(packed, scale), what="decode of encoded FP4")
    s = np.repeat(quant.ue8m0_to_f32(scale), 32, axis=1)
    # E2M1 grid spacing is at most 2 (between 4 and 6) in scale units: error <= 1 * scale.
    assert (np.abs(back - w) <= s).all()
    assert (np.abs(back - w) <= np.maximum(np.abs(w) * 0.25, 0.25 * s)).all()


# --------------------------------------------------------------------------------------------
# The traits table


@pytest.mark.parametrize("name,qtype", [("f32", GGMLQuantizationType.F32), ("f16", GGMLQuantizationType.F16),
                                        ("bf16", GGMLQuantizationType.BF16), ("q8_0", GGMLQuantizationType.Q8_0),
                                        ("mxfp4", GGMLQuantizationType.MXFP4), ("i8", GGMLQuantizationType.I8),
                                        ("i32", GGMLQuantizationType.I32)])
def test_type_info_matches_gguf_py(name, qtype):
    info = native.type_info(name)
    assert info["name"] == name
    assert info["gguf_type"] == int(qtype)
    assert (info["block_size"], info["type_size"]) == gguf.GGML_QUANT_SIZES[qtype]
    assert native.type_info(int(qtype)) == info
    assert native.type_info(qtype) == info  # gguf's IntEnum
    assert native.type_info(name.upper()) == info
    assert info["has_to_float"]


def test_type_info_fp8_has_no_gguf_id_and_a_128_scale_block():
    info = native.type_info("fp8_e4m3")
    assert info["gguf_type"] is None and info["scale_block"] == 128
    assert (info["block_size"], info["type_size"]) == (1, 1)
    assert native.type_names() == ["f32", "f16", "bf16", "q8_0", "mxfp4", "i8", "i32", "fp8_e4m3"]
    assert [native.type_info(n)["type"] for n in native.type_names()] == list(range(8))


def test_to_float_through_the_table_matches_the_specific_decoders():
    rng = np.random.default_rng(60)
    raw = rng.integers(0, 256, (3, 17 * 34 * 4), dtype=np.uint8)  # divisible by 1, 2, 4, 17 and 34
    with np.errstate(invalid="ignore"):
        assert_bits_equal(native.to_float("f32", raw), raw.view(np.float32), what="f32")
        assert_bits_equal(native.to_float("f16", raw), raw.view(np.float16).astype(np.float32), what="f16")
        assert_bits_equal(native.to_float("bf16", raw), quant.bf16_to_f32(raw.view(np.uint16)), what="bf16")
        assert_bits_equal(native.to_float("q8_0", raw), quant.dequantize_q8_0(raw), what="q8_0")
        assert_bits_equal(native.to_float("mxfp4", raw), quant.decode_mxfp4(raw), what="mxfp4")
        assert_bits_equal(native.to_float("i8", raw), raw.view(np.int8).astype(np.float32), what="i8")
        assert_bits_equal(native.to_float("i32", raw), raw.view(np.int32).astype(np.float32), what="i32")
        assert_bits_equal(native.to_float("fp8_e4m3", raw), quant.e4m3_to_f32(raw), what="fp8_e4m3 (unscaled)")
    # Typed arrays are read as their bytes.
    ints = rng.integers(-2**31, 2**31, (2, 5), dtype=np.int64).astype(np.int32)
    assert_bits_equal(native.to_float(GGMLQuantizationType.I32, ints), ints.astype(np.float32), what="i32 typed")


def test_from_float_through_the_table_matches_the_specific_encoders():
    x = np.random.default_rng(61).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_array_equal(native.from_float("q8_0", x), native.quantize_q8_0(x))
    np.testing.assert_array_equal(native.from_float("f16", x).view(np.uint16), x.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(native.from_float("bf16", x).view(np.uint16), quant.f32_to_bf16(x))
    np.testing.assert_array_equal(native.from_float("f32", x).view(np.float32), x)


def test_empty_inputs_give_empty_outputs():
    assert native.decode_e4m3(np.zeros((0, 3), np.uint8)).shape == (0, 3)
    assert native.quantize_q8_0(np.zeros((2, 0), np.float32)).shape == (2, 0)
    assert native.dequantize_q8_0(np.zeros((0, 34), np.uint8)).shape == (0, 32)
    assert native.decode_mxfp4(np.zeros((4, 0), np.uint8)).shape == (4, 0)
    assert native.decode_fp8_weight(np.zeros((0, 5), np.uint8), np.zeros((0, 1), np.uint8)).shape == (0, 5)
    assert native.fp4_to_mxfp4(np.zeros((0, 16), np.uint8), np.zeros((0, 1), np.uint8)).shape == (0, 17)


# --------------------------------------------------------------------------------------------
# Bad arguments raise ValueError naming the culprit


BAD_CALLS = [
    ("decode_e4m3", lambda: native.decode_e4m3(np.zeros(4, np.float32)), "decode_e4m3: data must be .* got float32"),
    ("decode_ue8m0", lambda: native.decode_ue8m0([1, 2]), "decode_ue8m0: data must be .* got int64"),
    ("bf16_to_f32", lambda: native.bf16_to_f32(np.zeros(4, np.float32)), "bf16_to_f32: bits must be"),
    ("f32_to_f16", lambda: native.f32_to_f16(np.zeros(4)), "f32_to_f16: x must be a float32 array, got float64"),
    ("quantize dtype", lambda: native.quantize_q8_0(np.zeros(32)), "quantize_q8_0: x must be a float32 array"),
    ("quantize 33", lambda: native.quantize_q8_0(np.zeros((2, 33), np.float32)),
     r"quantize_q8_0: rows of x .* multiple of 32 .* got 33"),
    ("quantize 0-d", lambda: native.quantize_q8_0(np.float32(1.0)), "quantize_q8_0: x must have at least one dimension"),
    ("dequantize 35", lambda: native.dequantize_q8_0(np.zeros((2, 35), np.uint8)), r"dequantize_q8_0: .*35 bytes.*34-byte"),
    ("mxfp4 18", lambda: native.decode_mxfp4(np.zeros(18, np.uint8)), r"decode_mxfp4: .*18 bytes.*17-byte"),
    ("fp8 1-D", lambda: native.decode_fp8_weight(np.zeros(5, np.uint8), np.zeros((1, 1), np.uint8)),
     r"decode_fp8_weight: weight must be 2-D, got shape \(5,\)"),
    ("fp8 scale shape", lambda: native.decode_fp8_weight(np.zeros((300, 200), np.uint8), np.zeros((2, 3), np.uint8)),
     r"decode_fp8_weight: scale shape \(2, 3\) does not match weight \(300, 200\).*\(3, 2\)"),
    ("fp8 scale dtype", lambda: native.decode_fp8_weight(np.zeros((2, 2), np.uint8), np.zeros((1, 1))),
     "decode_fp8_weight: scale must be .* got float64"),
    ("fp8 weight dtype", lambda: native.decode_fp8_weight(np.zeros((2, 2), np.float32), np.zeros((1, 1), np.uint8)),
     "decode_fp8_weight: weight must be .* got float32"),
    ("fp4 scale shape", lambda: native.decode_fp4_weight(np.zeros((4, 32), np.uint8), np.zeros((4, 1), np.uint8)),
     r"decode_fp4_weight: scale shape \(4, 1\) does not match packed \(4, 32\).*\(4, 2\)"),
    ("fp4 cols", lambda: native.decode_fp4_weight(np.zeros((2, 8), np.uint8), np.zeros((2, 1), np.uint8)),
     r"decode_fp4_weight: packed \(2, 8\) holds 16 codes per row, not a multiple of 32"),
    ("mxfp4 repack 3-D", lambda: native.fp4_to_mxfp4(np.zeros((2, 2, 16), np.uint8), np.zeros((2, 1), np.uint8)),
     "fp4_to_mxfp4: packed must be 2-D"),
    ("type name", lambda: native.type_info("q4_0"), "type_info: unknown type name 'q4_0'"),
    ("type id", lambda: native.type_info(2), "type_info: GGUF type id 2 is not one dsv4 supports"),
    ("type id huge", lambda: native.type_info(2**70), "type_info: GGUF type id"),
    ("type bool", lambda: native.type_info(True), "type_info: a type is a name"),
    ("to_float rows", lambda: native.to_float("q8_0", np.zeros((2, 35), np.uint8)), r"to_float: .*34-byte q8_0"),
    ("from_float none", lambda: native.from_float("mxfp4", np.zeros(32, np.float32)), "from_float: no encoder for mxfp4"),
]


@pytest.mark.parametrize("call,pattern", [(c, p) for _, c, p in BAD_CALLS], ids=[n for n, _, _ in BAD_CALLS])
def test_bad_arguments_raise_value_error_naming_the_culprit(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_numpy_codecs_reject_mismatched_shapes_too():
    with pytest.raises(ValueError, match=re.escape("FP8 scale shape (2, 3)")):
        quant.decode_fp8_weight(np.zeros((300, 200), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="FP4 scale shape"):
        quant.decode_fp4_weight(np.zeros((4, 32), np.uint8), np.zeros((4, 1), np.uint8))
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.quantize_q8_0(np.zeros(33, np.float32))
