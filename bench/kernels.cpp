// Kernel benchmark: GEMV/GEMM GB/s and GFLOP/s per weight type, thread count, row count and
// matrix size (one that fits in cache, one far beyond it), next to a plain memory-read loop
// measured in the same run, so every kernel number can be read as a fraction of the bandwidth
// limit. Also the expert-batched MoE path (top-k routing over stacked MXFP4 experts).
// Types q8_0_fa / mxfp4_fa are Q8_0 / MXFP4 with params.float_activations (the exact mode).
//
// Built and run by bench/kernels.py (which records the machine and writes the JSON); prints JSON
// on stdout and progress on stderr. Usage:
//   kernels [--threads 1,2] [--rows 1,6] [--small-mb 1] [--large-mb 256] [--types f32,f16,...]
//           [--isa auto|scalar|avx2|avx512] [--isa-compare] [--reps-large 7] [--quick] [--n-in 4096]
//           [--moe-unpacked]
//   kernels --peak    the core's dot-product issue rate (AVX-512 BF16 vdpbf16ps, VNNI vpdpbusd):
//                     the compute ceiling of the bf16 and int8 kernels, one thread, JSON on stdout
#include "cpu/dsv4-matmul.h"
#include "cpu/dsv4-membench.h"
#include "cpu/dsv4-threadpool.h"
#include "dsv4-types.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<int> parse_ints(const char * s) {
    std::vector<int> out;
    while (*s) {
        out.push_back(std::atoi(s));
        const char * c = std::strchr(s, ',');
        if (!c) {
            break;
        }
        s = c + 1;
    }
    return out;
}

struct xorshift {
    uint64_t s;
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
};

// Aligned, page-touched buffer.
struct buffer {
    uint8_t * p = nullptr;
    size_t n = 0;
    explicit buffer(size_t bytes) : n(bytes) {
        if (posix_memalign((void **) &p, 4096, bytes ? bytes : 64) != 0) {
            std::fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
            std::exit(1);
        }
    }
    ~buffer() { free(p); }
    buffer(const buffer &) = delete;
    buffer & operator=(const buffer &) = delete;
};

// Valid random rows of a type (finite values, no FP8 NaN codes, moderate scales).
void fill_weights(dsv4_type type, uint8_t * data, int64_t n_rows, size_t row_bytes, int64_t n_in, uint64_t seed) {
    xorshift g{ seed * 2654435761ull + 12345 };
    for (int64_t o = 0; o < n_rows; o++) {
        uint8_t * row = data + (size_t) o * row_bytes;
        switch (type) {
            case DSV4_TYPE_F32:
                for (int64_t k = 0; k < n_in; k++) {
                    const float v = (float) ((int) (g.next() & 0xFF) - 128) * (1.0f / 64);
                    std::memcpy(row + 4 * k, &v, 4);
                }
                break;
            case DSV4_TYPE_F16:
            case DSV4_TYPE_BF16:
                for (int64_t k = 0; k < n_in; k++) {
                    const float v = (float) ((int) (g.next() & 0xFF) - 128) * (1.0f / 64);
                    const uint16_t h = type == DSV4_TYPE_F16 ? dsv4_f32_to_f16(v) : dsv4_f32_to_bf16(v);
                    std::memcpy(row + 2 * k, &h, 2);
                }
                break;
            case DSV4_TYPE_FP8_E4M3:
                for (int64_t k = 0; k < n_in; k += 8) {
                    uint64_t r = g.next();
                    for (int j = 0; j < 8 && k + j < n_in; j++, r >>= 8) {
                        const uint8_t b = (uint8_t) r;
                        row[k + j] = (b & 0x7F) == 0x7F ? (uint8_t) (b - 1) : b;
                    }
                }
                break;
            case DSV4_TYPE_Q8_0:
                for (int64_t b = 0; b < n_in / 32; b++) {
                    uint8_t * blk = row + b * DSV4_Q8_0_BLOCK_BYTES;
                    const uint16_t d = dsv4_f32_to_f16(0.01f);
                    std::memcpy(blk, &d, 2);
                    for (int j = 0; j < 32; j += 8) {
                        const uint64_t r = g.next();
                        std::memcpy(blk + 2 + j, &r, 8);
                    }
                }
                break;
            case DSV4_TYPE_MXFP4:
                for (int64_t b = 0; b < n_in / 32; b++) {
                    uint8_t * blk = row + b * DSV4_MXFP4_BLOCK_BYTES;
                    blk[0] = (uint8_t) (124 + (g.next() & 7));
                    const uint64_t r0 = g.next(), r1 = g.next();
                    std::memcpy(blk + 1, &r0, 8);
                    std::memcpy(blk + 9, &r1, 8);
                }
                break;
            default:
                break;
        }
    }
}

