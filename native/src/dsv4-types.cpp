// The type traits table and the row codecs behind it. Formulas: formats.md; reference: quant/*.py.
#include "dsv4-types.h"

#include <cinttypes>
#include <cmath>
#include <cstring>

namespace {

// ---------------------------------------------------------------------------------------------
// Size arithmetic. Every count comes from a caller (ultimately a file header), so products are
// checked before they are used to size or index anything.

bool mul_i64(int64_t a, int64_t b, int64_t * out) {
    if (a < 0 || b < 0) {
        return false;
    }
    if (a != 0 && b > INT64_MAX / a) {
        return false;
    }
    *out = a * b;
    return true;
}

int64_t ceil_div(int64_t a, int64_t b) {
    return a / b + (a % b != 0);
}

// Unaligned loads: rows of 34- or 17-byte blocks put multi-byte fields at odd addresses.
uint16_t load_u16(const uint8_t * p) {
    uint16_t v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// ---------------------------------------------------------------------------------------------
// Row codecs of the traits table. n is a validated multiple of the block size.

void f32_to_float(const void * src, float * dst, int64_t n) {
    if (n > 0) {
        std::memcpy(dst, src, (size_t) n * sizeof(float));
    }
}

void f32_from_float(const float * src, void * dst, int64_t n) {
    if (n > 0) {
        std::memcpy(dst, src, (size_t) n * sizeof(float));
    }
}

void f16_to_float(const void * src, float * dst, int64_t n) {
    const uint8_t * s = (const uint8_t *) src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = dsv4_f16_to_f32(load_u16(s + 2 * i));
    }
}

void f16_from_float(const float * src, void * dst, int64_t n) {
    uint8_t * d = (uint8_t *) dst;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t h = dsv4_f32_to_f16(src[i]);
        std::memcpy(d + 2 * i, &h, sizeof(h));
    }
}

void bf16_to_float(const void * src, float * dst, int64_t n) {
    const uint8_t * s = (const uint8_t *) src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = dsv4_bf16_to_f32(load_u16(s + 2 * i));
    }
}

void bf16_from_float(const float * src, void * dst, int64_t n) {
    uint8_t * d = (uint8_t *) dst;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t h = dsv4_f32_to_bf16(src[i]);
        std::memcpy(d + 2 * i, &h, sizeof(h));
    }
}

// Q8_0 block: f16 d, then 32 int8; x = q * d.
void q8_0_to_float(const void * src, float * dst, int64_t n) {
    const uint8_t * s  = (const uint8_t *) src;
    const int64_t   nb = n / DSV4_QK8_0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t * blk = s + b * DSV4_Q8_0_BLOCK_BYTES;
        const float     d   = dsv4_f16_to_f32(load_u16(blk));
        for (int j = 0; j < DSV4_QK8_0; j++) {
            dst[b * DSV4_QK8_0 + j] = (float) (int8_t) blk[2 + j] * d;
        }
    }
}

// Bit-exact with ggml's quantize_row_q8_0_ref: amax via its MAX(a, b) macro, d = amax / 127 and
// id = 1 / d in float32, q = roundf(x * id) (half away from zero), d stored as f16.
void q8_0_from_float(const float * src, void * dst, int64_t n) {
    uint8_t *     out = (uint8_t *) dst;
    const int64_t nb  = n / DSV4_QK8_0;
    for (int64_t b = 0; b < nb; b++) {
        const float * x   = src + b * DSV4_QK8_0;
        uint8_t *     blk = out + b * DSV4_Q8_0_BLOCK_BYTES;
        float         amax = 0.0f;
        for (int j = 0; j < DSV4_QK8_0; j++) {
            const float v = std::fabs(x[j]);
            amax = amax > v ? amax : v;
        }
        const float    d   = amax / 127.0f;
        const float    id  = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t d16 = dsv4_f32_to_f16(d);
        std::memcpy(blk, &d16, sizeof(d16));
        for (int j = 0; j < DSV4_QK8_0; j++) {
            const float r = std::round(x[j] * id);
            // |x * id| <= 127 whenever id is finite. Non-finite products (NaN/inf inputs, or a
            // subnormal d whose inverse overflows) would make the int conversion undefined; 0 is
            // what x86's cvttss2si-then-truncate gives ggml there, and d16 is 0 in the latter case.
            const int8_t q = (r >= -127.0f && r <= 127.0f) ? (int8_t) r : (int8_t) 0;
            blk[2 + j] = (uint8_t) q;
        }
    }
}

