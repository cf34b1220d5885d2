// CPU matmul: the scalar reference against a double-precision product of weights decoded by
// dsv4-types (the format ground truth), and every SIMD kernel this CPU supports against the scalar
// reference, for every weight type, several shapes (odd n_out, FP8 n_in not a multiple of 128,
// output blocks crossing 128), R in {1, 2, 5, 6, 7, 33} and 1/2/3 threads; the expert-batched MoE
// entry point against per-pair dense products; and argument checking.
//
// Tolerances, all relative to mag = sum_k |w_k * x_k| of the output element:
//   float family (F32/F16/BF16/FP8: decode to f32, FMA): |y - y_ref| <= 1e-5 * mag. Both sides
//     accumulate n_in products in f32 in different orders, so they differ by float rounding
//     (~ sqrt(n_in) * 2^-24 * mag typically); 1e-5 leaves a margin and still catches any wrong
//     element or scale (which shows up at >= 1e-3).
//   integer family (Q8_0/MXFP4 x 8-bit activations): the same 1e-5 * mag, against the scalar
//     reference on the same quantized activations (the block sums are exact integers in both;
//     only the f32 accumulation of the scaled block sums differs). The quantization itself is
//     checked to be bit-identical across ISAs, and its error against the unquantized product is
//     checked against its bound sum_b sum_k |w_k| * d_b / 2.
//   FP8/BF16 in the default mode round the activations to bf16 (nearest-even) first: every ISA is
//     held to 1e-5 * mag against the exact product with the rounded activations (AVX-512 with
//     AVX512_BF16 through its vdpbf16ps kernels, the others through their f32 kernels), and the
//     rounding error against the unrounded product to its bound sum_k |w_k| * |x_k| * 2^-8.
//   Float activations (params.float_activations): Q8_0/MXFP4 weights decoded exactly to f32, FMA
//     with the f32 activations, and the float family without any rounding of x, so every ISA is
//     held to 1e-5 * mag against the exact double product with the unmodified activations (mag
//     likewise), for dsv4_matmul and dsv4_matmul_moe, with the same shapes, R values and threads.
#include "cpu/dsv4-matmul.h"
#include "cpu/dsv4-matmul-impl.h"
#include "dsv4-types.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "test-common.h"

