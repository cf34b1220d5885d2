// Vector helpers of the forward pass (attention core, indexer scores, mHC sums). GCC/Clang vector
// extensions give explicit lanes, so every ISA clone performs the same operations in the same
// order; target_clones compiles them for AVX2 and AVX-512 beside the baseline without -march.
#include "dsv4-forward-ops.h"

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
    float r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
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
