/* serve.c: deltatune-worker --serve, the serving loop of a worker that runs
 * chat and completion requests (issue 17).
 *
 * The worker registers in PostgreSQL as kind 'serve' (migration 0009) and
 * keeps its row fresh from a heartbeat thread, so the server knows whether
 * any serving worker is alive. Its main thread takes requests from Redis
 * (queue.h: QUEUE_INFER_KEY) and decodes them with continuous batching:
 * while requests are active it polls the queue without waiting, admits
 * newcomers for the same model between decode steps (up to --max-batch),
 * feeds all active sequences' next tokens through one batched decode step
 * (dt_decoder_step_batch: each request its own KV cache and sampler state,
 * so a seeded request gives the same tokens alone or batched) and retires
 * those that ended. One model's group runs at a time; the oldest waiting
 * request for another model stops admission, so groups take turns in
 * arrival order. Each request is answered on its reply list with events,
 * JSON objects with a "t" field:
 *
 *   {"t":"start","worker":ID}                      taken (ends the queue wait)
 *   {"t":"prompt","prompt_tokens":N,"max_tokens":M} prompt ready, decoding
 *   {"t":"lp","entry":{token, logprob, bytes, top_logprobs}}
 *                                                  a token's log probability
 *                                                  (logprobs asked), before its text
 *   {"t":"text","text":"..."}                      new text (valid UTF-8)
 *   {"t":"done","finish_reason":"stop"|"length","prompt_tokens":N,
 *    "completion_tokens":K,"batch":B}           B: the largest batch it was
 *                                                  decoded in
 *   {"t":"error","status":S,"code":C,"param":P,"message":M}
 *
 * Request JSON (made by server/chat.c): id, model (the model's stored path:
 * relative paths resolve under this worker's artifact root), kind ("chat" |
 * "completion"), messages or prompt, max_tokens (0: what the context
 * leaves, capped by max_tokens_cap), temperature, top_p, seed, stop (list).
 *
 * Loaded models stay loaded (weights on the device, tokenizer) in a
 * least-recently-used set within --memory-limit: a model that does not fit
 * next to the others evicts the least recently used first (only when no
 * request is active, so an active group's model is never evicted). Each
 * admitted request gets its own decoder (KV cache of prompt + max_tokens
 * positions); one that does not fit in the budget next to the active ones
 * waits for them. A LoRA or Delta-LoRA fine-tune (merged/adapter/ holds its
 * exact PEFT adapter) loads as that adapter over its base, which is loaded
 * once for all its fine-tunes; full fine-tunes, and fine-tunes whose base
 * is not found, load their merged weights. Between tokens the worker looks at each request's cancel
 * flag (set by the server when the client went away or waited too long)
 * and retires it. */
#include "serve.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
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
#define SV_MODEL_ROWS 256        /* rows of a model's activations (a prompt chunk) */
#define SV_DEFAULT_BATCH 16      /* requests decoded together at most (--max-batch) */
#define SV_MAX_BATCH 256

/* One loaded model: its own weights, or a fine-tune's adapter over a loaded
 * base whose weights it shares (base, ad). */
typedef struct sv_model {
    char key[DB_PATH_LEN];       /* its resolved path */
    dt_model *m;                 /* own, or the base's (borrowed) */
    dt_tokenizer *tok;
    dt_weights w;                /* names and config (host data released); empty
                                    for an adapter */
    struct sv_model *base;       /* the base an adapter runs on, or NULL */
    dt_decoder_adapter *ad;      /* the adapter over base, or NULL */
    int refs;                    /* adapters loaded on this model (it stays while > 0) */
    int ctx;                     /* positions a request's cache may hold */
    long long bytes;             /* weights + one full cache + activations, or the
                                    adapter's factors, estimated */
    double used;                 /* dt_now() of the last request */
} sv_model;

