/* client_internal.h: the pieces the client commands share (cli/client*.c):
 * the connection (base URL, API key, one libcurl handle), JSON calls that
 * print API and network errors, and the terminal helpers (progress bars,
 * sizes, durations). Nothing here is used outside the `deltatune` CLI. */
#ifndef DT_CLI_CLIENT_INTERNAL_H
#define DT_CLI_CLIENT_INTERNAL_H

#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Exit statuses of every client command. `jobs follow` adds the job's
 * outcome: 0 succeeded, CL_EXIT_FAILED, CL_EXIT_CANCELLED. */
enum {
    CL_EXIT_OK = 0,
    CL_EXIT_ERROR = 1,      /* API error, network error, bad local file */
    CL_EXIT_USAGE = 2,      /* bad command line */
    CL_EXIT_FAILED = 3,     /* the followed job failed */
    CL_EXIT_CANCELLED = 4,  /* the followed job was cancelled */
};

typedef struct cl_ctx {
    char url[1024];     /* base URL, no trailing '/' and no "/v1" */
    char key[512];      /* API key ("" when none was given) */
    const char *cmd;    /* "jobs create" ..., for messages; borrowed */
    int json;           /* --json: machine-readable output */
    CURL *curl;         /* one handle, so connections are reused */
    char errbuf[CURL_ERROR_SIZE];
} cl_ctx;

/* A growing byte buffer (always NUL-terminated once written to). */
typedef struct cl_buf {
    char *p;
    size_t n, cap;
} cl_buf;

int cl_buf_add(cl_buf *b, const void *p, size_t n);
void cl_buf_free(cl_buf *b);

/* ---- options common to every client command --------------------------- */

enum {
    CL_O_URL = 1000, CL_O_KEY, CL_O_JSON, CL_O_HELP,
    CL_O_FIRST_OWN /* commands number their own options from here */
};

#define CL_COMMON_OPTS                                            \
    {"url", required_argument, 0, CL_O_URL},                      \
    {"api-key", required_argument, 0, CL_O_KEY},                  \
    {"json", no_argument, 0, CL_O_JSON},                          \
    {"help", no_argument, 0, CL_O_HELP}

#define CL_COMMON_HELP                                                              \
    "  --url URL        the server (default $DELTATUNE_URL, else http://127.0.0.1:8080)\n" \
    "  --api-key KEY    the API key (default $DELTATUNE_API_KEY)\n"                 \
    "  --json           print the API's JSON instead of text\n"                     \
    "  --help           this text\n"

/* Fills c from the environment (DELTATUNE_URL, DELTATUNE_API_KEY). */
void cl_init(cl_ctx *c, const char *cmd);

/* Handles a common option (id from CL_COMMON_OPTS). Returns 1 when id was
 * one, 0 when not, -1 when its value is bad (printed). */
int cl_common_opt(cl_ctx *c, int id, const char *arg);

/* Checks the URL and key and creates the curl handle. Prints what is
 * missing and returns CL_EXIT_USAGE, or 0. */
int cl_connect(cl_ctx *c);
void cl_close(cl_ctx *c);

/* Percent-encodes s (everything but A-Za-z0-9-._~) into out (n bytes).
 * Returns out ("" when it does not fit). */
const char *cl_esc(char *out, size_t n, const char *s);

/* Headers and body of one answer. */
typedef struct cl_resp {
    long status;           /* HTTP status; 0 before an answer */
    cl_buf body;
    double retry_after;    /* Retry-After seconds, or 0 */
} cl_resp;

/* One JSON request: METHOD url+path with body (borrowed, may be NULL) sent
 * as JSON, or mime (borrowed) as multipart. POSTs carry an Idempotency-Key
 * (idem, or a random one) so that 429/503 retries are safe. On a 2xx
 * answer *out is its JSON (new reference; NULL for an empty body) and 0 is
 * returned. API errors are printed with their message, param and code,
 * network errors with the URL; both return CL_EXIT_ERROR. */
int cl_call(cl_ctx *c, const char *method, const char *path, json_t *body,
            curl_mime *mime, const char *idem, json_t **out);

/* Prints an API error answer (the {"error":{...}} envelope, or the raw
 * start of any other body) for `what` (a URL or path). */
void cl_print_api_error(const cl_ctx *c, const char *what, long status, const cl_buf *body);

/* Prints a network failure naming the URL. */
void cl_print_net_error(const cl_ctx *c, const char *url, CURLcode rc);

/* Common curl settings for a request to url (authorization, timeouts,
 * error buffer). Returns the header list to free with curl_slist_free_all. */
struct curl_slist *cl_prepare(cl_ctx *c, const char *url, struct curl_slist *extra);

/* ---- output helpers -------------------------------------------------- */

/* Prints v (borrowed) as indented JSON (pretty=1) or one compact line,
 * reals in their shortest round-trip form as the server prints them. */
void cl_print_json(const json_t *v, int pretty);
/* x in its shortest "%.Ng" that reads back to x ("0.0002"), ".0" added to
 * integral values, "null" when not finite; into out (n >= 32 bytes). */
void cl_fmt_real(char *out, size_t n, double x);

/* "12.3 MB" style size; "1m05s" / "2h03m" / "--" durations; a '#'/'.' bar
 * of width w for frac in [0, 1]. Each writes into out (n bytes). */
void cl_fmt_bytes(char *out, size_t n, double bytes);
void cl_fmt_dur(char *out, size_t n, double seconds);
void cl_fmt_bar(char *out, size_t n, int w, double frac);
/* "2026-11-24 15:20" (UTC) of a Unix time. */
void cl_fmt_time(char *out, size_t n, long long t);

/* jansson accessors that tolerate missing keys and nulls. */
const char *cl_str(const json_t *o, const char *k);   /* "" when absent */
double cl_num(const json_t *o, const char *k, double dflt);

/* Parses argv (argv[0] = the subcommand's name) with opts (which include
 * CL_COMMON_OPTS): common options go to c, others to own(ud, id, value),
 * which returns 0 or -1 after printing what is wrong. Positional arguments
 * are stored in pos (at most maxpos; *npos says how many). Prints help for
 * --help. Returns 0, CL_HELP_SHOWN, or CL_EXIT_USAGE. */
#define CL_HELP_SHOWN (-1)
int cl_parse(cl_ctx *c, int argc, char **argv, const struct option *opts, const char *help,
             int (*own)(void *ud, int id, const char *arg), void *ud,
             const char **pos, int maxpos, int *npos);

/* ---- commands ------------------------------------------------------------ */

/* `deltatune jobs follow`, and `jobs create --follow` (job id given). */
int cl_jobs_follow(cl_ctx *c, const char *job_id);
/* `deltatune models download` (argv after "download"). */
int cl_models_download(int argc, char **argv);
/* `deltatune jobs follow` with its own options. */
int cl_cmd_jobs_follow(int argc, char **argv);

#endif
