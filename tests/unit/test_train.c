/* test_train.c: the training loop's contracts on a tiny GPT-2 (the reference
 * fixture model, with the GPT-2 tokenizer that scripts/install-deps fetches):
 * interrupted + resumed == uninterrupted (byte-identical merged model),
 * gradient accumulation, Delta-LoRA's W update rule, LoRA's frozen W, LR
 * schedules, and bad data rejected before any step; 64-bit step counts, a
 * stop between micro-batches, and checkpoint retention. */
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

#include "gpu/backend.h"
#include "base/dt.h"
#include "gpu/export.h"
#include "gpu/model.h"
#include "gpu/train.h"
#include "gpu/cpu_tune.h"
#include "base/file.h"
#include "train_fixture.h"

static void test_interrupted_and_resumed_run_is_byte_identical(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out1[300], out2[300], model[300], data[300], p2[400];
    dt_train_opts o;
    snprintf(out1, sizeof out1, "%s/run1", g_dir);
    snprintf(out2, sizeof out2, "%s/run2", g_dir);
    tf_opts(&o, out1, model, data);
    int rc = dt_train(&o, err);
    if (rc)
        fail_msg("%s", err);

    tf_opts(&o, out2, model, data);
    o.on_progress = tf_stop_at_3;
    assert_int_equal(dt_train(&o, err), DT_ECANCEL);
    snprintf(p2, sizeof p2, "%s/checkpoints/step-00000003/DONE", out2);
    assert_int_equal(access(p2, F_OK), 0);
    snprintf(p2, sizeof p2, "%s/merged/model.safetensors", out2);
    assert_int_not_equal(access(p2, F_OK), 0); /* not finished: nothing exported */
    o.on_progress = NULL;
    o.resume = 1;
    rc = dt_train(&o, err);
    if (rc)
        fail_msg("%s", err);
    tf_assert_same_merged(out1, out2);
}

/* The same with dropout on (every GPT-2 site at 0.1, LoRA dropout for lora),
 * label smoothing and two micro-batches per step: the masks are keyed on
 * (seed, step, micro-batch, layer, site, element), nothing is stored, so
 * the resumed run draws the masks the uninterrupted one drew. The dropout
 * acts: the merged model differs from a run without it. About 1 s. */
static void resume_with_dropout(dt_method method, float lora_dropout)
{
    char err[DT_ERR_LEN], out0[300], out1[300], out2[300], model[300], data[300];
    char p0[400], p1[400], p2[400];
    dt_train_opts o;
    const char *tag = method == DT_LORA ? "lora" : "delta";
    snprintf(out0, sizeof out0, "%s/drop-%s-0", g_dir, tag);
    snprintf(out1, sizeof out1, "%s/drop-%s-1", g_dir, tag);
    snprintf(out2, sizeof out2, "%s/drop-%s-2", g_dir, tag);
    tf_opts(&o, out0, model, data);
    o.method = method;
    o.accum = 2;
    o.model_dropout = 0.0f;
    if (dt_train(&o, err))
        fail_msg("%s", err);
    tf_opts(&o, out1, model, data);
    o.method = method;
    o.accum = 2;
    o.model_dropout = 0.1f;
    o.lora_dropout = lora_dropout;
    o.label_smoothing = 0.1f;
    if (dt_train(&o, err))
        fail_msg("%s", err);
    o.out = out2;
    o.on_progress = tf_stop_at_3;
    assert_int_equal(dt_train(&o, err), DT_ECANCEL);
    o.on_progress = NULL;
    o.resume = 1;
    if (dt_train(&o, err))
        fail_msg("%s", err);
    snprintf(p0, sizeof p0, "%s/merged/model.safetensors", out0);
    snprintf(p1, sizeof p1, "%s/merged/model.safetensors", out1);
    snprintf(p2, sizeof p2, "%s/merged/model.safetensors", out2);
    size_t n0, n1, n2;
    char *a = tf_slurp(p1, &n1), *b = tf_slurp(p2, &n2), *c = tf_slurp(p0, &n0);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    assert_int_equal(n0, n1);
    assert_memory_not_equal(a, c, n1);
    free(a);
    free(b);
    free(c);
}

