/* dataset_impl.h: what dataset.c (rendering) and dataset_check.c (checks,
 * scanner, upload validation) share. Not for use outside gpu/dataset*.c. */
#ifndef DT_DATASET_IMPL_H
#define DT_DATASET_IMPL_H

#include <jansson.h>

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

/* The edges of a chat turn's loss span (dataset.c): the end-of-turn marker
 * at s (after optional spaces; eos, or one of the known markers), its
 * length or 0; and a span start a widened back over a reasoning opener
 * ("<think>\n", Qwen 3). chat_prompt.c's chat prompts use the same two, so a
 * served prompt ends exactly where training's row continues. */
size_t ds_end_marker_at(const char *eos, const char *s, size_t n);
size_t ds_think_start(const dt_chat_out *o, size_t a);

#endif
