/* client_follow.c: `deltatune jobs follow JOB` (and `jobs create --follow`).
 *
 * Reads the job's Server-Sent Events stream
 * (GET /v1/fine_tuning/jobs/{id}/events?stream=true): on a terminal a live
 * progress bar (step/total, loss, tokens/s, ETA) with the job's messages
 * above it; otherwise each event as one JSON line, then the finished job as
 * a last line. A dropped stream is reopened with Last-Event-ID; a refused
 * one (429 too_many_streams) is replaced by polling the job. Exits with the
 * job's outcome: 0 succeeded, 3 failed, 4 cancelled (with the job's error
 * message on stderr), 1 when the API or the network fails. */
#include "client_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct follow {
    cl_ctx *c;
    int tty;              /* bar and text on stdout; else JSON lines */
    int bar_shown;        /* the bar is on the current line */
    int ended;            /* `event: end` arrived */
    int got_event;        /* an event arrived on this connection */
    long status;          /* the stream request's HTTP status */
    char last_id[64];     /* last `id:` seen, for Last-Event-ID */
    char bar[256];        /* the bar line last drawn */
    cl_buf line;          /* the current, unfinished line */
    cl_buf data;          /* data: lines of the current event */
    char event[32];       /* event: name of the current event */
    cl_buf errbody;       /* the body of a non-200 answer */
} follow;

static int is_final(const char *status)
{
    return !strcmp(status, "succeeded") || !strcmp(status, "failed") ||
           !strcmp(status, "cancelled");
}

static void bar_clear(follow *f)
{
    if (f->bar_shown) {
        fputs("\r\033[K", stdout);
        f->bar_shown = 0;
    }
}

static void bar_draw(follow *f)
{
    if (!f->bar[0]) return;
    fprintf(stdout, "\r%s\033[K", f->bar);
    f->bar_shown = 1;
    fflush(stdout);
}

/* The bar from a progress object (metrics event data or job.progress). */
static void bar_update(follow *f, const json_t *p)
{
    double step = cl_num(p, "step", 0), total = cl_num(p, "total_steps", 0);
    double loss = cl_num(p, "train_loss", NAN), vloss = cl_num(p, "valid_loss", NAN);
    double tps = cl_num(p, "tokens_per_second", NAN), eta = cl_num(p, "eta_seconds", NAN);
    char bar[40], etas[32], l[48] = "", v[48] = "", t[48] = "";
    cl_fmt_bar(bar, sizeof bar, 24, total > 0 ? step / total : 0);
    cl_fmt_dur(etas, sizeof etas, step >= total && total > 0 ? 0 : eta);
    if (isfinite(loss)) snprintf(l, sizeof l, "  loss %.4f", loss);
    if (isfinite(vloss)) snprintf(v, sizeof v, "  valid %.4f", vloss);
    if (isfinite(tps)) snprintf(t, sizeof t, "  %.0f tok/s", tps);
    snprintf(f->bar, sizeof f->bar, "[%s] %.0f/%.0f%s%s%s  ETA %s", bar, step, total, l, v, t,
             etas);
    bar_draw(f);
}

/* One complete SSE event (f->event, f->data). */
static void dispatch(follow *f)
{
    if (!strcmp(f->event, "end")) {
        f->ended = 1;
        return;
    }
    if (!f->data.n) return;
    f->got_event = 1;
    if (!f->tty) {
        fwrite(f->data.p, 1, f->data.n, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        return;
    }
    json_t *e = json_loadb(f->data.p, f->data.n, 0, NULL);
    if (!e) return;
    json_t *d = json_object_get(e, "data");
    if (!strcmp(cl_str(e, "type"), "metrics") && json_is_object(d)) {
        bar_update(f, d);
    } else {
        const char *level = cl_str(e, "level");
        char ts[32] = "";
        time_t tt = (time_t)cl_num(e, "created_at", 0);
        struct tm tm;
        if (tt > 0 && localtime_r(&tt, &tm)) strftime(ts, sizeof ts, "%H:%M:%S ", &tm);
        bar_clear(f);
        printf("%s%s%s%s\n", ts, strcmp(level, "info") && level[0] ? level : "",
               strcmp(level, "info") && level[0] ? ": " : "", cl_str(e, "message"));
        bar_draw(f);
    }
    json_decref(e);
}

/* One SSE line (without its newline). */
static void sse_line(follow *f, char *s, size_t n)
{
    if (n && s[n - 1] == '\r') s[--n] = 0;
    if (n == 0) {
        dispatch(f);
        f->data.n = 0;
        f->event[0] = 0;
        return;
    }
    if (s[0] == ':') return; /* a comment: keep-alive */
    char *colon = memchr(s, ':', n);
    size_t fl = colon ? (size_t)(colon - s) : n;
    char *v = colon ? colon + 1 : s + n;
    if (*v == ' ') v++;
    size_t vl = (size_t)(s + n - v);
    if (fl == 4 && !memcmp(s, "data", 4)) {
        if (f->data.n) cl_buf_add(&f->data, "\n", 1);
        cl_buf_add(&f->data, v, vl);
    } else if (fl == 5 && !memcmp(s, "event", 5)) {
        snprintf(f->event, sizeof f->event, "%.*s", (int)vl, v);
    } else if (fl == 2 && !memcmp(s, "id", 2)) {
        snprintf(f->last_id, sizeof f->last_id, "%.*s", (int)vl, v);
    }
}

static size_t on_stream(char *p, size_t sz, size_t n, void *ud)
{
    follow *f = ud;
    size_t len = sz * n;
    if (!f->status) curl_easy_getinfo(f->c->curl, CURLINFO_RESPONSE_CODE, &f->status);
    if (f->status != 200)
        return cl_buf_add(&f->errbody, p, len) ? 0 : len;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\n') {
            cl_buf_add(&f->line, "", 0);
            sse_line(f, f->line.p ? f->line.p : (char *)"", f->line.n);
            f->line.n = 0;
            if (f->ended) return 0; /* stop the transfer: the stream is done */
        } else if (cl_buf_add(&f->line, p + i, 1)) {
            return 0;
        }
    }
    return len;
}

