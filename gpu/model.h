/* model.h: GPT-2 and Llama-family transformers, forward and backward, with
 * full / LoRA / Delta-LoRA training state, on any backend.
 *
 * Host-side weights (dt_weights) are kept in a canonical form: names without
 * the "transformer."/"model." prefix, every linear weight as W(out, in)
 * (PyTorch's nn.Linear layout; GPT-2's Conv1D (in, out) tensors are
 * transposed at load and back at export), GGUF Q/K rows un-permuted to
 * Hugging Face's rotate_half layout. The device model (dt_model) uploads them
 * and adds LoRA factors. */
#ifndef DT_MODEL_H
#define DT_MODEL_H

#include <stdint.h>
#include "backend.h"
#include "tensorfile.h"
#include "tokenizer.h"

typedef enum { DT_ARCH_GPT2 = 0, DT_ARCH_LLAMA = 1 } dt_arch;

typedef struct dt_config {
    dt_arch arch;
    int n_layer;
    int d_model;    /* C */
    int n_head;     /* NH */
    int n_kv_head;  /* NKV (GPT-2: = NH) */
    int head_dim;   /* D */
    int d_ff;       /* hidden size of the MLP */
    int vocab;      /* V */
    int max_pos;    /* GPT-2 positions; Llama: max_position_embeddings */
    float norm_eps;
    float rope_theta;
    /* Llama 3 rope scaling (rope_type "llama3"); rope_factor 0: none. Only
     * the RoPE frequencies change (dt_rope_table). */
    float rope_factor, rope_low_freq, rope_high_freq;
    int rope_orig_ctx;  /* original_max_position_embeddings */
    int sliding_window; /* Mistral: attention window (0: none); sequences
                           longer than it are refused by dt_model_new */
    int tied;       /* lm_head shares the embedding */
    int attn_bias;  /* Llama family: q/k/v biases present (Qwen2) */
    int o_bias;     /* Llama family: o_proj bias present */
    int mlp_bias;   /* Llama family: MLP biases present */
    int qk_norm;    /* Qwen 3: per-head RMSNorm of q and k (q_norm, k_norm,
                       (head_dim) each) after the projections, before RoPE */
    /* Dropout probabilities of config.json, applied in training only (see
     * dt_model_set_dropout): GPT-2's resid_pdrop, embd_pdrop, attn_pdrop
     * (0.1 each when a key is missing, as transformers' GPT2Config); the
     * Llama family's attention_dropout as attn_pdrop (default 0). */
    float resid_pdrop, embd_pdrop, attn_pdrop;
} dt_config;

/* Where the weights came from, so that export writes the same layout. */
typedef struct dt_weights {
    dt_config cfg;
    dt_tensorset ts;     /* canonical names, fp32 (dt_weights_open: lazy,
                            each converted from the mapped file on demand) */
    char prefix[32];     /* "transformer.", "model." or "" as in the input */
    dt_dtype dtype;      /* dtype to export (the input's) */
    int from_gguf;
    char *config_json;   /* the input's config.json text (NULL for GGUF) */
    char src_dir[1024];  /* input directory (to copy tokenizer files) */
    int release_on_upload; /* dt_model_new frees each host tensor once it is
                              on the device (see dt_weights_release_data);
                              a lazy one is converted, uploaded and freed
                              one at a time */
    int64_t host_peak;   /* dt_weights_host_peak */
} dt_weights;

/* Loads a Hugging Face directory or a .gguf file: every tensor converted to
 * its canonical fp32 form in host memory. */
int dt_weights_load(const char *path, dt_weights *w, char *err);
/* The same checks (config, every tensor's presence, shape and dtype), but
 * the file stays mapped and no tensor is converted: each tensor's data is
 * NULL until dt_weights_data (or dt_model_new's upload) converts it. With
 * release_on_upload, dt_model_new converts, uploads and frees one tensor at
 * a time: the host holds about the largest tensor in fp32 at once, besides
 * the mapping (page cache). dt_weights_release_data unmaps the file. */
