// AVX2 + FMA + F16C matmul kernels (x86-64). Every function in this file is compiled for that
// target through the pragma below, so no -march flag is needed; the driver only calls into here
// after __builtin_cpu_supports says the CPU has the features.
//
// Float family (F32/F16/BF16/FP8): tiles of OR weight rows x RT activation rows (2 x 6 or 4 x 3,
// see below; 4 x 1 for decode), one accumulator register per (weight row, activation row); each
// 8-wide weight vector is decoded once per tile and used RT times, each activation vector OR times. FP8 uses the e4m3 -> f16 bit trick: byte b becomes the f16 bits
// ((b & 0x80) << 8) | ((b & 0x7F) << 7), whose value is e4m3(b) * 2^-8 exactly (normals and
// subnormals); the 2^8 and the 128x128 block scale are folded into a rescaled copy of the
// activations made once per 128-row output block.
//
// Q8_0/MXFP4 with float activations (params.float_activations): the float-family tiles over
// 32-weight blocks, each decoded exactly to 4 f32 vectors: Q8_0 int8 -> int32 -> f32 times d;
// MXFP4 a vpermps lookup of the 8 doubled-E2M1 magnitudes (pre-multiplied by the block scale
// 2^(e-128), once per block) by the code's low 3 bits, with bit 3 moved to the sign bit. Tiles
// 2 x 6 (measured: 4 x 3 is 1.3x slower at R = 6), 4 x 1 for decode.
//
// Integer family (Q8_0/MXFP4 x 8-bit activations): per 32-block, |w| x sign(x, w) through
// vpmaddubsw (no saturation: |w| <= 128, |x| <= 127), vpmaddwd to int32, then one FMA with
// d_w * d_x per block.
#if defined(__x86_64__)

#include "cpu/dsv4-matmul-impl.h"

#include <immintrin.h>
#include <math.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace {

// T_Q8_0_FX, T_MXFP4_FX: Q8_0 / MXFP4 weights with float activations (block-wise decode).
enum { T_F32, T_F16, T_BF16, T_FP8, T_Q8_0_FX, T_MXFP4_FX };

// Register tiles: weight rows x activation rows per tile (accumulators = product).
// With 16 vector registers the best shape depends on the decode cost (measured, Zen 4, 64 MB,
// R = 6): FP8 and F32 2 x 6 (FP8 decodes each weight vector once: 4.9 vs 3.7 GB/s with 4 x 3),
// F16 and BF16 4 x 3 (cheap decode; 9.5 vs 7.5 GB/s with 2 x 6); integer family 2 x 6.
constexpr int k_float_or_cheap = 4, k_float_rt_cheap = 3;  // F16, BF16
constexpr int k_float_or_fma = 2, k_float_rt_fma = 6;      // F32, FP8
constexpr int k_int_or = 2, k_int_rt = 6;
constexpr int k_fx_or = 2, k_fx_rt = 6;                    // Q8_0, MXFP4 with float activations

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 8 weights of a row starting at column k, as f32 (FP8: times 2^-8).
template <int T>
inline __m256 load8(const uint8_t * row, int64_t k) {
    if constexpr (T == T_F32) {
        return _mm256_loadu_ps((const float *) row + k);
    } else if constexpr (T == T_F16) {
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (row + 2 * k)));
    } else if constexpr (T == T_BF16) {
        const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *) (row + 2 * k)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    } else {
        // sign-extend to 16 bits and shift by 7: bit 15 = sign, bits 7..14 = b; clear bit 14
        const __m128i b = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *) (row + k)));
        const __m128i h = _mm_and_si128(_mm_slli_epi16(b, 7), _mm_set1_epi16((short) 0xBF80));
        return _mm256_cvtph_ps(h);
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
    __m256 acc[OR][RT];
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            acc[i][r] = _mm256_setzero_ps();
        }
    }
    int64_t k = 0;
    constexpr int bpe = T == T_F32 ? 4 : T == T_FP8 ? 1 : 2;  // bytes per weight
    for (; k + 8 <= n; k += 8) {
        if (((k * bpe) & 63) == 0) {
#pragma GCC unroll 8
            for (int i = 0; i < OR; i++) {
                prefetch_ahead(w[i] + k * bpe, k_pf_float, pf_lim);
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            const __m256 wv = load8<T>(w[i], k);
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                acc[i][r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[r] + k), acc[i][r]);
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
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            out[i * RT + r] = hsum(acc[i][r]) + tail[i][r];
        }
    }
}

