// AVX-512 (F, BW, VL, VNNI) matmul kernels (x86-64), compiled for that target through the pragma
// below and called only when __builtin_cpu_supports reports every feature.
//
// Float family: as in the AVX2 file with 16-wide vectors and masked loads for the tail columns
// (so no scalar tail), in register tiles of 4 weight rows x up to 6 activation rows (24
// accumulators: 4 weight rows per x load keep the loads per FMA low; measured ~2x over 2 x 6).
//
// Q8_0/MXFP4 with float activations (params.float_activations): the float-family tiles over
// 32-weight blocks, each decoded exactly to 2 f32 vectors: Q8_0 int8 -> int32 -> f32 times d;
// MXFP4 one vpermps of the 16 doubled-E2M1 values (pre-multiplied by the block scale 2^(e-128),
// once per block) indexed by the low nibbles, one by the high nibbles.
//
// Integer family: vpdpbusd (u8 x s8 -> int32, no intermediate saturation) over two 32-blocks per
// 512-bit step. The weights are made unsigned (Q8_0: w + 128 by flipping the top bit; MXFP4: a
// look-up table of the doubled E2M1 values plus 12); dot(w + bias, q) = dot(w, q) + bias * sum(q),
// and the activation side stores -bias * sum(q) per 4 values (computed once per row at
// quantization), which is the accumulator each dot starts from. Per row and step: vpdpbusd,
// convert, x d_x, FMA with d_w.
#if defined(__x86_64__)

#include "cpu/dsv4-matmul-impl.h"

#include <immintrin.h>
#include <math.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
// GCC 12 flags the self-initialised placeholder inside _mm512_undefined_*() once inlined here.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace {

// T_Q8_0_FX, T_MXFP4_FX: Q8_0 / MXFP4 weights with float activations (block-wise decode).
enum { T_F32, T_F16, T_BF16, T_FP8, T_Q8_0_FX, T_MXFP4_FX };

// Register tiles: weight rows x activation rows per tile (accumulators = product).
constexpr int k_float_or = 4, k_float_rt = 6;  // 24 accumulators of 32 registers
constexpr int k_fx_or = 4, k_fx_rt = 6;        // Q8_0, MXFP4 with float activations
constexpr int k_int_or = 4, k_int_rt = 3;  // 12 accumulators + 9 activation-side registers

// 16 weights from column k (FP8: times 2^-8); m selects the columns that exist.
template <int T>
inline __m512 load16(const uint8_t * row, int64_t k, __mmask16 m) {
    if constexpr (T == T_F32) {
        return _mm512_maskz_loadu_ps(m, (const float *) row + k);
    } else if constexpr (T == T_F16) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * k));
    } else if constexpr (T == T_BF16) {
        const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row + 2 * k));
        return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
    } else {
        // sign-extend to 16 bits and shift by 7: bit 15 = sign, bits 7..14 = b; clear bit 14
        const __m256i b = _mm256_cvtepi8_epi16(_mm_maskz_loadu_epi8(m, row + k));
        const __m256i h = _mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi16((short) 0xBF80));
        return _mm512_cvtph_ps(h);
    }
}

template <int T>
inline __m512 load16(const uint8_t * row, int64_t k) {
    if constexpr (T == T_F32) {
        return _mm512_loadu_ps((const float *) row + k);
    } else if constexpr (T == T_F16) {
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (row + 2 * k)));
    } else if constexpr (T == T_BF16) {
        const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) (row + 2 * k)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
    } else {
        const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) (row + k)));
        const __m256i h = _mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi16((short) 0xBF80));
        return _mm512_cvtph_ps(h);
    }
}

// Software prefetch into L2, a fixed distance ahead in each weight-row stream, clamped to this
// call's last weight byte so no bandwidth goes to rows another thread (or nobody) reads. The
// hardware prefetchers alone leave these interleaved streams short of data: measured on Zen 4,
// 64 MB matrices, 1 thread: MXFP4 decode 6-7 -> 11-13 GB/s, Q8_0 9-11 -> 15-17, FP8 10 -> 13.
constexpr uintptr_t k_pf_float = 32768;
constexpr uintptr_t k_pf_int = 16384;

