/* queue.c: the Redis wake-up list (see queue.h for the protocol). One
 * hiredis context per handle, freed after any error and reconnected lazily
 * by the next call. */
#include "queue.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/dt.h"

struct queue {
    pthread_mutex_t mu;
    redisContext *c;
    char host[256];
    int port;
    char unix_path[512];
    char password[256];
    int dbnum;
    uint64_t generation;
};

static int parse_url(queue *q, const char *url, char *err)
{
    q->port = 6379;
    if (!strncmp(url, "unix:", 5)) {
        const char *p = url + 5;
        if (!strncmp(p, "//", 2)) p += 2;
        if (!*p || strlen(p) >= sizeof q->unix_path)
            return dt_errf(err, DT_EINVAL, "redis URL: bad socket path");
        strcpy(q->unix_path, p);
        return 0;
    }
    if (strncmp(url, "redis://", 8))
        return dt_errf(err, DT_EINVAL, "redis URL must start with redis:// or unix:");
    const char *p = url + 8;
    const char *at = strchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        size_t n = (size_t)(at - pw);
        if (n >= sizeof q->password) return dt_errf(err, DT_EINVAL, "redis URL: password too long");
        memcpy(q->password, pw, n);
        q->password[n] = 0;
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    const char *hend = slash ? slash : p + strlen(p);
    const char *colon = memchr(p, ':', (size_t)(hend - p));
    const char *host_end = colon ? colon : hend;
    size_t hl = (size_t)(host_end - p);
    if (hl == 0) strcpy(q->host, "127.0.0.1");
    else if (hl >= sizeof q->host) return dt_errf(err, DT_EINVAL, "redis URL: host too long");
    else { memcpy(q->host, p, hl); q->host[hl] = 0; }
    if (colon) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (end != hend || port <= 0 || port > 65535)
            return dt_errf(err, DT_EINVAL, "redis URL: bad port");
        q->port = (int)port;
    }
    if (slash && slash[1]) {
        char *end;
        long dbn = strtol(slash + 1, &end, 10);
        if (*end || dbn < 0 || dbn > 1000) return dt_errf(err, DT_EINVAL, "redis URL: bad db");
        q->dbnum = (int)dbn;
    }
    return 0;
}

int queue_open(queue **out, const char *url, char *err)
{
    queue *q = calloc(1, sizeof *q);
    if (!q) return dt_errf(err, DT_ENOMEM, "out of memory");
    int rc = parse_url(q, url, err);
    if (rc) {
        free(q);
        return rc;
    }
    pthread_mutex_init(&q->mu, NULL);
    *out = q;
    return 0;
}

