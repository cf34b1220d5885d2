// Model loading: hyperparameters from GGUF keys, every tensor bound and validated against them.
//
// Two layouts are read (gguf-layout.md): our `dsv4` file (FP8 weights as e4m3 bytes in an I8
// tensor plus an F32 `.scale` table, MXFP4 experts, optional DSpark draft) and upstream llama.cpp's
// `deepseek4` file (Q8_0/BF16 dense, MXFP4 experts). Keys use the architecture name as prefix with
// the same suffixes in both. Nothing is used before it is checked: a wrong shape, type or a
// missing tensor fails the load with a message naming the tensor and what was expected.
#include "dsv4-model.h"
#include "dsv4-impl.h"

#include <cmath>
#include <cstring>
#include <new>

namespace {

constexpr uint32_t k_expert_gating_sqrt_softplus = 4;  // upstream's LLAMA_EXPERT_GATING_FUNC_TYPE

struct loader {
    dsv4_model *  m;
    std::string   prefix;  // "dsv4" / "deepseek4" / "dflash"
    dsv4_gguf *   gguf;    // the file read: the model's, or its draft sidecar
    std::string   file;
    uint64_t      bound_bytes = 0;

    const char * path() const { return file.c_str(); }

    std::string key(const char * suffix) const { return prefix + "." + suffix; }

    // ---- keys -----------------------------------------------------------------------------------
    // True when the key is absent and optional: the caller uses its default. A missing required
    // key goes on to the GGUF getter, which reports it by name.
    bool optional_absent(const std::string & k, bool required) const {
        return !required && dsv4_gguf_find_key(gguf, k.c_str()) < 0;
    }

    dsv4_status get_i32(const char * suffix, int32_t * out, bool required = true, int32_t def = 0) {
        std::string k = key(suffix);
        if (optional_absent(k, required)) {
            *out = def;
            return DSV4_OK;
        }
        int64_t v = 0;
        dsv4_status st = dsv4_gguf_get_i64(gguf, k.c_str(), &v);
        if (st != DSV4_OK) return st;
        if (v < INT32_MIN || v > INT32_MAX) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: metadata key %s = %lld is out of range", path(), k.c_str(), (long long) v);
        }
        *out = (int32_t) v;
        return DSV4_OK;
    }

    dsv4_status get_f32(const char * suffix, float * out, bool required = true, float def = 0.0f) {
        std::string k = key(suffix);
        if (optional_absent(k, required)) {
            *out = def;
            return DSV4_OK;
        }
        double v = 0;
        dsv4_status st = dsv4_gguf_get_f64(gguf, k.c_str(), &v);
        if (st != DSV4_OK) return st;
        *out = (float) v;
        return DSV4_OK;
    }

    dsv4_status get_bool(const char * suffix, bool * out, bool required = true, bool def = false) {
        std::string k = key(suffix);
        if (optional_absent(k, required)) {
            *out = def;
            return DSV4_OK;
        }
        return dsv4_gguf_get_bool(gguf, k.c_str(), out);
    }

