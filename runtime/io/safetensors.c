/* safetensors.c — checkpoints as safetensors files: crash-safe saving and strict,
 * bounds-checked loading. Format and guarantees: fluxion.h, "checkpoints". The header is parsed
 * by runtime/io/json_min.c. The data region is little-endian: this file assumes a little-endian host
 * (x86-64, AArch64), checked at run time. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "json_min.h"

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* FLX_OK when names[0..n) are distinct; else the error "fn: [path: ]what 'name' appears twice".
 * Sorts a copy of the pointers (n log n), so a hostile header with millions of keys stays cheap. */
static flx_status check_unique(const char *const *names, size_t n, const char *fn, const char *path,
                               const char *what) {
    if (n < 2) return FLX_OK;
    const char **v = (const char **)malloc(n * sizeof *v);
    if (!v) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    memcpy(v, names, n * sizeof *v);
    qsort(v, n, sizeof *v, cmp_str_ptr);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (strcmp(v[i - 1], v[i]) == 0) dup = v[i];
    free(v);
    if (!dup) return FLX_OK;
    return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s%s%s '%s' appears twice", fn, path ? path : "",
                         path ? ": " : "", what, dup);
}

static const char LOAD_FN[] = "flx_load_safetensors";

/* The Python safetensors package refuses headers above 100 MB; so do we. */
#define MAX_HEADER_BYTES (100u * 1000u * 1000u)

static bool host_is_little_endian(void) {
    const uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static const char *st_dtype_name(flx_dtype dt) {
    switch (dt) {
    case FLX_F32: return "F32";
    case FLX_F64: return "F64";
    case FLX_I32: return "I32";
    case FLX_I64: return "I64";
    case FLX_BOOL: return "BOOL";
    case FLX_F16: return "F16";
    case FLX_BF16: return "BF16";
    default: return NULL;
    }
}

static bool st_dtype_parse(const char *s, flx_dtype *out) {
    static const flx_dtype all[] = {FLX_F32, FLX_F64, FLX_I32, FLX_I64, FLX_BOOL, FLX_F16, FLX_BF16};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        if (strcmp(s, st_dtype_name(all[k])) == 0) {
            *out = all[k];
            return true;
        }
    return false;
}

/* ---- saving ------------------------------------------------------------------------------- */
typedef struct strbuf {
    char *d;
    size_t n, cap;
    bool oom;
} strbuf;

static void sb_add(strbuf *b, const char *s, size_t k) {
    if (b->oom) return;
    if (b->n + k + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + k + 1) nc *= 2;
        char *nd = (char *)realloc(b->d, nc);
        if (!nd) {
            b->oom = true;
            return;
        }
        b->d = nd;
        b->cap = nc;
    }
    memcpy(b->d + b->n, s, k);
    b->n += k;
    b->d[b->n] = 0;
}
static void sb_str(strbuf *b, const char *s) { sb_add(b, s, strlen(s)); }
static void sb_fmt_i64(strbuf *b, int64_t v) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    sb_str(b, tmp);
}
/* A JSON string: the text is known to be valid UTF-8 without control characters, so only '"'
 * and '\\' need escaping. */
static void sb_json_str(strbuf *b, const char *s) {
    sb_add(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\') sb_add(b, "\\", 1);
        sb_add(b, p, 1);
    }
    sb_add(b, "\"", 1);
}

