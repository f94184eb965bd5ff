/* serve.c: deltatune-worker --serve, the serving loop of a worker that runs
 * chat and completion requests (issue 17).
 *
 * The worker registers in PostgreSQL as kind 'serve' (migration 0009) and
 * keeps its row fresh from a heartbeat thread, so the server knows whether
 * any serving worker is alive. Its main thread BRPOPs requests from Redis
 * (queue.h: QUEUE_INFER_KEY), one at a time, and answers each on the
 * request's reply list with events, JSON objects with a "t" field:
 *
 *   {"t":"start","worker":ID}                      taken (ends the queue wait)
 *   {"t":"prompt","prompt_tokens":N,"max_tokens":M} prompt ready, decoding
 *   {"t":"lp","entry":{token, logprob, bytes, top_logprobs}}
 *                                                  a token's log probability
 *                                                  (logprobs asked), before its text
 *   {"t":"text","text":"..."}                      new text (valid UTF-8)
 *   {"t":"done","finish_reason":"stop"|"length","prompt_tokens":N,
 *    "completion_tokens":K}
 *   {"t":"error","status":S,"code":C,"param":P,"message":M}
 *
 * Request JSON (made by server/chat.c): id, model (the model's stored path:
 * relative paths resolve under this worker's artifact root), kind ("chat" |
 * "completion"), messages or prompt, max_tokens (0: what the context
 * leaves, capped by max_tokens_cap), temperature, top_p, seed, stop (list).
 *
 * Loaded models stay loaded (weights on the device, tokenizer, a KV-cached
 * decoder) in a least-recently-used set within --memory-limit: a model that
 * does not fit next to the others evicts the least recently used first.
 * Between tokens the worker looks at the request's cancel flag (set by the
 * server when the client went away or waited too long) and stops. */
#include "serve.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "api/db.h"
#include "api/log.h"
#include "api/queue.h"
#include "base/clock.h"
#include "base/dt.h"
#include "base/random.h"
#include "gpu/engine_api.h"
#include "gpu/generate.h"
#include "gpu/model.h"
#include "gpu/tokenizer.h"
#include "glue.h"

#define SV_MAX_MODELS 16
#define SV_MAX_CTX 4096          /* positions of one decoder's KV cache at most */
#define SV_HEARTBEAT_S 2         /* seconds between heartbeats */

/* One loaded model. */
typedef struct sv_model {
    char key[DB_PATH_LEN];       /* the stored path it was asked by */
    dt_model *m;
    dt_tokenizer *tok;
    dt_decoder *d;
    dt_weights w;                /* names and config (host data released) */
    int ctx;                     /* positions of the decoder's cache */
    long long bytes;             /* weights + cache + activations, estimated */
    double used;                 /* dt_now() of the last request */
} sv_model;

