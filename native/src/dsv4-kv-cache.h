// Per-layer caches of the V4 target (v4-model.md §4.4-4.5, §9): raw window ring, compressed KV
// entries, indexer keys and the compressor partial state, all F32, sized once from n_ctx.
//
// Layout per layer (ratio r; coff = 2 for the overlapping r = 4 compressor, else 1):
//   ring        [n_ring, hd]          raw kv of position t in slot t mod n_ring, n_ring = W + R
//   comp        [n_ctx / r, hd]       compressed entry j (finished by position (j+1)r - 1)
//   comp_kv/sc  [n_store, coff*hd]    per-token compressor inputs a_t = wkv(x_t) and gate scores
//                                     g_t = wgate(x_t) + ape[t mod r], slot t mod n_store,
//                                     n_store = coff*r + R
//   idx_keys    [n_ctx / 4, Di]       indexer keys (r = 4 only), same entry numbering as comp
//   idx_kv/sc   [n_store, 2*Di]       the indexer compressor's per-token inputs (r = 4 only)
//
// Exact truncation. Instead of the reference's shifting [coff*r, coff*Dc] state (which cannot be
// rewound), the compressor keeps its per-token inputs: the state at any position n is a pure
// function of the rows of blocks n/r - coff + 1 .. n/r, so it is rebuilt by reading those rows.
// Every ring/store slot is overwritten only by a position n_ring (n_store) rows later, so after
// writing positions < n_hi every position >= n_hi - R still has its window, its current block and
// (overlap) its previous block intact. truncate(m) for m >= n_hi - R therefore only has to drop
// the compressed entries and indexer keys j >= m / r (zeroing them, so the arrays hold exactly what
// a run that never saw the dropped rows holds); slots of dropped positions are never read again
// before being rewritten.
#pragma once

#include "dsv4.h"
#include "dsv4-model.h"

#include <stddef.h>
#include <stdint.h>
#include <vector>

// Rows a context can roll back (verification of a DSpark block needs gamma + 1 <= R).
#define DSV4_KV_MAX_ROLLBACK 64

struct dsv4_layer_cache {
    int32_t ratio = 0;       // 0, 4 or 128
    int32_t coff  = 1;       // 2 for the overlapping r = 4 compressor
    int32_t n_comp = 0;      // capacity of comp / idx_keys: n_ctx / ratio
    float * ring = nullptr;  // [n_ring, hd]
    float * comp = nullptr;  // [n_comp, hd]
    float * comp_kv = nullptr, * comp_sc = nullptr;  // [n_store, coff*hd]
    float * idx_keys = nullptr;                      // [n_comp, Di]
    float * idx_kv = nullptr, * idx_sc = nullptr;    // [n_store, 2*Di]
};

struct dsv4_kv_cache {
    int32_t n_ctx = 0;
    int32_t head_dim = 0, index_head_dim = 0, window = 0;
    int32_t n_ring = 0;          // W + R (or n_ctx when smaller)
    int32_t n_rollback = 0;      // R
    int32_t n_hi = 0;            // 1 + the highest position ever written (truncation does not lower it)
    std::vector<dsv4_layer_cache> layers;  // target layers only
    void * mem = nullptr;        // one allocation for everything
    size_t bytes = 0;
    double bytes_per_token = 0;  // asymptotic growth (compressed entries + indexer keys)
};

// Store slots of a layer (0 for ratio 0).
int32_t dsv4_kv_cache_n_store(const dsv4_kv_cache * c, int32_t ratio);

dsv4_status dsv4_kv_cache_init(dsv4_kv_cache * c, const dsv4_model * model, int32_t n_ctx, int32_t n_rollback);
void        dsv4_kv_cache_free(dsv4_kv_cache * c);

// The smallest n_past truncate accepts given the rows written so far.
int32_t dsv4_kv_cache_min_past(const dsv4_kv_cache * c);

// Drops positions >= n_new (n_new <= n_old, n_new >= dsv4_kv_cache_min_past).
dsv4_status dsv4_kv_cache_truncate(dsv4_kv_cache * c, int32_t n_old, int32_t n_new);

// Zeroes the compressed entries and indexer keys finished by positions n_new .. n_old - 1,
// unchecked (truncate's second half; also the clean-up after a failed chunk).
void dsv4_kv_cache_drop(dsv4_kv_cache * c, int32_t n_old, int32_t n_new);

// Back to an empty sequence (always possible): drops every entry and forgets what was written.
void dsv4_kv_cache_reset(dsv4_kv_cache * c, int32_t n_old);

static inline float * dsv4_kv_ring_row(const dsv4_kv_cache * c, const dsv4_layer_cache * l, int64_t pos) {
    return l->ring + (pos % c->n_ring) * c->head_dim;
}

// The logical state of one layer at n_past, in position order, for tests and debugging: what a
// run that never saw dropped rows must hold identically. Everything is F32:
//   window   [min(W, n_past), hd]      raw kv of positions n_past - nw .. n_past - 1
//   comp     [n_past / r, hd]          compressed entries
//   comp_kv, comp_sc [nt, coff*hd]     compressor inputs of the partial state: the rows of the
//                                      current block (and for r = 4 the previous complete block)
//   idx_keys [n_past / 4, Di], idx_kv, idx_sc: the same for the indexer (r = 4)
struct dsv4_layer_state {
    std::vector<float> window, comp, comp_kv, comp_sc, idx_keys, idx_kv, idx_sc;
    int32_t first_state_pos = 0;  // position of the first comp_kv row
};

dsv4_status dsv4_kv_cache_layer_state(const dsv4_kv_cache * c, int32_t il, int32_t n_past, dsv4_layer_state * out);

// 64-bit digest of the bytes of layer il that any continuation from n_past can read, or a later
// truncation can return to; two runs that committed the same rows must agree on it bit for bit,
// whatever rows they ran and rolled back in between. Covered, in this order:
//   n_past, ratio;
//   ring rows of positions [lo, n_past), lo = n_past + R - n_ring (0 when the ring does not wrap):
//     the window plus the R rows a truncation may still go back over. Older slots may hold a
//     dropped row (a row at q >= n_past overwrote the slot of q - n_ring), and slots of positions
//     >= n_past hold whatever the dropped rows wrote: neither is ever read again before being
//     rewritten, so they legitimately differ and are left out;
//   every compressed entry and indexer key, the whole arrays (entries past n_past / r must be zero:
//     truncation zeroes what dropped rows finished);
//   compressor and indexer-compressor inputs of positions [n_past + R - n_store, n_past) (the
//     partial state at n_past is rebuilt from them), same reasoning as the ring.
uint64_t dsv4_kv_cache_digest(const dsv4_kv_cache * c, int32_t il, int32_t n_past);

// The hash behind the digests (FNV-1a over 64-bit words, then the byte tail): h = dsv4_hash(h, p, n).
#define DSV4_HASH_INIT 0xcbf29ce484222325ULL
uint64_t dsv4_hash(uint64_t h, const void * data, size_t n);
