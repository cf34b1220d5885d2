// dsv4: DeepSeek-V4 + DSpark inference engine, public C API.
//
// Conventions (see docs/ and STYLE.md): opaque structs, POD params with *_default_params(),
// every function that can fail returns a dsv4_status (or NULL) and sets a readable message that
// dsv4_last_error() returns. The message is per thread, so concurrent contexts do not clobber
// each other's errors.
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DSV4_VERSION_MAJOR 0
#define DSV4_VERSION_MINOR 1
#define DSV4_VERSION_PATCH 0

typedef enum dsv4_status {
    DSV4_OK               = 0,
    DSV4_ERR_INVALID_ARG  = 1,  // a caller-supplied value is out of range
    DSV4_ERR_IO           = 2,  // open/read/mmap failed
    DSV4_ERR_FORMAT       = 3,  // the file is not what it claims to be
    DSV4_ERR_UNSUPPORTED  = 4,  // a valid file that this build cannot run
    DSV4_ERR_NO_MEMORY    = 5,
    DSV4_ERR_CONTEXT_FULL = 6,  // positions beyond n_ctx
    DSV4_ERR_INTERRUPTED  = 7,  // a callback asked to stop
} dsv4_status;

// Version string "MAJOR.MINOR.PATCH".
const char * dsv4_version(void);

// The last error message set on this thread ("" when none).
const char * dsv4_last_error(void);

// Human-readable name of a status code.
const char * dsv4_status_name(dsv4_status status);

// ---------------------------------------------------------------------------------------------
// Models and contexts.
//
// A model is the mmap'd weights of one GGUF file (dsv4, or llama.cpp deepseek4), validated on
// load: every tensor's type, shape, offset and size is checked against the hyperparameters
// before use. A context owns everything mutable: KV caches, compressor state, scratch and the
// thread pool. One model can serve several contexts; one context is used by one thread at a time.

typedef struct dsv4_model   dsv4_model;
typedef struct dsv4_context dsv4_context;

typedef struct dsv4_model_params {
    bool load_draft;   // bind the DSpark draft stages and heads when the file has them
    const char * draft_path;  // NULL, or a llama.cpp `dflash` sidecar (mtp-*.gguf) to take the draft
                              // from instead (with load_draft); its shapes must match the target's
    bool repack;       // true (default): copy the weights this CPU has packed-layout kernels for
                       // (MXFP4 experts with AVX2 / AVX-512, FP8 matrices with AVX512_BF16) once
                       // into those layouts (the same bytes rearranged; memory for a second copy
                       // of them); false: compute from the mapping
} dsv4_model_params;

dsv4_model_params dsv4_model_default_params(void);

dsv4_status dsv4_model_load(const char * path, const dsv4_model_params * params, dsv4_model ** out);
void        dsv4_model_free(dsv4_model * model);

int32_t  dsv4_model_n_vocab(const dsv4_model * model);
int32_t  dsv4_model_n_embd(const dsv4_model * model);
int32_t  dsv4_model_n_layer(const dsv4_model * model);      // target layers only
int32_t  dsv4_model_n_ctx_train(const dsv4_model * model);
bool     dsv4_model_has_draft(const dsv4_model * model);
int32_t  dsv4_model_n_tap(const dsv4_model * model);       // DSpark feature taps (0 without a draft)
uint64_t dsv4_model_weight_bytes(const dsv4_model * model);  // bytes of all bound tensors
uint64_t dsv4_model_packed_bytes(const dsv4_model * model);  // bytes of repacked weights (0: none)
const char * dsv4_model_arch(const dsv4_model * model);      // "dsv4" or "deepseek4"

typedef struct dsv4_context_params {
    int32_t  n_ctx;      // positions the caches hold (prompt + generated)
    int32_t  n_threads;  // <= 0: one per online core
    int32_t  n_batch;    // max rows per internal forward chunk (prefill is split into chunks)
    uint64_t seed;       // for samplers
    bool     float_activations;  // exact f32 activations in every matmul instead of 8-bit quantized
                                 // ones (Q8_0/MXFP4) and bf16-rounded ones (FP8/BF16): slower;
                                 // what the reference comparisons use
} dsv4_context_params;

