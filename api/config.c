/* config.c: the settings table, defaults, DELTATUNE_* environment variables
 * and --flags. One row per setting; --help prints the table. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "base/dt.h"
#include "log.h"

enum { T_STR, T_INT, T_BYTES, T_HOSTPORT, T_LEVEL };

typedef struct setting {
    const char *flag;    /* without "--" */
    const char *env;
    int type;
    size_t off;          /* offset of the field in api_config */
    size_t len;          /* T_STR: buffer size */
    const char *def;     /* default, as text (parsed by config_defaults) */
    int64_t min, max;    /* T_INT / T_BYTES bounds */
    const char *help;
} setting;

#define F(x) offsetof(api_config, x)
#define S(x) sizeof(((api_config *)0)->x)

static const setting settings[] = {
    {"database-url", "DELTATUNE_DATABASE_URL", T_STR, F(database_url), S(database_url),
     "postgresql:///deltatune", 0, 0, "PostgreSQL connection string (libpq URI or key=value)"},
    {"redis-url", "DELTATUNE_REDIS_URL", T_STR, F(redis_url), S(redis_url),
     "redis://127.0.0.1:6379", 0, 0, "Redis URL: redis://[:password@]host[:port][/db] or unix:/path"},
    {"artifact-root", "DELTATUNE_ARTIFACT_ROOT", T_STR, F(artifact_root), S(artifact_root),
     "./artifacts", 0, 0, "directory for uploads, checkpoints and models (shared by all workers)"},
    {"listen", "DELTATUNE_LISTEN", T_HOSTPORT, F(listen_host), S(listen_host),
     "127.0.0.1:8080", 0, 0, "server address host:port (0.0.0.0 for every interface)"},
    {"max-upload-bytes", "DELTATUNE_MAX_UPLOAD_BYTES", T_BYTES, F(max_upload_bytes), 0,
     "512M", 1, INT64_MAX, "largest file upload (bytes; k/M/G suffixes)"},
    {"max-json-bytes", "DELTATUNE_MAX_JSON_BYTES", T_BYTES, F(max_json_bytes), 0,
     "1M", 1024, 1 << 30, "largest JSON request body"},
    {"max-line-bytes", "DELTATUNE_MAX_LINE_BYTES", T_BYTES, F(max_line_bytes), 0,
     "1M", 1024, 1 << 30, "longest line of an uploaded JSONL file (400 naming the line above it)"},
    {"max-connections", "DELTATUNE_MAX_CONNECTIONS", T_INT, F(max_connections), 0,
     "1024", 1, 1000000, "concurrent connections, total"},
    {"max-connections-per-ip", "DELTATUNE_MAX_CONNECTIONS_PER_IP", T_INT,
     F(max_connections_per_ip), 0, "64", 1, 1000000, "concurrent connections from one address"},
    {"connection-timeout", "DELTATUNE_CONNECTION_TIMEOUT", T_INT, F(connection_timeout_s), 0,
     "30", 1, 86400, "seconds a connection may stay idle"},
    {"idempotency-lease", "DELTATUNE_IDEMPOTENCY_LEASE", T_INT, F(idempotency_lease_s), 0,
     "0", 0, 86400, "seconds an unfinished Idempotency-Key request holds its key, renewed while "
     "it runs (0 = 2 x connection-timeout)"},
    {"connection-memory", "DELTATUNE_CONNECTION_MEMORY", T_BYTES, F(connection_memory_bytes), 0,
     "64k", 8192, 1 << 26, "memory pool per connection (headers, buffers)"},
    {"threads", "DELTATUNE_THREADS", T_INT, F(threads), 0,
     "4", 1, 1024, "HTTP worker threads (epoll thread pool)"},
    {"db-pool", "DELTATUNE_DB_POOL", T_INT, F(db_pool_size), 0,
     "8", 1, 1024, "PostgreSQL connections held by the server"},
    {"rate-limit", "DELTATUNE_RATE_LIMIT", T_INT, F(rate_limit), 0,
     "20000", 0, 100000000, "requests/second per API key (token bucket; 429 above it; 0 = off)"},
    {"rate-burst", "DELTATUNE_RATE_BURST", T_INT, F(rate_burst), 0,
     "0", 0, 100000000, "requests one API key may send at once (bucket size; 0 = rate-limit)"},
    {"auth-cache-seconds", "DELTATUNE_AUTH_CACHE_SECONDS", T_INT, F(auth_cache_seconds), 0,
     "5", 0, 3600, "seconds an API key lookup is cached (a revoked key works this long; 0 = off)"},
    {"metrics-token", "DELTATUNE_METRICS_TOKEN", T_STR, F(metrics_token), S(metrics_token),
     "", 0, 0, "bearer token for /metrics (empty: /metrics answers loopback clients only)"},
    {"sse-recheck-seconds", "DELTATUNE_SSE_RECHECK_SECONDS", T_INT, F(sse_recheck_s), 0,
     "10", 1, 10, "an open event stream re-checks its API key this often; closes if revoked"},
    {"lease-seconds", "DELTATUNE_LEASE_SECONDS", T_INT, F(lease_seconds), 0,
     "60", 5, 86400, "job lease; a worker silent this long loses its job"},
    {"max-attempts", "DELTATUNE_MAX_ATTEMPTS", T_INT, F(max_attempts), 0,
     "3", 1, 100, "lost leases before a job fails"},
    {"poll-interval-ms", "DELTATUNE_POLL_INTERVAL_MS", T_INT, F(poll_interval_ms), 0,
     "2000", 100, 600000, "worker: PostgreSQL poll period / queue wait"},
    {"rescue-interval", "DELTATUNE_RESCUE_INTERVAL", T_INT, F(rescue_interval_s), 0,
     "10", 1, 3600, "seconds between rescuer + reconciler passes"},
    {"owner-max-jobs", "DELTATUNE_OWNER_MAX_JOBS", T_INT, F(owner_max_jobs), 0,
     "100", 0, 1000000, "active jobs (validating, queued, running, paused) per owner; "
     "429 above it (0 = no limit; `deltatune owners set` overrides)"},
    {"owner-max-storage", "DELTATUNE_OWNER_MAX_STORAGE", T_BYTES, F(owner_max_storage_bytes), 0,
     "100G", 0, INT64_MAX, "bytes of uploads, checkpoints and models per owner; 413 above it "
     "(0 = no limit; `deltatune owners set` overrides)"},
    {"max-runtime-seconds", "DELTATUNE_MAX_RUNTIME_SECONDS", T_INT, F(max_runtime_seconds), 0,
     "604800", 1, 2147483647, "seconds a job attempt may run (default and ceiling of the job's "
     "max_runtime_seconds); the worker fails a job past it"},
    {"checkpoint-keep", "DELTATUNE_CHECKPOINT_KEEP", T_INT, F(checkpoint_keep), 0,
     "2", 1, 1000, "worker: checkpoints of a running job that keep their optimizer state "
     "(older ones and all of an ended job keep their weights only)"},
    {"export-shard-size", "DELTATUNE_EXPORT_SHARD_SIZE", T_BYTES, F(export_shard_size), 0,
     "5000000000", 1, INT64_MAX, "worker: bytes per safetensors file of a merged model; above "
     "it the weights are sharded with model.safetensors.index.json (transformers' 5 GB)"},
    {"infer-queue-wait", "DELTATUNE_INFER_QUEUE_WAIT", T_INT, F(infer_queue_wait_s), 0,
     "30", 1, 3600, "seconds a chat or completion request waits for a serving worker "
     "(then 503 with Retry-After)"},
    {"infer-silence", "DELTATUNE_INFER_SILENCE", T_INT, F(infer_silence_s), 0,
     "60", 1, 3600, "seconds without a word from the serving worker (model load included) "
     "that end a request with an error"},
    {"infer-max-tokens", "DELTATUNE_INFER_MAX_TOKENS", T_INT, F(infer_max_tokens), 0,
     "4096", 1, 1000000, "new tokens one chat or completion request may ask for"},
    {"log-level", "DELTATUNE_LOG_LEVEL", T_LEVEL, F(log_level), 0,
     "info", 0, 0, "debug | info | warn | error"},
};
#define NSETTINGS (int)(sizeof settings / sizeof settings[0])