    // A numeric array of at least `min_len` elements (all of it is returned).
    template <typename T>
    dsv4_status get_arr(const char * suffix, std::vector<T> & out, uint64_t min_len, bool required = true) {
        std::string k = key(suffix);
        int64_t idx = dsv4_gguf_find_key(gguf, k.c_str());
        if (idx < 0) {
            if (required) return dsv4_set_error(DSV4_ERR_FORMAT, "%s: missing metadata key %s", path(), k.c_str());
            out.clear();
            return DSV4_OK;
        }
        if (dsv4_gguf_kv_type(gguf, idx) != DSV4_GGUF_ARRAY) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: metadata key %s is not an array", path(), k.c_str());
        }
        uint64_t n = dsv4_gguf_arr_len(gguf, idx);
        if (n < min_len) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: metadata key %s has %llu elements, expected at least %llu",
                                  path(), k.c_str(), (unsigned long long) n, (unsigned long long) min_len);
        }
        std::vector<double> tmp(n);
        dsv4_status st = dsv4_gguf_get_arr_f64(gguf, k.c_str(), tmp.data(), n);
        if (st != DSV4_OK) return st;
        out.resize(n);
        for (uint64_t i = 0; i < n; i++) out[i] = (T) tmp[i];
        return DSV4_OK;
    }

    // ---- tensors --------------------------------------------------------------------------------
    const dsv4_gguf_tensor * find(const std::string & name) const {
        return dsv4_gguf_find_tensor(gguf, name.c_str());
    }

    dsv4_status missing(const std::string & name) const {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: missing tensor %s", path(), name.c_str());
    }

    // Checks a tensor's ggml shape ne[0..n) (fastest first) = PyTorch shape reversed.
    dsv4_status check_shape(const dsv4_gguf_tensor * t, std::initializer_list<int64_t> want_torch) const {
        std::vector<int64_t> want(want_torch);
        bool ok = t->n_dims == want.size();
        for (size_t i = 0; ok && i < want.size(); i++) ok = t->ne[i] == want[want.size() - 1 - i];
        if (ok) return DSV4_OK;
        std::string got, exp;
        for (uint32_t i = 0; i < t->n_dims; i++) got += (i ? ", " : "") + std::to_string(t->ne[i]);
        for (size_t i = 0; i < want.size(); i++) exp += (i ? ", " : "") + std::to_string(want[want.size() - 1 - i]);
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s has shape {%s}, expected {%s} from the hyperparameters",
                              path(), t->name, got.c_str(), exp.c_str());
    }

    dsv4_status to_dsv4_type(const dsv4_gguf_tensor * t, dsv4_type * out) const {
        if (dsv4_type_from_gguf((int32_t) t->type, out) != DSV4_OK) {
            return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: tensor %s has unsupported type %s", path(), t->name,
                                  dsv4_gguf_type_name(t->type));
        }
        return DSV4_OK;
    }

    // A linear weight [n_out, n_in]: F32/F16/BF16/Q8_0/MXFP4, or FP8 = I8 e4m3 bytes + F32 `.scale`.
    dsv4_status linear(const std::string & base, int64_t n_out, int64_t n_in, dsv4_weight * w, bool required = true) {
        const std::string wname = base + ".weight";
        const dsv4_gguf_tensor * t = find(wname);
        if (!t) return required ? missing(wname) : DSV4_OK;
        dsv4_status st = check_shape(t, {n_out, n_in});
        if (st != DSV4_OK) return st;
        dsv4_type type;
        if ((st = to_dsv4_type(t, &type)) != DSV4_OK) return st;
        const float * scale = nullptr;
        if (type == DSV4_TYPE_I8) {
            // dsv4 FP8: the scale table sits beside the weight (formats.md).
            const std::string sname = base + ".scale";
            const dsv4_gguf_tensor * s = find(sname);
            if (!s) return dsv4_set_error(DSV4_ERR_FORMAT, "%s: FP8 tensor %s has no scale tensor %s", path(), wname.c_str(), sname.c_str());
            if (s->type != DSV4_GGUF_TYPE_F32) {
                return dsv4_set_error(DSV4_ERR_FORMAT, "%s: scale tensor %s must be F32, got %s", path(), sname.c_str(),
                                      dsv4_gguf_type_name(s->type));
            }
            if ((st = check_shape(s, {(n_out + 127) / 128, (n_in + 127) / 128})) != DSV4_OK) return st;
            scale = (const float *) s->data;
            int64_t n_scale = ((n_out + 127) / 128) * ((n_in + 127) / 128);
            for (int64_t i = 0; i < n_scale; i++) {
                if (!std::isfinite(scale[i]) || scale[i] <= 0.0f) {
                    return dsv4_set_error(DSV4_ERR_FORMAT, "%s: scale tensor %s holds an invalid scale (%g at %lld)", path(),
                                          sname.c_str(), (double) scale[i], (long long) i);
                }
            }
            bound_bytes += s->nbytes;
            type = DSV4_TYPE_FP8_E4M3;
        } else if (type == DSV4_TYPE_I32) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s has type I32, not a weight type", path(), wname.c_str());
        }
        if (dsv4_weight_row_bytes(type, n_in) == 0) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s: rows of %lld are not whole %s blocks", path(), wname.c_str(),
                                  (long long) n_in, dsv4_get_type_traits(type)->name);
        }
        dsv4_weight_init(w, type, n_out, n_in, t->data, scale);
        bound_bytes += t->nbytes;
        return DSV4_OK;
    }

    // A stack of experts [n_expert, n_out, n_in] (MXFP4 in both layouts; other float/Q8_0 types allowed).
    dsv4_status experts(const std::string & base, int64_t n_expert, int64_t n_out, int64_t n_in, dsv4_weight * w) {
        const std::string wname = base + ".weight";
        const dsv4_gguf_tensor * t = find(wname);
        if (!t) return missing(wname);
        dsv4_status st = check_shape(t, {n_expert, n_out, n_in});
        if (st != DSV4_OK) return st;
        dsv4_type type;
        if ((st = to_dsv4_type(t, &type)) != DSV4_OK) return st;
        if (type == DSV4_TYPE_I8 || type == DSV4_TYPE_I32 || dsv4_weight_row_bytes(type, n_in) == 0) {
            return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: expert tensor %s has unsupported type %s", path(), wname.c_str(),
                                  dsv4_gguf_type_name(t->type));
        }
        dsv4_weight_init_experts(w, type, n_expert, n_out, n_in, t->data, nullptr);
        bound_bytes += t->nbytes;
        return DSV4_OK;
    }

    // A small float tensor of PyTorch shape `shape` (F32/F16/BF16), converted to an owned F32 copy.
    dsv4_status floats(const std::string & name, std::initializer_list<int64_t> shape, const float ** out, bool required = true) {
        const dsv4_gguf_tensor * t = find(name);
        if (!t) return required ? missing(name) : DSV4_OK;
        dsv4_status st = check_shape(t, shape);
        if (st != DSV4_OK) return st;
        dsv4_type type;
        if ((st = to_dsv4_type(t, &type)) != DSV4_OK) return st;
        if (type != DSV4_TYPE_F32 && type != DSV4_TYPE_F16 && type != DSV4_TYPE_BF16) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s must be F32, F16 or BF16, got %s", path(), name.c_str(),
                                  dsv4_gguf_type_name(t->type));
        }
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        std::unique_ptr<float[]> buf(new (std::nothrow) float[(size_t) n]);
        if (!buf) return dsv4_set_error(DSV4_ERR_NO_MEMORY, "%s: out of memory converting %s", path(), name.c_str());
        if ((st = dsv4_type_to_float(type, t->data, (size_t) t->nbytes, buf.get(), n)) != DSV4_OK) return st;
        *out = buf.get();
        m->f32_storage.push_back(std::move(buf));
        bound_bytes += t->nbytes;
        return DSV4_OK;
    }

    // tid2eid [V, k] as I32 (upstream and dsv4 both write I32), each id checked against E.
    dsv4_status tid2eid(const std::string & name, int64_t n_vocab, int64_t k, int64_t n_expert, const int32_t ** out) {
        const dsv4_gguf_tensor * t = find(name);
        if (!t) return missing(name);
        dsv4_status st = check_shape(t, {n_vocab, k});
        if (st != DSV4_OK) return st;
        if (t->type != DSV4_GGUF_TYPE_I32) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s must be I32, got %s", path(), name.c_str(), dsv4_gguf_type_name(t->type));
        }
        const int32_t * ids = (const int32_t *) t->data;
        for (int64_t i = 0; i < n_vocab * k; i++) {
            if (ids[i] < 0 || ids[i] >= n_expert) {
                return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s routes token %lld to expert %d (have %lld experts)",
                                      path(), name.c_str(), (long long) (i / k), ids[i], (long long) n_expert);
            }
        }
        *out = ids;
        bound_bytes += t->nbytes;
        return DSV4_OK;
    }
};

