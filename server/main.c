/* main.c: deltatune-server. Reads settings (defaults < DELTATUNE_* < flags),
 * serves the API, and runs the rescuer (expired leases back to queued or
 * failed) and the reconciler (queued jobs re-published to Redis when the
 * wake-up list is short of them, and after Redis reconnects) every
 * rescue-interval seconds. SIGINT/SIGTERM stop it cleanly. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/log.h"
#include "handlers.h"

static const char usage[] =
    "usage: deltatune-server [options]\n"
    "\n"
    "The deltatune HTTP API (OpenAI-compatible fine-tuning). Every /v1 route\n"
    "needs \"Authorization: Bearer <key>\" (keys: `deltatune keys create`);\n"
    "/healthz, /readyz, /metrics and /v1/openapi.json are public.\n"
    "\n";

typedef struct bg {
    server *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
} bg;

static void reconcile(server *s, db *d, uint64_t *gen)
{
    char err[DT_ERR_LEN];
    int requeued = 0, failed = 0;
    if (db_rescue_expired(d, &requeued, &failed, err)) {
        log_msg(DT_LOG_WARN, "rescuer", "%s", err);
        return;
    }
    if (requeued || failed)
        log_msg(DT_LOG_INFO, "rescuer", "expired leases: %d requeued, %d failed", requeued, failed);
    char (*ids)[DB_ID_LEN] = NULL;
    int n = 0;
    if (db_jobs_queued(d, 1000, &ids, &n, err)) {
        log_msg(DT_LOG_WARN, "reconciler", "%s", err);
        return;
    }
    int64_t depth = 0;
    int qerr = queue_depth(s->q, &depth, err);
    uint64_t g = queue_generation(s->q);
    if (n && !qerr && (depth < n || g != *gen)) {
        int sent = 0;
        for (int i = 0; i < n && !queue_publish(s->q, ids[i], err); i++) sent++;
        log_msg(DT_LOG_INFO, "reconciler", "re-published %d of %d queued job(s)", sent, n);
    }
    if (!qerr) *gen = g;
    free(ids);
}

static void *bg_main(void *arg)
{
    bg *b = arg;
    db *d = NULL;
    uint64_t gen = 0;
    char err[DT_ERR_LEN];
    pthread_mutex_lock(&b->mu);
    while (!b->stop) {
        pthread_mutex_unlock(&b->mu);
        if (!d && db_connect(&d, b->s->cfg.database_url, err)) {
            log_msg(DT_LOG_WARN, "reconciler", "%s", err);
            d = NULL;
        }
        if (d) reconcile(b->s, d, &gen);
        pthread_mutex_lock(&b->mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += b->s->cfg.rescue_interval_s;
        while (!b->stop && pthread_cond_timedwait(&b->cv, &b->mu, &until) == 0) {}
    }
    pthread_mutex_unlock(&b->mu);
    db_free(d);
    return NULL;
}

int main(int argc, char **argv)
{
    server s;
    char err[DT_ERR_LEN], redacted[CONFIG_URL_LEN];
    int rc = 1;
    memset(&s, 0, sizeof s);
    config_defaults(&s.cfg);
    if (config_from_env(&s.cfg, err)) goto usage_err;
    for (int i = 1; i < argc;) {
        int k = config_flag(&s.cfg, argc, argv, &i, err);
        if (k < 0) goto usage_err;
        if (k) continue;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            config_help(stdout);
            return 0;
        }
        snprintf(err, sizeof err, "unknown option \"%s\" (see --help)", argv[i]);
        goto usage_err;
    }
    if (config_check(&s.cfg, err)) goto usage_err;
    log_init("server", s.cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    sigset_t stop_sigs;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGINT);
    sigaddset(&stop_sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_sigs, NULL); /* every thread inherits this */

    if (dt_mkdirs(s.cfg.artifact_root, err)) {
        log_msg(DT_LOG_ERROR, "startup", "%s", err);
        return 1;
    }
    s.routes = server_routes;
    s.nroutes = server_nroutes;
    s.started_at = (int64_t)time(NULL);
    if (!(s.m = metrics_new(s.nroutes)) ||
        db_pool_new(&s.pool, s.cfg.database_url, s.cfg.db_pool_size, err) ||
        queue_open(&s.q, s.cfg.redis_url, err)) {
        log_msg(DT_LOG_ERROR, "startup", "%s", err);
        goto out;
    }
    db *probe = db_pool_acquire(s.pool, 1000);
    log_redact_url(s.cfg.database_url, redacted, sizeof redacted);
    if (!probe)
        log_msg(DT_LOG_WARN, "startup", "PostgreSQL (%s) unreachable: answering 503 until it is",
                redacted);
    else
        db_pool_release(s.pool, probe);
    if (http_start(&s, err)) {
        log_msg(DT_LOG_ERROR, "startup", "%s", err);
        goto out;
    }
    bg b = {.s = &s, .stop = 0};
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    pthread_t th;
    int have_bg = !pthread_create(&th, NULL, bg_main, &b);
    log_json(DT_LOG_INFO, "startup",
             json_pack("{s:s, s:i, s:s, s:i, s:I}", "listen", s.cfg.listen_host, "port",
                       s.cfg.listen_port, "database", redacted, "threads", s.cfg.threads,
                       "max_upload_bytes", (json_int_t)s.cfg.max_upload_bytes));
    int sig = 0;
    sigwait(&stop_sigs, &sig);
    log_msg(DT_LOG_INFO, "shutdown", "signal %d", sig);
    http_stop(&s);
    if (have_bg) {
        pthread_mutex_lock(&b.mu);
        b.stop = 1;
        pthread_cond_signal(&b.cv);
        pthread_mutex_unlock(&b.mu);
        pthread_join(th, NULL);
    }
    rc = 0;
out:
    http_stop(&s);
    queue_free(s.q);
    db_pool_free(s.pool);
    metrics_free(s.m);
    return rc;
usage_err:
    fprintf(stderr, "deltatune-server: %s\n", err);
    return 2;
}