typedef struct sv {
    const wk_opts *o;
    char hostname[256];
    dt_backend *be;
    queue *q;
    sv_model models[SV_MAX_MODELS];
    int nmodels;
    long long limit;             /* memory budget for loaded models (bytes) */
    /* heartbeat thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int quit;
} sv;

static volatile sig_atomic_t g_quit;

static void on_signal(int sig)
{
    (void)sig;
    g_quit = 1;
}

/* ---- registration ---------------------------------------------------------------- */

static void *heartbeat_main(void *arg)
{
    sv *s = arg;
    db *d = NULL;
    char err[DT_ERR_LEN];
    pthread_mutex_lock(&s->mu);
    while (!s->quit) {
        pthread_mutex_unlock(&s->mu);
        if (!d && db_connect(&d, s->o->cfg.database_url, err)) {
            log_msg(DT_LOG_WARN, "serve.db_failed", "%s", err);
            d = NULL;
        }
        if (d && db_worker_serve_heartbeat(d, s->o->worker_id, s->hostname, s->o->device,
                                           "serving", s->limit, err)) {
            log_msg(DT_LOG_WARN, "serve.heartbeat_failed", "%s", err);
            db_free(d);
            d = NULL;
        }
        pthread_mutex_lock(&s->mu);
        struct timespec until;
        dt_deadline(&until, SV_HEARTBEAT_S);
        if (!s->quit) pthread_cond_timedwait(&s->cv, &s->mu, &until);
    }
    pthread_mutex_unlock(&s->mu);
    if (!d && db_connect(&d, s->o->cfg.database_url, err)) d = NULL;
    if (d) db_worker_serve_heartbeat(d, s->o->worker_id, s->hostname, s->o->device, "stopped",
                                     s->limit, err);
    db_free(d);
    return NULL;
}

/* ---- events ---------------------------------------------------------------------- */

/* Sends one event (steals ev). */
static void emit(sv *s, const char *id, json_t *ev)
{
    char err[DT_ERR_LEN];
    char *text = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    json_decref(ev);
    if (!text || queue_reply_push(s->q, id, text, err))
        log_msg(DT_LOG_WARN, "serve.reply_failed", "%s: %s", id, text ? err : "out of memory");
    free(text);
}

static void emit_error(sv *s, const char *id, int status, const char *code, const char *param,
                       const char *message)
{
    emit(s, id, json_pack("{s:s, s:i, s:s, s:s?, s:s}", "t", "error", "status", status, "code",
                          code, "param", param, "message", message));
}

/* ---- UTF-8 ----------------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s[0..n) (1..4); 0 when it is
 * a valid but incomplete prefix that ends at n; -k when s starts with an
 * ill-formed sequence whose maximal valid prefix is k bytes (k >= 1): one
 * U+FFFD replaces it, as Python's errors="replace" and Rust's
 * from_utf8_lossy do. */
static int utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    int len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return -1;
    }
    for (int k = 1; k < len; k++) {
        if ((size_t)k >= n) return 0;
        unsigned b = s[k];
        unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (b < l || b > h) return -k;
    }
    return len;
}

/* Valid UTF-8 of raw[0..n) into a new string: ill-formed sequences become
 * U+FFFD. *used: bytes consumed; an incomplete sequence at the end is left
 * unconsumed unless final. */
