/* chat.c: POST /v1/chat/completions and POST /v1/completions, answered by
 * serving workers (deltatune-worker --serve; the server never runs a
 * model).
 *
 * A request is validated (api/validate_chat.c), its model resolved for its
 * owner (another owner's model is a 404), and refused with 503 when no
 * serving worker is registered. Otherwise it is pushed on Redis's request
 * list (api/queue.h) and the HTTP thread lets go of it: the handler sets
 * on_defer, the framework suspends the connection, and one relay thread
 * takes over. The relay BLPOPs the reply lists of every open request at
 * once and turns the worker's events (worker/serve.c) into the answer:
 *
 *   - no "start" from any worker within DELTATUNE_INFER_QUEUE_WAIT: 503
 *     with Retry-After, and the request's cancel flag is set so a worker
 *     that takes it later drops it;
 *   - an "error" before any text: that status and error body;
 *   - stream false: on "done", one chat.completion / text_completion;
 *   - stream true: on "prompt", 200 with text/event-stream; then one chunk
 *     per "text" event, the final chunk (finish_reason), the usage chunk
 *     when stream_options.include_usage, and "data: [DONE]". The response's
 *     content reader suspends the connection when it has nothing to send,
 *     and the relay resumes it when text arrives (as sse.c does);
 *   - silence from the worker for DELTATUNE_INFER_SILENCE once it has
 *     started (it died, say): 503 before the stream began, or an error
 *     chunk ({"error":{...}}) that ends the stream.
 *
 * A client that goes away cancels its request: while the reply is deferred
 * the relay peeks at the suspended connection's socket (MHD does not watch
 * it) and answers 499; once a stream runs, MHD notices when the next chunk
 * cannot be written and the request's ctx_cleanup runs. Either way the
 * relay sets the cancel flag, and the worker stops before its next token. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <time.h>

#include "api/log.h"
#include "api/validate_chat.h"
#include "base/clock.h"
#include "base/id.h"
#include "chat.h"
#include "handlers.h"

#define CHAT_MAX_OPEN 256         /* requests in flight in this server at most */
#define CHAT_WORKER_LIVE_S 15     /* a serving worker heard from this recently is live */
#define CHAT_WAIT_MS 200          /* one BLPOP of the relay */

enum { P_QUEUED, P_STARTED, P_STREAMING, P_DONE };

typedef struct infer {
    int refs;                     /* the request's ctx, and the stream's response */
    char id[QUEUE_INFER_ID_LEN];  /* chatcmpl-... / cmpl-...: the reply list's name */
    req *r;                       /* while the reply is deferred; NULL once given */
    struct MHD_Connection *conn;
    int chat, stream, include_usage;
    char model[CHAT_MODEL_LEN];   /* as the client named it */
    int64_t created;              /* Unix seconds */
    int phase;
    int registered;               /* in g.head */
    double queue_deadline;        /* dt_now() past which an untaken request is a 503 */
    double heard;                 /* dt_now() of the worker's last event */
    double t0;                    /* dt_now() when it was queued */
    int got_text;                 /* a text event came */
    int queue_wait_s, silence_s;
    /* non-stream: the text so far; stream: SSE text not yet sent, buf[off..len) */
    char *buf;
    size_t off, len, cap;
    int prompt_tokens, completion_tokens;
    int logprobs;                 /* asked for: choices[].logprobs(.content) */
    size_t text_offset;           /* completions: characters before the next token */
    json_t *lp;                   /* entries not yet sent (stream) or all (not) */
    int suspended;                /* the stream's reader suspended the connection */
    int done;                     /* stream: end after the buffer */
    struct infer *next;
} infer;