static void test_resumed_run_with_dropout_is_byte_identical(void **s)
{
    (void)s;
    resume_with_dropout(DT_DELTA_LORA, 0.0f);
    resume_with_dropout(DT_LORA, 0.2f);
}

/* --method lora writes a PEFT adapter beside the merged model; GPT-2's q and
 * v slices become one block-structured adapter on c_attn that reads back. */
static void test_lora_run_writes_a_peft_adapter(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out[300], model[300], data[300], path[400];
    dt_train_opts o;
    snprintf(out, sizeof out, "%s/lora", g_dir);
    tf_opts(&o, out, model, data);
    o.method = DT_LORA;
    o.steps = 2;
    if (dt_train(&o, err))
        fail_msg("%s", err);
    snprintf(path, sizeof path, "%s/merged/model.safetensors", out);
    assert_int_equal(access(path, R_OK), 0);
    snprintf(path, sizeof path, "%s/adapter", out);
    dt_weights w;
    assert_int_equal(dt_weights_load(model, &w, err), 0);
    dt_peft_adapter ad;
    if (dt_peft_load(path, &w, &ad, err))
        fail_msg("%s", err);
    assert_int_equal(ad.rank, 2 * o.rank);           /* q and v stacked */
    assert_float_equal(ad.alpha / ad.rank, o.alpha / o.rank, 1e-6);
    assert_non_null(dt_tensorset_find(&ad.ts, "h.1.attn.c_attn.lora_B"));
    dt_peft_free(&ad);
    dt_weights_free(&w);
}

static void test_bad_data_fails_before_any_step(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out[300], model[300], data[300], path[400];
    dt_train_opts o;
    snprintf(out, sizeof out, "%s/bad", g_dir);
    tf_opts(&o, out, model, data);
    snprintf(data, sizeof data, "%s/bad.jsonl", g_dir);
    FILE *f = fopen(data, "w");
    fputs("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": \"x\"}\nnot json\n", f);
    fclose(f);
    assert_int_equal(dt_train(&o, err), DT_EINVAL);
    assert_non_null(strstr(err, "bad.jsonl:2"));
    snprintf(path, sizeof path, "%s/checkpoints", out);
    assert_int_not_equal(access(path, F_OK), 0);
}

static void test_grad_accumulation_matches_one_big_batch(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    dt_backend *be = dt_backend_cpu_new(1, err);
    dt_weights w1, w2;
    dt_model *big = tf_model(be, &w1, TF_GPT2_FIX, "q,v", DT_LORA, 2, 8);
    dt_model *small = tf_model(be, &w2, TF_GPT2_FIX, "q,v", DT_LORA, 1, 8);
    int32_t ids[16], tgt[16];
    for (int i = 0; i < 16; i++) {
        ids[i] = (i * 37 + 5) % 96;
        tgt[i] = i % 5 == 4 ? -100 : (i * 11 + 3) % 96;
    }
    double ls;
    long nt;
    dt_model_zero_grad(big);
    assert_int_equal(dt_model_forward(big, ids, tgt, 2, 8, 1.0f / 13, &ls, &nt, err), 0);
    assert_int_equal(nt, 13);
    assert_int_equal(dt_model_backward(big, err), 0);
    dt_model_zero_grad(small);
    for (int g = 0; g < 2; g++) {
        assert_int_equal(dt_model_forward(small, ids + 8 * g, tgt + 8 * g, 1, 8, 1.0f / 13,
                                          &ls, &nt, err), 0);
        assert_int_equal(dt_model_backward(small, err), 0);
    }
    long n1, n2;
    float *g1 = tf_grads(be, big, &n1), *g2 = tf_grads(be, small, &n2);
    assert_int_equal(n1, n2);
    double d = 0, r = 0;
    for (long i = 0; i < n1; i++) {
        d += (g1[i] - g2[i]) * (double)(g1[i] - g2[i]);
        r += g1[i] * (double)g1[i];
    }
    assert_true(r > 0);
    assert_true(sqrt(d / r) < 1e-5);
    free(g1);
    free(g2);
    dt_model_free(big);
    dt_model_free(small);
    dt_weights_free(&w1);
    dt_weights_free(&w2);
    dt_backend_free(be);
}

