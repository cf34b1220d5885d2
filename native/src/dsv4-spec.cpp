// The speculative loop and the generation driver (dsv4-spec.h, dsv4_generate in dsv4.h).
#include "dsv4-spec.h"

#include "dsv4-impl.h"
#include "dsv4-sampling.h"

#include <math.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <new>

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int64_t n_feat_of(const dsv4_context * ctx) {
    return (int64_t) ctx->model->dspark.target_layer_ids.size() * ctx->model->hp.n_embd;
}

}  // namespace

dsv4_status dsv4_spec_state_init(dsv4_spec_state * s, const dsv4_context * ctx, int32_t gamma_max, bool features) {
    const int64_t V = ctx->model->hp.n_vocab, d = ctx->model->hp.n_embd;
    const int64_t g = std::max<int32_t>(gamma_max, 0);
    s->gamma_max = (int32_t) g;
    s->logits.assign((size_t) ((g + 1) * V), 0.0f);
    if (features) s->feats.assign((size_t) ((g + 1) * n_feat_of(ctx)), 0.0f);
    s->base.assign((size_t) (std::max<int64_t>(g, 1) * V), 0.0f);
    s->x_post.assign((size_t) (std::max<int64_t>(g, 1) * d), 0.0f);
    s->q.assign((size_t) (std::max<int64_t>(g, 1) * V), 0.0f);
    s->row.assign((size_t) V, 0.0f);
    s->p.assign((size_t) V, 0.0f);
    s->drafts.assign((size_t) std::max<int64_t>(g, 1), 0);
    return DSV4_OK;
}

void dsv4_target_probs(const float * logits, int64_t V, const dsv4_sampler_cfg & cfg, float * probs,
                       std::vector<int32_t> & idx) {
    dsv4_softmax(logits, V, cfg.temperature, probs);
    dsv4_top_k_top_p(probs, V, cfg.top_k, cfg.top_p, idx);
}

int32_t dsv4_sample_logits(dsv4_context * ctx, const float * logits, const dsv4_sampler_cfg & cfg, dsv4_spec_state * s) {
    const int64_t V = ctx->model->hp.n_vocab;
    if (cfg.temperature <= 0.0f) return dsv4_argmax(logits, V);
    dsv4_target_probs(logits, V, cfg, s->p.data(), s->idx);
    return dsv4_sample(s->p.data(), V, &ctx->rng);
}