typedef struct cancel_id {
    char id[QUEUE_INFER_ID_LEN];
    struct cancel_id *next;
} cancel_id;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    infer *head;
    int n;
    cancel_id *cancels;           /* requests whose cancel flag the relay sets */
    int started, stopping;
    pthread_t th;
    char redis_url[CONFIG_URL_LEN];
    /* counters for /metrics */
    uint64_t requests, tokens, cancelled, timeouts;
    uint64_t taken, first_tokens;     /* requests a worker took; that got text */
    double queue_wait_s, first_token_s; /* their sums, seconds */
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int append(infer *f, const char *text, size_t n)
{
    if (f->off && f->off == f->len) f->off = f->len = 0;
    if (f->len + n + 1 > f->cap) {
        size_t cap = f->cap ? f->cap : 1024;
        while (cap < f->len + n + 1) cap *= 2;
        char *b = realloc(f->buf, cap);
        if (!b) return -1;
        f->buf = b;
        f->cap = cap;
    }
    memcpy(f->buf + f->len, text, n);
    f->len += n;
    f->buf[f->len] = 0;
    return 0;
}

/* Drops one reference (g.mu held); the last one frees. */
static void unref(infer *f)
{
    if (--f->refs > 0) return;
    json_decref(f->lp);
    free(f->buf);
    free(f);
}

static void unlink_infer(infer *f)
{
    if (!f->registered) return;
    for (infer **p = &g.head; *p; p = &(*p)->next)
        if (*p == f) {
            *p = f->next;
            g.n--;
            break;
        }
    f->registered = 0;
}

/* Wake-ups collected under g.mu and resumed after it is released. */
typedef struct wakes {
    struct MHD_Connection *c[CHAT_MAX_OPEN + 1];
    int n;
} wakes;

static void wake(infer *f, wakes *w)
{
    if (!f->suspended || w->n >= CHAT_MAX_OPEN + 1) return;
    f->suspended = 0;
    w->c[w->n++] = f->conn;
}

static void resume_all(wakes *w)
{
    for (int i = 0; i < w->n; i++) MHD_resume_connection(w->c[i]);
    w->n = 0;
}

/* ---- answers ----------------------------------------------------------------- */

/* Gives the deferred request its reply (g.mu held): body stolen. */
static void answer(infer *f, int status, json_t *body, wakes *w)
{
    if (!f->r) {
        json_decref(body);
        return;
    }
    reply_json(f->r, status, body);
    f->r = NULL;
    f->suspended = 1; /* suspended by the framework's deferral */
    wake(f, w);
}

static void answer_error(infer *f, int status, const char *code, const char *param,
                         const char *msg, wakes *w)
{
    api_error e;
    api_errorf(&e, status, code, param, "%s", msg);
    answer(f, status, api_error_json(&e), w);
}

static json_t *usage_json(const infer *f)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", f->prompt_tokens, "completion_tokens",
                     f->completion_tokens, "total_tokens",
                     f->prompt_tokens + f->completion_tokens);
}

/* Characters (UTF-8 code points) in s. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* The legacy completions form of the worker's entries (new reference):
 * {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset},
 * offsets counted on from f->text_offset. */
static json_t *legacy_logprobs(infer *f, const json_t *entries)
{
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(),
           *offs = json_array();
    size_t i;
    const json_t *e;
    json_array_foreach(entries, i, e) {
        const char *tok = json_string_value(json_object_get(e, "token"));
        if (!tok) tok = "";
        json_array_append_new(toks, json_string(tok));
        json_array_append_new(lps, json_real(json_number_value(json_object_get(e, "logprob"))));
        json_t *top = json_object();
        size_t k;
        const json_t *t;
        json_array_foreach(json_object_get(e, "top_logprobs"), k, t) {
            const char *tt = json_string_value(json_object_get(t, "token"));
            /* two tokens may decode alike; the likelier (listed first) stays */
            if (tt && !json_object_get(top, tt))
                json_object_set_new(top, tt,
                                    json_real(json_number_value(json_object_get(t, "logprob"))));
        }
        json_array_append_new(tops, top);
        json_array_append_new(offs, json_integer((json_int_t)f->text_offset));
        f->text_offset += utf8_chars(tok);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", toks, "token_logprobs", lps,
                     "top_logprobs", tops, "text_offset", offs);
}

