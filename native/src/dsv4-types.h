// Tensor element types: one traits table (ggml's ggml_type_traits) plus the scalar codecs that the
// decoders and, later, the CPU kernels are built from. Byte layouts are in formats.md; quant/*.py
// is the numpy reference these functions must match bit for bit.
//
// How kernels will hang off this table: dsv4_type is dense (0..DSV4_TYPE_COUNT-1), so the CPU
// backend can keep its own table indexed by dsv4_type with columns such as vec_dot, vec_dot_type
// (the activation format a type's dot kernel consumes: Q8_0 for Q8_0/MXFP4, F32 for FP8...) and
// matmul, filled by its init function from the scalar reference or an AVX2/AVX-512/NEON variant
// chosen from the CPU features at run time. That table belongs to the backend/context; this one
// is immutable and describes only what is true of the format on every machine.
#pragma once

#include "dsv4-impl.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

// Dense ids, not GGUF ids: FP8_E4M3 has no GGUF type, and a dense enum lets per-type tables be
// plain arrays. dsv4_type_traits::gguf_type carries the GGUF id where there is one.
enum dsv4_type : int32_t {
    DSV4_TYPE_F32      = 0,
    DSV4_TYPE_F16      = 1,
    DSV4_TYPE_BF16     = 2,
    DSV4_TYPE_Q8_0     = 3,
    DSV4_TYPE_MXFP4    = 4,
    DSV4_TYPE_I8       = 5,
    DSV4_TYPE_I32      = 6,
    // The dsv4 FP8 weight: raw e4m3 bytes (a GGUF I8 tensor [out, in]) plus a companion block-scale
    // tensor [ceil(out/128), ceil(in/128)] (F32 in a dsv4 GGUF, UE8M0 bytes in the checkpoint).
    DSV4_TYPE_FP8_E4M3 = 7,
    DSV4_TYPE_COUNT    = 8,
};

// GGUF / ggml type ids (gguf-py GGMLQuantizationType) of the types GGUF knows.
enum {
    DSV4_GGUF_TYPE_NONE  = -1,
    DSV4_GGUF_TYPE_F32   = 0,
    DSV4_GGUF_TYPE_F16   = 1,
    DSV4_GGUF_TYPE_Q8_0  = 8,
    DSV4_GGUF_TYPE_I8    = 24,
    DSV4_GGUF_TYPE_I32   = 26,
    DSV4_GGUF_TYPE_BF16  = 30,
    DSV4_GGUF_TYPE_MXFP4 = 39,
};

// How an FP8 weight's block scales are stored.
enum dsv4_scale_kind : int32_t {
    DSV4_SCALE_UE8M0 = 0,  // one byte per block, 2^(e-127): the checkpoint's F8_E8M0
    DSV4_SCALE_F32   = 1,  // already decoded: the dsv4 GGUF's `.scale` tensor
};

#define DSV4_QK8_0            32
#define DSV4_Q8_0_BLOCK_BYTES 34   // f16 d + 32 x int8
#define DSV4_QK_MXFP4         32
#define DSV4_MXFP4_BLOCK_BYTES 17  // e8m0 e + 16 bytes of nibbles
#define DSV4_FP4_BLOCK        32   // DeepSeek FP4 experts: one UE8M0 scale per 32 inputs
#define DSV4_FP8_BLOCK        128  // DeepSeek FP8 weights: one scale per 128 x 128 tile

// Row codecs. n is a multiple of the type's block_size; the table's functions do not check it
// (they sit on hot paths, called after the tensor's shape was validated once). The checked entry
// points are dsv4_type_to_float / dsv4_type_from_float below.
typedef void (*dsv4_to_float_fn)(const void * src, float * dst, int64_t n);
typedef void (*dsv4_from_float_fn)(const float * src, void * dst, int64_t n);

struct dsv4_type_traits {
    dsv4_type          type;          // its own index, so the table's order is checked at compile time
    const char *       name;          // ggml's spelling where ggml has the type
    int32_t            gguf_type;     // DSV4_GGUF_TYPE_NONE where GGUF has no such type
    int64_t            block_size;    // elements per block
    size_t             type_size;     // bytes per block
    bool               is_quantized;  // blocks carry their own scale (or need a companion one)
    int64_t            scale_block;   // > 0: needs a companion scale tensor, one per scale_block^2 tile
    dsv4_to_float_fn   to_float;      // FP8_E4M3: the unscaled e4m3 values; apply the tile scale after
    dsv4_from_float_fn from_float;    // NULL where we have no encoder for the format
};

// NULL for an id outside the enum.
const dsv4_type_traits * dsv4_get_type_traits(dsv4_type type);

