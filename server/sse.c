/* sse.c: live job events as Server-Sent Events.
 *
 * GET /v1/fine_tuning/jobs/{id}/events?stream=true answers text/event-stream:
 * every event of the job oldest first (or those after the Last-Event-ID
 * header), then new ones as the worker writes them, each as
 * "id: ftevent-N\ndata: <event JSON>\n\n"; a ": keep-alive" comment when
 * nothing was sent for SSE_KEEPALIVE_SECONDS; and, once the job is terminal
 * and its last event sent, "event: end\ndata: {\"status\":...}\n\n", then
 * the stream ends.
 *
 * No HTTP thread ever waits: the response's content reader hands out what
 * is buffered, and when the buffer is empty it suspends the connection
 * (MHD_suspend_connection) and returns 0. One poller thread, with its own
 * PostgreSQL connection (not one of the request pool's), looks for new
 * events of every stream each SSE_POLL_SECONDS, appends them to the
 * stream's buffer and resumes its connection. Streams are capped in total
 * and per owner (429 beyond).
 *
 * A stream outlives no key: every DELTATUNE_SSE_RECHECK_SECONDS (at most
 * 10) the poller looks the stream's API key up again (by prefix, the hash
 * compared; the auth cache is not used), and when it is revoked, gone or
 * belongs to another owner, text not yet sent is dropped and the stream
 * ends with "event: error" carrying the invalid_api_key error envelope. */
#include "sse.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api/auth.h"
#include "api/log.h"
#include "api/objects.h"
#include "handlers.h"
#include "base/clock.h"

typedef struct stream {
    uint64_t id;
    struct MHD_Connection *conn;
    char job_id[DB_ID_LEN];
    char owner[DB_OWNER_LEN];
    int64_t last_seq;             /* newest event appended */
    char *buf;                    /* text not yet handed to MHD: buf[off..len) */
    size_t off, len, cap;
    int suspended;                /* the reader suspended the connection */
    int done;                     /* the end was appended: end after the buffer */
    double last_write;            /* when text was last appended */
    int check_key;                /* key_prefix/key_hash name the key to re-check */
    char key_prefix[AUTH_PREFIX_LEN + 1];
    char key_hash[65];            /* SHA-256 hex of the key that opened the stream */
    double next_check;            /* when the key is looked up next */
    struct stream *next;
} stream;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    stream *head;
    int n;
    uint64_t next_id;
    int started, stopping;
    int recheck_s;                /* DELTATUNE_SSE_RECHECK_SECONDS */
    pthread_t th;
    char database_url[CONFIG_URL_LEN];
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};


/* Appends text to st (g.mu held). */
static int append(stream *st, const char *text, size_t n)
{
    if (st->off && st->off == st->len) st->off = st->len = 0;
    if (st->len + n > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->len + n) cap *= 2;
        char *b = realloc(st->buf, cap);
        if (!b) return -1;
        st->buf = b;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, text, n);
    st->len += n;
    st->last_write = dt_now();
    return 0;
}

/* Marks a suspended stream awake (g.mu held) and adds its connection to
 * wakeup[*n]: the caller resumes them after unlocking g.mu, so that g.mu is
 * never held while MHD takes its own locks for a resume. A connection
 * marked awake stays suspended, and its reader uncalled, until then. */
static void wake(stream *st, struct MHD_Connection **wakeup, int *n)
{
    if (!st->suspended) return;
    st->suspended = 0;
    wakeup[(*n)++] = st->conn;
}

static void resume_all(struct MHD_Connection **wakeup, int n)
{
    for (int i = 0; i < n; i++) MHD_resume_connection(wakeup[i]);
}

/* ---- MHD side ------------------------------------------------------------------------- */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    stream *st = cls;
    ssize_t n = 0;
    pthread_mutex_lock(&g.mu);
    if (st->off < st->len) {
        size_t k = st->len - st->off < max ? st->len - st->off : max;
        memcpy(buf, st->buf + st->off, k);
        st->off += k;
        n = (ssize_t)k;
    } else if (st->done || g.stopping) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        st->suspended = 1;
        MHD_suspend_connection(st->conn);
    }
    pthread_mutex_unlock(&g.mu);
    return n;
}