/* One SSE chunk: data: <chunk JSON>. choice NULL: no choices (usage). */
static void stream_chunk(infer *f, const char *text, const char *finish, int first,
                         int usage_only)
{
    json_t *c = json_pack("{s:s, s:s, s:I, s:s}", "id", f->id, "object",
                          f->chat ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)f->created, "model", f->model);
    if (!c) return;
    json_t *choices = json_array();
    if (!usage_only) {
        json_t *ch;
        if (f->chat) {
            json_t *delta = json_object();
            if (first) json_object_set_new(delta, "role", json_string("assistant"));
            if (text) json_object_set_new(delta, "content", json_string(text));
            ch = json_pack("{s:i, s:o, s:n, s:s?}", "index", 0, "delta", delta, "logprobs",
                           "finish_reason", finish);
            if (ch && f->logprobs && json_array_size(f->lp)) {
                /* the entries move to this chunk; f->lp starts again */
                json_object_set_new(ch, "logprobs", json_pack("{s:o, s:n}", "content", f->lp,
                                                              "refusal"));
                f->lp = json_array();
            }
        } else {
            ch = json_pack("{s:s, s:i, s:n, s:s?}", "text", text ? text : "", "index", 0,
                           "logprobs", "finish_reason", finish);
            if (ch && f->logprobs && json_array_size(f->lp)) {
                json_object_set_new(ch, "logprobs", legacy_logprobs(f, f->lp));
                json_array_clear(f->lp);
            }
        }
        if (!finish && ch) json_object_set_new(ch, "finish_reason", json_null());
        json_array_append_new(choices, ch);
    }
    json_object_set_new(c, "choices", choices);
    if (f->chat) json_object_set_new(c, "system_fingerprint", json_null());
    if (f->include_usage)
        json_object_set_new(c, "usage", usage_only ? usage_json(f) : json_null());
    char *s = json_dumps(c, JSON_COMPACT);
    json_decref(c);
    if (!s) return;
    append(f, "data: ", 6);
    append(f, s, strlen(s));
    append(f, "\n\n", 2);
    free(s);
}

/* ---- the stream's response ------------------------------------------------------ */

static ssize_t chat_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    infer *f = cls;
    ssize_t n = 0;
    pthread_mutex_lock(&g.mu);
    if (f->off < f->len) {
        size_t k = f->len - f->off < max ? f->len - f->off : max;
        memcpy(buf, f->buf + f->off, k);
        f->off += k;
        n = (ssize_t)k;
    } else if (f->done || g.stopping) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        f->suspended = 1;
        MHD_suspend_connection(f->conn);
    }
    pthread_mutex_unlock(&g.mu);
    return n;
}

static void chat_resp_free(void *cls)
{
    pthread_mutex_lock(&g.mu);
    unref(cls);
    pthread_mutex_unlock(&g.mu);
}

/* Starts the stream (g.mu held): 200 with the first chunk. */
static void stream_begin(infer *f, wakes *w)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, chat_read, f, chat_resp_free);
    if (!resp) {
        answer_error(f, 500, "internal_error", NULL, "out of memory", w);
        f->phase = P_DONE;
        return;
    }
    f->refs++;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    if (f->chat) stream_chunk(f, "", NULL, 1, 0);
    reply_mhd(f->r, 200, resp);
    f->r = NULL;
    f->suspended = 1;
    wake(f, w);
    f->phase = P_STREAMING;
}

/* Ends a request with an error (g.mu held): its status before the stream
 * began, an error chunk after. */
static void fail(infer *f, int status, const char *code, const char *msg, wakes *w)
{
    if (f->phase == P_STREAMING) {
        api_error e;
        api_errorf(&e, status, code, NULL, "%s", msg);
        json_t *j = api_error_json(&e);
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (s) {
            append(f, "data: ", 6);
            append(f, s, strlen(s));
            append(f, "\n\n", 2);
        }
        free(s);
        f->done = 1;
        wake(f, w);
    } else {
        answer_error(f, status, code, NULL, msg, w);
    }
    f->phase = P_DONE;
}

