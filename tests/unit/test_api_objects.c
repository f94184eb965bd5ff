/* test_api_objects.c: JSON codecs of the API objects (OpenAI's shapes),
 * ids, the error body, and the SQL table those objects are read with
 * (api/db_sql.c; no database needed). */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "api/db_internal.h"
#include "api/errors.h"
#include "api/objects.h"
#include "base/id.h"

static void sample_job(db_job *j)
{
    memset(j, 0, sizeof *j);
    strcpy(j->id, "ftjob-0123456789abcdef01234567");
    strcpy(j->owner, "alice");
    strcpy(j->model, "SmolLM2-135M-Instruct");
    strcpy(j->training_file, "file-1");
    strcpy(j->status, "running");
    strcpy(j->method, "delta_lora");
    strcpy(j->method_input, "delta_lora");
    strcpy(j->target_modules, "q,v");
    strcpy(j->lr_scheduler, "linear");
    j->n_epochs = 3;
    j->batch_size = 4;
    j->learning_rate = 4e-4;
    j->rank = 8;
    j->alpha = 16;
    j->lambda = 0.5;
    j->start_step = -1;
    j->seed = 42;
    j->created_at = 1000;
    j->updated_at = 2000;
    j->progress.step = 10;
    j->progress.total_steps = 100;
    j->progress.train_loss = 1.25;
    j->progress.valid_loss = NAN;
    j->progress.eta_seconds = 90;
    j->progress.trained_tokens = 5000;
}

static void test_job_has_openai_fields_and_extensions(void **s)
{
    (void)s;
    db_job j;
    sample_job(&j);
    j.metadata = strdup("{\"k\":\"v\"}");
    json_t *o = obj_job(&j);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "object")), "fine_tuning.job");
    assert_string_equal(json_string_value(json_object_get(o, "organization_id")), "alice");
    assert_true(json_is_null(json_object_get(o, "fine_tuned_model")));
    assert_true(json_is_null(json_object_get(o, "error")));
    assert_true(json_is_null(json_object_get(o, "validation_file")));
    assert_true(json_is_array(json_object_get(o, "result_files")));
    assert_int_equal(json_integer_value(json_object_get(o, "trained_tokens")), 5000);
    assert_int_equal(json_integer_value(json_object_get(o, "estimated_finish")), 2090);
    json_t *h = json_object_get(o, "hyperparameters");
    assert_true(fabs(json_number_value(json_object_get(h, "learning_rate_multiplier")) - 2) < 1e-9);
    json_t *m = json_object_get(o, "method");
    assert_string_equal(json_string_value(json_object_get(m, "type")), "delta_lora");
    json_t *mh = json_object_get(json_object_get(m, "delta_lora"), "hyperparameters");
    assert_int_equal(json_integer_value(json_object_get(mh, "rank")), 8);
    assert_string_equal(json_string_value(json_object_get(mh, "start_step")), "auto");
    json_t *p = json_object_get(o, "progress");
    assert_int_equal(json_integer_value(json_object_get(p, "step")), 10);
    assert_true(json_is_null(json_object_get(p, "valid_loss")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "metadata"), "k")), "v");
    json_decref(o);
    db_job_clear(&j);
}

static void test_failed_job_carries_error_object(void **s)
{
    (void)s;
    db_job j;
    sample_job(&j);
    strcpy(j.status, "failed");
    strcpy(j.error_code, "invalid_training_file");
    strcpy(j.error_message, "line 3: bad");
    json_t *o = obj_job(&j);
    json_t *e = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_training_file");
    assert_true(json_is_null(json_object_get(e, "param")));
    assert_true(json_is_null(json_object_get(o, "estimated_finish")));
    json_decref(o);
}

static void test_full_method_hides_lora_parameters(void **s)
{
    (void)s;
    db_job j;
    sample_job(&j);
    strcpy(j.method, "full");
    json_t *o = obj_job(&j);
    json_t *mh = json_object_get(json_object_get(json_object_get(o, "method"), "full"),
                                 "hyperparameters");
    assert_non_null(mh);
    assert_null(json_object_get(mh, "rank"));
    assert_null(json_object_get(mh, "lambda"));
    json_decref(o);
}

static void test_list_has_first_and_last_id(void **s)
{
    (void)s;
    json_t *data = json_array();
    json_array_append_new(data, json_pack("{s:s}", "id", "a"));
    json_array_append_new(data, json_pack("{s:s}", "id", "b"));
    json_t *l = obj_list(data, true);
    assert_string_equal(json_string_value(json_object_get(l, "object")), "list");
    assert_true(json_is_true(json_object_get(l, "has_more")));
    assert_string_equal(json_string_value(json_object_get(l, "first_id")), "a");
    assert_string_equal(json_string_value(json_object_get(l, "last_id")), "b");
    json_decref(l);
    l = obj_list(json_array(), false);
    assert_true(json_is_null(json_object_get(l, "first_id")));
    json_decref(l);
}