// ---- memory-read bandwidth (the library's loop, cpu/dsv4-membench.h) ----

double read_bandwidth(dsv4_threadpool * pool, const buffer & buf, int reps, bool prefetch) {
    double gbps = 0;
    if (dsv4_membench_read(pool, buf.p, buf.n, reps, prefetch ? DSV4_READ_PREFETCH : DSV4_READ_PLAIN, &gbps) != DSV4_OK) {
        std::fprintf(stderr, "read bandwidth failed: %s\n", dsv4_last_error());
        std::exit(1);
    }
    return gbps;
}

// ---- matmul ----

struct case_result {
    std::string type, isa, size_class;
    int threads;
    int64_t rows, n_out, n_in;
    double weight_bytes, seconds, gbps, gflops;
};

double time_matmul(const dsv4_weight & w, dsv4_matmul_params & p, const std::vector<float> & x, std::vector<float> & y,
                   int64_t rows, int reps, double min_seconds) {
    std::vector<double> times;
    dsv4_matmul(&p, &w, x.data(), w.n_in, y.data(), w.n_out, rows);  // warm-up
    const double start = now_s();
    for (int r = 0; r < reps || now_s() - start < min_seconds; r++) {
        const double t0 = now_s();
        const dsv4_status st = dsv4_matmul(&p, &w, x.data(), w.n_in, y.data(), w.n_out, rows);
        times.push_back(now_s() - t0);
        if (st != DSV4_OK) {
            std::fprintf(stderr, "matmul failed: %s\n", dsv4_last_error());
            std::exit(1);
        }
        if (times.size() > 5000) {
            break;
        }
    }
    return median(times);
}

struct type_entry {
    const char * name;
    dsv4_type type;
    bool float_activations = false;
    bool packed = false;  // in the packed layout (dsv4_weight_pack), as models load it
};

const type_entry k_types[] = {
    { "f32", DSV4_TYPE_F32 },       { "f16", DSV4_TYPE_F16 },   { "bf16", DSV4_TYPE_BF16 },
    { "fp8", DSV4_TYPE_FP8_E4M3 }, { "q8_0", DSV4_TYPE_Q8_0 }, { "mxfp4", DSV4_TYPE_MXFP4 },
    { "q8_0_fa", DSV4_TYPE_Q8_0, true }, { "mxfp4_fa", DSV4_TYPE_MXFP4, true },
    { "mxfp4_pk", DSV4_TYPE_MXFP4, false, true }, { "fp8_pk", DSV4_TYPE_FP8_E4M3, false, true },
};

dsv4_isa parse_isa(const char * s) {
    if (!std::strcmp(s, "scalar")) return DSV4_ISA_SCALAR;
    if (!std::strcmp(s, "avx2")) return DSV4_ISA_AVX2;
    if (!std::strcmp(s, "avx512")) return DSV4_ISA_AVX512;
    return DSV4_ISA_AUTO;
}

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__)
// 12 independent accumulator chains of one dot-product instruction (enough to hide its latency):
// the instructions per second one core issues, times the multiply-adds each does.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) double peak_bf16_gmacs() {
    __m512 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_setzero_ps();
    const __m512i x = _mm512_set1_epi16(0x3f80);
    const long n = 50000000;
    const double t0 = now_s();
    for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], (__m512bh) x, (__m512bh) x);
        __asm__ volatile("" : : "v"(x));
    }
    const double t = now_s() - t0;
    float sink = 0;
    for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_ps(a[i]);
    __asm__ volatile("" : : "x"(sink));
    return 12.0 * n * 32 / t / 1e9;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) double peak_int8_gmacs() {
    __m512i a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_setzero_si512();
    const __m512i u = _mm512_set1_epi8(1);
    const long n = 50000000;
    const double t0 = now_s();
    for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], u, u);
        __asm__ volatile("" : : "v"(u));
    }
    const double t = now_s() - t0;
    int sink = 0;
    for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_epi32(a[i]);
    __asm__ volatile("" : : "r"(sink));
    return 12.0 * n * 64 / t / 1e9;
}

