// Context C API (dsv4.h): creation (thread pool, caches and scratch sized once from n_ctx and
// n_batch), decode with up-front validation and chunking, truncation, memory report.
#include "dsv4-context.h"

#include "dsv4-impl.h"

#include <unistd.h>

#include <algorithm>
#include <new>
#include <vector>

namespace {

int online_cores() {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int) n : 1;
}

void destroy(dsv4_context * ctx) {
    if (!ctx) return;
    dsv4_spec_state_free(ctx->spec);
    dsv4_draft_free(ctx->draft);
    dsv4_forward_free(&ctx->fwd);
    dsv4_kv_cache_free(&ctx->cache);
    dsv4_threadpool_free(ctx->pool);
    delete ctx;
}

dsv4_status init(dsv4_context * ctx, dsv4_model * model, const dsv4_context_params & p) {
    const dsv4_hparams & hp = model->hp;
    if (hp.rope_dim > 256 || hp.hc_mult > 64) {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "dsv4_context_init: rope dims %d / hc copies %d exceed what the CPU "
                              "forward supports (256 / 64)", hp.rope_dim, hp.hc_mult);
    }
    if ((int64_t) hp.n_head * hp.head_dim % hp.o_groups != 0) {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "dsv4_context_init: heads do not split into %d output groups", hp.o_groups);
    }
    ctx->model = model;
    ctx->params = p;
    dsv4_rng_seed(&ctx->rng, p.seed);
    ctx->pool = dsv4_threadpool_init(p.n_threads);
    if (!ctx->pool) return DSV4_ERR_NO_MEMORY;  // the pool set the message
    dsv4_status st = dsv4_kv_cache_init(&ctx->cache, model, p.n_ctx, DSV4_KV_MAX_ROLLBACK);
    if (st != DSV4_OK) return st;
    ctx->fwd.float_activations = p.float_activations;
    st = dsv4_forward_init(&ctx->fwd, model, ctx->pool, p.n_ctx, p.n_batch);
    if (st != DSV4_OK) return st;
    return dsv4_draft_init(&ctx->draft, model, &ctx->fwd);
}

}  // namespace

extern "C" dsv4_context_params dsv4_context_default_params(void) {
    dsv4_context_params p;
    p.n_ctx = 4096;
    p.n_threads = 0;
    p.n_batch = 64;
    p.seed = 0;
    p.float_activations = false;
    return p;
}

extern "C" dsv4_status dsv4_context_init(dsv4_model * model, const dsv4_context_params * params, dsv4_context ** out) {
    if (!model || !out) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_init: NULL model or out");
    *out = nullptr;
    dsv4_context_params p = params ? *params : dsv4_context_default_params();
    if (p.n_ctx <= 0) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_init: n_ctx must be positive, got %d", p.n_ctx);
    }
    if (p.n_batch <= 0 || p.n_batch > 65536) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_init: n_batch must be in [1, 65536], got %d", p.n_batch);
    }
    if (p.n_threads <= 0) p.n_threads = online_cores();
    if (p.n_threads > 1024) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_init: n_threads %d is more than 1024", p.n_threads);
    }
    p.n_batch = std::min(p.n_batch, p.n_ctx);
    dsv4_context * ctx = new (std::nothrow) dsv4_context();
    if (!ctx) return dsv4_set_error(DSV4_ERR_NO_MEMORY, "dsv4_context_init: out of memory");
    dsv4_status st;
    try {
        st = init(ctx, model, p);
    } catch (const std::bad_alloc &) {
        st = dsv4_set_error(DSV4_ERR_NO_MEMORY, "dsv4_context_init: out of memory");
    }
    if (st != DSV4_OK) {
        destroy(ctx);
        return st;
    }
    *out = ctx;
    return DSV4_OK;
}

extern "C" void dsv4_context_free(dsv4_context * ctx) {
    destroy(ctx);
}

extern "C" int32_t dsv4_context_n_past(const dsv4_context * ctx) {
    return ctx ? ctx->n_past : 0;
}

