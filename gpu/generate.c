/* generate.c: incremental decoding with a KV cache (see generate.h). The
 * layer step mirrors model_pass.c's layer_fwd in eval mode (no dropout) for
 * t new rows: the same ops in the same order, with the keys and values
 * written into the cache and attention through attention_decode. */
#include "generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/dt.h"
#include "export.h"
#include "model_impl.h"

#define OPS (d->be->i)
#define OPS_(x) ((x)->be->i)

struct dt_decoder {
    dt_model *m;
    dt_backend *be;
    int maxT, len;
    float **kc, **vc;      /* per layer (maxT, kvdim) */
    float *x, *n, *mean, *rstd, *q, *att, *qkv, *h1, *h2, *act, *u, *logits;
    float *hr;             /* Qwen 3 q_norm/k_norm rstd (rows, n_head) */
    int rows;              /* rows of the activation buffers: min(maxT, m->N),
                            * since feeds run in chunks of m->N */
    float *blogits;        /* (bcap, V): logits of a batched step */
    int bcap;
    const dt_decoder_adapter *ad; /* this sequence's adapter (borrowed) or NULL */
    /* while this decoder's buffers run a pass: the adapter of every row
     * (ad1), or of row i (adr[i], a batched step) */
    const dt_decoder_adapter *ad1;
    const dt_decoder_adapter **adr; /* (rows) host */
    const float **bk, **bv; /* (rows) host: a batched step's caches of one layer */
    int *btk;              /* (rows) host: their lengths */
    int adany;             /* whether any row of the pass has an adapter */
    float *au;             /* (rows, aurank) x·Aᵀ of an adapter */
    int aurank;
};

/* Low-rank terms over a shared base model (generate.h). */
struct dt_decoder_adapter {
    dt_model *m;           /* borrowed */
    float **A, **B;        /* per slot l*MAX_LIN + j: (rank, in), (out, rank) device or NULL */
    int rank;
    float s;               /* lora_alpha / r */
    long long bytes;       /* device bytes of the factors */
};

static float *dalloc(dt_decoder *d, size_t nfloat, int *fail)
{
    float *p = d->be->i.alloc(d->be, nfloat * sizeof(float));
    if (!p)
        *fail = 1;
    return p;
}

int dt_decoder_new(dt_model *m, int max_T, dt_decoder **out, char *err)
{
    const dt_config *c = &m->c;
    *out = NULL;
    if (max_T < 1)
        return dt_errf(err, DT_EINVAL, "decoder: max_T %d < 1", max_T);
    if (c->arch == DT_ARCH_GPT2 && max_T > c->max_pos)
        max_T = c->max_pos;
    dt_decoder *d = calloc(1, sizeof *d);
    if (!d || !(d->kc = calloc((size_t)c->n_layer, sizeof *d->kc)) ||
        !(d->vc = calloc((size_t)c->n_layer, sizeof *d->vc))) {
        if (d)
            free(d->kc);
        free(d);
        return dt_errf(err, DT_ENOMEM, "decoder: out of memory");
    }
    d->m = m;
    d->be = m->be;
    d->maxT = max_T;
    int fail = 0, C = c->d_model, F = c->d_ff, r = m->lo.rank > 0 ? m->lo.rank : 1;
    size_t T = (size_t)max_T;
    for (int l = 0; l < c->n_layer && !fail; l++) {
        d->kc[l] = dalloc(d, T * m->kvdim, &fail);
        d->vc[l] = dalloc(d, T * m->kvdim, &fail);
    }
    /* Activations hold one chunk of a feed (m->N rows at most), not the
     * whole context: a long cache costs its keys and values only. */
    d->rows = max_T < m->N ? max_T : m->N;
    T = (size_t)d->rows;
    int widest = F > 3 * C ? F : 3 * C;
    if (m->qdim > widest) /* qk_norm: q before its norm in d->qkv */
        widest = m->qdim;
    if (!fail) {
        d->x = dalloc(d, T * C, &fail);
        d->n = dalloc(d, T * C, &fail);
        d->mean = dalloc(d, T, &fail);
        d->rstd = dalloc(d, T, &fail);
        d->q = dalloc(d, T * m->qdim, &fail);
        d->att = dalloc(d, T * m->qdim, &fail);
        d->qkv = dalloc(d, T * widest, &fail);
        d->h1 = dalloc(d, T * F, &fail);
        d->h2 = dalloc(d, T * F, &fail);
        d->act = dalloc(d, T * F, &fail);
        d->u = dalloc(d, T * r, &fail);
        d->logits = dalloc(d, (size_t)c->vocab, &fail);
        if (c->qk_norm)
            d->hr = dalloc(d, T * (size_t)c->n_head, &fail);
        if (!(d->adr = calloc(T, sizeof *d->adr)) || !(d->bk = calloc(T, sizeof *d->bk)) ||
            !(d->bv = calloc(T, sizeof *d->bv)) || !(d->btk = calloc(T, sizeof *d->btk)))
            fail = 1;
    }
    if (fail) {
        dt_decoder_free(d);
        return dt_errf(err, DT_ENOMEM, "decoder: out of device memory for a "
                       "%d-position KV cache", max_T);
    }
    *out = d;
    return 0;
}

