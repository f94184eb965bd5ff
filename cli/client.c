/* client.c: the client commands' dispatch, help, and the short ones:
 *
 *   deltatune jobs create | list | get | cancel | pause | resume | follow
 *   deltatune files upload | list | delete
 *   deltatune models list | delete   (list with an API key; `--admin`: the database)
 *
 * `jobs follow` is in client_follow.c, `models download` in
 * client_download.c, the HTTP layer in client_http.c. Text goes to stdout
 * in columns; `--json` prints the API's JSON instead. */
#include "client.h"
#include "client_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- help ------------------------------------------------------------------ */

#define CLIENT_INTRO                                                              \
    "These commands speak only the HTTP API at $DELTATUNE_URL with\n"             \
    "$DELTATUNE_API_KEY ('. .run/env' after 'make up' sets both); --url and\n"    \
    "--api-key override them, before or after the command.\n"

#define EXIT_HELP                                                                 \
    "Exit status: 0 ok, 1 API or network error (printed with the API's\n"         \
    "message and param, or the URL), 2 bad command line.\n"

static const char jobs_help[] =
    "usage: deltatune jobs <command> [options]\n"
    "\n"
    "  create --model M --training-file F [...]  create a fine-tuning job\n"
    "  list [--limit N] [--after JOB]            your jobs, newest first\n"
    "  get JOB                                    one job (JSON)\n"
    "  cancel JOB | pause JOB | resume JOB        change a job's state\n"
    "  follow JOB                                 live progress until the job ends\n"
    "\n" CLIENT_INTRO
    "'deltatune jobs <command> --help' describes a command.\n"
    "\n" EXIT_HELP
    "'follow' and 'create --follow' end with the job's outcome: 0 succeeded,\n"
    "3 failed, 4 cancelled.\n";

static const char files_help[] =
    "usage: deltatune files <command> [options]\n"
    "\n"
    "  upload PATH [--purpose P] [--expires-after SECONDS]   upload a JSONL file\n"
    "  list [--limit N] [--after FILE] [--purpose P]          your files, newest first\n"
    "  delete FILE                                            delete a file\n"
    "\n" CLIENT_INTRO "\n" EXIT_HELP;

static const char models_help[] =
    "usage: deltatune models <command> [options]\n"
    "\n"
    "Client commands (HTTP API):\n"
    "  list                        base models, your fine-tuned models and checkpoints\n"
    "  download MODEL [FILE] [-o DIR]\n"
    "                              a model's files (or one), resumable, sha256-checked\n"
    "  delete MODEL                delete one of your fine-tuned models or checkpoints\n"
    "\n" CLIENT_INTRO
    "\n"
    "Operator commands (PostgreSQL directly, DELTATUNE_DATABASE_URL):\n"
    "  add --id ID --path PATH     register a base model (HF directory or .gguf)\n"
    "  list --admin                the models table\n"
    "\n"
    "'models list' uses the API when an API key is set (--api-key or\n"
    "$DELTATUNE_API_KEY) and the database otherwise; --admin forces the database.\n"
    "'deltatune models download --help' describes the download.\n"
    "\n" EXIT_HELP;

/* ---- argument parsing ------------------------------------------------------------- */

int cl_parse(cl_ctx *c, int argc, char **argv, const struct option *opts, const char *help,
             int (*own)(void *ud, int id, const char *arg), void *ud,
             const char **pos, int maxpos, int *npos)
{
    int id;
    opterr = 0;
    optind = 0; /* glibc: start afresh */
    *npos = 0;
    while ((id = getopt_long(argc, argv, "-:ho:", opts, NULL)) != -1) {
        if (id == 1) { /* a positional argument, in order */
            if (*npos >= maxpos) {
                fprintf(stderr, "deltatune %s: unexpected argument \"%s\"\n"
                                "run 'deltatune %s --help' for the options\n",
                        c->cmd, optarg, c->cmd);
                return CL_EXIT_USAGE;
            }
            pos[(*npos)++] = optarg;
            continue;
        }
        if (id == 'h' || id == CL_O_HELP) {
            fputs(help, stdout);
            return CL_HELP_SHOWN;
        }
        if (id == '?' || id == ':') {
            const char *a = argv[optind - 1];
            fprintf(stderr, "deltatune %s: %s \"%s\"\nrun 'deltatune %s --help' for the options\n",
                    c->cmd, id == ':' ? "a value is needed after" : "unknown option", a,
                    c->cmd);
            return CL_EXIT_USAGE;
        }
        int known = 0;
        for (const struct option *q = opts; q->name; q++)
            if (q->val == id) known = 1;
        if (!known) { /* a short option another command has (-o) */
            fprintf(stderr, "deltatune %s: unknown option \"-%c\"\nrun 'deltatune %s --help' "
                            "for the options\n", c->cmd, id, c->cmd);
            return CL_EXIT_USAGE;
        }
        int r = cl_common_opt(c, id, optarg);
        if (r < 0) return CL_EXIT_USAGE;
        if (r == 0 && (!own || own(ud, id, optarg))) return CL_EXIT_USAGE;
    }
    return 0;
}

