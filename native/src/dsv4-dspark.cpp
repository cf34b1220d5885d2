// The DSpark draft forward pass (dsv4-dspark.h): ring injection, the non-causal block pass through
// the draft stages (V4 blocks with ratio 0, no hash routing) and the Markov / confidence heads.
// Every linear, norm, mHC step, attention core and MoE is the target forward's own code
// (dsv4-forward.h); this file only wires the draft's banks and heads.
#include "dsv4-dspark.h"

#include "dsv4-forward-ops.h"
#include "dsv4-impl.h"
#include "dsv4-kv-cache.h"

#include <string.h>

#include <algorithm>
#include <new>

namespace {

// Row `row` of a row-gather weight ([V, n_in], any type with a row decoder; FP8 gets its tile scales).
void gather_row(const dsv4_weight & w, int64_t row, float * out) {
    const dsv4_type_traits * tr = dsv4_get_type_traits(w.type);
    tr->to_float((const uint8_t *) w.data + (size_t) row * w.row_bytes, out, w.n_in);
    if (w.type == DSV4_TYPE_FP8_E4M3) {
        const float * sc = w.scale + (row / 128) * ((w.n_in + 127) / 128);
        for (int64_t c = 0; c < w.n_in; c++) out[c] *= sc[c / 128];
    }
}

}  // namespace

dsv4_status dsv4_draft_init(dsv4_draft ** out, const dsv4_model * model, dsv4_forward * f) {
    *out = nullptr;
    if (!model->dspark.present) return DSV4_OK;
    const dsv4_hparams & hp = model->hp;
    const dsv4_dspark_hparams & ds = model->dspark;
    if (ds.window <= 0 || ds.n_stage <= 0) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "dsv4_context_init: DSpark draft with window %d and %d stages", ds.window,
                              ds.n_stage);
    }
    dsv4_draft * d = new (std::nothrow) dsv4_draft();
    if (!d) return dsv4_set_error(DSV4_ERR_NO_MEMORY, "dsv4_context_init: out of memory (draft)");
    const int64_t dd = hp.n_embd, hc = hp.hc_mult, hd = hp.head_dim, rd = hp.rope_dim, r = ds.markov_rank;
    d->model = model;
    d->f = f;
    d->W = ds.window;
    d->n_stage = ds.n_stage;
    d->max_gamma = std::min(dsv4_fwd_draft_max_gamma(model, f->n_batch), f->max_keys - ds.window);
    const int64_t rows = std::max<int64_t>(f->n_batch, d->max_gamma);
    try {
        d->ring.assign((size_t) (ds.n_stage * (int64_t) ds.window * hd), 0.0f);
        d->ring_pos.assign((size_t) ds.window, -1);
        d->main_x.assign((size_t) (f->n_batch * dd), 0.0f);
        d->kv.assign((size_t) (rows * hd), 0.0f);
        d->rope.assign((size_t) (rows * rd), 0.0f);
        d->h.assign((size_t) (d->max_gamma * hc * dd), 0.0f);
        d->h2.assign((size_t) (d->max_gamma * hc * dd), 0.0f);
        d->prev.assign((size_t) (d->max_gamma * (dd + r)), 0.0f);
    } catch (const std::bad_alloc &) {
        delete d;
        return dsv4_set_error(DSV4_ERR_NO_MEMORY, "dsv4_context_init: out of memory (draft rings)");
    }
    dsv4_weight_init(&d->out_hc_fn, DSV4_TYPE_F32, hc, hc * dd, model->dspark_output_hc_fn, nullptr);
    *out = d;
    return DSV4_OK;
}

void dsv4_draft_free(dsv4_draft * d) {
    delete d;
}

void dsv4_draft_reset(dsv4_draft * d) {
    std::fill(d->ring_pos.begin(), d->ring_pos.end(), -1);
}

uint64_t dsv4_draft_digest(const dsv4_draft * d) {
    const size_t hd = (size_t) d->model->hp.head_dim;
    uint64_t h = dsv4_hash(DSV4_HASH_INIT, d->ring_pos.data(), d->ring_pos.size() * sizeof(int32_t));
    for (int32_t s = 0; s < d->n_stage; s++) {
        for (int32_t slot = 0; slot < d->W; slot++) {
            if (d->ring_pos[(size_t) slot] < 0) continue;
            h = dsv4_hash(h, d->ring.data() + ((size_t) s * d->W + slot) * hd, hd * sizeof(float));
        }
    }
    return h;
}

int32_t dsv4_draft_last_pos(const dsv4_draft * d) {
    int32_t held = -1;
    for (int32_t p : d->ring_pos) held = std::max(held, p);
    return held;
}