int dt_weights_open(const char *path, dt_weights *w, char *err);
/* t's fp32 host data (t a tensor of w->ts), converted from the file and kept
 * in t->data when not held yet. NULL (DT_EINVAL in err) once released. */
float *dt_weights_data(dt_weights *w, dt_tensor *t, char *err);
/* For an upload: t's fp32 values, converted into a buffer of their own when
 * t is lazy and release_on_upload is set (else dt_weights_data);
 * dt_weights_upload_end then frees what release_on_upload says to free. */
float *dt_weights_upload_begin(dt_weights *w, dt_tensor *t, char *err);
void dt_weights_upload_end(dt_weights *w, dt_tensor *t, float *h);
/* The most bytes of converted fp32 tensors that w held on the host at once
 * (a conversion for an upload counted while it lives): the whole model for
 * dt_weights_load, one tensor for dt_weights_open + a release_on_upload
 * dt_model_new. */
int64_t dt_weights_host_peak(const dt_weights *w);
void dt_weights_free(dt_weights *w);
/* Loads the tokenizer that belongs to the model at path. */
dt_tokenizer *dt_model_tokenizer(const char *path, char *err);

/* Training methods (the paper's rows). */
typedef enum { DT_FULL = 0, DT_LORA = 1, DT_DELTA_LORA = 2 } dt_method;

/* Target module bits. Short names q,k,v,o,gate,up,down. For GPT-2, q/k/v are
 * row slices of c_attn (the paper's setting), DT_T_CATTN is the whole c_attn
 * (PEFT's "c_attn"), o = attn.c_proj, up = mlp.c_fc, down = mlp.c_proj. */
enum {
    DT_T_Q = 1 << 0, DT_T_K = 1 << 1, DT_T_V = 1 << 2, DT_T_O = 1 << 3,
    DT_T_GATE = 1 << 4, DT_T_UP = 1 << 5, DT_T_DOWN = 1 << 6,
    DT_T_CATTN = 1 << 7,
};
/* Parses "q,v" / "q_proj,v_proj" / "c_attn" for an architecture. */
int dt_parse_targets(const char *list, dt_arch arch, unsigned *mask,
                     char *err);

/* Precision of the linear layers' GEMMs (--precision). AUTO resolves to
 * BF16 on a CUDA device with bf16 tensor cores (compute capability >= 8.0)
 * and FP32 elsewhere (dt_precision_resolve). */
typedef enum {
    DT_PREC_AUTO = 0, DT_PREC_FP32, DT_PREC_TF32, DT_PREC_BF16
} dt_precision;

typedef struct dt_lora_opts {
    dt_method method;
    int rank;          /* r */
    float alpha;       /* scaling s = alpha / r */
    unsigned targets;  /* DT_T_* bits */
    /* BF16: the frozen linear weights (every layer's W), the embedding
     * table and the LM head (except for `full`) live on the device in bf16
     * and their GEMMs are gemm_bf16w; TF32: the
     * fp32 GEMMs may use TF32; AUTO / FP32: fp32. */
    dt_precision precision;
    /* Delta-LoRA: 1 keeps W at W_0 and applies λ·s·(B·A − B_K·A_K) as two
     * low-rank terms of the forward pass (docs/DELTA-LORA.md); forced on in
     * bf16 (a bf16 W would round the update away). 0: W += the update. */
    int delta_lowrank;
    float lambda;      /* Delta-LoRA λ, for the low-rank form */
    /* Activation checkpointing: 1 keeps only each layer's input (the
     * residual stream, n_layer + 1 slices of (B·T, C)) through the forward
     * pass, every other per-layer activation in one layer's buffers, and
     * the backward pass recomputes layer l's forward pass from its input
     * before its backward pass (dropout masks are keyed, so the same masks):
     * gradients bitwise those of 0 (model_pass.c), one more forward pass of
     * compute. dt_train chooses it (--activation-checkpointing). */
    int act_ckpt;
} dt_lora_opts;