/* Parses "KEY=VALUE" into k (n bytes) and *v (into s). */
static int split_kv(const cl_ctx *c, const char *flag, const char *s, char *k, size_t n,
                    const char **v)
{
    const char *eq = strchr(s, '=');
    if (!eq || eq == s || (size_t)(eq - s) >= n) {
        fprintf(stderr, "deltatune %s: %s: \"%s\" is not KEY=VALUE\n", c->cmd, flag, s);
        return -1;
    }
    memcpy(k, s, (size_t)(eq - s));
    k[eq - s] = 0;
    *v = eq + 1;
    return 0;
}

static int parse_long(const cl_ctx *c, const char *flag, const char *s, long lo, long hi,
                      long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "deltatune %s: %s: \"%s\" is not an integer in [%ld, %ld]\n", c->cmd,
                flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* A hyperparameter value: integer, number, or else a string ("auto",
 * "q,v", "cosine"). New reference. */
static json_t *hp_value(const char *s)
{
    char *end;
    errno = 0;
    long long i = strtoll(s, &end, 10);
    if (*s && !*end && !errno) return json_integer(i);
    double d = strtod(s, &end);
    if (*s && !*end) return json_real(d);
    return json_string(s);
}

/* The larger of a column width and a cell's length (capped, for printf). */
static int maxw(int w, size_t len)
{
    if (len > 200) len = 200;
    return (int)len > w ? (int)len : w;
}

/* ---- files ------------------------------------------------------------------------ */

/* Uploads path; *out is the File object (new reference). A file the server
 * stored with status "error" is reported with its bad lines and returns
 * CL_EXIT_ERROR (with *out still set). */
static int upload(cl_ctx *c, const char *path, const char *purpose, long expires, json_t **out)
{
    struct stat st;
    *out = NULL;
    if (stat(path, &st)) {
        fprintf(stderr, "deltatune %s: %s: %s\n", c->cmd, path, strerror(errno));
        return CL_EXIT_ERROR;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "deltatune %s: %s: not a regular file\n", c->cmd, path);
        return CL_EXIT_ERROR;
    }
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        fprintf(stderr, "deltatune %s: %s: %s\n", c->cmd, path, strerror(errno));
        return CL_EXIT_ERROR;
    }
    fclose(probe);
    curl_mime *m = curl_mime_init(c->curl);
    curl_mimepart *p = curl_mime_addpart(m);
    curl_mime_name(p, "purpose");
    curl_mime_data(p, purpose, CURL_ZERO_TERMINATED);
    if (expires > 0) {
        char v[32];
        snprintf(v, sizeof v, "%ld", expires);
        p = curl_mime_addpart(m);
        curl_mime_name(p, "expires_after[anchor]");
        curl_mime_data(p, "created_at", CURL_ZERO_TERMINATED);
        p = curl_mime_addpart(m);
        curl_mime_name(p, "expires_after[seconds]");
        curl_mime_data(p, v, CURL_ZERO_TERMINATED);
    }
    p = curl_mime_addpart(m);
    curl_mime_name(p, "file");
    curl_mime_filedata(p, path); /* also sets the part's filename (basename) */
    curl_mime_type(p, "application/jsonl");
    int rc = cl_call(c, "POST", "/v1/files", NULL, m, NULL, out);
    curl_mime_free(m);
    if (rc) return rc;
    const char *status = cl_str(*out, "status");
    if (!strcmp(status, "error")) {
        fprintf(stderr, "deltatune %s: %s was stored as %s with status \"error\" (jobs refuse "
                        "it):\n%s\n", c->cmd, path, cl_str(*out, "id"),
                cl_str(*out, "status_details"));
        return CL_EXIT_ERROR;
    }
    if (!c->json)
        fprintf(stderr, "uploaded %s: %s, %lld bytes, %lld lines, %s\n", path,
                cl_str(*out, "id"), (long long)cl_num(*out, "bytes", 0),
                (long long)cl_num(*out, "lines", 0), status);
    return 0;
}

enum { O_PURPOSE = CL_O_FIRST_OWN, O_EXPIRES, O_LIMIT, O_AFTER };

typedef struct list_opts {
    cl_ctx *c;
    const char *purpose, *after;
    long limit, expires;
    char meta[16][600]; /* "metadata[k]=v", escaped */
    int nmeta;
} list_opts;

static int list_opt(void *ud, int id, const char *arg)
{
    list_opts *o = ud;
    switch (id) {
    case O_PURPOSE: o->purpose = arg; return 0;
    case O_AFTER: o->after = arg; return 0;
    case O_LIMIT: return parse_long(o->c, "--limit", arg, 1, 10000, &o->limit);
    case O_EXPIRES: return parse_long(o->c, "--expires-after", arg, 3600, 2592000, &o->expires);
    }
    return -1;
}

