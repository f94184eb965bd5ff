/* auth.h: API keys, SHA-256 and randomness.
 *
 * A key is "dt-<prefix>-<secret>": prefix 8 and secret 32 base62 characters
 * from /dev/urandom (190 bits in the secret). The database stores the prefix
 * (the lookup key, shown by `deltatune keys list`) and the SHA-256 hex of the
 * whole key; the key itself is printed once at creation and never stored or
 * logged. A presented key is looked up by prefix and its hash compared in
 * constant time. */
#ifndef DT_API_AUTH_H
#define DT_API_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "db.h"

#define AUTH_PREFIX_LEN 8
#define AUTH_SECRET_LEN 32
#define AUTH_KEY_LEN (3 + AUTH_PREFIX_LEN + 1 + AUTH_SECRET_LEN) /* 44 */

/* Makes a new key. key: AUTH_KEY_LEN+1 bytes, prefix: AUTH_PREFIX_LEN+1,
 * hash_hex: 65. */
int auth_key_generate(char *key, char *prefix, char *hash_hex);

/* Checks the format and extracts the prefix (AUTH_PREFIX_LEN+1 bytes).
 * DT_EINVAL for anything that is not a well-formed key. */
int auth_key_parse(const char *key, char *prefix);

/* SHA-256 of n bytes as 64 lowercase hex characters + NUL. */
void auth_sha256_hex(const void *data, size_t n, char *hex65);

/* Streaming SHA-256 (uploads, model files). */
typedef struct auth_sha256 auth_sha256;
auth_sha256 *auth_sha256_new(void);
void auth_sha256_update(auth_sha256 *s, const void *data, size_t n);
/* Writes the hex digest; the context can't be updated afterwards. */
void auth_sha256_final(auth_sha256 *s, char *hex65);
void auth_sha256_free(auth_sha256 *s);

/* Constant-time equality of two n-byte buffers (1 equal, 0 not). */
int auth_equal(const void *a, const void *b, size_t n);

/* Resolves an "Authorization" header value ("Bearer <key>") to the key's
 * owner (DB_OWNER_LEN bytes). Lookups are cached in-process for
 * DELTATUNE_AUTH_CACHE_SECONDS (default 5; see auth_cache_set_ttl), so a
 * revoked key stops working within that on every server. DT_EINVAL: missing or malformed header;
 * DB_ENOTFOUND: unknown, revoked or wrong key (the caller answers 401 for
 * both); DB_EUNAVAIL: database down (503). */
int auth_authenticate(db *d, const char *authorization, char *owner,
                      char *err);

/* Sets how long lookups are cached (DELTATUNE_AUTH_CACHE_SECONDS; 0 = not
 * cached) and empties the cache. */
void auth_cache_set_ttl(double seconds);

/* Empties the lookup cache (tests, and after `keys revoke` in-process). */
void auth_cache_clear(void);

/* Owner names: 1-64 of [A-Za-z0-9_-]. 1 valid, 0 not. */
int auth_owner_valid(const char *owner);

#endif
