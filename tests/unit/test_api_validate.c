/* test_api_validate.c: the job create body: defaults, every
 * hyperparameter's bounds (a 400 naming the exact field path), unknown
 * fields, method types, legacy hyperparameters, suffix, seed, metadata. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "api/validate.h"

/* Validates a JSON text; returns the HTTP status (0 = valid). */
static int run(const char *text, db_job *j, api_error *e)
{
    json_error_t je;
    json_t *body = json_loads(text, 0, &je);
    assert_non_null(body);
    memset(e, 0, sizeof *e);
    int rc = validate_job_create(body, j, e);
    json_decref(body);
    return rc;
}

static void expect_400(const char *text, const char *param)
{
    db_job j;
    api_error e;
    int rc = run(text, &j, &e);
    db_job_clear(&j);
    if (rc != 400 || strcmp(e.param, param))
        fail_msg("%s\n  -> status %d param \"%s\" (%s), expected 400 %s", text, rc, e.param,
                 e.message, param);
}

static void test_minimal_body_gets_documented_defaults(void **s)
{
    (void)s;
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"file-1\"}", &j, &e), 0);
    assert_string_equal(j.method, "delta_lora");
    assert_string_equal(j.method_input, "delta_lora");
    assert_int_equal(j.n_epochs, 3);
    assert_int_equal(j.batch_size, 4);
    assert_true(fabs(j.learning_rate - 2e-4) < 1e-12);
    assert_int_equal(j.rank, 8);
    assert_true(j.alpha == 16);
    assert_true(j.lambda == 0.5);
    assert_int_equal(j.start_step, -1);
    assert_string_equal(j.target_modules, "q,v");
    assert_int_equal(j.seq_len, 256);
    assert_string_equal(j.lr_scheduler, "linear");
    assert_int_equal(j.grad_accum, 1);
    assert_int_equal(j.seed, 42);
    assert_null(j.metadata);
    db_job_clear(&j);
}

static void test_auto_values_resolve_to_defaults(void **s)
{
    (void)s;
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":"
                         "\"delta_lora\",\"delta_lora\":{\"hyperparameters\":{\"n_epochs\":"
                         "\"auto\",\"rank\":\"auto\",\"start_step\":\"auto\"}}}}", &j, &e), 0);
    assert_int_equal(j.n_epochs, 3);
    assert_int_equal(j.rank, 8);
    assert_int_equal(j.start_step, -1);
    db_job_clear(&j);
}

static void test_every_hyperparameter_out_of_range_names_its_path(void **s)
{
    (void)s;
    static const struct { const char *name, *bad; } cases[] = {
        {"n_epochs", "0"}, {"n_epochs", "101"}, {"n_epochs", "1.5"}, {"n_epochs", "\"x\""},
        {"batch_size", "0"}, {"batch_size", "257"},
        {"learning_rate", "0"}, {"learning_rate", "-1e-4"}, {"learning_rate", "1.5"},
        {"learning_rate_multiplier", "0"}, {"learning_rate_multiplier", "101"},
        {"rank", "0"}, {"rank", "257"}, {"rank", "true"},
        {"alpha", "0"}, {"alpha", "5000"},
        {"lambda", "-0.1"}, {"lambda", "101"},
        {"start_step", "-2"}, {"start_step", "10000001"},
        {"target_modules", "[]"}, {"target_modules", "\"q,q\""}, {"target_modules", "5"},
        {"target_modules", "\"zz\""},
        {"seq_len", "7"}, {"seq_len", "8193"},
        {"warmup_steps", "-1"}, {"weight_decay", "1.5"}, {"max_grad_norm", "-1"},
        {"lr_scheduler", "\"step\""}, {"gradient_accumulation_steps", "0"},
        {"max_steps", "-1"}, {"checkpoint_interval", "-1"}, {"eval_interval", "-1"},
        {"seed", "-1"}, {"no_such_knob", "1"},
        {"export_dtype", "\"float64\""}, {"export_dtype", "16"},
        {"precision", "\"fp16\""}, {"precision", "\"BF16\""}, {"precision", "32"},
        {"packing", "1"}, {"packing", "\"yes\""}, {"packing", "\"true\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[512], param[128];
        snprintf(body, sizeof body, "{\"model\":\"m\",\"training_file\":\"f\",\"method\":{"
                 "\"type\":\"delta_lora\",\"delta_lora\":{\"hyperparameters\":{\"%s\":%s}}}}",
                 cases[i].name, cases[i].bad);
        snprintf(param, sizeof param, "method.delta_lora.hyperparameters.%s", cases[i].name);
        expect_400(body, param);
        snprintf(body, sizeof body, "{\"model\":\"m\",\"training_file\":\"f\","
                 "\"hyperparameters\":{\"%s\":%s}}", cases[i].name, cases[i].bad);
        snprintf(param, sizeof param, "hyperparameters.%s", cases[i].name);
        expect_400(body, param);
    }
}

/* hyperparameters.export_dtype: float32 | bfloat16 | float16 stored as
 * given, "auto" (and absent) as "" (the base's dtype). Instant. */
static void test_export_dtype_is_accepted(void **s)
{
    (void)s;
    static const char *const ok[] = {"float32", "bfloat16", "float16"};
    for (int i = 0; i < 3; i++) {
        db_job j;
        api_error e;
        char body[256];
        snprintf(body, sizeof body, "{\"model\":\"m\",\"training_file\":\"f\","
                 "\"hyperparameters\":{\"export_dtype\":\"%s\"}}", ok[i]);
        assert_int_equal(run(body, &j, &e), 0);
        assert_string_equal(j.export_dtype, ok[i]);
        db_job_clear(&j);
    }
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":"
                         "{\"export_dtype\":\"auto\"}}", &j, &e), 0);
    assert_string_equal(j.export_dtype, "");
    db_job_clear(&j);
}

