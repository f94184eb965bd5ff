/* test_ratelimit.c: the per-key token buckets of server/ratelimit.c: burst,
 * refill, independence of keys, the 429 hints (remaining, reset, retry
 * after), bounded memory, OpenAI's duration text, and exact accounting
 * under concurrent use from several threads. Time is passed in, so nothing
 * here depends on the clock. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "server/ratelimit.h"

static void test_rate_zero_means_no_limiter(void **s)
{
    (void)s;
    assert_null(ratelimit_new(0, 10));
    assert_null(ratelimit_new(-1, 10));
    ratelimit_info in;
    for (int i = 0; i < 1000; i++) assert_int_equal(ratelimit_take(NULL, "k", 0, &in), 1);
    assert_int_equal(in.limit, 0);
    ratelimit_free(NULL);
}

static void test_burst_then_429_with_retry_after(void **s)
{
    (void)s;
    ratelimit *rl = ratelimit_new(2, 5); /* 2/s, bucket of 5 */
    assert_non_null(rl);
    ratelimit_info in;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ratelimit_take(rl, "key-a", 100.0, &in), 1);
        assert_int_equal(in.limit, 5);
        assert_int_equal(in.remaining, 4 - i);
        assert_true(in.retry_after_s == 0);
    }
    assert_int_equal(ratelimit_take(rl, "key-a", 100.0, &in), 0);
    assert_int_equal(in.remaining, 0);
    assert_true(in.retry_after_s > 0.49 && in.retry_after_s < 0.51); /* 1 token at 2/s */
    assert_true(in.reset_s > 2.49 && in.reset_s < 2.51);             /* 5 tokens */
    ratelimit_free(rl);
}

static void test_bucket_refills_at_rate_and_caps_at_burst(void **s)
{
    (void)s;
    ratelimit *rl = ratelimit_new(10, 3);
    ratelimit_info in;
    for (int i = 0; i < 3; i++) assert_int_equal(ratelimit_take(rl, "k", 0.0, &in), 1);
    assert_int_equal(ratelimit_take(rl, "k", 0.0, &in), 0);
    assert_int_equal(ratelimit_take(rl, "k", 0.05, &in), 0);  /* half a token */
    assert_int_equal(ratelimit_take(rl, "k", 0.101, &in), 1); /* one token back */
    assert_int_equal(ratelimit_take(rl, "k", 0.101, &in), 0);
    /* a long pause refills to the burst, not beyond */
    assert_int_equal(ratelimit_take(rl, "k", 1000.0, &in), 1);
    assert_int_equal(in.remaining, 2);
    assert_int_equal(ratelimit_take(rl, "k", 1000.0, &in), 1);
    assert_int_equal(ratelimit_take(rl, "k", 1000.0, &in), 1);
    assert_int_equal(ratelimit_take(rl, "k", 1000.0, &in), 0);
    /* time going backwards (two threads' clocks read out of order) adds nothing */
    assert_int_equal(ratelimit_take(rl, "k", 999.0, &in), 0);
    ratelimit_free(rl);
}

static void test_keys_have_separate_buckets(void **s)
{
    (void)s;
    ratelimit *rl = ratelimit_new(1, 2);
    assert_int_equal(ratelimit_take(rl, "alice001", 5, NULL), 1);
    assert_int_equal(ratelimit_take(rl, "alice001", 5, NULL), 1);
    assert_int_equal(ratelimit_take(rl, "alice001", 5, NULL), 0);
    assert_int_equal(ratelimit_take(rl, "bob00002", 5, NULL), 1);
    assert_int_equal(ratelimit_take(rl, "bob00002", 5, NULL), 1);
    assert_int_equal(ratelimit_take(rl, "bob00002", 5, NULL), 0);
    assert_int_equal(ratelimit_size(rl), 2);
    ratelimit_free(rl);
}

static void test_idle_buckets_are_dropped(void **s)
{
    (void)s;
    ratelimit *rl = ratelimit_new(100, 10);
    char k[32];
    for (int i = 0; i < 40000; i++) {
        snprintf(k, sizeof k, "key%05d", i);
        /* each key used once, 1 s apart: every older bucket is full again */
        assert_int_equal(ratelimit_take(rl, k, (double)i, NULL), 1);
    }
    assert_true(ratelimit_size(rl) < 40000 / 4);
    /* busy buckets are never dropped: all 20000 keys stay limited */
    ratelimit *busy = ratelimit_new(0.001, 1);
    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof k, "busy%05d", i);
        assert_int_equal(ratelimit_take(busy, k, 1.0, NULL), 1);
    }
    assert_int_equal(ratelimit_size(busy), 20000);
    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof k, "busy%05d", i);
        assert_int_equal(ratelimit_take(busy, k, 2.0, NULL), 0);
    }
    ratelimit_free(busy);
    ratelimit_free(rl);
}

static void test_duration_text_like_openai(void **s)
{
    (void)s;
    char b[32];
    ratelimit_duration(0.25, b, sizeof b);
    assert_string_equal(b, "250ms");
    ratelimit_duration(0, b, sizeof b);
    assert_string_equal(b, "0ms");
    ratelimit_duration(1, b, sizeof b);
    assert_string_equal(b, "1s");
    ratelimit_duration(59.2, b, sizeof b);
    assert_string_equal(b, "1m0s");
    ratelimit_duration(360, b, sizeof b);
    assert_string_equal(b, "6m0s");
    ratelimit_duration(3723, b, sizeof b);
    assert_string_equal(b, "1h2m3s");
}

/* Threads take tokens at one fixed time: exactly burst of them succeed. */
typedef struct hammer {
    ratelimit *rl;
    int ok;
} hammer;

static void *hammer_main(void *arg)
{
    hammer *h = arg;
    char k[16];
    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof k, "key%d", i % 4);
        h->ok += ratelimit_take(h->rl, k, 50.0, NULL);
    }
    return NULL;
}

static void test_concurrent_takes_are_counted_exactly(void **s)
{
    (void)s;
    ratelimit *rl = ratelimit_new(1, 1000); /* no refill at a fixed time */
    enum { NT = 8 };
    hammer h[NT];
    pthread_t th[NT];
    for (int i = 0; i < NT; i++) {
        h[i].rl = rl;
        h[i].ok = 0;
        assert_int_equal(pthread_create(&th[i], NULL, hammer_main, &h[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        ok += h[i].ok;
    }
    assert_int_equal(ok, 4 * 1000); /* 4 keys, 1000 tokens each */
    ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_zero_means_no_limiter),
        cmocka_unit_test(test_burst_then_429_with_retry_after),
        cmocka_unit_test(test_bucket_refills_at_rate_and_caps_at_burst),
        cmocka_unit_test(test_keys_have_separate_buckets),
        cmocka_unit_test(test_idle_buckets_are_dropped),
        cmocka_unit_test(test_duration_text_like_openai),
        cmocka_unit_test(test_concurrent_takes_are_counted_exactly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
