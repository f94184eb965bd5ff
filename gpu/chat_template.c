/* chat_template.c: the Jinja subset of real chat templates (see
 * chat_template.h for what is supported and why).
 *
 * Three stages: the scanner splits the template into text and tags,
 * applying whitespace control exactly as jinja2's lexer does with
 * trim_blocks and lstrip_blocks; a recursive-descent parser turns the tags
 * into statement and expression trees (jinja2's operator precedence); the
 * evaluator walks them. All values, trees and strings live in one arena
 * freed at the end, bounded by DT_CT_MAX_MEMORY; only the output buffer is
 * separate. Strings carry an optional per-byte provenance tag (NULL when
 * all zero), which every string operation keeps aligned with the bytes. */
#include "chat_template.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/dt.h"

/* ------------------------------------------------------------------ arena */

typedef struct ablk {
    struct ablk *next;
    size_t used, cap;
    max_align_t data[];
} ablk;

typedef struct val val;
typedef struct expr expr;
typedef struct node node;

typedef struct obuf {
    char *s;
    int32_t *tag;
    size_t n, cap;
    int tagged; /* some tag != 0 */
} obuf;

typedef struct frame {
    struct frame *parent;
    struct dict *vars;
} frame;

typedef struct ctx {
    const char *src;
    size_t srclen;
    ablk *arena;
    size_t mem;
    int failed;
    int code;  /* DT_EINVAL, or DT_ENOMEM when an allocation failed */
    char *err;
    long steps;
    int depth;
    long long now;
    obuf *out;
    obuf main;
    size_t (*gen)[2];
    int ngen, gencap;
    frame *root;
    int brk; /* 1: break, 2: continue pending */
} ctx;

static void fail(ctx *c, size_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(ctx *c, size_t pos, const char *fmt, ...)
{
    if (c->failed)
        return;
    c->failed = 1;
    int line = 1, col = 1;
    for (size_t i = 0; i < pos && i < c->srclen; i++) {
        if (c->src[i] == '\n') {
            line++;
            col = 1;
        } else if (((unsigned char)c->src[i] & 0xC0) != 0x80) {
            col++;
        }
    }
    char msg[DT_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dt_errf(c->err, DT_EINVAL, "chat template: line %d, column %d: %s", line,
            col, msg);
}

static void *amalloc(ctx *c, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n == 0)
        n = sizeof(max_align_t);
    ablk *b = c->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (c->mem + cap > DT_CT_MAX_MEMORY) {
            if (!c->failed) {
                c->failed = 1;
                dt_errf(c->err, DT_EINVAL, "chat template: uses more than %u "
                        "MiB of memory", DT_CT_MAX_MEMORY >> 20);
            }
            return NULL;
        }
        b = malloc(sizeof *b + cap);
        if (!b) {
            if (!c->failed) {
                c->failed = 1;
                dt_errf(c->err, DT_ENOMEM, "chat template: out of memory");
                c->code = DT_ENOMEM;
            }
            return NULL;
        }
        b->used = 0;
        b->cap = cap;
        b->next = c->arena;
        c->arena = b;
        c->mem += cap;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

/* ----------------------------------------------------------------- values */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS,
       V_LOOP, V_MACRO, V_FUNC };
enum { F_RAISE, F_STRFTIME, F_NAMESPACE, F_RANGE, F_DICT };

typedef struct list {
    val *v;
    size_t n, cap;
} list;

typedef struct dict {
    val *k, *v;
    size_t n, cap;
} dict;

typedef struct loopst {
    list *items;
    size_t i;
} loopst;

struct val {
    int t;
    union {
        int b;
        long long i;
        double f;
        struct {
            const char *s;
            const int32_t *tag;
            size_t n;
        } s;
        list *l;
        dict *d;
        loopst *loop;
        node *macro;
        int fn;
    } u;
    const char *name; /* V_UNDEF: what was undefined (may be NULL) */
};

static val mk_undef(const char *name)
{
    val v = {.t = V_UNDEF};
    v.name = name;
    return v;
}
static val mk_none(void) { return (val){.t = V_NONE}; }
static val mk_bool(int b) { return (val){.t = V_BOOL, .u.b = !!b}; }
static val mk_int(long long i) { return (val){.t = V_INT, .u.i = i}; }
static val mk_float(double f) { return (val){.t = V_FLOAT, .u.f = f}; }
static val mk_str(const char *s, const int32_t *tag, size_t n)
{
    val v = {.t = V_STR};
    v.u.s.s = s;
    v.u.s.tag = tag;
    v.u.s.n = n;
    return v;
}

static val str_copy(ctx *c, const char *s, size_t n)
{
    char *p = amalloc(c, n + 1);
    if (!p)
        return mk_undef(NULL);
    memcpy(p, s, n);
    return mk_str(p, NULL, n);
}

static val cstr(ctx *c, const char *s) { return str_copy(c, s, strlen(s)); }

static list *list_new(ctx *c) { return amalloc(c, sizeof(list)); }

static int list_push(ctx *c, list *l, val v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        val *nv = amalloc(c, cap * sizeof *nv);
        if (!nv)
            return -1;
        if (l->n)
            memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
    return 0;
}

static dict *dict_new(ctx *c) { return amalloc(c, sizeof(dict)); }

static int str_eq(const val *a, const char *s, size_t n)
{
    return a->t == V_STR && a->u.s.n == n && memcmp(a->u.s.s, s, n) == 0;
}

static val *dict_find(const dict *d, const char *k, size_t n)
{
    for (size_t i = 0; d && i < d->n; i++)
        if (str_eq(&d->k[i], k, n))
            return &d->v[i];
    return NULL;
}

static int dict_set(ctx *c, dict *d, val k, val v)
{
    val *p = dict_find(d, k.u.s.s, k.u.s.n);
    if (p) {
        *p = v;
        return 0;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        val *nk = amalloc(c, cap * sizeof *nk), *nv = amalloc(c, cap * sizeof *nv);
        if (!nk || !nv)
            return -1;
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof *nk);
            memcpy(nv, d->v, d->n * sizeof *nv);
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
    return 0;
}

static int dict_setc(ctx *c, dict *d, const char *k, val v)
{
    val kv = cstr(c, k);
    return c->failed ? -1 : dict_set(c, d, kv, v);
}

/* JSON -> value; strings of the listed fields get tag. */
static val from_json(ctx *c, const json_t *j, int32_t tag, int depth)
{
    if (depth > DT_CT_MAX_DEPTH) {
        fail(c, 0, "message data nested deeper than %d", DT_CT_MAX_DEPTH);
        return mk_undef(NULL);
    }
    switch (json_typeof(j)) {
    case JSON_NULL:
        return mk_none();
    case JSON_TRUE:
        return mk_bool(1);
    case JSON_FALSE:
        return mk_bool(0);
    case JSON_INTEGER:
        return mk_int(json_integer_value(j));
    case JSON_REAL:
        return mk_float(json_real_value(j));
    case JSON_STRING: {
        size_t n = json_string_length(j);
        val v = str_copy(c, json_string_value(j), n);
        if (tag && !c->failed && n) {
            int32_t *t = amalloc(c, n * sizeof *t);
            if (!t)
                return mk_undef(NULL);
            for (size_t i = 0; i < n; i++)
                t[i] = tag;
            v.u.s.tag = t;
        }
        return v;
    }
    case JSON_ARRAY: {
        list *l = list_new(c);
        size_t i;
        const json_t *e;
        if (!l)
            return mk_undef(NULL);
        json_array_foreach(j, i, e) {
            /* content parts: [{"type": "text", "text": ...}] keep the tag */
            if (list_push(c, l, from_json(c, e, tag, depth + 1)))
                return mk_undef(NULL);
        }
        return (val){.t = V_LIST, .u.l = l};
    }
    case JSON_OBJECT: {
        dict *d = dict_new(c);
        const char *k;
        const json_t *e;
        if (!d)
            return mk_undef(NULL);
        json_object_foreach((json_t *)j, k, e) {
            int32_t t = 0;
            if (tag && (strcmp(k, "content") == 0 || strcmp(k, "text") == 0 ||
                        strcmp(k, "reasoning_content") == 0))
                t = tag;
            val v = from_json(c, e, t, depth + 1);
            if (c->failed || dict_setc(c, d, k, v))
                return mk_undef(NULL);
        }
        return (val){.t = V_DICT, .u.d = d};
    }
    }
    return mk_undef(NULL);
}

/* ------------------------------------------------------------------ trees */

enum { E_LIT, E_NAME, E_ATTR, E_INDEX, E_SLICE, E_CALL, E_FILTER, E_TEST,
       E_BIN, E_CMP, E_NOT, E_NEG, E_AND, E_OR, E_COND, E_LIST, E_DICT };
/* E_BIN / E_CMP operators */
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FDIV, OP_MOD, OP_POW, OP_CAT,
       OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

struct expr {
    int k, op, neg;
    int h;            /* height of the tree below, for DT_CT_MAX_EXPR */
    size_t pos;
    val lit;
    const char *name; /* E_NAME, E_ATTR, E_FILTER, E_TEST */
    expr *a, *b, *c;  /* operands; E_SLICE: a[b:c:d] with d in args[0] */
    expr **args;      /* call / filter / test arguments, list items, dict values */
    const char **kw;  /* keyword names (NULL for positional); dict: key exprs in keys */
    expr **keys;
    int nargs;
};

enum { N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_BREAK,
       N_CONT, N_GEN };

struct node {
    int k;
    size_t pos;
    node *next;
    const char *s; /* N_TEXT */
    size_t n;
    expr *e;       /* N_OUT, N_IF cond, N_FOR iterable, N_SET value */
    expr *filt;    /* N_FOR "if" */
    node *body, *els;
    const char *names[2]; /* N_FOR targets, N_SET name (+ attribute) */
    int nnames;
    const char **params;  /* N_MACRO */
    expr **defaults;
    int nparams;
};

/* ---------------------------------------------------------------- scanner */

enum { C_TEXT, C_VAR, C_BLOCK };

typedef struct chunk {
    int k;
    size_t a, b; /* content [a, b) in src; for tags without the markers */
} chunk;

typedef struct chunks {
    chunk *v;
    int n, cap;
} chunks;

static int chunk_add(ctx *c, chunks *cs, int k, size_t a, size_t b)
{
    if (cs->n == cs->cap) {
        int cap = cs->cap ? cs->cap * 2 : 64;
        chunk *v = amalloc(c, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        if (cs->n)
            memcpy(v, cs->v, (size_t)cs->n * sizeof *v);
        cs->v = v;
        cs->cap = cap;
    }
    cs->v[cs->n++] = (chunk){k, a, b};
    return 0;
}

/* End of a tag opened at i (after "{x"): index of the closer, skipping
 * string literals; srclen when unterminated. */
static size_t tag_end(const char *s, size_t n, size_t i, char close)
{
    while (i + 1 < n) {
        char ch = s[i];
        if (close != '#' && (ch == '\'' || ch == '"')) {
            i++;
            while (i < n && s[i] != ch) {
                if (s[i] == '\\' && i + 1 < n)
                    i++;
                i++;
            }
            i++;
            continue;
        }
        if (ch == close && s[i + 1] == '}')
            return i;
        i++;
    }
    return n;
}

static int is_ws(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' ||
           ch == '\v';
}

/* Is the block at [a,b) (inner text) exactly the word w (after trimming)? */
static int block_is(const char *s, size_t a, size_t b, const char *w)
{
    while (a < b && is_ws(s[a]))
        a++;
    while (b > a && is_ws(s[b - 1]))
        b--;
    return b - a == strlen(w) && memcmp(s + a, w, b - a) == 0;
}

static int scan(ctx *c, chunks *cs)
{
    const char *s = c->src;
    size_t n = c->srclen, i = 0, text_start = 0;
    int strip_next = 0; /* previous tag ended with "-" */
    for (;;) {
        size_t j = i;
        while (j + 1 < n && !(s[j] == '{' && (s[j + 1] == '{' || s[j + 1] == '%' ||
                                               s[j + 1] == '#')))
            j++;
        if (j + 1 >= n)
            j = n;
        /* text [text_start, j) */
        size_t ta = text_start, tb = j;
        if (strip_next)
            while (ta < tb && is_ws(s[ta]))
                ta++;
        if (j == n) {
            if (ta < tb && chunk_add(c, cs, C_TEXT, ta, tb))
                return -1;
            return 0;
        }
        char kind = s[j + 1];
        char close = kind == '{' ? '}' : kind;
        size_t in = j + 2;
        int lstrip_off = 0;
        if (in < n && s[in] == '-') {
            while (tb > ta && is_ws(s[tb - 1]))
                tb--;
            in++;
        } else if (in < n && s[in] == '+' && kind != '{') {
            lstrip_off = 1;
            in++;
        } else if (kind != '{') { /* lstrip_blocks */
            size_t k = tb;
            while (k > ta && (s[k - 1] == ' ' || s[k - 1] == '\t'))
                k--;
            if ((k > ta && s[k - 1] == '\n') ||
                (k == ta && (text_start == 0 || s[text_start - 1] == '\n') &&
                 ta == text_start))
                tb = k;
        }
        (void)lstrip_off;
        size_t e = tag_end(s, n, in, close);
        if (e >= n) {
            fail(c, j, "unterminated '{%c' tag", kind);
            return -1;
        }
        size_t ib = e;
        int strip = 0;
        if (ib > in && s[ib - 1] == '-') {
            strip = 1;
            ib--;
        } else if (ib > in && s[ib - 1] == '+' && kind != '{') {
            ib--;
        }
        if (ta < tb && chunk_add(c, cs, C_TEXT, ta, tb))
            return -1;
        i = e + 2;
        if (kind != '#' && chunk_add(c, cs, kind == '{' ? C_VAR : C_BLOCK, in, ib))
            return -1;
        if (!strip && kind != '{' && !(e > in && s[e - 1] == '+')) { /* trim_blocks */
            if (i < n && s[i] == '\n')
                i++;
            else if (i + 1 < n && s[i] == '\r' && s[i + 1] == '\n')
                i += 2;
        }
        strip_next = strip;
        if (kind == '%' && block_is(s, in, ib, "raw")) {
            /* verbatim up to {% endraw %} */
            size_t k = i;
            for (;;) {
                while (k + 1 < n && !(s[k] == '{' && s[k + 1] == '%'))
                    k++;
                if (k + 1 >= n) {
                    fail(c, j, "'raw' without 'endraw'");
                    return -1;
                }
                size_t ri = k + 2;
                int rminus = ri < n && s[ri] == '-';
                size_t re = tag_end(s, n, ri + rminus, '%');
                if (re < n) {
                    size_t rb = re;
                    int rs = rb > ri && s[rb - 1] == '-';
                    if (block_is(s, ri + rminus, rb - rs, "endraw")) {
                        size_t ta2 = i, tb2 = k;
                        if (strip)
                            while (ta2 < tb2 && is_ws(s[ta2]))
                                ta2++;
                        if (rminus)
                            while (tb2 > ta2 && is_ws(s[tb2 - 1]))
                                tb2--;
                        /* the raw block itself is not a chunk */
                        cs->n--;
                        if (ta2 < tb2 && chunk_add(c, cs, C_TEXT, ta2, tb2))
                            return -1;
                        i = re + 2;
                        if (!rs && i < n && s[i] == '\n')
                            i++;
                        strip_next = rs;
                        break;
                    }
                }
                k += 2;
            }
        }
        text_start = i;
    }
}

/* ----------------------------------------------------- tag tokens, parser */

enum { T_END, T_NAME, T_INT, T_FLOAT, T_STR, T_OP };

typedef struct tok {
    int t;
    size_t pos, n;       /* source span */
    const char *s;       /* T_NAME / T_OP: source; T_STR: decoded */
    size_t sn;           /* decoded length */
    long long i;
    double f;
} tok;

typedef struct parser {
    ctx *c;
    tok *t;
    int n, i;
    int depth; /* unary / not chains */
    int nest;  /* p_expr nesting */
} parser;

static int put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 63));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 63));
        o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 63));
    o[2] = (char)(0x80 | (cp >> 6 & 63));
    o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

