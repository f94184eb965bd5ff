/* http.h: the server's HTTP layer over libmicrohttpd: server state, the
 * per-request state kept in MHD's req_cls, and the reply helpers every
 * handler uses. One route table (routes.c) maps requests to handlers; a
 * handler runs once the whole body is in and answers with exactly one
 * reply_* call. */
#ifndef DT_SERVER_HTTP_H
#define DT_SERVER_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdint.h>

#include "api/config.h"
#include "api/db.h"
#include "api/errors.h"
#include "api/queue.h"
#include "route.h"

typedef struct metrics metrics;   /* ops.c */
typedef struct ratelimit ratelimit; /* ratelimit.c */
typedef struct upload upload;     /* files.c */

typedef struct server {
    api_config cfg;
    db_pool *pool;
    queue *q;
    struct MHD_Daemon *daemon;
    const route *routes;
    int nroutes;
    metrics *m;
    ratelimit *rl;                /* per-API-key token buckets; NULL = off */
    int64_t started_at;           /* Unix seconds */
} server;

typedef struct req {
    server *s;
    struct MHD_Connection *conn;
    const char *method, *url;     /* borrowed from MHD for the request's life */
    int route;                    /* index in s->routes; -1 none */
    char params[ROUTE_MAXP][ROUTE_PARAM_LEN];
    char owner[DB_OWNER_LEN];     /* authenticated owner ("" on public routes) */
    int rl_set;                   /* the x-ratelimit-* values below are set */
    int64_t rl_limit, rl_remaining;
    double rl_reset_s, rl_retry_s;
    double t0;                    /* monotonic start, seconds */

    /* body */
    int64_t limit;                /* bytes accepted for this route */
    int64_t received;
    int over_limit;
    char *body;                   /* R_JSON: malloc'd, NUL-terminated */
    size_t body_len, body_cap;
    upload *up;                   /* R_UPLOAD: files.c's state */
    char request_hash[65];        /* idempotency: set by upload code, else body hash */

    /* reply */
    int status;                   /* 0 until a reply_* call */
    json_t *json;                 /* JSON reply (owned) */
    struct MHD_Response *resp;    /* or a ready response (owned) */
    int queued;                   /* a response was queued to MHD */
    int must_close;               /* answer with "Connection: close" (framing in doubt) */
    int replayed;                 /* an Idempotency-Key replay */

    db *d;                        /* from the pool (req_db), released at the end */
} req;

/* The request's database connection, taken from the pool on first use.
 * NULL after replying 503 when PostgreSQL is unreachable. */
db *req_db(req *r);
/* Returns the connection to the pool early (long uploads). */
void req_db_release(req *r);

const char *req_query(req *r, const char *name);
const char *req_header(req *r, const char *name);
/* Parses the JSON body; NULL after replying 400 (new reference otherwise). */
json_t *req_json(req *r);

/* Replies. body is stolen. */
void reply_json(req *r, int status, json_t *body);
void reply_error(req *r, int status, const char *code, const char *param,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void reply_apierr(req *r, const api_error *e);
/* Maps a db/queue code: DB_ENOTFOUND 404, DB_ECONFLICT 409, DB_EUNAVAIL 503,
 * DT_EINVAL 400, else 500 (detail logged, not sent). */
void reply_db(req *r, int rc, const char *err);
/* A prepared response (downloads); stolen. */
void reply_mhd(req *r, int status, struct MHD_Response *resp);

/* Starts the MHD daemon on cfg.listen_host:listen_port. */
int http_start(server *s, char *err);
void http_stop(server *s);

/* files.c: multipart upload streaming, driven by http.c for R_UPLOAD. */
int files_upload_begin(req *r);             /* 0, or replied with an error */
int files_upload_data(req *r, const char *data, size_t n); /* 0 or -1 (replied) */
void files_upload_end(req *r);              /* body complete: finalize digests */
void files_upload_free(req *r);             /* removes an uncommitted temp file */

/* ops.c: metrics. */
metrics *metrics_new(int nroutes);
void metrics_free(metrics *m);
void metrics_observe(server *s, int route, int status, double seconds);

#endif
