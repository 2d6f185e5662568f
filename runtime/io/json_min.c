/* json_min.c — a small strict JSON parser for the safetensors header (see json_min.h). */
#include "json_min.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 16

typedef struct parser {
    const char *p;
    size_t len, pos;
    char *msg;
    size_t msg_size;
    bool failed;
} parser;

static void fail(parser *ps, const char *fmt, ...) {
    if (ps->failed) return;
    ps->failed = true;
    if (!ps->msg || ps->msg_size == 0) return;
    char buf[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    snprintf(ps->msg, ps->msg_size, "%s at byte %zu", buf, ps->pos);
}

static void skip_ws(parser *ps) {
    while (ps->pos < ps->len) {
        char c = ps->p[ps->pos];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') ps->pos++;
        else break;
    }
}

static bool peek(parser *ps, char *c) {
    if (ps->pos >= ps->len) return false;
    *c = ps->p[ps->pos];
    return true;
}

/* Growable byte string. */
typedef struct sbuf {
    char *d;
    size_t n, cap;
} sbuf;

static bool sb_put(sbuf *b, char c) {
    if (b->n + 1 >= b->cap) {
        size_t nc = b->cap ? 2 * b->cap : 32;
        char *nd = (char *)realloc(b->d, nc);
        if (!nd) return false;
        b->d = nd;
        b->cap = nc;
    }
    b->d[b->n++] = c;
    b->d[b->n] = 0;
    return true;
}

static bool put_utf8(sbuf *b, uint32_t cp) {
    if (cp < 0x80) return sb_put(b, (char)cp);
    if (cp < 0x800)
        return sb_put(b, (char)(0xC0 | (cp >> 6))) && sb_put(b, (char)(0x80 | (cp & 0x3F)));
    if (cp < 0x10000)
        return sb_put(b, (char)(0xE0 | (cp >> 12))) && sb_put(b, (char)(0x80 | ((cp >> 6) & 0x3F))) &&
               sb_put(b, (char)(0x80 | (cp & 0x3F)));
    return sb_put(b, (char)(0xF0 | (cp >> 18))) && sb_put(b, (char)(0x80 | ((cp >> 12) & 0x3F))) &&
           sb_put(b, (char)(0x80 | ((cp >> 6) & 0x3F))) && sb_put(b, (char)(0x80 | (cp & 0x3F)));
}

static bool hex4(parser *ps, uint32_t *out) {
    if (ps->len - ps->pos < 4) {
        fail(ps, "truncated \\u escape");
        return false;
    }
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = ps->p[ps->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else {
            fail(ps, "bad hex digit in \\u escape");
            return false;
        }
    }
    *out = v;
    return true;
}

/* Length of a valid UTF-8 sequence starting at s (n bytes available), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t k;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) { k = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { k = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { k = 4; cp = c & 0x07; }
    else return 0;
    if (n < k) return 0;
    for (size_t j = 1; j < k; j++) {
        if ((s[j] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[j] & 0x3F);
    }
    if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
    return k;
}

static char *parse_string(parser *ps) {
    /* at the opening quote */
    ps->pos++;
    sbuf b = {0};
    if (!sb_put(&b, 'x')) goto oom; /* allocate; reset below */
    b.n = 0;
    b.d[0] = 0;
    for (;;) {
        if (ps->pos >= ps->len) {
            fail(ps, "unterminated string");
            goto bad;
        }
        unsigned char c = (unsigned char)ps->p[ps->pos];
        if (c == '"') {
            ps->pos++;
            return b.d;
        }
        if (c < 0x20) {
            fail(ps, "control character in string");
            goto bad;
        }
        if (c == '\\') {
            ps->pos++;
            if (ps->pos >= ps->len) {
                fail(ps, "truncated escape");
                goto bad;
            }
            char e = ps->p[ps->pos++];
            char out = 0;
            switch (e) {
            case '"': out = '"'; break;
            case '\\': out = '\\'; break;
            case '/': out = '/'; break;
            case 'b': out = '\b'; break;
            case 'f': out = '\f'; break;
            case 'n': out = '\n'; break;
            case 'r': out = '\r'; break;
            case 't': out = '\t'; break;
            case 'u': {
                uint32_t cp;
                if (!hex4(ps, &cp)) goto bad;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    uint32_t lo;
                    if (ps->len - ps->pos < 2 || ps->p[ps->pos] != '\\' || ps->p[ps->pos + 1] != 'u') {
                        fail(ps, "unpaired surrogate in \\u escape");
                        goto bad;
                    }
                    ps->pos += 2;
                    if (!hex4(ps, &lo)) goto bad;
                    if (lo < 0xDC00 || lo > 0xDFFF) {
                        fail(ps, "unpaired surrogate in \\u escape");
                        goto bad;
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    fail(ps, "unpaired surrogate in \\u escape");
                    goto bad;
                }
                if (cp == 0) {
                    fail(ps, "NUL character in string");
                    goto bad;
                }
                if (!put_utf8(&b, cp)) goto oom;
                continue;
            }
            default: fail(ps, "bad escape '\\%c'", e); goto bad;
            }
            if (!sb_put(&b, out)) goto oom;
            continue;
        }
        size_t k = utf8_len((const unsigned char *)ps->p + ps->pos, ps->len - ps->pos);
        if (k == 0) {
            fail(ps, "invalid UTF-8 in string");
            goto bad;
        }
        for (size_t j = 0; j < k; j++)
            if (!sb_put(&b, ps->p[ps->pos + j])) goto oom;
        ps->pos += k;
    }
oom:
    fail(ps, "out of host memory");
bad:
    free(b.d);
    return NULL;
}