namespace {

constexpr double k_tol = 1e-5;

struct rng {
    uint64_t s;
    explicit rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint64_t next() {
        // splitmix64
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    float uniform() {  // [-1, 1)
        return (float) ((double) (next() >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
    }
    int below(int n) { return (int) (next() % (uint64_t) n); }
};

bool is_int_family(dsv4_type t) {
    return t == DSV4_TYPE_Q8_0 || t == DSV4_TYPE_MXFP4;
}

// Types whose default mode rounds the activations to bf16.
bool rounds_x(dsv4_type t) {
    return t == DSV4_TYPE_FP8_E4M3 || t == DSV4_TYPE_BF16;
}

// Round to the nearest bf16, ties to even, written independently of the library's helper.
float round_bf16(float v) {
    const double a = std::fabs((double) v);
    if (!(a > 0) || std::isinf(v)) {
        return v;
    }
    int e;
    std::frexp(a, &e);                         // a in [2^(e-1), 2^e)
    const double ulp = std::ldexp(1.0, e - 8);  // 8 significant bits
    double q = a / ulp;
    double r = std::nearbyint(q);             // default rounding mode: ties to even
    return (float) std::copysign(r * ulp, (double) v);
}

const char * tname(dsv4_type t) {
    return dsv4_get_type_traits(t)->name;
}

// A weight (or expert stack) with its ground-truth decode.
struct test_weight {
    dsv4_type type;
    int64_t n_expert, n_out, n_in;
    size_t row_bytes;
    std::vector<uint8_t> data;
    std::vector<float> scale;
    std::vector<float> dense;  // [n_expert][n_out][n_in], decoded by dsv4-types
    dsv4_weight w;
};

void fill_row(dsv4_type type, int64_t n_in, uint8_t * row, rng & g) {
    switch (type) {
        case DSV4_TYPE_F32:
            for (int64_t k = 0; k < n_in; k++) {
                const float v = g.uniform();
                std::memcpy(row + 4 * k, &v, 4);
            }
            break;
        case DSV4_TYPE_F16:
        case DSV4_TYPE_BF16:
            for (int64_t k = 0; k < n_in; k++) {
                const float v = g.uniform();
                const uint16_t h = type == DSV4_TYPE_F16 ? dsv4_f32_to_f16(v) : dsv4_f32_to_bf16(v);
                std::memcpy(row + 2 * k, &h, 2);
            }
            break;
        case DSV4_TYPE_FP8_E4M3:
            for (int64_t k = 0; k < n_in; k++) {
                uint8_t b;
                do {
                    b = (uint8_t) g.next();
                } while ((b & 0x7F) == 0x7F);  // NaN codes are rejected at load
                row[k] = b;
            }
            break;
        case DSV4_TYPE_Q8_0:
            for (int64_t b = 0; b < n_in / 32; b++) {
                uint8_t * blk = row + b * DSV4_Q8_0_BLOCK_BYTES;
                const uint16_t d = dsv4_f32_to_f16(0.001f + 0.02f * std::fabs(g.uniform()));
                std::memcpy(blk, &d, 2);
                for (int j = 0; j < 32; j++) {
                    blk[2 + j] = (uint8_t) g.next();  // the full int8 range, -128 included
                }
            }
            break;
        case DSV4_TYPE_MXFP4:
            for (int64_t b = 0; b < n_in / 32; b++) {
                uint8_t * blk = row + b * DSV4_MXFP4_BLOCK_BYTES;
                blk[0] = (uint8_t) (120 + g.below(12));
                for (int j = 0; j < 16; j++) {
                    blk[1 + j] = (uint8_t) g.next();
                }
            }
            break;
        default:
            break;
    }
}

void make_weight(test_weight & t, dsv4_type type, int64_t n_expert, int64_t n_out, int64_t n_in, size_t row_pad,
                 rng & g, bool pow2_scales = true) {
    t.type = type;
    t.n_expert = n_expert;
    t.n_out = n_out;
    t.n_in = n_in;
    t.row_bytes = dsv4_weight_row_bytes(type, n_in) + row_pad;
    t.data.assign((size_t) (n_expert * n_out) * t.row_bytes, 0xA5);
    const int64_t sr = (n_out + 127) / 128, sc = (n_in + 127) / 128;
    if (type == DSV4_TYPE_FP8_E4M3) {
        t.scale.resize((size_t) (n_expert * sr * sc));
        for (float & s : t.scale) {
            s = pow2_scales ? std::ldexp(1.0f, g.below(9) - 6) : 0.01f + std::fabs(g.uniform());
        }
    } else {
        t.scale.clear();
    }
    t.dense.resize((size_t) (n_expert * n_out * n_in));
    const size_t packed = dsv4_weight_row_bytes(type, n_in);
    for (int64_t e = 0; e < n_expert; e++) {
        for (int64_t o = 0; o < n_out; o++) {
            uint8_t * row = t.data.data() + (size_t) (e * n_out + o) * t.row_bytes;
            fill_row(type, n_in, row, g);
            float * dst = t.dense.data() + (size_t) ((e * n_out + o) * n_in);
            if (type == DSV4_TYPE_FP8_E4M3) {
                dsv4_fp8_row_to_float(row, t.scale.data() + (size_t) (e * sr * sc + (o / 128) * sc), dst, n_in);
            } else {
                const dsv4_status st = dsv4_type_to_float(type, row, packed, dst, n_in);
                if (st != DSV4_OK) {
                    std::fprintf(stderr, "decode failed: %s\n", dsv4_last_error());
                    std::abort();
                }
            }
        }
    }
    dsv4_weight_init_experts(&t.w, type, n_expert, n_out, n_in, t.data.data(),
                             type == DSV4_TYPE_FP8_E4M3 ? t.scale.data() : nullptr);
    t.w.row_bytes = t.row_bytes;
    t.w.expert_stride = (size_t) n_out * t.row_bytes;
}

std::vector<float> make_x(int64_t rows, int64_t n_in, int64_t stride, rng & g) {
    std::vector<float> x((size_t) (rows * stride), std::nanf(""));  // padding poisoned
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t k = 0; k < n_in; k++) {
            float v = g.uniform();
            if (g.below(64) == 0) {
                v *= 16.0f;  // outliers, as real activations have
            }
            x[(size_t) (r * stride + k)] = v;
        }
    }
    return x;
}

// The activation quantization the integer kernels use (see dsv4-matmul-impl.h), returned as the
// dequantized values d * q, and the per-element error bound d / 2.
void quantize_like_kernels(const float * x, int64_t n, float * xhat, float * half_step) {
    for (int64_t b = 0; b < n / 32; b++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            amax = std::fmax(amax, std::fabs(x[32 * b + j]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; j++) {
            xhat[32 * b + j] = d * std::nearbyint(x[32 * b + j] * id);
            half_step[32 * b + j] = 0.5f * d;
        }
    }
}

struct ref_out {
    std::vector<double> y;    // exact product with x as the default mode sees it (int family:
                              // quantized; FP8/BF16: rounded to bf16)
    std::vector<double> mag;  // sum |w * x| (same x)
    std::vector<double> y_unq;  // exact product with the unmodified x
    std::vector<double> mag_unq;  // sum |w * x| with the unmodified x
    std::vector<double> bound;  // int family / FP8 / BF16: bound of the error that x's conversion adds
};

// Reference for rows x[r] against matrix e of t.
ref_out reference(const test_weight & t, int64_t e, const float * x, int64_t x_stride, int64_t rows) {
    ref_out out;
    const int64_t n = t.n_in;
    out.y.resize((size_t) (rows * t.n_out));
    out.mag.resize(out.y.size());
    out.y_unq.resize(out.y.size());
    out.mag_unq.resize(out.y.size());
    out.bound.resize(out.y.size());
    std::vector<float> xhat((size_t) n), half((size_t) n);
    for (int64_t r = 0; r < rows; r++) {
        const float * xr = x + r * x_stride;
        if (is_int_family(t.type)) {
            quantize_like_kernels(xr, n, xhat.data(), half.data());
        } else if (rounds_x(t.type)) {
            for (int64_t k = 0; k < n; k++) {
                xhat[(size_t) k] = round_bf16(xr[k]);
                half[(size_t) k] = std::ldexp(std::fabs(xr[k]), -8);  // half an ulp of 8 significant bits
            }
        } else {
            std::memcpy(xhat.data(), xr, (size_t) n * sizeof(float));
            std::fill(half.begin(), half.end(), 0.0f);
        }
        for (int64_t o = 0; o < t.n_out; o++) {
            const float * w = t.dense.data() + (size_t) ((e * t.n_out + o) * n);
            double s = 0, m = 0, su = 0, mu = 0, bd = 0;
            for (int64_t k = 0; k < n; k++) {
                s += (double) w[k] * xhat[k];
                m += std::fabs((double) w[k] * xhat[k]);
                su += (double) w[k] * xr[k];
                mu += std::fabs((double) w[k] * xr[k]);
                bd += std::fabs((double) w[k]) * half[k];
            }
            const size_t i = (size_t) (r * t.n_out + o);
            out.y[i] = s;
            out.mag[i] = m;
            out.y_unq[i] = su;
            out.mag_unq[i] = mu;
            out.bound[i] = bd;
        }
    }
    return out;
}

std::vector<dsv4_isa> simd_isas() {
    std::vector<dsv4_isa> v;
    for (dsv4_isa isa : { DSV4_ISA_AVX2, DSV4_ISA_AVX512, DSV4_ISA_NEON }) {
        if (dsv4_cpu_isa_supported(isa)) {
            v.push_back(isa);
        }
    }
    return v;
}

// Worst normalized error |y - ref| / mag seen per (type, ISA), for the summary.
struct worst_table {
    double v[8][5] = {};
    void add(dsv4_type t, dsv4_isa isa, double e) {
        double & s = v[(int) t][(int) isa];
        s = e > s ? e : s;
    }
};
worst_table g_worst_vs_scalar;
worst_table g_worst_scalar_vs_exact;
worst_table g_worst_fx_vs_exact;  // float activations, every ISA against the exact product

struct pools {
    dsv4_threadpool * p[4] = {};
    pools() {
        for (int n = 2; n <= 3; n++) {
            p[n] = dsv4_threadpool_init(n);
        }
    }
    ~pools() {
        for (auto * q : p) {
            dsv4_threadpool_free(q);
        }
    }
    dsv4_threadpool * get(int n) { return n >= 2 ? p[n] : nullptr; }
};

// Runs dsv4_matmul; output rows padded with a sentinel that must survive.
std::vector<float> run_matmul(const test_weight & t, dsv4_isa isa, dsv4_threadpool * pool, const std::vector<float> & x,
                              int64_t x_stride, int64_t rows, int64_t y_stride, const char * what,
                              bool float_activations = false) {
    std::vector<float> y((size_t) (rows * y_stride), -12345.0f);
    dsv4_matmul_params p = dsv4_matmul_default_params();
    p.isa = isa;
    p.pool = pool;
    p.float_activations = float_activations;
    const dsv4_status st = dsv4_matmul(&p, &t.w, x.data(), x_stride, y.data(), y_stride, rows);
    CHECK(st == DSV4_OK, "%s: dsv4_matmul failed: %s", what, dsv4_last_error());
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t o = t.n_out; o < y_stride; o++) {
            CHECK(y[(size_t) (r * y_stride + o)] == -12345.0f, "%s: wrote past n_out", what);
        }
    }
    return y;
}

void test_every_kernel_matches_reference_for_all_types_shapes_rows_and_threads() {
    const dsv4_type types[] = { DSV4_TYPE_F32, DSV4_TYPE_F16, DSV4_TYPE_BF16, DSV4_TYPE_FP8_E4M3, DSV4_TYPE_Q8_0,
                                DSV4_TYPE_MXFP4 };
    const int64_t float_shapes[][2] = { { 5, 13 }, { 37, 200 }, { 130, 300 }, { 300, 130 }, { 19, 1024 } };
    const int64_t int_shapes[][2] = { { 5, 32 }, { 37, 96 }, { 130, 288 }, { 300, 64 }, { 19, 1024 } };
    const int64_t row_counts[] = { 1, 2, 5, 6, 7, 33 };
    pools pl;
    rng g(42);
    const std::vector<dsv4_isa> isas = simd_isas();
    for (dsv4_type type : types) {
        for (int s = 0; s < 5; s++) {
            const int64_t n_out = is_int_family(type) ? int_shapes[s][0] : float_shapes[s][0];
            const int64_t n_in = is_int_family(type) ? int_shapes[s][1] : float_shapes[s][1];
            test_weight t;
            // shape 1 gets padded rows (row_bytes > packed), shape 2 non-power-of-two FP8 scales
            make_weight(t, type, 1, n_out, n_in, s == 1 ? 7 : 0, g, s != 2);
            for (int64_t R : row_counts) {
                const int64_t x_stride = n_in + 3, y_stride = n_out + 5;
                const std::vector<float> x = make_x(R, n_in, x_stride, g);
                const ref_out ref = reference(t, 0, x.data(), x_stride, R);
                char what[160];
                std::snprintf(what, sizeof(what), "%s [%lld x %lld] R=%lld", tname(type), (long long) n_out,
                              (long long) n_in, (long long) R);
                const std::vector<float> ys = run_matmul(t, DSV4_ISA_SCALAR, nullptr, x, x_stride, R, y_stride, what);
                for (int64_t r = 0; r < R; r++) {
                    for (int64_t o = 0; o < n_out; o++) {
                        const size_t i = (size_t) (r * n_out + o);
                        const double y = ys[(size_t) (r * y_stride + o)];
                        const double err = std::fabs(y - ref.y[i]);
                        g_worst_scalar_vs_exact.add(type, DSV4_ISA_SCALAR, ref.mag[i] > 0 ? err / ref.mag[i] : err);
                        CHECK(err <= k_tol * ref.mag[i] + 1e-30, "%s scalar vs exact: r %lld o %lld: %.9g vs %.9g (mag %g)",
                              what, (long long) r, (long long) o, y, ref.y[i], ref.mag[i]);
                        if (is_int_family(type) || rounds_x(type)) {
                            const double qerr = std::fabs(y - ref.y_unq[i]);
                            CHECK(qerr <= ref.bound[i] * (1 + 1e-6) + k_tol * ref.mag[i] + 1e-30,
                                  "%s activation conversion error %g above its bound %g", what, qerr, ref.bound[i]);
                        }
                    }
                }
                for (int nth = 1; nth <= 3; nth++) {
                    // the scalar path threaded must equal the scalar path unthreaded bit for bit
                    if (nth > 1) {
                        const std::vector<float> yt = run_matmul(t, DSV4_ISA_SCALAR, pl.get(nth), x, x_stride, R,
                                                                 y_stride, what);
                        CHECK(std::memcmp(yt.data(), ys.data(), ys.size() * sizeof(float)) == 0,
                              "%s scalar with %d threads differs from 1 thread", what, nth);
                    }
                    for (dsv4_isa isa : isas) {
                        const std::vector<float> yv = run_matmul(t, isa, pl.get(nth), x, x_stride, R, y_stride, what);
                        for (int64_t r = 0; r < R; r++) {
                            for (int64_t o = 0; o < n_out; o++) {
                                const size_t i = (size_t) (r * n_out + o);
                                const double a = yv[(size_t) (r * y_stride + o)];
                                const double b = ys[(size_t) (r * y_stride + o)];
                                const double err = std::fabs(a - b);
                                g_worst_vs_scalar.add(type, isa, ref.mag[i] > 0 ? err / ref.mag[i] : err);
                                CHECK(err <= k_tol * ref.mag[i] + 1e-30,
                                      "%s %s (%d threads) vs scalar: r %lld o %lld: %.9g vs %.9g (mag %g)", what,
                                      dsv4_isa_name(isa), nth, (long long) r, (long long) o, a, b, ref.mag[i]);
                            }
                        }
                        if (g_failures > 20) {
                            return;
                        }
                    }
                }
            }
        }
    }
}

void test_float_activations_match_exact_product_on_every_isa_shape_rows_and_threads() {
    const int64_t shapes[][2] = { { 5, 32 }, { 37, 96 }, { 130, 288 }, { 300, 64 }, { 19, 1024 } };
    const int64_t float_shapes[][2] = { { 5, 13 }, { 37, 200 }, { 130, 300 }, { 300, 130 }, { 19, 1024 } };
    const int64_t row_counts[] = { 1, 2, 5, 6, 7, 33 };
    pools pl;
    rng g(4242);
    std::vector<dsv4_isa> isas = simd_isas();
    isas.insert(isas.begin(), DSV4_ISA_SCALAR);
    for (dsv4_type type : { DSV4_TYPE_Q8_0, DSV4_TYPE_MXFP4, DSV4_TYPE_F32, DSV4_TYPE_F16, DSV4_TYPE_BF16,
                            DSV4_TYPE_FP8_E4M3 }) {
        double worst_quantized = 0;  // the default path on the same data, to show the flag matters
        for (int s = 0; s < 5; s++) {
            const bool fam = is_int_family(type);
            const int64_t n_out = fam ? shapes[s][0] : float_shapes[s][0], n_in = fam ? shapes[s][1] : float_shapes[s][1];
            test_weight t;
            make_weight(t, type, 1, n_out, n_in, s == 1 ? 7 : 0, g, s != 2);
            for (int64_t R : row_counts) {
                const int64_t x_stride = n_in + 3, y_stride = n_out + 5;
                const std::vector<float> x = make_x(R, n_in, x_stride, g);
                const ref_out ref = reference(t, 0, x.data(), x_stride, R);
                char what[160];
                std::snprintf(what, sizeof(what), "%s float activations [%lld x %lld] R=%lld", tname(type),
                              (long long) n_out, (long long) n_in, (long long) R);
                const std::vector<float> yq = run_matmul(t, DSV4_ISA_SCALAR, nullptr, x, x_stride, R, y_stride, what);
                for (int64_t r = 0; r < R; r++) {
                    for (int64_t o = 0; o < n_out; o++) {
                        const size_t i = (size_t) (r * n_out + o);
                        const double e = std::fabs(yq[(size_t) (r * y_stride + o)] - ref.y_unq[i]) / ref.mag_unq[i];
                        worst_quantized = e > worst_quantized ? e : worst_quantized;
                    }
                }
                for (dsv4_isa isa : isas) {
                    for (int nth = 1; nth <= 3; nth++) {
                        const std::vector<float> y = run_matmul(t, isa, pl.get(nth), x, x_stride, R, y_stride, what, true);
                        for (int64_t r = 0; r < R; r++) {
                            for (int64_t o = 0; o < n_out; o++) {
                                const size_t i = (size_t) (r * n_out + o);
                                const double a = y[(size_t) (r * y_stride + o)];
                                const double err = std::fabs(a - ref.y_unq[i]);
                                g_worst_fx_vs_exact.add(type, isa, ref.mag_unq[i] > 0 ? err / ref.mag_unq[i] : err);
                                CHECK(err <= k_tol * ref.mag_unq[i] + 1e-30,
                                      "%s %s (%d threads) vs exact: r %lld o %lld: %.9g vs %.9g (mag %g)", what,
                                      dsv4_isa_name(isa), nth, (long long) r, (long long) o, a, ref.y_unq[i],
                                      ref.mag_unq[i]);
                            }
                        }
                        if (g_failures > 20) {
                            return;
                        }
                    }
                }
            }
        }
        if (is_int_family(type) || rounds_x(type)) {
            CHECK(worst_quantized > (is_int_family(type) ? 100 : 10) * k_tol, "%s: the default path should be visibly less exact (worst %g)",
                  tname(type), worst_quantized);
        }
    }
}

void test_activation_quantization_is_bit_identical_across_isas() {
    rng g(7);
    const int64_t n = 256;
    std::vector<float> x((size_t) n);
    for (int64_t k = 0; k < n; k++) {
        x[(size_t) k] = g.uniform() * (k < 128 ? 1.0f : 1e-30f);
    }
    for (int j = 0; j < 32; j++) {
        x[(size_t) (32 + j)] = 0.0f;  // an all-zero block: d = 0, q = 0
    }
    // a block whose scale is exactly 1, with ties: nearest-even everywhere
    for (int j = 0; j < 32; j++) {
        x[(size_t) (64 + j)] = (float) (j - 16) + 0.5f;
    }
    x[64] = 127.0f;
    const size_t row = dsv4_mm_xq_row_bytes(n);
    const size_t used = (size_t) (2 * n + (n / 32) * 36);
    std::vector<uint8_t> ref(row), got(row);
    for (int32_t bias : { DSV4_MM_MXFP4_BIAS, DSV4_MM_Q8_0_BIAS }) {
        dsv4_mm_kernels_scalar.quantize(x.data(), n, ref.data(), bias);
        CHECK((int8_t) ref[64 + 1] == -14 && (int8_t) ref[64 + 2] == -14,
              "ties round to even (-14.5 -> -14, -13.5 -> -14)");
        const int32_t * corr = dsv4_mm_xq_corr(ref.data(), n);
        CHECK(corr[16] == -bias * (127 - 14 - 14 - 12), "correction = -bias * sum of 4 q (got %d)", corr[16]);
#if defined(__x86_64__) || defined(__aarch64__)
        for (dsv4_isa isa : simd_isas()) {
#if defined(__x86_64__)
            const dsv4_mm_isa_kernels & k = isa == DSV4_ISA_AVX512 ? dsv4_mm_kernels_avx512 : dsv4_mm_kernels_avx2;
#else
            const dsv4_mm_isa_kernels & k = dsv4_mm_kernels_neon;
#endif
            got.assign(row, 0);
            k.quantize(x.data(), n, got.data(), bias);
            CHECK(std::memcmp(got.data(), ref.data(), used) == 0, "%s quantized row differs from scalar (bias %d)",
                  dsv4_isa_name(isa), bias);
        }
#endif
    }
}

void test_row_bytes_match_the_type_table() {
    for (dsv4_type t : { DSV4_TYPE_F32, DSV4_TYPE_F16, DSV4_TYPE_BF16, DSV4_TYPE_Q8_0, DSV4_TYPE_MXFP4,
                         DSV4_TYPE_FP8_E4M3 }) {
        for (int64_t n : { 32, 64, 96, 4096, 7168 }) {
            size_t want = 0;
            CHECK(dsv4_type_row_size(t, n, &want) == DSV4_OK, "row size");
            CHECK(dsv4_weight_row_bytes(t, n) == want, "%s: row bytes %zu vs the type table's %zu", tname(t),
                  dsv4_weight_row_bytes(t, n), want);
        }
    }
    CHECK(dsv4_weight_row_bytes(DSV4_TYPE_Q8_0, 33) == 0 && dsv4_weight_row_bytes(DSV4_TYPE_I8, 64) == 0,
          "no row size for a partial block or a type without matmul");
}

void test_e8m0_table_matches_bit_decoder() {
    bool same = true;
    for (int e = 0; e < 256; e++) {
        const float a = dsv4_mm_e8m0_half_table.v[e], b = dsv4_mm_e8m0_half((uint8_t) e);
        const float c = dsv4_e8m0_to_f32_half((uint8_t) e);
        same &= std::memcmp(&a, &b, 4) == 0 && std::memcmp(&a, &c, 4) == 0;
    }
    CHECK(same, "the e8m0 table, the kernel bit decoder and dsv4-types agree on all 256 scales");
}

// Default mode: against the scalar dense path per pair. float_activations (Q8_0 / MXFP4 only):
// against the exact double product per pair. Both with the caller scratch sized by
// dsv4_matmul_moe_scratch_size for the gate/up-style call.
void test_moe_matches_per_pair_products(bool float_activations) {
    const dsv4_type types[] = { DSV4_TYPE_MXFP4, DSV4_TYPE_Q8_0, DSV4_TYPE_FP8_E4M3, DSV4_TYPE_BF16 };
    pools pl;
    rng g(float_activations ? 199 : 99);
    const int32_t n_expert = 6, k = 3;
    for (dsv4_type type : types) {
        for (int64_t n_tok : { 1, 6, 7 }) {
            const int64_t n_out = 70, n_in = type == DSV4_TYPE_FP8_E4M3 || type == DSV4_TYPE_BF16 ? 200 : 160;
            test_weight t;
            make_weight(t, type, n_expert, n_out, n_in, 0, g);
            // top-k ids: distinct per token, expert 5 never used
            std::vector<int32_t> ids((size_t) (n_tok * k));
            for (int64_t tok = 0; tok < n_tok; tok++) {
                for (int s = 0; s < k; s++) {
                    int32_t e;
                    bool dup;
                    do {
                        e = g.below(n_expert - 1);
                        dup = false;
                        for (int u = 0; u < s; u++) {
                            dup |= ids[(size_t) (tok * k + u)] == e;
                        }
                    } while (dup);
                    ids[(size_t) (tok * k + s)] = e;
                }
            }
            std::vector<int32_t> expert((size_t) n_expert), offset((size_t) n_expert + 1);
            std::vector<int32_t> x_row((size_t) (n_tok * k)), y_row((size_t) (n_tok * k));
            dsv4_moe_routes routes;
            CHECK(dsv4_moe_group_by_expert(ids.data(), n_tok, k, n_expert, expert.data(), offset.data(), x_row.data(),
                                           y_row.data(), &routes) == DSV4_OK, "group_by_expert");
            // the routes are a permutation of the pairs, grouped by increasing expert id
            std::vector<int> seen((size_t) (n_tok * k), 0);
            for (int32_t i = 0; i < routes.n_sel; i++) {
                CHECK(i == 0 || routes.expert[i] > routes.expert[i - 1], "experts increasing");
                CHECK(routes.expert[i] != n_expert - 1, "unused expert selected");
                for (int32_t j = routes.offset[i]; j < routes.offset[i + 1]; j++) {
                    CHECK(ids[(size_t) routes.y_row[j]] == routes.expert[i] && routes.x_row[j] == routes.y_row[j] / k,
                          "pair %d misrouted", j);
                    seen[(size_t) routes.y_row[j]]++;
                }
            }
            for (int v : seen) {
                CHECK(v == 1, "every pair exactly once");
            }

            const int64_t x_stride = n_in + 1, y_stride = n_out + 2;
            const std::vector<float> x = make_x(n_tok, n_in, x_stride, g);
            // reference: pair p = (tok, s) -> W[ids[p]] x[tok], through the dense scalar path
            const int64_t n_pairs = n_tok * k;
            std::vector<float> yref((size_t) (n_pairs * y_stride), 0.0f);
            std::vector<double> yexact((size_t) (n_pairs * n_out));
            std::vector<double> mag((size_t) (n_pairs * n_out));
            for (int64_t p = 0; p < n_pairs; p++) {
                const int32_t e = ids[(size_t) p];
                dsv4_weight we = t.w;
                we.n_expert = 1;
                we.data = t.data.data() + (size_t) e * t.w.expert_stride;
                we.scale = t.scale.empty() ? nullptr : t.scale.data() + (size_t) e * t.w.scale_expert_stride;
                dsv4_matmul_params sp = dsv4_matmul_default_params();
                sp.isa = DSV4_ISA_SCALAR;
                CHECK(dsv4_matmul(&sp, &we, x.data() + (p / k) * x_stride, x_stride, yref.data() + p * y_stride,
                                  y_stride, 1) == DSV4_OK, "reference matmul");
                const ref_out r = reference(t, e, x.data() + (p / k) * x_stride, x_stride, 1);
                for (int64_t o = 0; o < n_out; o++) {
                    mag[(size_t) (p * n_out + o)] = float_activations ? r.mag_unq[(size_t) o] : r.mag[(size_t) o];
                    yexact[(size_t) (p * n_out + o)] = r.y_unq[(size_t) o];
                }
            }
            std::vector<dsv4_isa> isas = simd_isas();
            isas.insert(isas.begin(), DSV4_ISA_SCALAR);
            for (dsv4_isa isa : isas) {
                for (int nth = 1; nth <= 3; nth++) {
                    dsv4_matmul_params p = dsv4_matmul_default_params();
                    p.isa = isa;
                    p.pool = pl.get(nth);
                    p.float_activations = float_activations;
                    // gate/up style: x rows are tokens, outputs per pair; caller scratch of the
                    // documented size
                    int32_t max_rows_e = 0;
                    for (int32_t i = 0; i < routes.n_sel; i++) {
                        const int32_t n_rows_e = routes.offset[i + 1] - routes.offset[i];
                        max_rows_e = n_rows_e > max_rows_e ? n_rows_e : max_rows_e;
                    }
                    std::vector<uint8_t> scratch(dsv4_matmul_moe_scratch_size(&t.w, n_tok, max_rows_e, nth));
                    p.scratch = scratch.data();
                    p.scratch_size = scratch.size();
                    std::vector<float> y((size_t) (n_pairs * y_stride), 0.0f);
                    dsv4_status st = dsv4_matmul_moe(&p, &t.w, &routes, x.data(), x_stride, n_tok, y.data(), y_stride,
                                                     n_pairs);
                    CHECK(st == DSV4_OK, "moe: %s", dsv4_last_error());
                    p.scratch = nullptr;
                    p.scratch_size = 0;
                    // down style: inputs already per pair (x_row NULL), outputs per pair in route order
                    std::vector<float> xp((size_t) (n_pairs * x_stride), 0.0f);
                    for (int64_t j = 0; j < n_pairs; j++) {
                        std::memcpy(xp.data() + j * x_stride, x.data() + routes.x_row[j] * x_stride,
                                    (size_t) n_in * sizeof(float));
                    }
                    dsv4_moe_routes r2 = routes;
                    r2.x_row = nullptr;
                    r2.y_row = nullptr;
                    std::vector<float> y2((size_t) (n_pairs * y_stride), 0.0f);
                    st = dsv4_matmul_moe(&p, &t.w, &r2, xp.data(), x_stride, n_pairs, y2.data(), y_stride, n_pairs);
                    CHECK(st == DSV4_OK, "moe (identity rows): %s", dsv4_last_error());
                    for (int64_t j = 0; j < n_pairs; j++) {
                        const int64_t pr = routes.y_row[j];  // the pair at route position j
                        for (int64_t o = 0; o < n_out; o++) {
                            const double ref = float_activations ? yexact[(size_t) (pr * n_out + o)]
                                                                 : (double) yref[(size_t) (pr * y_stride + o)];
                            const double m = mag[(size_t) (pr * n_out + o)];
                            if (float_activations) {
                                const double e = std::fabs(y[(size_t) (pr * y_stride + o)] - ref);
                                g_worst_fx_vs_exact.add(type, isa, m > 0 ? e / m : e);
                            }
                            const double a = y[(size_t) (pr * y_stride + o)];
                            const double b = y2[(size_t) (j * y_stride + o)];
                            CHECK(std::fabs(a - ref) <= k_tol * m + 1e-30, "%s moe%s %s %d thr n_tok %lld: pair %lld "
                                  "o %lld: %.9g vs %.9g", tname(type), float_activations ? " (float activations)" : "",
                                  dsv4_isa_name(isa), nth, (long long) n_tok, (long long) pr, (long long) o, a, ref);
                            CHECK(std::fabs(b - ref) <= k_tol * m + 1e-30, "%s moe%s (identity rows) %s %d thr: pair "
                                  "%lld o %lld: %.9g vs %.9g", tname(type), float_activations ? " (float activations)" : "",
                                  dsv4_isa_name(isa), nth, (long long) pr, (long long) o, b, ref);
                        }
                    }
                    if (g_failures > 20) {
                        return;
                    }
                }
            }
        }
    }
}

// A row's result does not depend on the batch it is in (speculative verification and chunked
// prefill rely on it): every ISA, every type, default and exact mode, R = 3, 6 (FP8: the inline
// 2 x R tiles of the AVX512_BF16 kernel) and 33 rows (its decoded-strip path) against the same rows
// one at a time, bit for bit.
void test_rows_are_independent_of_the_batch() {
    const dsv4_type types[] = { DSV4_TYPE_F32, DSV4_TYPE_F16, DSV4_TYPE_BF16, DSV4_TYPE_FP8_E4M3, DSV4_TYPE_Q8_0,
                                DSV4_TYPE_MXFP4 };
    std::vector<dsv4_isa> isas = simd_isas();
    isas.insert(isas.begin(), DSV4_ISA_SCALAR);
    pools pl;
    rng g(777);
    for (dsv4_type type : types) {
      for (int64_t R : { 3, 6, 33 }) {  // FP8 on AVX512_BF16: inline 2 x R tiles up to 6 rows, the strip above
        const int64_t n_out = 133, n_in = is_int_family(type) ? 320 : 300;
        test_weight t;
        make_weight(t, type, 1, n_out, n_in, 0, g);
        const std::vector<float> x = make_x(R, n_in, n_in, g);
        for (dsv4_isa isa : isas) {
            for (bool fx : { false, true }) {
                const std::vector<float> all = run_matmul(t, isa, pl.get(2), x, n_in, R, n_out, "batch", fx);
                for (int64_t r = 0; r < R; r++) {
                    const std::vector<float> xr(x.begin() + r * n_in, x.begin() + (r + 1) * n_in);
                    const std::vector<float> one = run_matmul(t, isa, nullptr, xr, n_in, 1, n_out, "single", fx);
                    CHECK(std::memcmp(one.data(), all.data() + r * n_out, (size_t) n_out * sizeof(float)) == 0,
                          "%s %s%s: row %lld alone differs from the batch of %lld", tname(type), dsv4_isa_name(isa),
                          fx ? " (float activations)" : "", (long long) r, (long long) R);
                }
            }
        }
      }
    }
}

// FP8 rows with power-of-two block scales and the BF16 matrix of the same values (what the
// llama.cpp BF16 layout stores) give bit-identical results in the default mode on every ISA.
void test_fp8_and_bf16_of_the_same_values_agree_bitwise() {
    std::vector<dsv4_isa> isas = simd_isas();
    isas.insert(isas.begin(), DSV4_ISA_SCALAR);
    rng g(31337);
    const int64_t n_out = 260, n_in = 330;
    test_weight f8;
    make_weight(f8, DSV4_TYPE_FP8_E4M3, 1, n_out, n_in, 0, g);
    test_weight b16;
    b16.type = DSV4_TYPE_BF16;
    b16.data.resize((size_t) (n_out * n_in) * 2);
    for (size_t i = 0; i < f8.dense.size(); i++) {
        const uint16_t h = dsv4_f32_to_bf16(f8.dense[i]);
        CHECK(dsv4_mm_bf16_to_f32(h) == f8.dense[i], "FP8 value %zu is not exact in bf16", i);
        std::memcpy(b16.data.data() + 2 * i, &h, 2);
    }
    dsv4_weight_init(&b16.w, DSV4_TYPE_BF16, n_out, n_in, b16.data.data(), nullptr);
    b16.n_out = n_out;
    for (int64_t R : { 1, 6, 33 }) {
        const std::vector<float> x = make_x(R, n_in, n_in, g);
        for (dsv4_isa isa : isas) {
            const std::vector<float> a = run_matmul(f8, isa, nullptr, x, n_in, R, n_out, "fp8");
            const std::vector<float> b = run_matmul(b16, isa, nullptr, x, n_in, R, n_out, "bf16");
            CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0, "%s R=%lld: FP8 and BF16 differ",
                  dsv4_isa_name(isa), (long long) R);
        }
    }
}

