/* engine_api.h: the engine as the service sees it, the one gpu/ header that
 * server/ includes. It pulls in nothing from the engine beyond base/, and the
 * server binary links only what it declares (scripts/check-layout checks
 * both).
 *
 * Today: dataset validation without a tokenizer (uploads are checked when
 * they arrive, before any job uses them) and the memory estimate of a job
 * (estimate.c: config numbers only, no model code). */
#ifndef DT_ENGINE_API_H
#define DT_ENGINE_API_H

#include <stddef.h>

/* Checks a JSONL training file's every line against the accepted shapes
 * (gpu/dataset.h describes them). On bad lines returns DT_EINVAL, *report
 * (new malloc'd string) lists up to max_report problems (<= 0: 100), one per
 * line, as "PATH:LINE: field ...: ...", and err holds the first. *nlines
 * counts the non-blank lines, good or bad. DT_EIO when the file cannot be
 * read. */
int dt_dataset_validate(const char *path, int max_report, char **report,
                        long *nlines, char *err);

/* ---- memory estimate (estimate.c) -------------------------------------- */

/* The few config numbers the estimate needs, read from a Hugging Face
 * directory's config.json or a .gguf file's header (no weights loaded). */
typedef struct dt_mem_model {
    int llama;            /* 0: GPT-2, 1: Llama family */
    int n_layer, d_model, n_head, n_kv_head, head_dim, d_ff, vocab, max_pos;
    int tied;             /* LM head shares the embedding */
    int qk_norm;          /* Qwen 3: per-head q_norm / k_norm */
} dt_mem_model;

/* A job's settings. */
typedef struct dt_mem_job {
    int method;           /* 0 full, 1 lora, 2 delta_lora (dt_method) */
    int rank;             /* LoRA rank (ignored for full) */
    const char *targets;  /* target modules as the engine takes them; NULL: q,v */
    int batch, seq_len;
    int longest_row;      /* predicted tokens of the data's longest row; 0:
                             unknown (activations sized by seq_len) */
    long long data_tokens;/* tokens of the tokenized data (0: unknown) */
    int cuda;             /* 1: the CUDA backend (device memory only) */
    int threads;          /* CPU threads (attention scratch); 0: 1 */
    long long runtime_bytes; /* CPU: the process's own resident memory
                                (code, libraries, tokenizer): dt_mem_self_rss() */
    int packing;          /* 1: --packing: sequences of seq_len (longest_row
                             is not the bound) and, on CUDA, the naive
                             attention whatever T (no fused segments) */
    int act_ckpt;         /* 1: activation checkpointing (model.h): one
                             layer's activations besides every layer's
                             input */
} dt_mem_job;

/* Bytes at the peak, by kind; total is their sum. On the CPU, workspace
 * includes the host copies of the checkpoint and export phases when one of
 * those is the peak. */
typedef struct dt_mem_estimate {
    long long weights, trainable, activations, workspace, runtime, total;
    int seq_eff;          /* the T activations are sized by */
} dt_mem_estimate;

/* Reads the config numbers of the model at path (directory or .gguf).
 * DT_EFORMAT / DT_EIO with detail in err. */
int dt_mem_model_read(const char *path, dt_mem_model *m, char *err);
/* The job's peak memory (bytes). DT_EINVAL on impossible settings. */
int dt_mem_estimate_job(const dt_mem_model *m, const dt_mem_job *j, dt_mem_estimate *e,
                    char *err);
/* The same with the precision: bf16 = 1 counts --precision bf16 (the frozen
 * linear weights at 2 bytes for lora and delta_lora, Delta-LoRA's low-rank
 * form without the concatenated factors, the bf16 GEMMs' scratch);
 * dt_mem_estimate_job is bf16 = 0 (fp32, an upper bound). */
int dt_mem_estimate_job_prec(const dt_mem_model *m, const dt_mem_job *j, int bf16,
                             dt_mem_estimate *e, char *err);
/* Activation checkpointing's automatic choice: estimates j without it
 * (j->act_ckpt = 0) and, when that total exceeds budget (bytes; <= 0: no
 * budget, never on), with it. Leaves the choice in j->act_ckpt and its
 * estimate in *e; *off (may be NULL) gets the total without it. */
int dt_mem_estimate_auto_ckpt(const dt_mem_model *m, dt_mem_job *j, int bf16,
                              long long budget, dt_mem_estimate *e,
                              long long *off, char *err);
/* This process's resident memory (VmRSS; DT_SELF_RSS_BYTES, when set, in
 * its place: tests pin it) and the machine's MemAvailable, in bytes; 0 when
 * unknown. */
long long dt_mem_self_rss(void);
long long dt_mem_available(void);
/* "8G", "512M", "1.5GiB", "1000000" -> bytes (K/M/G/T are powers of 1024).
 * DT_EINVAL when s is not a size. */
int dt_mem_parse_size(const char *s, long long *out);
/* "1.5 GiB" */
void dt_mem_human(long long bytes, char *buf, size_t n);

/* The default longest line of an upload, in bytes (the server's
 * DELTATUNE_MAX_LINE_BYTES): a row is cut to seq_len + 1 tokens (at most
 * 8193), which take ~32 KB of English text, ~115 KB as input_ids + labels
 * and ~200 KB fully \u-escaped; 1 MiB leaves a margin of 5 over that. */
#define DT_DATASET_MAX_LINE_DEFAULT (1L << 20)

/* dt_dataset_validate with a line cap: a line longer than max_line_bytes
 * (its "\n" not counted; <= 0: no cap) is reported as
 * "PATH:LINE: line is N bytes, longer than the limit of M bytes per line
 * ..." and skipped without being held in memory, so memory is bounded by the
 * cap, not by the longest line. dt_dataset_validate uses
 * DT_DATASET_MAX_LINE_DEFAULT. */
int dt_dataset_validate_lines(const char *path, int max_report, long max_line_bytes,
                              char **report, long *nlines, char *err);

/* ---- what a user sees of a model (arch_info.c) --------------------------- */

/* A base model's family (config.json "model_type" or GGUF
 * "general.architecture": "gpt2", "llama", "qwen2", ...; "" unknown), its
 * context length (max_position_embeddings / n_positions / n_ctx or GGUF
 * "<arch>.context_length"; 0 unknown) and whether it ships a chat template
 * (chat_template.jinja, tokenizer_config.json "chat_template", GGUF
 * "tokenizer.chat_template"). Metadata only: no weights, no tokenizer. */
typedef struct dt_arch_info {
    char family[64];
    long long context_length;
    int chat_template;
} dt_arch_info;

/* Reads the info of the model at path (directory or .gguf). DT_EIO /
 * DT_EFORMAT with detail in err (and *a zeroed). */
int dt_arch_info_read(const char *path, dt_arch_info *a, char *err);

#endif