/* Valid UTF-8, no control characters (< 0x20, 0x7f), not empty. */
static bool good_text(const char *s) {
    if (!s || !*s) return false;
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        if (c < 0x20 || c == 0x7f) return false;
        size_t k;
        uint32_t cp;
        if (c < 0x80) { p++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { k = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 4; cp = c & 0x07; }
        else return false;
        for (size_t j = 1; j < k; j++) {
            if ((p[j] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[j] & 0x3F);
        }
        if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        p += k;
    }
    return true;
}

static flx_status write_all(int fd, const void *data, size_t n, const char *path) {
    const char *p = (const char *)data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return flx_set_error(FLX_ERR_BACKEND, "flx_save_safetensors: writing %s failed: %s", path,
                                 strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return FLX_OK;
}

/* Directory part of path ("." when none). Caller frees. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        char *d = (char *)malloc(2);
        if (d) strcpy(d, ".");
        return d;
    }
    size_t k = (size_t)(slash - path);
    if (k == 0) k = 1; /* "/file" */
    char *d = (char *)malloc(k + 1);
    if (!d) return NULL;
    memcpy(d, path, k);
    d[k] = 0;
    return d;
}

flx_status flx_save_safetensors(const char *path, int32_t n, const char *const *names,
                                flx_tensor *const *tensors, int32_t n_meta,
                                const char *const *meta_keys, const char *const *meta_values) {
    static const char *fn = "flx_save_safetensors";
    if (!path || !*path) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: path is NULL or empty", fn);
    if (n < 0 || (n > 0 && (!names || !tensors)))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad tensor list (n %d)", fn, (int)n);
    if (n_meta < 0 || (n_meta > 0 && (!meta_keys || !meta_values)))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad metadata list (n_meta %d)", fn,
                             (int)n_meta);
    if (!host_is_little_endian())
        return flx_set_error(FLX_ERR_UNSUPPORTED, "%s: needs a little-endian host", fn);
    for (int32_t i = 0; i < n; i++) {
        if (!tensors[i])
            return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: tensor %d is NULL", fn, (int)i);
        if (!flx_check_handle(fn, tensors[i])) return flx_last_status();
        if (!good_text(names[i]))
            return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                                 "%s: name %d is NULL, empty, not UTF-8 or has control characters",
                                 fn, (int)i);
        if (strcmp(names[i], "__metadata__") == 0)
            return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: \"__metadata__\" is reserved", fn);
        if (!st_dtype_name(tensors[i]->dtype))
            return flx_set_error(FLX_ERR_DTYPE, "%s: tensor '%s' %s has a dtype safetensors files do "
                                 "not hold here (f32, f64, f16, bf16, i32, i64, bool)",
                                 fn, names[i], flx_describe(tensors[i]));
    }
    flx_status st = check_unique(names, (size_t)n, fn, NULL, "name");
    if (st != FLX_OK) return st;
    for (int32_t i = 0; i < n_meta; i++) {
        if (!good_text(meta_keys[i]) || !meta_values[i] ||
            (*meta_values[i] && !good_text(meta_values[i])))
            return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                                 "%s: metadata entry %d is NULL, empty, not UTF-8 or has control "
                                 "characters",
                                 fn, (int)i);
    }
    st = check_unique(meta_keys, (size_t)(n_meta > 0 ? n_meta : 0), fn, NULL, "metadata key");
    if (st != FLX_OK) return st;
    /* Values first (nothing is written until every tensor is computed and on the host). */
    if (n > 0) {
        flx_status s = flx_eval(n, tensors);
        if (s != FLX_OK) return s;
    }
    strbuf h = {0};
    sb_str(&h, "{");
    if (n_meta > 0) {
        sb_str(&h, "\"__metadata__\":{");
        for (int32_t i = 0; i < n_meta; i++) {
            if (i) sb_str(&h, ",");
            sb_json_str(&h, meta_keys[i]);
            sb_str(&h, ":");
            sb_json_str(&h, meta_values[i]);
        }
        sb_str(&h, "}");
    }
    uint64_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        flx_tensor *t = tensors[i];
        uint64_t nb = (uint64_t)t->numel * flx_dtype_size(t->dtype);
        if (i || n_meta > 0) sb_str(&h, ",");
        sb_json_str(&h, names[i]);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, st_dtype_name(t->dtype));
        sb_str(&h, "\",\"shape\":[");
        for (int32_t d = 0; d < t->ndim; d++) {
            if (d) sb_str(&h, ",");
            sb_fmt_i64(&h, t->shape[d]);
        }
        sb_str(&h, "],\"data_offsets\":[");
        sb_fmt_i64(&h, (int64_t)off);
        sb_str(&h, ",");
        sb_fmt_i64(&h, (int64_t)(off + nb));
        sb_str(&h, "]}");
        off += nb;
    }
    sb_str(&h, "}");
    while (!h.oom && h.n % 8 != 0) sb_str(&h, " "); /* align the data region to 8 bytes */
    if (h.oom) {
        free(h.d);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory for the header", fn);
    }

    /* Temporary file in the same directory, then fsync, rename, fsync the directory. */
    size_t pl = strlen(path);
    char *tmp = (char *)malloc(pl + 16);
    char *dir = dir_of(path);
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        free(h.d);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp.XXXXXX", 12);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        flx_status s = flx_set_error(FLX_ERR_BACKEND, "%s: cannot create a temporary file next to %s: %s",
                                     fn, path, strerror(errno));
        free(tmp);
        free(dir);
        free(h.d);
        return s;
    }
    (void)fchmod(fd, 0644); /* mkstemp makes 0600; a checkpoint is an ordinary file */
    uint8_t len8[8];
    uint64_t hl = h.n;
    for (int k = 0; k < 8; k++) len8[k] = (uint8_t)(hl >> (8 * k));
    flx_status s = write_all(fd, len8, 8, tmp);
    if (s == FLX_OK) s = write_all(fd, h.d, h.n, tmp);
    free(h.d);
    void *host = NULL;
    size_t host_cap = 0;
    for (int32_t i = 0; i < n && s == FLX_OK; i++) {
        size_t nb = (size_t)tensors[i]->numel * flx_dtype_size(tensors[i]->dtype);
        if (nb == 0) continue;
        if (nb > host_cap) {
            free(host);
            host = malloc(nb);
            host_cap = host ? nb : 0;
            if (!host) {
                s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory (%zu bytes)", fn, nb);
                break;
            }
        }
        s = flx_to_host(tensors[i], host, nb);
        if (s == FLX_OK) s = write_all(fd, host, nb, tmp);
    }
    free(host);
    if (s == FLX_OK && fsync(fd) != 0)
        s = flx_set_error(FLX_ERR_BACKEND, "%s: fsync of %s failed: %s", fn, tmp, strerror(errno));
    if (close(fd) != 0 && s == FLX_OK)
        s = flx_set_error(FLX_ERR_BACKEND, "%s: closing %s failed: %s", fn, tmp, strerror(errno));
    if (s == FLX_OK && rename(tmp, path) != 0)
        s = flx_set_error(FLX_ERR_BACKEND, "%s: renaming %s to %s failed: %s", fn, tmp, path,
                          strerror(errno));
    if (s != FLX_OK) {
        unlink(tmp); /* the previous checkpoint at path is untouched */
    } else {
        int dfd = open(dir, O_RDONLY);
        if (dfd >= 0) {
            if (fsync(dfd) != 0 && errno != EINVAL)
                s = flx_set_error(FLX_ERR_BACKEND, "%s: fsync of directory %s failed: %s", fn, dir,
                                  strerror(errno));
            close(dfd);
        }
    }
    free(tmp);
    free(dir);
    return s;
}

