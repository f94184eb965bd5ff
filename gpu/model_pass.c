/* model_pass.c: forward and backward passes, Delta-LoRA's W update and the
 * merged weights. Backend-agnostic: only dt_backend_i calls touch device
 * memory. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dt.h"
#include "dt_math.h"
#include "model_impl.h"

#define OPS (m->be->i)

/* ---- dropout ------------------------------------------------------------ */

/* The key of a dropout site of the last forward pass (its backward pass
 * regenerates the same masks from it). */
static uint64_t drop_key(const dt_model *m, int layer, int site)
{
    return dt_drop_key(m->seed, (uint64_t)m->lstep, (uint32_t)m->lmicro,
                       (uint32_t)layer, (uint32_t)site);
}

/* The probability of a site in the last forward pass: 0 outside training. */
static float drop_p(const dt_model *m, float p)
{
    return m->ltrain && p > 0.0f ? p : 0.0f;
}

/* LoRA dropout of linear L's input x into m->xd (one mask per linear), or x
 * itself when there is none. */
static const float *lora_input(dt_model *m, dt_linear *L, const float *x, int N)
{
    float p = drop_p(m, m->drop.lora);
    if (!L->nlora || p == 0.0f)
        return x;
    dt_lora *a = L->lora[0];
    OPS.dropout(m->be, m->xd, x, (long)N * L->in, p,
                drop_key(m, a->layer, DT_DROP_LORA + a->lin), 0);
    return m->xd;
}

/* y(N,out) = beta*y + x(N,in)·op(W), W (out,in): the bf16 weight through
 * gemm_bf16w when the layer has one, else the fp32 GEMM. tw = 1: x·Wᵀ
 * (forward), 0: dy·W (backward, x = dy). */
static void lin_w(dt_model *m, dt_linear *L, int tw, const float *x, float *y,
                  int N, float beta)
{
    int M = tw ? L->out : L->in, K = tw ? L->in : L->out;
    if (L->Wh)
        OPS.gemm_bf16w(m->be, 0, tw, N, M, K, 1.0f, x, K, L->Wh, L->in, beta,
                       y, M);
    else
        OPS.gemm(m->be, 0, tw, N, M, K, 1.0f, x, K, L->W, L->in, beta, y, M);
}

void dt_model_embed(dt_model *m, float *out, const int32_t *ids,
                    const float *wpe, int b, int t)
{
    if (m->wteh)
        OPS.embedding_fwd_bf16(m->be, out, ids, m->wteh, wpe, b, t,
                               m->c.d_model);
    else
        OPS.embedding_fwd(m->be, out, ids, m->wte, wpe, b, t, m->c.d_model);
}

void dt_model_head_gemm(dt_model *m, int tw, const float *x, float *y,
                        int rows, float beta)
{
    int C = m->c.d_model, V = m->c.vocab;
    int N = tw ? V : C, K = tw ? C : V;
    if (m->headh)
        OPS.gemm_bf16w(m->be, 0, tw, rows, N, K, 1.0f, x, K, m->headh, C,
                       beta, y, N);
    else
        OPS.gemm(m->be, 0, tw, rows, N, K, 1.0f, x, K, m->head, C, beta, y, N);
}

/* The adapter's scale in the forward pass: s, or s·(1+λ) in the low-rank
 * Delta-LoRA form once W has moved. */
static float lora_fwd_scale(const dt_model *m)
{
    return m->lowrank && m->moved ? m->s * (1.0f + m->lo.lambda) : m->s;
}

/* y(N,out) = acc*y + x(N,in)·Wᵀ + b, plus s·(x̃·Aᵀ)·Bᵀ on each adapter's rows,
 * x̃ = x or its LoRA dropout. Saves u = x̃·Aᵀ per adapter for the backward
 * pass. In the low-rank Delta-LoRA form, once W has moved, W stays W_0 and
 * the layer computes what the explicit update would give,
 *   W_t = W_0 + λs·(B·A − B_K·A_K):
 *   y = x·W_0ᵀ + s(1+λ)·(x·Aᵀ)·Bᵀ − λs·(x·A_Kᵀ)·B_Kᵀ,
 * the last term through m->du (free in the forward pass). */
static void lin_fwd(dt_model *m, dt_linear *L, const float *x, float *y, int N,
                    int acc)
{
    dt_backend *be = m->be;
    lin_w(m, L, 1, x, y, N, acc ? 1.0f : 0.0f);
    if (L->b)
        OPS.add_bias(be, y, L->b, N, L->out);
    int r = m->lo.rank;
    float sf = lora_fwd_scale(m);
    const float *xa = lora_input(m, L, x, N);
    for (int i = 0; i < L->nlora; i++) {
        dt_lora *a = L->lora[i];
        OPS.gemm(be, 0, 1, N, r, L->in, 1.0f, xa, L->in, a->A->p, L->in, 0.0f,
                 a->u, r);
        OPS.gemm(be, 0, 1, N, a->rows, r, sf, a->u, r, a->B->p, r, 1.0f,
                 y + a->row_off, L->out);
        if (m->lowrank && m->moved) {
            OPS.gemm(be, 0, 1, N, r, L->in, 1.0f, x, L->in, a->AK, L->in,
                     0.0f, m->du, r);
            OPS.gemm(be, 0, 1, N, a->rows, r, -m->lo.lambda * m->s, m->du, r,
                     a->BK, r, 1.0f, y + a->row_off, L->out);
        }
    }
}

/* The part of lin_fwd that the backward pass reads back: u = x̃·Aᵀ of each
 * adapter, by the same GEMM (so bitwise the same u), without the layer's
 * own product. Activation checkpointing's recomputation of a block's last
 * linear, whose output the backward pass does not need. */