void dt_decoder_free(dt_decoder *d)
{
    if (!d)
        return;
    dt_backend *be = d->be;
    for (int l = 0; l < d->m->c.n_layer; l++) {
        be->i.free(be, d->kc[l]);
        be->i.free(be, d->vc[l]);
    }
    float *bufs[] = {d->x, d->n, d->mean, d->rstd, d->q, d->att, d->qkv,
                     d->h1, d->h2, d->act, d->u, d->logits, d->hr, d->blogits,
                     d->au};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        be->i.free(be, bufs[i]);
    free(d->adr);
    free(d->bk);
    free(d->bv);
    free(d->btk);
    free(d->kc);
    free(d->vc);
    free(d);
}

void dt_decoder_reset(dt_decoder *d) { d->len = 0; }
int dt_decoder_len(const dt_decoder *d) { return d->len; }

/* The adapters' terms y += s·(x·Aᵀ)·Bᵀ of linear L, over runs of rows
 * that share an adapter (d->ad1 for all rows, or d->adr[i] per row). */
static void lin_adapters(dt_decoder *d, dt_linear *L, const float *x, float *y,
                         int N)
{
    dt_model *m = d->m;
    size_t l = (size_t)((const char *)L - (const char *)m->L) / sizeof *m->L;
    int slot = (int)l * MAX_LIN + (int)(L - m->L[l].lin);
    for (int i0 = 0; i0 < N;) {
        const dt_decoder_adapter *a = d->ad1 ? d->ad1 : d->adr[i0];
        int i1 = i0 + 1;
        while (!d->ad1 && i1 < N && d->adr[i1] == a)
            i1++;
        if (a && a->A[slot]) {
            int r = a->rank, n = i1 - i0;
            OPS.gemm(d->be, 0, 1, n, r, L->in, 1.0f, x + (size_t)i0 * L->in, L->in,
                     a->A[slot], L->in, 0.0f, d->au, r);
            OPS.gemm(d->be, 0, 1, n, L->out, r, a->s, d->au, r, a->B[slot], r, 1.0f,
                     y + (size_t)i0 * L->out, L->out);
        }
        i0 = i1;
    }
}

/* y(N,out) = acc*y + x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ per adapter (lin_fwd, eval). */
static void lin(dt_decoder *d, dt_linear *L, const float *x, float *y, int N,
                int acc)
{
    dt_model *m = d->m;
    if (L->Wh) /* --precision bf16: the frozen weight in bf16 */
        OPS.gemm_bf16w(d->be, 0, 1, N, L->out, L->in, 1.0f, x, L->in, L->Wh,
                       L->in, acc ? 1.0f : 0.0f, y, L->out);
    else
        OPS.gemm(d->be, 0, 1, N, L->out, L->in, 1.0f, x, L->in, L->W, L->in,
                 acc ? 1.0f : 0.0f, y, L->out);
    if (L->b)
        OPS.add_bias(d->be, y, L->b, N, L->out);
    int r = m->lo.rank;
    for (int i = 0; i < L->nlora; i++) {
        dt_lora *a = L->lora[i];
        OPS.gemm(d->be, 0, 1, N, r, L->in, 1.0f, x, L->in, a->A->p, L->in,
                 0.0f, d->u, r);
        OPS.gemm(d->be, 0, 1, N, a->rows, r, m->s, d->u, r, a->B->p, r, 1.0f,
                 y + a->row_off, L->out);
    }
    if (d->adany)
        lin_adapters(d, L, x, y, N);
}

static void norm(dt_decoder *d, float *out, const float *x, const float *w,
                 const float *b, int N)
{
    const dt_config *c = &d->m->c;
    if (c->arch == DT_ARCH_GPT2)
        OPS.layernorm_fwd(d->be, out, d->mean, d->rstd, x, w, b, N,
                          c->d_model, c->norm_eps);
    else
        OPS.rmsnorm_fwd(d->be, out, d->rstd, x, w, N, c->d_model, c->norm_eps);
}