// MXFP4 block as ggml decodes it: kvalues_mxfp4[code] * 2^(e-128); qs[j] holds element j (low
// nibble) and element j + 16 (high nibble).
void mxfp4_to_float(const void * src, float * dst, int64_t n) {
    const uint8_t * s  = (const uint8_t *) src;
    const int64_t   nb = n / DSV4_QK_MXFP4;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t * blk = s + b * DSV4_MXFP4_BLOCK_BYTES;
        const float     d   = dsv4_e8m0_to_f32_half(blk[0]);
        float *         y   = dst + b * DSV4_QK_MXFP4;
        for (int j = 0; j < DSV4_QK_MXFP4 / 2; j++) {
            const uint8_t q = blk[1 + j];
            y[j]      = (float) dsv4_mxfp4_kvalues[q & 0x0F] * d;
            y[j + 16] = (float) dsv4_mxfp4_kvalues[q >> 4] * d;
        }
    }
}

void i8_to_float(const void * src, float * dst, int64_t n) {
    const int8_t * s = (const int8_t *) src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = (float) s[i];
    }
}

void i32_to_float(const void * src, float * dst, int64_t n) {
    const uint8_t * s = (const uint8_t *) src;
    for (int64_t i = 0; i < n; i++) {
        int32_t v;
        std::memcpy(&v, s + 4 * i, sizeof(v));
        dst[i] = (float) v;
    }
}

// The unscaled e4m3 values; the 128 x 128 tile scale lives in a companion tensor.
void fp8_e4m3_to_float(const void * src, float * dst, int64_t n) {
    const uint8_t * s = (const uint8_t *) src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = dsv4_e4m3_to_f32(s[i]);
    }
}

// ---------------------------------------------------------------------------------------------

constexpr dsv4_type_traits k_type_traits[DSV4_TYPE_COUNT] = {
    //  type               name        gguf id                 block          bytes/block              quant  scale_block     to_float           from_float
    { DSV4_TYPE_F32,      "f32",      DSV4_GGUF_TYPE_F32,     1,             sizeof(float),           false, 0,              f32_to_float,      f32_from_float  },
    { DSV4_TYPE_F16,      "f16",      DSV4_GGUF_TYPE_F16,     1,             sizeof(uint16_t),        false, 0,              f16_to_float,      f16_from_float  },
    { DSV4_TYPE_BF16,     "bf16",     DSV4_GGUF_TYPE_BF16,    1,             sizeof(uint16_t),        false, 0,              bf16_to_float,     bf16_from_float },
    { DSV4_TYPE_Q8_0,     "q8_0",     DSV4_GGUF_TYPE_Q8_0,    DSV4_QK8_0,    DSV4_Q8_0_BLOCK_BYTES,   true,  0,              q8_0_to_float,     q8_0_from_float },
    { DSV4_TYPE_MXFP4,    "mxfp4",    DSV4_GGUF_TYPE_MXFP4,   DSV4_QK_MXFP4, DSV4_MXFP4_BLOCK_BYTES,  true,  0,              mxfp4_to_float,    nullptr         },
    { DSV4_TYPE_I8,       "i8",       DSV4_GGUF_TYPE_I8,      1,             sizeof(int8_t),          false, 0,              i8_to_float,       nullptr         },
    { DSV4_TYPE_I32,      "i32",      DSV4_GGUF_TYPE_I32,     1,             sizeof(int32_t),         false, 0,              i32_to_float,      nullptr         },
    { DSV4_TYPE_FP8_E4M3, "fp8_e4m3", DSV4_GGUF_TYPE_NONE,    1,             sizeof(uint8_t),         true,  DSV4_FP8_BLOCK, fp8_e4m3_to_float, nullptr         },
};

// The table is indexed by dsv4_type; a row out of place would silently decode with the wrong
// codec, so the order is checked when compiling.
constexpr bool type_traits_in_order() {
    for (int i = 0; i < DSV4_TYPE_COUNT; i++) {
        if (k_type_traits[i].type != i) {
            return false;
        }
    }
    return true;
}
static_assert(type_traits_in_order(), "k_type_traits rows must be in dsv4_type order");

