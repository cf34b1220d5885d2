// Vector helpers of the forward pass (attention core, indexer scores, mHC sums). GCC/Clang vector
// extensions give explicit lanes, so every ISA clone performs the same operations in the same
// order; target_clones compiles them for AVX2 and AVX-512 beside the baseline without -march.
#include "dsv4-forward-ops.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DSV4_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define DSV4_CLONES
#endif

typedef float dsv4_v8 __attribute__((vector_size(32)));

// A macro, not a function: a function returning a 32-byte vector has no fixed ABI across clones.
#define DSV4_LOAD8(v, p) \
    dsv4_v8 v;           \
    memcpy(&v, (p), sizeof(v))

// Lanes of one partial-sum vector, in one fixed order (dsv4_dot, dsv4_attn_scores).
#define DSV4_HSUM8(s) (((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])))

DSV4_CLONES float dsv4_dot(const float * a, const float * b, int64_t n) {
    dsv4_v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        DSV4_LOAD8(a0, a + i);
        DSV4_LOAD8(b0, b + i);
        DSV4_LOAD8(a1, a + i + 8);
        DSV4_LOAD8(b1, b + i + 8);
        DSV4_LOAD8(a2, a + i + 16);
        DSV4_LOAD8(b2, b + i + 16);
        DSV4_LOAD8(a3, a + i + 24);
        DSV4_LOAD8(b3, b + i + 24);
        s0 += a0 * b0;
        s1 += a1 * b1;
        s2 += a2 * b2;
        s3 += a3 * b3;
    }
    for (; i + 8 <= n; i += 8) {
        DSV4_LOAD8(a0, a + i);
        DSV4_LOAD8(b0, b + i);
        s0 += a0 * b0;
    }
    const dsv4_v8 s = (s0 + s1) + (s2 + s3);
    float r = DSV4_HSUM8(s);
    for (; i < n; i++) {
        r += a[i] * b[i];
    }
    return r;
}

DSV4_CLONES void dsv4_axpy(float * y, float a, const float * x, int64_t n) {
    const dsv4_v8 av = {a, a, a, a, a, a, a, a};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        DSV4_LOAD8(yv, y + i);
        DSV4_LOAD8(xv, x + i);
        yv += av * xv;
        memcpy(y + i, &yv, sizeof(yv));
    }
    for (; i < n; i++) {
        y[i] += a * x[i];
    }
}

// The n % 8 columns past the vectors, in order (head dims are multiples of 8 in practice).
static inline float dot_tail(const float * a, const float * b, int64_t i0, int64_t n) {
    float r = 0.0f;
    for (int64_t i = i0; i < n; i++) {
        r += a[i] * b[i];
    }
    return r;
}

