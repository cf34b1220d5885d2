// Attention of one V4 layer for a chunk of rows (v4-model.md §4): projections (§4.1), the
// compressor (§4.5), the lightning indexer (§4.7), the sparse sink attention core (§4.2) over the
// window plus the selected compressed entries (§4.4, §4.8), and the grouped output (§4.3).
#include "dsv4-forward.h"

#include "dsv4-forward-ops.h"
#include "dsv4-impl.h"

#include <math.h>
#include <string.h>

#include <algorithm>

namespace {

// One compressor (§4.5): the attention's (width hd) or the indexer's (width Di, rotated).
struct compressor {
    const dsv4_weight * wkv;
    const dsv4_weight * wgate;
    const float * ape;      // [r, coff*Dc]
    const float * norm;     // [Dc]
    int32_t ratio;
    int32_t width;          // Dc
    bool rotate;            // indexer keys: Hadamard after the RoPE
    float * entries;        // cache [n_ctx / r, Dc]
    float * store_kv;       // cache [n_store, coff*Dc]
    float * store_sc;
    int32_t n_store;
    float * a, * g;         // chunk scratch [n, coff*Dc]
};

// Pooling channels per work item.
constexpr int64_t k_pool_block = 64;

// Per-token inputs (a_t, g_t with ape), then every entry the chunk finishes: the softmax over
// tokens per channel (§4.5: 8 candidates for the overlapping r = 4, r otherwise), RMSNorm, RoPE at
// the block's first position j*r, and for the indexer the Hadamard rotation. Finally the chunk's
// inputs go to the store, so later chunks (and truncation) find them by position.
dsv4_status compress(dsv4_forward * f, const compressor & c, const float * xn, int32_t n, int32_t pos0) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t d = hp.n_embd, r = c.ratio, Dc = c.width, rd = hp.rope_dim;
    const int64_t coff = r == 4 ? 2 : 1, W2 = coff * Dc;
    dsv4_status st = dsv4_fwd_matmul(f, c.wkv, xn, d, c.a, W2, n);
    if (st != DSV4_OK) return st;
    if ((st = dsv4_fwd_matmul(f, c.wgate, xn, d, c.g, W2, n)) != DSV4_OK) return st;
    // ape[t mod r] is added to the gate scores only, both halves.
    dsv4_parallel_for(f->pool, n, 8, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
            const float * ape = c.ape + ((pos0 + i) % r) * W2;
            float * g = c.g + i * W2;
            for (int64_t ch = 0; ch < W2; ch++) g[ch] += ape[ch];
        }
    });

    const int64_t j0 = pos0 / r, j1 = (pos0 + (int64_t) n) / r;  // entries finished by this chunk
    if (j1 > j0) {
        auto row_a = [&](int64_t t) {
            return t >= pos0 ? c.a + (t - pos0) * W2 : c.store_kv + (t % c.n_store) * W2;
        };
        auto row_g = [&](int64_t t) {
            return t >= pos0 ? c.g + (t - pos0) * W2 : c.store_sc + (t % c.n_store) * W2;
        };
        const int64_t n_blk = (Dc + k_pool_block - 1) / k_pool_block;
        dsv4_parallel_for(f->pool, (j1 - j0) * n_blk, 2, [&](int64_t i0, int64_t i1, int) {
            for (int64_t it = i0; it < i1; it++) {
                const int64_t j = j0 + it / n_blk;
                const int64_t c0 = (it % n_blk) * k_pool_block;
                const int64_t nc = std::min(k_pool_block, Dc - c0);
                float mx[k_pool_block], sum[k_pool_block], val[k_pool_block];
                for (int64_t q = 0; q < nc; q++) {
                    mx[q] = -INFINITY;
                    sum[q] = 0;
                    val[q] = 0;
                }
                // Candidates: (first position, channel offset) per block; overlap adds half A of
                // block j - 1 (absent for j = 0) to half B of block j.
                int64_t blk_t[2], blk_off[2], nblk = 0;
                if (coff == 2) {
                    if (j > 0) {
                        blk_t[nblk] = (j - 1) * r;
                        blk_off[nblk++] = 0;
                    }
                    blk_t[nblk] = j * r;
                    blk_off[nblk++] = Dc;
                } else {
                    blk_t[nblk] = j * r;
                    blk_off[nblk++] = 0;
                }
                for (int64_t b = 0; b < nblk; b++) {
                    for (int64_t t = blk_t[b]; t < blk_t[b] + r; t++) {
                        const float * g = row_g(t) + blk_off[b] + c0;
                        for (int64_t q = 0; q < nc; q++) mx[q] = std::max(mx[q], g[q]);
                    }
                }
                for (int64_t b = 0; b < nblk; b++) {
                    for (int64_t t = blk_t[b]; t < blk_t[b] + r; t++) {
                        const float * g = row_g(t) + blk_off[b] + c0;
                        const float * a = row_a(t) + blk_off[b] + c0;
                        for (int64_t q = 0; q < nc; q++) {
                            const float e = expf(g[q] - mx[q]);
                            sum[q] += e;
                            val[q] += e * a[q];
                        }
                    }
                }
                float * out = c.entries + j * Dc + c0;
                for (int64_t q = 0; q < nc; q++) out[q] = val[q] / sum[q];
            }
        });
        const float eps = hp.norm_eps;
        const std::vector<double> & th = f->theta[1];  // compressors exist on ratio > 0 layers only
        dsv4_parallel_for(f->pool, j1 - j0, 2, [&](int64_t i0, int64_t i1, int) {
            float cs[256];
            const int64_t half = rd / 2;
            for (int64_t it = i0; it < i1; it++) {
                const int64_t j = j0 + it;
                float * e = c.entries + j * Dc;
                const float rn = dsv4_rms_inv(e, Dc, eps);
                for (int64_t q = 0; q < Dc; q++) e[q] = e[q] * rn * c.norm[q];
                const double pos = (double) (j * r);  // the block's first position
                for (int64_t q = 0; q < half; q++) {
                    cs[q] = (float) cos(pos * th[(size_t) q]);
                    cs[half + q] = (float) sin(pos * th[(size_t) q]);
                }
                dsv4_rope_tail(e, Dc, rd, cs, false);
                if (c.rotate) dsv4_hadamard(e, Dc);
            }
        });
    }
    const int64_t first = n > c.n_store ? n - c.n_store : 0;
    for (int64_t i = first; i < n; i++) {
        const int64_t slot = (pos0 + i) % c.n_store;
        memcpy(c.store_kv + slot * W2, c.a + i * W2, (size_t) W2 * sizeof(float));
        memcpy(c.store_sc + slot * W2, c.g + i * W2, (size_t) W2 * sizeof(float));
    }
    return DSV4_OK;
}

