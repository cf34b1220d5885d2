// The forward pass's vector helpers (dsv4-forward-ops.cpp) against double-precision formulas:
// SwiGLU and the sink softmax (their 8-lane exp included: the clamp ranges, overflow to inf,
// underflow to 0, NaN, every tail length), the RMS scale, the attention score and value products, and the
// dynamically scheduled parallel-for (every item exactly once, on any thread count).
#include "dsv4-forward-ops.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "test-common.h"

namespace {

struct rng {
    uint64_t s;
    explicit rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint32_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return (uint32_t) (s >> 11);
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * (float) (next() & 0xFFFFFF) / (float) 0x1000000; }
};

// |a - b| within rel of |b| (or both tiny).
bool close(double a, double b, double rel) {
    return std::fabs(a - b) <= rel * std::fabs(b) + 1e-30;
}

double swiglu_ref(double g, double u, double limit, double w) {
    if (limit > 0) {
        g = std::fmin(g, limit);
        u = std::fmax(-limit, std::fmin(u, limit));
    }
    return g / (1.0 + std::exp(-g)) * u * w;
}

void test_swiglu() {
    rng r(1);
    // every tail length, values across the whole range the exp sees (|g| up to 120: e^-g overflows)
    for (int n = 1; n <= 40; n++) {
        for (float limit : { 0.0f, 7.0f }) {
            std::vector<float> g((size_t) n), u((size_t) n), g0;
            for (int i = 0; i < n; i++) {
                g[(size_t) i] = i % 5 == 0 ? r.uniform(-120.0f, 120.0f) : r.uniform(-12.0f, 12.0f);
                u[(size_t) i] = r.uniform(-10.0f, 10.0f);
            }
            g0 = g;
            const float w = 0.75f;
            dsv4_swiglu(g.data(), u.data(), n, limit, w);
            for (int i = 0; i < n; i++) {
                const double ref = swiglu_ref(g0[(size_t) i], u[(size_t) i], limit, w);
                CHECK(close(g[(size_t) i], ref, 3e-6), "swiglu n %d limit %g: g %g u %g -> %.9g, want %.9g", n,
                      (double) limit, (double) g0[(size_t) i], (double) u[(size_t) i], (double) g[(size_t) i], ref);
            }
        }
    }
    // the exp's edges: e^-g overflows (g < -88.7) -> -0, e^-g underflows (g > 87.3) -> g, NaN stays NaN
    const float edge[] = { -1000.0f, -88.8f, -88.7f, -88.0f, -87.0f, 0.0f, 87.0f, 87.4f, 100.0f, 1e30f };
    for (float e : edge) {
        float g = e, u = 1.0f;
        dsv4_swiglu(&g, &u, 1, 0.0f, 1.0f);
        const double ref = swiglu_ref(e, 1.0, 0.0, 1.0);
        CHECK(std::isfinite(g) && close(g, ref, 3e-6), "swiglu edge %g -> %.9g, want %.9g", (double) e, (double) g, ref);
    }
    float gn = NAN, un = 1.0f;
    dsv4_swiglu(&gn, &un, 1, 0.0f, 1.0f);
    CHECK(std::isnan(gn), "swiglu(NaN) is %g", (double) gn);
}

void test_softmax_sink() {
    rng r(2);
    for (int n = 0; n <= 41; n++) {
        for (float spread : { 1.0f, 30.0f, 200.0f }) {
            std::vector<float> s((size_t) n + 1), s0;
            for (int i = 0; i < n; i++) {
                s[(size_t) i] = r.uniform(-spread, spread);
            }
            s[(size_t) n] = 12345.0f;  // past the row: must stay untouched
            const float sink = r.uniform(-spread, spread);
            s0 = s;
            dsv4_softmax_sink(s.data(), n, sink);
            double mx = sink;
            for (int i = 0; i < n; i++) {
                mx = std::fmax(mx, (double) s0[(size_t) i]);
            }
            double den = std::exp((double) sink - mx), total = 0;
            for (int i = 0; i < n; i++) {
                den += std::exp((double) s0[(size_t) i] - mx);
            }
            for (int i = 0; i < n; i++) {
                const double ref = std::exp((double) s0[(size_t) i] - mx) / den;
                // probabilities below FLT_MIN come out 0 (no subnormal exp results)
                CHECK(close(s[(size_t) i], ref, 3e-6) || (ref < 1.2e-38 && s[(size_t) i] == 0.0f),
                      "softmax n %d spread %g: p[%d] %.9g, want %.9g", n, (double) spread, i, (double) s[(size_t) i], ref);
                total += s[(size_t) i];
            }
            total += std::exp((double) sink - mx) / den;
            CHECK(std::fabs(total - 1.0) < 1e-5, "softmax n %d: mass %.9g", n, total);
            CHECK(s[(size_t) n] == 12345.0f, "softmax n %d wrote past the row", n);
        }
    }
}