#define TRY(expr) do { dsv4_status st_ = (expr); if (st_ != DSV4_OK) return st_; } while (0)

dsv4_status read_hparams(loader & L) {
    dsv4_hparams & hp = L.m->hp;
    TRY(L.get_i32("block_count", &hp.n_layer));
    TRY(L.get_i32("context_length", &hp.n_ctx_train));
    TRY(L.get_i32("embedding_length", &hp.n_embd));
    TRY(L.get_i32("attention.head_count", &hp.n_head));
    TRY(L.get_i32("attention.key_length", &hp.head_dim));
    TRY(L.get_i32("rope.dimension_count", &hp.rope_dim));
    TRY(L.get_i32("attention.q_lora_rank", &hp.q_lora_rank));
    TRY(L.get_i32("attention.output_group_count", &hp.o_groups));
    TRY(L.get_i32("attention.output_lora_rank", &hp.o_lora_rank));
    TRY(L.get_i32("attention.sliding_window", &hp.window));
    TRY(L.get_f32("rope.freq_base", &hp.rope_freq_base));
    TRY(L.get_f32("attention.compress_rope_freq_base", &hp.compress_rope_freq_base));
    TRY(L.get_f32("rope.scaling.factor", &hp.rope_scaling_factor, false, 1.0f));
    TRY(L.get_i32("rope.scaling.original_context_length", &hp.rope_orig_ctx, false, 0));
    TRY(L.get_f32("rope.scaling.yarn_beta_fast", &hp.yarn_beta_fast, false, 32.0f));
    TRY(L.get_f32("rope.scaling.yarn_beta_slow", &hp.yarn_beta_slow, false, 1.0f));
    TRY(L.get_f32("attention.layer_norm_rms_epsilon", &hp.norm_eps));
    TRY(L.get_i32("attention.indexer.head_count", &hp.indexer_n_head));
    TRY(L.get_i32("attention.indexer.key_length", &hp.indexer_head_dim));
    TRY(L.get_i32("attention.indexer.top_k", &hp.indexer_top_k));
    TRY(L.get_i32("expert_count", &hp.n_expert));
    TRY(L.get_i32("expert_used_count", &hp.n_expert_used));
    TRY(L.get_i32("expert_shared_count", &hp.n_expert_shared));
    TRY(L.get_i32("expert_feed_forward_length", &hp.n_ff_exp));
    TRY(L.get_f32("expert_weights_scale", &hp.expert_weights_scale));
    TRY(L.get_bool("expert_weights_norm", &hp.expert_weights_norm, false, true));
    TRY(L.get_i32("hash_layer_count", &hp.n_hash_layer));
    TRY(L.get_i32("hyper_connection.count", &hp.hc_mult));
    TRY(L.get_i32("hyper_connection.sinkhorn_iterations", &hp.hc_sinkhorn_iters));
    TRY(L.get_f32("hyper_connection.epsilon", &hp.hc_eps));
    int32_t gating = 0;
    TRY(L.get_i32("expert_gating_func", &gating));
    const char * p = L.path();
    if ((uint32_t) gating != k_expert_gating_sqrt_softplus) {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: %s = %d: only sqrt-softplus routing (4) is supported", p,
                              L.key("expert_gating_func").c_str(), gating);
    }
    if (hp.n_layer <= 0) return dsv4_set_error(DSV4_ERR_FORMAT, "%s: block_count must be positive", p);
    std::vector<int32_t> ratios;
    TRY(L.get_arr("attention.compress_ratios", ratios, (uint64_t) hp.n_layer));
    hp.compress_ratios.assign(ratios.begin(), ratios.begin() + hp.n_layer);  // upstream appends the MTP entries
    for (int32_t i = 0; i < hp.n_layer; i++) {
        int32_t r = hp.compress_ratios[i];
        if (r != 0 && r != 4 && r != 128) {
            return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: layer %d has compress ratio %d (supported: 0, 4, 128)", p, i, r);
        }
    }
    int64_t bos = -1, eos = -1;
    if (dsv4_gguf_find_key(L.m->gguf, "tokenizer.ggml.bos_token_id") >= 0) dsv4_gguf_get_i64(L.m->gguf, "tokenizer.ggml.bos_token_id", &bos);
    if (dsv4_gguf_find_key(L.m->gguf, "tokenizer.ggml.eos_token_id") >= 0) dsv4_gguf_get_i64(L.m->gguf, "tokenizer.ggml.eos_token_id", &eos);
    hp.bos_id = (int32_t) bos;
    hp.eos_id = (int32_t) eos;

    // Sanity of the shape-defining values, so the binding below cannot overflow or divide by zero.
    struct { const char * name; int64_t v; int64_t lo; int64_t hi; } checks[] = {
        {"embedding_length", hp.n_embd, 1, 1 << 16},
        {"attention.head_count", hp.n_head, 1, 1 << 12},
        {"attention.key_length", hp.head_dim, 2, 1 << 14},
        {"rope.dimension_count", hp.rope_dim, 2, hp.head_dim},
        {"attention.q_lora_rank", hp.q_lora_rank, 1, 1 << 16},
        {"attention.output_group_count", hp.o_groups, 1, hp.n_head},
        {"attention.output_lora_rank", hp.o_lora_rank, 1, 1 << 16},
        {"attention.sliding_window", hp.window, 1, 1 << 20},
        {"attention.indexer.head_count", hp.indexer_n_head, 1, 1 << 12},
        {"attention.indexer.key_length", hp.indexer_head_dim, hp.rope_dim, 1 << 14},
        {"attention.indexer.top_k", hp.indexer_top_k, 1, 1 << 24},
        {"expert_count", hp.n_expert, 1, 1 << 16},
        {"expert_used_count", hp.n_expert_used, 1, hp.n_expert},
        {"expert_shared_count", hp.n_expert_shared, 1, 1},
        {"expert_feed_forward_length", hp.n_ff_exp, 1, 1 << 20},
        {"hash_layer_count", hp.n_hash_layer, 0, hp.n_layer},
        {"hyper_connection.count", hp.hc_mult, 1, 64},
        {"hyper_connection.sinkhorn_iterations", hp.hc_sinkhorn_iters, 1, 1000},
        {"context_length", hp.n_ctx_train, 1, INT32_MAX},
    };
    for (const auto & c : checks) {
        if (c.v < c.lo || c.v > c.hi) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: %s = %lld is out of range [%lld, %lld]", p, L.key(c.name).c_str(),
                                  (long long) c.v, (long long) c.lo, (long long) c.hi);
        }
    }
    if (hp.rope_dim % 2 != 0 || hp.n_head % hp.o_groups != 0 || (hp.indexer_head_dim & (hp.indexer_head_dim - 1)) != 0) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: inconsistent attention shape (rope dims must be even, heads divisible "
                              "by output groups, indexer key length a power of two)", p);
    }
    return DSV4_OK;
}