/* Layer l on the t rows in d->x at positions p0.. (the residual in place). */
static void layer_step(dt_decoder *d, int l, int p0, int t)
{
    dt_model *m = d->m;
    const dt_config *c = &m->c;
    dt_layer *Y = &m->L[l];
    int C = c->d_model, F = c->d_ff, kvd = m->kvdim;
    float *kc = d->kc[l] + (size_t)p0 * kvd, *vc = d->vc[l] + (size_t)p0 * kvd;
    norm(d, d->n, d->x, Y->n1w, Y->n1b, t);
    if (c->arch == DT_ARCH_GPT2) {
        lin(d, &Y->lin[G_QKV], d->n, d->qkv, t, 0);
        OPS.copy2d(d->be, d->q, C, d->qkv, 3 * C, t, C, 1.0f);
        OPS.copy2d(d->be, kc, C, d->qkv + C, 3 * C, t, C, 1.0f);
        OPS.copy2d(d->be, vc, C, d->qkv + 2 * C, 3 * C, t, C, 1.0f);
    } else {
        /* Qwen 3: q and k through d->qkv, then RMSNorm over each head. */
        lin(d, &Y->lin[L_Q], d->n, Y->qnw ? d->qkv : d->q, t, 0);
        if (Y->qnw)
            OPS.rmsnorm_fwd(d->be, d->q, d->hr, d->qkv, Y->qnw, t * c->n_head,
                            c->head_dim, c->norm_eps);
        lin(d, &Y->lin[L_K], d->n, Y->knw ? d->qkv : kc, t, 0);
        if (Y->knw)
            OPS.rmsnorm_fwd(d->be, kc, d->hr, d->qkv, Y->knw,
                            t * c->n_kv_head, c->head_dim, c->norm_eps);
        lin(d, &Y->lin[L_V], d->n, vc, t, 0);
        OPS.rope_at(d->be, d->q, t, c->n_head, c->head_dim, d->m->rope_key, p0);
        OPS.rope_at(d->be, kc, t, c->n_kv_head, c->head_dim, d->m->rope_key, p0);
    }
    OPS.attention_decode(d->be, d->att, d->q, d->kc[l], d->vc[l], t, p0 + t,
                         c->n_head, c->n_kv_head, c->head_dim);
    lin(d, &Y->lin[c->arch == DT_ARCH_GPT2 ? G_O : L_O], d->att, d->x, t, 1);
    norm(d, d->n, d->x, Y->n2w, Y->n2b, t);
    if (c->arch == DT_ARCH_GPT2) {
        lin(d, &Y->lin[G_FC], d->n, d->h1, t, 0);
        OPS.gelu_fwd(d->be, d->act, d->h1, (long)t * F);
        lin(d, &Y->lin[G_PROJ], d->act, d->x, t, 1);
    } else {
        lin(d, &Y->lin[L_GATE], d->n, d->h1, t, 0);
        lin(d, &Y->lin[L_UP], d->n, d->h2, t, 0);
        OPS.swiglu_fwd(d->be, d->act, d->h1, d->h2, (long)t * F);
        lin(d, &Y->lin[L_DOWN], d->act, d->x, t, 1);
    }
}

/* d->au holds d->rows rows of rank r. */
static int au_ensure(dt_decoder *d, int r, char *err)
{
    if (d->aurank >= r)
        return 0;
    OPS.free(d->be, d->au);
    d->aurank = 0;
    if (!(d->au = OPS.alloc(d->be, (size_t)d->rows * r * sizeof(float))))
        return dt_errf(err, DT_ENOMEM, "decoder: out of device memory for a "
                       "rank-%d adapter", r);
    d->aurank = r;
    return 0;
}