DSV4_CLONES void dsv4_attn_scores(float * S, int64_t s_stride, const float * q, int64_t q_stride, int64_t nh,
                                  const float * const * keys, int64_t nk, int64_t n, float scale) {
    const int64_t n8 = n & ~(int64_t) 7;
    for (int64_t h0 = 0; h0 < nh; h0 += 4) {
        const int64_t hn = nh - h0 < 4 ? nh - h0 : 4;
        const float * qh[4];
        for (int64_t j = 0; j < 4; j++) {
            qh[j] = q + (h0 + (j < hn ? j : 0)) * q_stride;  // a short block repeats head h0
        }
        int64_t a = 0;
        for (; a + 2 <= nk; a += 2) {
            const float * k0 = keys[a];
            const float * k1 = keys[a + 1];
            dsv4_v8 s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0}, s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};
            for (int64_t i = 0; i < n8; i += 8) {
                DSV4_LOAD8(kv0, k0 + i);
                DSV4_LOAD8(kv1, k1 + i);
                DSV4_LOAD8(q0, qh[0] + i);
                DSV4_LOAD8(q1, qh[1] + i);
                DSV4_LOAD8(q2, qh[2] + i);
                DSV4_LOAD8(q3, qh[3] + i);
                s00 += q0 * kv0;
                s01 += q0 * kv1;
                s10 += q1 * kv0;
                s11 += q1 * kv1;
                s20 += q2 * kv0;
                s21 += q2 * kv1;
                s30 += q3 * kv0;
                s31 += q3 * kv1;
            }
            const float r[8] = { DSV4_HSUM8(s00), DSV4_HSUM8(s01), DSV4_HSUM8(s10), DSV4_HSUM8(s11),
                                 DSV4_HSUM8(s20), DSV4_HSUM8(s21), DSV4_HSUM8(s30), DSV4_HSUM8(s31) };
            for (int64_t j = 0; j < hn; j++) {
                S[(h0 + j) * s_stride + a] = (r[2 * j] + dot_tail(qh[j], k0, n8, n)) * scale;
                S[(h0 + j) * s_stride + a + 1] = (r[2 * j + 1] + dot_tail(qh[j], k1, n8, n)) * scale;
            }
        }
        for (; a < nk; a++) {  // the odd key: the same per-pair sequence
            const float * k0 = keys[a];
            for (int64_t j = 0; j < hn; j++) {
                dsv4_v8 s0 = {0};
                for (int64_t i = 0; i < n8; i += 8) {
                    DSV4_LOAD8(kv0, k0 + i);
                    DSV4_LOAD8(q0, qh[j] + i);
                    s0 += q0 * kv0;
                }
                S[(h0 + j) * s_stride + a] = (DSV4_HSUM8(s0) + dot_tail(qh[j], k0, n8, n)) * scale;
            }
        }
    }
}

DSV4_CLONES void dsv4_attn_values(float * o, int64_t o_stride, const float * S, int64_t s_stride, int64_t nh,
                                  const float * const * keys, int64_t nk, int64_t n) {
    for (int64_t h = 0; h < nh; h++) {
        const float * sh = S + h * s_stride;
        float * oh = o + h * o_stride;
        int64_t i = 0;
        // 64 outputs per pass: 8 independent add chains keep both add pipes busy (4 chains were
        // bound by the add latency); each output still sums its keys in order
        for (; i + 64 <= n; i += 64) {
            dsv4_v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
            for (int64_t a = 0; a < nk; a++) {
                const float w = sh[a];
                const dsv4_v8 wv = {w, w, w, w, w, w, w, w};
                const float * k = keys[a] + i;
                DSV4_LOAD8(k0, k);
                DSV4_LOAD8(k1, k + 8);
                DSV4_LOAD8(k2, k + 16);
                DSV4_LOAD8(k3, k + 24);
                DSV4_LOAD8(k4, k + 32);
                DSV4_LOAD8(k5, k + 40);
                DSV4_LOAD8(k6, k + 48);
                DSV4_LOAD8(k7, k + 56);
                a0 += wv * k0;
                a1 += wv * k1;
                a2 += wv * k2;
                a3 += wv * k3;
                a4 += wv * k4;
                a5 += wv * k5;
                a6 += wv * k6;
                a7 += wv * k7;
            }
            memcpy(oh + i, &a0, sizeof(a0));
            memcpy(oh + i + 8, &a1, sizeof(a1));
            memcpy(oh + i + 16, &a2, sizeof(a2));
            memcpy(oh + i + 24, &a3, sizeof(a3));
            memcpy(oh + i + 32, &a4, sizeof(a4));
            memcpy(oh + i + 40, &a5, sizeof(a5));
            memcpy(oh + i + 48, &a6, sizeof(a6));
            memcpy(oh + i + 56, &a7, sizeof(a7));
        }
        for (; i + 8 <= n; i += 8) {
            dsv4_v8 a0 = {0};
            for (int64_t a = 0; a < nk; a++) {
                const float w = sh[a];
                const dsv4_v8 wv = {w, w, w, w, w, w, w, w};
                DSV4_LOAD8(k0, keys[a] + i);
                a0 += wv * k0;
            }
            memcpy(oh + i, &a0, sizeof(a0));
        }
        for (; i < n; i++) {
            float a0 = 0.0f;
            for (int64_t a = 0; a < nk; a++) {
                a0 += sh[a] * keys[a][i];
            }
            oh[i] = a0;
        }
    }
}