dsv4_context_params dsv4_context_default_params(void);

dsv4_status dsv4_context_init(dsv4_model * model, const dsv4_context_params * params, dsv4_context ** out);
void        dsv4_context_free(dsv4_context * ctx);

// Positions already in the caches (the next row runs at this position).
int32_t dsv4_context_n_past(const dsv4_context * ctx);

// Runs n_tokens rows at positions pos .. pos + n_tokens - 1 (pos must equal n_past: rows extend
// the sequence). Writes logits [n_logit_rows, n_vocab] for the rows listed in logit_rows (indices
// into the batch, may be NULL when n_logit_rows is 0). When features is not NULL, writes the
// DSpark tap features [n_tokens, n_tap * n_embd] (mean over the hc copies of the residual after
// each tapped layer, in tap order). Invalid token ids and positions past n_ctx are rejected
// before any compute.
dsv4_status dsv4_decode(dsv4_context * ctx, const int32_t * tokens, int32_t n_tokens, int32_t pos,
                        const int32_t * logit_rows, int32_t n_logit_rows, float * logits, float * features);

// Drops every position >= n_past, restoring the caches (window ring, compressed entries, indexer
// keys, compressor partial state) exactly as if those rows had never run. n_past may go back at
// most dsv4_context_max_rollback() positions from the current end.
dsv4_status dsv4_context_truncate(dsv4_context * ctx, int32_t n_past);
int32_t     dsv4_context_max_rollback(const dsv4_context * ctx);

// Digests (64-bit) of the cache bytes a continuation of the current sequence can read, for tests of
// exact rollback: out[il] for target layer il (window ring rows, every compressed entry and indexer
// key, the compressor inputs of the partial state: dsv4-kv-cache.h says exactly which bytes),
// out[n_layer] for the DSpark rings (0 without a draft). Two contexts that committed the same
// rows agree on every value, whatever they ran and rolled back in between. n_out >= n_layer + 1.
dsv4_status dsv4_context_state_digest(const dsv4_context * ctx, uint64_t * out, int32_t n_out);

typedef struct dsv4_memory_report {
    uint64_t weight_bytes;          // bound model tensors (mapped)
    uint64_t cache_bytes;           // all per-layer caches at n_ctx
    uint64_t cache_bytes_per_token; // asymptotic growth of the caches per position
    uint64_t scratch_bytes;         // activations and kernel scratch
} dsv4_memory_report;

dsv4_status dsv4_context_memory(const dsv4_context * ctx, dsv4_memory_report * out);

// ---------------------------------------------------------------------------------------------
// Generation: prompt ids -> generated ids, plain (one token per target decode) or speculative with
// the DSpark draft (draft a block, verify it in one target decode, accept a prefix, roll back the
// rest). Both use the same sampler, so at temperature 0 they give the same tokens; at T > 0 the
// speculative loop uses rejection sampling and samples from the same distribution. The context is
// reset (truncated to 0) first; its sampler RNG is seeded with params.seed.

#define DSV4_MAX_DRAFT 32

typedef struct dsv4_generate_params {
    int32_t  max_tokens;    // generated tokens at most (the EOS token included)
    float    temperature;   // 0: greedy (argmax, lowest id on ties)
    int32_t  top_k;         // <= 0: no top-k filter
    float    top_p;         // >= 1: no nucleus filter
    uint64_t seed;          // sampler RNG seed
    bool     speculative;   // use the DSpark draft (the model must have one)
    int32_t  draft_max;     // drafts per round; <= 0: the trained block size (capped by it)
    float    confidence_threshold;  // adaptive length: verify drafts left to right while the draft's
                                    // confidence sigmoid(c_k) >= this (c_k depends only on the drafts
                                    // before x_k, so the cut never looks at x_k: lossless); <= 0: fixed
                                    // gamma. Needs the draft's confidence head.
    bool     ignore_eos;    // keep generating past the EOS token
} dsv4_generate_params;