dsv4_status dsv4_spec_round(dsv4_context * ctx, dsv4_spec_state * s, const dsv4_sampler_cfg & cfg, int32_t anchor,
                            int32_t gamma, bool inject, int32_t * out, int32_t * n_out, int32_t * n_drafted) {
    const int64_t V = ctx->model->hp.n_vocab;
    const int32_t start = ctx->n_past;
    const bool greedy = cfg.temperature <= 0.0f;
    if (gamma < 0 || gamma > s->gamma_max || (gamma > 0 && !ctx->draft)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "spec step: gamma %d outside [0, %d] (or no draft)", gamma, s->gamma_max);
    }
    if (inject && s->feats.empty()) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "spec step: no feature buffer");
    dsv4_status st;

    // 1. Draft: block pass at p = start - 1 ([anchor, noise...] at start .. start + gamma - 1), then the
    //    Markov chain left to right: ℓ_k = U_k + W2 W1[prev_k] (prev_1 = anchor), x_k = argmax ℓ_k at
    //    T = 0, else x_k ~ q_k = softmax(ℓ_k / T) (unfiltered: q is what x_k is drawn from). Adaptive
    //    length: before drawing x_k, stop when sigmoid(c_k) < threshold. c_k = conf [x_post_k ; W1[prev_k]]
    //    depends only on x_1..x_{k-1}, never on x_k, so the cut keeps verification exact (dspark.md §3.1).
    double t0 = now_s();
    int32_t * x = s->drafts.data();
    int32_t n_draft = 0;
    if (gamma > 0) {
        dsv4_draft * dr = ctx->draft;
        const bool adaptive = cfg.confidence_threshold > 0.0f;
        // sigmoid(c) >= t  <=>  c >= log(t / (1 - t))
        const double c_min = adaptive ? log((double) cfg.confidence_threshold / (1.0 - cfg.confidence_threshold)) : 0.0;
        if ((st = dsv4_draft_block(dr, anchor, start - 1, gamma, s->base.data(), s->x_post.data())) != DSV4_OK) return st;
        int32_t prev = anchor;
        for (int32_t k = 0; k < gamma; k++) {
            float conf = 0.0f;
            st = dsv4_draft_heads(dr, s->base.data() + (int64_t) k * V, s->x_post.data() + (int64_t) k * ctx->model->hp.n_embd,
                                  prev, nullptr, 1, s->row.data(), adaptive ? &conf : nullptr);
            if (st != DSV4_OK) return st;
            if (adaptive && (double) conf < c_min) break;
            if (greedy) {
                x[k] = dsv4_argmax(s->row.data(), V);
            } else {
                float * qk = s->q.data() + (int64_t) k * V;
                dsv4_softmax(s->row.data(), V, cfg.temperature, qk);
                x[k] = dsv4_sample(qk, V, &ctx->rng);
            }
            prev = x[k];
            n_draft = k + 1;
        }
    }
    gamma = n_draft;
    double t1 = now_s();
    s->draft_s += t1 - t0;

    // 2. Verify [anchor, x_1..x_gamma] at start .. start + gamma in one target decode.
    std::vector<int32_t> toks((size_t) gamma + 1), rows((size_t) gamma + 1);
    toks[0] = anchor;
    for (int32_t k = 0; k < gamma; k++) toks[(size_t) k + 1] = x[k];
    for (int32_t k = 0; k <= gamma; k++) rows[(size_t) k] = k;
    st = dsv4_decode(ctx, toks.data(), gamma + 1, start, rows.data(), gamma + 1, s->logits.data(),
                     inject ? s->feats.data() : nullptr);
    if (st != DSV4_OK) return st;

    // 3. Accept.
    int32_t n = 0, y = -1;
    if (greedy) {
        while (n < gamma && x[n] == dsv4_argmax(s->logits.data() + (int64_t) n * V, V)) n++;
        y = dsv4_argmax(s->logits.data() + (int64_t) n * V, V);
    } else {
        float * p = s->p.data();
        for (; n < gamma; n++) {
            dsv4_target_probs(s->logits.data() + (int64_t) n * V, V, cfg, p, s->idx);
            const float * qk = s->q.data() + (int64_t) n * V;
            const double px = p[x[n]], qx = std::max((double) qk[x[n]], 1e-8);
            const double u = dsv4_rng_uniform(&ctx->rng);
            if (u < std::min(1.0, px / qx)) continue;
            // Rejected: y ~ norm(max(0, p - q)), or p when the residual has no mass.
            double mass = 0.0;
            for (int64_t v = 0; v < V; v++) {
                const float r = std::max(0.0f, p[v] - qk[v]);
                s->row[(size_t) v] = r;
                mass += r;
            }
            y = dsv4_sample(mass > 1e-8 ? s->row.data() : p, V, &ctx->rng);
            break;
        }
        if (n == gamma) {
            dsv4_target_probs(s->logits.data() + (int64_t) gamma * V, V, cfg, p, s->idx);
            y = dsv4_sample(p, V, &ctx->rng);
        }
    }

    // 4. Commit: keep [anchor, x_1..x_n] (start .. start + n), inject their features.
    if (n < gamma && (st = dsv4_context_truncate(ctx, start + n + 1)) != DSV4_OK) return st;
    if (inject && (st = dsv4_draft_inject(ctx->draft, s->feats.data(), n + 1, start)) != DSV4_OK) return st;
    for (int32_t k = 0; k < n; k++) out[k] = x[k];
    out[n] = y;
    *n_out = n + 1;
    *n_drafted = gamma;
    s->verify_s += now_s() - t1;
    return DSV4_OK;
}

extern "C" dsv4_generate_params dsv4_generate_default_params(void) {
    dsv4_generate_params p;
    p.max_tokens = 256;
    p.temperature = 0.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.seed = 0;
    p.speculative = true;
    p.draft_max = 0;
    p.confidence_threshold = 0.0f;
    p.ignore_eos = false;
    return p;
}

