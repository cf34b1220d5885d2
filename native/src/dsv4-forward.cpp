// The V4 forward pass, top level (v4-model.md §3): scratch sizing, RoPE tables, embedding,
// mHC (§3.2-3.4), the block loop, DSpark tap features and the logits head. Attention lives in
// dsv4-attention.cpp, the MoE in dsv4-moe.cpp.
#include "dsv4-forward.h"

#include "dsv4-forward-ops.h"
#include "dsv4-impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <new>

namespace {

size_t align64(size_t n) {
    return (n + 63) & ~(size_t) 63;
}

// v4-model.md §4.6: theta_i = base^(-2i/R); on ratio > 0 layers the YaRN blend with the ramp
// between corr(beta_fast) and corr(beta_slow). Double precision, once per context; no mscale.
std::vector<double> rope_theta(const dsv4_hparams & hp, bool yarn) {
    const int R = hp.rope_dim;
    const double base = yarn ? (double) hp.compress_rope_freq_base : (double) hp.rope_freq_base;
    std::vector<double> theta((size_t) (R / 2));
    for (int i = 0; i < R / 2; i++) {
        theta[(size_t) i] = pow(base, -2.0 * (double) i / (double) R);
    }
    if (!yarn || hp.rope_orig_ctx <= 0) {
        return theta;
    }
    const double pi = 3.14159265358979323846;
    auto corr = [&](double n_rot) {
        return (double) R * log((double) hp.rope_orig_ctx / (2 * pi * n_rot)) / (2 * log(base));
    };
    const double low = std::max(floor(corr((double) hp.yarn_beta_fast)), 0.0);
    double high = std::min(ceil(corr((double) hp.yarn_beta_slow)), (double) (R - 1));
    if (high == low) {
        high += 0.001;
    }
    const double factor = (double) hp.rope_scaling_factor;
    for (int i = 0; i < R / 2; i++) {
        double ramp = ((double) i - low) / (high - low);
        ramp = ramp < 0 ? 0 : (ramp > 1 ? 1 : ramp);
        const double t = theta[(size_t) i];
        theta[(size_t) i] = t / factor * ramp + t * (1.0 - ramp);
    }
    return theta;
}

// wo_a ([G*o_lora, H*hd/G], group g = rows [g*o_lora, (g+1)*o_lora)) as a stack of G matrices
// (n_expert = G), which dsv4_fwd_attn_output runs as one dsv4_matmul_moe call. An FP8 matrix whose
// groups do not start on a 128-row scale tile is dequantized to a copy once.
dsv4_status bind_wo_a(dsv4_forward * f, const dsv4_layer & L, dsv4_fwd_layer & fl) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t G = hp.o_groups, ol = hp.o_lora_rank, in = (int64_t) hp.n_head * hp.head_dim / G;
    const dsv4_weight & w = L.wo_a;
    const bool fp8 = w.type == DSV4_TYPE_FP8_E4M3;
    if (fp8 && ol % 128 != 0) {
        // Groups split the 128-row scale blocks: decode to a plain copy. With power-of-two scales
        // (UE8M0, every real checkpoint) BF16 holds every value exactly, so the copy runs the same
        // arithmetic as the llama.cpp BF16 layout in both activation modes; otherwise F32.
        const int64_t sc_cols = (in + 127) / 128, n_sc = (G * ol + 127) / 128 * sc_cols;
        bool pow2 = true;
        for (int64_t i = 0; i < n_sc && pow2; i++) {
            int e;
            pow2 = frexpf(w.scale[i], &e) == 0.5f;
        }
        const size_t n_val = (size_t) (G * ol * in);
        std::unique_ptr<float[]> buf(new (std::nothrow) float[pow2 ? (size_t) in : n_val]);
        std::unique_ptr<float[]> bf(pow2 ? new (std::nothrow) float[(n_val + 1) / 2] : nullptr);
        if (!buf || (pow2 && !bf)) {
            return dsv4_set_error(DSV4_ERR_NO_MEMORY, "dsv4_context_init: cannot allocate the copy of attn_output_a");
        }
        uint16_t * b16 = (uint16_t *) bf.get();
        for (int64_t o = 0; o < G * ol; o++) {
            float * row = pow2 ? buf.get() : buf.get() + o * in;
            dsv4_fp8_row_to_float((const uint8_t *) w.data + (size_t) o * w.row_bytes, w.scale + (o / 128) * sc_cols,
                                  row, in);
            for (int64_t k = 0; pow2 && k < in; k++) {
                b16[o * in + k] = dsv4_f32_to_bf16(row[k]);
            }
        }
        if (pow2) {
            dsv4_weight_init_experts(&fl.wo_a, DSV4_TYPE_BF16, G, ol, in, b16, nullptr);
        } else {
            dsv4_weight_init_experts(&fl.wo_a, DSV4_TYPE_F32, G, ol, in, buf.get(), nullptr);
        }
        f->owned_bytes += pow2 ? n_val * sizeof(uint16_t) : n_val * sizeof(float);
        f->owned.push_back(pow2 ? std::move(bf) : std::move(buf));
        return DSV4_OK;
    }
    // The file's matrix itself: group g's rows, scale rows (FP8: o_lora is a multiple of 128) and
    // packed rows (FP8: 4-row groups) start at fixed strides.
    fl.wo_a = w;
    fl.wo_a.n_out = ol;
    fl.wo_a.n_expert = G;
    fl.wo_a.expert_stride = (size_t) ol * w.row_bytes;
    fl.wo_a.scale_expert_stride = fp8 ? (size_t) (ol / 128) * ((in + 127) / 128) : 0;
    const bool packed = fp8 && w.packed;  // another type's packing has 16-row groups: not sliced here
    fl.wo_a.packed = packed ? w.packed : nullptr;
    fl.wo_a.packed_expert_stride = packed ? (size_t) (ol / DSV4_FP8_PACK_ROWS) * dsv4_fp8_packed_group_bytes(in) : 0;
    return DSV4_OK;
}

}  // namespace

