// CPU matmul: y[r, o] = sum_k W[o, k] * x[r, k] for R activation rows against one weight matrix.
//
// Weight-stationary: each weight block is read from memory once per call and applied to all R
// rows (decode R = 1, draft block 5, verification 6, prefill chunks 32-64), so a memory-bound
// call with R = 6 costs little more than R = 1. Threads split output rows (contiguous, 16-row
// aligned ranges, so threads stream disjoint weights and never share an output cache line).
//
// Types, with how each is computed:
//   F32, F16: weights decoded to f32 and multiplied with the f32 activations (FMA); SIMD matches
//     the scalar reference to within float rounding.
//   BF16, FP8_E4M3 (e4m3 bytes + F32 128x128 block scales): by default the activations are first
//     rounded to bf16 (nearest-even, once per call), then multiplied with the exactly decoded
//     weights with f32 accumulation: on CPUs with AVX512_BF16 (+ VBMI) by vdpbf16ps (twice the
//     multiply-adds of an f32 FMA; FP8 -> bf16 by byte look-ups), elsewhere by the f32 kernels on
//     the rounded rows. With params.float_activations the f32 activations are used unrounded.
//   Q8_0, MXFP4: activations are quantized once per call to 8-bit blocks of 32 (f32 scale per
//     block, round-to-nearest-even), then integer dot products per block scaled by d_w * d_x.
//     SIMD matches the scalar reference on the same quantized activations to within float
//     rounding of the block sums (the integer sums are exact). The quantization costs ~1% of
//     the product per matmul; with params.float_activations the weights are instead decoded to
//     f32 (exactly) and multiplied with the f32 activations like the float types, which matches an
//     exact product to within float rounding (the mode for checking against a reference).
//
// Every kernel has a scalar reference (DSV4_ISA_SCALAR, any CPU); AVX2 (+FMA, F16C) and AVX-512
// (F, BW, VL, VNNI) variants live in their own translation units and are chosen at run time; on
// AArch64 a baseline NEON variant is always used.
#pragma once

#include "dsv4-types.h"
#include "cpu/dsv4-threadpool.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Instruction-set levels. AUTO picks the best one this CPU supports.
enum dsv4_isa : int32_t {
    DSV4_ISA_AUTO   = 0,
    DSV4_ISA_SCALAR = 1,  // portable C++, the reference
    DSV4_ISA_AVX2   = 2,  // x86-64: AVX2 + FMA + F16C
    DSV4_ISA_AVX512 = 3,  // x86-64: AVX-512 F + BW + VL + VNNI (and the AVX2 set)
    DSV4_ISA_NEON   = 4,  // AArch64: baseline Advanced SIMD (always present there)
};

// One weight matrix [n_out, n_in] (or, with n_expert > 1, a stack of experts [n_expert, n_out,
// n_in], each laid out like a single matrix). The memory is borrowed, typically from the GGUF
// mapping; it must stay valid during the call.
struct dsv4_weight {
    dsv4_type     type;          // F32, F16, BF16, Q8_0, MXFP4 or FP8_E4M3
    int64_t       n_out;         // output rows
    int64_t       n_in;          // input features (a multiple of 32 for Q8_0 / MXFP4)
    const void *  data;          // row o of expert e at data + e * expert_stride + o * row_bytes
    size_t        row_bytes;     // >= dsv4_weight_row_bytes(type, n_in)
    const float * scale;         // FP8_E4M3 only: [ceil(n_out/128), ceil(n_in/128)] F32, per expert
    int64_t       n_expert;      // 1 for a plain matrix
    size_t        expert_stride; // bytes between experts (>= n_out * row_bytes)
    size_t        scale_expert_stride;  // FP8 with experts: floats between experts' scale tables
    const void *  packed;        // MXFP4 / FP8_E4M3: the same matrix in the interleaved layout of
                                 // dsv4_weight_pack, or NULL. Read by the kernels made for it
                                 // (AVX2 / AVX-512 with 8-bit activations for MXFP4, AVX512_BF16 with
                                 // bf16 activations for FP8); every other path keeps reading data.
    size_t        packed_expert_stride;  // bytes between experts in `packed`
};