void test_caller_scratch_is_used_and_checked() {
    rng g(5);
    for (int mode = 0; mode < 3; mode++) {
        const dsv4_type type = mode == 0 ? DSV4_TYPE_FP8_E4M3 : DSV4_TYPE_MXFP4;
        const bool fx = mode == 2;  // the scratch size covers both activation modes
        test_weight t;
        make_weight(t, type, 1, 40, 256, 0, g);
        const int64_t R = 6;
        const std::vector<float> x = make_x(R, 256, 256, g);
        pools pl;
        const std::vector<float> want = run_matmul(t, DSV4_ISA_AUTO, pl.get(2), x, 256, R, 40, "scratch ref", fx);
        const size_t need = dsv4_matmul_scratch_size(&t.w, R, 2);
        std::vector<uint8_t> buf(need + 8);
        dsv4_matmul_params p = dsv4_matmul_default_params();
        p.float_activations = fx;
        p.pool = pl.get(2);
        p.scratch = buf.data() + 8;  // deliberately misaligned: the call aligns it
        p.scratch_size = need;
        std::vector<float> y((size_t) (R * 40));
        CHECK(dsv4_matmul(&p, &t.w, x.data(), 256, y.data(), 40, R) == DSV4_OK, "with caller scratch: %s",
              dsv4_last_error());
        CHECK(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)) == 0, "caller scratch gives other results");
        p.scratch_size = need / 2;
        // (float activations need no quantized rows, so half the upper bound may be enough there)
        CHECK(dsv4_matmul(&p, &t.w, x.data(), 256, y.data(), 40, R) == DSV4_ERR_INVALID_ARG || fx,
              "small scratch refused");
        p.scratch_size = 64;
        CHECK(dsv4_matmul(&p, &t.w, x.data(), 256, y.data(), 40, R) == DSV4_ERR_INVALID_ARG, "tiny scratch refused");
    }
}