dsv4_status dsv4_forward_init(dsv4_forward * f, const dsv4_model * model, dsv4_threadpool * pool, int32_t n_ctx,
                              int32_t n_batch) {
    const dsv4_hparams & hp = model->hp;
    f->model = model;
    f->pool = pool;
    f->n_ctx = n_ctx;
    f->n_batch = n_batch;
    f->n_threads = pool ? dsv4_threadpool_n_threads(pool) : 1;
    f->theta[0] = rope_theta(hp, false);
    f->theta[1] = rope_theta(hp, true);

    const int64_t d = hp.n_embd, hc = hp.hc_mult, mix = (2 + hc) * hc;
    const int64_t H = hp.n_head, hd = hp.head_dim, rd = hp.rope_dim;
    const int64_t Hi = hp.indexer_n_head, Di = hp.indexer_head_dim, E = hp.n_expert, k = hp.n_expert_used;
    const int64_t I = (int64_t) hp.n_ff_exp * hp.n_expert_shared > hp.n_ff_exp ? (int64_t) hp.n_ff_exp * hp.n_expert_shared
                                                                             : hp.n_ff_exp;
    const int64_t nb = n_batch, nth = f->n_threads;

    f->layers.assign(model->layers.size(), dsv4_fwd_layer());
    bool has_csa = false;
    int64_t max_comp = 0;
    for (size_t il = 0; il < model->layers.size(); il++) {
        const dsv4_layer & L = model->layers[il];
        dsv4_fwd_layer & fl = f->layers[il];
        dsv4_weight_init(&fl.hc_attn_fn, DSV4_TYPE_F32, mix, hc * d, L.hc_attn_fn, nullptr);
        dsv4_weight_init(&fl.hc_ffn_fn, DSV4_TYPE_F32, mix, hc * d, L.hc_ffn_fn, nullptr);
        dsv4_status st = bind_wo_a(f, L, fl);
        if (st != DSV4_OK) {
            return st;
        }
        if (il < (size_t) hp.n_layer && L.ratio == 4) {
            has_csa = true;
            max_comp = std::max(max_comp, std::min<int64_t>(hp.indexer_top_k, n_ctx / 4));
        } else if (il < (size_t) hp.n_layer && L.ratio > 0) {
            max_comp = std::max(max_comp, (int64_t) n_ctx / L.ratio);
        }
    }
    dsv4_weight_init(&f->out_hc_fn, DSV4_TYPE_F32, hc, hc * d, model->output_hc_fn, nullptr);
    f->max_keys = (int32_t) (hp.window + max_comp);
    f->idx_group = (int32_t) std::min<int64_t>(16, nb);
    const int64_t n_idx = has_csa ? n_ctx / 4 : 0;

    // Matmul scratch: the largest need over every weight the pass multiplies.
    size_t mm = 0;
    auto need = [&](const dsv4_weight & w, int64_t rows) {
        if (w.data) {
            mm = std::max(mm, dsv4_matmul_scratch_size(&w, rows, (int) nth));
        }
    };
    for (size_t il = 0; il < model->layers.size(); il++) {
        const dsv4_layer & L = model->layers[il];
        const dsv4_fwd_layer & fl = f->layers[il];
        need(fl.hc_attn_fn, nb);
        need(fl.hc_ffn_fn, nb);
        for (const dsv4_weight * w : dsv4_layer_dense_linears(L)) {
            need(*w, nb);
        }
        mm = std::max(mm, dsv4_matmul_moe_scratch_size(&fl.wo_a, nb * hp.o_groups, nb, (int) nth));
        if (L.ffn_gate_exps.data) {
            mm = std::max(mm, dsv4_matmul_moe_scratch_size(&L.ffn_gate_exps, nb, nb, (int) nth));
            mm = std::max(mm, dsv4_matmul_moe_scratch_size(&L.ffn_up_exps, nb, nb, (int) nth));
            mm = std::max(mm, dsv4_matmul_moe_scratch_size(&L.ffn_down_exps, nb * k, nb, (int) nth));
        }
    }
    need(f->out_hc_fn, nb);
    need(model->output, nb);
    if (model->dspark.present) {
        // DSpark draft (dsv4-dspark.cpp): its heads, and W ring keys + the block's own keys per row.
        need(model->dspark_fc, nb);
        need(model->markov_w2, nb);
        need(model->conf_proj, nb);
        f->max_keys = std::max<int32_t>(f->max_keys, model->dspark.window + dsv4_fwd_draft_max_gamma(model, n_batch));
    }

    // One allocation; offsets first.
    struct slot {
        void ** p;
        size_t bytes;
    };
    std::vector<slot> slots;
    auto fl32 = [&](float ** p, int64_t n) { slots.push_back({(void **) p, (size_t) n * sizeof(float)}); };
    auto i32 = [&](int32_t ** p, int64_t n) { slots.push_back({(void **) p, (size_t) n * sizeof(int32_t)}); };
    fl32(&f->h, nb * hc * d);
    fl32(&f->h_alt, nb * hc * d);
    fl32(&f->x, nb * d);
    fl32(&f->xn, nb * d);
    fl32(&f->y, nb * d);
    fl32(&f->mix, nb * mix);
    fl32(&f->pre, nb * hc);
    fl32(&f->post, nb * hc);
    fl32(&f->comb, nb * hc * hc);
    fl32(&f->rope, 2 * nb * rd);
    fl32(&f->qa, nb * hp.q_lora_rank);
    fl32(&f->q, nb * H * hd);
    fl32(&f->kv, nb * hd);
    fl32(&f->o, nb * H * hd);
    fl32(&f->z, nb * hp.o_groups * hp.o_lora_rank);
    fl32(&f->ca, nb * 2 * hd);
    fl32(&f->cg, nb * 2 * hd);
    if (has_csa) {
        fl32(&f->ia, nb * 2 * Di);
        fl32(&f->ig, nb * 2 * Di);
        fl32(&f->qi, nb * Hi * Di);
        fl32(&f->wi, nb * Hi);
        fl32(&f->idx_scores, (int64_t) f->idx_group * std::max<int64_t>(n_idx, 1));
        i32(&f->topk, nb * hp.indexer_top_k);
        i32(&f->n_top, nb);
    }
    slots.push_back({(void **) &f->keys, (size_t) (nb * f->max_keys) * sizeof(float *)});
    i32(&f->n_keys, nb);
    f->att_stride = align64((size_t) (H * f->max_keys) * sizeof(float)) / sizeof(float);
    fl32(&f->att, (int64_t) f->att_stride * nth);
    fl32(&f->gate, nb * E);
    fl32(&f->wts, nb * k);
    i32(&f->ids, nb * k);
    fl32(&f->eg, nb * k * hp.n_ff_exp);
    fl32(&f->eu, nb * k * hp.n_ff_exp);
    fl32(&f->ed, nb * k * d);
    fl32(&f->sg, nb * I);
    fl32(&f->su, nb * I);
    i32(&f->r_expert, E);
    i32(&f->r_offset, E + 1);
    i32(&f->r_xrow, nb * k);
    i32(&f->r_yrow, nb * k);
    i32(&f->oa_group, hp.o_groups);
    i32(&f->oa_offset, hp.o_groups + 1);
    i32(&f->oa_row, nb * hp.o_groups);
    slots.push_back({&f->mm_scratch, mm});
    f->mm_scratch_size = mm;

    size_t total = 0;
    for (const slot & s : slots) {
        total += align64(s.bytes);
    }
    void * mem = nullptr;
    if (posix_memalign(&mem, 64, total) != 0) {
        return dsv4_set_error(DSV4_ERR_NO_MEMORY, "dsv4_context_init: cannot allocate %.1f MiB of scratch (n_batch = %d)",
                              (double) total / (1 << 20), n_batch);
    }
    memset(mem, 0, total);
    f->mem = mem;
    f->bytes = total;
    size_t off = 0;
    for (const slot & s : slots) {
        *s.p = (uint8_t *) mem + off;
        off += align64(s.bytes);
    }
    return DSV4_OK;
}

