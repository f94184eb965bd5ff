/* jsonw.c: compact JSON text of a jansson value (see jsonw.h). One growing
 * buffer; strings are copied in runs between the bytes that need escaping;
 * integers and integral reals are printed without printf. */
#include "jsonw.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct wbuf {
    char *p;
    size_t n, cap;
    int oom;
} wbuf;

static int grow(wbuf *b, size_t extra)
{
    if (b->oom) return -1;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->n + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) { b->oom = 1; return -1; }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Room for extra more bytes and a NUL; -1 when out of memory (b->oom). */
static inline int reserve(wbuf *b, size_t extra)
{
    return b->n + extra + 1 <= b->cap ? 0 : grow(b, extra);
}

static void put(wbuf *b, const char *s, size_t n)
{
    if (reserve(b, n)) return;
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void putc1(wbuf *b, char c)
{
    if (reserve(b, 1)) return;
    b->p[b->n++] = c;
}

/* Decimal digits of v into out (no NUL); returns the length. */
static int utoa(uint64_t v, char *out)
{
    char tmp[24];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

static void put_int(wbuf *b, json_int_t v)
{
    char s[24];
    int n = 0;
    uint64_t u = (uint64_t)v;
    if (v < 0) { s[n++] = '-'; u = 0 - u; }
    n += utoa(u, s + n);
    put(b, s, (size_t)n);
}

int jsonw_real(double x, char *out)
{
    if (!isfinite(x)) { memcpy(out, "null", 5); return 4; }
    if (x == trunc(x) && fabs(x) < 1e15) { /* integral: "16.0", "-0.0" */
        int n = 0;
        if (signbit(x)) out[n++] = '-';
        n += utoa((uint64_t)fabs(x), out + n);
        memcpy(out + n, ".0", 3);
        return n + 2;
    }
    /* Fast path, no printf: x = r / 10^k with r < 10^15 an integer (both
     * exact doubles, so the division is correctly rounded, as strtod is).
     * For 1e-4 <= |x| < 1e15 this is what "%.15g" would print. */
    double ax = fabs(x);
    if (ax >= 1e-4 && ax < 1e15) {
        static const double p10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8,
                                     1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
        for (int k = 1; k <= 15; k++) {
            double r = nearbyint(ax * p10[k]);
            if (r >= 1e15) break;
            if (r / p10[k] != ax) continue;
            char d[24];
            int nd = utoa((uint64_t)r, d), n = 0;
            if (signbit(x)) out[n++] = '-';
            if (nd <= k) { /* 0.000ddd */
                out[n++] = '0';
                out[n++] = '.';
                for (int z = 0; z < k - nd; z++) out[n++] = '0';
                memcpy(out + n, d, (size_t)nd);
                n += nd;
            } else {       /* ddd.ddd */
                memcpy(out + n, d, (size_t)(nd - k));
                n += nd - k;
                out[n++] = '.';
                memcpy(out + n, d + nd - k, (size_t)k);
                n += k;
            }
            out[n] = 0;
            return n;
        }
    }
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, 32, "%.*g", prec, x);
        if (prec == 17 || strtod(out, NULL) == x) break;
    }
    /* as jansson: a dot or an exponent, no '+' and no leading zeros in it */
    if (!strchr(out, '.') && !strchr(out, 'e')) {
        memcpy(out + n, ".0", 3);
        n += 2;
    }
    char *e = strchr(out, 'e');
    if (e) {
        char *start = e + 1, *end = e + 2;
        if (*start == '-') start++;
        while (*end == '0') end++;
        if (end != start) {
            memmove(start, end, (size_t)(out + n - end) + 1);
            n -= (int)(end - start);
        }
    }
    return n;
}

static void put_string(wbuf *b, const char *s, size_t n)
{
    static const char hx[] = "0123456789ABCDEF";
    putc1(b, '"');
    size_t run = 0; /* start of the bytes not yet copied */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        put(b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0};
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hx[c >> 4];
            esc[5] = hx[c & 15];
            put(b, esc, 6);
            continue;
        }
        put(b, esc, 2);
    }
    put(b, s + run, n - run);
    putc1(b, '"');
}

static void put_value(wbuf *b, const json_t *v, int depth)
{
    if (depth > 2048) { b->oom = 1; return; } /* jansson's own limit */
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        int first = 1;
        putc1(b, '{');
        json_object_foreach((json_t *)v, k, x) {
            if (!first) putc1(b, ',');
            first = 0;
            put_string(b, k, strlen(k));
            putc1(b, ':');
            put_value(b, x, depth + 1);
        }
        putc1(b, '}');
        return;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        putc1(b, '[');
        for (size_t i = 0; i < n; i++) {
            if (i) putc1(b, ',');
            put_value(b, json_array_get(v, i), depth + 1);
        }
        putc1(b, ']');
        return;
    }
    case JSON_STRING:
        put_string(b, json_string_value(v), json_string_length(v));
        return;
    case JSON_INTEGER:
        put_int(b, json_integer_value(v));
        return;
    case JSON_REAL: {
        char s[32];
        int n = jsonw_real(json_real_value(v), s);
        put(b, s, (size_t)n);
        return;
    }
    case JSON_TRUE: put(b, "true", 4); return;
    case JSON_FALSE: put(b, "false", 5); return;
    case JSON_NULL: put(b, "null", 4); return;
    }
}

char *jsonw_dump(const json_t *v, size_t *len)
{
    wbuf b = {0};
    if (!v) return NULL;
    if (reserve(&b, 4096)) return NULL;
    put_value(&b, v, 0);
    if (b.oom) { free(b.p); return NULL; }
    b.p[b.n] = 0;
    if (len) *len = b.n;
    return b.p;
}
