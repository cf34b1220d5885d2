// Persistent CPU thread pool. Owned by its creator (the context); no global pool.
//
// dsv4_threadpool_run(pool, fn, ctx) runs fn(ctx, ith, nth) once on every thread of the pool
// (the calling thread is ith = 0) and returns when all of them have returned. Workers wait for
// the next job by spinning briefly (low latency for back-to-back ops in one forward pass), then
// sleep on a condition variable, so an idle engine burns no CPU. Threads are created once, in
// init, never per call.
#pragma once

#include "dsv4.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dsv4_threadpool;

typedef void (*dsv4_threadpool_fn)(void * ctx, int ith, int nth);

// Starts n_threads - 1 workers (n_threads >= 1; the caller of run is thread 0).
// Returns NULL and sets the last error on invalid n_threads or when a thread cannot be created.
struct dsv4_threadpool * dsv4_threadpool_init(int n_threads);

// Stops and joins the workers. NULL is a no-op. Must not be called while a run is in progress.
void dsv4_threadpool_free(struct dsv4_threadpool * pool);

int dsv4_threadpool_n_threads(const struct dsv4_threadpool * pool);

// How long (microseconds) a waiting thread spins before it sleeps. Default 100; 0 sleeps at once.
void dsv4_threadpool_set_spin_us(struct dsv4_threadpool * pool, int spin_us);

// Runs fn on all threads and waits for all of them. One run at a time per pool: calling it from
// inside fn, or from two threads at once, returns DSV4_ERR_INVALID_ARG without running anything.
dsv4_status dsv4_threadpool_run(struct dsv4_threadpool * pool, dsv4_threadpool_fn fn, void * ctx);

#ifdef __cplusplus
}
#endif