void test_invalid_arguments_return_status() {
    std::vector<uint8_t> data(64 * 1024, 0);
    std::vector<float> scale(16, 1.0f), x(4096, 0.0f), y(4096, 0.0f);
    dsv4_matmul_params p = dsv4_matmul_default_params();
    dsv4_weight w;

    CHECK(dsv4_matmul(&p, nullptr, x.data(), 64, y.data(), 64, 1) == DSV4_ERR_INVALID_ARG, "NULL weight");
    dsv4_weight_init(&w, DSV4_TYPE_I8, 8, 64, data.data(), nullptr);
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, 1) == DSV4_ERR_UNSUPPORTED, "I8 has no matmul");
    dsv4_weight_init(&w, (dsv4_type) 77, 8, 64, data.data(), nullptr);
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, 1) == DSV4_ERR_UNSUPPORTED, "unknown type");
    dsv4_weight_init(&w, DSV4_TYPE_Q8_0, 8, 40, data.data(), nullptr);
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, 1) == DSV4_ERR_INVALID_ARG, "Q8_0 n_in not multiple of 32");
    dsv4_weight_init(&w, DSV4_TYPE_F32, 0, 64, data.data(), nullptr);
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, 1) == DSV4_ERR_INVALID_ARG, "n_out 0");
    dsv4_weight_init(&w, DSV4_TYPE_F32, 8, 64, data.data(), nullptr);
    w.row_bytes = 100;
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, 1) == DSV4_ERR_INVALID_ARG, "row_bytes too small");
    dsv4_weight_init(&w, DSV4_TYPE_FP8_E4M3, 8, 64, data.data(), nullptr);
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, 1) == DSV4_ERR_INVALID_ARG, "FP8 without scale");
    dsv4_weight_init(&w, DSV4_TYPE_FP8_E4M3, 8, 64, data.data(), scale.data());
    CHECK(dsv4_matmul(&p, &w, x.data(), 32, y.data(), 64, 1) == DSV4_ERR_INVALID_ARG, "x_stride < n_in");
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 4, 1) == DSV4_ERR_INVALID_ARG, "y_stride < n_out");
    CHECK(dsv4_matmul(&p, &w, nullptr, 64, y.data(), 64, 1) == DSV4_ERR_INVALID_ARG, "NULL x");
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, -1) == DSV4_ERR_INVALID_ARG, "negative rows");
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, 0) == DSV4_OK, "zero rows is a no-op");
    CHECK(dsv4_matmul(nullptr, &w, x.data(), 64, y.data(), 64, 2) == DSV4_OK, "NULL params = defaults");
    p.isa = (dsv4_isa) 42;
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, 1) == DSV4_ERR_UNSUPPORTED, "unknown ISA");
    p.isa = DSV4_ISA_AUTO;

    // MoE routes
    dsv4_weight_init_experts(&w, DSV4_TYPE_F32, 4, 8, 64, data.data(), nullptr);
    const int32_t experts_bad[1] = { 4 };
    const int32_t offset[2] = { 0, 2 };
    const int32_t rows_ok[2] = { 0, 1 };
    const int32_t rows_bad[2] = { 0, 9 };
    dsv4_moe_routes r = { 1, experts_bad, offset, rows_ok, rows_ok };
    CHECK(dsv4_matmul_moe(&p, &w, &r, x.data(), 64, 2, y.data(), 8, 2) == DSV4_ERR_INVALID_ARG, "expert out of range");
    const int32_t experts_ok[1] = { 3 };
    r.expert = experts_ok;
    CHECK(dsv4_matmul_moe(&p, &w, &r, x.data(), 64, 2, y.data(), 8, 2) == DSV4_OK, "valid routes: %s",
          dsv4_last_error());
    r.x_row = rows_bad;
    CHECK(dsv4_matmul_moe(&p, &w, &r, x.data(), 64, 2, y.data(), 8, 2) == DSV4_ERR_INVALID_ARG, "x row out of range");
    r.x_row = rows_ok;
    r.y_row = rows_bad;
    CHECK(dsv4_matmul_moe(&p, &w, &r, x.data(), 64, 2, y.data(), 8, 2) == DSV4_ERR_INVALID_ARG, "y row out of range");
    const int32_t offset_bad[2] = { 0, -1 };
    r.y_row = rows_ok;
    r.offset = offset_bad;
    CHECK(dsv4_matmul_moe(&p, &w, &r, x.data(), 64, 2, y.data(), 8, 2) == DSV4_ERR_INVALID_ARG, "offsets decrease");
    r.offset = offset;
    w.expert_stride = 10;
    CHECK(dsv4_matmul_moe(&p, &w, &r, x.data(), 64, 2, y.data(), 8, 2) == DSV4_ERR_INVALID_ARG, "expert stride");
    const int32_t ids_bad[2] = { 0, 7 };
    int32_t e_buf[4], o_buf[5], xr[2], yr[2];
    CHECK(dsv4_moe_group_by_expert(ids_bad, 1, 2, 4, e_buf, o_buf, xr, yr, &r) == DSV4_ERR_INVALID_ARG,
          "group_by_expert: id out of range");
    CHECK(std::strlen(dsv4_last_error()) > 0, "an error message is set");
}

