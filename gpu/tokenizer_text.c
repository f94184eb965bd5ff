/* tokenizer_text.c: the text side of the tokenizer, written by hand over
 * UTF-8 code points so the engine needs no regex or Unicode library: UTF-8,
 * the character classes of \s, \p{L} and \p{N}, NFC, and the split regexes
 * of the pre-tokenizers these model families ship (GPT-2's, Llama 3's and
 * Qwen 2/3's), each proven against Python `tokenizers` (Oniguruma) by the
 * fixtures of tests/reference/make_tokenizer_fixtures.py.
 *
 * Invalid UTF-8: every byte that does not start a valid sequence is a
 * character of its own, of class "other" (not a letter, number or space),
 * left unchanged by NFC. The model then encodes it as its byte (byte-level
 * BPE, or <0xNN> with byte_fallback), so decoding gives the bytes back. */
#include "tokenizer_impl.h"
#include "base/dt.h"
#include "unicode_tables.h"

#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 and character classes --------------------------------------- */

int dt_tok__utf8_put(uint32_t cp, char *o)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | (cp >> 6 & 63));
        o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | (cp >> 12 & 63));
    o[2] = (char)(0x80 | (cp >> 6 & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

uint32_t dt_tok__utf8_next(const uint8_t *p, size_t n, size_t *adv)
{
    uint32_t c = p[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3
             : (c >> 3) == 30 ? 4 : 0;
    *adv = 1;
    if (k == 1)
        return c;
    if (k == 0 || k > n)
        return TOK_BADCP;
    c &= 0x3Fu >> (k - 1);
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return TOK_BADCP;
        c = c << 6 | (p[i] & 63u);
    }
    if ((k == 2 && c < 0x80) || (k == 3 && c < 0x800) || (k == 4 && c < 0x10000)
        || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return TOK_BADCP;
    *adv = k;
    return c;
}

/* \s as Oniguruma and Rust's regex define it (White_Space), \p{L}, \p{N}. */
int dt_tok__uc_class(uint32_t c)
{
    if (c < 0x80) {
        if ((c | 32) - 'a' < 26) return UC_L;
        if (c - '0' < 10) return UC_N;
        return (c == ' ' || (c >= 9 && c <= 13)) ? UC_S : UC_O;
    }
    if (c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A)
        || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F
        || c == 0x3000)
        return UC_S;
    int lo = 0, hi = DT_UC_NRANGES - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < dt_uc_ranges[mid].lo) hi = mid - 1;
        else if (c > dt_uc_ranges[mid].hi) lo = mid + 1;
        else return dt_uc_ranges[mid].cls;
    }
    return UC_O;
}

static int uc_at(const uint8_t *p, size_t n, size_t i, size_t *adv)
{
    return dt_tok__uc_class(dt_tok__utf8_next(p + i, n - i, adv));
}

/* ---- split regexes --------------------------------------------------------- */

/* Known Split patterns, exactly as tokenizer.json spells them. */
static const char *const split_patterns[TS_COUNT] = {
    [TS_GPT2] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
                "|\\s+(?!\\S)|\\s+",
    [TS_LLAMA3] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
                  "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
                  "|\\s+(?!\\S)|\\s+",
    [TS_QWEN2] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
                 "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
                 "|\\s+(?!\\S)|\\s+",
};

const char *dt_tok__split_pattern(int kind)
{
    return kind >= 0 && kind < TS_COUNT ? split_patterns[kind] : "";
}

int dt_tok__split_kind(const char *pattern)
{
    for (int k = 0; k < TS_COUNT; k++)
        if (!strcmp(pattern, split_patterns[k]))
            return k;
    return -1;
}

/* 's 't 're 've 'm 'll 'd at i (p[i] == '\''): the match length or 0.
 * Case-insensitive as Oniguruma folds: also 'S ... and U+017F (long s). */
static size_t contraction(const uint8_t *p, size_t n, size_t i, int fold)
{
    if (i + 1 >= n)
        return 0;
    uint8_t x = p[i + 1], y = i + 2 < n ? p[i + 2] : 0;
    if (fold) {
        if (x == 0xC5 && y == 0xBF)  /* U+017F folds to s */
            return 3;
        x = (uint8_t)(x >= 'A' && x <= 'Z' ? x | 32 : x);
        y = (uint8_t)(y >= 'A' && y <= 'Z' ? y | 32 : y);
    }
    if (x == 's' || x == 't' || x == 'm' || x == 'd')
        return 2;
    if ((x == 'r' && y == 'e') || (x == 'v' && y == 'e') || (x == 'l' && y == 'l'))
        return 3;
    return 0;
}

/* End of the whitespace run starting at i. */
static size_t space_run(const uint8_t *p, size_t n, size_t i, size_t *last)
{
    size_t adv, j;
    *last = i;
    for (j = i; j < n && uc_at(p, n, j, &adv) == UC_S; j += adv)
        *last = j;
    return j;
}

/* \s+(?!\S)|\s+ at i (p[i] is a space): all of the run at the end of the
 * text, else all of it but its last character, else that one character. */
