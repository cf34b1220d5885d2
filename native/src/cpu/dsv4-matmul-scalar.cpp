// Scalar reference matmul kernels: plain loops, any CPU. The SIMD kernels are tested against
// these. Weight-stationary like the others: each weight row is decoded once and applied to every
// activation row. Sums run sequentially in f32 (no reassociation).
#include "cpu/dsv4-matmul-impl.h"

#include <math.h>

namespace {

// Decodes weight row o into f32: the float family (FP8 with its block scales applied), and Q8_0 /
// MXFP4 for the float-activation path. Every decoded value is exact: d * q has at most 11 + 8
// significant bits, and the MXFP4 scale is a power of two (short of f32 overflow, which only
// scales beyond any real checkpoint's reach produce).
void decode_row(const dsv4_mm_w * w, int64_t o, float * out) {
    const uint8_t * row = w->data + (size_t) o * w->row_bytes;
    const int64_t n = w->n_in;
    switch (w->type) {
        case DSV4_TYPE_F32:
            memcpy(out, row, (size_t) n * sizeof(float));
            break;
        case DSV4_TYPE_F16:
            for (int64_t k = 0; k < n; k++) {
                uint16_t h;
                memcpy(&h, row + 2 * k, 2);
                out[k] = dsv4_mm_f16_to_f32(h);
            }
            break;
        case DSV4_TYPE_BF16:
            for (int64_t k = 0; k < n; k++) {
                uint16_t h;
                memcpy(&h, row + 2 * k, 2);
                out[k] = dsv4_mm_bf16_to_f32(h);
            }
            break;
        case DSV4_TYPE_FP8_E4M3: {
            const float * s = w->scale + (o / 128) * w->scale_cols;
            for (int64_t k = 0; k < n; k++) {
                out[k] = dsv4_mm_e4m3_to_f32(row[k]) * s[k / 128];
            }
            break;
        }
        case DSV4_TYPE_Q8_0:
            for (int64_t b = 0; b < n / 32; b++) {
                const uint8_t * blk = row + b * DSV4_Q8_0_BLOCK_BYTES;
                uint16_t h;
                memcpy(&h, blk, 2);
                const float d = dsv4_mm_f16_to_f32(h);
                for (int j = 0; j < 32; j++) {
                    out[32 * b + j] = d * (float) (int8_t) blk[2 + j];
                }
            }
            break;
        case DSV4_TYPE_MXFP4:
            for (int64_t b = 0; b < n / 32; b++) {
                const uint8_t * blk = row + b * DSV4_MXFP4_BLOCK_BYTES;
                const float d = dsv4_mm_e8m0_half(blk[0]);
                for (int j = 0; j < 16; j++) {
                    out[32 * b + j]      = d * (float) dsv4_mm_mxfp4_values[blk[1 + j] & 0x0F];
                    out[32 * b + j + 16] = d * (float) dsv4_mm_mxfp4_values[blk[1 + j] >> 4];
                }
            }
            break;
        default:
            break;
    }
}

void mm_float_family(const dsv4_mm_w * w, int64_t o0, int64_t o1, const dsv4_mm_rows * rows, void * tmp) {
    float * wrow = (float *) tmp;
    const int64_t n = w->n_in;
    for (int64_t o = o0; o < o1; o++) {
        decode_row(w, o, wrow);
        for (int64_t i = 0; i < rows->n; i++) {
            const float * x = dsv4_mm_x_row(rows, i);
            float sum = 0.0f;
            for (int64_t k = 0; k < n; k++) {
                sum += wrow[k] * x[k];
            }
            dsv4_mm_y_row(rows, i)[o] = sum;
        }
    }
}

// Integer path: weight row decoded to int8 values + f32 block scales, then per activation row
// sum over blocks of (d_w * d_x) * (exact int32 block dot).
void mm_int_family(const dsv4_mm_w * w, int64_t o0, int64_t o1, const dsv4_mm_rows * rows, void * tmp) {
    const int64_t n = w->n_in;
    const int64_t nb = n / 32;
    int8_t * wq = (int8_t *) tmp;
    float * wd = (float *) ((uint8_t *) tmp + dsv4_mm_pad16(n));
    for (int64_t o = o0; o < o1; o++) {
        const uint8_t * row = w->data + (size_t) o * w->row_bytes;
        for (int64_t b = 0; b < nb; b++) {
            if (w->type == DSV4_TYPE_Q8_0) {
                const uint8_t * blk = row + b * DSV4_Q8_0_BLOCK_BYTES;
                uint16_t h;
                memcpy(&h, blk, 2);
                wd[b] = dsv4_mm_f16_to_f32(h);
                memcpy(wq + 32 * b, blk + 2, 32);
            } else {
                const uint8_t * blk = row + b * DSV4_MXFP4_BLOCK_BYTES;
                wd[b] = dsv4_mm_e8m0_half(blk[0]);
                for (int j = 0; j < 16; j++) {
                    wq[32 * b + j]      = dsv4_mm_mxfp4_values[blk[1 + j] & 0x0F];
                    wq[32 * b + j + 16] = dsv4_mm_mxfp4_values[blk[1 + j] >> 4];
                }
            }
        }
        for (int64_t i = 0; i < rows->n; i++) {
            const uint8_t * xq = dsv4_mm_xq_row(rows, i);
            const int8_t * q = (const int8_t *) xq;
            const float * d = (const float *) (xq + n);
            float sum = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t isum = 0;
                for (int j = 0; j < 32; j++) {
                    isum += (int32_t) wq[32 * b + j] * (int32_t) q[32 * b + j];
                }
                sum += (wd[b] * d[b]) * (float) isum;
            }
            dsv4_mm_y_row(rows, i)[o] = sum;
        }
    }
}

void quantize_row(const float * x, int64_t n, uint8_t * dst, int32_t bias) {
    const int64_t nb = n / 32;
    int8_t * q = (int8_t *) dst;
    float * d = (float *) (dst + n);
    float * d8 = d + nb;
    int32_t * corr = (int32_t *) (dst + n + nb * 36);
    for (int64_t b = 0; b < nb; b++) {
        const float * xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(xb[j]));
        }
        const float dv = amax / 127.0f;
        const float id = dv != 0.0f ? 1.0f / dv : 0.0f;
        for (int j = 0; j < 32; j++) {
            float v = nearbyintf(xb[j] * id);
            v = v >= -127.0f ? v : -127.0f;  // NaN-safe clamp (finite inputs never need it)
            v = v <= 127.0f ? v : 127.0f;
            q[32 * b + j] = (int8_t) v;
        }
        d[b] = dv;
        for (int j = 0; j < 8; j++) {
            d8[8 * b + j] = dv;
        }
    }
    for (int64_t i = 0; i < n / 4; i++) {
        corr[i] = -bias * (q[4 * i] + q[4 * i + 1] + q[4 * i + 2] + q[4 * i + 3]);
    }
}

}  // namespace

extern const dsv4_mm_isa_kernels dsv4_mm_kernels_scalar = {
    mm_float_family,  // f32
    mm_float_family,  // f16
    mm_float_family,  // bf16
    mm_float_family,  // fp8
    mm_int_family,    // q8_0
    mm_int_family,    // mxfp4
    quantize_row,
    mm_float_family,  // q8_0, float activations
    mm_float_family,  // mxfp4, float activations
    nullptr,          // no packed-MXFP4 kernel (the packed layout is for AVX2 / AVX-512)
    nullptr,          // bf16 rounding: the driver's loop
};