void test_rms_inv() {
    rng r(4);
    for (int64_t n : { 1, 3, 7, 8, 9, 16, 31, 2048, 8192 }) {
        std::vector<float> x((size_t) n);
        for (auto & v : x) v = r.uniform(-3, 3);
        double ss = 0;
        for (float v : x) ss += (double) v * v;
        const double ref = 1.0 / std::sqrt(ss / (double) n + 1e-6);
        const float got = dsv4_rms_inv(x.data(), n, 1e-6f);
        CHECK(close(got, ref, 2e-7), "rms_inv n %lld: %.9g, want %.9g", (long long) n, (double) got, ref);
    }
}

void test_attention_products() {
    rng r(3);
    for (int64_t n : { 8, 13, 64, 72 }) {
        for (int64_t nh : { 1, 3, 4, 6 }) {
            for (int64_t nk : { 1, 2, 5, 9 }) {
                std::vector<float> q((size_t) (nh * n)), kv((size_t) (nk * n)), S((size_t) (nh * nk)),
                    o((size_t) (nh * n), -1.0f);
                std::vector<const float *> keys((size_t) nk);
                for (auto & v : q) v = r.uniform(-1, 1);
                for (auto & v : kv) v = r.uniform(-1, 1);
                for (int64_t a = 0; a < nk; a++) keys[(size_t) a] = kv.data() + a * n;
                dsv4_attn_scores(S.data(), nk, q.data(), n, nh, keys.data(), nk, n, 0.5f);
                dsv4_attn_values(o.data(), n, S.data(), nk, nh, keys.data(), nk, n);
                for (int64_t h = 0; h < nh; h++) {
                    for (int64_t a = 0; a < nk; a++) {
                        double ref = 0;
                        for (int64_t i = 0; i < n; i++) ref += (double) q[(size_t) (h * n + i)] * kv[(size_t) (a * n + i)];
                        CHECK(std::fabs(S[(size_t) (h * nk + a)] - 0.5 * ref) < 1e-5, "scores n %lld nh %lld nk %lld",
                              (long long) n, (long long) nh, (long long) nk);
                    }
                    for (int64_t i = 0; i < n; i++) {
                        double ref = 0;
                        for (int64_t a = 0; a < nk; a++) ref += (double) S[(size_t) (h * nk + a)] * kv[(size_t) (a * n + i)];
                        CHECK(std::fabs(o[(size_t) (h * n + i)] - ref) < 1e-5, "values n %lld nh %lld nk %lld",
                              (long long) n, (long long) nh, (long long) nk);
                    }
                }
            }
        }
    }
}

void test_parallel_for_dynamic() {
    for (int nth = 1; nth <= 4; nth++) {
        dsv4_threadpool * pool = dsv4_threadpool_init(nth);
        CHECK(pool != nullptr, "pool %d", nth);
        for (int64_t n : { 0, 1, 2, 5, 257 }) {
            for (int64_t min_items : { 1, 4 }) {
                std::vector<std::atomic<int>> hits((size_t) (n > 0 ? n : 1));
                for (auto & h : hits) h.store(0);
                std::atomic<int> bad_range{0}, bad_thread{0};
                dsv4_parallel_for_dynamic(pool, n, min_items, [&](int64_t i0, int64_t i1, int ith) {
                    if (i0 < 0 || i1 > n || i0 >= i1) bad_range++;
                    if (ith < 0 || ith >= nth) bad_thread++;
                    for (int64_t i = i0; i < i1 && i >= 0 && i < n; i++) hits[(size_t) i]++;
                });
                int wrong = 0;
                for (int64_t i = 0; i < n; i++) wrong += hits[(size_t) i].load() != 1;
                CHECK(wrong == 0 && bad_range == 0 && bad_thread == 0,
                      "parallel_for_dynamic nth %d n %lld min %lld: %d items not run once, %d bad ranges, %d bad threads",
                      nth, (long long) n, (long long) min_items, wrong, bad_range.load(), bad_thread.load());
            }
        }
        dsv4_threadpool_free(pool);
    }
}

}  // namespace

int main() {
    test_swiglu();
    test_softmax_sink();
    test_rms_inv();
    test_attention_products();
    test_parallel_for_dynamic();
    if (g_failures) {
        std::fprintf(stderr, "test_forward_ops: %d of %d checks failed\n", g_failures, g_checks);
        return 1;
    }
    std::printf("test_forward_ops: ok (%d checks)\n", g_checks);
    return 0;
}