// Bytes of one packed row of n_in elements, or 0 when the type is unknown or n_in does not fit
// its block size.
size_t dsv4_weight_row_bytes(dsv4_type type, int64_t n_in);

// Fills *w for a packed matrix (n_expert = 1, packed row and scale strides).
void dsv4_weight_init(struct dsv4_weight * w, dsv4_type type, int64_t n_out, int64_t n_in,
                      const void * data, const float * scale);

// Same for a packed expert stack [n_expert, n_out, n_in].
void dsv4_weight_init_experts(struct dsv4_weight * w, dsv4_type type, int64_t n_expert, int64_t n_out,
                              int64_t n_in, const void * data, const float * scale);

// MXFP4 packed for the AVX-512 (and AVX2) kernels. Per expert, per group of 16 output rows (the last
// group zero-padded), per super-block of 4 column blocks of 32 (the last one may hold fewer):
// 64 bytes of block scales (block j's 16 scale bytes, rows 0-15, at 16 j; zero where no block),
// then per block 4 chunks of 64 bytes; byte 4i + t of chunk c holds row i's codes of block
// columns 8c + t (low nibble) and 8c + 4 + t (high nibble). A chunk decodes (two nibble look-ups)
// into two vectors whose 32-bit lane i holds 4 consecutive weights of row i, which vpdpbusd
// multiplies with 4 activation bytes broadcast to every lane: 16 output rows per instruction, no
// horizontal sums, every load 64-byte aligned. The file's codes and scales, rearranged (no
// requantization).
#define DSV4_MXFP4_PACK_ROWS 16

// FP8_E4M3 packed for the AVX512_BF16 kernels: per expert, per group of 4 output rows (the last
// group zero-padded), per 64-column chunk c (the last one zero-padded): row i's 64 bytes at
// 256 c + 64 i. The 4 rows a decode tile reads are then one contiguous stream instead of 4 (the
// hardware prefetchers follow one stream far better). Within a chunk, byte 16 L + j holds column
// dsv4_fp8_packed_column(16 L + j): 8 L + j for j < 8 and 32 + 8 L + j - 8 for j >= 8 (L < 4), the
// order in which the in-lane byte interleaves (vpunpcklbw / vpunpckhbw) of the decoded low and
// high bytes give the bf16 words of columns 0-31 and 32-63: two cheap shuffles where a
// column-ordered chunk needs two cross-lane vpermt2b. The bytes and the arithmetic are the same,
// so results are bit-identical. The 128x128 scales stay in `scale`.
#define DSV4_FP8_PACK_ROWS 4

// The column stored at byte b (0..63) of a packed FP8 chunk.
static inline int dsv4_fp8_packed_column(int b) {
    const int lane = b / 16, j = b % 16;
    return j < 8 ? 8 * lane + j : 32 + 8 * lane + (j - 8);
}

// Bytes of one packed FP8 group (4 rows, columns padded to a multiple of 64).
static inline size_t dsv4_fp8_packed_group_bytes(int64_t n_in) {
    return (size_t) DSV4_FP8_PACK_ROWS * (size_t) ((n_in + 63) / 64 * 64);
}

// Bytes dsv4_weight_pack needs for w (all experts), or 0 when w has no packed layout.
size_t dsv4_weight_packed_bytes(const struct dsv4_weight * w);

// Writes w's matrix (every expert) in the packed layout into dst (64-byte aligned, dst_size >=
// dsv4_weight_packed_bytes(w)) and points w->packed at it. dst must outlive every use of w.
dsv4_status dsv4_weight_pack(struct dsv4_weight * w, void * dst, size_t dst_size);

// Whether this CPU has a kernel that reads packed weights of this type (so packing is worth its
// memory): MXFP4 with AVX2 or AVX-512 VNNI, FP8_E4M3 with AVX512_BF16 + VBMI.
bool dsv4_cpu_reads_packed(dsv4_type type);

