/* db_internal.h: the database driver's interface to the query files (not
 * public). db_pool.c is the driver: connection, pool, prepared statements,
 * db_exec, the transaction helper, error mapping, migrations. db_sql.c holds
 * every SQL text; db_keys.c, db_files.c, db_models.c, db_idem.c,
 * db_workers.c, db_jobs.c, db_events.c, db_checkpoints.c and db_owners.c are the queries,
 * one resource each, behind db.h. */
#ifndef DT_API_DB_INTERNAL_H
#define DT_API_DB_INTERNAL_H

#include <libpq-fe.h>

#include "db.h"

#define DB_ERETRY (-110) /* 40001 / 40P01 inside db_tx: run it again */

struct db {
    PGconn *conn;
    char url[1024];
    int in_tx;        /* inside db_tx(): no silent reconnect */
};

/* Every SQL statement of the service, by the index of its row in
 * db_sql_table (db_sql.c). Callers name statements by these constants, so a
 * misspelt one fails the build instead of failing at run time. */
typedef enum db_stmt {
    STMT_PING,                /* db_ping (db_pool.c) */
    /* api keys (db_keys.c) */
    STMT_KEY_CREATE,
    STMT_KEY_LOOKUP,
    STMT_KEY_LIST,
    STMT_KEY_REVOKE,
    /* files (db_files.c) */
    STMT_FILE_CREATE,
    STMT_FILE_GET,
    STMT_FILE_LIST_DESC,
    STMT_FILE_LIST_ASC,
    STMT_FILE_IN_USE,
    STMT_FILE_DELETE,
    STMT_JOB_RESULTS_CSV,
    STMT_FILES_EXPIRE,
    /* models (db_models.c) */
    STMT_MODEL_PUT,
    STMT_MODEL_GET,
    STMT_MODEL_LIST,
    STMT_MODEL_IN_USE,
    STMT_MODEL_DELETE,
    STMT_MODEL_FILES_DELETE,
    STMT_DIGEST_GET,
    STMT_DIGEST_PUT,
    /* idempotency (db_idem.c) */
    STMT_IDEM_INSERT,
    STMT_IDEM_GET,
    STMT_IDEM_FINISH,
    STMT_IDEM_DELETE,
    STMT_IDEM_RENEW,
    /* workers and stats (db_workers.c) */
    STMT_WORKER_HB,
    STMT_STATS_JOBS,
    STMT_STATS_JOB_TOTALS,
    STMT_STATS_TPS,
    STMT_STATS_WORKERS,
    STMT_WORKER_MEMORY,
    STMT_WORKERS_MEMORY,
    STMT_WORKER_SERVE_HB,
    STMT_WORKERS_SERVING,
    /* jobs (db_jobs.c) */
    STMT_JOB_CREATE,
    STMT_JOB_GET,
    STMT_JOB_LIST,
    STMT_JOB_CANCEL,
    STMT_JOB_PAUSE,
    STMT_JOB_RESUME,
    STMT_JOB_CLAIM,
    STMT_JOB_HEARTBEAT,
    STMT_JOB_PROGRESS,
    STMT_JOB_FENCE,
    STMT_JOB_FINISH,
    STMT_JOB_REQUEUE,
    STMT_JOB_RESCUE,
    STMT_JOBS_QUEUED,
    STMT_JOB_OWNED,
    /* events (db_events.c) */
    STMT_EVENT_ADD,
    STMT_EVENT_LIST,
    /* checkpoints (db_checkpoints.c) */
    STMT_CKPT_PUT,
    STMT_CKPT_LIST,
    /* owners: limits, use, admission lock (db_owners.c) */
    STMT_OWNER_LIMITS_GET,
    STMT_OWNER_LIMITS_PUT,
    STMT_OWNER_LIST,
    STMT_OWNER_ACTIVE,
    STMT_OWNER_FILE_BYTES,
    STMT_OWNER_JOB_DIRS,
    STMT_OWNER_LOCK,
    STMT_OWNER_UNLOCK,
    STMT__COUNT
} db_stmt;

typedef struct db_sql {
    const char *name;   /* prepared statement name (in PostgreSQL's logs) */
    const char *sql;
} db_sql;

/* The one table of SQL (db_sql.c), indexed by db_stmt, prepared by name at
 * connect. Incomplete here so that db_sql.c's size check sees its real
 * length. */
extern const db_sql db_sql_table[];

/* 0 when every db_stmt has a name and SQL and no name repeats; else DB_ESQL
 * naming the first bad slot. db_connect runs it before preparing. */
int db_sql_check(char *err);

/* Text parameters for PQexecPrepared. NULL values are SQL NULL. */
#define DB_MAXP 40
typedef struct db_params {
    const char *v[DB_MAXP];
    char buf[DB_MAXP][40];
    int n;
} db_params;

void dbp_str(db_params *p, const char *s);     /* "" stays "" */
void dbp_nstr(db_params *p, const char *s);    /* NULL or "" -> NULL */
void dbp_int(db_params *p, int64_t x);
void dbp_dbl(db_params *p, double x);          /* NaN/Inf -> NULL */
void dbp_bool(db_params *p, bool b);

/* Runs a prepared statement. *res (may be NULL: cleared here) receives the
 * result on success; the caller PQclears it. Returns 0, DB_EUNAVAIL,
 * DB_ECONFLICT (unique/foreign key/check violation), DB_ERETRY (in a tx) or
 * DB_ESQL. Reconnects and retries once when the connection broke outside a
 * transaction. */
int db_exec(db *d, db_stmt stmt, const db_params *p, PGresult **res,
            char *err);

/* Column readers for result rows. */
void dbr_str(const PGresult *r, int row, int col, char *out, size_t outlen);
int64_t dbr_int(const PGresult *r, int row, int col);
double dbr_dbl(const PGresult *r, int row, int col);   /* NULL -> NaN */
bool dbr_bool(const PGresult *r, int row, int col);
char *dbr_dup(const PGresult *r, int row, int col);    /* NULL -> NULL; malloc'd */

/* Shared by the job, event and checkpoint queries (db_jobs.c). */

/* Locks the job row (SELECT ... FOR UPDATE) when (id, attempt) still holds
 * the lease and copies its owner (DB_OWNER_LEN), model (256) and suffix (65)
 * out; DB_ELEASE otherwise. Inside db_tx only. */
int db_job_fence(db *d, const char *id, int attempt, char *owner, char *model,
                 char *suffix, char *err);
/* 0 when job_id belongs to owner, else DB_ENOTFOUND. */
int db_job_owned(db *d, const char *owner, const char *job_id, char *err);

#endif
