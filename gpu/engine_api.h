/* engine_api.h: the engine as the service sees it, the one gpu/ header that
 * server/ includes. It pulls in nothing from the engine beyond base/, and the
 * server binary links only what it declares (scripts/check-layout checks
 * both).
 *
 * Today: dataset validation without a tokenizer (uploads are checked when
 * they arrive, before any job uses them). */
#ifndef DT_ENGINE_API_H
#define DT_ENGINE_API_H

/* Checks a JSONL training file's every line against the accepted shapes
 * (gpu/dataset.h describes them). On bad lines returns DT_EINVAL, *report
 * (new malloc'd string) lists up to max_report problems (<= 0: 100), one per
 * line, as "PATH:LINE: field ...: ...", and err holds the first. *nlines
 * counts the non-blank lines, good or bad. DT_EIO when the file cannot be
 * read. */
int dt_dataset_validate(const char *path, int max_report, char **report,
                        long *nlines, char *err);

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

#endif
