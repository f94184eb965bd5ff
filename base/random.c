/* random.c: getrandom(2) and splitmix64. */
#include "random.h"

#include <errno.h>
#include <sys/random.h>

#include "dt.h"

#define GOLDEN 0x9E3779B97F4A7C15ull

int dt_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return DT_EIO;
        }
        p += r;
        n -= (size_t)r;
    }
    return DT_OK;
}

uint64_t dt_mix64(uint64_t z)
{
    z += GOLDEN;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t dt_rng_next(uint64_t *state)
{
    uint64_t r = dt_mix64(*state);
    *state += GOLDEN;
    return r;
}
