/* http.h: the server's HTTP framework over libmicrohttpd: server state, the
 * per-request state kept in MHD's req_cls, and the reply helpers every
 * handler uses. One route table (routes.c) maps requests to handlers; a
 * handler runs once the whole body is in and answers with exactly one
 * reply_* call.
 *
 * The framework names no handler: a route streams its body through the
 * route's body hooks (route.h) with its state in the request's ctx, and the
 * server's hooks (on_complete, before_stop, auth) are wired by main.c. */
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

typedef struct ratelimit ratelimit; /* ratelimit.c */
typedef struct req req;

typedef struct server {
    api_config cfg;
    db_pool *pool;
    queue *q;
    struct MHD_Daemon *daemon;
    const route *routes;
    int nroutes;
    ratelimit *rl;                /* per-API-key token buckets; NULL = off */
    int64_t started_at;           /* Unix seconds */

    /* Hooks, each optional (NULL: none, or the default named). */

    /* Called once per request (any thread) with the route index (-1: none
     * matched), the status and the seconds since the request began: just
     * before its reply is queued to MHD (so a client that read the reply
     * finds it counted), or from MHD's completion callback with 499 when
     * the client went away before any reply. on_complete_cls is its state, owned by whoever set it
     * (main.c: ops.c's metrics). */
    void (*on_complete)(struct server *s, int route, int status, double seconds);
    void *on_complete_cls;
    /* Called by http_stop before MHD stops, to let go of suspended
     * connections (MHD must not stop with any; main.c: the event streams). */
    void (*before_stop)(struct server *s);
    /* Checks the Authorization header value of a request to a non-public
     * route and writes the key's owner into owner (DB_OWNER_LEN bytes).
     * Returns 0; DB_EUNAVAIL (503); or another nonzero code (401). A hook
     * that replied itself (req_db's 503) is taken at its word. NULL: the API
     * keys in PostgreSQL (api/auth.c). */
    int (*auth)(req *r, const char *authorization, char *owner, char *err);
} server;

struct req {
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
    char request_hash[65];        /* idempotency: set by a body hook, else the body's hash */

    /* The handler's state for this request (a streamed body's, say),
     * opaque to the framework. ctx_cleanup, when set, is called once as the
     * request ends, whatever ended it; it frees ctx. */
    void *ctx;
    void (*ctx_cleanup)(req *r);

    /* A handler that answers later (chat.c: when a serving worker has
     * answered) sets on_defer and does not reply. Once the handler has
     * returned, the framework suspends the connection and calls on_defer(r),
     * which hands r to the thread that will answer; that thread makes one
     * reply_* call and then MHD_resume_connection(r->conn), and the
     * framework sends the reply when MHD calls it again. ctx_cleanup still
     * runs however the request ends. */
    void (*on_defer)(req *r);
    int deferred;                 /* on_defer was called: the reply comes later */

    /* reply */
    int status;                   /* 0 until a reply_* call */
    json_t *json;                 /* JSON reply (owned) */
    struct MHD_Response *resp;    /* or a ready response (owned) */
    int queued;                   /* a response was queued to MHD */
    int must_close;               /* answer with "Connection: close" (framing in doubt) */
    int replayed;                 /* an Idempotency-Key replay */
    int counted;                  /* on_complete was called (before the reply was queued) */

    /* Idempotency-Key: the record this request holds (claimed in
     * first_call, before the body; renewed while the body streams in;
     * finished or removed at the end, whatever ended the request). */
    char idem_key[256];
    char idem_holder[40];         /* this request's holder token */
    int idem_held;
    double idem_renewed;          /* monotonic, seconds */

    db *d;                        /* from the pool (req_db), released at the end */
};

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
/* Calls before_stop, then stops the daemon. Idempotent. */
void http_stop(server *s);

/* The MHD callbacks that http_start installs (cls: the server), for a
 * daemon started elsewhere: tests/fuzz/fuzz_http.c runs the real request
 * flow through them on a daemon without a listening socket. */
enum MHD_Result http_on_request(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *data,
                                size_t *size, void **req_cls);
void http_on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                       enum MHD_RequestTerminationCode toe);
/* MHD_OPTION_UNESCAPE_CALLBACK: MHD's unescaping, with %00 made 0x7f. */
size_t http_unescape(void *cls, struct MHD_Connection *c, char *s);

#endif
