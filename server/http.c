/* http.c: libmicrohttpd configured for a public network (epoll thread
 * pool, connection limits total and per IP, idle timeout, memory per
 * connection), request state in req_cls, body caps enforced from
 * Content-Length before reading and again while streaming, idempotency for
 * POSTs (the key claimed under a lease before the body is read, so a
 * duplicate in flight gets 409 at once and a key whose request died with its
 * server is reclaimed when the lease ends), and the reply helpers. It names no handler: streamed bodies go
 * through the route's body hooks, and the handler's request context is
 * freed by its ctx_cleanup in the completion callback, whatever ended the
 * request (a partial upload is removed there). */
#include "http.h"

#include <arpa/inet.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/auth.h"
#include "api/log.h"
#include "jsonw.h"
#include "ratelimit.h"
#include "base/clock.h"
#include "base/id.h"

/* ---- replies ------------------------------------------------------------------- */

void reply_json(req *r, int status, json_t *body)
{
    if (r->status) { json_decref(body); return; } /* one reply per request */
    r->status = status;
    r->json = body;
}

void reply_apierr(req *r, const api_error *e)
{
    reply_json(r, e->status, api_error_json(e));
}

void reply_error(req *r, int status, const char *code, const char *param, const char *fmt,
                 ...)
{
    api_error e;
    va_list ap;
    e.status = status;
    e.type = NULL;
    snprintf(e.code, sizeof e.code, "%s", code ? code : "");
    snprintf(e.param, sizeof e.param, "%s", param ? param : "");
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    reply_apierr(r, &e);
}

void reply_db(req *r, int rc, const char *err)
{
    switch (rc) {
    case DB_ENOTFOUND: reply_error(r, 404, "not_found", NULL, "%s", err); return;
    case DB_ECONFLICT: reply_error(r, 409, "conflict", NULL, "%s", err); return;
    case DT_EINVAL: reply_error(r, 400, "invalid_request", NULL, "%s", err); return;
    case DB_EUNAVAIL:
        log_msg(DT_LOG_WARN, "db.unavailable", "%s", err);
        reply_error(r, 503, "service_unavailable", NULL,
                    "the database is unavailable; retry shortly");
        return;
    default:
        log_msg(DT_LOG_ERROR, "http.internal", "%s %s: %s (%s)", r->method, r->url, err,
                db_strerror(rc));
        reply_error(r, 500, "internal_error", NULL, "internal error");
    }
}

void reply_mhd(req *r, int status, struct MHD_Response *resp)
{
    if (r->status) { MHD_destroy_response(resp); return; }
    r->status = status;
    r->resp = resp;
}

/* ---- request helpers ------------------------------------------------------------- */

db *req_db(req *r)
{
    if (r->d) return r->d;
    r->d = db_pool_acquire(r->s->pool, 2000);
    if (!r->d) reply_db(r, DB_EUNAVAIL, "no database connection");
    return r->d;
}

void req_db_release(req *r)
{
    if (r->d) db_pool_release(r->s->pool, r->d);
    r->d = NULL;
}

