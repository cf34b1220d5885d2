// Shared helpers of the binding sources: turning dsv4 status codes into Python exceptions.
#pragma once

#include <pybind11/pybind11.h>

#include "dsv4.h"

namespace dsv4_py {

// Raises the dsv4 exception that matches `status`, with dsv4_last_error() as the message:
// format/unsupported -> dsv4.errors.FormatError, i/o -> OSError, invalid argument -> ValueError,
// out of memory -> MemoryError, context full -> dsv4.errors.ContextOverflowError,
// interrupted -> KeyboardInterrupt.
[[noreturn]] inline void throw_last_error(dsv4_status status) {
    namespace py = pybind11;
    const char * msg = dsv4_last_error();
    PyObject * cls = PyExc_RuntimeError;
    py::object errors;
    switch (status) {
        case DSV4_ERR_FORMAT:
        case DSV4_ERR_UNSUPPORTED:
            errors = py::module_::import("dsv4.errors");
            PyErr_SetString(errors.attr("FormatError").ptr(), msg);
            throw py::error_already_set();
        case DSV4_ERR_CONTEXT_FULL:
            errors = py::module_::import("dsv4.errors");
            PyErr_SetString(errors.attr("ContextOverflowError").ptr(), msg);
            throw py::error_already_set();
        case DSV4_ERR_IO:          cls = PyExc_OSError; break;
        case DSV4_ERR_INVALID_ARG: cls = PyExc_ValueError; break;
        case DSV4_ERR_NO_MEMORY:   cls = PyExc_MemoryError; break;
        case DSV4_ERR_INTERRUPTED: cls = PyExc_KeyboardInterrupt; break;
        default: break;
    }
    PyErr_SetString(cls, msg);
    throw py::error_already_set();
}

}  // namespace dsv4_py