static float *download(dt_backend *be, const float *dev, long n)
{
    float *h = malloc((size_t)n * sizeof(float));
    be->i.download(be, h, dev, (size_t)n * sizeof(float));
    return h;
}

/* W moves by exactly λ·s·(B·A − B_old·A_old) on steps t > K, not before;
 * LoRA never moves W. */
static void check_w_rule(dt_method method)
{
    char err[DT_ERR_LEN];
    dt_backend *be = dt_backend_cpu_new(1, err);
    dt_weights w;
    dt_model *m = tf_model(be, &w, TF_GPT2_FIX, "q,v", method, 2, 8);
    int32_t ids[16], tgt[16];
    for (int i = 0; i < 16; i++) {
        ids[i] = (i * 7 + 1) % 96;
        tgt[i] = (i * 13 + 2) % 96;
    }
    int nl;
    dt_lora *ls = dt_model_loras(m, &nl);
    assert_int_equal(nl, 2 * 2); /* q and v slices, two layers */
    dt_lora *a = &ls[0];
    float *W;
    long nW;
    assert_int_equal(dt_model_get_weight(m, a->wname, &W, &nW), 0);
    dt_optim opt;
    dt_optim_defaults(&opt);
    opt.lr = 1e-2f;
    opt.start_step = 2;
    opt.lambda = 0.5f;
    float s = dt_model_lora_scale(m);
    int r = a->A->shape[0], in = a->in;
    for (int t = 1; t <= 3; t++) {
        float *W0 = download(be, W, nW), *A0 = download(be, a->A->p, a->A->n);
        float *B0 = download(be, a->B->p, a->B->n);
        double ls2;
        long nt;
        dt_model_zero_grad(m);
        assert_int_equal(dt_model_forward(m, ids, tgt, 2, 8, 1.0f / 16, &ls2, &nt, err), 0);
        assert_int_equal(dt_model_backward(m, err), 0);
        assert_int_equal(dt_optim_step(m, &opt, method, opt.lr, NULL, err), 0);
        float *W1 = download(be, W, nW), *A1 = download(be, a->A->p, a->A->n);
        float *B1 = download(be, a->B->p, a->B->n);
        double maxdiff = 0, maxd = 0;
        for (int i = 0; i < a->rows; i++)
            for (int j = 0; j < in; j++) {
                double d = 0;
                for (int k = 0; k < r; k++)
                    d += (double)B1[i * r + k] * A1[k * in + j] - (double)B0[i * r + k] * A0[k * in + j];
                d *= 0.5 * s;
                long idx = (long)(a->row_off + i) * in + j;
                double got = (double)W1[idx] - W0[idx];
                double want = method == DT_DELTA_LORA && t > 2 ? d : 0.0;
                if (fabs(got - want) > maxdiff)
                    maxdiff = fabs(got - want);
                if (fabs(d) > maxd)
                    maxd = fabs(d);
            }
        assert_true(maxd > 0); /* the factors moved */
        if (method == DT_DELTA_LORA && t > 2)
            assert_true(maxdiff < 1e-6 + 1e-3 * maxd);
        else
            assert_true(maxdiff == 0.0); /* W untouched, bit for bit */
        free(W0); free(A0); free(B0); free(W1); free(A1); free(B1);
    }
    dt_model_free(m);
    dt_weights_free(&w);
    dt_backend_free(be);
}

