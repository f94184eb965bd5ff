/* train.h: the training loop (optimizer, schedule, checkpoints, export).
 *
 * One optimizer step t (1-based):
 *   zero grads; G micro-batches of B rows: forward (loss scaled by 1/tokens
 *   of the whole step), backward; global-norm clipping; Delta-LoRA snapshot
 *   (t > K); AdamW on the trainable tensors; Delta-LoRA W update (t > K). */
#ifndef DT_TRAIN_H
#define DT_TRAIN_H

#include <stdatomic.h>

#include "engine_api.h"
#include "model.h"

typedef enum { DT_SCHED_LINEAR = 0, DT_SCHED_COSINE, DT_SCHED_CONSTANT } dt_sched;

typedef struct dt_optim {
    float lr;            /* peak learning rate */
    float b1, b2, eps;   /* AdamW, PyTorch defaults 0.9 / 0.999 / 1e-8 */
    float weight_decay;
    float max_grad_norm; /* 0 = no clipping */
    float lambda;        /* Delta-LoRA λ */
    int64_t start_step;  /* Delta-LoRA K: W moves for t > K */
    int64_t t;           /* optimizer steps taken (64-bit: see dt_train) */
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
float dt_lr_at(dt_sched s, float lr, int64_t warmup, int64_t total, int64_t k);

typedef struct dt_progress {
    int64_t step, total_steps;
    double epoch;
    double train_loss;      /* mean over the step's tokens */
    double valid_loss;      /* NaN when not evaluated this step */
    double tokens_per_sec;  /* run_tokens per second of this run: real
                               tokens (prompt and completion), no padding */
    double eta_sec;
    double lr, grad_norm;
    long trained_tokens;    /* tokens with a loss (predicted targets), summed
                               over every step */
    int ckpt_due;           /* 1: a checkpoint is written after this step */
    size_t peak_device_bytes; /* the backend's peak_bytes so far (backend.h) */
    long run_tokens;        /* tokens processed since this run (or resume)
                               began: every token of every row, prompt
                               included, padding not; tokens_per_sec is
                               run_tokens per second */
    int act_ckpt;           /* 1: the run recomputes activations
                               (dt_train_opts.act_ckpt as chosen) */
} dt_progress;

/* Activation checkpointing (--activation-checkpointing, model.h's
 * dt_lora_opts.act_ckpt). AUTO turns it on only when the run's estimate
 * without it exceeds the budget: memory_limit when set, else the CUDA
 * device's memory, else the host's available memory (CPU). */
typedef enum {
    DT_ACT_CKPT_AUTO = 0, DT_ACT_CKPT_ON, DT_ACT_CKPT_OFF
} dt_act_ckpt_mode;
/* "auto", "on", "off" to the mode; -1 if none. */
int dt_act_ckpt_parse(const char *s);
const char *dt_act_ckpt_name(int mode);

/* on_progress returns 0 to go on, DT_PROGRESS_STOP (or any other non-zero
 * value) to stop after writing a checkpoint, or DT_PROGRESS_ABORT to stop
 * at once without writing anything more (e.g. the caller lost its lease:
 * another process owns the output directory now). Both end in DT_ECANCEL.
 * The same two values in *stop (or from on_micro) stop training between
 * two micro-batches of a step: the partial gradient accumulation is
 * dropped; STOP writes a checkpoint of the last completed optimizer step
 * (unless it has one already), ABORT writes nothing. */
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
    /* --packing: several rows packed into each sequence of up to seq_len
     * positions (attention and positions kept within each row); batch then
     * counts packed sequences. Off by default (model.h,
     * dt_model_forward_packed). */
    int packing;
    uint64_t seed;
    int threads;
    int eval_interval, ckpt_interval;
    /* Checkpoints that keep their resumable training state (optimizer
     * moments): the newest ckpt_keep; older ones keep only their weights
     * (dt_ckpt_prune). <= 0: keep every one. Default 2. */
    int ckpt_keep;
    int resume;
    int json;                /* 1: JSON lines, 0: progress bar */
    /* Called after every step; a non-zero return stops training cleanly
     * (a checkpoint is written, except for DT_PROGRESS_ABORT) with
     * DT_ECANCEL. */
    int (*on_progress)(void *ud, const dt_progress *p);
    void *ud;
    /* Called after each complete checkpoint (dir holds state + DONE); a
     * non-zero return fails the run (e.g. the worker lost its lease). */
    int (*on_checkpoint)(void *ud, int64_t step, const char *dir);
    /* Optional, cheap: called before micro-batch `micro` (1 .. accum-1) of
     * 0-based step `step`; returns 0, DT_PROGRESS_STOP or DT_PROGRESS_ABORT
     * (as *stop). */
    int (*on_micro)(void *ud, int64_t step, int micro);
    /* Set asynchronously (signal handler, another thread): read after every
     * step and between micro-batches. DT_PROGRESS_STOP (1): stop with a
     * checkpoint of the last completed step; DT_PROGRESS_ABORT: stop
     * without writing anything (the step in progress is dropped, a resumed
     * run starts from the last checkpoint). */
    atomic_int *stop;
    /* Bytes the run may take (0: no limit): a run whose estimate
     * (dt_train_estimate) exceeds it fails with DT_ENOMEM before the model
     * is loaded, naming the bytes needed, the limit and what to lower. */
    long long memory_limit;
    /* The merged model's export (gpu/export.h): export_dtype "float32",
     * "bfloat16" or "float16" (NULL: the input's dtype for a Hugging Face
     * input, bfloat16 for GGUF); export_shard_size: bytes per safetensors
     * file (<= 0: 5 GB) above which the weights are sharded with
     * model.safetensors.index.json. */
    const char *export_dtype;
    long long export_shard_size;
    /* --precision (model.h): AUTO is bf16 on a CUDA device with compute
     * capability >= 8.0, fp32 elsewhere. The job hyperparameter `precision`
     * maps onto it. */
    dt_precision precision;
    /* Delta-LoRA's low-rank form in fp32 too (always on in bf16): W stays
     * W_0, the update is applied as two low-rank terms (docs/DELTA-LORA.md). */
    int delta_lowrank;
    /* dt_act_ckpt_mode (default AUTO). */
    int act_ckpt;
} dt_train_opts;