// Look-ups by GGUF id and by name (exact, lower case as in the table); DSV4_ERR_INVALID_ARG when
// there is no such type.
dsv4_status dsv4_type_from_gguf(int32_t gguf_type, dsv4_type * out);
dsv4_status dsv4_type_from_name(const char * name, dsv4_type * out);

// Bytes of a row of n elements: n must be a non-negative multiple of the block size.
dsv4_status dsv4_type_row_size(dsv4_type type, int64_t n, size_t * out);

// Checked row codecs: n elements, src_size / dst_size bytes must equal the row size of n.
dsv4_status dsv4_type_to_float(dsv4_type type, const void * src, size_t src_size, float * dst, int64_t n);
dsv4_status dsv4_type_from_float(dsv4_type type, const float * src, int64_t n, void * dst, size_t dst_size);

// Element-wise scalar decoders over arrays (n elements in, n floats out).
dsv4_status dsv4_ue8m0_to_float(const uint8_t * src, float * dst, int64_t n);
// Codes must be 0..15 (one per byte); anything else is DSV4_ERR_INVALID_ARG.
dsv4_status dsv4_e2m1_to_float(const uint8_t * codes, float * dst, int64_t n);

// FP8 block-scaled weight [rows, cols] -> float [rows, cols]:
//   W[i, j] = e4m3(weight[i, j]) * scale[i / 128, j / 128]
// with scale [ceil(rows/128), ceil(cols/128)] as UE8M0 bytes or F32; the last block of either axis
// may be partial. weight_size is in bytes, scale_count and dst_count in elements.
dsv4_status dsv4_fp8_weight_to_float(const uint8_t * weight, size_t weight_size, int64_t rows, int64_t cols,
                                     const void * scale, dsv4_scale_kind scale_kind, size_t scale_count,
                                     float * dst, size_t dst_count);

// One FP8 row of n elements with its ceil(n/128) decoded scales (the kernel-side building block).
void dsv4_fp8_row_to_float(const uint8_t * src, const float * row_scales, float * dst, int64_t n);

// DeepSeek FP4 expert weight: packed [rows, cols/2] (element 2t in the low nibble of byte t, 2t+1
// in the high one), scale [rows, cols/32] UE8M0; W[i, j] = e2m1(code[i, j]) * ue8m0(scale[i, j/32]).
// cols must be a multiple of 32. Sizes in bytes (packed, scale) and elements (dst).
dsv4_status dsv4_fp4_weight_to_float(const uint8_t * packed, size_t packed_size,
                                     const uint8_t * scale, size_t scale_size,
                                     int64_t rows, int64_t cols, float * dst, size_t dst_count);

// Lossless repack of the same FP4 weight into MXFP4 rows [rows, cols/32 * 17]: per 32-element
// block the scale byte unchanged, then qs[j] = code[j] | code[j + 16] << 4.
dsv4_status dsv4_fp4_to_mxfp4(const uint8_t * packed, size_t packed_size,
                              const uint8_t * scale, size_t scale_size,
                              int64_t rows, int64_t cols, uint8_t * dst, size_t dst_size);

// ---------------------------------------------------------------------------------------------
// Scalar codecs, inline because every kernel's inner loop uses them.

