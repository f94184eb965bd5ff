/* test_dropout.c: the training regularisers of issue 18's "faithful to the
 * paper's setting", on the CPU backend (test_gpu_ops / test_gpu_train hold
 * the same checks CPU against CUDA, under the emulator in CI):
 *   - the dropout mask: keep rate within 5 sigma of 1 - p, kept values
 *     scaled by exactly 1/(1 - p), a pure function of (key, element);
 *   - the attention-dropout mask is the documented one (backend.h), and
 *     dropout is off in evaluation mode;
 *   - forward/backward with dropout (embedding, attention, residual, LoRA
 *     branch) and label smoothing: the analytic gradient equals central
 *     finite differences of the loss with the masks held fixed;
 *   - label smoothing against PyTorch (tests/reference/
 *     make_smoothing_fixture.py);
 *   - full fine-tuning's weight decay rule (Hugging Face Trainer's);
 *   - bad settings are refused naming the flag or config key.
 * Statistics stand in for a same-mask PyTorch comparison: torch's dropout is
 * x * bernoulli(1 - p) / (1 - p), so what must hold is the keep rate, the
 * scale and that the mask is independent per element. About 5 s of CPU
 * (about 20 s of wall time on this shared 2-core machine). */
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
#include "gpu/backend.h"
#include "gpu/dt_math.h"
#include "gpu/model.h"
#include "gpu/train.h"

#define REF "tests/fixtures/ref"

static dt_backend *be;

/* ---- the mask ----------------------------------------------------------- */

static void test_mask_keep_rate_and_scale(void **s)
{
    (void)s;
    const long n = 1000000;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y),
          *z = malloc(n * sizeof *z);
    assert_non_null(x);
    assert_non_null(y);
    assert_non_null(z);
    const float ps[] = {0.1f, 0.5f, 0.9f};
    for (int k = 0; k < 3; k++) {
        float p = ps[k];
        for (long i = 0; i < n; i++)
            x[i] = 1.0f + (float)(i % 7);
        be->i.dropout(be, y, x, n, p, dt_drop_key(42, 3, 0, 1, DT_DROP_ATTN), 0);
        be->i.dropout(be, z, x, n, p, dt_drop_key(42, 4, 0, 1, DT_DROP_ATTN), 0);
        long kept = 0, same = 0;
        double sum = 0, ref = 0;
        for (long i = 0; i < n; i++) {
            if (y[i] != 0.0f) {
                kept++;
                /* torch: x * mask * (1 / (1 - p)) */
                assert_true(y[i] == x[i] * (1.0f / (1.0f - p)));
            }
            same += (y[i] != 0.0f) == (z[i] != 0.0f);
            sum += y[i];
            ref += x[i];
        }
        double q = 1.0 - p, sd = sqrt(p * q / n);
        double rate = (double)kept / n;
        printf("  p=%.1f keep rate %.5f (expected %.5f +- %.5f), E[y]/x %.5f\n", p,
               rate, q, 5 * sd, sum / ref);
        assert_true(fabs(rate - q) < 5 * sd);
        /* another step's mask is independent: agreement p^2 + q^2 */
        double agree = (double)same / n, pa = p * p + q * q;
        assert_true(fabs(agree - pa) < 5 * sqrt(pa * (1 - pa) / n));
        /* unbiased: E[dropout(x)] = x (within 5 sigma of the sum) */
        assert_true(fabs(sum / ref - 1.0) < 5 * sqrt(p / q / n) * 2);
        /* a pure function of (key, element): the same call, the same bits;
         * in place and accumulated forms agree with it */
        be->i.dropout(be, z, x, n, p, dt_drop_key(42, 3, 0, 1, DT_DROP_ATTN), 0);
        assert_memory_equal(y, z, n * sizeof *y);
        for (long i = 0; i < n; i++)
            z[i] = 0.5f;
        be->i.dropout(be, z, x, n, p, dt_drop_key(42, 3, 0, 1, DT_DROP_ATTN), 1);
        for (long i = 0; i < n; i += 997)
            assert_true(z[i] == 0.5f + y[i]);
        be->i.dropout(be, x, x, n, p, dt_drop_key(42, 3, 0, 1, DT_DROP_ATTN), 0);
        assert_memory_equal(x, y, n * sizeof *y);
    }
    /* every part of the key matters */
    uint64_t k0 = dt_drop_key(1, 2, 3, 4, 5);
    assert_true(k0 != dt_drop_key(2, 2, 3, 4, 5) && k0 != dt_drop_key(1, 3, 3, 4, 5) &&
                k0 != dt_drop_key(1, 2, 4, 4, 5) && k0 != dt_drop_key(1, 2, 3, 5, 5) &&
                k0 != dt_drop_key(1, 2, 3, 4, 6));
    free(x);
    free(y);
    free(z);
}