static int hexval(const char *s, int n, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < n; i++) {
        char ch = s[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 0;
}

static int lex(ctx *c, size_t a, size_t b, tok **out, int *nout)
{
    const char *s = c->src;
    int cap = 16, n = 0;
    tok *v = amalloc(c, (size_t)cap * sizeof *v);
    if (!v)
        return -1;
    size_t i = a;
    for (;;) {
        while (i < b && is_ws(s[i]))
            i++;
        if (n + 1 >= cap) {
            tok *nv = amalloc(c, (size_t)cap * 2 * sizeof *nv);
            if (!nv)
                return -1;
            memcpy(nv, v, (size_t)n * sizeof *nv);
            v = nv;
            cap *= 2;
        }
        tok *t = &v[n];
        memset(t, 0, sizeof *t);
        t->pos = i;
        if (i >= b) {
            t->t = T_END;
            n++;
            break;
        }
        char ch = s[i];
        if (isalpha((unsigned char)ch) || ch == '_') {
            size_t j = i;
            while (j < b && (isalnum((unsigned char)s[j]) || s[j] == '_'))
                j++;
            t->t = T_NAME;
            t->s = s + i;
            t->n = j - i;
            i = j;
        } else if (isdigit((unsigned char)ch)) {
            size_t j = i;
            int isf = 0;
            while (j < b && (isdigit((unsigned char)s[j]) || s[j] == '_'))
                j++;
            if (j + 1 < b && s[j] == '.' && isdigit((unsigned char)s[j + 1])) {
                isf = 1;
                j++;
                while (j < b && isdigit((unsigned char)s[j]))
                    j++;
            }
            if (j < b && (s[j] == 'e' || s[j] == 'E')) {
                size_t k = j + 1;
                if (k < b && (s[k] == '+' || s[k] == '-'))
                    k++;
                if (k < b && isdigit((unsigned char)s[k])) {
                    isf = 1;
                    j = k;
                    while (j < b && isdigit((unsigned char)s[j]))
                        j++;
                }
            }
            char buf[64];
            size_t m = 0;
            for (size_t k = i; k < j && m + 1 < sizeof buf; k++)
                if (s[k] != '_')
                    buf[m++] = s[k];
            buf[m] = 0;
            if (isf) {
                t->t = T_FLOAT;
                t->f = strtod(buf, NULL);
            } else {
                t->t = T_INT;
                errno = 0;
                t->i = strtoll(buf, NULL, 10);
                if (errno) {
                    fail(c, i, "integer literal out of range");
                    return -1;
                }
            }
            t->n = j - i;
            i = j;
        } else if (ch == '\'' || ch == '"') {
            size_t j = i + 1;
            char *o = amalloc(c, b - i + 1);
            size_t m = 0;
            if (!o)
                return -1;
            while (j < b && s[j] != ch) {
                if (s[j] == '\\' && j + 1 < b) {
                    char e = s[j + 1];
                    unsigned cp;
                    j += 2;
                    switch (e) {
                    case 'n': o[m++] = '\n'; break;
                    case 't': o[m++] = '\t'; break;
                    case 'r': o[m++] = '\r'; break;
                    case '0': o[m++] = '\0'; break;
                    case 'a': o[m++] = '\a'; break;
                    case 'b': o[m++] = '\b'; break;
                    case 'f': o[m++] = '\f'; break;
                    case 'v': o[m++] = '\v'; break;
                    case '\\': case '\'': case '"': o[m++] = e; break;
                    case '\n': break;
                    case 'x': case 'u': case 'U': {
                        int k = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                        if (j + (size_t)k > b || hexval(s + j, k, &cp) || cp > 0x10FFFF ||
                            (cp >= 0xD800 && cp < 0xE000)) {
                            fail(c, j - 2, "bad \\%c escape in string literal", e);
                            return -1;
                        }
                        j += (size_t)k;
                        m += (size_t)put_utf8(o + m, cp);
                        break;
                    }
                    default: /* Python keeps unknown escapes as written */
                        o[m++] = '\\';
                        o[m++] = e;
                    }
                } else {
                    o[m++] = s[j++];
                }
            }
            if (j >= b) {
                fail(c, i, "unterminated string literal");
                return -1;
            }
            t->t = T_STR;
            t->s = o;
            t->sn = m;
            t->n = j + 1 - i;
            i = j + 1;
        } else {
            static const char *const ops[] = {
                "//", "**", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}",
                ".", ",", ":", "|", "~", "+", "-", "*", "/", "%", "<", ">", "=",
                NULL};
            int k;
            for (k = 0; ops[k]; k++) {
                size_t l = strlen(ops[k]);
                if (i + l <= b && memcmp(s + i, ops[k], l) == 0)
                    break;
            }
            if (!ops[k]) {
                fail(c, i, "unexpected character '%c'", ch);
                return -1;
            }
            t->t = T_OP;
            t->s = s + i;
            t->n = strlen(ops[k]);
            i += t->n;
        }
        n++;
    }
    *out = v;
    *nout = n;
    return 0;
}

static tok *pk(parser *p) { return &p->t[p->i]; }

static int is_op(const tok *t, const char *op)
{
    return t->t == T_OP && t->n == strlen(op) && memcmp(t->s, op, t->n) == 0;
}

static int is_name(const tok *t, const char *w)
{
    return t->t == T_NAME && t->n == strlen(w) && memcmp(t->s, w, t->n) == 0;
}

static int accept_op(parser *p, const char *op)
{
    if (is_op(pk(p), op)) {
        p->i++;
        return 1;
    }
    return 0;
}

static int accept_name(parser *p, const char *w)
{
    if (is_name(pk(p), w)) {
        p->i++;
        return 1;
    }
    return 0;
}

/* Source text of a token for messages: at most 40 bytes, then "...". */
static const char *tok_text(parser *p, const tok *t)
{
    size_t n = t->n > 40 ? 40 : t->n;
    char *s = amalloc(p->c, n + 4);
    if (s) {
        memcpy(s, p->c->src + t->pos, n);
        if (n < t->n)
            memcpy(s + n, "...", 3);
    }
    return s ? s : "";
}

static int expect_op(parser *p, const char *op)
{
    if (accept_op(p, op))
        return 0;
    tok *t = pk(p);
    fail(p->c, t->pos, "expected '%s', got %s%s%s", op,
         t->t == T_END ? "end of tag" : "'", t->t == T_END ? "" : tok_text(p, t),
         t->t == T_END ? "" : "'");
    return -1;
}

static const char *name_str(parser *p)
{
    tok *t = pk(p);
    if (t->t != T_NAME) {
        fail(p->c, t->pos, "expected a name");
        return NULL;
    }
    p->i++;
    char *s = amalloc(p->c, t->n + 1);
    if (s)
        memcpy(s, t->s, t->n);
    return s;
}

static expr *ex_new(parser *p, int k, size_t pos)
{
    expr *e = amalloc(p->c, sizeof *e);
    if (e) {
        e->k = k;
        e->pos = pos;
    }
    return e;
}

/* Sets e's height from its children; NULL (failed) beyond DT_CT_MAX_EXPR,
 * which bounds the evaluator's recursion on long chains like a+b+c+... */
static expr *height(parser *p, expr *e)
{
    if (!e)
        return NULL;
    int h = 0;
    const expr *ch[3] = {e->a, e->b, e->c};
    for (int k = 0; k < 3; k++)
        if (ch[k] && ch[k]->h > h)
            h = ch[k]->h;
    for (int k = 0; k < e->nargs; k++) {
        if (e->args && e->args[k] && e->args[k]->h > h)
            h = e->args[k]->h;
        if (e->keys && e->keys[k] && e->keys[k]->h > h)
            h = e->keys[k]->h;
    }
    if (e->k == E_SLICE && e->args[0] && e->args[0]->h > h)
        h = e->args[0]->h;
    e->h = h + 1;
    if (e->h > DT_CT_MAX_EXPR) {
        fail(p->c, e->pos, "expression deeper than %d levels", DT_CT_MAX_EXPR);
        return NULL;
    }
    return e;
}

static expr *p_expr(parser *p);
static expr *p_or(parser *p);

/* Call arguments after "(": positional and name=value. */
static int p_args(parser *p, expr *e)
{
    int cap = 4;
    e->args = amalloc(p->c, (size_t)cap * sizeof *e->args);
    e->kw = amalloc(p->c, (size_t)cap * sizeof *e->kw);
    if (!e->args || !e->kw)
        return -1;
    while (!accept_op(p, ")")) {
        if (e->nargs && expect_op(p, ","))
            return -1;
        if (accept_op(p, ")"))
            break;
        if (e->nargs == cap) {
            expr **na = amalloc(p->c, (size_t)cap * 2 * sizeof *na);
            const char **nk = amalloc(p->c, (size_t)cap * 2 * sizeof *nk);
            if (!na || !nk)
                return -1;
            memcpy(na, e->args, (size_t)cap * sizeof *na);
            memcpy(nk, e->kw, (size_t)cap * sizeof *nk);
            e->args = na;
            e->kw = nk;
            cap *= 2;
        }
        const char *kw = NULL;
        if (pk(p)->t == T_NAME && is_op(&p->t[p->i + 1], "=")) {
            kw = name_str(p);
            p->i++;
        }
        expr *a = p_expr(p);
        if (!a)
            return -1;
        e->kw[e->nargs] = kw;
        e->args[e->nargs++] = a;
    }
    return 0;
}

static expr *p_primary(parser *p)
{
    tok *t = pk(p);
    expr *e;
    switch (t->t) {
    case T_INT:
    case T_FLOAT:
        p->i++;
        if (!(e = ex_new(p, E_LIT, t->pos)))
            return NULL;
        e->lit = t->t == T_INT ? mk_int(t->i) : mk_float(t->f);
        break;
    case T_STR:
        p->i++;
        if (!(e = ex_new(p, E_LIT, t->pos)))
            return NULL;
        e->lit = mk_str(t->s, NULL, t->sn);
        /* adjacent literals concatenate */
        while (pk(p)->t == T_STR) {
            tok *u = pk(p);
            char *s = amalloc(p->c, e->lit.u.s.n + u->sn + 1);
            if (!s)
                return NULL;
            memcpy(s, e->lit.u.s.s, e->lit.u.s.n);
            memcpy(s + e->lit.u.s.n, u->s, u->sn);
            e->lit = mk_str(s, NULL, e->lit.u.s.n + u->sn);
            p->i++;
        }
        break;
    case T_NAME:
        p->i++;
        if (!(e = ex_new(p, E_LIT, t->pos)))
            return NULL;
        if (is_name(t, "true") || is_name(t, "True"))
            e->lit = mk_bool(1);
        else if (is_name(t, "false") || is_name(t, "False"))
            e->lit = mk_bool(0);
        else if (is_name(t, "none") || is_name(t, "None"))
            e->lit = mk_none();
        else {
            e->k = E_NAME;
            char *s = amalloc(p->c, t->n + 1);
            if (!s)
                return NULL;
            memcpy(s, t->s, t->n);
            e->name = s;
        }
        break;
    case T_OP:
        if (accept_op(p, "(")) {
            e = p_expr(p);
            if (!e)
                return NULL;
            if (is_op(pk(p), ",")) { /* tuple: a list here */
                expr *l = ex_new(p, E_LIST, t->pos);
                if (!l)
                    return NULL;
                l->args = amalloc(p->c, 64 * sizeof *l->args);
                if (!l->args)
                    return NULL;
                l->args[l->nargs++] = e;
                while (accept_op(p, ",") && !is_op(pk(p), ")")) {
                    if (l->nargs == 64) {
                        fail(p->c, t->pos, "tuple longer than 64 items");
                        return NULL;
                    }
                    if (!(l->args[l->nargs++] = p_expr(p)))
                        return NULL;
                }
                e = l;
            }
            if (expect_op(p, ")"))
                return NULL;
            break;
        }
        if (accept_op(p, "[")) {
            if (!(e = ex_new(p, E_LIST, t->pos)))
                return NULL;
            int cap = 0;
            while (!accept_op(p, "]")) {
                if (e->nargs && expect_op(p, ","))
                    return NULL;
                if (accept_op(p, "]"))
                    break;
                if (e->nargs == cap) {
                    cap = cap ? cap * 2 : 8;
                    expr **na = amalloc(p->c, (size_t)cap * sizeof *na);
                    if (!na)
                        return NULL;
                    if (e->nargs)
                        memcpy(na, e->args, (size_t)e->nargs * sizeof *na);
                    e->args = na;
                }
                if (!(e->args[e->nargs++] = p_expr(p)))
                    return NULL;
            }
            break;
        }
        if (accept_op(p, "{")) {
            if (!(e = ex_new(p, E_DICT, t->pos)))
                return NULL;
            int cap = 0;
            while (!accept_op(p, "}")) {
                if (e->nargs && expect_op(p, ","))
                    return NULL;
                if (accept_op(p, "}"))
                    break;
                if (e->nargs == cap) {
                    cap = cap ? cap * 2 : 8;
                    expr **na = amalloc(p->c, (size_t)cap * sizeof *na);
                    expr **nk = amalloc(p->c, (size_t)cap * sizeof *nk);
                    if (!na || !nk)
                        return NULL;
                    if (e->nargs) {
                        memcpy(na, e->args, (size_t)e->nargs * sizeof *na);
                        memcpy(nk, e->keys, (size_t)e->nargs * sizeof *nk);
                    }
                    e->args = na;
                    e->keys = nk;
                }
                if (!(e->keys[e->nargs] = p_expr(p)) || expect_op(p, ":") ||
                    !(e->args[e->nargs] = p_expr(p)))
                    return NULL;
                e->nargs++;
            }
            break;
        }
        /* fall through */
    default:
        fail(p->c, t->pos, "unexpected %s%s%s in expression",
             t->t == T_END ? "end of tag" : "'", t->t == T_END ? "" : tok_text(p, t),
             t->t == T_END ? "" : "'");
        return NULL;
    }
    return height(p, e);
}

