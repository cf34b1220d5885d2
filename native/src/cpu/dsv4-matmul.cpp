// Matmul driver: argument validation, ISA selection, activation quantization, and the split of
// output rows (or (expert, output-row) items) over the thread pool. The arithmetic lives in the
// per-ISA kernel files.
#include "cpu/dsv4-matmul-impl.h"

#include "dsv4-impl.h"

#include <stdlib.h>

namespace {

// Rows per work unit: 16 floats = one 64-byte cache line of each output row, so two threads
// never write the same line of y (when y's rows are 64-byte aligned).
constexpr int64_t k_unit_rows = 16;

// Quantize on the calling thread below this many activation values, on the pool above.
constexpr int64_t k_parallel_quantize_min = 1 << 15;

size_t align64(size_t n) {
    return (n + 63) & ~(size_t) 63;
}

bool type_known(dsv4_type type) {
    switch (type) {
        case DSV4_TYPE_F32:
        case DSV4_TYPE_F16:
        case DSV4_TYPE_BF16:
        case DSV4_TYPE_FP8_E4M3:
        case DSV4_TYPE_Q8_0:
        case DSV4_TYPE_MXFP4:
            return true;
        default:
            return false;
    }
}

bool type_quantizes_x(dsv4_type type) {
    return type == DSV4_TYPE_Q8_0 || type == DSV4_TYPE_MXFP4;
}

// Whether this call quantizes the activations (Q8_0 / MXFP4 unless float_activations).
bool call_quantizes_x(const dsv4_matmul_params * p, dsv4_type type) {
    return type_quantizes_x(type) && !(p && p->float_activations);
}

bool type_rounds_x(dsv4_type type) {
    return type == DSV4_TYPE_FP8_E4M3 || type == DSV4_TYPE_BF16;
}

// Whether this call rounds the activations to bf16 (FP8 / BF16 unless float_activations).
bool call_rounds_x(const dsv4_matmul_params * p, dsv4_type type) {
    return type_rounds_x(type) && !(p && p->float_activations);
}

// Bytes per activation row the driver prepares in scratch: quantized rows (Q8_0 / MXFP4) or
// bf16-rounded f32 rows (FP8 / BF16); 0 when the kernel reads the caller's rows.
size_t act_row_bytes(dsv4_type type, bool quantize, bool round, int64_t n_in) {
    if (quantize && type_quantizes_x(type)) {
        return dsv4_mm_xq_row_bytes(n_in);
    }
    if (round && type_rounds_x(type)) {
        return ((size_t) n_in * sizeof(float) + 63) & ~(size_t) 63;
    }
    return 0;
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi");
#else
    return false;
#endif
}

int32_t quantize_bias(dsv4_type type) {
    return type == DSV4_TYPE_Q8_0 ? DSV4_MM_Q8_0_BIAS : DSV4_MM_MXFP4_BIAS;
}

const char * type_name(dsv4_type type) {
    const dsv4_type_traits * t = dsv4_get_type_traits(type);
    return t ? t->name : "unknown";
}

const dsv4_mm_isa_kernels * isa_kernels(dsv4_isa isa) {
    switch (isa) {
#if defined(__x86_64__)
        case DSV4_ISA_AVX512: return &dsv4_mm_kernels_avx512;
        case DSV4_ISA_AVX2:   return &dsv4_mm_kernels_avx2;
#endif
#if defined(__aarch64__)
        case DSV4_ISA_NEON:   return &dsv4_mm_kernels_neon;
#endif
        default:              return &dsv4_mm_kernels_scalar;
    }
}

// rounded_x: FP8 / BF16 rows arrive rounded to bf16; on AVX-512 CPUs with AVX512_BF16 they go to
// the native bf16 dot-product kernels, elsewhere to the f32 kernels (same arithmetic).
// packed: the weight has the packed MXFP4 layout (dsv4_weight_pack), read where the ISA has a kernel.
dsv4_mm_kernel kernel_for(dsv4_isa isa, const dsv4_mm_isa_kernels * k, dsv4_type type, bool quantized_x,
                          bool rounded_x, bool packed) {
#if defined(__x86_64__)
    if (rounded_x && isa == DSV4_ISA_AVX512 && cpu_has_avx512_bf16()) {
        return type == DSV4_TYPE_FP8_E4M3 ? dsv4_mm_kernels_avx512bf16.fp8 : dsv4_mm_kernels_avx512bf16.bf16;
    }
#else
    (void) isa;
    (void) rounded_x;
#endif
    switch (type) {
        case DSV4_TYPE_F32:   return k->f32;
        case DSV4_TYPE_F16:   return k->f16;
        case DSV4_TYPE_BF16:  return k->bf16;
        case DSV4_TYPE_FP8_E4M3:   return k->fp8;
        case DSV4_TYPE_Q8_0:  return quantized_x ? k->q8_0 : k->q8_0_fx;
        case DSV4_TYPE_MXFP4:
            if (quantized_x && packed && k->mxfp4_packed) {
                return k->mxfp4_packed;
            }
            return quantized_x ? k->mxfp4 : k->mxfp4_fx;
        default:               return nullptr;
    }
}

dsv4_status check_weight(const dsv4_weight * w, const char * fn) {
    if (!w) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: weight is NULL", fn);
    }
    if (!type_known(w->type)) {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: weight type %d has no CPU matmul", fn, (int) w->type);
    }
    if (w->n_out <= 0 || w->n_in <= 0 || w->n_out > (INT64_C(1) << 40) || w->n_in > (INT64_C(1) << 40)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: %s weight has invalid shape [%lld, %lld]", fn,
                              type_name(w->type), (long long) w->n_out, (long long) w->n_in);
    }
    const size_t row = dsv4_weight_row_bytes(w->type, w->n_in);
    if (row == 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: %s weight needs n_in a multiple of 32, got %lld", fn,
                              type_name(w->type), (long long) w->n_in);
    }
    if (w->row_bytes < row) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: row_bytes %zu < %zu needed by %lld %s values", fn,
                              w->row_bytes, row, (long long) w->n_in, type_name(w->type));
    }
    if (!w->data) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: weight data is NULL", fn);
    }
    if (w->type == DSV4_TYPE_FP8_E4M3 && !w->scale) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: FP8 weight has no scale table", fn);
    }
    if (w->n_expert < 1) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: n_expert must be >= 1, got %lld", fn, (long long) w->n_expert);
    }
    if (w->n_expert > 1) {
        if (w->expert_stride < (size_t) w->n_out * w->row_bytes) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: expert_stride %zu < n_out * row_bytes", fn,
                                  w->expert_stride);
        }
        const size_t scales = (size_t) ((w->n_out + 127) / 128) * (size_t) ((w->n_in + 127) / 128);
        if (w->type == DSV4_TYPE_FP8_E4M3 && w->scale_expert_stride < scales) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: scale_expert_stride %zu < %zu scales per expert", fn,
                                  w->scale_expert_stride, scales);
        }
    }
    return DSV4_OK;
}