static void sse_free(void *cls)
{
    stream *st = cls;
    pthread_mutex_lock(&g.mu);
    for (stream **p = &g.head; *p; p = &(*p)->next)
        if (*p == st) {
            *p = st->next;
            g.n--;
            break;
        }
    pthread_mutex_unlock(&g.mu);
    free(st->buf);
    free(st);
}

/* ---- the poller ------------------------------------------------------------------------- */

typedef struct snap {
    uint64_t id;
    char job_id[DB_ID_LEN];
    char owner[DB_OWNER_LEN];
    int64_t last_seq;
    int check_key;                /* look the key up in this pass */
    char key_prefix[AUTH_PREFIX_LEN + 1];
    char key_hash[65];
    /* results */
    char *text;                   /* events, malloc'd (NULL = none) */
    size_t len;
    int64_t new_last;
    char end_status[24];          /* "" = the job goes on */
    int failed;
    int revoked;                  /* the key no longer opens this stream */
} snap;

static int is_terminal(const char *status)
{
    return !strcmp(status, "succeeded") || !strcmp(status, "failed") ||
           !strcmp(status, "cancelled");
}

/* New events of one stream, oldest first, as SSE text. The status is read
 * before the events: when it is terminal, every event (the worker writes
 * the last one with the final status, in one transaction) is in the list. */
static void poll_one(db *d, snap *s)
{
    char err[DT_ERR_LEN];
    db_job j;
    s->new_last = s->last_seq;
    if (s->check_key) {
        db_key k;
        int rc = db_key_lookup(d, s->key_prefix, &k, err);
        if (rc == DB_ENOTFOUND ||
            (!rc && (!auth_equal(k.hash, s->key_hash, 64) || strcmp(k.owner, s->owner)))) {
            s->revoked = 1;
            return;
        }
        /* another error: the database is away; the next pass checks again */
    }
    int rc = db_job_get(d, s->owner, s->job_id, &j, err);
    if (rc == DB_ENOTFOUND) { snprintf(s->end_status, sizeof s->end_status, "deleted"); return; }
    if (rc) { s->failed = 1; return; }
    if (is_terminal(j.status)) snprintf(s->end_status, sizeof s->end_status, "%s", j.status);
    db_job_clear(&j);

    /* Pages newest first until an event we have sent (or the first one). */
    db_event *all = NULL;
    int nall = 0;
    int64_t after = 0;
    for (;;) {
        db_event *es = NULL;
        int n = 0;
        bool more = false;
        rc = db_event_list(d, s->owner, s->job_id, after, 500, &es, &n, &more, err);
        if (rc) { s->failed = 1; break; }
        int keep = 0;
        while (keep < n && es[keep].seq > s->last_seq) keep++;
        db_event *grown = realloc(all, sizeof *all * (size_t)(nall + keep + 1));
        if (!grown) { db_event_array_free(es, n); s->failed = 1; break; }
        all = grown;
        memcpy(all + nall, es, sizeof *es * (size_t)keep);
        nall += keep;
        for (int i = keep; i < n; i++) free(es[i].data);
        free(es);
        if (keep < n || !more || !n) break;
        after = all[nall - 1].seq;
    }
    if (s->failed) {
        s->end_status[0] = 0;
        db_event_array_free(all, nall);
        return;
    }
    FILE *f = nall ? open_memstream(&s->text, &s->len) : NULL;
    for (int i = nall - 1; f && i >= 0; i--) {
        json_t *o = obj_event(&all[i]);
        char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (t) fprintf(f, "id: ftevent-%lld\ndata: %s\n\n", (long long)all[i].seq, t);
        free(t);
        s->new_last = all[i].seq;
    }
    if (f) fclose(f);
    db_event_array_free(all, nall);
}

