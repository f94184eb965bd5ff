/* clock.c: monotonic seconds and condition-variable deadlines. */
#include "clock.h"

double dt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void dt_deadline(struct timespec *until, double seconds)
{
    clock_gettime(CLOCK_REALTIME, until);
    if (seconds <= 0)
        return;
    long long whole = (long long)seconds;
    long long ns = until->tv_nsec + (long long)((seconds - (double)whole) * 1e9);
    until->tv_sec += (time_t)(whole + ns / 1000000000LL);
    until->tv_nsec = (long)(ns % 1000000000LL);
}