void queue_free(queue *q)
{
    if (!q) return;
    if (q->c) redisFree(q->c);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

static void drop(queue *q)
{
    if (q->c) redisFree(q->c);
    q->c = NULL;
}

/* Runs a command (argv form); NULL after dropping the context on error. */
static redisReply *command(queue *q, int argc, const char **argv, char *err)
{
    redisReply *r = redisCommandArgv(q->c, argc, argv, NULL);
    if (!r) {
        dt_errf(err, DT_EIO, "redis: %s", q->c->errstr[0] ? q->c->errstr : "I/O error");
        drop(q);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        dt_errf(err, DT_EIO, "redis: %s", r->str);
        freeReplyObject(r);
        drop(q);
        return NULL;
    }
    return r;
}

static int ensure(queue *q, char *err)
{
    if (q->c) return 0;
    struct timeval tv = {2, 0};
    q->c = q->unix_path[0] ? redisConnectUnixWithTimeout(q->unix_path, tv)
                           : redisConnectWithTimeout(q->host, q->port, tv);
    if (!q->c || q->c->err) {
        dt_errf(err, DT_EIO, "redis: %s", q->c ? q->c->errstr : "out of memory");
        drop(q);
        return DT_EIO;
    }
    struct timeval io = {2, 0};
    redisSetTimeout(q->c, io);
    if (q->password[0]) {
        const char *a[] = {"AUTH", q->password};
        redisReply *r = command(q, 2, a, err);
        if (!r) return DT_EIO;
        freeReplyObject(r);
    }
    if (q->dbnum) {
        char n[16];
        snprintf(n, sizeof n, "%d", q->dbnum);
        const char *a[] = {"SELECT", n};
        redisReply *r = command(q, 2, a, err);
        if (!r) return DT_EIO;
        freeReplyObject(r);
    }
    q->generation++;
    return 0;
}

int queue_publish(queue *q, const char *job_id, char *err)
{
    int rc = DT_EIO;
    pthread_mutex_lock(&q->mu);
    if (ensure(q, err)) goto out;
    /* Pipelined: LPUSH then LTRIM bounds the list (stale hints are harmless). */
    char maxi[16];
    snprintf(maxi, sizeof maxi, "%d", QUEUE_MAX_LEN - 1);
    const char *push[] = {"LPUSH", QUEUE_KEY, job_id};
    const char *trim[] = {"LTRIM", QUEUE_KEY, "0", maxi};
    redisReply *r = command(q, 3, push, err);
    if (!r) goto out;
    freeReplyObject(r);
    r = command(q, 4, trim, err);
    if (!r) goto out;
    freeReplyObject(r);
    rc = 0;
out:
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int queue_wait(queue *q, int timeout_ms, char *job_id_out, char *err)
{
    int secs = (timeout_ms + 999) / 1000;
    if (secs < 1) secs = 1;
    int rc = DT_EIO;
    job_id_out[0] = 0;
    pthread_mutex_lock(&q->mu);
    if (ensure(q, err)) goto fail;
    /* The socket timeout must outlast the BRPOP timeout. */
    struct timeval tv = {secs + 5, 0};
    redisSetTimeout(q->c, tv);
    char s[16];
    snprintf(s, sizeof s, "%d", secs);
    const char *a[] = {"BRPOP", QUEUE_KEY, s};
    redisReply *r = command(q, 3, a, err);
    if (!r) goto fail;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING) {
        snprintf(job_id_out, 64, "%s", r->element[1]->str);
        rc = 1;
    } else {
        rc = 0; /* nil: timed out */
    }
    freeReplyObject(r);
    if (q->c) {
        struct timeval io = {2, 0};
        redisSetTimeout(q->c, io);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
fail:
    pthread_mutex_unlock(&q->mu);
    usleep((useconds_t)secs * 1000000u); /* don't spin while Redis is down */
    return DT_EIO;
}

/* Runs one command under the lock, connecting first when needed. An integer
 * reply goes to *n (0 for another reply type) where n is not NULL. Returns 0
 * or DT_EIO. */
static int command_locked(queue *q, int argc, const char **argv, int64_t *n, char *err)
{
    int rc = DT_EIO;
    pthread_mutex_lock(&q->mu);
    if (ensure(q, err)) goto out;
    redisReply *r = command(q, argc, argv, err);
    if (!r) goto out;
    if (n) *n = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);
    rc = 0;
out:
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int queue_depth(queue *q, int64_t *depth, char *err)
{
    const char *a[] = {"LLEN", QUEUE_KEY};
    return command_locked(q, 2, a, depth, err);
}

int queue_ping(queue *q, char *err)
{
    const char *a[] = {"PING"};
    return command_locked(q, 1, a, NULL, err);
}

uint64_t queue_generation(queue *q)
{
    pthread_mutex_lock(&q->mu);
    uint64_t g = q->generation;
    pthread_mutex_unlock(&q->mu);
    return g;
}

/* ---- inference requests and replies (see queue.h) ---------------------------- */

int queue_infer_push(queue *q, const char *request, char *err)
{
    const char *a[] = {"LPUSH", QUEUE_INFER_KEY, request};
    return command_locked(q, 3, a, NULL, err);
}

/* A blocking pop (BRPOP or BLPOP, argv a[argc], the timeout in seconds
 * `secs` for the socket). 1 with the popped key and value (malloc'd) in
 * *key and *value, 0 on timeout, DT_EIO. */
static int blocking_pop(queue *q, int argc, const char **a, double secs, char **key,
                        char **value, char *err)
{
    int rc = DT_EIO;
    *value = NULL;
    if (key) *key = NULL;
    pthread_mutex_lock(&q->mu);
    if (ensure(q, err)) goto out;
    /* The socket timeout must outlast the command's own. */
    struct timeval tv = {(time_t)secs + 5, 0};
    redisSetTimeout(q->c, tv);
    redisReply *r = command(q, argc, a, err);
    if (!r) goto out;
    rc = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING &&
        r->element[1]->type == REDIS_REPLY_STRING) {
        *value = strndup(r->element[1]->str, r->element[1]->len);
        if (key) *key = strndup(r->element[0]->str, r->element[0]->len);
        if (!*value || (key && !*key)) {
            free(*value);
            if (key) free(*key);
            *value = NULL;
            if (key) *key = NULL;
            rc = dt_errf(err, DT_ENOMEM, "out of memory");
        } else {
            rc = 1;
        }
    }
    freeReplyObject(r);
    if (q->c) {
        struct timeval io = {2, 0};
        redisSetTimeout(q->c, io);
    }
out:
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int queue_infer_take(queue *q, int timeout_ms, char **request, char *err)
{
    int secs = (timeout_ms + 999) / 1000;
    if (secs < 1) secs = 1;
    char s[16];
    snprintf(s, sizeof s, "%d", secs);
    const char *a[] = {"BRPOP", QUEUE_INFER_KEY, s};
    int rc = blocking_pop(q, 3, a, secs, NULL, request, err);
    if (rc == DT_EIO) usleep((useconds_t)secs * 1000000u); /* don't spin while Redis is down */
    return rc;
}

int queue_infer_try(queue *q, char **request, char *err)
{
    const char *a[] = {"RPOP", QUEUE_INFER_KEY};
    int rc = DT_EIO;
    *request = NULL;
    pthread_mutex_lock(&q->mu);
    if (ensure(q, err)) goto out;
    redisReply *r = command(q, 2, a, err);
    if (!r) goto out;
    rc = 0;
    if (r->type == REDIS_REPLY_STRING) {
        if ((*request = strndup(r->str, r->len)))
            rc = 1;
        else
            rc = dt_errf(err, DT_ENOMEM, "out of memory");
    }
    freeReplyObject(r);
out:
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int queue_infer_requeue(queue *q, const char *request, char *err)
{
    const char *a[] = {"RPUSH", QUEUE_INFER_KEY, request};
    return command_locked(q, 3, a, NULL, err);
}

static int reply_key(char *out, size_t cap, const char *id, const char *suffix)
{
    int n = snprintf(out, cap, "deltatune:infer:%s%s", id, suffix);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int queue_reply_push(queue *q, const char *id, const char *event, char *err)
{
    char key[128], ttl[16];
    if (reply_key(key, sizeof key, id, ""))
        return dt_errf(err, DT_EINVAL, "request id too long");
    snprintf(ttl, sizeof ttl, "%d", QUEUE_REPLY_TTL);
    const char *push[] = {"RPUSH", key, event};
    const char *exp[] = {"EXPIRE", key, ttl};
    int rc = command_locked(q, 3, push, NULL, err);
    return rc ? rc : command_locked(q, 3, exp, NULL, err);
}

int queue_reply_wait(queue *q, const char *const *ids, int n, int timeout_ms,
                     char *id_out, char **event, char *err)
{
    static const char prefix[] = "deltatune:infer:";
    const char **a = calloc((size_t)n + 2, sizeof *a);
    char (*keys)[128] = calloc((size_t)n, sizeof *keys);
    char t[32], *key = NULL;
    int rc = DT_ENOMEM;
    *event = NULL;
    id_out[0] = 0;
    if (!a || !keys) {
        dt_errf(err, DT_ENOMEM, "out of memory");
        goto out;
    }
    a[0] = "BLPOP";
    for (int i = 0; i < n; i++) {
        if (reply_key(keys[i], sizeof keys[i], ids[i], "")) {
            rc = dt_errf(err, DT_EINVAL, "request id too long");
            goto out;
        }
        a[i + 1] = keys[i];
    }
    snprintf(t, sizeof t, "%.3f", timeout_ms / 1000.0);
    a[n + 1] = t;
    rc = blocking_pop(q, n + 2, a, timeout_ms / 1000.0, &key, event, err);
    if (rc == 1)
        snprintf(id_out, QUEUE_INFER_ID_LEN, "%s",
                 strncmp(key, prefix, sizeof prefix - 1) ? key : key + sizeof prefix - 1);
out:
    free(key);
    free(a);
    free(keys);
    return rc;
}

int queue_cancel_set(queue *q, const char *id, char *err)
{
    char key[128], ttl[16];
    if (reply_key(key, sizeof key, id, ":cancel"))
        return dt_errf(err, DT_EINVAL, "request id too long");
    snprintf(ttl, sizeof ttl, "%d", QUEUE_REPLY_TTL);
    const char *a[] = {"SET", key, "1", "EX", ttl};
    return command_locked(q, 5, a, NULL, err);
}

int queue_cancel_get(queue *q, const char *id, int *set, char *err)
{
    char key[128];
    int64_t n = 0;
    if (reply_key(key, sizeof key, id, ":cancel"))
        return dt_errf(err, DT_EINVAL, "request id too long");
    const char *a[] = {"EXISTS", key};
    int rc = command_locked(q, 2, a, &n, err);
    *set = !rc && n > 0;
    return rc;
}

int queue_infer_depth(queue *q, int64_t *depth, char *err)
{
    const char *a[] = {"LLEN", QUEUE_INFER_KEY};
    return command_locked(q, 2, a, depth, err);
}
