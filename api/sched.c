/* sched.c: the rescue + reconcile pass (see sched.h for the rules). */
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dt.h"
#include "log.h"

int sched_pass(sched *s, db *d, queue *q, int force, sched_result *out, char *err)
{
    sched_result r = {0};
    char e[DT_ERR_LEN] = "";
    int rc = db_rescue_expired(d, &r.requeued, &r.failed, e);
    if (rc) {
        log_msg(DT_LOG_WARN, "sched.failed", "rescue: %s", e);
        snprintf(err, DT_ERR_LEN, "%s", e);
    } else if (r.requeued || r.failed) {
        log_msg(DT_LOG_INFO, "sched.rescue", "expired leases: %d re-queued, %d failed",
                r.requeued, r.failed);
    }

    char (*ids)[DB_ID_LEN] = NULL;
    int rc2 = db_jobs_queued(d, SCHED_MAX_REPUBLISH, &ids, &r.queued, e);
    if (rc2) {
        log_msg(DT_LOG_WARN, "sched.failed", "reconcile: %s", e);
        if (!rc)
            snprintf(err, DT_ERR_LEN, "%s", e);
        if (out)
            *out = r;
        return rc ? rc : rc2;
    }
    int64_t depth = 0;
    uint64_t gen = queue_generation(q);
    int depth_rc = queue_depth(q, &depth, e);
    int publish = r.queued > 0 && (force || r.requeued > 0 || depth_rc != 0 ||
                                   depth < r.queued || gen != s->queue_gen);
    if (depth_rc == 0)
        s->queue_gen = gen;
    int qrc = 0;
    for (int i = 0; publish && i < r.queued; i++) {
        int prc = queue_publish(q, ids[i], e);
        if (prc == 0)
            r.published++;
        else if (!qrc)
            qrc = prc;
    }
    free(ids);
    if (r.published)
        log_msg(DT_LOG_INFO, "sched.reconcile", "published %d of %d queued job(s)",
                r.published, r.queued);
    if (qrc) {
        log_msg(DT_LOG_WARN, "sched.failed", "reconcile: Redis: %s", e);
        if (!rc)
            snprintf(err, DT_ERR_LEN, "Redis: %.480s", e);
    }
    if (out)
        *out = r;
    return rc ? rc : qrc;
}