// Doubled E2M1 magnitudes of the MXFP4 codes 0-7 (codes 8-15 are their negatives).
alignas(32) const float k_mxfp4_mag[8] = { 0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 6.0f, 8.0f, 12.0f };

// One 32-weight Q8_0 / MXFP4 block of a row, decoded exactly to f32: get(v) is columns
// [8 v, 8 v + 8) of the block.
template <int T>
struct fx_block {
    __m256 s;         // Q8_0: d in every lane; MXFP4: lane m = bits(k_mxfp4_mag[m] * 2^(e - 128)) ^ (m << 28)
    const uint8_t * q;

    inline void load(const uint8_t * row, int64_t b) {
        if constexpr (T == T_Q8_0_FX) {
            const uint8_t * blk = row + b * DSV4_Q8_0_BLOCK_BYTES;
            uint16_t h;
            memcpy(&h, blk, 2);
            s = _mm256_set1_ps(_cvtsh_ss(h));
            q = blk + 2;
        } else {
            const uint8_t * blk = row + b * DSV4_MXFP4_BLOCK_BYTES;
            const __m256 m = _mm256_mul_ps(_mm256_load_ps(k_mxfp4_mag), _mm256_set1_ps(dsv4_mm_e8m0_half_table.v[blk[0]]));
            s = _mm256_xor_ps(m, _mm256_castsi256_ps(_mm256_setr_epi32(0, 1 << 28, 2 << 28, 3 << 28, 4 << 28, 5 << 28,
                                                                       6 << 28, 7 << 28)));
            q = blk + 1;
        }
    }

    inline __m256 get(int v) const {
        if constexpr (T == T_Q8_0_FX) {
            const __m256i i = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) (q + 8 * v)));
            return _mm256_mul_ps(_mm256_cvtepi32_ps(i), s);
        } else {
            // bytes j: low nibble = column j, high nibble = column j + 16
            __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) (q + 8 * (v & 1))));
            if (v >= 2) {
                c = _mm256_srli_epi32(c, 4);
            }
            // vpermps reads bits 0-2 (m); c << 28 is (m << 28) | (sign << 31) (higher bits shift
            // out), so the xor undoes the table's m << 28 and sets the sign: one op less than
            // masking the sign bit out (measured ~10% at R = 1 and 6)
            const __m256 m = _mm256_permutevar8x32_ps(s, c);
            return _mm256_xor_ps(m, _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
        }
    }
};

template <int T, int OR, int RT>
inline void tile_fx(const uint8_t * const * w, const float * const * x, int64_t n, float * out,
                    const uint8_t * pf_lim) {
    __m256 acc[OR][RT];
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            acc[i][r] = _mm256_setzero_ps();
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
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                const __m256 wv = blk.get(v);
#pragma GCC unroll 8
                for (int r = 0; r < RT; r++) {
                    acc[i][r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[r] + 32 * b + 8 * v), acc[i][r]);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            out[i * RT + r] = hsum(acc[i][r]);
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

// Output rows [o, o + OR) against all activation rows (pointers xs[0..R)), RT rows at a time.
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
        const __m256 fv = _mm256_set1_ps(f);
        const int64_t k1 = k0 + 128 < n ? k0 + 128 : n;
        int64_t k = k0;
        for (; k + 8 <= k1; k += 8) {
            _mm256_storeu_ps(dst + k, _mm256_mul_ps(_mm256_loadu_ps(x + k), fv));
        }
        for (; k < k1; k++) {
            dst[k] = x[k] * f;
        }
    }
}

