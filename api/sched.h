/* sched.h: the scheduler's periodic pass, written once for every process
 * that runs it: the server's background thread and each worker's keeper
 * thread. Several may run at once; every step is idempotent.
 *
 * 1. Rescue: jobs whose lease expired go back to `queued` (their attempt
 *    ends; `failed` after max_attempts): db_rescue_expired.
 * 2. Reconcile: PostgreSQL is the truth and Redis only wakes workers, so the
 *    ids of queued jobs (oldest 1000) are published again when the list may
 *    lack some: it holds fewer entries than there are queued jobs, its length
 *    cannot be read, leases were just re-queued, the caller says so (force:
 *    another of its connections reconnected), or this pass's connection is
 *    new or re-established since the last pass (Redis may have restarted
 *    empty). A duplicate wake-up costs a worker one empty claim. */
#ifndef DT_API_SCHED_H
#define DT_API_SCHED_H

#include <stdint.h>

#include "db.h"
#include "queue.h"

#define SCHED_MAX_REPUBLISH 1000

/* Caller-owned state between passes; zero it before the first. */
typedef struct sched {
    uint64_t queue_gen; /* queue_generation() when the depth was last read */
} sched;

/* What one pass did (for logs and tests). */
typedef struct sched_result {
    int requeued, failed; /* leases rescued */
    int queued;           /* queued jobs seen */
    int published;        /* wake-ups sent */
} sched_result;

/* Runs one pass. Logs what it changed ("sched.rescue", "sched.reconcile")
 * and what failed ("sched.failed"). Returns 0, or the first failure (DB or
 * queue code) with err set; a failed rescue still lets the reconcile run. */
int sched_pass(sched *s, db *d, queue *q, int force, sched_result *out, char *err);

#endif