// §4.7: indexer queries and head weights, scores of every visible entry, deterministic top-k.
// Writes the selected entry ids of row i, ascending, to f->topk[i * top_k ...], count f->n_top[i].
dsv4_status indexer_select(dsv4_forward * f, const dsv4_layer & L, const dsv4_layer_cache & lc, const float * xn,
                           const float * qr, int32_t n, int32_t pos0, const float * rope) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t d = hp.n_embd, ql = hp.q_lora_rank, Hi = hp.indexer_n_head, Di = hp.indexer_head_dim;
    const int64_t rd = hp.rope_dim, top_k = hp.indexer_top_k;
    dsv4_status st = dsv4_fwd_matmul(f, &L.idx_wq_b, qr, ql, f->qi, Hi * Di, n);
    if (st != DSV4_OK) return st;
    dsv4_parallel_for(f->pool, (int64_t) n * Hi, 4, [&](int64_t i0, int64_t i1, int) {
        for (int64_t it = i0; it < i1; it++) {
            float * qh = f->qi + it * Di;
            dsv4_rope_tail(qh, Di, rd, rope + (it / Hi) * rd, false);
            dsv4_hadamard(qh, Di);
        }
    });
    if ((st = dsv4_fwd_matmul(f, &L.idx_proj, xn, d, f->wi, Hi, n)) != DSV4_OK) return st;
    const float wscale = (float) (pow((double) Di, -0.5) * pow((double) Hi, -0.5));
    for (int64_t i = 0; i < (int64_t) n * Hi; i++) f->wi[i] *= wscale;

    const int64_t n_idx = f->n_ctx / 4;
    for (int32_t g0 = 0; g0 < n; g0 += f->idx_group) {
        const int32_t g1 = std::min(n, g0 + f->idx_group);
        const int64_t n_vis_max = ((int64_t) pos0 + g1) / 4;  // visible to the group's last row
        // Scores: entries split over the threads, every entry's key read once for the group.
        constexpr int64_t k_entry_block = 32;
        const int64_t n_eb = (n_vis_max + k_entry_block - 1) / k_entry_block;
        dsv4_parallel_for(f->pool, n_eb, 2, [&](int64_t b0, int64_t b1, int) {
            for (int64_t j = b0 * k_entry_block; j < std::min(n_vis_max, b1 * k_entry_block); j++) {
                const float * K = lc.idx_keys + j * Di;
                for (int32_t i = g0; i < g1; i++) {
                    if (j >= ((int64_t) pos0 + i + 1) / 4) continue;  // not yet visible to row i
                    const float * qi = f->qi + (int64_t) i * Hi * Di;
                    const float * wi = f->wi + (int64_t) i * Hi;
                    float s = 0;
                    for (int64_t h = 0; h < Hi; h++) {
                        // relu before the head weighting (§4.7)
                        const float dp = dsv4_dot(qi + h * Di, K, Di);
                        s += wi[h] * (dp > 0 ? dp : 0.0f);
                    }
                    f->idx_scores[(int64_t) (i - g0) * n_idx + j] = s;
                }
            }
        });
        dsv4_parallel_for(f->pool, g1 - g0, 2, [&](int64_t r0, int64_t r1, int) {
            for (int64_t ri = r0; ri < r1; ri++) {
                const int32_t i = g0 + (int32_t) ri;
                const int64_t n_vis = ((int64_t) pos0 + i + 1) / 4;
                const int64_t k = std::min(top_k, n_vis);
                int32_t * sel = f->topk + (int64_t) i * top_k;
                f->n_top[i] = (int32_t) k;
                if (k == n_vis) {
                    for (int64_t j = 0; j < k; j++) sel[j] = (int32_t) j;
                    continue;
                }
                // Bounded heap whose top is the worst kept entry under (score desc, id asc).
                const float * s = f->idx_scores + ri * n_idx;
                auto better = [&](int32_t a, int32_t b) { return dsv4_topk_better(s[a] + 0.0f, a, s[b] + 0.0f, b); };
                int64_t sz = 0;
                for (int64_t j = 0; j < n_vis; j++) {
                    if (sz < k) {
                        sel[sz++] = (int32_t) j;
                        std::push_heap(sel, sel + sz, better);
                    } else if (better((int32_t) j, sel[0])) {
                        std::pop_heap(sel, sel + sz, better);
                        sel[sz - 1] = (int32_t) j;
                        std::push_heap(sel, sel + sz, better);
                    }
                }
                std::sort(sel, sel + k);  // attend in entry order: deterministic sums
            }
        });
    }
    return DSV4_OK;
}

}  // namespace

