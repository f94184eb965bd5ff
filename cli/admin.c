/* admin.c: operator commands on the database.
 *
 *   deltatune migrate [--migrations DIR]
 *   deltatune keys create --owner NAME      (prints the key once, on stdout)
 *   deltatune keys list
 *   deltatune keys revoke PREFIX
 *   deltatune models add --id ID --path PATH (HF directory or .gguf; loaded
 *                                            once to check it)
 *   deltatune models list
 *   deltatune owners set NAME [--max-jobs N] [--max-storage BYTES]
 *                             [--max-upload BYTES]   (K/M/G suffixes; 0 = no
 *                                            limit; "default" = the server's)
 *   deltatune owners list
 *
 * Every command also takes the config flags (--database-url ...) and reads
 * DELTATUNE_* variables. */
#include "admin.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gpu/engine_api.h"
#include "gpu/model.h"
#include "gpu/tokenizer.h"
#include "api/auth.h"
#include "api/config.h"
#include "api/db.h"
#include "api/log.h"

static const char usage[] =
    "usage:\n"
    "  deltatune migrate [--migrations DIR]\n"
    "  deltatune keys create --owner NAME\n"
    "  deltatune keys list\n"
    "  deltatune keys revoke PREFIX\n"
    "  deltatune models add --id ID --path PATH\n"
    "  deltatune models list\n"
    "  deltatune owners set NAME [--max-jobs N] [--max-storage BYTES] [--max-upload BYTES]\n"
    "  deltatune owners list\n"
    "\n"
    "migrate applies migrations/NNNN_*.sql not yet applied (DIR defaults to\n"
    "$DELTATUNE_MIGRATIONS_DIR, ./migrations, or ../migrations next to the\n"
    "binary). Model ids: 1-200 of [A-Za-z0-9._-]. Owner names: 1-64 of\n"
    "[A-Za-z0-9_-].\n"
    "owners set: per-owner limits, whichever of the owner's keys is used: active\n"
    "jobs (validating, queued, running, paused), stored bytes (uploads, checkpoints,\n"
    "models) and one upload's bytes; sizes take K/M/G suffixes, 0 = no limit,\n"
    "\"default\" = the server's DELTATUNE_OWNER_MAX_JOBS, DELTATUNE_OWNER_MAX_STORAGE,\n"
    "DELTATUNE_MAX_UPLOAD_BYTES (an upload limit never exceeds the last).\n\n";

typedef struct opts {
    api_config cfg;
    const char *owner, *id, *path, *migrations;
    const char *max_jobs, *max_storage, *max_upload;
    const char *pos[4];
    int npos;
} opts;

static int parse(int argc, char **argv, int first, opts *o)
{
    char err[DT_ERR_LEN];
    config_defaults(&o->cfg);
    if (config_from_env(&o->cfg, err)) {
        fprintf(stderr, "deltatune: %s\n", err);
        return 2;
    }
    for (int i = first; i < argc;) {
        int rc = config_flag(&o->cfg, argc, argv, &i, err);
        if (rc < 0) {
            fprintf(stderr, "deltatune: %s\n", err);
            return 2;
        }
        if (rc) continue;
        const char *a = argv[i];
        const char **dst = !strcmp(a, "--owner") ? &o->owner
                         : !strcmp(a, "--id") ? &o->id
                         : !strcmp(a, "--path") ? &o->path
                         : !strcmp(a, "--migrations") ? &o->migrations
                         : !strcmp(a, "--max-jobs") ? &o->max_jobs
                         : !strcmp(a, "--max-storage") ? &o->max_storage
                         : !strcmp(a, "--max-upload") ? &o->max_upload : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            config_help(stdout);
            exit(0);
        }
        if (dst) {
            if (i + 1 >= argc) {
                fprintf(stderr, "deltatune: %s needs a value\n", a);
                return 2;
            }
            *dst = argv[i + 1];
            i += 2;
        } else if (a[0] == '-' || o->npos == 4) {
            fprintf(stderr, "deltatune: unknown argument \"%s\"\n%s", a, usage);
            return 2;
        } else {
            o->pos[o->npos++] = a;
            i++;
        }
    }
    return 0;
}