dsv4_status resolve_isa(const dsv4_matmul_params * p, dsv4_isa * out, const char * fn) {
    dsv4_isa isa = p ? p->isa : DSV4_ISA_AUTO;
    if (isa == DSV4_ISA_AUTO) {
        isa = dsv4_cpu_best_isa();
    } else if (!dsv4_cpu_isa_supported(isa)) {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: ISA %s is not supported on this CPU/build", fn,
                              dsv4_isa_name(isa));
    }
    *out = isa;
    return DSV4_OK;
}

dsv4_mm_w expert_view(const dsv4_weight * w, int64_t e) {
    dsv4_mm_w v;
    v.type = w->type;
    v.n_out = w->n_out;
    v.n_in = w->n_in;
    v.data = (const uint8_t *) w->data + (size_t) e * w->expert_stride;
    v.row_bytes = w->row_bytes;
    v.scale = w->scale ? w->scale + (size_t) e * w->scale_expert_stride : nullptr;
    v.scale_cols = (w->n_in + 127) / 128;
    v.packed = w->packed ? (const uint8_t *) w->packed + (size_t) e * w->packed_expert_stride : nullptr;
    return v;
}

// Scratch owned for one call: either the caller's buffer or a per-call allocation.
struct scratch_buf {
    uint8_t * base = nullptr;
    void * owned = nullptr;
    ~scratch_buf() { free(owned); }
};

dsv4_status get_scratch(const dsv4_matmul_params * p, size_t need, scratch_buf * s, const char * fn) {
    if (p && p->scratch) {
        uint8_t * b = (uint8_t *) p->scratch;
        const size_t pad = (64 - ((uintptr_t) b & 63)) & 63;
        if (p->scratch_size < need || p->scratch_size - need < pad) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: scratch of %zu bytes, need %zu", fn, p->scratch_size,
                                  need + pad);
        }
        s->base = b + pad;
        return DSV4_OK;
    }
    if (need == 0) {
        need = 64;
    }
    if (posix_memalign(&s->owned, 64, need) != 0) {
        s->owned = nullptr;
        return dsv4_set_error(DSV4_ERR_NO_MEMORY, "%s: cannot allocate %zu bytes of scratch", fn, need);
    }
    s->base = (uint8_t *) s->owned;
    return DSV4_OK;
}

// ---- thread tasks ----

struct quantize_task {
    dsv4_mm_quantize quantize;
    bool finish;  // integer rows: fill corr32 (dsv4_mm_xq_finish)
    int32_t bias;
    const float * x;
    int64_t x_stride;
    int64_t n_rows;
    int64_t n_in;
    uint8_t * xq;
    size_t xq_stride;
};