void dt_train_defaults(dt_train_opts *o);
/* K = start_step when >= 0, else DT_DELTA_START_FRAC of total steps. */
#define DT_DELTA_START_FRAC 0.1
int dt_train(const dt_train_opts *o, char *err);
/* The run's peak memory as dt_train would take it: the model's config
 * numbers, the data's longest row (the tokenizer and data are loaded, the
 * weights are not), o's method, rank, targets, batch, seq_len and device;
 * runtime is this process's resident memory once the data is loaded. */
int dt_train_estimate(const dt_train_opts *o, dt_mem_estimate *e, char *err);
/* dt_train_estimate with activation checkpointing as the run would choose
 * it: *act_ckpt 1 when on; *off (may be NULL) the total without it;
 * *budget (may be NULL) the budget AUTO compared it with (0: none). The
 * budget without a memory_limit: this machine's available memory, or for
 * a CUDA device its memory (dt_backend_cuda_total). */
int dt_train_estimate_ckpt(const dt_train_opts *o, dt_mem_estimate *e,
                           int *act_ckpt, long long *off, long long *budget,
                           char *err);

/* Optimizer steps of a run: steps, or ceil(epochs * rows / (batch *
 * accum)), in 64 bits (21.5 M rows x 100 epochs does not fit an int).
 * With packing dt_train counts the packed sequences instead. */
int64_t dt_train_total_steps(int steps, int epochs, long rows, int batch, int accum);

/* Checkpoints: <out>/checkpoints/step-NNNNNNNN/{weights.safetensors,
 * optimizer.safetensors, state.json, DONE}: weights.safetensors holds every
 * trainable tensor (and the W that Delta-LoRA moves): what makes the
 * checkpoint usable as a model; optimizer.safetensors the AdamW moments
 * (with the rest: the resumable training state). Checkpoints of older
 * versions hold both in state.safetensors. Returns the newest complete and
 * resumable step (DONE and the optimizer state present) or 0. */
int64_t dt_ckpt_latest(const char *out, char *dir, size_t dirlen);

/* Retention: removes the resumable training state (optimizer.safetensors)
 * of every complete checkpoint under <out>/checkpoints but the newest
 * `keep` (keep 0: of all, for a job that has ended); their weights,
 * state.json and DONE stay. Checkpoints in the older one-file format are
 * left as they are. Returns the number of states removed, or a negative
 * DT_E* code with err set (err may be NULL). */
int dt_ckpt_prune(const char *out, int keep, char *err);

/* A checkpoint as a model: writes the merged weights of checkpoint
 * directory `ckpt` (a step-N of a run on the model at `base`) as a Hugging
 * Face directory `outdir` that `transformers` loads, as the run's final
 * export would have (config, tokenizer files, chat template of the base).
 * lora / delta_lora: the base plus the checkpoint's adapter/ (exact, see
 * ckpt_export.c); full: the checkpoint's weights. dtype: "float32",
 * "bfloat16", "float16", or NULL / "auto" for the export's default.
 * Written beside outdir and renamed into place (an older outdir is
 * replaced). shard_size: as dt_train_opts' export_shard_size. Only DONE
 * checkpoints are complete; the caller checks. */
int dt_ckpt_export(const char *base, const char *ckpt, const char *outdir,
                   const char *dtype, long long shard_size, char *err);

#endif