static void test_event_and_checkpoint_shapes(void **s)
{
    (void)s;
    db_event e = {.seq = 42, .created_at = 5};
    strcpy(e.level, "info");
    strcpy(e.type, "metrics");
    strcpy(e.message, "step 1");
    e.data = "{\"step\":1}";
    json_t *o = obj_event(&e);
    assert_string_equal(json_string_value(json_object_get(o, "id")), "ftevent-42");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "data"), "step")), 1);
    json_decref(o);
    int64_t seq;
    assert_int_equal(obj_event_seq("ftevent-42", &seq), 0);
    assert_int_equal(seq, 42);
    assert_int_not_equal(obj_event_seq("ftevent-", &seq), 0);
    assert_int_not_equal(obj_event_seq("ftevent-4x", &seq), 0);
    assert_int_not_equal(obj_event_seq("ev-4", &seq), 0);
    assert_int_not_equal(obj_event_seq("ftevent-0", &seq), 0);

    db_checkpoint c = {.step = 7, .created_at = 9};
    strcpy(c.id, "ftckpt-1");
    strcpy(c.job_id, "ftjob-1");
    strcpy(c.model_id, "ft:m:o::ftjob-1:ckpt-step-7");
    c.metrics = "{\"train_loss\":1.5}";
    o = obj_checkpoint(&c);
    assert_int_equal(json_integer_value(json_object_get(o, "step_number")), 7);
    json_t *m = json_object_get(o, "metrics");
    assert_int_equal(json_integer_value(json_object_get(m, "step")), 7);
    assert_true(json_real_value(json_object_get(m, "train_loss")) == 1.5);
    json_decref(o);
    c.metrics = "not json";
    o = obj_checkpoint(&c);
    assert_true(json_is_object(json_object_get(o, "metrics")));
    json_decref(o);
}

static void test_file_and_model_shapes(void **s)
{
    (void)s;
    db_file f;
    memset(&f, 0, sizeof f);
    strcpy(f.id, "file-1");
    strcpy(f.status, "processed");
    strcpy(f.purpose, "fine-tune");
    f.bytes = 10;
    json_t *o = obj_file(&f);
    assert_string_equal(json_string_value(json_object_get(o, "object")), "file");
    assert_true(json_is_null(json_object_get(o, "status_details")));
    assert_true(json_is_null(json_object_get(o, "expires_at")));
    json_decref(o);
    db_model m;
    memset(&m, 0, sizeof m);
    strcpy(m.id, "base");
    strcpy(m.kind, "base");
    o = obj_model(&m);
    assert_string_equal(json_string_value(json_object_get(o, "owned_by")), "deltatune");
    assert_string_equal(json_string_value(json_object_get(o, "object")), "model");
    json_decref(o);
}

static void test_ids(void **s)
{
    (void)s;
    char a[64], b[64];
    assert_int_equal(dt_id_new("ftjob-", a, sizeof a), 0);
    assert_int_equal(dt_id_new("ftjob-", b, sizeof b), 0);
    assert_int_equal(strlen(a), 30);
    assert_string_not_equal(a, b);
    assert_int_not_equal(dt_id_new("ftjob-", a, 20), 0);
    char m[DB_MODEL_ID_LEN];
    assert_int_equal(obj_ft_model_id("base", "alice", "", "ftjob-1", 0, m, sizeof m), 0);
    assert_string_equal(m, "ft:base:alice::ftjob-1");
    assert_int_equal(obj_ft_model_id("base", "alice", "x", "ftjob-1", 30, m, sizeof m), 0);
    assert_string_equal(m, "ft:base:alice:x:ftjob-1:ckpt-step-30");
    assert_int_not_equal(obj_ft_model_id("base", "alice", "x", "ftjob-1", 30, m, 10), 0);
}

/* Continuing from a fine-tuned model or checkpoint names the original
 * base: no "ft:ft:..." chains. */
