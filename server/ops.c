/* ops.c: /healthz (the process answers), /readyz (PostgreSQL and Redis
 * reachable), /metrics (Prometheus text format; behind the ops token
 * DELTATUNE_METRICS_TOKEN, or loopback clients only without one) and /v1/openapi.json (the
 * contract, converted from api/openapi.yaml at build time and embedded). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "api/auth.h"
#include "api/db.h"
#include "chat.h"
#include "handlers.h"

extern const char server_openapi_json[];

static const int status_codes[] = {200, 201, 204, 206, 304, 400, 401, 403, 404, 405,
                                   409, 413, 415, 416, 422, 429, 499, 500, 503};
#define NSTATUS (int)(sizeof status_codes / sizeof status_codes[0])
#define NSLOT (NSTATUS + 1) /* + "other" */
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define NB (int)(sizeof buckets / sizeof buckets[0])

struct metrics {
    int nroutes;          /* rows: routes + 1 ("unmatched") */
    uint64_t *count;      /* [row][NSLOT] */
    uint64_t *hist;       /* [row][NB + 1]: non-cumulative, last = +Inf */
    uint64_t *sum_ns;     /* [row] */
};

metrics *metrics_new(int nroutes)
{
    metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->nroutes = nroutes;
    size_t rows = (size_t)nroutes + 1;
    m->count = calloc(rows * NSLOT, sizeof *m->count);
    m->hist = calloc(rows * (NB + 1), sizeof *m->hist);
    m->sum_ns = calloc(rows, sizeof *m->sum_ns);
    if (!m->count || !m->hist || !m->sum_ns) { metrics_free(m); return NULL; }
    return m;
}

void metrics_free(metrics *m)
{
    if (!m) return;
    free(m->count);
    free(m->hist);
    free(m->sum_ns);
    free(m);
}

/* The server's on_complete hook: on_complete_cls is the metrics. */
void metrics_observe(server *s, int route, int status, double seconds)
{
    metrics *m = s->on_complete_cls;
    int row = route >= 0 && route < m->nroutes ? route : m->nroutes;
    int slot = NSTATUS;
    for (int i = 0; i < NSTATUS; i++)
        if (status_codes[i] == status) slot = i;
    int b = NB;
    for (int i = 0; i < NB; i++)
        if (seconds <= buckets[i]) { b = i; break; }
    __atomic_fetch_add(&m->count[row * NSLOT + slot], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&m->hist[row * (NB + 1) + b], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&m->sum_ns[row], (uint64_t)(seconds * 1e9), __ATOMIC_RELAXED);
}

static void reply_text(req *r, int status, char *text, size_t len, const char *type)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) { free(text); reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
    MHD_add_response_header(resp, "Content-Type", type);
    reply_mhd(r, status, resp);
}

void ops_healthz(req *r)
{
    reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

void ops_readyz(req *r)
{
    char err[DT_ERR_LEN];
    const char *pg = "ok", *rd = "ok";
    db *d = db_pool_acquire(r->s->pool, 1000);
    if (!d || db_ping(d, err)) pg = "unreachable";
    if (d) db_pool_release(r->s->pool, d);
    if (queue_ping(r->s->q, err)) rd = "unreachable";
    int ready = !strcmp(pg, "ok") && !strcmp(rd, "ok");
    reply_json(r, ready ? 200 : 503, json_pack("{s:s, s:s, s:s}", "status",
                                               ready ? "ready" : "not_ready",
                                               "database", pg, "redis", rd));
}

static int loopback_peer(req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    if (!sa) return 0;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) ||
               (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return sa->sa_family == AF_UNIX;
}

/* /metrics shows every owner's jobs: with DELTATUNE_METRICS_TOKEN set it
 * needs "Authorization: Bearer <that token>" (API keys do not open it);
 * without one it answers loopback clients only. 0, or -1 after a 401. */
static int metrics_allowed(req *r)
{
    const char *tok = r->s->cfg.metrics_token;
    if (!tok[0]) {
        if (loopback_peer(r)) return 0;
        reply_error(r, 401, "metrics_token_required", NULL,
                    "/metrics answers only local clients unless the server has "
                    "DELTATUNE_METRICS_TOKEN set; then send \"Authorization: Bearer <token>\"");
        return -1;
    }
    const char *h = req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (h && !strncasecmp(h, "Bearer ", 7)) {
        h += 7;
        while (*h == ' ') h++;
        size_t n = strlen(tok);
        if (strlen(h) == n && auth_equal(h, tok, n)) return 0;
    }
    reply_error(r, 401, h ? "invalid_metrics_token" : "metrics_token_required", NULL,
                "/metrics needs \"Authorization: Bearer <DELTATUNE_METRICS_TOKEN>\" (the "
                "server's ops token, not an API key)");
    return -1;
}

/* Prometheus label value: escape \, " and newline. */
static void label(FILE *f, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"') fputc('\\', f);
        if (*v == '\n') { fputs("\\n", f); continue; }
        fputc(*v, f);
    }
}