/* Opens the stream once and reads it until it ends or drops. Returns 0
 * when it ended (`event: end`), 1 when it dropped (reconnect), 2 when it
 * was refused with 429 (poll instead), CL_EXIT_ERROR otherwise (printed). */
static int stream_once(follow *f, const char *url)
{
    char hdr[128];
    struct curl_slist *h = curl_slist_append(NULL, "Accept: text/event-stream");
    if (f->last_id[0]) {
        snprintf(hdr, sizeof hdr, "Last-Event-ID: %s", f->last_id);
        h = curl_slist_append(h, hdr);
    }
    h = cl_prepare(f->c, url, h);
    /* Keep-alives come every 10 s: 35 s of silence is a dead connection. */
    curl_easy_setopt(f->c->curl, CURLOPT_LOW_SPEED_TIME, 35L);
    curl_easy_setopt(f->c->curl, CURLOPT_WRITEFUNCTION, on_stream);
    curl_easy_setopt(f->c->curl, CURLOPT_WRITEDATA, f);
    f->status = 0;
    f->errbody.n = 0;
    f->line.n = 0;
    f->data.n = 0;
    f->event[0] = 0;
    f->got_event = 0;
    CURLcode rc = curl_easy_perform(f->c->curl);
    curl_slist_free_all(h);
    if (f->ended) return 0;
    if (!f->status) curl_easy_getinfo(f->c->curl, CURLINFO_RESPONSE_CODE, &f->status);
    if (f->status == 429) return 2;
    if (f->status == 503 || f->status == 502) { /* restarting: try again */
        bar_clear(f);
        cl_print_api_error(f->c, url, f->status, &f->errbody);
        return 1;
    }
    if (f->status && f->status != 200) {
        bar_clear(f);
        cl_print_api_error(f->c, url, f->status, &f->errbody);
        return CL_EXIT_ERROR;
    }
    if (rc != CURLE_OK && !f->got_event) {
        bar_clear(f);
        cl_print_net_error(f->c, url, rc);
    }
    return 1;
}

/* Polls the job every 2 s until it is final (the stream was refused). */
static int poll_job(follow *f, const char *path)
{
    double last_step = -1;
    char status[32] = "", last_status[32] = "";
    for (;;) {
        json_t *j;
        int rc = cl_call(f->c, "GET", path, NULL, NULL, NULL, &j);
        if (rc) return rc;
        json_t *p = json_object_get(j, "progress");
        snprintf(status, sizeof status, "%s", cl_str(j, "status"));
        if (json_is_object(p) && cl_num(p, "step", 0) != last_step) {
            last_step = cl_num(p, "step", 0);
            if (f->tty) bar_update(f, p);
            else if (!is_final(status)) cl_print_json(j, 0); /* the final one follows */
        }
        if (f->tty && strcmp(status, last_status)) {
            bar_clear(f);
            printf("status: %s\n", status);
            bar_draw(f);
        }
        snprintf(last_status, sizeof last_status, "%s", status);
        json_decref(j);
        if (is_final(status)) return 0;
        sleep(2);
    }
}

