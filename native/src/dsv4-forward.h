// The V4 forward pass on the CPU (v4-model.md §3-§5): one code path for prefill chunks, decode
// (n = 1) and verification (n = gamma + 1): "run these token rows at consecutive positions,
// return logits for chosen rows and, on request, the DSpark tap features".
//
// All activations are F32. Every linear goes through dsv4_matmul / dsv4_matmul_moe (weights read
// once per call for all rows); the small ops (mHC, norms, RoPE, attention core, pooling, top-k)
// are split over the context's thread pool by rows, heads or entries.
//
// The pieces a DSpark draft stage needs (a V4 block with ratio 0 and its own attention bank) are
// exposed below: hc_pre / hc_post, RMSNorm, the attention core over per-row key lists, the grouped
// output projection and the MoE.
#pragma once

#include "dsv4.h"
#include "dsv4-kv-cache.h"
#include "dsv4-model.h"
#include "cpu/dsv4-matmul.h"
#include "cpu/dsv4-threadpool.h"

#include <memory>
#include <vector>

// Per block: views the matmul needs that the model does not hold directly.
struct dsv4_fwd_layer {
    dsv4_weight hc_attn_fn{}, hc_ffn_fn{};  // F32 [(2+hc)*hc, hc*d] views of the mHC tables
    dsv4_weight wo_a{};                     // G [o_lora, H*hd/G] output-group matrices as one
                                            // stack (n_expert = G), run by one dsv4_matmul_moe call
};

// One logits request inside a chunk: chunk row -> output row of the caller's logits buffer.
struct dsv4_logit_req {
    int32_t row;
    int32_t out;
};

struct dsv4_forward {
    const dsv4_model * model = nullptr;
    dsv4_threadpool *  pool = nullptr;
    int32_t n_batch = 0, n_ctx = 0, n_threads = 1;
    bool    float_activations = false;  // Q8_0/MXFP4 matmuls with exact f32 activations
    int32_t max_keys = 0;        // attention keys per query row: W + compressed entries
    int32_t idx_group = 0;       // indexer query rows scored per pass over the keys
    std::vector<double> theta[2];  // RoPE frequencies: [0] ratio-0 layers (no YaRN), [1] ratio > 0 (YaRN)
    std::vector<dsv4_fwd_layer> layers;  // every bound block (target layers, then draft stages)
    dsv4_weight out_hc_fn{};             // F32 [hc, hc*d]
    std::vector<std::unique_ptr<float[]>> owned;  // dequantized wo_a when its groups cannot be sliced
    size_t owned_bytes = 0;

    // Scratch (one allocation, sized at init from n_batch and n_ctx).
    void * mem = nullptr;
    size_t bytes = 0;
    float * h = nullptr, * h_alt = nullptr;   // [nb, hc, d] residual streams
    float * x = nullptr, * xn = nullptr, * y = nullptr;  // [nb, d]
    float * mix = nullptr, * pre = nullptr, * post = nullptr, * comb = nullptr;
    float * rope = nullptr;     // [2][nb][rd]: cos (rd/2) then sin (rd/2) per row, per table
    float * qa = nullptr, * q = nullptr, * kv = nullptr, * o = nullptr, * z = nullptr;
    float * ca = nullptr, * cg = nullptr;     // compressor inputs of the chunk [nb, 2*hd]
    float * ia = nullptr, * ig = nullptr;     // indexer compressor inputs [nb, 2*Di]
    float * qi = nullptr, * wi = nullptr;     // indexer queries [nb, Hi*Di], head weights [nb, Hi]
    float * idx_scores = nullptr;             // [idx_group, n_ctx/4]
    int32_t * topk = nullptr, * n_top = nullptr;  // [nb, top_k], [nb]
    const float ** keys = nullptr;            // [nb, max_keys] key/value rows per query row
    int32_t * n_keys = nullptr;               // [nb]
    float * att = nullptr;                    // per thread [H, max_keys]
    size_t att_stride = 0;                    // floats per thread
    float * gate = nullptr, * wts = nullptr;  // [nb, E], [nb, k]
    int32_t * ids = nullptr;                  // [nb, k]
    float * eg = nullptr, * eu = nullptr, * ed = nullptr;  // [nb*k, I], [nb*k, I], [nb*k, d]
    float * sg = nullptr, * su = nullptr;     // [nb, I]
    int32_t * r_expert = nullptr, * r_offset = nullptr, * r_xrow = nullptr, * r_yrow = nullptr;
    int32_t * oa_group = nullptr, * oa_offset = nullptr, * oa_row = nullptr;  // wo_a routes: G, G + 1, nb * G
    uint64_t moe_expert_bytes = 0;  // routed-expert weight bytes streamed so far (each selected
                                    // expert's gate/up/down once per call: benchmarks read it)
    void * mm_scratch = nullptr;
    size_t mm_scratch_size = 0;
};

