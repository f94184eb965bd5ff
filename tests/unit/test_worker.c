/* test_worker.c: the worker's pure pieces: a job row's hyperparameters as
 * dt_train_opts, step and checkpoint arithmetic, engine errors as errors a
 * user can act on (with no server path in them), and model ids. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "api/db.h"
#include "api/objects.h"
#include "worker/glue.h"
#include "worker/job_opts.h"

/* A job as validate.c resolves one (defaults of api/validate.h). */
static void job_defaults(db_job *j)
{
    memset(j, 0, sizeof *j);
    snprintf(j->id, sizeof j->id, "ftjob-abc");
    snprintf(j->owner, sizeof j->owner, "alice");
    snprintf(j->model, sizeof j->model, "SmolLM2-135M-Instruct");
    snprintf(j->training_file, sizeof j->training_file, "file-train");
    snprintf(j->method, sizeof j->method, "delta_lora");
    snprintf(j->method_input, sizeof j->method_input, "delta_lora");
    j->n_epochs = 3;
    j->batch_size = 4;
    j->learning_rate = 2e-4;
    j->rank = 8;
    j->alpha = 16;
    j->lambda = 0.5;
    j->start_step = -1;
    snprintf(j->target_modules, sizeof j->target_modules, "q,v");
    j->seq_len = 256;
    j->max_grad_norm = 1.0;
    snprintf(j->lr_scheduler, sizeof j->lr_scheduler, "linear");
    j->grad_accum = 1;
    j->seed = 42;
}

static void test_job_opts_maps_every_delta_lora_hyperparameter(void **s)
{
    (void)s;
    db_job j;
    job_defaults(&j);
    j.n_epochs = 2;
    j.batch_size = 8;
    j.learning_rate = 1e-3;
    j.rank = 4;
    j.alpha = 32;
    j.lambda = 0.25;
    j.start_step = 7;
    snprintf(j.target_modules, sizeof j.target_modules, "q,k,v,o");
    j.seq_len = 64;
    j.warmup_steps = 5;
    j.weight_decay = 0.01;
    j.max_grad_norm = 0.5;
    snprintf(j.lr_scheduler, sizeof j.lr_scheduler, "cosine");
    j.grad_accum = 2;
    j.seed = 1234;
    j.checkpoint_interval = 10;
    j.eval_interval = 5;
    dt_train_opts o;
    char err[DT_ERR_LEN] = "";
    assert_int_equal(wk_job_opts(&j, 100, &o, err), 0);
    assert_int_equal(o.packing, 0); /* off by default */
    j.packing = true;
    assert_int_equal(wk_job_opts(&j, 100, &o, err), 0);
    assert_int_equal(o.packing, 1);
    assert_int_equal(o.method, DT_DELTA_LORA);
    assert_int_equal(o.epochs, 2);
    assert_int_equal(o.steps, 0);
    assert_int_equal(o.batch, 8);
    assert_float_equal(o.lr, 1e-3, 1e-9);
    assert_int_equal(o.rank, 4);
    assert_float_equal(o.alpha, 32, 0);
    assert_float_equal(o.lambda, 0.25, 0);
    assert_int_equal(o.start_step, 7);
    assert_string_equal(o.targets, "q,k,v,o");
    assert_int_equal(o.seq_len, 64);
    assert_int_equal(o.warmup, 5);
    assert_float_equal(o.weight_decay, 0.01, 1e-9);
    assert_float_equal(o.max_grad_norm, 0.5, 0);
    assert_int_equal(o.sched, DT_SCHED_COSINE);
    assert_int_equal(o.accum, 2);
    assert_int_equal(o.seed, 1234);
    assert_int_equal(o.ckpt_interval, 10);
    assert_int_equal(o.eval_interval, 5);
    assert_int_equal(o.resume, 1); /* a re-claimed job continues */
}

static void test_job_opts_lora_keeps_lambda_out_and_full_keeps_lora_defaults(void **s)
{
    (void)s;
    db_job j;
    dt_train_opts o, def;
    char err[DT_ERR_LEN] = "";
    dt_train_defaults(&def);
    job_defaults(&j);
    snprintf(j.method, sizeof j.method, "lora");
    j.lambda = 9;
    j.start_step = 3;
    assert_int_equal(wk_job_opts(&j, 10, &o, err), 0);
    assert_int_equal(o.method, DT_LORA);
    assert_float_equal(o.lambda, def.lambda, 0);
    assert_int_equal(o.start_step, def.start_step);

    job_defaults(&j);
    snprintf(j.method, sizeof j.method, "full");
    j.rank = 0;
    j.target_modules[0] = 0;
    assert_int_equal(wk_job_opts(&j, 10, &o, err), 0);
    assert_int_equal(o.method, DT_FULL);
    assert_int_equal(o.rank, def.rank);
    assert_string_equal(o.targets, def.targets);
}