void dsv4_forward_free(dsv4_forward * f) {
    free(f->mem);
    f->mem = nullptr;
    f->bytes = 0;
    f->owned.clear();
    f->layers.clear();
}

int32_t dsv4_fwd_draft_max_gamma(const dsv4_model * model, int32_t n_batch) {
    return std::min(n_batch, std::max(model->dspark.block_size, 16));
}

dsv4_matmul_params dsv4_fwd_matmul_params(const dsv4_forward * f) {
    dsv4_matmul_params p = dsv4_matmul_default_params();
    p.pool = f->pool;
    p.scratch = f->mm_scratch;
    p.scratch_size = f->mm_scratch_size;
    p.float_activations = f->float_activations;
    return p;
}

dsv4_status dsv4_fwd_matmul(dsv4_forward * f, const dsv4_weight * w, const float * x, int64_t x_stride, float * y,
                            int64_t y_stride, int64_t n) {
    const dsv4_matmul_params p = dsv4_fwd_matmul_params(f);
    return dsv4_matmul(&p, w, x, x_stride, y, y_stride, n);
}

void dsv4_fwd_rope_rows(const dsv4_forward * f, int table, int64_t pos0, int32_t n, float * rope) {
    const std::vector<double> & th = f->theta[table];
    const int64_t half = (int64_t) th.size();
    for (int32_t i = 0; i < n; i++) {
        float * cs = rope + (int64_t) i * 2 * half;
        const double pos = (double) (pos0 + i);
        for (int64_t j = 0; j < half; j++) {
            const double a = pos * th[(size_t) j];
            cs[j] = (float) cos(a);
            cs[half + j] = (float) sin(a);
        }
    }
}