template <int T>
void mm_float(const dsv4_mm_w * w, int64_t o0, int64_t o1, const dsv4_mm_rows * rows, void * tmp) {
    constexpr bool cheap = T == T_F16 || T == T_BF16;
    constexpr bool fx = T == T_Q8_0_FX || T == T_MXFP4_FX;
    constexpr int k_float_or = cheap ? k_float_or_cheap : fx ? k_fx_or : k_float_or_fma;
    constexpr int k_float_rt = cheap ? k_float_rt_cheap : fx ? k_fx_rt : k_float_rt_fma;
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
        if (R == 1) {  // decode: 4 weight rows for 4 independent accumulator chains
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

// One weight block b of a row: 32 int8 values and the block scale.
template <int T>
inline __m256i load_block(const uint8_t * row, int64_t b, float * d) {
    if constexpr (T == T_Q8_0) {
        const uint8_t * blk = row + b * DSV4_Q8_0_BLOCK_BYTES;
        uint16_t h;
        memcpy(&h, blk, 2);
        *d = _cvtsh_ss(h);
        return _mm256_loadu_si256((const __m256i *) (blk + 2));
    } else {
        const uint8_t * blk = row + b * DSV4_MXFP4_BLOCK_BYTES;
        *d = dsv4_mm_e8m0_half_table.v[blk[0]];
        const __m128i q = _mm_loadu_si128((const __m128i *) (blk + 1));
        const __m128i m = _mm_set1_epi8(0x0F);
        const __m128i lo = _mm_and_si128(q, m);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
        const __m256i codes = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) dsv4_mm_mxfp4_values));
        return _mm256_shuffle_epi8(lut, codes);
    }
}

template <int T, int OR, int RT>
inline void tile_int(const uint8_t * const * w, const uint8_t * const * xq, int64_t n, float * out,
                     const uint8_t * pf_lim) {
    const int64_t nb = n / 32;
    const float * xd[RT];
    for (int r = 0; r < RT; r++) {
        xd[r] = (const float *) (xq[r] + n);
    }
    __m256 acc[OR][RT];
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            acc[i][r] = _mm256_setzero_ps();
        }
    }
    const __m256i ones = _mm256_set1_epi16(1);
    constexpr int64_t bb = T == T_Q8_0 ? DSV4_Q8_0_BLOCK_BYTES : DSV4_MXFP4_BLOCK_BYTES;
    for (int64_t b = 0; b < nb; b++) {
        if (T == T_Q8_0 || (b & 1) == 0) {  // about one prefetch per 64 bytes of each row
#pragma GCC unroll 8
            for (int i = 0; i < OR; i++) {
                prefetch_ahead(w[i] + b * bb, k_pf_int, pf_lim);
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            float dw;
            const __m256i wv = load_block<T>(w[i], b, &dw);
            const __m256i aw = _mm256_sign_epi8(wv, wv);
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *) (xq[r] + 32 * b));
                const __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv));
                const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[i][r] = _mm256_fmadd_ps(f, _mm256_set1_ps(dw * xd[r][b]), acc[i][r]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            out[i * RT + r] = hsum(acc[i][r]);
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

inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Same arithmetic as the scalar quantize (max|x| / 127, 1 / d, nearest-even), so bit-identical.
void quantize_row(const float * x, int64_t n, uint8_t * dst, int32_t bias) {
    const int64_t nb = n / 32;
    float * d = (float *) (dst + n);
    float * d8 = d + nb;
    int32_t * corr = (int32_t *) (dst + n + nb * 36);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i ones8 = _mm256_set1_epi8(1);
    const __m256i ones16 = _mm256_set1_epi16(1);
    const __m256i nbias = _mm256_set1_epi32(-bias);
    for (int64_t b = 0; b < nb; b++) {
        const float * xb = x + 32 * b;
        const __m256 v0 = _mm256_loadu_ps(xb);
        const __m256 v1 = _mm256_loadu_ps(xb + 8);
        const __m256 v2 = _mm256_loadu_ps(xb + 16);
        const __m256 v3 = _mm256_loadu_ps(xb + 24);
        const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                       _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        const float amax = hmax(m);
        const float dv = amax / 127.0f;
        const float id = dv != 0.0f ? 1.0f / dv : 0.0f;
        const __m256 idv = _mm256_set1_ps(id);
        const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, idv));
        const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, idv));
        const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, idv));
        const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, idv));
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        const __m256i q = _mm256_permutevar8x32_epi32(p, perm);
        _mm256_storeu_si256((__m256i *) (dst + 32 * b), q);
        d[b] = dv;
        _mm256_storeu_ps(d8 + 8 * b, _mm256_set1_ps(dv));
        // sums of 4 consecutive q: |1 * q| pairs via maddubs (u8 ones x s8 q), then pairs of pairs
        const __m256i s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
        _mm256_storeu_si256((__m256i *) (corr + 8 * b), _mm256_mullo_epi32(s4, nbias));
    }
}

