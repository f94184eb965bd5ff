/* db_owners.c: per-owner limits (owner_limits, set by `deltatune owners
 * set`), what counts against them (active jobs, stored bytes) and the
 * owner's admission lock. The server resolves defaults and measures the
 * job directories on disk (server/usage.c). */
#include "db_internal.h"

#include <stdlib.h>
#include <string.h>

int db_owner_limits_get(db *d, const char *owner, db_owner_limits *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    memset(out, 0, sizeof *out);
    snprintf(out->owner, sizeof out->owner, "%s", owner);
    out->max_jobs = out->max_storage_bytes = out->max_upload_bytes = DB_LIMIT_DEFAULT;
    dbp_str(&p, owner);
    int rc = db_exec(d, STMT_OWNER_LIMITS_GET, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) {
        out->max_jobs = dbr_int(r, 0, 0);
        out->max_storage_bytes = dbr_int(r, 0, 1);
        out->max_upload_bytes = dbr_int(r, 0, 2);
    }
    PQclear(r);
    return 0;
}

/* A limit as a parameter: NULL for the default. */
static void limit_param(db_params *p, int64_t v)
{
    if (v < 0) dbp_nstr(p, NULL);
    else dbp_int(p, v);
}

int db_owner_limits_set(db *d, const db_owner_limits *l, char *err)
{
    db_owner_limits cur;
    int rc = db_owner_limits_get(d, l->owner, &cur, err);
    if (rc) return rc;
    if (l->max_jobs != DB_LIMIT_KEEP) cur.max_jobs = l->max_jobs;
    if (l->max_storage_bytes != DB_LIMIT_KEEP) cur.max_storage_bytes = l->max_storage_bytes;
    if (l->max_upload_bytes != DB_LIMIT_KEEP) cur.max_upload_bytes = l->max_upload_bytes;
    if (cur.max_jobs > 2147483647)
        return dt_errf(err, DT_EINVAL, "max-jobs: at most 2147483647");
    db_params p = {0};
    dbp_str(&p, l->owner);
    limit_param(&p, cur.max_jobs);
    limit_param(&p, cur.max_storage_bytes);
    limit_param(&p, cur.max_upload_bytes);
    return db_exec(d, STMT_OWNER_LIMITS_PUT, &p, NULL, err);
}

int db_owner_list(db *d, db_owner_limits **out, int *n, char *err)
{
    PGresult *r;
    *out = NULL;
    *n = 0;
    int rc = db_exec(d, STMT_OWNER_LIST, NULL, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    *out = calloc((size_t)m + 1, sizeof **out);
    if (!*out) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) {
        db_owner_limits *l = &(*out)[i];
        dbr_str(r, i, 0, l->owner, sizeof l->owner);
        l->max_jobs = dbr_int(r, i, 1);
        l->max_storage_bytes = dbr_int(r, i, 2);
        l->max_upload_bytes = dbr_int(r, i, 3);
        l->active_jobs = dbr_int(r, i, 4);
        l->file_bytes = dbr_int(r, i, 5);
    }
    if (!rc) *n = m;
    PQclear(r);
    return rc;
}

/* A statement of one owner parameter that returns one number. */
static int owner_number(db *d, db_stmt stmt, const char *owner, int64_t *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, owner);
    int rc = db_exec(d, stmt, &p, &r, err);
    if (rc) return rc;
    *out = PQntuples(r) == 1 ? dbr_int(r, 0, 0) : 0;
    PQclear(r);
    return 0;
}

int db_owner_active_jobs(db *d, const char *owner, int64_t *n, char *err)
{
    return owner_number(d, STMT_OWNER_ACTIVE, owner, n, err);
}

int db_owner_storage(db *d, const char *owner, int64_t *file_bytes,
                     char (**dirs)[DB_PATH_LEN], int *ndirs, char *err)
{
    *dirs = NULL;
    *ndirs = 0;
    int rc = owner_number(d, STMT_OWNER_FILE_BYTES, owner, file_bytes, err);
    if (rc) return rc;
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, owner);
    rc = db_exec(d, STMT_OWNER_JOB_DIRS, &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    *dirs = calloc((size_t)m + 1, DB_PATH_LEN);
    if (!*dirs) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) dbr_str(r, i, 0, (*dirs)[i], DB_PATH_LEN);
    if (!rc) *ndirs = m;
    PQclear(r);
    return rc;
}

int db_owner_lock(db *d, const char *owner, char *err)
{
    db_params p = {0};
    dbp_str(&p, owner);
    return db_exec(d, STMT_OWNER_LOCK, &p, NULL, err);
}

void db_owner_unlock(db *d, const char *owner)
{
    char err[DT_ERR_LEN];
    db_params p = {0};
    dbp_str(&p, owner);
    db_exec(d, STMT_OWNER_UNLOCK, &p, NULL, err); /* a lost connection took it along */
}