typedef double dsv4_v4d __attribute__((vector_size(32)));

DSV4_CLONES float dsv4_rms_inv(const float * x, int64_t n, float eps) {
    dsv4_v4d s0 = {0, 0, 0, 0}, s1 = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        DSV4_LOAD8(v, x + i);
        const dsv4_v4d a = {v[0], v[1], v[2], v[3]}, b = {v[4], v[5], v[6], v[7]};
        s0 += a * a;  // exact: a float squared fits a double
        s1 += b * b;
    }
    const dsv4_v4d s = s0 + s1;
    double ss = (s[0] + s[2]) + (s[1] + s[3]);
    for (; i < n; i++) {
        ss += (double) x[i] * x[i];
    }
    return (float) (1.0 / sqrt(ss / (double) n + (double) eps));
}

// ---- exp on 8 lanes: SwiGLU and the attention softmax ----
//
// libm's expf is a call per element (~3 ns here): SwiGLU over the experts' hidden rows and the
// softmax over every key were ~4% of a prefill. exp8 is e^x = 2^k * p(r) with k = round(x / ln 2),
// r = x - k ln 2 in two steps (the Cephes split of ln 2, exact for |k| <= 129) and p the degree-7
// Taylor polynomial (error < 6e-9 relative on |r| <= ln2 / 2, i.e. about 1 ulp after rounding).
// Only +, -, *, compares and bit operations on fixed lanes, and this file is compiled with
// -ffp-contract=off, so every ISA clone gives the same bits.

typedef int32_t dsv4_v8i __attribute__((vector_size(32)));

#define DSV4_SPLAT8(v) {(v), (v), (v), (v), (v), (v), (v), (v)}
#define DSV4_INLINE static inline __attribute__((always_inline))

// *out = e^(*in) lane by lane (pointers: a function taking or returning a 32-byte vector has no
// fixed ABI across clones).
DSV4_INLINE void dsv4_exp8(const dsv4_v8 * in, dsv4_v8 * out) {
    const dsv4_v8 x = *in;
    const dsv4_v8 zero = DSV4_SPLAT8(0.0f), inf = DSV4_SPLAT8(__builtin_inff());
    const dsv4_v8 x_hi = DSV4_SPLAT8(88.75f), x_lo = DSV4_SPLAT8(-87.5f);  // keeps k in [-127, 129]
    const dsv4_v8i over = x > 88.72283f;    // e^x > FLT_MAX: +inf
    const dsv4_v8i under = x < -87.33654f;  // below FLT_MIN: 0 (no subnormal results)
    const dsv4_v8i nan = x != x;
    dsv4_v8 xc = x > x_hi ? x_hi : x;
    xc = xc < x_lo ? x_lo : xc;
    xc = nan ? zero : xc;
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer (nearest-even)
    const dsv4_v8 kf = (xc * 1.44269504088896341f + magic) - magic;
    dsv4_v8 r = xc - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    dsv4_v8 p = r * (1.0f / 5040.0f) + (1.0f / 720.0f);
    p = p * r + (1.0f / 120.0f);
    p = p * r + (1.0f / 24.0f);
    p = p * r + (1.0f / 6.0f);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    // 2^k as 2^k1 * 2^k2 (k1 = floor(k / 2)): both factors normal, so p * 2^k rounds once near
    // FLT_MAX instead of overflowing in the exponent field
    const dsv4_v8i k = __builtin_convertvector(kf, dsv4_v8i);
    const dsv4_v8i k1 = k >> 1;
    const dsv4_v8i b1 = (k1 + 127) << 23, b2 = (k - k1 + 127) << 23;
    dsv4_v8 f1, f2;
    memcpy(&f1, &b1, sizeof(f1));
    memcpy(&f2, &b2, sizeof(f2));
    dsv4_v8 y = (p * f1) * f2;
    y = over ? inf : y;
    y = under ? zero : y;
    *out = nan ? x : y;
}

