/* train.h: the training loop (optimizer, schedule, checkpoints, export).
 *
 * One optimizer step t (1-based):
 *   zero grads; G micro-batches of B rows: forward (loss scaled by 1/tokens
 *   of the whole step), backward; global-norm clipping; Delta-LoRA snapshot
 *   (t > K); AdamW on the trainable tensors; Delta-LoRA W update (t > K). */
#ifndef DT_TRAIN_H
#define DT_TRAIN_H

#include <stdatomic.h>

#include "model.h"

typedef enum { DT_SCHED_LINEAR = 0, DT_SCHED_COSINE, DT_SCHED_CONSTANT } dt_sched;

typedef struct dt_optim {
    float lr;            /* peak learning rate */
    float b1, b2, eps;   /* AdamW, PyTorch defaults 0.9 / 0.999 / 1e-8 */
    float weight_decay;
    float max_grad_norm; /* 0 = no clipping */
    float lambda;        /* Delta-LoRA λ */
    int start_step;      /* Delta-LoRA K: W moves for t > K */
    int t;               /* optimizer steps taken */
} dt_optim;

void dt_optim_defaults(dt_optim *o);

/* Clips, updates and (Delta-LoRA) moves W; lr is this step's rate.
 * *gnorm receives the pre-clip global gradient norm. Increments o->t. */
int dt_optim_step(dt_model *m, dt_optim *o, dt_method method, float lr,
                  double *gnorm, char *err);

/* 1 when full fine-tuning decays the parameter of this canonical name:
 * Hugging Face Trainer's rule (no decay for biases and LayerNorm/RMSNorm
 * weights; embeddings and the LM head are decayed). See optim.c. */
int dt_param_decays(const char *name);

/* Learning rate of 0-based step k of `total` (Hugging Face's schedules). */
float dt_lr_at(dt_sched s, float lr, int warmup, int total, int k);

typedef struct dt_progress {
    int step, total_steps;
    double epoch;
    double train_loss;      /* mean over the step's tokens */
    double valid_loss;      /* NaN when not evaluated this step */
    double tokens_per_sec;
    double eta_sec;
    double lr, grad_norm;
    long trained_tokens;
    int ckpt_due;           /* 1: a checkpoint is written after this step */
    size_t peak_device_bytes; /* the backend's peak_bytes so far (backend.h) */
} dt_progress;

/* on_progress returns 0 to go on, DT_PROGRESS_STOP (or any other non-zero
 * value) to stop after writing a checkpoint, or DT_PROGRESS_ABORT to stop
 * at once without writing anything more (e.g. the caller lost its lease:
 * another process owns the output directory now). Both end in DT_ECANCEL. */
#define DT_PROGRESS_STOP 1
#define DT_PROGRESS_ABORT 2

typedef struct dt_train_opts {
    const char *model, *data, *valid, *out, *init_adapter, *device;
    dt_method method;
    int rank;
    float alpha, lambda;
    int start_step;          /* -1: a documented fraction of total steps */
    const char *targets;     /* "q,v" by default */
    float lr;
    dt_sched sched;
    int warmup;
    float weight_decay, max_grad_norm;
    float adam_eps;          /* AdamW ε (default 1e-8, as PyTorch) */
    /* Dropout in training (off in validation and generation): < 0 (the
     * default) takes config.json's (GPT-2: resid_pdrop, embd_pdrop,
     * attn_pdrop, 0.1 when missing; Llama: attention_dropout); >= 0
     * replaces every dropout the architecture has (0: none). */
    float model_dropout;
    float lora_dropout;      /* lora only: PEFT's lora_dropout (default 0) */
    float label_smoothing;   /* training loss; 0 = plain cross-entropy */
    int batch, accum, seq_len, epochs, steps;
    uint64_t seed;
    int threads;
    int eval_interval, ckpt_interval;
    int resume;
    int json;                /* 1: JSON lines, 0: progress bar */
    /* Called after every step; a non-zero return stops training cleanly
     * (a checkpoint is written, except for DT_PROGRESS_ABORT) with
     * DT_ECANCEL. */
    int (*on_progress)(void *ud, const dt_progress *p);
    void *ud;
    /* Called after each complete checkpoint (dir holds state + DONE); a
     * non-zero return fails the run (e.g. the worker lost its lease). */
    int (*on_checkpoint)(void *ud, int step, const char *dir);
    /* Set asynchronously (signal handler) to stop after the current step. */
    atomic_int *stop;
} dt_train_opts;

void dt_train_defaults(dt_train_opts *o);
/* K = start_step when >= 0, else DT_DELTA_START_FRAC of total steps. */
#define DT_DELTA_START_FRAC 0.1
int dt_train(const dt_train_opts *o, char *err);

/* Checkpoints: <out>/checkpoints/step-NNNNNNNN/{state.safetensors,
 * state.json, DONE}. Returns the newest complete step or 0. */
int dt_ckpt_latest(const char *out, char *dir, size_t dirlen);

#endif
