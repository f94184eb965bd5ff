/* test_api_auth.c: API key format, SHA-256, constant-time compare, owner
 * names; settings (defaults, env, flags, sizes); log redaction; the queue's
 * URL parsing and its behaviour with Redis down. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "api/auth.h"
#include "api/config.h"
#include "api/log.h"
#include "api/queue.h"

static void test_generated_key_has_format_and_matching_hash(void **s)
{
    (void)s;
    char key[AUTH_KEY_LEN + 1], prefix[AUTH_PREFIX_LEN + 1], hash[65], p2[AUTH_PREFIX_LEN + 1],
        h2[65];
    assert_int_equal(auth_key_generate(key, prefix, hash), 0);
    assert_int_equal(strlen(key), 44);
    assert_memory_equal(key, "dt-", 3);
    assert_int_equal(auth_key_parse(key, p2), 0);
    assert_string_equal(prefix, p2);
    auth_sha256_hex(key, strlen(key), h2);
    assert_string_equal(hash, h2);
    char key2[AUTH_KEY_LEN + 1];
    assert_int_equal(auth_key_generate(key2, p2, h2), 0);
    assert_string_not_equal(key, key2);
}

static void test_malformed_keys_are_rejected(void **s)
{
    (void)s;
    char p[AUTH_PREFIX_LEN + 1];
    assert_int_not_equal(auth_key_parse(NULL, p), 0);
    assert_int_not_equal(auth_key_parse("", p), 0);
    assert_int_not_equal(auth_key_parse("sk-AAAAAAAA-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", p), 0);
    assert_int_not_equal(auth_key_parse("dt-AAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", p), 0);
    assert_int_not_equal(auth_key_parse("dt-AAAAAAA!-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", p), 0);
    assert_int_not_equal(auth_key_parse("dt-AAAAAAAA-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", p), 0);
    assert_int_not_equal(auth_key_parse("dt-AAAAAAAA-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", p), 0);
    assert_int_equal(auth_key_parse("dt-AbCd0123-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA9", p), 0);
    assert_string_equal(p, "AbCd0123");
}

static void test_sha256_known_vectors(void **s)
{
    (void)s;
    char h[65];
    auth_sha256_hex("abc", 3, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    auth_sha256 *st = auth_sha256_new();
    auth_sha256_update(st, "a", 1);
    auth_sha256_update(st, "bc", 2);
    auth_sha256_final(st, h);
    auth_sha256_free(st);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    auth_sha256_hex("", 0, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    auth_sha256_free(NULL);
}

static void test_constant_time_equal(void **s)
{
    (void)s;
    assert_true(auth_equal("abcdef", "abcdef", 6));
    assert_false(auth_equal("abcdef", "abcdeg", 6));
    assert_false(auth_equal("xbcdef", "abcdef", 6));
    assert_true(auth_equal("a", "b", 0));
}

static void test_owner_names(void **s)
{
    (void)s;
    assert_true(auth_owner_valid("alice"));
    assert_true(auth_owner_valid("team_a-1"));
    assert_false(auth_owner_valid(""));
    assert_false(auth_owner_valid("a b"));
    assert_false(auth_owner_valid("a:b"));
    char long_name[70];
    memset(long_name, 'a', 65);
    long_name[65] = 0;
    assert_false(auth_owner_valid(long_name));
}

static void test_config_defaults_env_and_flags(void **s)
{
    (void)s;
    api_config c;
    char err[DT_ERR_LEN];
    config_defaults(&c);
    assert_int_equal(c.max_upload_bytes, 512LL << 20);
    assert_int_equal(c.max_json_bytes, 1 << 20);
    assert_int_equal(c.lease_seconds, 60);
    assert_int_equal(c.max_attempts, 3);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 8080);
    assert_int_equal(config_check(&c, err), 0);
    setenv("DELTATUNE_LEASE_SECONDS", "30", 1);
    setenv("DELTATUNE_LISTEN", "0.0.0.0:9000", 1);
    setenv("DELTATUNE_MAX_UPLOAD_BYTES", "2G", 1);
    assert_int_equal(config_from_env(&c, err), 0);
    assert_int_equal(c.lease_seconds, 30);
    assert_string_equal(c.listen_host, "0.0.0.0");
    assert_int_equal(c.listen_port, 9000);
    assert_int_equal(c.max_upload_bytes, 2LL << 30);
    setenv("DELTATUNE_LEASE_SECONDS", "1", 1);
    assert_int_equal(config_from_env(&c, err), DT_EINVAL);
    assert_non_null(strstr(err, "DELTATUNE_LEASE_SECONDS"));
    unsetenv("DELTATUNE_LEASE_SECONDS");
    unsetenv("DELTATUNE_LISTEN");
    unsetenv("DELTATUNE_MAX_UPLOAD_BYTES");

    char *argv[] = {"prog", "--lease-seconds", "45", "--redis-url=redis://h:1", "--other",
                    "--threads", NULL};
    int argc = 6, i = 1;
    assert_int_equal(config_flag(&c, argc, argv, &i, err), 1);
    assert_int_equal(i, 3);
    assert_int_equal(c.lease_seconds, 45);
    assert_int_equal(config_flag(&c, argc, argv, &i, err), 1);
    assert_int_equal(i, 4);
    assert_string_equal(c.redis_url, "redis://h:1");
    assert_int_equal(config_flag(&c, argc, argv, &i, err), 0);
    i = 5;
    assert_int_equal(config_flag(&c, argc, argv, &i, err), DT_EINVAL); /* missing value */
    char *bad[] = {"prog", "--listen", "nope", NULL};
    i = 1;
    assert_int_equal(config_flag(&c, 3, bad, &i, err), DT_EINVAL);
}