int dt_decoder_feed(dt_decoder *d, const int32_t *ids, int t, float *logits,
                    char *err)
{
    dt_model *m = d->m;
    const dt_config *c = &m->c;
    int C = c->d_model, V = c->vocab, p0 = d->len, rc;
    if (t < 1 || p0 + t > d->maxT)
        return dt_errf(err, DT_EINVAL, "%d positions exceed the model's "
                       "context of %d", p0 + t, d->maxT);
    for (int i = 0; i < t; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return dt_errf(err, DT_EINVAL, "token id %d out of range [0, %d)",
                           ids[i], V);
    if (!m->ids)
        return dt_errf(err, DT_EINVAL, "decoder: the model's activations "
                       "were released");
    if (d->ad && (rc = au_ensure(d, d->ad->rank, err)))
        return rc;
    d->ad1 = d->ad;
    d->adany = d->ad != NULL;
    /* m->ids holds m->N ids; the prompt is fed in chunks that fit. */
    for (int c0 = 0; c0 < t; c0 += m->N) {
        int n = t - c0 < m->N ? t - c0 : m->N, p = p0 + c0;
        OPS.upload(d->be, m->ids, ids + c0, (size_t)n * sizeof(int32_t));
        dt_model_embed(m, d->x, m->ids, m->wpe ? m->wpe + (size_t)p * C : NULL,
                       1, n);
        for (int l = 0; l < c->n_layer; l++)
            layer_step(d, l, p, n);
        d->len = p + n;
        if (logits && c0 + n == t) {
            const float *last = d->x + (size_t)(n - 1) * C;
            norm(d, d->n, last, m->nfw, m->nfb, 1);
            dt_model_head_gemm(m, 1, d->n, d->logits, 1, 0.0f);
            OPS.download(d->be, logits, d->logits, (size_t)V * sizeof(float));
        }
    }
    return OPS.sync(d->be, err);
}

/* ---- batched decode step ---------------------------------------------------
 *
 * One new token for each of n sequences, each with its own cache and
 * length: the linears run once over the n rows (the scratch decoder S's
 * buffers), while embedding positions, RoPE, the cache writes and attention
 * go per sequence. Row i of S's buffers is sequence ds[i]. */

/* Layer l for n sequences whose rows are stacked in S->x: sequence i has
 * t[i] rows (t NULL: one each) at positions ds[i]->len.., starting at row
 * off[i] (NULL: row i). */
static void layer_step_batch(dt_decoder *S, dt_decoder *const *ds, int n, int l,
                             const int *t, const int *off)
{
    dt_decoder *d = S; /* OPS */
    dt_model *m = S->m;
    const dt_config *c = &m->c;
    dt_layer *Y = &m->L[l];
    int C = c->d_model, F = c->d_ff, kvd = m->kvdim, qd = m->qdim, rows = 0;
    for (int i = 0; i < n; i++)
        rows += t ? t[i] : 1;
#define T_(i) (t ? t[i] : 1)
#define O_(i) ((size_t)(off ? off[i] : i))
    norm(S, S->n, S->x, Y->n1w, Y->n1b, rows);
    if (c->arch == DT_ARCH_GPT2) {
        lin(S, &Y->lin[G_QKV], S->n, S->qkv, rows, 0);
        OPS.copy2d(S->be, S->q, C, S->qkv, 3 * C, rows, C, 1.0f);
        for (int i = 0; i < n; i++) {
            size_t at = (size_t)ds[i]->len * kvd;
            const float *row = S->qkv + O_(i) * 3 * C;
            OPS.copy2d(S->be, ds[i]->kc[l] + at, C, row + C, 3 * C, T_(i), C, 1.0f);
            OPS.copy2d(S->be, ds[i]->vc[l] + at, C, row + 2 * C, 3 * C, T_(i), C, 1.0f);
        }
    } else {
        lin(S, &Y->lin[L_Q], S->n, Y->qnw ? S->qkv : S->q, rows, 0);
        if (Y->qnw)
            OPS.rmsnorm_fwd(S->be, S->q, S->hr, S->qkv, Y->qnw, rows * c->n_head,
                            c->head_dim, c->norm_eps);
        /* k in S->qkv (then S->att after its norm), roped per sequence,
         * copied into each cache; then v the same way through S->qkv */
        float *k = Y->knw ? S->att : S->qkv;
        lin(S, &Y->lin[L_K], S->n, S->qkv, rows, 0);
        if (Y->knw)
            OPS.rmsnorm_fwd(S->be, S->att, S->hr, S->qkv, Y->knw,
                            rows * c->n_kv_head, c->head_dim, c->norm_eps);
        for (int i = 0; i < n; i++) {
            int p = ds[i]->len;
            OPS.rope_at(S->be, S->q + O_(i) * qd, T_(i), c->n_head, c->head_dim,
                        m->rope_key, p);
            OPS.rope_at(S->be, k + O_(i) * kvd, T_(i), c->n_kv_head, c->head_dim,
                        m->rope_key, p);
            OPS.copy2d(S->be, ds[i]->kc[l] + (size_t)p * kvd, kvd, k + O_(i) * kvd,
                       kvd, T_(i), kvd, 1.0f);
        }
        lin(S, &Y->lin[L_V], S->n, S->qkv, rows, 0);
        for (int i = 0; i < n; i++)
            OPS.copy2d(S->be, ds[i]->vc[l] + (size_t)ds[i]->len * kvd, kvd,
                       S->qkv + O_(i) * kvd, kvd, T_(i), kvd, 1.0f);
    }
    if (!t && OPS.attention_decode_batch) {
        for (int i = 0; i < n; i++) {
            S->bk[i] = ds[i]->kc[l];
            S->bv[i] = ds[i]->vc[l];
            S->btk[i] = ds[i]->len + 1;
        }
        OPS.attention_decode_batch(S->be, S->att, S->q, S->bk, S->bv, S->btk, n,
                                   c->n_head, c->n_kv_head, c->head_dim);
    } else {
        for (int i = 0; i < n; i++)
            OPS.attention_decode(S->be, S->att + O_(i) * qd, S->q + O_(i) * qd,
                                 ds[i]->kc[l], ds[i]->vc[l], T_(i), ds[i]->len + T_(i),
                                 c->n_head, c->n_kv_head, c->head_dim);
    }
#undef T_
#undef O_
    lin(S, &Y->lin[c->arch == DT_ARCH_GPT2 ? G_O : L_O], S->att, S->x, rows, 1);
    norm(S, S->n, S->x, Y->n2w, Y->n2b, rows);
    if (c->arch == DT_ARCH_GPT2) {
        lin(S, &Y->lin[G_FC], S->n, S->h1, rows, 0);
        OPS.gelu_fwd(S->be, S->act, S->h1, (long)rows * F);
        lin(S, &Y->lin[G_PROJ], S->act, S->x, rows, 1);
    } else {
        lin(S, &Y->lin[L_GATE], S->n, S->h1, rows, 0);
        lin(S, &Y->lin[L_UP], S->n, S->h2, rows, 0);
        OPS.swiglu_fwd(S->be, S->act, S->h1, S->h2, (long)rows * F);
        lin(S, &Y->lin[L_DOWN], S->act, S->x, rows, 1);
    }
}

/* Checks a batch of decoders of one model: distinct, same model, each
 * with room for t[i] (t NULL: 1) more positions and at least `minlen` in its
 * cache. Returns the scratch (the decoder with the most rows) or NULL with
 * err. */
static dt_decoder *batch_check(dt_decoder *const *ds, int n, const int *t, int minlen,
                               char *err)
{
    dt_decoder *S = ds[0];
    for (int i = 0; i < n; i++) {
        int ti = t ? t[i] : 1;
        if (ds[i]->m != S->m) {
            dt_errf(err, DT_EINVAL, "decoder batch: sequence %d runs another model", i);
            return NULL;
        }
        if (ti < 1 || ds[i]->len < minlen || ds[i]->len + ti > ds[i]->maxT) {
            dt_errf(err, DT_EINVAL, "decoder batch: sequence %d: %d positions exceed its "
                    "context of %d", i, ds[i]->len + ti, ds[i]->maxT);
            return NULL;
        }
        for (int j = 0; j < i; j++)
            if (ds[j] == ds[i]) {
                dt_errf(err, DT_EINVAL, "decoder batch: sequence %d appears twice", i);
                return NULL;
            }
        if (ds[i]->rows > S->rows)
            S = ds[i];
    }
    if (!S->m->ids) {
        dt_errf(err, DT_EINVAL, "decoder: the model's activations were released");
        return NULL;
    }
    return S;
}

/* S's adapter scratch for the widest adapter of ds, and logits for `rows`
 * rows. */
static int batch_prepare(dt_decoder *S, dt_decoder *const *ds, int n, int rows, char *err)
{
    int r = 0, rc, V = S->m->c.vocab;
    for (int i = 0; i < n; i++)
        if (ds[i]->ad && ds[i]->ad->rank > r)
            r = ds[i]->ad->rank;
    if (r && (rc = au_ensure(S, r, err)))
        return rc;
    S->ad1 = NULL;
    if (S->bcap < rows) {
        OPS_(S).free(S->be, S->blogits);
        S->bcap = 0;
        if (!(S->blogits = OPS_(S).alloc(S->be, (size_t)rows * V * sizeof(float))))
            return dt_errf(err, DT_ENOMEM, "decoder batch: out of device memory "
                           "for %d rows of logits", rows);
        S->bcap = rows;
    }
    return 0;
}

int dt_decoder_feed_batch(dt_decoder *const *ds, int n, const int32_t *const *ids,
                          const int *t, float *logits, char *err)
{
    if (n < 1)
        return dt_errf(err, DT_EINVAL, "decoder batch: no sequences");
    dt_decoder *S = batch_check(ds, n, t, 0, err), *d = S;
    if (!S)
        return DT_EINVAL;
    dt_model *m = S->m;
    const dt_config *c = &m->c;
    int C = c->d_model, V = c->vocab, rc;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < t[i]; j++)
            if (ids[i][j] < 0 || ids[i][j] >= V)
                return dt_errf(err, DT_EINVAL, "token id %d out of range [0, %d)",
                               ids[i][j], V);
    int chunk = S->rows < m->N ? S->rows : m->N;
    if ((rc = batch_prepare(S, ds, n, chunk, err)))
        return rc;
    int32_t *cat = malloc((size_t)chunk * sizeof *cat);
    int *off = malloc((size_t)n * sizeof *off);
    if (!cat || !off) {
        free(cat);
        free(off);
        return dt_errf(err, DT_ENOMEM, "decoder batch: out of memory");
    }
    for (int g0 = 0; g0 < n && !rc;) {
        if (t[g0] > chunk) { /* longer than a chunk: alone, in chunks */
            rc = dt_decoder_feed(ds[g0], ids[g0], t[g0], logits ? logits + (size_t)g0 * V
                                                                 : NULL, err);
            g0++;
            continue;
        }
        /* whole prompts, as many as fit in a chunk of rows */
        int g1 = g0, rows = 0;
        while (g1 < n && t[g1] <= chunk && rows + t[g1] <= chunk) {
            off[g1 - g0] = rows;
            memcpy(cat + rows, ids[g1], (size_t)t[g1] * sizeof *cat);
            for (int j = 0; j < t[g1]; j++)
                S->adr[rows + j] = ds[g1]->ad;
            rows += t[g1++];
        }
        int ng = g1 - g0;
        dt_decoder *const *gs = ds + g0;
        S->ad1 = NULL; /* a feed alone may have set it */
        S->adany = 0;
        for (int i = 0; i < ng; i++)
            S->adany |= gs[i]->ad != NULL;
        OPS.upload(S->be, m->ids, cat, (size_t)rows * sizeof(int32_t));
        for (int i = 0; i < ng; i++)
            dt_model_embed(m, S->x + (size_t)off[i] * C, m->ids + off[i],
                           m->wpe ? m->wpe + (size_t)gs[i]->len * C : NULL, 1, t[g0 + i]);
        for (int l = 0; l < c->n_layer; l++)
            layer_step_batch(S, gs, ng, l, t + g0, off);
        for (int i = 0; i < ng; i++) {
            gs[i]->len += t[g0 + i];
            norm(S, S->n + (size_t)i * C, S->x + (size_t)(off[i] + t[g0 + i] - 1) * C,
                 m->nfw, m->nfb, 1);
        }
        if (logits) {
            dt_model_head_gemm(m, 1, S->n, S->blogits, ng, 0.0f);
            OPS.download(S->be, logits + (size_t)g0 * V, S->blogits,
                         (size_t)ng * V * sizeof(float));
        }
        g0 = g1;
    }
    S->adany = 0;
    free(cat);
    free(off);
    if (rc)
        return rc;
    return OPS.sync(S->be, err);
}

