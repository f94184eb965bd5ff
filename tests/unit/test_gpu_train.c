/* test_gpu_train.c: 10 optimizer steps of every method on the tiny GPT-2
 * and Llama reference models, on the CUDA backend and on the CPU backend,
 * from the same initial factors: per-step losses (relative error < 1e-4) and
 * every trained or Delta-moved tensor after the steps (normalized error
 * < 1e-3) must agree. Skips, saying so, where there is no CUDA device
 * (fails instead when DT_REQUIRE_GPU=1, as `make check-gpu` sets). */
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

#define REF "tests/fixtures/ref"
#define STEPS 10

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
} run;

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
    dt_optim_defaults(&R->opt);
    R->opt.lr = 1e-2f;
    R->opt.weight_decay = 0.01f;
    R->opt.start_step = 2;
    long ntok = 0;
    for (int i = 0; i < B * T; i++)
        ntok += tgt[i] != -100;
    for (int s = 0; s < STEPS; s++) {
        double ls;
        long nt;
        dt_model_zero_grad(R->m);
        if (dt_model_forward(R->m, ids, tgt, B, T, 1.0f / ntok, &ls, &nt, err) ||
            dt_model_backward(R->m, err) ||
            dt_optim_step(R->m, &R->opt, lo->method, R->opt.lr, NULL, err))
            fail_msg("%s step %d: %s", R->be->i.name, s + 1, err);
        R->loss[s] = ls / nt;
    }
}

static void compare_case(const char *arch_dir, dt_method method, const char *targets,
                         const char *init_case)
{
    char err[DT_ERR_LEN], path[256];
    /* DT_GPU_TRAIN_SELFTEST=1 puts a 1-thread CPU backend in the CUDA seat, to
     * check this test itself on a machine without a GPU. */
    const char *st = getenv("DT_GPU_TRAIN_SELFTEST");
    dt_backend *cuda = st && atoi(st) ? dt_backend_cpu_new(1, err) : dt_backend_cuda_new(0, err);
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
    dt_lora_opts lo = {method, 0, 0, 0};
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
        assert_true(e < 1e-4);
    }
    /* every trainable tensor, and every weight (Delta-LoRA moves W) */
    int np;
    dt_param *ps = dt_model_params(cpu.m, &np);
    double worst = 0;
    for (int i = 0; i < w.ts.n + np; i++) {
        const char *name = i < w.ts.n ? w.ts.t[i].name : ps[i - w.ts.n].name;
        float *dc, *dg;
        long nc, ng;
        if (dt_model_get_weight(cpu.m, name, &dc, &nc))
            continue; /* e.g. a tied lm_head */
        assert_int_equal(dt_model_get_weight(gpu.m, name, &dg, &ng), 0);
        assert_int_equal(nc, ng);
        float *hc = malloc((size_t)nc * sizeof(float)), *hg = malloc((size_t)nc * sizeof(float));
        cpu.be->i.download(cpu.be, hc, dc, (size_t)nc * sizeof(float));
        gpu.be->i.download(gpu.be, hg, dg, (size_t)nc * sizeof(float));
        assert_int_equal(gpu.be->i.sync(gpu.be, err), 0);
        double e = nerr(hg, hc, nc);
        if (e > worst)
            worst = e;
        if (e >= 1e-3)
            printf("  %s: %s err %.2e\n", arch_dir, name, e);
        assert_true(e < 1e-3);
        free(hc);
        free(hg);
    }
    printf("  %-12s final tensors worst normalized err %.2e\n", arch_dir, worst);
    dt_model_free(cpu.m);
    dt_model_free(gpu.m);
    dt_backend_free(cpu.be);
    dt_backend_free(gpu.be);
    dt_tensorset_free(&init);
    dt_weights_free(&w);
}

static void test_gpt2_full_cuda_matches_cpu(void **s) { (void)s; compare_case("gpt2_model", DT_FULL, "", NULL); }
static void test_gpt2_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("gpt2_model", DT_LORA, "c_attn", "gpt2_lora"); }
static void test_gpt2_delta_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("gpt2_model", DT_DELTA_LORA, "q,v", "gpt2_delta_qv"); }
static void test_llama_full_cuda_matches_cpu(void **s) { (void)s; compare_case("llama_model", DT_FULL, "", NULL); }
static void test_llama_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("llama_model", DT_LORA, "q,k,v,o,gate,up,down", "llama_lora"); }
static void test_llama_delta_lora_cuda_matches_cpu(void **s) { (void)s; compare_case("llama_model", DT_DELTA_LORA, "q,v", "llama_delta"); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_full_cuda_matches_cpu),
        cmocka_unit_test(test_gpt2_lora_cuda_matches_cpu),
        cmocka_unit_test(test_gpt2_delta_lora_cuda_matches_cpu),
        cmocka_unit_test(test_llama_full_cuda_matches_cpu),
        cmocka_unit_test(test_llama_lora_cuda_matches_cpu),
        cmocka_unit_test(test_llama_delta_lora_cuda_matches_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
