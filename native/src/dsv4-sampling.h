// Sampling helpers for generation (dsv4-spec.cpp): a seeded RNG that the context owns (no global
// state), temperature softmax, top-k / top-p filtering, argmax and inverse-CDF sampling. Internal.
#pragma once

#include <stdint.h>

#include <vector>

// xoshiro256** seeded through splitmix64: the same seed gives the same stream on every platform.
struct dsv4_rng {
    uint64_t s[4] = {0, 0, 0, 0};
};

void     dsv4_rng_seed(dsv4_rng * r, uint64_t seed);
uint64_t dsv4_rng_next(dsv4_rng * r);
// Uniform double in [0, 1) with 53 random bits.
double   dsv4_rng_uniform(dsv4_rng * r);

// Index of the largest value (lowest index on ties).
int32_t dsv4_argmax(const float * x, int64_t n);

// probs = softmax(logits / T) over n entries (T > 0), accumulated in double.
void dsv4_softmax(const float * logits, int64_t n, float temperature, float * probs);

// Keeps the top_k most probable entries (top_k <= 0 or >= n: all), then the smallest set of the
// most probable whose mass reaches top_p (top_p >= 1: all), zeroes the rest and renormalizes.
// Ties are broken by lower index, so the result is deterministic. idx is scratch.
void dsv4_top_k_top_p(float * probs, int64_t n, int32_t top_k, float top_p, std::vector<int32_t> & idx);

// Draws an index from probs (non-negative, any positive total) by inverse CDF with one uniform.
// Entries of zero probability are never returned.
int32_t dsv4_sample(const float * probs, int64_t n, dsv4_rng * r);
