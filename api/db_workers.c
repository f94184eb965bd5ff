/* db_workers.c: worker heartbeats and the counters behind /metrics. */
#include "db_internal.h"

#include <stdlib.h>
#include <string.h>

int db_worker_heartbeat(db *d, const char *worker_id, const char *hostname,
                        const char *device, const char *status, const char *job_id,
                        char *err)
{
    db_params p = {0};
    dbp_str(&p, worker_id);
    dbp_str(&p, hostname ? hostname : "");
    dbp_str(&p, device ? device : "");
    dbp_str(&p, status);
    dbp_str(&p, job_id ? job_id : "");
    return db_exec(d, STMT_WORKER_HB, &p, NULL, err);
}

int db_stats_get(db *d, db_stats *out, char *err)
{
    PGresult *r;
    memset(out, 0, sizeof *out);
    int rc = db_exec(d, STMT_STATS_JOBS, NULL, &r, err);
    if (rc) return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        int k = db_job_status_index(PQgetvalue(r, i, 0));
        if (k >= 0) out->jobs_by_status[k] = dbr_int(r, i, 1);
    }
    PQclear(r);
    rc = db_exec(d, STMT_STATS_JOB_TOTALS, NULL, &r, err);
    if (rc) return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        int k = db_job_status_index(PQgetvalue(r, i, 0));
        if (k >= 0) out->jobs_by_status[k] = dbr_int(r, i, 1);
    }
    PQclear(r);
    rc = db_exec(d, STMT_STATS_TPS, NULL, &r, err);
    if (rc) return rc;
    out->tokens_per_second = dbr_dbl(r, 0, 0);
    PQclear(r);
    rc = db_exec(d, STMT_STATS_WORKERS, NULL, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    out->workers = calloc((size_t)m + 1, sizeof *out->workers);
    if (!out->workers) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) {
        db_worker *w = &out->workers[i];
        dbr_str(r, i, 0, w->id, sizeof w->id);
        dbr_str(r, i, 1, w->hostname, sizeof w->hostname);
        dbr_str(r, i, 2, w->device, sizeof w->device);
        dbr_str(r, i, 3, w->status, sizeof w->status);
        dbr_str(r, i, 4, w->job_id, sizeof w->job_id);
        w->heartbeat_at = dbr_int(r, i, 5);
    }
    if (!rc) out->nworkers = m;
    PQclear(r);
    return rc;
}

int db_worker_set_memory(db *d, const char *worker_id, const char *hostname,
                         const char *device, int64_t limit, int64_t base, char *err)
{
    db_params p = {0};
    dbp_str(&p, worker_id);
    dbp_str(&p, hostname ? hostname : "");
    dbp_str(&p, device ? device : "");
    dbp_int(&p, limit);
    dbp_int(&p, base);
    return db_exec(d, STMT_WORKER_MEMORY, &p, NULL, err);
}

int db_workers_memory(db *d, int live_s, int *n, bool *unlimited, int64_t *budget_cpu,
                      int64_t *budget_gpu, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_int(&p, live_s);
    int rc = db_exec(d, STMT_WORKERS_MEMORY, &p, &r, err);
    if (rc) return rc;
    *n = (int)dbr_int(r, 0, 0);
    *unlimited = dbr_bool(r, 0, 1);
    *budget_cpu = dbr_int(r, 0, 2);
    *budget_gpu = dbr_int(r, 0, 3);
    PQclear(r);
    return 0;
}

int db_worker_serve_heartbeat(db *d, const char *worker_id, const char *hostname,
                              const char *device, const char *status, int64_t limit,
                              char *err)
{
    db_params p = {0};
    dbp_str(&p, worker_id);
    dbp_str(&p, hostname ? hostname : "");
    dbp_str(&p, device ? device : "");
    dbp_str(&p, status);
    dbp_int(&p, limit);
    return db_exec(d, STMT_WORKER_SERVE_HB, &p, NULL, err);
}

int db_workers_serving(db *d, int live_s, int *n, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_int(&p, live_s);
    int rc = db_exec(d, STMT_WORKERS_SERVING, &p, &r, err);
    if (rc) return rc;
    *n = (int)dbr_int(r, 0, 0);
    PQclear(r);
    return 0;
}
