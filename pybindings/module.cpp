// The pybind11 module dsv4._native: a thin layer over the C API in native/include/dsv4.h.
// Python-facing classes and errors live in pybindings/dsv4/; this file only converts types.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "dsv4.h"

namespace py = pybind11;

PYBIND11_MODULE(_native, m) {
    m.doc() = "dsv4 native engine (C API bindings)";
    m.def("version", &dsv4_version, "Version of the native library.");
}
