/* fuzz_down.c: PostgreSQL and Redis are "down" for the HTTP targets. They
 * link with -Wl,--wrap=db_pool_acquire,--wrap=queue_ping,--wrap=queue_depth
 * so every call from the server's code lands here and fails at once, as
 * with an unreachable database or queue (no waiting, no sockets). */
#include "api/db.h"
#include "api/queue.h"
#include "base/dt.h"

db *__wrap_db_pool_acquire(db_pool *p, int wait_ms);
int __wrap_queue_ping(queue *q, char *err);
int __wrap_queue_depth(queue *q, int64_t *depth, char *err);

db *__wrap_db_pool_acquire(db_pool *p, int wait_ms)
{
    return NULL;
}

int __wrap_queue_ping(queue *q, char *err)
{
    return dt_errf(err, DT_EIO, "redis is down (fuzz harness)");
}

int __wrap_queue_depth(queue *q, int64_t *depth, char *err)
{
    *depth = 0;
    return dt_errf(err, DT_EIO, "redis is down (fuzz harness)");
}
