// The pybind11 module dsv4._native: a thin layer over the native library.
// Python-facing classes and errors live in pybindings/dsv4/; this file only converts types.
// Other binding sources (bind_*.cpp) each export a dsv4_bind_<part>(module) registered below.
//
// The tensor-format functions here take and return numpy arrays. They check dtypes and shapes
// first, so a wrong argument raises ValueError naming the function, the argument and what was
// expected; only then is the GIL released for the native loop.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bind_common.h"
#include "dsv4-types.h"
#include "dsv4.h"

#include <cctype>
#include <string>
#include <vector>

namespace py = pybind11;

void dsv4_bind_gguf(py::module_ & m);
void dsv4_bind_model(py::module_ & m);
void dsv4_bind_bench(py::module_ & m);

namespace {

using shape_t  = std::vector<py::ssize_t>;
using bytes_t  = py::array_t<uint8_t, py::array::c_style>;
using floats_t = py::array_t<float, py::array::c_style>;
using u16_t    = py::array_t<uint16_t, py::array::c_style>;

[[noreturn]] void fail(const std::string & msg) {
    throw py::value_error(msg);
}

void check(dsv4_status status) {
    if (status != DSV4_OK) {
        dsv4_py::throw_last_error(status);
    }
}

shape_t shape_of(const py::array & a) {
    return shape_t(a.shape(), a.shape() + a.ndim());
}

// Python's spelling of a shape, so messages read like the caller's own code: (3,), (2, 5).
std::string shape_str(const shape_t & s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); i++) {
        out += (i ? ", " : "") + std::to_string(s[i]);
    }
    return out + (s.size() == 1 ? ",)" : ")");
}

std::string dtype_name(const py::array & a) {
    return py::str(a.dtype().attr("name"));
}

bool dtype_in(const py::array & a, std::initializer_list<const char *> names) {
    const std::string name = dtype_name(a);
    for (const char * n : names) {
        if (name == n) {
            return true;
        }
    }
    return false;
}

std::string join(std::initializer_list<const char *> names) {
    std::string out;
    for (const char * n : names) {
        out += (out.empty() ? "" : " or ") + std::string(n);
    }
    return out;
}

// Converts any array-like, so lists and scalars get the same dtype message as arrays.
py::array as_array(const py::object & obj) {
    return py::array::ensure(obj);
}

// A C-contiguous array of `T` reinterpreting the caller's elements when its dtype is one of
// `names` (all of sizeof(T) bytes: int8 for uint8, float16 for uint16, ...): these functions work
// on bit patterns, so a reinterpreting view, never a value cast.
template <typename T>
py::array_t<T, py::array::c_style> bits_arg(const py::object & obj, const char * fn, const char * arg,
                                            std::initializer_list<const char *> names) {
    const py::array a = as_array(obj);
    if (!a || !dtype_in(a, names) || a.itemsize() != (py::ssize_t) sizeof(T)) {
        fail(std::string(fn) + ": " + arg + " must be a numpy array of dtype " + join(names) + ", got " +
             (a ? dtype_name(a) : std::string(py::str(py::type::of(obj).attr("__name__")))));
    }
    const py::array viewed = a.attr("view")(py::dtype::of<T>());
    return py::array_t<T, py::array::c_style>::ensure(viewed);
}

floats_t f32_arg(const py::object & obj, const char * fn, const char * arg) {
    const py::array a = as_array(obj);
    if (!a || !dtype_in(a, {"float32"})) {
        // No silent cast: a float64 -> float32 rounding would happen before a bit-exact encoder.
        fail(std::string(fn) + ": " + arg + " must be a float32 array, got " +
             (a ? dtype_name(a) : std::string("a non-array")) + " (convert with .astype(np.float32))");
    }
    return floats_t::ensure(a);
}

void need_ndim(const py::array & a, py::ssize_t ndim, const char * fn, const char * arg) {
    if (a.ndim() != ndim) {
        fail(std::string(fn) + ": " + arg + " must be " + std::to_string(ndim) + "-D, got shape " +
             shape_str(shape_of(a)));
    }
}

