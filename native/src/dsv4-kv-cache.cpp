// Per-layer caches: allocation, truncation, logical-state export (see dsv4-kv-cache.h).
#include "dsv4-kv-cache.h"

#include "dsv4-impl.h"

#include <stdlib.h>
#include <string.h>

namespace {

size_t align64(size_t n) {
    return (n + 63) & ~(size_t) 63;
}

// First position whose compressor inputs the partial state at n_past still needs: the start of
// the current block, and for the overlapping compressor the start of the previous one.
int64_t state_first_pos(int32_t ratio, int32_t coff, int64_t n_past) {
    int64_t first = (n_past / ratio - (coff - 1)) * ratio;
    return first < 0 ? 0 : first;
}

}  // namespace

int32_t dsv4_kv_cache_n_store(const dsv4_kv_cache * c, int32_t ratio) {
    if (ratio <= 0) {
        return 0;
    }
    const int64_t coff = ratio == 4 ? 2 : 1;
    const int64_t n = coff * ratio + c->n_rollback;
    return (int32_t) (n < c->n_ctx ? n : c->n_ctx);
}

dsv4_status dsv4_kv_cache_init(dsv4_kv_cache * c, const dsv4_model * model, int32_t n_ctx, int32_t n_rollback) {
    const dsv4_hparams & hp = model->hp;
    c->n_ctx = n_ctx;
    c->head_dim = hp.head_dim;
    c->index_head_dim = hp.indexer_head_dim;
    c->window = hp.window;
    c->n_rollback = n_rollback;
    c->n_ring = (int32_t) ((int64_t) hp.window + n_rollback < n_ctx ? hp.window + n_rollback : n_ctx);
    c->n_hi = 0;
    c->layers.assign((size_t) hp.n_layer, dsv4_layer_cache());

    // Two passes: offsets (relative to a null base), then one zeroed allocation.
    const size_t hd = (size_t) hp.head_dim, di = (size_t) hp.indexer_head_dim;
    size_t off = 0;
    std::vector<size_t> offs;
    auto take = [&](size_t n_floats) {
        offs.push_back(off);
        off += align64(n_floats * sizeof(float));
    };
    double per_token = 0;
    for (int32_t il = 0; il < hp.n_layer; il++) {
        dsv4_layer_cache & l = c->layers[(size_t) il];
        l.ratio = hp.compress_ratios[(size_t) il];
        l.coff = l.ratio == 4 ? 2 : 1;
        take((size_t) c->n_ring * hd);
        if (l.ratio > 0) {
            l.n_comp = n_ctx / l.ratio;
            const size_t n_store = (size_t) dsv4_kv_cache_n_store(c, l.ratio);
            take((size_t) l.n_comp * hd);
            take(n_store * (size_t) l.coff * hd);
            take(n_store * (size_t) l.coff * hd);
            per_token += (double) (hd * sizeof(float)) / l.ratio;
            if (l.ratio == 4) {
                take((size_t) l.n_comp * di);
                take(n_store * 2 * di);
                take(n_store * 2 * di);
                per_token += (double) (di * sizeof(float)) / 4;
            }
        }
    }
    // calloc: large blocks come zeroed from fresh pages, so capacity not yet used costs no RSS.
    void * mem = calloc(1, off + 64);
    if (!mem) {
        return dsv4_set_error(DSV4_ERR_NO_MEMORY, "dsv4_context_init: cannot allocate %.1f MiB of KV cache for n_ctx = %d",
                              (double) off / (1 << 20), n_ctx);
    }
    c->mem = mem;
    c->bytes = off;
    c->bytes_per_token = per_token;
    uint8_t * base = (uint8_t *) (((uintptr_t) mem + 63) & ~(uintptr_t) 63);
    size_t k = 0;
    auto next = [&]() { return (float *) (base + offs[k++]); };
    for (int32_t il = 0; il < hp.n_layer; il++) {
        dsv4_layer_cache & l = c->layers[(size_t) il];
        l.ring = next();
        if (l.ratio > 0) {
            l.comp = next();
            l.comp_kv = next();
            l.comp_sc = next();
            if (l.ratio == 4) {
                l.idx_keys = next();
                l.idx_kv = next();
                l.idx_sc = next();
            }
        }
    }
    return DSV4_OK;
}

void dsv4_kv_cache_free(dsv4_kv_cache * c) {
    free(c->mem);
    c->mem = nullptr;
    c->layers.clear();
    c->bytes = 0;
}

int32_t dsv4_kv_cache_min_past(const dsv4_kv_cache * c) {
    // A slot of position p is overwritten only by p + n_ring (p + n_store) and n_ring >= W + R,
    // n_store >= coff*r + R (or n_ctx: no wrap at all), so every position >= n_hi - R still has
    // its window and its compressor blocks.
    const int32_t m = c->n_hi - c->n_rollback;
    return m > 0 ? m : 0;
}

dsv4_status dsv4_kv_cache_truncate(dsv4_kv_cache * c, int32_t n_old, int32_t n_new) {
    if (n_new < 0 || n_new > n_old) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_context_truncate: n_past %d is outside [0, %d]", n_new, n_old);
    }
    const int32_t lo = dsv4_kv_cache_min_past(c);
    if (n_new < lo) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG,
                              "dsv4_context_truncate: n_past %d is more than %d rows back from the furthest position written (%d); "
                              "the smallest n_past this context can return to is %d",
                              n_new, c->n_rollback, c->n_hi, lo);
    }
    dsv4_kv_cache_drop(c, n_old, n_new);
    return DSV4_OK;
}

