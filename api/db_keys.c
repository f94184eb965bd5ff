/* db_keys.c: API keys (create, look up by prefix, list, revoke); the
 * secret's hashing and comparison are in auth.c. */
#include "db_internal.h"

#include <stdlib.h>

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
    return db_exec(d, STMT_KEY_CREATE, &p, NULL, err);
}

int db_key_lookup(db *d, const char *prefix, db_key *out, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, prefix);
    int rc = db_exec(d, STMT_KEY_LOOKUP, &p, &r, err);
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
    int rc = db_exec(d, STMT_KEY_LIST, NULL, &r, err);
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
    int rc = db_exec(d, STMT_KEY_REVOKE, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 0) rc = dt_errf(err, DB_ENOTFOUND, "no active key %s", prefix);
    PQclear(r);
    return rc;
}
