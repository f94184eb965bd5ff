/* tokenizer.c: byte-level BPE with ids identical to Hugging Face `tokenizers`.
 *
 * One encode: split the text on added tokens (leftmost-longest; special ones
 * only when allowed), optionally split out \p{N} (the Digits pre-tokenizer of
 * SmolLM2), split with the GPT-2 regex (hand-written over UTF-8 code points),
 * then run BPE on each word's bytes. BPE works on ids: the initial symbols
 * are the ids of GPT-2's byte->unicode characters and each merge (a, b) ->
 * (rank, id) sits in an open-addressing hash table. Merges are applied lowest
 * rank first, leftmost first, through a binary heap exactly as HF's
 * Word::merge_all does, so a hostile 1 MB "word" costs O(n log n).
 * Sources (tokenizer.json, merges files, GGUF) live in tokenizer_io.c. */
#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "base/dt.h"
#include "unicode_tables.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { UC_O = 0, UC_L = 1, UC_N = 2, UC_S = 3 };  /* other/letter/number/space */

/* ---- UTF-8 and character classes --------------------------------------- */

static int utf8_put(uint32_t cp, char *o)
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

/* Decodes one code point; an invalid sequence is one byte of 0xFFFFFFFF. */
static uint32_t utf8_next(const uint8_t *p, size_t n, size_t *adv)
{
    uint32_t c = p[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3
             : (c >> 3) == 30 ? 4 : 0;
    *adv = 1;
    if (k == 1)
        return c;
    if (k == 0 || k > n)
        return 0xFFFFFFFFu;
    c &= 0x3Fu >> (k - 1);
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0xFFFFFFFFu;
        c = c << 6 | (p[i] & 63u);
    }
    if ((k == 2 && c < 0x80) || (k == 3 && c < 0x800) || (k == 4 && c < 0x10000)
        || c > 0x10FFFF)
        return 0xFFFFFFFFu;
    *adv = k;
    return c;
}

/* \s as Oniguruma and Rust's regex define it (White_Space), \p{L}, \p{N}. */
static int uc_class(uint32_t c)
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

static int uc_at(const uint8_t *p, size_t n, size_t *adv)
{
    return uc_class(utf8_next(p, n, adv));
}

/* ---- hash tables ------------------------------------------------------- */

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return (uint32_t)(h ^ (h >> 29));
}

static uint32_t hash_pair(uint64_t k)
{
    k ^= k >> 33; k *= 0xff51afd7ed558ccdull; k ^= k >> 33;
    return (uint32_t)k;
}

static uint32_t cap_for(int64_t n)
{
    uint32_t c = 16;
    while (c < 2 * (uint64_t)n + 16) c <<= 1;
    return c;
}

/* The slot holding text s, or the empty slot where it would go. */
static uint32_t vocab_slot(const dt_tokenizer *t, const char *s, size_t n)
{
    uint32_t i = hash_bytes(s, n) & (t->vcap - 1);
    for (int32_t id; (id = t->vslot[i]) >= 0; i = (i + 1) & (t->vcap - 1))
        if (t->len[id] == n && memcmp(t->str[id], s, n) == 0)
            break;
    return i;
}

int32_t dt_tok__find(const dt_tokenizer *t, const char *s, size_t n)
{
    return t->vslot ? t->vslot[vocab_slot(t, s, n)] : -1;
}

/* Indexes every token text; the first id of a duplicated text wins. */
int dt_tok__index(dt_tokenizer *t)
{
    t->vcap = cap_for(t->n);
    if (!(t->vslot = malloc(t->vcap * sizeof *t->vslot)))
        return DT_ENOMEM;
    memset(t->vslot, 0xFF, t->vcap * sizeof *t->vslot);
    for (int32_t id = 0; id < t->n; id++) {
        uint32_t i = t->str[id] ? vocab_slot(t, t->str[id], t->len[id]) : 0;
        if (t->str[id] && t->vslot[i] < 0)
            t->vslot[i] = id;
    }
    return DT_OK;
}

static uint32_t merge_slot(const dt_tokenizer *t, uint64_t k)
{
    uint32_t i = hash_pair(k) & (t->mcap - 1);
    while (t->mkey[i] != k && t->mkey[i] != UINT64_MAX)
        i = (i + 1) & (t->mcap - 1);
    return i;
}