static void test_config_sizes_and_paths(void **s)
{
    (void)s;
    int64_t v;
    assert_int_equal(config_parse_bytes("123", &v), 0);
    assert_int_equal(v, 123);
    assert_int_equal(config_parse_bytes("64k", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(config_parse_bytes("1MiB", &v), 0);
    assert_int_equal(v, 1 << 20);
    assert_int_not_equal(config_parse_bytes("-1", &v), 0);
    assert_int_not_equal(config_parse_bytes("12x", &v), 0);
    assert_int_not_equal(config_parse_bytes("", &v), 0);
    assert_int_not_equal(config_parse_bytes("99999999999999999G", &v), 0);
    api_config c;
    char out[64];
    config_defaults(&c);
    strcpy(c.artifact_root, "/data");
    assert_int_equal(config_artifact_path(&c, "files/a", out, sizeof out), 0);
    assert_string_equal(out, "/data/files/a");
    assert_int_equal(config_artifact_path(&c, "/abs/m.gguf", out, sizeof out), 0);
    assert_string_equal(out, "/abs/m.gguf");
    assert_int_not_equal(config_artifact_path(&c, "files/a", out, 5), 0);
}

static void test_log_redacts_passwords(void **s)
{
    (void)s;
    char out[256];
    log_redact_url("postgresql://u:secret@h:5432/db", out, sizeof out);
    assert_string_equal(out, "postgresql://u:***@h:5432/db");
    log_redact_url("host=h password=secret dbname=x", out, sizeof out);
    assert_string_equal(out, "host=h password=*** dbname=x");
    log_redact_url("postgresql://u@h/db", out, sizeof out);
    assert_string_equal(out, "postgresql://u@h/db");
    assert_int_equal(log_level_parse("warn"), DT_LOG_WARN);
    assert_int_equal(log_level_parse("loud"), -1);
}

static void test_queue_urls_and_redis_down(void **s)
{
    (void)s;
    queue *q;
    char err[DT_ERR_LEN], id[64];
    assert_int_equal(queue_open(&q, "http://x", err), DT_EINVAL);
    assert_int_equal(queue_open(&q, "redis://h:99999", err), DT_EINVAL);
    assert_int_equal(queue_open(&q, "redis://h:1/x", err), DT_EINVAL);
    assert_int_equal(queue_open(&q, "unix:", err), DT_EINVAL);
    assert_int_equal(queue_open(&q, "unix:/tmp/r.sock", err), 0);
    queue_free(q);
    assert_int_equal(queue_open(&q, "redis://:pw@127.0.0.1:1/2", err), 0);
    /* nothing listens on port 1: every call fails cleanly, nothing crashes */
    assert_int_equal(queue_publish(q, "ftjob-1", err), DT_EIO);
    assert_int_equal(queue_ping(q, err), DT_EIO);
    int64_t depth;
    assert_int_equal(queue_depth(q, &depth, err), DT_EIO);
    time_t t0 = time(NULL);
    assert_int_equal(queue_wait(q, 1000, id, err), DT_EIO);
    assert_true(time(NULL) - t0 >= 1); /* it slept out the timeout */
    assert_int_equal(queue_generation(q), 0);
    queue_free(q);
    queue_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generated_key_has_format_and_matching_hash),
        cmocka_unit_test(test_malformed_keys_are_rejected),
        cmocka_unit_test(test_sha256_known_vectors),
        cmocka_unit_test(test_constant_time_equal),
        cmocka_unit_test(test_owner_names),
        cmocka_unit_test(test_config_defaults_env_and_flags),
        cmocka_unit_test(test_config_sizes_and_paths),
        cmocka_unit_test(test_log_redacts_passwords),
        cmocka_unit_test(test_queue_urls_and_redis_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