int run_peak() {
    const bool bf16 = __builtin_cpu_supports("avx512bf16"), vnni = __builtin_cpu_supports("avx512vnni");
    const double b = bf16 ? peak_bf16_gmacs() : 0.0, v = vnni ? peak_int8_gmacs() : 0.0;
    std::fprintf(stderr, "peak, 1 thread: vdpbf16ps %.1f GMAC/s, vpdpbusd %.1f GMAC/s (0: not on this CPU)\n", b, v);
    std::printf("{\"peak_bf16_gmacs\": %.2f, \"peak_int8_gmacs\": %.2f}\n", b, v);
    return 0;
}
#else
int run_peak() {
    std::fprintf(stderr, "--peak: x86-64 with AVX-512 only\n");
    return 2;
}
#endif

int main(int argc, char ** argv) {
    std::vector<int> threads = { 1, 2 };
    std::vector<int> row_counts = { 1, 6 };
    double small_mb = 1, large_mb = 256;
    std::string types_arg = "f32,f16,bf16,fp8,q8_0,mxfp4,q8_0_fa,mxfp4_fa,mxfp4_pk";
    dsv4_isa isa = DSV4_ISA_AUTO;
    bool isa_compare = false;
    int reps_large = 7;
    int64_t n_in = 4096;
    bool moe_packed = true;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        const char * v = i + 1 < argc ? argv[i + 1] : "";
        if (a == "--threads") { threads = parse_ints(v); i++; }
        else if (a == "--rows") { row_counts = parse_ints(v); i++; }
        else if (a == "--small-mb") { small_mb = std::atof(v); i++; }
        else if (a == "--large-mb") { large_mb = std::atof(v); i++; }
        else if (a == "--types") { types_arg = v; i++; }
        else if (a == "--isa") { isa = parse_isa(v); i++; }
        else if (a == "--reps-large") { reps_large = std::atoi(v); i++; }
        else if (a == "--n-in") { n_in = std::atoll(v); i++; }
        else if (a == "--moe-unpacked") { moe_packed = false; }
        else if (a == "--isa-compare") { isa_compare = true; }
        else if (a == "--quick") { large_mb = 64; reps_large = 3; }
        else if (a == "--peak") { return run_peak(); }
        else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
    }
    const dsv4_isa isa_used = isa == DSV4_ISA_AUTO ? dsv4_cpu_best_isa() : isa;
    if (!dsv4_cpu_isa_supported(isa_used)) {
        std::fprintf(stderr, "ISA %s not supported here\n", dsv4_isa_name(isa_used));
        return 2;
    }
    int max_threads = 1;
    for (int t : threads) {
        max_threads = std::max(max_threads, t);
    }
    std::vector<dsv4_threadpool *> pools(max_threads + 1, nullptr);
    for (int t : threads) {
        if (!pools[t]) {
            pools[t] = dsv4_threadpool_init(t);
        }
    }

    // bandwidth before the kernels
    std::vector<std::pair<int, double>> bw_before, bw_after, bwp_before, bwp_after;
    {
        buffer buf((size_t) (large_mb * 1048576));
        std::memset(buf.p, 1, buf.n);
        for (int t : threads) {
            bw_before.push_back({ t, read_bandwidth(pools[t], buf, reps_large, false) });
            bwp_before.push_back({ t, read_bandwidth(pools[t], buf, reps_large, true) });
            std::fprintf(stderr, "read bandwidth %d thread(s): %.2f GB/s, with prefetch %.2f GB/s\n", t,
                         bw_before.back().second, bwp_before.back().second);
        }
    }

    std::vector<case_result> results;
    auto run_case = [&](const type_entry & te, double mb, const char * size_class, int nth, int64_t rows, dsv4_isa is,
                        const buffer & wbuf, const dsv4_weight & w, const std::vector<float> & x) {
        std::vector<float> y((size_t) (rows * w.n_out));
        dsv4_matmul_params p = dsv4_matmul_default_params();
        p.pool = pools[nth];
        p.isa = is;
        p.float_activations = te.float_activations;
        std::vector<uint8_t> scratch(dsv4_matmul_scratch_size(&w, rows, nth));
        p.scratch = scratch.data();
        p.scratch_size = scratch.size();
        const bool large = std::string(size_class) == "large";
        const int reps = large ? (is == DSV4_ISA_SCALAR ? 2 : reps_large) : 31;
        const double t = time_matmul(w, p, x, y, rows, reps, large ? 0.0 : 0.05);
        case_result r;
        r.type = te.name;
        r.isa = dsv4_isa_name(is);
        r.size_class = size_class;
        r.threads = nth;
        r.rows = rows;
        r.n_out = w.n_out;
        r.n_in = w.n_in;
        r.weight_bytes = (double) w.n_out * (double) w.row_bytes;
        r.seconds = t;
        r.gbps = r.weight_bytes / t / 1e9;
        r.gflops = 2.0 * (double) w.n_out * (double) w.n_in * (double) rows / t / 1e9;
        results.push_back(r);
        std::fprintf(stderr, "%-8s %-6s %-5s %6.1f MB thr %d R %2lld: %9.1f us  %7.2f GB/s  %7.2f GFLOP/s\n", te.name,
                     r.isa.c_str(), size_class, mb, nth, (long long) rows, t * 1e6, r.gbps, r.gflops);
        (void) wbuf;
    };

    int64_t max_rows = 1;
    for (int r : row_counts) {
        max_rows = std::max<int64_t>(max_rows, r);
    }
    std::vector<float> x((size_t) (max_rows * n_in));
    {
        xorshift g{ 777 };
        for (float & v : x) {
            v = (float) ((int) (g.next() % 2001) - 1000) * 1e-3f;
        }
    }

    for (const type_entry & te : k_types) {
        if (("," + types_arg + ",").find("," + std::string(te.name) + ",") == std::string::npos) {
            continue;
        }
        for (int sz = 0; sz < 2; sz++) {
            const double mb = sz == 0 ? small_mb : large_mb;
            const char * size_class = sz == 0 ? "small" : "large";
            const size_t row_bytes = dsv4_weight_row_bytes(te.type, n_in);
            const int64_t n_out = std::max<int64_t>(16, (int64_t) (mb * 1048576 / (double) row_bytes) / 16 * 16);
            buffer wbuf((size_t) n_out * row_bytes);
            fill_weights(te.type, wbuf.p, n_out, row_bytes, n_in, 1 + sz);
            std::vector<float> scale((size_t) (((n_out + 127) / 128) * ((n_in + 127) / 128)), 1.0f / 64);
            dsv4_weight w;
            dsv4_weight_init(&w, te.type, n_out, n_in, wbuf.p, te.type == DSV4_TYPE_FP8_E4M3 ? scale.data() : nullptr);
            buffer pbuf(te.packed ? dsv4_weight_packed_bytes(&w) : 0);
            if (te.packed) {
                memset(pbuf.p, 0, pbuf.n);
                if (dsv4_weight_pack(&w, pbuf.p, pbuf.n) != DSV4_OK) {
                    std::fprintf(stderr, "pack failed: %s\n", dsv4_last_error());
                    return 1;
                }
            }
            for (int nth : threads) {
                for (int rows : row_counts) {
                    run_case(te, mb, size_class, nth, rows, isa_used, wbuf, w, x);
                }
            }
            if (isa_compare && sz == 1) {
                for (dsv4_isa other : { DSV4_ISA_SCALAR, DSV4_ISA_AVX2, DSV4_ISA_AVX512 }) {
                    if (other == isa_used || !dsv4_cpu_isa_supported(other)) {
                        continue;
                    }
                    for (int rows : row_counts) {
                        run_case(te, mb, size_class, 1, rows, other, wbuf, w, x);
                    }
                }
            }
        }
    }

    // Expert-batched MoE: 32 MXFP4 experts [1024, 2048] (an up/gate projection of the benchmark
    // shape), top-6 routing of 1 token (decode) and of 6 tokens (verification).
    struct moe_result {
        int threads, tokens, experts_touched;
        double seconds, bytes, gbps;
    };
    std::vector<moe_result> moe_results;
    {
        const int32_t n_expert = 32, k = 6;
        const int64_t e_out = 1024, e_in = 2048;
        const size_t row_bytes = dsv4_weight_row_bytes(DSV4_TYPE_MXFP4, e_in);
        // several stacks ("layers"), used in turn, so the experts come from memory, not the L3
        const size_t stack_bytes = (size_t) n_expert * e_out * row_bytes;
        const int n_stacks = std::max(2, (int) (large_mb * 1048576 / (double) stack_bytes));
        buffer ebuf(stack_bytes * n_stacks);
        fill_weights(DSV4_TYPE_MXFP4, ebuf.p, (int64_t) n_stacks * n_expert * e_out, row_bytes, e_in, 9);
        std::vector<dsv4_weight> ws((size_t) n_stacks);
        for (int s = 0; s < n_stacks; s++) {
            dsv4_weight_init_experts(&ws[(size_t) s], DSV4_TYPE_MXFP4, n_expert, e_out, e_in, ebuf.p + s * stack_bytes,
                                     nullptr);
        }
        // packed as the model loader does where this CPU has the kernel (--moe-unpacked: not)
        buffer pbuf(moe_packed && dsv4_cpu_reads_packed(DSV4_TYPE_MXFP4) ? dsv4_weight_packed_bytes(&ws[0]) * n_stacks : 0);
        for (int s = 0; pbuf.n && s < n_stacks; s++) {
            const size_t pb = dsv4_weight_packed_bytes(&ws[(size_t) s]);
            if (dsv4_weight_pack(&ws[(size_t) s], pbuf.p + (size_t) s * pb, pb) != DSV4_OK) {
                std::fprintf(stderr, "pack failed: %s\n", dsv4_last_error());
                return 1;
            }
        }
        const dsv4_weight & w = ws[0];
        xorshift g{ 4242 };
        for (int tokens : { 1, 6 }) {
            std::vector<int32_t> ids((size_t) tokens * k);
            for (int t = 0; t < tokens; t++) {
                for (int s = 0; s < k; s++) {
                    int32_t e;
                    bool dup;
                    do {
                        e = (int32_t) (g.next() % n_expert);
                        dup = false;
                        for (int u = 0; u < s; u++) {
                            dup |= ids[(size_t) (t * k + u)] == e;
                        }
                    } while (dup);
                    ids[(size_t) (t * k + s)] = e;
                }
            }
            std::vector<int32_t> expert(n_expert), offset(n_expert + 1), xr((size_t) tokens * k), yr((size_t) tokens * k);
            dsv4_moe_routes routes;
            dsv4_moe_group_by_expert(ids.data(), tokens, k, n_expert, expert.data(), offset.data(), xr.data(), yr.data(),
                                     &routes);
            std::vector<float> xm((size_t) tokens * e_in, 0.5f), ym((size_t) tokens * k * e_out);
            for (int nth : threads) {
                dsv4_matmul_params p = dsv4_matmul_default_params();
                p.pool = pools[nth];
                p.isa = isa_used;
                int32_t max_rows_e = 0;
                for (int32_t i = 0; i < routes.n_sel; i++) {
                    max_rows_e = std::max(max_rows_e, routes.offset[i + 1] - routes.offset[i]);
                }
                std::vector<uint8_t> scratch(dsv4_matmul_moe_scratch_size(&w, tokens, max_rows_e, nth));
                p.scratch = scratch.data();
                p.scratch_size = scratch.size();
                std::vector<double> times;
                for (int r = 0; r < 4 * reps_large + 1; r++) {
                    const double t0 = now_s();
                    dsv4_matmul_moe(&p, &ws[(size_t) (r % n_stacks)], &routes, xm.data(), e_in, tokens, ym.data(), e_out,
                                    (int64_t) tokens * k);
                    if (r > 0) {
                        times.push_back(now_s() - t0);
                    }
                }
                moe_result m;
                m.threads = nth;
                m.tokens = tokens;
                m.experts_touched = routes.n_sel;
                m.seconds = median(times);
                m.bytes = (double) routes.n_sel * (double) e_out * (double) row_bytes;
                m.gbps = m.bytes / m.seconds / 1e9;
                moe_results.push_back(m);
                std::fprintf(stderr, "moe mxfp4%s 32x[1024,2048] top-6, %d token(s), thr %d: %d experts, %.1f us, %.2f GB/s\n",
                             pbuf.n ? " (packed)" : "",
                             tokens, nth, routes.n_sel, m.seconds * 1e6, m.gbps);
            }
        }
    }

    {
        buffer buf((size_t) (large_mb * 1048576));
        std::memset(buf.p, 1, buf.n);
        for (int t : threads) {
            bw_after.push_back({ t, read_bandwidth(pools[t], buf, reps_large, false) });
            bwp_after.push_back({ t, read_bandwidth(pools[t], buf, reps_large, true) });
            std::fprintf(stderr, "read bandwidth %d thread(s): %.2f GB/s, with prefetch %.2f GB/s (after)\n", t,
                         bw_after.back().second, bwp_after.back().second);
        }
    }
    for (auto * p : pools) {
        dsv4_threadpool_free(p);
    }

    // JSON
    std::printf("{\n  \"isa\": \"%s\",\n  \"n_in\": %lld,\n  \"small_mb\": %g,\n  \"large_mb\": %g,\n", dsv4_isa_name(isa_used),
                (long long) n_in, small_mb, large_mb);
    auto print_bw = [](const char * key, const std::vector<std::pair<int, double>> & v) {
        std::printf("  \"%s\": {", key);
        for (size_t i = 0; i < v.size(); i++) {
            std::printf("%s\"%d\": %.3f", i ? ", " : "", v[i].first, v[i].second);
        }
        std::printf("},\n");
    };
    print_bw("read_gbps_before", bw_before);
    print_bw("read_gbps_after", bw_after);
    print_bw("read_prefetch_gbps_before", bwp_before);
    print_bw("read_prefetch_gbps_after", bwp_after);
    std::printf("  \"matmul\": [\n");
    for (size_t i = 0; i < results.size(); i++) {
        const case_result & r = results[i];
        std::printf("    {\"type\": \"%s\", \"isa\": \"%s\", \"size\": \"%s\", \"threads\": %d, \"rows\": %lld, "
                    "\"n_out\": %lld, \"n_in\": %lld, \"weight_bytes\": %.0f, \"seconds\": %.9f, \"gbps\": %.3f, "
                    "\"gflops\": %.3f}%s\n",
                    r.type.c_str(), r.isa.c_str(), r.size_class.c_str(), r.threads, (long long) r.rows,
                    (long long) r.n_out, (long long) r.n_in, r.weight_bytes, r.seconds, r.gbps, r.gflops,
                    i + 1 < results.size() ? "," : "");
    }
    std::printf("  ],\n  \"moe\": [\n");
    for (size_t i = 0; i < moe_results.size(); i++) {
        const moe_result & m = moe_results[i];
        std::printf("    {\"type\": \"mxfp4\", \"experts\": 32, \"k\": 6, \"n_out\": 1024, \"n_in\": 2048, \"threads\": %d, "
                    "\"tokens\": %d, \"experts_touched\": %d, \"seconds\": %.9f, \"bytes\": %.0f, \"gbps\": %.3f}%s\n",
                    m.threads, m.tokens, m.experts_touched, m.seconds, m.bytes, m.gbps,
                    i + 1 < moe_results.size() ? "," : "");
    }
    std::printf("  ]\n}\n");
    return 0;
}