void dsv4_fwd_rms_norm(dsv4_forward * f, const float * x, const float * w, int32_t n, int32_t dim, float * y) {
    const float eps = f->model->hp.norm_eps;
    dsv4_parallel_for(f->pool, n, 4, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
            const float * xr = x + i * dim;
            float * yr = y + i * dim;
            const float r = dsv4_rms_inv(xr, dim, eps);
            if (w) {
                for (int32_t c = 0; c < dim; c++) {
                    yr[c] = xr[c] * r * w[c];
                }
            } else {
                for (int32_t c = 0; c < dim; c++) {
                    yr[c] = xr[c] * r;
                }
            }
        }
    });
}

// v4-model.md §3.2 steps 2-6 for rows whose mixes (X @ fn^T, before the 1/rms factor) are in mix.
dsv4_status dsv4_fwd_hc_pre(dsv4_forward * f, const dsv4_weight * fn, const float * base, const float * scale,
                            const float * h, int32_t n, float * x, float * post, float * comb) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t hc = hp.hc_mult, d = hp.n_embd, M = (2 + hc) * hc;
    dsv4_status st = dsv4_fwd_matmul(f, fn, h, hc * d, f->mix, M, n);
    if (st != DSV4_OK) {
        return st;
    }
    const float eps = hp.norm_eps, hc_eps = hp.hc_eps;
    const int iters = hp.hc_sinkhorn_iters;
    dsv4_parallel_for(f->pool, n, 2, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
            const float * hr = h + i * hc * d;
            const float r = dsv4_rms_inv(hr, hc * d, eps);
            const float * m = f->mix + i * M;
            float pre[64];
            float * po = post + i * hc;
            float * C = comb + i * hc * hc;
            for (int64_t j = 0; j < hc; j++) {
                pre[j] = dsv4_sigmoid(m[j] * r * scale[0] + base[j]) + hc_eps;
                po[j] = 2.0f * dsv4_sigmoid(m[hc + j] * r * scale[1] + base[hc + j]);
            }
            for (int64_t j = 0; j < hc * hc; j++) {
                C[j] = m[2 * hc + j] * r * scale[2] + base[2 * hc + j];
            }
            // Sinkhorn: row softmax + eps, column normalisation, then (iters - 1) x (rows, columns).
            for (int64_t j = 0; j < hc; j++) {
                float * row = C + j * hc;
                float mx = row[0];
                for (int64_t k = 1; k < hc; k++) mx = std::max(mx, row[k]);
                float s = 0;
                for (int64_t k = 0; k < hc; k++) {
                    row[k] = expf(row[k] - mx);
                    s += row[k];
                }
                for (int64_t k = 0; k < hc; k++) row[k] = row[k] / s + hc_eps;
            }
            auto cols = [&]() {
                for (int64_t k = 0; k < hc; k++) {
                    float s = 0;
                    for (int64_t j = 0; j < hc; j++) s += C[j * hc + k];
                    s += hc_eps;
                    for (int64_t j = 0; j < hc; j++) C[j * hc + k] /= s;
                }
            };
            cols();
            for (int it = 1; it < iters; it++) {
                for (int64_t j = 0; j < hc; j++) {
                    float s = 0;
                    for (int64_t k = 0; k < hc; k++) s += C[j * hc + k];
                    s += hc_eps;
                    for (int64_t k = 0; k < hc; k++) C[j * hc + k] /= s;
                }
                cols();
            }
            // x = sum_j pre_j h_j over the unnormalised streams.
            float * xr = x + i * d;
            for (int64_t c = 0; c < d; c++) xr[c] = pre[0] * hr[c];
            for (int64_t j = 1; j < hc; j++) dsv4_axpy(xr, pre[j], hr + j * d, d);
        }
    });
    return DSV4_OK;
}

