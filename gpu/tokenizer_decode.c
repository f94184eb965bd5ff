/* tokenizer_decode.c: ids back to text through a tokenizer.json's decoders
 * (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace), as HF's
 * decode(skip_special_tokens=False): normalized=true added tokens decode as
 * their normalized text, and a tokenizer without decoders decodes byte-level
 * tokens as ByteLevel does. Bytes that are not valid UTF-8 come back as they
 * are (HF would write U+FFFD). */
#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "base/dt.h"

#include <stdlib.h>
#include <string.h>

#define utf8_next dt_tok__utf8_next

typedef struct { char *s; size_t n; } dstr;

/* ByteLevel: a token whose characters are all byte characters becomes those
 * bytes; any other token stays as it is (HF's ByteLevel decoder). */
static void dec_bytelevel(const dt_tokenizer *t, dstr *v)
{
    size_t adv, k = 0;
    const uint8_t *s = (const uint8_t *)v->s;
    for (size_t j = 0; j < v->n; j += adv) {
        uint32_t c = utf8_next(s + j, v->n - j, &adv);
        if (c >= TOK_NCP || t->cp_byte[c] < 0)
            return;
    }
    for (size_t j = 0; j < v->n; j += adv)
        v->s[k++] = (char)t->cp_byte[utf8_next(s + j, v->n - j, &adv)];
    v->n = k;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
         : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* <0xNN> -> NN, or -1. */
static int fallback_byte(const dstr *v)
{
    if (v->n != 6 || memcmp(v->s, "<0x", 3) || v->s[5] != '>')
        return -1;
    int hi = hexval(v->s[3]), lo = hexval(v->s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Applies decoder step d to the m tokens of v; returns the new count. */
static size_t dec_step(const dt_tokenizer *t, const tok_dec *d, dstr *v,
                       size_t m, int *rc)
{
    size_t w = 0;
    switch (d->type) {
    case TD_BYTELEVEL:
        for (size_t i = 0; i < m; i++)
            dec_bytelevel(t, &v[i]);
        return m;
    case TD_REPLACE:
    case TD_METASPACE:
        for (size_t i = 0; i < m && *rc == DT_OK; i++) {
            int own = 1;
            /* Metaspace: the first token loses its replacements (HF) */
            int first = d->type == TD_METASPACE && i == 0 && d->flag;
            *rc = d->type == TD_REPLACE
                ? dt_tok__replace_all(&v[i].s, &v[i].n, &own, d->a, d->na, d->b, d->nb)
                : dt_tok__replace_all(&v[i].s, &v[i].n, &own, d->a, d->na, " ",
                              first ? 0 : 1);
        }
        return m;
    case TD_BYTEFALLBACK:  /* runs of <0xNN> become their bytes */
        for (size_t i = 0; i < m;) {
            int b = fallback_byte(&v[i]);
            if (b < 0) {
                v[w++] = v[i++];
                continue;
            }
            dstr run = v[i];  /* its buffer has room for 12 bytes */
            size_t cap = 12, j = i;
            run.n = 0;
            for (; j < m && (b = fallback_byte(&v[j])) >= 0; j++) {
                if (j > i) {
                    free(v[j].s);
                    v[j].s = NULL;
                }
                if (run.n == cap) {
                    char *g = realloc(run.s, cap *= 2);
                    if (!g) {
                        *rc = DT_ENOMEM;
                        break;
                    }
                    run.s = g;
                }
                run.s[run.n++] = (char)b;
            }
            v[w++] = run;
            i = j;
            if (*rc != DT_OK) {  /* free what was not reached */
                for (; i < m; i++)
                    v[w++] = v[i];
                break;
            }
        }
        return w;
    case TD_FUSE: {
        size_t total = 0;
        for (size_t i = 0; i < m; i++)
            total += v[i].n;
        if (m == 0)
            return 0;
        char *o = malloc(total + 1);
        if (!o) {
            *rc = DT_ENOMEM;
            return m;
        }
        for (size_t i = 0; i < m; i++) {
            memcpy(o + w, v[i].s, v[i].n);
            w += v[i].n;
            free(v[i].s);
            v[i].s = NULL;
        }
        v[0] = (dstr){ o, total };
        return 1;
    }
    default:  /* TD_STRIP */
        for (size_t i = 0; i < m; i++) {
            size_t a = 0, b = v[i].n;
            for (int k = 0; k < d->start && b - a >= d->na
                            && !memcmp(v[i].s + a, d->a, d->na); k++)
                a += d->na;
            for (int k = 0; k < d->stop && b - a >= d->na
                            && !memcmp(v[i].s + b - d->na, d->a, d->na); k++)
                b -= d->na;
            memmove(v[i].s, v[i].s + a, b - a);
            v[i].n = b - a;
        }
        return m;
    }
}

char *dt_tokenizer_decode(const dt_tokenizer *t, const int32_t *ids, int n)
{
    dstr *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    size_t m = 0, total = 1;
    int rc = v ? DT_OK : DT_ENOMEM;
    for (int i = 0; i < n && rc == DT_OK; i++) {
        if (ids[i] < 0 || ids[i] >= t->n || !t->str[ids[i]])
            continue;
        const char *text = t->str[ids[i]];
        size_t len = t->len[ids[i]];
        if (t->aflag && (t->aflag[ids[i]] & TOK_NORMALIZED))
            for (int32_t k = 0; k < t->anorm.nids; k++)
                if (t->anorm.ids[k] == ids[i]) {  /* HF: the normalized text */
                    text = t->anorm.txt[k];
                    len = t->anorm.tlen[k];
                }
        if (!(v[m].s = malloc(len + 6)))  /* + room for ByteFallback */
            rc = DT_ENOMEM;
        else
            memcpy(v[m].s, text, len);
        v[m++].n = len;
    }
    tok_dec bl = { .type = TD_BYTELEVEL };
    int nd = t->has_decoder ? t->ndec : t->byte_level;
    for (int k = 0; k < nd && rc == DT_OK; k++)
        m = dec_step(t, t->has_decoder ? &t->dec[k] : &bl, v, m, &rc);
    for (size_t i = 0; i < m; i++)
        total += v[i].n;
    char *o = rc == DT_OK ? malloc(total) : NULL;
    size_t w = 0;
    for (size_t i = 0; i < m; i++) {
        if (o) {
            memcpy(o + w, v[i].s, v[i].n);
            w += v[i].n;
        }
        free(v[i].s);
    }
    if (o)
        o[w] = 0;
    free(v);
    return o;
}
