/* results.c: a job's results file, as OpenAI's fine-tuning jobs have one:
 * once a job has succeeded, job.result_files names "file-<hex>" (from its id
 * "ftjob-<hex>"), and GET /v1/files/{id} and /content serve its step
 * metrics as CSV. The file is not stored: it is written from the job's
 * metrics events on each request, so it can't go missing or disagree with
 * the events. It belongs to the job's owner (another owner gets 404), is
 * not listed by GET /v1/files and can't be deleted (it goes with the job). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/objects.h"
#include "handlers.h"

static const char header[] =
    "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate,"
    "grad_norm,tokens_per_second,trained_tokens\n";

int results_file(req *r, const char *file_id, db_file *f, char **content)
{
    char err[DT_ERR_LEN], job_id[DB_ID_LEN], *rows = NULL;
    if (content) *content = NULL;
    if (strncmp(file_id, "file-", 5) || strlen(file_id) + 1 > sizeof job_id - 1)
        return DB_ENOTFOUND;
    snprintf(job_id, sizeof job_id, "ftjob-%s", file_id + 5);
    db *d = req_db(r);
    if (!d) return DB_EUNAVAIL;
    db_job j;
    int rc = db_job_get(d, r->owner, job_id, &j, err);
    if (rc) return rc == DB_EUNAVAIL ? rc : DB_ENOTFOUND;
    int ok = !strcmp(j.status, "succeeded");
    int64_t finished = j.finished_at;
    db_job_clear(&j);
    if (!ok) return DB_ENOTFOUND;
    rc = db_job_results_csv(d, job_id, &rows, err);
    if (rc) return rc == DB_EUNAVAIL ? rc : DT_EIO;
    size_t hl = strlen(header), rl = strlen(rows);
    char *csv = malloc(hl + rl + 2);
    if (!csv) { free(rows); return DT_ENOMEM; }
    memcpy(csv, header, hl);
    memcpy(csv + hl, rows, rl);
    if (rl) csv[hl + rl++] = '\n';
    csv[hl + rl] = 0;
    free(rows);
    memset(f, 0, sizeof *f);
    snprintf(f->id, sizeof f->id, "%s", file_id);
    snprintf(f->owner, sizeof f->owner, "%s", r->owner);
    snprintf(f->filename, sizeof f->filename, "step_metrics.csv");
    snprintf(f->purpose, sizeof f->purpose, "fine-tune-results");
    snprintf(f->status, sizeof f->status, "processed");
    f->bytes = (int64_t)(hl + rl);
    f->created_at = finished;
    auth_sha256_hex(csv, hl + rl, f->sha256);
    for (size_t i = hl; i < hl + rl; i++) f->nlines += csv[i] == '\n';
    if (content) *content = csv;
    else free(csv);
    return 0;
}
