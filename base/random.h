/* random.h: randomness. dt_random_bytes() is the system's CSPRNG (keys,
 * ids); the splitmix64 functions are small, seeded and reproducible (weight
 * initialisation, data order). */
#ifndef DT_RANDOM_H
#define DT_RANDOM_H

#include <stddef.h>
#include <stdint.h>

/* Fills buf with n bytes from getrandom(2). 0 or DT_EIO. */
int dt_random_bytes(void *buf, size_t n);

/* splitmix64's output function of state z (z advanced by the golden ratio
 * first): a good 64-bit mix of z. */
uint64_t dt_mix64(uint64_t z);

/* The splitmix64 generator: returns dt_mix64(*state) and advances *state. */
uint64_t dt_rng_next(uint64_t *state);

#endif