dsv4_generate_params dsv4_generate_default_params(void);

typedef enum dsv4_stop_reason {
    DSV4_STOP_MAX_TOKENS   = 0,
    DSV4_STOP_EOS          = 1,
    DSV4_STOP_CONTEXT_FULL = 2,  // the caches hold n_ctx positions
    DSV4_STOP_INTERRUPTED  = 3,  // the callback returned false
} dsv4_stop_reason;

typedef struct dsv4_generate_stats {
    int32_t n_prompt;
    int32_t n_generated;
    int32_t rounds;                       // target verify (or plain decode) calls after the prefill
    int64_t drafted;                      // draft tokens verified (after an adaptive-length cut)
    int64_t accepted;                     // draft tokens accepted
    int64_t accepted_at[DSV4_MAX_DRAFT];  // rounds in which draft k (0-based) was accepted
    int64_t verified_at[DSV4_MAX_DRAFT];  // rounds in which draft k was verified (acceptance at k:
                                          // accepted_at[k] / verified_at[k])
    double  tau;                          // tokens per round: accepted / rounds + 1
    double  prefill_s, draft_s, verify_s, total_s;
    int32_t stop_reason;                  // dsv4_stop_reason
} dsv4_generate_stats;

// Step-wise generation (what dsv4_generate runs): dsv4_spec_begin resets the context, seeds its RNG
// with params->seed, runs the prompt (capturing the DSpark features of its last rows into the draft
// rings when params->speculative) and samples the first token, the anchor of the first step. Each
// dsv4_spec_step then runs one round on the committed state it finds: the target holds positions
// [0, n_past), the draft rings every committed position's features, and `anchor` is the token at
// n_past (decided, not yet run). It drafts up to gamma tokens (the trained block size, lowered by
// params->draft_max, by the confidence threshold, by the positions left and by max_out - 1),
// verifies [anchor, drafts] in one target decode, keeps the accepted prefix (the rest is rolled
// back exactly) and writes the accepted drafts and then the residual/bonus token (the next anchor)
// to out_tokens. params->speculative false makes it one plain decode step. The sampler settings of
// params apply per step; max_tokens, seed and ignore_eos are not used by a step. A speculative step
// after plain decodes or truncations (which do not feed the draft rings) is DSV4_ERR_INVALID_ARG.
typedef struct dsv4_spec_result {
    int32_t n_tokens;   // tokens written: accepted drafts + 1
    int32_t n_drafted;  // drafts verified this round
    double  draft_s, verify_s;
} dsv4_spec_result;

dsv4_status dsv4_spec_begin(dsv4_context * ctx, const int32_t * prompt, int32_t n_prompt,
                            const dsv4_generate_params * params, int32_t * first_token);
// out_tokens holds max_out >= 1 tokens (DSV4_MAX_DRAFT + 1 never limits the round).
dsv4_status dsv4_spec_step(dsv4_context * ctx, int32_t anchor, const dsv4_generate_params * params,
                           int32_t * out_tokens, int32_t max_out, dsv4_spec_result * result);

// Called with each generated token as it is decided (after the round that produced it is committed,
// so the context is consistent whenever it runs); returning false stops the generation with
// DSV4_ERR_INTERRUPTED and stats->stop_reason DSV4_STOP_INTERRUPTED (tokens so far, the stopping one
// included, are in out_tokens / n_out / stats).
typedef bool (*dsv4_token_callback)(int32_t token, void * user_data);

// Writes the first max_out generated tokens to out_tokens (may be NULL with max_out 0), their
// count to *n_out, and statistics to *stats (either may be NULL). Speculative on a context without
// a draft is DSV4_ERR_INVALID_ARG.
dsv4_status dsv4_generate(dsv4_context * ctx, const int32_t * prompt, int32_t n_prompt,
                          const dsv4_generate_params * params, int32_t * out_tokens, int32_t max_out,
                          int32_t * n_out, dsv4_generate_stats * stats, dsv4_token_callback token_callback,
                          void * user_data);

#ifdef __cplusplus
}
#endif