static void test_delta_lora_moves_w_by_the_factor_delta_after_k(void **s)
{
    (void)s;
    check_w_rule(DT_DELTA_LORA);
}

static void test_lora_never_moves_w(void **s)
{
    (void)s;
    check_w_rule(DT_LORA);
}

static void test_lr_schedules_follow_hugging_face(void **s)
{
    (void)s;
    assert_float_equal(dt_lr_at(DT_SCHED_LINEAR, 1.0f, 2, 10, 0), 0.0f, 1e-7);
    assert_float_equal(dt_lr_at(DT_SCHED_LINEAR, 1.0f, 2, 10, 1), 0.5f, 1e-7);
    assert_float_equal(dt_lr_at(DT_SCHED_LINEAR, 1.0f, 2, 10, 2), 1.0f, 1e-7);
    assert_float_equal(dt_lr_at(DT_SCHED_LINEAR, 1.0f, 2, 10, 6), 0.5f, 1e-7);
    assert_float_equal(dt_lr_at(DT_SCHED_COSINE, 1.0f, 2, 10, 6), 0.5f, 1e-6);
    assert_float_equal(dt_lr_at(DT_SCHED_COSINE, 1.0f, 0, 10, 0), 1.0f, 1e-7);
    assert_float_equal(dt_lr_at(DT_SCHED_CONSTANT, 3e-4f, 0, 10, 9), 3e-4f, 1e-9);
}

/* 24 rows x 300 M epochs / batch 3 = 2.4 G steps: more than an int holds.
 * Before the 64-bit fix the total wrapped negative and the run "succeeded"
 * at once with 0 steps (the base model exported). */
static int64_t g_seen_total;
static int abort_at_1(void *ud, const dt_progress *p)
{
    (void)ud;
    g_seen_total = p->total_steps;
    return DT_PROGRESS_ABORT;
}

static void test_total_steps_past_int_max_do_not_wrap(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out[300], model[300], data[300];
    dt_train_opts o;
    snprintf(out, sizeof out, "%s/huge", g_dir);
    tf_opts(&o, out, model, data);
    o.steps = 0;
    o.epochs = 300000000;
    o.on_progress = abort_at_1;
    g_seen_total = -1;
    assert_int_equal(dt_train(&o, err), DT_ECANCEL); /* ran step 1, then aborted */
    assert_true(g_seen_total == 2400000000LL);
    /* the schedule over such a run */
    assert_float_equal(dt_lr_at(DT_SCHED_LINEAR, 1.0f, 0, 3000000000LL, 1500000000LL), 0.5f,
                       1e-6);
    assert_float_equal(dt_lr_at(DT_SCHED_COSINE, 1.0f, 0, 3000000000LL, 1500000000LL), 0.5f,
                       1e-6);
}

/* A stop between two micro-batches drops the partial accumulation: STOP
 * leaves a checkpoint of the last completed step (resuming from it gives
 * the uninterrupted result byte for byte), ABORT writes nothing. */
static int g_stop_step, g_stop_micro, g_stop_value, g_micro_calls;
static int stop_in_step(void *ud, int64_t step, int micro)
{
    (void)ud;
    g_micro_calls++;
    return step == g_stop_step && micro == g_stop_micro ? g_stop_value : 0;
}

