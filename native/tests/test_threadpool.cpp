// Thread pool: every thread runs each job exactly once, the caller is thread 0, run() returns only
// after all threads finished, both the spinning and the sleeping wake-up paths work, and misuse
// (nested runs, bad sizes) is refused without running anything.
#include "cpu/dsv4-threadpool.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "test-common.h"

namespace {

struct alignas(64) slot {
    int64_t value;
    int64_t calls;
    int     nth_seen;
};

struct sum_job {
    int64_t n;
    slot    slots[8];
    std::thread::id caller;
    std::atomic<int> caller_was_thread0{0};
};

void sum_fn(void * ctx, int ith, int nth) {
    sum_job * job = (sum_job *) ctx;
    const int64_t i0 = job->n * ith / nth;
    const int64_t i1 = job->n * (ith + 1) / nth;
    int64_t s = 0;
    for (int64_t i = i0; i < i1; i++) {
        s += i;
    }
    job->slots[ith].value = s;
    job->slots[ith].calls++;
    job->slots[ith].nth_seen = nth;
    if (ith == 0 && std::this_thread::get_id() == job->caller) {
        job->caller_was_thread0.fetch_add(1);
    }
}

void test_sum_split_across_threads_matches_closed_form(int n_threads) {
    dsv4_threadpool * pool = dsv4_threadpool_init(n_threads);
    CHECK(pool != nullptr, "init(%d) failed: %s", n_threads, dsv4_last_error());
    if (!pool) {
        return;
    }
    CHECK(dsv4_threadpool_n_threads(pool) == n_threads, "n_threads");
    sum_job job;
    std::memset(job.slots, 0, sizeof(job.slots));
    job.caller = std::this_thread::get_id();
    const int runs = 20000;
    for (int run = 0; run < runs; run++) {
        job.n = 1000 + run % 97;
        for (int t = 0; t < n_threads; t++) {
            job.slots[t].value = -1;
        }
        CHECK(dsv4_threadpool_run(pool, sum_fn, &job) == DSV4_OK, "run failed");
        int64_t total = 0;
        for (int t = 0; t < n_threads; t++) {
            CHECK(job.slots[t].value >= 0, "thread %d did not run (run %d)", t, run);
            total += job.slots[t].value;
        }
        CHECK(total == job.n * (job.n - 1) / 2, "sum %lld != %lld (threads %d, run %d)", (long long) total,
              (long long) (job.n * (job.n - 1) / 2), n_threads, run);
        if (g_failures > 10) {
            break;
        }
    }
    for (int t = 0; t < n_threads; t++) {
        CHECK(job.slots[t].calls == runs, "thread %d ran %lld times, expected %d", t, (long long) job.slots[t].calls,
              runs);
        CHECK(job.slots[t].nth_seen == n_threads, "thread %d saw nth %d", t, job.slots[t].nth_seen);
    }
    CHECK(job.caller_was_thread0.load() == runs, "the caller must be thread 0");
    dsv4_threadpool_free(pool);
}

struct slow_job {
    std::atomic<int> done{0};
};

void slow_fn(void * ctx, int ith, int nth) {
    // the caller finishes first and must wait (spin, then sleep) for the others
    if (ith != 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ((slow_job *) ctx)->done.fetch_add(1);
}

void test_run_waits_for_all_and_wakes_sleeping_workers(int n_threads, int spin_us) {
    dsv4_threadpool * pool = dsv4_threadpool_init(n_threads);
    if (!pool) {
        CHECK(false, "init failed");
        return;
    }
    dsv4_threadpool_set_spin_us(pool, spin_us);
    for (int round = 0; round < 5; round++) {
        // idle longer than the spin time: workers are asleep on the condition variable
        std::this_thread::sleep_for(std::chrono::milliseconds(3));
        slow_job job;
        CHECK(dsv4_threadpool_run(pool, slow_fn, &job) == DSV4_OK, "run");
        CHECK(job.done.load() == n_threads, "run returned after %d of %d threads", job.done.load(), n_threads);
    }
    // back-to-back runs with no spinning at all: every wake-up goes through the condition variable
    sum_job job;
    std::memset(job.slots, 0, sizeof(job.slots));
    job.caller = std::this_thread::get_id();
    job.n = 12345;
    for (int run = 0; run < 2000; run++) {
        CHECK(dsv4_threadpool_run(pool, sum_fn, &job) == DSV4_OK, "run");
    }
    for (int t = 0; t < n_threads; t++) {
        CHECK(job.slots[t].calls == 2000, "thread %d ran %lld times (spin %d)", t, (long long) job.slots[t].calls,
              spin_us);
    }
    dsv4_threadpool_free(pool);
}

struct nested_job {
    dsv4_threadpool * pool;
    std::atomic<int> refused{0};
};

void noop_fn(void *, int, int) {}

void nested_fn(void * ctx, int ith, int) {
    nested_job * job = (nested_job *) ctx;
    if (ith == 0 && dsv4_threadpool_run(job->pool, noop_fn, nullptr) == DSV4_ERR_INVALID_ARG) {
        job->refused.fetch_add(1);
    }
}

void test_misuse_is_refused() {
    CHECK(dsv4_threadpool_init(0) == nullptr, "init(0) must fail");
    CHECK(std::strlen(dsv4_last_error()) > 0, "init(0) sets an error");
    CHECK(dsv4_threadpool_init(-3) == nullptr, "init(-3) must fail");
    dsv4_threadpool_free(nullptr);
    CHECK(dsv4_threadpool_run(nullptr, noop_fn, nullptr) == DSV4_ERR_INVALID_ARG, "run(NULL pool)");
    dsv4_threadpool * pool = dsv4_threadpool_init(2);
    CHECK(dsv4_threadpool_run(pool, nullptr, nullptr) == DSV4_ERR_INVALID_ARG, "run(NULL fn)");
    nested_job job;
    job.pool = pool;
    CHECK(dsv4_threadpool_run(pool, nested_fn, &job) == DSV4_OK, "outer run");
    CHECK(job.refused.load() == 1, "a nested run must be refused");
    CHECK(dsv4_threadpool_run(pool, noop_fn, nullptr) == DSV4_OK, "the pool still works after a refused run");
    dsv4_threadpool_free(pool);
}

void test_create_and_free_repeatedly() {
    for (int i = 0; i < 50; i++) {
        dsv4_threadpool * pool = dsv4_threadpool_init(1 + i % 4);
        CHECK(pool != nullptr, "init");
        if (i % 2 == 0) {
            CHECK(dsv4_threadpool_run(pool, noop_fn, nullptr) == DSV4_OK, "run");
        }
        dsv4_threadpool_free(pool);
    }
}

}  // namespace

int main() {
    for (int n = 1; n <= 4; n++) {
        test_sum_split_across_threads_matches_closed_form(n);
    }
    for (int n = 2; n <= 4; n++) {
        test_run_waits_for_all_and_wakes_sleeping_workers(n, 100);
        test_run_waits_for_all_and_wakes_sleeping_workers(n, 0);
    }
    test_misuse_is_refused();
    test_create_and_free_repeatedly();
    if (g_failures) {
        std::fprintf(stderr, "test_threadpool: %d failure(s)\n", g_failures);
        return 1;
    }
    std::printf("test_threadpool: ok\n");
    return 0;
}