// dsv4_mm_quantize-shaped: x rounded to bf16 values (f32) into dst.
void round_row(const float * x, int64_t n, uint8_t * dst, int32_t) {
    float * y = (float *) dst;
    for (int64_t k = 0; k < n; k++) {
        y[k] = dsv4_mm_round_bf16(x[k]);
    }
}

void quantize_fn(void * ctx, int ith, int nth) {
    const quantize_task * t = (const quantize_task *) ctx;
    const int64_t r0 = t->n_rows * ith / nth;
    const int64_t r1 = t->n_rows * (ith + 1) / nth;
    for (int64_t r = r0; r < r1; r++) {
        t->quantize(t->x + r * t->x_stride, t->n_in, t->xq + (size_t) r * t->xq_stride, t->bias);
        if (t->finish) {
            dsv4_mm_xq_finish(t->xq + (size_t) r * t->xq_stride, t->n_in);
        }
    }
}

// The pool refuses a run while it is busy (a matmul called from inside a pool task, or two
// threads sharing one pool); that error is returned, nothing is computed.
dsv4_status run_quantize(dsv4_threadpool * pool, const quantize_task * t) {
    if (pool && dsv4_threadpool_n_threads(pool) > 1 && t->n_rows > 1 && t->n_rows * t->n_in >= k_parallel_quantize_min) {
        return dsv4_threadpool_run(pool, quantize_fn, (void *) t);
    }
    quantize_fn((void *) t, 0, 1);
    return DSV4_OK;
}

struct dense_task {
    dsv4_mm_kernel kernel;
    dsv4_mm_w w;
    dsv4_mm_rows rows;
    uint8_t * tmp;
    size_t tmp_stride;
};

void dense_fn(void * ctx, int ith, int nth) {
    const dense_task * t = (const dense_task *) ctx;
    const int64_t units = (t->w.n_out + k_unit_rows - 1) / k_unit_rows;
    const int64_t u0 = units * ith / nth;
    const int64_t u1 = units * (ith + 1) / nth;
    const int64_t o0 = u0 * k_unit_rows;
    const int64_t o1 = u1 * k_unit_rows < t->w.n_out ? u1 * k_unit_rows : t->w.n_out;
    if (o0 < o1) {
        t->kernel(&t->w, o0, o1, &t->rows, t->tmp + (size_t) ith * t->tmp_stride);
    }
}

struct moe_task {
    dsv4_mm_kernel kernel;
    const dsv4_weight * w;
    const dsv4_moe_routes * routes;
    dsv4_mm_rows rows;  // template: n, x_idx, y_idx are set per expert
    uint8_t * tmp;
    size_t tmp_stride;
};

// Threads split the call's (expert, 16-row unit) sequence into contiguous ranges of equal cost,
// a unit of an expert with n rows costing n + k_moe_unit_base (the weight stream, in rows: at one
// row a unit is memory-bound, at many its rows' products dominate). Equal unit counts left a
// prefill chunk's threads waiting on whichever got the busiest experts.
constexpr int64_t k_moe_unit_base = 4;

// The cost of one unit of selected expert i (0 when it has no rows: its units are skipped).
int64_t moe_unit_cost(const dsv4_moe_routes * r, int32_t i) {
    const int64_t rows = r->offset[i + 1] - r->offset[i];
    return rows > 0 ? rows + k_moe_unit_base : 0;
}

int64_t moe_total_cost(const dsv4_moe_routes * r, int64_t upe) {
    int64_t cum = 0;
    for (int32_t i = 0; i < r->n_sel; i++) {
        cum += upe * moe_unit_cost(r, i);
    }
    return cum;
}

// The first unit at or after cost `target` (units [0, u) cost at least target), or `units`.
int64_t moe_unit_at_cost(const dsv4_moe_routes * r, int64_t upe, int64_t target) {
    int64_t cum = 0;
    for (int32_t i = 0; i < r->n_sel; i++) {
        const int64_t c = moe_unit_cost(r, i);
        if (c > 0 && cum + upe * c >= target) {
            const int64_t j = target > cum ? (target - cum + c - 1) / c : 0;
            return (int64_t) i * upe + j;
        }
        cum += upe * c;
    }
    return upe * r->n_sel;
}