// Per-layer SwiGLU limits: arrays in the file (one per layer incl. stages), or one value.
dsv4_status read_swiglu(loader & L, std::vector<float> & exp, std::vector<float> & shexp, size_t n_blocks) {
    TRY(L.get_arr("swiglu_clamp_exp", exp, 1));
    TRY(L.get_arr("swiglu_clamp_shexp", shexp, 1, false));
    if (shexp.empty()) shexp = exp;
    if (exp.size() == 1) exp.assign(n_blocks, exp[0]);
    if (shexp.size() == 1) shexp.assign(n_blocks, shexp[0]);
    // Draft stages use the last target value when the arrays cover only the target.
    while (exp.size() < n_blocks) exp.push_back(exp.back());
    while (shexp.size() < n_blocks) shexp.push_back(shexp.back());
    return DSV4_OK;
}

dsv4_status bind_block(loader & L, int il, int32_t ratio, bool hash, float clamp, float clamp_sh, dsv4_layer & l) {
    const dsv4_hparams & hp = L.m->hp;
    const std::string b = "blk." + std::to_string(il) + ".";
    const int64_t d = hp.n_embd, hc = hp.hc_mult, mix = (2 + hc) * hc;
    const int64_t H = hp.n_head, hd = hp.head_dim, G = hp.o_groups;
    l.ratio = ratio;
    l.hash = hash;
    l.swiglu_limit = clamp;
    l.swiglu_limit_shexp = clamp_sh;
    TRY(L.floats(b + "hc_attn_fn.weight", {mix, hc * d}, &l.hc_attn_fn));
    TRY(L.floats(b + "hc_attn_base.weight", {mix}, &l.hc_attn_base));
    TRY(L.floats(b + "hc_attn_scale.weight", {3}, &l.hc_attn_scale));
    TRY(L.floats(b + "hc_ffn_fn.weight", {mix, hc * d}, &l.hc_ffn_fn));
    TRY(L.floats(b + "hc_ffn_base.weight", {mix}, &l.hc_ffn_base));
    TRY(L.floats(b + "hc_ffn_scale.weight", {3}, &l.hc_ffn_scale));
    TRY(L.floats(b + "attn_norm.weight", {d}, &l.attn_norm));
    TRY(L.floats(b + "ffn_norm.weight", {d}, &l.ffn_norm));
    TRY(L.floats(b + "attn_sinks.weight", {H}, &l.attn_sinks));
    TRY(L.linear(b + "attn_q_a", hp.q_lora_rank, d, &l.wq_a));
    TRY(L.floats(b + "attn_q_a_norm.weight", {hp.q_lora_rank}, &l.q_norm));
    TRY(L.linear(b + "attn_q_b", H * hd, hp.q_lora_rank, &l.wq_b));
    TRY(L.linear(b + "attn_kv", hd, d, &l.wkv));
    TRY(L.floats(b + "attn_kv_a_norm.weight", {hd}, &l.kv_norm));
    TRY(L.linear(b + "attn_output_a", G * hp.o_lora_rank, H * hd / G, &l.wo_a));
    TRY(L.linear(b + "attn_output_b", d, G * hp.o_lora_rank, &l.wo_b));
    if (ratio > 0) {
        const int64_t coff = ratio == 4 ? 2 : 1;
        TRY(L.linear(b + "attn_compressor_kv", coff * hd, d, &l.comp_wkv));
        TRY(L.linear(b + "attn_compressor_gate", coff * hd, d, &l.comp_wgate));
        TRY(L.floats(b + "attn_compressor_ape.weight", {ratio, coff * hd}, &l.comp_ape));
        TRY(L.floats(b + "attn_compressor_norm.weight", {hd}, &l.comp_norm));
    }
    if (ratio == 4) {
        const int64_t Hi = hp.indexer_n_head, Di = hp.indexer_head_dim;
        TRY(L.linear(b + "indexer.attn_q_b", Hi * Di, hp.q_lora_rank, &l.idx_wq_b));
        TRY(L.linear(b + "indexer.proj", Hi, d, &l.idx_proj));
        TRY(L.linear(b + "indexer_compressor_kv", 2 * Di, d, &l.idx_comp_wkv));
        TRY(L.linear(b + "indexer_compressor_gate", 2 * Di, d, &l.idx_comp_wgate));
        TRY(L.floats(b + "indexer_compressor_ape.weight", {4, 2 * Di}, &l.idx_comp_ape));
        TRY(L.floats(b + "indexer_compressor_norm.weight", {Di}, &l.idx_comp_norm));
    }
    const int64_t E = hp.n_expert, I = hp.n_ff_exp;
    TRY(L.linear(b + "ffn_gate_inp", E, d, &l.gate_inp));
    if (hash) {
        TRY(L.tid2eid(b + "ffn_gate_tid2eid.weight", hp.n_vocab, hp.n_expert_used, E, &l.tid2eid));
    } else {
        TRY(L.floats(b + "exp_probs_b.bias", {E}, &l.exp_probs_b));
    }
    TRY(L.experts(b + "ffn_gate_exps", E, I, d, &l.ffn_gate_exps));
    TRY(L.experts(b + "ffn_up_exps", E, I, d, &l.ffn_up_exps));
    TRY(L.experts(b + "ffn_down_exps", E, d, I, &l.ffn_down_exps));
    const int64_t Is = I * hp.n_expert_shared;
    TRY(L.linear(b + "ffn_gate_shexp", Is, d, &l.ffn_gate_shexp));
    TRY(L.linear(b + "ffn_up_shexp", Is, d, &l.ffn_up_shexp));
    TRY(L.linear(b + "ffn_down_shexp", d, Is, &l.ffn_down_shexp));
    return DSV4_OK;
}