static const char files_upload_help[] =
    "usage: deltatune files upload PATH [options]\n"
    "\n"
    "Uploads a JSONL training file ({\"prompt\",\"completion\"}, {\"text\"},\n"
    "{\"messages\":[...]} or {\"input_ids\"} per line) and prints its id. A file\n"
    "with bad lines is reported line by line and the exit status is 1.\n"
    "\n"
    "  --purpose P             default fine-tune\n"
    "  --expires-after SECONDS the file expires that long after its upload (3600-2592000)\n"
    CL_COMMON_HELP;

static int files_upload(cl_ctx *c, int argc, char **argv)
{
    static const struct option opts[] = {
        CL_COMMON_OPTS, {"purpose", required_argument, 0, O_PURPOSE},
        {"expires-after", required_argument, 0, O_EXPIRES}, {0, 0, 0, 0}};
    list_opts o = {.c = c, .purpose = "fine-tune"};
    const char *pos[1];
    int np, rc = cl_parse(c, argc, argv, opts, files_upload_help, list_opt, &o, pos, 1, &np);
    if (rc) return rc == CL_HELP_SHOWN ? 0 : rc;
    if (np != 1) {
        fprintf(stderr, "deltatune %s: give the file to upload\n%s", c->cmd, files_upload_help);
        return CL_EXIT_USAGE;
    }
    if ((rc = cl_connect(c))) return rc;
    json_t *f;
    rc = upload(c, pos[0], o.purpose, o.expires, &f);
    if (f) {
        if (c->json) cl_print_json(f, 0);
        else if (!rc) puts(cl_str(f, "id"));
    }
    json_decref(f);
    return rc;
}

/* Appends "?k=v&..." for the list options to path. */
static void list_query(char *path, size_t n, const list_opts *o)
{
    char esc[600];
    size_t k = strlen(path);
    char sep = '?';
    if (o->limit) {
        k += (size_t)snprintf(path + k, n - k, "%climit=%ld", sep, o->limit);
        sep = '&';
    }
    if (o->after && k < n) {
        k += (size_t)snprintf(path + k, n - k, "%cafter=%s", sep, cl_esc(esc, sizeof esc, o->after));
        sep = '&';
    }
    if (o->purpose && k < n) {
        k += (size_t)snprintf(path + k, n - k, "%cpurpose=%s", sep,
                              cl_esc(esc, sizeof esc, o->purpose));
        sep = '&';
    }
    for (int i = 0; i < o->nmeta && k < n; i++) {
        k += (size_t)snprintf(path + k, n - k, "%c%s", sep, o->meta[i]);
        sep = '&';
    }
}

/* The shared half of the list commands: parses argv into o (own, as for
 * cl_parse, may be NULL), connects and GETs path with o's query appended (path
 * holds n bytes). Returns 0 with *out a new reference to the page the caller
 * prints as a table, or with *out NULL when nothing is left to print (--help
 * was shown, or --json printed the page); otherwise an exit status. */
static int list_get(cl_ctx *c, int argc, char **argv, const struct option *opts,
                    const char *help, int (*own)(void *ud, int id, const char *arg),
                    list_opts *o, char *path, size_t n, json_t **out)
{
    *out = NULL;
    int np, rc = cl_parse(c, argc, argv, opts, help, own, o, NULL, 0, &np);
    if (rc) return rc == CL_HELP_SHOWN ? 0 : rc;
    if ((rc = cl_connect(c))) return rc;
    list_query(path, n, o);
    json_t *l;
    if ((rc = cl_call(c, "GET", path, NULL, NULL, NULL, &l))) return rc;
    if (c->json) {
        cl_print_json(l, 0);
        json_decref(l);
        return 0;
    }
    *out = l;
    return 0;
}

static const char files_list_help[] =
    "usage: deltatune files list [options]\n"
    "\n"
    "Your uploaded files, newest first: id, bytes, lines, status, created (UTC),\n"
    "filename.\n"
    "\n"
    "  --limit N      at most N (1-10000, default 100)\n"
    "  --after FILE   those after this file id (the next page)\n"
    "  --purpose P    only this purpose (fine-tune, fine-tune-results)\n"
    CL_COMMON_HELP;