// One 8-lane SwiGLU step (a macro: see DSV4_LOAD8).
#define DSV4_SWIGLU8(y, gp, up)                          \
    DSV4_LOAD8(y##_g, gp);                               \
    DSV4_LOAD8(y##_u, up);                               \
    if (clamp) {                                         \
        y##_g = y##_g > lim ? lim : y##_g;               \
        y##_u = y##_u > lim ? lim : y##_u;               \
        y##_u = y##_u < nlim ? nlim : y##_u;             \
    }                                                    \
    const dsv4_v8 y##_ng = -y##_g;                       \
    dsv4_v8 y##_e;                                       \
    dsv4_exp8(&y##_ng, &y##_e);                          \
    const dsv4_v8 y = y##_g / (one + y##_e) * y##_u * w

// SwiGLU of the experts (dsv4-moe.cpp): g = silu(min(g, limit)) * clamp(u, +-limit) * w (limit <= 0:
// no clamp), every column through the same 8-lane sequence.
DSV4_CLONES void dsv4_swiglu(float * g, const float * u, int64_t n, float limit, float w) {
    const bool clamp = limit > 0;
    const dsv4_v8 lim = DSV4_SPLAT8(limit), nlim = DSV4_SPLAT8(-limit), one = DSV4_SPLAT8(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        DSV4_SWIGLU8(y, g + i, u + i);
        memcpy(g + i, &y, sizeof(y));
    }
    if (i < n) {  // the last n % 8 columns through the same lanes, from a padded copy
        float gb[8] = {0}, ub[8] = {0};
        memcpy(gb, g + i, (size_t) (n - i) * sizeof(float));
        memcpy(ub, u + i, (size_t) (n - i) * sizeof(float));
        DSV4_SWIGLU8(y, gb, ub);
        memcpy(g + i, &y, (size_t) (n - i) * sizeof(float));
    }
}

// In place: s[a] = exp(s[a] - mx) / (exp(sink - mx) + sum_b exp(s[b] - mx)), mx = max(sink, s):
// the attention softmax whose denominator also holds the head's sink. The sum runs over 8 lane
// partials in key order, then DSV4_HSUM8, then the sink term: one fixed order per row.
DSV4_CLONES void dsv4_softmax_sink(float * s, int64_t n, float sink) {
    float mx = sink;
    for (int64_t a = 0; a < n; a++) {
        mx = s[a] > mx ? s[a] : mx;
    }
    const dsv4_v8 mxv = DSV4_SPLAT8(mx);
    dsv4_v8 acc = DSV4_SPLAT8(0.0f);
    int64_t a = 0;
    for (; a + 8 <= n; a += 8) {
        DSV4_LOAD8(v, s + a);
        const dsv4_v8 d = v - mxv;
        dsv4_v8 e;
        dsv4_exp8(&d, &e);
        acc += e;
        memcpy(s + a, &e, sizeof(e));
    }
    if (a < n) {  // the tail through the same lanes; exp(-inf) = 0 in the unused ones adds nothing
        float b[8];
        for (int j = 0; j < 8; j++) {
            b[j] = a + j < n ? s[a + j] : -__builtin_inff();
        }
        DSV4_LOAD8(v, b);
        const dsv4_v8 d = v - mxv;
        dsv4_v8 e;
        dsv4_exp8(&d, &e);
        acc += e;
        memcpy(s + a, &e, (size_t) (n - a) * sizeof(float));
    }
    const dsv4_v8 sv = DSV4_SPLAT8(sink - mx);
    dsv4_v8 es;
    dsv4_exp8(&sv, &es);
    const float inv = 1.0f / (DSV4_HSUM8(acc) + es[0]);
    for (int64_t j = 0; j < n; j++) {
        s[j] *= inv;
    }
}
