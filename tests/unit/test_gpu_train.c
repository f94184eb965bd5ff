/* test_gpu_train.c: 10 optimizer steps of every method on the tiny GPT-2
 * and Llama reference models, on the CUDA backend and on the CPU backend,
 * from the same initial factors. They must agree on:
 *   - every step's loss (relative error < 1e-4);
 *   - every trainable tensor's first gradient (normalized error < 1e-3);
 *   - every trained or Delta-moved tensor after the steps (normalized error
 *     < 1e-3), leaving out the elements whose gradient is zero in exact
 *     arithmetic. Those are ill-conditioned: GPT-2's key bias (the middle
 *     third of c_attn.bias) gets no gradient (softmax is invariant to a
 *     shift of every score of a row), so its first gradient is rounding
 *     noise of about 1e-9 and AdamW, which ignores a gradient's scale, moves
 *     it by about lr per step in a direction that noise picks. They are
 *     found from the CPU's first gradient (|g| <= 1e-5 of the tensor's
 *     largest) and bounded separately: they may move at most what AdamW
 *     allows in 10 steps, on either backend.
 * Skips, saying so, where there is no CUDA device (fails instead when
 * DT_REQUIRE_GPU=1, as `make check-gpu` and `make test-cuda-emu` set).
 *
 * The tolerances are proven by a self-test: DT_GPU_SELFTEST=perturbed
 * (gpu_seat.h) puts in the CUDA seat a CPU backend whose GEMMs add their K halves in the
 * other order and add 1e-6 relative noise to every output, which every case
 * must pass (a real GPU differs from the CPU by about that much);
 * DT_GPU_SELFTEST=1 puts a plain 1-thread CPU backend there. The
 * planted bugs of tests/cuda-emu/mutate must fail. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "gpu/backend.h"
#include "base/dt.h"
#include "gpu/model.h"
#include "gpu/train.h"
#include "gpu_seat.h"

#define REF "tests/fixtures/ref"
#define STEPS 10
#define LR 1e-2f
#define WD 0.01f
#define ZERO_GRAD 1e-5 /* |g| <= this x max|g| of the tensor: no gradient */

static double nerr(const float *a, const float *b, long n)
{
    double d = 0, r = 0;
    for (long i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i]))
            return INFINITY;
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

typedef struct run {
    dt_backend *be;
    dt_model *m;
    dt_optim opt;
    double loss[STEPS];
    float **g1; /* per trainable tensor: its gradient at step 1 (host) */
    int np;
} run;


/* Dropout and label smoothing of the *_with_dropout cases (0: none). */
static dt_dropouts g_drop;
static float g_smooth;
/* --precision of the *_bf16 cases, and their tolerances' factor: the CPU
 * backend rounds the same operands to bf16 as the CUDA path, but an fp32
 * difference of summation order upstream can flip one rounding (2^-9
 * relative), so those cases allow 10x the fp32 ones. */
static dt_precision g_prec = DT_PREC_FP32;
static double g_tol = 1.0;
/* The final tensors' factor (default g_tol): see the GPT-2 delta_lora bf16
 * case. */
static double g_tol_final = 0.0;