void ops_metrics(req *r)
{
    char err[DT_ERR_LEN];
    char *text = NULL;
    size_t len = 0;
    /* the metrics that main.c gave the server's on_complete hook */
    metrics *m = r->s->on_complete == metrics_observe ? r->s->on_complete_cls : NULL;
    if (!m) { reply_error(r, 404, "not_found", NULL, "metrics are not collected"); return; }
    if (metrics_allowed(r)) return;
    FILE *f = open_memstream(&text, &len);
    if (!f) { reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
    fputs("# HELP deltatune_http_requests_total HTTP requests by route and status.\n"
          "# TYPE deltatune_http_requests_total counter\n", f);
    for (int row = 0; row <= m->nroutes; row++) {
        const char *name = row < m->nroutes ? r->s->routes[row].name : "unmatched";
        for (int k = 0; k < NSLOT; k++) {
            uint64_t c = __atomic_load_n(&m->count[row * NSLOT + k], __ATOMIC_RELAXED);
            if (!c) continue;
            if (k < NSTATUS)
                fprintf(f, "deltatune_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                        name, status_codes[k], (unsigned long long)c);
            else
                fprintf(f, "deltatune_http_requests_total{route=\"%s\",status=\"other\"} %llu\n",
                        name, (unsigned long long)c);
        }
    }
    fputs("# HELP deltatune_http_request_duration_seconds Request latency by route.\n"
          "# TYPE deltatune_http_request_duration_seconds histogram\n", f);
    for (int row = 0; row <= m->nroutes; row++) {
        const char *name = row < m->nroutes ? r->s->routes[row].name : "unmatched";
        uint64_t cum = 0;
        for (int b = 0; b <= NB; b++) {
            cum += __atomic_load_n(&m->hist[row * (NB + 1) + b], __ATOMIC_RELAXED);
            if (b < NB)
                fprintf(f, "deltatune_http_request_duration_seconds_bucket{route=\"%s\","
                           "le=\"%g\"} %llu\n", name, buckets[b], (unsigned long long)cum);
            else
                fprintf(f, "deltatune_http_request_duration_seconds_bucket{route=\"%s\","
                           "le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
        }
        fprintf(f, "deltatune_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", name,
                (double)__atomic_load_n(&m->sum_ns[row], __ATOMIC_RELAXED) / 1e9);
        fprintf(f, "deltatune_http_request_duration_seconds_count{route=\"%s\"} %llu\n", name,
                (unsigned long long)cum);
    }
    int64_t depth = 0;
    int redis_up = !queue_depth(r->s->q, &depth, err);
    fprintf(f, "# HELP deltatune_redis_up Redis answered.\n# TYPE deltatune_redis_up gauge\n"
               "deltatune_redis_up %d\n", redis_up);
    if (redis_up)
        fprintf(f, "# HELP deltatune_queue_depth Wake-ups waiting in Redis.\n"
                   "# TYPE deltatune_queue_depth gauge\ndeltatune_queue_depth %lld\n",
                (long long)depth);
    chat_stats cs;
    chat_counters(&cs);
    fprintf(f, "# HELP deltatune_inference_requests_total Chat and completion requests handed "
               "to serving workers.\n# TYPE deltatune_inference_requests_total counter\n"
               "deltatune_inference_requests_total %llu\n"
               "# HELP deltatune_inference_tokens_total Text pieces relayed from serving workers "
               "(one per generated token that added text).\n"
               "# TYPE deltatune_inference_tokens_total counter\n"
               "deltatune_inference_tokens_total %llu\n"
               "# HELP deltatune_inference_cancelled_total Requests whose client went away "
               "first.\n# TYPE deltatune_inference_cancelled_total counter\n"
               "deltatune_inference_cancelled_total %llu\n"
               "# HELP deltatune_inference_timeouts_total Requests no worker took in time, or "
               "whose worker went silent.\n# TYPE deltatune_inference_timeouts_total counter\n"
               "deltatune_inference_timeouts_total %llu\n"
               "# HELP deltatune_inference_open Requests in flight.\n"
               "# TYPE deltatune_inference_open gauge\ndeltatune_inference_open %d\n"
               "# HELP deltatune_inference_queue_wait_seconds Time from a request's arrival to "
               "a serving worker taking it.\n"
               "# TYPE deltatune_inference_queue_wait_seconds summary\n"
               "deltatune_inference_queue_wait_seconds_sum %.6f\n"
               "deltatune_inference_queue_wait_seconds_count %llu\n"
               "# HELP deltatune_inference_time_to_first_token_seconds Time from a request's "
               "arrival to its first text.\n"
               "# TYPE deltatune_inference_time_to_first_token_seconds summary\n"
               "deltatune_inference_time_to_first_token_seconds_sum %.6f\n"
               "deltatune_inference_time_to_first_token_seconds_count %llu\n",
            (unsigned long long)cs.requests, (unsigned long long)cs.tokens,
            (unsigned long long)cs.cancelled, (unsigned long long)cs.timeouts, cs.open,
            cs.queue_wait_s, (unsigned long long)cs.started, cs.first_token_s,
            (unsigned long long)cs.first_tokens);
    fprintf(f, "# HELP deltatune_model_info_reads_total Model files read for the base "
               "models' family, context length and template (the rest came from the "
               "cache).\n# TYPE deltatune_model_info_reads_total counter\n"
               "deltatune_model_info_reads_total %llu\n",
            (unsigned long long)models_info_reads());
    db_stats st;
    memset(&st, 0, sizeof st);
    db *d = db_pool_acquire(r->s->pool, 1000);
    int db_up = d && !db_stats_get(d, &st, err);
    if (d) db_pool_release(r->s->pool, d);
    fprintf(f, "# HELP deltatune_db_up PostgreSQL answered.\n# TYPE deltatune_db_up gauge\n"
               "deltatune_db_up %d\n", db_up);
    if (db_up) {
        fputs("# HELP deltatune_jobs Jobs by status.\n# TYPE deltatune_jobs gauge\n", f);
        for (int i = 0; i < 7; i++)
            fprintf(f, "deltatune_jobs{status=\"%s\"} %lld\n", db_job_status_names[i],
                    (long long)st.jobs_by_status[i]);
        fprintf(f, "# HELP deltatune_training_tokens_per_second Sum over running jobs.\n"
                   "# TYPE deltatune_training_tokens_per_second gauge\n"
                   "deltatune_training_tokens_per_second %.3f\n", st.tokens_per_second);
        fputs("# HELP deltatune_worker_heartbeat_age_seconds Seconds since each worker's "
              "last heartbeat.\n# TYPE deltatune_worker_heartbeat_age_seconds gauge\n", f);
        int64_t now = (int64_t)time(NULL);
        int alive = 0;
        for (int i = 0; i < st.nworkers; i++) {
            db_worker *w = &st.workers[i];
            int64_t age = now - w->heartbeat_at;
            if (age <= 3 * r->s->cfg.lease_seconds && strcmp(w->status, "stopped")) alive++;
            fputs("deltatune_worker_heartbeat_age_seconds{worker=\"", f);
            label(f, w->id);
            fputs("\",device=\"", f);
            label(f, w->device);
            fputs("\",status=\"", f);
            label(f, w->status);
            fprintf(f, "\"} %lld\n", (long long)(age < 0 ? 0 : age));
        }
        fprintf(f, "# HELP deltatune_workers_alive Workers heard from recently.\n"
                   "# TYPE deltatune_workers_alive gauge\ndeltatune_workers_alive %d\n", alive);
        free(st.workers);
    }
    fclose(f);
    reply_text(r, 200, text, len, "text/plain; version=0.0.4");
}

void ops_openapi(req *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        strlen(server_openapi_json), (void *)server_openapi_json, MHD_RESPMEM_PERSISTENT);
    if (!resp) { reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    reply_mhd(r, 200, resp);
}