// ---- packed MXFP4 (the layout of dsv4_weight_pack) ----
//
// The same arithmetic as the AVX-512 kernel and the scalar one, bit for bit, on 8-lane halves of a
// 16-row group (bytes 0-31 of a chunk are rows 0-7, bytes 32-63 rows 8-15): vpmaddubsw of the
// unsigned weights (look-up table + 12, <= 24) with 4 broadcast activation bytes gives pair sums
// <= 24 * 127 * 2 = 6096, so two chunks' worth (4 pair sums, <= 24384) still fit int16 before
// vpmaddwd widens them; the block sum starts from corr32. The float step is (d_w * d_x) * dot
// added without FMA (an empty asm keeps the compiler from contracting), like the scalar kernel.

constexpr int k_pk_rt = 4;  // activation rows per tile: 4 f32 + 4 int32 accumulators per half
constexpr uintptr_t k_pf_pk = 16384;

inline __m256 pk_scales8(const uint8_t * e8) {
    __m128i b;
    b = _mm_loadl_epi64((const __m128i *) e8);
    const __m256i e = _mm256_cvtepu8_epi32(b);
    const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
    const __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
    const __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e);
    return _mm256_castsi256_ps(_mm256_blendv_epi8(normal, sub, small));
}

// (dw * dx) * dot + acc, rounded after each operation (no FMA).
inline __m256 pk_madd(__m256 acc, __m256 dw, float dx, __m256i dot) {
    __m256 s = _mm256_mul_ps(dw, _mm256_set1_ps(dx));
    __asm__("" : "+x"(s));
    __m256 p = _mm256_mul_ps(s, _mm256_cvtepi32_ps(dot));
    __asm__("" : "+x"(p));
    return _mm256_add_ps(acc, p);
}

