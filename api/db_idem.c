/* db_idem.c: Idempotency-Key records: begin (claim, reclaim an expired
 * lease, or replay), renew, finish, abort. */
#include "db_internal.h"

#include <string.h>

int db_idem_begin(db *d, const char *owner, const char *key, const char *request_hash,
                  const char *holder, int lease_s, int *status, char **body, char *err)
{
    db_params p = {0};
    PGresult *r;
    *body = NULL;
    *status = 0;
    dbp_str(&p, owner);
    dbp_str(&p, key);
    dbp_str(&p, request_hash ? request_hash : "");
    dbp_str(&p, holder);
    dbp_int(&p, lease_s);
    int rc = db_exec(d, STMT_IDEM_INSERT, &p, &r, err);
    if (rc) return rc;
    int fresh = PQntuples(r) == 1;
    PQclear(r);
    if (fresh) return DB_IDEM_NEW;
    p.n = 2;
    rc = db_exec(d, STMT_IDEM_GET, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) != 1) {
        rc = dt_errf(err, DB_ECONFLICT, "idempotency record vanished; retry");
    } else if (request_hash && PQgetvalue(r, 0, 0)[0] &&
               strcmp(PQgetvalue(r, 0, 0), request_hash)) {
        rc = DB_IDEM_MISMATCH;
    } else if (dbr_int(r, 0, 1) == 0 || PQgetisnull(r, 0, 2)) {
        rc = DB_IDEM_IN_PROGRESS;
    } else if (!request_hash) {
        rc = DB_IDEM_DONE;
    } else {
        *status = (int)dbr_int(r, 0, 1);
        *body = dbr_dup(r, 0, 2);
        rc = *body ? DB_IDEM_REPLAY : dt_errf(err, DT_ENOMEM, "out of memory");
    }
    PQclear(r);
    return rc;
}

int db_idem_renew(db *d, const char *owner, const char *key, const char *holder,
                  const char *request_hash, int lease_s, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, owner);
    dbp_str(&p, key);
    dbp_str(&p, holder);
    dbp_int(&p, lease_s);
    dbp_nstr(&p, request_hash);
    int rc = db_exec(d, STMT_IDEM_RENEW, &p, &r, err);
    if (rc) return rc;
    rc = PQntuples(r) == 1 ? 0 : DB_IDEM_IN_PROGRESS;
    PQclear(r);
    return rc;
}

int db_idem_finish(db *d, const char *owner, const char *key, const char *holder, int status,
                   const char *body, char *err)
{
    db_params p = {0};
    dbp_str(&p, owner);
    dbp_str(&p, key);
    dbp_int(&p, status);
    dbp_str(&p, body);
    dbp_str(&p, holder);
    return db_exec(d, STMT_IDEM_FINISH, &p, NULL, err);
}

int db_idem_abort(db *d, const char *owner, const char *key, const char *holder, char *err)
{
    db_params p = {0};
    dbp_str(&p, owner);
    dbp_str(&p, key);
    dbp_str(&p, holder);
    return db_exec(d, STMT_IDEM_DELETE, &p, NULL, err);
}
