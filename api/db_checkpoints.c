/* db_checkpoints.c: a job's complete checkpoints: record one with its model
 * row in one fenced transaction, and list them newest step first. */
#include "db_internal.h"

#include <stdio.h>
#include <stdlib.h>

#include "objects.h"
#include "base/id.h"

void db_checkpoint_array_free(db_checkpoint *a, int n)
{
    if (!a) return;
    for (int i = 0; i < n; i++) free(a[i].metrics);
    free(a);
}

typedef struct ckpt_arg {
    const char *job_id, *model_id, *path, *metrics;
    int attempt;
    int64_t step;
} ckpt_arg;

static int ckpt_tx(db *d, void *arg, char *err)
{
    ckpt_arg *a = arg;
    char owner[DB_OWNER_LEN], model[256], suffix[65], id[DB_ID_LEN];
    int rc = db_job_fence(d, a->job_id, a->attempt, owner, model, suffix, err);
    if (rc) return rc;
    if (dt_id_new("ftckpt-", id, sizeof id)) return dt_errf(err, DT_EIO, "no randomness");
    db_params p = {0};
    dbp_str(&p, id);
    dbp_str(&p, a->job_id);
    dbp_int(&p, a->step);
    dbp_str(&p, a->model_id);
    dbp_str(&p, a->path);
    dbp_nstr(&p, a->metrics);
    rc = db_exec(d, STMT_CKPT_PUT, &p, NULL, err);
    if (rc) return rc;
    db_model m = {0};
    snprintf(m.id, sizeof m.id, "%s", a->model_id);
    snprintf(m.kind, sizeof m.kind, "checkpoint");
    snprintf(m.owner, sizeof m.owner, "%s", owner);
    snprintf(m.base, sizeof m.base, "%s", model);
    snprintf(m.job_id, sizeof m.job_id, "%s", a->job_id);
    snprintf(m.path, sizeof m.path, "%s", a->path);
    m.step = a->step;
    return db_model_put(d, &m, err);
}

int db_checkpoint_add(db *d, const char *job_id, int attempt, int64_t step,
                      const char *model_id, const char *path, const char *metrics,
                      char *err)
{
    ckpt_arg a = {job_id, model_id, path, metrics, attempt, step};
    return db_tx(d, ckpt_tx, &a, err);
}

int db_checkpoint_list(db *d, const char *owner, const char *job_id, const char *after,
                       int limit, db_checkpoint **out, int *n, bool *has_more, char *err)
{
    db_params p = {0};
    PGresult *r;
    *out = NULL;
    *n = 0;
    *has_more = false;
    int rc = db_job_owned(d, owner, job_id, err);
    if (rc) return rc;
    dbp_str(&p, job_id);
    dbp_nstr(&p, after);
    dbp_int(&p, limit + 1);
    rc = db_exec(d, STMT_CKPT_LIST, &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    if (m > limit) { *has_more = true; m = limit; }
    db_checkpoint *a = calloc((size_t)m + 1, sizeof *a);
    if (!a) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) {
        db_checkpoint *c = &a[i];
        dbr_str(r, i, 0, c->id, sizeof c->id);
        dbr_str(r, i, 1, c->job_id, sizeof c->job_id);
        dbr_str(r, i, 2, c->model_id, sizeof c->model_id);
        c->step = dbr_int(r, i, 3);
        c->created_at = dbr_int(r, i, 4);
        dbr_str(r, i, 5, c->path, sizeof c->path);
        c->metrics = dbr_dup(r, i, 6);
    }
    PQclear(r);
    if (rc) { db_checkpoint_array_free(a, m); return rc; }
    *out = a;
    *n = m;
    return 0;
}