/* hyperparameters.precision: fp32 | tf32 | bf16 stored as given, "auto"
 * (and absent) as "" (the worker's device decides). Instant. */
static void test_precision_is_accepted(void **s)
{
    (void)s;
    static const char *const ok[] = {"fp32", "tf32", "bf16"};
    for (int i = 0; i < 3; i++) {
        db_job j;
        api_error e;
        char body[256];
        snprintf(body, sizeof body, "{\"model\":\"m\",\"training_file\":\"f\","
                 "\"hyperparameters\":{\"precision\":\"%s\"}}", ok[i]);
        assert_int_equal(run(body, &j, &e), 0);
        assert_string_equal(j.precision, ok[i]);
        db_job_clear(&j);
    }
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":"
                         "{\"precision\":\"auto\"}}", &j, &e), 0);
    assert_string_equal(j.precision, "");
    db_job_clear(&j);
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\"}", &j, &e), 0);
    assert_string_equal(j.precision, "");
    db_job_clear(&j);
}

/* hyperparameters.packing: true or false; "auto" (and absent) is false.
 * Instant. */
static void test_packing_is_accepted(void **s)
{
    (void)s;
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":"
                         "\"lora\",\"lora\":{\"hyperparameters\":{\"packing\":true}}}}", &j, &e),
                     0);
    assert_true(j.packing);
    db_job_clear(&j);
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":"
                         "{\"packing\":false}}", &j, &e), 0);
    assert_false(j.packing);
    db_job_clear(&j);
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":"
                         "{\"packing\":\"auto\"}}", &j, &e), 0);
    assert_false(j.packing);
    db_job_clear(&j);
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\"}", &j, &e), 0);
    assert_false(j.packing);
    db_job_clear(&j);
}

static void test_bounds_are_inclusive(void **s)
{
    (void)s;
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":{"
                         "\"n_epochs\":100,\"batch_size\":1,\"learning_rate\":1,\"rank\":256,"
                         "\"lambda\":0,\"start_step\":0,\"seq_len\":8192,\"weight_decay\":1,"
                         "\"max_grad_norm\":0}}", &j, &e), 0);
    assert_int_equal(j.rank, 256);
    assert_int_equal(j.start_step, 0);
    db_job_clear(&j);
}

static void test_method_specific_parameters_are_rejected_elsewhere(void **s)
{
    (void)s;
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":\"lora\","
               "\"lora\":{\"hyperparameters\":{\"lambda\":0.5}}}}",
               "method.lora.hyperparameters.lambda");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":\"full\","
               "\"full\":{\"hyperparameters\":{\"rank\":4}}}}", "method.full.hyperparameters.rank");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":\"lora\","
               "\"delta_lora\":{}}}", "method.delta_lora");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":\"dpo\"}}",
               "method.type");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{}}", "method.type");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":\"lora\","
               "\"lora\":{\"hyperparameters\":{},\"x\":1}}}", "method.lora.x");
}

static void test_supervised_maps_to_delta_lora_and_multiplier_scales_lr(void **s)
{
    (void)s;
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":"
                         "\"supervised\",\"supervised\":{\"hyperparameters\":{"
                         "\"learning_rate_multiplier\":2.5,\"n_epochs\":2}}}}", &j, &e), 0);
    assert_string_equal(j.method, "delta_lora");
    assert_string_equal(j.method_input, "supervised");
    assert_true(fabs(j.learning_rate - 5e-4) < 1e-12);
    assert_int_equal(j.n_epochs, 2);
    db_job_clear(&j);
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":{"
               "\"learning_rate\":1e-4,\"learning_rate_multiplier\":2}}",
               "hyperparameters.learning_rate_multiplier");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":{},"
               "\"method\":{\"type\":\"lora\"}}", "hyperparameters");
}