void dsv4_fwd_attn_core(dsv4_forward * f, const float * q, int32_t n, const float * const * keys,
                        const int32_t * n_keys, int32_t max_keys, const float * sinks, const float * rope, float * o) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t H = hp.n_head, hd = hp.head_dim, rd = hp.rope_dim;
    const float scale = (float) pow((double) hd, -0.5);
    // Items are (row, head block): enough of them that one decode row still uses every thread.
    int64_t n_hb = (2 * (int64_t) f->n_threads + n - 1) / n;
    n_hb = std::max<int64_t>(1, std::min(n_hb, H));
    const int64_t hb = (H + n_hb - 1) / n_hb;
    n_hb = (H + hb - 1) / hb;
    // Rows of a chunk see different numbers of keys: items are handed out dynamically.
    dsv4_parallel_for_dynamic(f->pool, (int64_t) n * n_hb, 2, [&](int64_t i0, int64_t i1, int ith) {
        float * S = f->att + (size_t) ith * f->att_stride;
        for (int64_t it = i0; it < i1; it++) {
            const int64_t i = it / n_hb;
            const int64_t h0 = (it % n_hb) * hb, h1 = std::min(H, h0 + hb);
            const int64_t nk = n_keys[i];
            const float * const * kp = keys + i * max_keys;
            const float * qr = q + i * H * hd;
            dsv4_attn_scores(S, nk, qr + h0 * hd, hd, h1 - h0, kp, nk, hd, scale);
            // Softmax whose denominator also holds exp(sink_h): the sink takes mass, gives no value.
            for (int64_t h = h0; h < h1; h++) {
                dsv4_softmax_sink(S + (h - h0) * nk, nk, sinks[h]);
            }
            dsv4_attn_values(o + (i * H + h0) * hd, hd, S, nk, h1 - h0, kp, nk, hd);
            // V = K carries the keys' rotation: de-rotate with the query position (§4.2).
            for (int64_t h = h0; h < h1; h++) {
                dsv4_rope_tail(o + (i * H + h) * hd, hd, rd, rope + i * rd, true);
            }
        }
    });
}

