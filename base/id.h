/* id.h: object ids: a prefix and 24 lowercase hex digits (96 random bits),
 * e.g. "ftjob-3f9a…". */
#ifndef DT_ID_H
#define DT_ID_H

#include <stddef.h>

#define DT_ID_RANDOM_HEX 24

/* Writes prefix + 24 hex digits + NUL into out. DT_EINVAL when outlen is
 * too small, DT_EIO when the system has no randomness. */
int dt_id_new(const char *prefix, char *out, size_t outlen);

#endif
