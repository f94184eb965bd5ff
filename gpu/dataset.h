/* dataset.h: JSONL training data -> token rows with loss masks.
 *
 * Accepted line shapes (one JSON object per line, blank lines skipped):
 *   {"text": "..."}                         loss on every predicted token
 *   {"prompt": "...", "completion": "..."}  loss on the completion only
 *   {"messages": [{"role","content"}...]}   loss on assistant turns
 *   {"input_ids": [...], "labels": [...]}   pre-tokenized; labels optional,
 *                                           -100 = masked
 * Chat rows use ChatML (<|im_start|>role\ncontent<|im_end|>\n) when the
 * tokenizer has <|im_start|>; otherwise the plain template
 * "### {Role}:\n{content}\n\n" with the EOS token after each assistant turn.
 *
 * A row of n tokens gives n-1 predictions: labels[i] is the target for
 * position i, i.e. ids[i+1] or -100 when masked. Rows longer than seq_len+1
 * tokens are truncated, before tokenizing: of a long string only the first
 * (tokens still needed + 1) x (longest token's bytes) bytes are tokenized,
 * so the tokens kept are those of the whole string (a word cut there, in a
 * row far longer than seq_len, may end in other tokens). Validation reports every bad line, with its number
 * and field, before any training starts. */
#ifndef DT_DATASET_H
#define DT_DATASET_H

#include <stdint.h>

#include "engine_api.h"
#include "tokenizer.h"

typedef struct dt_row {
    int32_t *ids;    /* n tokens */
    int32_t *labels; /* n targets: labels[i] predicts after ids[i]; -100 masked */
    int n;
} dt_row;

typedef struct dt_dataset {
    dt_row *rows;
    int nrows;
    long ntokens; /* sum of unmasked targets */
} dt_dataset;

/* Parses and tokenizes the file. On any bad line returns DT_EINVAL and writes
 * every problem ("data.jsonl:12: field \"messages\"[1].role: must be ...")
 * into *report (new malloc'd string, one problem per line) and the first into
 * err. seq_len bounds rows to seq_len predictions. */
int dt_dataset_load(const char *path, const dt_tokenizer *tok, int seq_len,
                    dt_dataset *ds, char **report, char *err);
void dt_dataset_free(dt_dataset *ds);

/* dt_dataset_validate (no tokenizer; the service's upload check) is
 * declared in engine_api.h. */

#endif