static void test_stop_between_micro_batches_drops_the_step(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out1[300], out2[300], out3[300], model[300], data[300], p[500];
    dt_train_opts o;
    snprintf(out1, sizeof out1, "%s/accum1", g_dir);
    snprintf(out2, sizeof out2, "%s/accum2", g_dir);
    snprintf(out3, sizeof out3, "%s/accum3", g_dir);
    tf_opts(&o, out1, model, data);
    o.accum = 4;
    o.batch = 2;
    if (dt_train(&o, err))
        fail_msg("%s", err);

    /* pause-like: stop in micro-batch 2 of step 4 (0-based 3) */
    tf_opts(&o, out2, model, data);
    o.accum = 4;
    o.batch = 2;
    o.on_micro = stop_in_step;
    g_stop_step = 3, g_stop_micro = 2, g_stop_value = DT_PROGRESS_STOP, g_micro_calls = 0;
    assert_int_equal(dt_train(&o, err), DT_ECANCEL);
    assert_int_equal(g_micro_calls, 3 * 3 + 2); /* 3 per complete step, then 2 */
    char dir[4096];
    assert_int_equal(dt_ckpt_latest(out2, dir, sizeof dir), 3);
    snprintf(p, sizeof p, "%s/checkpoints/step-00000004", out2);
    assert_int_not_equal(access(p, F_OK), 0);
    o.on_micro = NULL;
    o.resume = 1;
    if (dt_train(&o, err))
        fail_msg("%s", err);
    tf_assert_same_merged(out1, out2);

    /* SIGTERM-like: abort in step 4 with checkpoints every 2 steps: the
     * newest checkpoint stays step 2, nothing else is written */
    tf_opts(&o, out3, model, data);
    o.accum = 4;
    o.batch = 2;
    o.ckpt_interval = 2;
    o.on_micro = stop_in_step;
    g_stop_step = 3, g_stop_micro = 1, g_stop_value = DT_PROGRESS_ABORT;
    assert_int_equal(dt_train(&o, err), DT_ECANCEL);
    assert_int_equal(dt_ckpt_latest(out3, dir, sizeof dir), 2);
    snprintf(p, sizeof p, "%s/checkpoints/step-00000003", out3);
    assert_int_not_equal(access(p, F_OK), 0);
}

/* Retention: the newest ckpt_keep checkpoints keep their optimizer state,
 * every one keeps its weights; dt_ckpt_prune(0) (a job that ended) leaves
 * no resumable state. */
static void test_checkpoint_retention_keeps_the_last_n_states(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out[300], model[300], data[300], p[500];
    dt_train_opts o;
    snprintf(out, sizeof out, "%s/keep", g_dir);
    tf_opts(&o, out, model, data);
    o.method = DT_FULL;
    o.ckpt_interval = 1;
    o.ckpt_keep = 2;
    if (dt_train(&o, err))
        fail_msg("%s", err);
    for (int st = 1; st <= 6; st++) {
        snprintf(p, sizeof p, "%s/checkpoints/step-%08d/weights.safetensors", out, st);
        assert_int_equal(access(p, F_OK), 0);
        snprintf(p, sizeof p, "%s/checkpoints/step-%08d/optimizer.safetensors", out, st);
        assert_int_equal(access(p, F_OK) == 0, st >= 5);
    }
    char dir[4096];
    assert_int_equal(dt_ckpt_latest(out, dir, sizeof dir), 6);
    assert_int_equal(dt_ckpt_prune(out, 0, err), 2);
    assert_int_equal(dt_ckpt_latest(out, dir, sizeof dir), 0);
    snprintf(p, sizeof p, "%s/checkpoints/step-00000006/weights.safetensors", out);
    assert_int_equal(access(p, F_OK), 0);
}

/* Every lora / delta_lora checkpoint is a model: it holds its PEFT adapter,
 * written from the checkpoint's weights by the code of the final export, so
 * the last checkpoint's adapter is byte-identical to the job's adapter and
 * an earlier one loads and differs; a full fine-tune's checkpoints have none. */