static void lin_fwd_u(dt_model *m, dt_linear *L, const float *x, int N)
{
    int r = m->lo.rank;
    const float *xa = lora_input(m, L, x, N);
    for (int i = 0; i < L->nlora; i++) {
        dt_lora *a = L->lora[i];
        OPS.gemm(m->be, 0, 1, N, r, L->in, 1.0f, xa, L->in, a->A->p, L->in,
                 0.0f, a->u, r);
    }
}

/* Backward of lin_fwd given dy(N,out) and its input x(N,in):
 * dx = acc*dx + dy·W (+ adapters), and gradients of trainable tensors.
 * The low-rank Delta-LoRA form: A and B get the gradient of the s-term only
 * (the paper's W has none), dx that of all three terms. */
static void lin_bwd(dt_model *m, dt_linear *L, const float *dy, const float *x,
                    float *dx, int N, int acc)
{
    dt_backend *be = m->be;
    int r = m->lo.rank;
    if (dx)
        lin_w(m, L, 0, dy, dx, N, acc ? 1.0f : 0.0f);
    if (L->pW)
        OPS.gemm(be, 1, 0, L->out, L->in, N, 1.0f, dy, L->out, x, L->in, 1.0f,
                 L->pW->g, L->in);
    if (L->pb)
        OPS.bias_bwd(be, L->pb->g, dy, N, L->out);
    int low = m->lowrank && m->moved;
    float dxs = low ? 1.0f + m->lo.lambda : 1.0f;
    /* With LoRA dropout the branch saw x̃ = Z∘x: dA takes x̃ and the
     * branch's dx is Z∘(Σ du·A), summed in m->xd2 and masked once. */
    const float *xa = lora_input(m, L, x, N);
    int dropped = xa != x;
    for (int i = 0; i < L->nlora; i++) {
        dt_lora *a = L->lora[i];
        const float *dys = dy + a->row_off;
        if (dx && low) { /* dx -= λs·(dys·B_K)·A_K */
            OPS.gemm(be, 0, 0, N, r, a->rows, -m->lo.lambda * m->s, dys,
                     L->out, a->BK, r, 0.0f, m->du, r);
            OPS.gemm(be, 0, 0, N, L->in, r, 1.0f, m->du, r, a->AK, L->in,
                     1.0f, dx, L->in);
        }
        /* dB(rows,r) += s·dysᵀ·u ; du(N,r) = s·dys·B ; dA(r,in) += duᵀ·x̃ */
        OPS.gemm(be, 1, 0, a->rows, r, N, m->s, dys, L->out, a->u, r, 1.0f,
                 a->B->g, r);
        OPS.gemm(be, 0, 0, N, r, a->rows, m->s, dys, L->out, a->B->p, r, 0.0f,
                 m->du, r);
        OPS.gemm(be, 1, 0, r, L->in, N, 1.0f, m->du, r, xa, L->in, 1.0f,
                 a->A->g, L->in);
        if (dx && !dropped)
            OPS.gemm(be, 0, 0, N, L->in, r, dxs, m->du, r, a->A->p, L->in,
                     1.0f, dx, L->in);
        else if (dx)
            OPS.gemm(be, 0, 0, N, L->in, r, 1.0f, m->du, r, a->A->p, L->in,
                     i ? 1.0f : 0.0f, m->xd2, L->in);
    }
    if (dx && dropped) {
        dt_lora *a = L->lora[0];
        OPS.dropout(be, dx, m->xd2, (long)N * L->in, drop_p(m, m->drop.lora),
                    drop_key(m, a->layer, DT_DROP_LORA + a->lin), 1);
    }
}

static float *gptr(dt_param *p) { return p ? p->g : NULL; }

/* Per-layer activation slices, at the allocated stride m->N. */
#define AT(buf, l, width) ((buf) + (size_t)(l) * m->N * (size_t)(width))
/* Layer l's slice of a buffer the backward pass needs: with activation
 * checkpointing every layer shares slot 0 (the backward pass recomputes
 * them from the kept layer input, the residual stream m->res, which keeps
 * its n_layer + 1 slices). */
#define LA(buf, l, width) AT(buf, m->ckpt ? 0 : (l), width)

/* Layer l's slices of the activations the forward pass keeps for the
 * backward pass (N = m->N rows each, C = d_model, F = d_ff). */
typedef struct layer_acts {
    float *x, *mid;   /* (N, C) the input; the residual after attention */
    float *n1, *n2;   /* (N, C) the normed inputs of attention and MLP */
    float *q, *k, *v; /* (N, qdim), (N, kvdim), (N, kvdim) */
    float *att, *lse; /* (N, qdim) attention; (N, n_head) its log-sum-exp */
    float *h1;        /* (N, F) the MLP's first pre-activation */
} layer_acts;

static layer_acts layer_acts_at(const dt_model *m, int l)
{
    const dt_config *c = &m->c;
    int C = c->d_model, F = c->d_ff;
    return (layer_acts){
        .x = AT(m->res, l, C), .mid = LA(m->mid, l, C),
        .n1 = LA(m->n1, l, C), .n2 = LA(m->n2, l, C),
        .q = LA(m->q, l, m->qdim), .k = LA(m->k, l, m->kvdim),
        .v = LA(m->v, l, m->kvdim), .att = LA(m->att, l, m->qdim),
        .lse = LA(m->lse, l, c->n_head), .h1 = LA(m->h1, l, F)};
}