static_assert(dsv4_e4m3_bits[0x7E] == 0x43E00000u, "e4m3 0x7E is 448");
static_assert(dsv4_e4m3_bits[0x01] == 0x3B000000u, "e4m3 0x01 is 2^-9");
static_assert(dsv4_e4m3_bits[0x80] == 0x80000000u, "e4m3 0x80 is -0");

bool valid_type(dsv4_type type) {
    return (int32_t) type >= 0 && (int32_t) type < DSV4_TYPE_COUNT;
}

}  // namespace

const dsv4_type_traits * dsv4_get_type_traits(dsv4_type type) {
    return valid_type(type) ? &k_type_traits[type] : nullptr;
}

dsv4_status dsv4_type_from_gguf(int32_t gguf_type, dsv4_type * out) {
    if (out == nullptr) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_type_from_gguf: out is NULL");
    }
    for (const dsv4_type_traits & t : k_type_traits) {
        if (t.gguf_type != DSV4_GGUF_TYPE_NONE && t.gguf_type == gguf_type) {
            *out = t.type;
            return DSV4_OK;
        }
    }
    return dsv4_set_error(DSV4_ERR_INVALID_ARG, "GGUF type id %" PRId32 " is not one dsv4 supports "
                          "(supported: f32=0, f16=1, q8_0=8, i8=24, i32=26, bf16=30, mxfp4=39)", gguf_type);
}

dsv4_status dsv4_type_from_name(const char * name, dsv4_type * out) {
    if (name == nullptr || out == nullptr) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_type_from_name: name or out is NULL");
    }
    for (const dsv4_type_traits & t : k_type_traits) {
        if (std::strcmp(t.name, name) == 0) {
            *out = t.type;
            return DSV4_OK;
        }
    }
    return dsv4_set_error(DSV4_ERR_INVALID_ARG, "unknown type name '%.64s' (known: f32, f16, bf16, q8_0, "
                          "mxfp4, i8, i32, fp8_e4m3)", name);
}

dsv4_status dsv4_type_row_size(dsv4_type type, int64_t n, size_t * out) {
    if (!valid_type(type)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "invalid dsv4_type %d", (int) type);
    }
    if (out == nullptr) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_type_row_size: out is NULL");
    }
    const dsv4_type_traits & t = k_type_traits[type];
    if (n < 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: negative element count %" PRId64, t.name, n);
    }
    if (n % t.block_size != 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: %" PRId64 " elements is not a multiple of the block size %" PRId64,
                              t.name, n, t.block_size);
    }
    int64_t bytes = 0;
    if (!mul_i64(n / t.block_size, (int64_t) t.type_size, &bytes) || (uint64_t) bytes > (uint64_t) SIZE_MAX) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: a row of %" PRId64 " elements overflows size_t", t.name, n);
    }
    *out = (size_t) bytes;
    return DSV4_OK;
}

dsv4_status dsv4_type_to_float(dsv4_type type, const void * src, size_t src_size, float * dst, int64_t n) {
    size_t row_size = 0;
    const dsv4_status st = dsv4_type_row_size(type, n, &row_size);
    if (st != DSV4_OK) {
        return st;
    }
    const dsv4_type_traits & t = k_type_traits[type];
    if (t.to_float == nullptr) {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: no decoder to float", t.name);
    }
    if (src_size != row_size) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: %" PRId64 " elements need %zu bytes, got %zu",
                              t.name, n, row_size, src_size);
    }
    if (n > 0 && (src == nullptr || dst == nullptr)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: NULL buffer", t.name);
    }
    t.to_float(src, dst, n);
    return DSV4_OK;
}

dsv4_status dsv4_type_from_float(dsv4_type type, const float * src, int64_t n, void * dst, size_t dst_size) {
    size_t row_size = 0;
    const dsv4_status st = dsv4_type_row_size(type, n, &row_size);
    if (st != DSV4_OK) {
        return st;
    }
    const dsv4_type_traits & t = k_type_traits[type];
    if (t.from_float == nullptr) {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: no encoder from float", t.name);
    }
    if (dst_size != row_size) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: %" PRId64 " elements need %zu bytes, got %zu",
                              t.name, n, row_size, dst_size);
    }
    if (n > 0 && (src == nullptr || dst == nullptr)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: NULL buffer", t.name);
    }
    t.from_float(src, dst, n);
    return DSV4_OK;
}

