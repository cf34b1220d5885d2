// The DSpark draft forward pass on the CPU (dspark.md §1.1, §1.3, §5.1-5.2): per-stage rings of
// injected context kv, the non-causal block pass over [anchor, noise x (γ-1)], and the Markov and
// confidence heads. Internal; the speculative loop that drives it comes later. Reuses the target
// forward's building blocks (dsv4-forward.h) and its scratch, so a draft call must not overlap a
// dsv4_forward_chunk on the same context.
#pragma once

#include "dsv4.h"
#include "dsv4-forward.h"
#include "dsv4-model.h"

#include <vector>

struct dsv4_draft {
    const dsv4_model * model = nullptr;
    dsv4_forward *     f = nullptr;     // the context's forward: pool, scratch, RoPE tables
    int32_t W = 0;                      // ring slots per stage
    int32_t n_stage = 0;
    int32_t max_gamma = 0;              // largest block the scratch holds
    std::vector<float>   ring;          // [n_stage, W, hd] RoPE'd latent kv
    std::vector<int32_t> ring_pos;      // [W] position held by each slot (all stages), -1 = empty
    dsv4_weight out_hc_fn{};            // F32 view [hc, hc*d] of dspark_output_hc_fn
    // Draft-owned scratch.
    std::vector<float> main_x;          // [n_batch, d]
    std::vector<float> kv;              // [max(n_batch, max_gamma), hd]
    std::vector<float> rope;            // [max(n_batch, max_gamma), rd] (table 0: no YaRN)
    std::vector<float> h, h2;           // [max_gamma, hc, d]
    std::vector<float> prev;            // [max_gamma, d + r]: [x_post ; W1[prev]] rows
};

// NULL model draft (model->dspark.present false): *out stays NULL, DSV4_OK.
dsv4_status dsv4_draft_init(dsv4_draft ** out, const dsv4_model * model, dsv4_forward * f);
void        dsv4_draft_free(dsv4_draft * d);
// Empty every ring.
void        dsv4_draft_reset(dsv4_draft * d);
// 64-bit digest of the rings: the position of every slot (-1 = empty), then for each stage the rows
// of the slots that hold a position (empty slots keep stale bytes that are never read).
uint64_t    dsv4_draft_digest(const dsv4_draft * d);
// The last position the rings hold (-1: none).
int32_t     dsv4_draft_last_pos(const dsv4_draft * d);

// §5.2 step 1: rows of features [n, n_tap*d] at positions pos0 .. pos0+n-1 (consecutive, after every
// position already held) into every stage's ring at pos mod W; of more than W rows the last W stay.
dsv4_status dsv4_draft_inject(dsv4_draft * d, const float * features, int32_t n, int32_t pos0);

// §1.3 steps 3-5: the block [anchor, noise x (gamma-1)] at p+1 .. p+gamma. base_logits [gamma, V]
// (U_k, before the Markov bias), x_post [gamma, d] (hc_head output BEFORE the final norm).
dsv4_status dsv4_draft_block(dsv4_draft * d, int32_t anchor, int32_t p, int32_t gamma, float * base_logits,
                             float * x_post);

// §1.1 steps 3-4 given the chosen drafts: markov [gamma, V] = base + W2 W1[prev_k] (prev_1 = anchor,
// prev_{k+1} = drafts[k-1]); conf [gamma] = conf_proj [x_post_k ; W1[prev_k]] (+ bias), raw. Either
// output may be NULL.
dsv4_status dsv4_draft_heads(dsv4_draft * d, const float * base_logits, const float * x_post, int32_t anchor,
                             const int32_t * drafts, int32_t gamma, float * markov, float * conf);

// T = 0: left to right drafts[k] = argmax ℓ_k (lowest id on ties); ℓ rows into logits [gamma, V] (may be NULL).
dsv4_status dsv4_draft_greedy(dsv4_draft * d, const float * base_logits, int32_t anchor, int32_t gamma,
                              int32_t * drafts, float * logits);
