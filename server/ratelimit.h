/* ratelimit.h: per-API-key token buckets (no MHD here, so the unit test
 * links it alone).
 *
 * Every key has a bucket of `burst` tokens that refills at `rate` tokens a
 * second; a request takes one token or, when the bucket is empty, is
 * answered 429 with the seconds until a token is back. Thread-safe: the
 * buckets are spread over shards, each behind its own mutex, so the epoll
 * thread pool's threads rarely wait on one another. Memory is bounded: a
 * bucket that has refilled completely is the same as no bucket, and such
 * buckets are dropped whenever a shard grows past its cap. */
#ifndef DT_SERVER_RATELIMIT_H
#define DT_SERVER_RATELIMIT_H

#include <stdint.h>

typedef struct ratelimit ratelimit;

typedef struct ratelimit_info {
    int64_t limit;          /* the bucket's size (burst), x-ratelimit-limit-requests */
    int64_t remaining;      /* whole tokens left after this request */
    double reset_s;         /* seconds until the bucket is full again */
    double retry_after_s;   /* limited: seconds until one token is back; else 0 */
} ratelimit_info;

/* A limiter of rate tokens/second and burst tokens per key. rate <= 0
 * returns NULL: no limiter (every request passes). burst < 1 means rate
 * (at least 1). */
ratelimit *ratelimit_new(double rate, double burst);
void ratelimit_free(ratelimit *rl);

/* Takes one token from key's bucket at time now (monotonic seconds, e.g.
 * dt_now()). Returns 1 when the request may go ahead, 0 when it is over
 * the limit (no token taken). info may be NULL. A NULL rl always allows. */
int ratelimit_take(ratelimit *rl, const char *key, double now, ratelimit_info *info);

/* Buckets held (tests: eviction keeps memory bounded). */
int ratelimit_size(ratelimit *rl);

/* OpenAI's duration text for x-ratelimit-reset-requests: "1s", "250ms",
 * "6m0s", "1h2m3s". Writes at most n bytes (NUL included). */
void ratelimit_duration(double seconds, char *out, int n);

#endif