/* ---- loading ------------------------------------------------------------------------------ */
struct flx_checkpoint {
    int32_t n;
    char **names;
    flx_tensor **tensors; /* owned references */
    int32_t n_meta;
    char **meta_keys, **meta_values;
};

void flx_checkpoint_destroy(flx_checkpoint *ck) {
    if (!ck) return;
    for (int32_t i = 0; i < ck->n; i++) {
        if (ck->names) free(ck->names[i]);
        if (ck->tensors) flx_release(ck->tensors[i]);
    }
    for (int32_t i = 0; i < ck->n_meta; i++) {
        free(ck->meta_keys[i]);
        free(ck->meta_values[i]);
    }
    free(ck->names);
    free(ck->tensors);
    free(ck->meta_keys);
    free(ck->meta_values);
    free(ck);
}

typedef struct entry {
    const char *name;
    flx_dtype dtype;
    int32_t ndim;
    int64_t shape[FLX_MAX_DIMS];
    uint64_t begin, end;
} entry;

static int cmp_entry(const void *a, const void *b) {
    const entry *x = *(const entry *const *)a, *y = *(const entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : (x->end > y->end);
}

static char *dup_str(const char *s) {
    size_t k = strlen(s);
    char *d = (char *)malloc(k + 1);
    if (d) memcpy(d, s, k + 1);
    return d;
}

/* Checks one tensor entry of the header; false with the error set. */
static bool parse_entry(const char *path, const char *name, const flx_json *v, entry *e) {
    const char *fn = LOAD_FN;
    if (v->type != FLX_JSON_OBJECT) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: entry '%s' is not a JSON object", fn, path, name);
        return false;
    }
    for (size_t k = 0; k < v->n; k++)
        if (strcmp(v->keys[k], "dtype") && strcmp(v->keys[k], "shape") &&
            strcmp(v->keys[k], "data_offsets")) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: entry '%s' has an unknown field '%s'",
                          fn, path, name, v->keys[k]);
            return false;
        }
    if (v->n != 3) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: %s: entry '%s' needs exactly the fields dtype, shape and data_offsets", fn,
                      path, name);
        return false;
    }
    const flx_json *dt = flx_json_get(v, "dtype"), *sh = flx_json_get(v, "shape"),
                   *of = flx_json_get(v, "data_offsets");
    if (!dt || !sh || !of) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: entry '%s' lacks dtype, shape or data_offsets",
                      fn, path, name);
        return false;
    }
    e->name = name;
    if (dt->type != FLX_JSON_STRING || !st_dtype_parse(dt->s, &e->dtype)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: %s: entry '%s' has unsupported dtype %s%s%s (F32, F64, F16, BF16, I32, "
                      "I64, BOOL)", fn, path, name, dt->type == FLX_JSON_STRING ? "'" : "",
                      dt->type == FLX_JSON_STRING ? dt->s : "(not a string)",
                      dt->type == FLX_JSON_STRING ? "'" : "");
        return false;
    }
    if (sh->type != FLX_JSON_ARRAY || sh->n > FLX_MAX_DIMS) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: entry '%s' has a bad shape (an array of at "
                      "most %d sizes is expected)",
                      fn, path, name, FLX_MAX_DIMS);
        return false;
    }
    e->ndim = (int32_t)sh->n;
    /* numel * element size must fit comfortably in int64 (and in memory) */
    uint64_t numel = 1, limit = (uint64_t)INT64_MAX / 16;
    for (size_t d = 0; d < sh->n; d++) {
        const flx_json *x = &sh->items[d];
        if (x->type != FLX_JSON_INT || x->i < 0) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: entry '%s': shape entry %zu is not a size "
                          ">= 0", fn, path, name, d);
            return false;
        }
        e->shape[d] = x->i;
        if (x->i > 0 && numel > limit / (uint64_t)x->i) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: entry '%s' has a shape too large to hold",
                          fn, path, name);
            return false;
        }
        numel *= (uint64_t)x->i;
    }
    if (of->type != FLX_JSON_ARRAY || of->n != 2 || of->items[0].type != FLX_JSON_INT ||
        of->items[1].type != FLX_JSON_INT || of->items[0].i < 0 || of->items[1].i < of->items[0].i) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: entry '%s' has bad data_offsets (expected "
                      "[begin, end] with 0 <= begin <= end)",
                      fn, path, name);
        return false;
    }
    e->begin = (uint64_t)of->items[0].i;
    e->end = (uint64_t)of->items[1].i;
    uint64_t want = numel * flx_dtype_size(e->dtype);
    if (e->end - e->begin != want) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: %s: entry '%s': shape %s %s needs %llu bytes but data_offsets [%llu, %llu] "
                      "hold %llu",
                      fn, path, name, flx_shape_str(e->ndim, e->shape), st_dtype_name(e->dtype),
                      (unsigned long long)want, (unsigned long long)e->begin,
                      (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
        return false;
    }
    return true;
}

