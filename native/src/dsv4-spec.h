// The DSpark speculative loop (dspark.md §3.1, §5.2) behind dsv4_spec_begin / dsv4_spec_step and the
// generation driver dsv4_generate (dsv4.h), which is begin + steps + the token callback. Internal.
#pragma once

#include "dsv4.h"
#include "dsv4-context.h"

#include <vector>

// Sampling settings of one generation.
struct dsv4_sampler_cfg {
    float   temperature = 0.0f;  // 0: argmax
    int32_t top_k = 0;
    float   top_p = 1.0f;
    float   confidence_threshold = 0.0f;  // > 0: adaptive draft length (stop before sigmoid(c_k) < it)
};

// Scratch of the loop, owned by the context (ctx->spec), made on first use and sized for the largest
// block the context drafts.
struct dsv4_spec_state {
    int32_t gamma_max = 0;
    std::vector<float>   logits;   // [gamma_max + 1, V] verify rows
    std::vector<float>   feats;    // [gamma_max + 1, n_tap * d] verify features (speculative only)
    std::vector<float>   base;     // [gamma_max, V] draft base logits
    std::vector<float>   x_post;   // [gamma_max, d]
    std::vector<float>   q;        // [gamma_max, V] draft distributions (T > 0)
    std::vector<float>   row;      // [V]
    std::vector<float>   p;        // [V]
    std::vector<int32_t> drafts;   // [gamma_max]
    std::vector<int32_t> idx;      // top-k/top-p scratch
    double draft_s = 0.0, verify_s = 0.0;
};

dsv4_status dsv4_spec_state_init(dsv4_spec_state * s, const dsv4_context * ctx, int32_t gamma_max, bool features);

// The target distribution of one logits row under cfg (T > 0): softmax(logits / T), top-k, top-p.
void dsv4_target_probs(const float * logits, int64_t V, const dsv4_sampler_cfg & cfg, float * probs,
                       std::vector<int32_t> & idx);
// One token from a logits row with the plain sampler (argmax at T = 0).
int32_t dsv4_sample_logits(dsv4_context * ctx, const float * logits, const dsv4_sampler_cfg & cfg, dsv4_spec_state * s);

// One round. The target holds positions [0, start) with start = ctx->n_past, the draft rings hold the
// features of every committed position < start (when gamma > 0), and `anchor` is the token at start.
// Drafts up to gamma tokens (0 = a plain step; fewer when the confidence threshold cuts the block:
// *n_drafted = ℓ), verifies [anchor, x_1..x_ℓ] in one dsv4_decode, accepts a prefix of n, truncates
// the target to start + n + 1 and injects the kept rows' features (when `inject`).
// out[0..n] = x_1..x_n, y (y: the residual / bonus token, the next anchor); *n_out = n + 1.
// dsv4_spec_step (dsv4.h) checks its arguments and calls this.
dsv4_status dsv4_spec_round(dsv4_context * ctx, dsv4_spec_state * s, const dsv4_sampler_cfg & cfg, int32_t anchor,
                            int32_t gamma, bool inject, int32_t * out, int32_t * n_out, int32_t * n_drafted);
