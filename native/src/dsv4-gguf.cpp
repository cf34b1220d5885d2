// GGUF reader: mmap the file, parse header / metadata / tensor infos with a bounds-checked cursor,
// validate tensor data placement. See dsv4-gguf.h.
#include "dsv4-gguf.h"
#include "dsv4-impl.h"
#include "dsv4-types.h"

#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

constexpr uint32_t k_gguf_magic = 0x46554747u;  // "GGUF" little-endian
constexpr uint64_t k_default_alignment = 32;
constexpr uint64_t k_max_string = 1ull << 30;    // no key or value string is anywhere near 1 GiB

struct kv_entry {
    std::string      key;
    uint32_t         type     = 0;
    uint32_t         arr_type = 0;
    uint64_t         arr_len  = 0;
    const uint8_t *  value    = nullptr;  // scalar bytes, string record, or first array element
    std::vector<std::pair<const uint8_t *, uint64_t>> strings;  // string arrays: (ptr, len)
};

size_t scalar_size(uint32_t t) {
    switch (t) {
        case DSV4_GGUF_UINT8: case DSV4_GGUF_INT8: case DSV4_GGUF_BOOL: return 1;
        case DSV4_GGUF_UINT16: case DSV4_GGUF_INT16: return 2;
        case DSV4_GGUF_UINT32: case DSV4_GGUF_INT32: case DSV4_GGUF_FLOAT32: return 4;
        case DSV4_GGUF_UINT64: case DSV4_GGUF_INT64: case DSV4_GGUF_FLOAT64: return 8;
        default: return 0;
    }
}

// Bounds-checked little-endian reader over the mapping.
struct cursor {
    const uint8_t * base;
    uint64_t        size;
    uint64_t        pos;

    bool can(uint64_t n) const { return n <= size - pos; }
    template <typename T> bool get(T * out) {
        if (!can(sizeof(T))) return false;
        memcpy(out, base + pos, sizeof(T));
        pos += sizeof(T);
        return true;
    }
    bool skip(uint64_t n) {
        if (!can(n)) return false;
        pos += n;
        return true;
    }
};

}  // namespace

struct dsv4_gguf {
    std::string path;
    int         fd        = -1;
    uint8_t *   map       = nullptr;
    uint64_t    file_size = 0;
    uint32_t    version   = 0;
    uint64_t    alignment = k_default_alignment;
    uint64_t    data_start = 0;
    std::vector<kv_entry> kv;
    std::unordered_map<std::string, int64_t> kv_index;
    std::vector<std::string> tensor_names;
    std::vector<dsv4_gguf_tensor> tensors;
    std::unordered_map<std::string, int64_t> tensor_index;
};

bool dsv4_gguf_type_block(uint32_t ggml_type, int64_t * block_size, int64_t * block_bytes) {
    dsv4_type type;
    if (ggml_type > INT32_MAX || dsv4_type_from_gguf((int32_t) ggml_type, &type) != DSV4_OK) return false;
    const dsv4_type_traits * tr = dsv4_get_type_traits(type);
    if (block_size) *block_size = tr->block_size;
    if (block_bytes) *block_bytes = (int64_t) tr->type_size;
    return true;
}

const char * dsv4_gguf_type_name(uint32_t ggml_type) {
    dsv4_type type;
    if (ggml_type > INT32_MAX || dsv4_type_from_gguf((int32_t) ggml_type, &type) != DSV4_OK) return "unknown";
    return dsv4_get_type_traits(type)->name;
}

namespace {

dsv4_status fail_truncated(const dsv4_gguf * g, const char * what) {
    return dsv4_set_error(DSV4_ERR_FORMAT, "%s: truncated GGUF file (ends inside %s)", g->path.c_str(), what);
}

dsv4_status read_string(dsv4_gguf * g, cursor & c, const char * what, const uint8_t ** ptr, uint64_t * len) {
    uint64_t n = 0;
    if (!c.get(&n)) return fail_truncated(g, what);
    if (n > k_max_string) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: corrupt GGUF file (%s has length %llu)", g->path.c_str(), what,
                              (unsigned long long) n);
    }
    if (!c.can(n)) return fail_truncated(g, what);
    *ptr = c.base + c.pos;
    *len = n;
    c.pos += n;
    return DSV4_OK;
}