/* "fp32", "tf32", "bf16" or "auto" to dt_precision; -1 if none. */
int dt_precision_parse(const char *s);
const char *dt_precision_name(dt_precision p);
/* AUTO on backend be: TF32 when the environment has DT_TF32=1 (the old
 * switch, kept as an alias of --precision tf32), BF16 when be->bf16_fast,
 * else FP32. Other values are checked: TF32 on the CPU backend is
 * DT_EINVAL (it has no TF32). Writes the resolved value to *out. */
int dt_precision_resolve(dt_precision p, const dt_backend *be,
                         dt_precision *out, char *err);

/* One trainable tensor with its gradient and AdamW moments (device). */
typedef struct dt_param {
    char name[128];    /* canonical name, e.g. "layers.0.self_attn.q_proj.lora_A" */
    float *p, *g, *m, *v;
    long n;
    int64_t shape[2];
} dt_param;

/* A LoRA adapter on rows [row_off, row_off + rows) of a linear W(out, in). */
typedef struct dt_lora {
    int layer;
    int lin;           /* index of the linear in its layer (model.c) */
    int row_off, rows, in;
    char wname[128];   /* canonical name of W */
    char tname[16];    /* target short name: "q", "c_attn", ... */
    dt_param *A;       /* (r, in)   */
    dt_param *B;       /* (rows, r) */
    float *u;          /* (BT, r) saved x·Aᵀ for backward */
    float *catA;       /* (2r, in)   Delta-LoRA: [A ; A_old]   */
    float *catB;       /* (rows, 2r) Delta-LoRA: [B | -B_old]  */
    float *AK, *BK;    /* Delta-LoRA: A_K (r, in), B_K (rows, r), the factors
                        * just before W first moved (the exact adapter) */
} dt_lora;

typedef struct dt_model dt_model;

/* Uploads weights and sets up training state for B x T batches.
 * `w` is borrowed for the lifetime of the model (export reads it). A is
 * initialised Kaiming-uniform(a=sqrt(5)) from `seed`, B zero. */
int dt_model_new(dt_backend *be, dt_weights *w, const dt_lora_opts *lo,
                 int B, int T, uint64_t seed, dt_model **out, char *err);
void dt_model_free(dt_model *m);
/* Frees every activation and scratch buffer (before exporting: only the
 * weights and factors are needed then). Forward passes fail afterwards. */
void dt_model_release_activations(dt_model *m);
/* Frees the host copies of the weights once a model holds them on its
 * device (names, shapes and dtypes stay: export needs those), and unmaps
 * the file of lazy weights (their data cannot be converted again). Halves
 * the host memory of CPU training. */
void dt_weights_release_data(dt_weights *w);

const dt_config *dt_model_config(const dt_model *m);
dt_backend *dt_model_backend(const dt_model *m);
/* Trainable tensors (LoRA A/B, or every weight for full). Borrowed. */
dt_param *dt_model_params(dt_model *m, int *n);
/* The trainable tensors as the backend's multi-tensor optimizer ops take
 * them (*n of them, in dt_model_params' order) and, in *sumsq, a device
 * double for their squared gradient norm. Borrowed: owned by the model. */
const dt_opt_tensor *dt_model_opt_tensors(dt_model *m, int *n, double **sumsq);
dt_lora *dt_model_loras(dt_model *m, int *n);
float dt_model_lora_scale(const dt_model *m);

/* Forward pass on host ids(B,T), targets(B,T) (-100 = masked). Returns the
 * sum of per-token losses over unmasked targets in *loss_sum and their count
 * in *ntok. When `grad_scale` != 0 the logits buffer is turned into dlogits *
 * grad_scale, ready for dt_model_backward(). b and t may be smaller than the
 * allocated B, T. */
int dt_model_forward(dt_model *m, const int32_t *ids, const int32_t *targets,
                     int b, int t, float grad_scale, double *loss_sum,
                     long *ntok, char *err);
/* dt_model_forward on packed sequences (--packing): each of the b
 * sequences holds several rows one after another; pos(b*t), host, is the
 * position of each token within its own row (0 at a row's first token and
 * at padding; pos[i] <= i % t). Attention stays within each row (a query
 * sees keys i - pos[i] .. i), RoPE and GPT-2's learned positions take pos,
 * so each row's loss and gradients are those of the row run alone (within
 * fp32 rounding). pos NULL is dt_model_forward. */