namespace {

// Checks shared by dsv4_spec_begin / dsv4_spec_step / dsv4_generate (`fn` names the caller).
dsv4_status check_params(const dsv4_context * ctx, const dsv4_generate_params & gp, const char * fn) {
    if (!(gp.temperature >= 0.0f) || !isfinite(gp.temperature)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: temperature must be finite and >= 0", fn);
    }
    if (!(gp.top_p > 0.0f)) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: top_p must be > 0", fn);
    if (gp.speculative && !ctx->draft) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: speculative decoding needs the DSpark draft, but this "
                              "context's model has none (load a file with a draft, with load_draft, or pass "
                              "speculative = false)", fn);
    }
    const float thr = gp.confidence_threshold;
    if (!(thr < 1.0f) || thr != thr) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: confidence_threshold %g must be < 1 (<= 0: fixed draft length)",
                              fn, (double) thr);
    }
    if (gp.speculative && thr > 0.0f && !ctx->model->conf_proj.data) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: confidence_threshold needs the draft's confidence head, and this "
                              "model's draft has none (use a fixed draft length)", fn);
    }
    return DSV4_OK;
}

dsv4_sampler_cfg sampler_cfg(const dsv4_generate_params & gp) {
    return {gp.temperature, gp.top_k, gp.top_p, gp.speculative ? std::max(gp.confidence_threshold, 0.0f) : 0.0f};
}

// The largest block this context drafts: the trained block size, the draft scratch, the stats
// array and the rows a truncation can roll back (a round drops at most gamma rows).
int32_t gamma_limit(const dsv4_context * ctx) {
    if (!ctx->draft) return 0;
    int32_t g = std::min(ctx->model->dspark.block_size, ctx->draft->max_gamma);
    g = std::min(std::min(g, (int32_t) DSV4_MAX_DRAFT), (int32_t) DSV4_KV_MAX_ROLLBACK);
    return std::max(g, 0);
}

// The context's loop scratch, made on first use (sized for gamma_limit; features with a draft).
dsv4_status spec_state(dsv4_context * ctx, dsv4_spec_state ** out) {
    if (!ctx->spec) {
        dsv4_spec_state * s = new (std::nothrow) dsv4_spec_state();
        if (!s) return dsv4_set_error(DSV4_ERR_NO_MEMORY, "speculative loop: out of memory");
        try {
            dsv4_spec_state_init(s, ctx, gamma_limit(ctx), ctx->draft != nullptr);
        } catch (const std::bad_alloc &) {
            delete s;
            return dsv4_set_error(DSV4_ERR_NO_MEMORY, "speculative loop: out of memory (scratch)");
        }
        ctx->spec = s;
    }
    *out = ctx->spec;
    return DSV4_OK;
}

dsv4_status spec_begin(dsv4_context * ctx, const int32_t * prompt, int32_t n_prompt, const dsv4_generate_params & gp,
                       int32_t * first, const char * fn) {
    dsv4_status st = check_params(ctx, gp, fn);
    if (st != DSV4_OK) return st;
    if (!prompt || n_prompt <= 0) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: empty prompt", fn);
    if (!first) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: NULL output", fn);
    if (n_prompt > ctx->params.n_ctx) {
        return dsv4_set_error(DSV4_ERR_CONTEXT_FULL, "%s: the prompt of %d tokens does not fit n_ctx = %d", fn, n_prompt,
                              ctx->params.n_ctx);
    }
    dsv4_spec_state * s = nullptr;
    if ((st = spec_state(ctx, &s)) != DSV4_OK) return st;
    dsv4_rng_seed(&ctx->rng, gp.seed);
    if ((st = dsv4_context_truncate(ctx, 0)) != DSV4_OK) return st;
    // The head of the prompt without outputs, the last <= W rows with features (into the rings) and
    // the logits of the last row. The same split for plain and speculative runs.
    const int32_t tail = ctx->draft ? std::min(n_prompt, ctx->draft->W) : n_prompt;
    if (n_prompt > tail && (st = dsv4_decode(ctx, prompt, n_prompt - tail, 0, nullptr, 0, nullptr, nullptr)) != DSV4_OK) {
        return st;
    }
    std::vector<float> tail_feats(gp.speculative ? (size_t) ((int64_t) tail * n_feat_of(ctx)) : 0);
    const int32_t last = tail - 1;
    st = dsv4_decode(ctx, prompt + (n_prompt - tail), tail, n_prompt - tail, &last, 1, s->logits.data(),
                     gp.speculative ? tail_feats.data() : nullptr);
    if (st != DSV4_OK) return st;
    if (gp.speculative && (st = dsv4_draft_inject(ctx->draft, tail_feats.data(), tail, n_prompt - tail)) != DSV4_OK) {
        return st;
    }
    *first = dsv4_sample_logits(ctx, s->logits.data(), sampler_cfg(gp), s);
    return DSV4_OK;
}

