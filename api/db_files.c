/* db_files.c: uploaded files (create, scoped get, paged list, delete unless
 * an unfinished job uses it), their expiry, and a job's result CSV. */
#include "db_internal.h"

#include <stdlib.h>
#include <string.h>

static void file_row(const PGresult *r, int i, db_file *f)
{
    dbr_str(r, i, 0, f->id, sizeof f->id);
    dbr_str(r, i, 1, f->owner, sizeof f->owner);
    dbr_str(r, i, 2, f->filename, sizeof f->filename);
    dbr_str(r, i, 3, f->purpose, sizeof f->purpose);
    f->bytes = dbr_int(r, i, 4);
    f->created_at = dbr_int(r, i, 5);
    f->expires_at = dbr_int(r, i, 6);
    dbr_str(r, i, 7, f->status, sizeof f->status);
    dbr_str(r, i, 8, f->status_details, sizeof f->status_details);
    dbr_str(r, i, 9, f->sha256, sizeof f->sha256);
    f->nlines = (long)dbr_int(r, i, 10);
    dbr_str(r, i, 11, f->path, sizeof f->path);
}

int db_file_create(db *d, const db_file *f, char *err)
{
    db_params p = {0};
    dbp_str(&p, f->id);
    dbp_str(&p, f->owner);
    dbp_str(&p, f->filename);
    dbp_str(&p, f->purpose);
    dbp_int(&p, f->bytes);
    dbp_str(&p, f->status);
    dbp_str(&p, f->status_details);
    dbp_str(&p, f->sha256);
    dbp_int(&p, f->nlines);
    dbp_str(&p, f->path);
    dbp_int(&p, f->expires_at);
    return db_exec(d, STMT_FILE_CREATE, &p, NULL, err);
}

int db_file_get(db *d, const char *owner, const char *id, db_file *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, id);
    dbp_str(&p, owner);
    int rc = db_exec(d, STMT_FILE_GET, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) file_row(r, 0, out);
    else rc = dt_errf(err, DB_ENOTFOUND, "no such file: %s", id);
    PQclear(r);
    return rc;
}

int db_file_list(db *d, const char *owner, const char *after, int limit,
                 const char *purpose, bool ascending, db_file **out, int *n,
                 bool *has_more, char *err)
{
    db_params p = {0};
    PGresult *r;
    *out = NULL;
    *n = 0;
    *has_more = false;
    dbp_str(&p, owner);
    dbp_nstr(&p, purpose);
    dbp_nstr(&p, after);
    dbp_int(&p, limit + 1);
    int rc = db_exec(d, ascending ? STMT_FILE_LIST_ASC : STMT_FILE_LIST_DESC, &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    if (m > limit) { *has_more = true; m = limit; }
    *out = calloc((size_t)m + 1, sizeof **out);
    if (!*out) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) file_row(r, i, &(*out)[i]);
    if (!rc) *n = m;
    PQclear(r);
    return rc;
}

typedef struct file_del { const char *owner, *id; db_file *out; } file_del;

static int file_delete_tx(db *d, void *arg, char *err)
{
    file_del *a = arg;
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, a->owner);
    dbp_str(&p, a->id);
    int rc = db_exec(d, STMT_FILE_IN_USE, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) > 0)
        rc = dt_errf(err, DB_ECONFLICT, "file %s is used by job %s, which has not "
                     "finished; cancel it first", a->id, PQgetvalue(r, 0, 0));
    PQclear(r);
    if (rc) return rc;
    p.n = 0;
    dbp_str(&p, a->id);
    dbp_str(&p, a->owner);
    rc = db_exec(d, STMT_FILE_DELETE, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) file_row(r, 0, a->out);
    else rc = dt_errf(err, DB_ENOTFOUND, "no such file: %s", a->id);
    PQclear(r);
    return rc;
}

int db_file_delete(db *d, const char *owner, const char *id, db_file *out, char *err)
{
    file_del a = {owner, id, out};
    return db_tx(d, file_delete_tx, &a, err);
}

int db_job_results_csv(db *d, const char *job_id, char **csv, char *err)
{
    db_params p = {0};
    PGresult *r;
    *csv = NULL;
    dbp_str(&p, job_id);
    int rc = db_exec(d, STMT_JOB_RESULTS_CSV, &p, &r, err);
    if (rc) return rc;
    *csv = strdup(PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
    if (!*csv) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    PQclear(r);
    return rc;
}

int db_files_expire(db *d, int limit, char (**paths)[DB_PATH_LEN], int *n, char *err)
{
    db_params p = {0};
    PGresult *r;
    *paths = NULL;
    *n = 0;
    dbp_int(&p, limit);
    int rc = db_exec(d, STMT_FILES_EXPIRE, &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    *paths = calloc((size_t)m + 1, sizeof **paths);
    if (!*paths) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) dbr_str(r, i, 1, (*paths)[i], DB_PATH_LEN);
    if (!rc) *n = m;
    PQclear(r);
    return rc;
}