static expr *p_filters(parser *p, expr *e);

static expr *p_postfix(parser *p, expr *e)
{
    for (;;) {
        tok *t = pk(p);
        if (accept_op(p, ".")) {
            expr *a = ex_new(p, E_ATTR, t->pos);
            if (!a)
                return NULL;
            a->a = e;
            tok *nt = pk(p);
            if (nt->t == T_INT) { /* x.0 */
                p->i++;
                a->k = E_INDEX;
                if (!(a->b = ex_new(p, E_LIT, nt->pos)))
                    return NULL;
                a->b->lit = mk_int(nt->i);
            } else if (!(a->name = name_str(p))) {
                return NULL;
            }
            if (!(e = height(p, a)))
                return NULL;
        } else if (accept_op(p, "[")) {
            expr *x = ex_new(p, E_INDEX, t->pos), *parts[3] = {0};
            int k = 0, slice = 0;
            if (!x)
                return NULL;
            for (;;) {
                if (!is_op(pk(p), ":") && !is_op(pk(p), "]") &&
                    !(parts[k] = p_expr(p)))
                    return NULL;
                if (k < 2 && accept_op(p, ":")) {
                    slice = 1;
                    k++;
                    continue;
                }
                break;
            }
            if (expect_op(p, "]"))
                return NULL;
            x->a = e;
            if (slice) {
                x->k = E_SLICE;
                x->b = parts[0];
                x->c = parts[1];
                x->args = amalloc(p->c, sizeof *x->args);
                if (!x->args)
                    return NULL;
                x->args[0] = parts[2];
            } else {
                if (!parts[0]) {
                    fail(p->c, t->pos, "empty subscript");
                    return NULL;
                }
                x->b = parts[0];
            }
            if (!(e = height(p, x)))
                return NULL;
        } else if (accept_op(p, "(")) {
            expr *x = ex_new(p, E_CALL, t->pos);
            if (!x)
                return NULL;
            x->a = e;
            if (p_args(p, x) || !(e = height(p, x)))
                return NULL;
        } else {
            return e;
        }
    }
}

static expr *p_unary(parser *p)
{
    tok *t = pk(p);
    expr *e;
    if (accept_op(p, "-") || accept_op(p, "+")) {
        int neg = t->s[0] == '-';
        if (++p->depth > DT_CT_MAX_EXPR) {
            fail(p->c, t->pos, "expression deeper than %d levels", DT_CT_MAX_EXPR);
            return NULL;
        }
        expr *x = p_unary(p);
        p->depth--;
        if (!x)
            return NULL;
        if (!neg)
            return x;
        if (!(e = ex_new(p, E_NEG, t->pos)))
            return NULL;
        e->a = x;
        return p_filters(p, height(p, e));
    }
    if (!(e = p_primary(p)) || !(e = p_postfix(p, e)))
        return NULL;
    return p_filters(p, e);
}

/* "| name(args)" filters and "is [not] name(args)" tests. */
static expr *p_filters(parser *p, expr *e)
{
    for (;;) {
        tok *t = pk(p);
        if (accept_op(p, "|")) {
            expr *f = ex_new(p, E_FILTER, t->pos);
            if (!f || !(f->name = name_str(p)))
                return NULL;
            f->a = e;
            if ((accept_op(p, "(") && p_args(p, f)) || !(e = height(p, f)))
                return NULL;
        } else if (accept_name(p, "is")) {
            expr *f = ex_new(p, E_TEST, t->pos);
            if (!f)
                return NULL;
            f->neg = accept_name(p, "not");
            tok *nt = pk(p);
            if (nt->t == T_NAME) {
                if (!(f->name = name_str(p)))
                    return NULL;
                if (is_name(nt, "none") || is_name(nt, "true") || is_name(nt, "false")) {
                    /* keep the name */
                }
            } else if (nt->t == T_OP && (is_op(nt, "==") || is_op(nt, "!=") ||
                                         is_op(nt, "<") || is_op(nt, ">"))) {
                f->name = tok_text(p, nt);
                p->i++;
            } else {
                fail(p->c, nt->pos, "expected a test name after 'is'");
                return NULL;
            }
            f->a = e;
            if (accept_op(p, "(")) {
                if (p_args(p, f))
                    return NULL;
            } else {
                tok *at = pk(p);
                /* "is divisibleby 3", "is equalto 'x'": one bare argument */
                if (at->t == T_STR || at->t == T_INT || at->t == T_FLOAT ||
                    (at->t == T_NAME && !is_name(at, "and") && !is_name(at, "or") &&
                     !is_name(at, "else") && !is_name(at, "if") &&
                     !is_name(at, "is") && !is_name(at, "in") && !is_name(at, "not"))) {
                    f->args = amalloc(p->c, sizeof *f->args);
                    f->kw = amalloc(p->c, sizeof *f->kw);
                    if (!f->args || !f->kw || !(f->args[0] = p_primary(p)))
                        return NULL;
                    f->nargs = 1;
                }
            }
            if (!(e = height(p, f)))
                return NULL;
        } else {
            return e;
        }
    }
}

static expr *bin(parser *p, int k, int op, size_t pos, expr *a, expr *b)
{
    expr *e = ex_new(p, k, pos);
    if (!e || !a || !b)
        return NULL;
    e->op = op;
    e->a = a;
    e->b = b;
    return height(p, e);
}

static expr *p_pow(parser *p)
{
    expr *e = p_unary(p);
    while (e && is_op(pk(p), "**")) {
        size_t pos = pk(p)->pos;
        p->i++;
        e = bin(p, E_BIN, OP_POW, pos, e, p_unary(p));
    }
    return e;
}

static expr *p_mul(parser *p)
{
    expr *e = p_pow(p);
    for (;;) {
        tok *t = pk(p);
        int op = is_op(t, "*") ? OP_MUL : is_op(t, "/") ? OP_DIV
                 : is_op(t, "//") ? OP_FDIV : is_op(t, "%") ? OP_MOD : -1;
        if (!e || op < 0)
            return e;
        p->i++;
        e = bin(p, E_BIN, op, t->pos, e, p_pow(p));
    }
}

static expr *p_cat(parser *p)
{
    expr *e = p_mul(p);
    while (e && is_op(pk(p), "~")) {
        size_t pos = pk(p)->pos;
        p->i++;
        e = bin(p, E_BIN, OP_CAT, pos, e, p_mul(p));
    }
    return e;
}

static expr *p_add(parser *p)
{
    expr *e = p_cat(p);
    for (;;) {
        tok *t = pk(p);
        int op = is_op(t, "+") ? OP_ADD : is_op(t, "-") ? OP_SUB : -1;
        if (!e || op < 0)
            return e;
        p->i++;
        e = bin(p, E_BIN, op, t->pos, e, p_cat(p));
    }
}

static expr *p_cmp(parser *p)
{
    expr *e = p_add(p);
    expr *chain = NULL;
    for (;;) {
        tok *t = pk(p);
        int op = is_op(t, "==") ? OP_EQ : is_op(t, "!=") ? OP_NE
                 : is_op(t, "<") ? OP_LT : is_op(t, "<=") ? OP_LE
                 : is_op(t, ">") ? OP_GT : is_op(t, ">=") ? OP_GE
                 : is_name(t, "in") ? OP_IN
                 : (is_name(t, "not") && is_name(&p->t[p->i + 1], "in")) ? OP_NOTIN : -1;
        if (!e || op < 0)
            break;
        p->i += op == OP_NOTIN ? 2 : 1;
        expr *rhs = p_add(p);
        /* a < b < c is (a < b) and (b < c) */
        expr *lhs = chain ? chain->b : e;
        expr *cmp = bin(p, E_CMP, op, t->pos, lhs, rhs);
        if (!cmp)
            return NULL;
        if (!chain) {
            e = cmp;
        } else {
            e = bin(p, E_AND, 0, t->pos, e, cmp);
        }
        chain = cmp;
    }
    return e;
}

static expr *p_not(parser *p)
{
    tok *t = pk(p);
    if (accept_name(p, "not")) {
        if (++p->depth > DT_CT_MAX_EXPR) {
            fail(p->c, t->pos, "expression deeper than %d levels", DT_CT_MAX_EXPR);
            return NULL;
        }
        expr *e = ex_new(p, E_NOT, t->pos);
        if (!e || !(e->a = p_not(p)))
            return NULL;
        p->depth--;
        return height(p, e);
    }
    return p_cmp(p);
}

static expr *p_and(parser *p)
{
    expr *e = p_not(p);
    while (e && is_name(pk(p), "and")) {
        size_t pos = pk(p)->pos;
        p->i++;
        e = bin(p, E_AND, 0, pos, e, p_not(p));
    }
    return e;
}

static expr *p_or(parser *p)
{
    expr *e = p_and(p);
    while (e && is_name(pk(p), "or")) {
        size_t pos = pk(p)->pos;
        p->i++;
        e = bin(p, E_OR, 0, pos, e, p_and(p));
    }
    return e;
}

/* a if cond else b (else optional: undefined) */
static expr *p_cond(parser *p);

/* Every bracketed or argument expression comes through here: the nesting
 * limit bounds the parser's recursion. */
static expr *p_expr(parser *p)
{
    if (++p->nest > DT_CT_MAX_NEST) {
        fail(p->c, pk(p)->pos, "expression nested deeper than %d", DT_CT_MAX_NEST);
        return NULL;
    }
    expr *e = p_cond(p);
    p->nest--;
    return e;
}

static expr *p_cond(parser *p)
{
    expr *e = p_or(p);
    while (e && is_name(pk(p), "if")) {
        size_t pos = pk(p)->pos;
        p->i++;
        expr *x = ex_new(p, E_COND, pos);
        if (!x || !(x->b = p_or(p)))
            return NULL;
        x->a = e;
        if (accept_name(p, "else") && !(x->c = p_expr(p)))
            return NULL;
        if (!(e = height(p, x)))
            return NULL;
    }
    return e;
}

/* ------------------------------------------------------------- statements */

typedef struct sparser {
    ctx *c;
    chunks *cs;
    int i;
    int depth;
} sparser;

/* Tokens of block chunk i, positioned after the keyword. */
static int block_tokens(sparser *sp, int i, parser *p)
{
    memset(p, 0, sizeof *p);
    p->c = sp->c;
    return lex(sp->c, sp->cs->v[i].a, sp->cs->v[i].b, &p->t, &p->n);
}

static int end_of_tag(parser *p)
{
    tok *t = pk(p);
    if (t->t == T_END)
        return 0;
    fail(p->c, t->pos, "unexpected '%s' at the end of the tag", tok_text(p, t));
    return -1;
}

static node *nd_new(sparser *sp, int k, size_t pos)
{
    node *n = amalloc(sp->c, sizeof *n);
    if (n) {
        n->k = k;
        n->pos = pos;
    }
    return n;
}

/* Parses statements up to a block whose keyword is in stop (NULL-terminated);
 * *which gets its index (-1 at the end of the template). The stop block's
 * parser is left in *sp_p positioned after the keyword. */
static int parse_body(sparser *sp, const char *const *stop, int *which, parser *stop_p,
                      node **out);