inline void prefetch_ahead(const uint8_t * p, uintptr_t dist, const uint8_t * lim) {
    const uintptr_t a = (uintptr_t) p + dist;
    _mm_prefetch((const char *) (a < (uintptr_t) lim ? a : (uintptr_t) lim), _MM_HINT_T1);
}

template <int T, int OR, int RT>
inline void tile_float(const uint8_t * const * w, const float * const * x, int64_t n, float * out,
                       const uint8_t * pf_lim) {
    __m512 acc[OR][RT];
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            acc[i][r] = _mm512_setzero_ps();
        }
    }
    int64_t k = 0;
    constexpr int bpe = T == T_F32 ? 4 : T == T_FP8 ? 1 : 2;  // bytes per weight
    for (; k + 16 <= n; k += 16) {
        if (((k * bpe) & 63) == 0) {
#pragma GCC unroll 8
            for (int i = 0; i < OR; i++) {
                prefetch_ahead(w[i] + k * bpe, k_pf_float, pf_lim);
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            const __m512 wv = load16<T>(w[i], k);
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                acc[i][r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x[r] + k), acc[i][r]);
            }
        }
    }
    if (k < n) {
        const __mmask16 m = (__mmask16) ((1u << (n - k)) - 1);
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            const __m512 wv = load16<T>(w[i], k, m);
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                acc[i][r] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x[r] + k), acc[i][r]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            out[i * RT + r] = _mm512_reduce_add_ps(acc[i][r]);
        }
    }
}

// Doubled E2M1 values of the 16 MXFP4 codes as f32.
alignas(64) const float k_mxfp4_values_f32[16] = { 0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 6.0f, 8.0f, 12.0f,
                                                   -0.0f, -1.0f, -2.0f, -3.0f, -4.0f, -6.0f, -8.0f, -12.0f };

// One 32-weight Q8_0 / MXFP4 block of a row, decoded exactly to f32: get(v) is columns
// [16 v, 16 v + 16) of the block.
template <int T>
struct fx_block {
    __m512 s;         // Q8_0: d in every lane; MXFP4: k_mxfp4_values_f32 * 2^(e - 128)
    const uint8_t * q;

    inline void load(const uint8_t * row, int64_t b) {
        if constexpr (T == T_Q8_0_FX) {
            const uint8_t * blk = row + b * DSV4_Q8_0_BLOCK_BYTES;
            uint16_t h;
            memcpy(&h, blk, 2);
            s = _mm512_set1_ps(_cvtsh_ss(h));
            q = blk + 2;
        } else {
            const uint8_t * blk = row + b * DSV4_MXFP4_BLOCK_BYTES;
            s = _mm512_mul_ps(_mm512_load_ps(k_mxfp4_values_f32), _mm512_set1_ps(dsv4_mm_e8m0_half_table.v[blk[0]]));
            q = blk + 1;
        }
    }

    inline __m512 get(int v) const {
        if constexpr (T == T_Q8_0_FX) {
            const __m512i i = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (q + 16 * v)));
            return _mm512_mul_ps(_mm512_cvtepi32_ps(i), s);
        } else {
            // byte j: low nibble = column j, high nibble = column j + 16; vpermps reads bits 0-3
            __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) q));
            if (v == 1) {
                c = _mm512_srli_epi32(c, 4);
            }
            return _mm512_permutexvar_ps(c, s);
        }
    }
};

template <int T, int OR, int RT>
inline void tile_fx(const uint8_t * const * w, const float * const * x, int64_t n, float * out,
                    const uint8_t * pf_lim) {
    __m512 acc[OR][RT];
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            acc[i][r] = _mm512_setzero_ps();
        }
    }
    constexpr int64_t bb = T == T_Q8_0_FX ? DSV4_Q8_0_BLOCK_BYTES : DSV4_MXFP4_BLOCK_BYTES;
    const int64_t nb = n / 32;
    for (int64_t b = 0; b < nb; b++) {
        if (T == T_Q8_0_FX || (b & 1) == 0) {  // about one prefetch per 64 bytes of each row
#pragma GCC unroll 8
            for (int i = 0; i < OR; i++) {
                prefetch_ahead(w[i] + b * bb, k_pf_int, pf_lim);
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            fx_block<T> blk;
            blk.load(w[i], b);
#pragma GCC unroll 2
            for (int v = 0; v < 2; v++) {
                const __m512 wv = blk.get(v);
#pragma GCC unroll 8
                for (int r = 0; r < RT; r++) {
                    acc[i][r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x[r] + 32 * b + 16 * v), acc[i][r]);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            out[i * RT + r] = _mm512_reduce_add_ps(acc[i][r]);
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
        const __m512 fv = _mm512_set1_ps(sc[k0 / 128] * 256.0f);
        const int64_t k1 = k0 + 128 < n ? k0 + 128 : n;
        for (int64_t k = k0; k < k1; k += 16) {
            const __mmask16 m = k1 - k >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << (k1 - k)) - 1);
            _mm512_mask_storeu_ps(dst + k, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + k), fv));
        }
    }
}

