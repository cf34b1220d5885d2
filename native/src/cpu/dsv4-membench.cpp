// Memory-read bandwidth loop (see dsv4-membench.h).
#include "cpu/dsv4-membench.h"

#include "cpu/dsv4-threadpool.h"
#include "dsv4-impl.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct read_task {
    const uint64_t * p;
    size_t n;  // words
    bool prefetch;
    std::vector<uint64_t> sums;  // one cache line per thread: no false sharing of the results
};

// Sums the words of this thread's contiguous range with eight independent accumulators (so the
// adds never limit the loads). With prefetch, also asks for the line 16 KB ahead: the hardware
// prefetchers alone do not reach the peak on every machine.
void read_fn(void * ctx, int ith, int nth) {
    read_task * t = (read_task *) ctx;
    const size_t i0 = t->n * ith / nth & ~(size_t) 7;
    const size_t i1 = ith == nth - 1 ? t->n : (t->n * (ith + 1) / nth & ~(size_t) 7);
    const uint64_t * p = t->p;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    size_t i = i0;
    if (t->prefetch) {
        for (; i + 8 <= i1; i += 8) {
            __builtin_prefetch(p + i + 2048, 0, 2);
            s0 += p[i];     s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
            s4 += p[i + 4]; s5 += p[i + 5]; s6 += p[i + 6]; s7 += p[i + 7];
        }
    } else {
        for (; i + 8 <= i1; i += 8) {
            s0 += p[i];     s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
            s4 += p[i + 4]; s5 += p[i + 5]; s6 += p[i + 6]; s7 += p[i + 7];
        }
    }
    for (; i < i1; i++) {
        s0 += p[i];
    }
    t->sums[(size_t) ith * 8] = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
}

}  // namespace

extern "C" dsv4_status dsv4_membench_read(dsv4_threadpool * pool, const void * data, size_t bytes, int reps,
                                          dsv4_read_mode mode, double * gbps) {
    if (!pool || !data || !gbps) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_membench_read: NULL argument");
    }
    const int nth = dsv4_threadpool_n_threads(pool);
    if (reps < 1 || ((uintptr_t) data & 7) != 0 || bytes < (size_t) 64 * nth) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG,
                              "dsv4_membench_read: need reps >= 1 (got %d), 8-byte aligned data and at least %zu bytes "
                              "(got %zu)", reps, (size_t) 64 * nth, bytes);
    }
    if (mode != DSV4_READ_PLAIN && mode != DSV4_READ_PREFETCH) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_membench_read: unknown mode %d", (int) mode);
    }
    read_task t;
    t.p = (const uint64_t *) data;
    t.n = bytes / 8;
    t.prefetch = mode == DSV4_READ_PREFETCH;
    t.sums.assign((size_t) nth * 8, 0);
    std::vector<double> times;
    for (int r = 0; r <= reps; r++) {  // pass 0 warms the pool and the TLB
        const double t0 = now_s();
        const dsv4_status st = dsv4_threadpool_run(pool, read_fn, &t);
        const double dt = now_s() - t0;
        if (st != DSV4_OK) {
            return st;
        }
        if (r > 0) {
            times.push_back(dt);
        }
    }
    // The sums are the loop's only output: publishing one keeps the compiler from dropping the loads.
    uint64_t s = 0;
    for (int i = 0; i < nth; i++) {
        s += t.sums[(size_t) i * 8];
    }
    volatile uint64_t sink = s;
    (void) sink;
    std::sort(times.begin(), times.end());
    const size_t n = times.size();
    const double med = n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
    *gbps = (double) (t.n * 8) / std::max(med, 1e-12) / 1e9;
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_membench_read_alloc(dsv4_threadpool * pool, size_t bytes, int reps, dsv4_read_mode mode,
                                                double * gbps) {
    if (!pool || !gbps) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_membench_read_alloc: NULL argument");
    }
    void * p = nullptr;
    if (posix_memalign(&p, 4096, bytes ? bytes : 64) != 0) {
        return dsv4_set_error(DSV4_ERR_NO_MEMORY, "dsv4_membench_read_alloc: cannot allocate %zu bytes", bytes);
    }
    std::memset(p, 1, bytes);
    const dsv4_status st = dsv4_membench_read(pool, p, bytes, reps, mode, gbps);
    free(p);
    return st;
}