static size_t spaces(const uint8_t *p, size_t n, size_t i)
{
    size_t last, j = space_run(p, n, i, &last);
    return (j < n && last > i) ? last : j;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+
 * |\s+(?!\S)|\s+ */
static size_t match_gpt2(const uint8_t *p, size_t n, size_t i)
{
    size_t adv, j, c;
    if (p[i] == '\'' && (c = contraction(p, n, i, 0)))
        return i + c;
    int k = uc_at(p, n, i, &adv);
    size_t q = (p[i] == ' ' && i + 1 < n) ? i + 1 : i;  /* optional space */
    if (q > i)
        k = uc_at(p, n, q, &adv);
    if (k != UC_S) {
        for (j = q; j < n && uc_at(p, n, j, &adv) == k; j += adv) {}
        return j;
    }
    return spaces(p, n, i);
}

/* Llama 3 (digits 3) and Qwen 2/3 (digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,digits}
 * | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t match_llama3(const uint8_t *p, size_t n, size_t i, int digits)
{
    size_t adv, a2, j, c;
    if (p[i] == '\'' && (c = contraction(p, n, i, 1)))
        return i + c;
    int k = uc_at(p, n, i, &adv);
    if (k == UC_L || (p[i] != '\r' && p[i] != '\n' && k != UC_N && i + adv < n
                      && uc_at(p, n, i + adv, &a2) == UC_L)) {
        for (j = i + adv; j < n && uc_at(p, n, j, &a2) == UC_L; j += a2) {}
        return j;
    }
    if (k == UC_N) {
        j = i + adv;
        for (int d = 1; d < digits && j < n && uc_at(p, n, j, &a2) == UC_N; d++)
            j += a2;
        return j;
    }
    size_t q = i;
    if (p[i] == ' ' && i + 1 < n && uc_at(p, n, i + 1, &a2) == UC_O)
        q = i + 1, k = UC_O;
    if (k == UC_O) {
        for (j = q; j < n && uc_at(p, n, j, &a2) == UC_O; j += a2) {}
        while (j < n && (p[j] == '\r' || p[j] == '\n'))
            j++;
        return j;
    }
    /* a space: \s*[\r\n]+ ends after the run's last \r or \n */
    size_t last, end = space_run(p, n, i, &last), nl = 0;
    for (j = i; j < end; j += adv) {
        uc_at(p, n, j, &adv);
        if (p[j] == '\r' || p[j] == '\n')
            nl = j + 1;
    }
    return nl ? nl : spaces(p, n, i);
}

size_t dt_tok__split_match(int kind, const uint8_t *p, size_t n, size_t i)
{
    switch (kind) {
    case TS_LLAMA3: return match_llama3(p, n, i, 3);
    case TS_QWEN2: return match_llama3(p, n, i, 1);
    default: return match_gpt2(p, n, i);
    }
}

/* ---- bytes ------------------------------------------------------------- */

const uint8_t *dt_tok__find_bytes(const uint8_t *p, size_t n, const char *s,
                                 size_t m)
{
    for (size_t i = 0; m > 0 && i + m <= n; i++) {
        const uint8_t *q = memchr(p + i, (uint8_t)s[0], n - i - m + 1);
        if (!q)
            return NULL;
        i = (size_t)(q - p);
        if (!memcmp(q, s, m))
            return q;
    }
    return NULL;
}

/* Replaces every a by b in *s (*n bytes, owned by the caller when *own). */
int dt_tok__replace_all(char **s, size_t *n, int *own, const char *a, size_t na,
                       const char *b, size_t nb)
{
    size_t count = 0;
    const uint8_t *p = (const uint8_t *)*s, *q;
    for (size_t i = 0; (q = dt_tok__find_bytes(p + i, *n - i, a, na)); i = (size_t)(q - p) + na)
        count++;
    if (!count)
        return DT_OK;
    char *o = malloc(*n - count * na + count * nb + 1), *w = o;
    if (!o)
        return DT_ENOMEM;
    size_t i = 0;
    for (; (q = dt_tok__find_bytes(p + i, *n - i, a, na)); i = (size_t)(q - p) + na) {
        memcpy(w, p + i, (size_t)(q - p) - i);
        w += (size_t)(q - p) - i;
        memcpy(w, b, nb);
        w += nb;
    }
    memcpy(w, p + i, *n - i);
    w += *n - i;
    if (*own)
        free(*s);
    *s = o;
    *n = (size_t)(w - o);
    *own = 1;
    return DT_OK;
}

/* ---- NFC ------------------------------------------------------------------ */

enum { H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7,
       H_LCOUNT = 19, H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = 588,
       H_SCOUNT = 11172 };

static int ccc_of(uint32_t c)
{
    if (c < 0x300 || c == TOK_BADCP || c >= 0x110000)
        return 0;
    int lo = 0, hi = DT_UC_NCCC - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < dt_uc_ccc_tab[mid].lo) hi = mid - 1;
        else if (c > dt_uc_ccc_tab[mid].hi) lo = mid + 1;
        else return dt_uc_ccc_tab[mid].ccc;
    }
    return 0;
}