static flx_status read_at(FILE *f, uint64_t off, void *dst, size_t n, const char *path) {
    if (fseeko(f, (off_t)off, SEEK_SET) != 0 || fread(dst, 1, n, f) != n)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_load_safetensors: %s: cannot read %zu "
                             "bytes at offset %llu (file changed or unreadable)",
                             path, n, (unsigned long long)off);
    return FLX_OK;
}

/* One load in progress: what each step reads and leaves for the next. load_release frees it
 * whichever step failed. */
typedef struct loader {
    const char *path;
    FILE *f;
    uint64_t fsize, hl; /* file size; header length (the data region starts at 8 + hl) */
    char *header;
    flx_json root;
    entry *ents; /* tensor entries in header order */
    size_t ne;
    const flx_json *meta; /* the __metadata__ object, or NULL */
} loader;

static void load_release(loader *L) {
    free(L->ents);
    flx_json_free(&L->root);
    free(L->header);
    if (L->f) fclose(L->f);
}

static bool oom_fail(void) {
    flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", LOAD_FN);
    return false;
}

/* The 8-byte length, the header bytes and their JSON: an object whose names are unique. */
static bool read_header(loader *L) {
    const char *path = L->path;
    struct stat sb;
    if (fstat(fileno(L->f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s is not a regular file", LOAD_FN, path);
        return false;
    }
    L->fsize = (uint64_t)sb.st_size;
    if (L->fsize < 8) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s is %llu bytes, too short for a safetensors "
                      "file (8-byte header length missing)",
                      LOAD_FN, path, (unsigned long long)L->fsize);
        return false;
    }
    uint8_t len8[8];
    if (read_at(L->f, 0, len8, 8, path) != FLX_OK) return false;
    uint64_t hl = 0;
    for (int k = 7; k >= 0; k--) hl = (hl << 8) | len8[k];
    if (hl < 2 || hl > MAX_HEADER_BYTES || hl > L->fsize - 8) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: %s: bad header length %llu (file has %llu bytes after the length; at "
                      "most %u allowed)",
                      LOAD_FN, path, (unsigned long long)hl, (unsigned long long)(L->fsize - 8),
                      MAX_HEADER_BYTES);
        return false;
    }
    L->hl = hl;
    L->header = (char *)malloc((size_t)hl);
    if (!L->header) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory for a %llu-byte header", LOAD_FN,
                      (unsigned long long)hl);
        return false;
    }
    if (read_at(L->f, 8, L->header, (size_t)hl, path) != FLX_OK) return false;
    char jmsg[256];
    if (flx_json_parse(L->header, (size_t)hl, &L->root, jmsg, sizeof jmsg) != 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: the header is not valid JSON: %s", LOAD_FN,
                      path, jmsg);
        return false;
    }
    if (L->root.type != FLX_JSON_OBJECT) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: the header is not a JSON object", LOAD_FN,
                      path);
        return false;
    }
    if (check_unique((const char *const *)L->root.keys, L->root.n, LOAD_FN, path, "the name") !=
        FLX_OK)
        return false;
    if (L->root.n > (size_t)INT32_MAX / 2) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: too many entries", LOAD_FN, path);
        return false;
    }
    return true;
}