static void run_steps(run *R, dt_weights *w, const dt_lora_opts *lo,
                      const dt_tensorset *init, const int32_t *ids,
                      const int32_t *tgt, int B, int T)
{
    char err[DT_ERR_LEN];
    if (dt_model_new(R->be, w, lo, B, T, 1, &R->m, err))
        fail_msg("%s: %s", R->be->i.name, err);
    for (int i = 0; i < init->n; i++) {
        float *dev;
        long n;
        assert_int_equal(dt_model_get_weight(R->m, init->t[i].name, &dev, &n), 0);
        R->be->i.upload(R->be, dev, init->t[i].data, (size_t)n * sizeof(float));
    }
    if (dt_model_set_dropout(R->m, &g_drop, err))
        fail_msg("%s: %s", R->be->i.name, err);
    dt_model_set_label_smoothing(R->m, g_smooth);
    dt_optim_defaults(&R->opt);
    R->opt.lr = LR;
    R->opt.weight_decay = WD;
    R->opt.start_step = 2;
    long ntok = 0;
    for (int i = 0; i < B * T; i++)
        ntok += tgt[i] != -100;
    for (int s = 0; s < STEPS; s++) {
        double ls;
        long nt;
        dt_model_zero_grad(R->m);
        dt_model_train_mode(R->m, 7, s, 0); /* dropout's masks, if any */
        if (dt_model_forward(R->m, ids, tgt, B, T, 1.0f / ntok, &ls, &nt, err) ||
            dt_model_backward(R->m, err))
            fail_msg("%s step %d: %s", R->be->i.name, s + 1, err);
        if (s == 0) {
            dt_param *ps = dt_model_params(R->m, &R->np);
            R->g1 = calloc((size_t)R->np, sizeof *R->g1);
            for (int i = 0; i < R->np; i++) {
                R->g1[i] = malloc((size_t)ps[i].n * sizeof(float));
                R->be->i.download(R->be, R->g1[i], ps[i].g, (size_t)ps[i].n * sizeof(float));
            }
            assert_int_equal(R->be->i.sync(R->be, err), 0);
        }
        if (dt_optim_step(R->m, &R->opt, lo->method, R->opt.lr, NULL, err))
            fail_msg("%s step %d: %s", R->be->i.name, s + 1, err);
        R->loss[s] = ls / nt;
    }
}

static void run_free(run *R)
{
    for (int i = 0; i < R->np; i++)
        free(R->g1[i]);
    free(R->g1);
    dt_model_free(R->m);
    dt_backend_free(R->be);
}

/* The CPU's first gradient of the trainable tensor called name, or NULL. */
static const float *first_grad(const run *R, const char *name, long *n)
{
    int np;
    dt_param *ps = dt_model_params(R->m, &np);
    for (int i = 0; i < np; i++)
        if (!strcmp(ps[i].name, name)) {
            *n = ps[i].n;
            return R->g1[i];
        }
    return NULL;
}

