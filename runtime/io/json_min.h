/* json_min.h — a small strict JSON parser (RFC 8259) for the safetensors header.
 * Private to the runtime. Parses a whole buffer into a tree; every read is bounds-checked, the
 * nesting depth is limited, numbers must be integers in [-2^63, 2^63) (fractions and exponents
 * are rejected: the safetensors header never needs them), strings are decoded to UTF-8 (escapes,
 * surrogate pairs) and must be valid UTF-8 without NUL. Trailing whitespace is allowed. */
#ifndef FLX_JSON_MIN_H
#define FLX_JSON_MIN_H

#include <stddef.h>
#include <stdint.h>

typedef enum flx_json_type {
    FLX_JSON_NULL, FLX_JSON_BOOL, FLX_JSON_INT, FLX_JSON_STRING, FLX_JSON_ARRAY, FLX_JSON_OBJECT
} flx_json_type;

typedef struct flx_json {
    flx_json_type type;
    int64_t i;          /* INT; BOOL: 0 or 1                                           */
    char *s;            /* STRING: NUL-terminated UTF-8                                */
    size_t n;           /* ARRAY/OBJECT: number of children                            */
    struct flx_json *items; /* ARRAY/OBJECT children (n)                               */
    char **keys;        /* OBJECT: key of each child (n), in document order            */
} flx_json;

/* Parses len bytes at text. Returns 0 and fills *out, or -1 with a message (at most msg_size
 * bytes, naming the byte offset) in msg. Free with flx_json_free. */
int flx_json_parse(const char *text, size_t len, flx_json *out, char *msg, size_t msg_size);
void flx_json_free(flx_json *v);
/* Child of an object by key (first match), or NULL. */
const flx_json *flx_json_get(const flx_json *obj, const char *key);

#endif /* FLX_JSON_MIN_H */
