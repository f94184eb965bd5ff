/* dataset_impl.h: what dataset.c (rendering), dataset_check.c (checks,
 * scanner, upload validation) and chat_prompt.c (chat prompts rendered as
 * training renders chat rows) share. Not for use outside gpu/. */
#ifndef DT_DATASET_IMPL_H
#define DT_DATASET_IMPL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "base/dt.h"
#include "chat_template.h"
#include "dataset.h"

#define DS_MAX_REPORT_DEFAULT 100
#define DS_LABEL_IGNORE (-100)

enum { SHAPE_TEXT, SHAPE_PC, SHAPE_CHAT, SHAPE_IDS };
enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };

/* Problem collection: the report lists at most `max` problems, then a
 * "... and N more problems" line; the first problem is kept whole for err. */
typedef struct problems {
    char *buf;  /* report text, owned until handed to the caller */
    size_t len, cap;
    int max;    /* problems listed in the report */
    long total; /* problems found */
    char first[DT_ERR_LEN];
} problems;

/* Adds one problem line. DT_OK or DT_ENOMEM. */
int ds_problems_add(problems *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the report to *report (new string) and the first problem to err. */
void ds_problems_finish(problems *p, char **report, char *err);

/* Writes a line problem into msg (DT_ERR_LEN bytes); returns -1. */
int ds_fail(char *msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* ROLE_* of a checked role name, -1 for any other. */
int ds_role_of(const char *s);
/* Weight of a chat message: 1 unless "weight": 0. */
int ds_message_weight(const json_t *m);

/* Called for every line that parses and passes the shape check: returns 0,
 * -1 with a line problem in msg, or a negative DT_E* (< -1) to stop. */
typedef int (*row_fn)(void *ctx, const json_t *obj, int shape, char *msg);

/* Streams path line by line (see dataset.c's header for line handling),
 * checks each line's shape (ids below vocab when vocab > 0), adds every bad
 * line to p and calls on_row for the good ones. A line longer than max_line
 * bytes (> 0; its "\n" not counted) is a problem naming its number, its
 * length and the limit, and is never held in memory: memory is bounded by
 * max_line whatever the file holds. max_line 0: no limit. *nrows counts
 * non-blank lines. DT_OK, or DT_EIO / DT_ENOMEM / on_row's code with err
 * set. */
int ds_scan_file(const char *path, long vocab, long max_line, problems *p, long *nrows,
                 row_fn on_row, void *ctx, char *err);

/* Tokens of a row (or a chat prompt) being rendered (dataset.c). Text
 * without loss waits in pend and is encoded in one piece when a trained
 * span or a control token follows; trained text is encoded on its own, so
 * its boundary is exact. Zero-initialise, set tok, limit and maxb; free with
 * ds_builder_free. */
typedef struct ds_builder {
    const dt_tokenizer *tok;
    int allow_special; /* control-token strings recognised in text */
    int32_t *ids;      /* (n) */
    uint8_t *loss;     /* (n) 1: token j is a trained target (predicted at j-1) */
    int n, cap;
    int limit;         /* tokens kept (seq_len + 1); later ones are dropped */
    size_t maxb;       /* bytes of the tokenizer's longest token
                          (dt_tokenizer_max_token_bytes; DT_TOK_NO_BOUND: text
                          is never cut) */
    int cut;           /* text or tokens were dropped at the limit */
    char *pend;        /* masked text not yet encoded */
    size_t plen, pcap;
    char err[DT_ERR_LEN];
} ds_builder;

/* Appends a chat (messages, borrowed) to b: the model's chat template when
 * the tokenizer has one, else ChatML or the plain template with a [BOS]
 * (dataset.c's header). prompt 0: a training row, with its loss mask.
 * prompt 1: dt_chat_prompt's prompt: the generation prompt added, every
 * assistant message a trained span (so the prompt is, token for token,
 * training's row up to the answer) and a template's refusal DT_EINVAL.
 * DT_OK or a DT_E* code with b->err set (empty for DT_ENOMEM). */
int ds_render_chat(ds_builder *b, const json_t *msgs, int prompt);
/* Frees b's buffers; b can be used again. */
void ds_builder_free(ds_builder *b);

#endif