dsv4_status dsv4_fwd_attn_output(dsv4_forward * f, int32_t il, const float * o, int32_t n, float * out) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t G = hp.o_groups, ol = hp.o_lora_rank, Hhd = (int64_t) hp.n_head * hp.head_dim, in = Hhd / G;
    const dsv4_fwd_layer & fl = f->layers[(size_t) il];
    // The heads of group g are contiguous in o: z[:, g] = wo_a[g] @ o[:, g]. Seen as n * G rows of
    // width H*hd/G (row t*G + g: token t's slice for group g), that is an MoE call in which group g
    // is an expert taking every token: one pool run for the G products instead of G.
    for (int64_t g = 0; g < G; g++) {
        f->oa_group[g] = (int32_t) g;
        f->oa_offset[g] = (int32_t) (g * n);
        for (int64_t t = 0; t < n; t++) {
            f->oa_row[g * n + t] = (int32_t) (t * G + g);
        }
    }
    f->oa_offset[G] = (int32_t) (G * n);
    const dsv4_moe_routes routes = { (int32_t) G, f->oa_group, f->oa_offset, f->oa_row, f->oa_row };
    const dsv4_matmul_params mp = dsv4_fwd_matmul_params(f);
    dsv4_status st = dsv4_matmul_moe(&mp, &fl.wo_a, &routes, o, in, n * G, f->z, ol, n * G);
    if (st != DSV4_OK) return st;
    return dsv4_fwd_matmul(f, &f->model->layers[(size_t) il].wo_b, f->z, G * ol, out, hp.n_embd, n);
}

dsv4_status dsv4_fwd_attn_queries(dsv4_forward * f, const dsv4_layer & L, const float * xn, int32_t n, const float * rope) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t d = hp.n_embd, H = hp.n_head, hd = hp.head_dim, rd = hp.rope_dim, ql = hp.q_lora_rank;
    // §4.1 q = rope(rmsnorm_per_head(wq_b(q_norm(wq_a(x))))); qr also feeds the indexer.
    dsv4_status st = dsv4_fwd_matmul(f, &L.wq_a, xn, d, f->qa, ql, n);
    if (st != DSV4_OK) return st;
    dsv4_fwd_rms_norm(f, f->qa, L.q_norm, n, (int32_t) ql, f->qa);
    if ((st = dsv4_fwd_matmul(f, &L.wq_b, f->qa, ql, f->q, H * hd, n)) != DSV4_OK) return st;
    const float eps = hp.norm_eps;
    dsv4_parallel_for(f->pool, (int64_t) n * H, 4, [&](int64_t i0, int64_t i1, int) {
        for (int64_t it = i0; it < i1; it++) {
            float * qh = f->q + it * hd;
            const float r = dsv4_rms_inv(qh, hd, eps);
            for (int64_t c = 0; c < hd; c++) qh[c] *= r;
            dsv4_rope_tail(qh, hd, rd, rope + (it / H) * rd, false);
        }
    });
    return DSV4_OK;
}

dsv4_status dsv4_fwd_attn_kv(dsv4_forward * f, const dsv4_layer & L, const float * xn, int32_t n, const float * rope,
                             float * kv) {
    const dsv4_hparams & hp = f->model->hp;
    const int64_t d = hp.n_embd, hd = hp.head_dim, rd = hp.rope_dim;
    // kv = rope(kv_norm(wkv(x))): one latent per token, K and V.
    dsv4_status st = dsv4_fwd_matmul(f, &L.wkv, xn, d, kv, hd, n);
    if (st != DSV4_OK) return st;
    dsv4_fwd_rms_norm(f, kv, L.kv_norm, n, (int32_t) hd, kv);
    for (int64_t i = 0; i < n; i++) dsv4_rope_tail(kv + i * hd, hd, rd, rope + i * rd, false);
    return DSV4_OK;
}