dsv4_status spec_step(dsv4_context * ctx, int32_t anchor, const dsv4_generate_params & gp, int32_t * out_tokens,
                      int32_t max_out, dsv4_spec_result * res, const char * fn) {
    dsv4_status st = check_params(ctx, gp, fn);
    if (st != DSV4_OK) return st;
    if (!out_tokens || max_out <= 0 || !res) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: need out_tokens with max_out >= 1 and a result", fn);
    }
    if (anchor < 0 || anchor >= ctx->model->hp.n_vocab) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: anchor %d is not a token id (n_vocab = %d)", fn, anchor,
                              ctx->model->hp.n_vocab);
    }
    const int32_t start = ctx->n_past;
    if (start >= ctx->params.n_ctx) {
        return dsv4_set_error(DSV4_ERR_CONTEXT_FULL, "%s: the context holds n_ctx = %d positions", fn, ctx->params.n_ctx);
    }
    if (gp.speculative && (start == 0 || dsv4_draft_last_pos(ctx->draft) != start - 1)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: the draft rings hold positions up to %d but the context holds "
                              "%d: a speculative step continues dsv4_spec_begin / dsv4_spec_step (plain decodes and "
                              "truncations do not feed the draft)", fn, dsv4_draft_last_pos(ctx->draft), start);
    }
    dsv4_spec_state * s = nullptr;
    if ((st = spec_state(ctx, &s)) != DSV4_OK) return st;
    // Drafts: the requested length under the trained one, no more than the positions left after the
    // anchor's, and no more than max_out - 1 (the residual/bonus token takes the last slot).
    int32_t g = 0;
    if (gp.speculative) {
        g = gamma_limit(ctx);
        if (gp.draft_max > 0) g = std::min(g, gp.draft_max);
        g = std::max(0, std::min(std::min(g, ctx->params.n_ctx - 1 - start), max_out - 1));
    }
    const double d0 = s->draft_s, v0 = s->verify_s;
    int32_t n_out = 0, n_drafted = 0;
    st = dsv4_spec_round(ctx, s, sampler_cfg(gp), anchor, g, gp.speculative, out_tokens, &n_out, &n_drafted);
    if (st != DSV4_OK) return st;
    res->n_tokens = n_out;
    res->n_drafted = n_drafted;
    res->draft_s = s->draft_s - d0;
    res->verify_s = s->verify_s - v0;
    return DSV4_OK;
}

template <typename F>
dsv4_status guarded(F && f) {
    try {
        return f();
    } catch (const std::bad_alloc &) {
        return dsv4_set_error(DSV4_ERR_NO_MEMORY, "speculative loop: out of memory");
    }
}