static int parse_block(sparser *sp, parser *p, node **out)
{
    ctx *c = sp->c;
    tok *kw = pk(p);
    size_t pos = kw->pos;
    node *n = NULL;
    if (kw->t != T_NAME) {
        fail(c, pos, "expected a statement keyword");
        return -1;
    }
    p->i++;
    if (++sp->depth > DT_CT_MAX_NEST) {
        fail(c, pos, "statements nested deeper than %d", DT_CT_MAX_NEST);
        return -1;
    }
    if (is_name(kw, "if")) {
        static const char *const stop[] = {"elif", "else", "endif", NULL};
        int which;
        parser q;
        if (!(n = nd_new(sp, N_IF, pos)) || !(n->e = p_expr(p)) || end_of_tag(p) ||
            parse_body(sp, stop, &which, &q, &n->body))
            return -1;
        node *cur = n;
        while (which == 0) { /* elif */
            node *m = nd_new(sp, N_IF, q.t[0].pos);
            if (!m || !(m->e = p_expr(&q)) || end_of_tag(&q) ||
                parse_body(sp, stop, &which, &q, &m->body))
                return -1;
            cur->els = m;
            cur = m;
        }
        if (which == 1) {
            static const char *const stop2[] = {"endif", NULL};
            if (end_of_tag(&q) || parse_body(sp, stop2, &which, &q, &cur->els))
                return -1;
        }
        if (end_of_tag(&q))
            return -1;
    } else if (is_name(kw, "for")) {
        static const char *const stop[] = {"else", "endfor", NULL};
        int which;
        parser q;
        if (!(n = nd_new(sp, N_FOR, pos)) || !(n->names[0] = name_str(p)))
            return -1;
        n->nnames = 1;
        if (accept_op(p, ",")) {
            if (!(n->names[1] = name_str(p)))
                return -1;
            n->nnames = 2;
        }
        if (!accept_name(p, "in")) {
            fail(c, pk(p)->pos, "expected 'in' in for loop");
            return -1;
        }
        if (!(n->e = p_or(p)))
            return -1;
        if (accept_name(p, "if") && !(n->filt = p_or(p)))
            return -1;
        if (is_name(pk(p), "recursive")) {
            fail(c, pk(p)->pos, "unsupported: recursive for loops");
            return -1;
        }
        if (end_of_tag(p) || parse_body(sp, stop, &which, &q, &n->body) ||
            end_of_tag(&q))
            return -1;
        if (which == 0) {
            static const char *const stop2[] = {"endfor", NULL};
            if (parse_body(sp, stop2, &which, &q, &n->els) || end_of_tag(&q))
                return -1;
        }
    } else if (is_name(kw, "set")) {
        if (!(n = nd_new(sp, N_SET, pos)) || !(n->names[0] = name_str(p)))
            return -1;
        n->nnames = 1;
        if (accept_op(p, ".")) {
            if (!(n->names[1] = name_str(p)))
                return -1;
            n->nnames = 2;
        }
        if (is_op(pk(p), ",")) {
            fail(c, pk(p)->pos, "unsupported: set with several targets");
            return -1;
        }
        if (accept_op(p, "=")) {
            if (!(n->e = p_expr(p)) || end_of_tag(p))
                return -1;
        } else {
            static const char *const stop[] = {"endset", NULL};
            int which;
            parser q;
            if (is_op(pk(p), "|")) {
                fail(c, pk(p)->pos, "unsupported: filtered set block");
                return -1;
            }
            n->k = N_SETBLOCK;
            if (end_of_tag(p) || parse_body(sp, stop, &which, &q, &n->body) ||
                end_of_tag(&q))
                return -1;
        }
    } else if (is_name(kw, "macro")) {
        static const char *const stop[] = {"endmacro", NULL};
        int which, cap = 16;
        parser q;
        if (!(n = nd_new(sp, N_MACRO, pos)) || !(n->names[0] = name_str(p)) ||
            expect_op(p, "("))
            return -1;
        n->params = amalloc(c, (size_t)cap * sizeof *n->params);
        n->defaults = amalloc(c, (size_t)cap * sizeof *n->defaults);
        if (!n->params || !n->defaults)
            return -1;
        while (!accept_op(p, ")")) {
            if (n->nparams && expect_op(p, ","))
                return -1;
            if (n->nparams == cap) {
                fail(c, pk(p)->pos, "macro with more than %d parameters", cap);
                return -1;
            }
            if (!(n->params[n->nparams] = name_str(p)))
                return -1;
            if (accept_op(p, "=") && !(n->defaults[n->nparams] = p_expr(p)))
                return -1;
            n->nparams++;
        }
        if (end_of_tag(p) || parse_body(sp, stop, &which, &q, &n->body))
            return -1;
        if (pk(&q)->t == T_NAME)
            q.i++; /* {% endmacro name %} */
        if (end_of_tag(&q))
            return -1;
    } else if (is_name(kw, "generation")) {
        static const char *const stop[] = {"endgeneration", NULL};
        int which;
        parser q;
        if (!(n = nd_new(sp, N_GEN, pos)) || end_of_tag(p) ||
            parse_body(sp, stop, &which, &q, &n->body) || end_of_tag(&q))
            return -1;
    } else if (is_name(kw, "break") || is_name(kw, "continue")) {
        if (!(n = nd_new(sp, is_name(kw, "break") ? N_BREAK : N_CONT, pos)) ||
            end_of_tag(p))
            return -1;
    } else {
        fail(c, pos, "unsupported statement '%s'", tok_text(p, kw));
        return -1;
    }
    sp->depth--;
    *out = n;
    return 0;
}

static int parse_body(sparser *sp, const char *const *stop, int *which, parser *stop_p,
                      node **out)
{
    ctx *c = sp->c;
    node *head = NULL, **tail = &head;
    *which = -1;
    while (sp->i < sp->cs->n) {
        chunk *ch = &sp->cs->v[sp->i];
        node *n = NULL;
        if (ch->k == C_TEXT) {
            if (!(n = nd_new(sp, N_TEXT, ch->a)))
                return -1;
            n->s = c->src + ch->a;
            n->n = ch->b - ch->a;
            sp->i++;
        } else if (ch->k == C_VAR) {
            parser p;
            if (block_tokens(sp, sp->i, &p) || !(n = nd_new(sp, N_OUT, ch->a)) ||
                !(n->e = p_expr(&p)) || end_of_tag(&p))
                return -1;
            sp->i++;
        } else {
            parser p;
            if (block_tokens(sp, sp->i, &p))
                return -1;
            tok *kw = pk(&p);
            for (int k = 0; stop && stop[k]; k++)
                if (is_name(kw, stop[k])) {
                    p.i++;
                    *stop_p = p;
                    *which = k;
                    sp->i++;
                    *out = head;
                    return 0;
                }
            if (kw->t == T_NAME && (is_name(kw, "endif") || is_name(kw, "endfor") ||
                                    is_name(kw, "else") || is_name(kw, "elif") ||
                                    is_name(kw, "endset") || is_name(kw, "endmacro") ||
                                    is_name(kw, "endgeneration"))) {
                fail(c, kw->pos, "unexpected '%s'", tok_text(&p, kw));
                return -1;
            }
            sp->i++;
            if (parse_block(sp, &p, &n))
                return -1;
        }
        *tail = n;
        tail = &n->next;
    }
    if (stop) {
        fail(c, c->srclen, "missing '%s' at the end of the template", stop[0]);
        /* name the innermost expected end tag */
        for (int k = 0; stop[k]; k++)
            if (strncmp(stop[k], "end", 3) == 0) {
                c->failed = 0;
                fail(c, c->srclen, "missing '{%% %s %%}' at the end of the template",
                     stop[k]);
                break;
            }
        return -1;
    }
    *out = head;
    return 0;
}

/* -------------------------------------------------------------- evaluator */

#define FAILED(c) ((c)->failed)

static const char *type_name(const val *v)
{
    static const char *const names[] = {"undefined", "none", "boolean", "integer",
                                        "float", "string", "list", "dict",
                                        "namespace", "loop", "macro", "function"};
    return names[v->t];
}

static int truthy(const val *v)
{
    switch (v->t) {
    case V_UNDEF: case V_NONE: return 0;
    case V_BOOL: return v->u.b;
    case V_INT: return v->u.i != 0;
    case V_FLOAT: return v->u.f != 0;
    case V_STR: return v->u.s.n > 0;
    case V_LIST: return v->u.l->n > 0;
    case V_DICT: return v->u.d->n > 0;
    default: return 1;
    }
}

/* Builds a tagged string from pieces. */
typedef struct sb {
    ctx *c;
    char *s;
    int32_t *tag;
    size_t n, cap;
    int tagged;
} sb;

static int sb_add(sb *b, const char *s, const int32_t *tag, size_t n)
{
    if (b->n + n > DT_CT_MAX_OUTPUT) {
        fail(b->c, 0, "a string grew beyond %u MiB", DT_CT_MAX_OUTPUT >> 20);
        return -1;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *ns = amalloc(b->c, cap);
        int32_t *nt = amalloc(b->c, cap * sizeof *nt);
        if (!ns || !nt)
            return -1;
        if (b->n) {
            memcpy(ns, b->s, b->n);
            memcpy(nt, b->tag, b->n * sizeof *nt);
        }
        b->s = ns;
        b->tag = nt;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    if (tag) {
        memcpy(b->tag + b->n, tag, n * sizeof *tag);
        b->tagged = 1;
    }
    b->n += n;
    return 0;
}

static int sb_str(sb *b, const char *s) { return sb_add(b, s, NULL, strlen(s)); }

static val sb_val(sb *b)
{
    if (FAILED(b->c))
        return mk_undef(NULL);
    if (!b->s)
        return mk_str("", NULL, 0);
    b->s[b->n] = 0;
    return mk_str(b->s, b->tagged ? b->tag : NULL, b->n);
}

static void fmt_float(double f, char *buf, size_t size)
{
    if (isnan(f)) {
        snprintf(buf, size, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, size, f < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, f);
        if (strtod(e, NULL) == f)
            break;
    }
    /* e: [-]d.ddde[+-]XX -> digits and exponent */
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    const char *q = e + neg;
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[nd++] = *q;
    int ex = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    char *o = buf;
    size_t left = size;
#define PUT(...) do { int w_ = snprintf(o, left, __VA_ARGS__); if (w_ < 0 || (size_t)w_ >= left) return; o += w_; left -= (size_t)w_; } while (0)
    if (neg)
        PUT("-");
    if (ex < -4 || ex >= 16) {
        PUT("%c", digits[0]);
        if (nd > 1)
            PUT(".%s", digits + 1);
        PUT("e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
    } else if (ex < 0) {
        PUT("0.");
        for (int i = -1; i > ex; i--)
            PUT("0");
        PUT("%s", digits);
    } else {
        for (int i = 0; i <= ex; i++)
            PUT("%c", i < nd ? digits[i] : '0');
        PUT(".");
        if (nd > ex + 1)
            PUT("%s", digits + ex + 1);
        else
            PUT("0");
    }
#undef PUT
}

static int sb_repr(sb *b, const val *v, int depth);

static int sb_print(sb *b, const val *v, int depth)
{
    char buf[64];
    switch (v->t) {
    case V_UNDEF: return 0;
    case V_NONE: return sb_str(b, "None");
    case V_BOOL: return sb_str(b, v->u.b ? "True" : "False");
    case V_INT:
        snprintf(buf, sizeof buf, "%lld", v->u.i);
        return sb_str(b, buf);
    case V_FLOAT:
        fmt_float(v->u.f, buf, sizeof buf);
        return sb_str(b, buf);
    case V_STR: return sb_add(b, v->u.s.s, v->u.s.tag, v->u.s.n);
    default: return sb_repr(b, v, depth);
    }
}

static int sb_repr(sb *b, const val *v, int depth)
{
    if (depth > DT_CT_MAX_DEPTH) {
        fail(b->c, 0, "value nested deeper than %d", DT_CT_MAX_DEPTH);
        return -1;
    }
    switch (v->t) {
    case V_STR: {
        const char *s = v->u.s.s;
        size_t n = v->u.s.n;
        char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
        char qs[2] = {q, 0};
        if (sb_str(b, qs))
            return -1;
        for (size_t i = 0; i < n; i++) {
            char esc[8] = {0};
            unsigned char ch = (unsigned char)s[i];
            if (ch == '\\' || ch == (unsigned char)q)
                snprintf(esc, sizeof esc, "\\%c", ch);
            else if (ch == '\n')
                snprintf(esc, sizeof esc, "\\n");
            else if (ch == '\r')
                snprintf(esc, sizeof esc, "\\r");
            else if (ch == '\t')
                snprintf(esc, sizeof esc, "\\t");
            else if (ch < 0x20 || ch == 0x7f)
                snprintf(esc, sizeof esc, "\\x%02x", ch);
            if (esc[0] ? sb_str(b, esc) : sb_add(b, s + i, v->u.s.tag ? v->u.s.tag + i : NULL, 1))
                return -1;
        }
        return sb_str(b, qs);
    }
    case V_LIST:
        if (sb_str(b, "["))
            return -1;
        for (size_t i = 0; i < v->u.l->n; i++)
            if ((i && sb_str(b, ", ")) || sb_repr(b, &v->u.l->v[i], depth + 1))
                return -1;
        return sb_str(b, "]");
    case V_DICT:
    case V_NS:
        if (sb_str(b, v->t == V_NS ? "<Namespace {" : "{"))
            return -1;
        for (size_t i = 0; i < v->u.d->n; i++)
            if ((i && sb_str(b, ", ")) || sb_repr(b, &v->u.d->k[i], depth + 1) ||
                sb_str(b, ": ") || sb_repr(b, &v->u.d->v[i], depth + 1))
                return -1;
        return sb_str(b, v->t == V_NS ? "}>" : "}");
    case V_LOOP: return sb_str(b, "<LoopContext>");
    case V_MACRO: return sb_str(b, "<Macro>");
    case V_FUNC: return sb_str(b, "<function>");
    default: return sb_print(b, v, depth);
    }
}

static val to_str(ctx *c, const val *v)
{
    if (v->t == V_STR)
        return *v;
    sb b = {.c = c};
    sb_print(&b, v, 0);
    return sb_val(&b);
}

/* json.dumps(x, ensure_ascii=False) with indent (< 0: none). */
static int sb_json(sb *b, const val *v, int indent, int level, size_t pos)
{
    char buf[64];
    if (level > DT_CT_MAX_DEPTH) {
        fail(b->c, pos, "tojson: value nested deeper than %d", DT_CT_MAX_DEPTH);
        return -1;
    }
    switch (v->t) {
    case V_NONE: return sb_str(b, "null");
    case V_BOOL: return sb_str(b, v->u.b ? "true" : "false");
    case V_INT:
        snprintf(buf, sizeof buf, "%lld", v->u.i);
        return sb_str(b, buf);
    case V_FLOAT:
        if (isnan(v->u.f))
            return sb_str(b, "NaN");
        if (isinf(v->u.f))
            return sb_str(b, v->u.f < 0 ? "-Infinity" : "Infinity");
        fmt_float(v->u.f, buf, sizeof buf);
        return sb_str(b, buf);
    case V_STR: {
        if (sb_str(b, "\""))
            return -1;
        for (size_t i = 0; i < v->u.s.n; i++) {
            unsigned char ch = (unsigned char)v->u.s.s[i];
            char esc[8] = {0};
            switch (ch) {
            case '"': strcpy(esc, "\\\""); break;
            case '\\': strcpy(esc, "\\\\"); break;
            case '\n': strcpy(esc, "\\n"); break;
            case '\r': strcpy(esc, "\\r"); break;
            case '\t': strcpy(esc, "\\t"); break;
            case '\b': strcpy(esc, "\\b"); break;
            case '\f': strcpy(esc, "\\f"); break;
            default:
                if (ch < 0x20)
                    snprintf(esc, sizeof esc, "\\u%04x", ch);
            }
            if (esc[0] ? sb_str(b, esc) : sb_add(b, v->u.s.s + i, NULL, 1))
                return -1;
        }
        return sb_str(b, "\"");
    }
    case V_LIST:
    case V_DICT:
    case V_NS: {
        int isl = v->t == V_LIST;
        size_t n = isl ? v->u.l->n : v->u.d->n;
        if (sb_str(b, isl ? "[" : "{"))
            return -1;
        if (n == 0)
            return sb_str(b, isl ? "]" : "}");
        for (size_t i = 0; i < n; i++) {
            if (i && sb_str(b, indent >= 0 ? "," : ", "))
                return -1;
            if (indent >= 0) {
                if (sb_str(b, "\n"))
                    return -1;
                for (int k = 0; k < indent * (level + 1); k++)
                    if (sb_str(b, " "))
                        return -1;
            }
            if (!isl) {
                if (v->u.d->k[i].t != V_STR) {
                    fail(b->c, pos, "tojson: dict keys must be strings");
                    return -1;
                }
                if (sb_json(b, &v->u.d->k[i], indent, level + 1, pos) || sb_str(b, ": "))
                    return -1;
            }
            if (sb_json(b, isl ? &v->u.l->v[i] : &v->u.d->v[i], indent, level + 1, pos))
                return -1;
        }
        if (indent >= 0) {
            if (sb_str(b, "\n"))
                return -1;
            for (int k = 0; k < indent * level; k++)
                if (sb_str(b, " "))
                    return -1;
        }
        return sb_str(b, isl ? "]" : "}");
    }
    default:
        fail(b->c, pos, "tojson: cannot serialise a %s", type_name(v));
        return -1;
    }
}

static int is_num(const val *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }
static double num(const val *v)
{
    return v->t == V_FLOAT ? v->u.f : v->t == V_INT ? (double)v->u.i : v->u.b;
}
static long long inum(const val *v) { return v->t == V_INT ? v->u.i : v->u.b; }

static int val_eq(const val *a, const val *b, int depth)
{
    if (depth > DT_CT_MAX_DEPTH)
        return 0;
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT)
            return inum(a) == inum(b);
        return num(a) == num(b);
    }
    if (a->t != b->t)
        return 0;
    switch (a->t) {
    case V_UNDEF: case V_NONE: return 1;
    case V_STR: return a->u.s.n == b->u.s.n && memcmp(a->u.s.s, b->u.s.s, a->u.s.n) == 0;
    case V_LIST:
        if (a->u.l->n != b->u.l->n)
            return 0;
        for (size_t i = 0; i < a->u.l->n; i++)
            if (!val_eq(&a->u.l->v[i], &b->u.l->v[i], depth + 1))
                return 0;
        return 1;
    case V_DICT:
        if (a->u.d->n != b->u.d->n)
            return 0;
        for (size_t i = 0; i < a->u.d->n; i++) {
            const val *k = &a->u.d->k[i];
            val *o = dict_find(b->u.d, k->u.s.s, k->u.s.n);
            if (!o || !val_eq(&a->u.d->v[i], o, depth + 1))
                return 0;
        }
        return 1;
    default: return a->u.d == b->u.d;
    }
}