typedef struct sv {
    const wk_opts *o;
    char hostname[256];
    dt_backend *be;
    queue *q;
    sv_model *models[SV_MAX_MODELS]; /* malloc'd each: pointers stay valid */
    int nmodels;
    long long limit;             /* memory budget for loaded models (bytes) */
    /* continuous batching: requests taken from Redis wait in `pending`
     * (oldest first) until admitted into `act`, decoded step by step
     * together (all on one model) and retired as they end */
    int max_batch;
    json_t *pending[SV_MAX_BATCH];
    int npending;
    struct sv_act *act[SV_MAX_BATCH];
    int nact;
    long long act_bytes;         /* active requests' decoders, estimated */
    dt_decoder *ds[SV_MAX_BATCH];
    int32_t ids[SV_MAX_BATCH];
    float *blogits;              /* (nact, V) logits of a batched step */
    size_t blogits_cap;          /* floats */
    int served;                  /* requests ended */
    long long steps, batched_steps; /* decode steps, those over more than one request */
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

static long long resident(const sv *s)
{
    long long held = 0;
    for (int i = 0; i < s->nmodels; i++) held += s->models[i]->bytes;
    return held;
}

/* Unloads models[i] (an adapter, or a model no adapter uses). */
static void model_unload(sv *s, int i)
{
    sv_model *m = s->models[i];
    if (m->base) m->base->refs--;
    else dt_model_free(m->m);
    dt_decoder_adapter_free(m->ad);
    dt_tokenizer_free(m->tok);
    dt_weights_free(&m->w);
    free(m);
    s->models[i] = s->models[--s->nmodels];
}

static sv_model *model_find(sv *s, const char *path)
{
    for (int i = 0; i < s->nmodels; i++)
        if (!strcmp(s->models[i]->key, path)) return s->models[i];
    return NULL;
}

/* Unloads least recently used models until `need` more bytes (and a slot)
 * fit in the budget: never a base that adapters use, nor `keep`. */
static void make_room(sv *s, long long need, const sv_model *keep)
{
    for (;;) {
        int lru = -1;
        for (int i = 0; i < s->nmodels; i++) {
            sv_model *m = s->models[i];
            if (m->refs > 0 || m == keep) continue;
            if (lru < 0 || m->used < s->models[lru]->used) lru = i;
        }
        if (lru < 0 || (resident(s) + need <= s->limit && s->nmodels < SV_MAX_MODELS)) return;
        log_msg(DT_LOG_INFO, "serve.evict", "%s: unloaded (least recently used)",
                s->models[lru]->key);
        model_unload(s, lru);
    }
}

static void log_load(const sv *s, const sv_model *m, double t0)
{
    log_json(DT_LOG_INFO, "serve.load",
             json_pack("{s:s, s:s?, s:I, s:I, s:i, s:f}", "model", m->key, "base",
                       m->base ? m->base->key : NULL, "bytes", (json_int_t)m->bytes,
                       "resident_bytes", (json_int_t)resident(s), "context", m->ctx,
                       "seconds", dt_now() - t0));
}

/* Loads the model at path with its own weights. */
static sv_model *model_load_full(sv *s, const char *path, int *status, char *err)
{
    sv_model *nm = calloc(1, sizeof *nm);
    if (!nm) {
        dt_errf(err, DT_ENOMEM, "out of memory");
        return NULL;
    }
    dt_weights *w = &nm->w;
    double t0 = dt_now();
    if (dt_weights_open(path, w, err)) goto fail; /* converted tensor by tensor at upload */
    if (!(nm->tok = dt_model_tokenizer(path, err))) goto fail;
    nm->ctx = w->cfg.max_pos > 0 && w->cfg.max_pos < SV_MAX_CTX ? w->cfg.max_pos : SV_MAX_CTX;
    long long weights = 0;
    for (int i = 0; i < w->ts.n; i++) weights += w->ts.t[i].numel * 4;
    long long kv = 2LL * w->cfg.n_layer * nm->ctx * w->cfg.n_kv_head * w->cfg.head_dim * 4;
    long long act = 256LL * (w->cfg.d_model * 8 + w->cfg.d_ff * 3) * 4 + (long long)w->cfg.vocab * 8;
    nm->bytes = weights + kv + act;
    if (nm->bytes > s->limit) {
        char need[32], lim[32];
        dt_mem_human(nm->bytes, need, sizeof need);
        dt_mem_human(s->limit, lim, sizeof lim);
        dt_errf(err, DT_ENOMEM, "the model needs %s, more than this serving worker's "
                "memory limit of %s", need, lim);
        *status = 503;
        goto fail;
    }
    make_room(s, nm->bytes, NULL);
    dt_lora_opts lo = {DT_LORA, 0, 0.0f, 0, DT_PREC_AUTO, 0, 0.0f, 0}; /* as deltatune generate */
    w->release_on_upload = 1; /* no second host copy while uploading */
    if (dt_model_new(s->be, w, &lo, 1, nm->ctx < SV_MODEL_ROWS ? nm->ctx : SV_MODEL_ROWS, 0,
                     &nm->m, err))
        goto fail;
    dt_weights_release_data(w);
    snprintf(nm->key, sizeof nm->key, "%s", path);
    nm->used = dt_now();
    s->models[s->nmodels++] = nm;
    log_load(s, nm, t0);
    return nm;
fail:
    dt_model_free(nm->m);
    dt_tokenizer_free(nm->tok);
    dt_weights_free(w);
    free(nm);
    return NULL;
}

/* The base a fine-tune at path was trained from, when its PEFT adapter
 * (path/adapter, lora and delta_lora) makes it base + adapter exactly: the
 * adapter's base_model_name_or_path, an existing model of the same shape.
 * 0 with base[] filled, or -1 (load the merged weights). */
static int adapter_base(sv *s, const char *path, char *base, size_t cap)
{
    char p[DB_PATH_LEN + 40], err[DT_ERR_LEN];
    snprintf(p, sizeof p, "%s/adapter/adapter_config.json", path);
    json_t *cfg = json_load_file(p, 0, NULL);
    const char *b = json_string_value(json_object_get(cfg, "base_model_name_or_path"));
    int rc = -1;
    dt_mem_model mf, mb;
    if (b && !config_artifact_path(&s->o->cfg, b, base, cap) && access(base, R_OK) == 0 &&
        strcmp(base, path) && !dt_mem_model_read(path, &mf, err) &&
        !dt_mem_model_read(base, &mb, err) && mf.llama == mb.llama &&
        mf.n_layer == mb.n_layer && mf.d_model == mb.d_model && mf.n_head == mb.n_head &&
        mf.n_kv_head == mb.n_kv_head && mf.head_dim == mb.head_dim && mf.d_ff == mb.d_ff &&
        mf.vocab == mb.vocab && mf.tied == mb.tied && mf.qk_norm == mb.qk_norm)
        rc = 0;
    json_decref(cfg);
    return rc;
}

/* Loads the fine-tune at path as its adapter over the base at base_path
 * (loaded once for all its fine-tunes). NULL with err set. */
static sv_model *model_load_adapter(sv *s, const char *path, const char *base_path,
                                    int *status, char *err)
{
    double t0 = dt_now();
    sv_model *base = model_find(s, base_path);
    if (!base && !(base = model_load_full(s, base_path, status, err))) return NULL;
    base->used = dt_now();
    char dir[DB_PATH_LEN + 16], st[DB_PATH_LEN + 48];
    snprintf(dir, sizeof dir, "%s/adapter", path);
    snprintf(st, sizeof st, "%s/adapter_model.safetensors", dir);
    struct stat sb;
    make_room(s, stat(st, &sb) ? 0 : (long long)sb.st_size, base);
    sv_model *nm = calloc(1, sizeof *nm);
    if (!nm) {
        dt_errf(err, DT_ENOMEM, "out of memory");
        return NULL;
    }
    if (!(nm->tok = dt_model_tokenizer(path, err)) ||
        dt_decoder_adapter_load(base->m, &base->w, dir, &nm->ad, err)) {
        dt_tokenizer_free(nm->tok);
        free(nm);
        return NULL;
    }
    nm->m = base->m;
    nm->base = base;
    base->refs++;
    nm->ctx = base->ctx;
    nm->bytes = dt_decoder_adapter_bytes(nm->ad);
    snprintf(nm->key, sizeof nm->key, "%s", path);
    nm->used = dt_now();
    s->models[s->nmodels++] = nm;
    log_load(s, nm, t0);
    return nm;
}

/* The loaded model for a stored path, loading it (and evicting the least
 * recently used ones that leave it no room) when needed: a fine-tune with
 * an exact adapter as that adapter over its shared base, any other model
 * with its own weights. Called with no request active (admit()), so no
 * active request's model is evicted. NULL with err set (*status: 500 for a
 * model that cannot be served, 503 when it does not fit). */
static sv_model *model_get(sv *s, const char *stored, int *status, char *err)
{
    char path[DB_PATH_LEN], base[DB_PATH_LEN];
    *status = 500;
    if (config_artifact_path(&s->o->cfg, stored, path, sizeof path)) {
        dt_errf(err, DT_EINVAL, "model path too long");
        return NULL;
    }
    sv_model *m = model_find(s, path);
    if (!m && !adapter_base(s, path, base, sizeof base)) {
        m = model_load_adapter(s, path, base, status, err);
        if (!m) { /* the merged weights serve as well, at their full size */
            log_msg(DT_LOG_WARN, "serve.adapter_failed", "%s: %s; loading the merged model",
                    path, err);
            *status = 500;
        }
    }
    if (!m) m = model_load_full(s, path, status, err);
    if (m) {
        m->used = dt_now();
        if (m->base) m->base->used = m->used;
    }
    return m;
}

/* The loaded model a stored path names, or NULL (nothing is loaded). */
static sv_model *model_peek(sv *s, const char *stored)
{
    char path[DB_PATH_LEN];
    return stored && !config_artifact_path(&s->o->cfg, stored, path, sizeof path)
               ? model_find(s, path) : NULL;
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

/* ---- admitted requests ------------------------------------------------------------ */

/* One request being decoded: its own KV cache, sampler state and text. */
typedef struct sv_act {
    json_t *j;                   /* the request (owned; r's strings borrow from it) */
    sv_req r;
    sv_model *m;                 /* borrowed: the active group's model stays loaded */
    dt_decoder *d;               /* this request's KV cache (np + max positions) */
    int32_t *prompt, *out;
    int np, max, k, chat, hit, cancelled, max_batch;
    int32_t eos, eot, next;
    float *logits;               /* (V) the logits the next token is sampled from */
    float *raw_logits;           /* (V) a copy before sampling (logprobs asked) */
    uint64_t rng;                /* this request's sampler: seeded alone or batched alike */
    char *raw;                   /* decoded text of out[0..k) */
    size_t sent;                 /* bytes of raw sent */
    long long bytes;             /* its KV cache and activations, estimated */
    const char *finish;
    double t0, first;
} sv_act;

static void act_free(sv *s, sv_act *a)
{
    if (!a) return;
    s->act_bytes -= a->bytes;
    dt_decoder_free(a->d);
    free(a->prompt);
    free(a->out);
    free(a->logits);
    free(a->raw_logits);
    free(a->raw);
    json_decref(a->j);
    free(a);
}

/* The bytes of one request's decoder: keys and values of np + max
 * positions, activations of one feed chunk. */
static long long act_estimate(const sv_model *m, int positions)
{
    const dt_config *c = dt_model_config(m->m);
    int rows = positions < SV_MODEL_ROWS ? positions : SV_MODEL_ROWS;
    long long kv = 2LL * c->n_layer * positions * c->n_kv_head * c->head_dim * 4;
    return kv + (long long)rows * (c->d_model * 8 + c->d_ff * 3) * 4 + (long long)c->vocab * 8;
}

/* Starts request j (steals it): model, prompt, decoder. Returns the
 * admitted request, or NULL when it ended here (answered with an error,
 * cancelled before it started) or, with *defer set, when it does not fit in
 * memory next to the active ones yet (j is not stolen then). */
static sv_act *act_start(sv *s, json_t *j, int *defer)
{
    char err[DT_ERR_LEN] = "";
    *defer = 0;
    sv_act *a = calloc(1, sizeof *a);
    if (!a) {
        json_decref(j);
        log_msg(DT_LOG_ERROR, "serve.oom", "out of memory admitting a request");
        return NULL;
    }
    a->j = j;
    sv_req *r = &a->r;
    if (parse_request(j, r)) {
        const char *id = json_string_value(json_object_get(j, "id"));
        log_msg(DT_LOG_WARN, "serve.bad_request", "a request without id, model or input");
        if (id && strlen(id) < QUEUE_INFER_ID_LEN)
            emit_error(s, id, 500, "internal_error", NULL, "malformed request");
        goto end;
    }
    int cancelled = 0;
    if (!queue_cancel_get(s->q, r->id, &cancelled, err) && cancelled) {
        log_msg(DT_LOG_INFO, "serve.skipped", "%s: cancelled before it started", r->id);
        goto end;
    }
    a->t0 = dt_now();
    if (!json_is_true(json_object_get(j, "_started"))) { /* once, if it waited for room */
        emit(s, r->id, json_pack("{s:s, s:s}", "t", "start", "worker", s->o->worker_id));
        json_object_set_new(j, "_started", json_true());
    }
    int status = 500;
    sv_model *m = model_get(s, r->model, &status, err);
    if (!m) {
        log_msg(DT_LOG_WARN, "serve.load_failed", "%s: %s", r->model, err);
        emit_error(s, r->id, status, status == 503 ? "model_too_large" : "model_unavailable",
                   "model", err);
        goto end;
    }
    a->m = m;
    int rc;
    a->chat = !strcmp(r->kind, "chat");
    if (a->chat)
        rc = dt_chat_prompt(m->tok, r->messages, &a->prompt, &a->np, err);
    else
        rc = dt_tokenizer_encode(m->tok, r->prompt, strlen(r->prompt),
                                 DT_TOK_SPECIAL | DT_TOK_ADD, &a->prompt, &a->np, err);
    const char *pparam = a->chat ? "messages" : "prompt";
    if (rc) {
        emit_error(s, r->id, 400, "invalid_value", pparam, err);
        goto end;
    }
    if (a->np < 1) {
        emit_error(s, r->id, 400, "invalid_value", pparam, "the prompt is empty");
        goto end;
    }
    if (a->np >= m->ctx) {
        snprintf(err, sizeof err, "the prompt has %d tokens; this model's context is %d",
                 a->np, m->ctx);
        emit_error(s, r->id, 400, "context_length_exceeded", pparam, err);
        goto end;
    }
    int left = m->ctx - a->np;
    a->max = r->max_tokens;
    if (a->max > left) {
        snprintf(err, sizeof err, "the prompt (%d tokens) and max_tokens (%d) exceed this "
                 "model's context of %d", a->np, a->max, m->ctx);
        emit_error(s, r->id, 400, "context_length_exceeded", "max_tokens", err);
        goto end;
    }
    if (a->max <= 0) a->max = left < r->max_cap ? left : r->max_cap;
    /* The model's own estimate holds one full-context cache: the first
     * request always fits; later ones wait while the budget is spent. */
    a->bytes = act_estimate(m, a->np + a->max);
    if (s->nact > 0) {
        long long held = s->act_bytes + a->bytes;
        held += resident(s);
        if (held > s->limit) {
            a->j = NULL; /* not stolen: it waits for room */
            *defer = 1;
            goto end;
        }
    }
    s->act_bytes += a->bytes;
    emit(s, r->id, json_pack("{s:s, s:i, s:i}", "t", "prompt", "prompt_tokens", a->np,
                             "max_tokens", a->max));
    int V = dt_model_config(m->m)->vocab;
    a->eos = dt_tokenizer_eos(m->tok);
    a->eot = a->chat ? dt_chat_end_token(m->tok) : -1;
    a->logits = malloc((size_t)V * sizeof *a->logits);
    a->out = malloc((size_t)a->max * sizeof *a->out);
    if (!a->logits || !a->out ||
        (r->logprobs && !(a->raw_logits = malloc((size_t)V * sizeof *a->raw_logits)))) {
        emit_error(s, r->id, 500, "internal_error", NULL, "out of memory");
        goto end;
    }
    a->rng = 0x9E3779B97F4A7C15ull ^ r->seed;
    a->finish = "length";
    if (dt_decoder_new(m->m, a->np + a->max, &a->d, err)) {
        log_msg(DT_LOG_WARN, "serve.failed", "%s: %s", r->id, err);
        emit_error(s, r->id, 500, "generation_failed", NULL, err);
        goto end;
    }
    dt_decoder_set_adapter(a->d, m->ad);
    return a; /* prefilled by admit(), with the others admitted with it */
end:
    act_free(s, a);
    return NULL;
}

/* Samples a's next token from a->logits and sends what it makes. 1 when a
 * goes on (a->next is to be fed), 0 when it has ended (finish set, or
 * cancelled), negative with err on failure. */
static int act_advance(sv *s, sv_act *a, char *err)
{
    sv_req *r = &a->r;
    int V = dt_model_config(a->m->m)->vocab;
    if (a->raw_logits) memcpy(a->raw_logits, a->logits, (size_t)V * sizeof *a->logits);
    int32_t next = dt_sample(a->logits, V, (float)r->temperature, (float)r->top_p, &a->rng);
    if (next == a->eos || (a->eot >= 0 && next == a->eot)) {
        a->finish = "stop";
        return 0;
    }
    if (a->raw_logits)
        emit(s, r->id, json_pack("{s:s, s:o}", "t", "lp", "entry",
                                 lp_entry(a->m->tok, a->raw_logits, V, next,
                                          r->top_logprobs)));
    a->out[a->k++] = next;
    if (!a->first) a->first = dt_now() - a->t0;
    free(a->raw);
    a->raw = dt_tokenizer_decode(a->m->tok, a->out, a->k);
    if (!a->raw) return dt_errf(err, DT_ENOMEM, "out of memory");
    size_t n = strlen(a->raw), used = 0;
    size_t safe = stop_scan(r, a->raw, n, &a->hit);
    if (safe > a->sent) {
        char *text = utf8_clean(a->raw + a->sent, safe - a->sent, a->hit, &used);
        if (text && *text) emit(s, r->id, json_pack("{s:s, s:s}", "t", "text", "text", text));
        free(text);
        a->sent += used;
    }
    if (a->hit) {
        a->finish = "stop";
        return 0;
    }
    if (!queue_cancel_get(s->q, r->id, &a->cancelled, err) && a->cancelled) return 0;
    if (a->k >= a->max) return 0;
    a->next = next;
    return 1;
}

/* Ends a (removed from the active set by the caller): the held-back text
 * and "done", or nothing more when it was cancelled. */
static void act_finish(sv *s, sv_act *a)
{
    sv_req *r = &a->r;
    if (a->cancelled) {
        log_msg(DT_LOG_INFO, "serve.cancelled", "%s: cancelled after %d of at most %d tokens",
                r->id, a->k, a->max);
        return;
    }
    if (!a->hit && a->raw && strlen(a->raw) > a->sent) { /* the held-back tail */
        size_t used;
        char *text = utf8_clean(a->raw + a->sent, strlen(a->raw) - a->sent, 1, &used);
        if (text && *text) emit(s, r->id, json_pack("{s:s, s:s}", "t", "text", "text", text));
        free(text);
    }
    /* logged first: a client that has its answer finds the record */
    log_json(DT_LOG_INFO, "serve.done",
             json_pack("{s:s, s:s, s:i, s:i, s:s, s:f, s:f, s:i}", "id", r->id, "model",
                       r->model, "prompt_tokens", a->np, "completion_tokens", a->k,
                       "finish_reason", a->finish, "first_token_seconds", a->first,
                       "seconds", dt_now() - a->t0, "max_batch", a->max_batch));
    emit(s, r->id, json_pack("{s:s, s:s, s:i, s:i, s:i}", "t", "done", "finish_reason",
                             a->finish, "prompt_tokens", a->np, "completion_tokens", a->k,
                             "batch", a->max_batch));
}

/* ---- continuous batching ---------------------------------------------------------- */

/* Admits waiting requests, oldest first, while the batch has room: those
 * for the active group's model (any model when none is active). The first
 * one for another model stops admission, so that group runs next, when
 * this one has drained: no model waits behind a stream of another's. */
/* Prefills the requests admitted together, act[first..nact-1] (one model),
 * in one dt_decoder_feed_batch: the prompts share each pass over the
 * weights. On failure each of them gets the error. */
static void prefill(sv *s, int first)
{
    char err[DT_ERR_LEN] = "";
    int n = s->nact - first;
    if (n <= 0) return;
    int V = dt_model_config(s->act[first]->m->m)->vocab, rc = DT_ENOMEM;
    dt_decoder **ds = malloc((size_t)n * sizeof *ds);
    const int32_t **ids = malloc((size_t)n * sizeof *ids);
    int *t = malloc((size_t)n * sizeof *t);
    float *lg = malloc((size_t)n * V * sizeof *lg);
    if (ds && ids && t && lg) {
        for (int i = 0; i < n; i++) {
            sv_act *a = s->act[first + i];
            ds[i] = a->d;
            ids[i] = a->prompt;
            t[i] = a->np;
        }
        rc = dt_decoder_feed_batch(ds, n, ids, t, lg, err);
    } else {
        snprintf(err, sizeof err, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        sv_act *a = s->act[first + i];
        if (!rc) {
            memcpy(a->logits, lg + (size_t)i * V, (size_t)V * sizeof *lg);
            continue;
        }
        log_msg(DT_LOG_WARN, "serve.failed", "%s: %s", a->r.id, err);
        emit_error(s, a->r.id, 500, "generation_failed", NULL, err);
        act_free(s, a);
        s->served++;
    }
    if (rc) s->nact = first;
    free(ds);
    free(ids);
    free(t);
    free(lg);
}

static void admit(sv *s)
{
    int first = s->nact;
    while (s->npending > 0 && s->nact < s->max_batch) {
        json_t *j = s->pending[0];
        const char *model = json_string_value(json_object_get(j, "model"));
        if (s->nact > 0) { /* the active base: its own requests and its adapters' */
            sv_model *pm = model_peek(s, model);
            if (!pm || pm->m != s->act[0]->m->m) break;
        }
        int defer = 0;
        sv_act *a = act_start(s, j, &defer);
        if (defer) break;
        memmove(s->pending, s->pending + 1, (size_t)--s->npending * sizeof *s->pending);
        if (a) s->act[s->nact++] = a;
        else s->served++;
    }
    prefill(s, first);
}

/* One step of every active request: each samples its next token from its
 * logits and sends it; those that go on are fed together in one batched
 * decode step; those that ended are retired. */
static void step(sv *s)
{
    char err[DT_ERR_LEN] = "";
    int n = 0, keep = 0;
    for (int i = 0; i < s->nact; i++) {
        sv_act *a = s->act[i];
        int rc = act_advance(s, a, err);
        if (rc < 0) {
            log_msg(DT_LOG_WARN, "serve.failed", "%s: %s", a->r.id, err);
            emit_error(s, a->r.id, 500, "generation_failed", NULL, err);
        } else if (rc == 0) {
            act_finish(s, a);
        } else {
            s->act[keep++] = a;
            continue;
        }
        act_free(s, a);
        s->served++;
    }
    s->nact = n = keep;
    if (!n) return;
    if (s->o->token_delay_ms > 0) usleep((useconds_t)s->o->token_delay_ms * 1000u);
    int V = dt_model_config(s->act[0]->m->m)->vocab;
    if (s->blogits_cap < (size_t)n * V) {
        float *p = realloc(s->blogits, (size_t)n * V * sizeof *p);
        if (p) {
            s->blogits = p;
            s->blogits_cap = (size_t)n * V;
        }
    }
    for (int i = 0; i < n; i++) {
        s->ds[i] = s->act[i]->d;
        s->ids[i] = s->act[i]->next;
        if (s->act[i]->max_batch < n) s->act[i]->max_batch = n;
    }
    int rc = s->blogits_cap >= (size_t)n * V
                 ? dt_decoder_step_batch(s->ds, n, s->ids, s->blogits, err)
                 : dt_errf(err, DT_ENOMEM, "out of memory");
    if (rc) {
        for (int i = 0; i < n; i++) {
            log_msg(DT_LOG_WARN, "serve.failed", "%s: %s", s->act[i]->r.id, err);
            emit_error(s, s->act[i]->r.id, 500, "generation_failed", NULL, err);
            act_free(s, s->act[i]);
            s->served++;
        }
        s->nact = 0;
        return;
    }
    s->steps++;
    if (n > 1) s->batched_steps++;
    for (int i = 0; i < n; i++)
        memcpy(s->act[i]->logits, s->blogits + (size_t)i * V, (size_t)V * sizeof(float));
}

/* Takes requests from Redis into the pending list: waiting up to a second
 * when nothing is running, else only what is there now, as many as the
 * batch could admit. */
static void take(sv *s)
{
    char err[DT_ERR_LEN] = "";
    while (s->npending < s->max_batch) {
        char *text = NULL;
        int idle = s->nact == 0 && s->npending == 0;
        int rc = idle ? queue_infer_take(s->q, 1000, &text, err)
                      : queue_infer_try(s->q, &text, err);
        if (rc < 0) log_msg(DT_LOG_DEBUG, "serve.wait_failed", "%s", err);
        if (rc != 1) return;
        json_t *j = json_loads(text, 0, NULL);
        free(text);
        if (!j) {
            log_msg(DT_LOG_WARN, "serve.bad_request", "a request that is not JSON");
            continue;
        }
        s->pending[s->npending++] = j;
    }
}

/* ---- the loop -------------------------------------------------------------------- */

int wk_serve(const wk_opts *o)
{
    static sv s; /* large (the model table): not on the stack */
    char err[DT_ERR_LEN] = "";
    int status = 1;
    memset(&s, 0, sizeof s);
    s.o = o;
    s.max_batch = o->max_batch > 0 ? o->max_batch : SV_DEFAULT_BATCH;
    if (s.max_batch > SV_MAX_BATCH) s.max_batch = SV_MAX_BATCH;
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
            "bytes, batches of up to %d requests", o->worker_id, s.hostname, o->device,
            s.limit, s.max_batch);
    pthread_t hb;
    if (pthread_create(&hb, NULL, heartbeat_main, &s)) {
        log_msg(DT_LOG_ERROR, "serve.thread_failed", "%s", strerror(errno));
        goto fail_thread;
    }
    /* On SIGTERM the active requests finish; taken ones not started go
     * back to the queue for another worker. --max-jobs counts ended
     * requests and takes no more than it may end. */
    while (!g_quit || s.nact > 0) {
        int room = o->max_jobs <= 0 || s.served + s.nact + s.npending < o->max_jobs;
        if (!g_quit && room) take(&s);
        if (!g_quit) admit(&s);
        if (s.nact > 0) step(&s);
        if (o->max_jobs > 0 && s.served >= o->max_jobs && s.nact == 0) break;
    }
    for (int i = 0; i < s.npending; i++) {
        char *text = json_dumps(s.pending[i], JSON_COMPACT);
        if (!text || queue_infer_requeue(s.q, text, err))
            log_msg(DT_LOG_WARN, "serve.requeue_failed", "a request was dropped: %s",
                    text ? err : "out of memory");
        free(text);
        json_decref(s.pending[i]);
    }
    status = 0;
    log_msg(DT_LOG_INFO, "serve.stop", "serving worker %s stopping (%lld decode steps, %lld "
            "of them batched)", o->worker_id, s.steps, s.batched_steps);
    pthread_mutex_lock(&s.mu);
    s.quit = 1;
    pthread_cond_signal(&s.cv);
    pthread_mutex_unlock(&s.mu);
    pthread_join(hb, NULL);
fail_thread:
    while (s.nmodels > 0) { /* adapters before their bases */
        int i = 0;
        while (i < s.nmodels - 1 && s.models[i]->refs > 0) i++;
        model_unload(&s, i);
    }
    free(s.blogits);
    queue_free(s.q);
fail_q:
    dt_backend_free(s.be);
fail_be:
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    return status;
}
