/* chat.h: POST /v1/chat/completions and POST /v1/completions (chat.c),
 * answered by serving workers through Redis; the relay thread's shutdown
 * and its counters for /metrics. */
#ifndef DT_SERVER_CHAT_H
#define DT_SERVER_CHAT_H

#include <stdint.h>

struct server;
struct req;

void chat_completions(struct req *r);
void completions(struct req *r);

/* Answers every deferred request 503, ends every stream and stops the
 * relay (before MHD_stop_daemon: MHD must not stop with suspended
 * connections). Idempotent. */
void chat_shutdown(struct server *s);

typedef struct chat_stats {
    uint64_t requests;           /* handed to serving workers */
    uint64_t tokens;             /* text events relayed (about one a token) */
    uint64_t cancelled;          /* clients that went away before the end */
    uint64_t timeouts;           /* no worker in time, or a worker gone silent */
    int open;                    /* requests in flight now */
    uint64_t started;            /* requests a worker took */
    double queue_wait_s;         /* their waits for a worker, summed (seconds) */
    uint64_t first_tokens;       /* requests that got text */
    double first_token_s;        /* their times to the first text, summed (seconds) */
} chat_stats;
void chat_counters(chat_stats *out);

#endif
