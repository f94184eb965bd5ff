/* export.h: writing the merged model and the PEFT adapter.
 *
 * The merged model is a Hugging Face directory that `transformers` loads as
 * it is: config.json, model.safetensors in the input's key layout (prefix,
 * GPT-2 Conv1D (in, out) orientation, tied lm_head omitted when the input
 * omitted it) and dtype, plus the tokenizer files. A GGUF input becomes a
 * Llama safetensors directory with config.json, tokenizer.json,
 * tokenizer_config.json (with the chat template) and generation_config.json. */
#ifndef DT_EXPORT_H
#define DT_EXPORT_H

#include "model.h"

/* merged: canonical-name fp32 tensors (dt_model_merged()). */
int dt_export_hf(const dt_weights *w, const dt_tensorset *merged,
                 const dt_tokenizer *tok, const char *outdir, char *err);

/* The merged model's output: dtype (the merge is computed in fp32 and
 * rounded once, round-to-nearest-even) and the shard size. */
#define DT_EXPORT_SHARD_DEFAULT 5000000000LL /* 5 GB, as transformers */
typedef struct dt_export_opts {
    int dtype;            /* a dt_dtype, or -1: the input's dtype for a Hugging
                           * Face input, bf16 for a GGUF input */
    long long shard_size; /* bytes of tensor data per file; <= 0: 5 GB. Above
                           * it: model-0000i-of-0000n.safetensors plus
                           * model.safetensors.index.json (transformers'
                           * format: metadata.total_size, weight_map) */
} dt_export_opts;
void dt_export_opts_default(dt_export_opts *o);
int dt_export_hf_opts(const dt_weights *w, const dt_tensorset *merged,
                      const dt_tokenizer *tok, const char *outdir,
                      const dt_export_opts *xo, char *err);
/* "float32" | "bfloat16" | "float16" (also "fp32", "bf16", "fp16", "f32",
 * "f16") -> *d; DT_EINVAL naming `what` otherwise. */
int dt_export_dtype_parse(const char *s, dt_dtype *d, const char *what,
                          char *err);
/* The torch name of a dtype: "float32", "bfloat16", "float16". */
const char *dt_export_dtype_name(dt_dtype d);
/* The dtype an export of w takes by default (see dt_export_opts). */
dt_dtype dt_export_dtype_default(const dt_weights *w);

/* Writes the tensors as model.safetensors, or, when their data exceeds
 * shard_size bytes (<= 0: 5 GB), as model-0000i-of-0000n.safetensors shards
 * (tensors in order, a new shard before the one that would overflow) and
 * model.safetensors.index.json. *nshards receives the file count (may be
 * NULL). */
int dt_export_write_sharded(const char *outdir, const dt_st_entry *e, int n,
                            long long shard_size, int *nshards, char *err);

/* One LoRA factor pair in canonical terms, for the PEFT adapter. */
typedef struct dt_adapter_entry {
    const char *wname;   /* canonical weight name, e.g. "h.0.attn.c_attn.weight" */
    int row_off, rows;   /* rows of W the adapter covers (a slice for GPT-2 q/k/v) */
    int out, in, rank;
    const float *A;      /* (rank, in) host */
    const float *B;      /* (rows, rank) host */
} dt_adapter_entry;

/* Writes adapter_config.json + adapter_model.safetensors that `peft` loads
 * (PeftModel.from_pretrained). Row slices of one W (GPT-2 q,v of c_attn) are
 * written as one block-structured adapter on the whole module. */
int dt_export_peft(const dt_weights *w, const dt_adapter_entry *e, int n,
                   float alpha, const char *base_model_name,
                   const char *outdir, char *err);

/* Delta-LoRA's exact adapter: after T steps with W moving from step K+1,
 * merged = W_0 + s(1+λ)·B_T·A_T − s·λ·B_K·A_K, written as a PEFT LoRA with
 * r' = 2r, A' = [A_T ; A_K], B' = [(1+λ)·B_T , −λ·B_K], lora_alpha' = 2α
 * (s' = s). e holds A_T, B_T; AK[i], BK[i] the factors of e[i] just before
 * W first moved, or NULL when W never moved (then the adapter is B_T·A_T).
 * Also writes README.md: the adapter applies to the base as the engine read
 * it (a GGUF base: its dequantized float32 weights). */
int dt_export_peft_delta(const dt_weights *w, const dt_adapter_entry *e,
                         const float *const *AK, const float *const *BK, int n,
                         float alpha, float lambda, const char *base_model_name,
                         const char *outdir, char *err);

/* Reads a PEFT adapter directory (for --init-adapter): rank, alpha, target
 * module names and the A/B factors by canonical weight name. */
typedef struct dt_peft_adapter {
    int rank;
    float alpha;
    dt_tensorset ts;   /* canonical names: "<wname without .weight>.lora_A" / ".lora_B" */
    char targets[256]; /* comma-separated module names as in the config */
} dt_peft_adapter;
int dt_peft_load(const char *dir, const dt_weights *w, dt_peft_adapter *ad,
                 char *err);
void dt_peft_free(dt_peft_adapter *ad);

#endif
