// AVX-512 BF16 dot-product kernels for FP8_E4M3 and BF16 weights with bf16 activations (the
// default mode, params.float_activations = false), x86-64 with AVX512_BF16 and AVX512_VBMI on top
// of the AVX512 level; the driver calls them only when __builtin_cpu_supports reports both.
//
// Why: one vdpbf16ps does 32 multiply-adds where an f32 FMA does 16, and FP8 decodes to bf16 in a
// few byte shuffles (e4m3 fits bf16 exactly, subnormals included): at 1 row the f16 bit-trick path
// was compute-bound below the memory bandwidth, at 6+ rows it was FMA-bound.
//
// Semantics (identical to the other ISAs in the default mode): the driver has already rounded the
// activations to bf16 (round-to-nearest-even, kept as f32); y = sum_k W[o, k] * x[k] with W the
// exactly decoded weight, accumulated in f32. Here the rounded rows are converted to bf16 arrays
// (exactly), FP8 rows times their 128x128 block scale, which is exact when the scale is a power of
// two (UE8M0 checkpoints: always). A 128-row output block whose scales are not all powers of two
// goes to the f32 AVX-512 kernel instead (same semantics, no second rounding).
//
// Every output element is one accumulator fed 32 columns at a time in column order (vdpbf16ps
// adds the pair products of each lane), whatever the tile shape or the number of rows, so a row's
// result does not depend on the batch it is in; the FP8 and BF16 kernels run the same sequence on
// the same products, so a BF16 file holding FP8 values times power-of-two scales gives bit-identical
// results.
#if defined(__x86_64__)

#include "cpu/dsv4-matmul-impl.h"

#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx512vbmi"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx512vbmi")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace {

// ---- e4m3 -> bf16 byte tables (compile time) ----

// bf16 bits of the e4m3 magnitude b (0..127; 0x7F is NaN and rejected at load, decoded as 480 like
// the other kernels do). Every e4m3 value is a normal bf16: subnormal e4m3 M * 2^-9 is normalised.
constexpr uint16_t e4m3_bf16_bits(int b) {
    const int e = (b >> 3) & 0xF, m = b & 7;
    if (e > 0) {
        return (uint16_t) (((e + 120) << 7) | (m << 4));
    }
    if (m == 0) {
        return 0;
    }
    int exp = 118, mant = m;  // m * 2^-9 = (m / 2^p) * 2^(p - 9)
    while (mant < 8) {
        mant <<= 1;
        exp--;
    }
    return (uint16_t) (((exp + 3) << 7) | ((mant & 7) << 4));
}

struct byte_tables {
    uint8_t hi[128], lo[128];
};

constexpr byte_tables make_tables() {
    byte_tables t{};
    for (int b = 0; b < 128; b++) {
        t.hi[b] = (uint8_t) (e4m3_bf16_bits(b) >> 8);
        t.lo[b] = (uint8_t) (e4m3_bf16_bits(b) & 0xFF);
    }
    return t;
}

alignas(64) constexpr byte_tables k_tables = make_tables();

// vpermt2b indices interleaving lo/hi bytes into words: words 0..31 (w0) and 32..63 (w1).
struct interleave_idx {
    uint8_t w0[64], w1[64];
};

constexpr interleave_idx make_interleave() {
    interleave_idx t{};
    for (int j = 0; j < 64; j++) {
        t.w0[j] = (uint8_t) ((j / 2) | ((j & 1) << 6));
        t.w1[j] = (uint8_t) ((32 + j / 2) | ((j & 1) << 6));
    }
    return t;
}

alignas(64) constexpr interleave_idx k_interleave = make_interleave();

struct fp8_consts {
    __m512i thi0, thi1, tlo0, tlo1, sign, i0, i1;
    fp8_consts()
        : thi0(_mm512_load_si512((const void *) k_tables.hi)),
          thi1(_mm512_load_si512((const void *) (k_tables.hi + 64))),
          tlo0(_mm512_load_si512((const void *) k_tables.lo)),
          tlo1(_mm512_load_si512((const void *) (k_tables.lo + 64))),
          sign(_mm512_set1_epi8((char) 0x80)),
          i0(_mm512_load_si512((const void *) k_interleave.w0)),
          i1(_mm512_load_si512((const void *) k_interleave.w1)) {}
};