void need_rows(const py::array & a, const char * fn, const char * arg) {
    if (a.ndim() < 1) {
        fail(std::string(fn) + ": " + arg + " must have at least one dimension (rows are its last axis)");
    }
}

// ---------------------------------------------------------------------------------------------
// Element-wise scalar decoders: same shape in and out.

py::array decode_e4m3(const py::object & obj) {
    const auto in  = bits_arg<uint8_t>(obj, "decode_e4m3", "data", {"uint8", "int8", "float8_e4m3fn"});
    floats_t   out(shape_of(in));
    dsv4_status st;
    {
        py::gil_scoped_release release;
        st = dsv4_type_to_float(DSV4_TYPE_FP8_E4M3, in.data(), (size_t) in.size(), out.mutable_data(), in.size());
    }
    check(st);
    return std::move(out);
}

py::array decode_ue8m0(const py::object & obj) {
    const auto in  = bits_arg<uint8_t>(obj, "decode_ue8m0", "data", {"uint8", "int8", "float8_e8m0fnu"});
    floats_t   out(shape_of(in));
    dsv4_status st;
    {
        py::gil_scoped_release release;
        st = dsv4_ue8m0_to_float(in.data(), out.mutable_data(), in.size());
    }
    check(st);
    return std::move(out);
}

py::array decode_e2m1(const py::object & obj) {
    const auto in  = bits_arg<uint8_t>(obj, "decode_e2m1", "codes", {"uint8", "int8"});
    floats_t   out(shape_of(in));
    dsv4_status st;
    {
        py::gil_scoped_release release;
        st = dsv4_e2m1_to_float(in.data(), out.mutable_data(), in.size());
    }
    if (st != DSV4_OK) {
        fail(std::string("decode_e2m1: ") + dsv4_last_error());
    }
    return std::move(out);
}

// Element-wise through a row codec of the traits table: any shape, n = all elements.
template <typename In>
py::array elementwise_to_float(dsv4_type type, const py::array_t<In, py::array::c_style> & in) {
    floats_t out(shape_of(in));
    // nbytes() goes through dtype(), a new Python reference: take it before the GIL is released.
    const size_t in_bytes = (size_t) in.nbytes();
    dsv4_status st;
    {
        py::gil_scoped_release release;
        st = dsv4_type_to_float(type, in.data(), in_bytes, out.mutable_data(), in.size());
    }
    check(st);
    return std::move(out);
}

py::array elementwise_from_float(dsv4_type type, const floats_t & in) {
    u16_t out(shape_of(in));
    const size_t out_bytes = (size_t) out.nbytes();  // dtype() reference: with the GIL held
    dsv4_status st;
    {
        py::gil_scoped_release release;
        st = dsv4_type_from_float(type, in.data(), in.size(), out.mutable_data(), out_bytes);
    }
    check(st);
    return std::move(out);
}

py::array bf16_to_f32(const py::object & obj) {
    return elementwise_to_float(DSV4_TYPE_BF16, bits_arg<uint16_t>(obj, "bf16_to_f32", "bits", {"uint16", "int16", "bfloat16"}));
}

py::array f32_to_bf16(const py::object & obj) {
    return elementwise_from_float(DSV4_TYPE_BF16, f32_arg(obj, "f32_to_bf16", "x"));
}

py::array f16_to_f32(const py::object & obj) {
    return elementwise_to_float(DSV4_TYPE_F16, bits_arg<uint16_t>(obj, "f16_to_f32", "bits", {"uint16", "int16", "float16"}));
}

py::array f32_to_f16(const py::object & obj) {
    return elementwise_from_float(DSV4_TYPE_F16, f32_arg(obj, "f32_to_f16", "x"));
}

// ---------------------------------------------------------------------------------------------
// Block formats, row-wise over the last axis.

