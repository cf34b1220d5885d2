// Bindings for models and contexts (dsv4.h): _native.Model and _native.Context.
//
// A Context keeps its Model's native handle alive (shared ownership), so closing or dropping the
// Python Model while a context still runs is safe: the weights are unmapped when the last user
// goes. Arguments are checked here (dtypes, shapes) before the GIL is released; the C API checks
// the values (token ids, positions) and its messages become the Python exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bind_common.h"
#include "dsv4-context.h"
#include "dsv4-spec.h"
#include "dsv4.h"

#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

using model_ptr = std::shared_ptr<dsv4_model>;

void check(dsv4_status status) {
    if (status != DSV4_OK) {
        dsv4_py::throw_last_error(status);
    }
}

struct py_model {
    model_ptr m;

    py_model(const std::string & path, bool load_draft, const py::object & draft, bool repack) {
        dsv4_model_params p = dsv4_model_default_params();
        p.load_draft = load_draft;
        p.repack = repack;
        std::string draft_path;
        if (!draft.is_none()) {
            draft_path = py::str(py::module_::import("os").attr("fspath")(draft));
            p.draft_path = draft_path.c_str();
        }
        dsv4_model * raw = nullptr;
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_model_load(path.c_str(), &p, &raw);
        }
        check(st);
        m = model_ptr(raw, dsv4_model_free);
    }

    dsv4_model * get() const {
        if (!m) throw py::value_error("Model is closed");
        return m.get();
    }

    void close() { m.reset(); }
};

// Integer array-like -> contiguous int32, refusing values that int32 cannot hold (so no wrap-around
// can turn a bad id into a valid one) and non-integer dtypes (no silent float truncation).
py::array_t<int32_t, py::array::c_style> int32_arg(const py::object & obj, const char * what) {
    py::array a = py::array::ensure(obj);
    if (!a) throw py::value_error(std::string("decode: ") + what + " must be an array of integers");
    if (a.ndim() != 1) {
        throw py::value_error(std::string("decode: ") + what + " must be 1-D, got " + std::to_string(a.ndim()) + " dimensions");
    }
    const char kind = a.dtype().kind();
    if (a.size() > 0 && kind != 'i' && kind != 'u') {
        throw py::value_error(std::string("decode: ") + what + " must hold integers, got dtype " +
                              std::string(py::str(a.dtype())));
    }
    if (a.size() > 0 && !a.dtype().is(py::dtype::of<int32_t>())) {
        py::module_ np = py::module_::import("numpy");
        const long long lo = py::int_(np.attr("min")(a)), hi = py::int_(np.attr("max")(a));
        if (lo < INT32_MIN || hi > INT32_MAX) {
            throw py::value_error(std::string("decode: ") + what + " holds " + std::to_string(lo < INT32_MIN ? lo : hi) +
                                  ", outside int32");
        }
    }
    return py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(a);
}

// dsv4_generate's token callback for Python: the GIL is taken only here, around the user's
// callable (compute runs without it). Anything the callable raises, and a pending signal
// (Ctrl-C sets one; PyErr_CheckSignals runs its handler, which raises KeyboardInterrupt), is kept
// and stops the generation; the binding re-raises it once dsv4_generate has returned.
struct token_sink {
    py::object         fn;     // None or a callable(token) -> bool | None
    std::exception_ptr error;  // set once; generation stops at the next callback
};

bool token_trampoline(int32_t token, void * user_data) {
    token_sink * sink = static_cast<token_sink *>(user_data);
    py::gil_scoped_acquire gil;
    try {
        if (!sink->fn.is_none()) {
            py::object r = sink->fn(token);
            if (!r.is_none()) {
                const int truth = PyObject_IsTrue(r.ptr());
                if (truth < 0) throw py::error_already_set();
                if (truth == 0) return false;  // a falsy return (False) asks to stop
            }
        }
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    } catch (...) {
        sink->error = std::current_exception();
        return false;
    }
    return true;
}

