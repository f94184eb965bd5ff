/* test_jsonw.c: the server's JSON writer (server/jsonw.c) writes what
 * jansson's json_dumps(JSON_COMPACT) writes, byte for byte, for everything
 * but reals; reals are the shortest text that reads back to the same double;
 * random documents survive a round trip through jansson's parser. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "server/jsonw.h"

static void assert_same_as_jansson(json_t *v)
{
    size_t n = 0;
    char *ours = jsonw_dump(v, &n);
    char *theirs = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    assert_non_null(ours);
    assert_non_null(theirs);
    assert_string_equal(ours, theirs);
    assert_int_equal(n, strlen(theirs));
    free(ours);
    free(theirs);
}

static void test_matches_jansson_without_reals(void **s)
{
    (void)s;
    json_t *v = json_pack("{s:s, s:I, s:I, s:b, s:b, s:n, s:[i, s, {}, []], s:{s:{s:s}}}",
                          "plain", "hello", "min", (json_int_t)INT64_MIN, "max",
                          (json_int_t)INT64_MAX, "t", 1, "f", 0, "nothing", "list", -7,
                          "x", "deep", "a", "b", "c");
    json_object_set_new(v, "escapes", json_string("q\" b\\ / \b\f\n\r\t \x01\x1f \x7f"));
    json_object_set_new(v, "utf8", json_string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
    json_object_set_new(v, "nul", json_stringn("a\0b", 3));
    json_object_set_new(v, "k\"ey\n", json_integer(0));
    json_object_set_new(v, "", json_string(""));
    assert_same_as_jansson(v);
    json_decref(v);
    json_t *e = json_array();
    assert_same_as_jansson(e);
    json_decref(e);
    json_t *o = json_object();
    assert_same_as_jansson(o);
    json_decref(o);
}

static void test_key_order_is_insertion_order(void **s)
{
    (void)s;
    json_t *v = json_object();
    const char *keys[] = {"zeta", "alpha", "mid", "beta", "id", "object"};
    for (int i = 0; i < 6; i++) json_object_set_new(v, keys[i], json_integer(i));
    char *t = jsonw_dump(v, NULL);
    assert_string_equal(t, "{\"zeta\":0,\"alpha\":1,\"mid\":2,\"beta\":3,\"id\":4,\"object\":5}");
    free(t);
    json_decref(v);
}

static void expect_real(double x, const char *text)
{
    char b[32];
    int n = jsonw_real(x, b);
    assert_string_equal(b, text);
    assert_int_equal(n, (int)strlen(text));
}

static void test_reals_are_shortest_and_stay_reals(void **s)
{
    (void)s;
    expect_real(2e-4, "0.0002");
    expect_real(16, "16.0");
    expect_real(-3, "-3.0");
    expect_real(0, "0.0");
    expect_real(-0.0, "-0.0");
    expect_real(0.1 + 0.2, "0.30000000000000004");
    expect_real(3.14159, "3.14159");
    expect_real(1e22, "1e22");
    expect_real(1e-7, "1e-7");
    expect_real(-1.5e300, "-1.5e300");
    expect_real(123456789012345.0, "123456789012345.0");
    expect_real(0.0001, "0.0001");
    expect_real(0.00012345, "0.00012345");
    expect_real(-2.5, "-2.5");
    expect_real(99999.99999, "99999.99999");
    expect_real(1234.5, "1234.5");
    expect_real(0.1, "0.1");
    expect_real(1e15, "1e15");
    expect_real(1.0 / 0.0, "null");
    /* a document with reals reads back to the same values */
    json_t *v = json_pack("{s:f, s:f, s:[f, f]}", "lr", 2e-4, "loss", 2.718281828459045,
                          "x", 1e-300, 65536.0);
    char *t = jsonw_dump(v, NULL);
    assert_string_equal(t, "{\"lr\":0.0002,\"loss\":2.718281828459045,\"x\":[1e-300,65536.0]}");
    json_t *back = json_loads(t, 0, NULL);
    assert_true(json_equal(v, back));
    json_decref(back);
    free(t);
    json_decref(v);
}

static void test_random_reals_round_trip(void **s)
{
    (void)s;
    uint64_t r = 0x9E3779B97F4A7C15ull;
    char b[32];
    for (int i = 0; i < 200000; i++) {
        r ^= r << 13; r ^= r >> 7; r ^= r << 17;
        double x;
        memcpy(&x, &r, sizeof x);
        if (i % 3 == 1) x = (double)(r >> 11) / (double)(1ull << 40); /* ordinary magnitudes */
        if (i % 3 == 2) { /* short decimals: 0.0002, 1234.5, 0.003 (the printf-free path) */
            static const double p10[] = {1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};
            x = (double)(r % 100000000) / p10[(r >> 40) % 10];
        }
        int n = jsonw_real(x, b);
        if (x != x || x - x != 0) { assert_string_equal(b, "null"); continue; }
        assert_true(n > 0 && n < 32);
        assert_true(strtod(b, NULL) == x);
        assert_true(strchr(b, '.') || strchr(b, 'e'));
        /* the same text as the printf path: shortest of %.15g, %.16g, %.17g */
        char ref[40];
        for (int p = 15; p <= 17; p++) {
            snprintf(ref, sizeof ref, "%.*g", p, x);
            if (p == 17 || strtod(ref, NULL) == x) break;
        }
        if (!strchr(ref, 'e')) {
            if (!strchr(ref, '.')) strcat(ref, ".0");
            assert_string_equal(b, ref);
        }
    }
}

/* Random documents: ours parses back (with jansson) equal to the original. */
static json_t *random_value(uint64_t *r, int depth)
{
    *r ^= *r << 13; *r ^= *r >> 7; *r ^= *r << 17;
    int kind = (int)(*r % (depth > 3 ? 5 : 7));
    switch (kind) {
    case 0: return json_integer((json_int_t)(*r >> 3) - (json_int_t)(1ll << 59));
    case 1: { double d; uint64_t u = *r >> 2; memcpy(&d, &u, 8);
              return json_real(d == d && d - d == 0 ? d : 0.5); }
    case 2: {
        char str[16];
        for (int i = 0; i < 15; i++) str[i] = (char)(1 + (*r >> (i * 4)) % 127);
        str[15] = 0;
        return json_string(str);
    }
    case 3: return json_boolean(*r & 8);
    case 4: return json_null();
    case 5: {
        json_t *a = json_array();
        for (int i = 0; i < (int)(*r % 5); i++) json_array_append_new(a, random_value(r, depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (int i = 0; i < (int)(*r % 5); i++) {
            char k[8];
            snprintf(k, sizeof k, "k%d", (int)(*r % 100));
            json_object_set_new(o, k, random_value(r, depth + 1));
        }
        return o;
    }
    }
}

static void test_random_documents_round_trip(void **s)
{
    (void)s;
    uint64_t r = 12345;
    for (int i = 0; i < 3000; i++) {
        json_t *v = random_value(&r, 0);
        char *t = jsonw_dump(v, NULL);
        assert_non_null(t);
        json_error_t je;
        json_t *back = json_loads(t, JSON_DECODE_ANY, &je);
        if (!back) fail_msg("unparsable: %s: %s", je.text, t);
        assert_true(json_equal(v, back));
        json_decref(back);
        free(t);
        json_decref(v);
    }
    assert_null(jsonw_dump(NULL, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_jansson_without_reals),
        cmocka_unit_test(test_key_order_is_insertion_order),
        cmocka_unit_test(test_reals_are_shortest_and_stay_reals),
        cmocka_unit_test(test_random_reals_round_trip),
        cmocka_unit_test(test_random_documents_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