/* One event of the worker (g.mu held). */
static void on_event(infer *f, json_t *ev, wakes *w)
{
    const char *t = json_string_value(json_object_get(ev, "t"));
    f->heard = dt_now();
    if (!t || f->phase == P_DONE) return;
    if (!strcmp(t, "start")) {
        if (f->phase == P_QUEUED) {
            f->phase = P_STARTED;
            g.taken++;
            g.queue_wait_s += f->heard - f->t0;
        }
    } else if (!strcmp(t, "prompt")) {
        f->prompt_tokens = (int)json_integer_value(json_object_get(ev, "prompt_tokens"));
        if (f->stream && f->phase != P_STREAMING) stream_begin(f, w);
        else if (f->phase == P_QUEUED) f->phase = P_STARTED;
    } else if (!strcmp(t, "lp")) {
        json_t *entry = json_object_get(ev, "entry");
        if (f->logprobs && entry) json_array_append(f->lp, entry);
    } else if (!strcmp(t, "text")) {
        const char *text = json_string_value(json_object_get(ev, "text"));
        if (!text) return;
        g.tokens++;
        if (!f->got_text) {
            f->got_text = 1;
            g.first_tokens++;
            g.first_token_s += f->heard - f->t0;
        }
        if (f->stream) {
            stream_chunk(f, text, NULL, 0, 0);
            wake(f, w);
        } else {
            append(f, text, strlen(text));
        }
    } else if (!strcmp(t, "done")) {
        const char *finish = json_string_value(json_object_get(ev, "finish_reason"));
        f->prompt_tokens = (int)json_integer_value(json_object_get(ev, "prompt_tokens"));
        f->completion_tokens = (int)json_integer_value(json_object_get(ev, "completion_tokens"));
        if (!finish) finish = "stop";
        if (f->stream) {
            if (f->phase != P_STREAMING) stream_begin(f, w);
            stream_chunk(f, NULL, finish, 0, 0);
            if (f->include_usage) stream_chunk(f, NULL, NULL, 0, 1);
            append(f, "data: [DONE]\n\n", 14);
            f->done = 1;
            wake(f, w);
        } else {
            json_t *choice = f->chat
                ? json_pack("{s:i, s:{s:s, s:s, s:n}, s:n, s:s}", "index", 0, "message", "role",
                            "assistant", "content", f->buf ? f->buf : "", "refusal",
                            "logprobs", "finish_reason", finish)
                : json_pack("{s:s, s:i, s:n, s:s}", "text", f->buf ? f->buf : "", "index", 0,
                            "logprobs", "finish_reason", finish);
            json_t *body = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", f->id, "object",
                                     f->chat ? "chat.completion" : "text_completion", "created",
                                     (json_int_t)f->created, "model", f->model, "choices",
                                     choice, "usage", usage_json(f));
            if (body && f->chat) json_object_set_new(body, "system_fingerprint", json_null());
            if (choice && f->logprobs)
                json_object_set_new(choice, "logprobs",
                                    f->chat ? json_pack("{s:O, s:n}", "content", f->lp, "refusal")
                                            : legacy_logprobs(f, f->lp));
            if (body) answer(f, 200, body, w);
            else answer_error(f, 500, "internal_error", NULL, "out of memory", w);
        }
        f->phase = P_DONE;
    } else if (!strcmp(t, "error")) {
        int status = (int)json_integer_value(json_object_get(ev, "status"));
        const char *code = json_string_value(json_object_get(ev, "code"));
        const char *param = json_string_value(json_object_get(ev, "param"));
        const char *msg = json_string_value(json_object_get(ev, "message"));
        if (status < 400 || status > 599) status = 500;
        if (f->phase == P_STREAMING) {
            fail(f, status, code ? code : "generation_failed", msg ? msg : "generation failed",
                 w);
        } else {
            answer_error(f, status, code ? code : "generation_failed", param,
                         msg ? msg : "generation failed", w);
            f->phase = P_DONE;
        }
    }
}