void dsv4_kv_cache_drop(dsv4_kv_cache * c, int32_t n_old, int32_t n_new) {
    const size_t hd = (size_t) c->head_dim, di = (size_t) c->index_head_dim;
    for (dsv4_layer_cache & l : c->layers) {
        if (l.ratio == 0) {
            continue;
        }
        // Entries finished by the dropped rows; entries < n_new / r depend on rows < n_new only.
        const int32_t keep = n_new / l.ratio;
        const int32_t had = n_old / l.ratio;
        if (had > keep) {
            memset(l.comp + (size_t) keep * hd, 0, (size_t) (had - keep) * hd * sizeof(float));
            if (l.idx_keys) {
                memset(l.idx_keys + (size_t) keep * di, 0, (size_t) (had - keep) * di * sizeof(float));
            }
        }
    }
}

void dsv4_kv_cache_reset(dsv4_kv_cache * c, int32_t n_old) {
    // Ring and store slots need no clearing: a slot is read only for positions written since.
    dsv4_kv_cache_drop(c, n_old > c->n_hi ? n_old : c->n_hi, 0);
    c->n_hi = 0;
}

uint64_t dsv4_hash(uint64_t h, const void * data, size_t n) {
    const uint8_t * p = (const uint8_t *) data;
    const uint64_t prime = 0x100000001b3ULL;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * prime;
    }
    for (; i < n; i++) h = (h ^ p[i]) * prime;
    return h;
}

uint64_t dsv4_kv_cache_digest(const dsv4_kv_cache * c, int32_t il, int32_t n_past) {
    const dsv4_layer_cache & l = c->layers[(size_t) il];
    const size_t hd = (size_t) c->head_dim, di = (size_t) c->index_head_dim;
    const int32_t R = c->n_rollback;
    uint64_t h = DSV4_HASH_INIT;
    const int32_t head[2] = {n_past, l.ratio};
    h = dsv4_hash(h, head, sizeof(head));
    // Rows of positions [lo, n_past) of a ring of n_slots slots (position t in slot t mod n_slots).
    auto rows = [&](const float * src, int32_t n_slots, size_t width) {
        int64_t lo = n_slots < c->n_ctx ? (int64_t) n_past + R - n_slots : 0;
        for (int64_t t = lo < 0 ? 0 : lo; t < n_past; t++) {
            h = dsv4_hash(h, src + (size_t) (t % n_slots) * width, width * sizeof(float));
        }
    };
    rows(l.ring, c->n_ring, hd);
    if (l.ratio == 0) return h;
    const int32_t n_store = dsv4_kv_cache_n_store(c, l.ratio);
    h = dsv4_hash(h, l.comp, (size_t) l.n_comp * hd * sizeof(float));
    rows(l.comp_kv, n_store, (size_t) l.coff * hd);
    rows(l.comp_sc, n_store, (size_t) l.coff * hd);
    if (l.ratio == 4) {
        h = dsv4_hash(h, l.idx_keys, (size_t) l.n_comp * di * sizeof(float));
        rows(l.idx_kv, n_store, 2 * di);
        rows(l.idx_sc, n_store, 2 * di);
    }
    return h;
}

dsv4_status dsv4_kv_cache_layer_state(const dsv4_kv_cache * c, int32_t il, int32_t n_past, dsv4_layer_state * out) {
    if (il < 0 || il >= (int32_t) c->layers.size()) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "cache state: layer %d outside [0, %zu)", il, c->layers.size());
    }
    const dsv4_layer_cache & l = c->layers[(size_t) il];
    const size_t hd = (size_t) c->head_dim, di = (size_t) c->index_head_dim;
    const int32_t nw = n_past < c->window ? n_past : c->window;
    out->window.resize((size_t) nw * hd);
    for (int32_t i = 0; i < nw; i++) {
        memcpy(&out->window[(size_t) i * hd], dsv4_kv_ring_row(c, &l, n_past - nw + i), hd * sizeof(float));
    }
    out->comp.clear();
    out->comp_kv.clear();
    out->comp_sc.clear();
    out->idx_keys.clear();
    out->idx_kv.clear();
    out->idx_sc.clear();
    out->first_state_pos = 0;
    if (l.ratio == 0) {
        return DSV4_OK;
    }
    const int32_t n_entries = n_past / l.ratio;
    out->comp.assign(l.comp, l.comp + (size_t) n_entries * hd);
    const int64_t first = state_first_pos(l.ratio, l.coff, n_past);
    const int32_t n_store = dsv4_kv_cache_n_store(c, l.ratio);
    out->first_state_pos = (int32_t) first;
    auto rows = [&](const float * src, size_t width, std::vector<float> & dst) {
        dst.resize((size_t) (n_past - first) * width);
        for (int64_t t = first; t < n_past; t++) {
            memcpy(&dst[(size_t) (t - first) * width], src + (size_t) (t % n_store) * width, width * sizeof(float));
        }
    };
    rows(l.comp_kv, (size_t) l.coff * hd, out->comp_kv);
    rows(l.comp_sc, (size_t) l.coff * hd, out->comp_sc);
    if (l.ratio == 4) {
        out->idx_keys.assign(l.idx_keys, l.idx_keys + (size_t) n_entries * di);
        rows(l.idx_kv, 2 * di, out->idx_kv);
        rows(l.idx_sc, 2 * di, out->idx_sc);
    }
    return DSV4_OK;
}
