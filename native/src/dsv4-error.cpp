// Status codes and the per-thread last-error message.
#include "dsv4-impl.h"

#include <cstdarg>
#include <cstdio>

namespace {
// Thread-local rather than global: each thread sees the error of its own last call.
thread_local char t_last_error[1024] = "";
}

extern "C" const char * dsv4_version(void) {
    return "0.1.0";
}

extern "C" const char * dsv4_last_error(void) {
    return t_last_error;
}

extern "C" const char * dsv4_status_name(dsv4_status status) {
    switch (status) {
        case DSV4_OK:               return "ok";
        case DSV4_ERR_INVALID_ARG:  return "invalid argument";
        case DSV4_ERR_IO:           return "i/o error";
        case DSV4_ERR_FORMAT:       return "format error";
        case DSV4_ERR_UNSUPPORTED:  return "unsupported";
        case DSV4_ERR_NO_MEMORY:    return "out of memory";
        case DSV4_ERR_CONTEXT_FULL: return "context full";
        case DSV4_ERR_INTERRUPTED:  return "interrupted";
    }
    return "unknown status";
}

dsv4_status dsv4_set_error(dsv4_status status, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(t_last_error, sizeof(t_last_error), fmt, args);
    va_end(args);
    return status;
}

void dsv4_clear_error(void) {
    t_last_error[0] = '\0';
}