static int files_list(cl_ctx *c, int argc, char **argv)
{
    static const struct option opts[] = {
        CL_COMMON_OPTS, {"purpose", required_argument, 0, O_PURPOSE},
        {"limit", required_argument, 0, O_LIMIT}, {"after", required_argument, 0, O_AFTER},
        {0, 0, 0, 0}};
    list_opts o = {.c = c};
    char path[2048] = "/v1/files";
    json_t *l;
    int rc = list_get(c, argc, argv, opts, files_list_help, list_opt, &o, path, sizeof path, &l);
    if (rc || !l) return rc;
    /* Column widths follow the content: the widest cell or the header. */
    int w[4] = {2, 5, 5, 6}; /* ID BYTES LINES STATUS */
    size_t i;
    json_t *f;
    char num[32];
    json_array_foreach(json_object_get(l, "data"), i, f) {
        w[0] = maxw(w[0], strlen(cl_str(f, "id")));
        w[1] = maxw(w[1], (size_t)snprintf(num, sizeof num, "%lld", (long long)cl_num(f, "bytes", 0)));
        w[2] = maxw(w[2], (size_t)snprintf(num, sizeof num, "%lld", (long long)cl_num(f, "lines", 0)));
        w[3] = maxw(w[3], strlen(cl_str(f, "status")));
    }
    printf("%-*s %*s %*s %-*s %-16s %s\n", w[0], "ID", w[1], "BYTES", w[2], "LINES", w[3],
           "STATUS", "CREATED", "FILENAME");
    json_array_foreach(json_object_get(l, "data"), i, f) {
        char t[32];
        cl_fmt_time(t, sizeof t, (long long)cl_num(f, "created_at", 0));
        printf("%-*s %*lld %*lld %-*s %-16s %s\n", w[0], cl_str(f, "id"), w[1],
               (long long)cl_num(f, "bytes", 0), w[2], (long long)cl_num(f, "lines", 0), w[3],
               cl_str(f, "status"), t, cl_str(f, "filename"));
    }
    json_decref(l);
    return 0;
}

/* ---- jobs ------------------------------------------------------------------------ */

enum {
    O_MODEL = O_AFTER + 1, O_TRAIN, O_VALID, O_METHOD, O_HP, O_SUFFIX, O_SEED, O_META,
    O_IDEM, O_FOLLOW,
    /* shortcuts for --hp NAME=VALUE */
    O_EPOCHS, O_BATCH, O_LR, O_RANK, O_ALPHA, O_LAMBDA, O_MAX_STEPS, O_SEQ_LEN
};

static const char *const hp_names[] = {
    [O_EPOCHS - O_EPOCHS] = "n_epochs", [O_BATCH - O_EPOCHS] = "batch_size",
    [O_LR - O_EPOCHS] = "learning_rate", [O_RANK - O_EPOCHS] = "rank",
    [O_ALPHA - O_EPOCHS] = "alpha", [O_LAMBDA - O_EPOCHS] = "lambda",
    [O_MAX_STEPS - O_EPOCHS] = "max_steps", [O_SEQ_LEN - O_EPOCHS] = "seq_len"};

typedef struct create_opts {
    cl_ctx *c;
    const char *model, *train, *valid, *method, *suffix, *idem;
    long seed;
    int has_seed, follow;
    json_t *hp, *meta; /* owned */
} create_opts;

static int create_opt(void *ud, int id, const char *arg)
{
    create_opts *o = ud;
    char k[128];
    const char *v;
    switch (id) {
    case O_MODEL: o->model = arg; return 0;
    case O_TRAIN: o->train = arg; return 0;
    case O_VALID: o->valid = arg; return 0;
    case O_SUFFIX: o->suffix = arg; return 0;
    case O_IDEM: o->idem = arg; return 0;
    case O_FOLLOW: o->follow = 1; return 0;
    case O_METHOD:
        if (strcmp(arg, "delta_lora") && strcmp(arg, "lora") && strcmp(arg, "full")) {
            fprintf(stderr, "deltatune %s: --method: \"%s\" is not one of delta_lora, lora, "
                            "full\n", o->c->cmd, arg);
            return -1;
        }
        o->method = arg;
        return 0;
    case O_SEED:
        o->has_seed = 1;
        return parse_long(o->c, "--seed", arg, 0, 2147483647L, &o->seed);
    case O_HP:
        if (split_kv(o->c, "--hp", arg, k, sizeof k, &v)) return -1;
        json_object_set_new(o->hp, k, hp_value(v));
        return 0;
    case O_META:
        if (split_kv(o->c, "--metadata", arg, k, sizeof k, &v)) return -1;
        json_object_set_new(o->meta, k, json_string(v));
        return 0;
    }
    if (id >= O_EPOCHS && id <= O_SEQ_LEN) {
        json_object_set_new(o->hp, hp_names[id - O_EPOCHS], hp_value(arg));
        return 0;
    }
    return -1;
}

/* A --training-file / --validation-file argument: a file id, or a local
 * file that is uploaded first. *id is written (n bytes). */
static int resolve_file(cl_ctx *c, const char *arg, char *id, size_t n)
{
    struct stat st;
    if (stat(arg, &st) && !strncmp(arg, "file-", 5)) {
        snprintf(id, n, "%s", arg);
        return 0;
    }
    json_t *f;
    int rc = upload(c, arg, "fine-tune", 0, &f);
    if (!rc) snprintf(id, n, "%s", cl_str(f, "id"));
    json_decref(f);
    return rc;
}