static void norm_fwd(dt_model *m, float *out, float *mean, float *rstd,
                     const float *x, const float *w, const float *b, int N)
{
    if (m->c.arch == DT_ARCH_GPT2)
        OPS.layernorm_fwd(m->be, out, mean, rstd, x, w, b, N, m->c.d_model,
                          m->c.norm_eps);
    else
        OPS.rmsnorm_fwd(m->be, out, rstd, x, w, N, m->c.d_model, m->c.norm_eps);
}

static void norm_bwd(dt_model *m, float *dx, dt_param *pw, dt_param *pb,
                     const float *dout, const float *x, const float *w,
                     const float *mean, const float *rstd, int N)
{
    if (m->c.arch == DT_ARCH_GPT2)
        OPS.layernorm_bwd(m->be, dx, gptr(pw), gptr(pb), dout, x, w, mean,
                          rstd, N, m->c.d_model);
    else
        OPS.rmsnorm_bwd(m->be, dx, gptr(pw), dout, x, w, rstd, N,
                        m->c.d_model);
}

/* Qwen 3's q_norm / k_norm: RMSNorm over each head's head_dim, rows
 * (N·heads, D), from the kept projection raw (N, heads·D) into out. */
static void head_norm_fwd(dt_model *m, float *out, float *rstd,
                          const float *raw, const float *w, int N, int heads)
{
    OPS.rmsnorm_fwd(m->be, out, rstd, raw, w, N * heads, m->c.head_dim,
                    m->c.norm_eps);
}

/* Backward of head_norm_fwd: the gradient of the projection's output into
 * m->datt (free once attention_bwd has run), which it returns; the norm
 * weight's gradient when it trains. */
static const float *head_norm_bwd(dt_model *m, dt_param *pw, const float *dout,
                                  const float *raw, const float *w,
                                  const float *rstd, int N, int heads)
{
    int D = m->c.head_dim;
    OPS.memset0(m->be, m->datt, (size_t)N * heads * D * sizeof(float));
    OPS.rmsnorm_bwd(m->be, m->datt, gptr(pw), dout, raw, w, rstd, N * heads,
                    D);
    return m->datt;
}

/* res = x + y and out = norm(res) in one pass (residual_norm_fwd): the
 * residual add of a block and the norm of the next one. mean is unused
 * by RMSNorm. */
static void add_norm_fwd(dt_model *m, float *res, float *out, float *mean,
                         float *rstd, const float *x, const float *y,
                         const float *w, const float *b, int N)
{
    int rms = m->c.arch != DT_ARCH_GPT2;
    OPS.residual_norm_fwd(m->be, res, NULL, out, rms ? NULL : mean, rstd, x, y,
                          w, rms ? NULL : b, N, m->c.d_model, m->c.norm_eps, rms);
}

/* Layer l's forward pass. Its input's norm (A.n1) is the previous layer's
 * work (layer 0: done here); it ends with the norm of its output, fused with
 * the residual add: layer l+1's n1, or the final norm m->nf for the last.
 *
 * recompute = 1 (activation checkpointing, before layer l's backward pass):
 * the same pass again from the kept input res[l], which rebuilds every
 * activation the backward pass reads, bitwise as the forward pass made
 * them (the same ops in the same order, dropout masks regenerated from
 * their (seed, step, micro-batch, layer, site) keys): A.n1 from res[l]
 * (residual_norm_fwd's norm is the separate norm's, bit for bit), and
 * neither the block's last product (only its adapters' u) nor the next
 * layer's input, which are kept or not needed. */