template <int T>
void mm_float(const dsv4_mm_w * w, int64_t o0, int64_t o1, const dsv4_mm_rows * rows, void * tmp) {
    const int64_t R = rows->n;
    const int64_t pad = dsv4_mm_pad16(w->n_in);
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
        if (R == 1) {  // decode: 4 weight rows for 4 independent accumulator chains
            for (; o + 4 <= s1; o += 4) {
                rows_float<T, 4, 1>(w, o, rows, xs, pf_lim);
            }
        } else {
            constexpr bool fx = T == T_Q8_0_FX || T == T_MXFP4_FX;
            constexpr int t_or = fx ? k_fx_or : k_float_or, t_rt = fx ? k_fx_rt : k_float_rt;
            for (; o + t_or <= s1; o += t_or) {
                rows_float<T, t_or, t_rt>(w, o, rows, xs, pf_lim);
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

// Two weight blocks b, b + 1 of a row as 64 unsigned values w + bias (the activations carry the
// matching correction); their scales in lanes 0-7 and 8-15.
template <int T>
inline __m512i load_block2(const uint8_t * row, int64_t b, __m512 * d) {
    if constexpr (T == T_Q8_0) {
        const uint8_t * b0 = row + b * DSV4_Q8_0_BLOCK_BYTES;
        const uint8_t * b1 = b0 + DSV4_Q8_0_BLOCK_BYTES;
        uint16_t h0, h1;
        memcpy(&h0, b0, 2);
        memcpy(&h1, b1, 2);
        *d = _mm512_mask_blend_ps((__mmask16) 0xFF00, _mm512_set1_ps(_cvtsh_ss(h0)), _mm512_set1_ps(_cvtsh_ss(h1)));
        const __m256i q0 = _mm256_loadu_si256((const __m256i *) (b0 + 2));
        const __m256i q1 = _mm256_loadu_si256((const __m256i *) (b1 + 2));
        const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
        return _mm512_xor_si512(q, _mm512_set1_epi8((char) 0x80));  // q + 128
    } else {
        const uint8_t * b0 = row + b * DSV4_MXFP4_BLOCK_BYTES;
        const uint8_t * b1 = b0 + DSV4_MXFP4_BLOCK_BYTES;
        *d = _mm512_mask_blend_ps((__mmask16) 0xFF00, _mm512_set1_ps(dsv4_mm_e8m0_half_table.v[b0[0]]),
                                  _mm512_set1_ps(dsv4_mm_e8m0_half_table.v[b1[0]]));
        const __m128i q0 = _mm_loadu_si128((const __m128i *) (b0 + 1));
        const __m128i q1 = _mm_loadu_si128((const __m128i *) (b1 + 1));
        const __m512i t = _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1));
        // 128-bit lanes [q0, q0, q1, q1]; shift the 2nd and 4th by 4 -> [lo0, hi0, lo1, hi1]
        const __m512i u = _mm512_shuffle_i64x2(t, t, 0x50);
        const __m512i s = _mm512_srlv_epi64(u, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
        const __m512i codes = _mm512_and_si512(s, _mm512_set1_epi8(0x0F));
        const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *) dsv4_mm_mxfp4_values_u));
        return _mm512_shuffle_epi8(lut, codes);
    }
}