/* <0, 0, >0; sets failure for unordered types. */
static int val_cmp(ctx *c, const val *a, const val *b, size_t pos)
{
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT)
            return (inum(a) > inum(b)) - (inum(a) < inum(b));
        return (num(a) > num(b)) - (num(a) < num(b));
    }
    if (a->t == V_STR && b->t == V_STR) {
        size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int r = memcmp(a->u.s.s, b->u.s.s, n);
        if (r)
            return r;
        return (a->u.s.n > b->u.s.n) - (a->u.s.n < b->u.s.n);
    }
    fail(c, pos, "cannot compare %s with %s", type_name(a), type_name(b));
    return 0;
}

static int val_in(ctx *c, const val *x, const val *in, size_t pos)
{
    if (in->t == V_STR) {
        if (x->t != V_STR) {
            fail(c, pos, "'in <string>' needs a string on the left, not %s", type_name(x));
            return 0;
        }
        if (x->u.s.n == 0)
            return 1;
        for (size_t i = 0; i + x->u.s.n <= in->u.s.n; i++)
            if (memcmp(in->u.s.s + i, x->u.s.s, x->u.s.n) == 0)
                return 1;
        return 0;
    }
    if (in->t == V_LIST) {
        for (size_t i = 0; i < in->u.l->n; i++)
            if (val_eq(x, &in->u.l->v[i], 0))
                return 1;
        return 0;
    }
    if (in->t == V_DICT || in->t == V_NS)
        return x->t == V_STR && dict_find(in->u.d, x->u.s.s, x->u.s.n) != NULL;
    if (in->t == V_UNDEF) {
        fail(c, pos, "'in' on an undefined value%s%s", in->name ? ": " : "",
             in->name ? in->name : "");
        return 0;
    }
    fail(c, pos, "'in' needs a string, list or dict, not %s", type_name(in));
    return 0;
}

/* UTF-8 code points */
static size_t cp_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* byte offsets of each code point start, plus n at the end */
static size_t *cp_offsets(ctx *c, const char *s, size_t n, size_t *ncp)
{
    size_t k = cp_len(s, n);
    size_t *o = amalloc(c, (k + 1) * sizeof *o);
    if (!o)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            o[j++] = i;
    o[k] = n;
    *ncp = k;
    return o;
}

static val substr(const val *v, size_t a, size_t b)
{
    return mk_str(v->u.s.s + a, v->u.s.tag ? v->u.s.tag + a : NULL, b - a);
}

/* Python slice bounds over len items. */
static int slice_idx(ctx *c, long long len, const val *lo, const val *hi, const val *st,
                     long long *start, long long *stop, long long *step, size_t pos)
{
    *step = 1;
    if (st && st->t != V_NONE && st->t != V_UNDEF) {
        if (st->t != V_INT || st->u.i == 0) {
            fail(c, pos, "slice step must be a non-zero integer");
            return -1;
        }
        *step = st->u.i;
    }
    const val *bv[2] = {lo, hi};
    long long out[2];
    for (int k = 0; k < 2; k++) {
        const val *x = bv[k];
        if (!x || x->t == V_NONE || x->t == V_UNDEF) {
            out[k] = *step > 0 ? (k ? len : 0) : (k ? -1 : len - 1);
            continue;
        }
        if (x->t != V_INT && x->t != V_BOOL) {
            fail(c, pos, "slice indices must be integers");
            return -1;
        }
        long long i = inum(x);
        if (i < 0)
            i += len;
        if (*step > 0)
            i = i < 0 ? 0 : i > len ? len : i;
        else
            i = i < -1 ? -1 : i > len - 1 ? len - 1 : i;
        out[k] = i;
    }
    *start = out[0];
    *stop = out[1];
    return 0;
}

static val do_slice(ctx *c, const val *o, const val *lo, const val *hi, const val *st,
                    size_t pos)
{
    long long a, b, s;
    if (o->t == V_STR) {
        size_t ncp;
        size_t *off = cp_offsets(c, o->u.s.s, o->u.s.n, &ncp);
        if (!off || slice_idx(c, (long long)ncp, lo, hi, st, &a, &b, &s, pos))
            return mk_undef(NULL);
        if (s == 1)
            return a < b ? substr(o, off[a], off[b]) : mk_str("", NULL, 0);
        sb r = {.c = c};
        for (long long i = a; s > 0 ? i < b : i > b; i += s)
            if (sb_add(&r, o->u.s.s + off[i], o->u.s.tag ? o->u.s.tag + off[i] : NULL,
                       off[i + 1] - off[i]))
                return mk_undef(NULL);
        return sb_val(&r);
    }
    if (o->t == V_LIST) {
        if (slice_idx(c, (long long)o->u.l->n, lo, hi, st, &a, &b, &s, pos))
            return mk_undef(NULL);
        list *l = list_new(c);
        if (!l)
            return mk_undef(NULL);
        for (long long i = a; s > 0 ? i < b : i > b; i += s)
            if (list_push(c, l, o->u.l->v[i]))
                return mk_undef(NULL);
        return (val){.t = V_LIST, .u.l = l};
    }
    fail(c, pos, "cannot slice a %s", type_name(o));
    return mk_undef(NULL);
}

static val loop_attr(ctx *c, const loopst *L, const char *name, size_t pos)
{
    long long n = (long long)L->items->n, i = (long long)L->i;
    if (!strcmp(name, "index")) return mk_int(i + 1);
    if (!strcmp(name, "index0")) return mk_int(i);
    if (!strcmp(name, "revindex")) return mk_int(n - i);
    if (!strcmp(name, "revindex0")) return mk_int(n - i - 1);
    if (!strcmp(name, "first")) return mk_bool(i == 0);
    if (!strcmp(name, "last")) return mk_bool(i == n - 1);
    if (!strcmp(name, "length")) return mk_int(n);
    if (!strcmp(name, "depth")) return mk_int(1);
    if (!strcmp(name, "depth0")) return mk_int(0);
    if (!strcmp(name, "previtem"))
        return i > 0 ? L->items->v[i - 1] : mk_undef("loop.previtem");
    if (!strcmp(name, "nextitem"))
        return i + 1 < n ? L->items->v[i + 1] : mk_undef("loop.nextitem");
    fail(c, pos, "unsupported loop attribute 'loop.%s'", name);
    return mk_undef(NULL);
}

static val get_attr(ctx *c, const val *o, const char *name, size_t pos)
{
    switch (o->t) {
    case V_DICT:
    case V_NS: {
        val *v = dict_find(o->u.d, name, strlen(name));
        return v ? *v : mk_undef(name);
    }
    case V_LOOP: return loop_attr(c, o->u.loop, name, pos);
    case V_UNDEF:
        fail(c, pos, "'%s' is undefined (reading .%s)", o->name ? o->name : "value", name);
        return mk_undef(NULL);
    case V_NONE:
        fail(c, pos, "'None' has no attribute '%s'", name);
        return mk_undef(NULL);
    default: return mk_undef(name);
    }
}

static val get_item(ctx *c, const val *o, const val *k, size_t pos)
{
    if (o->t == V_DICT || o->t == V_NS) {
        if (k->t != V_STR)
            return mk_undef(NULL);
        val *v = dict_find(o->u.d, k->u.s.s, k->u.s.n);
        return v ? *v : mk_undef(NULL);
    }
    if (o->t == V_LOOP && k->t == V_STR) {
        char name[32];
        snprintf(name, sizeof name, "%.*s", (int)k->u.s.n, k->u.s.s);
        return loop_attr(c, o->u.loop, name, pos);
    }
    if (o->t == V_LIST || o->t == V_STR) {
        if (k->t != V_INT && k->t != V_BOOL) {
            if (o->t == V_STR || k->t != V_UNDEF)
                return mk_undef(NULL);
            fail(c, pos, "list index is undefined");
            return mk_undef(NULL);
        }
        long long i = inum(k);
        if (o->t == V_LIST) {
            long long n = (long long)o->u.l->n;
            if (i < 0)
                i += n;
            return i >= 0 && i < n ? o->u.l->v[i] : mk_undef(NULL);
        }
        size_t ncp;
        size_t *off = cp_offsets(c, o->u.s.s, o->u.s.n, &ncp);
        if (!off)
            return mk_undef(NULL);
        if (i < 0)
            i += (long long)ncp;
        return i >= 0 && i < (long long)ncp ? substr(o, off[i], off[i + 1]) : mk_undef(NULL);
    }
    if (o->t == V_UNDEF) {
        fail(c, pos, "'%s' is undefined (subscripted)", o->name ? o->name : "value");
        return mk_undef(NULL);
    }
    fail(c, pos, "a %s cannot be subscripted", type_name(o));
    return mk_undef(NULL);
}

static val eval(ctx *c, frame *f, const expr *e);
static int exec(ctx *c, frame *f, const node *n);

static val lookup(frame *f, const char *name)
{
    for (; f; f = f->parent) {
        val *v = dict_find(f->vars, name, strlen(name));
        if (v)
            return *v;
    }
    return mk_undef(name);
}

static int set_var(ctx *c, frame *f, const char *name, val v)
{
    val k = mk_str(name, NULL, strlen(name));
    return dict_set(c, f->vars, k, v);
}

static val binop(ctx *c, int op, const val *a, const val *b, size_t pos)
{
    if (op == OP_CAT) {
        sb r = {.c = c};
        if (sb_print(&r, a, 0) || sb_print(&r, b, 0))
            return mk_undef(NULL);
        return sb_val(&r);
    }
    if (op == OP_ADD && a->t == V_STR && b->t == V_STR) {
        sb r = {.c = c};
        if (sb_add(&r, a->u.s.s, a->u.s.tag, a->u.s.n) ||
            sb_add(&r, b->u.s.s, b->u.s.tag, b->u.s.n))
            return mk_undef(NULL);
        return sb_val(&r);
    }
    if (op == OP_ADD && a->t == V_LIST && b->t == V_LIST) {
        list *l = list_new(c);
        if (!l)
            return mk_undef(NULL);
        for (size_t i = 0; i < a->u.l->n; i++)
            if (list_push(c, l, a->u.l->v[i]))
                return mk_undef(NULL);
        for (size_t i = 0; i < b->u.l->n; i++)
            if (list_push(c, l, b->u.l->v[i]))
                return mk_undef(NULL);
        return (val){.t = V_LIST, .u.l = l};
    }
    if (op == OP_MUL && a->t == V_STR && (b->t == V_INT)) {
        sb r = {.c = c};
        for (long long i = 0; i < b->u.i; i++)
            if (sb_add(&r, a->u.s.s, a->u.s.tag, a->u.s.n))
                return mk_undef(NULL);
        return sb_val(&r);
    }
    static const char *const opname[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (!is_num(a) || !is_num(b)) {
        if (a->t == V_UNDEF || b->t == V_UNDEF) {
            const val *u = a->t == V_UNDEF ? a : b;
            fail(c, pos, "'%s' is undefined (operand of '%s')", u->name ? u->name : "value",
                 opname[op]);
        } else {
            fail(c, pos, "unsupported operand types for '%s': %s and %s", opname[op],
                 type_name(a), type_name(b));
        }
        return mk_undef(NULL);
    }
    if (a->t != V_FLOAT && b->t != V_FLOAT && op != OP_DIV) {
        long long x = inum(a), y = inum(b), r;
        switch (op) {
        case OP_ADD:
            if (__builtin_add_overflow(x, y, &r))
                goto ovf;
            return mk_int(r);
        case OP_SUB:
            if (__builtin_sub_overflow(x, y, &r))
                goto ovf;
            return mk_int(r);
        case OP_MUL:
            if (__builtin_mul_overflow(x, y, &r))
                goto ovf;
            return mk_int(r);
        case OP_FDIV:
        case OP_MOD:
            if (y == 0) {
                fail(c, pos, "integer division or modulo by zero");
                return mk_undef(NULL);
            }
            if (x == LLONG_MIN && y == -1)
                goto ovf;
            {
                long long q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) {
                    q--;
                    m += y;
                }
                return mk_int(op == OP_FDIV ? q : m);
            }
        case OP_POW:
            if (y < 0)
                return mk_float(pow((double)x, (double)y));
            r = 1;
            for (long long i = 0; i < y; i++)
                if (__builtin_mul_overflow(r, x, &r))
                    goto ovf;
            return mk_int(r);
        }
    }
    double x = num(a), y = num(b);
    switch (op) {
    case OP_ADD: return mk_float(x + y);
    case OP_SUB: return mk_float(x - y);
    case OP_MUL: return mk_float(x * y);
    case OP_POW: return mk_float(pow(x, y));
    default:
        if (y == 0) {
            fail(c, pos, "division by zero");
            return mk_undef(NULL);
        }
        if (op == OP_DIV)
            return mk_float(x / y);
        if (op == OP_FDIV)
            return mk_float(floor(x / y));
        return mk_float(x - floor(x / y) * y);
    }
ovf:
    fail(c, pos, "integer overflow in '%s'", opname[op]);
    return mk_undef(NULL);
}