static void layer_fwd(dt_model *m, int l, int b, int t, int recompute)
{
    const dt_config *c = &m->c;
    dt_backend *be = m->be;
    dt_layer *Y = &m->L[l];
    int N = b * t, C = c->d_model, F = c->d_ff;
    layer_acts A = layer_acts_at(m, l);
    float *next = AT(m->res, l + 1, C);

    if (l == 0 || recompute)
        norm_fwd(m, A.n1, LA(m->n1m, l, 1), LA(m->n1r, l, 1), A.x, Y->n1w,
                 Y->n1b, N);
    if (c->arch == DT_ARCH_GPT2) {
        lin_fwd(m, &Y->lin[G_QKV], A.n1, m->qkv, N, 0);
        OPS.copy2d(be, A.q, C, m->qkv, 3 * C, N, C, 1.0f);
        OPS.copy2d(be, A.k, C, m->qkv + C, 3 * C, N, C, 1.0f);
        OPS.copy2d(be, A.v, C, m->qkv + 2 * C, 3 * C, N, C, 1.0f);
    } else {
        /* Qwen 3: the projections into qraw/kraw, normed per head. */
        float *qr = Y->qnw ? LA(m->qraw, l, m->qdim) : A.q;
        float *kr = Y->qnw ? LA(m->kraw, l, m->kvdim) : A.k;
        lin_fwd(m, &Y->lin[L_Q], A.n1, qr, N, 0);
        lin_fwd(m, &Y->lin[L_K], A.n1, kr, N, 0);
        lin_fwd(m, &Y->lin[L_V], A.n1, A.v, N, 0);
        if (Y->qnw) {
            head_norm_fwd(m, A.q, LA(m->qnr, l, c->n_head), qr, Y->qnw, N,
                          c->n_head);
            head_norm_fwd(m, A.k, LA(m->knr, l, c->n_kv_head), kr, Y->knw, N,
                          c->n_kv_head);
        }
        if (m->packed) {
            OPS.rope_pos(be, A.q, m->pos, b, t, c->n_head, c->head_dim,
                         m->rope_key, 0);
            OPS.rope_pos(be, A.k, m->pos, b, t, c->n_kv_head, c->head_dim,
                         m->rope_key, 0);
        } else {
            OPS.rope(be, A.q, b, t, c->n_head, c->head_dim, m->rope_key, 0);
            OPS.rope(be, A.k, b, t, c->n_kv_head, c->head_dim, m->rope_key, 0);
        }
    }
    float pa = drop_p(m, m->drop.attn), pr = drop_p(m, m->drop.resid);
    if (m->packed)
        OPS.attention_fwd_seg(be, A.att, A.lse, A.q, A.k, A.v, m->pos, b, t,
                              c->n_head, c->n_kv_head, c->head_dim, pa,
                              pa > 0.0f ? drop_key(m, l, DT_DROP_ATTN) : 0);
    else if (pa > 0.0f)
        OPS.attention_fwd_drop(be, A.att, A.lse, A.q, A.k, A.v, b, t,
                               c->n_head, c->n_kv_head, c->head_dim, pa,
                               drop_key(m, l, DT_DROP_ATTN));
    else
        OPS.attention_fwd(be, A.att, A.lse, A.q, A.k, A.v, b, t, c->n_head,
                          c->n_kv_head, c->head_dim);
    /* Each block's output goes to m->dx (free during the layers), GPT-2's
     * resid_dropout is applied to it in place, and one pass adds it to the
     * residual stream and norms the sum. */
    dt_linear *O = &Y->lin[c->arch == DT_ARCH_GPT2 ? G_O : L_O];
    lin_fwd(m, O, A.att, m->dx, N, 0);
    if (pr > 0.0f)
        OPS.dropout(be, m->dx, m->dx, (long)N * C, pr,
                    drop_key(m, l, DT_DROP_RESID1), 0);
    add_norm_fwd(m, A.mid, A.n2, LA(m->n2m, l, 1), LA(m->n2r, l, 1), A.x, m->dx,
                 Y->n2w, Y->n2b, N);
    if (c->arch == DT_ARCH_GPT2) {
        /* c_fc without its bias, then bias + GELU in one pass (A.h1 keeps
         * the pre-activation, bias included, for the backward pass). */
        dt_linear fc = Y->lin[G_FC];
        fc.b = NULL;
        lin_fwd(m, &fc, A.n2, A.h1, N, 0);
        if (Y->lin[G_FC].b)
            OPS.bias_gelu_fwd(be, m->act, A.h1, Y->lin[G_FC].b, N, F);
        else
            OPS.gelu_fwd(be, m->act, A.h1, (long)N * F);
        if (recompute) {
            lin_fwd_u(m, &Y->lin[G_PROJ], m->act, N);
            return;
        }
        lin_fwd(m, &Y->lin[G_PROJ], m->act, m->dx, N, 0);
        if (pr > 0.0f)
            OPS.dropout(be, m->dx, m->dx, (long)N * C, pr,
                        drop_key(m, l, DT_DROP_RESID2), 0);
    } else {
        float *h2 = LA(m->h2, l, F);
        lin_fwd(m, &Y->lin[L_GATE], A.n2, A.h1, N, 0);
        lin_fwd(m, &Y->lin[L_UP], A.n2, h2, N, 0);
        OPS.swiglu_fwd(be, m->act, A.h1, h2, (long)N * F);
        if (recompute) {
            lin_fwd_u(m, &Y->lin[L_DOWN], m->act, N);
            return;
        }
        lin_fwd(m, &Y->lin[L_DOWN], m->act, m->dx, N, 0);
    }
    if (l + 1 < c->n_layer) {
        dt_layer *Z = &m->L[l + 1];
        add_norm_fwd(m, next, LA(m->n1, l + 1, C), LA(m->n1m, l + 1, 1),
                     LA(m->n1r, l + 1, 1), A.mid, m->dx, Z->n1w, Z->n1b, N);
    } else {
        add_norm_fwd(m, next, m->nf, m->nfm, m->nfr, A.mid, m->dx, m->nfw,
                     m->nfb, N);
    }
}

/* On entry m->dres holds the gradient of the layer's output; on exit, of its
 * input. */