static const char jobs_create_help[] =
    "usage: deltatune jobs create --model MODEL --training-file FILE [options]\n"
    "\n"
    "Creates a fine-tuning job and prints its id (--json: the job).\n"
    "\n"
    "  --model MODEL            a base model or one of your fine-tuned models\n"
    "                           ('deltatune models list')\n"
    "  --training-file FILE     a file id (file-...) or a local JSONL file, uploaded first\n"
    "  --validation-file FILE   the same, for held-out loss\n"
    "  --method M               delta_lora (default), lora or full\n"
    "  --epochs N  --batch-size N  --learning-rate X  --rank N  --alpha X\n"
    "  --lambda X  --max-steps N  --seq-len N\n"
    "                           the hyperparameters n_epochs, batch_size, ...\n"
    "  --hp NAME=VALUE          any hyperparameter (repeatable), e.g. --hp\n"
    "                           lr_scheduler=cosine --hp target_modules=q,k,v\n"
    "  --suffix S               part of the fine-tuned model's name\n"
    "  --seed N                 the job's seed\n"
    "  --metadata KEY=VALUE     repeatable (at most 16)\n"
    "  --idempotency-key K      the same key and request return the same job\n"
    "  --follow                 then follow it as 'deltatune jobs follow' does;\n"
    "                           the exit status is then the job's (0 succeeded,\n"
    "                           3 failed, 4 cancelled)\n"
    CL_COMMON_HELP
    "\n"
    "Out-of-range values are refused by the server with the parameter named.\n";

static int jobs_create(cl_ctx *c, int argc, char **argv)
{
    static const struct option opts[] = {
        CL_COMMON_OPTS,
        {"model", required_argument, 0, O_MODEL},
        {"training-file", required_argument, 0, O_TRAIN},
        {"validation-file", required_argument, 0, O_VALID},
        {"method", required_argument, 0, O_METHOD},
        {"hp", required_argument, 0, O_HP},
        {"suffix", required_argument, 0, O_SUFFIX},
        {"seed", required_argument, 0, O_SEED},
        {"metadata", required_argument, 0, O_META},
        {"idempotency-key", required_argument, 0, O_IDEM},
        {"follow", no_argument, 0, O_FOLLOW},
        {"epochs", required_argument, 0, O_EPOCHS},
        {"batch-size", required_argument, 0, O_BATCH},
        {"learning-rate", required_argument, 0, O_LR},
        {"rank", required_argument, 0, O_RANK},
        {"alpha", required_argument, 0, O_ALPHA},
        {"lambda", required_argument, 0, O_LAMBDA},
        {"max-steps", required_argument, 0, O_MAX_STEPS},
        {"seq-len", required_argument, 0, O_SEQ_LEN},
        {0, 0, 0, 0}};
    create_opts o = {.c = c, .hp = json_object(), .meta = json_object()};
    json_t *body = NULL, *job = NULL;
    int np, rc = cl_parse(c, argc, argv, opts, jobs_create_help, create_opt, &o, NULL, 0, &np);
    if (rc) {
        if (rc == CL_HELP_SHOWN) rc = 0;
        goto done;
    }
    if (!o.model || !o.train) {
        fprintf(stderr, "deltatune %s: --model and --training-file are required\n"
                        "run 'deltatune jobs create --help' for the options\n", c->cmd);
        rc = CL_EXIT_USAGE;
        goto done;
    }
    if ((rc = cl_connect(c))) goto done;
    char train[256], valid[256];
    if ((rc = resolve_file(c, o.train, train, sizeof train))) goto done;
    if (o.valid && (rc = resolve_file(c, o.valid, valid, sizeof valid))) goto done;
    body = json_pack("{s:s, s:s}", "model", o.model, "training_file", train);
    if (o.valid) json_object_set_new(body, "validation_file", json_string(valid));
    if (o.method || json_object_size(o.hp)) {
        const char *m = o.method ? o.method : "delta_lora";
        json_t *method = json_pack("{s:s}", "type", m);
        if (json_object_size(o.hp))
            json_object_set_new(method, m, json_pack("{s:O}", "hyperparameters", o.hp));
        json_object_set_new(body, "method", method);
    }
    if (o.suffix) json_object_set_new(body, "suffix", json_string(o.suffix));
    if (o.has_seed) json_object_set_new(body, "seed", json_integer(o.seed));
    if (json_object_size(o.meta)) json_object_set(body, "metadata", o.meta);
    if ((rc = cl_call(c, "POST", "/v1/fine_tuning/jobs", body, NULL, o.idem, &job))) goto done;
    if (c->json) cl_print_json(job, 0);
    else puts(cl_str(job, "id"));
    fflush(stdout);
    if (o.follow) rc = cl_jobs_follow(c, cl_str(job, "id"));
done:
    json_decref(job);
    json_decref(body);
    json_decref(o.hp);
    json_decref(o.meta);
    return rc;
}

