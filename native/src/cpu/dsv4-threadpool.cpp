// Persistent thread pool: generation counter + spin-then-sleep waits on both sides.
//
// Protocol. run() publishes (fn, ctx), sets `pending` to the number of workers and bumps
// `generation`; workers that see a new generation run fn and decrement `pending`; run() waits for
// `pending` to reach 0. Each wait spins for up to spin_us, then sleeps on a condition variable.
// Lost wake-ups are excluded by a Dekker-style pairing of sequentially consistent operations:
// a sleeper announces itself (n_sleeping / main_sleeping) before re-checking the condition, and a
// waker changes the condition before checking for announced sleepers, so at least one of the two
// sees the other; the notify itself happens under the mutex the sleeper waits with.
#include "cpu/dsv4-threadpool.h"

#include "dsv4-impl.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// Waits until pred() holds for up to spin_us: pause-spins for the first few microseconds (the
// common case, a job that follows at once), then yields between polls so that on an
// oversubscribed machine the thread we wait for can run on our core. Returns pred()'s last value.
template <typename Pred>
bool spin_until(Pred pred, int spin_us) {
    if (pred()) {
        return true;
    }
    if (spin_us <= 0) {
        return false;
    }
    const auto start = std::chrono::steady_clock::now();
    const auto pure_spin = std::chrono::microseconds(spin_us < 5 ? spin_us : 5);
    const auto deadline = start + std::chrono::microseconds(spin_us);
    for (;;) {
        for (int i = 0; i < 32; i++) {
            if (pred()) {
                return true;
            }
            cpu_relax();
        }
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            return pred();
        }
        if (now - start >= pure_spin) {
            std::this_thread::yield();
        }
    }
}

}  // namespace

struct dsv4_threadpool {
    int n_threads = 1;
    std::atomic<int> spin_us{100};
    std::vector<std::thread> workers;

    // The current job; written by run() before the generation bump that publishes it.
    dsv4_threadpool_fn fn = nullptr;
    void * ctx = nullptr;

    alignas(64) std::atomic<uint64_t> generation{0};
    alignas(64) std::atomic<int> pending{0};
    alignas(64) std::atomic<int> n_sleeping{0};
    std::atomic<bool> main_sleeping{false};
    std::atomic<bool> stop{false};
    std::atomic<bool> busy{false};

    std::mutex mutex;
    std::condition_variable cv_work;  // workers sleep here between jobs
    std::condition_variable cv_done;  // run() sleeps here while workers finish
};

static void worker_main(dsv4_threadpool * pool, int ith) {
    uint64_t seen = 0;
    for (;;) {
        auto new_job = [&] {
            return pool->generation.load(std::memory_order_acquire) != seen;
        };
        if (!spin_until(new_job, pool->spin_us.load(std::memory_order_relaxed))) {
            std::unique_lock<std::mutex> lock(pool->mutex);
            pool->n_sleeping.fetch_add(1, std::memory_order_seq_cst);
            while (pool->generation.load(std::memory_order_seq_cst) == seen) {
                pool->cv_work.wait(lock);
            }
            pool->n_sleeping.fetch_sub(1, std::memory_order_relaxed);
        }
        seen = pool->generation.load(std::memory_order_acquire);
        if (pool->stop.load(std::memory_order_acquire)) {
            return;
        }
        pool->fn(pool->ctx, ith, pool->n_threads);
        if (pool->pending.fetch_sub(1, std::memory_order_seq_cst) == 1) {
            if (pool->main_sleeping.load(std::memory_order_seq_cst)) {
                std::lock_guard<std::mutex> lock(pool->mutex);
                pool->cv_done.notify_one();
            }
        }
    }
}

extern "C" dsv4_threadpool * dsv4_threadpool_init(int n_threads) {
    if (n_threads < 1 || n_threads > 1024) {
        dsv4_set_error(DSV4_ERR_INVALID_ARG, "threadpool: n_threads must be in [1, 1024], got %d", n_threads);
        return nullptr;
    }
    dsv4_threadpool * pool = new (std::nothrow) dsv4_threadpool;
    if (!pool) {
        dsv4_set_error(DSV4_ERR_NO_MEMORY, "threadpool: out of memory");
        return nullptr;
    }
    pool->n_threads = n_threads;
    try {
        pool->workers.reserve((size_t) n_threads - 1);
        for (int i = 1; i < n_threads; i++) {
            pool->workers.emplace_back(worker_main, pool, i);
        }
    } catch (...) {
        pool->n_threads = (int) pool->workers.size() + 1;
        dsv4_threadpool_free(pool);
        dsv4_set_error(DSV4_ERR_NO_MEMORY, "threadpool: cannot start %d threads", n_threads - 1);
        return nullptr;
    }
    return pool;
}

extern "C" void dsv4_threadpool_free(dsv4_threadpool * pool) {
    if (!pool) {
        return;
    }
    {
        std::lock_guard<std::mutex> lock(pool->mutex);
        pool->stop.store(true, std::memory_order_seq_cst);
        pool->generation.fetch_add(1, std::memory_order_seq_cst);
        pool->cv_work.notify_all();
    }
    for (auto & t : pool->workers) {
        t.join();
    }
    delete pool;
}

extern "C" int dsv4_threadpool_n_threads(const dsv4_threadpool * pool) {
    return pool ? pool->n_threads : 1;
}

extern "C" void dsv4_threadpool_set_spin_us(dsv4_threadpool * pool, int spin_us) {
    if (pool) {
        pool->spin_us.store(spin_us < 0 ? 0 : spin_us, std::memory_order_relaxed);
    }
}

extern "C" dsv4_status dsv4_threadpool_run(dsv4_threadpool * pool, dsv4_threadpool_fn fn, void * ctx) {
    if (!pool || !fn) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "threadpool_run: pool and fn must not be NULL");
    }
    bool expected = false;
    if (!pool->busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "threadpool_run: the pool is already running a job "
                                                    "(nested or concurrent run)");
    }
    const int nth = pool->n_threads;
    if (nth > 1) {
        pool->fn = fn;
        pool->ctx = ctx;
        pool->pending.store(nth - 1, std::memory_order_relaxed);
        pool->generation.fetch_add(1, std::memory_order_seq_cst);  // publishes fn, ctx, pending
        if (pool->n_sleeping.load(std::memory_order_seq_cst) > 0) {
            std::lock_guard<std::mutex> lock(pool->mutex);
            pool->cv_work.notify_all();
        }
    }

    fn(ctx, 0, nth);

    if (nth > 1) {
        auto all_done = [&] {
            return pool->pending.load(std::memory_order_acquire) == 0;
        };
        if (!spin_until(all_done, pool->spin_us.load(std::memory_order_relaxed))) {
            std::unique_lock<std::mutex> lock(pool->mutex);
            pool->main_sleeping.store(true, std::memory_order_seq_cst);
            while (pool->pending.load(std::memory_order_seq_cst) != 0) {
                pool->cv_done.wait(lock);
            }
            pool->main_sleeping.store(false, std::memory_order_relaxed);
        }
    }
    pool->busy.store(false, std::memory_order_release);
    return DSV4_OK;
}