dsv4_status dsv4_forward_init(dsv4_forward * f, const dsv4_model * model, dsv4_threadpool * pool, int32_t n_ctx,
                              int32_t n_batch);
void        dsv4_forward_free(dsv4_forward * f);

// Runs n (<= n_batch) rows at positions pos0 .. pos0 + n - 1 through the target, updating the
// caches. Inputs must be validated by the caller. Logits rows go to logits + req.out * n_vocab;
// features (NULL: none) are written for all n rows, row i at features + i * n_tap * d.
dsv4_status dsv4_forward_chunk(dsv4_forward * f, dsv4_kv_cache * cache, const int32_t * tokens, int32_t n,
                               int32_t pos0, const dsv4_logit_req * req, int32_t n_req, float * logits,
                               float * features);

// ---- building blocks (also for the DSpark draft stages) ----------------------------------------

// Matmul parameters of this context: its pool, scratch and activation precision.
dsv4_matmul_params dsv4_fwd_matmul_params(const dsv4_forward * f);

// A matmul on the context's pool and scratch.
dsv4_status dsv4_fwd_matmul(dsv4_forward * f, const dsv4_weight * w, const float * x, int64_t x_stride, float * y,
                            int64_t y_stride, int64_t n);

// v4-model.md §3.2: x [n, d] = sum_j pre_j h_j, post [n, hc], comb [n, hc, hc] (Sinkhorn).
dsv4_status dsv4_fwd_hc_pre(dsv4_forward * f, const dsv4_weight * fn, const float * base, const float * scale,
                            const float * h, int32_t n, float * x, float * post, float * comb);
// §3.3: h_out[k] = post_k x + sum_j comb[j][k] h[j].
void dsv4_fwd_hc_post(dsv4_forward * f, const float * x, const float * h, const float * post, const float * comb,
                      int32_t n, float * h_out);
// y = w * x / sqrt(mean(x^2) + eps) over rows of `dim` (w NULL: weightless). y may equal x.
void dsv4_fwd_rms_norm(dsv4_forward * f, const float * x, const float * w, int32_t n, int32_t dim, float * y);

// §4.2: sparse attention with a sink over per-row key lists (K = V = the latent rows), scale
// hd^-0.5, then the output rope part de-rotated with the query's position (rope: per row, cos
// then sin of rd/2 angles). q, o: [n, H*hd]. keys: row i's keys at keys[i * max_keys ...].
void dsv4_fwd_attn_core(dsv4_forward * f, const float * q, int32_t n, const float * const * keys,
                        const int32_t * n_keys, int32_t max_keys, const float * sinks, const float * rope, float * o);

// §4.1 for block L: f->qa = q_norm(wq_a xn), f->q [n, H*hd] = RoPE(per-head RMS(wq_b qa)).
dsv4_status dsv4_fwd_attn_queries(dsv4_forward * f, const dsv4_layer & L, const float * xn, int32_t n, const float * rope);
// §4.1 kv [n, hd] = RoPE(kv_norm(wkv xn)) (rope: per row, as for the core).
dsv4_status dsv4_fwd_attn_kv(dsv4_forward * f, const dsv4_layer & L, const float * xn, int32_t n, const float * rope,
                             float * kv);

// §4.3: z = grouped wo_a(o), out = wo_b(z) for block il.
dsv4_status dsv4_fwd_attn_output(dsv4_forward * f, int32_t il, const float * o, int32_t n, float * out);

// §5: out [n, d] = routed experts + shared expert of block il.
dsv4_status dsv4_fwd_moe(dsv4_forward * f, int32_t il, const float * xn, const int32_t * tokens, int32_t n, float * out);

// §3.4 hc_head without the final norm: y [n, d] = sum_j pre_j h_j, pre from fn/base/scale.
dsv4_status dsv4_fwd_hc_head(dsv4_forward * f, const dsv4_weight * fn, const float * base, const float * scale,
                             const float * h, int32_t n, float * y);

// token_embd rows of tokens, repeated into the hc copies: h [n, hc, d].
void dsv4_fwd_embed_rows(dsv4_forward * f, const int32_t * tokens, int32_t n, float * h);

// Largest DSpark block a context of this n_batch runs (its key scratch is sized for it).
int32_t dsv4_fwd_draft_max_gamma(const dsv4_model * model, int32_t n_batch);

// cos/sin rows for positions pos0 .. pos0 + n - 1 of RoPE table `table` into rope [n][rd].
void dsv4_fwd_rope_rows(const dsv4_forward * f, int table, int64_t pos0, int32_t n, float * rope);

// Attention of target layer il for the chunk (v4-model.md §4.1-4.8); out [n, d].
dsv4_status dsv4_fwd_attention(dsv4_forward * f, dsv4_kv_cache * cache, int32_t il, const float * xn, int32_t n,
                               int32_t pos0, float * out);
