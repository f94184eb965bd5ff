/* test_act_ckpt.c: activation checkpointing (dt_lora_opts.act_ckpt,
 * --activation-checkpointing) changes memory, not results.
 *
 * - Gradients with checkpointing on and off are bitwise equal (memcmp: 0
 *   ulp) on the CPU backend, for every trainable tensor: LoRA's A and B
 *   (lora, delta_lora in both its forms), every weight (full), on the tiny
 *   GPT-2 and Llama reference models (and Qwen 3's q_norm/k_norm, and a
 *   packed batch), with every dropout on (embedding, attention, residual,
 *   LoRA branch: the recomputation regenerates the keyed masks), in fp32 and
 *   with bf16 frozen weights (gemm_bf16w), over two
 *   accumulated micro-batches; the losses too. The checkpointed model holds
 *   less memory, by what the estimate says.
 * - The same on the backend in the CUDA seat (gpu_seat.h: the CUDA device,
 *   the emulated one under `make test-cuda-emu`, or a CPU stand-in under
 *   DT_GPU_SELFTEST; skipped, saying so, without one): the recomputation
 *   runs the same kernels, so on vs off is bitwise there as well.
 * - A short training run (dt_train, dropout on) gives identical losses,
 *   gradient norms and merged model with --activation-checkpointing on and
 *   off; its progress says which was used.
 * - The estimate: smaller with checkpointing; AUTO turns it on exactly when
 *   the estimate without it exceeds the budget; Llama-3-8B's shape at 4 x
 *   2048 in bf16 with lora fits a 141 GB device with it. */
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
#include "gpu/engine_api.h"
#include "gpu/model.h"
#include "gpu/train.h"
#include "gpu_seat.h"

#define REF "tests/fixtures/ref"
#define GPT2_TOK ".cache/gpt2-tokenizer"

typedef struct ccase {
    const char *dir;
    dt_method method;
    const char *targets;
    dt_dropouts drop;
    int lowrank;  /* delta_lora: the low-rank form, W moved (A_K, B_K used) */
    int packed;   /* the batch packed (dt_model_forward_packed) */
    int bf16;     /* --precision bf16: frozen weights in bf16, gemm_bf16w */
} ccase;

#define B 2
#define T 12

static dt_model *model_bt(dt_backend *be, dt_weights *w, const ccase *c, int ckpt,
                          int b, int t, size_t *bytes)
{
    char err[DT_ERR_LEN];
    char path[256];
    snprintf(path, sizeof path, REF "/%s", c->dir);
    if (dt_weights_load(path, w, err))
        fail_msg("%s", err);
    dt_lora_opts lo = {c->method, 0, 0, 0, c->bf16 ? DT_PREC_BF16 : DT_PREC_FP32,
                       c->lowrank, 0.5f, ckpt};
    if (c->method != DT_FULL) {
        lo.rank = 4;
        lo.alpha = 8;
        assert_int_equal(dt_parse_targets(c->targets, w->cfg.arch, &lo.targets, err), 0);
    }
    size_t before = be->live_bytes;
    dt_model *m;
    if (dt_model_new(be, w, &lo, b, t, 3, &m, err))
        fail_msg("%s", err);
    *bytes = be->live_bytes - before;
    assert_int_equal(dt_model_act_ckpt(m), ckpt);
    if (dt_model_set_dropout(m, &c->drop, err))
        fail_msg("%s", err);
    /* B != 0 so that A has a gradient: the same values in both models */
    int np;
    dt_param *ps = dt_model_params(m, &np);
    for (int i = 0; i < np; i++) {
        float *h = malloc((size_t)ps[i].n * sizeof(float));
        be->i.download(be, h, ps[i].p, (size_t)ps[i].n * sizeof(float));
        for (long j = 0; j < ps[i].n; j++)
            h[j] += 0.05f * (float)sin(1.3 * (double)j + i);
        be->i.upload(be, ps[i].p, h, (size_t)ps[i].n * sizeof(float));
        free(h);
    }
    if (c->lowrank)
        dt_model_delta_keep(m); /* A_K, B_K = A, B; W "moved" */
    return m;
}