dsv4_status check_dspark(const char * p, const dsv4_dspark_hparams & ds, const dsv4_hparams & hp);

dsv4_status read_dspark(loader & L) {
    dsv4_dspark_hparams & ds = L.m->dspark;
    const dsv4_hparams & hp = L.m->hp;
    const char * p = L.path();
    TRY(L.get_i32("dspark.stage_count", &ds.n_stage));
    TRY(L.get_i32("dspark.block_size", &ds.block_size));
    TRY(L.get_i32("dspark.noise_token_id", &ds.noise_token_id));
    TRY(L.get_i32("dspark.markov_rank", &ds.markov_rank));
    TRY(L.get_i32("dspark.sliding_window", &ds.window, false, hp.window));
    TRY(L.get_bool("dspark.sample_from_anchor", &ds.sample_from_anchor));
    TRY(L.get_bool("dspark.has_confidence_head", &ds.has_confidence_head));
    TRY(L.get_arr("dspark.target_layer_ids", ds.target_layer_ids, 1));
    TRY(L.get_arr("dspark.sts_temperatures", ds.sts_temperatures, 0, false));
    const std::string tap_key = L.key("dspark.target_tap");
    const char * tap = nullptr; uint64_t tap_len = 0;
    TRY(dsv4_gguf_get_str(L.m->gguf, tap_key.c_str(), &tap, &tap_len));
    if (std::string(tap, tap_len) != "layer_output") {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: %s = \"%.*s\": only \"layer_output\" taps are supported", p,
                              tap_key.c_str(), (int) tap_len, tap);
    }
    return check_dspark(p, ds, hp);
}

