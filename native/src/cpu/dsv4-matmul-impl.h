// Internal interface between the matmul driver (dsv4-matmul.cpp) and the per-ISA kernels
// (dsv4-matmul-scalar.cpp, -avx2.cpp, -avx512.cpp, -neon.cpp).
//
// This header is included by translation units compiled for different instruction sets, so it
// holds only declarations, POD structs and `static inline` helpers (internal linkage: each TU
// gets its own copy, and no inline function compiled with AVX-512 can be picked by the linker for
// a caller on a CPU without it).
#pragma once

#include "cpu/dsv4-matmul.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

// One matrix (one expert).
struct dsv4_mm_w {
    dsv4_type       type;
    int64_t         n_out;
    int64_t         n_in;
    const uint8_t * data;        // row o at data + o * row_bytes
    size_t          row_bytes;
    const float *   scale;       // FP8: [ceil(n_out / 128)][scale_cols]
    int64_t         scale_cols;  // ceil(n_in / 128)
    const uint8_t * packed;      // this expert in the packed layout of its type (dsv4_weight_pack), or NULL
};

// A set of activation rows and where their outputs go. Row i reads x (or xq) row
// x_idx ? x_idx[i] : i and writes y row y_idx ? y_idx[i] : i.
struct dsv4_mm_rows {
    int64_t         n;
    const float *   x;
    int64_t         x_stride;    // floats
    const uint8_t * xq;          // quantized activations (Q8_0 / MXFP4 paths), see below
    int64_t         xq_stride;   // bytes
    const int32_t * x_idx;
    float *         y;
    int64_t         y_stride;    // floats
    const int32_t * y_idx;
};

// Computes y for output rows [o0, o1) of w and all rows. tmp: per-thread scratch of
// dsv4_mm_tmp_bytes(w->type, w->n_in, rows->n) bytes, 64-byte aligned.
typedef void (*dsv4_mm_kernel)(const struct dsv4_mm_w * w, int64_t o0, int64_t o1,
                               const struct dsv4_mm_rows * rows, void * tmp);

// Quantizes one activation row of n (a multiple of 32) floats into the layout below. bias: the
// offset the integer kernels add to the weights to make them unsigned (see the layout's corr).
typedef void (*dsv4_mm_quantize)(const float * x, int64_t n, uint8_t * dst, int32_t bias);

// q8_0 / mxfp4 read the quantized activations (rows->xq); q8_0_fx / mxfp4_fx are the
// float-activation variants (params.float_activations): they read the f32 rows like the float
// types and decode the weights to f32.
// mxfp4_packed (NULL where an ISA has none) reads w->packed instead of w->data. round (NULL: the
// driver's scalar loop) rounds an activation row to bf16 values, dsv4_mm_round_bf16 per element.
struct dsv4_mm_isa_kernels {
    dsv4_mm_kernel   f32, f16, bf16, fp8, q8_0, mxfp4;
    dsv4_mm_quantize quantize;
    dsv4_mm_kernel   q8_0_fx, mxfp4_fx;
    dsv4_mm_kernel   mxfp4_packed;
    dsv4_mm_quantize round;
};

extern const struct dsv4_mm_isa_kernels dsv4_mm_kernels_scalar;
#if defined(__x86_64__)
extern const struct dsv4_mm_isa_kernels dsv4_mm_kernels_avx2;
extern const struct dsv4_mm_isa_kernels dsv4_mm_kernels_avx512;
#endif

// FP8 / BF16 weights with bf16 activations (the default mode): native bf16 dot-product kernels
// where the CPU has them (x86-64 AVX512_BF16 + AVX512_VBMI, dsv4-matmul-avx512bf16.cpp). Their
// rows arrive already rounded (dsv4_mm_round_bf16); ISAs without such kernels run their f32
// kernels on the same rounded rows, which is the same arithmetic up to summation order.
struct dsv4_mm_bf16x_kernels {
    dsv4_mm_kernel fp8, bf16;
};
#if defined(__x86_64__)
extern const struct dsv4_mm_bf16x_kernels dsv4_mm_kernels_avx512bf16;
#endif
#if defined(__aarch64__)
extern const struct dsv4_mm_isa_kernels dsv4_mm_kernels_neon;
#endif

