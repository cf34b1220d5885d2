// Bindings for benchmark helpers: the native memory-read bandwidth loop (cpu/dsv4-membench.h), so
// Python benchmarks (`dsv4 bench`, bench/decode.py) measure the bandwidth limit in the same run
// and with the same loop as bench/kernels.cpp.
#include <pybind11/pybind11.h>

#include "bind_common.h"
#include "cpu/dsv4-membench.h"
#include "cpu/dsv4-threadpool.h"

#include <memory>
#include <string>

namespace py = pybind11;

namespace {

double read_bandwidth(int n_threads, size_t bytes, int reps, bool prefetch) {
    if (n_threads < 1 || n_threads > 1024) {
        throw py::value_error("read_bandwidth: n_threads must be in [1, 1024], got " + std::to_string(n_threads));
    }
    double gbps = 0;
    dsv4_status st;
    {
        py::gil_scoped_release release;
        std::unique_ptr<dsv4_threadpool, void (*)(dsv4_threadpool *)> pool(dsv4_threadpool_init(n_threads),
                                                                           dsv4_threadpool_free);
        st = pool ? dsv4_membench_read_alloc(pool.get(), bytes, reps, prefetch ? DSV4_READ_PREFETCH : DSV4_READ_PLAIN,
                                             &gbps)
                  : DSV4_ERR_NO_MEMORY;
    }
    if (st != DSV4_OK) dsv4_py::throw_last_error(st);
    return gbps;
}

}  // namespace

void dsv4_bind_bench(py::module_ & m) {
    m.def("read_bandwidth", &read_bandwidth, py::arg("n_threads"), py::arg("bytes") = (size_t) 256 << 20,
          py::arg("reps") = 5, py::arg("prefetch") = false,
          "Memory-read bandwidth in GB/s: a plain read loop over a fresh buffer of `bytes` split across n_threads "
          "threads, median of `reps` passes after a warm-up (prefetch=True adds a software prefetch 16 KB ahead).");
}
