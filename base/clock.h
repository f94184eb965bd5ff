/* clock.h: the one clock. Intervals and timeouts are measured with
 * dt_now() (monotonic); dt_deadline() turns a timeout into the absolute
 * CLOCK_REALTIME time that pthread_cond_timedwait() expects. */
#ifndef DT_CLOCK_H
#define DT_CLOCK_H

#include <time.h>

/* Monotonic seconds (arbitrary origin). */
double dt_now(void);

/* *until = now (CLOCK_REALTIME) + seconds; seconds <= 0 means now. */
void dt_deadline(struct timespec *until, double seconds);

#endif
