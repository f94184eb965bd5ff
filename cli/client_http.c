/* client_http.c: the client commands' connection to the public HTTP API
 * (libcurl): base URL and key from flags or the environment, JSON calls with
 * retries on 429/503, error messages that name the API's message, param and
 * code or the URL that could not be reached; and the terminal helpers. */
#include "client_internal.h"
#include "base/clock.h"
#include "base/id.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int cl_buf_add(cl_buf *b, const void *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

void cl_buf_free(cl_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* Copies a URL without trailing '/' and without a trailing "/v1" (the
 * openai SDKs' base_url), so either spelling works. */
static int set_url(cl_ctx *c, const char *u)
{
    size_t n = strlen(u);
    if (n >= sizeof c->url) return -1;
    memcpy(c->url, u, n + 1);
    while (n && c->url[n - 1] == '/') c->url[--n] = 0;
    if (n >= 3 && !strcmp(c->url + n - 3, "/v1")) c->url[n -= 3] = 0;
    while (n && c->url[n - 1] == '/') c->url[--n] = 0;
    return 0;
}

void cl_init(cl_ctx *c, const char *cmd)
{
    memset(c, 0, sizeof *c);
    c->cmd = cmd;
    const char *u = getenv("DELTATUNE_URL");
    if (!u || !*u || set_url(c, u)) set_url(c, "http://127.0.0.1:8080");
    const char *k = getenv("DELTATUNE_API_KEY");
    if (k && strlen(k) < sizeof c->key) strcpy(c->key, k);
}

int cl_common_opt(cl_ctx *c, int id, const char *arg)
{
    switch (id) {
    case CL_O_URL:
        if (strncmp(arg, "http://", 7) && strncmp(arg, "https://", 8)) {
            fprintf(stderr, "deltatune %s: --url: \"%s\" is not an http:// or https:// URL\n",
                    c->cmd, arg);
            return -1;
        }
        if (set_url(c, arg)) {
            fprintf(stderr, "deltatune %s: --url is too long\n", c->cmd);
            return -1;
        }
        return 1;
    case CL_O_KEY:
        if (strlen(arg) >= sizeof c->key) {
            fprintf(stderr, "deltatune %s: --api-key is too long\n", c->cmd);
            return -1;
        }
        strcpy(c->key, arg);
        return 1;
    case CL_O_JSON:
        c->json = 1;
        return 1;
    default:
        return 0;
    }
}

int cl_connect(cl_ctx *c)
{
    if (!c->key[0]) {
        fprintf(stderr, "deltatune %s: no API key: set DELTATUNE_API_KEY or pass --api-key "
                        "(an operator creates one with 'deltatune keys create --owner NAME')\n",
                c->cmd);
        return CL_EXIT_USAGE;
    }
    if (strncmp(c->url, "http://", 7) && strncmp(c->url, "https://", 8)) {
        fprintf(stderr, "deltatune %s: DELTATUNE_URL \"%s\" is not an http:// or https:// URL\n",
                c->cmd, c->url);
        return CL_EXIT_USAGE;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) || !(c->curl = curl_easy_init())) {
        fprintf(stderr, "deltatune %s: libcurl failed to start\n", c->cmd);
        return CL_EXIT_ERROR;
    }
    return 0;
}

void cl_close(cl_ctx *c)
{
    if (c->curl) curl_easy_cleanup(c->curl);
    c->curl = NULL;
}

const char *cl_esc(char *out, size_t n, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        int plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                    (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' || ch == '~';
        if (k + (plain ? 1 : 3) >= n) {
            out[0] = 0;
            return out;
        }
        if (plain) {
            out[k++] = (char)ch;
        } else {
            out[k++] = '%';
            out[k++] = hex[ch >> 4];
            out[k++] = hex[ch & 15];
        }
    }
    out[k] = 0;
    return out;
}

struct curl_slist *cl_prepare(cl_ctx *c, const char *url, struct curl_slist *extra)
{
    char auth[600];
    curl_easy_reset(c->curl);
    c->errbuf[0] = 0;
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "deltatune-cli/1");
    curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT, 10L);
    /* No overall timeout (uploads and downloads may be large): a transfer
     * that moves nothing for a minute is given up. */
    curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_TIME, 60L);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->key);
    struct curl_slist *h = curl_slist_append(extra, auth);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, h);
    return h;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    return cl_buf_add(ud, p, sz * n) ? 0 : sz * n;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    cl_resp *r = ud;
    size_t len = sz * n;
    if (len > 12 && !strncasecmp(p, "Retry-After:", 12))
        r->retry_after = atof(p + 12);
    return len;
}