// 64 e4m3 bytes -> 64 bf16 in column order (w0: columns 0..31, w1: 32..63).
inline void decode_fp8_64(__m512i b, const fp8_consts & c, __m512i * w0, __m512i * w1) {
    __m512i hi = _mm512_permutex2var_epi8(c.thi0, b, c.thi1);  // index bits 0-6: the magnitude
    hi = _mm512_ternarylogic_epi32(hi, b, c.sign, 0xF8);       // hi | (b & 0x80)
    const __m512i lo = _mm512_permutex2var_epi8(c.tlo0, b, c.tlo1);
    *w0 = _mm512_permutex2var_epi8(lo, c.i0, hi);
    *w1 = _mm512_permutex2var_epi8(lo, c.i1, hi);
}

// Software prefetch into L2 ahead of each weight-row stream, clamped to the call's rows (see the
// AVX-512 file: the hardware prefetchers alone leave interleaved row streams short of data).
constexpr uintptr_t k_pf = 32768;

inline void prefetch_ahead(const uint8_t * p, const uint8_t * lim) {
    const uintptr_t a = (uintptr_t) p + k_pf;
    _mm_prefetch((const char *) (a < (uintptr_t) lim ? a : (uintptr_t) lim), _MM_HINT_T1);
}

// The same for a packed chunk (dsv4-matmul.h: bytes in dsv4_fp8_packed_column order): the in-lane
// interleaves give the words of columns 0..31 and 32..63 directly, the same two vectors as above.
inline void decode_fp8_64_packed(__m512i b, const fp8_consts & c, __m512i * w0, __m512i * w1) {
    __m512i hi = _mm512_permutex2var_epi8(c.thi0, b, c.thi1);
    hi = _mm512_ternarylogic_epi32(hi, b, c.sign, 0xF8);
    const __m512i lo = _mm512_permutex2var_epi8(c.tlo0, b, c.tlo1);
    *w0 = _mm512_unpacklo_epi8(lo, hi);
    *w1 = _mm512_unpackhi_epi8(lo, hi);
}

// One 32-column bf16 chunk of a weight row at column k (masked past n: rows are not padded).
inline __m512i load32(const uint8_t * row, int64_t k, int64_t n) {
    const uint16_t * p = (const uint16_t *) row + k;
    const int64_t left = n - k;
    return left >= 32 ? _mm512_loadu_si512((const void *) p)
                      : _mm512_maskz_loadu_epi16((__mmask32) ((1ull << left) - 1), p);
}

// 64 FP8 weights of a row at column k decoded to two bf16 chunks (masked past n).
// cm: bytes between a row's 64-column chunks per column (1: plain rows; the packed layout
// interleaves 4 rows' chunks, so a row's chunk at column k sits at row + 4k, its bytes permuted).
inline void load_fp8_64(const uint8_t * row, int64_t k, int64_t n, int64_t cm, const fp8_consts & c, __m512i * w0,
                        __m512i * w1) {
    if (cm != 1) {  // packed: whole zero-padded chunks, 64-byte aligned
        decode_fp8_64_packed(_mm512_load_si512((const void *) (row + k * cm)), c, w0, w1);
        return;
    }
    const int64_t left = n - k;
    const __m512i b = left >= 64 ? _mm512_loadu_si512((const void *) (row + k))
                                 : _mm512_maskz_loadu_epi8((__mmask64) ((1ull << left) - 1), row + k);
    decode_fp8_64(b, c, w0, w1);
}

// Horizontal sums of accumulators, always in one tree (lanes i + i+8, then j + j+4, then
// (0 + 2) + (1 + 3)), written out here rather than left to a compiler's _mm512_reduce_add_ps, so
// that the single-vector and the batched form below agree bit for bit on every compiler.
inline float hsum16(__m512 v) {
    const __m256 p = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1));
    const __m128 r = _mm_add_ps(q, _mm_shuffle_ps(q, q, 0x4E));  // (q0 + q2, q1 + q3, ..)
    return _mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps(r, r, 0x01)));
}

// The same tree for 16 accumulators at once, transposed: 15 adds and 30 shuffles instead of 16
// separate reductions (~9 operations each), which cost up to half the dot products of a tile at
// n_in = 512. out[m] = hsum16(a[m]).
inline void hsum16x16(const __m512 * a, float * out) {
    __m512 b[8], c[4], d[2];
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {  // lanes 0-7: a[2k] (v_i + v_i+8), lanes 8-15: a[2k+1]
        b[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0xEE));
    }