void dsv4_fwd_hc_post(dsv4_forward * f, const float * x, const float * h, const float * post, const float * comb,
                      int32_t n, float * h_out) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t hc = hp.hc_mult, d = hp.n_embd;
    // Rows x destination streams, so a single decode row still splits over the threads.
    dsv4_parallel_for(f->pool, (int64_t) n * hc, 2, [&](int64_t i0, int64_t i1, int) {
        for (int64_t ik = i0; ik < i1; ik++) {
            const int64_t i = ik / hc, k = ik % hc;
            const float * xr = x + i * d;
            const float * hr = h + i * hc * d;
            const float * C = comb + i * hc * hc;
            float * out = h_out + (i * hc + k) * d;
            const float p = post[i * hc + k];
            for (int64_t c = 0; c < d; c++) out[c] = p * xr[c];
            for (int64_t j = 0; j < hc; j++) dsv4_axpy(out, C[j * hc + k], hr + j * d, d);
        }
    });
}

dsv4_status dsv4_fwd_hc_head(dsv4_forward * f, const dsv4_weight * fn, const float * base, const float * scale,
                             const float * h, int32_t n, float * y) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t d = hp.n_embd, hc = hp.hc_mult;
    dsv4_status st = dsv4_fwd_matmul(f, fn, h, hc * d, f->mix, hc, n);
    if (st != DSV4_OK) {
        return st;
    }
    const float eps = hp.norm_eps, hc_eps = hp.hc_eps;
    dsv4_parallel_for(f->pool, n, 2, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
            const float * hr = h + i * hc * d;
            const float r = dsv4_rms_inv(hr, hc * d, eps);
            float * yr = y + i * d;
            for (int64_t j = 0; j < hc; j++) {
                const float pre = dsv4_sigmoid(f->mix[i * hc + j] * r * scale[0] + base[j]) + hc_eps;
                if (j == 0) {
                    for (int64_t c = 0; c < d; c++) yr[c] = pre * hr[c];
                } else {
                    dsv4_axpy(yr, pre, hr + j * d, d);
                }
            }
        }
    });
    return DSV4_OK;
}