/* q = k = 0 makes P uniform over the causal prefix (1/(i+1)) and v = the
 * identity (D = T) copies P∘Z into the output: out[b,i,h,j] is
 * 1/((i+1)(1-p)) exactly where dt_drop_keep(key, ((b*NH+h)*T+i)*T+j) keeps,
 * 0 elsewhere. */
static void test_attention_dropout_mask_is_the_documented_one(void **s)
{
    (void)s;
    int B = 2, T = 48, NH = 4, D = 48;
    float p = 0.3f;
    uint64_t key = dt_drop_key(9, 1, 0, 0, DT_DROP_ATTN);
    long nq = (long)B * T * NH * D;
    float *q = calloc(nq, sizeof *q), *v = calloc(nq, sizeof *v),
          *out = malloc(nq * sizeof *out), *lse = malloc((long)B * NH * T * sizeof *lse);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                v[(((long)b * T + t) * NH + h) * D + t] = 1.0f;
    be->i.attention_fwd_drop(be, out, lse, q, q, v, B, T, NH, NH, D, p, key);
    uint32_t thr = dt_drop_thresh(p);
    long kept = 0, total = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++)
                for (int j = 0; j <= i; j++) {
                    float o = out[(((long)b * T + i) * NH + h) * D + j];
                    uint64_t e = (((uint64_t)b * NH + h) * T + i) * T + j;
                    int keep = dt_drop_keep(key, e, thr);
                    float want = keep ? (1.0f / (i + 1)) / (1.0f - p) : 0.0f;
                    assert_true(fabsf(o - want) <= 1e-6f * (1.0f + want));
                    kept += keep;
                    total++;
                }
    double rate = (double)kept / total, sd = sqrt(p * (1 - p) / total);
    printf("  attention keep rate %.4f over %ld probabilities (expected %.4f +- %.4f)\n",
           rate, total, 1 - p, 5 * sd);
    assert_true(fabs(rate - (1 - p)) < 5 * sd);
    free(q);
    free(v);
    free(out);
    free(lse);
}

/* ---- the model: gradient check ------------------------------------------ */

typedef struct gcase {
    const char *dir;
    dt_method method;
    const char *targets;
    dt_dropouts drop;
    float smoothing;
} gcase;

/* Mean loss of a training-mode forward pass (masks keyed on step 5, micro
 * 1), in double from the per-token losses. */
static double loss_at(dt_model *m, const int32_t *ids, const int32_t *tgt, int B,
                      int T)
{
    char err[DT_ERR_LEN];
    double ls;
    long nt;
    dt_model_train_mode(m, 11, 5, 1);
    if (dt_model_forward(m, ids, tgt, B, T, 0.0f, &ls, &nt, err))
        fail_msg("%s", err);
    return ls / nt;
}

/* The directional derivative of the loss along the normalized gradient of
 * every trainable tensor, by central differences with the masks held fixed,
 * against the gradient's norm from the backward pass. Also: the dropout
 * changed the loss (it is not vacuous) and evaluation mode has none. */