static bool parse_value(parser *ps, flx_json *v, int depth);

static bool push_child(parser *ps, flx_json *v, size_t *cap, char *key) {
    if (v->n == *cap) {
        size_t nc = *cap ? 2 * *cap : 4;
        flx_json *ni = (flx_json *)realloc(v->items, nc * sizeof *ni);
        if (!ni) goto oom;
        v->items = ni;
        if (v->type == FLX_JSON_OBJECT) {
            char **nk = (char **)realloc(v->keys, nc * sizeof *nk);
            if (!nk) goto oom;
            v->keys = nk;
        }
        *cap = nc;
    }
    memset(&v->items[v->n], 0, sizeof v->items[v->n]);
    if (v->type == FLX_JSON_OBJECT) v->keys[v->n] = key;
    v->n++;
    return true;
oom:
    fail(ps, "out of host memory");
    free(key);
    return false;
}

static bool parse_int(parser *ps, flx_json *v) {
    bool neg = false;
    if (ps->p[ps->pos] == '-') {
        neg = true;
        ps->pos++;
    }
    if (ps->pos >= ps->len || ps->p[ps->pos] < '0' || ps->p[ps->pos] > '9') {
        fail(ps, "bad number");
        return false;
    }
    if (ps->p[ps->pos] == '0' && ps->pos + 1 < ps->len && ps->p[ps->pos + 1] >= '0' &&
        ps->p[ps->pos + 1] <= '9') {
        fail(ps, "number with a leading zero");
        return false;
    }
    uint64_t u = 0;
    const uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    while (ps->pos < ps->len && ps->p[ps->pos] >= '0' && ps->p[ps->pos] <= '9') {
        uint64_t d = (uint64_t)(ps->p[ps->pos] - '0');
        if (u > (limit - d) / 10) {
            fail(ps, "integer out of the 64-bit range");
            return false;
        }
        u = u * 10 + d;
        ps->pos++;
    }
    if (ps->pos < ps->len) {
        char c = ps->p[ps->pos];
        if (c == '.' || c == 'e' || c == 'E') {
            fail(ps, "non-integer number (fractions and exponents are not accepted)");
            return false;
        }
    }
    v->type = FLX_JSON_INT;
    v->i = neg ? (int64_t)(0 - u) : (int64_t)u;
    return true;
}