#pragma GCC unroll 8
    for (int m = 0; m < 4; m++) {  // 128-bit lane L: accumulator 4m + L, its p_j + p_j+4
        c[m] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * m], b[2 * m + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * m], b[2 * m + 1], 0xDD));
    }
#pragma GCC unroll 8
    for (int t = 0; t < 2; t++) {  // lane L: (r0, r1) of accumulators 8t + L and 8t + 4 + L
        d[t] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * t], c[2 * t + 1], 0x44),
                             _mm512_shuffle_ps(c[2 * t], c[2 * t + 1], 0xEE));
    }
    // element 4L + c holds accumulator 4c + L
    const __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(idx, e));
}

// An OR x RT register tile of f32 accumulators: cleared, and each reduced to its output (in the
// one lane order every path uses, so a row's result never depends on the tile it ran in).
template <int OR, int RT>
inline void zero_tile(__m512 (&acc)[OR][RT]) {
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            acc[i][r] = _mm512_setzero_ps();
        }
    }
}

template <int OR, int RT>
inline void reduce_tile(const __m512 (&acc)[OR][RT], float * out) {
    constexpr int n = OR * RT;
    if constexpr (n < 8) {
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                out[i * RT + r] = hsum16(acc[i][r]);
            }
        }
    } else {
        // fully unrolled with constant indices, so the accumulators never leave registers
#pragma GCC unroll 4
        for (int m0 = 0; m0 < n; m0 += 16) {
            __m512 g[16];
            float o[16];
#pragma GCC unroll 16
            for (int m = 0; m < 16; m++) {
                g[m] = m0 + m < n ? acc[(m0 + m) / RT][(m0 + m) % RT] : _mm512_setzero_ps();
            }
            hsum16x16(g, o);
#pragma GCC unroll 16
            for (int m = 0; m < 16; m++) {
                if (m0 + m < n) {
                    out[m0 + m] = o[m];
                }
            }
        }
    }
}

// The steps of tile_w16 into acc (PF: prefetch each weight row's stream ahead).
template <int OR, int RT, bool PF>
inline void tile_w16_steps(__m512 (&acc)[OR][RT], const uint8_t * const * w, const uint16_t * const * x, int64_t n,
                           const uint8_t * pf_lim) {
    // whole 32-column chunks: plain loads and no branch in the loop, so the 24 accumulators, 6
    // activation chunks and the weight chunk stay in registers (a masked tail inside the loop made
    // GCC spill activation chunks to the stack on every step)
    const int64_t n32 = n & ~(int64_t) 31;
    for (int64_t k = 0; k < n32; k += 32) {
        if constexpr (PF) {
#pragma GCC unroll 8
            for (int i = 0; i < OR; i++) {
                prefetch_ahead(w[i] + 2 * k, pf_lim);
            }
        }
        __m512i xv[RT];
#pragma GCC unroll 8
        for (int r = 0; r < RT; r++) {
            xv[r] = _mm512_loadu_si512((const void *) (x[r] + k));
        }
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            const __m512i wv = _mm512_loadu_si512((const void *) ((const uint16_t *) w[i] + k));
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                acc[i][r] = _mm512_dpbf16_ps(acc[i][r], (__m512bh) wv, (__m512bh) xv[r]);
            }
        }
    }
    if (n32 < n) {  // the masked last chunk: the same step
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            const __m512i wv = load32(w[i], n32, n);
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                acc[i][r] = _mm512_dpbf16_ps(acc[i][r], (__m512bh) wv,
                                             (__m512bh) _mm512_loadu_si512((const void *) (x[r] + n32)));
            }
        }
    }
}

// bf16 weight rows w[0..OR) x RT activation rows (bf16, zero-padded to a multiple of 64): per
// 32-column chunk the RT activation chunks are loaded once into registers and every weight chunk
// is loaded once, so the loads stay well under the vdpbf16ps count (4 x 6: 10 loads, 24 dots).
template <int OR, int RT>
inline void tile_w16(const uint8_t * const * w, const uint16_t * const * x, int64_t n, float * out,
                     const uint8_t * pf_lim, bool prefetch) {
    __m512 acc[OR][RT];
    zero_tile<OR, RT>(acc);
    if (prefetch) {
        tile_w16_steps<OR, RT, true>(acc, w, x, n, pf_lim);
    } else {
        tile_w16_steps<OR, RT, false>(acc, w, x, n, pf_lim);
    }
    reduce_tile<OR, RT>(acc, out);
}