static dt_model *model(dt_backend *be, dt_weights *w, const ccase *c, int ckpt,
                       size_t *bytes)
{
    return model_bt(be, w, c, ckpt, B, T, bytes);
}

/* Two micro-batches of step 5 in training mode (dropout on), gradients
 * accumulated; the losses in ls[2]. */
static void run(dt_backend *be, dt_model *m, const ccase *c, double *ls)
{
    char err[DT_ERR_LEN];
    int V = dt_model_config(m)->vocab;
    dt_model_zero_grad(m);
    for (int g = 0; g < 2; g++) {
        int32_t ids[B * T], tgt[B * T], pos[B * T];
        for (int i = 0; i < B * T; i++) {
            ids[i] = (int32_t)((i * 37 + 11 + 5 * g) % V);
            tgt[i] = i % T == T - 1 || i % 5 == 2 ? -100 : (int32_t)((i * 53 + 5 + g) % V);
            pos[i] = i % T < 5 ? i % T : i % T - 5; /* rows of 5 and 7 */
        }
        long nt;
        dt_model_train_mode(m, 11, 5, g);
        if (dt_model_forward_packed(m, ids, tgt, c->packed ? pos : NULL, B, T, 1.0f / 30,
                                    &ls[g], &nt, err) ||
            dt_model_backward(m, err))
            fail_msg("%s", err);
    }
    (void)be;
}

static float *grads(dt_backend *be, dt_model *m, long *total)
{
    int np;
    dt_param *ps = dt_model_params(m, &np);
    long n = 0;
    for (int i = 0; i < np; i++)
        n += ps[i].n;
    float *out = malloc((size_t)n * sizeof(float)), *p = out;
    for (int i = 0; i < np; i++) {
        be->i.download(be, p, ps[i].g, (size_t)ps[i].n * sizeof(float));
        p += ps[i].n;
    }
    *total = n;
    return out;
}

static void compare(dt_backend *be, const ccase *c)
{
    dt_weights w0, w1;
    size_t b0, b1;
    dt_model *m0 = model(be, &w0, c, 0, &b0);
    dt_model *m1 = model(be, &w1, c, 1, &b1);
    double l0[2], l1[2];
    run(be, m0, c, l0);
    run(be, m1, c, l1);
    long n0, n1;
    float *g0 = grads(be, m0, &n0), *g1 = grads(be, m1, &n1);
    assert_int_equal(n0, n1);
    int np;
    dt_param *ps = dt_model_params(m0, &np);
    long off = 0, differ = 0;
    double norm = 0;
    for (int i = 0; i < np; i++) {
        if (memcmp(g0 + off, g1 + off, (size_t)ps[i].n * sizeof(float))) {
            printf("  %s differs with checkpointing\n", ps[i].name);
            differ++;
        }
        for (long j = 0; j < ps[i].n; j++)
            norm += (double)g0[off + j] * g0[off + j];
        off += ps[i].n;
    }
    const char *meth = c->method == DT_FULL ? "full" : c->method == DT_LORA ? "lora"
                                                                           : "delta_lora";
    printf("%s %s%s%s%s on %s: %d tensors (%ld floats, |g| %.5f) bitwise equal on/off: %s; "
           "losses %.9g %.9g / %.9g %.9g; model bytes off %zu, on %zu\n", c->dir, meth,
           c->lowrank ? " (low-rank, moved)" : "", c->packed ? " packed" : "", c->bf16 ? " bf16" : "", be->i.name, np,
           n0, sqrt(norm), differ ? "NO" : "yes", l0[0], l0[1], l1[0], l1[1], b0, b1);
    assert_true(norm > 0);
    assert_int_equal(differ, 0);
    assert_memory_equal(l0, l1, sizeof l0);
    /* one layer's activations instead of every layer's (the CPU backend
     * counts its live bytes; the CUDA backend only the device's peak) */
    if (b0 > 0)
        assert_true(b1 < b0);
    free(g0);
    free(g1);
    dt_model_free(m0);
    dt_model_free(m1);
    dt_weights_free(&w0);
    dt_weights_free(&w1);
}

