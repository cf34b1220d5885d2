// Memory-read bandwidth: the limit every memory-bound kernel is measured against
// (performance.md "The limit"). A plain read loop over a buffer far larger than the caches, split
// into contiguous per-thread ranges over a pool, so a benchmark can measure the bandwidth in the
// same run as the thing it benchmarks (bench/kernels.cpp, `dsv4 bench`).
#pragma once

#include "dsv4.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dsv4_threadpool;

typedef enum dsv4_read_mode {
    DSV4_READ_PLAIN    = 0,  // loads only; the hardware prefetchers alone
    DSV4_READ_PREFETCH = 1,  // also a software prefetch 16 KB ahead, as the matmul kernels do
} dsv4_read_mode;

// Reads `bytes` of `data` (8-byte aligned; bytes >= 64 * threads) with every thread of `pool`,
// one warm-up pass and then `reps` timed passes; *gbps = bytes / median pass time / 1e9.
dsv4_status dsv4_membench_read(struct dsv4_threadpool * pool, const void * data, size_t bytes, int reps,
                               dsv4_read_mode mode, double * gbps);

// Same over a buffer of `bytes` it allocates and touches first (so the pages exist), then frees.
dsv4_status dsv4_membench_read_alloc(struct dsv4_threadpool * pool, size_t bytes, int reps, dsv4_read_mode mode,
                                     double * gbps);

#ifdef __cplusplus
}
#endif