// FP8 weight rows decoded inline, one activation row (decode): the same chunk sequence per output.
template <int OR>
inline void tile_fp8_1(const uint8_t * const * w, int64_t cm, const uint16_t * const * x, int64_t n, float * out,
                       const uint8_t * pf_lim) {
    const fp8_consts c;
    __m512 acc[OR];
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
        acc[i] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < n; k += 64) {
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            prefetch_ahead(w[i] + k * cm, pf_lim);
        }
        const __m512i x0 = _mm512_loadu_si512((const void *) (x[0] + k));
        const __m512i x1 = _mm512_loadu_si512((const void *) (x[0] + k + 32));
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            __m512i w0, w1;
            load_fp8_64(w[i], k, n, cm, c, &w0, &w1);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh) w0, (__m512bh) x0);
            if (k + 32 < n) {  // exactly the chunks the bf16 tiles run (no extra dot of zeros)
                acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh) w1, (__m512bh) x1);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < OR; i++) {
        out[i] = hsum16(acc[i]);
    }
}

// OR FP8 rows x RT (2..6) activation rows, decoded inline (no strip): each 64-column chunk of a
// weight row is decoded once into registers and used for every activation row, whose chunks come
// from memory (L1) as vdpbf16ps operands. The same chunk sequence per output as every other path.
template <int OR, int RT>
inline void tile_fp8_n(const uint8_t * const * w, int64_t cm, const uint16_t * const * x, int64_t n, float * out,
                       const uint8_t * pf_lim) {
    const fp8_consts c;
    __m512 acc[OR][RT];
    zero_tile<OR, RT>(acc);
    for (int64_t k = 0; k < n; k += 64) {
        const bool second = k + 32 < n;  // exactly the chunks the bf16 tiles run
#pragma GCC unroll 8
        for (int i = 0; i < OR; i++) {
            prefetch_ahead(w[i] + k * cm, pf_lim);
            __m512i w0, w1;
            load_fp8_64(w[i], k, n, cm, c, &w0, &w1);
#pragma GCC unroll 8
            for (int r = 0; r < RT; r++) {
                acc[i][r] = _mm512_dpbf16_ps(acc[i][r], (__m512bh) w0, (__m512bh) _mm512_loadu_si512((const void *) (x[r] + k)));
            }
            if (second) {
#pragma GCC unroll 8
                for (int r = 0; r < RT; r++) {
                    acc[i][r] = _mm512_dpbf16_ps(acc[i][r], (__m512bh) w1,
                                                 (__m512bh) _mm512_loadu_si512((const void *) (x[r] + k + 32)));
                }
            }
        }
    }
    reduce_tile<OR, RT>(acc, out);
}

template <int OR, int RT>
inline void dispatch_fp8_n(int rt, const uint8_t * const * w, int64_t cm, const uint16_t * const * x, int64_t n,
                           float * out, const uint8_t * pf_lim) {
    if constexpr (RT == 2) {
        tile_fp8_n<OR, 2>(w, cm, x, n, out, pf_lim);
    } else {
        if (rt == RT) {
            tile_fp8_n<OR, RT>(w, cm, x, n, out, pf_lim);
        } else {
            dispatch_fp8_n<OR, RT - 1>(rt, w, cm, x, n, out, pf_lim);
        }
    }
}

template <int OR, int RT>
inline void dispatch(int rt, const uint8_t * const * w, const uint16_t * const * x, int64_t n, float * out,
                     const uint8_t * pf_lim, bool prefetch) {
    if constexpr (RT == 1) {
        tile_w16<OR, 1>(w, x, n, out, pf_lim, prefetch);
    } else {
        if (rt == RT) {
            tile_w16<OR, RT>(w, x, n, out, pf_lim, prefetch);
        } else {
            dispatch<OR, RT - 1>(rt, w, x, n, out, pf_lim, prefetch);
        }
    }
}

// Register tiles: 4 weight rows x 6 activation rows (24 accumulators + 6 activation chunks + the
// weight chunk: 31 of 32 registers; a verification step of 6 rows is one tile; measured against
// 4 x 5: FP8 R = 6 48 -> 53, R = 64 65 -> 79 GMAC/s); decode (1 row) 4 weight rows, 4 independent
// chains and streams.
constexpr int k_or = 4;
constexpr int k_fp8_inline_rows = 6;  // up to this many activation rows: tile_fp8_n, 2 weight rows
static_assert(k_or <= DSV4_MM_BF16X_STRIP, "the strip in tmp holds k_or rows");
static_assert(k_or == DSV4_FP8_PACK_ROWS, "a tile reads one packed FP8 group");
constexpr int k_rt = 6;

