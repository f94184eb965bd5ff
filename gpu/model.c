/* model.c: GPT-2 and Llama-family transformers on a backend: weights,
 * LoRA factors, activations, forward and backward.
 *
 * Layout: every linear weight is W(out, in) and y = x·Wᵀ (+ b). A LoRA
 * adapter covers rows [off, off+rows) of one W and adds s·(x·Aᵀ)·Bᵀ to those
 * output columns; with no dropout in the branch (Delta-LoRA's rule, and our
 * LoRA too). Every activation the backward pass needs is kept per layer, so
 * memory grows with n_layer·B·T·(C + F); with activation checkpointing
 * (dt_lora_opts.act_ckpt) only each layer's input is kept per layer
 * (n_layer·B·T·C) and the rest is one layer's, recomputed per layer in the
 * backward pass. */
#include "model_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dt.h"
#include "base/random.h"
#include "half.h"

/* ---- small helpers ------------------------------------------------------ */


/* Allocation stops at the first failure: once *fail is set nothing more is
 * taken (dt_model_new then frees what was), and the failed size is kept for
 * the message. */
static float *dalloc(dt_model *m, size_t nfloat, int *fail)
{
    if (nfloat == 0 || *fail)
        return NULL;
    float *p = m->be->i.alloc(m->be, nfloat * sizeof(float));
    if (!p) {
        *fail = 1;
        m->fail_bytes = nfloat * sizeof(float);
    } else {
        m->taken_bytes += nfloat * sizeof(float);
    }
    return p;
}