dsv4_status read_kv(dsv4_gguf * g, cursor & c, kv_entry & e) {
    const uint8_t * kp = nullptr;
    uint64_t klen = 0;
    dsv4_status st = read_string(g, c, "a metadata key", &kp, &klen);
    if (st != DSV4_OK) return st;
    e.key.assign((const char *) kp, klen);
    if (!c.get(&e.type)) return fail_truncated(g, "a metadata value type");
    const char * key = e.key.c_str();
    if (e.type == DSV4_GGUF_STRING) {
        e.value = c.base + c.pos;
        const uint8_t * sp; uint64_t slen;
        return read_string(g, c, key, &sp, &slen);
    }
    if (e.type == DSV4_GGUF_ARRAY) {
        if (!c.get(&e.arr_type) || !c.get(&e.arr_len)) return fail_truncated(g, key);
        e.value = c.base + c.pos;
        if (e.arr_type == DSV4_GGUF_STRING) {
            // Each string needs at least its 8-byte length: a cheap bound before reserving.
            if (e.arr_len > (c.size - c.pos) / 8) return fail_truncated(g, key);
            e.strings.reserve(e.arr_len);
            for (uint64_t i = 0; i < e.arr_len; i++) {
                const uint8_t * sp; uint64_t slen;
                st = read_string(g, c, key, &sp, &slen);
                if (st != DSV4_OK) return st;
                e.strings.emplace_back(sp, slen);
            }
            return DSV4_OK;
        }
        size_t es = scalar_size(e.arr_type);
        if (es == 0) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: metadata key %s has an array of unsupported type %u",
                                  g->path.c_str(), key, e.arr_type);
        }
        if (e.arr_len > (c.size - c.pos) / es) return fail_truncated(g, key);
        c.pos += e.arr_len * es;
        return DSV4_OK;
    }
    size_t es = scalar_size(e.type);
    if (es == 0) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: metadata key %s has unknown value type %u", g->path.c_str(), key,
                              e.type);
    }
    e.value = c.base + c.pos;
    if (!c.skip(es)) return fail_truncated(g, key);
    return DSV4_OK;
}

