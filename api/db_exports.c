/* db_exports.c: model exports (migration 0008): queue, owner-scoped get and
 * list, the worker's claim and finish. */
#include "db_internal.h"

#include <stdlib.h>

static void export_row(const PGresult *r, int i, db_export *e)
{
    dbr_str(r, i, 0, e->id, sizeof e->id);
    dbr_str(r, i, 1, e->owner, sizeof e->owner);
    dbr_str(r, i, 2, e->model_id, sizeof e->model_id);
    dbr_str(r, i, 3, e->format, sizeof e->format);
    dbr_str(r, i, 4, e->type, sizeof e->type);
    dbr_str(r, i, 5, e->status, sizeof e->status);
    dbr_str(r, i, 6, e->file, sizeof e->file);
    e->bytes = dbr_int(r, i, 7);
    dbr_str(r, i, 8, e->error, sizeof e->error);
    e->created_at = dbr_int(r, i, 9);
    e->finished_at = dbr_int(r, i, 10);
    e->model_path[0] = 0;
    if (PQnfields(r) > 11)
        dbr_str(r, i, 11, e->model_path, sizeof e->model_path);
}

int db_export_create(db *d, db_export *e, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, e->id);
    dbp_str(&p, e->owner);
    dbp_str(&p, e->model_id);
    dbp_str(&p, e->format);
    dbp_str(&p, e->type);
    dbp_str(&p, e->file[0] ? e->file : "model.gguf");
    int rc = db_exec(d, STMT_EXPORT_CREATE, &p, &r, err);
    if (rc == DB_ECONFLICT)
        return dt_errf(err, DB_ECONFLICT, "an export of model %s is already queued or "
                       "running; wait for it to end (GET /v1/models/{id}/exports)",
                       e->model_id);
    if (rc) return rc;
    if (PQntuples(r) == 1) export_row(r, 0, e);
    PQclear(r);
    return 0;
}

int db_export_get(db *d, const char *owner, const char *model_id, const char *id,
                  db_export *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, id);
    dbp_str(&p, model_id);
    dbp_str(&p, owner);
    int rc = db_exec(d, STMT_EXPORT_GET, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) export_row(r, 0, out);
    else rc = dt_errf(err, DB_ENOTFOUND, "no such export: %s", id);
    PQclear(r);
    return rc;
}

int db_export_list(db *d, const char *owner, const char *model_id, db_export **out,
                   int *n, char *err)
{
    db_params p = {0};
    PGresult *r;
    *out = NULL;
    *n = 0;
    dbp_str(&p, model_id);
    dbp_str(&p, owner);
    int rc = db_exec(d, STMT_EXPORT_LIST, &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    *out = calloc((size_t)m + 1, sizeof **out);
    if (!*out) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) export_row(r, i, &(*out)[i]);
    if (!rc) *n = m;
    PQclear(r);
    return rc;
}

int db_export_claim(db *d, const char *worker_id, db_export *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, worker_id);
    int rc = db_exec(d, STMT_EXPORT_CLAIM, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) export_row(r, 0, out);
    else rc = DB_ENOTFOUND;
    PQclear(r);
    return rc;
}

int db_export_finish(db *d, const char *id, const char *status, int64_t bytes,
                     const char *error, char *err)
{
    db_params p = {0};
    dbp_str(&p, id);
    dbp_str(&p, status);
    dbp_int(&p, bytes);
    dbp_nstr(&p, error);
    return db_exec(d, STMT_EXPORT_FINISH, &p, NULL, err);
}