// Quantized activation row (n_in a multiple of 32, nb = n_in / 32 blocks), identical in every ISA:
//   bytes [0, n_in)             q: int8 in [-127, 127], q = nearest-even(x * (1 / d))
//   floats at n_in              d[nb]: block scales, x ~= d * q, d = max|x| / 127
//   floats at n_in + 4 nb       d8[nb * 8]: each d repeated 8 times (one per int32 lane of a block)
//   int32 at n_in + 36 nb       corr[n_in / 4]: -bias * (q[4i] + q[4i+1] + q[4i+2] + q[4i+3])
//   int32 at 2 n_in + 36 nb     corr32[nb]: -bias * (sum of block b's 32 q) (dsv4_mm_xq_finish)
// corr lets a kernel use unsigned weights w + bias (vpdpbusd multiplies u8 by s8): the dot of 4
// (w + bias) with 4 q, started from corr, is exactly the dot of w with q; corr32 is the same for a
// whole block (the packed MXFP4 kernel).
static inline size_t dsv4_mm_xq_row_bytes(int64_t n_in) {
    const size_t nb = (size_t) n_in / 32;
    return ((size_t) n_in * 2 + nb * 40 + 63) & ~(size_t) 63;
}

static inline const int32_t * dsv4_mm_xq_corr(const uint8_t * xq, int64_t n_in) {
    return (const int32_t *) (xq + n_in + (n_in / 32) * 36);
}

static inline const int32_t * dsv4_mm_xq_corr32(const uint8_t * xq, int64_t n_in) {
    return (const int32_t *) (xq + 2 * n_in + (n_in / 32) * 36);
}

// Fills corr32 from corr (ISA-independent; the driver runs it after each quantize).
static inline void dsv4_mm_xq_finish(uint8_t * xq, int64_t n_in) {
    const int32_t * corr = dsv4_mm_xq_corr(xq, n_in);
    int32_t * corr32 = (int32_t *) dsv4_mm_xq_corr32(xq, n_in);
    for (int64_t b = 0; b < n_in / 32; b++) {
        int32_t s = 0;
        for (int j = 0; j < 8; j++) {
            s += corr[8 * b + j];
        }
        corr32[b] = s;
    }
}

// Bytes of one 16-row group of packed MXFP4 (dsv4-matmul.h) with n_in columns.
static inline size_t dsv4_mm_mxfp4_group_bytes(int64_t n_in) {
    const size_t nb = (size_t) n_in / 32;
    return (nb + 3) / 4 * 64 + nb * 256;
}

// Prefetches (into L2, like the kernels' running prefetch) the first `bytes` of a call's weight
// stream, clamped to lim: the running prefetch starts that far ahead, so without this the head of
// every call would arrive one demand miss at a time (many calls stream only a few hundred KB).
static inline void dsv4_mm_prefetch_head(const uint8_t * head, size_t bytes, const uint8_t * lim) {
    for (size_t off = 0; off < bytes && head + off <= lim; off += 64) {
        __builtin_prefetch(head + off, 0, 2);
    }
}

static inline int64_t dsv4_mm_pad16(int64_t n) {
    return (n + 15) & ~(int64_t) 15;
}

// Per-thread scratch: a table of n_rows row pointers, then for FP8 the rescaled activations
// (x * scale * 256 per 128-column block) of every row plus one decoded weight row, for the other
// types one decoded weight row (the scalar kernels' f32 row, or int8 values + block scales).
static inline size_t dsv4_mm_tmp_ptr_bytes(int64_t n_rows) {
    return (size_t) dsv4_mm_pad16(2 * n_rows) * sizeof(float);
}

// FP8 / BF16 with bf16 activations: n_rows bf16 rows of n_in padded to 64, plus a strip of
// DSV4_MM_BF16X_STRIP decoded bf16 weight rows (the AVX512_BF16 kernels).
#define DSV4_MM_BF16X_STRIP 4

static inline size_t dsv4_mm_tmp_bytes(dsv4_type type, int64_t n_in, int64_t n_rows) {
    const size_t row = (size_t) dsv4_mm_pad16(n_in) * sizeof(float);
    const size_t n = type == DSV4_TYPE_FP8_E4M3 ? (size_t) n_rows + 1 : 1;
    size_t bytes = dsv4_mm_tmp_ptr_bytes(n_rows) + n * row;
    if (type == DSV4_TYPE_FP8_E4M3 || type == DSV4_TYPE_BF16) {
        const size_t row16 = (size_t) ((n_in + 63) & ~(int64_t) 63) * sizeof(uint16_t);
        const size_t bx = dsv4_mm_tmp_ptr_bytes(n_rows) + ((size_t) n_rows + DSV4_MM_BF16X_STRIP) * row16;
        bytes = bx > bytes ? bx : bytes;
    }
    return (bytes + 63) & ~(size_t) 63;
}


