/* test_api_http.c: route matching, Range/ETag/limit parsing and the ustar
 * header writer (checked against the format's rules and the checksum). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "server/httputil.h"
#include "server/route.h"

static void h(struct req *r) { (void)r; }

static const route table[] = {
    ROUTE("POST", "/v1/files", "files.create", h, R_UPLOAD),
    ROUTE("GET", "/v1/files", "files.list", h, 0),
    ROUTE("GET", "/v1/files/{id}", "files.get", h, 0),
    ROUTE("DELETE", "/v1/files/{id}", "files.delete", h, 0),
    ROUTE("GET", "/v1/files/{id}/content", "files.content", h, 0),
    ROUTE("POST", "/v1/fine_tuning/jobs/{id}/cancel", "jobs.cancel", h, R_JSON),
    ROUTE("GET", "/v1/models/{id}/files/{name}", "models.file", h, 0),
};
#define N (int)(sizeof table / sizeof table[0])

static void test_routes_match_with_params(void **s)
{
    (void)s;
    char p[ROUTE_MAXP][ROUTE_PARAM_LEN];
    assert_int_equal(route_find(table, N, "GET", "/v1/files", p), 1);
    assert_int_equal(route_find(table, N, "POST", "/v1/files", p), 0);
    assert_int_equal(route_find(table, N, "GET", "/v1/files/file-abc", p), 2);
    assert_string_equal(p[0], "file-abc");
    assert_int_equal(route_find(table, N, "DELETE", "/v1/files/file-abc", p), 3);
    assert_int_equal(route_find(table, N, "GET", "/v1/files/file-abc/content", p), 4);
    assert_int_equal(route_find(table, N, "POST", "/v1/fine_tuning/jobs/ftjob-1/cancel", p), 5);
    assert_string_equal(p[0], "ftjob-1");
    assert_int_equal(route_find(table, N, "GET",
                                "/v1/models/ft:base:alice::ftjob-1:ckpt-step-5/files/a.json", p),
                     6);
    assert_string_equal(p[0], "ft:base:alice::ftjob-1:ckpt-step-5");
    assert_string_equal(p[1], "a.json");
}

static void test_unknown_paths_and_methods(void **s)
{
    (void)s;
    char p[ROUTE_MAXP][ROUTE_PARAM_LEN];
    assert_int_equal(route_find(table, N, "GET", "/v1/files/", p), -1);     /* empty id */
    assert_int_equal(route_find(table, N, "GET", "/v1/files//content", p), -1);
    assert_int_equal(route_find(table, N, "GET", "/v1/filesx", p), -1);
    assert_int_equal(route_find(table, N, "GET", "/v1/files/a/b", p), -1);  /* '/' in id */
    assert_int_equal(route_find(table, N, "GET", "/v1/models/m/files/a/../b", p), -1);
    assert_int_equal(route_find(table, N, "GET", "", p), -1);
    assert_int_equal(route_find(table, N, "PUT", "/v1/files", p), -2);      /* 405 */
    assert_int_equal(route_find(table, N, "GET", "/v1/fine_tuning/jobs/x/cancel", p), -2);
    char longid[700];
    memset(longid, 'a', sizeof longid);
    memcpy(longid, "/v1/files/", 10);
    longid[sizeof longid - 1] = 0;
    assert_int_equal(route_find(table, N, "GET", longid, p), -1);
}

static void test_range_forms(void **s)
{
    (void)s;
    int64_t a, n;
    assert_int_equal(http_parse_range("bytes=0-9", 100, &a, &n), 0);
    assert_int_equal(a, 0);
    assert_int_equal(n, 10);
    assert_int_equal(http_parse_range("bytes=90-", 100, &a, &n), 0);
    assert_int_equal(a, 90);
    assert_int_equal(n, 10);
    assert_int_equal(http_parse_range("bytes=-5", 100, &a, &n), 0);
    assert_int_equal(a, 95);
    assert_int_equal(n, 5);
    assert_int_equal(http_parse_range("bytes=-500", 100, &a, &n), 0); /* clipped */
    assert_int_equal(a, 0);
    assert_int_equal(n, 100);
    assert_int_equal(http_parse_range("bytes=50-5000", 100, &a, &n), 0);
    assert_int_equal(n, 50);
    assert_int_equal(http_parse_range("bytes=99-99", 100, &a, &n), 0);
    assert_int_equal(n, 1);
}