static void gradcheck(const gcase *c)
{
    char err[DT_ERR_LEN], path[256];
    dt_weights w;
    snprintf(path, sizeof path, REF "/%s", c->dir);
    if (dt_weights_load(path, &w, err))
        fail_msg("%s", err);
    dt_lora_opts lo = {c->method, 0, 0, 0, DT_PREC_FP32, 0, 0.0f, 0};
    if (c->method != DT_FULL) {
        lo.rank = 4;
        lo.alpha = 8;
        assert_int_equal(dt_parse_targets(c->targets, w.cfg.arch, &lo.targets, err), 0);
    }
    int B = 2, T = 12, V = w.cfg.vocab;
    dt_model *m;
    if (dt_model_new(be, &w, &lo, B, T, 3, &m, err))
        fail_msg("%s", err);
    int np;
    dt_param *ps = dt_model_params(m, &np);
    /* LoRA's B starts at 0 (no gradient for A): make it nonzero */
    for (int i = 0; i < np; i++)
        if (strstr(ps[i].name, "lora.") && ps[i].name[strlen(ps[i].name) - 1] == 'B')
            for (long j = 0; j < ps[i].n; j++)
                ps[i].p[j] = 0.1f * (float)sin(1.7 * j + i);
    int32_t ids[24], tgt[24];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (i * 37 + 11) % V;
        tgt[i] = i % T == T - 1 || i % 5 == 2 ? -100 : (i * 53 + 5) % V;
    }
    /* no dropout: the reference loss */
    double l_plain = loss_at(m, ids, tgt, B, T);
    if (dt_model_set_dropout(m, &c->drop, err))
        fail_msg("%s", err);
    dt_model_set_label_smoothing(m, c->smoothing);
    double l0 = loss_at(m, ids, tgt, B, T);
    dt_model_eval_mode(m);
    double ls;
    long nt;
    assert_int_equal(dt_model_forward(m, ids, tgt, B, T, 0.0f, &ls, &nt, err), 0);
    assert_true(ls / nt == l_plain); /* evaluation: no dropout, no smoothing */
    assert_true(fabs(l0 - l_plain) > 1e-4); /* training: they act */

    /* analytic gradient */
    dt_model_zero_grad(m);
    dt_model_train_mode(m, 11, 5, 1);
    assert_int_equal(dt_model_forward(m, ids, tgt, B, T, 1.0f / nt, &ls, &nt, err), 0);
    assert_int_equal(dt_model_backward(m, err), 0);
    assert_true(fabs(ls / nt - l0) < 1e-12);
    /* per trainable tensor i: L(θ ± h·g_i/|g_i|) moving only tensor i, so a
     * wrong gradient of a small tensor is not hidden by a large one */
    double h = 1e-2, worst = 0, gall = 0;
    int checked = 0;
    float *save = NULL;
    for (int i = 0; i < np; i++) {
        double gn2 = 0;
        for (long j = 0; j < ps[i].n; j++)
            gn2 += (double)ps[i].g[j] * ps[i].g[j];
        double gn = sqrt(gn2);
        gall += gn2;
        if (gn < 2e-3)
            continue; /* finite differences cannot resolve it in fp32 */
        save = realloc(save, ps[i].n * sizeof(float));
        memcpy(save, ps[i].p, ps[i].n * sizeof(float));
        /* central differences at h and h/2, Richardson-extrapolated: the
         * O(h^2) truncation cancels (the LoRA cases are curved along A) */
        double l[4];
        for (int k = 0; k < 4; k++) {
            double step = (k & 1 ? -1.0 : 1.0) * (k < 2 ? h : h / 2);
            for (long j = 0; j < ps[i].n; j++)
                ps[i].p[j] = save[j] + (float)(step * ps[i].g[j] / gn);
            l[k] = loss_at(m, ids, tgt, B, T);
        }
        memcpy(ps[i].p, save, ps[i].n * sizeof(float));
        double d1 = (l[0] - l[1]) / (2 * h), d2 = (l[2] - l[3]) / h;
        double fd = (4 * d2 - d1) / 3, e = fabs(fd - gn) / gn;
        worst = e > worst ? e : worst;
        checked++;
        /* fp32 loss noise (~3e-7) over h bounds what can be resolved */
        if (!(e < 2e-3 + 1e-4 / gn))
            fail_msg("%s: %s: |g| %.6f but finite differences %.6f (rel %.1e)", c->dir,
                     ps[i].name, gn, fd, e);
    }
    free(save);
    printf("  %-12s %-10s %d of %d tensors checked, worst rel err %.1e (|g| %.4f; "
           "loss %.5f, without dropout %.5f)\n", c->dir,
           c->method == DT_FULL ? "full" : c->method == DT_LORA ? "lora" : "delta_lora",
           checked, np, worst, sqrt(gall), l0, l_plain);
    assert_true(checked >= np / 3);
    dt_model_free(m);
    dt_weights_free(&w);
}