/* Every tensor entry of the header checked into L->ents; __metadata__ set aside. */
static bool parse_entries(loader *L) {
    L->ents = (entry *)calloc(L->root.n + 1, sizeof *L->ents);
    if (!L->ents) return oom_fail();
    for (size_t k = 0; k < L->root.n; k++) {
        if (strcmp(L->root.keys[k], "__metadata__") == 0) {
            L->meta = &L->root.items[k];
            continue;
        }
        if (!parse_entry(L->path, L->root.keys[k], &L->root.items[k], &L->ents[L->ne])) return false;
        L->ne++;
    }
    return true;
}

/* __metadata__: an object of unique keys with string values, copied into ck. */
static bool read_metadata(const loader *L, flx_checkpoint *ck) {
    const flx_json *meta = L->meta;
    if (!meta) return true;
    if (meta->type != FLX_JSON_OBJECT) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: __metadata__ is not an object", LOAD_FN,
                      L->path);
        return false;
    }
    ck->meta_keys = (char **)calloc(meta->n + 1, sizeof(char *));
    ck->meta_values = (char **)calloc(meta->n + 1, sizeof(char *));
    if (!ck->meta_keys || !ck->meta_values) return oom_fail();
    if (check_unique((const char *const *)meta->keys, meta->n, LOAD_FN, L->path,
                     "__metadata__ key") != FLX_OK)
        return false;
    for (size_t k = 0; k < meta->n; k++) {
        if (meta->items[k].type != FLX_JSON_STRING) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: __metadata__ value of '%s' is not a "
                          "string", LOAD_FN, L->path, meta->keys[k]);
            return false;
        }
        ck->meta_keys[k] = dup_str(meta->keys[k]);
        ck->meta_values[k] = dup_str(meta->items[k].s);
        ck->n_meta = (int32_t)k + 1;
        if (!ck->meta_keys[k] || !ck->meta_values[k]) return oom_fail();
    }
    return true;
}

/* The byte ranges must tile [0, data size) exactly: sorted, no gap, no overlap. */
static bool check_tiling(const loader *L) {
    const char *path = L->path;
    uint64_t data_size = L->fsize - 8 - L->hl;
    entry **order = (entry **)calloc(L->ne + 1, sizeof *order);
    if (!order) return oom_fail();
    for (size_t k = 0; k < L->ne; k++) order[k] = &L->ents[k];
    qsort(order, L->ne, sizeof *order, cmp_entry);
    uint64_t at = 0;
    bool ok = true;
    for (size_t k = 0; k < L->ne && ok; k++) {
        if (order[k]->begin != at) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                          "%s: %s: data_offsets of '%s' start at %llu where %llu was expected (%s)",
                          LOAD_FN, path, order[k]->name, (unsigned long long)order[k]->begin,
                          (unsigned long long)at, order[k]->begin < at ? "overlap" : "gap");
            ok = false;
            break;
        }
        at = order[k]->end;
        if (at > data_size) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                          "%s: %s: data_offsets of '%s' end at %llu, beyond the %llu-byte data region",
                          LOAD_FN, path, order[k]->name, (unsigned long long)at,
                          (unsigned long long)data_size);
            ok = false;
        }
    }
    free(order);
    if (ok && at != data_size) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: %s: the tensors cover %llu bytes but the data region holds %llu", LOAD_FN,
                      path, (unsigned long long)at, (unsigned long long)data_size);
        ok = false;
    }
    return ok;
}

