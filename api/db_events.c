/* db_events.c: a job's event log: append (fenced by attempt for workers,
 * unconditional for the server) and the owner's newest-first pages. */
#include "db_internal.h"

#include <stdlib.h>

void db_event_array_free(db_event *a, int n)
{
    if (!a) return;
    for (int i = 0; i < n; i++) free(a[i].data);
    free(a);
}

int db_event_add(db *d, const char *job_id, int attempt, const char *level,
                 const char *type, const char *message, const char *data, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, job_id);
    dbp_int(&p, attempt);
    dbp_str(&p, level);
    dbp_str(&p, type);
    dbp_str(&p, message);
    dbp_nstr(&p, data);
    int rc = db_exec(d, STMT_EVENT_ADD, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) != 1)
        rc = attempt >= 0 ? dt_errf(err, DB_ELEASE, "lease lost on job %s", job_id)
                          : dt_errf(err, DB_ENOTFOUND, "no such job: %s", job_id);
    PQclear(r);
    return rc;
}

int db_event_list(db *d, const char *owner, const char *job_id, int64_t after_seq,
                  int limit, db_event **out, int *n, bool *has_more, char *err)
{
    db_params p = {0};
    PGresult *r;
    *out = NULL;
    *n = 0;
    *has_more = false;
    int rc = db_job_owned(d, owner, job_id, err);
    if (rc) return rc;
    dbp_str(&p, job_id);
    dbp_int(&p, after_seq);
    dbp_int(&p, limit + 1);
    rc = db_exec(d, STMT_EVENT_LIST, &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    if (m > limit) { *has_more = true; m = limit; }
    db_event *a = calloc((size_t)m + 1, sizeof *a);
    if (!a) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) {
        db_event *e = &a[i];
        e->seq = dbr_int(r, i, 0);
        dbr_str(r, i, 1, e->job_id, sizeof e->job_id);
        e->created_at = dbr_int(r, i, 2);
        dbr_str(r, i, 3, e->level, sizeof e->level);
        dbr_str(r, i, 4, e->type, sizeof e->type);
        dbr_str(r, i, 5, e->message, sizeof e->message);
        e->data = dbr_dup(r, i, 6);
    }
    PQclear(r);
    if (rc) { db_event_array_free(a, m); return rc; }
    *out = a;
    *n = m;
    return 0;
}
