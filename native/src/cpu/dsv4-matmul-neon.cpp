// NEON matmul kernels (AArch64). Baseline ARMv8.0 Advanced SIMD only: no dotprod, no fp16
// arithmetic (vcvt_f32_f16 is baseline on AArch64), no i8mm, so the file needs no -march flag and
// the driver uses it on every AArch64 CPU. On any other architecture this file compiles to nothing.
//
// Float family (F32/F16/BF16/FP8): tiles of OR weight rows x RT activation rows (4 x 4; 4 x 1 for
// decode), one float32x4 accumulator per (weight row, activation row); each 8-wide weight chunk is
// decoded once per tile and used RT times. FP8 uses the same e4m3 -> f16 bit trick as the x86
// kernels: byte b becomes the f16 bits ((b & 0x80) << 8) | ((b & 0x7F) << 7), whose value is
// e4m3(b) * 2^-8 exactly; the 2^8 and the 128x128 block scale are folded into a rescaled copy of
// the activations made once per 128-row output block.
//
// Q8_0/MXFP4 with float activations (params.float_activations): the float-family tiles over
// 32-weight blocks, each decoded exactly to 8 float32x4: Q8_0 int8 -> int32 -> f32 times d;
// MXFP4 a vqtbl1q_s8 lookup of the doubled E2M1 values, widened to f32, times 2^(e-128).
//
// Integer family (Q8_0/MXFP4 x 8-bit activations): per 32-block, vmull_s8 + vmlal_high_s8 (two
// products per int16 lane: |w * x| <= 128 * 127, so a pair never overflows int16), vpadalq_s16 to
// int32, then one FMA with d_w * d_x per block.
#if defined(__aarch64__)

#include "cpu/dsv4-matmul-impl.h"

#include <arm_neon.h>
#include <math.h>