/* positional argument i or keyword name, else NULL */
static const val *arg(const val *av, const char **kw, int n, int i, const char *name)
{
    for (int k = 0; k < n; k++)
        if (kw[k] && name && !strcmp(kw[k], name))
            return &av[k];
    int p = 0;
    for (int k = 0; k < n; k++)
        if (!kw[k] && p++ == i)
            return &av[k];
    return NULL;
}

static int ws_in(char ch, const val *chars)
{
    if (!chars || chars->t != V_STR)
        return is_ws(ch);
    return memchr(chars->u.s.s, ch, chars->u.s.n) != NULL;
}

static val strip(const val *s, int left, int right, const val *chars)
{
    size_t a = 0, b = s->u.s.n;
    while (left && a < b && ws_in(s->u.s.s[a], chars))
        a++;
    while (right && b > a && ws_in(s->u.s.s[b - 1], chars))
        b--;
    return substr(s, a, b);
}

static val case_map(ctx *c, const val *s, int mode) /* 0 lower 1 upper 2 title 3 capitalize */
{
    sb r = {.c = c};
    if (sb_add(&r, s->u.s.s, s->u.s.tag, s->u.s.n))
        return mk_undef(NULL);
    int prev_alpha = 0;
    for (size_t i = 0; i < r.n; i++) {
        unsigned char ch = (unsigned char)r.s[i];
        int up = mode == 1 || (mode == 2 && !prev_alpha) || (mode == 3 && i == 0);
        if (ch < 0x80)
            r.s[i] = (char)(up ? toupper(ch) : tolower(ch));
        prev_alpha = isalpha(ch) || ch >= 0x80;
    }
    return sb_val(&r);
}

static val split(ctx *c, const val *s, const val *sep, const val *maxv, size_t pos)
{
    list *l = list_new(c);
    long long max = maxv && maxv->t == V_INT ? maxv->u.i : -1;
    if (!l)
        return mk_undef(NULL);
    const char *p = s->u.s.s;
    size_t n = s->u.s.n, i = 0;
    if (!sep || sep->t == V_NONE) {
        while (i < n) {
            while (i < n && is_ws(p[i]))
                i++;
            if (i >= n)
                break;
            size_t j = i;
            if (max >= 0 && (long long)l->n == max)
                j = n;
            else
                while (j < n && !is_ws(p[j]))
                    j++;
            val piece = substr(s, i, j);
            if (max >= 0 && (long long)l->n == max)
                piece = strip(&piece, 0, 1, NULL);
            if (list_push(c, l, piece))
                return mk_undef(NULL);
            i = j;
        }
        return (val){.t = V_LIST, .u.l = l};
    }
    if (sep->t != V_STR || sep->u.s.n == 0) {
        fail(c, pos, "split: separator must be a non-empty string");
        return mk_undef(NULL);
    }
    size_t m = sep->u.s.n, start = 0;
    for (i = 0; i + m <= n;) {
        if ((max < 0 || (long long)l->n < max) && memcmp(p + i, sep->u.s.s, m) == 0) {
            if (list_push(c, l, substr(s, start, i)))
                return mk_undef(NULL);
            i += m;
            start = i;
        } else {
            i++;
        }
    }
    if (list_push(c, l, substr(s, start, n)))
        return mk_undef(NULL);
    return (val){.t = V_LIST, .u.l = l};
}

static val replace(ctx *c, const val *s, const val *old, const val *new, size_t pos)
{
    if (!old || !new || old->t != V_STR || new->t != V_STR) {
        fail(c, pos, "replace: needs two string arguments");
        return mk_undef(NULL);
    }
    sb r = {.c = c};
    size_t i = 0, n = s->u.s.n, m = old->u.s.n;
    while (i < n) {
        if (m && i + m <= n && memcmp(s->u.s.s + i, old->u.s.s, m) == 0) {
            if (sb_add(&r, new->u.s.s, new->u.s.tag, new->u.s.n))
                return mk_undef(NULL);
            i += m;
        } else {
            if (sb_add(&r, s->u.s.s + i, s->u.s.tag ? s->u.s.tag + i : NULL, 1))
                return mk_undef(NULL);
            i++;
        }
    }
    return sb_val(&r);
}

static int apply_test(ctx *c, const char *name, const val *v, const val *av,
                      const char **kw, int n, size_t pos)
{
    const val *a0 = arg(av, kw, n, 0, NULL);
    if (!strcmp(name, "defined")) return v->t != V_UNDEF;
    if (!strcmp(name, "undefined")) return v->t == V_UNDEF;
    if (!strcmp(name, "none")) return v->t == V_NONE;
    if (!strcmp(name, "string")) return v->t == V_STR;
    if (!strcmp(name, "number")) return v->t == V_INT || v->t == V_FLOAT;
    if (!strcmp(name, "integer")) return v->t == V_INT;
    if (!strcmp(name, "float")) return v->t == V_FLOAT;
    if (!strcmp(name, "boolean")) return v->t == V_BOOL;
    if (!strcmp(name, "true")) return v->t == V_BOOL && v->u.b;
    if (!strcmp(name, "false")) return v->t == V_BOOL && !v->u.b;
    if (!strcmp(name, "mapping")) return v->t == V_DICT || v->t == V_NS;
    if (!strcmp(name, "iterable"))
        return v->t == V_STR || v->t == V_LIST || v->t == V_DICT;
    if (!strcmp(name, "sequence"))
        return v->t == V_STR || v->t == V_LIST || v->t == V_DICT;
    if (!strcmp(name, "callable")) return v->t == V_MACRO || v->t == V_FUNC;
    if (!strcmp(name, "even") || !strcmp(name, "odd")) {
        if (v->t != V_INT) {
            fail(c, pos, "test '%s' needs an integer", name);
            return 0;
        }
        return (v->u.i % 2 == 0) == (name[0] == 'e');
    }
    if (a0 == NULL &&
        (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "==") ||
         !strcmp(name, "ne") || !strcmp(name, "!=") || !strcmp(name, "in") ||
         !strcmp(name, "lt") || !strcmp(name, "gt"))) {
        fail(c, pos, "test '%s' needs an argument", name);
        return 0;
    }
    if (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "=="))
        return val_eq(v, a0, 0);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !val_eq(v, a0, 0);
    if (!strcmp(name, "in")) return val_in(c, v, a0, pos);
    if (!strcmp(name, "lt") || !strcmp(name, "<")) return val_cmp(c, v, a0, pos) < 0;
    if (!strcmp(name, "gt") || !strcmp(name, ">")) return val_cmp(c, v, a0, pos) > 0;
    fail(c, pos, "unsupported test '%s'", name);
    return 0;
}

/* Items to iterate: a list (dict: its keys, string: its characters). */
static list *iter_items(ctx *c, const val *v, size_t pos)
{
    if (v->t == V_LIST)
        return v->u.l;
    list *l = list_new(c);
    if (!l)
        return NULL;
    if (v->t == V_DICT || v->t == V_NS) {
        for (size_t i = 0; i < v->u.d->n; i++)
            if (list_push(c, l, v->u.d->k[i]))
                return NULL;
        return l;
    }
    if (v->t == V_STR) {
        size_t ncp;
        size_t *off = cp_offsets(c, v->u.s.s, v->u.s.n, &ncp);
        for (size_t i = 0; off && i < ncp; i++)
            if (list_push(c, l, substr(v, off[i], off[i + 1])))
                return NULL;
        return off ? l : NULL;
    }
    if (v->t == V_UNDEF || v->t == V_NONE)
        return l; /* jinja iterates undefined as empty; None raises */
    fail(c, pos, "a %s is not iterable", type_name(v));
    return NULL;
}

static val dict_items(ctx *c, const val *o, int what) /* 0 items 1 keys 2 values */
{
    list *l = list_new(c);
    if (!l)
        return mk_undef(NULL);
    for (size_t i = 0; i < o->u.d->n; i++) {
        val item;
        if (what == 1) {
            item = o->u.d->k[i];
        } else if (what == 2) {
            item = o->u.d->v[i];
        } else {
            list *p = list_new(c);
            if (!p || list_push(c, p, o->u.d->k[i]) || list_push(c, p, o->u.d->v[i]))
                return mk_undef(NULL);
            item = (val){.t = V_LIST, .u.l = p};
        }
        if (list_push(c, l, item))
            return mk_undef(NULL);
    }
    return (val){.t = V_LIST, .u.l = l};
}

static val apply_filter(ctx *c, const char *name, const val *v, const val *av,
                        const char **kw, int n, size_t pos);

static val length_of(ctx *c, const val *v, size_t pos)
{
    switch (v->t) {
    case V_STR: return mk_int((long long)cp_len(v->u.s.s, v->u.s.n));
    case V_LIST: return mk_int((long long)v->u.l->n);
    case V_DICT: case V_NS: return mk_int((long long)v->u.d->n);
    case V_UNDEF: return mk_int(0);
    default:
        fail(c, pos, "length: a %s has no length", type_name(v));
        return mk_undef(NULL);
    }
}

