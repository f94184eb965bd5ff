/* test_dt.c: error helpers, atomic writes and half-precision conversion. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "base/dt.h"
#include "base/file.h"
#include "gpu/half.h"

static void test_errf_formats_and_returns_code(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    assert_int_equal(dt_errf(err, DT_EFORMAT, "%s: bad %d", "f.bin", 3), DT_EFORMAT);
    assert_string_equal(err, "f.bin: bad 3");
    assert_int_equal(dt_errf(NULL, DT_EIO, "x"), DT_EIO);
    assert_string_equal(dt_strerror(DT_ENOMEM), "out of memory");
}

static void test_atomic_write_replaces_file_and_leaves_no_temp(void **s)
{
    (void)s;
    char dir[] = "/tmp/dt_test_XXXXXX", path[256], tmp[300], err[DT_ERR_LEN];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/a/b/file.txt", dir);
    snprintf(tmp, sizeof tmp, "%s/a/b", dir);
    assert_int_equal(dt_mkdirs(tmp, err), 0);
    assert_int_equal(dt_write_file_atomic(path, "one", 3, err), 0);
    assert_int_equal(dt_write_file_atomic(path, "two!", 4, err), 0);
    char *buf;
    size_t len;
    assert_int_equal(dt_read_file(path, &buf, &len, err), 0);
    assert_int_equal(len, 4);
    assert_string_equal(buf, "two!");
    free(buf);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_not_equal(access(tmp, F_OK), 0);
    unlink(path);
}

static void test_read_missing_file_names_it(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    char *buf;
    assert_int_equal(dt_read_file("/nonexistent/x.json", &buf, NULL, err), DT_EIO);
    assert_non_null(strstr(err, "/nonexistent/x.json"));
}

static void test_f16_round_trip_and_rounding(void **s)
{
    (void)s;
    const float vals[] = {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
        assert_float_equal(dt_f16_to_f32(dt_f32_to_f16(vals[i])), vals[i], 0);
    assert_true(isinf(dt_f16_to_f32(dt_f32_to_f16(1e6f))));
    assert_true(isnan(dt_f16_to_f32(dt_f32_to_f16(NAN))));
    /* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even -> 1 */
    assert_float_equal(dt_f16_to_f32(dt_f32_to_f16(1.0f + 1.0f / 2048)), 1.0f, 0);
    /* every f16 bit pattern survives f16 -> f32 -> f16 (NaNs stay NaN) */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dt_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        assert_int_equal(dt_f32_to_f16(f), h);
    }
}

static void test_bf16_round_to_nearest_even(void **s)
{
    (void)s;
    assert_float_equal(dt_bf16_to_f32(dt_f32_to_bf16(1.0f)), 1.0f, 0);
    assert_float_equal(dt_bf16_to_f32(dt_f32_to_bf16(1.00390625f)), 1.0f, 0); /* tie -> even */
    assert_float_equal(dt_bf16_to_f32(dt_f32_to_bf16(1.01171875f)), 1.015625f, 0); /* tie -> even up */
    assert_true(isnan(dt_bf16_to_f32(dt_f32_to_bf16(NAN))));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errf_formats_and_returns_code),
        cmocka_unit_test(test_atomic_write_replaces_file_and_leaves_no_temp),
        cmocka_unit_test(test_read_missing_file_names_it),
        cmocka_unit_test(test_f16_round_trip_and_rounding),
        cmocka_unit_test(test_bf16_round_to_nearest_even),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