static void test_gpt2_full_gradient_with_dropout_and_smoothing(void **s)
{
    (void)s;
    gcase c = {"gpt2_model", DT_FULL, "", {0.1f, 0.1f, 0.1f, 0.0f}, 0.1f};
    gradcheck(&c);
}

static void test_gpt2_lora_gradient_with_lora_and_model_dropout(void **s)
{
    (void)s;
    gcase c = {"gpt2_model", DT_LORA, "q,v,o,up,down", {0.1f, 0.2f, 0.3f, 0.3f}, 0.0f};
    gradcheck(&c);
}

static void test_gpt2_delta_lora_gradient_with_model_dropout(void **s)
{
    (void)s;
    gcase c = {"gpt2_model", DT_DELTA_LORA, "c_attn", {0.2f, 0.2f, 0.2f, 0.0f}, 0.2f};
    gradcheck(&c);
}

static void test_llama_lora_gradient_with_attention_and_lora_dropout(void **s)
{
    (void)s;
    gcase c = {"llama_model", DT_LORA, "q,k,v,o,gate,up,down", {0, 0, 0.25f, 0.2f}, 0.1f};
    gradcheck(&c);
}

/* ---- label smoothing against PyTorch ------------------------------------ */

static void test_label_smoothing_matches_pytorch(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], name[32];
    dt_tensorset ts;
    if (dt_safetensors_load(REF "/label_smoothing/expected.safetensors", &ts, err))
        fail_msg("%s", err);
    dt_tensor *lg = dt_tensorset_find(&ts, "logits"), *tg = dt_tensorset_find(&ts, "targets");
    assert_non_null(lg);
    assert_non_null(tg);
    int N = (int)lg->shape[0], V = (int)lg->shape[1];
    int32_t *t = malloc(N * sizeof *t);
    long ntok = 0;
    for (int i = 0; i < N; i++) {
        t[i] = (int32_t)tg->data[i];
        ntok += t[i] != -100;
    }
    const float eps[] = {0.1f, 0.3f};
    float *x = malloc((size_t)N * V * sizeof *x), *loss = malloc(N * sizeof *loss);
    for (int k = 0; k < 2; k++) {
        memcpy(x, lg->data, (size_t)N * V * sizeof *x);
        be->i.cross_entropy_smooth(be, x, loss, t, N, V, 1.0f / ntok, eps[k]);
        snprintf(name, sizeof name, "loss.%g", eps[k]);
        dt_tensor *el = dt_tensorset_find(&ts, name);
        snprintf(name, sizeof name, "grad.%g", eps[k]);
        dt_tensor *eg = dt_tensorset_find(&ts, name);
        assert_non_null(el);
        assert_non_null(eg);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            double e = fabs(loss[i] - el->data[i]) / (1 + fabs(el->data[i]));
            worst = e > worst ? e : worst;
        }
        double gw = 0;
        for (long i = 0; i < (long)N * V; i++) {
            double e = fabs(x[i] - eg->data[i]);
            gw = e > gw ? e : gw;
        }
        printf("  eps %.1f: per-row loss worst rel err %.1e, gradient worst abs err %.1e\n",
               eps[k], worst, gw);
        assert_true(worst < 1e-5);
        assert_true(gw < 1e-6);
    }
    /* eps = 0 is the plain cross-entropy op */
    float *y = malloc((size_t)N * V * sizeof *y), *l2 = malloc(N * sizeof *l2);
    memcpy(x, lg->data, (size_t)N * V * sizeof *x);
    memcpy(y, lg->data, (size_t)N * V * sizeof *y);
    be->i.cross_entropy_smooth(be, x, loss, t, N, V, 0.5f, 0.0f);
    be->i.cross_entropy(be, y, l2, t, N, V, 0.5f);
    for (long i = 0; i < (long)N * V; i++)
        assert_true(fabsf(x[i] - y[i]) < 1e-7f);
    for (int i = 0; i < N; i++)
        assert_true(fabsf(loss[i] - l2[i]) < 1e-5f);
    free(y);
    free(l2);
    free(x);
    free(loss);
    free(t);
    dt_tensorset_free(&ts);
}