static void layer_bwd(dt_model *m, int l, int b, int t)
{
    const dt_config *c = &m->c;
    dt_backend *be = m->be;
    dt_layer *Y = &m->L[l];
    int N = b * t, C = c->d_model, F = c->d_ff;
    layer_acts A = layer_acts_at(m, l);

    /* The MLP activation is recomputed from the kept pre-activations instead
     * of being stored per layer: one elementwise pass saves n_layer·N·F
     * floats. */
    float pa = drop_p(m, m->drop.attn), pr = drop_p(m, m->drop.resid);
    /* The residual dropouts' backward: the same mask on the gradient, into
     * m->dx (free at both points). */
    const float *dmlp = m->dres;
    if (pr > 0.0f) {
        OPS.dropout(be, m->dx, m->dres, (long)N * C, pr,
                    drop_key(m, l, DT_DROP_RESID2), 0);
        dmlp = m->dx;
    }
    if (c->arch == DT_ARCH_GPT2) {
        OPS.gelu_fwd(be, m->act, A.h1, (long)N * F);
        lin_bwd(m, &Y->lin[G_PROJ], dmlp, m->act, m->dact, N, 0);
        OPS.memset0(be, m->dh1, (size_t)N * F * sizeof(float));
        OPS.gelu_bwd(be, m->dh1, A.h1, m->dact, (long)N * F);
        lin_bwd(m, &Y->lin[G_FC], m->dh1, A.n2, m->dx, N, 0);
    } else {
        float *h2 = LA(m->h2, l, F);
        OPS.swiglu_fwd(be, m->act, A.h1, h2, (long)N * F);
        lin_bwd(m, &Y->lin[L_DOWN], dmlp, m->act, m->dact, N, 0);
        OPS.swiglu_bwd(be, m->dh1, m->dh2, m->dact, A.h1, h2, (long)N * F);
        lin_bwd(m, &Y->lin[L_GATE], m->dh1, A.n2, m->dx, N, 0);
        lin_bwd(m, &Y->lin[L_UP], m->dh2, A.n2, m->dx, N, 1);
    }
    norm_bwd(m, m->dres, Y->pn2w, Y->pn2b, m->dx, A.mid, Y->n2w,
             LA(m->n2m, l, 1), LA(m->n2r, l, 1), N);
    const float *datt_out = m->dres;
    if (pr > 0.0f) {
        OPS.dropout(be, m->dx, m->dres, (long)N * C, pr,
                    drop_key(m, l, DT_DROP_RESID1), 0);
        datt_out = m->dx;
    }
    lin_bwd(m, &Y->lin[c->arch == DT_ARCH_GPT2 ? G_O : L_O], datt_out, A.att,
            m->datt, N, 0);
    if (m->packed)
        OPS.attention_bwd_seg(be, m->dq, m->dk, m->dv, m->datt, A.att, A.lse,
                              A.q, A.k, A.v, m->pos, b, t, c->n_head,
                              c->n_kv_head, c->head_dim, pa,
                              pa > 0.0f ? drop_key(m, l, DT_DROP_ATTN) : 0);
    else if (pa > 0.0f)
        OPS.attention_bwd_drop(be, m->dq, m->dk, m->dv, m->datt, A.att, A.lse,
                               A.q, A.k, A.v, b, t, c->n_head, c->n_kv_head,
                               c->head_dim, pa, drop_key(m, l, DT_DROP_ATTN));
    else
        OPS.attention_bwd(be, m->dq, m->dk, m->dv, m->datt, A.att, A.lse, A.q,
                          A.k, A.v, b, t, c->n_head, c->n_kv_head, c->head_dim);
    if (c->arch == DT_ARCH_GPT2) {
        OPS.copy2d(be, m->dqkv, 3 * C, m->dq, C, N, C, 1.0f);
        OPS.copy2d(be, m->dqkv + C, 3 * C, m->dk, C, N, C, 1.0f);
        OPS.copy2d(be, m->dqkv + 2 * C, 3 * C, m->dv, C, N, C, 1.0f);
        lin_bwd(m, &Y->lin[G_QKV], m->dqkv, A.n1, m->dx, N, 0);
    } else {
        if (m->packed) {
            OPS.rope_pos(be, m->dq, m->pos, b, t, c->n_head, c->head_dim,
                         m->rope_key, 1);
            OPS.rope_pos(be, m->dk, m->pos, b, t, c->n_kv_head, c->head_dim,
                         m->rope_key, 1);
        } else {
            OPS.rope(be, m->dq, b, t, c->n_head, c->head_dim, m->rope_key, 1);
            OPS.rope(be, m->dk, b, t, c->n_kv_head, c->head_dim, m->rope_key, 1);
        }
        const float *dq = m->dq, *dk = m->dk;
        if (Y->qnw) /* Qwen 3's q_norm, k_norm; both use m->datt in turn */
            dq = head_norm_bwd(m, Y->pqnw, m->dq, LA(m->qraw, l, m->qdim),
                               Y->qnw, LA(m->qnr, l, c->n_head), N, c->n_head);
        lin_bwd(m, &Y->lin[L_Q], dq, A.n1, m->dx, N, 0);
        if (Y->qnw)
            dk = head_norm_bwd(m, Y->pknw, m->dk, LA(m->kraw, l, m->kvdim),
                               Y->knw, LA(m->knr, l, c->n_kv_head), N,
                               c->n_kv_head);
        lin_bwd(m, &Y->lin[L_K], dk, A.n1, m->dx, N, 1);
        lin_bwd(m, &Y->lin[L_V], m->dv, A.n1, m->dx, N, 1);
    }
    norm_bwd(m, m->dres, Y->pn1w, Y->pn1b, m->dx, A.x, Y->n1w,
             LA(m->n1m, l, 1), LA(m->n1r, l, 1), N);
}

/* The LM head over rows x(rows_total, C) with targets tgt (device, -100 =
 * masked) in row chunks: logits, loss and (grad_scale != 0) their gradient,
 * dx = dlogits·head and the head's own gradient, so that (N, V) logits never
 * exist at once. Per-row losses go to m->losses. */
static void head_chunks(dt_model *m, const float *x, const int32_t *tgt,
                        float *dx, int rows_total, float grad_scale)
{
    dt_backend *be = m->be;
    int C = m->c.d_model, V = m->c.vocab;
    for (int r0 = 0; r0 < rows_total; r0 += m->head_rows) {
        int rows = rows_total - r0 < m->head_rows ? rows_total - r0 : m->head_rows;
        const float *xr = x + (size_t)r0 * C;
        dt_model_head_gemm(m, 1, xr, m->logits, rows, 0.0f);
        m->head_gemm_rows += rows;
        if (m->ltrain && m->smoothing > 0.0f)
            OPS.cross_entropy_smooth(be, m->logits, m->losses + r0, tgt + r0,
                                     rows, V, grad_scale, m->smoothing);
        else
            OPS.cross_entropy(be, m->logits, m->losses + r0, tgt + r0, rows, V,
                              grad_scale);
        if (grad_scale == 0.0f)
            continue;
        dt_model_head_gemm(m, 0, m->logits, dx + (size_t)r0 * C, rows, 0.0f);
        if (m->phead)
            OPS.gemm(be, 1, 0, V, C, rows, 1.0f, m->logits, V, xr, C, 1.0f,
                     m->phead->g, C);
    }
}