void moe_fn(void * ctx, int ith, int nth) {
    const moe_task * t = (const moe_task *) ctx;
    const int64_t upe = (t->w->n_out + k_unit_rows - 1) / k_unit_rows;  // units per expert
    const int64_t units = upe * t->routes->n_sel;
    const int64_t total = moe_total_cost(t->routes, upe);
    int64_t u = ith == 0 ? 0 : moe_unit_at_cost(t->routes, upe, total * ith / nth);
    const int64_t u_end = ith == nth - 1 ? units : moe_unit_at_cost(t->routes, upe, total * (ith + 1) / nth);
    void * tmp = t->tmp + (size_t) ith * t->tmp_stride;
    while (u < u_end) {
        const int64_t i = u / upe;
        const int64_t uu = u % upe;
        const int64_t n_units = (u_end - u) < (upe - uu) ? (u_end - u) : (upe - uu);
        const int64_t o0 = uu * k_unit_rows;
        int64_t o1 = (uu + n_units) * k_unit_rows;
        o1 = o1 < t->w->n_out ? o1 : t->w->n_out;
        u += n_units;
        const int32_t p0 = t->routes->offset[i];
        const int32_t p1 = t->routes->offset[i + 1];
        if (p1 <= p0) {
            continue;
        }
        dsv4_mm_rows rows = t->rows;
        rows.n = p1 - p0;
        rows.x_idx = t->routes->x_row ? t->routes->x_row + p0 : nullptr;
        rows.y_idx = t->routes->y_row ? t->routes->y_row + p0 : nullptr;
        if (!rows.x_idx) {
            // identity pair -> row mapping, shifted to this expert's pairs
            rows.x = rows.x ? rows.x + (int64_t) p0 * rows.x_stride : nullptr;
            rows.xq = rows.xq ? rows.xq + (size_t) p0 * rows.xq_stride : nullptr;
        }
        if (!rows.y_idx) {
            rows.y = rows.y + (int64_t) p0 * rows.y_stride;
        }
        const dsv4_mm_w w = expert_view(t->w, t->routes->expert[i]);
        t->kernel(&w, o0, o1, &rows, tmp);
    }
}

}  // namespace

// ---- public API ----

extern "C" size_t dsv4_weight_row_bytes(dsv4_type type, int64_t n_in) {
    if (n_in <= 0) {
        return 0;
    }
    switch (type) {
        case DSV4_TYPE_F32:   return (size_t) n_in * 4;
        case DSV4_TYPE_F16:
        case DSV4_TYPE_BF16:  return (size_t) n_in * 2;
        case DSV4_TYPE_FP8_E4M3:   return (size_t) n_in;
        case DSV4_TYPE_Q8_0:  return n_in % 32 ? 0 : (size_t) (n_in / 32) * DSV4_Q8_0_BLOCK_BYTES;
        case DSV4_TYPE_MXFP4: return n_in % 32 ? 0 : (size_t) (n_in / 32) * DSV4_MXFP4_BLOCK_BYTES;
        default:               return 0;
    }
}

extern "C" void dsv4_weight_init(dsv4_weight * w, dsv4_type type, int64_t n_out, int64_t n_in, const void * data,
                                 const float * scale) {
    dsv4_weight_init_experts(w, type, 1, n_out, n_in, data, scale);
}

extern "C" void dsv4_weight_init_experts(dsv4_weight * w, dsv4_type type, int64_t n_expert, int64_t n_out,
                                         int64_t n_in, const void * data, const float * scale) {
    w->type = type;
    w->n_out = n_out;
    w->n_in = n_in;
    w->data = data;
    w->row_bytes = dsv4_weight_row_bytes(type, n_in);
    w->scale = scale;
    w->n_expert = n_expert;
    w->expert_stride = (size_t) (n_out > 0 ? n_out : 0) * w->row_bytes;
    w->scale_expert_stride = type == DSV4_TYPE_FP8_E4M3 && n_out > 0 && n_in > 0
        ? (size_t) ((n_out + 127) / 128) * (size_t) ((n_in + 127) / 128) : 0;
    w->packed = nullptr;
    w->packed_expert_stride = 0;
}

static size_t mxfp4_packed_expert_bytes(int64_t n_out, int64_t n_in) {
    return (size_t) ((n_out + DSV4_MXFP4_PACK_ROWS - 1) / DSV4_MXFP4_PACK_ROWS) * dsv4_mm_mxfp4_group_bytes(n_in);
}

static size_t fp8_packed_expert_bytes(int64_t n_out, int64_t n_in) {
    return (size_t) ((n_out + DSV4_FP8_PACK_ROWS - 1) / DSV4_FP8_PACK_ROWS) * dsv4_fp8_packed_group_bytes(n_in);
}

extern "C" size_t dsv4_weight_packed_bytes(const dsv4_weight * w) {
    if (!w || w->n_out <= 0 || w->n_in <= 0 || w->n_expert < 1) {
        return 0;
    }
    if (w->type == DSV4_TYPE_FP8_E4M3) {
        return fp8_packed_expert_bytes(w->n_out, w->n_in) * (size_t) w->n_expert;
    }
    if (w->type != DSV4_TYPE_MXFP4 || w->n_in % 32 != 0) {
        return 0;
    }
    return mxfp4_packed_expert_bytes(w->n_out, w->n_in) * (size_t) w->n_expert;
}

