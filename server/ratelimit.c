/* ratelimit.c: token buckets per API key, sharded under mutexes (see
 * ratelimit.h). Buckets are chained in a small hash table per shard; keys
 * are the API keys' public prefixes, so the number of live buckets is
 * bounded by the number of valid keys in use (the server limits after
 * authentication, so made-up keys never get a bucket). */
#include "ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RL_SHARDS 64      /* independent locks */
#define RL_HEADS 64       /* chains per shard */
#define RL_SWEEP_AT 256   /* buckets in a shard before full ones are dropped */
#define RL_KEY_LEN 64     /* longer keys are compared on their first 63 bytes */

typedef struct bucket {
    struct bucket *next;
    char key[RL_KEY_LEN];
    double tokens;        /* at time t */
    double t;             /* monotonic seconds */
} bucket;

typedef struct shard {
    pthread_mutex_t mu;
    bucket *heads[RL_HEADS];
    int n;
    int sweep_at;         /* grows when a sweep frees little */
} shard;

struct ratelimit {
    double rate;          /* tokens per second */
    double burst;         /* bucket size */
    shard shards[RL_SHARDS];
};

ratelimit *ratelimit_new(double rate, double burst)
{
    if (!(rate > 0)) return NULL;
    ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl) return NULL;
    rl->rate = rate;
    rl->burst = burst >= 1 ? burst : (rate >= 1 ? rate : 1);
    for (int i = 0; i < RL_SHARDS; i++) {
        pthread_mutex_init(&rl->shards[i].mu, NULL);
        rl->shards[i].sweep_at = RL_SWEEP_AT;
    }
    return rl;
}

void ratelimit_free(ratelimit *rl)
{
    if (!rl) return;
    for (int i = 0; i < RL_SHARDS; i++) {
        shard *s = &rl->shards[i];
        for (int h = 0; h < RL_HEADS; h++)
            for (bucket *b = s->heads[h], *next; b; b = next) {
                next = b->next;
                free(b);
            }
        pthread_mutex_destroy(&s->mu);
    }
    free(rl);
}

static uint64_t fnv1a(const char *k)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; k[i] && i < RL_KEY_LEN - 1; i++)
        h = (h ^ (unsigned char)k[i]) * 1099511628211ull;
    return h;
}

/* Tokens in b at time now (refilled, capped at burst). */
static double level(const ratelimit *rl, const bucket *b, double now)
{
    double dt = now > b->t ? now - b->t : 0;
    double v = b->tokens + dt * rl->rate;
    return v < rl->burst ? v : rl->burst;
}

/* Drops the buckets that have refilled completely; caller holds s->mu. */
static void sweep(const ratelimit *rl, shard *s, double now)
{
    for (int h = 0; h < RL_HEADS; h++) {
        bucket **pp = &s->heads[h];
        while (*pp) {
            bucket *b = *pp;
            if (level(rl, b, now) >= rl->burst) {
                *pp = b->next;
                free(b);
                s->n--;
            } else {
                pp = &b->next;
            }
        }
    }
    /* when most buckets are busy, sweep again only after the shard doubles */
    s->sweep_at = s->n * 2 > RL_SWEEP_AT ? s->n * 2 : RL_SWEEP_AT;
}

int ratelimit_take(ratelimit *rl, const char *key, double now, ratelimit_info *info)
{
    if (!rl) {
        if (info) memset(info, 0, sizeof *info);
        return 1;
    }
    uint64_t hv = fnv1a(key);
    shard *s = &rl->shards[hv % RL_SHARDS];
    int head = (int)((hv / RL_SHARDS) % RL_HEADS);
    int ok;
    double tokens;

    pthread_mutex_lock(&s->mu);
    bucket *b = s->heads[head];
    while (b && strncmp(b->key, key, RL_KEY_LEN - 1)) b = b->next;
    if (!b) {
        if (s->n >= s->sweep_at) sweep(rl, s, now);
        b = malloc(sizeof *b);
        if (!b) { /* out of memory: let the request through rather than fail it */
            pthread_mutex_unlock(&s->mu);
            if (info) memset(info, 0, sizeof *info);
            return 1;
        }
        snprintf(b->key, sizeof b->key, "%s", key);
        b->tokens = rl->burst;
        b->t = now;
        b->next = s->heads[head];
        s->heads[head] = b;
        s->n++;
    }
    tokens = level(rl, b, now);
    ok = tokens >= 1;
    if (ok) tokens -= 1;
    b->tokens = tokens;
    if (now > b->t) b->t = now;
    pthread_mutex_unlock(&s->mu);

    if (info) {
        info->limit = (int64_t)rl->burst;
        info->remaining = (int64_t)floor(tokens);
        info->reset_s = (rl->burst - tokens) / rl->rate;
        info->retry_after_s = ok ? 0 : (1 - tokens) / rl->rate;
    }
    return ok;
}

int ratelimit_size(ratelimit *rl)
{
    int n = 0;
    if (!rl) return 0;
    for (int i = 0; i < RL_SHARDS; i++) {
        pthread_mutex_lock(&rl->shards[i].mu);
        n += rl->shards[i].n;
        pthread_mutex_unlock(&rl->shards[i].mu);
    }
    return n;
}

void ratelimit_duration(double seconds, char *out, int n)
{
    if (!(seconds > 0)) seconds = 0;
    if (seconds < 1) {
        snprintf(out, (size_t)n, "%dms", (int)ceil(seconds * 1000));
        return;
    }
    long long s = (long long)ceil(seconds);
    long long h = s / 3600, m = s / 60 % 60, sec = s % 60;
    if (h) snprintf(out, (size_t)n, "%lldh%lldm%llds", h, m, sec);
    else if (m) snprintf(out, (size_t)n, "%lldm%llds", m, sec);
    else snprintf(out, (size_t)n, "%llds", sec);
}