dsv4_status dsv4_ue8m0_to_float(const uint8_t * src, float * dst, int64_t n) {
    if (n < 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "ue8m0: negative element count %" PRId64, n);
    }
    if (n > 0 && (src == nullptr || dst == nullptr)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "ue8m0: NULL buffer");
    }
    for (int64_t i = 0; i < n; i++) {
        dst[i] = dsv4_ue8m0_to_f32(src[i]);
    }
    return DSV4_OK;
}

dsv4_status dsv4_e2m1_to_float(const uint8_t * codes, float * dst, int64_t n) {
    if (n < 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "e2m1: negative element count %" PRId64, n);
    }
    if (n > 0 && (codes == nullptr || dst == nullptr)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "e2m1: NULL buffer");
    }
    // Checked before writing anything, so a failed call leaves dst untouched.
    for (int64_t i = 0; i < n; i++) {
        if (codes[i] > 15) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "E2M1 code %u at index %" PRId64 " is not in 0..15",
                                  (unsigned) codes[i], i);
        }
    }
    for (int64_t i = 0; i < n; i++) {
        dst[i] = dsv4_e2m1_to_f32(codes[i]);
    }
    return DSV4_OK;
}

void dsv4_fp8_row_to_float(const uint8_t * src, const float * row_scales, float * dst, int64_t n) {
    for (int64_t j0 = 0, jb = 0; j0 < n; j0 += DSV4_FP8_BLOCK, jb++) {
        const float   s  = row_scales[jb];
        const int64_t j1 = n - j0 < DSV4_FP8_BLOCK ? n : j0 + DSV4_FP8_BLOCK;
        for (int64_t j = j0; j < j1; j++) {
            // e4m3 first, scale second: the same operand order as quant/fp8.py, which decides
            // which NaN comes out when both are NaN.
            dst[j] = dsv4_e4m3_to_f32(src[j]) * s;
        }
    }
}

dsv4_status dsv4_fp8_weight_to_float(const uint8_t * weight, size_t weight_size, int64_t rows, int64_t cols,
                                     const void * scale, dsv4_scale_kind scale_kind, size_t scale_count,
                                     float * dst, size_t dst_count) {
    int64_t n = 0;
    if (!mul_i64(rows, cols, &n)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "fp8 weight: bad shape [%" PRId64 ", %" PRId64 "]", rows, cols);
    }
    if (scale_kind != DSV4_SCALE_UE8M0 && scale_kind != DSV4_SCALE_F32) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "fp8 weight: invalid scale kind %d", (int) scale_kind);
    }
    const int64_t scale_rows = ceil_div(rows, DSV4_FP8_BLOCK);
    const int64_t scale_cols = ceil_div(cols, DSV4_FP8_BLOCK);
    if ((uint64_t) n != weight_size) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "fp8 weight: [%" PRId64 ", %" PRId64 "] needs %" PRId64
                              " bytes, got %zu", rows, cols, n, weight_size);
    }
    if ((uint64_t) (scale_rows * scale_cols) != scale_count) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "fp8 weight: [%" PRId64 ", %" PRId64 "] needs a scale grid "
                              "[%" PRId64 ", %" PRId64 "] = %" PRId64 " scales, got %zu",
                              rows, cols, scale_rows, scale_cols, scale_rows * scale_cols, scale_count);
    }
    if ((uint64_t) n != dst_count) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "fp8 weight: output holds %zu floats, need %" PRId64, dst_count, n);
    }
    if (n > 0 && (weight == nullptr || scale == nullptr || dst == nullptr)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "fp8 weight: NULL buffer");
    }
    const uint8_t * s8 = (const uint8_t *) scale;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t   srow = (i / DSV4_FP8_BLOCK) * scale_cols;
        const uint8_t * w    = weight + i * cols;
        float *         y    = dst + i * cols;
        for (int64_t jb = 0; jb < scale_cols; jb++) {
            float s;
            if (scale_kind == DSV4_SCALE_F32) {
                std::memcpy(&s, s8 + (size_t) (srow + jb) * sizeof(float), sizeof(s));
            } else {
                s = dsv4_ue8m0_to_f32(s8[srow + jb]);
            }
            const int64_t j0 = jb * DSV4_FP8_BLOCK;
            const int64_t j1 = cols - j0 < DSV4_FP8_BLOCK ? cols : j0 + DSV4_FP8_BLOCK;
            for (int64_t j = j0; j < j1; j++) {
                y[j] = dsv4_e4m3_to_f32(w[j]) * s;
            }
        }
    }
    return DSV4_OK;
}