static bool literal(parser *ps, const char *word) {
    size_t k = strlen(word);
    if (ps->len - ps->pos < k || memcmp(ps->p + ps->pos, word, k) != 0) {
        fail(ps, "unexpected character");
        return false;
    }
    ps->pos += k;
    return true;
}

static bool parse_value(parser *ps, flx_json *v, int depth) {
    memset(v, 0, sizeof *v);
    skip_ws(ps);
    char c;
    if (!peek(ps, &c)) {
        fail(ps, "unexpected end of input");
        return false;
    }
    if (c == '{' || c == '[') {
        if (depth >= MAX_DEPTH) {
            fail(ps, "nesting deeper than %d", MAX_DEPTH);
            return false;
        }
        bool obj = c == '{';
        char close = obj ? '}' : ']';
        v->type = obj ? FLX_JSON_OBJECT : FLX_JSON_ARRAY;
        size_t cap = 0;
        ps->pos++;
        skip_ws(ps);
        if (peek(ps, &c) && c == close) {
            ps->pos++;
            return true;
        }
        for (;;) {
            char *key = NULL;
            if (obj) {
                skip_ws(ps);
                if (!peek(ps, &c) || c != '"') {
                    fail(ps, "expected a string key");
                    return false;
                }
                key = parse_string(ps);
                if (!key) return false;
                skip_ws(ps);
                if (!peek(ps, &c) || c != ':') {
                    free(key);
                    fail(ps, "expected ':'");
                    return false;
                }
                ps->pos++;
            }
            if (!push_child(ps, v, &cap, key)) return false;
            if (!parse_value(ps, &v->items[v->n - 1], depth + 1)) return false;
            skip_ws(ps);
            if (!peek(ps, &c)) {
                fail(ps, "unexpected end of input");
                return false;
            }
            ps->pos++;
            if (c == close) return true;
            if (c != ',') {
                ps->pos--;
                fail(ps, "expected ',' or '%c'", close);
                return false;
            }
        }
    }
    if (c == '"') {
        v->s = parse_string(ps);
        if (!v->s) return false;
        v->type = FLX_JSON_STRING;
        return true;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_int(ps, v);
    if (c == 't') {
        v->type = FLX_JSON_BOOL;
        v->i = 1;
        return literal(ps, "true");
    }
    if (c == 'f') {
        v->type = FLX_JSON_BOOL;
        return literal(ps, "false");
    }
    if (c == 'n') {
        v->type = FLX_JSON_NULL;
        return literal(ps, "null");
    }
    fail(ps, "unexpected character 0x%02x", (unsigned)(unsigned char)c);
    return false;
}

void flx_json_free(flx_json *v) {
    if (!v) return;
    free(v->s);
    for (size_t k = 0; k < v->n; k++) {
        flx_json_free(&v->items[k]);
        if (v->keys) free(v->keys[k]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

int flx_json_parse(const char *text, size_t len, flx_json *out, char *msg, size_t msg_size) {
    parser ps = {text, len, 0, msg, msg_size, false};
    if (msg && msg_size) msg[0] = 0;
    if (!text || !out) return -1;
    if (!parse_value(&ps, out, 0)) {
        flx_json_free(out);
        return -1;
    }
    skip_ws(&ps);
    if (ps.pos != ps.len) {
        fail(&ps, "trailing characters after the JSON value");
        flx_json_free(out);
        return -1;
    }
    return 0;
}

const flx_json *flx_json_get(const flx_json *obj, const char *key) {
    if (!obj || obj->type != FLX_JSON_OBJECT) return NULL;
    for (size_t k = 0; k < obj->n; k++)
        if (strcmp(obj->keys[k], key) == 0) return &obj->items[k];
    return NULL;
}
