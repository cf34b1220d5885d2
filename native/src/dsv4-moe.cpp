// The MoE FFN of a V4 block (v4-model.md §5): sqrt-softplus router (bias for selection only, or
// the token's fixed experts on hash layers), renormalised weights times route_scale, routed
// experts batched by expert (each selected expert's weights stream once for all its rows), and the
// shared expert. SwiGLU with the asymmetric clamp; the routing weight scales the activation
// before w2.
#include "dsv4-forward.h"

#include "dsv4-forward-ops.h"
#include "dsv4-impl.h"

#include <math.h>
#include <string.h>

#include <algorithm>

namespace {

// torch.nn.functional.softplus (beta 1, threshold 20).
inline float softplus(float x) {
    return x > 20.0f ? x : log1pf(expf(x));
}

}  // namespace

dsv4_status dsv4_fwd_moe(dsv4_forward * f, int32_t il, const float * xn, const int32_t * tokens, int32_t n, float * out) {
    const dsv4_model * m = f->model;
    const dsv4_hparams & hp = m->hp;
    const dsv4_layer & L = m->layers[(size_t) il];
    const int64_t d = hp.n_embd, E = hp.n_expert, k = hp.n_expert_used, I = hp.n_ff_exp;
    const int64_t Is = (int64_t) hp.n_ff_exp * hp.n_expert_shared;

    // Router, fp32: s = sqrt(softplus(x @ gate^T)).
    dsv4_status st = dsv4_fwd_matmul(f, &L.gate_inp, xn, d, f->gate, E, n);
    if (st != DSV4_OK) return st;
    for (int64_t i = 0; i < (int64_t) n * E; i++) f->gate[i] = sqrtf(softplus(f->gate[i]));
    for (int64_t i = 0; i < n; i++) {
        const float * s = f->gate + i * E;
        int32_t * ids = f->ids + i * k;
        if (L.hash) {
            // Hash layers: the token's fixed experts, no bias, no top-k.
            memcpy(ids, L.tid2eid + (int64_t) tokens[i] * k, (size_t) k * sizeof(int32_t));
        } else {
            // top-k of s + bias by (score desc, id asc): the bias only selects.
            for (int64_t slot = 0; slot < k; slot++) {
                int32_t best = -1;
                float best_s = 0;
                for (int32_t e = 0; e < E; e++) {
                    bool used = false;
                    for (int64_t q = 0; q < slot; q++) used = used || ids[q] == e;
                    if (used) continue;
                    const float v = s[e] + L.exp_probs_b[e];
                    if (best < 0 || dsv4_topk_better(v, e, best_s, best)) {
                        best = e;
                        best_s = v;
                    }
                }
                ids[slot] = best;
            }
        }
        float * w = f->wts + i * k;
        float sum = 0;
        for (int64_t slot = 0; slot < k; slot++) {
            w[slot] = s[ids[slot]];
            sum += w[slot];
        }
        for (int64_t slot = 0; slot < k; slot++) {
            w[slot] = (hp.expert_weights_norm ? w[slot] / sum : w[slot]) * hp.expert_weights_scale;
        }
    }

    // Routed experts, grouped by expert: pair p = token * k + slot.
    dsv4_moe_routes routes;
    if ((st = dsv4_moe_group_by_expert(f->ids, n, (int32_t) k, (int32_t) E, f->r_expert, f->r_offset, f->r_xrow,
                                       f->r_yrow, &routes)) != DSV4_OK) {
        return st;
    }
    f->moe_expert_bytes += (uint64_t) routes.n_sel * (L.ffn_gate_exps.expert_stride + L.ffn_up_exps.expert_stride +
                                                      L.ffn_down_exps.expert_stride);
    const dsv4_matmul_params mp = dsv4_fwd_matmul_params(f);
    const int64_t n_pairs = (int64_t) n * k;
    if ((st = dsv4_matmul_moe(&mp, &L.ffn_gate_exps, &routes, xn, d, n, f->eg, I, n_pairs)) != DSV4_OK) return st;
    if ((st = dsv4_matmul_moe(&mp, &L.ffn_up_exps, &routes, xn, d, n, f->eu, I, n_pairs)) != DSV4_OK) return st;
    dsv4_parallel_for(f->pool, n_pairs, 4, [&](int64_t p0, int64_t p1, int) {
        for (int64_t p = p0; p < p1; p++) {
            dsv4_swiglu(f->eg + p * I, f->eu + p * I, I, L.swiglu_limit, f->wts[p]);
        }
    });
    dsv4_moe_routes down = routes;
    down.x_row = routes.y_row;  // the down projection reads each pair's own activation row
    if ((st = dsv4_matmul_moe(&mp, &L.ffn_down_exps, &down, f->eg, I, n_pairs, f->ed, d, n_pairs)) != DSV4_OK) return st;

    // Shared expert (the current revision clamps it too, with its own limit).
    if ((st = dsv4_fwd_matmul(f, &L.ffn_gate_shexp, xn, d, f->sg, Is, n)) != DSV4_OK) return st;
    if ((st = dsv4_fwd_matmul(f, &L.ffn_up_shexp, xn, d, f->su, Is, n)) != DSV4_OK) return st;
    dsv4_parallel_for(f->pool, n, 4, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) dsv4_swiglu(f->sg + i * Is, f->su + i * Is, Is, L.swiglu_limit_shexp, 1.0f);
    });
    if ((st = dsv4_fwd_matmul(f, &L.ffn_down_shexp, f->sg, Is, out, d, n)) != DSV4_OK) return st;

    // out = shared + sum over the token's experts, in slot order.
    dsv4_parallel_for(f->pool, n, 4, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
            for (int64_t slot = 0; slot < k; slot++) dsv4_axpy(out + i * d, 1.0f, f->ed + (i * k + slot) * d, d);
        }
    });
    return DSV4_OK;
}