int dt_model_forward_packed(dt_model *m, const int32_t *ids,
                            const int32_t *targets, const int32_t *pos, int b,
                            int t, float grad_scale, double *loss_sum,
                            long *ntok, char *err);
/* Backward pass of the last forward: accumulates into the params' g. */
int dt_model_backward(dt_model *m, char *err);
/* Zeroes every gradient. */
void dt_model_zero_grad(dt_model *m);
/* Logits (b*t, V) of the last forward without grad_scale, copied to host. */
int dt_model_logits(dt_model *m, float *host, int b, int t, char *err);

/* Dropout probabilities used in training mode. embd, resid: GPT-2's
 * embedding and residual-branch dropouts; attn: on the attention
 * probabilities; lora: on the LoRA branch input x before A (PEFT's
 * lora_dropout, scaled by 1/(1-p); one mask per linear, shared by the row
 * slices of GPT-2's c_attn as loralib's MergedLinear does). */
typedef struct dt_dropouts {
    float embd, resid, attn, lora;
} dt_dropouts;

/* Sets the probabilities (all 0 after dt_model_new). Returns DT_ENOMEM when
 * the LoRA dropout's scratch cannot be allocated. */
int dt_model_set_dropout(dt_model *m, const dt_dropouts *d, char *err);
/* Label smoothing of the training loss (torch's CrossEntropyLoss(
 * label_smoothing=eps)); 0 after dt_model_new. */
void dt_model_set_label_smoothing(dt_model *m, float eps);
/* Training mode: the forward passes that follow (and their backward passes)
 * apply dropout and label smoothing, with masks keyed on (seed, step,
 * micro-batch, layer, site, element) (dt_math.h): nothing is stored, the
 * backward pass regenerates them, and a resumed run draws the same masks.
 * dt_model_eval_mode() (the state after dt_model_new) turns both off, for
 * validation and generation. */
void dt_model_train_mode(dt_model *m, uint64_t seed, long step, int micro);
void dt_model_eval_mode(dt_model *m);

/* Delta-LoRA support: snapshot A, B into catA/catB before the optimizer step,
 * then apply W += lambda * s * (B·A - B_old·A_old) as one GEMM with inner
 * dimension 2r after it. */
void dt_model_delta_snapshot(dt_model *m);
void dt_model_delta_apply(dt_model *m, float lambda);
/* Copies A, B into A_K, B_K (named "lora.<l>.<t>.A_K"/".B_K", kept in
 * checkpoints): called right before W first moves. */
void dt_model_delta_keep(dt_model *m);
/* The low-rank form (dt_lora_opts.delta_lowrank): 1 when W has started
 * moving (A_K, B_K hold the kept factors): set by dt_model_delta_keep, and
 * by the caller after resuming from a checkpoint past step K. */
void dt_model_delta_set_moved(dt_model *m, int moved);
/* 1 when the model applies Delta-LoRA in the low-rank form; 1 when frozen
 * weights are bf16 on the device (dt_model_merged then needs the fp32 base
 * weights on the host: reload them into the model's dt_weights). */
int dt_model_delta_lowrank(const dt_model *m);
int dt_model_bf16(const dt_model *m);
/* 1 when the model recomputes activations (dt_lora_opts.act_ckpt). */
int dt_model_act_ckpt(const dt_model *m);

/* Downloads the merged weights (W + s·B·A for every adapter; in the
 * low-rank Delta-LoRA form W_0 + s(1+λ)·B·A − λs·B_K·A_K, in fp32) into a
 * new host tensorset with canonical names. bf16 frozen weights are taken
 * from the model's dt_weights (fp32, as loaded): DT_EINVAL when their data
 * was released. */
int dt_model_merged(dt_model *m, dt_tensorset *out, char *err);
/* Downloads / uploads one device tensor by canonical name (weights and
 * LoRA factors), for checkpoints. */
int dt_model_get_weight(dt_model *m, const char *name, float **dev, long *n);

#endif