namespace {

// token_embd row gather (any type with a row decoder; FP8 gets its tile scales).
void embed_rows(dsv4_forward * f, const int32_t * tokens, int32_t n, float * h) {
    const dsv4_model * m = f->model;
    const int64_t d = m->hp.n_embd, hc = m->hp.hc_mult;
    const dsv4_weight & e = m->token_embd;
    const dsv4_type_traits * tr = dsv4_get_type_traits(e.type);
    dsv4_parallel_for(f->pool, n, 8, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
            const int64_t tok = tokens[i];
            float * row = h + i * hc * d;
            tr->to_float((const uint8_t *) e.data + (size_t) tok * e.row_bytes, row, d);
            if (e.type == DSV4_TYPE_FP8_E4M3) {
                const float * sc = e.scale + (tok / 128) * ((d + 127) / 128);
                for (int64_t c = 0; c < d; c++) row[c] *= sc[c / 128];
            }
            for (int64_t j = 1; j < hc; j++) memcpy(row + j * d, row, (size_t) d * sizeof(float));
        }
    });
}

}  // namespace

void dsv4_fwd_embed_rows(dsv4_forward * f, const int32_t * tokens, int32_t n, float * h) {
    embed_rows(f, tokens, n, h);
}

namespace {

// §3.4 hc_head + final norm + head for the requested rows.
// hs: a free [n_batch, hc, d] buffer for the gathered rows.
dsv4_status head(dsv4_forward * f, const float * h, float * hs, const dsv4_logit_req * req, int32_t n_req, float * logits) {
    const dsv4_model * m = f->model;
    const dsv4_hparams & hp = m->hp;
    const int64_t d = hp.n_embd, hc = hp.hc_mult, V = hp.n_vocab;
    for (int32_t r0 = 0; r0 < n_req; r0 += f->n_batch) {
        const int32_t r1 = std::min(n_req, r0 + f->n_batch);
        const int32_t nr = r1 - r0;
        for (int32_t r = 0; r < nr; r++) {
            memcpy(hs + (int64_t) r * hc * d, h + (int64_t) req[r0 + r].row * hc * d, (size_t) (hc * d) * sizeof(float));
        }
        dsv4_status st = dsv4_fwd_hc_head(f, &f->out_hc_fn, m->output_hc_base, m->output_hc_scale, hs, nr, f->y);
        if (st != DSV4_OK) {
            return st;
        }
        dsv4_fwd_rms_norm(f, f->y, m->output_norm, nr, (int32_t) d, f->y);
        // One head matmul per run of consecutive output rows.
        for (int32_t a = r0; a < r1;) {
            int32_t b = a + 1;
            while (b < r1 && req[b].out == req[b - 1].out + 1) b++;
            st = dsv4_fwd_matmul(f, &m->output, f->y + (int64_t) (a - r0) * d, d, logits + (int64_t) req[a].out * V, V, b - a);
            if (st != DSV4_OK) {
                return st;
            }
            a = b;
        }
    }
    return DSV4_OK;
}

// dspark.md §1.3: mean over the hc copies of the residual after a tapped layer.
void tap_features(dsv4_forward * f, const float * h, int32_t n, int32_t tap, int32_t n_tap, float * features) {
    const int64_t d = f->model->hp.n_embd, hc = f->model->hp.hc_mult;
    dsv4_parallel_for(f->pool, n, 8, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
            const float * hr = h + i * hc * d;
            float * out = features + i * n_tap * d + (int64_t) tap * d;
            for (int64_t c = 0; c < d; c++) {
                float s = 0;
                for (int64_t j = 0; j < hc; j++) s += hr[j * d + c];
                out[c] = s / (float) hc;
            }
        }
    });
}

}  // namespace