static val apply_filter(ctx *c, const char *name, const val *v, const val *av,
                        const char **kw, int n, size_t pos)
{
    const val *a0 = arg(av, kw, n, 0, NULL);
    int is_s = v->t == V_STR;
    if (!strcmp(name, "length") || !strcmp(name, "count"))
        return length_of(c, v, pos);
    if (!strcmp(name, "string"))
        return to_str(c, v);
    if (!strcmp(name, "tojson")) {
        const val *ind = arg(av, kw, n, 0, "indent");
        sb r = {.c = c};
        if (sb_json(&r, v, ind && ind->t == V_INT ? (int)ind->u.i : -1, 0, pos))
            return mk_undef(NULL);
        return sb_val(&r);
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        const val *bo = arg(av, kw, n, 1, "boolean");
        int use = bo && truthy(bo) ? !truthy(v) : v->t == V_UNDEF;
        return use ? (a0 ? *a0 : mk_str("", NULL, 0)) : *v;
    }
    if (!strcmp(name, "list")) {
        list *l = iter_items(c, v, pos);
        return l ? (val){.t = V_LIST, .u.l = l} : mk_undef(NULL);
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        list *l = iter_items(c, v, pos);
        if (!l)
            return mk_undef(NULL);
        if (!l->n)
            return mk_undef(name);
        return l->v[name[0] == 'f' ? 0 : l->n - 1];
    }
    if (!strcmp(name, "reverse")) {
        val m1 = mk_int(-1);
        return do_slice(c, v, NULL, NULL, &m1, pos);
    }
    if (!strcmp(name, "items")) {
        if (v->t != V_DICT && v->t != V_NS) {
            fail(c, pos, "items: needs a dict, not %s", type_name(v));
            return mk_undef(NULL);
        }
        return dict_items(c, v, 0);
    }
    if (!strcmp(name, "join")) {
        list *l = iter_items(c, v, pos);
        const val *sep = a0 ? a0 : NULL;
        sb r = {.c = c};
        if (!l)
            return mk_undef(NULL);
        for (size_t i = 0; i < l->n; i++) {
            if (i && sep && sb_print(&r, sep, 0))
                return mk_undef(NULL);
            if (sb_print(&r, &l->v[i], 0))
                return mk_undef(NULL);
        }
        return sb_val(&r);
    }
    if (!strcmp(name, "map") || !strcmp(name, "selectattr") || !strcmp(name, "rejectattr") ||
        !strcmp(name, "select") || !strcmp(name, "reject")) {
        list *l = iter_items(c, v, pos), *o = list_new(c);
        if (!l || !o)
            return mk_undef(NULL);
        const val *attr = arg(av, kw, n, -1, "attribute");
        int is_map = name[0] == 'm';
        int by_attr = !strcmp(name, "selectattr") || !strcmp(name, "rejectattr");
        int reject = name[0] == 'r';
        if (is_map && !attr && (!a0 || a0->t != V_STR)) {
            fail(c, pos, "map: needs attribute= or a filter name");
            return mk_undef(NULL);
        }
        if (by_attr && (!a0 || a0->t != V_STR)) {
            fail(c, pos, "%s: needs an attribute name", name);
            return mk_undef(NULL);
        }
        for (size_t i = 0; i < l->n; i++) {
            val it = l->v[i], x;
            if (is_map) {
                if (attr) {
                    char an[128];
                    snprintf(an, sizeof an, "%.*s", (int)attr->u.s.n, attr->u.s.s);
                    x = get_attr(c, &it, an, pos);
                    if (x.t == V_UNDEF) {
                        const val *d = arg(av, kw, n, -1, "default");
                        if (d)
                            x = *d;
                    }
                } else {
                    char fn[64];
                    snprintf(fn, sizeof fn, "%.*s", (int)a0->u.s.n, a0->u.s.s);
                    x = apply_filter(c, fn, &it, av + 1, kw + 1, n - 1, pos);
                }
                if (FAILED(c) || list_push(c, o, x))
                    return mk_undef(NULL);
                continue;
            }
            val subj = it;
            int first = 0;
            if (by_attr) {
                char an[128];
                snprintf(an, sizeof an, "%.*s", (int)a0->u.s.n, a0->u.s.s);
                subj = get_attr(c, &it, an, pos);
                first = 1;
            }
            const val *tn = arg(av, kw, n, first, NULL);
            int ok;
            if (tn) {
                char tname[64];
                if (tn->t != V_STR) {
                    fail(c, pos, "%s: test name must be a string", name);
                    return mk_undef(NULL);
                }
                snprintf(tname, sizeof tname, "%.*s", (int)tn->u.s.n, tn->u.s.s);
                int k0 = 0, np = 0;
                for (; k0 < n; k0++) /* positional args after the test name */
                    if (!kw[k0] && np++ == first)
                        break;
                ok = apply_test(c, tname, &subj, av + k0 + 1, kw + k0 + 1, n - k0 - 1, pos);
            } else {
                ok = truthy(&subj);
            }
            if (FAILED(c))
                return mk_undef(NULL);
            if (ok != reject && list_push(c, o, it))
                return mk_undef(NULL);
        }
        return (val){.t = V_LIST, .u.l = o};
    }
    if (!strcmp(name, "int")) {
        if (v->t == V_INT || v->t == V_BOOL) return mk_int(inum(v));
        if (v->t == V_FLOAT) return mk_int((long long)v->u.f);
        if (is_s) {
            char buf[64];
            snprintf(buf, sizeof buf, "%.*s", (int)(v->u.s.n < 63 ? v->u.s.n : 63), v->u.s.s);
            char *end;
            long long x = strtoll(buf, &end, 10);
            if (end != buf && *end == 0)
                return mk_int(x);
        }
        return a0 ? *a0 : mk_int(0);
    }
    if (!strcmp(name, "float")) {
        if (is_num(v)) return mk_float(num(v));
        if (is_s) {
            char buf[64];
            snprintf(buf, sizeof buf, "%.*s", (int)(v->u.s.n < 63 ? v->u.s.n : 63), v->u.s.s);
            char *end;
            double x = strtod(buf, &end);
            if (end != buf && *end == 0)
                return mk_float(x);
        }
        return a0 ? *a0 : mk_float(0);
    }
    if (!strcmp(name, "abs")) {
        if (v->t == V_INT) return mk_int(v->u.i < 0 ? -v->u.i : v->u.i);
        if (v->t == V_FLOAT) return mk_float(fabs(v->u.f));
    }
    if (!is_s && v->t != V_UNDEF &&
        (!strcmp(name, "trim") || !strcmp(name, "upper") || !strcmp(name, "lower") ||
         !strcmp(name, "capitalize") || !strcmp(name, "title") || !strcmp(name, "replace"))) {
        val s = to_str(c, v);
        return FAILED(c) ? s : apply_filter(c, name, &s, av, kw, n, pos);
    }
    val e = mk_str("", NULL, 0);
    if (v->t == V_UNDEF)
        v = &e;
    if (!strcmp(name, "trim")) return strip(v, 1, 1, a0);
    if (!strcmp(name, "upper")) return case_map(c, v, 1);
    if (!strcmp(name, "lower")) return case_map(c, v, 0);
    if (!strcmp(name, "title")) return case_map(c, v, 2);
    if (!strcmp(name, "capitalize")) {
        val l = case_map(c, v, 0);
        return FAILED(c) ? l : case_map(c, &l, 3);
    }
    if (!strcmp(name, "replace"))
        return replace(c, v, a0, arg(av, kw, n, 1, NULL), pos);
    fail(c, pos, "unsupported filter '%s'", name);
    return mk_undef(NULL);
}

static int out_add(ctx *c, const char *s, const int32_t *tag, size_t n)
{
    obuf *o = c->out;
    if (o->n + n > DT_CT_MAX_OUTPUT) {
        if (!c->failed) {
            c->failed = 1;
            dt_errf(c->err, DT_EINVAL, "chat template: output longer than %u MiB",
                    DT_CT_MAX_OUTPUT >> 20);
        }
        return -1;
    }
    if (o->n + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 1024;
        while (cap < o->n + n + 1)
            cap *= 2;
        char *ns = realloc(o->s, cap);
        if (ns)
            o->s = ns;
        int32_t *nt = realloc(o->tag, cap * sizeof *nt);
        if (nt)
            o->tag = nt;
        if (!ns || !nt) {
            if (!c->failed) {
                c->failed = 1;
                dt_errf(c->err, DT_ENOMEM, "chat template: out of memory");
                c->code = DT_ENOMEM;
            }
            return -1;
        }
        o->cap = cap;
    }
    memcpy(o->s + o->n, s, n);
    if (tag) {
        memcpy(o->tag + o->n, tag, n * sizeof *tag);
        o->tagged = 1;
    } else {
        memset(o->tag + o->n, 0, n * sizeof *tag);
    }
    o->n += n;
    return 0;
}

/* Runs body with output captured into a string value. */
static val capture(ctx *c, frame *f, const node *body)
{
    obuf tmp = {0}, *saved = c->out;
    c->out = &tmp;
    exec(c, f, body);
    c->out = saved;
    val r = mk_undef(NULL);
    if (!FAILED(c)) {
        char *s = amalloc(c, tmp.n + 1);
        int32_t *t = tmp.tagged ? amalloc(c, (tmp.n + 1) * sizeof *t) : NULL;
        if (s && (t || !tmp.tagged)) {
            if (tmp.n)
                memcpy(s, tmp.s, tmp.n);
            if (t && tmp.n)
                memcpy(t, tmp.tag, tmp.n * sizeof *t);
            r = mk_str(s, t, tmp.n);
        }
    }
    free(tmp.s);
    free(tmp.tag);
    return r;
}

static val call_macro(ctx *c, const node *m, const val *av, const char **kw, int n,
                      size_t pos)
{
    if (c->depth >= DT_CT_MAX_NEST) {
        fail(c, pos, "macro calls nested deeper than %d", DT_CT_MAX_NEST);
        return mk_undef(NULL);
    }
    frame f = {.parent = c->root, .vars = dict_new(c)};
    if (!f.vars)
        return mk_undef(NULL);
    int npos = 0;
    for (int k = 0; k < n; k++)
        if (!kw[k])
            npos++;
    if (npos > m->nparams) {
        fail(c, pos, "macro '%s' takes %d arguments, got %d", m->names[0], m->nparams, npos);
        return mk_undef(NULL);
    }
    for (int k = 0; k < n; k++) {
        int found = !kw[k];
        for (int p = 0; kw[k] && p < m->nparams; p++)
            found |= !strcmp(kw[k], m->params[p]);
        if (!found) {
            fail(c, pos, "macro '%s' has no parameter '%s'", m->names[0], kw[k]);
            return mk_undef(NULL);
        }
    }
    for (int p = 0; p < m->nparams; p++) {
        const val *a = arg(av, kw, n, p, m->params[p]);
        val v = a ? *a : m->defaults[p] ? eval(c, &f, m->defaults[p]) : mk_undef(m->params[p]);
        if (FAILED(c) || set_var(c, &f, m->params[p], v))
            return mk_undef(NULL);
    }
    c->depth++;
    val r = capture(c, &f, m->body);
    c->depth--;
    return r;
}

static val call_func(ctx *c, int fn, const val *av, const char **kw, int n, size_t pos)
{
    const val *a0 = arg(av, kw, n, 0, NULL);
    switch (fn) {
    case F_RAISE: {
        val s = a0 ? to_str(c, a0) : mk_str("", NULL, 0);
        if (!c->failed) {
            c->failed = 1;
            dt_errf(c->err, DT_EINVAL, "%.*s", (int)s.u.s.n, s.u.s.s);
        }
        return mk_undef(NULL);
    }
    case F_STRFTIME: {
        if (!a0 || a0->t != V_STR) {
            fail(c, pos, "strftime_now: needs a format string");
            return mk_undef(NULL);
        }
        time_t t = (time_t)(c->now >= 0 ? c->now : (long long)time(NULL));
        struct tm tm;
        char fmt[256], buf[512];
        snprintf(fmt, sizeof fmt, "%.*s", (int)a0->u.s.n, a0->u.s.s);
        if (c->now >= 0)
            gmtime_r(&t, &tm);
        else
            localtime_r(&t, &tm);
        size_t k = strftime(buf, sizeof buf, fmt, &tm);
        return str_copy(c, buf, k);
    }
    case F_NAMESPACE:
    case F_DICT: {
        dict *d = dict_new(c);
        if (!d)
            return mk_undef(NULL);
        for (int k = 0; k < n; k++) {
            if (!kw[k]) {
                if (av[k].t == V_DICT || av[k].t == V_NS) {
                    for (size_t i = 0; i < av[k].u.d->n; i++)
                        if (dict_set(c, d, av[k].u.d->k[i], av[k].u.d->v[i]))
                            return mk_undef(NULL);
                    continue;
                }
                fail(c, pos, "%s(): positional arguments must be dicts",
                     fn == F_DICT ? "dict" : "namespace");
                return mk_undef(NULL);
            }
            if (dict_setc(c, d, kw[k], av[k]))
                return mk_undef(NULL);
        }
        return (val){.t = fn == F_DICT ? V_DICT : V_NS, .u.d = d};
    }
    case F_RANGE: {
        long long a = 0, b, s = 1;
        for (int k = 0; k < n; k++)
            if (av[k].t != V_INT || kw[k]) {
                fail(c, pos, "range(): arguments must be integers");
                return mk_undef(NULL);
            }
        if (n == 1) {
            b = av[0].u.i;
        } else if (n == 2 || n == 3) {
            a = av[0].u.i;
            b = av[1].u.i;
            if (n == 3)
                s = av[2].u.i;
        } else {
            fail(c, pos, "range(): takes 1 to 3 arguments");
            return mk_undef(NULL);
        }
        if (s == 0) {
            fail(c, pos, "range(): step must not be zero");
            return mk_undef(NULL);
        }
        list *l = list_new(c);
        if (!l)
            return mk_undef(NULL);
        for (long long i = a; s > 0 ? i < b : i > b; i += s) {
            if (++c->steps > DT_CT_MAX_STEPS) {
                fail(c, pos, "more than %ld loop iterations", DT_CT_MAX_STEPS);
                return mk_undef(NULL);
            }
            if (list_push(c, l, mk_int(i)))
                return mk_undef(NULL);
        }
        return (val){.t = V_LIST, .u.l = l};
    }
    }
    return mk_undef(NULL);
}

static val call_method(ctx *c, const val *o, const char *m, const val *av, const char **kw,
                       int n, size_t pos)
{
    const val *a0 = arg(av, kw, n, 0, NULL), *a1 = arg(av, kw, n, 1, NULL);
    if (o->t == V_STR) {
        if (!strcmp(m, "strip")) return strip(o, 1, 1, a0);
        if (!strcmp(m, "lstrip")) return strip(o, 1, 0, a0);
        if (!strcmp(m, "rstrip")) return strip(o, 0, 1, a0);
        if (!strcmp(m, "split")) return split(c, o, a0, a1, pos);
        if (!strcmp(m, "upper")) return case_map(c, o, 1);
        if (!strcmp(m, "lower")) return case_map(c, o, 0);
        if (!strcmp(m, "title")) return case_map(c, o, 2);
        if (!strcmp(m, "capitalize")) return case_map(c, o, 3);
        if (!strcmp(m, "replace")) return replace(c, o, a0, a1, pos);
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            if (!a0 || a0->t != V_STR) {
                fail(c, pos, "%s: needs a string argument", m);
                return mk_undef(NULL);
            }
            size_t k = a0->u.s.n;
            if (k > o->u.s.n)
                return mk_bool(0);
            const char *at = m[0] == 's' ? o->u.s.s : o->u.s.s + o->u.s.n - k;
            return mk_bool(memcmp(at, a0->u.s.s, k) == 0);
        }
    }
    if (o->t == V_DICT || o->t == V_NS) {
        if (!strcmp(m, "items")) return dict_items(c, o, 0);
        if (!strcmp(m, "keys")) return dict_items(c, o, 1);
        if (!strcmp(m, "values")) return dict_items(c, o, 2);
        if (!strcmp(m, "get")) {
            if (!a0 || a0->t != V_STR)
                return a1 ? *a1 : mk_none();
            val *v = dict_find(o->u.d, a0->u.s.s, a0->u.s.n);
            return v ? *v : a1 ? *a1 : mk_none();
        }
    }
    fail(c, pos, "unsupported method '%s' on a %s", m, type_name(o));
    return mk_undef(NULL);
}

static int eval_args(ctx *c, frame *f, const expr *e, val **out)
{
    *out = e->nargs ? amalloc(c, (size_t)e->nargs * sizeof **out) : NULL;
    if (e->nargs && !*out)
        return -1;
    for (int k = 0; k < e->nargs; k++) {
        (*out)[k] = eval(c, f, e->args[k]);
        if (FAILED(c))
            return -1;
    }
    return 0;
}