struct nested_ctx {
    dsv4_threadpool * pool;
    const dsv4_weight * w;
    const float * x;
    float * y;
    dsv4_status st;
};

void nested_matmul_fn(void * ctx, int ith, int) {
    nested_ctx * c = (nested_ctx *) ctx;
    if (ith == 0) {
        dsv4_matmul_params p = dsv4_matmul_default_params();
        p.pool = c->pool;
        c->st = dsv4_matmul(&p, c->w, c->x, 64, c->y, 64, 1);
    }
}

void test_matmul_on_a_busy_pool_is_refused() {
    std::vector<float> wdata(64 * 64, 1.0f), x(64, 1.0f), y(64, 0.0f);
    dsv4_weight w;
    dsv4_weight_init(&w, DSV4_TYPE_F32, 64, 64, wdata.data(), nullptr);
    dsv4_threadpool * pool = dsv4_threadpool_init(2);
    nested_ctx c = { pool, &w, x.data(), y.data(), DSV4_OK };
    CHECK(dsv4_threadpool_run(pool, nested_matmul_fn, &c) == DSV4_OK, "outer run");
    CHECK(c.st == DSV4_ERR_INVALID_ARG, "a matmul on the pool it runs inside must be refused, got %d", (int) c.st);
    dsv4_matmul_params p = dsv4_matmul_default_params();
    p.pool = pool;
    CHECK(dsv4_matmul(&p, &w, x.data(), 64, y.data(), 64, 1) == DSV4_OK && y[5] == 64.0f, "the pool works after");
    dsv4_threadpool_free(pool);
}