const char *req_query(req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *req_header(req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

/* jansson refuses a number it cannot represent (an integer beyond int64, a
 * real beyond double) as a parse error with no field. To name the field,
 * the number is replaced by a marker string, the copy parsed again, and the
 * marker's path (a.b.c, a[0]) written to param. 0 when found. */
#define OVERFLOW_MARK "\"\\u0001\""
static int is_num_char(char c)
{
    return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

static int find_mark(json_t *v, char *path, size_t cap)
{
    size_t n = strlen(path);
    if (json_is_string(v)) return strcmp(json_string_value(v), "\x01") ? -1 : 0;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) {
            snprintf(path + n, cap - n, "%s%.100s", n ? "." : "", k);
            if (!find_mark(x, path, cap)) return 0;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) {
            snprintf(path + n, cap - n, "[%zu]", i);
            if (!find_mark(x, path, cap)) return 0;
        }
    }
    path[n] = 0;
    return -1;
}

static int overflow_param(const char *body, size_t len, json_error_t je, char *param, size_t cap)
{
    char *buf = malloc(len + 1);
    if (!buf) return -1;
    memcpy(buf, body, len);
    buf[len] = 0;
    int rc = -1;
    for (int tries = 0; tries < 8; tries++) {
        if (!strstr(je.text, "too big integer") && !strstr(je.text, "real number overflow")) break;
        size_t end = je.position >= 0 && (size_t)je.position < len ? (size_t)je.position : len;
        while (end > 0 && !is_num_char(buf[end - 1])) end--;
        size_t start = end;
        while (start > 0 && is_num_char(buf[start - 1])) start--;
        if (start == end) break;
        size_t mlen = strlen(OVERFLOW_MARK), nlen = len - (end - start) + mlen;
        char *nb = malloc(nlen + 1);
        if (!nb) break;
        memcpy(nb, buf, start);
        memcpy(nb + start, OVERFLOW_MARK, mlen);
        memcpy(nb + start + mlen, buf + end, len - end + 1);
        free(buf);
        buf = nb;
        len = nlen;
        json_t *v = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
        if (v) {
            param[0] = 0;
            rc = find_mark(v, param, cap);
            json_decref(v);
            break;
        }
    }
    free(buf);
    return rc;
}

json_t *req_json(req *r)
{
    json_error_t je;
    if (!r->body || !r->body_len) {
        reply_error(r, 400, "invalid_json", NULL, "the request body must be a JSON object");
        return NULL;
    }
    json_t *v = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        char param[256];
        if (!overflow_param(r->body, r->body_len, je, param, sizeof param))
            reply_error(r, 400, "invalid_value", param,
                        "%s: number out of range at line %d, column %d (%s)", param, je.line,
                        je.column, je.text);
        else
            reply_error(r, 400, "invalid_json", NULL, "malformed JSON at line %d, column %d: %s",
                        je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        reply_error(r, 400, "invalid_json", NULL, "the request body must be a JSON object");
        return NULL;
    }
    return v;
}

/* ---- sending ------------------------------------------------------------------------- */

static enum MHD_Result send_reply(req *r)
{
    struct MHD_Response *resp = r->resp;
    r->resp = NULL;
    if (!r->status) reply_error(r, 500, "internal_error", NULL, "no reply");
    if (!resp) {
        size_t n = 0;
        char *text = r->json ? jsonw_dump(r->json, &n) : NULL;
        resp = MHD_create_response_from_buffer(n, text ? text : (char *)"",
                                               text ? MHD_RESPMEM_MUST_FREE
                                                    : MHD_RESPMEM_PERSISTENT);
        if (!resp) { free(text); return MHD_NO; }
        MHD_add_response_header(resp, "Content-Type", "application/json");
    }
    if (r->status == 503) MHD_add_response_header(resp, "Retry-After", "5");
    if (r->rl_set) {
        char v[32];
        snprintf(v, sizeof v, "%lld", (long long)r->rl_limit);
        MHD_add_response_header(resp, "x-ratelimit-limit-requests", v);
        snprintf(v, sizeof v, "%lld", (long long)r->rl_remaining);
        MHD_add_response_header(resp, "x-ratelimit-remaining-requests", v);
        ratelimit_duration(r->rl_reset_s, v, sizeof v);
        MHD_add_response_header(resp, "x-ratelimit-reset-requests", v);
        if (r->status == 429) {
            snprintf(v, sizeof v, "%lld", (long long)ceil(r->rl_retry_s));
            MHD_add_response_header(resp, "Retry-After", v);
        }
    }
    if (r->status == 409) {
        /* The openai SDKs retry every 409 unless told otherwise: only an
         * Idempotency-Key still in progress is worth retrying; an invalid
         * state transition or a conflicting object is not. */
        const char *code = json_string_value(json_object_get(json_object_get(r->json, "error"),
                                                             "code"));
        MHD_add_response_header(resp, "x-should-retry",
                                code && !strcmp(code, "idempotency_key_in_progress") ? "true"
                                                                                      : "false");
    }
    if (r->status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (r->status == 413 || r->must_close) MHD_add_response_header(resp, "Connection", "close");
    if (r->replayed) MHD_add_response_header(resp, "Idempotent-Replayed", "true");
    /* Counted before the reply is queued, so a client that has read the
     * reply finds it in /metrics (counting on completion raced it). The
     * duration is the time to the reply's headers. */
    if (r->s->on_complete && !r->counted) {
        r->counted = 1;
        r->s->on_complete(r->s, r->route, r->status, dt_now() - r->t0);
    }
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    r->queued = 1;
    return ok;
}

/* ---- idempotency ------------------------------------------------------------------------ */

/* Seconds an unfinished request holds its key: DELTATUNE_IDEMPOTENCY_LEASE,
 * by default twice the connection timeout. A live upload renews it on every
 * body chunk after a third of it has passed, and a client silent for a
 * connection timeout is dropped, so only a request whose server died lets
 * it run out. */
static int idem_lease(const server *s)
{
    return s->cfg.idempotency_lease_s > 0 ? s->cfg.idempotency_lease_s
                                          : 2 * s->cfg.connection_timeout_s;
}

/* The request's Idempotency-Key when it is one that applies (POST, set,
 * valid): the checks that reply 400 are dispatch's. */
static const char *idem_key(req *r)
{
    const char *key = strcmp(r->method, "POST") ? NULL : req_header(r, "Idempotency-Key");
    if (!key || !*key || strlen(key) >= sizeof r->idem_key || !api_utf8_valid(key)) return NULL;
    return key;
}

/* Called in first_call, before the body is read: claims the key (or
 * reclaims it from a request whose lease ran out), or answers 409 at once
 * when another request holds it, so a retry does not send its body for
 * nothing. A finished record is left to dispatch, which needs the body's
 * hash to replay or refuse it. 0: go on; -1: replied. */
static int idem_claim(req *r)
{
    const char *key = idem_key(r);
    if (!key) return 0;
    char err[DT_ERR_LEN], *stored = NULL;
    int status;
    if (dt_id_new("idem-", r->idem_holder, sizeof r->idem_holder)) {
        reply_error(r, 500, "internal_error", NULL, "no randomness for the idempotency record");
        return -1;
    }
    snprintf(r->idem_key, sizeof r->idem_key, "%s", key);
    db *d = req_db(r);
    if (!d) return -1;
    int rc = db_idem_begin(d, r->owner, key, NULL, r->idem_holder, idem_lease(r->s), &status,
                           &stored, err);
    free(stored);
    switch (rc) {
    case DB_IDEM_NEW:
        r->idem_held = 1;
        r->idem_renewed = dt_now();
        return 0;
    case DB_IDEM_DONE:
        return 0;
    case DB_IDEM_IN_PROGRESS:
        reply_error(r, 409, "idempotency_key_in_progress", "Idempotency-Key",
                    "a request with this Idempotency-Key is still being processed; retry");
        return -1;
    default:
        reply_db(r, rc, err);
        return -1;
    }
}

/* Renews the held lease while the body streams in (a connection for a
 * moment: uploads hold none). A lost record is let go: dispatch then finds
 * the other holder's and answers 409. */
static void idem_renew_body(req *r)
{
    int lease = idem_lease(r->s);
    double now = dt_now();
    if (!r->idem_held || now - r->idem_renewed < lease / 3.0) return;
    char err[DT_ERR_LEN];
    db *d = r->d ? r->d : db_pool_acquire(r->s->pool, 1000);
    if (!d) return; /* try again on the next chunk */
    int rc = db_idem_renew(d, r->owner, r->idem_key, r->idem_holder, NULL, lease, err);
    if (d != r->d) db_pool_release(r->s->pool, d);
    if (rc == DB_IDEM_IN_PROGRESS) r->idem_held = 0;
    else if (!rc) r->idem_renewed = now;
}

/* Removes a record the request still holds as it ends unfinished (client
 * gone, body over the cap, a reply before dispatch). */
static void idem_release(req *r)
{
    if (!r->idem_held) return;
    r->idem_held = 0;
    char err[DT_ERR_LEN];
    db *d = r->d ? r->d : db_pool_acquire(r->s->pool, 2000);
    if (!d) return; /* the lease runs out instead */
    if (db_idem_abort(d, r->owner, r->idem_key, r->idem_holder, err))
        log_msg(DT_LOG_WARN, "http.idempotency", "cannot release key: %s", err);
    if (d != r->d) db_pool_release(r->s->pool, d);
}

/* Runs the handler under Idempotency-Key rules. */
static void dispatch(req *r, const route *rt)
{
    const char *key = strcmp(r->method, "POST") ? NULL : req_header(r, "Idempotency-Key");
    if (!key || !*key) {
        rt->handler(r);
        return;
    }
    if (strlen(key) > 255) {
        reply_error(r, 400, "invalid_value", "Idempotency-Key",
                    "Idempotency-Key is longer than 255 characters");
        return;
    }
    if (!api_utf8_valid(key)) {
        reply_error(r, 400, "invalid_value", "Idempotency-Key",
                    "Idempotency-Key must be valid UTF-8");
        return;
    }
    if (!r->request_hash[0]) {
        auth_sha256 *h = auth_sha256_new();
        if (!h) { reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
        auth_sha256_update(h, r->url, strlen(r->url) + 1);
        if (r->body) auth_sha256_update(h, r->body, r->body_len);
        auth_sha256_final(h, r->request_hash);
        auth_sha256_free(h);
    }
    db *d = req_db(r);
    if (!d) return;
    char err[DT_ERR_LEN], *stored = NULL;
    int status = 0, rc;
    if (!r->idem_holder[0] && dt_id_new("idem-", r->idem_holder, sizeof r->idem_holder)) {
        reply_error(r, 500, "internal_error", NULL, "no randomness for the idempotency record");
        return;
    }
    snprintf(r->idem_key, sizeof r->idem_key, "%s", key);
    if (r->idem_held) { /* claimed before the body: record its hash, lease anew */
        rc = db_idem_renew(d, r->owner, key, r->idem_holder, r->request_hash, idem_lease(r->s),
                           err);
        if (rc == DB_IDEM_IN_PROGRESS) r->idem_held = 0;
    } else {
        rc = db_idem_begin(d, r->owner, key, r->request_hash, r->idem_holder, idem_lease(r->s),
                           &status, &stored, err);
        if (rc == DB_IDEM_NEW) r->idem_held = 1;
    }
    switch (rc) {
    case DB_IDEM_NEW:
        break;
    case DB_IDEM_REPLAY: {
        json_t *v = json_loads(stored, 0, NULL);
        free(stored);
        if (!v) { reply_error(r, 500, "internal_error", NULL, "stored reply unreadable"); return; }
        reply_json(r, status, v);
        r->replayed = 1;
        return;
    }
    case DB_IDEM_MISMATCH:
        reply_error(r, 422, "idempotency_key_reused", "Idempotency-Key",
                    "this Idempotency-Key was used with a different request");
        return;
    case DB_IDEM_IN_PROGRESS:
        reply_error(r, 409, "idempotency_key_in_progress", "Idempotency-Key",
                    "a request with this Idempotency-Key is still being processed; retry");
        return;
    default:
        reply_db(r, rc, err);
        return;
    }
    rt->handler(r);
    d = req_db(r);
    if (!d) return; /* the record stays held: idem_release tries again, else its lease ends */
    r->idem_held = 0;
    if (r->status < 500 && r->json) {
        char *text = json_dumps(r->json, JSON_COMPACT);
        if (!text || db_idem_finish(d, r->owner, key, r->idem_holder, r->status, text, err))
            db_idem_abort(d, r->owner, key, r->idem_holder, err);
        free(text);
    } else {
        db_idem_abort(d, r->owner, key, r->idem_holder, err);
    }
}

/* ---- MHD callbacks ----------------------------------------------------------------------- */

/* Takes a token from the bucket of the (authenticated) key in the
 * Authorization header; 429 when it is empty. Buckets are keyed by the
 * key's public prefix, never by the secret. */
static int rate_limit(req *r, const char *authorization)
{
    char prefix[AUTH_PREFIX_LEN + 1];
    ratelimit_info in;
    if (!r->s->rl) return 0;
    const char *key = authorization + 7; /* "Bearer ", checked by auth_authenticate */
    while (*key == ' ') key++;
    if (auth_key_parse(key, prefix)) return 0;
    int ok = ratelimit_take(r->s->rl, prefix, dt_now(), &in);
    r->rl_set = 1;
    r->rl_limit = in.limit;
    r->rl_remaining = in.remaining;
    r->rl_reset_s = in.reset_s;
    r->rl_retry_s = in.retry_after_s;
    if (ok) return 0;
    reply_error(r, 429, "rate_limit_exceeded", NULL,
                "rate limit reached for this API key: %lld requests at once, %d per second; "
                "retry in %.3f s", (long long)in.limit, r->s->cfg.rate_limit, in.retry_after_s);
    return -1;
}

/* The default auth hook: the API keys in PostgreSQL. */
static int auth_db(req *r, const char *authorization, char *owner, char *err)
{
    db *d = req_db(r);
    if (!d) return DB_EUNAVAIL; /* req_db replied 503 */
    return auth_authenticate(d, authorization, owner, err);
}

static int authenticate(req *r)
{
    const char *h = req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    char err[DT_ERR_LEN] = "";
    if (!h) {
        reply_error(r, 401, "missing_api_key", NULL,
                    "missing API key: send \"Authorization: Bearer <key>\"");
        return -1;
    }
    int rc = (r->s->auth ? r->s->auth : auth_db)(r, h, r->owner, err);
    if (rc && r->status) return -1; /* the hook replied */
    if (rc == DB_EUNAVAIL) { reply_db(r, rc, err); return -1; }
    if (rc) {
        reply_error(r, 401, "invalid_api_key", NULL, "invalid API key");
        return -1;
    }
    return rate_limit(r, h);
}

static enum MHD_Result arg_utf8(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    int *bad = cls;
    if (api_utf8_valid(key) && (!value || api_utf8_valid(value))) return MHD_YES;
    *bad = 1;
    return MHD_NO;
}

/* MHD_OPTION_UNESCAPE_CALLBACK: MHD's own unescaping, except that a %00
 * (which would end the C string: "file-x%00.json" would read as "file-x")
 * becomes 0x7f, which first_call answers 404 in a path. */
size_t http_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    size_t n = MHD_http_unescape(s);
    for (size_t i = 0; i < n; i++)
        if (!s[i]) s[i] = 0x7f;
    return n;
}

static int has_ctl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 1;
    return 0;
}

static enum MHD_Result first_call(server *s, req *r)
{
    if (req_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING) &&
        req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        /* RFC 9112 6.1: a request with both is a smuggling attempt (a proxy
         * may frame it by the other header): refuse it and close, so that
         * no byte after it is read as another request. */
        r->must_close = 1;
        reply_error(r, 400, "invalid_request", NULL,
                    "a request must not have both Content-Length and Transfer-Encoding");
        return send_reply(r);
    }
    /* ids, cursors and filters go to PostgreSQL (UTF8), which refuses other
     * bytes: a 400 here rather than a 500 from the query */
    int bad = !api_utf8_valid(r->url);
    if (!bad) MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, arg_utf8, &bad);
    if (bad) {
        reply_error(r, 400, "invalid_request", NULL,
                    "the request path and query must be valid UTF-8 (percent-encoded)");
        return send_reply(r);
    }
    if (has_ctl(r->url)) { /* no id or file name has one: nothing there */
        reply_error(r, 404, "not_found", NULL,
                    "not found: the request path contains a control character (such as %%00)");
        return send_reply(r);
    }
    r->route = route_find(s->routes, s->nroutes, r->method, r->url, r->params);
    if (r->route == -1) {
        reply_error(r, 404, "not_found", NULL, "no route for %s %.200s", r->method, r->url);
        return send_reply(r);
    }
    if (r->route == -2) {
        r->route = -1;
        reply_error(r, 405, "method_not_allowed", NULL, "%s is not allowed on %.200s",
                    r->method, r->url);
        return send_reply(r);
    }
    const route *rt = &s->routes[r->route];
    r->limit = rt->flags & R_UPLOAD ? s->cfg.max_upload_bytes + 65536
                                    : s->cfg.max_json_bytes;
    const char *cl = req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoll(cl, NULL, 10) > r->limit) {
        reply_error(r, 413, "request_too_large", NULL,
                    "request body of %s bytes exceeds the limit of %lld bytes", cl,
                    (long long)r->limit);
        return send_reply(r);
    }
    if (!(rt->flags & R_PUBLIC) && authenticate(r)) return send_reply(r);
    if (idem_claim(r)) return send_reply(r); /* 409 before the body is read */
    if (rt->body_begin && rt->body_begin(r)) return send_reply(r);
    if (rt->flags & R_UPLOAD) req_db_release(r); /* don't hold it during the upload */
    return MHD_YES;
}

