/* jsonw.h: a fast compact serializer for jansson values (no MHD here, so
 * the unit test links it alone).
 *
 * json_dumps() was most of the server's CPU time on list endpoints: it
 * escapes strings a byte at a time through a generic buffer and prints
 * every real with "%.17g" (2e-4 comes out as 0.00020000000000000001). This
 * writer produces the same JSON document (same key order: jansson keeps
 * insertion order; same escapes; UTF-8 passed through) with reals in their
 * shortest form that reads back to the same double (0.0002), and integral
 * reals as "16.0", as jansson does, so a real stays a real. */
#ifndef DT_SERVER_JSONW_H
#define DT_SERVER_JSONW_H

#include <jansson.h>
#include <stddef.h>

/* Compact JSON text of v (borrowed), malloc'd and NUL-terminated, its
 * length in *len. NULL when out of memory or v is NULL. */
char *jsonw_dump(const json_t *v, size_t *len);

/* The shortest "%.Ng" (N = 1..17) of x that reads back to x, with ".0"
 * added to integral values; "null" for NaN and infinities. out: 32 bytes.
 * Returns the length. */
int jsonw_real(double x, char *out);

#endif