static const ccase cases[] = {
    {"gpt2_model", DT_FULL, "", {0.1f, 0.1f, 0.1f, 0.0f}, 0, 0, 0},
    {"gpt2_model", DT_LORA, "q,v,o,up,down", {0.1f, 0.2f, 0.3f, 0.3f}, 0, 0, 0},
    {"gpt2_model", DT_DELTA_LORA, "c_attn,o,up,down", {0.2f, 0.2f, 0.2f, 0.0f}, 0, 0, 0},
    {"gpt2_model", DT_LORA, "c_attn,o", {0.1f, 0.1f, 0.2f, 0.1f}, 0, 1, 0},
    {"llama_model", DT_FULL, "", {0, 0, 0.25f, 0}, 0, 0, 0},
    {"llama_model", DT_LORA, "q,k,v,o,gate,up,down", {0, 0, 0.25f, 0.2f}, 0, 0, 0},
    {"llama_model", DT_DELTA_LORA, "q,k,v,o,gate,up,down", {0, 0, 0.2f, 0}, 1, 0, 0},
    {"qwen3_model", DT_FULL, "", {0, 0, 0.1f, 0}, 0, 0, 0},
    {"llama_model", DT_LORA, "q,k,v,o,gate,up,down", {0, 0, 0.1f, 0.1f}, 0, 0, 1},
    {"gpt2_model", DT_DELTA_LORA, "c_attn,o,up,down", {0.1f, 0.1f, 0.1f, 0.0f}, 0, 0, 1},
};
#define NCASES (int)(sizeof cases / sizeof cases[0])

static void test_gradients_bitwise_equal_cpu(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    dt_backend *be = dt_backend_cpu_new(1, err);
    assert_non_null(be);
    for (int i = 0; i < NCASES; i++)
        compare(be, &cases[i]);
    dt_backend_free(be);
}

static void test_gradients_bitwise_equal_gpu(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    dt_backend *be = gpu_seat_backend(err);
    if (!be) {
        if (getenv("DT_REQUIRE_GPU") && atoi(getenv("DT_REQUIRE_GPU")))
            fail_msg("DT_REQUIRE_GPU=1 but %s", err);
        printf("test_act_ckpt: SKIPPED on the GPU: no CUDA device (%s)\n", err);
        skip();
    }
    for (int i = 0; i < NCASES; i++)
        compare(be, &cases[i]);
    dt_backend_free(be);
}

/* ---- a whole run ----------------------------------------------------------- */

static char g_dir[64];

