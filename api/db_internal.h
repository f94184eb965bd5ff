/* db_internal.h: what db.c, db_jobs.c and db_sql.c share (not public). */
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

typedef struct db_stmt {
    const char *name;
    const char *sql;
} db_stmt;

/* The one table of SQL (db_sql.c), prepared by name at connect. */
extern const db_stmt db_stmts[];
extern const int db_nstmts;

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
int db_exec(db *d, const char *name, const db_params *p, PGresult **res,
            char *err);

/* Column readers for result rows. */
void dbr_str(const PGresult *r, int row, int col, char *out, size_t outlen);
int64_t dbr_int(const PGresult *r, int row, int col);
double dbr_dbl(const PGresult *r, int row, int col);   /* NULL -> NaN */
bool dbr_bool(const PGresult *r, int row, int col);
char *dbr_dup(const PGresult *r, int row, int col);    /* NULL -> NULL; malloc'd */

#endif