int config_parse_bytes(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-') return DT_EINVAL;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s) return DT_EINVAL;
    int shift = 0;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        default: return DT_EINVAL;
        }
        end++;
        if (*end == 'i') end++;
        if (*end == 'B' || *end == 'b') end++;
        if (*end) return DT_EINVAL;
    }
    if (v > (INT64_MAX >> shift)) return DT_EINVAL;
    *out = (int64_t)v << shift;
    return 0;
}

static int set_value(api_config *c, const setting *s, const char *v,
                     const char *origin, char *err)
{
    char *base = (char *)c;
    switch (s->type) {
    case T_STR:
        if (strlen(v) >= s->len)
            return dt_errf(err, DT_EINVAL, "%s: longer than %zu characters",
                           origin, s->len - 1);
        strcpy(base + s->off, v);
        return 0;
    case T_HOSTPORT: {
        const char *colon = strrchr(v, ':');
        char *end;
        if (!colon || colon == v)
            return dt_errf(err, DT_EINVAL, "%s: \"%s\" is not host:port", origin, v);
        long port = strtol(colon + 1, &end, 10);
        if (*end || port < 0 || port > 65535 || end == colon + 1)
            return dt_errf(err, DT_EINVAL, "%s: bad port in \"%s\"", origin, v);
        size_t hl = (size_t)(colon - v);
        if (hl >= sizeof c->listen_host)
            return dt_errf(err, DT_EINVAL, "%s: host too long", origin);
        memcpy(c->listen_host, v, hl);
        c->listen_host[hl] = 0;
        c->listen_port = (int)port;
        return 0;
    }
    case T_LEVEL: {
        int l = log_level_parse(v);
        if (l < 0)
            return dt_errf(err, DT_EINVAL, "%s: \"%s\" is not debug|info|warn|error",
                           origin, v);
        *(int *)(base + s->off) = l;
        return 0;
    }
    case T_INT: case T_BYTES: {
        int64_t x;
        if (s->type == T_BYTES) {
            if (config_parse_bytes(v, &x))
                return dt_errf(err, DT_EINVAL, "%s: \"%s\" is not a size", origin, v);
        } else {
            char *end;
            errno = 0;
            long long y = strtoll(v, &end, 10);
            if (errno || end == v || *end)
                return dt_errf(err, DT_EINVAL, "%s: \"%s\" is not an integer", origin, v);
            x = y;
        }
        if (x < s->min || x > s->max)
            return dt_errf(err, DT_EINVAL, "%s: %lld is outside [%lld, %lld]", origin,
                           (long long)x, (long long)s->min, (long long)s->max);
        if (s->type == T_BYTES) *(int64_t *)(base + s->off) = x;
        else *(int *)(base + s->off) = (int)x;
        return 0;
    }
    }
    return DT_EINVAL;
}