// Decodes rows of `type` blocks [..., nb * type_size] to float [..., nb * block_size].
py::array rows_to_float(dsv4_type type, const bytes_t & in, const char * fn) {
    const dsv4_type_traits * t = dsv4_get_type_traits(type);
    need_rows(in, fn, "data");
    shape_t       shape     = shape_of(in);
    const int64_t row_bytes = shape.back();
    if (row_bytes % (int64_t) t->type_size != 0) {
        fail(std::string(fn) + ": the last axis of data holds " + std::to_string(row_bytes) + " bytes, not a whole number of " +
             std::to_string(t->type_size) + "-byte " + t->name + " blocks (shape " + shape_str(shape) + ")");
    }
    const int64_t n_per_row = row_bytes / (int64_t) t->type_size * t->block_size;
    shape.back()            = n_per_row;
    floats_t      out(shape);
    const int64_t rows = row_bytes == 0 ? 0 : in.size() / row_bytes;
    dsv4_status   st   = DSV4_OK;
    {
        py::gil_scoped_release release;
        // One call per row keeps each call's size check honest; rows are contiguous either way.
        for (int64_t r = 0; r < rows && st == DSV4_OK; r++) {
            st = dsv4_type_to_float(type, in.data() + r * row_bytes, (size_t) row_bytes,
                                    out.mutable_data() + r * n_per_row, n_per_row);
        }
    }
    check(st);
    return std::move(out);
}

// Encodes float rows [..., n] to `type` blocks [..., n / block_size * type_size].
py::array rows_from_float(dsv4_type type, const floats_t & in, const char * fn) {
    const dsv4_type_traits * t = dsv4_get_type_traits(type);
    need_rows(in, fn, "x");
    shape_t       shape = shape_of(in);
    const int64_t n     = shape.back();
    if (n % t->block_size != 0) {
        fail(std::string(fn) + ": rows of x (last axis) must be a multiple of " + std::to_string(t->block_size) +
             " for " + t->name + ", got " + std::to_string(n) + " (shape " + shape_str(shape) + ")");
    }
    const int64_t row_bytes = n / t->block_size * (int64_t) t->type_size;
    shape.back()            = row_bytes;
    bytes_t       out(shape);
    const int64_t rows = n == 0 ? 0 : in.size() / n;
    dsv4_status   st   = DSV4_OK;
    {
        py::gil_scoped_release release;
        for (int64_t r = 0; r < rows && st == DSV4_OK; r++) {
            st = dsv4_type_from_float(type, in.data() + r * n, n, out.mutable_data() + r * row_bytes, (size_t) row_bytes);
        }
    }
    check(st);
    return std::move(out);
}

py::array quantize_q8_0(const py::object & x) {
    return rows_from_float(DSV4_TYPE_Q8_0, f32_arg(x, "quantize_q8_0", "x"), "quantize_q8_0");
}

py::array dequantize_q8_0(const py::object & data) {
    return rows_to_float(DSV4_TYPE_Q8_0, bits_arg<uint8_t>(data, "dequantize_q8_0", "data", {"uint8", "int8"}),
                         "dequantize_q8_0");
}

py::array decode_mxfp4(const py::object & data) {
    return rows_to_float(DSV4_TYPE_MXFP4, bits_arg<uint8_t>(data, "decode_mxfp4", "data", {"uint8", "int8"}),
                         "decode_mxfp4");
}

// ---------------------------------------------------------------------------------------------
// DeepSeek checkpoint weights.