static inline const float * dsv4_mm_x_row(const struct dsv4_mm_rows * rows, int64_t i) {
    const int64_t r = rows->x_idx ? rows->x_idx[i] : i;
    return rows->x + r * rows->x_stride;
}

static inline const uint8_t * dsv4_mm_xq_row(const struct dsv4_mm_rows * rows, int64_t i) {
    const int64_t r = rows->x_idx ? rows->x_idx[i] : i;
    return rows->xq + r * rows->xq_stride;
}

static inline float * dsv4_mm_y_row(const struct dsv4_mm_rows * rows, int64_t i) {
    const int64_t r = rows->y_idx ? rows->y_idx[i] : i;
    return rows->y + r * rows->y_stride;
}

// ---- scalar decoders (bit manipulation only; the kernels' tails and the scalar path) ----

static inline float dsv4_mm_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline float dsv4_mm_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F;
    const uint32_t man = h & 0x3FF;
    if (exp == 0) {
        // zero or subnormal: man * 2^-24, exact in f32
        const float v = (float) man * 5.9604644775390625e-8f;
        uint32_t u;
        memcpy(&u, &v, sizeof(u));
        return dsv4_mm_bits_f32(sign | u);
    }
    if (exp == 31) {
        return dsv4_mm_bits_f32(sign | 0x7F800000u | (man << 13));
    }
    return dsv4_mm_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline float dsv4_mm_bf16_to_f32(uint16_t h) {
    return dsv4_mm_bits_f32((uint32_t) h << 16);
}

// x rounded to the nearest bf16 (ties to even), as f32; NaN stays NaN, overflow gives inf like
// any round-to-nearest. Every ISA (and vcvtneps2bf16) rounds the same way.
static inline float dsv4_mm_round_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof(u));
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        u |= 0x00400000u;  // quiet NaN, payload kept in the top bits
    } else {
        u += 0x7FFFu + ((u >> 16) & 1u);
    }
    return dsv4_mm_bits_f32(u & 0xFFFF0000u);
}

// e4m3fn (bias 7, subnormals, no inf). NaN bytes (0x7F, 0xFF) are rejected at load; here they
// decode to 480 like a normal number would.
static inline float dsv4_mm_e4m3_to_f32(uint8_t b) {
    const uint32_t sign = (uint32_t) (b & 0x80) << 24;
    const uint32_t exp = (b >> 3) & 0xF;
    const uint32_t man = b & 0x7;
    if (exp == 0) {
        const float v = (float) man * 0.001953125f;  // man/8 * 2^-6
        uint32_t u;
        memcpy(&u, &v, sizeof(u));
        return dsv4_mm_bits_f32(sign | u);
    }
    return dsv4_mm_bits_f32(sign | ((exp + 120) << 23) | (man << 20));
}

// MXFP4 block scale as ggml applies it to the doubled E2M1 codes: 2^(e - 128), exact in f32
// (e = 0, 1 give the subnormals 2^-128, 2^-127).
static inline float dsv4_mm_e8m0_half(uint8_t e) {
    return dsv4_mm_bits_f32(e < 2 ? (0x00200000u << e) : ((uint32_t) (e - 1) << 23));
}

// The same as a table (a load instead of bit manipulation in the kernels' inner loops); built at
// compile time by exact halving/doubling, equal to dsv4_mm_e8m0_half (the tests check it).
struct dsv4_mm_f32_table256 {
    float v[256];
};

constexpr dsv4_mm_f32_table256 dsv4_mm_make_e8m0_half_table() {
    dsv4_mm_f32_table256 t{};
    for (int e = 0; e < 256; e++) {
        float v = 1.0f;
        for (int p = e - 128; p > 0; p--) {
            v *= 2.0f;
        }
        for (int p = e - 128; p < 0; p++) {
            v *= 0.5f;
        }
        t.v[e] = v;
    }
    return t;
}

static constexpr dsv4_mm_f32_table256 dsv4_mm_e8m0_half_table = dsv4_mm_make_e8m0_half_table();

// Doubled E2M1 values of the 16 MXFP4 codes, and the same plus 12 (unsigned, for vpdpbusd).
static const int8_t dsv4_mm_mxfp4_values[16] = { 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12 };
static const uint8_t dsv4_mm_mxfp4_values_u[16] = { 12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0 };
#define DSV4_MM_MXFP4_BIAS 12
#define DSV4_MM_Q8_0_BIAS  128