static int setup(void **s)
{
    (void)s;
    char cwd[1024], a[1400], b[1400];
    snprintf(g_dir, sizeof g_dir, "/tmp/dt_ackpt_XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(b, sizeof b, "%s/model", g_dir);
    mkdir(b, 0755);
    const char *files[] = {REF "/gpt2_model/config.json", REF "/gpt2_model/model.safetensors",
                           GPT2_TOK "/vocab.json", GPT2_TOK "/merges.txt"};
    for (int i = 0; i < 4; i++) {
        snprintf(a, sizeof a, "%s/%s", cwd, files[i]);
        snprintf(b, sizeof b, "%s/model/%s", g_dir, strrchr(files[i], '/') + 1);
        assert_int_equal(symlink(a, b), 0);
    }
    snprintf(b, sizeof b, "%s/data.jsonl", g_dir);
    FILE *f = fopen(b, "w");
    uint32_t r = 777;
    for (int row = 0; row < 24; row++) {
        int n = 8 + row % 9;
        fputs("{\"input_ids\": [", f);
        for (int i = 0; i < n; i++) {
            r = r * 1664525u + 1013904223u;
            fprintf(f, i ? ", %u" : "%u", (r >> 8) % 96);
        }
        fputs("]}\n", f);
    }
    fclose(f);
    return 0;
}

static int teardown(void **s)
{
    (void)s;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

typedef struct trace {
    double loss[16], gn[16];
    int n, ckpt;
} trace;

static int record(void *ud, const dt_progress *p)
{
    trace *t = ud;
    if (t->n < 16) {
        t->loss[t->n] = p->train_loss;
        t->gn[t->n] = p->grad_norm;
        t->n++;
    }
    t->ckpt = p->act_ckpt;
    return 0;
}

static void run_opts(dt_train_opts *o, int mode, dt_method method, char *model,
                     char *data, char *out)
{
    dt_train_defaults(o);
    snprintf(model, 300, "%s/model", g_dir);
    snprintf(data, 300, "%s/data.jsonl", g_dir);
    o->model = model;
    o->data = data;
    o->out = out;
    o->method = method;
    o->rank = 4;
    o->alpha = 8;
    o->targets = "c_attn,o,up,down";
    o->batch = 192;
    o->seq_len = 16;
    o->steps = 1;
    o->threads = 2;
    o->json = 1;
    o->act_ckpt = mode;
}

/* The worker's case: a --memory-limit between the estimates with and
 * without checkpointing turns it on (AUTO), and the run trains; a limit
 * above both leaves it off. */
static void test_memory_limit_decides_auto(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], model[300], data[300], out[300];
    dt_train_opts o;
    dt_mem_estimate e;
    int on;
    long long off, budget;
    snprintf(out, sizeof out, "%s/limit", g_dir);
    /* the process's own resident size, which every estimate counts, pinned:
     * it drifts between the estimate here and the run's by more than the
     * gap (what the allocator kept of the earlier tests, with
     * DT_POISON_ALLOC's touched pages: up to 23 MB seen) */
    setenv("DT_SELF_RSS_BYTES", "50000000", 1);
    run_opts(&o, DT_ACT_CKPT_ON, DT_LORA, model, data, out);
    assert_int_equal(dt_train_estimate_ckpt(&o, &e, &on, &off, &budget, err), 0);
    assert_int_equal(on, 1);
    long long gap = off - e.total;
    printf("estimate: %lld bytes without checkpointing, %lld with (%lld less)\n", off,
           e.total, gap);
    assert_true(gap > 4000000); /* well above the process's own drift */
    trace t;
    o.act_ckpt = DT_ACT_CKPT_AUTO;
    o.on_progress = record;
    o.ud = &t;
    o.memory_limit = off - gap / 2;
    memset(&t, 0, sizeof t);
    if (dt_train(&o, err))
        fail_msg("%s", err);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.ckpt, 1);
    /* the estimate as the run would choose it says the same */
    assert_int_equal(dt_train_estimate_ckpt(&o, &e, &on, NULL, &budget, err), 0);
    assert_int_equal(on, 1);
    assert_int_equal(budget, o.memory_limit);
    o.memory_limit = off + gap;
    memset(&t, 0, sizeof t);
    if (dt_train(&o, err))
        fail_msg("%s", err);
    assert_int_equal(t.ckpt, 0);
    /* below both: refused, naming the bytes of the checkpointed estimate */
    o.memory_limit = e.total - gap;
    assert_int_equal(dt_train(&o, err), DT_ENOMEM);
    assert_non_null(strstr(err, "memory limit"));
    unsetenv("DT_SELF_RSS_BYTES");
}

static void train_run(int mode, dt_method method, trace *t, char *out)
{
    char err[DT_ERR_LEN], model[300], data[300];
    dt_train_opts o;
    dt_train_defaults(&o);
    snprintf(model, sizeof model, "%s/model", g_dir);
    snprintf(data, sizeof data, "%s/data.jsonl", g_dir);
    o.model = model;
    o.data = data;
    o.out = out;
    o.method = method;
    o.rank = 4;
    o.alpha = 8;
    o.start_step = 2;
    o.targets = "c_attn,o,up,down";
    o.lr = 1e-2f;
    o.batch = 3;
    o.accum = 2;
    o.seq_len = 16;
    o.steps = 6;
    o.threads = 2;
    o.json = 1;
    o.model_dropout = 0.1f; /* every GPT-2 dropout on */
    o.lora_dropout = method == DT_LORA ? 0.1f : 0.0f;
    o.act_ckpt = mode;
    o.on_progress = record;
    o.ud = t;
    memset(t, 0, sizeof *t);
    if (dt_train(&o, err))
        fail_msg("%s", err);
}

static char *slurp(const char *path, size_t *len)
{
    char *buf, err[DT_ERR_LEN];
    if (dt_read_file(path, &buf, len, err))
        fail_msg("%s", err);
    return buf;
}

