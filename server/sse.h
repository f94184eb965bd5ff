/* sse.h: GET /v1/fine_tuning/jobs/{id}/events?stream=true as Server-Sent
 * Events (sse.c). */
#ifndef DT_SERVER_SSE_H
#define DT_SERVER_SSE_H

struct server;

/* Streams at most this many connections at once, and this many per owner;
 * more are answered 429 (poll the event list instead). */
#define SSE_MAX_STREAMS 64
#define SSE_MAX_PER_OWNER 8
#define SSE_POLL_SECONDS 0.5      /* new events are looked for this often */
#define SSE_KEEPALIVE_SECONDS 10  /* a comment line when nothing was sent */

/* Ends every stream and stops the poller (before MHD_stop_daemon: MHD must
 * not be stopped with suspended connections). Idempotent. */
void sse_shutdown(struct server *s);

#endif