static int nfc_maybe(uint32_t c)
{
    if (c < 0x300 || c >= 0x110000)
        return 0;
    int lo = 0, hi = DT_UC_NMAYBE - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < dt_uc_nfc_maybe[mid].lo) hi = mid - 1;
        else if (c > dt_uc_nfc_maybe[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

/* Full canonical decomposition of c into o (room for 4): count. */
static int decompose(uint32_t c, uint32_t *o)
{
    if (c >= H_SBASE && c < H_SBASE + H_SCOUNT) {
        uint32_t s = c - H_SBASE, t = s % H_TCOUNT;
        o[0] = H_LBASE + s / H_NCOUNT;
        o[1] = H_VBASE + (s % H_NCOUNT) / H_TCOUNT;
        if (t) o[2] = H_TBASE + t;
        return t ? 3 : 2;
    }
    int lo = 0, hi = DT_UC_NDEC - 1;
    while (c >= 0xC0 && c < 0x110000 && lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < dt_uc_dec_tab[mid].cp) hi = mid - 1;
        else if (c > dt_uc_dec_tab[mid].cp) lo = mid + 1;
        else {
            for (int k = 0; k < dt_uc_dec_tab[mid].n; k++)
                o[k] = dt_uc_dec_pool[dt_uc_dec_tab[mid].off + k];
            return dt_uc_dec_tab[mid].n;
        }
    }
    o[0] = c;
    return 1;
}

/* The primary composite of a + b, or 0. */
static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE
        && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0
        && b > H_TBASE && b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    int lo = 0, hi = DT_UC_NCOMP - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const dt_uc_comp *e = &dt_uc_comp_tab[mid];
        if (a < e->a || (a == e->a && b < e->b)) hi = mid - 1;
        else if (a > e->a || b > e->b) lo = mid + 1;
        else return e->c;
    }
    return 0;
}

/* NFC of n bytes. Returns 0 when the text is already NFC (nothing to do),
 * 1 with a new malloc'd *out of *on bytes, or a negative DT_E* code.
 * Invalid bytes are kept (as TOK_BADCP | byte) and come out unchanged. */
int dt_tok__nfc(const uint8_t *p, size_t n, char **out, size_t *on)
{
    size_t adv, i;
    for (i = 0; i < n; i += adv)
        if (p[i] >= 0xCC && nfc_maybe(dt_tok__utf8_next(p + i, n - i, &adv)))
            break;
        else if (p[i] >= 0x80)
            dt_tok__utf8_next(p + i, n - i, &adv);
        else
            adv = 1;
    if (i >= n)
        return 0;
    uint32_t *cp = malloc((4 * n + 1) * sizeof *cp);  /* <= 4 per byte */
    char *o = malloc(n * 2 + 4);  /* NFC grows UTF-8 by at most 3x; see below */
    size_t m = 0;
    if (!cp || !o) {
        free(cp); free(o);
        return DT_ENOMEM;
    }
    for (i = 0; i < n; i += adv) {  /* decompose */
        uint32_t c = dt_tok__utf8_next(p + i, n - i, &adv);
        if (c == TOK_BADCP)
            cp[m++] = TOK_BADCP | p[i];
        else
            m += (size_t)decompose(c, cp + m);
    }
    for (size_t a = 0; a < m; a++) {  /* canonical order: stable by class */
        int ka = ccc_of(cp[a]);
        if (!ka)
            continue;
        size_t b = a;
        while (b > 0 && ccc_of(cp[b - 1]) > ka) {
            uint32_t x = cp[b]; cp[b] = cp[b - 1]; cp[b - 1] = x;
            b--;
        }
    }
    size_t w = 0;  /* compose, as the Unicode sample code */
    if (m > 0) {
        size_t start = 0;
        int last = ccc_of(cp[0]) ? 256 : 0;
        int have = !(cp[0] & TOK_BADCP);
        w = 1;
        for (size_t r = 1; r < m; r++) {
            uint32_t c = cp[r], comp = 0;
            int k = ccc_of(c);
            if (have && !(c & TOK_BADCP) && (last < k || last == 0))
                comp = compose(cp[start], c);
            if (comp && (last < k || last == 0)) {
                cp[start] = comp;
                continue;
            }
            if (k == 0) {
                start = w;
                have = !(c & TOK_BADCP);
            }
            last = k;
            cp[w++] = c;
        }
    }
    size_t k = 0, cap = n * 2 + 4;
    for (size_t r = 0; r < w; r++) {
        if (k + 4 > cap) {
            char *g = realloc(o, cap *= 2);
            if (!g) {
                free(cp); free(o);
                return DT_ENOMEM;
            }
            o = g;
        }
        if (cp[r] & TOK_BADCP)
            o[k++] = (char)(cp[r] & 0xFF);
        else
            k += (size_t)dt_tok__utf8_put(cp[r], o + k);
    }
    free(cp);
    *out = o;
    *on = k;
    return 1;
}