// The draft hyperparameters of a llama.cpp `dflash` sidecar (docs/llama-cpp-compat.md): keys under
// `dflash.`, taps as `target_layers` = our layer ids + 1 (llama.cpp taps the input of the next
// layer), the noise token as the tokenizer's mask token, the Markov rank from markov_w1's shape.
// The stage blocks share the target's shapes, so the keys that define them must agree with it.
dsv4_status read_dspark_sidecar(loader & S) {
    dsv4_dspark_hparams & ds = S.m->dspark;
    const dsv4_hparams & hp = S.m->hp;
    const char * p = S.path();
    struct { const char * key; int32_t want; } same[] = {
        {"embedding_length", hp.n_embd},
        {"attention.head_count", hp.n_head},
        {"attention.key_length", hp.head_dim},
        {"rope.dimension_count", hp.rope_dim},
        {"attention.q_lora_rank", hp.q_lora_rank},
        {"attention.output_group_count", hp.o_groups},
        {"attention.output_lora_rank", hp.o_lora_rank},
        {"expert_count", hp.n_expert},
        {"expert_used_count", hp.n_expert_used},
        {"expert_feed_forward_length", hp.n_ff_exp},
        {"hyper_connection.count", hp.hc_mult},
    };
    for (const auto & c : same) {
        int32_t v = 0;
        TRY(S.get_i32(c.key, &v));
        if (v != c.want) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: %s = %d but the target model has %d: this draft was made for "
                                  "another model", p, S.key(c.key).c_str(), v, c.want);
        }
    }
    const int64_t i_tok = dsv4_gguf_find_key(S.gguf, "tokenizer.ggml.tokens");
    if (i_tok >= 0 && dsv4_gguf_arr_len(S.gguf, i_tok) != (uint64_t) hp.n_vocab) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: the draft's vocabulary has %llu tokens but the target model has %d: "
                              "this draft was made for another model", p,
                              (unsigned long long) dsv4_gguf_arr_len(S.gguf, i_tok), hp.n_vocab);
    }
    TRY(S.get_i32("block_count", &ds.n_stage));
    TRY(S.get_i32("block_size", &ds.block_size));
    TRY(S.get_i32("attention.sliding_window", &ds.window, false, hp.window));
    TRY(S.get_bool("sample_from_anchor", &ds.sample_from_anchor, false, true));  // llama.cpp: absent = true
    const dsv4_gguf_tensor * conf = S.find("conf_proj.weight");
    TRY(S.get_bool("has_confidence_head", &ds.has_confidence_head, false, conf != nullptr));
    std::vector<int32_t> taps;
    TRY(S.get_arr("target_layers", taps, 1));
    ds.target_layer_ids.clear();
    for (int32_t t : taps) ds.target_layer_ids.push_back(t - 1);
    int64_t noise = -1;
    if (dsv4_gguf_find_key(S.gguf, "tokenizer.ggml.mask_token_id") < 0) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: missing metadata key tokenizer.ggml.mask_token_id (the DSpark noise "
                              "token)", p);
    }
    TRY(dsv4_gguf_get_i64(S.gguf, "tokenizer.ggml.mask_token_id", &noise));
    ds.noise_token_id = noise < 0 || noise > INT32_MAX ? -1 : (int32_t) noise;
    const dsv4_gguf_tensor * w1 = S.find("markov_w1.weight");
    ds.markov_rank = w1 && w1->n_dims == 2 ? (int32_t) w1->ne[0] : 0;
    ds.sts_temperatures.clear();
    return check_dspark(p, ds, hp);
}

dsv4_status check_dspark(const char * p, const dsv4_dspark_hparams & ds, const dsv4_hparams & hp) {
    if (!ds.sample_from_anchor) {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: DSpark drafts with sample_from_anchor = false are not supported", p);
    }
    if (ds.n_stage < 1 || ds.n_stage > 16 || ds.block_size < 1 || ds.block_size > 64 || ds.markov_rank < 0 ||
        ds.window < 1 || ds.noise_token_id < 0 || ds.noise_token_id >= hp.n_vocab) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: invalid DSpark hyperparameters (stages %d, block %d, rank %d, window %d, noise token %d)",
                              p, ds.n_stage, ds.block_size, ds.markov_rank, ds.window, ds.noise_token_id);
    }
    for (int32_t id : ds.target_layer_ids) {
        if (id < 0 || id >= hp.n_layer) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: DSpark target layer %d is not a target layer (0..%d)", p, id, hp.n_layer - 1);
        }
    }
    if (!ds.sts_temperatures.empty() && ds.sts_temperatures.size() != (size_t) ds.block_size) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: dspark.sts_temperatures has %zu entries, expected block_size = %d", p,
                              ds.sts_temperatures.size(), ds.block_size);
    }
    return DSV4_OK;
}

// The heads: `dspark.<name>` in a dsv4 file; in a dflash sidecar the names carry no prefix and
// fc_norm is `enc.output_norm` (docs/llama-cpp-compat.md).
dsv4_status bind_draft_heads(loader & L, bool sidecar) {
    dsv4_model * m = L.m;
    const dsv4_hparams & hp = m->hp;
    const int64_t d = hp.n_embd, hc = hp.hc_mult, V = hp.n_vocab, r = m->dspark.markov_rank;
    const int64_t n_tap = (int64_t) m->dspark.target_layer_ids.size();
    const std::string pre = sidecar ? "" : "dspark.";
    TRY(L.linear(pre + "fc", d, n_tap * d, &m->dspark_fc));
    TRY(L.floats(sidecar ? "enc.output_norm.weight" : "dspark.fc_norm.weight", {d}, &m->dspark_fc_norm));
    TRY(L.floats(pre + "output_norm.weight", {d}, &m->dspark_output_norm));
    TRY(L.floats(pre + "output_hc_fn.weight", {hc, hc * d}, &m->dspark_output_hc_fn));
    TRY(L.floats(pre + "output_hc_base.weight", {hc}, &m->dspark_output_hc_base));
    TRY(L.floats(pre + "output_hc_scale.weight", {1}, &m->dspark_output_hc_scale));
    if (r > 0) {
        TRY(L.linear(pre + "markov_w1", V, r, &m->markov_w1));
        TRY(L.linear(pre + "markov_w2", V, r, &m->markov_w2));
    }
    if (m->dspark.has_confidence_head) {
        TRY(L.linear(pre + "conf_proj", 1, d + r, &m->conf_proj));
        TRY(L.floats(pre + "conf_proj.bias", {1}, &m->conf_proj_bias, false));
    }
    return DSV4_OK;
}

