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