void config_defaults(api_config *c)
{
    memset(c, 0, sizeof *c);
    for (int i = 0; i < NSETTINGS; i++) {
        int rc = set_value(c, &settings[i], settings[i].def, "default", NULL);
        (void)rc; /* the table's defaults are valid (tested) */
    }
}

int config_from_env(api_config *c, char *err)
{
    for (int i = 0; i < NSETTINGS; i++) {
        const char *v = getenv(settings[i].env);
        if (!v || !*v) continue;
        int rc = set_value(c, &settings[i], v, settings[i].env, err);
        if (rc) return rc;
    }
    return 0;
}

int config_flag(api_config *c, int argc, char **argv, int *i, char *err)
{
    const char *a = argv[*i];
    if (strncmp(a, "--", 2)) return 0;
    a += 2;
    const char *eq = strchr(a, '=');
    size_t nl = eq ? (size_t)(eq - a) : strlen(a);
    for (int k = 0; k < NSETTINGS; k++) {
        const setting *s = &settings[k];
        if (strlen(s->flag) != nl || strncmp(s->flag, a, nl)) continue;
        const char *v;
        int used = 1;
        if (eq) v = eq + 1;
        else if (*i + 1 < argc) { v = argv[*i + 1]; used = 2; }
        else return dt_errf(err, DT_EINVAL, "--%s needs a value", s->flag);
        char origin[80];
        snprintf(origin, sizeof origin, "--%s", s->flag);
        int rc = set_value(c, s, v, origin, err);
        if (rc) return rc;
        *i += used;
        return 1;
    }
    return 0;
}

int config_check(const api_config *c, char *err)
{
    if (!c->database_url[0])
        return dt_errf(err, DT_EINVAL, "DELTATUNE_DATABASE_URL is empty");
    if (!c->artifact_root[0])
        return dt_errf(err, DT_EINVAL, "DELTATUNE_ARTIFACT_ROOT is empty");
    if (c->max_connections_per_ip > c->max_connections)
        return dt_errf(err, DT_EINVAL,
                       "max-connections-per-ip (%d) exceeds max-connections (%d)",
                       c->max_connections_per_ip, c->max_connections);
    return 0;
}

void config_help(FILE *f)
{
    fprintf(f, "settings (flag, environment variable, default):\n");
    for (int i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];
        fprintf(f, "  --%-24s %-34s [%s]\n      %s\n", s->flag, s->env, s->def,
                s->help);
    }
    fprintf(f, "A flag beats the environment, which beats the default.\n");
}

int config_artifact_path(const api_config *c, const char *stored, char *out,
                         size_t outlen)
{
    int n;
    if (stored[0] == '/') n = snprintf(out, outlen, "%s", stored);
    else n = snprintf(out, outlen, "%s/%s", c->artifact_root, stored);
    return (n < 0 || (size_t)n >= outlen) ? DT_EINVAL : 0;
}