py::array decode_fp8_weight(const py::object & weight_obj, const py::object & scale_obj) {
    const char * fn     = "decode_fp8_weight";
    const auto   weight = bits_arg<uint8_t>(weight_obj, fn, "weight", {"uint8", "int8", "float8_e4m3fn"});
    need_ndim(weight, 2, fn, "weight");
    const py::array scale_any = as_array(scale_obj);
    const bool      f32_scale = scale_any && dtype_in(scale_any, {"float32"});
    py::array       scale;
    if (f32_scale) {
        scale = floats_t::ensure(scale_any);
    } else {
        if (!scale_any || !dtype_in(scale_any, {"uint8", "int8", "float8_e8m0fnu"})) {
            fail(std::string(fn) + ": scale must be UE8M0 bytes (uint8, int8 or float8_e8m0fnu) or decoded float32, got " +
                 (scale_any ? dtype_name(scale_any) : std::string("a non-array")));
        }
        scale = bits_arg<uint8_t>(scale_any, fn, "scale", {"uint8", "int8", "float8_e8m0fnu"});
    }
    const int64_t rows = weight.shape(0), cols = weight.shape(1);
    const shape_t want = {(py::ssize_t) ((rows + DSV4_FP8_BLOCK - 1) / DSV4_FP8_BLOCK),
                          (py::ssize_t) ((cols + DSV4_FP8_BLOCK - 1) / DSV4_FP8_BLOCK)};
    if (shape_of(scale) != want) {
        fail(std::string(fn) + ": scale shape " + shape_str(shape_of(scale)) + " does not match weight " +
             shape_str(shape_of(weight)) + ": one scale per 128 x 128 tile needs " + shape_str(want));
    }
    floats_t    out(shape_of(weight));
    dsv4_status st;
    {
        py::gil_scoped_release release;
        st = dsv4_fp8_weight_to_float(weight.data(), (size_t) weight.size(), rows, cols, scale.data(),
                                      f32_scale ? DSV4_SCALE_F32 : DSV4_SCALE_UE8M0, (size_t) scale.size(),
                                      out.mutable_data(), (size_t) out.size());
    }
    check(st);
    return std::move(out);
}

struct fp4_args {
    bytes_t packed, scale;
    int64_t rows, cols;
};

fp4_args fp4_inputs(const py::object & packed_obj, const py::object & scale_obj, const char * fn) {
    fp4_args a{bits_arg<uint8_t>(packed_obj, fn, "packed", {"uint8", "int8"}),
               bits_arg<uint8_t>(scale_obj, fn, "scale", {"uint8", "int8", "float8_e8m0fnu"}), 0, 0};
    need_ndim(a.packed, 2, fn, "packed");
    need_ndim(a.scale, 2, fn, "scale");
    a.rows = a.packed.shape(0);
    a.cols = a.packed.shape(1) * 2;
    if (a.cols % DSV4_FP4_BLOCK != 0) {
        fail(std::string(fn) + ": packed " + shape_str(shape_of(a.packed)) + " holds " + std::to_string(a.cols) +
             " codes per row, not a multiple of " + std::to_string(DSV4_FP4_BLOCK));
    }
    const shape_t want = {(py::ssize_t) a.rows, (py::ssize_t) (a.cols / DSV4_FP4_BLOCK)};
    if (shape_of(a.scale) != want) {
        fail(std::string(fn) + ": scale shape " + shape_str(shape_of(a.scale)) + " does not match packed " +
             shape_str(shape_of(a.packed)) + ": one scale per 32 codes needs " + shape_str(want));
    }
    return a;
}

py::array decode_fp4_weight(const py::object & packed, const py::object & scale) {
    const fp4_args a = fp4_inputs(packed, scale, "decode_fp4_weight");
    floats_t       out(shape_t{(py::ssize_t) a.rows, (py::ssize_t) a.cols});
    dsv4_status    st;
    {
        py::gil_scoped_release release;
        st = dsv4_fp4_weight_to_float(a.packed.data(), (size_t) a.packed.size(), a.scale.data(), (size_t) a.scale.size(),
                                      a.rows, a.cols, out.mutable_data(), (size_t) out.size());
    }
    check(st);
    return std::move(out);
}