static void *poller(void *arg)
{
    db *d = NULL;
    char err[DT_ERR_LEN];
    double last_connect = 0;
    pthread_mutex_lock(&g.mu);
    while (!g.stopping) {
        if (!g.head) {
            pthread_cond_wait(&g.cv, &g.mu);
            continue;
        }
        int n = 0, nwake = 0;
        snap *ss = calloc((size_t)g.n + 1, sizeof *ss);
        for (stream *st = g.head; ss && st; st = st->next) {
            if (st->done) continue;
            snap *s = &ss[n++];
            s->id = st->id;
            s->last_seq = st->last_seq;
            memcpy(s->job_id, st->job_id, sizeof s->job_id);
            memcpy(s->owner, st->owner, sizeof s->owner);
            if (st->check_key && dt_now() >= st->next_check) {
                s->check_key = 1;
                memcpy(s->key_prefix, st->key_prefix, sizeof s->key_prefix);
                memcpy(s->key_hash, st->key_hash, sizeof s->key_hash);
                st->next_check = dt_now() + g.recheck_s;
            }
        }
        pthread_mutex_unlock(&g.mu);

        if (!d && dt_now() - last_connect > 2) {
            last_connect = dt_now();
            if (db_connect(&d, g.database_url, err)) {
                log_msg(DT_LOG_WARN, "sse.db", "%s", err);
                d = NULL;
            }
        }
        for (int i = 0; d && i < n; i++) poll_one(d, &ss[i]);

        pthread_mutex_lock(&g.mu);
        double now = dt_now();
        struct MHD_Connection **wakeup = calloc((size_t)g.n + 1, sizeof *wakeup);
        for (stream *st = g.head; wakeup && st; st = st->next) {
            snap *s = NULL;
            for (int i = 0; i < n && !s; i++)
                if (ss[i].id == st->id) s = &ss[i];
            int wrote = 0;
            if (s && s->revoked && !st->done) {
                static const char gone[] =
                    "event: error\ndata: {\"error\":{\"message\":\"the API key of this "
                    "stream was revoked\",\"type\":\"invalid_request_error\",\"param\":null,"
                    "\"code\":\"invalid_api_key\"}}\n\n";
                st->off = st->len = 0; /* nothing more for a revoked key */
                if (!append(st, gone, sizeof gone - 1)) st->done = 1;
                wake(st, wakeup, &nwake);
                continue;
            }
            if (s && s->text && s->len && !append(st, s->text, s->len)) {
                st->last_seq = s->new_last;
                wrote = 1;
            }
            if (s && s->end_status[0] && (!s->len || wrote)) {
                char end[96];
                int k = snprintf(end, sizeof end, "event: end\ndata: {\"status\":\"%s\"}\n\n",
                                 s->end_status);
                if (!append(st, end, (size_t)k)) st->done = 1;
                wrote = 1;
            }
            if (!wrote && !st->done && now - st->last_write >= SSE_KEEPALIVE_SECONDS &&
                !append(st, ": keep-alive\n\n", 14))
                wrote = 1;
            if (wrote) wake(st, wakeup, &nwake);
        }
        pthread_mutex_unlock(&g.mu);
        resume_all(wakeup, nwake);
        free(wakeup);
        for (int i = 0; i < n; i++) free(ss[i].text);
        free(ss);
        pthread_mutex_lock(&g.mu);
        if (g.stopping) break;
        struct timespec until;
        dt_deadline(&until, SSE_POLL_SECONDS);
        pthread_cond_timedwait(&g.cv, &g.mu, &until);
    }
    pthread_mutex_unlock(&g.mu);
    db_free(d);
    return NULL;
}

void sse_shutdown(server *s)
{
    pthread_mutex_lock(&g.mu);
    g.stopping = 1;
    int started = g.started, nwake = 0;
    g.started = 0;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    if (started) pthread_join(g.th, NULL); /* the poller resumes nothing after this */
    pthread_mutex_lock(&g.mu);
    struct MHD_Connection **wakeup = calloc((size_t)g.n + 1, sizeof *wakeup);
    for (stream *st = g.head; wakeup && st; st = st->next) wake(st, wakeup, &nwake);
    pthread_mutex_unlock(&g.mu);
    resume_all(wakeup, nwake);
    free(wakeup);
}