void cl_print_net_error(const cl_ctx *c, const char *url, CURLcode rc)
{
    fprintf(stderr, "deltatune %s: cannot reach %s: %s\n", c->cmd, url,
            c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
}

void cl_print_api_error(const cl_ctx *c, const char *what, long status, const cl_buf *body)
{
    json_t *j = body->n ? json_loadb(body->p, body->n, 0, NULL) : NULL;
    json_t *e = json_object_get(j, "error");
    if (json_is_object(e)) {
        const char *msg = cl_str(e, "message"), *param = cl_str(e, "param");
        const char *type = cl_str(e, "type"), *code = cl_str(e, "code");
        fprintf(stderr, "deltatune %s: error: %s", c->cmd, msg[0] ? msg : "(no message)");
        if (param[0]) fprintf(stderr, " [param: %s]", param);
        fprintf(stderr, " (HTTP %ld%s%s%s%s)\n", status, type[0] ? " " : "", type,
                code[0] ? ", code " : "", code);
    } else {
        int n = body->n > 300 ? 300 : (int)body->n;
        fprintf(stderr, "deltatune %s: %s answered HTTP %ld%s%.*s\n", c->cmd, what, status,
                n ? ": " : "", n, n ? body->p : "");
    }
    json_decref(j);
}

/* A random Idempotency-Key: "cli-" and 24 hex digits. Without system
 * randomness the clock and the pid still make it unique to this call. */
static void random_key(char out[40])
{
    if (dt_id_new("cli-", out, 40) != 0)
        snprintf(out, 40, "cli-%llx-%x", (unsigned long long)(dt_now() * 1e9),
                 (unsigned)getpid());
}

int cl_call(cl_ctx *c, const char *method, const char *path, json_t *body,
            curl_mime *mime, const char *idem, json_t **out)
{
    char url[4096], ikey[300], hdr[320];
    *out = NULL;
    if (snprintf(url, sizeof url, "%s%s", c->url, path) >= (int)sizeof url) {
        fprintf(stderr, "deltatune %s: URL too long\n", c->cmd);
        return CL_EXIT_ERROR;
    }
    int post = !strcmp(method, "POST");
    if (post) {
        if (idem) snprintf(ikey, sizeof ikey, "%.255s", idem);
        else random_key(ikey);
    }
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    int rc = CL_EXIT_ERROR;
    for (int attempt = 0;; attempt++) {
        cl_resp r = {0};
        struct curl_slist *h = NULL;
        if (text) h = curl_slist_append(h, "Content-Type: application/json");
        if (post) {
            snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", ikey);
            h = curl_slist_append(h, hdr);
        }
        h = cl_prepare(c, url, h);
        curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, method);
        if (text) {
            curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, text);
        } else if (mime) {
            curl_easy_setopt(c->curl, CURLOPT_MIMEPOST, mime);
        } else if (post) {
            curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, "");
            curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE, 0L);
        }
        curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &r.body);
        curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, &r);
        CURLcode cr = curl_easy_perform(c->curl);
        curl_slist_free_all(h);
        if (cr != CURLE_OK) {
            cl_print_net_error(c, url, cr);
            cl_buf_free(&r.body);
            break;
        }
        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &r.status);
        if ((r.status == 429 || r.status == 503) && attempt < 3) {
            double wait = r.retry_after > 0 ? r.retry_after : 1;
            if (wait > 10) wait = 10;
            cl_buf_free(&r.body);
            usleep((useconds_t)(wait * 1e6));
            continue;
        }
        if (r.status >= 200 && r.status < 300) {
            json_error_t je;
            if (r.body.n && !(*out = json_loadb(r.body.p, r.body.n, 0, &je)))
                fprintf(stderr, "deltatune %s: %s answered HTTP %ld with JSON that does not "
                                "parse: %s\n", c->cmd, url, r.status, je.text);
            else
                rc = 0;
        } else {
            cl_print_api_error(c, url, r.status, &r.body);
        }
        cl_buf_free(&r.body);
        break;
    }
    free(text);
    return rc;
}