/* Normalized error of a against b over the elements where mask is 0. */
static double nerr_masked(const float *a, const float *b, const unsigned char *mask, long n)
{
    double d = 0, r = 0;
    for (long i = 0; i < n; i++) {
        if (mask && mask[i])
            continue;
        if (!isfinite(a[i]) || !isfinite(b[i]))
            return INFINITY;
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

static void compare_case(const char *arch_dir, dt_method method, const char *targets,
                         const char *init_case)
{
    char err[DT_ERR_LEN], path[256];
    /* The CUDA device, or a CPU stand-in under DT_GPU_SELFTEST (gpu_seat.h). */
    dt_backend *cuda = gpu_seat_backend(err);
    if (!cuda) {
        if (getenv("DT_REQUIRE_GPU") && atoi(getenv("DT_REQUIRE_GPU")))
            fail_msg("DT_REQUIRE_GPU=1 but %s", err);
        printf("test_gpu_train: SKIPPED: no CUDA device (%s)\n", err);
        skip();
    }
    dt_weights w;
    snprintf(path, sizeof path, REF "/%s", arch_dir);
    if (dt_weights_load(path, &w, err))
        fail_msg("%s", err);
    dt_lora_opts lo = {method, 0, 0, 0, g_prec, 0, 0.0f, 0};
    dt_tensorset init;
    dt_tensorset_init(&init);
    if (method != DT_FULL) {
        lo.rank = 4;
        lo.alpha = 8;
        assert_int_equal(dt_parse_targets(targets, w.cfg.arch, &lo.targets, err), 0);
        snprintf(path, sizeof path, REF "/%s/init.safetensors", init_case);
        assert_int_equal(dt_safetensors_load(path, &init, err), 0);
    }
    int B = 2, T = 16, V = w.cfg.vocab;
    int32_t ids[32], tgt[32];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (i * 37 + 11) % V;
        tgt[i] = i % T == T - 1 || i % 7 == 3 ? -100 : (i * 53 + 5) % V;
    }
    run cpu, gpu;
    memset(&cpu, 0, sizeof cpu);
    memset(&gpu, 0, sizeof gpu);
    cpu.be = dt_backend_cpu_new(0, err);
    gpu.be = cuda;
    run_steps(&cpu, &w, &lo, &init, ids, tgt, B, T);
    run_steps(&gpu, &w, &lo, &init, ids, tgt, B, T);
    for (int s = 0; s < STEPS; s++) {
        double e = fabs(gpu.loss[s] - cpu.loss[s]) / fabs(cpu.loss[s]);
        printf("  %-12s %-10s step %2d loss cpu %.6f cuda %.6f rel %.1e\n", arch_dir,
               method == DT_FULL ? "full" : method == DT_LORA ? "lora" : "delta_lora",
               s + 1, cpu.loss[s], gpu.loss[s], e);
        assert_true(e < 1e-4 * g_tol);
    }
    /* the first gradients of every trainable tensor */
    int np;
    dt_param *ps = dt_model_params(cpu.m, &np);
    assert_int_equal(np, gpu.np);
    double worst_g = 0;
    for (int i = 0; i < np; i++) {
        double e = nerr(gpu.g1[i], cpu.g1[i], ps[i].n);
        worst_g = e > worst_g ? e : worst_g;
        if (e >= 1e-3 * g_tol)
            printf("  %s: %s first gradient err %.2e\n", arch_dir, ps[i].name, e);
        assert_true(e < 1e-3 * g_tol);
    }
    /* every trainable tensor, and every weight (Delta-LoRA moves W), after
     * the steps; zero-gradient elements bounded apart, against their initial
     * values (the model freed its host copies: load them again) */
    dt_weights w0s;
    snprintf(path, sizeof path, REF "/%s", arch_dir);
    if (dt_weights_load(path, &w0s, err))
        fail_msg("%s", err);
    double worst = 0, bound = 1.05 * STEPS * LR + 1e-6; /* AdamW's step <= lr (+ decay) */
    long left_out = 0;
    for (int i = 0; i < w.ts.n + np; i++) {
        const char *name = i < w.ts.n ? w.ts.t[i].name : ps[i - w.ts.n].name;
        float *dc, *dg;
        long nc, ng, n1 = 0;
        if (dt_model_get_weight(cpu.m, name, &dc, &nc))
            continue; /* e.g. a tied lm_head */
        assert_int_equal(dt_model_get_weight(gpu.m, name, &dg, &ng), 0);
        assert_int_equal(nc, ng);
        float *hc = malloc((size_t)nc * sizeof(float)), *hg = malloc((size_t)nc * sizeof(float));
        cpu.be->i.download(cpu.be, hc, dc, (size_t)nc * sizeof(float));
        gpu.be->i.download(gpu.be, hg, dg, (size_t)nc * sizeof(float));
        assert_int_equal(gpu.be->i.sync(gpu.be, err), 0);
        unsigned char *mask = NULL;
        const float *g1 = first_grad(&cpu, name, &n1);
        const float *w0 = NULL;
        for (int j = 0; j < w0s.ts.n && !w0; j++)
            if (!strcmp(w0s.ts.t[j].name, name) && w0s.ts.t[j].numel == nc)
                w0 = w0s.ts.t[j].data;
        for (int j = 0; j < init.n && !w0; j++)
            if (!strcmp(init.t[j].name, name) && init.t[j].numel == nc)
                w0 = init.t[j].data;
        if (g1 && n1 == nc) {
            double gmax = 0;
            for (long k = 0; k < nc; k++)
                gmax = fabs(g1[k]) > gmax ? fabs(g1[k]) : gmax;
            mask = calloc((size_t)nc, 1);
            for (long k = 0; k < nc; k++) {
                if (!(fabs(g1[k]) <= ZERO_GRAD * gmax))
                    continue;
                mask[k] = 1;
                left_out++;
                if (!w0)
                    fail_msg("%s: no initial value of %s", arch_dir, name);
                if (fabs(hc[k] - w0[k]) > bound || fabs(hg[k] - w0[k]) > bound)
                    fail_msg("%s: %s[%ld] has no gradient but moved %.3g (cpu) / %.3g "
                             "(cuda), more than AdamW allows (%.3g)", arch_dir, name, k,
                             hc[k] - w0[k], hg[k] - w0[k], bound);
            }
        }
        double e = nerr_masked(hg, hc, mask, nc);
        if (e > worst)
            worst = e;
        double tf = g_tol_final > 0 ? g_tol_final : g_tol;
        if (e >= 1e-3 * tf)
            printf("  %s: %s err %.2e\n", arch_dir, name, e);
        assert_true(e < 1e-3 * tf);
        free(mask);
        free(hc);
        free(hg);
    }
    printf("  %-12s first gradients worst %.2e; final tensors worst normalized err %.2e "
           "(%ld zero-gradient elements bounded apart)\n", arch_dir, worst_g, worst, left_out);
    run_free(&cpu);
    run_free(&gpu);
    dt_tensorset_free(&init);
    dt_weights_free(&w0s);
    dt_weights_free(&w);
}

/* Dropout 0.1 at every site the model has (GPT-2: embeddings, attention
 * probabilities, residual branches; Llama: attention) and label smoothing
 * 0.1, with LoRA dropout 0.1 for lora: the same masks on both backends. */
static void with_dropout(const char *arch_dir, dt_method method, const char *targets,
                         const char *init_case)
{
    g_drop = (dt_dropouts){0.1f, 0.1f, 0.1f, method == DT_LORA ? 0.1f : 0.0f};
    g_smooth = 0.1f;
    compare_case(arch_dir, method, targets, init_case);
    g_drop = (dt_dropouts){0};
    g_smooth = 0.0f;
}
static void test_gpt2_full_with_dropout_cuda_matches_cpu(void **s) { (void)s; with_dropout("gpt2_model", DT_FULL, "", NULL); }
static void test_gpt2_lora_with_dropout_cuda_matches_cpu(void **s) { (void)s; with_dropout("gpt2_model", DT_LORA, "c_attn", "gpt2_lora"); }
static void test_llama_lora_with_dropout_cuda_matches_cpu(void **s) { (void)s; with_dropout("llama_model", DT_LORA, "q,k,v,o,gate,up,down", "llama_lora"); }

/* --precision bf16 on both: gemm_bf16w on the frozen weights, the LM head
 * included (GPT-2's tied to the one bf16 table, Llama's untied), the
 * embedding through embedding_fwd_bf16, Delta-LoRA in the low-rank form (W
 * is never written), full in fp32. */
static void in_bf16(const char *arch_dir, dt_method method, const char *targets,
                    const char *init_case)
{
    g_prec = DT_PREC_BF16;
    g_tol = 10.0;
    compare_case(arch_dir, method, targets, init_case);
    g_prec = DT_PREC_FP32;
    g_tol = 1.0;
}

static void test_gpt2_lora_bf16_cuda_matches_cpu(void **s) { (void)s; in_bf16("gpt2_model", DT_LORA, "c_attn", "gpt2_lora"); }
/* GPT-2 delta_lora on q,v in bf16: q's A gets gradients of about 1e-7
 * (test_delta_lora.c), so AdamW's normalised steps turn rounding into a
 * different trajectory. With the LM head in bf16 its logit gradients are
 * rounded to bf16 too (rows x V of them), and an fp32 difference of
 * summation order upstream flips some of those roundings: the first
 * gradients still agree within the bf16 tolerance (3e-4 against 1e-2),
 * the losses within 3e-5, but q's A after 10 steps differs by 2.6e-2
 * (the emulator and the perturbed CPU self-test alike; 1.5e-3 with the
 * head in fp32), so this case's final tensors allow 4e-2. */
static void test_gpt2_delta_lora_bf16_cuda_matches_cpu(void **s)
{
    (void)s;
    g_tol_final = 40.0;
    in_bf16("gpt2_model", DT_DELTA_LORA, "q,v", "gpt2_delta_qv");
    g_tol_final = 0.0;
}
static void test_llama_lora_bf16_cuda_matches_cpu(void **s) { (void)s; in_bf16("llama_model", DT_LORA, "q,k,v,o,gate,up,down", "llama_lora"); }
static void test_llama_delta_lora_bf16_cuda_matches_cpu(void **s) { (void)s; in_bf16("llama_model", DT_DELTA_LORA, "q,v", "llama_delta"); }
static void test_llama_full_bf16_cuda_matches_cpu(void **s) { (void)s; in_bf16("llama_model", DT_FULL, "", NULL); }

static void test_gpt2_full_cuda_matches_cpu(void **s) { (void)s; compare_case("gpt2_model", DT_FULL, "", NULL); }
static void test_gpt2_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("gpt2_model", DT_LORA, "c_attn", "gpt2_lora"); }
static void test_gpt2_delta_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("gpt2_model", DT_DELTA_LORA, "q,v", "gpt2_delta_qv"); }
static void test_llama_full_cuda_matches_cpu(void **s) { (void)s; compare_case("llama_model", DT_FULL, "", NULL); }
static void test_llama_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("llama_model", DT_LORA, "q,k,v,o,gate,up,down", "llama_lora"); }
static void test_llama_delta_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("llama_model", DT_DELTA_LORA, "q,v", "llama_delta"); }
/* model families: Llama 3 rope scaling (the host table under a dt_rope_key),
 * Qwen 2 biases (trained under full), Mistral */
