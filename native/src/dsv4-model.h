// Hyperparameters and bound weight tensors of a DeepSeek-V4 model (+ DSpark draft), read from a
// dsv4 GGUF or an upstream llama.cpp deepseek4 GGUF. Internal: the forward pass, the caches and
// the draft code read these structs; only dsv4-model.cpp fills them.
//
// Conventions
// - Linear weights are dsv4_weight (cpu/dsv4-matmul.h), PyTorch orientation [n_out, n_in], data
//   borrowed from the GGUF mapping (FP8_E4M3 carries its F32 block-scale table).
// - Small vectors and the mHC tables (norm weights, hc_*, sinks, ape, gate bias) are converted to
//   F32 once at load (files store them as F32 or BF16) and owned by the model: the forward pass
//   reads plain `const float *`.
// - Shapes below are PyTorch order; the loader checks every tensor against them.
#pragma once

#include "dsv4.h"
#include "dsv4-gguf.h"
#include "dsv4-types.h"
#include "cpu/dsv4-matmul.h"

#include <stdlib.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

enum dsv4_arch {
    DSV4_ARCH_DSV4      = 0,  // our single-file layout (target + optional DSpark draft)
    DSV4_ARCH_DEEPSEEK4 = 1,  // upstream llama.cpp target file
};

struct dsv4_hparams {
    int32_t n_vocab          = 0;
    int32_t n_embd           = 0;   // d
    int32_t n_layer          = 0;   // target layers (draft stages are not counted)
    int32_t n_ctx_train      = 0;
    int32_t n_head           = 0;   // H
    int32_t head_dim         = 0;   // 512 in V4 (K = V = the latent)
    int32_t rope_dim         = 0;   // 64: the LAST rope_dim dims of a head are roped
    int32_t q_lora_rank      = 0;
    int32_t o_groups         = 0;
    int32_t o_lora_rank      = 0;
    int32_t window           = 0;   // sliding window W (128 in V4)
    std::vector<int32_t> compress_ratios;  // one per target layer: 0, 4 or 128

    float   rope_freq_base          = 10000.0f;   // ratio-0 layers and draft stages, no YaRN
    float   compress_rope_freq_base = 160000.0f;  // ratio 4/128 layers, with YaRN
    float   rope_scaling_factor     = 1.0f;       // YaRN factor (16)
    int32_t rope_orig_ctx           = 0;          // YaRN original context (65536); 0 = no YaRN
    float   yarn_beta_fast          = 32.0f;
    float   yarn_beta_slow          = 1.0f;
    float   norm_eps                = 1e-6f;

    int32_t indexer_n_head   = 0;
    int32_t indexer_head_dim = 0;
    int32_t indexer_top_k    = 0;

    int32_t n_expert         = 0;
    int32_t n_expert_used    = 0;   // k
    int32_t n_expert_shared  = 0;   // 1
    int32_t n_ff_exp         = 0;   // I
    float   expert_weights_scale = 1.0f;  // route_scale
    bool    expert_weights_norm  = true;
    int32_t n_hash_layer     = 0;   // layers [0, n_hash_layer) route through tid2eid

    int32_t hc_mult          = 0;   // 4
    int32_t hc_sinkhorn_iters = 0;  // 20
    float   hc_eps           = 1e-6f;

    int32_t bos_id = -1;
    int32_t eos_id = -1;
};

struct dsv4_dspark_hparams {
    bool    present             = false;
    int32_t n_stage             = 0;
    int32_t block_size          = 0;   // trained gamma
    int32_t noise_token_id      = -1;
    int32_t markov_rank         = 0;
    int32_t window              = 0;   // ring slots per stage
    bool    sample_from_anchor  = true;
    bool    has_confidence_head = false;
    std::vector<int32_t> target_layer_ids;  // taps: outputs of these target layers (0-based)
    std::vector<float>   sts_temperatures;  // empty: 1.0 at every position
};

// One transformer block: a target layer, or a DSpark stage (ratio 0, no hash routing).
struct dsv4_layer {
    int32_t ratio      = 0;      // 0 (window only), 4 (CSA) or 128 (HCA)
    bool    hash       = false;  // routes through tid2eid
    float   swiglu_limit       = 0.0f;  // routed experts; 0 = no clamp
    float   swiglu_limit_shexp = 0.0f;  // shared expert

    // mHC (v4-model.md §3): fn [(2+hc)*hc, hc*d], base [(2+hc)*hc], scale [3]
    const float * hc_attn_fn = nullptr, * hc_attn_base = nullptr, * hc_attn_scale = nullptr;
    const float * hc_ffn_fn  = nullptr, * hc_ffn_base  = nullptr, * hc_ffn_scale  = nullptr;
    const float * attn_norm = nullptr;  // [d]
    const float * ffn_norm  = nullptr;  // [d]