dsv4_status generate(dsv4_context * ctx, const int32_t * prompt, int32_t n_prompt, const dsv4_generate_params & gp,
                     int32_t * out_tokens, int32_t max_out, int32_t * n_out, dsv4_generate_stats & stats,
                     dsv4_token_callback cb, void * user_data) {
    const double t_start = now_s();
    const dsv4_model * m = ctx->model;
    const int32_t n_ctx = ctx->params.n_ctx;
    if (gp.max_tokens < 0) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_generate: max_tokens %d < 0", gp.max_tokens);
    if (max_out < 0 || (max_out > 0 && !out_tokens)) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_generate: max_out %d needs out_tokens", max_out);
    }
    dsv4_status st = check_params(ctx, gp, "dsv4_generate");
    if (st != DSV4_OK) return st;
    if (!prompt || n_prompt <= 0) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_generate: empty prompt");
    if (n_prompt > n_ctx) {
        return dsv4_set_error(DSV4_ERR_CONTEXT_FULL, "dsv4_generate: the prompt of %d tokens does not fit n_ctx = %d",
                              n_prompt, n_ctx);
    }
    const int32_t eos = gp.ignore_eos ? -1 : m->hp.eos_id;
    stats.n_prompt = n_prompt;

    int32_t produced = 0;
    bool stop = false;
    auto emit = [&](int32_t tok) -> dsv4_status {
        if (produced < max_out) out_tokens[produced] = tok;
        produced++;
        stats.n_generated = produced;
        *n_out = std::min(produced, max_out);
        if (cb && !cb(tok, user_data)) {
            stats.stop_reason = DSV4_STOP_INTERRUPTED;
            return dsv4_set_error(DSV4_ERR_INTERRUPTED, "dsv4_generate: stopped by the token callback after %d tokens",
                                  produced);
        }
        if (tok == eos) {
            stats.stop_reason = DSV4_STOP_EOS;
            stop = true;
        } else if (produced >= gp.max_tokens) {
            stats.stop_reason = DSV4_STOP_MAX_TOKENS;
            stop = true;
        }
        return DSV4_OK;
    };
    if (gp.max_tokens == 0) {
        stats.stop_reason = DSV4_STOP_MAX_TOKENS;
        return DSV4_OK;
    }

    int32_t anchor = -1;
    if ((st = spec_begin(ctx, prompt, n_prompt, gp, &anchor, "dsv4_generate")) != DSV4_OK) return st;
    stats.prefill_s = now_s() - t_start;
    if ((st = emit(anchor)) != DSV4_OK) return st;

    int32_t round_out[DSV4_MAX_DRAFT + 1];
    while (!stop) {
        if (ctx->n_past >= n_ctx) {
            stats.stop_reason = DSV4_STOP_CONTEXT_FULL;
            break;
        }
        // No more drafts than tokens still wanted beyond the residual/bonus one.
        const int32_t want = std::min(gp.max_tokens - produced, (int32_t) DSV4_MAX_DRAFT + 1);
        dsv4_spec_result r{};  // filled by spec_step on success (GCC cannot see that)
        if ((st = spec_step(ctx, anchor, gp, round_out, want, &r, "dsv4_generate")) != DSV4_OK) return st;
        stats.rounds++;
        stats.draft_s += r.draft_s;
        stats.verify_s += r.verify_s;
        stats.drafted += r.n_drafted;
        stats.accepted += r.n_tokens - 1;
        for (int32_t k = 0; k < r.n_drafted; k++) stats.verified_at[k]++;
        for (int32_t k = 0; k < r.n_tokens - 1; k++) stats.accepted_at[k]++;
        for (int32_t k = 0; k < r.n_tokens && !stop; k++) {
            if ((st = emit(round_out[k])) != DSV4_OK) return st;
        }
        anchor = round_out[r.n_tokens - 1];
    }
    return DSV4_OK;
}

}  // namespace

void dsv4_spec_state_free(dsv4_spec_state * s) {
    delete s;
}

extern "C" dsv4_status dsv4_spec_begin(dsv4_context * ctx, const int32_t * prompt, int32_t n_prompt,
                                       const dsv4_generate_params * params, int32_t * first_token) {
    if (!ctx) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_spec_begin: ctx is NULL");
    const dsv4_generate_params gp = params ? *params : dsv4_generate_default_params();
    return guarded([&] { return spec_begin(ctx, prompt, n_prompt, gp, first_token, "dsv4_spec_begin"); });
}

extern "C" dsv4_status dsv4_spec_step(dsv4_context * ctx, int32_t anchor, const dsv4_generate_params * params,
                                      int32_t * out_tokens, int32_t max_out, dsv4_spec_result * result) {
    if (!ctx) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_spec_step: ctx is NULL");
    const dsv4_generate_params gp = params ? *params : dsv4_generate_default_params();
    return guarded([&] { return spec_step(ctx, anchor, gp, out_tokens, max_out, result, "dsv4_spec_step"); });
}

extern "C" dsv4_status dsv4_generate(dsv4_context * ctx, const int32_t * prompt, int32_t n_prompt,
                                     const dsv4_generate_params * params, int32_t * out_tokens, int32_t max_out,
                                     int32_t * n_out, dsv4_generate_stats * stats, dsv4_token_callback token_callback,
                                     void * user_data) {
    if (!ctx) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_generate: ctx is NULL");
    const dsv4_generate_params gp = params ? *params : dsv4_generate_default_params();
    dsv4_generate_stats local;
    memset(&local, 0, sizeof(local));
    int32_t n_local = 0;
    const double t0 = now_s();
    const dsv4_status st = guarded([&] {
        return generate(ctx, prompt, n_prompt, gp, out_tokens, max_out, &n_local, local, token_callback, user_data);
    });
    local.tau = local.rounds > 0 ? (double) local.accepted / local.rounds + 1.0 : 1.0;
    local.total_s = now_s() - t0;
    if (n_out) *n_out = n_local;
    if (stats) *stats = local;
    return st;
}