static void test_checkpoints_hold_their_adapter(void **s)
{
    (void)s;
    static const dt_method methods[] = {DT_LORA, DT_DELTA_LORA, DT_FULL};
    for (int k = 0; k < 3; k++) {
        char err[DT_ERR_LEN], out[300], model[300], data[300], p[500], q[500];
        dt_train_opts o;
        snprintf(out, sizeof out, "%s/ckad%d", g_dir, k);
        tf_opts(&o, out, model, data);
        o.method = methods[k];
        o.ckpt_interval = 3;
        if (dt_train(&o, err))
            fail_msg("%s", err);
        snprintf(p, sizeof p, "%s/checkpoints/step-00000003/adapter", out);
        if (o.method == DT_FULL) {
            assert_int_not_equal(access(p, F_OK), 0);
            continue;
        }
        dt_weights w;
        assert_int_equal(dt_weights_load(model, &w, err), 0);
        dt_peft_adapter ad;
        if (dt_peft_load(p, &w, &ad, err))
            fail_msg("%s", err);
        dt_peft_free(&ad);
        dt_weights_free(&w);
        static const char *const files[] = {"adapter_model.safetensors",
                                            "adapter_config.json"};
        for (int f = 0; f < 2; f++) {
            size_t n6, nf, n3;
            snprintf(p, sizeof p, "%s/checkpoints/step-00000006/adapter/%s", out, files[f]);
            snprintf(q, sizeof q, "%s/adapter/%s", out, files[f]);
            char *a6 = tf_slurp(p, &n6), *af = tf_slurp(q, &nf);
            assert_int_equal(n6, nf);
            assert_memory_equal(a6, af, nf);
            snprintf(p, sizeof p, "%s/checkpoints/step-00000003/adapter/%s", out, files[f]);
            char *a3 = tf_slurp(p, &n3);
            if (f == 0)
                assert_true(n3 != n6 || memcmp(a3, a6, n6) != 0);
            free(a3);
            free(a6);
            free(af);
        }
    }
}

/* Resuming with settings that shape the run changed is refused before the
 * model is built, naming the setting (before: α, λ, K and the step count
 * were taken silently, shifting K and the LR schedule, and a changed rank
 * or target set failed with a tensor-size error); the same settings resume. */
static void test_resume_with_other_settings_is_refused(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out[300], model[300], data[300];
    dt_train_opts o;
    snprintf(out, sizeof out, "%s/resume_check", g_dir);
    tf_opts(&o, out, model, data);
    o.on_progress = tf_stop_at_3;
    assert_int_equal(dt_train(&o, err), DT_ECANCEL);
    const char *const cases[] = {"--alpha", "--lambda", "--start-step", "--rank",
                                 "--target-modules", "--method", "total optimizer steps",
                                 "--batch-size", "--grad-accum"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tf_opts(&o, out, model, data);
        o.resume = 1;
        switch (i) {
        case 0: o.alpha = 16; break;
        case 1: o.lambda = 1.0f; break;
        case 2: o.start_step = 3; break;
        case 3: o.rank = 8; break;
        case 4: o.targets = "q"; break;
        case 5: o.method = DT_LORA; break;
        case 6: o.steps = 9; break;
        case 7: o.batch = 2; break;
        default: o.accum = 2; break;
        }
        int rc = dt_train(&o, err);
        if (rc != DT_EINVAL || !strstr(err, cases[i]) || !strstr(err, "cannot resume"))
            fail_msg("%s: rc %d, %s", cases[i], rc, err);
    }
    tf_opts(&o, out, model, data);
    o.resume = 1;
    if (dt_train(&o, err))
        fail_msg("%s", err);
}

static void test_target_names_map_per_architecture(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    unsigned m;
    assert_int_equal(dt_parse_targets("q_proj, v_proj", DT_ARCH_LLAMA, &m, err), 0);
    assert_int_equal(m, DT_T_Q | DT_T_V);
    assert_int_equal(dt_parse_targets("c_attn", DT_ARCH_GPT2, &m, err), 0);
    assert_int_equal(m, DT_T_CATTN);
    assert_int_equal(dt_parse_targets("gate", DT_ARCH_GPT2, &m, err), DT_EINVAL);
    assert_non_null(strstr(err, "gate"));
    assert_int_equal(dt_parse_targets("c_attn,q", DT_ARCH_GPT2, &m, err), DT_EINVAL);
}