// The two 8-row halves one after the other (the group, ~17 KB at n_in 2048, is in L1 for the
// second pass), which keeps the live registers at 4 + 4 + 4 + 3 of the 16.
template <int RT>
inline void tile_packed(const uint8_t * g0, int64_t n_in, const uint8_t * const * xq, __m256 * out, const uint8_t * pf_lim) {
    const int64_t nb = n_in / 32;
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) dsv4_mm_mxfp4_values_u));
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i ones16 = _mm256_set1_epi16(1);
    const float * xd[RT];
    const int32_t * xc[RT];
    for (int r = 0; r < RT; r++) {
        xd[r] = (const float *) (xq[r] + n_in);
        xc[r] = dsv4_mm_xq_corr32(xq[r], n_in);
    }
    for (int h = 0; h < 2; h++) {  // rows 0-7, then 8-15
        __m256 acc[RT];
        for (int r = 0; r < RT; r++) {
            acc[r] = _mm256_setzero_ps();
        }
        const uint8_t * g = g0;
        for (int64_t b0 = 0; b0 < nb; b0 += 4) {
            const uint8_t * sc = g;
            const int nj = nb - b0 < 4 ? (int) (nb - b0) : 4;
            if (h == 0) {
                prefetch_ahead(g, k_pf_pk, pf_lim);
            }
            g += 64;
            for (int j = 0; j < nj; j++, g += 256) {
                const int64_t b = b0 + j;
                if (h == 0) {
                    for (int c = 0; c < 4; c++) {
                        prefetch_ahead(g + 64 * c, k_pf_pk, pf_lim);
                    }
                }
                __m256i iacc[RT];
                for (int r = 0; r < RT; r++) {
                    iacc[r] = _mm256_set1_epi32(xc[r][b]);
                }
#pragma GCC unroll 2
                for (int c = 0; c < 4; c += 2) {
                    const __m256i v0 = _mm256_load_si256((const __m256i *) (g + 64 * c + 32 * h));
                    const __m256i v1 = _mm256_load_si256((const __m256i *) (g + 64 * (c + 1) + 32 * h));
                    const __m256i wl0 = _mm256_shuffle_epi8(lut, _mm256_and_si256(v0, low4));
                    const __m256i wh0 = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v0, 4), low4));
                    const __m256i wl1 = _mm256_shuffle_epi8(lut, _mm256_and_si256(v1, low4));
                    const __m256i wh1 = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v1, 4), low4));
                    for (int r = 0; r < RT; r++) {
                        int32_t x[4];
                        memcpy(x, xq[r] + 32 * b + 8 * c, 16);
                        __m256i s = _mm256_maddubs_epi16(wl0, _mm256_set1_epi32(x[0]));
                        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(wh0, _mm256_set1_epi32(x[1])));
                        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(wl1, _mm256_set1_epi32(x[2])));
                        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(wh1, _mm256_set1_epi32(x[3])));
                        iacc[r] = _mm256_add_epi32(iacc[r], _mm256_madd_epi16(s, ones16));
                    }
                }
                const __m256 dw = pk_scales8(sc + 16 * j + 8 * h);
                for (int r = 0; r < RT; r++) {
                    acc[r] = pk_madd(acc[r], dw, xd[r][b], iacc[r]);
                }
            }
        }
        for (int r = 0; r < RT; r++) {
            out[2 * r + h] = acc[r];
        }
    }
}

template <int RT>
inline void dispatch_packed(int rt, const uint8_t * g, int64_t n_in, const uint8_t * const * xq, __m256 * out,
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
    const uint8_t * pf_lim = w->packed + (size_t) ((o1 + 15) / 16) * gb - 1;
    dsv4_mm_prefetch_head(w->packed + (size_t) (o0 / 16) * gb, k_pf_pk, pf_lim);
    for (int64_t o = o0; o < o1; o += 16) {
        const uint8_t * g = w->packed + (size_t) (o / 16) * gb;
        const int64_t valid = o1 - o < 16 ? o1 - o : 16;
        for (int64_t r0 = 0; r0 < rows->n; r0 += k_pk_rt) {
            const int rt = rows->n - r0 < k_pk_rt ? (int) (rows->n - r0) : k_pk_rt;
            __m256 out[2 * k_pk_rt];
            dispatch_packed<k_pk_rt>(rt, g, w->n_in, xs + r0, out, pf_lim);
            for (int r = 0; r < rt; r++) {
                float * y = dsv4_mm_y_row(rows, r0 + r) + o;
                if (valid == 16) {
                    _mm256_storeu_ps(y, out[2 * r]);
                    _mm256_storeu_ps(y + 8, out[2 * r + 1]);
                } else {
                    alignas(32) float tmp16[16];
                    _mm256_store_ps(tmp16, out[2 * r]);
                    _mm256_store_ps(tmp16 + 8, out[2 * r + 1]);
                    memcpy(y, tmp16, (size_t) valid * sizeof(float));
                }
            }
        }
    }
}

}  // namespace

extern const dsv4_mm_isa_kernels dsv4_mm_kernels_avx2 = {
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
    nullptr,  // bf16 rounding: the driver's loop
};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // __x86_64__
