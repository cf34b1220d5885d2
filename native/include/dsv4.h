// dsv4: DeepSeek-V4 + DSpark inference engine, public C API.
//
// Conventions (see docs/ and STYLE.md): opaque structs, POD params with *_default_params(),
// every function that can fail returns a dsv4_status (or NULL) and sets a readable message that
// dsv4_last_error() returns. The message is per thread, so concurrent contexts do not clobber
// each other's errors.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DSV4_VERSION_MAJOR 0
#define DSV4_VERSION_MINOR 1
#define DSV4_VERSION_PATCH 0

typedef enum dsv4_status {
    DSV4_OK               = 0,
    DSV4_ERR_INVALID_ARG  = 1,  // a caller-supplied value is out of range
    DSV4_ERR_IO           = 2,  // open/read/mmap failed
    DSV4_ERR_FORMAT       = 3,  // the file is not what it claims to be
    DSV4_ERR_UNSUPPORTED  = 4,  // a valid file that this build cannot run
    DSV4_ERR_NO_MEMORY    = 5,
    DSV4_ERR_CONTEXT_FULL = 6,  // positions beyond n_ctx
    DSV4_ERR_INTERRUPTED  = 7,  // a callback asked to stop
} dsv4_status;

// Version string "MAJOR.MINOR.PATCH".
const char * dsv4_version(void);

// The last error message set on this thread ("" when none).
const char * dsv4_last_error(void);

// Human-readable name of a status code.
const char * dsv4_status_name(dsv4_status status);

#ifdef __cplusplus
}
#endif