dsv4_status dsv4_draft_inject(dsv4_draft * d, const float * features, int32_t n, int32_t pos0) {
    const dsv4_model * m = d->model;
    const dsv4_hparams & hp = m->hp;
    dsv4_forward * f = d->f;
    if (n <= 0) return DSV4_OK;
    if (!features || pos0 < 0) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "draft inject: NULL features or pos0 < 0");
    const int32_t held = dsv4_draft_last_pos(d);
    if (held >= pos0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "draft inject: pos0 %d is not after the last position held (%d)", pos0,
                              held);
    }
    const int64_t dd = hp.n_embd, hd = hp.head_dim;
    const int64_t n_feat = (int64_t) m->dspark.target_layer_ids.size() * dd;
    const int32_t first = std::max(0, n - d->W);  // earlier rows would be overwritten anyway
    for (int32_t c0 = first; c0 < n; c0 += f->n_batch) {
        const int32_t nc = std::min(f->n_batch, n - c0);
        // main_x = fc_norm(fc · features), shared by every stage.
        dsv4_status st = dsv4_fwd_matmul(f, &m->dspark_fc, features + (int64_t) c0 * n_feat, n_feat, d->main_x.data(), dd, nc);
        if (st != DSV4_OK) return st;
        dsv4_fwd_rms_norm(f, d->main_x.data(), m->dspark_fc_norm, nc, (int32_t) dd, d->main_x.data());
        dsv4_fwd_rope_rows(f, 0, (int64_t) pos0 + c0, nc, d->rope.data());
        for (int32_t s = 0; s < d->n_stage; s++) {
            const dsv4_layer & L = m->layers[(size_t) (hp.n_layer + s)];
            if ((st = dsv4_fwd_attn_kv(f, L, d->main_x.data(), nc, d->rope.data(), d->kv.data())) != DSV4_OK) return st;
            for (int32_t i = 0; i < nc; i++) {
                const int64_t slot = ((int64_t) pos0 + c0 + i) % d->W;
                memcpy(d->ring.data() + ((int64_t) s * d->W + slot) * hd, d->kv.data() + (int64_t) i * hd,
                       (size_t) hd * sizeof(float));
            }
        }
        for (int32_t i = 0; i < nc; i++) d->ring_pos[(size_t) (((int64_t) pos0 + c0 + i) % d->W)] = pos0 + c0 + i;
    }
    return DSV4_OK;
}

dsv4_status dsv4_draft_block(dsv4_draft * d, int32_t anchor, int32_t p, int32_t gamma, float * base_logits,
                             float * x_post) {
    const dsv4_model * m = d->model;
    const dsv4_hparams & hp = m->hp;
    dsv4_forward * f = d->f;
    if (gamma <= 0 || gamma > d->max_gamma) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "draft block: gamma %d outside [1, %d]", gamma, d->max_gamma);
    }
    if (anchor < 0 || anchor >= hp.n_vocab || p < 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "draft block: anchor %d / p %d out of range", anchor, p);
    }
    if (!base_logits || !x_post) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "draft block: NULL output");
    const int64_t dd = hp.n_embd, hd = hp.head_dim;
    std::vector<int32_t> tokens((size_t) gamma, m->dspark.noise_token_id);
    tokens[0] = anchor;
    float * h = d->h.data(), * h2 = d->h2.data();
    dsv4_fwd_embed_rows(f, tokens.data(), gamma, h);
    const float * rope = d->rope.data();
    dsv4_fwd_rope_rows(f, 0, (int64_t) p + 1, gamma, d->rope.data());
    const int64_t lo = std::max<int64_t>(0, (int64_t) p + 1 - d->W);  // ring positions lo .. p are visible
    const int32_t mk = f->max_keys;
    for (int32_t s = 0; s < d->n_stage; s++) {
        const int32_t il = hp.n_layer + s;
        const dsv4_layer & L = m->layers[(size_t) il];
        const dsv4_fwd_layer & fl = f->layers[(size_t) il];
        dsv4_status st = dsv4_fwd_hc_pre(f, &fl.hc_attn_fn, L.hc_attn_base, L.hc_attn_scale, h, gamma, f->x, f->post, f->comb);
        if (st != DSV4_OK) return st;
        dsv4_fwd_rms_norm(f, f->x, L.attn_norm, gamma, (int32_t) dd, f->xn);
        if ((st = dsv4_fwd_attn_queries(f, L, f->xn, gamma, rope)) != DSV4_OK) return st;
        if ((st = dsv4_fwd_attn_kv(f, L, f->xn, gamma, rope, d->kv.data())) != DSV4_OK) return st;
        // Keys of every row (no causal mask inside the block): ring slots in the window, then the block.
        int32_t cnt = 0;
        const float ** kp = f->keys;
        for (int32_t slot = 0; slot < d->W; slot++) {
            const int32_t sp = d->ring_pos[(size_t) slot];
            if (sp >= lo && sp <= p) kp[cnt++] = d->ring.data() + ((int64_t) s * d->W + slot) * hd;
        }
        for (int32_t j = 0; j < gamma; j++) kp[cnt++] = d->kv.data() + (int64_t) j * hd;
        for (int32_t i = 0; i < gamma; i++) {
            if (i > 0) memcpy(f->keys + (int64_t) i * mk, kp, (size_t) cnt * sizeof(float *));
            f->n_keys[i] = cnt;
        }
        dsv4_fwd_attn_core(f, f->q, gamma, f->keys, f->n_keys, mk, L.attn_sinks, rope, f->o);
        if ((st = dsv4_fwd_attn_output(f, il, f->o, gamma, f->y)) != DSV4_OK) return st;
        dsv4_fwd_hc_post(f, f->y, h, f->post, f->comb, gamma, h2);
        std::swap(h, h2);

        if ((st = dsv4_fwd_hc_pre(f, &fl.hc_ffn_fn, L.hc_ffn_base, L.hc_ffn_scale, h, gamma, f->x, f->post, f->comb)) != DSV4_OK) {
            return st;
        }
        dsv4_fwd_rms_norm(f, f->x, L.ffn_norm, gamma, (int32_t) dd, f->xn);
        if ((st = dsv4_fwd_moe(f, il, f->xn, tokens.data(), gamma, f->y)) != DSV4_OK) return st;
        dsv4_fwd_hc_post(f, f->y, h, f->post, f->comb, gamma, h2);
        std::swap(h, h2);
    }
    dsv4_status st = dsv4_fwd_hc_head(f, &d->out_hc_fn, m->dspark_output_hc_base, m->dspark_output_hc_scale, h, gamma, x_post);
    if (st != DSV4_OK) return st;
    dsv4_fwd_rms_norm(f, x_post, m->dspark_output_norm, gamma, (int32_t) dd, f->xn);
    return dsv4_fwd_matmul(f, &m->output, f->xn, dd, base_logits, hp.n_vocab, gamma);  // the TARGET's head
}

