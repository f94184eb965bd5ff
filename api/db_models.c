/* db_models.c: model rows (base, fine-tuned, checkpoint): put, scoped get
 * and list, delete, and the cached sha256 digests of a model's files. */
#include "db_internal.h"

#include <stdlib.h>

static void model_row(const PGresult *r, int i, db_model *m)
{
    dbr_str(r, i, 0, m->id, sizeof m->id);
    dbr_str(r, i, 1, m->kind, sizeof m->kind);
    dbr_str(r, i, 2, m->owner, sizeof m->owner);
    dbr_str(r, i, 3, m->base, sizeof m->base);
    dbr_str(r, i, 4, m->job_id, sizeof m->job_id);
    m->step = dbr_int(r, i, 5);
    dbr_str(r, i, 6, m->path, sizeof m->path);
    m->created_at = dbr_int(r, i, 7);
}

int db_model_put(db *d, const db_model *m, char *err)
{
    db_params p = {0};
    dbp_str(&p, m->id);
    dbp_str(&p, m->kind);
    dbp_str(&p, m->owner);
    dbp_str(&p, m->base);
    dbp_str(&p, m->job_id);
    dbp_int(&p, m->step);
    dbp_str(&p, m->path);
    return db_exec(d, STMT_MODEL_PUT, &p, NULL, err);
}

int db_model_get(db *d, const char *owner, const char *id, db_model *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, id);
    dbp_nstr(&p, owner);
    int rc = db_exec(d, STMT_MODEL_GET, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) model_row(r, 0, out);
    else rc = dt_errf(err, DB_ENOTFOUND, "no such model: %s", id);
    PQclear(r);
    return rc;
}

int db_model_list(db *d, const char *owner, db_model **out, int *n, char *err)
{
    db_params p = {0};
    PGresult *r;
    *out = NULL;
    *n = 0;
    dbp_nstr(&p, owner);
    int rc = db_exec(d, STMT_MODEL_LIST, &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    *out = calloc((size_t)m + 1, sizeof **out);
    if (!*out) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) model_row(r, i, &(*out)[i]);
    if (!rc) *n = m;
    PQclear(r);
    return rc;
}

typedef struct model_del { const char *owner, *id; db_model *out; } model_del;

static int model_delete_tx(db *d, void *arg, char *err)
{
    model_del *a = arg;
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, a->id);
    int rc = db_exec(d, STMT_MODEL_IN_USE, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) > 0)
        rc = dt_errf(err, DB_ECONFLICT, "model %s is the base model of job %s, which has not "
                     "finished (%s); cancel it or wait for it to end first", a->id,
                     PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
    PQclear(r);
    if (rc) return rc;
    dbp_str(&p, a->owner);
    rc = db_exec(d, STMT_MODEL_DELETE, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) model_row(r, 0, a->out);
    else rc = dt_errf(err, DB_ENOTFOUND, "no such model: %s", a->id);
    PQclear(r);
    if (rc) return rc;
    p.n = 0;
    dbp_str(&p, a->id);
    return db_exec(d, STMT_MODEL_FILES_DELETE, &p, NULL, err);
}

int db_model_delete(db *d, const char *owner, const char *id, db_model *out, char *err)
{
    model_del a = {owner, id, out};
    return db_tx(d, model_delete_tx, &a, err);
}

int db_model_file_digest(db *d, const char *model_id, const char *name, int64_t bytes,
                         int64_t mtime_ns, char sha256[65], char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, model_id);
    dbp_str(&p, name);
    dbp_int(&p, bytes);
    dbp_int(&p, mtime_ns);
    int rc = db_exec(d, STMT_DIGEST_GET, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) dbr_str(r, 0, 0, sha256, 65);
    else rc = DB_ENOTFOUND;
    PQclear(r);
    return rc;
}

int db_model_file_digest_put(db *d, const char *model_id, const char *name,
                             int64_t bytes, int64_t mtime_ns, const char *sha256,
                             char *err)
{
    db_params p = {0};
    dbp_str(&p, model_id);
    dbp_str(&p, name);
    dbp_int(&p, bytes);
    dbp_int(&p, mtime_ns);
    dbp_str(&p, sha256);
    return db_exec(d, STMT_DIGEST_PUT, &p, NULL, err);
}
