// Small numeric helpers of the forward pass and a parallel-for over the context's thread pool.
// Internal to dsv4-forward*.cpp / dsv4-attention.cpp / dsv4-moe.cpp.
#pragma once

#include "cpu/dsv4-threadpool.h"

#include <math.h>
#include <stdint.h>

#include <atomic>
#include <type_traits>

// Runs fn(i0, i1, ith) over [0, n) on the pool's threads; a single-thread pool or n < min_items
// (or n < 2) runs it on the calling thread (ith = 0). Static: one contiguous range per thread.
// Dynamic: items handed out one at a time from a shared counter, for loops whose items cost very
// different amounts (attention rows of a prefill chunk see 1 to window + compressed keys), where
// contiguous ranges leave one thread waiting. Each item's result is computed the same way
// whichever thread takes it, so the output never depends on the schedule.
template <typename Fn>
void dsv4_parallel_run(dsv4_threadpool * pool, int64_t n, int64_t min_items, bool dynamic, Fn && fn) {
    if (n <= 0) {
        return;
    }
    if (!pool || dsv4_threadpool_n_threads(pool) <= 1 || n < min_items || n < 2) {
        fn((int64_t) 0, n, 0);
        return;
    }
    struct job {
        std::remove_reference_t<Fn> * fn;
        int64_t n;
        bool dynamic;
        std::atomic<int64_t> next;
    } j;
    j.fn = &fn;
    j.n = n;
    j.dynamic = dynamic;
    j.next.store(0, std::memory_order_relaxed);
    auto tramp = [](void * ctx, int ith, int nth) {
        job * jb = (job *) ctx;
        if (!jb->dynamic) {
            const int64_t i0 = jb->n * ith / nth;
            const int64_t i1 = jb->n * (ith + 1) / nth;
            if (i0 < i1) {
                (*jb->fn)(i0, i1, ith);
            }
            return;
        }
        for (;;) {
            const int64_t i = jb->next.fetch_add(1, std::memory_order_relaxed);
            if (i >= jb->n) {
                return;
            }
            (*jb->fn)(i, i + 1, ith);
        }
    };
    if (dsv4_threadpool_run(pool, tramp, &j) != DSV4_OK) {
        fn((int64_t) 0, n, 0);  // only on misuse (a nested run): nothing ran, the result is the same
    }
}

template <typename Fn>
void dsv4_parallel_for(dsv4_threadpool * pool, int64_t n, int64_t min_items, Fn && fn) {
    dsv4_parallel_run(pool, n, min_items, false, fn);
}

template <typename Fn>
void dsv4_parallel_for_dynamic(dsv4_threadpool * pool, int64_t n, int64_t min_items, Fn && fn) {
    dsv4_parallel_run(pool, n, min_items, true, fn);
}

// Dot product and y += a * x (dsv4-forward-ops.cpp): 32 independent partial sums in a fixed
// order, so a result never depends on how rows are batched; compiled once per x86 ISA level
// (default / AVX2 / AVX-512) and picked at load time.
float dsv4_dot(const float * a, const float * b, int64_t n);
void  dsv4_axpy(float * y, float a, const float * x, int64_t n);

// The attention core's two products for nh heads against nk keys of n floats,
// blocked so that a key chunk is loaded once for several heads (4 heads x 2 keys per step) and an
// output chunk stays in registers over all keys; fixed order per element, independent of batching.
//   scores: S[h * s_stride + a] = scale * dot(q + h * q_stride, keys[a])
//   values: o[h * o_stride + i] = sum_a S[h * s_stride + a] * keys[a][i]   (o overwritten;
//           the sum runs over a in order, one multiply-add per key, like repeated dsv4_axpy)
void dsv4_attn_scores(float * S, int64_t s_stride, const float * q, int64_t q_stride, int64_t nh,
                      const float * const * keys, int64_t nk, int64_t n, float scale);
void dsv4_attn_values(float * o, int64_t o_stride, const float * S, int64_t s_stride, int64_t nh,
                      const float * const * keys, int64_t nk, int64_t n);

// SwiGLU in place: g = silu(min(g, limit)) * clamp(u, -limit, limit) * w (limit <= 0: no clamp).
void dsv4_swiglu(float * g, const float * u, int64_t n, float limit, float w);

// The attention softmax with a sink in place: s[a] = exp(s[a] - mx) / (exp(sink - mx) + sum_b
// exp(s[b] - mx)), mx = max(sink, max_a s[a]).
void dsv4_softmax_sink(float * s, int64_t n, float sink);

// 1 / sqrt(mean(x^2) + eps), the sum of squares accumulated in double (8 partial sums in a fixed
// order: a single chain was latency-bound, ~2% of a prefill over the 8192-wide mHC rows).
float dsv4_rms_inv(const float * x, int64_t n, float eps);

static inline float dsv4_sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

// v4-model.md §2 RoPE on the LAST rd dims of x[dim]: interleaved pairs (x[2i], x[2i+1]) rotated
// by angle_i; cs = cos[rd/2] then sin[rd/2]. inverse: rotate by -angle (the conjugate).
static inline void dsv4_rope_tail(float * x, int64_t dim, int64_t rd, const float * cs, bool inverse) {
    float * p = x + (dim - rd);
    const int64_t half = rd / 2;
    const float * c = cs;
    const float * s = cs + half;
    for (int64_t i = 0; i < half; i++) {
        const float a = p[2 * i], b = p[2 * i + 1];
        const float sn = inverse ? -s[i] : s[i];
        p[2 * i] = a * c[i] - b * sn;
        p[2 * i + 1] = a * sn + b * c[i];
    }
}

// v4-model.md §4.7: Sylvester-ordered Walsh-Hadamard transform of x[n] (n a power of two),
// scaled by n^-0.5.
static inline void dsv4_hadamard(float * x, int64_t n) {
    for (int64_t h = 1; h < n; h *= 2) {
        for (int64_t i = 0; i < n; i += 2 * h) {
            for (int64_t j = i; j < i + h; j++) {
                const float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
    const float s = (float) (1.0 / sqrt((double) n));
    for (int64_t i = 0; i < n; i++) {
        x[i] *= s;
    }
}

// Deterministic top-k order (v4-model.md §4.7): higher score first, equal scores by lower index.
// -0.0 == +0.0 here, as in the reference's stable sort of (scores + 0.0).
static inline bool dsv4_topk_better(float sa, int32_t ia, float sb, int32_t ib) {
    return sa > sb || (sa == sb && ia < ib);
}
