// Internal helpers shared by the native sources. Not part of the public API.
#pragma once

#include "dsv4.h"

// Formats a message into this thread's last-error slot and returns `status`, so call sites can
// write `return dsv4_set_error(DSV4_ERR_FORMAT, "tensor %s: ...", name);`.
dsv4_status dsv4_set_error(dsv4_status status, const char * fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

void dsv4_clear_error(void);
