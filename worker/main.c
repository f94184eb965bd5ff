/* main.c: deltatune-worker's command line. The service settings (database,
 * Redis, artifact root, lease, intervals) come from api/config.c, shared with
 * the server; the worker adds its own few flags. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/config.h"
#include "api/log.h"
#include "base/dt.h"
#include "gpu/cpu_tune.h"
#include "gpu/engine_api.h"
#include "serve.h"
#include "worker.h"

static const char usage[] =
"usage: deltatune-worker [options]\n"
"\n"
"Claims fine-tuning jobs from PostgreSQL (woken by Redis, polling as well),\n"
"trains them one at a time on one device and reports progress, checkpoints\n"
"and the merged model. Run one worker per GPU. SIGTERM/SIGINT stop the job\n"
"in progress between two micro-batches and hand it back to the queue: the\n"
"step in progress is dropped, the job resumes from its last checkpoint, and\n"
"the worker exits (within a micro-batch and a few database writes).\n"
"At start it picks the BLAS kernels `deltatune train` picks: on a CPU with\n"
"AVX-512 where OpenBLAS chose its AVX2 kernels it re-executes itself with\n"
"OPENBLAS_CORETYPE=SkylakeX (not when OPENBLAS_CORETYPE or DT_NO_BLAS_TUNE\n"
"is set) and logs the kernels in use (event worker.blas).\n"
"\n"
"worker options (flag, environment variable):\n"
"  --device D        DELTATUNE_DEVICE          cpu | cuda:N | auto (default cpu)\n"
"  --threads N       DELTATUNE_WORKER_THREADS  CPU threads for training\n"
"                                              (default 0 = all cores)\n"
"  --worker-id ID    DELTATUNE_WORKER_ID       unique name (default <host>-<pid>)\n"
"  --max-jobs N                                exit after N jobs (tests)\n"
"  --serve                                     serve chat and completion requests\n"
"                                              (POST /v1/chat/completions,\n"
"                                              /v1/completions) instead of training:\n"
"                                              loaded models stay in memory, least\n"
"                                              recently used first out, within\n"
"                                              --memory-limit (LoRA fine-tunes as\n"
"                                              adapters over their shared base);\n"
"                                              run as many as you like,\n"
"                                              on any host that reaches PostgreSQL,\n"
"                                              Redis and the artifact store\n"
"  --token-delay-ms N                          --serve: pause N ms after each decode step\n"
"                                              (tests and demos of streaming; default 0)\n"
"  --max-batch N                               --serve: concurrent requests on one model\n"
"                                              decoded together, at most (1-256, default\n"
"                                              16; continuous batching)\n"
"  --memory-limit BYTES  DELTATUNE_WORKER_MEMORY_LIMIT\n"
"                                              memory this worker may use (8G,\n"
"                                              512M, bytes); a job whose estimate\n"
"                                              exceeds it fails before it starts\n"
"                                              (default 80 % of MemAvailable; on\n"
"                                              cuda 80 % of the device's memory)\n"
"\n";

/* Parses a non-negative int; -1 when s is not one. */
static int parse_count(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    return (!*s || *end || v < 0 || v > 100000) ? -1 : (int)v;
}