static int add_named(dt_model *m, const char *name, float *p, long n)
{
    if (m->nnamed == m->capnamed) {
        int cap = m->capnamed ? 2 * m->capnamed : 64;
        dt_named *nn = realloc(m->named, (size_t)cap * sizeof *nn);
        if (!nn)
            return DT_ENOMEM;
        m->named = nn;
        m->capnamed = cap;
    }
    dt_named *e = &m->named[m->nnamed++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->p = p;
    e->n = n;
    return 0;
}

/* Uploads the canonical host tensor `name` (expected numel n). */
static float *upload_w(dt_model *m, const char *name, long n, int *fail,
                       char *err)
{
    dt_tensor *t = dt_tensorset_find(&m->w->ts, name);
    if (!t) {
        if (!*fail)
            dt_errf(err, DT_EFORMAT, "missing tensor %s", name);
        *fail = 1;
        return NULL;
    }
    if (t->numel != n) {
        if (!*fail)
            dt_errf(err, DT_EFORMAT, "tensor %s has %lld elements, expected %ld",
                    name, (long long)t->numel, n);
        *fail = 1;
        return NULL;
    }
    float *p = dalloc(m, (size_t)n, fail);
    if (!p) {
        if (!err[0])
            dt_errf(err, DT_ENOMEM, "out of device memory for %s (%ld bytes)",
                    name, n * 4);
        return NULL;
    }
    float *h = dt_weights_upload_begin(m->w, t, err); /* err: why not */
    if (!h) {
        m->be->i.free(m->be, p);
        m->taken_bytes -= (size_t)n * sizeof(float);
        *fail = 1;
        return NULL;
    }
    m->be->i.upload(m->be, p, h, (size_t)n * sizeof(float));
    /* upload() may be asynchronous: h is freed next */
    if (m->w->release_on_upload && m->be->i.sync(m->be, err))
        *fail = 1;
    dt_weights_upload_end(m->w, t, h);
    add_named(m, name, p, n);
    return p;
}

/* Uploads the canonical host tensor `name` (numel n) as bf16 (round to
 * nearest even) for a frozen linear weight, the embedding table or the LM
 * head in bf16 mode: converted in
 * chunks of 1 M elements, so no second full host copy exists, and not
 * registered as a named fp32 tensor (checkpoints skip it; export reads the
 * fp32 base again). */
static uint16_t *upload_w_bf16(dt_model *m, const char *name, long n,
                               int *fail, char *err)
{
    dt_tensor *t = dt_tensorset_find(&m->w->ts, name);
    if (!t || t->numel != n || (!t->data && !t->raw)) {
        if (!*fail)
            dt_errf(err, DT_EFORMAT, "tensor %s missing or not %ld elements",
                    name, n);
        *fail = 1;
        return NULL;
    }
    if (*fail)
        return NULL;
    size_t bytes = (size_t)n * sizeof(uint16_t);
    uint16_t *p = m->be->i.alloc(m->be, bytes);
    enum { CHUNK = 1 << 20 };
    uint16_t *h = p ? malloc(CHUNK * sizeof *h) : NULL;
    float *src = p && h ? dt_weights_upload_begin(m->w, t, err) : NULL;
    if (!p || !h || !src) {
        int conv = p && h; /* the conversion failed: err says why */
        m->be->i.free(m->be, p);
        free(h);
        if (conv) {
            *fail = 1;
            return NULL;
        }
        *fail = 1;
        m->fail_bytes = bytes;
        return NULL;
    }
    m->taken_bytes += bytes;
    for (long i0 = 0; i0 < n; i0 += CHUNK) {
        long k = n - i0 < CHUNK ? n - i0 : CHUNK;
        for (long i = 0; i < k; i++)
            h[i] = dt_f32_to_bf16(src[i0 + i]);
        m->be->i.upload(m->be, p + i0, h, (size_t)k * sizeof *h);
        /* upload() may be asynchronous: the next chunk reuses h */
        char why[DT_ERR_LEN];
        if (m->be->i.sync(m->be, why)) {
            *fail = 1;
            break;
        }
    }
    free(h);
    dt_weights_upload_end(m->w, t, src);
    return p;
}

/* Reserves the params array so that pointers into it stay valid. */
static dt_param *new_param(dt_model *m, const char *name, float *p, long n,
                           int64_t d0, int64_t d1, int *fail)
{
    if (m->nparams == m->capparams) {
        *fail = 1;
        return NULL;
    }
    dt_param *q = &m->params[m->nparams++];
    snprintf(q->name, sizeof q->name, "%s", name);
    q->p = p;
    q->n = n;
    q->shape[0] = d0;
    q->shape[1] = d1;
    q->g = dalloc(m, (size_t)n, fail);
    q->m = dalloc(m, (size_t)n, fail);
    q->v = dalloc(m, (size_t)n, fail);
    /* alloc() does not zero: AdamW's first step reads both moments, and the
     * backward pass accumulates into g (zeroed again by zero_grad). */
    float *zero[3] = {q->g, q->m, q->v};
    for (int i = 0; i < 3; i++)
        if (zero[i])
            m->be->i.memset0(m->be, zero[i], (size_t)n * sizeof(float));
    return q;
}

/* A weight that full fine-tuning trains; NULL param otherwise. */
static float *weight(dt_model *m, const char *name, int64_t d0, int64_t d1,
                     dt_param **pp, int *fail, char *err)
{
    long n = (long)(d0 * (d1 ? d1 : 1));
    float *p = upload_w(m, name, n, fail, err);
    *pp = NULL;
    if (p && m->lo.method == DT_FULL)
        *pp = new_param(m, name, p, n, d0, d1, fail);
    return p;
}

static float *opt_weight(dt_model *m, const char *name, int64_t d0,
                         dt_param **pp, int *fail, char *err)
{
    *pp = NULL;
    if (!dt_tensorset_find(&m->w->ts, name))
        return NULL;
    return weight(m, name, d0, 0, pp, fail, err);
}

/* ---- targets -------------------------------------------------------------- */

int dt_parse_targets(const char *list, dt_arch arch, unsigned *mask, char *err)
{
    static const struct { const char *name; unsigned bits; int arch; } tab[] = {
        {"q", DT_T_Q, -1}, {"k", DT_T_K, -1}, {"v", DT_T_V, -1},
        {"o", DT_T_O, -1}, {"up", DT_T_UP, -1}, {"down", DT_T_DOWN, -1},
        {"gate", DT_T_GATE, DT_ARCH_LLAMA},
        {"q_proj", DT_T_Q, DT_ARCH_LLAMA}, {"k_proj", DT_T_K, DT_ARCH_LLAMA},
        {"v_proj", DT_T_V, DT_ARCH_LLAMA}, {"o_proj", DT_T_O, DT_ARCH_LLAMA},
        {"gate_proj", DT_T_GATE, DT_ARCH_LLAMA},
        {"up_proj", DT_T_UP, DT_ARCH_LLAMA}, {"down_proj", DT_T_DOWN, DT_ARCH_LLAMA},
        {"c_attn", DT_T_CATTN, DT_ARCH_GPT2}, {"c_fc", DT_T_UP, DT_ARCH_GPT2},
        {"c_proj", DT_T_O | DT_T_DOWN, DT_ARCH_GPT2},
        {"attn.c_proj", DT_T_O, DT_ARCH_GPT2}, {"mlp.c_proj", DT_T_DOWN, DT_ARCH_GPT2},
    };
    *mask = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && *p == ' ') { p++; len--; }
        while (len && p[len - 1] == ' ') len--;
        if (len == 3 && !strncmp(p, "all", 3)) {
            *mask |= arch == DT_ARCH_GPT2 ? (DT_T_CATTN | DT_T_O | DT_T_UP | DT_T_DOWN)
                                          : 0x7f;
        } else if (len) {
            size_t i;
            for (i = 0; i < sizeof tab / sizeof tab[0]; i++)
                if (strlen(tab[i].name) == len && !strncmp(tab[i].name, p, len) &&
                    (tab[i].arch < 0 || tab[i].arch == (int)arch))
                    break;
            if (i == sizeof tab / sizeof tab[0])
                return dt_errf(err, DT_EINVAL,
                               "--target-modules: unknown module \"%.*s\" for %s "
                               "(use q,k,v,o,%sup,down%s)", (int)len, p,
                               arch == DT_ARCH_GPT2 ? "GPT-2" : "Llama",
                               arch == DT_ARCH_GPT2 ? "" : "gate,",
                               arch == DT_ARCH_GPT2 ? ", c_attn, c_fc, c_proj"
                                                    : " or q_proj, ...");
            *mask |= tab[i].bits;
        }
        if (!e)
            break;
        p = e + 1;
    }
    if ((*mask & DT_T_CATTN) && (*mask & (DT_T_Q | DT_T_K | DT_T_V)))
        return dt_errf(err, DT_EINVAL,
                       "--target-modules: c_attn overlaps q/k/v; pick one");
    if (!*mask)
        return dt_errf(err, DT_EINVAL, "--target-modules: empty list");
    return 0;
}