py::array fp4_to_mxfp4(const py::object & packed, const py::object & scale) {
    const fp4_args a = fp4_inputs(packed, scale, "fp4_to_mxfp4");
    bytes_t out(shape_t{(py::ssize_t) a.rows, (py::ssize_t) (a.cols / DSV4_FP4_BLOCK * DSV4_MXFP4_BLOCK_BYTES)});
    dsv4_status st;
    {
        py::gil_scoped_release release;
        st = dsv4_fp4_to_mxfp4(a.packed.data(), (size_t) a.packed.size(), a.scale.data(), (size_t) a.scale.size(),
                               a.rows, a.cols, out.mutable_data(), (size_t) out.size());
    }
    check(st);
    return std::move(out);
}

// ---------------------------------------------------------------------------------------------
// The traits table.

// A type named as in the table ("q8_0", case-insensitive) or by its GGUF id.
dsv4_type type_arg(const py::object & name_or_id, const char * fn) {
    dsv4_type type = DSV4_TYPE_COUNT;
    if (py::isinstance<py::str>(name_or_id)) {
        std::string name = py::str(name_or_id);
        for (char & c : name) {
            c = (char) std::tolower((unsigned char) c);
        }
        if (dsv4_type_from_name(name.c_str(), &type) != DSV4_OK) {
            fail(std::string(fn) + ": " + dsv4_last_error());
        }
        return type;
    }
    // Anything with __index__ (int, numpy integers, gguf's GGMLQuantizationType) is an id; bool is
    // an int in Python too, but True as a type id is surely a mistake.
    if (py::hasattr(name_or_id, "__index__") && !py::isinstance<py::bool_>(name_or_id)) {
        const py::int_ id_obj = py::reinterpret_steal<py::int_>(PyNumber_Index(name_or_id.ptr()));
        if (!id_obj) {
            throw py::error_already_set();
        }
        int             overflow = 0;
        const long long id       = PyLong_AsLongLongAndOverflow(id_obj.ptr(), &overflow);
        if (overflow != 0 || id < INT32_MIN || id > INT32_MAX || dsv4_type_from_gguf((int32_t) id, &type) != DSV4_OK) {
            fail(std::string(fn) + ": GGUF type id " + std::string(py::str(id_obj)) + " is not one dsv4 supports "
                 "(f32=0, f16=1, q8_0=8, i8=24, i32=26, bf16=30, mxfp4=39)");
        }
        return type;
    }
    fail(std::string(fn) + ": a type is a name (str) or a GGUF type id (int), got " +
         std::string(py::str(py::type::of(name_or_id).attr("__name__"))));
}

py::dict type_info(const py::object & name_or_id) {
    const dsv4_type_traits * t = dsv4_get_type_traits(type_arg(name_or_id, "type_info"));
    py::dict d;
    d["name"]           = t->name;
    d["type"]           = (int) t->type;
    d["gguf_type"]      = t->gguf_type == DSV4_GGUF_TYPE_NONE ? py::object(py::none()) : py::object(py::int_(t->gguf_type));
    d["block_size"]     = t->block_size;
    d["type_size"]      = t->type_size;
    d["is_quantized"]   = t->is_quantized;
    d["scale_block"]    = t->scale_block > 0 ? py::object(py::int_(t->scale_block)) : py::object(py::none());
    d["has_to_float"]   = t->to_float != nullptr;
    d["has_from_float"] = t->from_float != nullptr;
    return d;
}

py::list type_names() {
    py::list out;
    for (int i = 0; i < DSV4_TYPE_COUNT; i++) {
        out.append(dsv4_get_type_traits((dsv4_type) i)->name);
    }
    return out;
}

// Raw bytes (any dtype, viewed as bytes along the last axis) -> float rows, via the table.
py::array to_float(const py::object & type_obj, const py::object & data_obj) {
    const dsv4_type type = type_arg(type_obj, "to_float");
    const py::array a    = as_array(data_obj);
    if (!a || a.ndim() < 1) {
        fail("to_float: data must be an array with at least one dimension (rows are its last axis)");
    }
    const py::array contiguous = py::array::ensure(a, py::array::c_style);
    const bytes_t   bytes      = bytes_t::ensure(contiguous.attr("view")(py::dtype::of<uint8_t>()));
    return rows_to_float(type, bytes, "to_float");
}