/* The LM head of a forward pass on N rows, n of them predicted (target !=
 * -100, host targets checked by the caller). Masked rows (prompt tokens,
 * padding) cost nothing: the predicted rows of the final norm's output are
 * gathered into m->datt (free until the backward pass), the head runs on
 * those n rows alone, and dnf comes back through m->dres (free until
 * dt_model_backward) scattered into m->dx, whose other rows are 0. The loss
 * sum and every gradient are those of the head on all N rows: masked rows
 * add 0 to each. With every row predicted (or m->head_all) the head runs on
 * m->nf in place. */
static void head_fwd(dt_model *m, const int32_t *targets, int N, int n,
                     float grad_scale, double *loss_sum)
{
    dt_backend *be = m->be;
    int C = m->c.d_model;
    if (n == N || m->head_all) {
        OPS.upload(be, m->tgt, targets, (size_t)N * sizeof(int32_t));
        head_chunks(m, m->nf, m->tgt, m->dx, N, grad_scale);
        if (loss_sum)
            *loss_sum = OPS.sum(be, m->losses, N);
        return;
    }
    if (grad_scale != 0.0f)
        OPS.memset0(be, m->dx, (size_t)N * C * sizeof(float));
    if (n == 0) {
        if (loss_sum)
            *loss_sum = 0.0;
        return;
    }
    /* hrows: the predicted rows, then their targets (one upload each). */
    int32_t *rows = m->hrows, *tg = m->hrows + N;
    for (int i = 0, k = 0; i < N; i++)
        if (targets[i] != -100) {
            rows[k] = i;
            tg[k++] = targets[i];
        }
    OPS.upload(be, m->rows, rows, (size_t)n * sizeof(int32_t));
    OPS.upload(be, m->tgt, tg, (size_t)n * sizeof(int32_t));
    OPS.gather_rows(be, m->datt, m->nf, m->rows, n, C);
    head_chunks(m, m->datt, m->tgt, m->dres, n, grad_scale);
    if (grad_scale != 0.0f)
        OPS.scatter_rows(be, m->dx, m->dres, m->rows, n, C);
    if (loss_sum)
        *loss_sum = OPS.sum(be, m->losses, n);
}

int dt_model_forward(dt_model *m, const int32_t *ids, const int32_t *targets,
                     int b, int t, float grad_scale, double *loss_sum,
                     long *ntok, char *err)
{
    return dt_model_forward_packed(m, ids, targets, NULL, b, t, grad_scale,
                                   loss_sum, ntok, err);
}