// The draft from a llama.cpp dflash sidecar: stages blk.S -> m->layers[n_layer + S], then the heads.
dsv4_status load_sidecar(dsv4_model * m, const char * path) {
    m->draft_path = path;
    TRY(dsv4_gguf_open(path, &m->draft_gguf));
    const char * arch = nullptr; uint64_t arch_len = 0;
    TRY(dsv4_gguf_get_str(m->draft_gguf, "general.architecture", &arch, &arch_len));
    const std::string arch_name(arch, arch_len);
    if (arch_name != "dflash") {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: not a DSpark draft sidecar: its architecture is \"%s\", expected "
                              "\"dflash\" (the mtp-*.gguf file that `dsv4 convert --llama-cpp` writes)", path,
                              arch_name.c_str());
    }
    loader S{m, arch_name, m->draft_gguf, m->draft_path};
    TRY(read_dspark_sidecar(S));
    const int32_t n_layer = m->hp.n_layer, n_stage = m->dspark.n_stage;
    std::vector<float> clamp, clamp_sh;
    TRY(read_swiglu(S, clamp, clamp_sh, (size_t) n_stage));
    m->layers.resize((size_t) (n_layer + n_stage));
    for (int32_t s = 0; s < n_stage; s++) {
        TRY(bind_block(S, s, 0, false, clamp[(size_t) s], clamp_sh[(size_t) s], m->layers[(size_t) (n_layer + s)]));
    }
    TRY(bind_draft_heads(S, true));
    m->weight_bytes += S.bound_bytes;
    m->dspark.present = true;
    return DSV4_OK;
}

// Weights copied into the packed layouts this CPU's kernels read (cpu/dsv4-matmul.h): MXFP4
// experts (AVX2 / AVX-512 VNNI) and FP8 matrices (AVX512_BF16), target and draft. The same bytes
// rearranged, in owned memory beside the mapping; the mapping's pages of those tensors are then
// only read by paths without a packed kernel (the float-activation mode, row gathers).
dsv4_status pack_weight(dsv4_model * m, dsv4_weight * w) {
    const size_t bytes = dsv4_weight_packed_bytes(w);
    if (bytes == 0 || !w->data || w->packed || !dsv4_cpu_reads_packed(w->type)) return DSV4_OK;
    void * buf = nullptr;
    if (posix_memalign(&buf, 64, bytes) != 0) {
        return dsv4_set_error(DSV4_ERR_NO_MEMORY, "%s: cannot allocate %zu bytes to repack a weight (load with "
                              "repack = false to run from the mapping)", m->path.c_str(), bytes);
    }
    m->packed_storage.emplace_back((uint8_t *) buf);
    dsv4_status st = dsv4_weight_pack(w, buf, bytes);
    if (st != DSV4_OK) return st;
    m->packed_bytes += bytes;
    return DSV4_OK;
}

dsv4_status pack_weights(dsv4_model * m) {
    for (dsv4_layer & l : m->layers) {
        for (dsv4_weight * w : dsv4_layer_dense_linears(l)) {
            dsv4_status st = pack_weight(m, w);
            if (st != DSV4_OK) return st;
        }
        for (dsv4_weight * w : {&l.wo_a, &l.ffn_gate_exps, &l.ffn_up_exps, &l.ffn_down_exps}) {
            dsv4_status st = pack_weight(m, w);
            if (st != DSV4_OK) return st;
        }
    }
    for (dsv4_weight * w : {&m->output, &m->dspark_fc, &m->markov_w2, &m->conf_proj}) {
        dsv4_status st = pack_weight(m, w);
        if (st != DSV4_OK) return st;
    }
    return DSV4_OK;
}

