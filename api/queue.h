/* queue.h: Redis as the wake-up channel (hiredis 0.14).
 *
 * Protocol: the list "deltatune:jobs". queue_publish() does
 *   LPUSH deltatune:jobs <job_id>; LTRIM deltatune:jobs 0 9999
 * and workers BRPOP it, so a wake-up sent while every worker is busy waits in
 * the list (a PUBLISH would be lost). A message is only a hint: the worker
 * then claims in PostgreSQL (db_job_claim), which decides who runs what, so
 * duplicates and stale ids are harmless and losing the list (Redis restart,
 * FLUSHALL) costs latency only: the reconciler re-publishes queued jobs and
 * workers also poll.
 *
 * One handle owns one hiredis context. After any error the context is freed
 * and the next call reconnects (hiredis contexts are unusable after an
 * error). Calls are serialized by a mutex inside the handle; a blocking
 * queue_wait() holds it, so a thread that waits should have its own handle. */
#ifndef DT_API_QUEUE_H
#define DT_API_QUEUE_H

#include <stdint.h>

#define QUEUE_KEY "deltatune:jobs"
#define QUEUE_MAX_LEN 10000

typedef struct queue queue;

/* url: "redis://[:password@]host[:port][/db]" or "unix:/path/to.sock".
 * Does not connect yet (so a down Redis does not stop a process from
 * starting); returns DT_EINVAL for a malformed URL. */
int queue_open(queue **out, const char *url, char *err);
void queue_free(queue *q);

/* Wakes one worker for job_id. 0, or DT_EIO when Redis is unreachable. */
int queue_publish(queue *q, const char *job_id, char *err);

/* Blocks up to timeout_ms (rounded up to whole seconds, minimum 1 s, as
 * BRPOP counts seconds) for a wake-up. Returns 1 with job_id_out (64 bytes)
 * filled, 0 on timeout, or DT_EIO (after sleeping out the timeout, so a
 * polling loop does not spin while Redis is down). */
int queue_wait(queue *q, int timeout_ms, char *job_id_out, char *err);

/* LLEN of the list (for /metrics). */
int queue_depth(queue *q, int64_t *depth, char *err);

/* PING. 0 or DT_EIO. */
int queue_ping(queue *q, char *err);

/* Counts successful (re)connects. The reconciler re-publishes queued jobs
 * when it changes (Redis may have restarted empty). */
uint64_t queue_generation(queue *q);

/* ---- inference (chat and completions, served by deltatune-worker --serve)
 *
 * The server LPUSHes each request (a JSON text, see server/chat.c) on
 * QUEUE_INFER_KEY; serving workers BRPOP it, so requests are taken oldest
 * first and each by one worker. A worker RPUSHes the request's events (JSON
 * texts) on its reply list "deltatune:infer:<id>" (expiring after
 * QUEUE_REPLY_TTL seconds, so a reply nobody reads goes away), and the
 * server BLPOPs every open request's reply list at once. The server sets
 * "deltatune:infer:<id>:cancel" (same TTL) when a client goes away or waited
 * too long; a worker checks it before it starts and between tokens. */
#define QUEUE_INFER_KEY "deltatune:infer"
#define QUEUE_REPLY_TTL 600
#define QUEUE_INFER_ID_LEN 64

/* LPUSH QUEUE_INFER_KEY request. 0 or DT_EIO. */
int queue_infer_push(queue *q, const char *request, char *err);
/* BRPOP QUEUE_INFER_KEY for up to timeout_ms (whole seconds, at least 1):
 * 1 with *request (malloc'd, the caller frees), 0 on timeout, or DT_EIO
 * (after sleeping out the timeout). */
int queue_infer_take(queue *q, int timeout_ms, char **request, char *err);
/* RPOP QUEUE_INFER_KEY without waiting (a serving worker that is decoding
 * admits newcomers between steps): 1 with *request (malloc'd), 0 when the
 * queue is empty, or DT_EIO. */
int queue_infer_try(queue *q, char **request, char *err);
/* RPUSH QUEUE_INFER_KEY request: a request taken but not started goes
 * back to the head of the queue (a serving worker that stops). */
int queue_infer_requeue(queue *q, const char *request, char *err);
/* RPUSH one event on request id's reply list and renews its TTL. */
int queue_reply_push(queue *q, const char *id, const char *event, char *err);
/* BLPOP on the reply lists of ids[n] (n >= 1) for up to timeout_ms
 * (milliseconds: Redis 6+ takes a fractional timeout): 1 with id_out
 * (QUEUE_INFER_ID_LEN bytes) and *event (malloc'd) filled, 0 on timeout, or
 * DT_EIO (without sleeping). */
int queue_reply_wait(queue *q, const char *const *ids, int n, int timeout_ms,
                     char *id_out, char **event, char *err);
/* Sets request id's cancel flag (with the TTL). */
int queue_cancel_set(queue *q, const char *id, char *err);
/* *set = 1 when request id's cancel flag is set. 0 or DT_EIO. */
int queue_cancel_get(queue *q, const char *id, int *set, char *err);
/* LLEN QUEUE_INFER_KEY (requests no worker has taken yet, for /metrics). */
int queue_infer_depth(queue *q, int64_t *depth, char *err);

#endif
