// The context behind the public dsv4_context handle: everything mutable that one sequence needs
// (thread pool, caches, forward scratch, position). Internal; the C API is in dsv4.h.
#pragma once

#include "dsv4.h"
#include "dsv4-dspark.h"
#include "dsv4-forward.h"
#include "dsv4-kv-cache.h"
#include "dsv4-model.h"
#include "dsv4-sampling.h"
#include "cpu/dsv4-threadpool.h"

struct dsv4_spec_state;  // dsv4-spec.h: the speculative loop's scratch
void dsv4_spec_state_free(dsv4_spec_state * s);

struct dsv4_context {
    dsv4_model *        model = nullptr;
    dsv4_context_params params{};
    dsv4_threadpool *   pool = nullptr;
    dsv4_kv_cache       cache;
    dsv4_forward        fwd;
    dsv4_draft *        draft = nullptr;  // DSpark draft state (NULL without a draft)
    dsv4_spec_state *   spec = nullptr;   // speculative-loop scratch, made by the first dsv4_spec_* call
    int32_t             n_past = 0;
    dsv4_rng            rng;              // sampler state (seeded from params.seed, reseeded by generate)
};

// The logical cache state of target layer il at the current n_past (tests: truncation must give
// exactly the state of a run that never saw the dropped rows).
dsv4_status dsv4_context_layer_state(const dsv4_context * ctx, int32_t il, dsv4_layer_state * out);