namespace {

enum { T_F32, T_F16, T_BF16, T_FP8, T_Q8_0_FX, T_MXFP4_FX };

// Register tiles (32 vector registers): accumulators OR * RT plus weights and activations.
constexpr int k_float_or = 4, k_float_rt = 4;
constexpr int k_int_or = 2, k_int_rt = 4;

constexpr uintptr_t k_pf_float = 32768;
constexpr uintptr_t k_pf_int = 16384;

inline void prefetch_ahead(const uint8_t * p, uintptr_t dist, const uint8_t * lim) {
    const uintptr_t a = (uintptr_t) p + dist;
    __builtin_prefetch((const void *) (a < (uintptr_t) lim ? a : (uintptr_t) lim), 0, 2);
}

// 8 weights of a row starting at column k, as two float32x4 (FP8: times 2^-8).
template <int T>
inline void load8(const uint8_t * row, int64_t k, float32x4_t * lo, float32x4_t * hi) {
    if constexpr (T == T_F32) {
        *lo = vld1q_f32((const float *) row + k);
        *hi = vld1q_f32((const float *) row + k + 4);
    } else if constexpr (T == T_F16) {
        const uint16x8_t h = vld1q_u16((const uint16_t *) (row + 2 * k));
        *lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
        *hi = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
    } else if constexpr (T == T_BF16) {
        const uint16x8_t h = vld1q_u16((const uint16_t *) (row + 2 * k));
        *lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
        *hi = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
    } else {
        // sign-extend to 16 bits and shift by 7: bit 15 = sign, bits 7..14 = b; clear bit 14
        const int16x8_t b = vmovl_s8(vld1_s8((const int8_t *) (row + k)));
        const uint16x8_t h = vandq_u16(vreinterpretq_u16_s16(vshlq_n_s16(b, 7)), vdupq_n_u16(0xBF80));
        *lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
        *hi = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
    }
}

template <int T>
inline float load1(const uint8_t * row, int64_t k) {
    if constexpr (T == T_F32) {
        float v;
        memcpy(&v, row + 4 * k, 4);
        return v;
    } else if constexpr (T == T_F16 || T == T_BF16) {
        uint16_t h;
        memcpy(&h, row + 2 * k, 2);
        return T == T_F16 ? dsv4_mm_f16_to_f32(h) : dsv4_mm_bf16_to_f32(h);
    } else {
        return dsv4_mm_e4m3_to_f32(row[k]) * 0.00390625f;
    }
}

template <int T, int OR, int RT>
inline void tile_float(const uint8_t * const * w, const float * const * x, int64_t n, float * out,
                       const uint8_t * pf_lim) {
    float32x4_t acc[OR][RT];
    for (int i = 0; i < OR; i++) {
        for (int r = 0; r < RT; r++) {
            acc[i][r] = vdupq_n_f32(0.0f);
        }
    }
    int64_t k = 0;
    constexpr int bpe = T == T_F32 ? 4 : T == T_FP8 ? 1 : 2;  // bytes per weight
    for (; k + 8 <= n; k += 8) {
        if (((k * bpe) & 63) == 0) {
            for (int i = 0; i < OR; i++) {
                prefetch_ahead(w[i] + k * bpe, k_pf_float, pf_lim);
            }
        }
        for (int i = 0; i < OR; i++) {
            float32x4_t wl, wh;
            load8<T>(w[i], k, &wl, &wh);
            for (int r = 0; r < RT; r++) {
                acc[i][r] = vfmaq_f32(acc[i][r], wl, vld1q_f32(x[r] + k));
                acc[i][r] = vfmaq_f32(acc[i][r], wh, vld1q_f32(x[r] + k + 4));
            }
        }
    }
    float tail[OR][RT] = {};
    for (; k < n; k++) {
        for (int i = 0; i < OR; i++) {
            const float wk = load1<T>(w[i], k);
            for (int r = 0; r < RT; r++) {
                tail[i][r] += wk * x[r][k];
            }
        }
    }
    for (int i = 0; i < OR; i++) {
        for (int r = 0; r < RT; r++) {
            out[i * RT + r] = vaddvq_f32(acc[i][r]) + tail[i][r];
        }
    }
}

// One 32-weight Q8_0 / MXFP4 block of a row, decoded exactly to f32: get(v) is columns
// [4 v, 4 v + 4) of the block.
template <int T>
struct fx_block {
    float32x4_t d;
    int8x16_t q[2];  // the 32 int8 values (Q8_0 weights, or doubled E2M1 values) in column order

    inline void load(const uint8_t * row, int64_t b) {
        if constexpr (T == T_Q8_0_FX) {
            const uint8_t * blk = row + b * DSV4_Q8_0_BLOCK_BYTES;
            uint16_t h;
            memcpy(&h, blk, 2);
            d = vdupq_n_f32(dsv4_mm_f16_to_f32(h));
            q[0] = vld1q_s8((const int8_t *) (blk + 2));
            q[1] = vld1q_s8((const int8_t *) (blk + 18));
        } else {
            const uint8_t * blk = row + b * DSV4_MXFP4_BLOCK_BYTES;
            d = vdupq_n_f32(dsv4_mm_e8m0_half_table.v[blk[0]]);
            const int8x16_t lut = vld1q_s8(dsv4_mm_mxfp4_values);
            const uint8x16_t c = vld1q_u8(blk + 1);
            // bytes j: low nibble = column j, high nibble = column j + 16
            q[0] = vqtbl1q_s8(lut, vandq_u8(c, vdupq_n_u8(0x0F)));
            q[1] = vqtbl1q_s8(lut, vshrq_n_u8(c, 4));
        }
    }

