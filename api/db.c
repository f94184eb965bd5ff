/* db.c: the PostgreSQL connection (reconnect, prepared statements, the
 * transaction helper, a pool), migrations, and the small resources: API
 * keys, files, models, idempotency records, workers and stats. Jobs, events
 * and checkpoints are in db_jobs.c; every SQL text is in db_sql.c. */
#include "db_internal.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "objects.h"
#include "base/file.h"

const char *db_strerror(int code)
{
    switch (code) {
    case DB_ENOTFOUND: return "not found";
    case DB_ELEASE: return "lease lost";
    case DB_ECONFLICT: return "conflict";
    case DB_EUNAVAIL: return "database unavailable";
    case DB_ESQL: return "SQL error";
    case DB_ERETRY: return "serialization failure";
    default: return dt_strerror(code);
    }
}

/* ---- parameters and rows -------------------------------------------------- */

void dbp_str(db_params *p, const char *s) { p->v[p->n++] = s; }

void dbp_nstr(db_params *p, const char *s) { p->v[p->n++] = (s && *s) ? s : NULL; }

void dbp_int(db_params *p, int64_t x)
{
    snprintf(p->buf[p->n], sizeof p->buf[0], "%lld", (long long)x);
    p->v[p->n] = p->buf[p->n];
    p->n++;
}

void dbp_dbl(db_params *p, double x)
{
    if (!isfinite(x)) { p->v[p->n++] = NULL; return; }
    snprintf(p->buf[p->n], sizeof p->buf[0], "%.17g", x);
    p->v[p->n] = p->buf[p->n];
    p->n++;
}

void dbp_bool(db_params *p, bool b) { p->v[p->n++] = b ? "t" : "f"; }

void dbr_str(const PGresult *r, int row, int col, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", PQgetisnull(r, row, col) ? "" : PQgetvalue(r, row, col));
}

int64_t dbr_int(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

double dbr_dbl(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NAN : strtod(PQgetvalue(r, row, col), NULL);
}

bool dbr_bool(const PGresult *r, int row, int col)
{
    return !PQgetisnull(r, row, col) && PQgetvalue(r, row, col)[0] == 't';
}

char *dbr_dup(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}

/* ---- connection -------------------------------------------------------------- */

static int prepare_all(db *d, char *err)
{
    for (int i = 0; i < db_nstmts; i++) {
        PGresult *r = PQprepare(d->conn, db_stmts[i].name, db_stmts[i].sql, 0, NULL);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            dt_errf(err, DB_ESQL, "prepare %s: %s", db_stmts[i].name,
                    PQresultErrorMessage(r));
        PQclear(r);
        if (!ok) return PQstatus(d->conn) == CONNECTION_OK ? DB_ESQL : DB_EUNAVAIL;
    }
    return 0;
}

static void quiet_notice(void *arg, const PGresult *r) { (void)arg; (void)r; }

static int open_conn(db *d, char *err)
{
    PQfinish(d->conn);
    d->conn = PQconnectdb(d->url);
    if (!d->conn) return dt_errf(err, DT_ENOMEM, "PQconnectdb: out of memory");
    if (PQstatus(d->conn) != CONNECTION_OK) {
        dt_errf(err, DB_EUNAVAIL, "PostgreSQL: %s", PQerrorMessage(d->conn));
        PQfinish(d->conn);
        d->conn = NULL;
        return DB_EUNAVAIL;
    }
    PQsetNoticeReceiver(d->conn, quiet_notice, NULL);
    return 0;
}

int db_connect(db **out, const char *url, char *err)
{
    db *d = calloc(1, sizeof *d);
    if (!d) return dt_errf(err, DT_ENOMEM, "out of memory");
    if (strlen(url) >= sizeof d->url) {
        free(d);
        return dt_errf(err, DT_EINVAL, "database URL too long");
    }
    strcpy(d->url, url);
    int rc = open_conn(d, err);
    if (rc) goto fail;
    rc = prepare_all(d, err);
    if (rc) goto fail;
    *out = d;
    return 0;
fail:
    db_free(d);
    return rc;
}

void db_free(db *d)
{
    if (!d) return;
    PQfinish(d->conn);
    free(d);
}

static int reconnect(db *d, char *err)
{
    int rc = open_conn(d, err);
    return rc ? rc : prepare_all(d, err);
}

/* Maps a failed result to a code, with the server's message in err. */
static int result_error(db *d, PGresult *r, const char *name, char *err)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(d->conn);
    int rc = DB_ESQL;
    if (!d->conn || PQstatus(d->conn) != CONNECTION_OK) rc = DB_EUNAVAIL;
    else if (state && (!strcmp(state, "40001") || !strcmp(state, "40P01"))) rc = DB_ERETRY;
    else if (state && (!strncmp(state, "23", 2))) rc = DB_ECONFLICT;
    else if (state && (!strncmp(state, "08", 2) || !strncmp(state, "57P", 3)))
        rc = DB_EUNAVAIL;
    dt_errf(err, rc, "%s: %s", name, msg && *msg ? msg : "connection lost");
    return rc;
}