    // attention (§4)
    const float * attn_sinks = nullptr;  // [H]
    dsv4_weight   wq_a{};                // [q_lora, d]
    const float * q_norm = nullptr;      // [q_lora]
    dsv4_weight   wq_b{};                // [H*hd, q_lora]
    dsv4_weight   wkv{};                 // [hd, d]
    const float * kv_norm = nullptr;     // [hd]
    dsv4_weight   wo_a{};                // [G*o_lora, H*hd/G]; group g = rows [g*o_lora, (g+1)*o_lora)
    dsv4_weight   wo_b{};                // [d, G*o_lora]

    // compressor (ratio > 0), coff = 2 for ratio 4 else 1
    dsv4_weight   comp_wkv{};            // [coff*hd, d]
    dsv4_weight   comp_wgate{};          // [coff*hd, d]
    const float * comp_ape  = nullptr;   // [ratio, coff*hd]
    const float * comp_norm = nullptr;   // [hd]

    // lightning indexer (ratio == 4)
    dsv4_weight   idx_wq_b{};            // [Hi*Di, q_lora]
    dsv4_weight   idx_proj{};            // [Hi, d]  (weights_proj)
    dsv4_weight   idx_comp_wkv{};        // [2*Di, d]
    dsv4_weight   idx_comp_wgate{};      // [2*Di, d]
    const float * idx_comp_ape  = nullptr;  // [4, 2*Di]
    const float * idx_comp_norm = nullptr;  // [Di]

    // MoE (§5)
    dsv4_weight     gate_inp{};             // [E, d]
    const float *   exp_probs_b = nullptr;  // [E] (non-hash layers)
    const int32_t * tid2eid     = nullptr;  // [V, k] (hash layers), every id validated < E
    dsv4_weight     ffn_gate_exps{};        // experts [E, I, d]  (w1)
    dsv4_weight     ffn_up_exps{};          // experts [E, I, d]  (w3)
    dsv4_weight     ffn_down_exps{};        // experts [E, d, I]  (w2)
    dsv4_weight     ffn_gate_shexp{};       // [I, d]
    dsv4_weight     ffn_up_shexp{};         // [I, d]
    dsv4_weight     ffn_down_shexp{};       // [d, I]
};

// The layer's dense linear weights (every one the forward pass multiplies by as a whole matrix;
// not the experts, which go through the MoE entry point, nor wo_a, used by output group), for
// the code that visits them all: packing at load, matmul scratch sizing. Absent ones have no data.
template <typename Layer>  // dsv4_layer or const dsv4_layer: pointers of the same constness
inline auto dsv4_layer_dense_linears(Layer & l) {
    return std::array{&l.wq_a, &l.wq_b, &l.wkv, &l.wo_b, &l.comp_wkv, &l.comp_wgate, &l.idx_wq_b, &l.idx_proj,
            &l.idx_comp_wkv, &l.idx_comp_wgate, &l.gate_inp, &l.ffn_gate_shexp, &l.ffn_up_shexp, &l.ffn_down_shexp};
}

struct dsv4_model {
    std::string          path;
    dsv4_gguf *          gguf = nullptr;  // owns the mapping
    std::string          draft_path;      // the dflash sidecar the draft came from ("" = none)
    dsv4_gguf *          draft_gguf = nullptr;  // its mapping (NULL without a sidecar)
    dsv4_arch            arch = DSV4_ARCH_DSV4;
    dsv4_hparams         hp;
    dsv4_dspark_hparams  dspark;          // dspark.present only when the draft was bound

    dsv4_weight   token_embd{};           // [V, d] (row gather)
    dsv4_weight   output{};               // [V, d]
    const float * output_norm = nullptr;  // [d]
    const float * output_hc_fn = nullptr, * output_hc_base = nullptr, * output_hc_scale = nullptr;  // [hc, hc*d], [hc], [1]

    std::vector<dsv4_layer> layers;       // n_layer target layers, then dspark.n_stage draft stages

    // DSpark heads (present with the draft)
    dsv4_weight   dspark_fc{};            // [d, n_tap*d]
    const float * dspark_fc_norm = nullptr;      // [d]
    const float * dspark_output_norm = nullptr;  // [d]
    const float * dspark_output_hc_fn = nullptr, * dspark_output_hc_base = nullptr, * dspark_output_hc_scale = nullptr;
    dsv4_weight   markov_w1{};            // [V, r] (row gather)
    dsv4_weight   markov_w2{};            // [V, r]
    dsv4_weight   conf_proj{};            // [1, d + r]
    const float * conf_proj_bias = nullptr;  // [1] or NULL

    uint64_t weight_bytes = 0;
    std::vector<std::unique_ptr<float[]>> f32_storage;  // the converted small tensors
    struct free_deleter { void operator()(uint8_t * p) const { free(p); } };
    std::vector<std::unique_ptr<uint8_t, free_deleter>> packed_storage;  // repacked MXFP4 / FP8 weights
    uint64_t packed_bytes = 0;            // their total size
};