// Weight rows wp[0..OR) (bf16) against all activation rows.
template <int OR>
inline void rows_w16(const uint8_t * const * wp, int64_t o, int64_t n, const dsv4_mm_rows * rows,
                     const uint16_t * const * xs, const uint8_t * pf_lim, bool prefetch) {
    float out[OR * k_rt];
    for (int64_t r0 = 0; r0 < rows->n; r0 += k_rt) {
        const int64_t left = rows->n - r0;
        const int rt = left < k_rt ? (int) left : k_rt;
        dispatch<OR, k_rt>(rt, wp, xs + r0, n, out, pf_lim, prefetch);
        for (int r = 0; r < rt; r++) {
            float * y = dsv4_mm_y_row(rows, r0 + r);
            for (int i = 0; i < OR; i++) {
                y[o + i] = out[i * rt + r];
            }
        }
    }
}

// Rows already rounded to bf16 values (f32) -> bf16 arrays times f (a power of two per 128-column
// block for FP8, 1 for BF16): exact. Zero padding up to pad.
inline void to_bf16(const float * x, const float * sc, int64_t n, int64_t pad, uint16_t * dst) {
    for (int64_t k = 0; k < pad; k += 16) {
        const int64_t left = n - k;
        const __mmask16 m = left >= 16 ? (__mmask16) 0xFFFF : left > 0 ? (__mmask16) ((1u << left) - 1) : 0;
        __m512 v = _mm512_maskz_loadu_ps(m, x + k);
        if (sc) {
            v = _mm512_mul_ps(v, _mm512_set1_ps(sc[k / 128]));
        }
        _mm256_storeu_si256((__m256i *) (dst + k), (__m256i) _mm512_cvtneps_pbh(v));
    }
}

inline int64_t pad64(int64_t n) {
    return (n + 63) & ~(int64_t) 63;
}

bool pow2_scales(const float * s, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &s[i], 4);
        const uint32_t e = (u >> 23) & 0xFF;
        if ((u & 0x007FFFFF) != 0 || e == 0 || e == 0xFF) {
            return false;
        }
    }
    return true;
}

// Where weight row o starts in the stream the kernels read: the file's rows, or for packed FP8
// the 4-row group that starts at row o (o a multiple of 4; its rows' chunks interleave).
template <bool FP8>
inline const uint8_t * weight_rows(const dsv4_mm_w * w, int64_t o) {
    if (FP8 && w->packed) {
        return w->packed + (size_t) (o / DSV4_FP8_PACK_ROWS) * dsv4_fp8_packed_group_bytes(w->n_in);
    }
    return w->data + (size_t) o * w->row_bytes;
}