static void test_range_errors_and_ignored_forms(void **s)
{
    (void)s;
    int64_t a, n;
    assert_int_equal(http_parse_range(NULL, 100, &a, &n), 1);
    assert_int_equal(http_parse_range("items=0-1", 100, &a, &n), 1);
    assert_int_equal(http_parse_range("bytes=0-1,5-6", 100, &a, &n), 1);
    assert_int_equal(http_parse_range("bytes=100-", 100, &a, &n), -1);
    assert_int_equal(http_parse_range("bytes=5-2", 100, &a, &n), 1); /* invalid: ignored */
    assert_int_equal(http_parse_range("bytes=-0", 100, &a, &n), -1);
    assert_int_equal(http_parse_range("bytes=x-1", 100, &a, &n), 1);
    assert_int_equal(http_parse_range("bytes=1", 100, &a, &n), 1);
    assert_int_equal(http_parse_range("bytes=1-2x", 100, &a, &n), 1);
    assert_int_equal(http_parse_range("bytes=-x", 100, &a, &n), 1);
    assert_int_equal(http_parse_range("bytes=0-1 junk", 100, &a, &n), 1);
    assert_int_equal(http_parse_range("bytes=0-99999999999999999999", 100, &a, &n), 0);
    assert_int_equal(n, 100);
    assert_int_equal(http_parse_range("bytes=0-", 0, &a, &n), -1);
    assert_int_equal(http_parse_range("bytes=99999999999999999999-", 100, &a, &n), -1);
}

static void test_etag_matching(void **s)
{
    (void)s;
    assert_true(http_etag_match("\"abc\"", "\"abc\""));
    assert_true(http_etag_match("W/\"abc\"", "\"abc\""));
    assert_true(http_etag_match("\"x\", \"abc\"", "\"abc\""));
    assert_true(http_etag_match("*", "\"abc\""));
    assert_false(http_etag_match("\"abd\"", "\"abc\""));
    assert_false(http_etag_match(NULL, "\"abc\""));
    assert_false(http_etag_match("", "\"abc\""));
}

static void test_limit_parsing(void **s)
{
    (void)s;
    int v;
    assert_int_equal(http_parse_limit(NULL, 20, 100, &v), 0);
    assert_int_equal(v, 20);
    assert_int_equal(http_parse_limit("100", 20, 100, &v), 0);
    assert_int_equal(v, 100);
    assert_int_equal(http_parse_limit("0", 20, 100, &v), -1);
    assert_int_equal(http_parse_limit("101", 20, 100, &v), -1);
    assert_int_equal(http_parse_limit("5x", 20, 100, &v), -1);
    assert_int_equal(http_parse_limit("", 20, 100, &v), -1);
    assert_int_equal(http_parse_limit("-1", 20, 100, &v), -1);
}

static unsigned checksum(const unsigned char *b)
{
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += (i >= 148 && i < 156) ? ' ' : b[i];
    return sum;
}

static void test_tar_header_fields_and_checksum(void **s)
{
    (void)s;
    unsigned char b[512];
    assert_int_equal(tar_header(b, "dir/model.safetensors", 1234, 1700000000, 0644), 0);
    assert_string_equal((char *)b, "dir/model.safetensors");
    assert_string_equal((char *)b + 100, "0000644");
    assert_string_equal((char *)b + 124, "00000002322"); /* 1234 octal */
    assert_int_equal(b[156], '0');
    assert_memory_equal(b + 257, "ustar\0" "00", 8);
    unsigned stored = (unsigned)strtoul((char *)b + 148, NULL, 8);
    assert_int_equal(stored, checksum(b));
    assert_int_equal(tar_entry_size(0), 512);
    assert_int_equal(tar_entry_size(1), 1024);
    assert_int_equal(tar_entry_size(512), 1024);
    assert_int_equal(tar_entry_size(513), 1536);
}