static int jobs_list_opt(void *ud, int id, const char *arg)
{
    list_opts *o = ud;
    char k[128], ek[400], ev[600];
    const char *v;
    if (id == O_META) {
        if (o->nmeta >= 16) {
            fprintf(stderr, "deltatune %s: at most 16 --metadata\n", o->c->cmd);
            return -1;
        }
        if (split_kv(o->c, "--metadata", arg, k, sizeof k, &v)) return -1;
        snprintf(o->meta[o->nmeta++], sizeof o->meta[0], "metadata%%5B%s%%5D=%s",
                 cl_esc(ek, sizeof ek, k), cl_esc(ev, sizeof ev, v));
        return 0;
    }
    if (id == O_LIMIT) return parse_long(o->c, "--limit", arg, 1, 100, &o->limit);
    return list_opt(ud, id, arg);
}

/* "step/total" of a job's progress, or "-"; returns its length. */
static size_t job_step(char *out, size_t n, const json_t *j)
{
    json_t *p = json_object_get(j, "progress");
    if (json_is_object(p))
        snprintf(out, n, "%lld/%lld", (long long)cl_num(p, "step", 0),
                 (long long)cl_num(p, "total_steps", 0));
    else
        snprintf(out, n, "-");
    return strlen(out);
}

static const char jobs_list_help[] =
    "usage: deltatune jobs list [options]\n"
    "\n"
    "Your jobs, newest first: id, status, step/total, model, created (UTC), the\n"
    "fine-tuned model.\n"
    "\n"
    "  --limit N             at most N (1-100, default 20)\n"
    "  --after JOB           those after this job id (the next page)\n"
    "  --metadata KEY=VALUE  only jobs with this metadata (repeatable)\n"
    CL_COMMON_HELP;

static int jobs_list(cl_ctx *c, int argc, char **argv)
{
    static const struct option opts[] = {
        CL_COMMON_OPTS, {"limit", required_argument, 0, O_LIMIT},
        {"after", required_argument, 0, O_AFTER}, {"metadata", required_argument, 0, O_META},
        {0, 0, 0, 0}};
    list_opts o = {.c = c};
    char path[12000] = "/v1/fine_tuning/jobs";
    json_t *l;
    int rc = list_get(c, argc, argv, opts, jobs_list_help, jobs_list_opt, &o, path, sizeof path,
                      &l);
    if (rc || !l) return rc;
    /* Column widths follow the content: the widest cell or the header. */
    int w[4] = {2, 6, 4, 5}; /* ID STATUS STEP MODEL */
    size_t i;
    json_t *j;
    json_array_foreach(json_object_get(l, "data"), i, j) {
        char step[64];
        w[0] = maxw(w[0], strlen(cl_str(j, "id")));
        w[1] = maxw(w[1], strlen(cl_str(j, "status")));
        w[2] = maxw(w[2], job_step(step, sizeof step, j));
        w[3] = maxw(w[3], strlen(cl_str(j, "model")));
    }
    printf("%-*s %-*s %-*s %-*s %-16s %s\n", w[0], "ID", w[1], "STATUS", w[2], "STEP", w[3],
           "MODEL", "CREATED", "FINE-TUNED MODEL");
    json_array_foreach(json_object_get(l, "data"), i, j) {
        char t[32], step[64];
        cl_fmt_time(t, sizeof t, (long long)cl_num(j, "created_at", 0));
        job_step(step, sizeof step, j);
        const char *ft = cl_str(j, "fine_tuned_model");
        printf("%-*s %-*s %-*s %-*s %-16s %s\n", w[0], cl_str(j, "id"), w[1],
               cl_str(j, "status"), w[2], step, w[3], cl_str(j, "model"), t, ft[0] ? ft : "-");
    }
    json_decref(l);
    return 0;
}

static const char jobs_get_help[] =
    "usage: deltatune jobs get JOB\n"
    "\n"
    "Prints the job as indented JSON (--json: one line): status, progress\n"
    "(step, total_steps, train_loss, tokens_per_second, eta_seconds), error,\n"
    "fine_tuned_model ...\n"
    "\n" CL_COMMON_HELP;

static const char jobs_state_help[] =
    "usage: deltatune jobs cancel|pause|resume JOB\n"
    "\n"
    "cancel: queued or paused jobs end at once; a running job stops within one\n"
    "        step, keeping its checkpoints.\n"
    "pause:  a running job writes a checkpoint and stops within one step.\n"
    "resume: a paused job is queued again and continues from its checkpoint.\n"
    "Prints the job's id and status (--json: the job). A job that has finished\n"
    "is an error (HTTP 409).\n"
    "\n" CL_COMMON_HELP;