static void test_llama3_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("llama3_model", DT_LORA, "q,k,v,o,gate,up,down", "llama3_lora"); }
static void test_qwen2_full_cuda_matches_cpu(void **s) { (void)s; compare_case("qwen2_model", DT_FULL, "", NULL); }
static void test_mistral_delta_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("mistral_model", DT_DELTA_LORA, "q,v", "mistral_delta"); }
/* Qwen 3: q_norm/k_norm (rmsnorm over (N·heads, head_dim 16) rows), trained
 * under full */
static void test_qwen3_full_cuda_matches_cpu(void **s) { (void)s; compare_case("qwen3_model", DT_FULL, "", NULL); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_full_cuda_matches_cpu),
        cmocka_unit_test(test_gpt2_lora_bf16_cuda_matches_cpu),
        cmocka_unit_test(test_gpt2_delta_lora_bf16_cuda_matches_cpu),
        cmocka_unit_test(test_llama_lora_bf16_cuda_matches_cpu),
        cmocka_unit_test(test_llama_delta_lora_bf16_cuda_matches_cpu),
        cmocka_unit_test(test_llama_full_bf16_cuda_matches_cpu),
        cmocka_unit_test(test_gpt2_lora_cuda_matches_cpu),
        cmocka_unit_test(test_gpt2_delta_lora_cuda_matches_cpu),
        cmocka_unit_test(test_llama_full_cuda_matches_cpu),
        cmocka_unit_test(test_llama_lora_cuda_matches_cpu),
        cmocka_unit_test(test_llama_delta_lora_cuda_matches_cpu),
        cmocka_unit_test(test_llama3_lora_cuda_matches_cpu),
        cmocka_unit_test(test_qwen2_full_cuda_matches_cpu),
        cmocka_unit_test(test_mistral_delta_lora_cuda_matches_cpu),
        cmocka_unit_test(test_qwen3_full_cuda_matches_cpu),
        cmocka_unit_test(test_gpt2_full_with_dropout_cuda_matches_cpu),
        cmocka_unit_test(test_gpt2_lora_with_dropout_cuda_matches_cpu),
        cmocka_unit_test(test_llama_lora_with_dropout_cuda_matches_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