// Packed MXFP4 (dsv4_weight_pack): the layout holds exactly the file's codes and scales where
// dsv4-matmul.h says (read back here independently), and the AVX-512 and AVX2 packed kernels give the
// scalar kernel's result bit for bit (so also independent of the batch) for every R, odd n_out,
// block counts that are not multiples of 4, padded rows, experts, threads and scale bytes at the
// edges (0, 1, 2: the subnormal scales); ISAs without a packed kernel ignore the copy.
void test_packed_mxfp4() {
    pools pl;
    rng g(4242);
    struct shape { int64_t n_expert, n_out, n_in; size_t pad; };
    const shape shapes[] = { { 1, 16, 128, 0 }, { 1, 70, 160, 0 }, { 1, 133, 96, 3 }, { 3, 37, 544, 0 },
                             { 1, 1, 32, 0 }, { 2, 48, 1024, 5 } };
    for (const shape & sh : shapes) {
        test_weight t;
        make_weight(t, DSV4_TYPE_MXFP4, sh.n_expert, sh.n_out, sh.n_in, sh.pad, g);
        const int64_t nb = sh.n_in / 32;
        const uint8_t edge[] = { 0, 1, 2, 3, 126, 127, 128, 140 };
        for (int i = 0; i < 8; i++) {  // some blocks get edge scales
            const int64_t e = g.below((int) sh.n_expert), o = g.below((int) sh.n_out), b = g.below((int) nb);
            t.data[(size_t) (e * sh.n_out + o) * t.row_bytes + (size_t) b * DSV4_MXFP4_BLOCK_BYTES] = edge[i];
        }
        const size_t bytes = dsv4_weight_packed_bytes(&t.w);
        const size_t groups = (size_t) ((sh.n_out + 15) / 16);
        CHECK(bytes == (size_t) sh.n_expert * groups * (size_t) (((nb + 3) / 4) * 64 + nb * 256),
              "packed bytes %zu for [%lld, %lld, %lld]", bytes, (long long) sh.n_expert, (long long) sh.n_out,
              (long long) sh.n_in);
        void * buf = nullptr;
        CHECK(posix_memalign(&buf, 64, bytes + 64) == 0, "alloc");
        CHECK(dsv4_weight_pack(&t.w, (uint8_t *) buf + 8, bytes) == DSV4_ERR_INVALID_ARG, "misaligned dst accepted");
        CHECK(dsv4_weight_pack(&t.w, buf, bytes - 1) == DSV4_ERR_INVALID_ARG, "short dst accepted");
        CHECK(t.w.packed == nullptr, "failed pack left a pointer");
        CHECK(dsv4_weight_pack(&t.w, buf, bytes) == DSV4_OK, "pack: %s", dsv4_last_error());
        CHECK(t.w.packed == buf && t.w.packed_expert_stride * (size_t) sh.n_expert == bytes, "pack pointers");

        // read the layout back: every code and scale where the header puts it, zero padding
        const uint8_t * pk = (const uint8_t *) buf;
        int bad = 0;
        for (int64_t e = 0; e < sh.n_expert; e++) {
            for (int64_t o = 0; o < (int64_t) groups * 16; o++) {
                const uint8_t * grp = pk + e * t.w.packed_expert_stride + (size_t) (o / 16) * (((nb + 3) / 4) * 64 + nb * 256);
                const int i = (int) (o % 16);
                const uint8_t * row = o < sh.n_out ? t.data.data() + (size_t) (e * sh.n_out + o) * t.row_bytes : nullptr;
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t * sb = grp + (size_t) (b / 4) * (64 + 4 * 256);
                    const uint8_t * blk = sb + 64 + (b % 4) * 256;
                    const uint8_t want_e = row ? row[b * DSV4_MXFP4_BLOCK_BYTES] : 0;
                    bad += sb[16 * (b % 4) + i] != want_e;
                    for (int k = 0; k < 32; k++) {
                        const int c = k / 8, hi = (k % 8) >= 4, tt = k % 4;
                        const uint8_t byte = blk[64 * c + 4 * i + tt];
                        const uint8_t got = hi ? byte >> 4 : byte & 0x0F;
                        const uint8_t src = row ? row[b * DSV4_MXFP4_BLOCK_BYTES + 1 + (k % 16)] : 0;
                        const uint8_t want = k < 16 ? (src & 0x0F) : (src >> 4);
                        bad += got != want;
                    }
                }
            }
        }
        CHECK(bad == 0, "packed layout: %d codes/scales misplaced for n_out %lld n_in %lld", bad, (long long) sh.n_out,
              (long long) sh.n_in);

        std::vector<dsv4_isa> isas = simd_isas();
        isas.insert(isas.begin(), DSV4_ISA_SCALAR);
        for (int64_t R : { 1, 2, 3, 5, 6, 7, 8, 9, 16, 17, 33 }) {
            const int64_t x_stride = sh.n_in + 3, y_stride = sh.n_out + 1;
            const std::vector<float> x = make_x(R, sh.n_in, x_stride, g);
            test_weight plain = t;
            plain.w.packed = nullptr;
            for (int64_t e = 0; e < sh.n_expert; e++) {
                test_weight te = t, tp = plain;
                for (test_weight * v : { &te, &tp }) {
                    v->w.n_expert = 1;
                    v->w.data = t.data.data() + (size_t) e * t.w.expert_stride;
                    v->w.packed = v == &te ? pk + (size_t) e * t.w.packed_expert_stride : nullptr;
                    v->n_out = sh.n_out;
                }
                const std::vector<float> ref = run_matmul(tp, DSV4_ISA_SCALAR, nullptr, x, x_stride, R, y_stride, "scalar");
                for (dsv4_isa isa : isas) {
                    for (int nth = 1; nth <= 3; nth += 2) {
                        const std::vector<float> un = run_matmul(tp, isa, pl.get(nth), x, x_stride, R, y_stride, "unpacked");
                        const std::vector<float> y = run_matmul(te, isa, pl.get(nth), x, x_stride, R, y_stride, "packed");
                        const bool has_packed = isa == DSV4_ISA_AVX512 || isa == DSV4_ISA_AVX2;
                        const std::vector<float> & want = has_packed ? ref : un;
                        CHECK(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)) == 0,
                              "packed MXFP4 %s %d thr [%lld, %lld] R %lld expert %lld differs from the %s result",
                              dsv4_isa_name(isa), nth, (long long) sh.n_out, (long long) sh.n_in, (long long) R,
                              (long long) e, has_packed ? "scalar" : "unpacked");
                    }
                }
            }
            if (g_failures > 20) {
                break;
            }
        }
        // the MoE entry point reads the packed experts too: against per-expert scalar products
        for (dsv4_isa pisa : { DSV4_ISA_AVX512, DSV4_ISA_AVX2 }) {
        if (sh.n_expert > 1 && dsv4_cpu_isa_supported(pisa)) {
            const int64_t n_tok = 5, x_stride = sh.n_in, y_stride = sh.n_out;
            const std::vector<float> x = make_x(n_tok, sh.n_in, x_stride, g);
            std::vector<int32_t> ids((size_t) n_tok);
            for (int64_t i = 0; i < n_tok; i++) {
                ids[(size_t) i] = g.below((int) sh.n_expert);
            }
            std::vector<int32_t> expert((size_t) sh.n_expert), offset((size_t) sh.n_expert + 1), xr((size_t) n_tok),
                yr((size_t) n_tok);
            dsv4_moe_routes routes;
            CHECK(dsv4_moe_group_by_expert(ids.data(), n_tok, 1, (int32_t) sh.n_expert, expert.data(), offset.data(),
                                           xr.data(), yr.data(), &routes) == DSV4_OK, "group");
            for (int nth = 1; nth <= 3; nth++) {
                dsv4_matmul_params p = dsv4_matmul_default_params();
                p.isa = pisa;
                p.pool = pl.get(nth);
                std::vector<float> y((size_t) (n_tok * y_stride), 0.0f);
                CHECK(dsv4_matmul_moe(&p, &t.w, &routes, x.data(), x_stride, n_tok, y.data(), y_stride, n_tok) == DSV4_OK,
                      "packed moe: %s", dsv4_last_error());
                for (int64_t i = 0; i < n_tok; i++) {
                    dsv4_weight we = t.w;
                    we.n_expert = 1;
                    we.packed = nullptr;
                    we.data = t.data.data() + (size_t) ids[(size_t) i] * t.w.expert_stride;
                    dsv4_matmul_params sp = dsv4_matmul_default_params();
                    sp.isa = DSV4_ISA_SCALAR;
                    std::vector<float> one((size_t) y_stride, 0.0f);
                    CHECK(dsv4_matmul(&sp, &we, x.data() + i * x_stride, x_stride, one.data(), y_stride, 1) == DSV4_OK, "ref");
                    CHECK(std::memcmp(one.data(), y.data() + i * y_stride, (size_t) sh.n_out * sizeof(float)) == 0,
                          "packed moe %s %d thr: token %lld differs from the scalar product", dsv4_isa_name(pisa), nth,
                          (long long) i);
                }
            }
        }
        }
        free(buf);
    }
    // only MXFP4 and FP8 pack
    test_weight f;
    make_weight(f, DSV4_TYPE_BF16, 1, 32, 128, 0, g);
    CHECK(dsv4_weight_packed_bytes(&f.w) == 0, "BF16 has no packed size");
    alignas(64) static uint8_t dummy[64];
    CHECK(dsv4_weight_pack(&f.w, dummy, sizeof(dummy)) == DSV4_ERR_UNSUPPORTED, "BF16 pack refused");
}