int cl_jobs_follow(cl_ctx *c, const char *job_id)
{
    follow f = {.c = c, .tty = !c->json && isatty(STDOUT_FILENO)};
    char esc[400], path[600], url[2048];
    cl_esc(esc, sizeof esc, job_id);
    snprintf(path, sizeof path, "/v1/fine_tuning/jobs/%s", esc);
    snprintf(url, sizeof url, "%s%s/events?stream=true", c->url, path);
    json_t *j;
    int rc = cl_call(c, "GET", path, NULL, NULL, NULL, &j);
    if (rc) return rc;
    if (f.tty)
        printf("following %s (%s, model %s)\n", cl_str(j, "id"), cl_str(j, "status"),
               cl_str(j, "model"));
    json_decref(j);
    int drops = 0;
    for (;;) {
        rc = stream_once(&f, url);
        if (rc == 0) break;
        if (rc == 2) {
            fflush(stdout);
            fprintf(stderr, "deltatune %s: the event stream was refused (HTTP 429, too many "
                            "open); polling the job every 2 s\n", c->cmd);
            if ((rc = poll_job(&f, path))) goto out;
            break;
        }
        if (rc != 1) goto out;
        /* Dropped: reopen where it stopped. A stream the server accepted
         * (200; a paused job's may stay silent but for keep-alives) resets
         * the count; 10 failures in a row to reach it give up. */
        drops = f.status == 200 ? 0 : drops + 1;
        if (drops > 10) {
            bar_clear(&f);
            fprintf(stderr, "deltatune %s: the event stream %s keeps failing; giving up\n",
                    c->cmd, url);
            rc = CL_EXIT_ERROR;
            goto out;
        }
        sleep(drops > 3 ? 3 : 1);
    }
    /* The stream ended: the job is final. Its row says how. */
    if ((rc = cl_call(c, "GET", path, NULL, NULL, NULL, &j))) goto out;
    const char *status = cl_str(j, "status");
    json_t *err = json_object_get(j, "error");
    bar_clear(&f);
    if (f.bar[0] && f.tty) printf("%s\n", f.bar);
    if (!f.tty) cl_print_json(j, 0);
    if (!strcmp(status, "succeeded")) {
        rc = CL_EXIT_OK;
        if (f.tty)
            printf("%s succeeded: %s (%lld trained tokens)\n", cl_str(j, "id"),
                   cl_str(j, "fine_tuned_model"), (long long)cl_num(j, "trained_tokens", 0));
    } else {
        rc = !strcmp(status, "cancelled") ? CL_EXIT_CANCELLED : CL_EXIT_FAILED;
        const char *msg = cl_str(err, "message"), *param = cl_str(err, "param");
        fflush(stdout);
        fprintf(stderr, "deltatune %s: job %s %s%s%s", c->cmd, cl_str(j, "id"), status,
                msg[0] ? ": " : "", msg);
        if (param[0]) fprintf(stderr, " [param: %s]", param);
        fputc('\n', stderr);
    }
    json_decref(j);
out:
    fflush(stdout);
    cl_buf_free(&f.line);
    cl_buf_free(&f.data);
    cl_buf_free(&f.errbody);
    return rc;
}

static const char follow_help[] =
    "usage: deltatune jobs follow JOB\n"
    "\n"
    "Follows a job until it ends (from its first event, so a finished job is\n"
    "replayed). On a terminal: the job's messages and a live progress bar\n"
    "(step/total, loss, tokens/s, ETA). Otherwise (or --json): each event as one\n"
    "JSON line (object fine_tuning.job.event), then the finished job (object\n"
    "fine_tuning.job). A paused job is followed until it is resumed and ends.\n"
    "When the server refuses the stream (too many open for this key), the job is\n"
    "polled every 2 s instead (JSON lines: the job at each new step).\n"
    "\n" CL_COMMON_HELP
    "\n"
    "Exit status: 0 the job succeeded, 3 it failed, 4 it was cancelled (the\n"
    "job's error message on stderr); 1 an API or network error, 2 bad usage.\n";

int cl_cmd_jobs_follow(int argc, char **argv)
{
    static const struct option opts[] = {CL_COMMON_OPTS, {0, 0, 0, 0}};
    cl_ctx c;
    cl_init(&c, "jobs follow");
    const char *pos[1];
    int np, rc = cl_parse(&c, argc, argv, opts, follow_help, NULL, NULL, pos, 1, &np);
    if (rc) return rc == CL_HELP_SHOWN ? 0 : rc;
    if (np != 1) {
        fprintf(stderr, "deltatune jobs follow: give the job id (ftjob-...)\n");
        return CL_EXIT_USAGE;
    }
    if ((rc = cl_connect(&c))) return rc;
    rc = cl_jobs_follow(&c, pos[0]);
    cl_close(&c);
    return rc;
}
