/* tokenizer.c: BPE with ids identical to Hugging Face `tokenizers`.
 *
 * One encode: split the text on added tokens (leftmost-longest; special ones
 * only when allowed; lstrip/rstrip eat the whitespace beside them), run the
 * normalizers (NFC, Prepend, Replace) on each piece between them, then the
 * pre-tokenizers (Split with a known regex or a string, Digits, Metaspace,
 * ByteLevel), then BPE on each word. Byte-level BPE starts from the ids of
 * GPT-2's byte->unicode characters; SentencePiece-style BPE starts from the
 * word's characters, with byte_fallback's <0xNN> tokens (or unk) for those
 * not in the vocabulary. Each merge (a, b) -> (rank, id) sits in an
 * open-addressing hash table. Merges are applied lowest rank first, leftmost
 * first, through a binary heap exactly as HF's Word::merge_all does, so a
 * hostile 1 MB "word" costs O(n log n). Decoding runs the decoders
 * (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace); bytes that are
 * not valid UTF-8 come back as they were (HF would write U+FFFD).
 * Sources (tokenizer.json, merges files, GGUF) live in tokenizer_io.c and
 * tokenizer_hf.c; UTF-8, NFC and the split regexes in tokenizer_text.c. */
#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "base/dt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define utf8_put dt_tok__utf8_put
#define utf8_next dt_tok__utf8_next
#define uc_class dt_tok__uc_class

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
    memset(t->fb_id, 0xFF, sizeof t->fb_id);
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
    free(t->mkey); free(t->mval); free(t->merges);
    for (int k = 0; k < 2; k++) {
        tok_aidx *x = k ? &t->anorm : &t->araw;
        for (int32_t i = 0; x->owned && x->txt && i < x->nids; i++)
            free(x->txt[i]);
        free(x->ids); free(x->txt); free(x->tlen);
    }
    free(t->chat_template); free(t->aflag); free(t->hf_json);
    dt_tok__free_steps(t);
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

static int normalize_text(const dt_tokenizer *t, char **s, size_t *m,
                          int *own);

/* Index of the added tokens with (norm) or without TOK_NORMALIZED. */
static int aidx_build(dt_tokenizer *t, tok_aidx *x, int norm)
{
    int32_t fill[257] = { 0 }, n = 0;
    x->owned = norm;
    for (int32_t i = 0; i < t->n; i++)
        n += t->kind[i] != TOK_NORMAL && t->str[i] && t->len[i] > 0
             && (t->aflag && (t->aflag[i] & TOK_NORMALIZED)) == norm;
    x->ids = dt_calloc((size_t)n, sizeof *x->ids);
    x->txt = dt_calloc((size_t)n, sizeof *x->txt);
    x->tlen = dt_calloc((size_t)n, sizeof *x->tlen);
    char **txt = dt_calloc((size_t)n, sizeof *txt);
    uint32_t *tlen = dt_calloc((size_t)n, sizeof *tlen);
    int32_t *ids = dt_calloc((size_t)n, sizeof *ids), k = 0;
    int rc = x->ids && x->txt && x->tlen && txt && tlen && ids ? DT_OK : DT_ENOMEM;
    for (int32_t i = 0; i < t->n && rc == DT_OK; i++) {
        if (t->kind[i] == TOK_NORMAL || !t->str[i] || t->len[i] == 0
            || (t->aflag && (t->aflag[i] & TOK_NORMALIZED)) != norm)
            continue;
        char *s = t->str[i];
        size_t m = t->len[i];
        int own = 0;
        if (norm && (rc = normalize_text(t, &s, &m, &own)) == DT_OK && !own) {
            char *c = malloc(m + 1);
            if (c)
                memcpy(c, s, m);
            s = c;
        }
        if (rc == DT_OK && !s)
            rc = DT_ENOMEM;
        if (rc != DT_OK)
            break;
        txt[k] = s;
        tlen[k] = (uint32_t)m;
        ids[k++] = i;
        if (m > 0)
            fill[(uint8_t)s[0] + 1]++;
    }
    x->nids = 0;
    for (int b = 0; b < 256; b++)
        fill[b + 1] += fill[b];
    memcpy(x->at, fill, sizeof fill);
    for (int32_t r = 0; r < k && rc == DT_OK; r++) {
        if (tlen[r] == 0) {  /* normalized to nothing: never matched */
            if (norm) free(txt[r]);
            continue;
        }
        int b = (uint8_t)txt[r][0];
        int32_t j = fill[b]++;  /* insertion sort, longest first */
        for (; j > x->at[b] && x->tlen[j - 1] < tlen[r]; j--) {
            x->ids[j] = x->ids[j - 1];
            x->txt[j] = x->txt[j - 1];
            x->tlen[j] = x->tlen[j - 1];
        }
        x->ids[j] = ids[r];
        x->txt[j] = txt[r];
        x->tlen[j] = tlen[r];
        x->nids++;
    }
    if (rc != DT_OK && norm)
        for (int32_t r = 0; r < k; r++)
            free(txt[r]);
    free(txt); free(tlen); free(ids);
    return rc;
}