// Packed FP8 (dsv4_weight_pack, groups of 4 rows): the bytes sit where dsv4-matmul.h says, and
// every ISA and mode gives bit-identical results with and without the packed copy (the AVX512_BF16
// kernels read it, the others ignore it), power-of-two and other scales, odd n_out, n_in not a
// multiple of 64, R from 1 to 33, threads, and an expert stack through the MoE entry point.
void test_packed_fp8() {
    pools pl;
    rng g(5151);
    struct shape { int64_t n_expert, n_out, n_in; size_t pad; bool pow2; };
    const shape shapes[] = { { 1, 4, 64, 0, true }, { 1, 7, 200, 0, true }, { 1, 130, 300, 5, true },
                             { 1, 257, 2048, 0, true }, { 1, 70, 330, 0, false }, { 3, 36, 256, 0, true } };
    std::vector<dsv4_isa> isas = simd_isas();
    isas.insert(isas.begin(), DSV4_ISA_SCALAR);
    for (const shape & sh : shapes) {
        test_weight t;
        make_weight(t, DSV4_TYPE_FP8_E4M3, sh.n_expert, sh.n_out, sh.n_in, sh.pad, g, sh.pow2);
        const size_t bytes = dsv4_weight_packed_bytes(&t.w);
        const int64_t npad = (sh.n_in + 63) / 64 * 64, groups = (sh.n_out + 3) / 4;
        CHECK(bytes == (size_t) (sh.n_expert * groups * 4 * npad), "FP8 packed bytes %zu", bytes);
        void * buf = nullptr;
        CHECK(posix_memalign(&buf, 64, bytes) == 0, "alloc");
        CHECK(dsv4_weight_pack(&t.w, buf, bytes) == DSV4_OK, "pack fp8: %s", dsv4_last_error());
        const uint8_t * pk = (const uint8_t *) buf;
        int bad = 0;
        for (int64_t e = 0; e < sh.n_expert; e++) {
            for (int64_t o = 0; o < groups * 4; o++) {
                for (int64_t k = 0; k < npad; k++) {
                    const uint8_t got = pk[(size_t) (e * groups * 4 * npad + (o / 4) * 4 * npad + (k / 64) * 256 +
                                                     (o % 4) * 64 + k % 64)];
                    const int64_t col = k / 64 * 64 + dsv4_fp8_packed_column((int) (k % 64));
                    const uint8_t want = o < sh.n_out && col < sh.n_in
                        ? t.data[(size_t) (e * sh.n_out + o) * t.row_bytes + (size_t) col] : 0;
                    bad += got != want;
                }
            }
        }
        CHECK(bad == 0, "FP8 packed layout: %d bytes misplaced", bad);
        for (int64_t R : { 1, 2, 5, 6, 7, 33 }) {
            const int64_t x_stride = sh.n_in + 1, y_stride = sh.n_out + 2;
            const std::vector<float> x = make_x(R, sh.n_in, x_stride, g);
            for (int64_t e = 0; e < sh.n_expert; e++) {
                test_weight te = t, tp = t;
                for (test_weight * v : { &te, &tp }) {
                    v->w.n_expert = 1;
                    v->w.data = t.data.data() + (size_t) e * t.w.expert_stride;
                    v->w.scale = t.scale.data() + (size_t) e * t.w.scale_expert_stride;
                    v->w.packed = v == &te ? pk + (size_t) e * t.w.packed_expert_stride : nullptr;
                }
                for (dsv4_isa isa : isas) {
                    for (bool fx : { false, true }) {
                        for (int nth = 1; nth <= 3; nth += 2) {
                            const std::vector<float> a = run_matmul(tp, isa, pl.get(nth), x, x_stride, R, y_stride, "fp8", fx);
                            const std::vector<float> b = run_matmul(te, isa, pl.get(nth), x, x_stride, R, y_stride, "fp8 packed", fx);
                            CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0,
                                  "packed FP8 %s%s %d thr [%lld, %lld]%s R %lld expert %lld differs from unpacked",
                                  dsv4_isa_name(isa), fx ? " (float activations)" : "", nth, (long long) sh.n_out,
                                  (long long) sh.n_in, sh.pow2 ? "" : " (non-pow2 scales)", (long long) R, (long long) e);
                        }
                    }
                }
            }
            if (g_failures > 20) {
                break;
            }
        }
        if (sh.n_expert > 1) {  // the MoE entry point: packed stack == unpacked stack
            const int64_t n_tok = 5;
            const std::vector<float> x = make_x(n_tok, sh.n_in, sh.n_in, g);
            std::vector<int32_t> ids((size_t) n_tok), expert((size_t) sh.n_expert), offset((size_t) sh.n_expert + 1),
                xr((size_t) n_tok), yr((size_t) n_tok);
            for (int32_t & id : ids) {
                id = g.below((int) sh.n_expert);
            }
            dsv4_moe_routes routes;
            CHECK(dsv4_moe_group_by_expert(ids.data(), n_tok, 1, (int32_t) sh.n_expert, expert.data(), offset.data(),
                                           xr.data(), yr.data(), &routes) == DSV4_OK, "group");
            dsv4_weight wp = t.w, wu = t.w;
            wu.packed = nullptr;
            for (int nth = 1; nth <= 3; nth++) {
                dsv4_matmul_params p = dsv4_matmul_default_params();
                p.pool = pl.get(nth);
                std::vector<float> ya((size_t) (n_tok * sh.n_out)), yb((size_t) (n_tok * sh.n_out));
                CHECK(dsv4_matmul_moe(&p, &wu, &routes, x.data(), sh.n_in, n_tok, ya.data(), sh.n_out, n_tok) == DSV4_OK &&
                      dsv4_matmul_moe(&p, &wp, &routes, x.data(), sh.n_in, n_tok, yb.data(), sh.n_out, n_tok) == DSV4_OK,
                      "fp8 moe: %s", dsv4_last_error());
                CHECK(std::memcmp(ya.data(), yb.data(), ya.size() * sizeof(float)) == 0, "packed FP8 moe %d thr differs", nth);
            }
        }
        free(buf);
    }
}