dsv4_status dsv4_draft_heads(dsv4_draft * d, const float * base_logits, const float * x_post, int32_t anchor,
                             const int32_t * drafts, int32_t gamma, float * markov, float * conf) {
    const dsv4_model * m = d->model;
    const dsv4_hparams & hp = m->hp;
    dsv4_forward * f = d->f;
    if (gamma <= 0 || gamma > d->max_gamma) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "draft heads: gamma %d outside [1, %d]", gamma, d->max_gamma);
    }
    const int64_t dd = hp.n_embd, V = hp.n_vocab, r = m->dspark.markov_rank, w = dd + r;
    for (int32_t k = 0; k < gamma; k++) {
        const int32_t prev = k == 0 ? anchor : drafts[k - 1];
        if (prev < 0 || prev >= V) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "draft heads: token %d out of range", prev);
        float * row = d->prev.data() + (int64_t) k * w;
        if (x_post) memcpy(row, x_post + (int64_t) k * dd, (size_t) dd * sizeof(float));
        if (r > 0) gather_row(m->markov_w1, prev, row + dd);
    }
    if (markov) {
        if (r > 0) {
            dsv4_status st = dsv4_fwd_matmul(f, &m->markov_w2, d->prev.data() + dd, w, markov, V, gamma);
            if (st != DSV4_OK) return st;
            for (int64_t i = 0; i < (int64_t) gamma * V; i++) markov[i] += base_logits[i];
        } else {
            memcpy(markov, base_logits, (size_t) (gamma * V) * sizeof(float));
        }
    }
    if (conf) {
        if (!m->conf_proj.data || !x_post) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "draft heads: no confidence head (or no x_post)");
        }
        dsv4_status st = dsv4_fwd_matmul(f, &m->conf_proj, d->prev.data(), w, conf, 1, gamma);
        if (st != DSV4_OK) return st;
        if (m->conf_proj_bias) {
            for (int32_t k = 0; k < gamma; k++) conf[k] += m->conf_proj_bias[0];
        }
    }
    return DSV4_OK;
}

dsv4_status dsv4_draft_greedy(dsv4_draft * d, const float * base_logits, int32_t anchor, int32_t gamma,
                              int32_t * drafts, float * logits) {
    const int64_t V = d->model->hp.n_vocab;
    if (gamma <= 0 || gamma > d->max_gamma) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "draft greedy: gamma %d outside [1, %d]", gamma, d->max_gamma);
    }
    std::vector<float> row((size_t) V);
    int32_t prev = anchor;
    for (int32_t k = 0; k < gamma; k++) {
        // ℓ_k depends only on prev_k: one-row heads call, then the argmax picks prev_{k+1}.
        dsv4_status st = dsv4_draft_heads(d, base_logits + (int64_t) k * V, nullptr, prev, nullptr, 1, row.data(), nullptr);
        if (st != DSV4_OK) return st;
        int32_t best = 0;
        for (int64_t v = 1; v < V; v++) {
            if (row[(size_t) v] > row[(size_t) best]) best = (int32_t) v;
        }
        drafts[k] = best;
        if (logits) memcpy(logits + (int64_t) k * V, row.data(), (size_t) V * sizeof(float));
        prev = best;
    }
    return DSV4_OK;
}