int db_exec(db *d, const char *name, const db_params *p, PGresult **res, char *err)
{
    if (res) *res = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!d->conn || PQstatus(d->conn) != CONNECTION_OK) {
            if (d->in_tx) return dt_errf(err, DB_EUNAVAIL, "%s: connection lost", name);
            int rc = reconnect(d, err);
            if (rc) return rc;
        }
        PGresult *r = PQexecPrepared(d->conn, name, p ? p->n : 0, p ? p->v : NULL, NULL,
                                     NULL, 0);
        ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
            if (res) *res = r;
            else PQclear(r);
            return 0;
        }
        int rc = result_error(d, r, name, err);
        PQclear(r);
        if (rc != DB_EUNAVAIL || d->in_tx) return rc;
        /* broken connection outside a transaction: reconnect, retry once */
        if (d->conn) PQfinish(d->conn);
        d->conn = NULL;
    }
    return DB_EUNAVAIL;
}

int db_ping(db *d, char *err) { return db_exec(d, "ping", NULL, NULL, err); }

static int exec_simple(db *d, const char *sql, char *err)
{
    PGresult *r = PQexec(d->conn, sql);
    int rc = 0;
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) rc = result_error(d, r, sql, err);
    PQclear(r);
    return rc;
}

int db_tx(db *d, int (*fn)(db *d, void *arg, char *err), void *arg, char *err)
{
    int rc = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        if (attempt) usleep((useconds_t)(1000 * (1 << attempt) + rand() % 1000));
        if (!d->conn || PQstatus(d->conn) != CONNECTION_OK) {
            rc = reconnect(d, err);
            if (rc) return rc;
        }
        rc = exec_simple(d, "BEGIN ISOLATION LEVEL REPEATABLE READ", err);
        if (rc) {
            if (rc == DB_EUNAVAIL && attempt == 0) continue;
            return rc;
        }
        d->in_tx = 1;
        rc = fn(d, arg, err);
        if (!rc) rc = exec_simple(d, "COMMIT", err);
        d->in_tx = 0;
        if (!rc) return 0;
        if (d->conn && PQstatus(d->conn) == CONNECTION_OK &&
            PQtransactionStatus(d->conn) != PQTRANS_IDLE) {
            char e2[DT_ERR_LEN];
            exec_simple(d, "ROLLBACK", e2);
        }
        if (rc != DB_ERETRY) return rc;
    }
    return rc == DB_ERETRY ? dt_errf(err, DB_ECONFLICT, "transaction kept conflicting") : rc;
}

/* ---- pool ---------------------------------------------------------------------- */

struct db_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char url[1024];
    int size, nfree;
    db **free;      /* stack of idle connections (NULL = not connected yet) */
};

int db_pool_new(db_pool **out, const char *url, int size, char *err)
{
    db_pool *p = calloc(1, sizeof *p);
    if (!p || strlen(url) >= sizeof p->url) {
        free(p);
        return dt_errf(err, DT_EINVAL, "database URL too long or out of memory");
    }
    p->free = calloc((size_t)size, sizeof *p->free);
    if (!p->free) {
        free(p);
        return dt_errf(err, DT_ENOMEM, "out of memory");
    }
    strcpy(p->url, url);
    p->size = p->nfree = size;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    *out = p;
    return 0;
}

void db_pool_free(db_pool *p)
{
    if (!p) return;
    for (int i = 0; i < p->nfree; i++) db_free(p->free[i]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->free);
    free(p);
}

db *db_pool_acquire(db_pool *p, int wait_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    pthread_mutex_lock(&p->mu);
    while (p->nfree == 0)
        if (pthread_cond_timedwait(&p->cv, &p->mu, &until)) break;
    if (p->nfree == 0) {
        pthread_mutex_unlock(&p->mu);
        return NULL;
    }
    db *d = p->free[--p->nfree];
    pthread_mutex_unlock(&p->mu);
    if (!d) {
        char err[DT_ERR_LEN];
        if (db_connect(&d, p->url, err)) {
            d = NULL;
            db_pool_release(p, NULL); /* give the slot back, unconnected */
        }
    }
    return d;
}

