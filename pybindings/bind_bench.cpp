// Bindings for benchmark helpers: the native memory-read bandwidth loop (cpu/dsv4-membench.h), so
// Python benchmarks (`dsv4 bench`, bench/decode.py) measure the bandwidth limit in the same run
// and with the same loop as bench/kernels.cpp; and the routed-expert bytes that 1-row and n-row
// steps actually stream (the forward pass counts them), for verify-vs-decode byte ratios.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bind_common.h"
#include "cpu/dsv4-membench.h"
#include "cpu/dsv4-threadpool.h"
#include "dsv4-context.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

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

// For each of n_steps positions after a prompt: the routed-expert bytes of a 1-row step and of an
// n_rows-row step at that position (each rolled back), then one row is committed and the next
// position follows. tokens: the prompt, then the rows of every step (a sliding window).
std::vector<std::pair<uint64_t, uint64_t>> routed_expert_bytes(const std::string & path,
                                                                const py::array_t<int32_t, py::array::c_style> & tokens,
                                                                int32_t prompt, int32_t n_rows, int32_t n_steps,
                                                                int32_t n_threads) {
    if (prompt < 1 || n_rows < 1 || n_steps < 1 || n_threads < 1) {
        throw py::value_error("routed_expert_bytes: prompt, n_rows, n_steps and n_threads must be >= 1");
    }
    if (tokens.ndim() != 1 || tokens.shape(0) < (py::ssize_t) prompt + n_steps + n_rows) {
        throw py::value_error("routed_expert_bytes: need a 1-D token array of at least prompt + n_steps + n_rows ids");
    }
    std::vector<int32_t> ids(tokens.data(), tokens.data() + tokens.shape(0));
    std::vector<std::pair<uint64_t, uint64_t>> out;
    dsv4_status st = DSV4_OK;
    {
        py::gil_scoped_release release;
        dsv4_model_params mp = dsv4_model_default_params();
        mp.load_draft = false;
        dsv4_model * model = nullptr;
        st = dsv4_model_load(path.c_str(), &mp, &model);
        std::unique_ptr<dsv4_model, void (*)(dsv4_model *)> mguard(model, dsv4_model_free);
        dsv4_context * ctx = nullptr;
        if (st == DSV4_OK) {
            dsv4_context_params cp = dsv4_context_default_params();
            cp.n_ctx = prompt + n_steps + n_rows + 8;
            cp.n_threads = n_threads;
            st = dsv4_context_init(model, &cp, &ctx);
        }
        std::unique_ptr<dsv4_context, void (*)(dsv4_context *)> cguard(ctx, dsv4_context_free);
        if (st == DSV4_OK) {
            st = dsv4_decode(ctx, ids.data(), prompt, 0, nullptr, 0, nullptr, nullptr);
        }
        for (int32_t i = 0; i < n_steps && st == DSV4_OK; i++) {
            const int32_t pos = prompt + i;
            uint64_t bytes[2] = { 0, 0 };
            const int32_t rows[2] = { 1, n_rows };
            for (int j = 0; j < 2 && st == DSV4_OK; j++) {
                const uint64_t before = ctx->fwd.moe_expert_bytes;
                st = dsv4_decode(ctx, ids.data() + pos, rows[j], pos, nullptr, 0, nullptr, nullptr);
                bytes[j] = ctx->fwd.moe_expert_bytes - before;
                if (st == DSV4_OK) st = dsv4_context_truncate(ctx, pos);
            }
            if (st == DSV4_OK) st = dsv4_decode(ctx, ids.data() + pos, 1, pos, nullptr, 0, nullptr, nullptr);
            out.emplace_back(bytes[0], bytes[1]);
        }
    }
    if (st != DSV4_OK) dsv4_py::throw_last_error(st);
    return out;
}

}  // namespace

void dsv4_bind_bench(py::module_ & m) {
    m.def("read_bandwidth", &read_bandwidth, py::arg("n_threads"), py::arg("bytes") = (size_t) 256 << 20,
          py::arg("reps") = 5, py::arg("prefetch") = false,
          "Memory-read bandwidth in GB/s: a plain read loop over a fresh buffer of `bytes` split across n_threads "
          "threads, median of `reps` passes after a warm-up (prefetch=True adds a software prefetch 16 KB ahead).");
    m.def("routed_expert_bytes", &routed_expert_bytes, py::arg("path"), py::arg("tokens"), py::arg("prompt"),
          py::arg("n_rows") = 6, py::arg("n_steps") = 8, py::arg("n_threads") = 1,
          "Routed-expert weight bytes streamed by a 1-row and by an n_rows-row step at each of n_steps positions "
          "after a prompt of `prompt` tokens (both rolled back, then one row committed): [(bytes_1, bytes_n), ...]. "
          "Default activation mode, the file's own routing.");
}