/* get, cancel, pause, resume: one job id. */
static int jobs_one(cl_ctx *c, const char *verb, int argc, char **argv)
{
    static const struct option opts[] = {CL_COMMON_OPTS, {0, 0, 0, 0}};
    int get = !strcmp(verb, "get");
    const char *pos[1];
    int np, rc = cl_parse(c, argc, argv, opts, get ? jobs_get_help : jobs_state_help, NULL,
                          NULL, pos, 1, &np);
    if (rc) return rc == CL_HELP_SHOWN ? 0 : rc;
    if (np != 1) {
        fprintf(stderr, "deltatune %s: give the job id (ftjob-...)\n", c->cmd);
        return CL_EXIT_USAGE;
    }
    if ((rc = cl_connect(c))) return rc;
    char esc[400], path[600];
    snprintf(path, sizeof path, "/v1/fine_tuning/jobs/%s%s%s", cl_esc(esc, sizeof esc, pos[0]),
             get ? "" : "/", get ? "" : verb);
    json_t *j;
    if ((rc = cl_call(c, get ? "GET" : "POST", path, NULL, NULL, NULL, &j))) return rc;
    if (get || c->json) {
        cl_print_json(j, get && !c->json);
    } else {
        const char *req = json_is_true(json_object_get(j, "cancel_requested")) ? " (cancel requested)"
                        : json_is_true(json_object_get(j, "pause_requested")) ? " (pause requested)"
                        : "";
        printf("%s %s%s\n", cl_str(j, "id"), cl_str(j, "status"), req);
    }
    json_decref(j);
    return 0;
}

/* ---- files delete, models delete --------------------------------------------------- */

static const char files_delete_help[] =
    "usage: deltatune files delete FILE\n"
    "\n"
    "Deletes one of your files (its id, file-...) and prints \"deleted FILE\"\n"
    "(--json: the API's answer). A file that a job which has not ended still\n"
    "uses is an error (HTTP 409); so is an unknown file (HTTP 404).\n"
    "\n" CL_COMMON_HELP;

static const char models_delete_help[] =
    "usage: deltatune models delete MODEL\n"
    "\n"
    "Deletes one of your fine-tuned models or checkpoints and its files, and\n"
    "prints \"deleted MODEL\" (--json: the API's answer). A model that a job\n"
    "which has not ended uses as its base is an error (HTTP 409); base models\n"
    "are the operator's (HTTP 403).\n"
    "\n" CL_COMMON_HELP;

/* DELETE /v1/<what>/<id>: what is "files" or "models". */
static int delete_one(cl_ctx *c, const char *what, const char *help, int argc, char **argv)
{
    static const struct option opts[] = {CL_COMMON_OPTS, {0, 0, 0, 0}};
    const char *pos[1];
    int np, rc = cl_parse(c, argc, argv, opts, help, NULL, NULL, pos, 1, &np);
    if (rc) return rc == CL_HELP_SHOWN ? 0 : rc;
    if (np != 1 || !pos[0][0]) {
        fprintf(stderr, "deltatune %s: give the %s id to delete\n%s", c->cmd,
                !strcmp(what, "files") ? "file" : "model", help);
        return CL_EXIT_USAGE;
    }
    if ((rc = cl_connect(c))) return rc;
    char esc[1200], path[1400];
    if (!cl_esc(esc, sizeof esc, pos[0])[0]) {
        fprintf(stderr, "deltatune %s: the id is too long\n", c->cmd);
        return CL_EXIT_USAGE;
    }
    snprintf(path, sizeof path, "/v1/%s/%s", what, esc);
    json_t *j;
    if ((rc = cl_call(c, "DELETE", path, NULL, NULL, NULL, &j))) return rc;
    if (c->json) cl_print_json(j, 0);
    else printf("deleted %s\n", cl_str(j, "id")[0] ? cl_str(j, "id") : pos[0]);
    json_decref(j);
    return 0;
}

/* ---- models list -------------------------------------------------------------------- */

static const char models_list_help[] =
    "usage: deltatune models list [--admin]\n"
    "\n"
    "With an API key: the models the API lists for it (base models, your\n"
    "fine-tuned models and checkpoints): id, kind, owner, created (UTC).\n"
    "--admin (or no API key): the operator's listing, read from PostgreSQL.\n"
    "\n" CL_COMMON_HELP;

static int models_list(cl_ctx *c, int argc, char **argv)
{
    static const struct option opts[] = {CL_COMMON_OPTS, {0, 0, 0, 0}};
    list_opts o = {.c = c}; /* no options of its own: the query stays empty */
    char path[] = "/v1/models";
    json_t *l;
    int rc = list_get(c, argc, argv, opts, models_list_help, NULL, &o, path, sizeof path, &l);
    if (rc || !l) return rc;
    size_t i;
    json_t *m;
    int w = 2, wk = 4, wo = 5; /* ID KIND OWNER: the widest cell or the header */
    json_array_foreach(json_object_get(l, "data"), i, m) {
        w = maxw(w, strlen(cl_str(m, "id")));
        wk = maxw(wk, strlen(cl_str(m, "kind")));
        wo = maxw(wo, strlen(cl_str(m, "owned_by")));
    }
    printf("%-*s %-*s %-*s %s\n", w, "ID", wk, "KIND", wo, "OWNER", "CREATED");
    json_array_foreach(json_object_get(l, "data"), i, m) {
        char t[32];
        cl_fmt_time(t, sizeof t, (long long)cl_num(m, "created", 0));
        const char *kind = cl_str(m, "kind");
        printf("%-*s %-*s %-*s %s\n", w, cl_str(m, "id"), wk, kind[0] ? kind : "-", wo,
               cl_str(m, "owned_by"), t);
    }
    json_decref(l);
    return 0;
}