struct py_context {
    model_ptr m;
    dsv4_context * ctx = nullptr;

    py_context(const py_model & model, int32_t n_ctx, int32_t n_threads, int32_t n_batch, bool float_activations)
        : m(model.m) {
        if (!m) throw py::value_error("Model is closed");
        dsv4_context_params p = dsv4_context_default_params();
        p.n_ctx = n_ctx;
        p.n_threads = n_threads;
        p.n_batch = n_batch;
        p.float_activations = float_activations;
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_context_init(m.get(), &p, &ctx);
        }
        check(st);
    }

    ~py_context() { close(); }

    void close() {
        if (ctx) {
            dsv4_context_free(ctx);
            ctx = nullptr;
        }
        m.reset();
    }

    dsv4_context * get() const {
        if (!ctx) throw py::value_error("Context is closed");
        return ctx;
    }

    py::tuple decode(const py::object & tokens_obj, int32_t pos, const py::object & rows_obj, bool features) {
        dsv4_context * c = get();
        const auto tokens = int32_arg(tokens_obj, "tokens");
        const int32_t n = (int32_t) tokens.size();
        py::array_t<int32_t, py::array::c_style> rows;
        if (rows_obj.is_none()) {
            rows = py::array_t<int32_t, py::array::c_style>(n);
            for (int32_t i = 0; i < n; i++) rows.mutable_data()[i] = i;
        } else {
            rows = int32_arg(rows_obj, "logit_rows");
        }
        const int32_t n_rows = (int32_t) rows.size();
        const int64_t V = dsv4_model_n_vocab(m.get());
        const int64_t n_feat = (int64_t) dsv4_model_n_tap(m.get()) * dsv4_model_n_embd(m.get());
        py::array_t<float> logits({(py::ssize_t) n_rows, (py::ssize_t) V});
        py::object feat_obj = py::none();
        float * feat = nullptr;
        if (features) {
            py::array_t<float> fa({(py::ssize_t) n, (py::ssize_t) n_feat});
            feat = fa.mutable_data();
            feat_obj = fa;
        }
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_decode(c, tokens.data(), n, pos, n_rows ? rows.data() : nullptr, n_rows,
                             n_rows ? logits.mutable_data() : nullptr, feat);
        }
        check(st);
        return py::make_tuple(logits, feat_obj);
    }

    void truncate(int32_t n_past) { check(dsv4_context_truncate(get(), n_past)); }

    py::dict memory() const {
        dsv4_memory_report r;
        check(dsv4_context_memory(get(), &r));
        py::dict d;
        d["weight_bytes"] = r.weight_bytes;
        d["cache_bytes"] = r.cache_bytes;
        d["cache_bytes_per_token"] = r.cache_bytes_per_token;
        d["scratch_bytes"] = r.scratch_bytes;
        return d;
    }

    py::tuple generate(const py::object & prompt_obj, int32_t max_tokens, float temperature, int32_t top_k, float top_p,
                       uint64_t seed, bool speculative, int32_t draft_max, float confidence_threshold, bool ignore_eos,
                       const py::object & on_token) {
        dsv4_context * c = get();
        const auto prompt = int32_arg(prompt_obj, "prompt");
        if (max_tokens < 0) throw py::value_error("max_tokens must be >= 0");
        if (!on_token.is_none() && !PyCallable_Check(on_token.ptr())) {
            throw py::type_error("on_token must be a callable taking one token id, or None");
        }
        dsv4_generate_params p = gen_params(temperature, top_k, top_p, seed, speculative, draft_max, confidence_threshold);
        p.max_tokens = max_tokens;
        p.ignore_eos = ignore_eos;
        std::vector<int32_t> out((size_t) max_tokens);
        int32_t n_out = 0;
        dsv4_generate_stats s;
        token_sink sink{on_token, nullptr};
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_generate(c, prompt.size() ? prompt.data() : nullptr, (int32_t) prompt.size(), &p, out.data(),
                               max_tokens, &n_out, &s, token_trampoline, &sink);
        }
        // The callback's own exception (KeyboardInterrupt included) wins: the generation stopped at a
        // committed state, so the context is consistent and the caller sees what went wrong.
        if (sink.error) std::rethrow_exception(sink.error);
        if (st != DSV4_OK && !(st == DSV4_ERR_INTERRUPTED && s.stop_reason == DSV4_STOP_INTERRUPTED)) check(st);
        py::array_t<int32_t> tokens((py::ssize_t) n_out);
        if (n_out) std::memcpy(tokens.mutable_data(), out.data(), (size_t) n_out * sizeof(int32_t));
        static const char * reasons[] = {"max_tokens", "eos", "context_full", "interrupted"};
        py::dict d;
        d["n_prompt"] = s.n_prompt;
        d["n_generated"] = s.n_generated;
        d["rounds"] = s.rounds;
        d["drafted"] = s.drafted;
        d["accepted"] = s.accepted;
        py::list at;
        for (int32_t k = 0; k < DSV4_MAX_DRAFT; k++) at.append(s.accepted_at[k]);
        d["accepted_at"] = at;
        py::list ver;
        for (int32_t k = 0; k < DSV4_MAX_DRAFT; k++) ver.append(s.verified_at[k]);
        d["verified_at"] = ver;
        d["tau"] = s.tau;
        d["prefill_s"] = s.prefill_s;
        d["draft_s"] = s.draft_s;
        d["verify_s"] = s.verify_s;
        d["total_s"] = s.total_s;
        d["stop_reason"] = std::string(s.stop_reason >= 0 && s.stop_reason < 4 ? reasons[s.stop_reason] : "?");
        return py::make_tuple(tokens, d);
    }

    static dsv4_generate_params gen_params(float temperature, int32_t top_k, float top_p, uint64_t seed, bool speculative,
                                           int32_t draft_max, float confidence_threshold) {
        dsv4_generate_params p = dsv4_generate_default_params();
        p.temperature = temperature;
        p.top_k = top_k;
        p.top_p = top_p;
        p.seed = seed;
        p.speculative = speculative;
        p.draft_max = draft_max;
        p.confidence_threshold = confidence_threshold;
        return p;
    }

    int32_t spec_begin(const py::object & prompt_obj, float temperature, int32_t top_k, float top_p, uint64_t seed,
                       bool speculative) {
        dsv4_context * c = get();
        const auto prompt = int32_arg(prompt_obj, "prompt");
        const dsv4_generate_params p = gen_params(temperature, top_k, top_p, seed, speculative, 0, 0.0f);
        int32_t first = -1;
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_spec_begin(c, prompt.size() ? prompt.data() : nullptr, (int32_t) prompt.size(), &p, &first);
        }
        check(st);
        return first;
    }

    py::tuple spec_step(int32_t anchor, float temperature, int32_t top_k, float top_p, bool speculative,
                        int32_t draft_max, float confidence_threshold, int32_t max_out) {
        dsv4_context * c = get();
        if (max_out < 1) throw py::value_error("max_out must be >= 1");
        const dsv4_generate_params p =
            gen_params(temperature, top_k, top_p, 0, speculative, draft_max, confidence_threshold);
        std::vector<int32_t> out((size_t) max_out);
        dsv4_spec_result r;
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_spec_step(c, anchor, &p, out.data(), max_out, &r);
        }
        check(st);
        py::array_t<int32_t> tokens((py::ssize_t) r.n_tokens);
        std::memcpy(tokens.mutable_data(), out.data(), (size_t) r.n_tokens * sizeof(int32_t));
        py::dict d;
        d["n_drafted"] = r.n_drafted;
        d["draft_s"] = r.draft_s;
        d["verify_s"] = r.verify_s;
        return py::make_tuple(tokens, d);
    }

    // Test hooks for the DSpark draft forward pass (dsv4-dspark.h).
    dsv4_draft * draft() const {
        dsv4_context * c = get();
        if (!c->draft) throw py::value_error("the model has no DSpark draft");
        return c->draft;
    }

    void draft_inject(const py::array_t<float, py::array::c_style | py::array::forcecast> & feats, int32_t pos0) {
        dsv4_draft * dr = draft();
        const int64_t n_feat = (int64_t) dsv4_model_n_tap(m.get()) * dsv4_model_n_embd(m.get());
        if (feats.ndim() != 2 || feats.shape(1) != n_feat) throw py::value_error("features must be [n, n_tap * n_embd]");
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_draft_inject(dr, feats.data(), (int32_t) feats.shape(0), pos0);
        }
        check(st);
    }

    py::tuple draft_block(int32_t anchor, int32_t p, int32_t gamma) {
        dsv4_draft * dr = draft();
        if (gamma <= 0) gamma = m->dspark.block_size;
        if (gamma <= 0 || gamma > dr->max_gamma) throw py::value_error("gamma out of range");
        py::array_t<float> logits({(py::ssize_t) gamma, (py::ssize_t) m->hp.n_vocab});
        py::array_t<float> x_post({(py::ssize_t) gamma, (py::ssize_t) m->hp.n_embd});
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_draft_block(dr, anchor, p, gamma, logits.mutable_data(), x_post.mutable_data());
        }
        check(st);
        return py::make_tuple(logits, x_post);
    }

    py::tuple draft_heads(const py::array_t<float, py::array::c_style | py::array::forcecast> & base,
                          const py::array_t<float, py::array::c_style | py::array::forcecast> & x_post, int32_t anchor,
                          const py::object & drafts_obj) {
        dsv4_draft * dr = draft();
        const auto drafts = int32_arg(drafts_obj, "drafts");
        const int32_t gamma = (int32_t) drafts.size();
        if (base.ndim() != 2 || base.shape(0) != gamma || base.shape(1) != m->hp.n_vocab || x_post.ndim() != 2 ||
            x_post.shape(0) != gamma || x_post.shape(1) != m->hp.n_embd) {
            throw py::value_error("base_logits [gamma, V], x_post [gamma, d], drafts [gamma]");
        }
        py::array_t<float> markov({(py::ssize_t) gamma, (py::ssize_t) m->hp.n_vocab});
        py::object conf_obj = py::none();
        float * conf = nullptr;
        if (m->conf_proj.data) {
            py::array_t<float> ca((py::ssize_t) gamma);
            conf = ca.mutable_data();
            conf_obj = ca;
        }
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_draft_heads(dr, base.data(), x_post.data(), anchor, drafts.data(), gamma, markov.mutable_data(), conf);
        }
        check(st);
        return py::make_tuple(markov, conf_obj);
    }

    py::tuple draft_greedy(const py::array_t<float, py::array::c_style | py::array::forcecast> & base, int32_t anchor) {
        dsv4_draft * dr = draft();
        if (base.ndim() != 2 || base.shape(1) != m->hp.n_vocab) throw py::value_error("base_logits must be [gamma, V]");
        const int32_t gamma = (int32_t) base.shape(0);
        py::array_t<int32_t> drafts((py::ssize_t) gamma);
        py::array_t<float> logits({(py::ssize_t) gamma, (py::ssize_t) m->hp.n_vocab});
        dsv4_status st;
        {
            py::gil_scoped_release release;
            st = dsv4_draft_greedy(dr, base.data(), anchor, gamma, drafts.mutable_data(), logits.mutable_data());
        }
        check(st);
        return py::make_tuple(drafts, logits);
    }

    py::list state_digest() const {
        dsv4_context * c = get();
        std::vector<uint64_t> d((size_t) dsv4_model_n_layer(m.get()) + 1);
        check(dsv4_context_state_digest(c, d.data(), (int32_t) d.size()));
        py::list out;
        for (uint64_t v : d) out.append(v);
        return out;
    }

    // Test hook: the logical cache state of target layer il (dsv4-kv-cache.h).
    py::dict layer_state(int32_t il) const {
        dsv4_layer_state s;
        check(dsv4_context_layer_state(get(), il, &s));
        const dsv4_hparams & hp = m->hp;
        auto rows = [](const std::vector<float> & v, int64_t width) {
            const int64_t n = width > 0 ? (int64_t) v.size() / width : 0;
            py::array_t<float> a({(py::ssize_t) n, (py::ssize_t) width});
            if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(float));
            return a;
        };
        const int32_t ratio = hp.compress_ratios[(size_t) il];
        const int64_t hd = hp.head_dim, di = hp.indexer_head_dim, coff = ratio == 4 ? 2 : 1;
        py::dict d;
        d["window"] = rows(s.window, hd);
        d["comp"] = rows(s.comp, hd);
        d["comp_kv"] = rows(s.comp_kv, coff * hd);
        d["comp_score"] = rows(s.comp_sc, coff * hd);
        d["index_keys"] = rows(s.idx_keys, di);
        d["index_kv"] = rows(s.idx_kv, 2 * di);
        d["index_score"] = rows(s.idx_sc, 2 * di);
        d["first_state_pos"] = s.first_state_pos;
        return d;
    }
};

}  // namespace