static inline float dsv4_f32_from_bits(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

static inline uint32_t dsv4_f32_to_bits(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    return bits;
}

// E4M3 ("fn": no infinities) -> float32 bit patterns, built from the bit fields at compile time.
// Both NaN codes (0x7F, 0xFF) decode to the positive quiet NaN 0x7FC00000, as quant/scalars.py
// does, so numpy and native agree bit for bit even on NaN.
constexpr std::array<uint32_t, 256> dsv4_make_e4m3_table() {
    std::array<uint32_t, 256> table{};
    for (uint32_t b = 0; b < 256; b++) {
        const uint32_t sign = (b & 0x80u) << 24;
        const uint32_t exp  = (b >> 3) & 0xFu;
        const uint32_t man  = b & 0x7u;
        uint32_t bits = 0;
        if ((b & 0x7Fu) == 0x7Fu) {
            bits = 0x7FC00000u;
        } else if (exp == 0 && man == 0) {
            bits = sign;
        } else if (exp == 0) {
            // Subnormal man * 2^-9: normalise so the leading 1 of man becomes the implicit bit.
            uint32_t p = 2;
            while (!(man & (1u << p))) {
                p--;
            }
            const uint32_t f32_exp = 127 + p - 9;
            bits = sign | (f32_exp << 23) | ((man & ~(1u << p)) << (23 - p));
        } else {
            // Rebias 7 -> 127 and left-align the 3 mantissa bits in the 23.
            bits = sign | ((exp + 120) << 23) | (man << 20);
        }
        table[b] = bits;
    }
    return table;
}

inline constexpr std::array<uint32_t, 256> dsv4_e4m3_bits = dsv4_make_e4m3_table();

static inline float dsv4_e4m3_to_f32(uint8_t b) {
    return dsv4_f32_from_bits(dsv4_e4m3_bits[b]);
}

// UE8M0: 2^(e-127). e = 0 is 2^-127, a float32 subnormal (bit 22); 0xFF is NaN.
static inline float dsv4_ue8m0_to_f32(uint8_t e) {
    if (e == 0xFF) {
        return dsv4_f32_from_bits(0x7FC00000u);
    }
    if (e == 0) {
        return dsv4_f32_from_bits(0x00400000u);
    }
    return dsv4_f32_from_bits((uint32_t) e << 23);
}

// ggml's GGML_E8M0_TO_FP32_HALF: 2^(e-128), the MXFP4 block scale paired with doubled E2M1
// values. e = 0 and 1 are float32 subnormals; e = 255 is the finite 2^127 (no NaN here).
static inline float dsv4_e8m0_to_f32_half(uint8_t e) {
    const uint32_t bits = e < 2 ? (0x00200000u << e) : ((uint32_t) (e - 1) << 23);
    return dsv4_f32_from_bits(bits);
}

// E2M1 codes 0..15: bit 3 sign, bits 0-2 index {0, 0.5, 1, 1.5, 2, 3, 4, 6}. Code 8 is -0.
inline constexpr float dsv4_e2m1_values[16] = {
    0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f,
};

// ggml's kvalues_mxfp4: the E2M1 values doubled, as int8 (so code 8 is +0, not -0).
inline constexpr int8_t dsv4_mxfp4_kvalues[16] = {
    0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
};

static inline float dsv4_e2m1_to_f32(uint8_t code) {
    return dsv4_e2m1_values[code & 0x0F];
}

// BF16 is the top half of a float32: decoding is exact.
static inline float dsv4_bf16_to_f32(uint16_t h) {
    return dsv4_f32_from_bits((uint32_t) h << 16);
}

// Round to nearest even; a NaN keeps its sign and top payload bits and is forced quiet, so it can
// never round into an infinity.
static inline uint16_t dsv4_f32_to_bf16(float f) {
    const uint32_t u = dsv4_f32_to_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        return (uint16_t) ((u >> 16) | 0x0040u);
    }
    return (uint16_t) ((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// IEEE binary16 -> binary32, exact, with integer arithmetic only (no _Float16 / F16C needed).
// Infinities and NaN payloads carry over unchanged.
static inline float dsv4_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
    const uint32_t exp  = (h >> 10) & 0x1Fu;
    uint32_t       man  = h & 0x3FFu;
    if (exp == 0x1F) {
        return dsv4_f32_from_bits(sign | 0x7F800000u | (man << 13));
    }
    if (exp == 0) {
        if (man == 0) {
            return dsv4_f32_from_bits(sign);
        }
        // Subnormal man * 2^-24: shift the leading 1 up to the implicit-bit position.
        uint32_t e = 127 - 14;
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        return dsv4_f32_from_bits(sign | (e << 23) | ((man & 0x3FFu) << 13));
    }
    return dsv4_f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

// IEEE binary32 -> binary16, round to nearest even (as numpy's astype(float16) and F16C do),
// overflow to infinity, gradual underflow to subnormals. NaN stays NaN: sign and top payload
// bits kept, quiet bit set.
static inline uint16_t dsv4_f32_to_f16(float f) {
    const uint32_t u    = dsv4_f32_to_bits(f);
    const uint16_t sign = (uint16_t) ((u >> 16) & 0x8000u);
    const uint32_t a    = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) {
        return (uint16_t) (sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    }
    if (a >= 0x477FF000u) {
        // >= 65520 = halfway between 65504 (odd mantissa) and 2^16: ties-to-even overflows.
        return (uint16_t) (sign | 0x7C00u);
    }
    if (a < 0x38800000u) {
        // Below the smallest normal 2^-14: result is m * 2^-24.
        if (a <= 0x33000000u) {
            return sign;  // <= 2^-25, half the smallest subnormal: ties go to the even zero
        }
        const uint32_t m     = (a & 0x7FFFFFu) | 0x800000u;
        const uint32_t shift = 126 - (a >> 23);  // 14..24
        uint32_t       r     = m >> shift;
        const uint32_t rem   = m & ((1u << shift) - 1);
        const uint32_t half  = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) {
            r++;  // may carry into the smallest normal, which is the right encoding
        }
        return (uint16_t) (sign | r);
    }
    // Normal: rebias 127 -> 15 in place, then round the 13 dropped bits; a carry into the
    // exponent is correct, and overflow to infinity was handled above.
    uint32_t       h   = (a >> 13) - (112u << 10);
    const uint32_t rem = a & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) {
        h++;
    }
    return (uint16_t) (sign | h);
}