static const tok_merge *merge_find(const dt_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t i = merge_slot(t, k);
    return t->mkey[i] == k ? &t->mval[i] : NULL;
}

/* Adds merge "a b" with the next rank. A later duplicate replaces the rank,
 * as HF's HashMap collect does. */
int dt_tok__merge_add(dt_tokenizer *t, const char *a, size_t na, const char *b,
                      size_t nb, const char *src, int64_t line, char *err)
{
    char buf[512];
    int32_t ia = dt_tok__find(t, a, na), ib = dt_tok__find(t, b, nb), ic = -1;
    if (na + nb <= sizeof buf) {
        memcpy(buf, a, na);
        memcpy(buf + na, b, nb);
        ic = dt_tok__find(t, buf, na + nb);
    }
    if (ia < 0 || ib < 0 || ic < 0)
        return dt_errf(err, DT_EFORMAT, "%s: merge %lld (\"%.*s %.*s\") uses a "
                       "token not in the vocabulary", src, (long long)line,
                       (int)(na < 64 ? na : 64), a, (int)(nb < 64 ? nb : 64), b);
    uint64_t k = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
    uint32_t i = merge_slot(t, k);
    t->mkey[i] = k;
    t->mval[i] = (tok_merge){ t->nmerges, ic };
    t->merges[t->nmerges][0] = ia;
    t->merges[t->nmerges++][1] = ib;
    return DT_OK;
}

/* One merge written "a b": exactly one space, as HF's merges.txt reader. */
int dt_tok__merge_line(dt_tokenizer *t, const char *s, size_t n,
                       const char *src, int64_t line, char *err)
{
    const char *sp = memchr(s, ' ', n);
    size_t na = sp ? (size_t)(sp - s) : 0;
    if (!sp || na == 0 || na + 1 == n || memchr(sp + 1, ' ', n - na - 1))
        return dt_errf(err, DT_EFORMAT, "%s: merge %lld is not \"a b\"", src,
                       (long long)line);
    return dt_tok__merge_add(t, s, na, sp + 1, n - na - 1, src, line, err);
}

/* ---- building ------------------------------------------------------------ */