void db_pool_release(db_pool *p, db *d)
{
    pthread_mutex_lock(&p->mu);
    p->free[p->nfree++] = d;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ---- migrations ------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_migration(const char *n)
{
    size_t l = strlen(n);
    for (int i = 0; i < 4; i++)
        if (n[i] < '0' || n[i] > '9') return 0;
    return n[4] == '_' && l > 9 && !strcmp(n + l - 4, ".sql");
}

int db_migrate(const char *url, const char *dir, int *applied, char *err)
{
    db d = {0};
    char **names = NULL;
    int n = 0, cap = 0, rc;
    *applied = 0;
    snprintf(d.url, sizeof d.url, "%s", url);
    rc = open_conn(&d, err);
    if (rc) return rc;
    DIR *dp = opendir(dir);
    if (!dp) {
        rc = dt_errf(err, DT_EIO, "%s: cannot open migrations directory", dir);
        goto done;
    }
    for (struct dirent *e; (e = readdir(dp));) {
        if (!is_migration(e->d_name)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nn = realloc(names, (size_t)cap * sizeof *nn);
            if (!nn) { closedir(dp); rc = dt_errf(err, DT_ENOMEM, "out of memory"); goto done; }
            names = nn;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(dp);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    /* One migrator at a time (several workers may start together). */
    rc = exec_simple(&d, "CREATE TABLE IF NOT EXISTS schema_migrations (version text "
                         "PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())", err);
    if (!rc) rc = exec_simple(&d, "SELECT pg_advisory_lock(7206377)", err);
    if (rc) goto done;
    for (int i = 0; i < n; i++) {
        const char *v[1] = {names[i]};
        PGresult *r = PQexecParams(d.conn, "SELECT 1 FROM schema_migrations WHERE version = $1",
                                   1, NULL, v, NULL, NULL, 0);
        int have = PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) : -1;
        if (have < 0) rc = result_error(&d, r, "schema_migrations", err);
        PQclear(r);
        if (rc) goto done;
        if (have) continue;
        char path[2048], *sql = NULL;
        size_t len;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        rc = dt_read_file(path, &sql, &len, err);
        if (rc) goto done;
        rc = exec_simple(&d, "BEGIN", err);
        if (!rc) {
            r = PQexec(d.conn, sql);
            if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
                rc = result_error(&d, r, names[i], err);
            PQclear(r);
        }
        free(sql);
        if (!rc) {
            r = PQexecParams(d.conn, "INSERT INTO schema_migrations (version) VALUES ($1)", 1,
                             NULL, v, NULL, NULL, 0);
            if (PQresultStatus(r) != PGRES_COMMAND_OK) rc = result_error(&d, r, names[i], err);
            PQclear(r);
        }
        if (!rc) rc = exec_simple(&d, "COMMIT", err);
        if (rc) {
            char e2[DT_ERR_LEN];
            exec_simple(&d, "ROLLBACK", e2);
            goto done;
        }
        (*applied)++;
    }
done:
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    PQfinish(d.conn);
    return rc;
}

/* ---- API keys --------------------------------------------------------------------- */

static void key_row(const PGresult *r, int i, db_key *k)
{
    dbr_str(r, i, 0, k->prefix, sizeof k->prefix);
    dbr_str(r, i, 1, k->owner, sizeof k->owner);
    dbr_str(r, i, 2, k->hash, sizeof k->hash);
    k->created_at = dbr_int(r, i, 3);
    k->revoked_at = dbr_int(r, i, 4);
}

int db_key_create(db *d, const char *prefix, const char *hash_hex, const char *owner,
                  char *err)
{
    db_params p = {0};
    dbp_str(&p, prefix);
    dbp_str(&p, owner);
    dbp_str(&p, hash_hex);
    return db_exec(d, "key_create", &p, NULL, err);
}

int db_key_lookup(db *d, const char *prefix, db_key *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, prefix);
    int rc = db_exec(d, "key_lookup", &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) key_row(r, 0, out);
    else rc = dt_errf(err, DB_ENOTFOUND, "no such key");
    PQclear(r);
    return rc;
}

int db_key_list(db *d, db_key **out, int *n, char *err)
{
    PGresult *r;
    *out = NULL;
    *n = 0;
    int rc = db_exec(d, "key_list", NULL, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    *out = calloc((size_t)m + 1, sizeof **out);
    if (!*out) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) key_row(r, i, &(*out)[i]);
    if (!rc) *n = m;
    PQclear(r);
    return rc;
}

int db_key_revoke(db *d, const char *prefix, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, prefix);
    int rc = db_exec(d, "key_revoke", &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 0) rc = dt_errf(err, DB_ENOTFOUND, "no active key %s", prefix);
    PQclear(r);
    return rc;
}

/* ---- files --------------------------------------------------------------------- */

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
    return db_exec(d, "file_create", &p, NULL, err);
}