static enum MHD_Result body_chunk(req *r, const char *data, size_t n)
{
    const route *rt = &r->s->routes[r->route];
    r->received += (int64_t)n;
    idem_renew_body(r);
    if (r->over_limit || r->received > r->limit) {
        r->over_limit = 1;
        /* discard a bounded amount, then drop a client that keeps sending */
        return r->received > 2 * r->limit + (1 << 20) ? MHD_NO : MHD_YES;
    }
    if (rt->body_data) return rt->body_data(r, data, n) ? MHD_NO : MHD_YES;
    if (rt->flags & R_JSON) {
        if (r->body_len + n + 1 > r->body_cap) {
            size_t cap = r->body_cap ? r->body_cap : 4096;
            while (cap < r->body_len + n + 1) cap *= 2;
            char *b = realloc(r->body, cap);
            if (!b) return MHD_NO;
            r->body = b;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, data, n);
        r->body_len += n;
        r->body[r->body_len] = 0;
    }
    return MHD_YES; /* bodies of other routes are ignored */
}

enum MHD_Result http_on_request(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *data,
                                size_t *size, void **req_cls)
{
    server *s = cls;
    req *r = *req_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *req_cls = r;
        r->s = s;
        r->conn = c;
        r->url = url;
        r->method = method;
        r->route = -1;
        r->t0 = dt_now();
        return first_call(s, r);
    }
    if (r->queued) { *size = 0; return MHD_YES; }
    if (r->deferred) return send_reply(r); /* resumed by whoever answered */
    if (*size) {
        enum MHD_Result ok = body_chunk(r, data, *size);
        *size = 0;
        return ok;
    }
    const route *rt = &s->routes[r->route];
    if (rt->body_end) rt->body_end(r);
    if (r->over_limit)
        reply_error(r, 413, "request_too_large", NULL,
                    "request body exceeds the limit of %lld bytes", (long long)r->limit);
    else if (!r->status)
        dispatch(r, rt);
    req_db_release(r);
    if (r->on_defer && !r->status) {
        /* suspended first: on_defer's thread may resume at once */
        r->deferred = 1;
        MHD_suspend_connection(c);
        r->on_defer(r);
        return MHD_YES;
    }
    return send_reply(r);
}

