/* log.c: JSON-lines logs on stderr (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *g_prog = "deltatune";
static int g_min = DT_LOG_INFO;
static const char *const names[] = {"debug", "info", "warn", "error"};

void log_init(const char *prog, int min_level)
{
    g_prog = prog;
    g_min = min_level;
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) return i;
    if (!strcmp(s, "warning")) return DT_LOG_WARN;
    return -1;
}

void log_json(int level, const char *event, json_t *fields)
{
    if (level < g_min || level < 0 || level > 3) {
        json_decref(fields);
        return;
    }
    json_t *o = json_object();
    if (!o) { json_decref(fields); return; }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[96];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)((tv.tv_usec / 1000) % 1000));
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(names[level]));
    json_object_set_new(o, "prog", json_string(g_prog));
    json_object_set_new(o, "event", json_string(event));
    if (fields) json_object_update(o, fields);
    json_decref(fields);
    char *line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!line) return;
    size_t n = strlen(line);
    line[n] = '\n'; /* overwrite the NUL; write exactly n+1 bytes in one call */
    ssize_t w = write(2, line, n + 1);
    (void)w;
    free(line);
}

void log_msg(int level, const char *event, const char *fmt, ...)
{
    if (level < g_min) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_json(level, event, json_pack("{s:s}", "msg", buf));
}

void log_redact_url(const char *url, char *out, size_t outlen)
{
    if (!outlen) return;
    snprintf(out, outlen, "%s", url);
    /* URI form: scheme://user:password@host */
    char *scheme = strstr(out, "://");
    if (scheme) {
        char *at = strchr(scheme + 3, '@');
        char *colon = strchr(scheme + 3, ':');
        if (at && colon && colon < at) {
            char tail[1024];
            snprintf(tail, sizeof tail, "%s", at);
            snprintf(colon, outlen - (size_t)(colon - out), ":***%s", tail);
        }
        return;
    }
    /* key=value form: password=... up to the next space */
    char *p = strstr(out, "password=");
    if (p) {
        char *v = p + 9;
        char *end = strchr(v, ' ');
        char tail[1024];
        snprintf(tail, sizeof tail, "%s", end ? end : "");
        snprintf(v, outlen - (size_t)(v - out), "***%s", tail);
    }
}