static int set_worker_opt(wk_opts *o, const char *name, const char *v)
{
    if (!strcmp(name, "device")) {
        if (strcmp(v, "cpu") && strcmp(v, "auto") && strncmp(v, "cuda", 4))
            return -1;
        snprintf(o->device, sizeof o->device, "%s", v);
    } else if (!strcmp(name, "threads")) {
        if ((o->threads = parse_count(v)) < 0)
            return -1;
    } else if (!strcmp(name, "worker-id")) {
        if (!*v || strlen(v) >= sizeof o->worker_id)
            return -1;
        snprintf(o->worker_id, sizeof o->worker_id, "%s", v);
    } else if (!strcmp(name, "max-jobs")) {
        if ((o->max_jobs = parse_count(v)) < 0)
            return -1;
    } else if (!strcmp(name, "token-delay-ms")) {
        if ((o->token_delay_ms = parse_count(v)) < 0)
            return -1;
    } else if (!strcmp(name, "max-batch")) {
        if ((o->max_batch = parse_count(v)) < 1 || o->max_batch > 256)
            return -1;
    } else if (!strcmp(name, "memory-limit")) {
        if (dt_mem_parse_size(v, &o->memory_limit) || o->memory_limit < 1)
            return -1;
    } else {
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    static wk_opts o; /* large (URLs, paths): not on the stack */
    char err[DT_ERR_LEN] = "";
    config_defaults(&o.cfg);
    snprintf(o.device, sizeof o.device, "cpu");
    if (config_from_env(&o.cfg, err)) {
        fprintf(stderr, "deltatune-worker: %s\n", err);
        return 2;
    }
    static const struct { const char *name, *env; } envs[] = {
        {"device", "DELTATUNE_DEVICE"}, {"threads", "DELTATUNE_WORKER_THREADS"},
        {"worker-id", "DELTATUNE_WORKER_ID"},
        {"memory-limit", "DELTATUNE_WORKER_MEMORY_LIMIT"}};
    for (size_t i = 0; i < sizeof envs / sizeof envs[0]; i++) {
        const char *v = getenv(envs[i].env);
        if (v && *v && set_worker_opt(&o, envs[i].name, v) != 1) {
            fprintf(stderr, "deltatune-worker: %s: bad value \"%s\"\n", envs[i].env, v);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--serve")) {
            o.serve = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            config_help(stdout);
            return 0;
        }
        /* The worker's own flags first: --threads here is training threads,
         * not the server's HTTP thread pool. */
        if (!strncmp(a, "--", 2)) {
            char name[64];
            const char *eq = strchr(a + 2, '='), *v;
            size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            if (n < sizeof name) {
                memcpy(name, a + 2, n);
                name[n] = 0;
                v = eq ? eq + 1 : (i + 1 < argc ? argv[i + 1] : NULL);
                int r = v ? set_worker_opt(&o, name, v) : 0;
                if (r < 0 || (!v && (!strcmp(name, "device") || !strcmp(name, "threads") ||
                                     !strcmp(name, "worker-id") || !strcmp(name, "max-jobs") ||
                                     !strcmp(name, "token-delay-ms") ||
                                     !strcmp(name, "max-batch") ||
                                     !strcmp(name, "memory-limit")))) {
                    fprintf(stderr, "deltatune-worker: --%s: bad or missing value\n", name);
                    return 2;
                }
                if (r == 1) {
                    if (!eq)
                        i++;
                    continue;
                }
            }
        }
        int r = config_flag(&o.cfg, argc, argv, &i, err);
        if (r < 0) {
            fprintf(stderr, "deltatune-worker: %s\n", err);
            return 2;
        }
        if (r == 0) {
            fprintf(stderr, "deltatune-worker: unknown argument \"%s\" (see --help)\n", a);
            return 2;
        }
        i--; /* config_flag advanced past the flag; the loop adds one */
    }
    if (config_check(&o.cfg, err)) {
        fprintf(stderr, "deltatune-worker: %s\n", err);
        return 2;
    }
    if (!o.worker_id[0]) {
        char host[96] = "worker";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        snprintf(o.worker_id, sizeof o.worker_id, "%.96s-%d", host, (int)getpid());
    }
    /* The same BLAS kernels as `deltatune train` (gpu/cpu_tune.h): re-executes
     * itself, before any thread starts, when OpenBLAS would run slower
     * kernels than the CPU has. */
    dt_cpu_tune_reexec(argv);
    log_init("worker", o.cfg.log_level);
    const char *how, *core = dt_cpu_tune_core(&how);
    log_msg(DT_LOG_INFO, "worker.blas", "OpenBLAS kernels %s (chosen by %s)", core,
            how);
    return o.serve ? wk_serve(&o) : wk_main(&o);
}