/* ---- the route ---------------------------------------------------------------------------- */

static void stream_events(req *r)
{
    char err[DT_ERR_LEN];
    int64_t last = 0;
    const char *lei = req_header(r, "Last-Event-ID");
    if (lei && *lei && obj_event_seq(lei, &last)) {
        reply_error(r, 400, "invalid_value", "Last-Event-ID",
                    "Last-Event-ID must be an event id (ftevent-N)");
        return;
    }
    db *d = req_db(r);
    if (!d) return;
    db_job j;
    int rc = db_job_get(d, r->owner, r->params[0], &j, err);
    if (rc) { reply_db(r, rc, err); return; }
    db_job_clear(&j);
    req_db_release(r);

    if (!strcmp(r->method, "HEAD")) { /* the headers of a stream, which never starts */
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, (char *)"", MHD_RESPMEM_PERSISTENT);
        if (!resp) { reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        reply_mhd(r, 200, resp);
        return;
    }
    stream *st = calloc(1, sizeof *st);
    if (!st) { reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
    st->conn = r->conn;
    /* the key to re-check (a server whose auth hook is not the API keys'
     * has none to look up) */
    const char *authz = req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!r->s->auth && authz && !strncasecmp(authz, "Bearer ", 7)) {
        const char *key = authz + 7;
        while (*key == ' ') key++;
        if (!auth_key_parse(key, st->key_prefix)) {
            auth_sha256_hex(key, strlen(key), st->key_hash);
            st->check_key = 1;
            st->next_check = dt_now() + r->s->cfg.sse_recheck_s;
        }
    }
    st->last_seq = last;
    snprintf(st->job_id, sizeof st->job_id, "%.63s", r->params[0]);
    snprintf(st->owner, sizeof st->owner, "%s", r->owner);
    static const char hello[] = "retry: 2000\n: deltatune job events\n\n";
    append(st, hello, sizeof hello - 1);

    pthread_mutex_lock(&g.mu);
    int mine = 0;
    for (stream *o = g.head; o; o = o->next) mine += !strcmp(o->owner, r->owner);
    const char *why = g.stopping ? "the server is shutting down"
                    : g.n >= SSE_MAX_STREAMS ? "too many event streams are open"
                    : mine >= SSE_MAX_PER_OWNER ? "too many event streams are open for this key"
                    : NULL;
    g.recheck_s = r->s->cfg.sse_recheck_s > 0 ? r->s->cfg.sse_recheck_s : 10;
    if (!why && !g.started) {
        snprintf(g.database_url, sizeof g.database_url, "%s", r->s->cfg.database_url);
        if (pthread_create(&g.th, NULL, poller, NULL))
            why = "cannot start the event poller";
        else
            g.started = 1;
    }
    if (why) {
        int status = g.stopping ? 503 : 429;
        pthread_mutex_unlock(&g.mu);
        free(st->buf);
        free(st);
        reply_error(r, status, "too_many_streams", "stream",
                    "%s; poll GET /v1/fine_tuning/jobs/{id}/events instead", why);
        return;
    }
    st->id = ++g.next_id;
    st->next = g.head;
    g.head = st;
    g.n++;
    pthread_cond_broadcast(&g.cv); /* the first poll now, not in 0.5 s */
    pthread_mutex_unlock(&g.mu);

    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, st, sse_free);
    if (!resp) {
        sse_free(st);
        reply_error(r, 500, "internal_error", NULL, "out of memory");
        return;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    reply_mhd(r, 200, resp);
}

/* The route of GET /v1/fine_tuning/jobs/{id}/events: the paged list
 * (jobs.c), or the stream with stream=true. */
void jobs_events_route(req *r)
{
    const char *s = req_query(r, "stream");
    if (!s || !strcmp(s, "false")) { jobs_events(r); return; }
    if (strcmp(s, "true")) {
        reply_error(r, 400, "invalid_value", "stream", "stream must be true or false");
        return;
    }
    stream_events(r);
}