/* ---- weight decay ------------------------------------------------------- */

/* transformers' Trainer.get_decay_parameter_names on GPT-2 and Llama, in
 * our canonical names (tests/reference/make_fixtures.py uses it for the
 * full fixtures). */
static void test_weight_decay_follows_hugging_face_trainer(void **s)
{
    (void)s;
    static const struct { const char *name; int decays; } tab[] = {
        {"wte.weight", 1}, {"wpe.weight", 1}, {"lm_head.weight", 1},
        {"embed_tokens.weight", 1},
        {"h.0.attn.c_attn.weight", 1}, {"h.0.attn.c_attn.bias", 0},
        {"h.11.mlp.c_proj.weight", 1}, {"h.11.mlp.c_proj.bias", 0},
        {"h.0.ln_1.weight", 0}, {"h.0.ln_1.bias", 0}, {"h.3.ln_2.weight", 0},
        {"ln_f.weight", 0}, {"ln_f.bias", 0},
        {"layers.0.input_layernorm.weight", 0},
        {"layers.0.post_attention_layernorm.weight", 0}, {"norm.weight", 0},
        {"layers.0.self_attn.q_proj.weight", 1}, {"layers.0.self_attn.q_proj.bias", 0},
        {"layers.1.mlp.down_proj.weight", 1},
        {"lora.0.q.A", 1}, {"lora.0.q.B", 1},
        /* lookalikes that are decayed: the rule matches whole components */
        {"h.0.attn.normal.weight", 1}, {"layers.0.enormous.weight", 1},
        {"h.0.mlp.ln_fc.weight", 1},
    };
    for (size_t i = 0; i < sizeof tab / sizeof *tab; i++) {
        if (dt_param_decays(tab[i].name) != tab[i].decays)
            fail_msg("%s: decays %d, Hugging Face's Trainer says %d", tab[i].name,
                     dt_param_decays(tab[i].name), tab[i].decays);
    }
}

/* ---- refused settings ---------------------------------------------------- */

static void expect_refused(dt_train_opts *o, const char *what)
{
    char err[DT_ERR_LEN] = "";
    assert_int_equal(dt_train(o, err), DT_EINVAL);
    if (!strstr(err, what))
        fail_msg("error \"%s\" does not name %s", err, what);
}