// Output rows [o0, o1) of one weight block (FP8: within one 128-row scale block).
template <bool FP8>
void run_block(const dsv4_mm_w * w, int64_t o0, int64_t o1, const dsv4_mm_rows * rows, const uint16_t * const * xs,
               uint16_t * strip, const uint8_t * pf_lim) {
    const int64_t n = w->n_in, R = rows->n;
    const uint8_t * wp[k_or];
    // FP8 packed (dsv4_weight_pack): groups of 4 rows (o is a multiple of 4 here: 128-row scale
    // blocks and the driver's 16-row units), each row's chunks 256 bytes apart.
    const bool packed = FP8 && w->packed;
    const int64_t cm = packed ? DSV4_FP8_PACK_ROWS : 1;
    for (int64_t o = o0; o < o1; o += k_or) {
        const int nr = o1 - o < k_or ? (int) (o1 - o) : k_or;
        for (int i = 0; i < nr; i++) {
            wp[i] = packed ? weight_rows<FP8>(w, o) + 64 * (size_t) i : weight_rows<FP8>(w, o + i);
        }
        bool prefetch = true;
        if constexpr (FP8) {
            if (R == 1 && nr == k_or) {  // decode: no reuse, decode inline
                float out[k_or];
                tile_fp8_1<k_or>(wp, cm, xs, n, out, pf_lim);
                float * y = dsv4_mm_y_row(rows, 0);
                for (int i = 0; i < k_or; i++) {
                    y[o + i] = out[i];
                }
                continue;
            }
            if (R <= k_fp8_inline_rows && nr == k_or) {  // verification-sized batches: no strip
                float out[2 * k_fp8_inline_rows];
                for (int h = 0; h < k_or; h += 2) {
                    dispatch_fp8_n<2, k_fp8_inline_rows>((int) R, wp + h, cm, xs, n, out, pf_lim);
                    for (int r = 0; r < R; r++) {
                        float * y = dsv4_mm_y_row(rows, r);
                        y[o + h] = out[r];
                        y[o + h + 1] = out[R + r];
                    }
                }
                continue;
            }
            // several rows: decode each weight row once into the strip (zero-padded to 64), then
            // run the bf16 tiles on it (the same chunk sequence per output as the inline decode)
            const int64_t sp = pad64(n);
            const fp8_consts c;
            for (int i = 0; i < nr; i++) {
                uint16_t * dst = strip + i * sp;
                for (int64_t k = 0; k < n; k += 64) {
                    prefetch_ahead(wp[i] + k * cm, pf_lim);
                    __m512i w0, w1;
                    load_fp8_64(wp[i], k, n, cm, c, &w0, &w1);
                    _mm512_storeu_si512((void *) (dst + k), w0);
                    _mm512_storeu_si512((void *) (dst + k + 32), w1);
                }
                wp[i] = (const uint8_t *) dst;
            }
            prefetch = false;
        }
        if (nr == k_or) {
            rows_w16<k_or>(wp, o, n, rows, xs, pf_lim, prefetch);
        } else {
            for (int i = 0; i < nr; i++) {
                rows_w16<1>(wp + i, o + i, n, rows, xs, pf_lim, prefetch);
            }
        }
    }
}

// tmp: row pointers, then R bf16 rows of pad64(n_in), then (FP8, many rows) the k_or-row strip;
// dsv4_mm_tmp_bytes reserves it.
template <bool FP8>
void mm_bf16x(const dsv4_mm_w * w, int64_t o0, int64_t o1, const dsv4_mm_rows * rows, void * tmp) {
    const int64_t R = rows->n, n = w->n_in, sp = pad64(n);
    const uint16_t ** xs = (const uint16_t **) tmp;
    uint16_t * xbuf = (uint16_t *) ((uint8_t *) tmp + dsv4_mm_tmp_ptr_bytes(R));
    uint16_t * strip = xbuf + R * sp;
    for (int64_t i = 0; i < R; i++) {
        xs[i] = xbuf + i * sp;
    }
    const int64_t o1_stream = FP8 && w->packed ? (o1 + DSV4_FP8_PACK_ROWS - 1) / DSV4_FP8_PACK_ROWS * DSV4_FP8_PACK_ROWS : o1;
    const uint8_t * pf_lim = weight_rows<FP8>(w, o1_stream) - 1;
    dsv4_mm_prefetch_head(weight_rows<FP8>(w, o0), k_pf, pf_lim);
    if constexpr (!FP8) {
        for (int64_t i = 0; i < R; i++) {
            to_bf16(dsv4_mm_x_row(rows, i), nullptr, n, sp, xbuf + i * sp);
        }
        run_block<false>(w, o0, o1, rows, xs, strip, pf_lim);
        return;
    }
    for (int64_t s0 = o0; s0 < o1;) {
        const int64_t ob = s0 / 128;
        const int64_t s1 = (ob + 1) * 128 < o1 ? (ob + 1) * 128 : o1;
        const float * sc = w->scale + ob * w->scale_cols;
        if (!pow2_scales(sc, w->scale_cols)) {
            dsv4_mm_kernels_avx512.fp8(w, s0, s1, rows, tmp);  // same semantics, f32 products
        } else {
            for (int64_t i = 0; i < R; i++) {
                to_bf16(dsv4_mm_x_row(rows, i), sc, n, sp, xbuf + i * sp);
                xs[i] = xbuf + i * sp;  // the f32 kernel may have used the table
            }
            run_block<true>(w, s0, s1, rows, xs, strip, pf_lim);
        }
        s0 = s1;
    }
}

}  // namespace

extern const dsv4_mm_bf16x_kernels dsv4_mm_kernels_avx512bf16 = {
    mm_bf16x<true>,
    mm_bf16x<false>,
};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // __x86_64__