int dt_model_forward_packed(dt_model *m, const int32_t *ids,
                            const int32_t *targets, const int32_t *pos, int b,
                            int t, float grad_scale, double *loss_sum,
                            long *ntok, char *err)
{
    const dt_config *c = &m->c;
    dt_backend *be = m->be;
    if (b < 1 || t < 1 || b > m->B || t > m->T)
        return dt_errf(err, DT_EINVAL, "batch %d x %d exceeds the allocated %d x %d",
                       b, t, m->B, m->T);
    int N = b * t, C = c->d_model, V = c->vocab;
    for (int i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return dt_errf(err, DT_EINVAL, "token id %d out of range [0, %d)",
                           ids[i], V);
    for (int i = 0; pos && i < N; i++)
        if (pos[i] < 0 || pos[i] > i % t)
            return dt_errf(err, DT_EINVAL, "position %d of token %d (column %d) "
                           "is outside its sequence", pos[i], i, i % t);
    OPS.upload(be, m->ids, ids, (size_t)N * sizeof(int32_t));
    memcpy(m->hids, ids, (size_t)N * sizeof(int32_t)); /* for embedding_bwd */
    m->packed = pos != NULL;
    if (pos) {
        OPS.upload(be, m->pos, pos, (size_t)N * sizeof(int32_t));
        memcpy(m->hpos, pos, (size_t)N * sizeof(int32_t));
    }
    /* this pass's mode, step and micro-batch, for its backward pass too */
    m->ltrain = m->train;
    m->lstep = m->step;
    m->lmicro = m->micro;
    if (pos && m->wpe) {
        /* learned positions at pos: wte[ids], then wpe[pos] (through m->dx,
         * free until the first layer) added; the same single float add. */
        dt_model_embed(m, m->res, m->ids, NULL, b, t);
        OPS.embedding_fwd(be, m->dx, m->pos, m->wpe, NULL, b, t, C);
        OPS.axpy(be, (long)N * C, 1.0f, m->dx, m->res);
    } else {
        dt_model_embed(m, m->res, m->ids, m->wpe, b, t);
    }
    float pe = drop_p(m, m->drop.embd);
    if (pe > 0.0f) /* GPT-2's embd_pdrop, in place */
        OPS.dropout(be, m->res, m->res, (long)N * C, pe,
                    drop_key(m, 0, DT_DROP_EMBD), 0);
    /* The final norm is the last layer's (fused with its residual add). */
    for (int l = 0; l < c->n_layer; l++)
        layer_fwd(m, l, b, t, 0);
    if (c->n_layer == 0)
        norm_fwd(m, m->nf, m->nfm, m->nfr, m->res, m->nfw, m->nfb, N);
    m->last_b = b;
    m->last_t = t;
    long n = 0;
    if (targets) {
        for (int i = 0; i < N; i++) {
            if (targets[i] != -100 && (targets[i] < 0 || targets[i] >= V))
                return dt_errf(err, DT_EINVAL, "target id %d out of range [0, %d)",
                               targets[i], V);
            n += targets[i] != -100;
        }
        head_fwd(m, targets, N, (int)n, grad_scale, loss_sum);
    } else if (loss_sum) {
        *loss_sum = 0.0;
    }
    if (ntok)
        *ntok = n;
    return OPS.sync(be, err);
}

int dt_model_backward(dt_model *m, char *err)
{
    const dt_config *c = &m->c;
    dt_backend *be = m->be;
    int b = m->last_b, t = m->last_t, N = b * t, C = c->d_model, V = c->vocab;
    if (N == 0)
        return dt_errf(err, DT_EINVAL, "backward without a forward pass");
    (void)V; /* the forward pass left dnf in m->dx (and the head's gradient) */
    OPS.memset0(be, m->dres, (size_t)N * C * sizeof(float));
    norm_bwd(m, m->dres, m->pnfw, m->pnfb, m->dx, AT(m->res, c->n_layer, C),
             m->nfw, m->nfm, m->nfr, N);
    for (int l = c->n_layer - 1; l >= 0; l--) {
        if (m->ckpt) /* activation checkpointing: layer l's activations */
            layer_fwd(m, l, b, t, 1);
        layer_bwd(m, l, b, t);
    }
    float pe = drop_p(m, m->drop.embd);
    if (m->pwte && pe > 0.0f)
        OPS.dropout(be, m->dres, m->dres, (long)N * C, pe,
                    drop_key(m, 0, DT_DROP_EMBD), 0);
    if (m->pwte && m->packed) {
        OPS.embedding_bwd(be, m->pwte->g, NULL, m->dres, m->hids, b, t, C);
        if (m->pwpe) /* dwpe[pos] += dout */
            OPS.embedding_bwd(be, m->pwpe->g, NULL, m->dres, m->hpos, b, t, C);
    } else if (m->pwte) {
        OPS.embedding_bwd(be, m->pwte->g, m->pwpe ? m->pwpe->g : NULL, m->dres,
                          m->hids, b, t, C);
    }
    return OPS.sync(be, err);
}

int dt_model_logits(dt_model *m, float *host, int b, int t, char *err)
{
    if (b != m->last_b || t != m->last_t)
        return dt_errf(err, DT_EINVAL, "no logits for a %d x %d batch: run a "
                       "forward pass on it first", b, t);
    /* Recomputed from the kept final norm output, chunk by chunk. */
    int N = b * t, C = m->c.d_model, V = m->c.vocab;
    for (int r0 = 0; r0 < N; r0 += m->head_rows) {
        int rows = N - r0 < m->head_rows ? N - r0 : m->head_rows;
        dt_model_head_gemm(m, 1, m->nf + (size_t)r0 * C, m->logits, rows, 0.0f);
        OPS.download(m->be, host + (size_t)r0 * V, m->logits,
                     (size_t)rows * V * sizeof(float));
    }
    return OPS.sync(m->be, err);
}

int dt_model_set_dropout(dt_model *m, const dt_dropouts *d, char *err)
{
    m->drop = *d;
    if (d->lora > 0.0f && !m->xd && m->nloras) {
        const dt_config *c = &m->c;
        size_t wide = (size_t)c->d_model;
        if ((size_t)c->d_ff > wide)
            wide = (size_t)c->d_ff;
        if ((size_t)m->qdim > wide)
            wide = (size_t)m->qdim;
        size_t bytes = (size_t)m->N * wide * sizeof(float);
        m->xd = OPS.alloc(m->be, bytes);
        m->xd2 = OPS.alloc(m->be, bytes);
        if (!m->xd || !m->xd2)
            return dt_errf(err, DT_ENOMEM, "out of %s memory for the LoRA "
                           "dropout's scratch (%zu bytes)", OPS.name, 2 * bytes);
    }
    return 0;
}

void dt_model_set_label_smoothing(dt_model *m, float eps) { m->smoothing = eps; }

void dt_model_train_mode(dt_model *m, uint64_t seed, long step, int micro)
{
    m->train = 1;
    m->seed = seed;
    m->step = step;
    m->micro = micro;
}

void dt_model_eval_mode(dt_model *m) { m->train = 0; }

void dt_model_delta_snapshot(dt_model *m)
{
    int r = m->lo.rank;
    if (m->lowrank) /* nothing to snapshot: W is never written */
        return;
    for (int i = 0; i < m->nloras; i++) {
        dt_lora *a = &m->loras[i];
        /* catA rows r..2r = A_old ; catB columns r..2r = -B_old */
        OPS.copy2d(m->be, a->catA + (size_t)r * a->in, a->in, a->A->p, a->in, r,
                   a->in, 1.0f);
        OPS.copy2d(m->be, a->catB + r, 2 * r, a->B->p, r, a->rows, r, -1.0f);
    }
}

void dt_model_delta_keep(dt_model *m)
{
    int r = m->lo.rank;
    for (int i = 0; i < m->nloras; i++) {
        dt_lora *a = &m->loras[i];
        OPS.copy2d(m->be, a->AK, a->in, a->A->p, a->in, r, a->in, 1.0f);
        OPS.copy2d(m->be, a->BK, r, a->B->p, r, a->rows, r, 1.0f);
    }
    m->moved = 1;
}

void dt_model_delta_apply(dt_model *m, float lambda)
{
    int r = m->lo.rank;
    if (m->lowrank) { /* the forward pass applies λ·s·(B·A − B_K·A_K) */
        m->lo.lambda = lambda;
        m->moved = 1;
        return;
    }
    for (int i = 0; i < m->nloras; i++) {
        dt_lora *a = &m->loras[i];
        dt_linear *L = &m->L[a->layer].lin[a->lin];
        OPS.copy2d(m->be, a->catA, a->in, a->A->p, a->in, r, a->in, 1.0f);
        OPS.copy2d(m->be, a->catB, 2 * r, a->B->p, r, a->rows, r, 1.0f);
        /* W[rows] += λ·s·[B | -B_old]·[A ; A_old]: one GEMM, inner dim 2r,
         * accumulated straight into W (beta = 1, no (out,in) temporary). */
        OPS.gemm(m->be, 0, 0, a->rows, a->in, 2 * r, lambda * m->s, a->catB,
                 2 * r, a->catA, a->in, 1.0f, L->W + (size_t)a->row_off * a->in,
                 a->in);
    }
}

/* The bf16 frozen weights' fp32 bases into `out`, taken over from the
 * model's dt_weights (their data is NULL afterwards; the caller reloads them
 * when they were released after upload). */
static int take_bf16_base(dt_model *m, const char *name, dt_tensorset *out,
                          char *err)
{
    dt_tensor *src = dt_tensorset_find(&m->w->ts, name);
    /* lazy weights not yet released: converted from the file now */
    if (!src || (!src->data && !src->raw))
        return dt_errf(err, DT_EINVAL, "exporting %s: the fp32 base "
                       "weights were released after upload (reload "
                       "the model's weights first)", name);
    if (!dt_weights_data(m->w, src, err))
        return DT_ENOMEM;
    float *h = src->data; /* taken over: one host copy at a time */
    src->data = NULL;
    return dt_tensorset_add(out, name, src->ndim, src->shape, h,
                            src->src_dtype, err);
}

static int merged_bf16_bases(dt_model *m, dt_tensorset *out, char *err)
{
    int rc;
    /* the embedding table and an untied LM head (wteh, headh) */
    if (m->wteh && (rc = take_bf16_base(m, m->c.arch == DT_ARCH_GPT2
                                               ? "wte.weight"
                                               : "embed_tokens.weight",
                                        out, err)))
        return rc;
    if (m->headh && m->headh != m->wteh &&
        (rc = take_bf16_base(m, "lm_head.weight", out, err)))
        return rc;
    for (int l = 0; l < m->c.n_layer; l++) {
        for (int j = 0; j < m->L[l].nlin; j++) {
            dt_linear *L = &m->L[l].lin[j];
            if (L->Wh && (rc = take_bf16_base(m, L->wname, out, err)))
                return rc;
        }
    }
    return 0;
}

int dt_model_merged(dt_model *m, dt_tensorset *out, char *err)
{
    dt_backend *be = m->be;
    dt_tensorset_init(out);
    for (int i = 0; i < m->nnamed; i++) {
        dt_named *e = &m->named[i];
        if (!strncmp(e->name, "lora.", 5))
            continue;
        dt_tensor *src = dt_tensorset_find(&m->w->ts, e->name);
        float *h = malloc((size_t)e->n * sizeof(float));
        if (!h || !src) {
            free(h);
            dt_tensorset_free(out);
            return dt_errf(err, DT_ENOMEM, "out of memory exporting %s", e->name);
        }
        OPS.download(be, h, e->p, (size_t)e->n * sizeof(float));
        int rc = dt_tensorset_add(out, e->name, src->ndim, src->shape, h,
                                  src->src_dtype, err);
        if (rc) {
            dt_tensorset_free(out);
            return rc;
        }
    }
    int rc0;
    if (m->bf16 && (rc0 = merged_bf16_bases(m, out, err))) {
        dt_tensorset_free(out);
        return rc0;
    }
    int r = m->lo.rank;
    int low = m->lowrank && m->moved;
    for (int i = 0; i < m->nloras; i++) {
        dt_lora *a = &m->loras[i];
        dt_tensor *W = dt_tensorset_find(out, a->wname);
        size_t na = (size_t)r * a->in, nb = (size_t)a->rows * r;
        float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float));
        float *AK = low ? malloc(na * sizeof(float)) : NULL;
        float *BK = low ? malloc(nb * sizeof(float)) : NULL;
        if (!W || !A || !B || (low && (!AK || !BK))) {
            free(A);
            free(B);
            free(AK);
            free(BK);
            dt_tensorset_free(out);
            return dt_errf(err, DT_ENOMEM, "out of memory merging %s", a->wname);
        }
        OPS.download(be, A, a->A->p, na * sizeof(float));
        OPS.download(be, B, a->B->p, nb * sizeof(float));
        if (low) {
            OPS.download(be, AK, a->AK, na * sizeof(float));
            OPS.download(be, BK, a->BK, nb * sizeof(float));
        }
        /* W[off + i, :] += s·B[i, :]·A; low-rank Delta-LoRA form:
         * s(1+λ)·B[i, :]·A − λs·B_K[i, :]·A_K */
        float sf = low ? m->s * (1.0f + m->lo.lambda) : m->s;
        for (int row = 0; row < a->rows; row++) {
            float *w = W->data + (size_t)(a->row_off + row) * a->in;
            for (int kk = 0; kk < r; kk++) {
                float bs = sf * B[(size_t)row * r + kk];
                const float *ar = A + (size_t)kk * a->in;
                for (int j = 0; j < a->in; j++)
                    w[j] += bs * ar[j];
                if (!low)
                    continue;
                float bk = -m->lo.lambda * m->s * BK[(size_t)row * r + kk];
                const float *ak = AK + (size_t)kk * a->in;
                for (int j = 0; j < a->in; j++)
                    w[j] += bk * ak[j];
            }
        }
        free(A);
        free(B);
        free(AK);
        free(BK);
    }
    return OPS.sync(be, err);
}