static int connect_db(const opts *o, db **d)
{
    char err[DT_ERR_LEN];
    if (db_connect(d, o->cfg.database_url, err)) {
        fprintf(stderr, "deltatune: %s\n", err);
        return 1;
    }
    return 0;
}

static const char *find_migrations(const opts *o, char *buf, size_t n)
{
    struct stat st;
    if (o->migrations) return o->migrations;
    const char *env = getenv("DELTATUNE_MIGRATIONS_DIR");
    if (env && *env) return env;
    if (!stat("migrations/0001_init.sql", &st)) return "migrations";
    char exe[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (l > 0) {
        exe[l] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        int w = snprintf(buf, n, "%s/../migrations", exe);
        char probe[PATH_MAX + 32];
        if (w > 0 && (size_t)w < n &&
            snprintf(probe, sizeof probe, "%s/0001_init.sql", buf) < (int)sizeof probe &&
            !stat(probe, &st))
            return buf;
    }
    return "/usr/share/deltatune/migrations";
}

static int cmd_migrate(opts *o)
{
    char err[DT_ERR_LEN], buf[PATH_MAX];
    int applied = 0;
    const char *dir = find_migrations(o, buf, sizeof buf);
    if (db_migrate(o->cfg.database_url, dir, &applied, err)) {
        fprintf(stderr, "deltatune migrate: %s\n", err);
        return 1;
    }
    printf("migrate: %d migration(s) applied from %s\n", applied, dir);
    return 0;
}

static void fmt_time(int64_t t, char *out, size_t n)
{
    if (!t) { snprintf(out, n, "-"); return; }
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- keys and models: one function a subcommand -------------------------- */

/* A subcommand returns 0, 1 (it failed; it printed why) or 2 (usage). It may
 * open *d (connect_db), which the caller frees; err is its scratch. */
typedef int (*sub_fn)(opts *o, db **d, char *err);

static int keys_create(opts *o, db **d, char *err)
{
    if (!o->owner || !auth_owner_valid(o->owner)) {
        fprintf(stderr, "deltatune keys create: --owner NAME (1-64 of A-Za-z0-9_-) "
                        "is required\n");
        return 2;
    }
    if (connect_db(o, d)) return 1;
    char key[AUTH_KEY_LEN + 1], prefix[AUTH_PREFIX_LEN + 1], hash[65];
    if (auth_key_generate(key, prefix, hash) ||
        db_key_create(*d, prefix, hash, o->owner, err)) {
        fprintf(stderr, "deltatune keys create: %s\n", err);
        return 1;
    }
    fprintf(stderr, "created key %s for owner %s; it is shown once, store it now:\n",
            prefix, o->owner);
    printf("%s\n", key);
    explicit_bzero(key, sizeof key);
    return 0;
}

static int keys_list(opts *o, db **d, char *err)
{
    if (connect_db(o, d)) return 1;
    db_key *k = NULL;
    int n = 0;
    if (db_key_list(*d, &k, &n, err)) {
        fprintf(stderr, "deltatune keys list: %s\n", err);
        return 1;
    }
    printf("%-10s %-24s %-22s %s\n", "PREFIX", "OWNER", "CREATED", "REVOKED");
    for (int i = 0; i < n; i++) {
        char c[32], r[32];
        fmt_time(k[i].created_at, c, sizeof c);
        fmt_time(k[i].revoked_at, r, sizeof r);
        printf("%-10s %-24s %-22s %s\n", k[i].prefix, k[i].owner, c, r);
    }
    free(k);
    return 0;
}

static int keys_revoke(opts *o, db **d, char *err)
{
    if (connect_db(o, d)) return 1;
    if (db_key_revoke(*d, o->pos[1], err)) {
        fprintf(stderr, "deltatune keys revoke: %s\n", err);
        return 1;
    }
    printf("revoked %s\n", o->pos[1]);
    return 0;
}

static int model_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > 200) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int models_add(opts *o, db **d, char *err)
{
    if (!o->id || !o->path || !model_id_valid(o->id)) {
        fprintf(stderr, "deltatune models add: --id ID (1-200 of A-Za-z0-9._-) and "
                        "--path PATH are required\n");
        return 2;
    }
    char abs[PATH_MAX];
    if (!realpath(o->path, abs) || strlen(abs) >= DB_PATH_LEN) {
        fprintf(stderr, "deltatune models add: %s: not found\n", o->path);
        return 1;
    }
    dt_weights w;
    memset(&w, 0, sizeof w);
    if (dt_weights_open(abs, &w, err)) { /* every check, nothing converted */
        fprintf(stderr, "deltatune models add: %s does not load: %s\n", abs, err);
        return 1;
    }
    fprintf(stderr, "models add: %s: %s, %d layers, d_model %d, vocab %d\n", abs,
            w.cfg.arch == DT_ARCH_GPT2 ? "gpt2" : "llama", w.cfg.n_layer,
            w.cfg.d_model, w.cfg.vocab);
    dt_weights_free(&w);
    dt_tokenizer *tok = dt_model_tokenizer(abs, err);
    if (!tok) {
        fprintf(stderr, "deltatune models add: %s: no usable tokenizer: %s\n", abs, err);
        return 1;
    }
    dt_tokenizer_free(tok);
    dt_arch_info ai;
    if (!dt_arch_info_read(abs, &ai, err))
        fprintf(stderr, "models add: %s: family %s, context length %lld, %s\n", abs,
                ai.family[0] ? ai.family : "unknown", ai.context_length,
                ai.chat_template ? "chat template" : "no chat template");
    if (connect_db(o, d)) return 1;
    db_model m;
    memset(&m, 0, sizeof m);
    snprintf(m.id, sizeof m.id, "%s", o->id);
    snprintf(m.kind, sizeof m.kind, "base");
    memcpy(m.path, abs, strlen(abs) + 1);
    if (db_model_put(*d, &m, err)) {
        fprintf(stderr, "deltatune models add: %s\n", err);
        return 1;
    }
    printf("added base model %s (%s)\n", m.id, abs);
    return 0;
}

static int models_list(opts *o, db **d, char *err)
{
    if (connect_db(o, d)) return 1;
    db_model *m = NULL;
    int n = 0;
    if (db_model_list(*d, NULL, &m, &n, err)) {
        fprintf(stderr, "deltatune models list: %s\n", err);
        return 1;
    }
    printf("%-48s %-11s %-16s %s\n", "ID", "KIND", "OWNER", "PATH");
    for (int i = 0; i < n; i++)
        printf("%-48s %-11s %-16s %s\n", m[i].id, m[i].kind,
               m[i].owner[0] ? m[i].owner : "-", m[i].path);
    free(m);
    return 0;
}

/* ---- owners: per-owner limits --------------------------------------------- */

/* An owners set value: NULL keeps, "default" clears, else a count (bytes:
 * with K/M/G suffixes). 0 or 2 after printing why. */
static int limit_arg(const char *flag, const char *v, int bytes, int64_t *out)
{
    if (!v) { *out = DB_LIMIT_KEEP; return 0; }
    if (!strcmp(v, "default")) { *out = DB_LIMIT_DEFAULT; return 0; }
    int64_t x = -1;
    char *end;
    if (bytes) {
        if (config_parse_bytes(v, &x)) x = -1;
    } else {
        long long y = strtoll(v, &end, 10);
        x = (end != v && !*end && y >= 0 && y <= 2147483647) ? y : -1;
    }
    if (x < 0) {
        fprintf(stderr, "deltatune owners set: %s: \"%s\" is not %s, 0 (no limit) or "
                "\"default\"\n", flag, v, bytes ? "a size (bytes; K/M/G suffixes)"
                                              : "a count (0-2147483647)");
        return 2;
    }
    *out = x;
    return 0;
}

static int owners_set(opts *o, db **d, char *err)
{
    const char *name = o->pos[1];
    db_owner_limits l;
    memset(&l, 0, sizeof l);
    if (!auth_owner_valid(name)) {
        fprintf(stderr, "deltatune owners set: NAME must be 1-64 of A-Za-z0-9_-\n");
        return 2;
    }
    snprintf(l.owner, sizeof l.owner, "%s", name);
    if (!o->max_jobs && !o->max_storage && !o->max_upload) {
        fprintf(stderr, "deltatune owners set: give --max-jobs, --max-storage or "
                "--max-upload\n");
        return 2;
    }
    if (limit_arg("--max-jobs", o->max_jobs, 0, &l.max_jobs) ||
        limit_arg("--max-storage", o->max_storage, 1, &l.max_storage_bytes) ||
        limit_arg("--max-upload", o->max_upload, 1, &l.max_upload_bytes))
        return 2;
    if (connect_db(o, d)) return 1;
    db_owner_limits now;
    if (db_owner_limits_set(*d, &l, err) || db_owner_limits_get(*d, name, &now, err)) {
        fprintf(stderr, "deltatune owners set: %s\n", err);
        return 1;
    }
    printf("owner %s: max-jobs %lld, max-storage %lld, max-upload %lld (-1 = default, "
           "0 = no limit)\n", name, (long long)now.max_jobs,
           (long long)now.max_storage_bytes, (long long)now.max_upload_bytes);
    return 0;
}

static void fmt_limit(int64_t v, char *out, size_t n)
{
    if (v < 0) snprintf(out, n, "default");
    else if (v == 0) snprintf(out, n, "unlimited");
    else snprintf(out, n, "%lld", (long long)v);
}

static int owners_list(opts *o, db **d, char *err)
{
    if (connect_db(o, d)) return 1;
    db_owner_limits *l = NULL;
    int n = 0;
    if (db_owner_list(*d, &l, &n, err)) {
        fprintf(stderr, "deltatune owners list: %s\n", err);
        return 1;
    }
    printf("%-24s %-12s %-14s %-12s %-11s %s\n", "OWNER", "MAX_JOBS", "MAX_STORAGE",
           "MAX_UPLOAD", "ACTIVE_JOBS", "UPLOADED_BYTES");
    for (int i = 0; i < n; i++) {
        char a[32], b[32], c[32];
        fmt_limit(l[i].max_jobs, a, sizeof a);
        fmt_limit(l[i].max_storage_bytes, b, sizeof b);
        fmt_limit(l[i].max_upload_bytes, c, sizeof c);
        printf("%-24s %-12s %-14s %-12s %-11lld %lld\n", l[i].owner, a, b, c,
               (long long)l[i].active_jobs, (long long)l[i].file_bytes);
    }
    free(l);
    fprintf(stderr, "default: max-jobs %d, max-storage %lld, max-upload %lld (0 = no limit; "
            "this shell's DELTATUNE_* settings, which the server's may differ from)\n",
            o->cfg.owner_max_jobs, (long long)o->cfg.owner_max_storage_bytes,
            (long long)o->cfg.max_upload_bytes);
    return 0;
}

/* The subcommand table: command, subcommand, the positional arguments it
 * needs with its own name (0: not checked), its function. */
static const struct {
    const char *cmd, *sub;
    int npos;
    sub_fn run;
} subs[] = {
    {"keys", "create", 0, keys_create},
    {"keys", "list", 0, keys_list},
    {"keys", "revoke", 2, keys_revoke},
    {"models", "add", 0, models_add},
    {"models", "list", 0, models_list},
    {"owners", "set", 2, owners_set},
    {"owners", "list", 0, owners_list},
};

/* Runs cmd's subcommand named by the first positional argument; prints the
 * usage for one it does not have. Returns the exit status. */
static int run_sub(const char *cmd, opts *o)
{
    const char *sub = o->npos ? o->pos[0] : "";
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        if (strcmp(subs[i].cmd, cmd) || strcmp(subs[i].sub, sub) ||
            (subs[i].npos && o->npos != subs[i].npos))
            continue;
        char err[DT_ERR_LEN];
        db *d = NULL;
        int rc = subs[i].run(o, &d, err);
        db_free(d);
        return rc;
    }
    fputs(usage, stderr);
    return 2;
}

int dt_admin_main(int argc, char **argv)
{
    opts o;
    memset(&o, 0, sizeof o);
    int rc = parse(argc, argv, 1, &o);
    if (rc) return rc;
    log_init("deltatune", o.cfg.log_level);
    if (!strcmp(argv[0], "migrate")) return cmd_migrate(&o);
    if (!strcmp(argv[0], "keys") || !strcmp(argv[0], "models") || !strcmp(argv[0], "owners"))
        return run_sub(argv[0], &o);
    fputs(usage, stderr);
    return 2;
}
