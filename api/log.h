/* log.h: JSON-lines logs on stderr, one object per line:
 *   {"ts":"2025-01-01T12:00:00.123Z","level":"info","prog":"server",
 *    "event":"http.request", ...fields}
 * Never pass API keys, key hashes or database passwords: log_redact_url()
 * strips the password from a connection URL before it is logged. Safe to call
 * from any thread (one write(2) per line). */
#ifndef DT_API_LOG_H
#define DT_API_LOG_H

#include <jansson.h>
#include <stddef.h>

enum { DT_LOG_DEBUG = 0, DT_LOG_INFO = 1, DT_LOG_WARN = 2, DT_LOG_ERROR = 3 };

/* prog names the process in every line ("server", "worker", "deltatune"). */
void log_init(const char *prog, int min_level);

/* Parses "debug|info|warn|error"; returns the level or -1. */
int log_level_parse(const char *s);

/* Logs event with a printf-style "msg" field. */
void log_msg(int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Logs event with extra fields; fields (may be NULL) is stolen. */
void log_json(int level, const char *event, json_t *fields);

/* Copies url into out with any password replaced by "***"
 * ("postgres://u:secret@h/db" -> "postgres://u:***@h/db",
 *  "host=h password=secret" -> "host=h password=***"). */
void log_redact_url(const char *url, char *out, size_t outlen);

#endif