/* ---- the relay ------------------------------------------------------------------ */

/* Whether the client of a deferred request closed its connection (g.mu
 * held). MHD does not watch a suspended connection's socket, so the relay
 * peeks at it: end of stream means the client went away. */
static int client_gone(infer *f)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(f->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    char c;
    ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void *relay(void *arg)
{
    queue *q = NULL;
    char err[DT_ERR_LEN];
    static wakes w;
    if (queue_open(&q, g.redis_url, err)) {
        log_msg(DT_LOG_ERROR, "chat.relay", "%s", err);
        q = NULL;
    }
    pthread_mutex_lock(&g.mu);
    while (!g.stopping) {
        /* Cancel flags first (requests whose client went away or timed out). */
        while (g.cancels) {
            cancel_id *c = g.cancels;
            g.cancels = c->next;
            pthread_mutex_unlock(&g.mu);
            if (q && queue_cancel_set(q, c->id, err))
                log_msg(DT_LOG_WARN, "chat.cancel_failed", "%s: %s", c->id, err);
            free(c);
            pthread_mutex_lock(&g.mu);
        }
        int n = 0;
        for (infer *f = g.head; f; f = f->next) n += f->phase != P_DONE;
        if (!n) {
            struct timespec until;
            dt_deadline(&until, 1.0);
            pthread_cond_timedwait(&g.cv, &g.mu, &until);
            continue;
        }
        char (*ids)[QUEUE_INFER_ID_LEN] = calloc((size_t)n, sizeof *ids);
        const char **idp = calloc((size_t)n, sizeof *idp);
        int k = 0;
        for (infer *f = g.head; ids && idp && f && k < n; f = f->next)
            if (f->phase != P_DONE) {
                memcpy(ids[k], f->id, sizeof ids[k]);
                idp[k] = ids[k];
                k++;
            }
        pthread_mutex_unlock(&g.mu);
        char id[QUEUE_INFER_ID_LEN], *text = NULL;
        int rc = q && k ? queue_reply_wait(q, idp, k, CHAT_WAIT_MS, id, &text, err) : DT_EIO;
        free(ids);
        free(idp);
        if (rc < 0) {
            log_msg(DT_LOG_DEBUG, "chat.relay", "%s", q ? err : "no Redis handle");
            struct timespec ts = {0, CHAT_WAIT_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
        json_t *ev = text ? json_loads(text, 0, NULL) : NULL;
        free(text);
        pthread_mutex_lock(&g.mu);
        if (ev) {
            for (infer *f = g.head; f; f = f->next)
                if (!strcmp(f->id, id)) {
                    on_event(f, ev, &w);
                    break;
                }
            json_decref(ev);
        }
        double now = dt_now();
        for (infer *f = g.head; f; f = f->next) {
            if (f->r && f->phase != P_DONE && client_gone(f)) {
                /* nobody reads the answer: the worker stops, the reply
                 * (499, as the framework counts a client gone) resumes
                 * the connection so that MHD closes it */
                log_msg(DT_LOG_INFO, "chat.cancelled", "%s: the client went away", f->id);
                g.cancelled++;
                answer_error(f, 499, "client_closed_request", NULL, "the client went away", &w);
                f->phase = P_DONE;
                cancel_id *c = calloc(1, sizeof *c);
                if (c) {
                    memcpy(c->id, f->id, sizeof c->id);
                    c->next = g.cancels;
                    g.cancels = c;
                }
                continue;
            }
            if (f->phase == P_QUEUED && now > f->queue_deadline) {
                char msg[256];
                snprintf(msg, sizeof msg, "no serving worker took the request within %d s; "
                         "retry later", f->queue_wait_s);
                fail(f, 503, "no_worker_available", msg, &w);
                g.timeouts++;
                cancel_id *c = calloc(1, sizeof *c);
                if (c) {
                    memcpy(c->id, f->id, sizeof c->id);
                    c->next = g.cancels;
                    g.cancels = c;
                }
            } else if ((f->phase == P_STARTED || f->phase == P_STREAMING) &&
                       now - f->heard > f->silence_s) {
                char msg[256];
                snprintf(msg, sizeof msg, "the serving worker stopped answering (nothing for "
                         "%d s); retry", f->silence_s);
                fail(f, 503, "worker_lost", msg, &w);
                g.timeouts++;
            }
        }
        pthread_mutex_unlock(&g.mu);
        resume_all(&w);
        pthread_mutex_lock(&g.mu);
    }
    pthread_mutex_unlock(&g.mu);
    queue_free(q);
    return NULL;
}

void chat_shutdown(server *s)
{
    static wakes w;
    pthread_mutex_lock(&g.mu);
    g.stopping = 1;
    int started = g.started;
    g.started = 0;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    if (started) pthread_join(g.th, NULL);
    pthread_mutex_lock(&g.mu);
    for (infer *f = g.head; f; f = f->next) {
        if (f->r) answer_error(f, 503, "service_unavailable", NULL,
                               "the server is shutting down", &w);
        else wake(f, &w);
        f->phase = P_DONE;
    }
    pthread_mutex_unlock(&g.mu);
    resume_all(&w);
}

void chat_counters(chat_stats *out)
{
    pthread_mutex_lock(&g.mu);
    out->requests = g.requests;
    out->tokens = g.tokens;
    out->cancelled = g.cancelled;
    out->timeouts = g.timeouts;
    out->open = g.n;
    out->started = g.taken;
    out->first_tokens = g.first_tokens;
    out->queue_wait_s = g.queue_wait_s;
    out->first_token_s = g.first_token_s;
    pthread_mutex_unlock(&g.mu);
}

/* ---- the request's life in the framework ----------------------------------------- */

/* on_defer: the relay takes the request over. */
static void chat_defer(req *r)
{
    infer *f = r->ctx;
    pthread_mutex_lock(&g.mu);
    f->next = g.head;
    g.head = f;
    g.n++;
    f->registered = 1;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
}

/* ctx_cleanup: the request ended (answered, or the client went away). */
static void chat_cleanup(req *r)
{
    infer *f = r->ctx;
    if (!f) return;
    pthread_mutex_lock(&g.mu);
    f->r = NULL;
    if (f->phase != P_DONE) {
        cancel_id *c = calloc(1, sizeof *c);
        if (c) {
            memcpy(c->id, f->id, sizeof c->id);
            c->next = g.cancels;
            g.cancels = c;
        }
        g.cancelled++;
        f->phase = P_DONE;
        log_msg(DT_LOG_INFO, "chat.cancelled", "%s: the client went away", f->id);
    }
    unlink_infer(f);
    unref(f); /* the ctx's reference; a stream's response may hold another */
    r->ctx = NULL;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
}

static void handle(req *r, int chat)
{
    char err[DT_ERR_LEN];
    api_error e;
    chat_req cr;
    json_t *body = req_json(r);
    if (!body) return;
    int rc = validate_chat(body, chat, r->s->cfg.infer_max_tokens, &cr, &e);
    json_decref(body);
    if (rc) {
        reply_apierr(r, &e);
        return;
    }
    db *d = req_db(r);
    if (!d) goto out;
    db_model m;
    rc = db_model_get(d, r->owner, cr.model, &m, err);
    if (rc == DB_ENOTFOUND) {
        reply_error(r, 404, "model_not_found", "model", "The model '%s' does not exist or you "
                    "do not have access to it.", cr.model);
        goto out;
    }
    if (rc) {
        reply_db(r, rc, err);
        goto out;
    }
    /* A checkpoint serves through its merged model (an hf export, or built
     * when a job trained on it). */
    if (!strcmp(m.kind, "checkpoint")) {
        char full[DB_PATH_LEN + 32];
        struct stat st;
        size_t pl = strlen(m.path);
        if (pl + 8 >= sizeof m.path ||
            config_artifact_path(&r->s->cfg, m.path, full, sizeof full - 32) ||
            (strcat(full, "/merged/config.json"), stat(full, &st))) {
            reply_error(r, 400, "model_not_ready", "model", "checkpoint %.200s has no merged "
                        "model yet: build it with POST /v1/models/{id}/exports "
                        "{\"format\": \"hf\"} and try again when the export has succeeded",
                        cr.model);
            goto out;
        }
        memcpy(m.path + pl, "/merged", 8);
    }
    int live = 0;
    if ((rc = db_workers_serving(d, CHAT_WORKER_LIVE_S, &live, err))) {
        reply_db(r, rc, err);
        goto out;
    }
    req_db_release(r);
    if (!live) {
        reply_error(r, 503, "no_serving_worker", NULL, "no serving worker is registered: start "
                    "one with deltatune-worker --serve");
        goto out;
    }
    infer *f = calloc(1, sizeof *f);
    if (!f || dt_id_new(chat ? "chatcmpl-" : "cmpl-", f->id, sizeof f->id)) {
        free(f);
        reply_error(r, 500, "internal_error", NULL, "out of memory");
        goto out;
    }
    f->refs = 1;
    f->conn = r->conn;
    f->r = r;
    f->chat = chat;
    f->stream = cr.stream;
    f->include_usage = cr.include_usage;
    f->logprobs = json_is_true(json_object_get(cr.work, "logprobs"));
    if (!chat && json_is_string(json_object_get(cr.work, "prompt")))
        f->text_offset = utf8_chars(json_string_value(json_object_get(cr.work, "prompt")));
    f->lp = json_array();
    snprintf(f->model, sizeof f->model, "%s", cr.model);
    f->created = (int64_t)time(NULL);
    f->queue_wait_s = r->s->cfg.infer_queue_wait_s;
    f->silence_s = r->s->cfg.infer_silence_s;
    f->queue_deadline = dt_now() + f->queue_wait_s;
    f->heard = f->t0 = dt_now();

    json_object_set_new(cr.work, "id", json_string(f->id));
    json_object_set_new(cr.work, "model", json_string(m.path));
    json_object_set_new(cr.work, "model_id", json_string(m.id));
    json_object_set_new(cr.work, "max_tokens_cap", json_integer(r->s->cfg.infer_max_tokens));
    char *text = json_dumps(cr.work, JSON_COMPACT);

    pthread_mutex_lock(&g.mu);
    const char *why = g.stopping ? "the server is shutting down"
                    : g.n >= CHAT_MAX_OPEN ? "too many requests are in flight" : NULL;
    if (!why && !g.started) {
        snprintf(g.redis_url, sizeof g.redis_url, "%s", r->s->cfg.redis_url);
        if (pthread_create(&g.th, NULL, relay, NULL)) why = "cannot start the relay";
        else g.started = 1;
    }
    if (!why) g.requests++;
    pthread_mutex_unlock(&g.mu);
    if (why || !text) {
        free(text);
        json_decref(f->lp);
        free(f);
        reply_error(r, 503, "service_unavailable", NULL, "%s; retry shortly",
                    why ? why : "out of memory");
        goto out;
    }
    rc = queue_infer_push(r->s->q, text, err);
    free(text);
    if (rc) {
        json_decref(f->lp);
        free(f);
        log_msg(DT_LOG_WARN, "chat.queue", "%s", err);
        reply_error(r, 503, "service_unavailable", NULL, "the request queue (Redis) is "
                    "unavailable; retry shortly");
        goto out;
    }
    r->ctx = f;
    r->ctx_cleanup = chat_cleanup;
    r->on_defer = chat_defer;
out:
    chat_req_clear(&cr);
}

void chat_completions(req *r) { handle(r, 1); }
void completions(req *r) { handle(r, 0); }