dsv4_status load(dsv4_model * m, const dsv4_model_params & params) {
    TRY(dsv4_gguf_open(m->path.c_str(), &m->gguf));
    const char * arch = nullptr; uint64_t arch_len = 0;
    TRY(dsv4_gguf_get_str(m->gguf, "general.architecture", &arch, &arch_len));
    std::string arch_name(arch, arch_len);
    if (arch_name == "dsv4") {
        m->arch = DSV4_ARCH_DSV4;
    } else if (arch_name == "deepseek4") {
        m->arch = DSV4_ARCH_DEEPSEEK4;
    } else if (arch_name == "dflash") {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: this is a DSpark draft sidecar (architecture dflash); load the "
                              "target model and pass the sidecar as its draft", m->path.c_str());
    } else {
        return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: unknown architecture \"%s\" (expected dsv4 or deepseek4)",
                              m->path.c_str(), arch_name.c_str());
    }
    loader L{m, arch_name, m->gguf, m->path};
    TRY(read_hparams(L));
    dsv4_hparams & hp = m->hp;

    // The vocabulary size comes from the embedding (upstream does not always write vocab_size).
    const dsv4_gguf_tensor * embd = L.find("token_embd.weight");
    if (!embd) return L.missing("token_embd.weight");
    if (embd->n_dims != 2) return dsv4_set_error(DSV4_ERR_FORMAT, "%s: token_embd.weight must be 2-D", m->path.c_str());
    hp.n_vocab = (int32_t) embd->ne[1];
    int32_t vocab_key = 0;
    TRY(L.get_i32("vocab_size", &vocab_key, false, hp.n_vocab));
    if (vocab_key != hp.n_vocab) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: %s = %d but token_embd.weight has %d rows", m->path.c_str(),
                              L.key("vocab_size").c_str(), vocab_key, hp.n_vocab);
    }
    const int64_t d = hp.n_embd, hc = hp.hc_mult;
    TRY(L.linear("token_embd", hp.n_vocab, d, &m->token_embd));
    TRY(L.linear("output", hp.n_vocab, d, &m->output));
    TRY(L.floats("output_norm.weight", {d}, &m->output_norm));
    TRY(L.floats("output_hc_fn.weight", {hc, hc * d}, &m->output_hc_fn));
    TRY(L.floats("output_hc_base.weight", {hc}, &m->output_hc_base));
    TRY(L.floats("output_hc_scale.weight", {1}, &m->output_hc_scale));

    // A sidecar replaces any draft in the model file.
    bool want_draft = params.load_draft && !params.draft_path && m->arch == DSV4_ARCH_DSV4 &&
                      dsv4_gguf_find_key(m->gguf, "dsv4.dspark.stage_count") >= 0;
    if (want_draft) TRY(read_dspark(L));
    const size_t n_blocks = (size_t) hp.n_layer + (want_draft ? (size_t) m->dspark.n_stage : 0);
    std::vector<float> clamp, clamp_sh;
    TRY(read_swiglu(L, clamp, clamp_sh, n_blocks));
    m->layers.resize(n_blocks);
    for (size_t il = 0; il < n_blocks; il++) {
        bool target = il < (size_t) hp.n_layer;
        int32_t ratio = target ? hp.compress_ratios[il] : 0;
        bool hash = target && (int32_t) il < hp.n_hash_layer;
        TRY(bind_block(L, (int) il, ratio, hash, clamp[il], clamp_sh[il], m->layers[il]));
    }
    if (want_draft) {
        TRY(bind_draft_heads(L, false));
        m->dspark.present = true;
    }
    m->weight_bytes = L.bound_bytes;
    if (params.load_draft && params.draft_path) TRY(load_sidecar(m, params.draft_path));
    if (params.repack) TRY(pack_weights(m));
    return DSV4_OK;
}

#undef TRY

}  // namespace

extern "C" dsv4_model_params dsv4_model_default_params(void) {
    dsv4_model_params p;
    p.load_draft = true;
    p.draft_path = nullptr;
    p.repack = true;
    return p;
}

extern "C" dsv4_status dsv4_model_load(const char * path, const dsv4_model_params * params, dsv4_model ** out) {
    if (!path || !out) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_model_load: NULL argument");
    *out = nullptr;
    dsv4_model_params p = params ? *params : dsv4_model_default_params();
    dsv4_model * m = new (std::nothrow) dsv4_model();
    if (!m) return dsv4_set_error(DSV4_ERR_NO_MEMORY, "out of memory loading %s", path);
    dsv4_status st;
    try {
        m->path = path;
        st = load(m, p);
    } catch (const std::bad_alloc &) {
        st = dsv4_set_error(DSV4_ERR_NO_MEMORY, "%s: out of memory while loading", path);
    }
    if (st != DSV4_OK) {
        dsv4_model_free(m);
        return st;
    }
    *out = m;
    return DSV4_OK;
}

extern "C" void dsv4_model_free(dsv4_model * model) {
    if (!model) return;
    dsv4_gguf_close(model->draft_gguf);
    dsv4_gguf_close(model->gguf);
    delete model;
}

extern "C" int32_t dsv4_model_n_vocab(const dsv4_model * m) { return m->hp.n_vocab; }
extern "C" int32_t dsv4_model_n_embd(const dsv4_model * m) { return m->hp.n_embd; }
extern "C" int32_t dsv4_model_n_layer(const dsv4_model * m) { return m->hp.n_layer; }
extern "C" int32_t dsv4_model_n_ctx_train(const dsv4_model * m) { return m->hp.n_ctx_train; }
extern "C" bool dsv4_model_has_draft(const dsv4_model * m) { return m->dspark.present; }
extern "C" int32_t dsv4_model_n_tap(const dsv4_model * m) {
    return m->dspark.present ? (int32_t) m->dspark.target_layer_ids.size() : 0;
}
extern "C" uint64_t dsv4_model_weight_bytes(const dsv4_model * m) { return m->weight_bytes; }
extern "C" uint64_t dsv4_model_packed_bytes(const dsv4_model * m) { return m->packed_bytes; }
extern "C" const char * dsv4_model_arch(const dsv4_model * m) { return m->arch == DSV4_ARCH_DSV4 ? "dsv4" : "deepseek4"; }