int dt_decoder_step_batch(dt_decoder *const *ds, int n, const int32_t *ids,
                          float *logits, char *err)
{
    if (n < 1)
        return dt_errf(err, DT_EINVAL, "decoder batch: no sequences");
    dt_decoder *S = batch_check(ds, n, NULL, 1, err), *d = S;
    if (!S)
        return DT_EINVAL;
    dt_model *m = S->m;
    const dt_config *c = &m->c;
    int C = c->d_model, V = c->vocab, rc;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return dt_errf(err, DT_EINVAL, "token id %d out of range [0, %d)", ids[i], V);
    int chunk = S->rows < m->N ? S->rows : m->N;
    if ((rc = batch_prepare(S, ds, n, chunk, err)))
        return rc;
    for (int b0 = 0; b0 < n; b0 += chunk) {
        int nb = n - b0 < chunk ? n - b0 : chunk;
        dt_decoder *const *bs = ds + b0;
        S->adany = 0;
        for (int i = 0; i < nb; i++) {
            S->adr[i] = bs[i]->ad;
            S->adany |= bs[i]->ad != NULL;
        }
        OPS.upload(S->be, m->ids, ids + b0, (size_t)nb * sizeof(int32_t));
        for (int i = 0; i < nb; i++)
            dt_model_embed(m, S->x + (size_t)i * C, m->ids + i,
                           m->wpe ? m->wpe + (size_t)bs[i]->len * C : NULL, 1, 1);
        for (int l = 0; l < c->n_layer; l++)
            layer_step_batch(S, bs, nb, l, NULL, NULL);
        for (int i = 0; i < nb; i++)
            bs[i]->len++;
        norm(S, S->n, S->x, m->nfw, m->nfb, nb);
        dt_model_head_gemm(m, 1, S->n, S->blogits, nb, 0.0f);
        if (logits)
            OPS.download(S->be, logits + (size_t)b0 * V, S->blogits,
                         (size_t)nb * V * sizeof(float));
    }
    S->adany = 0;
    return OPS.sync(S->be, err);
}

