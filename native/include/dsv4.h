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
const char * dsv4_model_arch(const dsv4_model * model);      // "dsv4" or "deepseek4"

typedef struct dsv4_context_params {
    int32_t  n_ctx;      // positions the caches hold (prompt + generated)
    int32_t  n_threads;  // <= 0: one per online core
    int32_t  n_batch;    // max rows per internal forward chunk (prefill is split into chunks)
    uint64_t seed;       // for samplers
    bool     float_activations;  // Q8_0/MXFP4 weights: exact f32 activations instead of 8-bit
                                 // quantized ones (slower; what the reference comparisons use)
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

typedef struct dsv4_memory_report {
    uint64_t weight_bytes;          // bound model tensors (mapped)
    uint64_t cache_bytes;           // all per-layer caches at n_ctx
    uint64_t cache_bytes_per_token; // asymptotic growth of the caches per position
    uint64_t scratch_bytes;         // activations and kernel scratch
} dsv4_memory_report;

dsv4_status dsv4_context_memory(const dsv4_context * ctx, dsv4_memory_report * out);

#ifdef __cplusplus
}
#endif
