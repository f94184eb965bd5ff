/* config.h: settings of the service (server and worker), from defaults,
 * DELTATUNE_* environment variables and command-line flags, in that order of
 * precedence (a flag beats the environment, which beats the default).
 *
 * Every setting has one row in config.c's table: flag name, environment
 * variable, default and help text; config_help() prints that table, so
 * `--help` always documents every setting. */
#ifndef DT_API_CONFIG_H
#define DT_API_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#define CONFIG_URL_LEN 1024
#define CONFIG_PATH_LEN 1024

typedef struct api_config {
    /* Where things are. */
    char database_url[CONFIG_URL_LEN];  /* DELTATUNE_DATABASE_URL, libpq conninfo or URI */
    char redis_url[CONFIG_URL_LEN];     /* DELTATUNE_REDIS_URL, redis://host:port[/db] or unix:/path */
    char artifact_root[CONFIG_PATH_LEN]; /* DELTATUNE_ARTIFACT_ROOT: uploads, checkpoints, models */
    char listen_host[256];              /* DELTATUNE_LISTEN "host:port" (server) */
    int listen_port;

    /* HTTP limits (server). */
    int64_t max_upload_bytes;           /* DELTATUNE_MAX_UPLOAD_BYTES, bytes (512 MiB) */
    int64_t max_json_bytes;             /* DELTATUNE_MAX_JSON_BYTES, bytes (1 MiB) */
    int64_t max_line_bytes;             /* DELTATUNE_MAX_LINE_BYTES, longest upload line (1 MiB) */
    int max_connections;                /* DELTATUNE_MAX_CONNECTIONS, total */
    int max_connections_per_ip;         /* DELTATUNE_MAX_CONNECTIONS_PER_IP */
    int connection_timeout_s;           /* DELTATUNE_CONNECTION_TIMEOUT, seconds idle */
    int idempotency_lease_s;            /* DELTATUNE_IDEMPOTENCY_LEASE, seconds (0 = 2 x timeout) */
    int64_t connection_memory_bytes;    /* DELTATUNE_CONNECTION_MEMORY, bytes per connection */
    int threads;                        /* DELTATUNE_THREADS, MHD thread pool size */
    int db_pool_size;                   /* DELTATUNE_DB_POOL, PostgreSQL connections (server) */
    int rate_limit;                     /* DELTATUNE_RATE_LIMIT, requests/second per API key, 0 = off */
    int rate_burst;                     /* DELTATUNE_RATE_BURST, bucket size (0 = rate_limit) */
    int auth_cache_seconds;             /* DELTATUNE_AUTH_CACHE_SECONDS, key lookup cache TTL (0 = off) */
    char metrics_token[256];            /* DELTATUNE_METRICS_TOKEN, Bearer token for /metrics ("" = loopback only) */
    int sse_recheck_s;                  /* DELTATUNE_SSE_RECHECK_SECONDS, event streams re-check their key (10) */

    /* Jobs (server and worker). */
    int lease_seconds;                  /* DELTATUNE_LEASE_SECONDS, lease length (60) */
    int max_attempts;                   /* DELTATUNE_MAX_ATTEMPTS, lease losses before failed (3) */
    int poll_interval_ms;               /* DELTATUNE_POLL_INTERVAL_MS, worker DB poll / queue wait */
    int rescue_interval_s;              /* DELTATUNE_RESCUE_INTERVAL, rescuer + reconciler period */
    int checkpoint_keep;                /* DELTATUNE_CHECKPOINT_KEEP, resumable checkpoints per job (2) */
    int64_t export_shard_size;          /* DELTATUNE_EXPORT_SHARD_SIZE, bytes per safetensors
                                           file of a merged model (5 GB, as transformers) */

    /* Per-owner defaults (server) and the runtime limit (server and worker);
     * `deltatune owners set` overrides the owner ones. 0 = no limit. */
    int owner_max_jobs;                 /* DELTATUNE_OWNER_MAX_JOBS, active jobs per owner (100) */
    int64_t owner_max_storage_bytes;    /* DELTATUNE_OWNER_MAX_STORAGE, bytes per owner (100 GiB) */
    int max_runtime_seconds;            /* DELTATUNE_MAX_RUNTIME_SECONDS, per job attempt (7 days) */

    /* Inference (server): chat and completions handed to serving workers. */
    int infer_queue_wait_s;             /* DELTATUNE_INFER_QUEUE_WAIT, seconds a request waits for a worker (30) */
    int infer_silence_s;                /* DELTATUNE_INFER_SILENCE, seconds of worker silence that end a request (60) */
    int infer_max_tokens;               /* DELTATUNE_INFER_MAX_TOKENS, new tokens per request at most (4096) */

    int log_level;                      /* DELTATUNE_LOG_LEVEL debug|info|warn|error */
} api_config;

/* Fills every field with its documented default. */
void config_defaults(api_config *c);

/* Applies DELTATUNE_* variables that are set. Returns 0 or DT_EINVAL with
 * the variable named in err (DT_ERR_LEN bytes). */
int config_from_env(api_config *c, char *err);

/* Tries argv[*i] as a config flag ("--name value" or "--name=value").
 * Returns 1 and advances *i past the flag (and its value) when it is one,
 * 0 when argv[*i] is not a config flag (the caller handles it), or DT_EINVAL
 * with err set when the value is bad or missing. */
int config_flag(api_config *c, int argc, char **argv, int *i, char *err);

/* Checks cross-field constraints (ports, positive limits). 0 or DT_EINVAL. */
int config_check(const api_config *c, char *err);

/* Prints one line per setting: flag, environment variable, default, help. */
void config_help(FILE *f);

/* Resolves a stored path: absolute paths are returned as they are, relative
 * ones are joined to artifact_root. Returns 0 or DT_EINVAL if out is short. */
int config_artifact_path(const api_config *c, const char *stored, char *out,
                         size_t outlen);

/* Parses "123", "64k", "512M", "1G" (binary units) into bytes. */
int config_parse_bytes(const char *s, int64_t *out);

#endif