dsv4_status parse(dsv4_gguf * g) {
    cursor c{g->map, g->file_size, 0};
    uint32_t magic = 0;
    if (!c.get(&magic)) return fail_truncated(g, "the header");
    if (magic != k_gguf_magic) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: not a GGUF file (bad magic 0x%08x)", g->path.c_str(), magic);
    }
    if (!c.get(&g->version)) return fail_truncated(g, "the header");
    if (g->version != 2 && g->version != 3) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: unsupported GGUF version %u (supported: 2, 3)", g->path.c_str(),
                              g->version);
    }
    uint64_t n_tensors = 0, n_kv = 0;
    if (!c.get(&n_tensors) || !c.get(&n_kv)) return fail_truncated(g, "the header");
    // A key needs >= 12 bytes and a tensor info >= 24: reject absurd counts before allocating.
    if (n_kv > g->file_size / 12 || n_tensors > g->file_size / 24) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: corrupt GGUF header (%llu tensors, %llu keys in a %llu-byte file)",
                              g->path.c_str(), (unsigned long long) n_tensors, (unsigned long long) n_kv,
                              (unsigned long long) g->file_size);
    }
    g->kv.resize(n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        dsv4_status st = read_kv(g, c, g->kv[i]);
        if (st != DSV4_OK) return st;
        if (!g->kv_index.emplace(g->kv[i].key, (int64_t) i).second) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: duplicate metadata key %s", g->path.c_str(),
                                  g->kv[i].key.c_str());
        }
    }
    auto al = g->kv_index.find("general.alignment");
    if (al != g->kv_index.end()) {
        int64_t a = 0;
        if (dsv4_gguf_get_i64(g, "general.alignment", &a) != DSV4_OK || a <= 0 || (a & (a - 1)) != 0) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: general.alignment must be a power of two", g->path.c_str());
        }
        g->alignment = (uint64_t) a;
    }

    g->tensors.resize(n_tensors);
    g->tensor_names.resize(n_tensors);
    for (uint64_t i = 0; i < n_tensors; i++) {
        dsv4_gguf_tensor & t = g->tensors[i];
        const uint8_t * np; uint64_t nlen;
        dsv4_status st = read_string(g, c, "a tensor name", &np, &nlen);
        if (st != DSV4_OK) return st;
        g->tensor_names[i].assign((const char *) np, nlen);
        const char * name = g->tensor_names[i].c_str();
        if (!c.get(&t.n_dims)) return fail_truncated(g, name);
        if (t.n_dims == 0 || t.n_dims > DSV4_GGUF_MAX_DIMS) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s has %u dimensions (1..4 allowed)", g->path.c_str(),
                                  name, t.n_dims);
        }
        for (int d = 0; d < DSV4_GGUF_MAX_DIMS; d++) t.ne[d] = 1;
        for (uint32_t d = 0; d < t.n_dims; d++) {
            uint64_t ne = 0;
            if (!c.get(&ne)) return fail_truncated(g, name);
            if (ne == 0 || ne > (uint64_t) INT64_MAX / 2) {
                return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s has invalid dimension %u = %llu",
                                      g->path.c_str(), name, d, (unsigned long long) ne);
            }
            t.ne[d] = (int64_t) ne;
        }
        if (!c.get(&t.type) || !c.get(&t.offset)) return fail_truncated(g, name);
        int64_t bs = 0, bb = 0;
        if (!dsv4_gguf_type_block(t.type, &bs, &bb)) {
            return dsv4_set_error(DSV4_ERR_UNSUPPORTED, "%s: tensor %s has unknown or unsupported type %u",
                                  g->path.c_str(), name, t.type);
        }
        if (t.ne[0] % bs != 0) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s: row of %lld elements is not a multiple of the %s block (%lld)",
                                  g->path.c_str(), name, (long long) t.ne[0], dsv4_gguf_type_name(t.type), (long long) bs);
        }
        // nbytes = ne0/bs*bb * ne1 * ne2 * ne3, with overflow checks.
        unsigned __int128 nbytes = (unsigned __int128) (t.ne[0] / bs) * (unsigned __int128) bb;
        for (int d = 1; d < DSV4_GGUF_MAX_DIMS; d++) {
            nbytes *= (unsigned __int128) t.ne[d];
            if (nbytes > (unsigned __int128) g->file_size) break;  // cannot fit: reported below
        }
        t.nbytes = nbytes > (unsigned __int128) UINT64_MAX ? UINT64_MAX : (uint64_t) nbytes;
        t.name = nullptr;  // set after the vector stops moving
        if (!g->tensor_index.emplace(g->tensor_names[i], (int64_t) i).second) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: duplicate tensor %s", g->path.c_str(), name);
        }
    }
    uint64_t data_start = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (data_start > g->file_size && n_tensors > 0) return fail_truncated(g, "the tensor data");
    g->data_start = data_start;
    uint64_t data_size = g->file_size >= data_start ? g->file_size - data_start : 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        dsv4_gguf_tensor & t = g->tensors[i];
        t.name = g->tensor_names[i].c_str();
        if (t.offset % g->alignment != 0) {
            return dsv4_set_error(DSV4_ERR_FORMAT, "%s: tensor %s data offset %llu is not aligned to %llu",
                                  g->path.c_str(), t.name, (unsigned long long) t.offset,
                                  (unsigned long long) g->alignment);
        }
        if (t.offset > data_size || t.nbytes > data_size - t.offset) {
            return dsv4_set_error(DSV4_ERR_FORMAT,
                                  "%s: tensor %s data [%llu, +%llu) lies outside the file's data section (%llu bytes; truncated?)",
                                  g->path.c_str(), t.name, (unsigned long long) t.offset,
                                  (unsigned long long) t.nbytes, (unsigned long long) data_size);
        }
        t.data = g->map + data_start + t.offset;
    }
    return DSV4_OK;
}

}  // namespace