// The ISA bf16 rounding of activation rows (where an ISA has one) equals dsv4_mm_round_bf16 bit for
// bit: ties both ways, NaN (quieted), infinities, subnormals, the largest finite values, tails.
void test_bf16_rounding_kernels_match_scalar() {
    rng g(99);
    std::vector<float> x;
    const uint32_t special[] = { 0x00000000u, 0x80000000u, 0x3F808000u, 0x3F818000u, 0x3F80FFFFu, 0x7F7FFFFFu,
                                 0xFF7FFFFFu, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u, 0xFF812345u,
                                 0x00000001u, 0x807FFFFFu, 0x00008000u, 0x00018000u };
    for (uint32_t u : special) {
        float f;
        std::memcpy(&f, &u, 4);
        x.push_back(f);
    }
    for (int i = 0; i < 1000; i++) {
        const uint32_t u = (uint32_t) g.next();
        float f;
        std::memcpy(&f, &u, 4);
        x.push_back(f);
    }
    std::vector<const dsv4_mm_isa_kernels *> kernels = { &dsv4_mm_kernels_scalar };
#if defined(__x86_64__)
    if (dsv4_cpu_isa_supported(DSV4_ISA_AVX2)) {
        kernels.push_back(&dsv4_mm_kernels_avx2);
    }
    if (dsv4_cpu_isa_supported(DSV4_ISA_AVX512)) {
        kernels.push_back(&dsv4_mm_kernels_avx512);
    }
#endif
#if defined(__aarch64__)
    kernels.push_back(&dsv4_mm_kernels_neon);
#endif
    int tested = 0;
    for (const dsv4_mm_isa_kernels * k : kernels) {
        if (!k->round) {
            continue;
        }
        tested++;
        for (int64_t n : { (int64_t) x.size(), (int64_t) 7, (int64_t) 16, (int64_t) 33 }) {
            std::vector<float> y((size_t) n + 1, 123.0f);
            k->round(x.data(), n, (uint8_t *) y.data(), 0);
            int bad = 0;
            for (int64_t i = 0; i < n; i++) {
                const float want = dsv4_mm_round_bf16(x[(size_t) i]);
                bad += std::memcmp(&want, &y[(size_t) i], 4) != 0;
            }
            CHECK(bad == 0 && y[(size_t) n] == 123.0f, "bf16 rounding kernel: %d of %lld values differ (or wrote past n)",
                  bad, (long long) n);
        }
    }
    std::printf("bf16 rounding kernels checked: %d\n", tested);
}

void print_summary() {
    const dsv4_type types[] = { DSV4_TYPE_F32, DSV4_TYPE_F16, DSV4_TYPE_BF16, DSV4_TYPE_FP8_E4M3, DSV4_TYPE_Q8_0,
                                DSV4_TYPE_MXFP4 };
    std::printf("worst |error| / sum|w*x|   scalar-vs-exact   avx2-vs-scalar   avx512-vs-scalar   neon-vs-scalar  "
                "(tolerance %.0e)\n", k_tol);
    for (dsv4_type t : types) {
        std::printf("  %-9s                 %.2e          %.2e         %.2e           %.2e\n", tname(t),
                    g_worst_scalar_vs_exact.v[t][DSV4_ISA_SCALAR], g_worst_vs_scalar.v[t][DSV4_ISA_AVX2],
                    g_worst_vs_scalar.v[t][DSV4_ISA_AVX512], g_worst_vs_scalar.v[t][DSV4_ISA_NEON]);
    }
    std::printf("float activations, worst |error| / sum|w*x| vs the exact product: scalar / avx2 / avx512 / neon\n");
    for (dsv4_type t : types) {
        std::printf("  %-9s                 %.2e          %.2e         %.2e           %.2e\n", tname(t),
                    g_worst_fx_vs_exact.v[t][DSV4_ISA_SCALAR], g_worst_fx_vs_exact.v[t][DSV4_ISA_AVX2],
                    g_worst_fx_vs_exact.v[t][DSV4_ISA_AVX512], g_worst_fx_vs_exact.v[t][DSV4_ISA_NEON]);
    }
}

}  // namespace

int main() {
    std::printf("best ISA here: %s (avx2 %s, avx512 %s, neon %s)\n", dsv4_isa_name(dsv4_cpu_best_isa()),
                dsv4_cpu_isa_supported(DSV4_ISA_AVX2) ? "yes" : "no",
                dsv4_cpu_isa_supported(DSV4_ISA_AVX512) ? "yes" : "no",
                dsv4_cpu_isa_supported(DSV4_ISA_NEON) ? "yes" : "no");
    test_activation_quantization_is_bit_identical_across_isas();
    test_e8m0_table_matches_bit_decoder();
    test_row_bytes_match_the_type_table();
    test_every_kernel_matches_reference_for_all_types_shapes_rows_and_threads();
    test_float_activations_match_exact_product_on_every_isa_shape_rows_and_threads();
    test_moe_matches_per_pair_products(false);
    test_moe_matches_per_pair_products(true);
    test_rows_are_independent_of_the_batch();
    test_fp8_and_bf16_of_the_same_values_agree_bitwise();
    test_packed_mxfp4();
    test_packed_fp8();
    test_bf16_rounding_kernels_match_scalar();
    test_caller_scratch_is_used_and_checked();
    test_invalid_arguments_return_status();
    test_matmul_on_a_busy_pool_is_refused();
    print_summary();
    if (g_failures) {
        std::fprintf(stderr, "test_matmul: %d of %d checks failed\n", g_failures, g_checks);
        return 1;
    }
    std::printf("test_matmul: ok (%d checks)\n", g_checks);
    return 0;
}
