/* httputil.c: Range, ETag, limit and tar (ustar + pax) helpers. */
#include "httputil.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses a non-negative decimal; -1 on error. */
static int64_t parse_u(const char *s, const char *e)
{
    if (s == e || e - s > 18) return -1;
    int64_t v = 0;
    for (; s < e; s++) {
        if (*s < '0' || *s > '9') return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

static int all_digits(const char *s, const char *e)
{
    if (s == e) return 0;
    for (; s < e; s++)
        if (*s < '0' || *s > '9') return 0;
    return 1;
}

/* RFC 9110 §14.2: a syntactically invalid range is ignored (the whole body
 * is served); a valid one that selects nothing is unsatisfiable (416). */
int http_parse_range(const char *h, int64_t size, int64_t *start, int64_t *len)
{
    if (!h) return 1;
    while (*h == ' ') h++;
    if (strncmp(h, "bytes=", 6)) return 1;
    h += 6;
    while (*h == ' ') h++;
    if (strchr(h, ',')) return 1; /* several ranges: serve everything */
    const char *dash = strchr(h, '-');
    if (!dash) return 1;
    const char *end = dash + 1 + strcspn(dash + 1, " ");
    if (*end && end[strspn(end, " ")]) return 1;
    if (dash == h) { /* suffix: last n bytes */
        if (!all_digits(dash + 1, end)) return 1;
        int64_t n = parse_u(dash + 1, end); /* -1: more digits than any file */
        if (n == 0 || size == 0) return -1;
        if (n < 0 || n > size) n = size;
        *start = size - n;
        *len = n;
        return 0;
    }
    if (!all_digits(h, dash) || (dash + 1 != end && !all_digits(dash + 1, end))) return 1;
    int64_t a = parse_u(h, dash);
    int has_last = dash + 1 != end;
    int64_t b = has_last ? parse_u(dash + 1, end) : size - 1;
    if (has_last && a >= 0 && b >= 0 && b < a) return 1; /* last < first: invalid */
    if (a < 0 || a >= size) return -1;       /* starts past the end */
    if (b < 0 || b >= size) b = size - 1;
    *start = a;
    *len = b - a + 1;
    return 0;
}

int http_etag_match(const char *inm, const char *etag)
{
    if (!inm) return 0;
    size_t el = strlen(etag);
    const char *p = inm;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        if (*p == '*') return 1;
        if (!strncmp(p, "W/", 2)) p += 2;
        size_t n = strcspn(p, ",");
        while (n && p[n - 1] == ' ') n--;
        if (n == el && !memcmp(p, etag, el)) return 1;
        p += strcspn(p, ",");
    }
    return 0;
}

int http_parse_limit(const char *s, int def, int max, int *out)
{
    if (!s) { *out = def; return 0; }
    int64_t v = parse_u(s, s + strlen(s));
    if (v < 1 || v > max) return -1;
    *out = (int)v;
    return 0;
}

static void octal(unsigned char *f, int width, int64_t v)
{
    /* width-1 digits, then NUL */
    for (int i = width - 2; i >= 0; i--) {
        f[i] = (unsigned char)('0' + (v & 7));
        v >>= 3;
    }
    f[width - 1] = 0;
}

static void tar_checksum(unsigned char *out)
{
    unsigned sum = 0;
    memset(out + 148, ' ', 8); /* the checksum counts as spaces */
    for (int i = 0; i < TAR_BLOCK; i++) sum += out[i];
    snprintf((char *)out + 148, 8, "%06o", sum & 0777777);
    out[155] = ' ';
}

int tar_header(unsigned char out[TAR_BLOCK], const char *name, int64_t size, int64_t mtime,
               unsigned mode)
{
    memset(out, 0, TAR_BLOCK);
    size_t nl = strlen(name);
    if (size < 0 || size > 077777777777LL || nl == 0) return -1;
    if (nl <= 100) {
        memcpy(out, name, nl);
    } else {
        /* split at a '/' so that prefix <= 155 and name <= 100 */
        const char *cut = NULL;
        for (const char *p = name; *p; p++)
            if (*p == '/' && (size_t)(p - name) <= 155 && nl - (size_t)(p - name) - 1 <= 100 &&
                nl - (size_t)(p - name) - 1 > 0)
                cut = p;
        if (!cut) return -1;
        memcpy(out, cut + 1, nl - (size_t)(cut - name) - 1);
        memcpy(out + 345, name, (size_t)(cut - name));
    }
    octal(out + 100, 8, mode & 07777);
    octal(out + 108, 8, 0);           /* uid */
    octal(out + 116, 8, 0);           /* gid */
    octal(out + 124, 12, size);
    octal(out + 136, 12, mtime < 0 ? 0 : mtime);
    memset(out + 148, ' ', 8);        /* checksum counts as spaces */
    out[156] = '0';                   /* regular file */
    memcpy(out + 257, "ustar", 6);    /* magic "ustar\0" */
    memcpy(out + 263, "00", 2);       /* version */
    memcpy(out + 265, "deltatune", 9); /* uname */
    memcpy(out + 297, "deltatune", 9); /* gname */
    tar_checksum(out);
    return 0;
}

/* One pax record, "LEN key=value\n", LEN counting itself. */
static size_t pax_record(char *out, size_t cap, const char *key, const char *value)
{
    size_t body = 1 + strlen(key) + 1 + strlen(value) + 1, len = body + 1;
    for (;;) {
        size_t digits = (size_t)snprintf(NULL, 0, "%zu", len);
        if (body + digits == len) break;
        len = body + digits;
    }
    if (len >= cap) return 0;
    snprintf(out, cap, "%zu %s=%s\n", len, key, value);
    return len;
}

int tar_head(unsigned char out[TAR_HEAD_MAX], const char *name, int64_t size, int64_t mtime,
             unsigned mode)
{
    unsigned char tmp[TAR_BLOCK];
    if (size < 0 || !name[0]) return -1;
    int long_name = tar_header(tmp, name, 0, mtime, mode) != 0;
    int big = size > 077777777777LL;
    if (!long_name && !big) return tar_header(out, name, size, mtime, mode) ? -1 : TAR_BLOCK;
    /* POSIX.1-2001 pax: an 'x' member whose records override the fields of
     * the ustar header that follows (path: any length; size: any size) */
    char rec[TAR_HEAD_MAX - 2 * TAR_BLOCK], num[32];
    size_t plen = 0, k;
    if (long_name) {
        if (!(k = pax_record(rec, sizeof rec, "path", name))) return -1;
        plen += k;
    }
    if (big) {
        snprintf(num, sizeof num, "%lld", (long long)size);
        if (!(k = pax_record(rec + plen, sizeof rec - plen, "size", num))) return -1;
        plen += k;
    }
    size_t pad = (plen + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK;
    const char *base = strrchr(name, '/');
    base = base && base[1] ? base + 1 : name;
    char fallback[101], xname[101];
    snprintf(fallback, sizeof fallback, "%.100s", long_name ? base : name);
    snprintf(xname, sizeof xname, "PaxHeaders/%.89s", fallback);
    if (tar_header(out, xname, (int64_t)plen, mtime, 0644)) return -1;
    out[156] = 'x';
    tar_checksum(out);
    memset(out + TAR_BLOCK, 0, pad);
    memcpy(out + TAR_BLOCK, rec, plen);
    unsigned char *h = out + TAR_BLOCK + pad;
    if (tar_header(h, long_name ? fallback : name, big ? 0 : size, mtime, mode)) return -1;
    if (big) { /* also in the base-256 form GNU tar and others read */
        h[124] = 0x80;
        for (int i = 0; i < 8; i++) h[135 - i] = (unsigned char)((uint64_t)size >> (8 * i));
        memset(h + 125, 0, 3); /* the 11 bytes' top 3 */
        tar_checksum(h);
    }
    return (int)(2 * TAR_BLOCK + pad);
}

int64_t tar_entry_size(int64_t size)
{
    return TAR_BLOCK + (size + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK;
}