// The best ISA this CPU supports, and whether a given one is usable here.
enum dsv4_isa dsv4_cpu_best_isa(void);
bool          dsv4_cpu_isa_supported(enum dsv4_isa isa);
const char *  dsv4_isa_name(enum dsv4_isa isa);

struct dsv4_matmul_params {
    struct dsv4_threadpool * pool;  // NULL: run on the calling thread
    enum dsv4_isa isa;              // AUTO, or a specific level (tests, benchmarks)
    void *   scratch;               // NULL: allocated per call (tests); the context passes its own
    size_t   scratch_size;          // >= dsv4_matmul_scratch_size(...) when scratch is given
    bool     float_activations;     // false (default): Q8_0 / MXFP4 quantize the activations to
                                    // 8-bit blocks (integer dots), BF16 / FP8 round them to bf16
                                    // (bf16 dots where the CPU has them), the fastest paths; true:
                                    // the f32 activations as given, weights decoded to f32, FMA
                                    // (exact to float rounding). F32 / F16 ignore it.
};

struct dsv4_matmul_params dsv4_matmul_default_params(void);

// Scratch bytes a call needs (an upper bound over ISAs and both float_activations settings), for
// n_rows activation rows and a pool of n_threads.
size_t dsv4_matmul_scratch_size(const struct dsv4_weight * w, int64_t n_rows, int n_threads);

// y[r * y_stride + o] = sum_k W[o, k] * x[r * x_stride + k], r < n_rows, o < n_out.
// x is F32 with x_stride >= n_in; y is F32 with y_stride >= n_out. y must not overlap x.
dsv4_status dsv4_matmul(const struct dsv4_matmul_params * params, const struct dsv4_weight * w,
                        const float * x, int64_t x_stride, float * y, int64_t y_stride, int64_t n_rows);

// Expert-batched MoE. Rows are grouped by expert (CSR): selected expert i (< n_sel) is expert id
// expert[i] and owns the pairs j in [offset[i], offset[i + 1]); pair j reads activation row
// x_row[j] (NULL: row j) and writes output row y_row[j] (NULL: row j). Each selected expert's
// weights are streamed once for all its pairs; threads split (expert, output-row range) items.
struct dsv4_moe_routes {
    int32_t         n_sel;
    const int32_t * expert;  // [n_sel], each in [0, n_expert)
    const int32_t * offset;  // [n_sel + 1], non-decreasing, offset[0] = 0
    const int32_t * x_row;   // [offset[n_sel]] in [0, n_x_rows), or NULL
    const int32_t * y_row;   // [offset[n_sel]] in [0, n_y_rows), or NULL
};

// The same for dsv4_matmul_moe (also an upper bound over ISAs and float_activations).
size_t dsv4_matmul_moe_scratch_size(const struct dsv4_weight * w, int64_t n_x_rows,
                                    int64_t max_rows_per_expert, int n_threads);

dsv4_status dsv4_matmul_moe(const struct dsv4_matmul_params * params, const struct dsv4_weight * w,
                            const struct dsv4_moe_routes * routes,
                            const float * x, int64_t x_stride, int64_t n_x_rows,
                            float * y, int64_t y_stride, int64_t n_y_rows);

// Groups top-k routing ids [n_tokens, k] by expert into CSR routes: x_row = token, y_row =
// token * k + slot. Buffers: expert [n_expert], offset [n_expert + 1], x_row and y_row
// [n_tokens * k]. Experts appear in increasing id order; within one, tokens in order.
dsv4_status dsv4_moe_group_by_expert(const int32_t * ids, int64_t n_tokens, int32_t k, int32_t n_expert,
                                     int32_t * expert, int32_t * offset, int32_t * x_row, int32_t * y_row,
                                     struct dsv4_moe_routes * routes);

#ifdef __cplusplus
}
#endif