/* tokens_per_second counts real tokens: every token of every row, its
 * masked prompt included, never the padding of a batch. Six rows of 5..10
 * tokens whose first 4 labels are -100, all six in each step (batch 6):
 * each step processes sum(n - 1) = 39 tokens in 6 x 9 = 54 positions, 21 of
 * them with a loss. */
static long g_run_tokens[4], g_trained[4];
static double g_tps[4];
static int record_tokens(void *ud, const dt_progress *p)
{
    (void)ud;
    if (p->step >= 1 && p->step <= 3) {
        g_run_tokens[p->step] = p->run_tokens;
        g_trained[p->step] = p->trained_tokens;
        g_tps[p->step] = p->tokens_per_sec;
    }
    return 0;
}

static void test_tokens_per_second_counts_real_tokens_not_padding(void **s)
{
    (void)s;
    char out[300], model[300], data[300], err[DT_ERR_LEN];
    dt_train_opts o;
    snprintf(out, sizeof out, "%s/out_tps", g_dir);
    tf_opts(&o, out, model, data);
    snprintf(data, 300, "%s/prompts.jsonl", g_dir);
    FILE *f = fopen(data, "w");
    assert_non_null(f);
    long real = 0, trained = 0;
    for (int row = 0; row < 6; row++) {
        int n = 5 + row;
        fputs("{\"input_ids\": [", f);
        for (int i = 0; i < n; i++)
            fprintf(f, i ? ", %d" : "%d", (row * 31 + i * 7) % 96);
        fputs("], \"labels\": [", f);
        for (int i = 0; i < n; i++)
            fprintf(f, i ? ", %d" : "%d", i < 4 ? -100 : (row * 31 + i * 7) % 96);
        fputs("]}\n", f);
        real += n - 1;            /* positions 0..n-2, each predicting the next */
        trained += n - 4;         /* targets 3..n-2 have labels */
    }
    fclose(f);
    o.batch = 6;
    o.steps = 3;
    o.method = DT_LORA;
    o.on_progress = record_tokens;
    if (dt_train(&o, err))
        fail_msg("%s", err);
    printf("  per step: %ld real tokens, %ld trained, 54 positions; after 3 steps "
           "run_tokens %ld, trained_tokens %ld, %.0f tok/s\n", real, trained,
           g_run_tokens[3], g_trained[3], g_tps[3]);
    for (int k = 1; k <= 3; k++) {
        assert_int_equal(g_run_tokens[k], k * real);
        assert_int_equal(g_trained[k], k * trained);
        assert_true(g_tps[k] > 0);
    }
}

/* The BLAS kernel rule deltatune train and deltatune-worker share: SkylakeX
 * only on an AVX-512 CPU where OpenBLAS chose its AVX2 (Haswell, Zen)
 * kernels; any other choice is kept. */
static void test_blas_kernel_rule(void **s)
{
    (void)s;
    assert_string_equal(dt_cpu_tune_target("Haswell", 1), "SkylakeX");
    assert_string_equal(dt_cpu_tune_target("ZEN", 1), "SkylakeX");
    assert_null(dt_cpu_tune_target("Haswell", 0));
    assert_null(dt_cpu_tune_target("Zen", 0));
    assert_null(dt_cpu_tune_target("Cooperlake", 1));
    assert_null(dt_cpu_tune_target("SkylakeX", 1));
    assert_null(dt_cpu_tune_target(NULL, 1));
}

/* The memory estimate in bf16 (dt_mem_estimate_job_prec): lora and
 * delta_lora count the frozen linear weights (GPT-2 small's 4·C² + 2·C·F
 * per layer) and the embedding table (V·C, the tied head is the same table)
 * at 2 bytes, delta_lora drops its concatenated factors (the low-rank
 * form), full is unchanged (fp32 masters), and bf16 = 0 is
 * dt_mem_estimate_job. An untied head (GPT-2's shape, untied) is a second
 * V·C at 2 bytes. */
