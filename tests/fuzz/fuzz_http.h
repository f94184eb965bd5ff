/* fuzz_http.h: an in-process libmicrohttpd daemon (no listening socket)
 * that runs the server's real request flow: server/http.c's own MHD
 * callbacks (http_on_request, http_on_completed, http_unescape, linked from
 * server/http.o: the smuggling, UTF-8 and %00 checks, route_find over the
 * real route table (server/routes.c), body caps, Authorization, idempotency
 * keys, the routes' body hooks (the multipart upload streaming of
 * server/files.c), the real handlers (files, jobs, models, ops, static,
 * sse) and send_reply), with the server's hooks wired as server/main.c
 * wires them (metrics, sse shutdown).
 *
 * PostgreSQL and Redis are "down" (fuzz_down.c, linked with -Wl,--wrap) and
 * fail at once, so every handler runs up to its first database use and
 * then replies 503 (req_db), which is itself a path worth fuzzing. The one
 * seam is the server's auth hook: any "Authorization" header is accepted as
 * the owner "fuzz-owner" (a request without one is still a 401). Rate
 * limits are off (cfg.rate_limit's buckets are not made).
 *
 * fuzz_http_request() feeds raw request bytes over a socketpair, reads the
 * response until the daemon closes the connection, and aborts on a JSON
 * reply without a body. */
#ifndef DT_FUZZ_HTTP_H
#define DT_FUZZ_HTTP_H

#include <stddef.h>

/* Starts the daemon on first use (artifact root in a temp directory). */
void fuzz_http_init(void);
/* Sends n bytes, half-closes, reads the reply. Returns the HTTP status of
 * the first response line, 0 when the daemon sent none. */
int fuzz_http_request(const char *data, size_t n);

#endif