static void test_job_opts_max_steps_and_empty_scheduler(void **s)
{
    (void)s;
    db_job j;
    dt_train_opts o;
    char err[DT_ERR_LEN] = "";
    job_defaults(&j);
    j.max_steps = 30;
    j.lr_scheduler[0] = 0;
    assert_int_equal(wk_job_opts(&j, 1000, &o, err), 0);
    assert_int_equal(o.steps, 30);
    assert_int_equal(o.sched, DT_SCHED_LINEAR);
    /* 30 steps: a checkpoint every 10, and validation with each. */
    assert_int_equal(o.ckpt_interval, 10);
    assert_int_equal(o.eval_interval, 10);
}

/* hyperparameters.precision reaches the engine: "" is auto (the device
 * decides), fp32 / tf32 / bf16 as named. */
static void test_job_opts_precision(void **s)
{
    (void)s;
    static const char *const names[] = {"", "fp32", "tf32", "bf16"};
    static const dt_precision want[] = {DT_PREC_AUTO, DT_PREC_FP32, DT_PREC_TF32,
                                        DT_PREC_BF16};
    for (int i = 0; i < 4; i++) {
        db_job j;
        dt_train_opts o;
        char err[DT_ERR_LEN] = "";
        job_defaults(&j);
        snprintf(j.precision, sizeof j.precision, "%s", names[i]);
        assert_int_equal(wk_job_opts(&j, 100, &o, err), 0);
        assert_int_equal(o.precision, want[i]);
    }
}

static void test_job_opts_rejects_unknown_method_and_scheduler(void **s)
{
    (void)s;
    db_job j;
    dt_train_opts o;
    char err[DT_ERR_LEN] = "";
    job_defaults(&j);
    snprintf(j.method, sizeof j.method, "qlora");
    assert_int_equal(wk_job_opts(&j, 10, &o, err), DT_EINVAL);
    assert_non_null(strstr(err, "qlora"));
    job_defaults(&j);
    snprintf(j.lr_scheduler, sizeof j.lr_scheduler, "step");
    assert_int_equal(wk_job_opts(&j, 10, &o, err), DT_EINVAL);
    assert_non_null(strstr(err, "lr_scheduler"));
}

static void test_total_steps_rounds_up_and_max_steps_wins(void **s)
{
    (void)s;
    db_job j;
    job_defaults(&j);
    j.n_epochs = 1;
    j.batch_size = 4;
    assert_int_equal(wk_total_steps(&j, 180), 45);
    assert_int_equal(wk_total_steps(&j, 181), 46);
    j.grad_accum = 2;
    j.n_epochs = 3;
    assert_int_equal(wk_total_steps(&j, 16), 6);
    j.max_steps = 7;
    assert_int_equal(wk_total_steps(&j, 16), 7);
}

static void test_default_checkpoint_interval_is_bounded(void **s)
{
    (void)s;
    /* at most about 10 per job; a tiny job checkpoints at its end only */
    assert_int_equal(wk_default_ckpt_interval(0), 10);
    assert_int_equal(wk_default_ckpt_interval(3), 10);
    assert_int_equal(wk_default_ckpt_interval(45), 10);
    assert_int_equal(wk_default_ckpt_interval(101), 11);
    assert_int_equal(wk_default_ckpt_interval(100000), 10000);
    assert_int_equal(wk_default_ckpt_interval(2150000000L), 215000000);
}

static wk_run run_for(const db_job *j)
{
    wk_run r = {
        .job = j,
        .model_path = "/srv/dt/models/smol.gguf",
        .train_path = "/srv/dt/files/file-train.jsonl",
        .valid_path = "/srv/dt/files/file-valid.jsonl",
        .out_dir = "/srv/dt/jobs/ftjob-abc",
        .device = "cuda:0",
    };
    return r;
}