/* ---- construction ------------------------------------------------------------ */

static int add_lora(dt_model *m, int layer, int lin, int off, int rows,
                    const char *tname, const char *wname, uint64_t *rng,
                    int *fail)
{
    dt_linear *L = &m->L[layer].lin[lin];
    dt_lora *a = &m->loras[m->nloras++];
    int r = m->lo.rank, in = L->in;
    char name[128];
    a->layer = layer;
    a->lin = lin;
    a->row_off = off;
    a->rows = rows;
    a->in = in;
    snprintf(a->wname, sizeof a->wname, "%s", wname);
    snprintf(a->tname, sizeof a->tname, "%s", tname);

    /* A: Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)),
     * as PEFT (nn.init.kaiming_uniform_); B: zeros. */
    float *hA = malloc((size_t)r * in * sizeof(float));
    if (!hA) {
        *fail = 1;
        return DT_ENOMEM;
    }
    float bound = 1.0f / sqrtf((float)in);
    for (long i = 0; i < (long)r * in; i++)
        hA[i] = ((float)(dt_rng_next(rng) >> 40) / (float)(1 << 24) * 2.0f - 1.0f) * bound;
    snprintf(name, sizeof name, "lora.%d.%s.A", layer, tname);
    float *A = dalloc(m, (size_t)r * in, fail);
    if (A)
        m->be->i.upload(m->be, A, hA, (size_t)r * in * sizeof(float));
    free(hA);
    a->A = new_param(m, name, A, (long)r * in, r, in, fail);
    add_named(m, name, A, (long)r * in);
    snprintf(name, sizeof name, "lora.%d.%s.B", layer, tname);
    float *B = dalloc(m, (size_t)rows * r, fail);
    if (B) /* B = 0: the adapter starts as the identity */
        m->be->i.memset0(m->be, B, (size_t)rows * r * sizeof(float));
    a->B = new_param(m, name, B, (long)rows * r, rows, r, fail);
    add_named(m, name, B, (long)rows * r);
    a->u = dalloc(m, (size_t)m->N * r, fail);
    if (m->lo.method == DT_DELTA_LORA) {
        if (!m->lowrank) { /* the explicit W update's concatenations */
            a->catA = dalloc(m, (size_t)2 * r * in, fail);
            a->catB = dalloc(m, (size_t)rows * 2 * r, fail);
        }
        snprintf(name, sizeof name, "lora.%d.%s.A_K", layer, tname);
        a->AK = dalloc(m, (size_t)r * in, fail);
        if (a->AK)
            m->be->i.memset0(m->be, a->AK, (size_t)r * in * sizeof(float));
        add_named(m, name, a->AK, (long)r * in);
        snprintf(name, sizeof name, "lora.%d.%s.B_K", layer, tname);
        a->BK = dalloc(m, (size_t)rows * r, fail);
        if (a->BK)
            m->be->i.memset0(m->be, a->BK, (size_t)rows * r * sizeof(float));
        add_named(m, name, a->BK, (long)rows * r);
    }
    L->lora[L->nlora++] = a;
    return 0;
}