dsv4_status dsv4_forward_chunk(dsv4_forward * f, dsv4_kv_cache * cache, const int32_t * tokens, int32_t n,
                               int32_t pos0, const dsv4_logit_req * req, int32_t n_req, float * logits,
                               float * features) {
    const dsv4_model * m = f->model;
    const dsv4_hparams & hp = m->hp;
    const int64_t rd = hp.rope_dim;
    // Rows at pos0 .. pos0 + n - 1 overwrite ring/store slots from here on.
    cache->n_hi = std::max(cache->n_hi, pos0 + n);
    dsv4_fwd_rope_rows(f, 0, pos0, n, f->rope);
    dsv4_fwd_rope_rows(f, 1, pos0, n, f->rope + (int64_t) f->n_batch * rd);

    float * h = f->h, * h2 = f->h_alt;
    embed_rows(f, tokens, n, h);
    const std::vector<int32_t> & taps = m->dspark.target_layer_ids;
    const int32_t n_tap = (int32_t) taps.size();
    for (int32_t il = 0; il < hp.n_layer; il++) {
        const dsv4_layer & L = m->layers[(size_t) il];
        const dsv4_fwd_layer & fl = f->layers[(size_t) il];
        dsv4_status st = dsv4_fwd_hc_pre(f, &fl.hc_attn_fn, L.hc_attn_base, L.hc_attn_scale, h, n, f->x, f->post, f->comb);
        if (st != DSV4_OK) return st;
        dsv4_fwd_rms_norm(f, f->x, L.attn_norm, n, hp.n_embd, f->xn);
        if ((st = dsv4_fwd_attention(f, cache, il, f->xn, n, pos0, f->y)) != DSV4_OK) return st;
        dsv4_fwd_hc_post(f, f->y, h, f->post, f->comb, n, h2);
        std::swap(h, h2);

        if ((st = dsv4_fwd_hc_pre(f, &fl.hc_ffn_fn, L.hc_ffn_base, L.hc_ffn_scale, h, n, f->x, f->post, f->comb)) != DSV4_OK) {
            return st;
        }
        dsv4_fwd_rms_norm(f, f->x, L.ffn_norm, n, hp.n_embd, f->xn);
        if ((st = dsv4_fwd_moe(f, il, f->xn, tokens, n, f->y)) != DSV4_OK) return st;
        dsv4_fwd_hc_post(f, f->y, h, f->post, f->comb, n, h2);
        std::swap(h, h2);

        if (features) {
            for (int32_t t = 0; t < n_tap; t++) {
                if (taps[(size_t) t] == il) tap_features(f, h, n, t, n_tap, features);
            }
        }
    }
    if (n_req > 0) {
        dsv4_status st = head(f, h, h2, req, n_req, logits);
        if (st != DSV4_OK) return st;
    }
    return DSV4_OK;
}
