// Sampling helpers (dsv4-sampling.h).
#include "dsv4-sampling.h"

#include <math.h>

#include <algorithm>

namespace {

uint64_t splitmix64(uint64_t & x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

}  // namespace

void dsv4_rng_seed(dsv4_rng * r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(x);
}

uint64_t dsv4_rng_next(dsv4_rng * r) {
    uint64_t * s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double dsv4_rng_uniform(dsv4_rng * r) {
    return (double) (dsv4_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

int32_t dsv4_argmax(const float * x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++) {
        if (x[i] > x[best]) best = i;
    }
    return (int32_t) best;
}

void dsv4_softmax(const float * logits, int64_t n, float temperature, float * probs) {
    const double inv_t = 1.0 / (double) temperature;
    double mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = std::max(mx, (double) logits[i] * inv_t);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double e = exp((double) logits[i] * inv_t - mx);
        probs[i] = (float) e;
        sum += e;
    }
    const double inv = 1.0 / sum;
    for (int64_t i = 0; i < n; i++) probs[i] = (float) (probs[i] * inv);
}

void dsv4_top_k_top_p(float * probs, int64_t n, int32_t top_k, float top_p, std::vector<int32_t> & idx) {
    const bool use_k = top_k > 0 && top_k < n;
    const bool use_p = top_p < 1.0f;
    if (!use_k && !use_p) return;
    idx.resize((size_t) n);
    for (int64_t i = 0; i < n; i++) idx[(size_t) i] = (int32_t) i;
    auto more = [probs](int32_t a, int32_t b) { return probs[a] != probs[b] ? probs[a] > probs[b] : a < b; };
    int64_t keep = n;
    if (use_k) {
        std::nth_element(idx.begin(), idx.begin() + top_k, idx.end(), more);
        keep = top_k;
    }
    if (use_p) {
        std::sort(idx.begin(), idx.begin() + keep, more);
        double total = 0.0;
        for (int64_t i = 0; i < keep; i++) total += probs[idx[(size_t) i]];
        double cum = 0.0;
        int64_t k = 0;
        while (k < keep) {
            cum += probs[idx[(size_t) k]];
            k++;
            if (cum >= (double) top_p * total) break;
        }
        keep = std::max<int64_t>(k, 1);
    }
    std::vector<float> kept((size_t) keep);
    double sum = 0.0;
    for (int64_t i = 0; i < keep; i++) {
        kept[(size_t) i] = probs[idx[(size_t) i]];
        sum += kept[(size_t) i];
    }
    for (int64_t i = 0; i < n; i++) probs[i] = 0.0f;
    const double inv = sum > 0.0 ? 1.0 / sum : 0.0;
    for (int64_t i = 0; i < keep; i++) probs[idx[(size_t) i]] = (float) (kept[(size_t) i] * inv);
}

int32_t dsv4_sample(const float * probs, int64_t n, dsv4_rng * r) {
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) total += probs[i];
    const double u = dsv4_rng_uniform(r) * total;
    double cum = 0.0;
    int64_t last = -1;
    for (int64_t i = 0; i < n; i++) {
        if (probs[i] <= 0.0f) continue;
        cum += probs[i];
        last = i;
        if (u < cum) return (int32_t) i;
    }
    return (int32_t) (last >= 0 ? last : 0);
}