static val eval(ctx *c, frame *f, const expr *e)
{
    val a, b, *av;
    if (FAILED(c))
        return mk_undef(NULL);
    switch (e->k) {
    case E_LIT: return e->lit;
    case E_NAME: {
        val v = lookup(f, e->name);
        if (v.t == V_UNDEF) {
            if (!strcmp(e->name, "raise_exception")) return (val){.t = V_FUNC, .u.fn = F_RAISE};
            if (!strcmp(e->name, "strftime_now")) return (val){.t = V_FUNC, .u.fn = F_STRFTIME};
            if (!strcmp(e->name, "namespace")) return (val){.t = V_FUNC, .u.fn = F_NAMESPACE};
            if (!strcmp(e->name, "range")) return (val){.t = V_FUNC, .u.fn = F_RANGE};
            if (!strcmp(e->name, "dict")) return (val){.t = V_FUNC, .u.fn = F_DICT};
        }
        return v;
    }
    case E_ATTR:
        a = eval(c, f, e->a);
        return FAILED(c) ? a : get_attr(c, &a, e->name, e->pos);
    case E_INDEX:
        a = eval(c, f, e->a);
        b = eval(c, f, e->b);
        return FAILED(c) ? a : get_item(c, &a, &b, e->pos);
    case E_SLICE: {
        val lo = mk_none(), hi = mk_none(), st = mk_none();
        a = eval(c, f, e->a);
        if (e->b)
            lo = eval(c, f, e->b);
        if (e->c)
            hi = eval(c, f, e->c);
        if (e->args[0])
            st = eval(c, f, e->args[0]);
        return FAILED(c) ? a : do_slice(c, &a, &lo, &hi, &st, e->pos);
    }
    case E_CALL: {
        if (e->a->k == E_ATTR) { /* method call */
            a = eval(c, f, e->a->a);
            if (FAILED(c))
                return a;
            if (a.t == V_DICT || a.t == V_NS) {
                val *fld = dict_find(a.u.d, e->a->name, strlen(e->a->name));
                if (fld && (fld->t == V_MACRO || fld->t == V_FUNC)) {
                    b = *fld;
                    goto callv;
                }
            }
            if (eval_args(c, f, e, &av))
                return mk_undef(NULL);
            return call_method(c, &a, e->a->name, av, e->kw, e->nargs, e->pos);
        }
        b = eval(c, f, e->a);
        if (FAILED(c))
            return b;
    callv:
        if (eval_args(c, f, e, &av))
            return mk_undef(NULL);
        if (b.t == V_MACRO)
            return call_macro(c, b.u.macro, av, e->kw, e->nargs, e->pos);
        if (b.t == V_FUNC)
            return call_func(c, b.u.fn, av, e->kw, e->nargs, e->pos);
        fail(c, e->pos, "%s%s%s is not callable", e->a->k == E_NAME ? "'" : "",
             e->a->k == E_NAME ? e->a->name : type_name(&b), e->a->k == E_NAME ? "'" : "");
        return mk_undef(NULL);
    }
    case E_FILTER:
        a = eval(c, f, e->a);
        if (FAILED(c) || eval_args(c, f, e, &av))
            return mk_undef(NULL);
        return apply_filter(c, e->name, &a, av, e->kw, e->nargs, e->pos);
    case E_TEST: {
        a = eval(c, f, e->a);
        if (FAILED(c) || eval_args(c, f, e, &av))
            return mk_undef(NULL);
        int r = apply_test(c, e->name, &a, av, e->kw, e->nargs, e->pos);
        return mk_bool(e->neg ? !r : r);
    }
    case E_BIN:
        a = eval(c, f, e->a);
        b = eval(c, f, e->b);
        return FAILED(c) ? a : binop(c, e->op, &a, &b, e->pos);
    case E_CMP:
        a = eval(c, f, e->a);
        b = eval(c, f, e->b);
        if (FAILED(c))
            return a;
        switch (e->op) {
        case OP_EQ: return mk_bool(val_eq(&a, &b, 0));
        case OP_NE: return mk_bool(!val_eq(&a, &b, 0));
        case OP_LT: return mk_bool(val_cmp(c, &a, &b, e->pos) < 0);
        case OP_LE: return mk_bool(val_cmp(c, &a, &b, e->pos) <= 0);
        case OP_GT: return mk_bool(val_cmp(c, &a, &b, e->pos) > 0);
        case OP_GE: return mk_bool(val_cmp(c, &a, &b, e->pos) >= 0);
        case OP_IN: return mk_bool(val_in(c, &a, &b, e->pos));
        default: return mk_bool(!val_in(c, &a, &b, e->pos));
        }
    case E_NOT:
        a = eval(c, f, e->a);
        return mk_bool(!truthy(&a));
    case E_NEG:
        a = eval(c, f, e->a);
        if (FAILED(c))
            return a;
        if (a.t == V_INT && a.u.i != LLONG_MIN) return mk_int(-a.u.i);
        if (a.t == V_FLOAT) return mk_float(-a.u.f);
        fail(c, e->pos, "cannot negate a %s", type_name(&a));
        return mk_undef(NULL);
    case E_AND:
        a = eval(c, f, e->a);
        return truthy(&a) ? eval(c, f, e->b) : a;
    case E_OR:
        a = eval(c, f, e->a);
        return truthy(&a) ? a : eval(c, f, e->b);
    case E_COND:
        b = eval(c, f, e->b);
        if (truthy(&b))
            return eval(c, f, e->a);
        return e->c ? eval(c, f, e->c) : mk_undef(NULL);
    case E_LIST: {
        list *l = list_new(c);
        if (!l)
            return mk_undef(NULL);
        for (int k = 0; k < e->nargs; k++)
            if (list_push(c, l, eval(c, f, e->args[k])))
                return mk_undef(NULL);
        return (val){.t = V_LIST, .u.l = l};
    }
    case E_DICT: {
        dict *d = dict_new(c);
        if (!d)
            return mk_undef(NULL);
        for (int k = 0; k < e->nargs; k++) {
            val kv = eval(c, f, e->keys[k]), vv = eval(c, f, e->args[k]);
            if (FAILED(c))
                return mk_undef(NULL);
            if (kv.t != V_STR) {
                fail(c, e->keys[k]->pos, "dict keys must be strings");
                return mk_undef(NULL);
            }
            if (dict_set(c, d, kv, vv))
                return mk_undef(NULL);
        }
        return (val){.t = V_DICT, .u.d = d};
    }
    }
    return mk_undef(NULL);
}

static int exec_for(ctx *c, frame *f, const node *n)
{
    val it = eval(c, f, n->e);
    if (FAILED(c))
        return -1;
    list *items = iter_items(c, &it, n->e->pos);
    if (!items)
        return -1;
    frame lf = {.parent = f, .vars = dict_new(c)};
    loopst *L = amalloc(c, sizeof *L);
    if (!lf.vars || !L)
        return -1;
    if (n->filt) { /* the loop sees only the items that pass */
        list *kept = list_new(c);
        if (!kept)
            return -1;
        for (size_t i = 0; i < items->n; i++) {
            if (set_var(c, &lf, n->names[0], items->v[i]))
                return -1;
            if (n->nnames == 2) {
                const val *p = &items->v[i];
                if (p->t != V_LIST || p->u.l->n != 2) {
                    fail(c, n->pos, "cannot unpack a %s into 2 names", type_name(p));
                    return -1;
                }
                if (set_var(c, &lf, n->names[0], p->u.l->v[0]) ||
                    set_var(c, &lf, n->names[1], p->u.l->v[1]))
                    return -1;
            }
            val ok = eval(c, &lf, n->filt);
            if (FAILED(c))
                return -1;
            if (truthy(&ok) && list_push(c, kept, items->v[i]))
                return -1;
        }
        items = kept;
        lf.vars = dict_new(c);
        if (!lf.vars)
            return -1;
    }
    L->items = items;
    for (size_t i = 0; i < items->n; i++) {
        if (++c->steps > DT_CT_MAX_STEPS) {
            fail(c, n->pos, "more than %ld loop iterations", DT_CT_MAX_STEPS);
            return -1;
        }
        /* each iteration starts from a fresh scope, as in jinja */
        lf.vars->n = 0;
        L->i = i;
        if (set_var(c, &lf, "loop", (val){.t = V_LOOP, .u.loop = L}))
            return -1;
        const val *p = &items->v[i];
        if (n->nnames == 2) {
            if (p->t != V_LIST || p->u.l->n != 2) {
                fail(c, n->pos, "cannot unpack a %s into 2 names", type_name(p));
                return -1;
            }
            if (set_var(c, &lf, n->names[0], p->u.l->v[0]) ||
                set_var(c, &lf, n->names[1], p->u.l->v[1]))
                return -1;
        } else if (set_var(c, &lf, n->names[0], *p)) {
            return -1;
        }
        if (exec(c, &lf, n->body))
            return -1;
        if (c->brk == 1) {
            c->brk = 0;
            break;
        }
        c->brk = 0;
    }
    if (items->n == 0 && n->els)
        return exec(c, f, n->els);
    return 0;
}

static int exec(ctx *c, frame *f, const node *n)
{
    for (; n && !FAILED(c) && !c->brk; n = n->next) {
        switch (n->k) {
        case N_TEXT:
            if (out_add(c, n->s, NULL, n->n))
                return -1;
            break;
        case N_OUT: {
            val v = eval(c, f, n->e);
            if (FAILED(c))
                return -1;
            if (v.t == V_STR) {
                if (out_add(c, v.u.s.s, v.u.s.tag, v.u.s.n))
                    return -1;
            } else {
                val s = to_str(c, &v);
                if (FAILED(c) || out_add(c, s.u.s.s, s.u.s.tag, s.u.s.n))
                    return -1;
            }
            break;
        }
        case N_IF: {
            const node *b = n;
            while (b && b->k == N_IF && b->e) {
                val v = eval(c, f, b->e);
                if (FAILED(c))
                    return -1;
                if (truthy(&v))
                    break;
                b = b->els;
            }
            if (b && b->k == N_IF && b->e) {
                if (exec(c, f, b->body))
                    return -1;
            } else if (b && exec(c, f, b)) {
                return -1;
            }
            break;
        }
        case N_FOR:
            if (exec_for(c, f, n))
                return -1;
            break;
        case N_SET:
        case N_SETBLOCK: {
            val v = n->k == N_SET ? eval(c, f, n->e) : capture(c, f, n->body);
            if (FAILED(c))
                return -1;
            if (n->nnames == 2) {
                val ns = lookup(f, n->names[0]);
                if (ns.t != V_NS) {
                    fail(c, n->pos, "cannot set '%s.%s': '%s' is not a namespace()",
                         n->names[0], n->names[1], n->names[0]);
                    return -1;
                }
                if (n->names[1][0] == '_') {
                    fail(c, n->pos, "cannot set underscore attribute '%s'", n->names[1]);
                    return -1;
                }
                if (dict_setc(c, ns.u.d, n->names[1], v))
                    return -1;
            } else if (set_var(c, f, n->names[0], v)) {
                return -1;
            }
            break;
        }
        case N_MACRO:
            if (set_var(c, f, n->names[0], (val){.t = V_MACRO, .u.macro = (node *)n}))
                return -1;
            break;
        case N_BREAK:
        case N_CONT:
            c->brk = n->k == N_BREAK ? 1 : 2;
            break;
        case N_GEN: {
            size_t start = c->out->n;
            if (exec(c, f, n->body))
                return -1;
            if (c->out == &c->main) {
                if (c->ngen == c->gencap) {
                    int cap = c->gencap ? c->gencap * 2 : 8;
                    size_t (*g)[2] = realloc(c->gen, (size_t)cap * sizeof *g);
                    if (!g) {
                        fail(c, n->pos, "out of memory");
                        return -1;
                    }
                    c->gen = g;
                    c->gencap = cap;
                }
                c->gen[c->ngen][0] = start;
                c->gen[c->ngen++][1] = c->out->n;
            }
            break;
        }
        }
    }
    return FAILED(c) ? -1 : 0;
}

/* ------------------------------------------------------------------- API */

void dt_chat_out_free(dt_chat_out *out)
{
    if (!out)
        return;
    free(out->text);
    free(out->tag);
    free(out->gen);
    memset(out, 0, sizeof *out);
}

int dt_chat_render(const char *tmpl, const json_t *messages, const json_t *vars,
                   const int32_t *msg_tag, long long now, dt_chat_out *out, char *err)
{
    memset(out, 0, sizeof *out);
    if (err)
        err[0] = 0;
    ctx c = {.src = tmpl, .srclen = strlen(tmpl), .err = err, .now = now};
    c.out = &c.main;
    chunks cs = {0};
    frame root = {0};
    node *body = NULL;
    int which;
    parser unused;
    sparser sp = {.c = &c, .cs = &cs};
    c.root = &root;
    if (!json_is_array(messages)) {
        dt_errf(err, DT_EINVAL, "chat template: messages must be an array");
        return DT_EINVAL;
    }
    if (scan(&c, &cs) || parse_body(&sp, NULL, &which, &unused, &body))
        goto done;
    if (!(root.vars = dict_new(&c)))
        goto done;
    {
        list *ml = list_new(&c);
        size_t i;
        const json_t *m;
        if (!ml)
            goto done;
        json_array_foreach(messages, i, m) {
            val v = from_json(&c, m, msg_tag ? msg_tag[i] : 0, 0);
            if (c.failed || list_push(&c, ml, v))
                goto done;
        }
        if (set_var(&c, &root, "messages", (val){.t = V_LIST, .u.l = ml}) ||
            set_var(&c, &root, "tools", mk_none()) ||
            set_var(&c, &root, "documents", mk_none()) ||
            set_var(&c, &root, "add_generation_prompt", mk_bool(0)))
            goto done;
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)vars, k, v) {
            val x = from_json(&c, v, 0, 0);
            if (c.failed || dict_setc(&c, root.vars, k, x))
                goto done;
        }
    }
    exec(&c, &root, body);
done:
    while (c.arena) {
        ablk *b = c.arena->next;
        free(c.arena);
        c.arena = b;
    }
    if (c.failed || !c.main.s) {
        if (!c.failed) { /* empty output */
            out->text = calloc(1, 1);
            out->tag = calloc(1, sizeof *out->tag);
            free(c.gen);
            free(c.main.s);
            free(c.main.tag);
            if (!out->text || !out->tag) {
                dt_chat_out_free(out);
                return dt_errf(err, DT_ENOMEM, "chat template: out of memory");
            }
            return DT_OK;
        }
        free(c.main.s);
        free(c.main.tag);
        free(c.gen);
        if (err && !err[0])
            dt_errf(err, DT_EINVAL, "chat template: rendering failed");
        return c.code ? c.code : DT_EINVAL;
    }
    c.main.s[c.main.n] = 0;
    out->text = c.main.s;
    out->len = c.main.n;
    out->tag = c.main.tag;
    out->gen = c.gen;
    out->ngen = c.ngen;
    return DT_OK;
}
