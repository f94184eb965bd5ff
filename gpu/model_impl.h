/* model_impl.h: the device model's private layout, shared by model.c
 * (construction, parameters) and model_pass.c (forward, backward). */
#ifndef DT_MODEL_IMPL_H
#define DT_MODEL_IMPL_H

#include "model.h"

#define MAX_LIN 7  /* Llama: q k v o gate up down; GPT-2: c_attn o fc proj */
#define MAX_SLICES 3
/* Rows of logits computed at once: the (rows, V) chunk stays under 64 MB, so
 * large vocabularies and long batches never hold (B*T, V) logits. */
#define DT_HEAD_CHUNK_FLOATS (16L << 20)

enum { G_QKV = 0, G_O = 1, G_FC = 2, G_PROJ = 3 };                  /* GPT-2 */
enum { L_Q = 0, L_K = 1, L_V = 2, L_O = 3, L_GATE = 4, L_UP = 5, L_DOWN = 6 }; /* Llama */

typedef struct dt_linear {
    float *W, *b;          /* (out, in), (out) or NULL; device. W is NULL
                              when the weight is frozen in bf16 (Wh) */
    uint16_t *Wh;          /* (out, in) bf16 bit patterns, device, or NULL */
    char wname[128];       /* canonical name of W */
    dt_param *pW, *pb;     /* full fine-tuning: trainable params, else NULL */
    int out, in;
    dt_lora *lora[MAX_SLICES];
    int nlora;
} dt_linear;

typedef struct dt_layer {
    float *n1w, *n1b, *n2w, *n2b;       /* norms (b NULL for RMSNorm) */
    dt_param *pn1w, *pn1b, *pn2w, *pn2b;
    float *qnw, *knw;                   /* Qwen 3 q_norm, k_norm (head_dim) */
    dt_param *pqnw, *pknw;              /* or NULL */
    dt_linear lin[MAX_LIN];
    int nlin;
} dt_layer;

/* A named device tensor (weights and LoRA factors), for checkpoints. */
typedef struct dt_named {
    char name[128];
    float *p;
    long n;
} dt_named;

struct dt_model {
    dt_backend *be;
    dt_weights *w;
    dt_config c;
    dt_lora_opts lo;
    float s;               /* alpha / r */
    int bf16;              /* frozen linear weights (L->Wh), the embedding
                              table and the LM head (wteh, headh) are bf16 */
    int lowrank;           /* Delta-LoRA in the low-rank form (no W write) */
    int ckpt;              /* activation checkpointing (dt_lora_opts): the
                              per-layer buffers below hold one layer; the
                              backward pass recomputes each from res[l] */
    int moved;             /* low-rank form: A_K, B_K are in use */
    int B, T, N;           /* allocated batch, sequence, B*T */
    int qdim, kvdim;       /* NH*D, NKV*D */
    float rope_key;        /* the ops' theta: dt_rope_key(config's RoPE) */

    float *wte, *wpe, *nfw, *nfb, *head; /* head == wte when tied */
    dt_param *pwte, *pwpe, *pnfw, *pnfb, *phead;
    /* bf16 mode: the frozen embedding table and LM head in bf16 only
     * (wte, head NULL; headh == wteh when tied); else NULL. Read through
     * dt_model_embed / dt_model_head_gemm. */
    uint16_t *wteh, *headh;
    dt_layer *L;

    dt_param *params; int nparams, capparams;
    dt_opt_tensor *opt;    /* (nparams) the params for the optimizer ops */
    double *gnorm2;        /* (1) device: the squared gradient norm */
    dt_lora *loras; int nloras;
    dt_named *named; int nnamed, capnamed;

    /* activations, each (n_layer, N, ...) unless said otherwise */
    int32_t *ids, *tgt;    /* (N) */
    int32_t *hids;         /* (N) host copy of the last forward's ids, for
                              embedding_bwd (no copy back from the device) */
    int32_t *pos;          /* (N) device: packing's positions within each
                              row (dt_model_forward_packed) */
    int32_t *hpos;         /* (N) host copy of them, for embedding_bwd */
    int packed;            /* the last forward pass was packed (pos set) */
    int32_t *rows;         /* (N) device: the rows whose target is predicted
                              (!= -100), the LM head's compacted rows */
    int32_t *hrows;        /* (2N) host: those rows, then their targets */
    int head_all;          /* tests: run the LM head on every row (the
                              uncompacted path) to compare against */
    long head_gemm_rows;   /* rows through the head's logits GEMM, summed
                              over forward passes (tests: work done) */
    float *res;            /* (n_layer+1, N, C) residual stream inputs */
    float *mid;            /* residual after attention */
    float *n1, *n1m, *n1r; /* norm 1 out (N,C), mean (N), rstd (N) */
    float *n2, *n2m, *n2r;
    float *q, *k, *v;      /* (N, qdim), (N, kvdim) x2, after RoPE */
    float *qraw, *kraw;    /* qk_norm: q, k before their norm, and the */
    float *qnr, *knr;      /* norms' rstd (N, n_head), (N, n_kv_head) */
    float *qkv;            /* GPT-2 only: (N, 3C) scratch, one layer */
    float *att, *lse;      /* (N, qdim), (B, NH, T) */
    float *h1, *h2;        /* GPT-2: fc out, -; Llama: gate, up */
    float *act;            /* (N, F), one layer: gelu(h1) or silu(h1)*h2,
                              recomputed in the backward pass */
    float *nf, *nfm, *nfr; /* final norm (N,C) + stats */
    float *logits;         /* (head_rows, V): the LM head runs in row chunks */
    int head_rows;
    float *losses;         /* (N) */
    float *u;              /* per lora (N, r), inside dt_lora.u */
    /* backward scratch */
    float *dres, *dx, *dq, *dk, *dv, *dqkv, *datt, *dh1, *dh2, *dact, *du;
    int last_b, last_t;
    size_t taken_bytes, fail_bytes; /* construction: allocated so far, the
                                     size of the allocation that failed */

    /* training mode (dt_model_train_mode): dropout and label smoothing */
    dt_dropouts drop;
    float smoothing;
    int train;             /* the mode the next forward pass runs in */
    uint64_t seed;
    long step;
    int micro;
    int ltrain;            /* the mode, step and micro-batch of the last */
    long lstep;            /* forward pass, which its backward pass uses */
    int lmicro;
    float *xd, *xd2;       /* LoRA dropout: (N, widest input) scratch each */
};

/* out(b*t, C) = wte[ids] (+ wpe rows when wpe != NULL, as embedding_fwd):
 * the fp32 or the bf16 table (model_pass.c). */
void dt_model_embed(dt_model *m, float *out, const int32_t *ids,
                    const float *wpe, int b, int t);
/* The LM head's GEMMs, fp32 or bf16 (gemm_bf16w, fp32 accumulation):
 * tw = 1: y(rows, V) = beta*y + x(rows, C)·headᵀ (logits);
 * tw = 0: y(rows, C) = beta*y + x(rows, V)·head (the hidden states'
 * gradient). Leading dimensions are the widths. */
void dt_model_head_gemm(dt_model *m, int tw, const float *x, float *y,
                        int rows, float beta);

#endif