/* ---- adapters over a shared base ------------------------------------------- */

void dt_decoder_set_adapter(dt_decoder *d, const dt_decoder_adapter *a)
{
    d->ad = a;
}

int dt_decoder_adapter_load(dt_model *m, const dt_weights *w, const char *dir,
                            dt_decoder_adapter **out, char *err)
{
    dt_backend *be = m->be;
    const dt_config *c = &m->c;
    dt_peft_adapter pa;
    *out = NULL;
    int rc = dt_peft_load(dir, w, &pa, err);
    if (rc)
        return rc;
    int nslot = c->n_layer * MAX_LIN, used = 0;
    dt_decoder_adapter *a = calloc(1, sizeof *a);
    if (!a || !(a->A = calloc((size_t)nslot, sizeof *a->A)) ||
        !(a->B = calloc((size_t)nslot, sizeof *a->B))) {
        rc = dt_errf(err, DT_ENOMEM, "adapter: out of memory");
        goto fail;
    }
    a->m = m;
    a->rank = pa.rank;
    a->s = pa.alpha / (float)pa.rank;
    for (int l = 0; l < c->n_layer; l++)
        for (int j = 0; j < m->L[l].nlin; j++) {
            dt_linear *L = &m->L[l].lin[j];
            char base[160], name[200];
            snprintf(base, sizeof base, "%s", L->wname);
            char *dot = strstr(base, ".weight");
            if (dot)
                *dot = 0;
            snprintf(name, sizeof name, "%s.lora_A", base);
            dt_tensor *tA = dt_tensorset_find(&pa.ts, name);
            snprintf(name, sizeof name, "%s.lora_B", base);
            dt_tensor *tB = dt_tensorset_find(&pa.ts, name);
            if (!tA && !tB)
                continue;
            if (!tA || !tB || tA->numel != (int64_t)pa.rank * L->in ||
                tB->numel != (int64_t)L->out * pa.rank) {
                rc = dt_errf(err, DT_EFORMAT, "%s: the adapter of %s needs lora_A "
                             "(%d, %d) and lora_B (%d, %d)", dir, L->wname, pa.rank,
                             L->in, L->out, pa.rank);
                goto fail;
            }
            int slot = l * MAX_LIN + j;
            size_t nA = (size_t)tA->numel, nB = (size_t)tB->numel;
            if (!(a->A[slot] = be->i.alloc(be, nA * sizeof(float))) ||
                !(a->B[slot] = be->i.alloc(be, nB * sizeof(float)))) {
                rc = dt_errf(err, DT_ENOMEM, "adapter: out of device memory");
                goto fail;
            }
            be->i.upload(be, a->A[slot], tA->data, nA * sizeof(float));
            be->i.upload(be, a->B[slot], tB->data, nB * sizeof(float));
            a->bytes += (long long)(nA + nB) * (long long)sizeof(float);
            used += 2;
        }
    if (used != pa.ts.n) {
        rc = dt_errf(err, DT_EFORMAT, "%s: %d of the adapter's %d tensors match no "
                     "linear of the model", dir, pa.ts.n - used, pa.ts.n);
        goto fail;
    }
    if ((rc = be->i.sync(be, err)))
        goto fail;
    dt_peft_free(&pa);
    *out = a;
    return 0;
fail:
    dt_decoder_adapter_free(a);
    dt_peft_free(&pa);
    return rc;
}

