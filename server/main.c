/* main.c: deltatune-server. Reads settings (defaults < DELTATUNE_* < flags),
 * serves the API, and runs the rescuer (expired leases back to queued or
 * failed) and the reconciler (queued jobs re-published to Redis when the
 * wake-up list is short of them, and after Redis reconnects) every
 * rescue-interval seconds; the same pass removes expired files. SIGINT/SIGTERM
 * stop it cleanly. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/log.h"
#include "handlers.h"
#include "ratelimit.h"
#include "sse.h"
#include "chat.h"
#include "api/sched.h"
#include "base/clock.h"
#include "base/file.h"

static const char usage[] =
    "usage: deltatune-server [options]\n"
    "\n"
    "The deltatune HTTP API (OpenAI-compatible fine-tuning). Every /v1 route\n"
    "needs \"Authorization: Bearer <key>\" (keys: `deltatune keys create`);\n"
    "/healthz, /readyz, /metrics and /v1/openapi.json are public.\n"
    "Each API key may send --rate-limit requests a second (bursts up to\n"
    "--rate-burst); above that the answer is 429 rate_limit_exceeded with\n"
    "Retry-After and x-ratelimit-* headers. --rate-limit 0 turns it off.\n"
    "\n";

typedef struct bg {
    server *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
} bg;

/* Removes files past their expires_after (rows first, then the bytes). */
static void expire_files(server *s, db *d)
{
    char err[DT_ERR_LEN], path[CONFIG_PATH_LEN + DB_PATH_LEN];
    char (*paths)[DB_PATH_LEN] = NULL;
    int n = 0;
    if (db_files_expire(d, 1000, &paths, &n, err)) {
        log_msg(DT_LOG_WARN, "files.expire", "%s", err);
        return;
    }
    for (int i = 0; i < n; i++)
        if (!config_artifact_path(&s->cfg, paths[i], path, sizeof path) && unlink(path) &&
            errno != ENOENT)
            log_msg(DT_LOG_WARN, "files.expire", "%s: %s", path, strerror(errno));
    if (n) log_msg(DT_LOG_INFO, "files.expire", "removed %d expired file(s)", n);
    free(paths);
}

/* Removes upload temp files (files/.upload-*.tmp) that a server killed in
 * the middle of an upload left behind. A live upload writes its temp file
 * at least once per connection timeout (an idle connection is closed), so
 * one untouched for two timeouts belongs to no live request, of this server
 * or of another one sharing the artifact root. */
static void sweep_uploads(server *s)
{
    char dir[CONFIG_PATH_LEN + 16], path[CONFIG_PATH_LEN + 300];
    if (config_artifact_path(&s->cfg, "files", dir, sizeof dir))
        return;
    DIR *d = opendir(dir);
    if (!d)
        return;
    time_t now = time(NULL);
    long age = 2L * (s->cfg.connection_timeout_s > 0 ? s->cfg.connection_timeout_s : 30);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t nl = strlen(e->d_name);
        struct stat st;
        if (strncmp(e->d_name, ".upload-", 8) || nl < 12 || strcmp(e->d_name + nl - 4, ".tmp") ||
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path ||
            lstat(path, &st) || !S_ISREG(st.st_mode) || now - st.st_mtime <= age)
            continue;
        if (unlink(path) == 0)
            n++;
        else if (errno != ENOENT)
            log_msg(DT_LOG_WARN, "files.sweep", "%s: %s", path, strerror(errno));
    }
    closedir(d);
    if (n) log_msg(DT_LOG_INFO, "files.sweep", "removed %d abandoned upload temp file(s)", n);
}


static void *bg_main(void *arg)
{
    bg *b = arg;
    db *d = NULL;
    sched sc = {0};
    char err[DT_ERR_LEN];
    pthread_mutex_lock(&b->mu);
    while (!b->stop) {
        pthread_mutex_unlock(&b->mu);
        if (!d && db_connect(&d, b->s->cfg.database_url, err)) {
            log_msg(DT_LOG_WARN, "sched.failed", "%s", err);
            d = NULL;
        }
        if (d) {
            sched_pass(&sc, d, b->s->q, 0, NULL, err);
            expire_files(b->s, d);
        }
        sweep_uploads(b->s);
        pthread_mutex_lock(&b->mu);
        struct timespec until;
        dt_deadline(&until, b->s->cfg.rescue_interval_s);
        while (!b->stop && pthread_cond_timedwait(&b->cv, &b->mu, &until) == 0) {}
    }
    pthread_mutex_unlock(&b->mu);
    db_free(d);
    return NULL;
}

/* before_stop: MHD must not stop with suspended connections. */
static void stop_streams(server *s)
{
    sse_shutdown(s);
    chat_shutdown(s);
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
    auth_cache_set_ttl(s.cfg.auth_cache_seconds);
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
    s.rl = ratelimit_new(s.cfg.rate_limit, s.cfg.rate_burst);
    if (s.cfg.rate_limit > 0 && !s.rl) {
        log_msg(DT_LOG_ERROR, "startup", "out of memory");
        goto out;
    }
    /* the framework's hooks: request metrics (ops.c) and, before MHD
     * stops, the end of every event stream (sse.c) and of every chat or
     * completion request (chat.c); auth stays the default
     * (API keys in PostgreSQL) */
    s.on_complete = metrics_observe;
    s.before_stop = stop_streams;
    if (!(s.on_complete_cls = metrics_new(s.nroutes)) ||
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
             json_pack("{s:s, s:i, s:s, s:i, s:I, s:i, s:i}", "listen", s.cfg.listen_host,
                       "port", s.cfg.listen_port, "database", redacted, "threads",
                       s.cfg.threads, "max_upload_bytes", (json_int_t)s.cfg.max_upload_bytes,
                       "rate_limit", s.cfg.rate_limit, "rate_burst", s.cfg.rate_burst));
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
    metrics_free(s.on_complete_cls);
    ratelimit_free(s.rl);
    return rc;
usage_err:
    fprintf(stderr, "deltatune-server: %s\n", err);
    return 2;
}
