/* fuzz_http.h: an in-process libmicrohttpd daemon (no listening socket)
 * that runs the server's real request parsing: route_find over the real
 * route table (server/routes.c), the query and header lookups, the
 * multipart upload streaming of server/files.c and the real handlers
 * (files, jobs, models, ops, static, sse), with the reply helpers of
 * server/http.c.
 *
 * PostgreSQL and Redis are "down" (fuzz_down.c, linked with -Wl,--wrap) and
 * fail at once, so every handler runs up to its first database use and
 * then replies 503 (req_db), which is itself a path worth fuzzing. Authentication, rate limits and idempotency keys
 * (server/http.c's first_call and dispatch) are left out: they need a
 * database; the owner is always "fuzz-owner".
 *
 * fuzz_http_request() feeds raw request bytes over a socketpair and reads
 * the response until the daemon closes the connection. */
#ifndef DT_FUZZ_HTTP_H
#define DT_FUZZ_HTTP_H

#include <stddef.h>

/* Starts the daemon on first use (artifact root in a temp directory). */
void fuzz_http_init(void);
/* Sends n bytes, half-closes, reads the reply. Returns the HTTP status of
 * the first response line, 0 when the daemon sent none. */
int fuzz_http_request(const char *data, size_t n);

#endif