// FP8: 64-byte chunks of 4 rows interleaved (dsv4-matmul.h).
static void pack_fp8(dsv4_weight * w, uint8_t * out) {
    const size_t chunks = (size_t) ((w->n_in + 63) / 64);
    const size_t group = dsv4_fp8_packed_group_bytes(w->n_in);
    const int64_t n_group = (w->n_out + DSV4_FP8_PACK_ROWS - 1) / DSV4_FP8_PACK_ROWS;
    const size_t per_expert = fp8_packed_expert_bytes(w->n_out, w->n_in);
    for (int64_t e = 0; e < w->n_expert; e++) {
        const uint8_t * src = (const uint8_t *) w->data + (size_t) e * w->expert_stride;
        uint8_t * dst = out + (size_t) e * per_expert;
        for (int64_t g = 0; g < n_group; g++) {
            for (size_t c = 0; c < chunks; c++) {
                for (int i = 0; i < DSV4_FP8_PACK_ROWS; i++) {
                    uint8_t * d = dst + (size_t) g * group + c * 64 * DSV4_FP8_PACK_ROWS + 64 * (size_t) i;
                    const int64_t o = g * DSV4_FP8_PACK_ROWS + i;
                    const int64_t k0 = (int64_t) c * 64;
                    const int64_t len = w->n_in - k0 < 64 ? w->n_in - k0 : 64;
                    for (int b = 0; b < 64; b++) {
                        const int col = dsv4_fp8_packed_column(b);
                        d[b] = o < w->n_out && col < len ? src[(size_t) o * w->row_bytes + (size_t) (k0 + col)] : 0;
                    }
                }
            }
        }
    }
    w->packed = out;
    w->packed_expert_stride = per_expert;
}

// Chunk c of one row's block (its 16 code bytes q: q[j] holds column j in the low nibble and
// 16 + j in the high one) as the 4 packed bytes of that row: columns 8c + t (low nibbles) and
// 8c + 4 + t (high nibbles), t < 4; four bytes at a time.
static inline uint32_t pack_row_chunk(const uint8_t * q, int c) {
    uint32_t a, b;
    memcpy(&a, q + 8 * (c & 1), 4);
    memcpy(&b, q + 8 * (c & 1) + 4, 4);
    if (c < 2) {  // columns 0-15: the low nibbles
        return (a & 0x0F0F0F0Fu) | ((b & 0x0F0F0F0Fu) << 4);
    }
    return ((a >> 4) & 0x0F0F0F0Fu) | (b & 0xF0F0F0F0u);  // columns 16-31: the high nibbles
}

// MXFP4: 16-row groups, 4-block super-blocks of scales then chunks (dsv4-matmul.h).
static void pack_mxfp4(dsv4_weight * w, uint8_t * out) {
    const int64_t nb = w->n_in / 32;
    const int64_t n_group = (w->n_out + DSV4_MXFP4_PACK_ROWS - 1) / DSV4_MXFP4_PACK_ROWS;
    const size_t per_expert = mxfp4_packed_expert_bytes(w->n_out, w->n_in);
    uint8_t * const start = out;
    for (int64_t e = 0; e < w->n_expert; e++) {
        const uint8_t * src = (const uint8_t *) w->data + (size_t) e * w->expert_stride;
        for (int64_t g = 0; g < n_group; g++) {
            const uint8_t * rows[DSV4_MXFP4_PACK_ROWS];
            for (int i = 0; i < DSV4_MXFP4_PACK_ROWS; i++) {
                const int64_t o = g * DSV4_MXFP4_PACK_ROWS + i;
                rows[i] = o < w->n_out ? src + (size_t) o * w->row_bytes : nullptr;  // NULL: padding row
            }
            for (int64_t b0 = 0; b0 < nb; b0 += 4) {
                memset(out, 0, 64);
                const int nj = nb - b0 < 4 ? (int) (nb - b0) : 4;
                for (int j = 0; j < nj; j++) {
                    for (int i = 0; i < DSV4_MXFP4_PACK_ROWS; i++) {
                        out[16 * j + i] = rows[i] ? rows[i][(b0 + j) * DSV4_MXFP4_BLOCK_BYTES] : 0;
                    }
                }
                out += 64;
                for (int j = 0; j < nj; j++) {
                    for (int i = 0; i < DSV4_MXFP4_PACK_ROWS; i++) {
                        const uint8_t * q = rows[i] ? rows[i] + (b0 + j) * DSV4_MXFP4_BLOCK_BYTES + 1 : nullptr;
                        for (int c = 0; c < 4; c++) {
                            const uint32_t v = q ? pack_row_chunk(q, c) : 0;
                            memcpy(out + 64 * c + 4 * i, &v, 4);
                        }
                    }
                    out += 256;
                }
            }
        }
    }
    w->packed = start;
    w->packed_expert_stride = per_expert;
}