static int is_printable_byte(int b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

dt_tokenizer *dt_tok__new(int64_t n, int64_t nmerges)
{
    dt_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->n = (int32_t)n;
    t->str = dt_calloc((size_t)n, sizeof *t->str);
    t->len = dt_calloc((size_t)n, sizeof *t->len);
    t->kind = dt_calloc((size_t)n, 1);
    t->mcap = cap_for(nmerges);
    t->mkey = malloc(t->mcap * sizeof *t->mkey);
    t->mval = malloc(t->mcap * sizeof *t->mval);
    t->merges = dt_calloc((size_t)nmerges, sizeof *t->merges);
    t->use_regex = 1;
    t->unk = t->bos = t->eos = -1;
    if (!t->str || !t->len || !t->kind || !t->mkey || !t->mval || !t->merges) {
        dt_tokenizer_free(t);
        return NULL;
    }
    memset(t->mkey, 0xFF, t->mcap * sizeof *t->mkey);
    /* Printable Latin-1 bytes stand for themselves, the rest for 256 + k. */
    memset(t->cp_byte, 0xFF, sizeof t->cp_byte);
    for (int b = 0, k = 0; b < 256; b++) {
        t->byte_cp[b] = (uint16_t)(is_printable_byte(b) ? b : 256 + k++);
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
    }
    return t;
}

void dt_tokenizer_free(dt_tokenizer *t)
{
    if (!t)
        return;
    for (int32_t i = 0; t->str && i < t->n; i++)
        free(t->str[i]);
    free(t->str); free(t->len); free(t->kind); free(t->vslot);
    free(t->mkey); free(t->mval); free(t->merges); free(t->added);
    free(t->chat_template);
    free(t);
}

int dt_tok__set(dt_tokenizer *t, int64_t id, const char *s, size_t n)
{
    char *c = malloc(n + 1);
    if (!c)
        return DT_ENOMEM;
    memcpy(c, s, n);
    c[n] = 0;
    free(t->str[id]);
    t->str[id] = c;
    t->len[id] = (uint32_t)n;
    return DT_OK;
}

/* After vocabulary and merges: byte ids and the added-token index. */
int dt_tok__finish(dt_tokenizer *t)
{
    for (int b = 0; b < 256; b++) {
        char u[4];
        t->byte_id[b] = dt_tok__find(t, u, (size_t)utf8_put(t->byte_cp[b], u));
        if (t->byte_id[b] < 0)
            t->byte_id[b] = t->unk;  /* HF drops the character when no unk */
    }
    int32_t fill[257] = { 0 };
    for (int32_t i = 0; i < t->n; i++)
        if (t->kind[i] != TOK_NORMAL && t->str[i] && t->len[i] > 0)
            fill[(uint8_t)t->str[i][0] + 1]++;
    for (int b = 0; b < 256; b++)
        fill[b + 1] += fill[b];
    memcpy(t->added_at, fill, sizeof fill);
    t->nadded = fill[256];
    if (!(t->added = dt_calloc((size_t)t->nadded, sizeof *t->added)))
        return DT_ENOMEM;
    for (int32_t i = 0; i < t->n; i++) {
        if (t->kind[i] == TOK_NORMAL || !t->str[i] || t->len[i] == 0)
            continue;
        int b = (uint8_t)t->str[i][0];
        int32_t j = fill[b]++;  /* insertion sort, longest first */
        for (; j > t->added_at[b] && t->len[t->added[j - 1]] < t->len[i]; j--)
            t->added[j] = t->added[j - 1];
        t->added[j] = i;
    }
    return DT_OK;
}

/* ---- encoding ------------------------------------------------------------ */

typedef struct { int32_t id, prev, next; } bpe_sym;
typedef struct { int32_t rank, pos, id; } bpe_ent;

typedef struct {
    int32_t *out;  size_t nout, capout;
    bpe_sym *sym;  bpe_ent *heap;  size_t capw;  /* capw symbols, 3 capw heap */
    char *buf;     size_t capbuf;                /* prefix space, whole word */
} enc_state;

static int emit(enc_state *st, int32_t id)
{
    if (st->nout == st->capout) {
        size_t c = st->capout ? 2 * st->capout : 256;
        int32_t *o = realloc(st->out, c * sizeof *o);
        if (!o)
            return DT_ENOMEM;
        st->out = o;
        st->capout = c;
    }
    st->out[st->nout++] = id;
    return DT_OK;
}

static char *scratch(enc_state *st, size_t n)
{
    if (n > st->capbuf) {
        char *b = realloc(st->buf, n);
        if (!b)
            return NULL;
        st->buf = b;
        st->capbuf = n;
    }
    return st->buf;
}

static int ent_less(const bpe_ent *a, const bpe_ent *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(bpe_ent *h, size_t *n, bpe_ent e)
{
    size_t i = (*n)++;
    for (; i > 0 && ent_less(&e, &h[(i - 1) / 2]); i = (i - 1) / 2)
        h[i] = h[(i - 1) / 2];
    h[i] = e;
}

static bpe_ent heap_pop(bpe_ent *h, size_t *n)
{
    bpe_ent top = h[0], last = h[--(*n)];
    size_t i = 0, c;
    while ((c = 2 * i + 1) < *n) {
        if (c + 1 < *n && ent_less(&h[c + 1], &h[c])) c++;
        if (!ent_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

static void push_pair(const dt_tokenizer *t, enc_state *st, size_t *nh,
                      int32_t pos, int32_t next)
{
    const tok_merge *m = merge_find(t, st->sym[pos].id, st->sym[next].id);
    if (m)
        heap_push(st->heap, nh, (bpe_ent){ m->rank, pos, m->id });
}

static int bpe_word(const dt_tokenizer *t, enc_state *st, const uint8_t *w,
                    size_t n)
{
    if (n == 1)
        return t->byte_id[w[0]] >= 0 ? emit(st, t->byte_id[w[0]]) : DT_OK;
    if (n > INT32_MAX / 4)
        return DT_EINVAL;
    if (t->ignore_merges) {  /* a whole word in the vocabulary wins */
        char *s = scratch(st, 2 * n);  /* byte characters take <= 2 bytes */
        size_t k = 0;
        if (!s)
            return DT_ENOMEM;
        for (size_t i = 0; i < n; i++)
            k += (size_t)utf8_put(t->byte_cp[w[i]], s + k);
        int32_t id = dt_tok__find(t, s, k);
        if (id >= 0)
            return emit(st, id);
    }
    if (n > st->capw) {
        size_t c = n < 256 ? 256 : n;
        bpe_sym *s = realloc(st->sym, c * sizeof *s);
        if (s) st->sym = s;
        bpe_ent *h = realloc(st->heap, 3 * c * sizeof *h);
        if (h) st->heap = h;
        if (!s || !h)
            return DT_ENOMEM;
        st->capw = c;
    }
    int32_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (t->byte_id[w[i]] >= 0) {
            st->sym[m] = (bpe_sym){ t->byte_id[w[i]], m - 1, m + 1 };
            m++;
        }
    if (m == 0)
        return DT_OK;
    st->sym[m - 1].next = -1;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < m; i++)
        push_pair(t, st, &nh, i, i + 1);
    while (nh > 0) {
        bpe_ent e = heap_pop(st->heap, &nh);
        bpe_sym *a = &st->sym[e.pos];
        if (a->id < 0 || a->next < 0)
            continue;  /* merged away, or now the last symbol */
        const tok_merge *cur = merge_find(t, a->id, st->sym[a->next].id);
        if (!cur || cur->id != e.id)
            continue;  /* stale entry (HF compares the new id only) */
        int32_t b = a->next;
        a->id = e.id;
        a->next = st->sym[b].next;
        st->sym[b].id = -1;
        if (a->next >= 0)
            st->sym[a->next].prev = e.pos;
        if (a->prev >= 0)
            push_pair(t, st, &nh, a->prev, e.pos);
        if (a->next >= 0)
            push_pair(t, st, &nh, e.pos, a->next);
    }
    for (int32_t i = 0; i >= 0; i = st->sym[i].next)
        if (emit(st, st->sym[i].id) != DT_OK)
            return DT_ENOMEM;
    return DT_OK;
}

/* GPT-2 regex: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+
 * |\s+(?!\S)|\s+ . Returns the end of the match starting at i (< n). */
static size_t regex_match(const uint8_t *p, size_t n, size_t i)
{
    size_t adv, j;
    uint32_t c = utf8_next(p + i, n - i, &adv);
    if (c == '\'' && i + 1 < n) {
        uint8_t x = p[i + 1], y = i + 2 < n ? p[i + 2] : 0;
        if (x == 's' || x == 't' || x == 'm' || x == 'd')
            return i + 2;
        if ((x == 'r' && y == 'e') || (x == 'v' && y == 'e')
            || (x == 'l' && y == 'l'))
            return i + 3;
    }
    int k = uc_class(c);
    size_t q = (c == ' ' && i + 1 < n) ? i + 1 : i;  /* optional space */
    if (q > i)
        k = uc_at(p + q, n - q, &adv);
    if (k != UC_S) {
        for (j = q; j < n && uc_at(p + j, n - j, &adv) == k; j += adv) {}
        return j;
    }
    size_t last = i;
    for (j = i; j < n && uc_at(p + j, n - j, &adv) == UC_S; j += adv)
        last = j;
    return (j < n && last > i) ? last : j;  /* keep one space for the next */
}

/* ByteLevel pre-tokenizer and BPE on one piece. */
static int encode_piece(const dt_tokenizer *t, enc_state *st, const uint8_t *p,
                        size_t n)
{
    if (n == 0)
        return DT_OK;
    if (t->add_prefix_space && p[0] != ' ') {
        char *b = scratch(st, n + 1);
        if (!b)
            return DT_ENOMEM;
        b[0] = ' ';
        memcpy(b + 1, p, n);
        p = (const uint8_t *)b;
        n++;
    }
    if (!t->use_regex)
        return bpe_word(t, st, p, n);
    int rc = DT_OK;
    for (size_t i = 0, j; i < n && rc == DT_OK; i = j) {
        j = regex_match(p, n, i);
        rc = bpe_word(t, st, p + i, j - i);
    }
    return rc;
}

/* Digits pre-tokenizer (when set), then encode_piece. */
static int encode_segment(const dt_tokenizer *t, enc_state *st,
                          const uint8_t *p, size_t n)
{
    if (!t->digits)
        return encode_piece(t, st, p, n);
    size_t start = 0, adv, a2;
    int rc = DT_OK;
    for (size_t i = 0; i < n && rc == DT_OK; i += adv) {
        if (uc_at(p + i, n - i, &adv) != UC_N)
            continue;
        if (t->digits == 1)  /* a whole run of numbers is one piece */
            while (i + adv < n && uc_at(p + i + adv, n - i - adv, &a2) == UC_N)
                adv += a2;
        rc = encode_piece(t, st, p + start, i - start);
        if (rc == DT_OK)
            rc = encode_piece(t, st, p + i, adv);
        start = i + adv;
    }
    return rc == DT_OK ? encode_piece(t, st, p + start, n - start) : rc;
}

int dt_tokenizer_encode(const dt_tokenizer *t, const char *text, size_t len,
                        int allow_special, int32_t **ids, int *n, char *err)
{
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len > 0))
        return dt_errf(err, DT_EINVAL, "tokenizer: no tokenizer or text");
    enc_state st = { 0 };
    const uint8_t *p = (const uint8_t *)text;
    size_t seg = 0, i = 0;
    int rc = DT_OK;
    while (i < len && rc == DT_OK) {
        int32_t best = -1;
        for (int32_t k = t->added_at[p[i]]; k < t->added_at[p[i] + 1]; k++) {
            int32_t id = t->added[k];
            if ((t->kind[id] != TOK_SPECIAL || allow_special)
                && t->len[id] <= len - i && !memcmp(t->str[id], p + i, t->len[id])) {
                best = id;
                break;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        rc = encode_segment(t, &st, p + seg, i - seg);
        if (rc == DT_OK)
            rc = emit(&st, best);
        seg = i += t->len[best];
    }
    if (rc == DT_OK)
        rc = encode_segment(t, &st, p + seg, len - seg);
    if (rc == DT_OK && st.nout > INT32_MAX)
        rc = DT_EINVAL;
    if (rc == DT_OK && !st.out && !(st.out = malloc(sizeof *st.out)))
        rc = DT_ENOMEM;
    free(st.sym); free(st.heap); free(st.buf);
    if (rc != DT_OK) {
        free(st.out);
        return dt_errf(err, rc, "tokenizer: cannot encode %zu bytes: %s", len,
                       dt_strerror(rc));
    }
    *ids = st.out;
    *n = (int)st.nout;
    return DT_OK;
}

char *dt_tokenizer_decode(const dt_tokenizer *t, const int32_t *ids, int n)
{
    size_t cap = 1, k = 0, adv;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < t->n && t->str[ids[i]])
            cap += t->len[ids[i]];
    char *o = malloc(cap);
    for (int i = 0; o && i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n || !t->str[ids[i]])
            continue;
        const uint8_t *s = (const uint8_t *)t->str[ids[i]];
        size_t m = t->len[ids[i]];
        if (t->kind[ids[i]] != TOK_NORMAL) {  /* added tokens: as they are */
            memcpy(o + k, s, m);
            k += m;
            continue;
        }
        for (size_t j = 0; j < m; j += adv) {
            uint32_t c = utf8_next(s + j, m - j, &adv);
            if (c < TOK_NCP && t->cp_byte[c] >= 0)
                o[k++] = (char)t->cp_byte[c];
            else {  /* not a byte character: copied as it is */
                memcpy(o + k, s + j, adv);
                k += adv;
            }
        }
    }
    if (o)
        o[k] = 0;
    return o;
}

int dt_tokenizer_vocab_size(const dt_tokenizer *t) { return t->n; }

size_t dt_tokenizer_max_token_bytes(const dt_tokenizer *t)
{
    size_t m = 1;
    for (int32_t i = 0; i < t->n; i++)
        if (t->str[i] && t->len[i] > m)
            m = t->len[i];
    return m;
}
int32_t dt_tokenizer_bos(const dt_tokenizer *t) { return t->bos; }
int32_t dt_tokenizer_eos(const dt_tokenizer *t) { return t->eos; }
const char *dt_tokenizer_chat_template(const dt_tokenizer *t)
{
    return t->chat_template;
}

int32_t dt_tokenizer_token_id(const dt_tokenizer *t, const char *token)
{
    return token ? dt_tok__find(t, token, strlen(token)) : -1;
}