dsv4_status dsv4_gguf_open(const char * path, dsv4_gguf ** out) {
    if (!path || !out) return dsv4_set_error(DSV4_ERR_INVALID_ARG, "dsv4_gguf_open: NULL argument");
    *out = nullptr;
    dsv4_gguf * g = new (std::nothrow) dsv4_gguf();
    if (!g) return dsv4_set_error(DSV4_ERR_NO_MEMORY, "out of memory opening %s", path);
    dsv4_status st = DSV4_OK;
    try {
        g->path = path;
        g->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (g->fd < 0) {
            st = dsv4_set_error(DSV4_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
        } else {
            struct stat sb;
            if (fstat(g->fd, &sb) != 0) {
                st = dsv4_set_error(DSV4_ERR_IO, "%s: cannot stat (%s)", path, strerror(errno));
            } else if (!S_ISREG(sb.st_mode)) {
                st = dsv4_set_error(DSV4_ERR_IO, "%s: not a regular file", path);
            } else if (sb.st_size < 24) {
                g->file_size = (uint64_t) sb.st_size;
                st = dsv4_set_error(DSV4_ERR_FORMAT, "%s: truncated GGUF file (%llu bytes, smaller than a header)",
                                    path, (unsigned long long) sb.st_size);
            } else {
                g->file_size = (uint64_t) sb.st_size;
                void * m = mmap(nullptr, g->file_size, PROT_READ, MAP_PRIVATE, g->fd, 0);
                if (m == MAP_FAILED) {
                    st = dsv4_set_error(DSV4_ERR_IO, "%s: mmap failed (%s)", path, strerror(errno));
                } else {
                    g->map = (uint8_t *) m;
                    st = parse(g);
                }
            }
        }
    } catch (const std::bad_alloc &) {
        st = dsv4_set_error(DSV4_ERR_NO_MEMORY, "%s: out of memory while reading the GGUF header", path);
    }
    if (st != DSV4_OK) {
        dsv4_gguf_close(g);
        return st;
    }
    *out = g;
    return DSV4_OK;
}

void dsv4_gguf_close(dsv4_gguf * g) {
    if (!g) return;
    if (g->map) munmap(g->map, g->file_size);
    if (g->fd >= 0) close(g->fd);
    delete g;
}

uint32_t dsv4_gguf_version(const dsv4_gguf * g) { return g->version; }
uint64_t dsv4_gguf_file_size(const dsv4_gguf * g) { return g->file_size; }
uint64_t dsv4_gguf_alignment(const dsv4_gguf * g) { return g->alignment; }
uint64_t dsv4_gguf_data_offset(const dsv4_gguf * g) { return g->data_start; }
const char * dsv4_gguf_path(const dsv4_gguf * g) { return g->path.c_str(); }

int64_t dsv4_gguf_n_kv(const dsv4_gguf * g) { return (int64_t) g->kv.size(); }

int64_t dsv4_gguf_find_key(const dsv4_gguf * g, const char * key) {
    auto it = g->kv_index.find(key);
    return it == g->kv_index.end() ? -1 : it->second;
}

const char * dsv4_gguf_key(const dsv4_gguf * g, int64_t i) { return g->kv[(size_t) i].key.c_str(); }
uint32_t dsv4_gguf_kv_type(const dsv4_gguf * g, int64_t i) { return g->kv[(size_t) i].type; }
uint32_t dsv4_gguf_arr_type(const dsv4_gguf * g, int64_t i) { return g->kv[(size_t) i].arr_type; }
uint64_t dsv4_gguf_arr_len(const dsv4_gguf * g, int64_t i) { return g->kv[(size_t) i].arr_len; }

namespace {

// Reads one numeric element of GGUF type `t` at `p`; false for non-numeric types.
bool load_number(uint32_t t, const uint8_t * p, int64_t * as_int, double * as_float, bool * is_int) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
            uint64_t u64; int64_t i64; double f64; } v;
    size_t n = scalar_size(t);
    if (n == 0) return false;
    memcpy(&v, p, n);
    *is_int = true;
    switch (t) {
        case DSV4_GGUF_UINT8:   *as_int = v.u8;  break;
        case DSV4_GGUF_INT8:    *as_int = v.i8;  break;
        case DSV4_GGUF_BOOL:    *as_int = v.u8 != 0; break;
        case DSV4_GGUF_UINT16:  *as_int = v.u16; break;
        case DSV4_GGUF_INT16:   *as_int = v.i16; break;
        case DSV4_GGUF_UINT32:  *as_int = v.u32; break;
        case DSV4_GGUF_INT32:   *as_int = v.i32; break;
        case DSV4_GGUF_UINT64:
            if (v.u64 > (uint64_t) INT64_MAX) return false;
            *as_int = (int64_t) v.u64;
            break;
        case DSV4_GGUF_INT64:   *as_int = v.i64; break;
        case DSV4_GGUF_FLOAT32: *is_int = false; *as_float = v.f32; break;
        case DSV4_GGUF_FLOAT64: *is_int = false; *as_float = v.f64; break;
        default: return false;
    }
    if (*is_int) *as_float = (double) *as_int;
    return true;
}

dsv4_status missing_key(const dsv4_gguf * g, const char * key) {
    return dsv4_set_error(DSV4_ERR_FORMAT, "%s: missing metadata key %s", g->path.c_str(), key);
}

dsv4_status wrong_type(const dsv4_gguf * g, const char * key, const char * want) {
    return dsv4_set_error(DSV4_ERR_FORMAT, "%s: metadata key %s is not %s", g->path.c_str(), key, want);
}

}  // namespace

dsv4_status dsv4_gguf_get_i64(const dsv4_gguf * g, const char * key, int64_t * out) {
    int64_t i = dsv4_gguf_find_key(g, key);
    if (i < 0) return missing_key(g, key);
    const kv_entry & e = g->kv[(size_t) i];
    int64_t iv; double fv; bool is_int;
    if (!load_number(e.type, e.value, &iv, &fv, &is_int) || !is_int) return wrong_type(g, key, "an integer");
    *out = iv;
    return DSV4_OK;
}