static void test_target_modules_are_normalized(void **s)
{
    (void)s;
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":"
                         "\"lora\",\"lora\":{\"hyperparameters\":{\"target_modules\":"
                         "[\"q_proj\",\"v_proj\",\"down\"]}}}}", &j, &e), 0);
    assert_string_equal(j.target_modules, "q,v,down");
    db_job_clear(&j);
}

static void test_top_level_fields(void **s)
{
    (void)s;
    expect_400("{\"training_file\":\"f\"}", "model");
    expect_400("{\"model\":\"m\"}", "training_file");
    expect_400("{\"model\":5,\"training_file\":\"f\"}", "model");
    expect_400("{\"model\":\"\",\"training_file\":\"f\"}", "model");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"validation_file\":3}",
               "validation_file");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"bogus\":1}", "bogus");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"suffix\":\"has space\"}", "suffix");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"suffix\":\"aaaaaaaaaaaaaaaaaaaaaaaaa"
               "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", "suffix");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"seed\":-3}", "seed");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"seed\":\"x\"}", "seed");
    /* 2^53 + 1 is exact in JSON but not as a double: refused, not rounded. */
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"seed\":9007199254740993}", "seed");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"integrations\":{}}", "integrations");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"metadata\":[]}", "metadata");
    expect_400("{\"model\":\"m\",\"training_file\":\"f\",\"metadata\":{\"k\":1}}", "metadata.k");
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\",\"seed\":7,\"suffix\":"
                         "\"my-run_1\",\"integrations\":[],\"validation_file\":null,"
                         "\"metadata\":{\"b\":\"2\",\"a\":\"1\"}}", &j, &e), 0);
    assert_int_equal(j.seed, 7);
    assert_string_equal(j.suffix, "my-run_1");
    assert_string_equal(j.metadata, "{\"a\":\"1\",\"b\":\"2\"}");
    db_job_clear(&j);
    json_t *arr = json_array();
    assert_int_equal(validate_job_create(arr, &j, &e), 400);
    json_decref(arr);
}

static void test_max_runtime_seconds(void **s)
{
    (void)s;
    db_job j;
    api_error e;
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\"}", &j, &e), 0);
    assert_int_equal(j.max_runtime_seconds, 0); /* the server fills in its default */
    db_job_clear(&j);
    assert_int_equal(run("{\"model\":\"m\",\"training_file\":\"f\","
                         "\"max_runtime_seconds\":60}", &j, &e), 0);
    assert_int_equal(j.max_runtime_seconds, 60);
    db_job_clear(&j);
    const char *bad[] = {"0", "-1", "1.5", "\"60\"", "2147483648", "true"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[160];
        snprintf(text, sizeof text, "{\"model\":\"m\",\"training_file\":\"f\","
                 "\"max_runtime_seconds\":%s}", bad[i]);
        expect_400(text, "max_runtime_seconds");
    }
}

static void test_metadata_limits(void **s)
{
    (void)s;
    api_error e;
    json_t *md = json_object();
    char k[80], v[600];
    for (int i = 0; i < 16; i++) {
        snprintf(k, sizeof k, "k%d", i);
        json_object_set_new(md, k, json_string("v"));
    }
    assert_int_equal(validate_metadata(md, "metadata", &e), 0);
    json_object_set_new(md, "k16", json_string("v"));
    assert_int_equal(validate_metadata(md, "metadata", &e), 400);
    json_decref(md);
    md = json_object();
    memset(k, 'a', 65);
    k[65] = 0;
    json_object_set_new(md, k, json_string("v"));
    assert_int_equal(validate_metadata(md, "metadata", &e), 400);
    json_decref(md);
    md = json_object();
    memset(v, 'x', 513);
    v[513] = 0;
    json_object_set_new(md, "k", json_string(v));
    assert_int_equal(validate_metadata(md, "metadata", &e), 400);
    assert_string_equal(e.param, "metadata.k");
    v[512] = 0;
    json_object_set_new(md, "k", json_string(v));
    assert_int_equal(validate_metadata(md, "metadata", &e), 0);
    json_decref(md);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_body_gets_documented_defaults),
        cmocka_unit_test(test_auto_values_resolve_to_defaults),
        cmocka_unit_test(test_every_hyperparameter_out_of_range_names_its_path),
        cmocka_unit_test(test_bounds_are_inclusive),
        cmocka_unit_test(test_export_dtype_is_accepted),
        cmocka_unit_test(test_precision_is_accepted),
        cmocka_unit_test(test_packing_is_accepted),
        cmocka_unit_test(test_method_specific_parameters_are_rejected_elsewhere),
        cmocka_unit_test(test_supervised_maps_to_delta_lora_and_multiplier_scales_lr),
        cmocka_unit_test(test_target_modules_are_normalized),
        cmocka_unit_test(test_top_level_fields),
        cmocka_unit_test(test_metadata_limits),
        cmocka_unit_test(test_max_runtime_seconds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
