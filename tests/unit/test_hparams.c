/* test_hparams.c: the hyperparameter limits are written once (base/
 * hparams.c) and every reader agrees with them: the served OpenAPI contract
 * (whose minimum/maximum the dashboard's form reads), the API's validation
 * and the engine's option check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "base/dt.h"
#include "base/hparams.h"
#include "gpu/train.h"

extern const char server_openapi_json[]; /* build/server/openapi_json.c */

static json_t *spec_hyperparameters(void)
{
    json_error_t je;
    json_t *doc = json_loads(server_openapi_json, 0, &je);
    assert_non_null(doc);
    json_t *props = json_object_get(
        json_object_get(json_object_get(json_object_get(doc, "components"), "schemas"),
                        "Hyperparameters"),
        "properties");
    assert_non_null(props);
    json_incref(props);
    json_decref(doc);
    return props;
}

static void test_openapi_bounds_equal_the_table(void **state)
{
    json_t *props = spec_hyperparameters();
    for (int i = 0; i < DT_HP_COUNT; i++) {
        const dt_hparam_limit *h = &dt_hparam_limits[i];
        assert_non_null(h->name);
        json_t *p = json_object_get(props, h->name);
        if (!p)
            fail_msg("%s: in base/hparams.c but not in api/openapi.yaml", h->name);
        if (h->kind == DT_HPK_STR)
            continue;
        json_t *num = json_array_get(json_object_get(p, "oneOf"), 0);
        if (!num)
            fail_msg("%s: the contract has no numeric schema", h->name);
        const char *type = json_string_value(json_object_get(num, "type"));
        assert_string_equal(type, h->kind == DT_HPK_INT ? "integer" : "number");
        json_t *mn = json_object_get(num, "minimum"), *mx = json_object_get(num, "maximum");
        if (!mn || !mx)
            fail_msg("%s: the contract lacks minimum or maximum", h->name);
        if (json_number_value(mn) != h->min || json_number_value(mx) != h->max)
            fail_msg("%s: contract [%g, %g], table [%g, %g]", h->name, json_number_value(mn),
                     json_number_value(mx), h->min, h->max);
        assert_int_equal(json_is_true(json_object_get(num, "exclusiveMinimum")),
                         h->min_exclusive);
    }
    json_decref(props);
}

static void test_every_contract_hyperparameter_is_in_the_table(void **state)
{
    json_t *props = spec_hyperparameters();
    const char *key;
    json_t *v;
    json_object_foreach(props, key, v) {
        if (!dt_hparam_find(key))
            fail_msg("%s: in api/openapi.yaml but not in base/hparams.c", key);
    }
    json_decref(props);
}

static void test_check_names_the_flag_and_the_range(void **state)
{
    char err[DT_ERR_LEN] = "";
    assert_int_equal(dt_hparam_check(DT_HP_RANK, 256, "--rank", err), DT_OK);
    assert_int_equal(dt_hparam_check(DT_HP_RANK, 257, "--rank", err), DT_EINVAL);
    assert_string_equal(err, "--rank must be an integer between 1 and 256, got 257");
    assert_int_equal(dt_hparam_check(DT_HP_LEARNING_RATE, 0, "--lr", err), DT_EINVAL);
    assert_non_null(strstr(err, "> 0"));
    assert_int_equal(dt_hparam_ok(DT_HP_SEQ_LEN, 8.5), 0);
    assert_int_equal(dt_hparam_ok(DT_HP_SEQ_LEN, 8), 1);
}

/* The engine's limits were wider (rank and batch up to 1024) than the
 * API's (256): one table now, and the engine refuses what the API would. */
static void test_engine_refuses_what_the_api_refuses(void **state)
{
    dt_train_opts o;
    dt_train_defaults(&o);
    o.model = "unused";
    o.data = "unused";
    o.out = "/nonexistent/unused";
    o.method = DT_LORA;
    o.rank = 300;
    char err[DT_ERR_LEN] = "";
    assert_int_equal(dt_train(&o, err), DT_EINVAL);
    assert_non_null(strstr(err, "--rank"));
    assert_non_null(strstr(err, "between 1 and 256"));
    o.rank = 8;
    o.batch = 300;
    assert_int_equal(dt_train(&o, err), DT_EINVAL);
    assert_non_null(strstr(err, "--batch-size"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openapi_bounds_equal_the_table),
        cmocka_unit_test(test_every_contract_hyperparameter_is_in_the_table),
        cmocka_unit_test(test_check_names_the_flag_and_the_range),
        cmocka_unit_test(test_engine_refuses_what_the_api_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