dsv4_status dsv4_gguf_get_f64(const dsv4_gguf * g, const char * key, double * out) {
    int64_t i = dsv4_gguf_find_key(g, key);
    if (i < 0) return missing_key(g, key);
    const kv_entry & e = g->kv[(size_t) i];
    int64_t iv; double fv; bool is_int;
    if (!load_number(e.type, e.value, &iv, &fv, &is_int) || e.type == DSV4_GGUF_BOOL) return wrong_type(g, key, "a number");
    *out = fv;
    return DSV4_OK;
}

dsv4_status dsv4_gguf_get_bool(const dsv4_gguf * g, const char * key, bool * out) {
    int64_t i = dsv4_gguf_find_key(g, key);
    if (i < 0) return missing_key(g, key);
    const kv_entry & e = g->kv[(size_t) i];
    if (e.type != DSV4_GGUF_BOOL) return wrong_type(g, key, "a bool");
    *out = e.value[0] != 0;
    return DSV4_OK;
}

dsv4_status dsv4_gguf_get_str(const dsv4_gguf * g, const char * key, const char ** out, uint64_t * len) {
    int64_t i = dsv4_gguf_find_key(g, key);
    if (i < 0) return missing_key(g, key);
    const kv_entry & e = g->kv[(size_t) i];
    if (e.type != DSV4_GGUF_STRING) return wrong_type(g, key, "a string");
    uint64_t n;
    memcpy(&n, e.value, 8);
    *out = (const char *) e.value + 8;
    *len = n;
    return DSV4_OK;
}

namespace {

template <typename T>
dsv4_status get_numeric_array(const dsv4_gguf * g, const char * key, T * out, uint64_t n, bool want_int) {
    int64_t i = dsv4_gguf_find_key(g, key);
    if (i < 0) return missing_key(g, key);
    const kv_entry & e = g->kv[(size_t) i];
    if (e.type != DSV4_GGUF_ARRAY || scalar_size(e.arr_type) == 0) return wrong_type(g, key, "a numeric array");
    if (e.arr_len != n) {
        return dsv4_set_error(DSV4_ERR_FORMAT, "%s: metadata key %s has %llu elements, expected %llu", g->path.c_str(),
                              key, (unsigned long long) e.arr_len, (unsigned long long) n);
    }
    size_t es = scalar_size(e.arr_type);
    for (uint64_t k = 0; k < n; k++) {
        int64_t iv; double fv; bool is_int;
        if (!load_number(e.arr_type, e.value + k * es, &iv, &fv, &is_int) || (want_int && !is_int)) {
            return wrong_type(g, key, want_int ? "an integer array" : "a numeric array");
        }
        out[k] = want_int ? (T) iv : (T) fv;
    }
    return DSV4_OK;
}

}  // namespace

dsv4_status dsv4_gguf_get_arr_i64(const dsv4_gguf * g, const char * key, int64_t * out, uint64_t n) {
    return get_numeric_array(g, key, out, n, true);
}

dsv4_status dsv4_gguf_get_arr_f64(const dsv4_gguf * g, const char * key, double * out, uint64_t n) {
    return get_numeric_array(g, key, out, n, false);
}

dsv4_status dsv4_gguf_get_arr_str(const dsv4_gguf * g, int64_t key_index, uint64_t i, const char ** out, uint64_t * len) {
    if (key_index < 0 || (size_t) key_index >= g->kv.size()) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: metadata index %lld out of range", g->path.c_str(),
                              (long long) key_index);
    }
    const kv_entry & e = g->kv[(size_t) key_index];
    if (e.type != DSV4_GGUF_ARRAY || e.arr_type != DSV4_GGUF_STRING) return wrong_type(g, e.key.c_str(), "a string array");
    if (i >= e.strings.size()) {
        return dsv4_set_error(DSV4_ERR_INVALID_ARG, "%s: index %llu past the end of %s", g->path.c_str(),
                              (unsigned long long) i, e.key.c_str());
    }
    *out = (const char *) e.strings[i].first;
    *len = e.strings[i].second;
    return DSV4_OK;
}

int64_t dsv4_gguf_n_tensors(const dsv4_gguf * g) { return (int64_t) g->tensors.size(); }

const dsv4_gguf_tensor * dsv4_gguf_tensor_at(const dsv4_gguf * g, int64_t i) {
    if (i < 0 || (size_t) i >= g->tensors.size()) return nullptr;
    return &g->tensors[(size_t) i];
}

const dsv4_gguf_tensor * dsv4_gguf_find_tensor(const dsv4_gguf * g, const char * name) {
    auto it = g->tensor_index.find(name);
    return it == g->tensor_index.end() ? nullptr : &g->tensors[(size_t) it->second];
}