    inline float32x4_t get(int v) const {
        const int8x16_t s = q[v >> 2];
        const int16x8_t h = (v & 2) ? vmovl_high_s8(s) : vmovl_s8(vget_low_s8(s));
        const int32x4_t i = (v & 1) ? vmovl_high_s16(h) : vmovl_s16(vget_low_s16(h));
        return vmulq_f32(vcvtq_f32_s32(i), d);
    }
};

template <int T, int OR, int RT>
inline void tile_fx(const uint8_t * const * w, const float * const * x, int64_t n, float * out,
                    const uint8_t * pf_lim) {
    float32x4_t acc[OR][RT];
    for (int i = 0; i < OR; i++) {
        for (int r = 0; r < RT; r++) {
            acc[i][r] = vdupq_n_f32(0.0f);
        }
    }
    constexpr int64_t bb = T == T_Q8_0_FX ? DSV4_Q8_0_BLOCK_BYTES : DSV4_MXFP4_BLOCK_BYTES;
    const int64_t nb = n / 32;
    for (int64_t b = 0; b < nb; b++) {
        if (T == T_Q8_0_FX || (b & 1) == 0) {
            for (int i = 0; i < OR; i++) {
                prefetch_ahead(w[i] + b * bb, k_pf_int, pf_lim);
            }
        }
        for (int i = 0; i < OR; i++) {
            fx_block<T> blk;
            blk.load(w[i], b);
            for (int v = 0; v < 8; v++) {
                const float32x4_t wv = blk.get(v);
                for (int r = 0; r < RT; r++) {
                    acc[i][r] = vfmaq_f32(acc[i][r], wv, vld1q_f32(x[r] + 32 * b + 4 * v));
                }
            }
        }
    }
    for (int i = 0; i < OR; i++) {
        for (int r = 0; r < RT; r++) {
            out[i * RT + r] = vaddvq_f32(acc[i][r]);
        }
    }
}

template <int T, int OR, int RT>
inline void tile(const uint8_t * const * w, const float * const * x, int64_t n, float * out, const uint8_t * pf_lim) {
    if constexpr (T == T_Q8_0_FX || T == T_MXFP4_FX) {
        tile_fx<T, OR, RT>(w, x, n, out, pf_lim);
    } else {
        tile_float<T, OR, RT>(w, x, n, out, pf_lim);
    }
}

template <int T, int OR, int RT>
inline void dispatch_float(int rt, const uint8_t * const * w, const float * const * x, int64_t n, float * out,
                           const uint8_t * pf_lim) {
    if constexpr (RT == 1) {
        tile<T, OR, 1>(w, x, n, out, pf_lim);
    } else {
        if (rt == RT) {
            tile<T, OR, RT>(w, x, n, out, pf_lim);
        } else {
            dispatch_float<T, OR, RT - 1>(rt, w, x, n, out, pf_lim);
        }
    }
}

// Output rows [o, o + OR) against all activation rows (pointers xs[0..n)), RTMAX rows at a time.
template <int T, int OR, int RTMAX>
inline void rows_float(const dsv4_mm_w * w, int64_t o, const dsv4_mm_rows * rows, const float * const * xs,
                       const uint8_t * pf_lim) {
    const uint8_t * wp[OR];
    for (int i = 0; i < OR; i++) {
        wp[i] = w->data + (size_t) (o + i) * w->row_bytes;
    }
    float out[OR * RTMAX];
    for (int64_t r0 = 0; r0 < rows->n; r0 += RTMAX) {
        const int64_t left = rows->n - r0;
        const int rt = left < RTMAX ? (int) left : RTMAX;
        dispatch_float<T, OR, RTMAX>(rt, wp, xs + r0, w->n_in, out, pf_lim);
        for (int r = 0; r < rt; r++) {
            float * y = dsv4_mm_y_row(rows, r0 + r);
            for (int i = 0; i < OR; i++) {
                y[o + i] = out[i * rt + r];
            }
        }
    }
}

// x'[k] = x[k] * scale[k / 128] * 256 for one activation row (FP8).
inline void rescale_row(const float * x, const float * sc, int64_t n, float * dst) {
    for (int64_t k0 = 0; k0 < n; k0 += 128) {
        const float f = sc[k0 / 128] * 256.0f;
        const int64_t k1 = k0 + 128 < n ? k0 + 128 : n;
        int64_t k = k0;
        for (; k + 4 <= k1; k += 4) {
            vst1q_f32(dst + k, vmulq_n_f32(vld1q_f32(x + k), f));
        }
        for (; k < k1; k++) {
            dst[k] = x[k] * f;
        }
    }
}

template <int T>
void mm_float(const dsv4_mm_w * w, int64_t o0, int64_t o1, const dsv4_mm_rows * rows, void * tmp) {
    const int64_t R = rows->n;
    const int64_t pad = dsv4_mm_pad16(w->n_in);
    // row pointers: FP8 -> rescaled copies in tmp (after the pointer array), else the inputs
    const float ** xs = (const float **) tmp;
    float * xbuf = (float *) ((uint8_t *) tmp + dsv4_mm_tmp_ptr_bytes(R));
    if constexpr (T != T_FP8) {
        for (int64_t i = 0; i < R; i++) {
            xs[i] = dsv4_mm_x_row(rows, i);
        }
    }
    const uint8_t * pf_lim = w->data + (size_t) o1 * w->row_bytes - 1;  // prefetch no further
    for (int64_t s0 = o0; s0 < o1;) {
        int64_t s1 = o1;
        if constexpr (T == T_FP8) {
            const int64_t ob = s0 / 128;
            s1 = (ob + 1) * 128 < o1 ? (ob + 1) * 128 : o1;
            for (int64_t i = 0; i < R; i++) {
                rescale_row(dsv4_mm_x_row(rows, i), w->scale + ob * w->scale_cols, w->n_in, xbuf + i * pad);
                xs[i] = xbuf + i * pad;
            }
        }
        int64_t o = s0;
        if (R == 1) {
            for (; o + 4 <= s1; o += 4) {
                rows_float<T, 4, 1>(w, o, rows, xs, pf_lim);
            }
        } else {
            for (; o + k_float_or <= s1; o += k_float_or) {
                rows_float<T, k_float_or, k_float_rt>(w, o, rows, xs, pf_lim);
            }
        }
        for (; o < s1; o++) {
            rows_float<T, 1, k_float_rt>(w, o, rows, xs, pf_lim);
        }
        s0 = s1;
    }
}

// ---- integer family ----

enum { T_Q8_0, T_MXFP4 };

// One weight block b of a row: 32 int8 values (column order) and the block scale.
template <int T>
inline void load_block(const uint8_t * row, int64_t b, float * d, int8x16_t * w0, int8x16_t * w1) {
    if constexpr (T == T_Q8_0) {
        const uint8_t * blk = row + b * DSV4_Q8_0_BLOCK_BYTES;
        uint16_t h;
        memcpy(&h, blk, 2);
        *d = dsv4_mm_f16_to_f32(h);
        *w0 = vld1q_s8((const int8_t *) (blk + 2));
        *w1 = vld1q_s8((const int8_t *) (blk + 18));
    } else {
        const uint8_t * blk = row + b * DSV4_MXFP4_BLOCK_BYTES;
        *d = dsv4_mm_e8m0_half_table.v[blk[0]];
        const int8x16_t lut = vld1q_s8(dsv4_mm_mxfp4_values);
        const uint8x16_t c = vld1q_u8(blk + 1);
        *w0 = vqtbl1q_s8(lut, vandq_u8(c, vdupq_n_u8(0x0F)));
        *w1 = vqtbl1q_s8(lut, vshrq_n_u8(c, 4));
    }
}

// Exact int32 partial sums (4 lanes) of the 32-element dot of w with x.
inline int32x4_t dot32(int8x16_t w0, int8x16_t w1, const int8_t * x) {
    const int8x16_t x0 = vld1q_s8(x);
    const int8x16_t x1 = vld1q_s8(x + 16);
    int16x8_t p0 = vmull_s8(vget_low_s8(w0), vget_low_s8(x0));
    p0 = vmlal_high_s8(p0, w0, x0);
    int16x8_t p1 = vmull_s8(vget_low_s8(w1), vget_low_s8(x1));
    p1 = vmlal_high_s8(p1, w1, x1);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
}

template <int T, int OR, int RT>
inline void tile_int(const uint8_t * const * w, const uint8_t * const * xq, int64_t n, float * out,
                     const uint8_t * pf_lim) {
    const int64_t nb = n / 32;
    const float * xd[RT];
    for (int r = 0; r < RT; r++) {
        xd[r] = (const float *) (xq[r] + n);
    }
    float32x4_t acc[OR][RT];
    for (int i = 0; i < OR; i++) {
        for (int r = 0; r < RT; r++) {
            acc[i][r] = vdupq_n_f32(0.0f);
        }
    }
    constexpr int64_t bb = T == T_Q8_0 ? DSV4_Q8_0_BLOCK_BYTES : DSV4_MXFP4_BLOCK_BYTES;
    for (int64_t b = 0; b < nb; b++) {
        if (T == T_Q8_0 || (b & 1) == 0) {
            for (int i = 0; i < OR; i++) {
                prefetch_ahead(w[i] + b * bb, k_pf_int, pf_lim);
            }
        }
        for (int i = 0; i < OR; i++) {
            float dw;
            int8x16_t w0, w1;
            load_block<T>(w[i], b, &dw, &w0, &w1);
            for (int r = 0; r < RT; r++) {
                const int32x4_t s = dot32(w0, w1, (const int8_t *) (xq[r] + 32 * b));
                acc[i][r] = vfmaq_n_f32(acc[i][r], vcvtq_f32_s32(s), dw * xd[r][b]);
            }
        }
    }
    for (int i = 0; i < OR; i++) {
        for (int r = 0; r < RT; r++) {
            out[i * RT + r] = vaddvq_f32(acc[i][r]);
        }
    }
}

template <int T, int OR, int RT>
inline void dispatch_int(int rt, const uint8_t * const * w, const uint8_t * const * x, int64_t n, float * out,
                         const uint8_t * pf_lim) {
    if constexpr (RT == 1) {
        tile_int<T, OR, 1>(w, x, n, out, pf_lim);
    } else {
        if (rt == RT) {
            tile_int<T, OR, RT>(w, x, n, out, pf_lim);
        } else {
            dispatch_int<T, OR, RT - 1>(rt, w, x, n, out, pf_lim);
        }
    }
}

template <int T, int OR, int RTMAX>
inline void rows_int(const dsv4_mm_w * w, int64_t o, const dsv4_mm_rows * rows, const uint8_t * const * xs,
                     const uint8_t * pf_lim) {
    const uint8_t * wp[OR];
    for (int i = 0; i < OR; i++) {
        wp[i] = w->data + (size_t) (o + i) * w->row_bytes;
    }
    float out[OR * RTMAX];
    for (int64_t r0 = 0; r0 < rows->n; r0 += RTMAX) {
        const int64_t left = rows->n - r0;
        const int rt = left < RTMAX ? (int) left : RTMAX;
        dispatch_int<T, OR, RTMAX>(rt, wp, xs + r0, w->n_in, out, pf_lim);
        for (int r = 0; r < rt; r++) {
            float * y = dsv4_mm_y_row(rows, r0 + r);
            for (int i = 0; i < OR; i++) {
                y[o + i] = out[i * rt + r];
            }
        }
    }
}

template <int T>
void mm_int(const dsv4_mm_w * w, int64_t o0, int64_t o1, const dsv4_mm_rows * rows, void * tmp) {
    const uint8_t ** xs = (const uint8_t **) tmp;
    for (int64_t i = 0; i < rows->n; i++) {
        xs[i] = dsv4_mm_xq_row(rows, i);
    }
    const uint8_t * pf_lim = w->data + (size_t) o1 * w->row_bytes - 1;  // prefetch no further
    int64_t o = o0;
    if (rows->n == 1) {
        for (; o + 4 <= o1; o += 4) {
            rows_int<T, 4, 1>(w, o, rows, xs, pf_lim);
        }
    } else {
        for (; o + k_int_or <= o1; o += k_int_or) {
            rows_int<T, k_int_or, k_int_rt>(w, o, rows, xs, pf_lim);
        }
    }
    for (; o < o1; o++) {
        rows_int<T, 1, k_int_rt>(w, o, rows, xs, pf_lim);
    }
}

// Same arithmetic as the scalar quantize (max|x| / 127, 1 / d, nearest-even via FCVTNS, clamp to
// [-127, 127]), so bit-identical for finite inputs.
void quantize_row(const float * x, int64_t n, uint8_t * dst, int32_t bias) {
    const int64_t nb = n / 32;
    float * d = (float *) (dst + n);
    float * d8 = d + nb;
    int32_t * corr = (int32_t *) (dst + n + nb * 36);
    const int32x4_t lo = vdupq_n_s32(-127);
    const int32x4_t hi = vdupq_n_s32(127);
    for (int64_t b = 0; b < nb; b++) {
        const float * xb = x + 32 * b;
        float32x4_t v[8];
        for (int j = 0; j < 8; j++) {
            v[j] = vld1q_f32(xb + 4 * j);
        }
        float32x4_t m = vabsq_f32(v[0]);
        for (int j = 1; j < 8; j++) {
            m = vmaxq_f32(m, vabsq_f32(v[j]));
        }
        const float amax = vmaxvq_f32(m);
        const float dv = amax / 127.0f;
        const float id = dv != 0.0f ? 1.0f / dv : 0.0f;
        int16x8_t h[4];
        for (int j = 0; j < 4; j++) {
            int32x4_t a = vcvtnq_s32_f32(vmulq_n_f32(v[2 * j], id));
            int32x4_t c = vcvtnq_s32_f32(vmulq_n_f32(v[2 * j + 1], id));
            a = vminq_s32(vmaxq_s32(a, lo), hi);
            c = vminq_s32(vmaxq_s32(c, lo), hi);
            h[j] = vcombine_s16(vmovn_s32(a), vmovn_s32(c));
        }
        const int8x16_t q0 = vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1]));
        const int8x16_t q1 = vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3]));
        vst1q_s8((int8_t *) (dst + 32 * b), q0);
        vst1q_s8((int8_t *) (dst + 32 * b + 16), q1);
        d[b] = dv;
        const float32x4_t dvv = vdupq_n_f32(dv);
        vst1q_f32(d8 + 8 * b, dvv);
        vst1q_f32(d8 + 8 * b + 4, dvv);
        // sums of 4 consecutive q, times -bias
        const int32x4_t s0 = vpaddlq_s16(vpaddlq_s8(q0));
        const int32x4_t s1 = vpaddlq_s16(vpaddlq_s8(q1));
        vst1q_s32(corr + 8 * b, vmulq_n_s32(s0, -bias));
        vst1q_s32(corr + 8 * b + 4, vmulq_n_s32(s1, -bias));
    }
}

}  // namespace

extern const dsv4_mm_isa_kernels dsv4_mm_kernels_neon = {
    mm_float<T_F32>,
    mm_float<T_F16>,
    mm_float<T_BF16>,
    mm_float<T_FP8>,
    mm_int<T_Q8_0>,
    mm_int<T_MXFP4>,
    quantize_row,
    mm_float<T_Q8_0_FX>,
    mm_float<T_MXFP4_FX>,
    nullptr,  // no packed-MXFP4 kernel
    nullptr,  // bf16 rounding: the driver's loop
};

#endif  // __aarch64__
