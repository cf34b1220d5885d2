// Bindings for the native GGUF reader: lets tests (and `dsv4 inspect`) see exactly what the
// engine's loader sees, and check that bad files raise instead of crashing.
#include <pybind11/pybind11.h>

#include "bind_common.h"
#include "dsv4-gguf.h"

namespace py = pybind11;

namespace {

py::object gguf_scalar(uint32_t type, const dsv4_gguf * g, const char * key) {
    if (type == DSV4_GGUF_STRING) {
        const char * s; uint64_t n;
        dsv4_gguf_get_str(g, key, &s, &n);
        return py::str(s, (size_t) n);
    }
    if (type == DSV4_GGUF_BOOL) {
        bool b = false;
        dsv4_gguf_get_bool(g, key, &b);
        return py::bool_(b);
    }
    if (type == DSV4_GGUF_FLOAT32 || type == DSV4_GGUF_FLOAT64) {
        double f = 0;
        dsv4_gguf_get_f64(g, key, &f);
        return py::float_(f);
    }
    int64_t i = 0;
    if (dsv4_gguf_get_i64(g, key, &i) != DSV4_OK) dsv4_py::throw_last_error(DSV4_ERR_FORMAT);
    return py::int_(i);
}

py::object gguf_value(const dsv4_gguf * g, int64_t idx) {
    const char * key = dsv4_gguf_key(g, idx);
    uint32_t type = dsv4_gguf_kv_type(g, idx);
    if (type != DSV4_GGUF_ARRAY) return gguf_scalar(type, g, key);
    uint32_t at = dsv4_gguf_arr_type(g, idx);
    uint64_t n = dsv4_gguf_arr_len(g, idx);
    py::list out;
    if (at == DSV4_GGUF_STRING) {
        for (uint64_t i = 0; i < n; i++) {
            const char * s; uint64_t len;
            if (dsv4_gguf_get_arr_str(g, idx, i, &s, &len) != DSV4_OK) dsv4_py::throw_last_error(DSV4_ERR_FORMAT);
            // Token strings may hold arbitrary bytes: decode leniently, as gguf-py does.
            out.append(py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(s, (Py_ssize_t) len, "replace")));
        }
        return std::move(out);
    }
    std::vector<double> vals(n);
    if (at == DSV4_GGUF_FLOAT32 || at == DSV4_GGUF_FLOAT64) {
        if (dsv4_gguf_get_arr_f64(g, key, vals.data(), n) != DSV4_OK) dsv4_py::throw_last_error(DSV4_ERR_FORMAT);
        for (double v : vals) out.append(py::float_(v));
    } else {
        std::vector<int64_t> ivals(n);
        if (dsv4_gguf_get_arr_i64(g, key, ivals.data(), n) != DSV4_OK) dsv4_py::throw_last_error(DSV4_ERR_FORMAT);
        for (int64_t v : ivals) out.append(at == DSV4_GGUF_BOOL ? py::object(py::bool_(v != 0)) : py::object(py::int_(v)));
    }
    return std::move(out);
}

// Reads a GGUF file with the engine's reader; returns header, metadata and tensor infos.
py::dict gguf_read(const std::string & path) {
    dsv4_gguf * g = nullptr;
    dsv4_status st;
    {
        py::gil_scoped_release release;
        st = dsv4_gguf_open(path.c_str(), &g);
    }
    if (st != DSV4_OK) dsv4_py::throw_last_error(st);
    std::unique_ptr<dsv4_gguf, void (*)(dsv4_gguf *)> guard(g, dsv4_gguf_close);
    py::dict out;
    out["version"] = dsv4_gguf_version(g);
    out["alignment"] = dsv4_gguf_alignment(g);
    out["file_size"] = dsv4_gguf_file_size(g);
    out["data_offset"] = dsv4_gguf_data_offset(g);
    py::dict kv;
    for (int64_t i = 0; i < dsv4_gguf_n_kv(g); i++) kv[py::str(dsv4_gguf_key(g, i))] = gguf_value(g, i);
    out["metadata"] = kv;
    py::list tensors;
    for (int64_t i = 0; i < dsv4_gguf_n_tensors(g); i++) {
        const dsv4_gguf_tensor * t = dsv4_gguf_tensor_at(g, i);
        py::dict d;
        d["name"] = t->name;
        d["type"] = t->type;
        d["type_name"] = dsv4_gguf_type_name(t->type);
        py::list ne;
        for (uint32_t k = 0; k < t->n_dims; k++) ne.append(t->ne[k]);
        d["ne"] = ne;
        d["offset"] = t->offset;
        d["nbytes"] = t->nbytes;
        tensors.append(d);
    }
    out["tensors"] = tensors;
    return out;
}

}  // namespace

void dsv4_bind_gguf(py::module_ & m) {
    m.def("gguf_read", &gguf_read, py::arg("path"),
          "Read a GGUF file with the engine's validating reader: {version, alignment, file_size, metadata, tensors}.");
}