static void test_tar_long_names_split_or_fail(void **s)
{
    (void)s;
    unsigned char b[512];
    char name[300];
    memset(name, 'p', 120);
    name[120] = '/';
    memset(name + 121, 'n', 50);
    name[171] = 0;
    assert_int_equal(tar_header(b, name, 1, 0, 0644), 0);
    assert_int_equal(strnlen((char *)b, 100), 50);
    assert_int_equal(strnlen((char *)b + 345, 155), 120);
    memset(name, 'x', 200);
    name[200] = 0;
    assert_int_equal(tar_header(b, name, 1, 0, 0644), -1); /* no '/' to split at */
    assert_int_equal(tar_header(b, "a", 1LL << 34, 0, 0644), -1); /* over 8 GiB */
    assert_int_equal(tar_header(b, "", 1, 0, 0644), -1);
}

/* tar_head: one ustar block when it fits; otherwise a pax 'x' member whose
 * records carry the whole path and the size, then the ustar header. */
static void test_tar_head_pax(void **s)
{
    (void)s;
    unsigned char b[TAR_HEAD_MAX];
    assert_int_equal(tar_head(b, "dir/config.json", 10, 0, 0644), TAR_BLOCK);
    assert_string_equal((char *)b, "dir/config.json");

    char name[700];
    memset(name, 'd', 300); /* a directory beyond the 155-byte prefix */
    snprintf(name + 300, sizeof name - 300, "/model.safetensors");
    int n = tar_head(b, name, 5, 0, 0644);
    assert_int_equal(n, 3 * TAR_BLOCK); /* x header, one block of records, ustar */
    assert_int_equal(b[156], 'x');
    assert_int_equal((unsigned)strtoul((char *)b + 148, NULL, 8), checksum(b));
    assert_int_equal(strtoll((char *)b + 124, NULL, 8), 328); /* "328 path=<318 bytes>\n" */
    assert_memory_equal(b + TAR_BLOCK, "328 path=", 9);
    assert_memory_equal(b + TAR_BLOCK + 9, name, strlen(name));
    assert_int_equal(b[TAR_BLOCK + 327], '\n');
    unsigned char *h = b + 2 * TAR_BLOCK;
    assert_int_equal(h[156], '0');
    assert_string_equal((char *)h, "model.safetensors");
    assert_string_equal((char *)h + 124, "00000000005");
    assert_int_equal((unsigned)strtoul((char *)h + 148, NULL, 8), checksum(h));

    int64_t big = (8LL << 30) + 1; /* over the 11 octal digits */
    n = tar_head(b, "d/big.bin", big, 0, 0644);
    assert_int_equal(n, 3 * TAR_BLOCK);
    assert_memory_equal(b + TAR_BLOCK, "19 size=8589934593\n", 19);
    h = b + 2 * TAR_BLOCK;
    assert_string_equal((char *)h, "d/big.bin");
    assert_int_equal(h[124], 0x80); /* base-256 size too */
    int64_t v = 0;
    for (int i = 125; i < 136; i++) v = v << 8 | h[i];
    assert_int_equal(v, big);
    assert_int_equal((unsigned)strtoul((char *)h + 148, NULL, 8), checksum(h));

    assert_int_equal(tar_head(b, "", 1, 0, 0644), -1);
    assert_int_equal(tar_head(b, "a", -1, 0, 0644), -1);
    char huge[4000];
    memset(huge, 'h', sizeof huge - 1);
    huge[sizeof huge - 1] = 0;
    assert_int_equal(tar_head(b, huge, 1, 0, 0644), -1); /* beyond TAR_HEAD_MAX */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_match_with_params),
        cmocka_unit_test(test_unknown_paths_and_methods),
        cmocka_unit_test(test_range_forms),
        cmocka_unit_test(test_range_errors_and_ignored_forms),
        cmocka_unit_test(test_etag_matching),
        cmocka_unit_test(test_limit_parsing),
        cmocka_unit_test(test_tar_header_fields_and_checksum),
        cmocka_unit_test(test_tar_long_names_split_or_fail),
        cmocka_unit_test(test_tar_head_pax),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