static void whole_run(dt_method method)
{
    char o1[300], o2[300], p1[400], p2[400];
    trace off, on;
    snprintf(o1, sizeof o1, "%s/off%d", g_dir, method);
    snprintf(o2, sizeof o2, "%s/on%d", g_dir, method);
    train_run(DT_ACT_CKPT_OFF, method, &off, o1);
    train_run(DT_ACT_CKPT_ON, method, &on, o2);
    assert_int_equal(off.n, 6);
    assert_int_equal(on.n, 6);
    assert_int_equal(off.ckpt, 0);
    assert_int_equal(on.ckpt, 1);
    for (int i = 0; i < 6; i++)
        printf("  step %d loss %.9g / %.9g  grad norm %.9g / %.9g\n", i + 1, off.loss[i],
               on.loss[i], off.gn[i], on.gn[i]);
    assert_memory_equal(off.loss, on.loss, 6 * sizeof(double));
    assert_memory_equal(off.gn, on.gn, 6 * sizeof(double));
    assert_true(off.loss[5] != off.loss[0]); /* it trained */
    /* the merged models are byte-identical */
    size_t n1, n2;
    snprintf(p1, sizeof p1, "%s/merged/model.safetensors", o1);
    snprintf(p2, sizeof p2, "%s/merged/model.safetensors", o2);
    char *a = slurp(p1, &n1), *b = slurp(p2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
}

static void test_whole_run_lora_identical_losses(void **s)
{
    (void)s;
    whole_run(DT_LORA);
}

static void test_whole_run_delta_lora_identical_losses(void **s)
{
    (void)s;
    whole_run(DT_DELTA_LORA);
}

static void test_bad_mode_is_refused_by_name(void **s)
{
    (void)s;
    assert_int_equal(dt_act_ckpt_parse("auto"), DT_ACT_CKPT_AUTO);
    assert_int_equal(dt_act_ckpt_parse("on"), DT_ACT_CKPT_ON);
    assert_int_equal(dt_act_ckpt_parse("off"), DT_ACT_CKPT_OFF);
    assert_int_equal(dt_act_ckpt_parse("yes"), -1);
    assert_int_equal(dt_act_ckpt_parse(NULL), -1);
}

/* ---- the estimate ------------------------------------------------------------ */

/* The estimate's saving is what the model's allocation saves: the CPU
 * backend counts its allocations, so the difference of two models' bytes
 * (on, off) is compared with the difference of their estimates. */
static void test_estimate_saving_matches_the_allocation(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    dt_backend *be = dt_backend_cpu_new(1, err);
    const ccase c = {"llama_model", DT_LORA, "q,k,v,o,gate,up,down", {0, 0, 0, 0}, 0, 0, 0};
    dt_weights w0, w1;
    size_t b0, b1;
    /* 8 x 48: the activations outweigh posix_memalign's per-buffer slack */
    dt_model *m0 = model_bt(be, &w0, &c, 0, 8, 48, &b0);
    dt_model *m1 = model_bt(be, &w1, &c, 1, 8, 48, &b1);
    dt_mem_model mm;
    assert_int_equal(dt_mem_model_read(REF "/llama_model", &mm, err), 0);
    dt_mem_job j = {.method = 1, .rank = 4, .targets = "q,k,v,o,gate,up,down", .batch = 8,
                    .seq_len = 48, .threads = 1};
    dt_mem_estimate e0, e1;
    assert_int_equal(dt_mem_estimate_job(&mm, &j, &e0, err), 0);
    j.act_ckpt = 1;
    assert_int_equal(dt_mem_estimate_job(&mm, &j, &e1, err), 0);
    long long est = e0.activations - e1.activations, got = (long long)(b0 - b1);
    printf("activation bytes saved: estimate %lld, allocation %lld\n", est, got);
    assert_true(est > 0);
    assert_true(llabs(est - got) <= got / 50); /* allocation slack only */
    assert_true(e1.total < e0.total);
    assert_int_equal(e1.weights, e0.weights);
    assert_int_equal(e1.trainable, e0.trainable);
    dt_model_free(m0);
    dt_model_free(m1);
    dt_weights_free(&w0);
    dt_weights_free(&w1);
    dt_backend_free(be);
}

/* Llama-3-8B's shape (config.json numbers). */
static dt_mem_model llama3_8b(void)
{
    dt_mem_model m = {.llama = 1, .n_layer = 32, .d_model = 4096, .n_head = 32,
                      .n_kv_head = 8, .head_dim = 128, .d_ff = 14336, .vocab = 128256,
                      .max_pos = 8192, .tied = 0};
    return m;
}

static void test_auto_flips_at_the_budget(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    dt_mem_model mm = llama3_8b();
    dt_mem_job j = {.method = 1, .rank = 16, .targets = "q,k,v,o,gate,up,down", .batch = 4,
                    .seq_len = 2048, .cuda = 1};
    dt_mem_estimate off, on, e;
    assert_int_equal(dt_mem_estimate_job_prec(&mm, &j, 1, &off, err), 0);
    j.act_ckpt = 1;
    assert_int_equal(dt_mem_estimate_job_prec(&mm, &j, 1, &on, err), 0);
    assert_true(on.total < off.total);
    long long wo = 0;
    /* budget == the estimate without it: fits, off */
    assert_int_equal(dt_mem_estimate_auto_ckpt(&mm, &j, 1, off.total, &e, &wo, err), 0);
    assert_int_equal(j.act_ckpt, 0);
    assert_int_equal(e.total, off.total);
    assert_int_equal(wo, off.total);
    /* one byte less: on */
    assert_int_equal(dt_mem_estimate_auto_ckpt(&mm, &j, 1, off.total - 1, &e, &wo, err), 0);
    assert_int_equal(j.act_ckpt, 1);
    assert_int_equal(e.total, on.total);
    assert_int_equal(wo, off.total);
    /* no budget: never on */
    assert_int_equal(dt_mem_estimate_auto_ckpt(&mm, &j, 1, 0, &e, NULL, err), 0);
    assert_int_equal(j.act_ckpt, 0);
}

/* The target: Llama-3-8B's shape trains with lora and delta_lora at
 * 4 x 2048 in bf16 on one 141 GB device; printed for docs/GPU.md. */
static void test_llama3_8b_fits_141gb(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], h0[32], h1[32], ha0[32], ha1[32];
    dt_mem_model mm = llama3_8b();
    const long long dev = 141LL * 1000 * 1000 * 1000; /* the H200's 141 GB */
    for (int method = 1; method <= 2; method++) {
        dt_mem_job j = {.method = method, .rank = 16, .targets = "q,k,v,o,gate,up,down",
                        .batch = 4, .seq_len = 2048, .cuda = 1};
        dt_mem_estimate off, on;
        assert_int_equal(dt_mem_estimate_job_prec(&mm, &j, 1, &off, err), 0);
        j.act_ckpt = 1;
        assert_int_equal(dt_mem_estimate_job_prec(&mm, &j, 1, &on, err), 0);
        dt_mem_human(off.total, h0, sizeof h0);
        dt_mem_human(on.total, h1, sizeof h1);
        dt_mem_human(off.activations, ha0, sizeof ha0);
        dt_mem_human(on.activations, ha1, sizeof ha1);
        printf("Llama-3-8B shape, %s r16 all linears, 4 x 2048, bf16, CUDA: "
               "off %lld bytes (%s; activations %s), on %lld bytes (%s; activations %s); "
               "weights %lld, trainable %lld, workspace %lld\n",
               method == 1 ? "lora" : "delta_lora", off.total, h0, ha0, on.total, h1, ha1,
               on.weights, on.trainable, on.workspace);
        assert_true(on.total < dev);
        assert_true(on.total < off.total);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradients_bitwise_equal_cpu),
        cmocka_unit_test(test_gradients_bitwise_equal_gpu),
        cmocka_unit_test(test_whole_run_lora_identical_losses),
        cmocka_unit_test(test_whole_run_delta_lora_identical_losses),
        cmocka_unit_test(test_bad_mode_is_refused_by_name),
        cmocka_unit_test(test_memory_limit_decides_auto),
        cmocka_unit_test(test_estimate_saving_matches_the_allocation),
        cmocka_unit_test(test_auto_flips_at_the_budget),
        cmocka_unit_test(test_llama3_8b_fits_141gb),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