// The last block alone (odd block count): 32 values in the low half, zeros above.
template <int T>
inline __m512i load_block1(const uint8_t * row, int64_t b, __m512 * d) {
    if constexpr (T == T_Q8_0) {
        const uint8_t * b0 = row + b * DSV4_Q8_0_BLOCK_BYTES;
        uint16_t h0;
        memcpy(&h0, b0, 2);
        *d = _mm512_set1_ps(_cvtsh_ss(h0));
        const __m256i q = _mm256_loadu_si256((const __m256i *) (b0 + 2));
        return _mm512_zextsi256_si512(_mm256_xor_si256(q, _mm256_set1_epi8((char) 0x80)));
    } else {
        const uint8_t * b0 = row + b * DSV4_MXFP4_BLOCK_BYTES;
        *d = _mm512_set1_ps(dsv4_mm_e8m0_half_table.v[b0[0]]);
        const __m128i q = _mm_loadu_si128((const __m128i *) (b0 + 1));
        const __m128i m = _mm_set1_epi8(0x0F);
        const __m256i codes = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(q, m)),
                                                      _mm_and_si128(_mm_srli_epi16(q, 4), m), 1);
        const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) dsv4_mm_mxfp4_values_u));
        return _mm512_zextsi256_si512(_mm256_shuffle_epi8(lut, codes));
    }
}

template <int T, int OR, int RT>
inline void tile_int(const uint8_t * const * w, const uint8_t * const * xq, int64_t n, float * out,
                     const uint8_t * pf_lim) {
    const int64_t nb = n / 32;
    const float * xd[RT];
    const int32_t * xc[RT];
    for (int r = 0; r < RT; r++) {
        xd[r] = (const float *) (xq[r] + n) + nb;  // d8: 8 copies of each block scale
        xc[r] = dsv4_mm_xq_corr(xq[r], n);
    }
    __m512 acc[OR][RT];
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            acc[i][r] = _mm512_setzero_ps();
        }
    }
    int64_t b = 0;
    constexpr int64_t bb = T == T_Q8_0 ? DSV4_Q8_0_BLOCK_BYTES : DSV4_MXFP4_BLOCK_BYTES;
    for (; b + 2 <= nb; b += 2) {
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            prefetch_ahead(w[i] + b * bb, k_pf_int, pf_lim);
            if constexpr (T == T_Q8_0) {
                prefetch_ahead(w[i] + b * bb + 64, k_pf_int, pf_lim);  // 68 bytes per step
            }
        }
        // the activation side once per step for all OR weight rows (3 loads per row; reloading
        // them per weight row made the tile load-bound)
        __m512i xv[RT], c[RT];
        __m512 dx[RT];
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            xv[r] = _mm512_loadu_si512((const void *) (xq[r] + 32 * b));
            c[r] = _mm512_loadu_si512((const void *) (xc[r] + 8 * b));
            dx[r] = _mm512_loadu_ps(xd[r] + 8 * b);
        }
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            __m512 dw;
            const __m512i wv = load_block2<T>(w[i], b, &dw);
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                const __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(c[r], wv, xv[r]));
                acc[i][r] = _mm512_fmadd_ps(_mm512_mul_ps(f, dx[r]), dw, acc[i][r]);
            }
        }
    }
    if (b < nb) {
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            __m512 dw;
            const __m512i wv = load_block1<T>(w[i], b, &dw);
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                const __m512i xv = _mm512_maskz_loadu_epi8((__mmask64) 0xFFFFFFFFull, xq[r] + 32 * b);
                const __m512i c = _mm512_maskz_loadu_epi32((__mmask16) 0x00FF, xc[r] + 8 * b);
                const __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(c, wv, xv));
                const __m512 dx = _mm512_maskz_loadu_ps((__mmask16) 0x00FF, xd[r] + 8 * b);
                acc[i][r] = _mm512_fmadd_ps(_mm512_mul_ps(f, dx), dw, acc[i][r]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            out[i * RT + r] = _mm512_reduce_add_ps(acc[i][r]);
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

// Output rows [o, o + OR) against all activation rows (pointers xs[0..n)), RTMAX rows at a time.
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
    if (rows->n == 1) {  // decode: 4 weight rows for 4 independent accumulator chains
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

// Same arithmetic as the scalar quantize (max|x| / 127, 1 / d, nearest-even), so bit-identical.
void quantize_row(const float * x, int64_t n, uint8_t * dst, int32_t bias) {
    const int64_t nb = n / 32;
    float * d = (float *) (dst + n);
    float * d8 = d + nb;
    int32_t * corr = (int32_t *) (dst + n + nb * 36);
    const __m256i ones8 = _mm256_set1_epi8(1);
    const __m256i nbias = _mm256_set1_epi32(-bias);
    for (int64_t b = 0; b < nb; b++) {
        const float * xb = x + 32 * b;
        const __m512 v0 = _mm512_loadu_ps(xb);
        const __m512 v1 = _mm512_loadu_ps(xb + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float dv = amax / 127.0f;
        const float id = dv != 0.0f ? 1.0f / dv : 0.0f;
        const __m512 idv = _mm512_set1_ps(id);
        const __m128i q0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, idv)));
        const __m128i q1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, idv)));
        const __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
        _mm256_storeu_si256((__m256i *) (dst + 32 * b), q);
        d[b] = dv;
        _mm256_storeu_ps(d8 + 8 * b, _mm256_set1_ps(dv));
        const __m256i s4 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones8, q);  // sums of 4 consecutive q
        _mm256_storeu_si256((__m256i *) (corr + 8 * b), _mm256_mullo_epi32(s4, nbias));
    }
}