dsv4_status dsv4_fwd_attention(dsv4_forward * f, dsv4_kv_cache * cache, int32_t il, const float * xn, int32_t n,
                               int32_t pos0, float * out) {
    const dsv4_model * m = f->model;
    const dsv4_hparams & hp = m->hp;
    const dsv4_layer & L = m->layers[(size_t) il];
    dsv4_layer_cache & lc = cache->layers[(size_t) il];
    const int64_t hd = hp.head_dim, rd = hp.rope_dim;
    const int64_t W = hp.window;
    const float * rope = f->rope + (L.ratio > 0 ? (int64_t) f->n_batch * rd : 0);  // §4.6 table of this layer type

    dsv4_status st = dsv4_fwd_attn_queries(f, L, xn, n, rope);
    if (st != DSV4_OK) return st;
    if ((st = dsv4_fwd_attn_kv(f, L, xn, n, rope, f->kv)) != DSV4_OK) return st;

    // §4.8 order: compressors first (an entry finished by row t is visible to t), then attention.
    if (L.ratio > 0) {
        const int32_t n_store = dsv4_kv_cache_n_store(cache, L.ratio);
        compressor c{&L.comp_wkv, &L.comp_wgate, L.comp_ape, L.comp_norm, L.ratio, (int32_t) hd, false,
                     lc.comp, lc.comp_kv, lc.comp_sc, n_store, f->ca, f->cg};
        if ((st = compress(f, c, xn, n, pos0)) != DSV4_OK) return st;
        if (L.ratio == 4) {
            compressor ci{&L.idx_comp_wkv, &L.idx_comp_wgate, L.idx_comp_ape, L.idx_comp_norm, 4,
                          hp.indexer_head_dim, true, lc.idx_keys, lc.idx_kv, lc.idx_sc, n_store, f->ia, f->ig};
            if ((st = compress(f, ci, xn, n, pos0)) != DSV4_OK) return st;
            if ((st = indexer_select(f, L, lc, xn, f->qa, n, pos0, rope)) != DSV4_OK) return st;
        }
    }

    // §4.4 keys of each row: the window max(0, t-W+1) .. t (this chunk's rows from its own kv,
    // earlier ones from the ring), then the compressed entries (HCA: all visible; CSA: top-k).
    const int32_t mk = f->max_keys;
    dsv4_parallel_for(f->pool, n, 16, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
            const int64_t t = pos0 + i;
            const float ** kp = f->keys + i * mk;
            int32_t cnt = 0;
            for (int64_t p = std::max<int64_t>(0, t - W + 1); p <= t; p++) {
                kp[cnt++] = p >= pos0 ? f->kv + (p - pos0) * hd : dsv4_kv_ring_row(cache, &lc, p);
            }
            if (L.ratio == 4) {
                const int32_t * sel = f->topk + i * hp.indexer_top_k;
                for (int32_t s = 0; s < f->n_top[i]; s++) kp[cnt++] = lc.comp + (int64_t) sel[s] * hd;
            } else if (L.ratio > 0) {
                const int64_t n_vis = (t + 1) / L.ratio;
                for (int64_t j = 0; j < n_vis; j++) kp[cnt++] = lc.comp + j * hd;
            }
            f->n_keys[i] = cnt;
        }
    });
    dsv4_fwd_attn_core(f, f->q, n, f->keys, f->n_keys, mk, L.attn_sinks, rope, f->o);
    if ((st = dsv4_fwd_attn_output(f, il, f->o, n, out)) != DSV4_OK) return st;

    // The ring keeps the raw kv of the last rows (slot = pos mod n_ring).
    const int64_t first = n > cache->n_ring ? n - cache->n_ring : 0;
    for (int64_t i = first; i < n; i++) {
        memcpy(dsv4_kv_ring_row(cache, &lc, pos0 + i), f->kv + i * hd, (size_t) hd * sizeof(float));
    }
    return DSV4_OK;
}
