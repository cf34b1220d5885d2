// GGUF reader over mmap, with validation. Internal to the engine (the model loader sits on top).
//
// Every length, count and offset read from the file is checked against the bytes that remain
// before it is used, so a corrupt or truncated file gives an error naming the problem, never a
// crash or an out-of-bounds read. Supports GGUF versions 2 and 3 (little-endian).
#pragma once

#include "dsv4.h"

#include <stddef.h>
#include <stdint.h>

// GGUF metadata value types (gguf.md).
enum dsv4_gguf_value_type {
    DSV4_GGUF_UINT8   = 0,
    DSV4_GGUF_INT8    = 1,
    DSV4_GGUF_UINT16  = 2,
    DSV4_GGUF_INT16   = 3,
    DSV4_GGUF_UINT32  = 4,
    DSV4_GGUF_INT32   = 5,
    DSV4_GGUF_FLOAT32 = 6,
    DSV4_GGUF_BOOL    = 7,
    DSV4_GGUF_STRING  = 8,
    DSV4_GGUF_ARRAY   = 9,
    DSV4_GGUF_UINT64  = 10,
    DSV4_GGUF_INT64   = 11,
    DSV4_GGUF_FLOAT64 = 12,
};

#define DSV4_GGUF_MAX_DIMS 4

struct dsv4_gguf_tensor {
    const char *    name;        // NUL-terminated copy owned by the reader
    uint32_t        type;        // ggml type id
    uint32_t        n_dims;
    int64_t         ne[DSV4_GGUF_MAX_DIMS];  // ggml order: ne[0] is the fastest-varying dim
    uint64_t        offset;      // relative to the start of the data section
    uint64_t        nbytes;
    const uint8_t * data;        // points into the mapping
};

struct dsv4_gguf;

// Maps and validates `path`. On failure returns an error status (message names the problem).
dsv4_status dsv4_gguf_open(const char * path, struct dsv4_gguf ** out);
void        dsv4_gguf_close(struct dsv4_gguf * gguf);

uint32_t    dsv4_gguf_version(const struct dsv4_gguf * gguf);
uint64_t    dsv4_gguf_file_size(const struct dsv4_gguf * gguf);
uint64_t    dsv4_gguf_alignment(const struct dsv4_gguf * gguf);
uint64_t    dsv4_gguf_data_offset(const struct dsv4_gguf * gguf);  // file offset of the data section
const char * dsv4_gguf_path(const struct dsv4_gguf * gguf);

// Metadata. Keys are looked up by exact name; index -1 means absent.
int64_t     dsv4_gguf_n_kv(const struct dsv4_gguf * gguf);
int64_t     dsv4_gguf_find_key(const struct dsv4_gguf * gguf, const char * key);
const char * dsv4_gguf_key(const struct dsv4_gguf * gguf, int64_t i);
uint32_t    dsv4_gguf_kv_type(const struct dsv4_gguf * gguf, int64_t i);
uint32_t    dsv4_gguf_arr_type(const struct dsv4_gguf * gguf, int64_t i);   // for ARRAY values
uint64_t    dsv4_gguf_arr_len(const struct dsv4_gguf * gguf, int64_t i);    // for ARRAY values

// Typed getters: return DSV4_OK and write *out, or DSV4_ERR_FORMAT naming the key when it is
// absent or of an incompatible type. Integer getters accept any integer type whose value fits.
dsv4_status dsv4_gguf_get_i64(const struct dsv4_gguf * gguf, const char * key, int64_t * out);
dsv4_status dsv4_gguf_get_f64(const struct dsv4_gguf * gguf, const char * key, double * out);
dsv4_status dsv4_gguf_get_bool(const struct dsv4_gguf * gguf, const char * key, bool * out);
// The string is not NUL-terminated in the file: returns pointer + length into the mapping.
dsv4_status dsv4_gguf_get_str(const struct dsv4_gguf * gguf, const char * key, const char ** out, uint64_t * len);
// Numeric arrays, converted element by element; `n` must equal the array length.
dsv4_status dsv4_gguf_get_arr_i64(const struct dsv4_gguf * gguf, const char * key, int64_t * out, uint64_t n);
dsv4_status dsv4_gguf_get_arr_f64(const struct dsv4_gguf * gguf, const char * key, double * out, uint64_t n);
// i-th element of a string array.
dsv4_status dsv4_gguf_get_arr_str(const struct dsv4_gguf * gguf, int64_t key_index, uint64_t i,
                                  const char ** out, uint64_t * len);

// Tensors.
int64_t dsv4_gguf_n_tensors(const struct dsv4_gguf * gguf);
const struct dsv4_gguf_tensor * dsv4_gguf_tensor_at(const struct dsv4_gguf * gguf, int64_t i);
const struct dsv4_gguf_tensor * dsv4_gguf_find_tensor(const struct dsv4_gguf * gguf, const char * name);

// Block size and bytes per block of a GGUF tensor type the engine knows (the dsv4-types table);
// false for any other type, which the reader rejects by id.
bool dsv4_gguf_type_block(uint32_t ggml_type, int64_t * block_size, int64_t * block_bytes);
const char * dsv4_gguf_type_name(uint32_t ggml_type);