namespace {

// Shared checks of the two FP4 entry points: packed [rows, cols/2], scale [rows, cols/32].
dsv4_status check_fp4(const char * what, const uint8_t * packed, size_t packed_size, const uint8_t * scale,
                      size_t scale_size, int64_t rows, int64_t cols, int64_t * n_out) {
    int64_t n = 0;
    if (!mul_i64(rows, cols, &n)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: bad shape [%" PRId64 ", %" PRId64 "]", what, rows, cols);
    }
    if (cols % DSV4_FP4_BLOCK != 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: %" PRId64 " columns is not a multiple of %d",
                              what, cols, DSV4_FP4_BLOCK);
    }
    if ((uint64_t) (n / 2) != packed_size) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: [%" PRId64 ", %" PRId64 "] needs %" PRId64
                              " packed bytes, got %zu", what, rows, cols, n / 2, packed_size);
    }
    if ((uint64_t) (n / DSV4_FP4_BLOCK) != scale_size) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: [%" PRId64 ", %" PRId64 "] needs %" PRId64
                              " scale bytes, got %zu", what, rows, cols, n / DSV4_FP4_BLOCK, scale_size);
    }
    if (n > 0 && (packed == nullptr || scale == nullptr)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: NULL buffer", what);
    }
    *n_out = n;
    return DSV4_OK;
}

}  // namespace

dsv4_status dsv4_fp4_weight_to_float(const uint8_t * packed, size_t packed_size,
                                     const uint8_t * scale, size_t scale_size,
                                     int64_t rows, int64_t cols, float * dst, size_t dst_count) {
    int64_t           n  = 0;
    const dsv4_status st = check_fp4("fp4 weight", packed, packed_size, scale, scale_size, rows, cols, &n);
    if (st != DSV4_OK) {
        return st;
    }
    if ((uint64_t) n != dst_count || (n > 0 && dst == nullptr)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "fp4 weight: output holds %zu floats, need %" PRId64, dst_count, n);
    }
    // Block by block over the flat array: each row is a whole number of 32-element blocks, so
    // block b of the flat array is block b % (cols/32) of row b / (cols/32), with scale[b].
    const int64_t nb = n / DSV4_FP4_BLOCK;
    for (int64_t b = 0; b < nb; b++) {
        const float     s = dsv4_ue8m0_to_f32(scale[b]);
        const uint8_t * p = packed + b * (DSV4_FP4_BLOCK / 2);
        float *         y = dst + b * DSV4_FP4_BLOCK;
        for (int t = 0; t < DSV4_FP4_BLOCK / 2; t++) {
            y[2 * t]     = dsv4_e2m1_to_f32(p[t] & 0x0F) * s;
            y[2 * t + 1] = dsv4_e2m1_to_f32(p[t] >> 4) * s;
        }
    }
    return DSV4_OK;
}

dsv4_status dsv4_fp4_to_mxfp4(const uint8_t * packed, size_t packed_size,
                              const uint8_t * scale, size_t scale_size,
                              int64_t rows, int64_t cols, uint8_t * dst, size_t dst_size) {
    int64_t           n  = 0;
    const dsv4_status st = check_fp4("fp4->mxfp4", packed, packed_size, scale, scale_size, rows, cols, &n);
    if (st != DSV4_OK) {
        return st;
    }
    const int64_t nb = n / DSV4_FP4_BLOCK;
    if ((uint64_t) (nb * DSV4_MXFP4_BLOCK_BYTES) != dst_size || (n > 0 && dst == nullptr)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "fp4->mxfp4: output holds %zu bytes, need %" PRId64,
                              dst_size, nb * DSV4_MXFP4_BLOCK_BYTES);
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t * p = packed + b * (DSV4_FP4_BLOCK / 2);
        uint8_t *       q = dst + b * DSV4_MXFP4_BLOCK_BYTES;
        // Code of element k of the block: byte k/2, low nibble when k is even.
        uint8_t codes[DSV4_FP4_BLOCK];
        for (int t = 0; t < DSV4_FP4_BLOCK / 2; t++) {
            codes[2 * t]     = p[t] & 0x0F;
            codes[2 * t + 1] = p[t] >> 4;
        }
        q[0] = scale[b];
        for (int j = 0; j < DSV4_FP4_BLOCK / 2; j++) {
            q[1 + j] = (uint8_t) (codes[j] | (codes[j + 16] << 4));
        }
    }
    return DSV4_OK;
}