void dt_decoder_adapter_free(dt_decoder_adapter *a)
{
    if (!a)
        return;
    dt_backend *be = a->m ? a->m->be : NULL;
    int nslot = a->m ? a->m->c.n_layer * MAX_LIN : 0;
    for (int i = 0; i < nslot && a->A && a->B; i++) {
        be->i.free(be, a->A[i]);
        be->i.free(be, a->B[i]);
    }
    free(a->A);
    free(a->B);
    free(a);
}

long long dt_decoder_adapter_bytes(const dt_decoder_adapter *a)
{
    return a ? a->bytes : 0;
}

static double urand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (double)(*s >> 11) / 9007199254740992.0;
}

typedef struct { float p; int32_t id; } prob_id;

static int by_prob(const void *a, const void *b)
{
    const prob_id *x = a, *y = b;
    if (x->p != y->p)
        return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

int32_t dt_sample(float *logits, int V, float temperature, float top_p,
                  uint64_t *rng)
{
    int best = 0;
    for (int j = 1; j < V; j++)
        if (logits[j] > logits[best])
            best = j;
    if (temperature <= 0.0f)
        return best;
    if (top_p <= 0.0f || top_p >= 1.0f) {
        /* the sampler `deltatune generate` always had (same seed, same
         * tokens) */
        double sum = 0, r, mx = logits[best];
        for (int j = 0; j < V; j++)
            sum += exp((logits[j] - mx) / temperature);
        r = urand(rng) * sum;
        for (int j = 0; j < V; j++) {
            r -= exp((logits[j] - mx) / temperature);
            if (r <= 0)
                return j;
        }
        return best;
    }
    prob_id *pi = malloc((size_t)V * sizeof *pi);
    if (!pi)
        return best;
    double sum = 0, mx = logits[best];
    for (int j = 0; j < V; j++) {
        pi[j].p = (float)exp((logits[j] - mx) / temperature);
        pi[j].id = j;
        sum += pi[j].p;
    }
    qsort(pi, (size_t)V, sizeof *pi, by_prob);
    double keep = 0;
    int k = 0;
    while (k < V && (k == 0 || keep < top_p * sum))
        keep += pi[k++].p;
    double r = urand(rng) * keep;
    int32_t out = pi[k - 1].id;
    for (int j = 0; j < k; j++) {
        r -= pi[j].p;
        if (r <= 0) {
            out = pi[j].id;
            break;
        }
    }
    free(pi);
    return out;
}

/* Whether the decoded text of out(n) contains a stop string. */
static int hit_stop(const dt_gen_opts *o, const int32_t *out, int n)
{
    if (!o->stop || !o->tok || !o->stop[0])
        return 0;
    char *text = dt_tokenizer_decode(o->tok, out, n);
    int hit = 0;
    for (int i = 0; text && o->stop[i] && !hit; i++)
        hit = o->stop[i][0] && strstr(text, o->stop[i]) != NULL;
    free(text);
    return hit;
}

int dt_generate(dt_decoder *d, const int32_t *prompt, int n,
                const dt_gen_opts *o, int32_t **out, int *nout,
                const char **finish, dt_gen_logits_fn fn, void *ud,
                char *err)
{
    int V = d->m->c.vocab;
    *out = NULL;
    *nout = 0;
    *finish = "length";
    if (n < 1 || n >= d->maxT)
        return dt_errf(err, DT_EINVAL, "the prompt has %d tokens; the model "
                       "takes %d", n, d->maxT);
    int cap = o->max_tokens < d->maxT - n ? o->max_tokens : d->maxT - n;
    int32_t *ids = malloc((size_t)(cap > 0 ? cap : 1) * sizeof *ids);
    float *logits = malloc((size_t)V * sizeof *logits);
    if (!ids || !logits) {
        free(ids);
        free(logits);
        return dt_errf(err, DT_ENOMEM, "generate: out of memory");
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ o->seed;
    int k = 0, rc = 0;
    dt_decoder_reset(d);
    rc = dt_decoder_feed(d, prompt, n, logits, err);
    while (!rc && k < cap) {
        if (fn)
            fn(ud, k, logits, V);
        int32_t next = dt_sample(logits, V, o->temperature, o->top_p, &rng);
        if (next == o->eos) {
            *finish = "stop";
            break;
        }
        ids[k++] = next;
        if (hit_stop(o, ids, k)) {
            *finish = "stop";
            break;
        }
        if (k < cap)
            rc = dt_decoder_feed(d, &next, 1, logits, err);
    }
    free(logits);
    if (rc) {
        free(ids);
        return rc;
    }
    *out = ids;
    *nout = k;
    return 0;
}