/* The tensors' bytes, in header order, into constants of ctx (BOOL bytes must be 0 or 1). */
static bool read_tensors(flx_ctx *ctx, const loader *L, flx_checkpoint *ck) {
    ck->names = (char **)calloc(L->ne + 1, sizeof(char *));
    ck->tensors = (flx_tensor **)calloc(L->ne + 1, sizeof(flx_tensor *));
    if (!ck->names || !ck->tensors) return oom_fail();
    void *host = NULL;
    bool ok = true;
    for (size_t k = 0; k < L->ne && ok; k++) {
        const entry *e = &L->ents[k];
        size_t nb = (size_t)(e->end - e->begin);
        free(host);
        host = malloc(nb ? nb : 1);
        if (!host) {
            flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory (%zu bytes)", LOAD_FN, nb);
            ok = false;
            break;
        }
        if (nb && read_at(L->f, 8 + L->hl + e->begin, host, nb, L->path) != FLX_OK) {
            ok = false;
            break;
        }
        if (e->dtype == FLX_BOOL)
            for (size_t j = 0; j < nb && ok; j++)
                if (((uint8_t *)host)[j] > 1) {
                    flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: BOOL tensor '%s' holds a byte "
                                  "other than 0 or 1", LOAD_FN, L->path, e->name);
                    ok = false;
                }
        if (!ok) break;
        ck->names[k] = dup_str(e->name);
        if (!ck->names[k]) {
            ok = oom_fail();
            break;
        }
        ck->tensors[k] = flx_const_new(ctx, e->dtype, e->ndim, e->shape, host);
        ck->n = (int32_t)k + 1;
        ok = ck->tensors[k] != NULL;
    }
    free(host);
    return ok;
}

flx_checkpoint *flx_load_safetensors(flx_ctx *ctx, const char *path) {
    if (!ctx) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", LOAD_FN);
        return NULL;
    }
    if (!path || !*path) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: path is NULL or empty", LOAD_FN);
        return NULL;
    }
    if (!host_is_little_endian()) {
        flx_set_error(FLX_ERR_UNSUPPORTED, "%s: needs a little-endian host", LOAD_FN);
        return NULL;
    }
    loader L;
    memset(&L, 0, sizeof L);
    L.path = path;
    L.f = fopen(path, "rb");
    if (!L.f) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: cannot open %s: %s", LOAD_FN, path, strerror(errno));
        return NULL;
    }
    flx_checkpoint *ck = NULL;
    bool ok = read_header(&L);
    if (ok) {
        ck = (flx_checkpoint *)calloc(1, sizeof *ck);
        ok = ck ? true : oom_fail();
    }
    ok = ok && parse_entries(&L) && read_metadata(&L, ck) && check_tiling(&L) &&
         read_tensors(ctx, &L, ck);
    load_release(&L);
    if (ok) return ck;
    flx_checkpoint_destroy(ck);
    return NULL;
}

int32_t flx_checkpoint_count(const flx_checkpoint *ck) { return ck ? ck->n : -1; }

const char *flx_checkpoint_name(const flx_checkpoint *ck, int32_t i) {
    if (!ck || i < 0 || i >= ck->n) return NULL;
    return ck->names[i];
}

flx_tensor *flx_checkpoint_tensor(flx_checkpoint *ck, int32_t i) {
    if (!ck) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_checkpoint_tensor: checkpoint is NULL");
        return NULL;
    }
    if (!flx_check_index("flx_checkpoint_tensor", "index", i, ck->n)) return NULL;
    return flx_adopt(flx_retain(ck->tensors[i]));
}

flx_tensor *flx_checkpoint_find(flx_checkpoint *ck, const char *name) {
    if (!ck || !name) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_checkpoint_find: %s is NULL",
                      ck ? "name" : "checkpoint");
        return NULL;
    }
    for (int32_t i = 0; i < ck->n; i++)
        if (strcmp(ck->names[i], name) == 0) return flx_adopt(flx_retain(ck->tensors[i]));
    flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_checkpoint_find: no tensor named '%s'", name);
    return NULL;
}

const char *flx_checkpoint_metadata(const flx_checkpoint *ck, const char *key) {
    if (!ck || !key) return NULL;
    for (int32_t i = 0; i < ck->n_meta; i++)
        if (strcmp(ck->meta_keys[i], key) == 0) return ck->meta_values[i];
    return NULL;
}