// ---- packed MXFP4 (the layout of dsv4_weight_pack) ----
//
// 16 output rows per vector lane set: per 32-column block, 8 vpdpbusd (each 4 columns of 16 rows
// x 4 activation bytes broadcast) into one int32 accumulator per activation row, started from the
// block's correction corr32 (the weights are the look-up table + 12); then per row one convert
// and (d_w * d_x) * dot added to the f32 accumulator in block order. That is the scalar kernel's
// arithmetic to the bit (the integer dot is exact; the product and the sum are rounded the same
// way: no FMA, the rounding-mode intrinsics keep the compiler from contracting), so a row's result
// does not depend on how many rows share the call, and the tests compare bits.

constexpr int k_pk_rt = 8;  // activation rows per tile: 8 f32 + 8 int32 accumulators
constexpr uintptr_t k_pf_pk = 16384;  // prefetch distance of the packed stream

// 2^(e - 128) for 16 scale bytes, equal to dsv4_mm_e8m0_half: (e - 1) << 23 for e >= 2, the
// subnormals 2^-128, 2^-127 for e = 0, 1.
inline __m512 pk_scales(const uint8_t * e16) {
    const __m512i e = _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *) e16));
    const __m512i normal = _mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23);
    const __m512i sub = _mm512_sllv_epi32(_mm512_set1_epi32(0x00200000), e);
    const __mmask16 small = _mm512_cmplt_epu32_mask(e, _mm512_set1_epi32(2));
    return _mm512_castsi512_ps(_mm512_mask_blend_epi32(small, normal, sub));
}

template <int RT>
inline void tile_packed(const uint8_t * g, int64_t n_in, const uint8_t * const * xq, __m512 * out,
                        const uint8_t * pf_lim) {
    const int64_t nb = n_in / 32;
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *) dsv4_mm_mxfp4_values_u));
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const float * xd[RT];
    const int32_t * xc[RT];
    __m512 acc[RT];
#pragma GCC unroll 8
    for (int r = 0; r < RT; r++) {
        xd[r] = (const float *) (xq[r] + n_in);
        xc[r] = dsv4_mm_xq_corr32(xq[r], n_in);
        acc[r] = _mm512_setzero_ps();
    }
    for (int64_t b0 = 0; b0 < nb; b0 += 4) {
        const uint8_t * sc = g;  // this super-block's scales
        const int nj = nb - b0 < 4 ? (int) (nb - b0) : 4;
        prefetch_ahead(g, k_pf_pk, pf_lim);
        g += 64;
        for (int j = 0; j < nj; j++, g += 256) {
            const int64_t b = b0 + j;
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                prefetch_ahead(g + 64 * c, k_pf_pk, pf_lim);
            }
            __m512i iacc[RT];
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                iacc[r] = _mm512_set1_epi32(xc[r][b]);
            }
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const __m512i v = _mm512_load_si512((const void *) (g + 64 * c));
                const __m512i wl = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, low4));
                const __m512i wh = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