extern "C" dsv4_status dsv4_weight_pack(dsv4_weight * w, void * dst, size_t dst_size) {
    static const char * fn = "dsv4_weight_pack";
    dsv4_status st = check_weight(w, fn);
    if (st != DSV4_OK) {
        return st;
    }
    const size_t need = dsv4_weight_packed_bytes(w);
    if (need == 0) {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: only MXFP4 and FP8_E4M3 weights have a packed layout, got %s",
                              fn, type_name(w->type));
    }
    if (!dst || dst_size < need || ((uintptr_t) dst & 63) != 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: destination must be 64-byte aligned and hold %zu bytes (got %zu)",
                              fn, need, dst ? dst_size : (size_t) 0);
    }
    if (w->type == DSV4_TYPE_FP8_E4M3) {
        pack_fp8(w, (uint8_t *) dst);
    } else {
        pack_mxfp4(w, (uint8_t *) dst);
    }
    return DSV4_OK;
}

extern "C" bool dsv4_cpu_reads_packed(dsv4_type type) {
    if (type == DSV4_TYPE_MXFP4) {
        return isa_kernels(dsv4_cpu_best_isa())->mxfp4_packed != nullptr;
    }
    if (type == DSV4_TYPE_FP8_E4M3) {
        return dsv4_cpu_best_isa() == DSV4_ISA_AVX512 && cpu_has_avx512_bf16();
    }
    return false;
}

extern "C" bool dsv4_cpu_isa_supported(dsv4_isa isa) {
    switch (isa) {
        case DSV4_ISA_AUTO:
        case DSV4_ISA_SCALAR:
            return true;
#if defined(__x86_64__)
        case DSV4_ISA_AVX2:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
        case DSV4_ISA_AVX512:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
                   __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__)
        case DSV4_ISA_NEON:
            return true;  // Advanced SIMD is mandatory on AArch64
#endif
        default:
            return false;
    }
}

extern "C" dsv4_isa dsv4_cpu_best_isa(void) {
    if (dsv4_cpu_isa_supported(DSV4_ISA_AVX512)) {
        return DSV4_ISA_AVX512;
    }
    if (dsv4_cpu_isa_supported(DSV4_ISA_AVX2)) {
        return DSV4_ISA_AVX2;
    }
    if (dsv4_cpu_isa_supported(DSV4_ISA_NEON)) {
        return DSV4_ISA_NEON;
    }
    return DSV4_ISA_SCALAR;
}

extern "C" const char * dsv4_isa_name(dsv4_isa isa) {
    switch (isa) {
        case DSV4_ISA_AUTO:   return "auto";
        case DSV4_ISA_SCALAR: return "scalar";
        case DSV4_ISA_AVX2:   return "avx2";
        case DSV4_ISA_AVX512: return "avx512";
        case DSV4_ISA_NEON:   return "neon";
        default:              return "unknown";
    }
}

extern "C" dsv4_matmul_params dsv4_matmul_default_params(void) {
    dsv4_matmul_params p;
    p.pool = nullptr;
    p.isa = DSV4_ISA_AUTO;
    p.scratch = nullptr;
    p.scratch_size = 0;
    p.float_activations = false;
    return p;
}

// converted_x: room for the prepared activations (quantized or bf16-rounded rows). The public
// sizes pass true (an upper bound over float_activations: the float-activation kernels need the
// same per-thread tmp and no prepared rows), the calls their actual mode.
static size_t scratch_bytes(dsv4_type type, bool converted_x, int64_t n_in, int64_t n_x_rows, int64_t rows_per_call,
                            int n_threads) {
    const size_t xq = align64(act_row_bytes(type, converted_x, converted_x, n_in) * (size_t) n_x_rows);
    const size_t tmp = dsv4_mm_tmp_bytes(type, n_in, rows_per_call) * (size_t) (n_threads > 0 ? n_threads : 1);
    return xq + tmp + 64;  // + 64: room to align a caller's buffer
}

extern "C" size_t dsv4_matmul_scratch_size(const dsv4_weight * w, int64_t n_rows, int n_threads) {
    if (!w || n_rows < 0) {
        return 0;
    }
    return scratch_bytes(w->type, true, w->n_in, n_rows, n_rows, n_threads);
}

extern "C" size_t dsv4_matmul_moe_scratch_size(const dsv4_weight * w, int64_t n_x_rows, int64_t max_rows_per_expert,
                                               int n_threads) {
    if (!w || n_x_rows < 0 || max_rows_per_expert < 0) {
        return 0;
    }
    return scratch_bytes(w->type, true, w->n_in, n_x_rows, max_rows_per_expert, n_threads);
}