/* After vocabulary and merges: byte ids and the added-token index. */
int dt_tok__finish(dt_tokenizer *t)
{
    for (int b = 0; b < 256; b++) {
        char u[8];
        t->byte_id[b] = dt_tok__find(t, u, (size_t)utf8_put(t->byte_cp[b], u));
        if (t->byte_id[b] < 0)
            t->byte_id[b] = t->unk;  /* HF drops the character when no unk */
        snprintf(u, sizeof u, "<0x%02X>", b);
        t->fb_id[b] = dt_tok__find(t, u, 6);
    }
    int rc = aidx_build(t, &t->araw, 0);
    return rc == DT_OK ? aidx_build(t, &t->anorm, 1) : rc;
}

/* ---- encoding ------------------------------------------------------------ */

typedef struct { int32_t id, prev, next; } bpe_sym;
typedef struct { int32_t rank, pos, id; } bpe_ent;

typedef struct {
    int32_t *out;  size_t nout, capout;
    bpe_sym *sym;  bpe_ent *heap;  size_t capw;  /* capw symbols, 3 capw heap */
    char *buf;     size_t capbuf;                /* a word's byte characters */
    char *pbuf;    size_t cappbuf;               /* a piece with prefix space */
    int allow_special;                           /* DT_TOK_SPECIAL */
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

static char *grow(char **buf, size_t *cap, size_t n)
{
    if (n > *cap) {
        char *b = realloc(*buf, n);
        if (!b)
            return NULL;
        *buf = b;
        *cap = n;
    }
    return *buf;
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

/* Room for n symbols. */
static int sym_room(enc_state *st, size_t n)
{
    if (n > INT32_MAX / 4)
        return DT_EINVAL;
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
    return DT_OK;
}

static void sym_add(enc_state *st, int32_t *m, int32_t id)
{
    st->sym[*m] = (bpe_sym){ id, *m - 1, *m + 1 };
    (*m)++;
}

/* Merges the m symbols in st->sym and emits the result. */
static int bpe_run(const dt_tokenizer *t, enc_state *st, int32_t m)
{
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

/* Byte-level BPE on one word's bytes. */
static int bpe_bytes(const dt_tokenizer *t, enc_state *st, const uint8_t *w,
                     size_t n)
{
    if (n == 1)
        return t->byte_id[w[0]] >= 0 ? emit(st, t->byte_id[w[0]]) : DT_OK;
    if (t->ignore_merges) {  /* a whole word in the vocabulary wins */
        char *s = grow(&st->buf, &st->capbuf, 2 * n);  /* <= 2 bytes each */
        size_t k = 0;
        if (!s)
            return DT_ENOMEM;
        for (size_t i = 0; i < n; i++)
            k += (size_t)utf8_put(t->byte_cp[w[i]], s + k);
        int32_t id = dt_tok__find(t, s, k);
        if (id >= 0)
            return emit(st, id);
    }
    int rc = sym_room(st, n);
    if (rc != DT_OK)
        return rc;
    int32_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (t->byte_id[w[i]] >= 0)
            sym_add(st, &m, t->byte_id[w[i]]);
    return bpe_run(t, st, m);
}

/* SentencePiece-style BPE on one word's characters: a character not in the
 * vocabulary becomes its <0xNN> tokens (byte_fallback), else unk (runs of
 * them fused with fuse_unk), else nothing, as HF's BPE::merge_word. */
static int bpe_chars(const dt_tokenizer *t, enc_state *st, const uint8_t *w,
                     size_t n)
{
    if (t->ignore_merges) {
        int32_t id = dt_tok__find(t, (const char *)w, n);
        if (id >= 0)
            return emit(st, id);
    }
    int rc = sym_room(st, n);
    if (rc != DT_OK)
        return rc;
    int32_t m = 0;
    int unk = 0;
    size_t adv;
    for (size_t i = 0; i < n; i += adv) {
        utf8_next(w + i, n - i, &adv);
        int32_t id = dt_tok__find(t, (const char *)w + i, adv);
        if (id >= 0) {
            if (unk)
                sym_add(st, &m, t->unk);
            unk = 0;
            sym_add(st, &m, id);
            continue;
        }
        int fb = t->byte_fallback;
        for (size_t k = 0; fb && k < adv; k++)
            fb = t->fb_id[w[i + k]] >= 0;
        if (fb) {
            for (size_t k = 0; k < adv; k++)
                sym_add(st, &m, t->fb_id[w[i + k]]);
        } else if (t->unk >= 0) {
            if (unk && !t->fuse_unk)
                sym_add(st, &m, t->unk);
            unk = 1;
        }
    }
    if (unk)
        sym_add(st, &m, t->unk);
    return bpe_run(t, st, m);
}

static int model_word(const dt_tokenizer *t, enc_state *st, const uint8_t *p,
                      size_t n)
{
    if (n == 0)
        return DT_OK;
    return t->byte_level ? bpe_bytes(t, st, p, n) : bpe_chars(t, st, p, n);
}

static int pre_run(const dt_tokenizer *t, enc_state *st, int k,
                   const uint8_t *p, size_t n, int at0);

/* ByteLevel pre-tokenizer (the last step): prefix space, GPT-2 regex. */
static int pre_bytelevel(const dt_tokenizer *t, enc_state *st,
                         const tok_pre *s, const uint8_t *p, size_t n)
{
    if (s->flag && p[0] != ' ') {
        char *b = grow(&st->pbuf, &st->cappbuf, n + 1);
        if (!b)
            return DT_ENOMEM;
        b[0] = ' ';
        memmove(b + 1, p, n);
        p = (const uint8_t *)b;
        n++;
    }
    if (!s->kind)
        return model_word(t, st, p, n);
    int rc = DT_OK;
    for (size_t i = 0, j; i < n && rc == DT_OK; i = j) {
        j = dt_tok__split_match(TS_GPT2, p, n, i);
        rc = model_word(t, st, p + i, j - i);
    }
    return rc;
}

/* Digits: runs of \p{N} (or each one) become pieces of their own. */
static int pre_digits(const dt_tokenizer *t, enc_state *st, int k,
                      const uint8_t *p, size_t n, int at0)
{
    size_t start = 0, adv, a2;
    int rc = DT_OK;
    for (size_t i = 0; i < n && rc == DT_OK; i += adv) {
        if (uc_at(p + i, n - i, &adv) != UC_N)
            continue;
        if (!t->pre[k].flag)  /* a whole run of numbers is one piece */
            while (i + adv < n && uc_at(p + i + adv, n - i - adv, &a2) == UC_N)
                adv += a2;
        rc = pre_run(t, st, k + 1, p + start, i - start, at0 && start == 0);
        if (rc == DT_OK)
            rc = pre_run(t, st, k + 1, p + i, adv, at0 && i == 0);
        start = i + adv;
    }
    return rc == DT_OK ? pre_run(t, st, k + 1, p + start, n - start,
                                 at0 && start == 0) : rc;
}

/* Split on a string with HF's SplitDelimiterBehavior. */
static int pre_string(const dt_tokenizer *t, enc_state *st, int k,
                      const uint8_t *p, size_t n, int at0, const char *pat,
                      size_t m, int behavior)
{
    size_t cap = 16, ns = 0, i = 0;
    struct seg { size_t a, b; int match; } *sg = malloc(cap * sizeof *sg);
    int rc = sg ? DT_OK : DT_ENOMEM;
    while (rc == DT_OK && i <= n) {
        const uint8_t *q = dt_tok__find_bytes(p + i, n - i, pat, m);
        size_t at = q ? (size_t)(q - p) : n;
        if (ns + 2 > cap) {
            struct seg *g = realloc(sg, (cap *= 2) * sizeof *sg);
            if (!g) { rc = DT_ENOMEM; break; }
            sg = g;
        }
        if (at > i)
            sg[ns++] = (struct seg){ i, at, 0 };
        if (!q)
            break;
        sg[ns++] = (struct seg){ at, at + m, 1 };
        i = at + m;
    }
    /* fold the segments as HF's split does */
    size_t w = 0;
    int prev = 0;
    if (behavior == TB_NEXT) {  /* a match joins the piece after it */
        for (size_t r = ns; r-- > 0;) {
            int joined = sg[r].match && !prev && w > 0;
            if (joined)
                sg[ns - w].a = sg[r].a;  /* built from the end */
            else
                sg[ns - ++w] = sg[r];
            prev = sg[r].match;
        }
        memmove(sg, sg + ns - w, w * sizeof *sg);
    } else {
        for (size_t r = 0; r < ns; r++) {
            int join = behavior == TB_PREV ? sg[r].match && !prev && w > 0
                     : behavior == TB_CONTIG ? sg[r].match == prev && w > 0 : 0;
            prev = sg[r].match;
            if (behavior == TB_REMOVED && sg[r].match)
                continue;
            if (join)
                sg[w - 1].b = sg[r].b;
            else
                sg[w++] = sg[r];
        }
    }
    for (size_t r = 0; r < w && rc == DT_OK; r++)
        rc = pre_run(t, st, k + 1, p + sg[r].a, sg[r].b - sg[r].a,
                     at0 && sg[r].a == 0);
    free(sg);
    return rc;
}

/* Metaspace: spaces -> replacement, the prefix, and the split before each
 * replacement (MergedWithNext). */
static int pre_metaspace(const dt_tokenizer *t, enc_state *st, int k,
                         const uint8_t *p, size_t n, int at0)
{
    const tok_pre *s = &t->pre[k];
    size_t spaces = 0, w = 0;
    for (size_t i = 0; i < n; i++)
        spaces += p[i] == ' ';
    char *b = malloc(n + (spaces + 1) * s->na + 1);
    if (!b)
        return DT_ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (p[i] == ' ') {
            memcpy(b + w, s->a, s->na);
            w += s->na;
        } else {
            b[w++] = (char)p[i];
        }
    int starts = w >= s->na && !memcmp(b, s->a, s->na);
    if (!starts && (s->kind == 0 || (s->kind == 1 && at0))) {
        memmove(b + s->na, b, w);
        memcpy(b, s->a, s->na);
        w += s->na;
    }
    int rc = s->flag ? pre_string(t, st, k, (const uint8_t *)b, w, at0, s->a,
                                  s->na, TB_NEXT)
                     : pre_run(t, st, k + 1, (const uint8_t *)b, w, at0);
    free(b);
    return rc;
}

/* Pre-tokenizer step k on a piece; past the last step, the model. */
static int pre_run(const dt_tokenizer *t, enc_state *st, int k,
                   const uint8_t *p, size_t n, int at0)
{
    if (n == 0)
        return DT_OK;
    if (k == t->npre)
        return model_word(t, st, p, n);
    const tok_pre *s = &t->pre[k];
    int rc = DT_OK;
    switch (s->type) {
    case TP_REGEX:
        for (size_t i = 0, j; i < n && rc == DT_OK; i = j) {
            j = dt_tok__split_match(s->kind, p, n, i);
            rc = pre_run(t, st, k + 1, p + i, j - i, at0 && i == 0);
        }
        return rc;
    case TP_STRING:
        return pre_string(t, st, k, p, n, at0, s->a, s->na, s->behavior);
    case TP_DIGITS:
        return pre_digits(t, st, k, p, n, at0);
    case TP_METASPACE:
        return pre_metaspace(t, st, k, p, n, at0);
    default:
        return pre_bytelevel(t, st, s, p, n);
    }
}

/* The normalizers on *s (*m bytes, owned when *own): may replace *s. */
static int normalize_text(const dt_tokenizer *t, char **sp, size_t *mp,
                          int *own)
{
    char *s = *sp;
    size_t m = *mp;
    int rc = DT_OK;
    for (int k = 0; k < t->nnorm && rc == DT_OK && m > 0; k++) {
        const tok_norm *z = &t->norm[k];
        if (z->type == TN_NFC) {
            char *o;
            size_t on;
            int r = dt_tok__nfc((const uint8_t *)s, m, &o, &on);
            if (r < 0) {
                rc = r;
            } else if (r == 1) {
                if (*own)
                    free(s);
                s = o, m = on, *own = 1;
            }
        } else if (z->type == TN_PREPEND) {
            char *o = malloc(m + z->na + 1);
            if (!o) {
                rc = DT_ENOMEM;
                break;
            }
            memcpy(o, z->a, z->na);
            memcpy(o + z->na, s, m);
            if (*own)
                free(s);
            s = o, m += z->na, *own = 1;
        } else {
            rc = dt_tok__replace_all(&s, &m, own, z->a, z->na, z->b, z->nb);
        }
    }
    *sp = s;
    *mp = m;
    return rc;
}

static int split_added(const dt_tokenizer *t, enc_state *st,
                       const tok_aidx *x, const uint8_t *p, size_t len,
                       int at0);

/* Text between added tokens: the normalizers, the normalized=true added
 * tokens, then the pre-tokenizers. */
static int encode_segment(const dt_tokenizer *t, enc_state *st,
                          const uint8_t *p, size_t n, int at0)
{
    char *s = (char *)p;
    size_t m = n;
    int own = 0, rc = normalize_text(t, &s, &m, &own);
    if (rc == DT_OK)
        rc = t->anorm.nids ? split_added(t, st, &t->anorm, (const uint8_t *)s,
                                         m, at0)
                           : pre_run(t, st, 0, (const uint8_t *)s, m, at0);
    if (own)
        free(s);
    return rc;
}

/* Length of the whitespace character ending at p[e] (from p[s0]), or 0. */
static size_t space_before(const uint8_t *p, size_t s0, size_t e)
{
    for (size_t k = 1; k <= 3 && k <= e - s0; k++) {
        size_t adv;
        uint32_t c = utf8_next(p + e - k, k, &adv);
        if (adv == k && c != TOK_BADCP)
            return uc_class(c) == UC_S ? k : 0;
    }
    return 0;
}

/* Splits p on the added tokens of x (leftmost, then longest; special ones
 * only when allowed); the text between goes on: raw text to the normalizers
 * (encode_segment), normalized text to the pre-tokenizers. */
static int split_added(const dt_tokenizer *t, enc_state *st,
                       const tok_aidx *x, const uint8_t *p, size_t len,
                       int at0)
{
    size_t seg = 0, i = 0, adv;
    int rc = DT_OK, raw = x == &t->araw;
    while (i < len && rc == DT_OK) {
        int32_t best = -1;
        uint32_t blen = 0;
        for (int32_t k = x->at[p[i]]; k < x->at[p[i] + 1]; k++) {
            int32_t id = x->ids[k];
            if ((t->kind[id] != TOK_SPECIAL || st->allow_special)
                && x->tlen[k] <= len - i && !memcmp(x->txt[k], p + i, x->tlen[k])) {
                best = id;
                blen = x->tlen[k];
                break;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        size_t s = i, e = i + blen, sp;
        if (t->aflag && (t->aflag[best] & TOK_LSTRIP))
            while ((sp = space_before(p, seg, s)) > 0)
                s -= sp;
        if (t->aflag && (t->aflag[best] & TOK_RSTRIP))
            while (e < len && uc_at(p + e, len - e, &adv) == UC_S)
                e += adv;
        rc = raw ? encode_segment(t, st, p + seg, s - seg, at0 && seg == 0)
                 : pre_run(t, st, 0, p + seg, s - seg, at0 && seg == 0);
        if (rc == DT_OK)
            rc = emit(st, best);
        seg = i = e;
    }
    if (rc == DT_OK)
        rc = raw ? encode_segment(t, st, p + seg, len - seg, at0 && seg == 0)
                 : pre_run(t, st, 0, p + seg, len - seg, at0 && seg == 0);
    return rc;
}

int dt_tokenizer_encode(const dt_tokenizer *t, const char *text, size_t len,
                        int flags, int32_t **ids, int *n, char *err)
{
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len > 0))
        return dt_errf(err, DT_EINVAL, "tokenizer: no tokenizer or text");
    enc_state st = { 0 };
    const uint8_t *p = (const uint8_t *)text;
    int rc = DT_OK;
    st.allow_special = flags & DT_TOK_SPECIAL;
    for (int k = 0; (flags & DT_TOK_ADD) && k < t->ntpl_pre && rc == DT_OK; k++)
        rc = emit(&st, t->tpl_pre[k]);
    if (rc == DT_OK)
        rc = split_added(t, &st, &t->araw, p, len, 1);
    for (int k = 0; (flags & DT_TOK_ADD) && k < t->ntpl_post && rc == DT_OK; k++)
        rc = emit(&st, t->tpl_post[k]);
    if (rc == DT_OK && st.nout > INT32_MAX)
        rc = DT_EINVAL;
    if (rc == DT_OK && !st.out && !(st.out = malloc(sizeof *st.out)))
        rc = DT_ENOMEM;
    free(st.sym); free(st.heap); free(st.buf); free(st.pbuf);
    if (rc != DT_OK) {
        free(st.out);
        return dt_errf(err, rc, "tokenizer: cannot encode %zu bytes: %s", len,
                       dt_strerror(rc));
    }
    *ids = st.out;
    *n = (int)st.nout;
    return DT_OK;
}

int dt_tokenizer_adds_bos(const dt_tokenizer *t)
{
    return t->ntpl_pre > 0 && t->tpl_pre[0] == t->bos;
}

int dt_tokenizer_adds_eos(const dt_tokenizer *t)
{
    return t->ntpl_post > 0 && t->tpl_post[t->ntpl_post - 1] == t->eos;
}

void dt_tok__gpt2_steps(dt_tokenizer *t, int digits, int add_prefix_space,
                        int use_regex)
{
    t->npre = 0;
    if (digits)
        t->pre[t->npre++] = (tok_pre){ .type = TP_DIGITS, .flag = digits == 2 };
    t->pre[t->npre++] = (tok_pre){ .type = TP_BYTELEVEL,
                                   .flag = add_prefix_space, .kind = use_regex };
    t->digits = digits;
    t->add_prefix_space = add_prefix_space;
    t->use_regex = use_regex;
    t->byte_level = 1;
}

void dt_tok__free_steps(dt_tokenizer *t)
{
    for (int k = 0; k < t->nnorm; k++) {
        free(t->norm[k].a); free(t->norm[k].b);
    }
    for (int k = 0; k < t->npre; k++)
        free(t->pre[k].a);
    for (int k = 0; k < t->ndec; k++) {
        free(t->dec[k].a); free(t->dec[k].b);
    }
    t->nnorm = t->npre = t->ndec = 0;
}

int dt_tokenizer_vocab_size(const dt_tokenizer *t) { return t->n; }

size_t dt_tokenizer_max_token_bytes(const dt_tokenizer *t)
{
    size_t m = 1;
    for (int32_t i = 0; i < t->n; i++)
        if (t->str[i] && t->len[i] > m)
            m = t->len[i];
    /* normalizers that shrink the text: NFC composes at most 3 input bytes
     * into 1 (Hangul L V T: 9 bytes -> 3), a Replace of na bytes by nb */
    for (int k = 0; k < t->nnorm; k++) {
        const tok_norm *z = &t->norm[k];
        if (z->type == TN_NFC)
            m *= 3;
        else if (z->type == TN_REPLACE && z->nb < z->na)
            m = z->nb ? m * ((z->na + z->nb - 1) / z->nb) : DT_TOK_NO_BOUND;
        if (m >= DT_TOK_NO_BOUND)
            return DT_TOK_NO_BOUND;
    }
    /* an lstrip/rstrip added token swallows any run of whitespace */
    for (int32_t i = 0; t->aflag && i < t->n; i++)
        if (t->aflag[i] & (TOK_LSTRIP | TOK_RSTRIP))
            return DT_TOK_NO_BOUND;
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