static void test_nan_loss_names_learning_rate(void **s)
{
    (void)s;
    db_job j;
    job_defaults(&j);
    wk_run r = run_for(&j);
    wk_error e;
    wk_classify_error(DT_ENAN, "loss became nan at step 3 (try a lower --lr)", &r, &e);
    assert_string_equal(e.code, "training_diverged");
    assert_string_equal(e.param, "method.delta_lora.hyperparameters.learning_rate");
    assert_non_null(strstr(e.message, "0.0002"));
}

static void test_out_of_memory_names_batch_size_and_size(void **s)
{
    (void)s;
    db_job j;
    job_defaults(&j);
    snprintf(j.method_input, sizeof j.method_input, "supervised");
    wk_run r = run_for(&j);
    wk_error e;
    wk_classify_error(DT_ENOMEM, "cuda: out of memory allocating 8589934592 bytes", &r, &e);
    assert_string_equal(e.code, "out_of_memory");
    assert_string_equal(e.param, "method.supervised.hyperparameters.batch_size");
    assert_non_null(strstr(e.message, "8589934592 bytes"));
    assert_non_null(strstr(e.message, "cuda:0"));
}

static void test_bad_training_file_is_named_by_id_not_path(void **s)
{
    (void)s;
    db_job j;
    job_defaults(&j);
    wk_run r = run_for(&j);
    wk_error e;
    wk_classify_error(DT_EFORMAT,
                      "/srv/dt/files/file-train.jsonl:7: field \"messages\": must be an array",
                      &r, &e);
    assert_string_equal(e.code, "invalid_training_file");
    assert_string_equal(e.param, "training_file");
    assert_non_null(strstr(e.message, "file-train:7: field"));
    assert_null(strstr(e.message, "/srv/dt"));
}

static void test_model_and_device_errors(void **s)
{
    (void)s;
    db_job j;
    job_defaults(&j);
    wk_run r = run_for(&j);
    wk_error e;
    wk_classify_error(DT_EFORMAT, "/srv/dt/models/smol.gguf: truncated", &r, &e);
    assert_string_equal(e.code, "model_unavailable");
    assert_string_equal(e.param, "model");
    assert_null(strstr(e.message, "/srv/dt"));
    wk_classify_error(DT_EDEVICE, "cudaMalloc: driver shutting down", &r, &e);
    assert_string_equal(e.code, "device_error");
    assert_string_equal(e.param, "");
    wk_classify_error(DT_EINVAL, "/srv/dt/files/file-train.jsonl:4: no tokens to learn "
                      "from after truncation to --seq-len 32", &r, &e);
    assert_string_equal(e.code, "invalid_training_file");
    assert_non_null(strstr(e.message, "file-train:4: no tokens to learn from after "
                                      "truncation to seq_len 32"));
    wk_classify_error(DT_EIO, "/srv/dt/jobs/ftjob-abc/merged: disk full", &r, &e);
    assert_string_equal(e.code, "training_failed");
    assert_null(strstr(e.message, "/srv/dt"));
}

static void test_model_ids_of_job_and_checkpoint(void **s)
{
    (void)s;
    char id[DB_MODEL_ID_LEN];
    assert_int_equal(obj_ft_model_id("SmolLM2-135M-Instruct", "alice", "e2e", "ftjob-abc",
                                     0, id, sizeof id), 0);
    assert_string_equal(id, "ft:SmolLM2-135M-Instruct:alice:e2e:ftjob-abc");
    assert_int_equal(obj_ft_model_id("SmolLM2-135M-Instruct", "alice", "", "ftjob-abc", 45,
                                     id, sizeof id), 0);
    assert_string_equal(id, "ft:SmolLM2-135M-Instruct:alice::ftjob-abc:ckpt-step-45");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_opts_maps_every_delta_lora_hyperparameter),
        cmocka_unit_test(test_job_opts_lora_keeps_lambda_out_and_full_keeps_lora_defaults),
        cmocka_unit_test(test_job_opts_max_steps_and_empty_scheduler),
        cmocka_unit_test(test_job_opts_precision),
        cmocka_unit_test(test_job_opts_rejects_unknown_method_and_scheduler),
        cmocka_unit_test(test_total_steps_rounds_up_and_max_steps_wins),
        cmocka_unit_test(test_default_checkpoint_interval_is_bounded),
        cmocka_unit_test(test_nan_loss_names_learning_rate),
        cmocka_unit_test(test_out_of_memory_names_batch_size_and_size),
        cmocka_unit_test(test_bad_training_file_is_named_by_id_not_path),
        cmocka_unit_test(test_model_and_device_errors),
        cmocka_unit_test(test_model_ids_of_job_and_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
