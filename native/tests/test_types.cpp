// Unit tests of the type traits table and the scalar/row codecs (dsv4-types.*). The exhaustive,
// bit-for-bit comparisons against numpy, ml_dtypes and gguf-py are in tests/test_quant.py; this
// checks known values from formats.md and that bad sizes come back as errors, so it is useful
// under ASan/UBSan where the Python tests are not run.
#include "dsv4-types.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

static int g_failures = 0;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            g_failures++;                                                      \
        }                                                                      \
    } while (0)

// An expected error: the status and a non-empty message naming what was wrong.
#define CHECK_ERR(expr, needle)                                                \
    do {                                                                       \
        dsv4_clear_error();                                                    \
        const dsv4_status st_ = (expr);                                        \
        if (st_ == DSV4_OK || std::strstr(dsv4_last_error(), (needle)) == nullptr) { \
            std::fprintf(stderr, "%s:%d: expected an error mentioning '%s' from %s, got status %d '%s'\n", \
                         __FILE__, __LINE__, (needle), #expr, (int) st_, dsv4_last_error()); \
            g_failures++;                                                      \
        }                                                                      \
    } while (0)

static uint32_t bits(float f) {
    return dsv4_f32_to_bits(f);
}

static void test_traits_table() {
    for (int i = 0; i < DSV4_TYPE_COUNT; i++) {
        const dsv4_type_traits * t = dsv4_get_type_traits((dsv4_type) i);
        CHECK(t != nullptr);
        CHECK(t->type == i);
        CHECK(t->block_size > 0 && t->type_size > 0);
        CHECK(t->to_float != nullptr);
        dsv4_type by_name = DSV4_TYPE_COUNT;
        CHECK(dsv4_type_from_name(t->name, &by_name) == DSV4_OK && by_name == i);
        if (t->gguf_type != DSV4_GGUF_TYPE_NONE) {
            dsv4_type by_id = DSV4_TYPE_COUNT;
            CHECK(dsv4_type_from_gguf(t->gguf_type, &by_id) == DSV4_OK && by_id == i);
        }
    }
    CHECK(dsv4_get_type_traits(DSV4_TYPE_COUNT) == nullptr);
    CHECK(dsv4_get_type_traits((dsv4_type) -1) == nullptr);
    CHECK(dsv4_get_type_traits(DSV4_TYPE_Q8_0)->gguf_type == 8);
    CHECK(dsv4_get_type_traits(DSV4_TYPE_MXFP4)->gguf_type == 39);
    CHECK(dsv4_get_type_traits(DSV4_TYPE_BF16)->gguf_type == 30);
    CHECK(dsv4_get_type_traits(DSV4_TYPE_Q8_0)->type_size == 34);
    CHECK(dsv4_get_type_traits(DSV4_TYPE_MXFP4)->type_size == 17);
    CHECK(dsv4_get_type_traits(DSV4_TYPE_FP8_E4M3)->scale_block == 128);

    dsv4_type t;
    CHECK_ERR(dsv4_type_from_gguf(2, &t), "GGUF type id 2");  // Q4_0: not ours
    CHECK_ERR(dsv4_type_from_name("q4_0", &t), "q4_0");
    CHECK_ERR(dsv4_type_from_name(nullptr, &t), "NULL");

    size_t size = 0;
    CHECK(dsv4_type_row_size(DSV4_TYPE_Q8_0, 64, &size) == DSV4_OK && size == 68);
    CHECK(dsv4_type_row_size(DSV4_TYPE_MXFP4, 0, &size) == DSV4_OK && size == 0);
    CHECK_ERR(dsv4_type_row_size(DSV4_TYPE_Q8_0, 33, &size), "block size 32");
    CHECK_ERR(dsv4_type_row_size(DSV4_TYPE_F32, -1, &size), "negative");
    CHECK_ERR(dsv4_type_row_size(DSV4_TYPE_F32, INT64_MAX, &size), "overflows");
    CHECK_ERR(dsv4_type_row_size((dsv4_type) 99, 32, &size), "invalid dsv4_type");
}

static void test_scalars() {
    CHECK(dsv4_e4m3_to_f32(0x7E) == 448.0f);
    CHECK(dsv4_e4m3_to_f32(0xFE) == -448.0f);
    CHECK(dsv4_e4m3_to_f32(0x38) == 1.0f);
    CHECK(dsv4_e4m3_to_f32(0x01) == std::ldexp(1.0f, -9));   // smallest subnormal
    CHECK(dsv4_e4m3_to_f32(0x07) == 7.0f * std::ldexp(1.0f, -9));
    CHECK(dsv4_e4m3_to_f32(0x08) == std::ldexp(1.0f, -6));   // smallest normal
    CHECK(bits(dsv4_e4m3_to_f32(0x80)) == 0x80000000u);       // -0
    CHECK(std::isnan(dsv4_e4m3_to_f32(0x7F)) && std::isnan(dsv4_e4m3_to_f32(0xFF)));

    CHECK(dsv4_ue8m0_to_f32(127) == 1.0f);
    CHECK(dsv4_ue8m0_to_f32(254) == std::ldexp(1.0f, 127));
    CHECK(dsv4_ue8m0_to_f32(0) == std::ldexp(1.0f, -127));
    CHECK(bits(dsv4_ue8m0_to_f32(0)) == 0x00400000u);
    CHECK(std::isnan(dsv4_ue8m0_to_f32(255)));

    CHECK(dsv4_e8m0_to_f32_half(128) == 1.0f);
    CHECK(dsv4_e8m0_to_f32_half(0) == std::ldexp(1.0f, -128));
    CHECK(dsv4_e8m0_to_f32_half(1) == std::ldexp(1.0f, -127));
    CHECK(dsv4_e8m0_to_f32_half(255) == std::ldexp(1.0f, 127));

    CHECK(dsv4_e2m1_to_f32(7) == 6.0f && dsv4_e2m1_to_f32(9) == -0.5f);
    CHECK(bits(dsv4_e2m1_to_f32(8)) == 0x80000000u);

    CHECK(dsv4_bf16_to_f32(0x3F80) == 1.0f);
    CHECK(dsv4_f32_to_bf16(1.0f) == 0x3F80);
    CHECK(dsv4_f32_to_bf16(dsv4_f32_from_bits(0x3F808000u)) == 0x3F80);  // tie -> even
    CHECK(dsv4_f32_to_bf16(dsv4_f32_from_bits(0x3F818000u)) == 0x3F82);  // tie -> even (up)
    CHECK(dsv4_f32_to_bf16(dsv4_f32_from_bits(0x7F7FFFFFu)) == 0x7F80);  // max float -> inf
    CHECK(dsv4_f32_to_bf16(dsv4_f32_from_bits(0x7F800001u)) == 0x7FC0);  // sNaN -> quiet NaN

    CHECK(dsv4_f16_to_f32(0x3C00) == 1.0f);
    CHECK(dsv4_f16_to_f32(0x0001) == std::ldexp(1.0f, -24));
    CHECK(dsv4_f16_to_f32(0x7BFF) == 65504.0f);
    CHECK(std::isinf(dsv4_f16_to_f32(0xFC00)) && dsv4_f16_to_f32(0xFC00) < 0);
    CHECK(dsv4_f32_to_f16(65504.0f) == 0x7BFF);
    CHECK(dsv4_f32_to_f16(65519.996f) == 0x7BFF);
    CHECK(dsv4_f32_to_f16(65520.0f) == 0x7C00);
    CHECK(dsv4_f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000);                       // tie -> even 0
    CHECK(dsv4_f32_to_f16(dsv4_f32_from_bits(0x33000001u)) == 0x0001);
    CHECK(dsv4_f32_to_f16(std::ldexp(3.0f, -25)) == 0x0002);                       // 1.5 ulp -> 2
    CHECK(dsv4_f32_to_f16(-0.0f) == 0x8000);
    CHECK((dsv4_f32_to_f16(dsv4_f32_from_bits(0x7F800001u)) & 0x7E00u) == 0x7E00u); // NaN stays NaN
    // Every f16 survives the round trip through f32 (NaNs included, payload kept).
    for (uint32_t h = 0; h < 0x10000u; h++) {
        const uint16_t back = dsv4_f32_to_f16(dsv4_f16_to_f32((uint16_t) h));
        const bool     nan  = (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0;
        CHECK(nan ? back == (h | 0x200u) : back == h);
    }
}

static void test_q8_0() {
    std::vector<float> x(64);
    for (int i = 0; i < 64; i++) {
        x[i] = (float) (i - 20) * 0.25f;
    }
    x[5] = 127.0f;            // block 0: d = 1, so q = round(x) exactly
    x[6] = 2.5f;              // half away from zero
    x[7] = -2.5f;
    x[8] = 0.49999997f;       // just below a half: roundf gives 0, floor(x + 0.5) would give 1
    std::vector<uint8_t> q(68);
    CHECK(dsv4_type_from_float(DSV4_TYPE_Q8_0, x.data(), 64, q.data(), q.size()) == DSV4_OK);
    CHECK(q[0] == 0x00 && q[1] == 0x3C);                   // d = 1.0 as f16
    CHECK((int8_t) q[2 + 5] == 127);
    CHECK((int8_t) q[2 + 6] == 3 && (int8_t) q[2 + 7] == -3);
    CHECK((int8_t) q[2 + 8] == 0);
    std::vector<float> y(64);
    CHECK(dsv4_type_to_float(DSV4_TYPE_Q8_0, q.data(), q.size(), y.data(), 64) == DSV4_OK);
    CHECK(y[5] == 127.0f && y[6] == 3.0f && y[0] == -5.0f);
    // Block 1 holds (i - 20) / 4 for i in 32..63: amax 10.75; every value within d/2 after decode.
    for (int i = 32; i < 64; i++) {
        CHECK(std::fabs(y[i] - x[i]) <= 10.75f / 127.0f * 0.51f);
    }

    std::vector<float> zeros(32, 0.0f);
    CHECK(dsv4_type_from_float(DSV4_TYPE_Q8_0, zeros.data(), 32, q.data(), 34) == DSV4_OK);
    for (int j = 0; j < 34; j++) {
        CHECK(q[j] == 0);
    }

    CHECK_ERR(dsv4_type_from_float(DSV4_TYPE_Q8_0, x.data(), 33, q.data(), q.size()), "block size");
    CHECK_ERR(dsv4_type_from_float(DSV4_TYPE_Q8_0, x.data(), 64, q.data(), 67), "need 68 bytes");
    CHECK_ERR(dsv4_type_to_float(DSV4_TYPE_Q8_0, q.data(), 35, y.data(), 32), "need 34 bytes");
    CHECK_ERR(dsv4_type_from_float(DSV4_TYPE_MXFP4, x.data(), 32, q.data(), 17), "no encoder");
    CHECK_ERR(dsv4_type_to_float(DSV4_TYPE_F32, nullptr, 4, y.data(), 1), "NULL");
}

static void test_mxfp4_and_fp4() {
    // One MXFP4 block with e = 128: d = 2^(128-128) = 1, so each value is its doubled kvalue.
    uint8_t blk[17] = {128};
    for (int j = 0; j < 16; j++) {
        blk[1 + j] = (uint8_t) (j | ((15 - j) << 4));
    }
    float y[32];
    CHECK(dsv4_type_to_float(DSV4_TYPE_MXFP4, blk, 17, y, 32) == DSV4_OK);
    for (int j = 0; j < 16; j++) {
        CHECK(y[j] == (float) dsv4_mxfp4_kvalues[j]);
        CHECK(y[j + 16] == (float) dsv4_mxfp4_kvalues[15 - j]);
    }
    blk[0] = 0;  // 2^-128, a float32 subnormal: 12 * 2^-128 = 3 * 2^-126 exactly
    blk[1] = 7;
    CHECK(dsv4_type_to_float(DSV4_TYPE_MXFP4, blk, 17, y, 32) == DSV4_OK);
    CHECK(y[0] == std::ldexp(3.0f, -126));

    // FP4 weight [2, 32]: row r, element k has code (k + r) % 16, scale bytes 127 and 128.
    const int64_t rows = 2, cols = 32;
    uint8_t packed[32], scale[2] = {127, 128};
    for (int r = 0; r < rows; r++) {
        for (int t = 0; t < 16; t++) {
            const int lo = (2 * t + r) % 16, hi = (2 * t + 1 + r) % 16;
            packed[r * 16 + t] = (uint8_t) (lo | (hi << 4));
        }
    }
    float w[64];
    CHECK(dsv4_fp4_weight_to_float(packed, 32, scale, 2, rows, cols, w, 64) == DSV4_OK);
    for (int r = 0; r < rows; r++) {
        for (int k = 0; k < 32; k++) {
            CHECK(w[r * 32 + k] == dsv4_e2m1_values[(k + r) % 16] * (r == 0 ? 1.0f : 2.0f));
        }
    }
    uint8_t mx[34];
    CHECK(dsv4_fp4_to_mxfp4(packed, 32, scale, 2, rows, cols, mx, 34) == DSV4_OK);
    CHECK(mx[0] == 127 && mx[17] == 128);
    float back[64];
    CHECK(dsv4_type_to_float(DSV4_TYPE_MXFP4, mx, 34, back, 64) == DSV4_OK);
    for (int i = 0; i < 64; i++) {
        CHECK(back[i] == w[i]);  // == on values: MXFP4 has +0 where the checkpoint's code 8 is -0
    }

    CHECK_ERR(dsv4_fp4_weight_to_float(packed, 32, scale, 2, rows, 48, w, 64), "multiple of 32");
    CHECK_ERR(dsv4_fp4_weight_to_float(packed, 31, scale, 2, rows, cols, w, 64), "packed bytes");
    CHECK_ERR(dsv4_fp4_weight_to_float(packed, 32, scale, 1, rows, cols, w, 64), "scale bytes");
    CHECK_ERR(dsv4_fp4_weight_to_float(packed, 32, scale, 2, rows, cols, w, 63), "output");
    CHECK_ERR(dsv4_fp4_to_mxfp4(packed, 32, scale, 2, rows, cols, mx, 33), "output");
    CHECK_ERR(dsv4_fp4_to_mxfp4(packed, 32, scale, 2, -1, cols, mx, 34), "bad shape");

    const uint8_t codes[3] = {0, 15, 16};
    CHECK(dsv4_e2m1_to_float(codes, y, 2) == DSV4_OK && y[1] == -6.0f);
    CHECK_ERR(dsv4_e2m1_to_float(codes, y, 3), "index 2");
}

static void test_fp8_weight() {
    // [130, 129]: partial last block on both axes, scale grid [2, 2].
    const int64_t        rows = 130, cols = 129;
    std::vector<uint8_t> wt((size_t) (rows * cols));
    for (size_t i = 0; i < wt.size(); i++) {
        wt[i] = (uint8_t) ((i * 37) & 0x7E);  // finite, non-negative codes
    }
    const uint8_t        s8[4]  = {127, 128, 126, 130};
    const float          s32[4] = {1.0f, 2.0f, 0.5f, 8.0f};
    std::vector<float>   a((size_t) (rows * cols)), b((size_t) (rows * cols));
    CHECK(dsv4_fp8_weight_to_float(wt.data(), wt.size(), rows, cols, s8, DSV4_SCALE_UE8M0, 4, a.data(), a.size()) == DSV4_OK);
    CHECK(dsv4_fp8_weight_to_float(wt.data(), wt.size(), rows, cols, s32, DSV4_SCALE_F32, 4, b.data(), b.size()) == DSV4_OK);
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            const float want = dsv4_e4m3_to_f32(wt[(size_t) (i * cols + j)]) * s32[(i / 128) * 2 + j / 128];
            CHECK(a[(size_t) (i * cols + j)] == want);
            CHECK(b[(size_t) (i * cols + j)] == want);
        }
    }
    // The row-level helper with that row's decoded scales gives the same row.
    std::vector<float> row((size_t) cols);
    dsv4_fp8_row_to_float(wt.data() + 129 * cols, s32 + 2, row.data(), cols);
    CHECK(std::memcmp(row.data(), a.data() + 129 * cols, (size_t) cols * sizeof(float)) == 0);

    CHECK_ERR(dsv4_fp8_weight_to_float(wt.data(), wt.size(), rows, cols, s8, DSV4_SCALE_UE8M0, 3, a.data(), a.size()),
              "scale grid [2, 2]");
    CHECK_ERR(dsv4_fp8_weight_to_float(wt.data(), wt.size() - 1, rows, cols, s8, DSV4_SCALE_UE8M0, 4, a.data(), a.size()),
              "bytes");
    CHECK_ERR(dsv4_fp8_weight_to_float(wt.data(), wt.size(), rows, cols, s8, DSV4_SCALE_UE8M0, 4, a.data(), 5), "output");
    CHECK_ERR(dsv4_fp8_weight_to_float(wt.data(), wt.size(), rows, cols, s8, (dsv4_scale_kind) 7, 4, a.data(), a.size()),
              "scale kind");
    CHECK_ERR(dsv4_fp8_weight_to_float(wt.data(), wt.size(), INT64_MAX, 2, s8, DSV4_SCALE_UE8M0, 4, a.data(), a.size()),
              "bad shape");
    // Empty weights are valid and touch nothing.
    CHECK(dsv4_fp8_weight_to_float(nullptr, 0, 0, 5, nullptr, DSV4_SCALE_F32, 0, nullptr, 0) == DSV4_OK);
}

int main() {
    test_traits_table();
    test_scalars();
    test_q8_0();
    test_mxfp4_and_fp4();
    test_fp8_weight();
    if (g_failures != 0) {
        std::fprintf(stderr, "test_types: %d check(s) failed\n", g_failures);
        return 1;
    }
    std::printf("test_types: all checks passed\n");
    return 0;
}
