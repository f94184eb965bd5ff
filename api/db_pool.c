/* db_pool.c: the PostgreSQL driver: one connection per `db` (reconnect,
 * every statement of db_sql.c prepared by name at connect), db_exec by
 * statement enum, the transaction helper that retries 40001/40P01, the map
 * from SQLSTATE to DB_E* codes, a pool of connections, and migrations. The
 * queries that use it are in db_keys.c, db_files.c, db_models.c, db_idem.c,
 * db_workers.c, db_jobs.c, db_events.c and db_checkpoints.c. */
#include "db_internal.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
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

/* Prepares every statement of db_sql_table under its name. The table is
 * checked first: an empty slot would otherwise surface as an odd libpq
 * error at the first call that uses it. */
static int prepare_all(db *d, char *err)
{
    int rc = db_sql_check(err);
    if (rc) return rc;
    for (int i = 0; i < STMT__COUNT; i++) {
        const db_sql *s = &db_sql_table[i];
        PGresult *r = PQprepare(d->conn, s->name, s->sql, 0, NULL);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            dt_errf(err, DB_ESQL, "prepare %s: %s", s->name, PQresultErrorMessage(r));
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

int db_exec(db *d, db_stmt stmt, const db_params *p, PGresult **res, char *err)
{
    if (res) *res = NULL;
    if ((unsigned)stmt >= STMT__COUNT)
        return dt_errf(err, DB_ESQL, "db_exec: no statement %d", (int)stmt);
    const char *name = db_sql_table[stmt].name;
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

int db_ping(db *d, char *err) { return db_exec(d, STMT_PING, NULL, NULL, err); }

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
    dt_deadline(&until, wait_ms / 1000.0);
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