static void test_estimate_counts_bf16_weights_at_two_bytes(void **s)
{
    (void)s;
    dt_mem_model g = {0, 12, 768, 12, 12, 64, 3072, 50257, 1024, 1, 0};
    const long long C = 768, F = 3072, L = 12, V = 50257;
    const long long lin = L * (4 * C * C + 2 * C * F) + V * C;
    char err0[DT_ERR_LEN];
    dt_mem_model gu = g;
    gu.tied = 0;
    dt_mem_job ju = {1, 8, "c_attn", 4, 256, 0, 0, 1, 1, 0, 0, 0};
    dt_mem_estimate u32, u16;
    assert_int_equal(dt_mem_estimate_job_prec(&gu, &ju, 0, &u32, err0), 0);
    assert_int_equal(dt_mem_estimate_job_prec(&gu, &ju, 1, &u16, err0), 0);
    assert_true(u32.weights - u16.weights == 2 * (lin + V * C));
    char err[DT_ERR_LEN];
    for (int method = 0; method < 3; method++) {
        for (int cuda = 0; cuda < 2; cuda++) {
            dt_mem_job j = {method, 8, "c_attn", 4, 256, 0, 0, cuda, 1, 0, 0, 0};
            dt_mem_estimate a, a0, b;
            assert_int_equal(dt_mem_estimate_job(&g, &j, &a, err), 0);
            assert_int_equal(dt_mem_estimate_job_prec(&g, &j, 0, &a0, err), 0);
            assert_int_equal(dt_mem_estimate_job_prec(&g, &j, 1, &b, err), 0);
            assert_true(a.total == a0.total && a.weights == a0.weights);
            if (method == 0) {
                assert_true(b.weights == a.weights && b.total == a.total);
                continue;
            }
            /* 4 bytes -> 2 bytes per linear weight and table element */
            assert_true(a.weights - b.weights == 2 * lin);
            if (method == 2) /* catA (2r, in) and catB (rows, 2r) are gone;
                              * A_K (r, in) and B_K (rows, r) stay */
                assert_true(a.trainable - b.trainable == 4 * L * 2 * 8 * (C + 3 * C));
            else
                assert_true(a.trainable == b.trainable);
            assert_true(b.total < a.total);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_estimate_counts_bf16_weights_at_two_bytes),
        cmocka_unit_test(test_interrupted_and_resumed_run_is_byte_identical),
        cmocka_unit_test(test_resumed_run_with_dropout_is_byte_identical),
        cmocka_unit_test(test_lora_run_writes_a_peft_adapter),
        cmocka_unit_test(test_bad_data_fails_before_any_step),
        cmocka_unit_test(test_grad_accumulation_matches_one_big_batch),
        cmocka_unit_test(test_delta_lora_moves_w_by_the_factor_delta_after_k),
        cmocka_unit_test(test_lora_never_moves_w),
        cmocka_unit_test(test_lr_schedules_follow_hugging_face),
        cmocka_unit_test(test_target_names_map_per_architecture),
        cmocka_unit_test(test_total_steps_past_int_max_do_not_wrap),
        cmocka_unit_test(test_stop_between_micro_batches_drops_the_step),
        cmocka_unit_test(test_checkpoint_retention_keeps_the_last_n_states),
        cmocka_unit_test(test_checkpoints_hold_their_adapter),
        cmocka_unit_test(test_resume_with_other_settings_is_refused),
        cmocka_unit_test(test_tokens_per_second_counts_real_tokens_not_padding),
        cmocka_unit_test(test_blas_kernel_rule),
    };
    return cmocka_run_group_tests(tests, tf_setup, tf_teardown);
}