#pragma GCC unroll 8
                for (int r = 0; r < RT; r++) {
                    int32_t x0, x1;
                    memcpy(&x0, xq[r] + 32 * b + 8 * c, 4);
                    memcpy(&x1, xq[r] + 32 * b + 8 * c + 4, 4);
                    iacc[r] = _mm512_dpbusd_epi32(iacc[r], wl, _mm512_set1_epi32(x0));
                    iacc[r] = _mm512_dpbusd_epi32(iacc[r], wh, _mm512_set1_epi32(x1));
                }
            }
            const __m512 dw = pk_scales(sc + 16 * j);
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                const __m512 s = _mm512_mul_round_ps(dw, _mm512_set1_ps(xd[r][b]), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                const __m512 p = _mm512_mul_round_ps(s, _mm512_cvtepi32_ps(iacc[r]), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                acc[r] = _mm512_add_round_ps(acc[r], p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RT; r++) {
        out[r] = acc[r];
    }
}

template <int RT>
inline void dispatch_packed(int rt, const uint8_t * g, int64_t n_in, const uint8_t * const * xq, __m512 * out,
                            const uint8_t * pf_lim) {
    if constexpr (RT == 1) {
        tile_packed<1>(g, n_in, xq, out, pf_lim);
    } else {
        if (rt == RT) {
            tile_packed<RT>(g, n_in, xq, out, pf_lim);
        } else {
            dispatch_packed<RT - 1>(rt, g, n_in, xq, out, pf_lim);
        }
    }
}

// o0 is a multiple of 16 (the driver's work units are 16-row aligned, like the packed groups).
void mm_mxfp4_packed(const dsv4_mm_w * w, int64_t o0, int64_t o1, const dsv4_mm_rows * rows, void * tmp) {
    const uint8_t ** xs = (const uint8_t **) tmp;
    for (int64_t i = 0; i < rows->n; i++) {
        xs[i] = dsv4_mm_xq_row(rows, i);
    }
    const size_t gb = dsv4_mm_mxfp4_group_bytes(w->n_in);
    const uint8_t * pf_lim = w->packed + (size_t) ((o1 + 15) / 16) * gb - 1;  // prefetch no further
    dsv4_mm_prefetch_head(w->packed + (size_t) (o0 / 16) * gb, k_pf_pk, pf_lim);
    for (int64_t o = o0; o < o1; o += 16) {
        const uint8_t * g = w->packed + (size_t) (o / 16) * gb;
        const int64_t valid = o1 - o < 16 ? o1 - o : 16;
        const __mmask16 m = (__mmask16) ((1u << valid) - 1);
        for (int64_t r0 = 0; r0 < rows->n; r0 += k_pk_rt) {
            const int rt = rows->n - r0 < k_pk_rt ? (int) (rows->n - r0) : k_pk_rt;
            __m512 out[k_pk_rt];
            dispatch_packed<k_pk_rt>(rt, g, w->n_in, xs + r0, out, pf_lim);
            for (int r = 0; r < rt; r++) {
                _mm512_mask_storeu_ps(dsv4_mm_y_row(rows, r0 + r) + o, m, out[r]);
            }
        }
    }
}

// dsv4_mm_round_bf16 on 16 lanes: nearest-even by adding 0x7FFF + the kept lsb, NaN quieted.
inline __m512i round_bf16_16(__m512i u) {
    const __m512i magnitude = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7F800000));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
    return _mm512_and_si512(r, _mm512_set1_epi32((int) 0xFFFF0000u));
}

// The activation rows of FP8 / BF16 calls rounded to bf16 values (f32), bit-identical to the
// driver's scalar loop (one call per row on the calling thread, so it is on the critical path).
void round_row_bf16(const float * x, int64_t n, uint8_t * dst, int32_t) {
    float * y = (float *) dst;
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        _mm512_storeu_si512((void *) (y + k), round_bf16_16(_mm512_castps_si512(_mm512_loadu_ps(x + k))));
    }
    if (k < n) {
        const __mmask16 m = (__mmask16) ((1u << (n - k)) - 1);
        _mm512_mask_storeu_epi32(y + k, m, round_bf16_16(_mm512_castps_si512(_mm512_maskz_loadu_ps(m, x + k))));
    }
}

}  // namespace

extern const dsv4_mm_isa_kernels dsv4_mm_kernels_avx512 = {
    mm_float<T_F32>,
    mm_float<T_F16>,
    mm_float<T_BF16>,
    mm_float<T_FP8>,
    mm_int<T_Q8_0>,
    mm_int<T_MXFP4>,
    quantize_row,
    mm_float<T_Q8_0_FX>,
    mm_float<T_MXFP4_FX>,
    mm_mxfp4_packed,
    round_row_bf16,
};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // __x86_64__