/* Sets up one linear: uploads W (and b), registers it. */
static void linear(dt_model *m, dt_linear *L, const char *wname,
                   const char *bname, int out, int in, int *fail, char *err)
{
    L->out = out;
    L->in = in;
    snprintf(L->wname, sizeof L->wname, "%s", wname);
    L->W = NULL;
    L->Wh = NULL;
    L->pW = NULL;
    if (m->bf16 && m->lo.method != DT_FULL)
        L->Wh = upload_w_bf16(m, wname, (long)out * in, fail, err);
    else
        L->W = weight(m, wname, out, in, &L->pW, fail, err);
    L->b = bname ? opt_weight(m, bname, out, &L->pb, fail, err) : NULL;
}

static int build_layers(dt_model *m, uint64_t *rng, int *fail, char *err)
{
    const dt_config *c = &m->c;
    int C = c->d_model, F = c->d_ff;
    char n1[128], n2[128];
    for (int l = 0; l < c->n_layer; l++) {
        dt_layer *Y = &m->L[l];
        if (c->arch == DT_ARCH_GPT2) {
            static const char *lin[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
            static const int outs[4] = {3, 1, 0, 1};
            snprintf(n1, sizeof n1, "h.%d.ln_1.weight", l);
            Y->n1w = weight(m, n1, C, 0, &Y->pn1w, fail, err);
            snprintf(n1, sizeof n1, "h.%d.ln_1.bias", l);
            Y->n1b = weight(m, n1, C, 0, &Y->pn1b, fail, err);
            snprintf(n1, sizeof n1, "h.%d.ln_2.weight", l);
            Y->n2w = weight(m, n1, C, 0, &Y->pn2w, fail, err);
            snprintf(n1, sizeof n1, "h.%d.ln_2.bias", l);
            Y->n2b = weight(m, n1, C, 0, &Y->pn2b, fail, err);
            Y->nlin = 4;
            for (int j = 0; j < 4; j++) {
                int out = j == G_FC ? F : outs[j] * C, in = j == G_PROJ ? F : C;
                snprintf(n1, sizeof n1, "h.%d.%s.weight", l, lin[j]);
                snprintf(n2, sizeof n2, "h.%d.%s.bias", l, lin[j]);
                linear(m, &Y->lin[j], n1, n2, out, in, fail, err);
            }
            if (*fail || m->lo.method == DT_FULL)
                continue;
            unsigned t = m->lo.targets;
            snprintf(n1, sizeof n1, "h.%d.attn.c_attn.weight", l);
            if (t & DT_T_CATTN) add_lora(m, l, G_QKV, 0, 3 * C, "c_attn", n1, rng, fail);
            if (t & DT_T_Q) add_lora(m, l, G_QKV, 0, C, "q", n1, rng, fail);
            if (t & DT_T_K) add_lora(m, l, G_QKV, C, C, "k", n1, rng, fail);
            if (t & DT_T_V) add_lora(m, l, G_QKV, 2 * C, C, "v", n1, rng, fail);
            snprintf(n1, sizeof n1, "h.%d.attn.c_proj.weight", l);
            if (t & DT_T_O) add_lora(m, l, G_O, 0, C, "o", n1, rng, fail);
            snprintf(n1, sizeof n1, "h.%d.mlp.c_fc.weight", l);
            if (t & DT_T_UP) add_lora(m, l, G_FC, 0, F, "up", n1, rng, fail);
            snprintf(n1, sizeof n1, "h.%d.mlp.c_proj.weight", l);
            if (t & DT_T_DOWN) add_lora(m, l, G_PROJ, 0, C, "down", n1, rng, fail);
        } else {
            static const char *lin[7] = {"self_attn.q_proj", "self_attn.k_proj",
                "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj"};
            static const char *tn[7] = {"q", "k", "v", "o", "gate", "up", "down"};
            int outs[7] = {m->qdim, m->kvdim, m->kvdim, C, F, F, C};
            int ins[7] = {C, C, C, m->qdim, C, C, F};
            snprintf(n1, sizeof n1, "layers.%d.input_layernorm.weight", l);
            Y->n1w = weight(m, n1, C, 0, &Y->pn1w, fail, err);
            snprintf(n1, sizeof n1, "layers.%d.post_attention_layernorm.weight", l);
            Y->n2w = weight(m, n1, C, 0, &Y->pn2w, fail, err);
            if (c->qk_norm) { /* Qwen 3: trained under full, else frozen */
                snprintf(n1, sizeof n1, "layers.%d.self_attn.q_norm.weight", l);
                Y->qnw = weight(m, n1, c->head_dim, 0, &Y->pqnw, fail, err);
                snprintf(n1, sizeof n1, "layers.%d.self_attn.k_norm.weight", l);
                Y->knw = weight(m, n1, c->head_dim, 0, &Y->pknw, fail, err);
            }
            Y->nlin = 7;
            for (int j = 0; j < 7; j++) {
                snprintf(n1, sizeof n1, "layers.%d.%s.weight", l, lin[j]);
                snprintf(n2, sizeof n2, "layers.%d.%s.bias", l, lin[j]);
                linear(m, &Y->lin[j], n1, n2, outs[j], ins[j], fail, err);
                if (!*fail && m->lo.method != DT_FULL && (m->lo.targets & (1u << j)))
                    add_lora(m, l, j, 0, outs[j], tn[j], n1, rng, fail);
            }
        }
    }
    return *fail ? -1 : 0;
}

static int alloc_acts(dt_model *m, int *fail)
{
    const dt_config *c = &m->c;
    size_t N = (size_t)m->N, C = (size_t)c->d_model, F = (size_t)c->d_ff;
    size_t NR = (size_t)c->n_layer, V = (size_t)c->vocab;
    size_t qd = (size_t)m->qdim, kd = (size_t)m->kvdim;
    /* per-layer buffers: one layer's with activation checkpointing (the
     * residual stream res keeps every layer's input either way) */
    size_t NL = m->ckpt ? 1 : NR;
    m->ids = (int32_t *)dalloc(m, N, fail);
    m->tgt = (int32_t *)dalloc(m, N, fail);
    m->rows = (int32_t *)dalloc(m, N, fail); /* the LM head's predicted rows */
    m->pos = (int32_t *)dalloc(m, N, fail);  /* packing's positions */
    m->res = dalloc(m, (NR + 1) * N * C, fail);
    m->mid = dalloc(m, NL * N * C, fail);
    m->n1 = dalloc(m, NL * N * C, fail);
    m->n2 = dalloc(m, NL * N * C, fail);
    m->n1m = dalloc(m, NL * N, fail);
    m->n1r = dalloc(m, NL * N, fail);
    m->n2m = dalloc(m, NL * N, fail);
    m->n2r = dalloc(m, NL * N, fail);
    m->q = dalloc(m, NL * N * qd, fail);
    m->k = dalloc(m, NL * N * kd, fail);
    m->v = dalloc(m, NL * N * kd, fail);
    if (c->qk_norm) { /* the norms' inputs and rstd, for their backward */
        m->qraw = dalloc(m, NL * N * qd, fail);
        m->kraw = dalloc(m, NL * N * kd, fail);
        m->qnr = dalloc(m, NL * N * (size_t)c->n_head, fail);
        m->knr = dalloc(m, NL * N * (size_t)c->n_kv_head, fail);
    }
    m->att = dalloc(m, NL * N * qd, fail);
    m->lse = dalloc(m, NL * N * (size_t)c->n_head, fail);
    m->h1 = dalloc(m, NL * N * F, fail);
    m->act = dalloc(m, N * F, fail); /* one layer: recomputed in backward */
    if (c->arch == DT_ARCH_GPT2)
        m->qkv = dalloc(m, N * 3 * C, fail);
    else
        m->h2 = dalloc(m, NL * N * F, fail);
    m->nf = dalloc(m, N * C, fail);
    m->nfm = dalloc(m, N, fail);
    m->nfr = dalloc(m, N, fail);
    m->head_rows = (int)(N < DT_HEAD_CHUNK_FLOATS / V ? N : DT_HEAD_CHUNK_FLOATS / V);
    if (m->head_rows < 1)
        m->head_rows = 1;
    m->logits = dalloc(m, (size_t)m->head_rows * V, fail);
    m->losses = dalloc(m, N, fail);
    size_t wide = qd > C ? qd : C;
    m->dres = dalloc(m, N * C, fail);
    m->dx = dalloc(m, N * wide, fail);
    m->dq = dalloc(m, N * qd, fail);
    m->dk = dalloc(m, N * kd, fail);
    m->dv = dalloc(m, N * kd, fail);
    m->datt = dalloc(m, N * wide, fail);
    if (c->arch == DT_ARCH_GPT2)
        m->dqkv = dalloc(m, N * 3 * C, fail);
    m->dh1 = dalloc(m, N * F, fail);
    m->dh2 = dalloc(m, N * F, fail);
    m->dact = dalloc(m, N * F, fail);
    m->du = dalloc(m, N * (size_t)(m->lo.rank > 0 ? m->lo.rank : 1), fail);
    return *fail ? DT_ENOMEM : 0;
}

int dt_model_new(dt_backend *be, dt_weights *w, const dt_lora_opts *lo,
                 int B, int T, uint64_t seed, dt_model **out, char *err)
{
    *out = NULL;
    err[0] = 0;
    const dt_config *c = &w->cfg;
    if (B < 1 || T < 1)
        return dt_errf(err, DT_EINVAL, "batch size and sequence length must be >= 1");
    if (c->arch == DT_ARCH_GPT2 && T > c->max_pos)
        return dt_errf(err, DT_EINVAL, "--seq-len %d exceeds the model's %d positions",
                       T, c->max_pos);
    if (c->sliding_window > 0 && T > c->sliding_window)
        return dt_errf(err, DT_ENOTSUP, "--seq-len %d exceeds the model's "
                       "sliding_window %d (sliding-window attention is not "
                       "supported; use a sequence length <= %d)", T,
                       c->sliding_window, c->sliding_window);
    /* rank 0 with no targets is a frozen model (inference only). */
    if (lo->method != DT_FULL && (lo->rank < 0 || (lo->rank > 0) != (lo->targets != 0)))
        return dt_errf(err, DT_EINVAL, "LoRA needs rank >= 1 and target modules");
    dt_model *m = calloc(1, sizeof *m);
    if (!m)
        return dt_errf(err, DT_ENOMEM, "out of memory");
    m->be = be;
    m->w = w;
    m->c = *c;
    m->lo = *lo;
    m->s = lo->method == DT_FULL ? 0.0f : lo->alpha / (float)lo->rank;
    m->bf16 = lo->precision == DT_PREC_BF16 && lo->method != DT_FULL;
    m->ckpt = lo->act_ckpt != 0;
    m->lowrank = lo->method == DT_DELTA_LORA &&
                 (lo->delta_lowrank || lo->precision == DT_PREC_BF16);
    if (be->i.set_tf32)
        be->i.set_tf32(be, lo->precision == DT_PREC_TF32);
    m->B = B;
    m->T = T;
    m->N = B * T;
    m->qdim = c->n_head * c->head_dim;
    m->kvdim = c->n_kv_head * c->head_dim;
    m->rope_key = dt_rope_key(c->rope_theta, c->rope_factor, c->rope_low_freq,
                              c->rope_high_freq, c->rope_orig_ctx);
    m->L = calloc((size_t)c->n_layer, sizeof *m->L);
    int maxlora = lo->method == DT_FULL ? 0 : c->n_layer * MAX_LIN;
    m->capparams = 4 + c->n_layer * 20 + 2 * maxlora;
    m->params = calloc((size_t)m->capparams, sizeof *m->params);
    m->loras = calloc((size_t)(maxlora ? maxlora : 1), sizeof *m->loras);
    if (!m->L || !m->params || !m->loras) {
        dt_model_free(m);
        return dt_errf(err, DT_ENOMEM, "out of memory");
    }
    int fail = 0;
    uint64_t rng = seed ^ 0x6a09e667f3bcc909ull;
    int C = c->d_model;
    const char *wte_name = c->arch == DT_ARCH_GPT2 ? "wte.weight" : "embed_tokens.weight";
    if (!m->bf16) /* bf16: uploaded in bf16 below */
        m->wte = weight(m, wte_name, c->vocab, C, &m->pwte, &fail, err);
    if (c->arch == DT_ARCH_GPT2) {
        m->wpe = weight(m, "wpe.weight", c->max_pos, C, &m->pwpe, &fail, err);
        m->nfw = weight(m, "ln_f.weight", C, 0, &m->pnfw, &fail, err);
        m->nfb = weight(m, "ln_f.bias", C, 0, &m->pnfb, &fail, err);
    } else {
        m->nfw = weight(m, "norm.weight", C, 0, &m->pnfw, &fail, err);
    }
    if (!fail && m->bf16) {
        /* bf16 (lora, delta_lora): the frozen table and head in bf16 only,
         * no fp32 device copy; a tied head is the same table. */
        long vc = (long)c->vocab * C;
        m->wteh = upload_w_bf16(m, wte_name, vc, &fail, err);
        m->headh = c->tied ? m->wteh
                           : upload_w_bf16(m, "lm_head.weight", vc, &fail, err);
    } else if (!fail && c->tied) {
        m->head = m->wte;
        m->phead = m->pwte;
    } else if (!fail) {
        m->head = weight(m, "lm_head.weight", c->vocab, C, &m->phead, &fail, err);
    }
    if (!fail)
        build_layers(m, &rng, &fail, err);
    if (!fail)
        alloc_acts(m, &fail);
    if (!fail) {
        m->hids = malloc((size_t)m->N * sizeof *m->hids);
        m->hrows = malloc(2 * (size_t)m->N * sizeof *m->hrows);
        m->hpos = malloc((size_t)m->N * sizeof *m->hpos);
        if (!m->hids || !m->hrows || !m->hpos)
            fail = 1;
        m->opt = calloc((size_t)(m->nparams ? m->nparams : 1), sizeof *m->opt);
        m->gnorm2 = (double *)dalloc(m, 2, &fail);
        if (!m->opt)
            fail = 1;
        for (int i = 0; m->opt && i < m->nparams; i++) {
            dt_param *q = &m->params[i];
            m->opt[i] = (dt_opt_tensor){q->p, q->g, q->m, q->v, q->n};
        }
    }
    if (fail) {
        /* An allocation that failed for another reason than memory (a
         * device fault) is recorded by the backend: report that instead. */
        char why[DT_ERR_LEN] = "";
        int rc = be->i.sync(be, why);
        if (rc && rc != DT_ENOMEM)
            dt_errf(err, rc, "%s", why);
        else if (!err[0])
            dt_errf(err, DT_ENOMEM, "out of %s memory setting up the model for "
                    "batch %d x %d: an allocation of %zu bytes failed after %zu "
                    "bytes were taken (all freed again)", be->i.name, B, T,
                    m->fail_bytes, m->taken_bytes);
        dt_model_free(m);
        return rc && rc != DT_ENOMEM ? rc : DT_ENOMEM;
    }
    *out = m;
    return 0;
}

void dt_model_release_activations(dt_model *m)
{
    dt_backend *be = m->be;
    float *acts[] = {(float *)m->ids, (float *)m->tgt, (float *)m->rows, (float *)m->pos, m->res, m->mid, m->n1,
        m->n2, m->n1m, m->n1r, m->n2m, m->n2r, m->q, m->k, m->v, m->qkv,
        m->att, m->lse, m->h1, m->h2, m->act, m->nf, m->nfm, m->nfr,
        m->logits, m->losses, m->dres, m->dx, m->dq, m->dk,
        m->dv, m->dqkv, m->datt, m->dh1, m->dh2, m->dact, m->du, m->qraw,
        m->kraw, m->qnr, m->knr};
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
        be->i.free(be, acts[i]);
    for (int i = 0; i < m->nloras; i++) {
        be->i.free(be, m->loras[i].u);
        m->loras[i].u = NULL;
    }
    m->ids = m->tgt = m->rows = m->pos = NULL;
    m->res = m->mid = m->n1 = m->n2 = m->n1m = m->n1r = m->n2m = m->n2r = NULL;
    m->q = m->k = m->v = m->qkv = m->att = m->lse = m->h1 = m->h2 = m->act = NULL;
    m->nf = m->nfm = m->nfr = m->logits = m->losses = m->dres = m->dx = NULL;
    m->dq = m->dk = m->dv = m->dqkv = m->datt = m->dh1 = m->dh2 = m->dact = m->du = NULL;
    m->qraw = m->kraw = m->qnr = m->knr = NULL;
    m->B = m->T = 0; /* forward() now refuses every batch */
    be->i.free(be, m->xd); /* the LoRA dropout's scratch (model_pass.c) */
    be->i.free(be, m->xd2);
    m->xd = m->xd2 = NULL;
}

void dt_model_free(dt_model *m)
{
    if (!m)
        return;
    dt_backend *be = m->be;
    for (int i = 0; i < m->nnamed; i++)
        be->i.free(be, m->named[i].p);
    for (int i = 0; i < m->nparams; i++) {
        be->i.free(be, m->params[i].g);
        be->i.free(be, m->params[i].m);
        be->i.free(be, m->params[i].v);
    }
    for (int i = 0; i < m->nloras; i++) {
        be->i.free(be, m->loras[i].catA);
        be->i.free(be, m->loras[i].catB);
    }
    for (int l = 0; m->L && l < m->c.n_layer; l++)
        for (int j = 0; j < m->L[l].nlin; j++)
            be->i.free(be, m->L[l].lin[j].Wh);
    if (m->headh != m->wteh)
        be->i.free(be, m->headh);
    be->i.free(be, m->wteh);
    dt_model_release_activations(m);
    be->i.free(be, m->gnorm2);
    free(m->opt);
    free(m->hids);
    free(m->hpos);
    free(m->hrows);
    free(m->named);
    free(m->params);
    free(m->loras);
    free(m->L);
    free(m);
}

void dt_weights_release_data(dt_weights *w)
{
    for (int i = 0; i < w->ts.n; i++) {
        free(w->ts.t[i].data);
        w->ts.t[i].data = NULL;
    }
    dt_tensorset_drop_sources(&w->ts);
}

const dt_config *dt_model_config(const dt_model *m) { return &m->c; }
int dt_model_delta_lowrank(const dt_model *m) { return m->lowrank; }
int dt_model_bf16(const dt_model *m) { return m->bf16; }
int dt_model_act_ckpt(const dt_model *m) { return m->ckpt; }
void dt_model_delta_set_moved(dt_model *m, int moved) { m->moved = moved; }

int dt_precision_parse(const char *s)
{
    static const char *names[] = {"auto", "fp32", "tf32", "bf16"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

int dt_precision_resolve(dt_precision p, const dt_backend *be,
                         dt_precision *out, char *err)
{
    if (p == DT_PREC_AUTO) {
        const char *tf32 = getenv("DT_TF32");
        if (tf32 && !strcmp(tf32, "1") && strcmp(be->i.name, "cpu"))
            p = DT_PREC_TF32;
        else
            p = be->bf16_fast ? DT_PREC_BF16 : DT_PREC_FP32;
    }
    if (p == DT_PREC_TF32 && !strcmp(be->i.name, "cpu"))
        return dt_errf(err, DT_EINVAL, "--precision tf32 needs a CUDA device "
                       "(the CPU backend computes in fp32 or bf16)");
    *out = p;
    return 0;
}

const char *dt_precision_name(dt_precision p)
{
    static const char *names[] = {"auto", "fp32", "tf32", "bf16"};
    return (unsigned)p < 4 ? names[p] : "?";
}
dt_backend *dt_model_backend(const dt_model *m) { return m->be; }
float dt_model_lora_scale(const dt_model *m) { return m->s; }

dt_param *dt_model_params(dt_model *m, int *n)
{
    *n = m->nparams;
    return m->params;
}

const dt_opt_tensor *dt_model_opt_tensors(dt_model *m, int *n, double **sumsq)
{
    *n = m->nparams;
    *sumsq = m->gnorm2;
    return m->opt;
}

dt_lora *dt_model_loras(dt_model *m, int *n)
{
    *n = m->nloras;
    return m->loras;
}

int dt_model_get_weight(dt_model *m, const char *name, float **dev, long *n)
{
    for (int i = 0; i < m->nnamed; i++)
        if (!strcmp(m->named[i].name, name)) {
            *dev = m->named[i].p;
            *n = m->named[i].n;
            return 0;
        }
    return DT_EINVAL;
}

void dt_model_zero_grad(dt_model *m)
{
    for (int i = 0; i < m->nparams; i++)
        m->be->i.memset0(m->be, m->params[i].g, (size_t)m->params[i].n * sizeof(float));
}