int db_file_get(db *d, const char *owner, const char *id, db_file *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, id);
    dbp_str(&p, owner);
    int rc = db_exec(d, "file_get", &p, &r, err);
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
    int rc = db_exec(d, ascending ? "file_list_asc" : "file_list_desc", &p, &r, err);
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
    int rc = db_exec(d, "file_in_use", &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) > 0)
        rc = dt_errf(err, DB_ECONFLICT, "file %s is used by job %s, which has not "
                     "finished; cancel it first", a->id, PQgetvalue(r, 0, 0));
    PQclear(r);
    if (rc) return rc;
    p.n = 0;
    dbp_str(&p, a->id);
    dbp_str(&p, a->owner);
    rc = db_exec(d, "file_delete", &p, &r, err);
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
    int rc = db_exec(d, "job_results_csv", &p, &r, err);
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
    int rc = db_exec(d, "files_expire", &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    *paths = calloc((size_t)m + 1, sizeof **paths);
    if (!*paths) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) dbr_str(r, i, 1, (*paths)[i], DB_PATH_LEN);
    if (!rc) *n = m;
    PQclear(r);
    return rc;
}

/* ---- models ---------------------------------------------------------------------- */

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
    return db_exec(d, "model_put", &p, NULL, err);
}

int db_model_get(db *d, const char *owner, const char *id, db_model *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, id);
    dbp_nstr(&p, owner);
    int rc = db_exec(d, "model_get", &p, &r, err);
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
    int rc = db_exec(d, "model_list", &p, &r, err);
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
    dbp_str(&p, a->owner);
    int rc = db_exec(d, "model_delete", &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) model_row(r, 0, a->out);
    else rc = dt_errf(err, DB_ENOTFOUND, "no such model: %s", a->id);
    PQclear(r);
    if (rc) return rc;
    p.n = 0;
    dbp_str(&p, a->id);
    return db_exec(d, "model_files_delete", &p, NULL, err);
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
    int rc = db_exec(d, "digest_get", &p, &r, err);
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
    return db_exec(d, "digest_put", &p, NULL, err);
}

/* ---- idempotency ------------------------------------------------------------------ */

int db_idem_begin(db *d, const char *owner, const char *key, const char *request_hash,
                  int *status, char **body, char *err)
{
    db_params p = {0};
    PGresult *r;
    *body = NULL;
    *status = 0;
    dbp_str(&p, owner);
    dbp_str(&p, key);
    dbp_str(&p, request_hash);
    int rc = db_exec(d, "idem_insert", &p, &r, err);
    if (rc) return rc;
    int fresh = PQntuples(r) == 1;
    PQclear(r);
    if (fresh) return DB_IDEM_NEW;
    p.n = 2;
    rc = db_exec(d, "idem_get", &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) != 1) {
        rc = dt_errf(err, DB_ECONFLICT, "idempotency record vanished; retry");
    } else if (strcmp(PQgetvalue(r, 0, 0), request_hash)) {
        rc = DB_IDEM_MISMATCH;
    } else if (dbr_int(r, 0, 1) == 0 || PQgetisnull(r, 0, 2)) {
        rc = DB_IDEM_IN_PROGRESS;
    } else {
        *status = (int)dbr_int(r, 0, 1);
        *body = dbr_dup(r, 0, 2);
        rc = *body ? DB_IDEM_REPLAY : dt_errf(err, DT_ENOMEM, "out of memory");
    }
    PQclear(r);
    return rc;
}

int db_idem_finish(db *d, const char *owner, const char *key, int status,
                   const char *body, char *err)
{
    db_params p = {0};
    dbp_str(&p, owner);
    dbp_str(&p, key);
    dbp_int(&p, status);
    dbp_str(&p, body);
    return db_exec(d, "idem_finish", &p, NULL, err);
}

int db_idem_abort(db *d, const char *owner, const char *key, char *err)
{
    db_params p = {0};
    dbp_str(&p, owner);
    dbp_str(&p, key);
    return db_exec(d, "idem_delete", &p, NULL, err);
}

/* ---- workers and stats ----------------------------------------------------------- */

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
    return db_exec(d, "worker_hb", &p, NULL, err);
}

int db_stats_get(db *d, db_stats *out, char *err)
{
    PGresult *r;
    memset(out, 0, sizeof *out);
    int rc = db_exec(d, "stats_jobs", NULL, &r, err);
    if (rc) return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        int k = db_job_status_index(PQgetvalue(r, i, 0));
        if (k >= 0) out->jobs_by_status[k] = dbr_int(r, i, 1);
    }
    PQclear(r);
    rc = db_exec(d, "stats_tps", NULL, &r, err);
    if (rc) return rc;
    out->tokens_per_second = dbr_dbl(r, 0, 0);
    PQclear(r);
    rc = db_exec(d, "stats_workers", NULL, &r, err);
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