static void test_bad_settings_are_refused_by_name(void **s)
{
    (void)s;
    dt_train_opts o;
    dt_train_defaults(&o);
    o.model = "/nonexistent";
    o.data = "/nonexistent";
    o.out = "/tmp/dt-dropout-never-written";
    o.method = DT_DELTA_LORA;
    o.lora_dropout = 0.1f;
    expect_refused(&o, "--lora-dropout");
    expect_refused(&o, "delta_lora");
    o.method = DT_FULL;
    expect_refused(&o, "--lora-dropout");
    o.method = DT_LORA;
    o.lora_dropout = 1.0f;
    expect_refused(&o, "--lora-dropout");
    o.lora_dropout = 0.0f;
    o.model_dropout = 1.5f;
    expect_refused(&o, "--model-dropout");
    o.model_dropout = -1.0f;
    o.label_smoothing = -0.1f;
    expect_refused(&o, "--label-smoothing");
    o.label_smoothing = NAN;
    expect_refused(&o, "--label-smoothing");
}

/* A config.json dropout outside [0, 1) is refused naming the key; a GPT-2
 * config without the keys gets transformers' 0.1. */
static void test_config_dropout_is_read_and_checked(void **s)
{
    (void)s;
    char dir[] = "/tmp/dt_dropcfg_XXXXXX", p[300], a[1400], cwd[1024], err[DT_ERR_LEN];
    assert_non_null(mkdtemp(dir));
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(a, sizeof a, "%s/" REF "/gpt2_model/model.safetensors", cwd);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(symlink(a, p), 0);
    char *cfg;
    snprintf(a, sizeof a, REF "/gpt2_model/config.json");
    assert_int_equal(dt_read_file(a, &cfg, NULL, err), 0);
    /* without the three keys */
    char *c2 = strdup(cfg);
    const char *keys[] = {"\"attn_pdrop\"", "\"embd_pdrop\"", "\"resid_pdrop\""};
    for (int k = 0; k < 3; k++) {
        char *q = strstr(c2, keys[k]);
        assert_non_null(q);
        memcpy(q + 1, "unused_", 7); /* same length: "unused_drop" */
    }
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fputs(c2, f);
    fclose(f);
    dt_weights w;
    if (dt_weights_load(dir, &w, err))
        fail_msg("%s", err);
    assert_true(w.cfg.resid_pdrop == 0.1f && w.cfg.embd_pdrop == 0.1f &&
                w.cfg.attn_pdrop == 0.1f);
    dt_weights_free(&w);
    /* out of range */
    char *q = strstr(cfg, "\"resid_pdrop\": 0.0");
    assert_non_null(q);
    q[strlen("\"resid_pdrop\": ")] = '1';
    f = fopen(p, "w");
    fputs(cfg, f);
    fclose(f);
    assert_int_equal(dt_weights_load(dir, &w, err), DT_EFORMAT);
    assert_non_null(strstr(err, "resid_pdrop"));
    free(cfg);
    free(c2);
    snprintf(a, sizeof a, "rm -rf %s", dir);
    assert_int_equal(system(a), 0);
}

int main(void)
{
    char err[DT_ERR_LEN];
    be = dt_backend_cpu_new(2, err);
    if (!be) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mask_keep_rate_and_scale),
        cmocka_unit_test(test_attention_dropout_mask_is_the_documented_one),
        cmocka_unit_test(test_gpt2_full_gradient_with_dropout_and_smoothing),
        cmocka_unit_test(test_gpt2_lora_gradient_with_lora_and_model_dropout),
        cmocka_unit_test(test_gpt2_delta_lora_gradient_with_model_dropout),
        cmocka_unit_test(test_llama_lora_gradient_with_attention_and_lora_dropout),
        cmocka_unit_test(test_label_smoothing_matches_pytorch),
        cmocka_unit_test(test_weight_decay_follows_hugging_face_trainer),
        cmocka_unit_test(test_bad_settings_are_refused_by_name),
        cmocka_unit_test(test_config_dropout_is_read_and_checked),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dt_backend_free(be);
    return rc;
}
