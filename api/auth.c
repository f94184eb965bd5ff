/* auth.c: API keys (generation, format, lookup), SHA-256 via OpenSSL EVP,
 * constant-time comparison, randomness from getrandom(2). */
#include "auth.h"
#include "base/clock.h"
#include "base/random.h"

#include <errno.h>
#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

static const char b62[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* n base62 characters without modulo bias (rejection sampling). */
static int random_b62(char *out, int n)
{
    int i = 0;
    unsigned char buf[64];
    while (i < n) {
        if (dt_random_bytes(buf, sizeof buf)) return DT_EIO;
        for (size_t k = 0; k < sizeof buf && i < n; k++)
            if (buf[k] < 248) out[i++] = b62[buf[k] % 62]; /* 248 = 4*62 */
    }
    out[n] = 0;
    return 0;
}

static int is_b62(const char *s, int n)
{
    for (int i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return 0;
    }
    return 1;
}

int auth_key_generate(char *key, char *prefix, char *hash_hex)
{
    char secret[AUTH_SECRET_LEN + 1];
    if (random_b62(prefix, AUTH_PREFIX_LEN) || random_b62(secret, AUTH_SECRET_LEN))
        return DT_EIO;
    snprintf(key, AUTH_KEY_LEN + 1, "dt-%s-%s", prefix, secret);
    auth_sha256_hex(key, strlen(key), hash_hex);
    explicit_bzero(secret, sizeof secret);
    return 0;
}

int auth_key_parse(const char *key, char *prefix)
{
    if (!key || strlen(key) != AUTH_KEY_LEN || strncmp(key, "dt-", 3) ||
        key[3 + AUTH_PREFIX_LEN] != '-' || !is_b62(key + 3, AUTH_PREFIX_LEN) ||
        !is_b62(key + 4 + AUTH_PREFIX_LEN, AUTH_SECRET_LEN))
        return DT_EINVAL;
    memcpy(prefix, key + 3, AUTH_PREFIX_LEN);
    prefix[AUTH_PREFIX_LEN] = 0;
    return 0;
}

struct auth_sha256 {
    EVP_MD_CTX *ctx;
};

auth_sha256 *auth_sha256_new(void)
{
    auth_sha256 *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->ctx = EVP_MD_CTX_new();
    if (!s->ctx || EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(s->ctx);
        free(s);
        return NULL;
    }
    return s;
}

void auth_sha256_update(auth_sha256 *s, const void *data, size_t n)
{
    EVP_DigestUpdate(s->ctx, data, n);
}

static void to_hex(const unsigned char *d, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[d[i] >> 4];
        out[2 * i + 1] = hx[d[i] & 15];
    }
    out[2 * n] = 0;
}

void auth_sha256_final(auth_sha256 *s, char *hex65)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(s->ctx, md, &n);
    to_hex(md, n, hex65);
}

void auth_sha256_free(auth_sha256 *s)
{
    if (!s) return;
    EVP_MD_CTX_free(s->ctx);
    free(s);
}

void auth_sha256_hex(const void *data, size_t n, char *hex65)
{
    unsigned char md[32];
    unsigned int len = 0;
    EVP_Digest(data, n, md, &len, EVP_sha256(), NULL);
    to_hex(md, len, hex65);
}

int auth_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

int auth_owner_valid(const char *owner)
{
    size_t n = strlen(owner);
    if (n < 1 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = owner[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
              (c >= 'A' && c <= 'Z') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* A small cache of key lookups (prefix -> hash, owner) so that a busy
 * client does not cost a query per request. Entries live g_cache_ttl
 * seconds (DELTATUNE_AUTH_CACHE_SECONDS, default 5; 0 = no cache), which
 * bounds how long a revoked key keeps working. The hash is still compared
 * on every request. */
#define AUTH_CACHE_SLOTS 256
static double g_cache_ttl = 5.0;
typedef struct cached_key {
    char prefix[AUTH_PREFIX_LEN + 1];
    char hash[65];
    char owner[DB_OWNER_LEN];
    double until;   /* dt_now() deadline; 0 = empty */
} cached_key;
static cached_key g_cache[AUTH_CACHE_SLOTS];
static pthread_mutex_t g_cache_mu = PTHREAD_MUTEX_INITIALIZER;

static unsigned cache_slot(const char *prefix)
{
    unsigned h = 2166136261u;
    for (; *prefix; prefix++) h = (h ^ (unsigned char)*prefix) * 16777619u;
    return h % AUTH_CACHE_SLOTS;
}

static int cache_get(const char *prefix, db_key *k)
{
    int hit = 0;
    cached_key *c = &g_cache[cache_slot(prefix)];
    pthread_mutex_lock(&g_cache_mu);
    if (c->until > dt_now() && !strcmp(c->prefix, prefix)) {
        memcpy(k->hash, c->hash, sizeof c->hash);
        memcpy(k->owner, c->owner, sizeof c->owner);
        hit = 1;
    }
    pthread_mutex_unlock(&g_cache_mu);
    return hit;
}

static void cache_put(const char *prefix, const db_key *k)
{
    cached_key *c = &g_cache[cache_slot(prefix)];
    pthread_mutex_lock(&g_cache_mu);
    memcpy(c->prefix, prefix, sizeof c->prefix);
    memcpy(c->hash, k->hash, sizeof c->hash);
    memcpy(c->owner, k->owner, sizeof c->owner);
    if (g_cache_ttl <= 0) {
        pthread_mutex_unlock(&g_cache_mu);
        return;
    }
    c->until = dt_now() + g_cache_ttl;
    pthread_mutex_unlock(&g_cache_mu);
}

void auth_cache_set_ttl(double seconds)
{
    pthread_mutex_lock(&g_cache_mu);
    g_cache_ttl = seconds > 0 ? seconds : 0;
    memset(g_cache, 0, sizeof g_cache);
    pthread_mutex_unlock(&g_cache_mu);
}

void auth_cache_clear(void)
{
    pthread_mutex_lock(&g_cache_mu);
    memset(g_cache, 0, sizeof g_cache);
    pthread_mutex_unlock(&g_cache_mu);
}

int auth_authenticate(db *d, const char *authorization, char *owner, char *err)
{
    char prefix[AUTH_PREFIX_LEN + 1], hash[65];
    if (!authorization || strncasecmp(authorization, "Bearer ", 7))
        return dt_errf(err, DT_EINVAL, "missing \"Authorization: Bearer <key>\" header");
    const char *key = authorization + 7;
    while (*key == ' ') key++;
    if (auth_key_parse(key, prefix))
        return dt_errf(err, DB_ENOTFOUND, "malformed API key");
    db_key k;
    if (!cache_get(prefix, &k)) {
        int rc = db_key_lookup(d, prefix, &k, err);
        if (rc) return rc == DB_ENOTFOUND ? dt_errf(err, rc, "invalid API key") : rc;
        cache_put(prefix, &k);
    }
    auth_sha256_hex(key, strlen(key), hash);
    if (!auth_equal(hash, k.hash, 64))
        return dt_errf(err, DB_ENOTFOUND, "invalid API key");
    snprintf(owner, DB_OWNER_LEN, "%s", k.owner);
    return 0;
}