static void test_ft_model_id_readable(void **s)
{
    (void)s;
    char m[DB_MODEL_ID_LEN], b[DB_MODEL_ID_LEN];
    assert_int_equal(obj_ft_model_id("ft:base:alice:x:ftjob-1", "bob", "y", "ftjob-2", 0,
                                     m, sizeof m), 0);
    assert_string_equal(m, "ft:base:bob:y:ftjob-2");
    assert_int_equal(obj_ft_model_id("ft:base:alice::ftjob-1:ckpt-step-30", "bob", "",
                                     "ftjob-2", 5, m, sizeof m), 0);
    assert_string_equal(m, "ft:base:bob::ftjob-2:ckpt-step-5");
    /* A chain of three stays one level deep. */
    assert_int_equal(obj_ft_model_id(m, "carol", "z", "ftjob-3", 0, m, sizeof m), 0);
    assert_string_equal(m, "ft:base:carol:z:ftjob-3");
    /* A base whose name holds ':' stays whole. */
    assert_int_equal(obj_ft_original_base("ft:org:model:q4:alice:x:ftjob-1", b, sizeof b), 0);
    assert_string_equal(b, "org:model:q4");
    /* Ids without the fine-tuned shape are their own base. */
    assert_int_equal(obj_ft_original_base("SmolLM2-135M", b, sizeof b), 0);
    assert_string_equal(b, "SmolLM2-135M");
    assert_int_equal(obj_ft_original_base("ft:odd:name", b, sizeof b), 0);
    assert_string_equal(b, "ft:odd:name");
    assert_int_equal(obj_ft_original_base("ft:a:b:c:notajob", b, sizeof b), 0);
    assert_string_equal(b, "ft:a:b:c:notajob");
    assert_int_not_equal(obj_ft_original_base("SmolLM2-135M", b, 4), 0);
}

static void test_error_body_shape(void **s)
{
    (void)s;
    api_error e;
    assert_int_equal(api_errorf(&e, 400, "invalid_value", "a.b", "bad %d", 3), 400);
    json_t *o = api_error_json(&e);
    json_t *er = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(er, "message")), "bad 3");
    assert_string_equal(json_string_value(json_object_get(er, "type")), "invalid_request_error");
    assert_string_equal(json_string_value(json_object_get(er, "param")), "a.b");
    assert_string_equal(json_string_value(json_object_get(er, "code")), "invalid_value");
    json_decref(o);
    api_errorf(&e, 404, NULL, NULL, "x");
    o = api_error_json(&e);
    er = json_object_get(o, "error");
    assert_true(json_is_null(json_object_get(er, "param")));
    assert_true(json_is_null(json_object_get(er, "code")));
    assert_string_equal(json_string_value(json_object_get(er, "type")), "not_found_error");
    json_decref(o);
    assert_string_equal(api_error_type(401), "authentication_error");
    assert_string_equal(api_error_type(409), "conflict_error");
    assert_string_equal(api_error_type(503), "service_unavailable_error");
}

/* Found by tests/fuzz/fuzz_json: jansson's parse error quotes the raw bytes
 * ("invalid escape near '"\xd9'"), and json_pack refuses invalid UTF-8, so
 * the 400 went out with an empty body. Invalid bytes become '?'. */
static void test_error_body_with_invalid_utf8(void **s)
{
    (void)s;
    api_error e;
    api_errorf(&e, 400, "invalid_json", "metadata.\xe9t\xc3", "invalid escape near '\"\\\xd9' "
               "caf\xc3\xa9 \xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80 \xf0\x9f\x98\x80");
    json_t *o = api_error_json(&e);
    assert_non_null(o);
    json_t *er = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(er, "message")),
                        "invalid escape near '\"\\?' caf\xc3\xa9 ??? ?? ???? \xf0\x9f\x98\x80");
    assert_string_equal(json_string_value(json_object_get(er, "param")), "metadata.?t?");
    json_decref(o);
    /* a multi-byte character cut by the fixed-size message buffer */
    char big[1000];
    memset(big, 'a', sizeof big);
    for (size_t i = 700; i + 1 < sizeof big; i += 2) { big[i] = '\xc3'; big[i + 1] = '\xa9'; }
    big[sizeof big - 1] = 0;
    api_errorf(&e, 400, NULL, NULL, "%s", big);
    o = api_error_json(&e);
    assert_non_null(o);
    json_decref(o);
}

/* Designated initializers leave a forgotten enum db_stmt slot NULL; the
 * build catches a duplicate or a missing last slot, this catches a gap. */
static void test_every_statement_has_a_unique_name_and_sql(void **state)
{
    char err[DT_ERR_LEN] = "";
    assert_int_equal(db_sql_check(err), 0);
    for (int i = 0; i < STMT__COUNT; i++) {
        assert_non_null(db_sql_table[i].name);
        assert_non_null(db_sql_table[i].sql);
    }
    assert_string_equal(db_sql_table[STMT_PING].name, "ping");
    assert_string_equal(db_sql_table[STMT_CKPT_LIST].name, "ckpt_list");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_has_openai_fields_and_extensions),
        cmocka_unit_test(test_failed_job_carries_error_object),
        cmocka_unit_test(test_full_method_hides_lora_parameters),
        cmocka_unit_test(test_list_has_first_and_last_id),
        cmocka_unit_test(test_event_and_checkpoint_shapes),
        cmocka_unit_test(test_file_and_model_shapes),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_ft_model_id_readable),
        cmocka_unit_test(test_error_body_shape),
        cmocka_unit_test(test_error_body_with_invalid_utf8),
        cmocka_unit_test(test_every_statement_has_a_unique_name_and_sql),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