static char *utf8_clean(const char *raw, size_t n, int final, size_t *used)
{
    char *out = malloc(n * 3 + 1);
    size_t i = 0, o = 0;
    if (!out) return NULL;
    while (i < n) {
        int k = utf8_seq((const unsigned char *)raw + i, n - i);
        if (k == 0 && !final) break;
        if (k > 0) {
            memcpy(out + o, raw + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += k == 0 ? n - i : (size_t)-k;
        }
    }
    out[o] = 0;
    *used = i;
    return out;
}

/* ---- models ---------------------------------------------------------------------- */

static void model_unload(sv_model *m)
{
    dt_decoder_free(m->d);
    dt_model_free(m->m);
    dt_tokenizer_free(m->tok);
    dt_weights_free(&m->w);
    memset(m, 0, sizeof *m);
}

/* The loaded model for a stored path, loading it (and evicting the least
 * recently used ones that leave it no room) when needed. NULL with err set
 * (*status: 400 for a model that cannot be served, 503 when it does not fit). */
static sv_model *model_get(sv *s, const char *stored, int *status, char *err)
{
    for (int i = 0; i < s->nmodels; i++)
        if (!strcmp(s->models[i].key, stored)) {
            s->models[i].used = dt_now();
            return &s->models[i];
        }
    char path[DB_PATH_LEN];
    *status = 500;
    if (config_artifact_path(&s->o->cfg, stored, path, sizeof path)) {
        dt_errf(err, DT_EINVAL, "model path too long");
        return NULL;
    }
    sv_model nm;
    memset(&nm, 0, sizeof nm);
    dt_weights *w = &nm.w;
    double t0 = dt_now();
    if (dt_weights_load(path, w, err)) goto fail;
    if (!(nm.tok = dt_model_tokenizer(path, err))) goto fail;
    nm.ctx = w->cfg.max_pos > 0 && w->cfg.max_pos < SV_MAX_CTX ? w->cfg.max_pos : SV_MAX_CTX;
    long long weights = 0;
    for (int i = 0; i < w->ts.n; i++) weights += w->ts.t[i].numel * 4;
    long long kv = 2LL * w->cfg.n_layer * nm.ctx * w->cfg.n_kv_head * w->cfg.head_dim * 4;
    long long act = 256LL * (w->cfg.d_model * 8 + w->cfg.d_ff * 3) * 4 + (long long)w->cfg.vocab * 8;
    nm.bytes = weights + kv + act;
    if (nm.bytes > s->limit) {
        char need[32], lim[32];
        dt_mem_human(nm.bytes, need, sizeof need);
        dt_mem_human(s->limit, lim, sizeof lim);
        dt_errf(err, DT_ENOMEM, "the model needs %s, more than this serving worker's "
                "memory limit of %s", need, lim);
        *status = 503;
        goto fail;
    }
    /* Room first: the least recently used models go. */
    for (;;) {
        long long held = 0;
        int lru = -1;
        for (int i = 0; i < s->nmodels; i++) {
            held += s->models[i].bytes;
            if (lru < 0 || s->models[i].used < s->models[lru].used) lru = i;
        }
        if (lru < 0 || (held + nm.bytes <= s->limit && s->nmodels < SV_MAX_MODELS)) break;
        log_msg(DT_LOG_INFO, "serve.evict", "%s: unloaded (least recently used)",
                s->models[lru].key);
        model_unload(&s->models[lru]);
        s->models[lru] = s->models[--s->nmodels];
    }
    dt_lora_opts lo = {DT_LORA, 0, 0.0f, 0, DT_PREC_AUTO, 0, 0.0f}; /* as deltatune generate */
    w->release_on_upload = 1; /* no second host copy while uploading */
    if (dt_model_new(s->be, w, &lo, 1, nm.ctx < 256 ? nm.ctx : 256, 0, &nm.m, err) ||
        dt_decoder_new(nm.m, nm.ctx, &nm.d, err))
        goto fail;
    dt_weights_release_data(w);
    snprintf(nm.key, sizeof nm.key, "%s", stored);
    nm.used = dt_now();
    s->models[s->nmodels] = nm;
    log_msg(DT_LOG_INFO, "serve.load", "%s: loaded in %.2f s (%lld bytes, context %d)", stored,
            dt_now() - t0, nm.bytes, nm.ctx);
    return &s->models[s->nmodels++];
fail:
    model_unload(&nm);
    return NULL;
}

/* ---- log probabilities --------------------------------------------------------- */

/* {"token", "logprob", "bytes"} of token id, whose logit is x, under a
 * log-sum-exp of lse (new reference). The token's text is its decoded bytes
 * made valid UTF-8; "bytes" are those bytes, as OpenAI gives them. */
static json_t *lp_item(const dt_tokenizer *tok, int32_t id, float x, double lse)
{
    char *raw = dt_tokenizer_decode(tok, &id, 1);
    size_t used, n = raw ? strlen(raw) : 0;
    char *text = raw ? utf8_clean(raw, n, 1, &used) : NULL;
    json_t *bytes = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(bytes, json_integer((unsigned char)raw[i]));
    json_t *o = json_pack("{s:s, s:f, s:o}", "token", text ? text : "", "logprob",
                          (double)x - lse, "bytes", bytes);
    free(raw);
    free(text);
    return o;
}

/* The log-probability entry of the chosen token `next` from the raw logits
 * (V) of its step: the model's own distribution (temperature 1), and the k
 * most likely tokens (highest first, lowest id on ties). New reference. */
static json_t *lp_entry(const dt_tokenizer *tok, const float *logits, int V, int32_t next,
                        int k)
{
    float mx = logits[0];
    for (int j = 1; j < V; j++) if (logits[j] > mx) mx = logits[j];
    double sum = 0;
    for (int j = 0; j < V; j++) sum += exp((double)logits[j] - mx);
    double lse = mx + log(sum);
    json_t *e = lp_item(tok, next, logits[next], lse);
    json_t *top = json_array();
    int32_t best[20];
    int nb = 0;
    for (int j = 0; j < V && k > 0; j++) {
        /* insertion into the sorted best-k list */
        int pos = nb;
        while (pos > 0 && logits[best[pos - 1]] < logits[j]) pos--;
        if (pos >= k) continue;
        if (nb < k) nb++;
        memmove(best + pos + 1, best + pos, (size_t)(nb - 1 - pos) * sizeof *best);
        best[pos] = j;
    }
    for (int i = 0; i < nb; i++) json_array_append_new(top, lp_item(tok, best[i], logits[best[i]], lse));
    json_object_set_new(e, "top_logprobs", top);
    return e;
}

/* ---- one request ----------------------------------------------------------------- */

typedef struct sv_req {
    char id[QUEUE_INFER_ID_LEN];
    const char *model, *kind;
    json_t *messages;            /* borrowed from the request object */
    const char *prompt;
    int max_tokens, max_cap;
    double temperature, top_p;
    uint64_t seed;
    const char *stop[5];         /* NULL-terminated */
    int logprobs, top_logprobs;  /* chat: report each token's log probability */
} sv_req;

static uint64_t random_seed(void)
{
    uint64_t v = 0;
    if (dt_random_bytes(&v, sizeof v)) v = (uint64_t)(dt_now() * 1e9);
    return v;
}

static int parse_request(json_t *j, sv_req *r)
{
    memset(r, 0, sizeof *r);
    const char *id = json_string_value(json_object_get(j, "id"));
    r->model = json_string_value(json_object_get(j, "model"));
    r->kind = json_string_value(json_object_get(j, "kind"));
    if (!id || !r->model || !r->kind || strlen(id) >= sizeof r->id) return -1;
    snprintf(r->id, sizeof r->id, "%s", id);
    r->messages = json_object_get(j, "messages");
    r->prompt = json_string_value(json_object_get(j, "prompt"));
    if (!strcmp(r->kind, "chat") ? !json_is_array(r->messages) : !r->prompt) return -1;
    r->max_tokens = (int)json_integer_value(json_object_get(j, "max_tokens"));
    r->max_cap = (int)json_integer_value(json_object_get(j, "max_tokens_cap"));
    if (r->max_cap < 1) r->max_cap = 4096;
    json_t *t = json_object_get(j, "temperature");
    r->temperature = json_is_number(t) ? json_number_value(t) : 1.0;
    t = json_object_get(j, "top_p");
    r->top_p = json_is_number(t) ? json_number_value(t) : 1.0;
    t = json_object_get(j, "seed");
    r->seed = json_is_integer(t) ? (uint64_t)json_integer_value(t) : random_seed();
    r->logprobs = json_is_true(json_object_get(j, "logprobs"));
    r->top_logprobs = (int)json_integer_value(json_object_get(j, "top_logprobs"));
    if (r->top_logprobs < 0) r->top_logprobs = 0;
    if (r->top_logprobs > 20) r->top_logprobs = 20;
    json_t *stop = json_object_get(j, "stop");
    for (size_t i = 0; i < json_array_size(stop) && i < 4; i++)
        r->stop[i] = json_string_value(json_array_get(stop, i));
    return 0;
}

/* Where the text of the output stands: raw is the decoded text of every
 * new token; text up to `safe` may go out (no stop string can start before
 * it); *hit is set with safe at the stop string's start when one occurs. */
static size_t stop_scan(const sv_req *r, const char *raw, size_t n, int *hit)
{
    size_t safe = n;
    *hit = 0;
    for (int i = 0; r->stop[i]; i++) {
        const char *p = r->stop[i][0] ? strstr(raw, r->stop[i]) : NULL;
        if (p && (size_t)(p - raw) <= safe) {
            safe = (size_t)(p - raw);
            *hit = 1;
        }
    }
    if (*hit) return safe;
    /* Hold back a tail that may be the start of a stop string. */
    for (int i = 0; r->stop[i]; i++) {
        size_t l = strlen(r->stop[i]);
        for (size_t k = l > 1 ? l - 1 : 0; k > 0; k--)
            if (k <= n && !memcmp(raw + n - k, r->stop[i], k)) {
                if (n - k < safe) safe = n - k;
                break;
            }
    }
    return safe;
}

static void serve_one(sv *s, json_t *j)
{
    char err[DT_ERR_LEN] = "";
    sv_req r;
    if (parse_request(j, &r)) {
        const char *id = json_string_value(json_object_get(j, "id"));
        log_msg(DT_LOG_WARN, "serve.bad_request", "a request without id, model or input");
        if (id && strlen(id) < QUEUE_INFER_ID_LEN)
            emit_error(s, id, 500, "internal_error", NULL, "malformed request");
        return;
    }
    int cancelled = 0;
    if (!queue_cancel_get(s->q, r.id, &cancelled, err) && cancelled) {
        log_msg(DT_LOG_INFO, "serve.skipped", "%s: cancelled before it started", r.id);
        return;
    }
    double t0 = dt_now();
    emit(s, r.id, json_pack("{s:s, s:s}", "t", "start", "worker", s->o->worker_id));
    int status = 500;
    sv_model *m = model_get(s, r.model, &status, err);
    if (!m) {
        log_msg(DT_LOG_WARN, "serve.load_failed", "%s: %s", r.model, err);
        emit_error(s, r.id, status, status == 503 ? "model_too_large" : "model_unavailable",
                   "model", err);
        return;
    }
    int32_t *prompt = NULL, *out = NULL;
    char *raw = NULL;
    float *logits = NULL, *raw_logits = NULL;
    int np = 0, rc;
    int chat = !strcmp(r.kind, "chat");
    if (chat)
        rc = dt_chat_prompt(m->tok, r.messages, &prompt, &np, err);
    else
        rc = dt_tokenizer_encode(m->tok, r.prompt, strlen(r.prompt),
                                 DT_TOK_SPECIAL | DT_TOK_ADD, &prompt, &np, err);
    const char *pparam = chat ? "messages" : "prompt";
    if (rc) {
        emit_error(s, r.id, 400, "invalid_value", pparam, err);
        goto done;
    }
    if (np < 1) {
        emit_error(s, r.id, 400, "invalid_value", pparam, "the prompt is empty");
        goto done;
    }
    if (np >= m->ctx) {
        snprintf(err, sizeof err, "the prompt has %d tokens; this model's context is %d", np,
                 m->ctx);
        emit_error(s, r.id, 400, "context_length_exceeded", pparam, err);
        goto done;
    }
    int left = m->ctx - np;
    int max = r.max_tokens;
    if (max > left) {
        snprintf(err, sizeof err, "the prompt (%d tokens) and max_tokens (%d) exceed this "
                 "model's context of %d", np, max, m->ctx);
        emit_error(s, r.id, 400, "context_length_exceeded", "max_tokens", err);
        goto done;
    }
    if (max <= 0) max = left < r.max_cap ? left : r.max_cap;
    emit(s, r.id, json_pack("{s:s, s:i, s:i}", "t", "prompt", "prompt_tokens", np,
                            "max_tokens", max));

    int V = dt_model_config(m->m)->vocab;
    int32_t eos = dt_tokenizer_eos(m->tok), eot = chat ? dt_chat_end_token(m->tok) : -1;
    logits = malloc((size_t)V * sizeof *logits);
    if (r.logprobs && !(raw_logits = malloc((size_t)V * sizeof *raw_logits))) {
        emit_error(s, r.id, 500, "internal_error", NULL, "out of memory");
        goto done;
    }
    out = malloc((size_t)max * sizeof *out);
    if (!logits || !out) {
        emit_error(s, r.id, 500, "internal_error", NULL, "out of memory");
        goto done;
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ r.seed;
    const char *finish = "length";
    size_t sent = 0;
    int k = 0, hit = 0;
    double first = 0;
    dt_decoder_reset(m->d);
    rc = dt_decoder_feed(m->d, prompt, np, logits, err);
    while (!rc && k < max) {
        if (raw_logits) memcpy(raw_logits, logits, (size_t)V * sizeof *logits);
        int32_t next = dt_sample(logits, V, (float)r.temperature, (float)r.top_p, &rng);
        if (next == eos || (eot >= 0 && next == eot)) {
            finish = "stop";
            break;
        }
        if (raw_logits)
            emit(s, r.id, json_pack("{s:s, s:o}", "t", "lp", "entry",
                                    lp_entry(m->tok, raw_logits, V, next, r.top_logprobs)));
        out[k++] = next;
        if (!first) first = dt_now() - t0;
        free(raw);
        raw = dt_tokenizer_decode(m->tok, out, k);
        if (!raw) { rc = dt_errf(err, DT_ENOMEM, "out of memory"); break; }
        size_t n = strlen(raw), used = 0;
        size_t safe = stop_scan(&r, raw, n, &hit);
        if (safe > sent) {
            char *text = utf8_clean(raw + sent, safe - sent, hit, &used);
            if (text && *text)
                emit(s, r.id, json_pack("{s:s, s:s}", "t", "text", "text", text));
            free(text);
            sent += used;
        }
        if (hit) {
            finish = "stop";
            break;
        }
        if (s->o->token_delay_ms > 0) usleep((useconds_t)s->o->token_delay_ms * 1000u);
        if (!queue_cancel_get(s->q, r.id, &cancelled, err) && cancelled) break;
        if (k < max) rc = dt_decoder_feed(m->d, &next, 1, logits, err);
    }
    if (rc) {
        log_msg(DT_LOG_WARN, "serve.failed", "%s: %s", r.id, err);
        emit_error(s, r.id, 500, "generation_failed", NULL, err);
        goto done;
    }
    if (cancelled) {
        log_msg(DT_LOG_INFO, "serve.cancelled", "%s: cancelled after %d of at most %d tokens",
                r.id, k, max);
        goto done;
    }
    if (!hit && raw && strlen(raw) > sent) { /* the held-back tail */
        size_t used;
        char *text = utf8_clean(raw + sent, strlen(raw) - sent, 1, &used);
        if (text && *text) emit(s, r.id, json_pack("{s:s, s:s}", "t", "text", "text", text));
        free(text);
    }
    emit(s, r.id, json_pack("{s:s, s:s, s:i, s:i}", "t", "done", "finish_reason", finish,
                            "prompt_tokens", np, "completion_tokens", k));
    log_json(DT_LOG_INFO, "serve.done",
             json_pack("{s:s, s:s, s:i, s:i, s:s, s:f, s:f}", "id", r.id, "model", r.model,
                       "prompt_tokens", np, "completion_tokens", k, "finish_reason", finish,
                       "first_token_seconds", first, "seconds", dt_now() - t0));
done:
    free(raw);
    free(out);
    free(logits);
    free(raw_logits);
    free(prompt);
}

/* ---- the loop -------------------------------------------------------------------- */

int wk_serve(const wk_opts *o)
{
    static sv s; /* large (the model table): not on the stack */
    char err[DT_ERR_LEN] = "";
    int status = 1;
    memset(&s, 0, sizeof s);
    s.o = o;
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    if (gethostname(s.hostname, sizeof s.hostname - 1)) snprintf(s.hostname, 8, "unknown");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    s.limit = o->memory_limit > 0 ? o->memory_limit : wk_default_memory_limit(o->device);
    if (!(s.be = dt_backend_new(o->device, o->threads, err))) {
        log_msg(DT_LOG_ERROR, "serve.device_failed", "%s", err);
        goto fail_be;
    }
    if (queue_open(&s.q, o->cfg.redis_url, err)) {
        log_msg(DT_LOG_ERROR, "serve.redis_failed", "%s", err);
        goto fail_q;
    }
    log_msg(DT_LOG_INFO, "serve.start", "serving worker %s on %s, device %s, memory limit %lld "
            "bytes", o->worker_id, s.hostname, o->device, s.limit);
    pthread_t hb;
    if (pthread_create(&hb, NULL, heartbeat_main, &s)) {
        log_msg(DT_LOG_ERROR, "serve.thread_failed", "%s", strerror(errno));
        goto fail_thread;
    }
    int served = 0;
    while (!g_quit) {
        char *text = NULL;
        int rc = queue_infer_take(s.q, 1000, &text, err);
        if (rc < 0) log_msg(DT_LOG_DEBUG, "serve.wait_failed", "%s", err);
        if (rc != 1) continue;
        json_t *j = json_loads(text, 0, NULL);
        free(text);
        if (!j) {
            log_msg(DT_LOG_WARN, "serve.bad_request", "a request that is not JSON");
            continue;
        }
        serve_one(&s, j);
        json_decref(j);
        if (o->max_jobs > 0 && ++served >= o->max_jobs) break;
    }
    status = 0;
    log_msg(DT_LOG_INFO, "serve.stop", "serving worker %s stopping", o->worker_id);
    pthread_mutex_lock(&s.mu);
    s.quit = 1;
    pthread_cond_signal(&s.cv);
    pthread_mutex_unlock(&s.mu);
    pthread_join(hb, NULL);
fail_thread:
    for (int i = 0; i < s.nmodels; i++) model_unload(&s.models[i]);
    queue_free(s.q);
fail_q:
    dt_backend_free(s.be);
fail_be:
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    return status;
}