py::array from_float(const py::object & type_obj, const py::object & x) {
    const dsv4_type type = type_arg(type_obj, "from_float");
    if (dsv4_get_type_traits(type)->from_float == nullptr) {
        fail(std::string("from_float: no encoder for ") + dsv4_get_type_traits(type)->name);
    }
    return rows_from_float(type, f32_arg(x, "from_float", "x"), "from_float");
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "dsv4 native engine (C API bindings)";
    m.def("version", &dsv4_version, "Version of the native library.");

    m.def("decode_e4m3", &decode_e4m3, py::arg("data"),
          "E4M3 (float8_e4m3fn) bytes -> float32, same shape. 0x7F/0xFF decode to NaN.");
    m.def("decode_ue8m0", &decode_ue8m0, py::arg("data"),
          "UE8M0 (float8_e8m0fnu) bytes -> float32 2^(e-127), same shape. 0xFF is NaN.");
    m.def("decode_e2m1", &decode_e2m1, py::arg("codes"),
          "E2M1 codes (0..15, one per byte) -> float32, same shape.");
    m.def("bf16_to_f32", &bf16_to_f32, py::arg("bits"), "bf16 bit patterns (uint16) -> float32, exact.");
    m.def("f32_to_bf16", &f32_to_bf16, py::arg("x"), "float32 -> bf16 bit patterns (uint16), round to nearest even.");
    m.def("f16_to_f32", &f16_to_f32, py::arg("bits"), "IEEE half bit patterns (uint16 or float16) -> float32, exact.");
    m.def("f32_to_f16", &f32_to_f16, py::arg("x"), "float32 -> IEEE half bit patterns (uint16), round to nearest even.");

    m.def("quantize_q8_0", &quantize_q8_0, py::arg("x"),
          "float32 [..., n] (n % 32 == 0) -> Q8_0 bytes [..., n/32*34], bit-exact with ggml.");
    m.def("dequantize_q8_0", &dequantize_q8_0, py::arg("data"), "Q8_0 bytes [..., nb*34] -> float32 [..., nb*32].");
    m.def("decode_mxfp4", &decode_mxfp4, py::arg("data"),
          "MXFP4 bytes [..., nb*17] -> float32 [..., nb*32], as ggml decodes them.");

    m.def("decode_fp8_weight", &decode_fp8_weight, py::arg("weight"), py::arg("scale"),
          "FP8 weight: e4m3 bytes [out, in] and scales [ceil(out/128), ceil(in/128)] (UE8M0 bytes or float32) "
          "-> float32 [out, in].");
    m.def("decode_fp4_weight", &decode_fp4_weight, py::arg("packed"), py::arg("scale"),
          "DeepSeek FP4 weight: packed [out, in/2] (low nibble = even element), UE8M0 scales [out, in/32] "
          "-> float32 [out, in].");
    m.def("fp4_to_mxfp4", &fp4_to_mxfp4, py::arg("packed"), py::arg("scale"),
          "Lossless repack of a DeepSeek FP4 weight to MXFP4 bytes [out, in/32*17].");

    m.def("type_info", &type_info, py::arg("name_or_id"),
          "Traits of a tensor type, by name ('q8_0') or GGUF type id (8).");
    m.def("type_names", &type_names, "Names of all tensor types, in dsv4_type order.");
    m.def("to_float", &to_float, py::arg("type"), py::arg("data"),
          "Decode rows of raw bytes (last axis) with the type's row decoder. fp8_e4m3 gives the unscaled values.");
    m.def("from_float", &from_float, py::arg("type"), py::arg("x"),
          "Encode float32 rows (last axis) with the type's row encoder (f32, f16, bf16, q8_0) -> bytes.");

    dsv4_bind_gguf(m);
    dsv4_bind_model(m);
    dsv4_bind_bench(m);
}