// The activation/output rows of one call (shared by dsv4_matmul and dsv4_matmul_moe): plain f32
// rows, plus, when the kernel is integer (qx), the activations quantized once into scratch at *p,
// or, when they are rounded to bf16 (rx), the rounded f32 rows there instead (*p advances past
// them). rows->n is left 0 for the caller to set.
static dsv4_status prepare_rows(const dsv4_mm_isa_kernels * kern, const dsv4_weight * w, dsv4_threadpool * pool,
                                bool qx, bool rx, const float * x, int64_t x_stride, int64_t n_x_rows, float * y,
                                int64_t y_stride, uint8_t ** p, dsv4_mm_rows * rows) {
    rows->n = 0;
    rows->x = x;
    rows->x_stride = x_stride;
    rows->xq = nullptr;
    rows->xq_stride = 0;
    rows->x_idx = nullptr;
    rows->y = y;
    rows->y_stride = y_stride;
    rows->y_idx = nullptr;
    if (!qx && !rx) {
        return DSV4_OK;
    }
    quantize_task q = { qx ? kern->quantize : (kern->round ? kern->round : round_row), qx, qx ? quantize_bias(w->type) : 0, x, x_stride, n_x_rows,
                        w->n_in, *p, act_row_bytes(w->type, qx, rx, w->n_in) };
    dsv4_status st = run_quantize(pool, &q);
    if (st != DSV4_OK) {
        return st;
    }
    if (qx) {
        rows->xq = *p;
        rows->xq_stride = (int64_t) q.xq_stride;
    } else {
        rows->x = (const float *) *p;
        rows->x_stride = (int64_t) (q.xq_stride / sizeof(float));
    }
    *p += align64(q.xq_stride * (size_t) n_x_rows);
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_matmul(const dsv4_matmul_params * params, const dsv4_weight * w, const float * x,
                                   int64_t x_stride, float * y, int64_t y_stride, int64_t n_rows) {
    static const char * fn = "dsv4_matmul";
    dsv4_status st = check_weight(w, fn);
    if (st != DSV4_OK) {
        return st;
    }
    if (n_rows < 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: n_rows %lld < 0", fn, (long long) n_rows);
    }
    if (n_rows == 0) {
        return DSV4_OK;
    }
    if (!x || !y) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: x and y must not be NULL", fn);
    }
    if (x_stride < w->n_in || y_stride < w->n_out) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: strides (x %lld, y %lld) below the row sizes (%lld, %lld)",
                              fn, (long long) x_stride, (long long) y_stride, (long long) w->n_in, (long long) w->n_out);
    }
    dsv4_isa isa = DSV4_ISA_SCALAR;
    if ((st = resolve_isa(params, &isa, fn)) != DSV4_OK) {
        return st;
    }
    const dsv4_mm_isa_kernels * kern = isa_kernels(isa);
    dsv4_threadpool * pool = params ? params->pool : nullptr;
    const int nth = dsv4_threadpool_n_threads(pool);

    const bool qx = call_quantizes_x(params, w->type);
    const bool rx = call_rounds_x(params, w->type);
    scratch_buf scratch;
    if ((st = get_scratch(params, scratch_bytes(w->type, qx || rx, w->n_in, n_rows, n_rows, nth) - 64, &scratch, fn)) !=
        DSV4_OK) {
        return st;
    }
    uint8_t * p = scratch.base;

    dense_task t;
    t.kernel = kernel_for(isa, kern, w->type, qx, rx, w->packed != nullptr);
    t.w = expert_view(w, 0);
    if ((st = prepare_rows(kern, w, pool, qx, rx, x, x_stride, n_rows, y, y_stride, &p, &t.rows)) != DSV4_OK) {
        return st;
    }
    t.rows.n = n_rows;
    t.tmp = p;
    t.tmp_stride = dsv4_mm_tmp_bytes(w->type, w->n_in, n_rows);

    if (pool && nth > 1 && w->n_out > k_unit_rows) {
        return dsv4_threadpool_run(pool, dense_fn, &t);
    } else {
        dense_fn(&t, 0, 1);
    }
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_matmul_moe(const dsv4_matmul_params * params, const dsv4_weight * w,
                                       const dsv4_moe_routes * routes, const float * x, int64_t x_stride,
                                       int64_t n_x_rows, float * y, int64_t y_stride, int64_t n_y_rows) {
    static const char * fn = "dsv4_matmul_moe";
    dsv4_status st = check_weight(w, fn);
    if (st != DSV4_OK) {
        return st;
    }
    if (!routes || routes->n_sel < 0 || (routes->n_sel > 0 && (!routes->expert || !routes->offset))) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: routes missing or malformed", fn);
    }
    if (routes->n_sel == 0) {
        return DSV4_OK;
    }
    if (n_x_rows < 0 || n_y_rows < 0 || !x || !y || x_stride < w->n_in || y_stride < w->n_out) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: bad activation/output buffers, row counts or strides", fn);
    }
    if (routes->offset[0] != 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: routes offset[0] must be 0", fn);
    }
    int64_t max_rows = 0;
    for (int32_t i = 0; i < routes->n_sel; i++) {
        const int32_t e = routes->expert[i];
        const int32_t n = routes->offset[i + 1] - routes->offset[i];
        if (e < 0 || e >= w->n_expert) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: routes expert[%d] = %d outside [0, %lld)", fn, i, e,
                                  (long long) w->n_expert);
        }
        if (n < 0) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: routes offsets decrease at %d", fn, i);
        }
        max_rows = n > max_rows ? n : max_rows;
    }
    const int32_t n_pairs = routes->offset[routes->n_sel];
    for (int32_t j = 0; j < n_pairs; j++) {
        const int64_t xr = routes->x_row ? routes->x_row[j] : j;
        const int64_t yr = routes->y_row ? routes->y_row[j] : j;
        if (xr < 0 || xr >= n_x_rows || yr < 0 || yr >= n_y_rows) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: pair %d maps x row %lld / y row %lld outside [0, %lld) / "
                                  "[0, %lld)", fn, j, (long long) xr, (long long) yr, (long long) n_x_rows,
                                  (long long) n_y_rows);
        }
    }
    dsv4_isa isa = DSV4_ISA_SCALAR;
    if ((st = resolve_isa(params, &isa, fn)) != DSV4_OK) {
        return st;
    }
    const dsv4_mm_isa_kernels * kern = isa_kernels(isa);
    dsv4_threadpool * pool = params ? params->pool : nullptr;
    const int nth = dsv4_threadpool_n_threads(pool);

    const bool qx = call_quantizes_x(params, w->type);
    const bool rx = call_rounds_x(params, w->type);
    scratch_buf scratch;
    const size_t need = scratch_bytes(w->type, qx || rx, w->n_in, n_x_rows, max_rows, nth) - 64;
    if ((st = get_scratch(params, need, &scratch, fn)) != DSV4_OK) {
        return st;
    }
    uint8_t * p = scratch.base;

    moe_task t;
    t.kernel = kernel_for(isa, kern, w->type, qx, rx, w->packed != nullptr);
    t.w = w;
    t.routes = routes;
    if ((st = prepare_rows(kern, w, pool, qx, rx, x, x_stride, n_x_rows, y, y_stride, &p, &t.rows)) != DSV4_OK) {
        return st;
    }
    t.tmp = p;
    t.tmp_stride = dsv4_mm_tmp_bytes(w->type, w->n_in, max_rows);

    if (pool && nth > 1) {
        return dsv4_threadpool_run(pool, moe_fn, &t);
    } else {
        moe_fn(&t, 0, 1);
    }
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_moe_group_by_expert(const int32_t * ids, int64_t n_tokens, int32_t k, int32_t n_expert,
                                                int32_t * expert, int32_t * offset, int32_t * x_row, int32_t * y_row,
                                                dsv4_moe_routes * routes) {
    static const char * fn = "dsv4_moe_group_by_expert";
    if (n_tokens < 0 || k < 0 || n_expert <= 0 || !expert || !offset || !routes ||
        (n_tokens * k > 0 && (!ids || !x_row || !y_row)) || n_tokens * (int64_t) k > INT32_MAX) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: invalid arguments", fn);
    }
    const int64_t n = n_tokens * k;
    // Counting sort by expert id: counts -> start offsets (over all experts), placement with
    // `expert` as the cursor array, then in-place compaction to the experts that have rows.
    for (int32_t e = 0; e <= n_expert; e++) {
        offset[e] = 0;
    }
    for (int64_t j = 0; j < n; j++) {
        if (ids[j] < 0 || ids[j] >= n_expert) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: expert id %d at %lld outside [0, %d)", fn, ids[j],
                                  (long long) j, n_expert);
        }
        offset[ids[j] + 1]++;
    }
    for (int32_t e = 0; e < n_expert; e++) {
        offset[e + 1] += offset[e];
        expert[e] = offset[e];
    }
    for (int64_t j = 0; j < n; j++) {
        const int32_t p = expert[ids[j]]++;
        x_row[p] = (int32_t) (j / k);
        y_row[p] = (int32_t) j;
    }
    int32_t n_sel = 0;
    for (int32_t e = 0; e < n_expert; e++) {
        if (offset[e + 1] > offset[e]) {  // writes below index e only, never over unread entries
            expert[n_sel] = e;
            offset[n_sel] = offset[e];
            n_sel++;
        }
    }
    offset[n_sel] = (int32_t) n;
    routes->n_sel = n_sel;
    routes->expert = expert;
    routes->offset = offset;
    routes->x_row = x_row;
    routes->y_row = y_row;
    return DSV4_OK;
}