void http_on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                       enum MHD_RequestTerminationCode toe)
{
    server *s = cls;
    req *r = *req_cls;
    if (!r) return;
    *req_cls = NULL;
    if (r->ctx_cleanup) r->ctx_cleanup(r); /* e.g. removes a partial upload */
    r->ctx = NULL;
    idem_release(r);
    req_db_release(r);
    double dt = dt_now() - r->t0;
    int status = r->queued ? r->status : 499; /* 499: client went away */
    if (s->on_complete && !r->counted) s->on_complete(s, r->route, status, dt);
    if (status >= 500 || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        log_json(status >= 500 ? DT_LOG_WARN : DT_LOG_DEBUG, "http.request",
                 json_pack("{s:s, s:s, s:i, s:f, s:i}", "method", r->method, "path", r->url,
                           "status", status, "seconds", dt, "termination", (int)toe));
    json_decref(r->json);
    if (r->resp) MHD_destroy_response(r->resp);
    free(r->body);
    free(r);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && buf[n - 1] == '\n') buf[--n] = 0;
    log_msg(DT_LOG_WARN, "mhd", "%s", buf);
}

int http_start(server *s, char *err)
{
    struct addrinfo hints = {0}, *ai = NULL;
    char port[16];
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof port, "%d", s->cfg.listen_port);
    const char *host = s->cfg.listen_host;
    if (host[0] == '[') { /* [::1] */
        static char h6[256];
        snprintf(h6, sizeof h6, "%s", host + 1);
        char *close = strchr(h6, ']');
        if (close) *close = 0;
        host = h6;
    }
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai) return dt_errf(err, DT_EINVAL, "listen %s: %s", s->cfg.listen_host, gai_strerror(gai));
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
                     MHD_ALLOW_SUSPEND_RESUME; /* handlers may suspend (event streams) */
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)s->cfg.listen_port, NULL, NULL, http_on_request, s,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)s->cfg.threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->cfg.max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)s->cfg.max_connections_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->cfg.connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)s->cfg.connection_memory_bytes,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, s,
        MHD_OPTION_UNESCAPE_CALLBACK, http_unescape, NULL,
        MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon)
        return dt_errf(err, DT_EIO, "cannot listen on %s:%d (in use, or bad settings)",
                       s->cfg.listen_host, s->cfg.listen_port);
    if (s->cfg.listen_port == 0) {
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
        if (di) s->cfg.listen_port = di->port;
    }
    return 0;
}

void http_stop(server *s)
{
    if (s->daemon) {
        if (s->before_stop) s->before_stop(s); /* MHD must not stop with suspended connections */
        MHD_stop_daemon(s->daemon);
    }
    s->daemon = NULL;
}
