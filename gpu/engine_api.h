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

#endif