/* ---- dispatch ---------------------------------------------------------------------- */

/* Whether a is --url or --api-key; *val: whether the value is the next
 * argument (not "--url=..."). */
static int is_global_opt(const char *a, int *val)
{
    *val = !strcmp(a, "--url") || !strcmp(a, "--api-key");
    return *val || !strncmp(a, "--url=", 6) || !strncmp(a, "--api-key=", 10);
}

void dt_client_hoist_globals(int argc, char **argv, int start)
{
    int k = start, val;
    while (k < argc && is_global_opt(argv[k], &val)) {
        if (val && k + 1 >= argc) break; /* no value: left for getopt to report */
        k += val ? 2 : 1;
    }
    if (k == start || k >= argc) return; /* nothing to move, or nothing after them */
    int n = k - start;
    char *moved[64];
    if (n > 64) return;
    memcpy(moved, argv + start, (size_t)n * sizeof *argv);
    memmove(argv + start, argv + k, (size_t)(argc - k) * sizeof *argv);
    memcpy(argv + argc - n, moved, (size_t)n * sizeof *argv);
}

int dt_client_handles_models(int *argc, char **argv)
{
    int admin = 0, key = 0;
    dt_client_hoist_globals(*argc, argv, 1);
    for (int i = 1; i < *argc; i++) {
        if (!strcmp(argv[i], "--admin")) {
            admin = 1;
            memmove(argv + i, argv + i + 1, (size_t)(*argc - i) * sizeof *argv);
            (*argc)--;
            i--;
        } else if (!strcmp(argv[i], "--api-key") || !strncmp(argv[i], "--api-key=", 10)) {
            key = 1;
        }
    }
    const char *env = getenv("DELTATUNE_API_KEY");
    if (env && *env) key = 1;
    if (*argc < 2 || argv[1][0] == '-') return !admin; /* models --help */
    if (!strcmp(argv[1], "download") || !strcmp(argv[1], "delete")) return 1;
    if (!strcmp(argv[1], "list")) return key && !admin;
    return 0;
}

int dt_client_main(int argc, char **argv)
{
    dt_client_hoist_globals(argc, argv, 1);
    const char *group = argv[0];
    const char *help = !strcmp(group, "jobs") ? jobs_help
                     : !strcmp(group, "files") ? files_help : models_help;
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(help, argc < 2 ? stderr : stdout);
        return argc < 2 ? CL_EXIT_USAGE : 0;
    }
    const char *sub = argv[1];
    char cmd[64];
    snprintf(cmd, sizeof cmd, "%s %s", group, sub);
    cl_ctx c;
    cl_init(&c, cmd);
    int rc = -1;
    if (!strcmp(group, "jobs")) {
        if (!strcmp(sub, "create")) rc = jobs_create(&c, argc - 1, argv + 1);
        else if (!strcmp(sub, "list")) rc = jobs_list(&c, argc - 1, argv + 1);
        else if (!strcmp(sub, "get") || !strcmp(sub, "cancel") || !strcmp(sub, "pause") ||
                 !strcmp(sub, "resume"))
            rc = jobs_one(&c, sub, argc - 1, argv + 1);
        else if (!strcmp(sub, "follow")) return cl_cmd_jobs_follow(argc - 1, argv + 1);
    } else if (!strcmp(group, "files")) {
        if (!strcmp(sub, "upload")) rc = files_upload(&c, argc - 1, argv + 1);
        else if (!strcmp(sub, "list")) rc = files_list(&c, argc - 1, argv + 1);
        else if (!strcmp(sub, "delete"))
            rc = delete_one(&c, "files", files_delete_help, argc - 1, argv + 1);
    } else if (!strcmp(group, "models")) {
        if (!strcmp(sub, "list")) rc = models_list(&c, argc - 1, argv + 1);
        else if (!strcmp(sub, "delete"))
            rc = delete_one(&c, "models", models_delete_help, argc - 1, argv + 1);
        else if (!strcmp(sub, "download")) return cl_models_download(argc - 1, argv + 1);
    }
    cl_close(&c);
    if (rc >= 0) return rc;
    fprintf(stderr, "deltatune %s: unknown command \"%s\"\n%s", group, sub, help);
    return CL_EXIT_USAGE;
}