void dsv4_bind_model(py::module_ & m) {
    py::class_<py_model>(m, "Model", "A dsv4 / deepseek4 GGUF mapped and validated by the native loader.")
        .def(py::init<const std::string &, bool, const py::object &, bool>(), py::arg("path"), py::arg("load_draft") = true,
             py::arg("draft") = py::none(), py::arg("repack") = true,
             "draft: a llama.cpp dflash sidecar (mtp-*.gguf) to take the DSpark draft from instead of the file's own.\n"
             "repack: copy MXFP4 experts / FP8 matrices into the layouts of this CPU's packed kernels (AVX2 / AVX-512).")
        .def_property_readonly("packed_bytes", [](const py_model & s) { return dsv4_model_packed_bytes(s.get()); })
        .def_property_readonly("n_vocab", [](const py_model & s) { return dsv4_model_n_vocab(s.get()); })
        .def_property_readonly("n_embd", [](const py_model & s) { return dsv4_model_n_embd(s.get()); })
        .def_property_readonly("n_layer", [](const py_model & s) { return dsv4_model_n_layer(s.get()); })
        .def_property_readonly("n_ctx_train", [](const py_model & s) { return dsv4_model_n_ctx_train(s.get()); })
        .def_property_readonly("n_tap", [](const py_model & s) { return dsv4_model_n_tap(s.get()); })
        .def_property_readonly("has_draft", [](const py_model & s) { return dsv4_model_has_draft(s.get()); })
        .def_property_readonly("weight_bytes", [](const py_model & s) { return dsv4_model_weight_bytes(s.get()); })
        .def_property_readonly("arch", [](const py_model & s) { return std::string(dsv4_model_arch(s.get())); })
        .def("close", &py_model::close, "Drop this handle (the mapping goes when no context uses it).");

    py::class_<py_context>(m, "Context", "Caches, scratch and threads for one sequence over a Model.")
        .def(py::init<const py_model &, int32_t, int32_t, int32_t, bool>(), py::arg("model"), py::arg("n_ctx") = 4096,
             py::arg("n_threads") = 0, py::arg("n_batch") = 64, py::arg("float_activations") = false)
        .def("decode", &py_context::decode, py::arg("tokens"), py::arg("pos"), py::arg("logit_rows") = py::none(),
             py::arg("features") = false,
             "Run tokens at positions pos.. (pos must equal n_past). Returns (logits [len(logit_rows), n_vocab] "
             "float32, features [len(tokens), n_tap * n_embd] float32 or None); logit_rows None = every row.")
        .def("truncate", &py_context::truncate, py::arg("n_past"),
             "Drop positions >= n_past (at most max_rollback back, or to 0).")
        .def_property_readonly("n_past", [](const py_context & s) { return dsv4_context_n_past(s.get()); })
        .def_property_readonly("max_rollback", [](const py_context & s) { return dsv4_context_max_rollback(s.get()); })
        .def("memory", &py_context::memory, "Bytes: weight_bytes, cache_bytes, cache_bytes_per_token, scratch_bytes.")
        .def("_state_digest", &py_context::state_digest,
             "Test hook (dsv4_context_state_digest): [digest of each target layer's readable cache bytes..., digest "
             "of the DSpark rings (0 without a draft)].")
        .def("_layer_state", &py_context::layer_state, py::arg("layer"),
             "Test hook: the logical cache state of a target layer (window, comp, compressor inputs, indexer).")
        .def("_draft_inject", &py_context::draft_inject, py::arg("features"), py::arg("pos0"),
             "Test hook: inject feature rows [n, n_tap*d] at pos0.. into the DSpark rings.")
        .def("_draft_block", &py_context::draft_block, py::arg("anchor"), py::arg("p"), py::arg("gamma") = 0,
             "Test hook: DSpark block pass -> (base_logits [gamma, V], x_post [gamma, d]); gamma 0 = trained.")
        .def("_draft_heads", &py_context::draft_heads, py::arg("base_logits"), py::arg("x_post"), py::arg("anchor"),
             py::arg("drafts"), "Test hook: -> (Markov-corrected logits [gamma, V], confidences [gamma] or None).")
        .def("_draft_greedy", &py_context::draft_greedy, py::arg("base_logits"), py::arg("anchor"),
             "Test hook: T = 0 chain -> (drafts [gamma] int32, logits [gamma, V]).")
        .def("generate", &py_context::generate, py::arg("prompt"), py::arg("max_tokens"), py::arg("temperature") = 0.0f,
             py::arg("top_k") = 0, py::arg("top_p") = 1.0f, py::arg("seed") = 0, py::arg("speculative") = true,
             py::arg("draft_max") = 0, py::arg("confidence_threshold") = 0.0f, py::arg("ignore_eos") = false,
             py::arg("on_token") = py::none(),
             "Generate up to max_tokens after a fresh prompt (plain or DSpark speculative; the context is reset). "
             "on_token(token) is called for each token as it is decided (GIL held only during the call); a falsy "
             "return stops (stop_reason 'interrupted'), an exception stops and is re-raised. "
             "Returns (tokens int32, stats dict: rounds, drafted, accepted, accepted_at, tau, prefill_s, draft_s, "
             "verify_s, total_s, stop_reason).")
        .def("spec_begin", &py_context::spec_begin, py::arg("prompt"), py::arg("temperature") = 0.0f,
             py::arg("top_k") = 0, py::arg("top_p") = 1.0f, py::arg("seed") = 0, py::arg("speculative") = true,
             "Step-wise generation (dsv4_spec_begin): reset, seed, run the prompt (feeding the draft rings when "
             "speculative) -> the first token, the anchor of the first spec_step.")
        .def("spec_step", &py_context::spec_step, py::arg("anchor"), py::arg("temperature") = 0.0f, py::arg("top_k") = 0,
             py::arg("top_p") = 1.0f, py::arg("speculative") = true, py::arg("draft_max") = 0,
             py::arg("confidence_threshold") = 0.0f, py::arg("max_out") = DSV4_MAX_DRAFT + 1,
             "One round (dsv4_spec_step) on the committed state: draft, verify, accept, roll back -> (tokens int32: "
             "accepted drafts then the residual/bonus token (the next anchor), {n_drafted, draft_s, verify_s}).")
        .def("close", &py_context::close, "Free the context now.");
}