/* ---- output helpers -------------------------------------------------- */

/* x as the server writes it (server/jsonw.c): the shortest "%.Ng" that
 * reads back to the same double (0.0002, not jansson's %.17g
 * 0.00020000000000000001), ".0" added to integral values so a real stays
 * a real; "null" for NaN and infinities. out: 40 bytes. */
void cl_fmt_real(char *out, size_t n, double x)
{
    if (!isfinite(x)) {
        snprintf(out, n, "null");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, n, "%.*g", prec, x);
        if (strtod(out, NULL) == x) break;
    }
    if (!strpbrk(out, ".eEn")) strncat(out, ".0", n - strlen(out) - 1);
}

/* Writes v to f the way json_dumps does (JSON_INDENT(2) or JSON_COMPACT,
 * insertion order) except for reals (cl_fmt_real). */
static void put_json(FILE *f, const json_t *v, int pretty, int depth)
{
    char num[40];
    if (json_is_object(v) || json_is_array(v)) {
        int obj = json_is_object(v);
        size_t n = obj ? json_object_size(v) : json_array_size(v);
        fputc(obj ? '{' : '[', f);
        if (!n) {
            fputc(obj ? '}' : ']', f);
            return;
        }
        size_t i = 0;
        const char *k;
        json_t *x;
        void *it = obj ? json_object_iter((json_t *)v) : NULL;
        for (i = 0; i < n; i++) {
            if (i) fputc(',', f);
            if (pretty) fprintf(f, "\n%*s", 2 * (depth + 1), "");
            if (obj) {
                k = json_object_iter_key(it);
                x = json_object_iter_value(it);
                json_t *ks = json_string(k);
                char *kt = ks ? json_dumps(ks, JSON_ENCODE_ANY) : NULL;
                fputs(kt ? kt : "\"\"", f);
                free(kt);
                json_decref(ks);
                fputs(pretty ? ": " : ":", f);
                it = json_object_iter_next((json_t *)v, it);
            } else {
                x = json_array_get(v, i);
            }
            put_json(f, x, pretty, depth + 1);
        }
        if (pretty) fprintf(f, "\n%*s", 2 * depth, "");
        fputc(obj ? '}' : ']', f);
    } else if (json_is_real(v)) {
        cl_fmt_real(num, sizeof num, json_real_value(v));
        fputs(num, f);
    } else {
        char *t = json_dumps(v, JSON_ENCODE_ANY);
        if (t) fputs(t, f);
        free(t);
    }
}

void cl_print_json(const json_t *v, int pretty)
{
    if (v) {
        put_json(stdout, v, pretty, 0);
        fputc('\n', stdout);
    }
    fflush(stdout);
}

void cl_fmt_bytes(char *out, size_t n, double b)
{
    if (b < 1024) snprintf(out, n, "%.0f B", b);
    else if (b < 1024 * 1024) snprintf(out, n, "%.1f KiB", b / 1024);
    else if (b < 1024.0 * 1024 * 1024) snprintf(out, n, "%.1f MiB", b / (1024 * 1024));
    else snprintf(out, n, "%.2f GiB", b / (1024.0 * 1024 * 1024));
}

void cl_fmt_dur(char *out, size_t n, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(out, n, "--");
    else if (s >= 3600)
        snprintf(out, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else
        snprintf(out, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

void cl_fmt_bar(char *out, size_t n, int w, double frac)
{
    if ((size_t)w + 1 > n) w = (int)n - 1;
    if (!(frac >= 0)) frac = 0;
    if (frac > 1) frac = 1;
    int fill = (int)(frac * w);
    for (int i = 0; i < w; i++) out[i] = i < fill ? '#' : '.';
    out[w] = 0;
}

void cl_fmt_time(char *out, size_t n, long long t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t <= 0 || !gmtime_r(&tt, &tm) || !strftime(out, n, "%Y-%m-%d %H:%M", &tm))
        snprintf(out, n, "-");
}

const char *cl_str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

double cl_num(const json_t *o, const char *k, double dflt)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : dflt;
}