extern "C" dsv4_status dsv4_decode(dsv4_context * ctx, const int32_t * tokens, int32_t n_tokens, int32_t pos,
                                   const int32_t * logit_rows, int32_t n_logit_rows, float * logits, float * features) {
    if (!ctx) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_decode: ctx is NULL");
    const dsv4_hparams & hp = ctx->model->hp;
    // Everything is checked before any compute, so a rejected call leaves the context untouched.
    if (n_tokens <= 0 || !tokens) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_decode: need at least one token (n_tokens = %d%s)", n_tokens,
                              tokens ? "" : ", tokens = NULL");
    }
    if (pos != ctx->n_past) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG,
                              "dsv4_decode: pos %d does not continue the sequence: the context holds %d positions, so "
                              "the next row runs at pos %d (truncate first to rewrite earlier positions)",
                              pos, ctx->n_past, ctx->n_past);
    }
    if ((int64_t) pos + n_tokens > ctx->params.n_ctx) {
        return dsv4_set_error(DSV4_ERR_CONTEXT_FULL,
                              "dsv4_decode: %d tokens at pos %d need positions up to %lld, beyond n_ctx = %d",
                              n_tokens, pos, (long long) pos + n_tokens - 1, ctx->params.n_ctx);
    }
    for (int32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_decode: tokens[%d] = %d is not a token id (n_vocab = %d)",
                                  i, tokens[i], hp.n_vocab);
        }
    }
    if (n_logit_rows < 0 || (n_logit_rows > 0 && (!logit_rows || !logits))) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_decode: n_logit_rows = %d needs logit_rows and logits", n_logit_rows);
    }
    for (int32_t i = 0; i < n_logit_rows; i++) {
        if (logit_rows[i] < 0 || logit_rows[i] >= n_tokens) {
            return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_decode: logit_rows[%d] = %d is not a row of the batch [0, %d)",
                                  i, logit_rows[i], n_tokens);
        }
    }
    if (features && ctx->model->dspark.target_layer_ids.empty()) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_decode: features requested but the model has no DSpark taps "
                              "(load it with its draft)");
    }
    const int64_t n_feat = (int64_t) ctx->model->dspark.target_layer_ids.size() * hp.n_embd;
    try {
        // Requests sorted by batch row, then output row: each chunk takes a contiguous range.
        std::vector<dsv4_logit_req> req((size_t) n_logit_rows);
        for (int32_t i = 0; i < n_logit_rows; i++) req[(size_t) i] = {logit_rows[i], i};
        std::sort(req.begin(), req.end(), [](const dsv4_logit_req & a, const dsv4_logit_req & b) {
            return a.row != b.row ? a.row < b.row : a.out < b.out;
        });
        size_t r = 0;
        const int32_t nb = ctx->fwd.n_batch;
        for (int32_t c0 = 0; c0 < n_tokens; c0 += nb) {
            const int32_t n = std::min(nb, n_tokens - c0);
            const size_t r0 = r;
            while (r < req.size() && req[r].row < c0 + n) {
                req[r].row -= c0;
                r++;
            }
            // Within the chunk, order by output row so runs of consecutive outputs share one head matmul.
            std::sort(req.begin() + (ptrdiff_t) r0, req.begin() + (ptrdiff_t) r,
                      [](const dsv4_logit_req & a, const dsv4_logit_req & b) { return a.out < b.out; });
            dsv4_status st = dsv4_forward_chunk(&ctx->fwd, &ctx->cache, tokens + c0, n, ctx->n_past,
                                                req.data() + r0, (int32_t) (r - r0), logits,
                                                features ? features + (int64_t) c0 * n_feat : nullptr);
            if (st != DSV4_OK) {
                // Drop the entries the failed chunk finished; n_past stays at the chunk start. (Only
                // an internal error gets here; its ring writes are harmless for chunks <= R rows.)
                dsv4_kv_cache_drop(&ctx->cache, ctx->n_past + n, ctx->n_past);
                return st;
            }
            ctx->n_past += n;
        }
    } catch (const std::bad_alloc &) {
        return dsv4_set_error(DSV4_ERR_NO_MEMORY, "dsv4_decode: out of memory");
    }
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_context_truncate(dsv4_context * ctx, int32_t n_past) {
    if (!ctx) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_truncate: ctx is NULL");
    if (n_past < 0 || n_past > ctx->n_past) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_truncate: n_past %d is outside [0, %d] (the positions held)",
                              n_past, ctx->n_past);
    }
    if (n_past == 0) {
        // A fresh sequence: always possible, whatever was written before.
        dsv4_kv_cache_reset(&ctx->cache, ctx->n_past);
        if (ctx->draft) dsv4_draft_reset(ctx->draft);
        ctx->n_past = 0;
        return DSV4_OK;
    }
    dsv4_status st = dsv4_kv_cache_truncate(&ctx->cache, ctx->n_past, n_past);
    if (st != DSV4_OK) return st;
    ctx->n_past = n_past;
    return DSV4_OK;
}

extern "C" int32_t dsv4_context_max_rollback(const dsv4_context * ctx) {
    if (!ctx) return 0;
    return ctx->n_past - std::min(ctx->n_past, dsv4_kv_cache_min_past(&ctx->cache));
}

extern "C" dsv4_status dsv4_context_memory(const dsv4_context * ctx, dsv4_memory_report * out) {
    if (!ctx || !out) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_memory: NULL argument");
    out->weight_bytes = ctx->model->weight_bytes;
    out->cache_bytes = ctx->cache.bytes;
    out->cache_bytes_per_token = (uint64_t) (ctx->cache.bytes_per_token + 0.5);
    out->scratch_bytes = ctx->fwd.bytes + ctx->fwd.owned_bytes;
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_context_state_digest(const dsv4_context * ctx, uint64_t * out, int32_t n_out) {
    if (!ctx || !out) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_state_digest: NULL argument");
    const int32_t n_layer = ctx->model->hp.n_layer;
    if (n_out < n_layer + 1) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_state_digest: needs %d slots, got %d", n_layer + 1, n_out);
    }
    for (int32_t il = 0; il < n_layer; il++) out[il] = dsv4_kv_cache_digest(&ctx->cache, il, ctx->n_past);
    out[n_layer] = ctx->draft ? dsv4_draft_digest(ctx->draft) : 0;
    return DSV4_OK;
}

dsv4_status dsv4_context_layer_state(const dsv4_context * ctx, int32_t il, dsv4_layer_state * out) {
    try {
        return dsv4_kv_cache_layer_state(&ctx->cache, il, ctx->n_past, out);
    } catch (const std::bad_alloc &) {
        return dsv4_set_error(DSV4_ERR_NO_MEMORY, "cache state: out of memory");
    }
}
