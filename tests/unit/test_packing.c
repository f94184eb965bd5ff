/* test_packing.c: packing several rows into one sequence (--packing) gives
 * each row the loss and gradients it has when the rows run unpacked, padded
 * to the longest row: attention stays within each row (block-diagonal
 * causal mask), positions restart at 0 for each row (RoPE, GPT-2's learned
 * positions), the loss covers each row's predicted tokens only.
 *
 * On the tiny GPT-2 and Llama reference models (tests/fixtures/ref), full
 * fine-tuning (every weight's gradient, GPT-2's wpe included) and LoRA,
 * on the CPU backend and on the backend in the CUDA seat (gpu_seat.h: the
 * CUDA device, the emulated one under `make test-cuda-emu`, or a CPU
 * stand-in under DT_GPU_SELFTEST; skipped, saying so, without one).
 * And the training loop with --packing: a run stopped and resumed is
 * byte-identical to an uninterrupted one (the data position is saved in
 * the checkpoint), batch_size counts packed sequences, and a checkpoint
 * written without packing is not resumed with it. */
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
#include <jansson.h>

#include "base/dt.h"
#include "gpu/backend.h"
#include "gpu/model.h"
#include "gpu/train.h"
#include "gpu/engine_api.h"
#include "gpu/train_impl.h" /* the batcher: tr_batch_at, tr_batch_packed */
#include "base/file.h"
#include "gpu_seat.h"

#define REF "tests/fixtures/ref"
#define GPT2_TOK ".cache/gpt2-tokenizer"

/* Three rows (input positions each, the first `prompt` of them masked) and
 * how they are packed: sequence 0 holds rows 0 and 1, sequence 1 row 2
 * and padding. */
#define NROW 3
static const int row_len[NROW] = {5, 9, 6};
static const int row_prompt[NROW] = {2, 0, 3};
#define PT 14 /* packed length: 5 + 9 */
#define UT 9  /* unpacked: the longest row */

static int32_t tok(int r, int j) { return (int32_t)((r * 31 + j * 17 + 5) % 96); }
static int32_t lab(int r, int j)
{
    return j < row_prompt[r] ? -100 : (int32_t)((r * 13 + j * 7 + 3) % 96);
}

static void unpacked(int32_t *ids, int32_t *tgt)
{
    for (int r = 0; r < NROW; r++)
        for (int j = 0; j < UT; j++) {
            ids[r * UT + j] = j < row_len[r] ? tok(r, j) : 0;
            tgt[r * UT + j] = j < row_len[r] ? lab(r, j) : -100;
        }
}

static void packed(int32_t *ids, int32_t *tgt, int32_t *pos)
{
    const int seq_of[NROW] = {0, 0, 1}, start[NROW] = {0, 5, 0};
    for (int i = 0; i < 2 * PT; i++) {
        ids[i] = 0;
        tgt[i] = -100;
        pos[i] = 0; /* padding: a row of its own */
    }
    for (int r = 0; r < NROW; r++)
        for (int j = 0; j < row_len[r]; j++) {
            int i = seq_of[r] * PT + start[r] + j;
            ids[i] = tok(r, j);
            tgt[i] = lab(r, j);
            pos[i] = j;
        }
}

static dt_model *model(dt_backend *be, dt_weights *w, const char *dir,
                       dt_method method, int B, int T)
{
    char err[DT_ERR_LEN];
    if (dt_weights_load(dir, w, err))
        fail_msg("%s", err);
    dt_lora_opts lo = {method, 4, 8.0f, 0, DT_PREC_FP32, 0, 0.0f, 0};
    if (method != DT_FULL)
        assert_int_equal(dt_parse_targets("q,k,v,o", w->cfg.arch, &lo.targets, err), 0);
    dt_model *m;
    if (dt_model_new(be, w, &lo, B, T, 7, &m, err))
        fail_msg("%s", err);
    /* B != 0, so that A receives gradient: the same values in both models */
    int np;
    dt_param *ps = dt_model_params(m, &np);
    for (int i = 0; i < np; i++) {
        float *h = malloc((size_t)ps[i].n * sizeof(float));
        be->i.download(be, h, ps[i].p, (size_t)ps[i].n * sizeof(float));
        for (long j = 0; j < ps[i].n; j++)
            h[j] += 0.01f * (float)((j * 2654435761u) % 1000) / 1000.0f;
        be->i.upload(be, ps[i].p, h, (size_t)ps[i].n * sizeof(float));
        free(h);
    }
    return m;
}

/* Every trainable tensor's gradient, concatenated (new array). */
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

static void compare(dt_backend *be, const char *dir, dt_method method)
{
    char err[DT_ERR_LEN];
    dt_weights w1, w2;
    dt_model *mu = model(be, &w1, dir, method, NROW, UT);
    dt_model *mp = model(be, &w2, dir, method, 2, PT);
    int32_t uids[NROW * UT], utgt[NROW * UT], pids[2 * PT], ptgt[2 * PT], pos[2 * PT];
    unpacked(uids, utgt);
    packed(pids, ptgt, pos);
    double lu, lp;
    long nu, np;
    dt_model_zero_grad(mu);
    assert_int_equal(dt_model_forward(mu, uids, utgt, NROW, UT, 1.0f / 15, &lu, &nu, err), 0);
    assert_int_equal(dt_model_backward(mu, err), 0);
    dt_model_zero_grad(mp);
    assert_int_equal(dt_model_forward_packed(mp, pids, ptgt, pos, 2, PT, 1.0f / 15, &lp, &np,
                                             err), 0);
    assert_int_equal(dt_model_backward(mp, err), 0);
    assert_int_equal(nu, 15); /* 3 + 9 + 3 predicted tokens */
    assert_int_equal(np, nu);
    printf("%s %s on %s: loss unpacked %.9g packed %.9g\n", dir,
           method == DT_FULL ? "full" : "lora", be->i.name, lu, lp);
    assert_true(fabs(lu - lp) <= 1e-5 * fabs(lu));
    long n1, n2;
    float *g1 = grads(be, mu, &n1), *g2 = grads(be, mp, &n2);
    assert_int_equal(n1, n2);
    double d = 0, r = 0;
    for (long i = 0; i < n1; i++) {
        d += (g1[i] - g2[i]) * (double)(g1[i] - g2[i]);
        r += g1[i] * (double)g1[i];
    }
    printf("  gradients: %ld floats, normalized difference %.3g\n", n1, sqrt(d / r));
    assert_true(r > 0);
    assert_true(sqrt(d / r) < 1e-5);
    free(g1);
    free(g2);
    dt_model_free(mu);
    dt_model_free(mp);
    dt_weights_free(&w1);
    dt_weights_free(&w2);
}

/* The same batch packed but with every position counted from the start of
 * the sequence (one long row): the loss differs, so the mask and the
 * positions are what make the comparison above hold. */
static void test_packing_without_segments_differs(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    dt_backend *be = dt_backend_cpu_new(1, err);
    dt_weights w;
    dt_model *m = model(be, &w, REF "/llama_model", DT_LORA, 2, PT);
    int32_t ids[2 * PT], tgt[2 * PT], pos[2 * PT];
    packed(ids, tgt, pos);
    double a, b;
    long n;
    assert_int_equal(dt_model_forward_packed(m, ids, tgt, pos, 2, PT, 0.0f, &a, &n, err), 0);
    assert_int_equal(dt_model_forward(m, ids, tgt, 2, PT, 0.0f, &b, &n, err), 0);
    assert_true(fabs(a - b) > 1e-3 * fabs(a));
    dt_model_free(m);
    dt_weights_free(&w);
    dt_backend_free(be);
}

static void test_bad_positions_are_refused(void **s)
{
    (void)s;
    char err[DT_ERR_LEN];
    dt_backend *be = dt_backend_cpu_new(1, err);
    dt_weights w;
    dt_model *m = model(be, &w, REF "/gpt2_model", DT_LORA, 2, PT);
    int32_t ids[2 * PT], tgt[2 * PT], pos[2 * PT];
    packed(ids, tgt, pos);
    pos[3] = 4; /* column 3 cannot be position 4 of its row */
    double l;
    long n;
    assert_int_equal(dt_model_forward_packed(m, ids, tgt, pos, 2, PT, 0.0f, &l, &n, err),
                     DT_EINVAL);
    assert_non_null(strstr(err, "position 4"));
    dt_model_free(m);
    dt_weights_free(&w);
    dt_backend_free(be);
}

static void on_cpu(const char *dir, dt_method method)
{
    char err[DT_ERR_LEN];
    dt_backend *be = dt_backend_cpu_new(1, err);
    assert_non_null(be);
    compare(be, dir, method);
    dt_backend_free(be);
}

static void on_gpu(const char *dir, dt_method method)
{
    char err[DT_ERR_LEN];
    dt_backend *be = gpu_seat_backend(err);
    if (!be) {
        if (getenv("DT_REQUIRE_GPU") && atoi(getenv("DT_REQUIRE_GPU")))
            fail_msg("DT_REQUIRE_GPU=1 but %s", err);
        printf("test_packing: SKIPPED on the GPU: no CUDA device (%s)\n", err);
        skip();
    }
    compare(be, dir, method);
    dt_backend_free(be);
}

static void test_gpt2_full_packed_equals_unpacked_cpu(void **s)
{
    (void)s;
    on_cpu(REF "/gpt2_model", DT_FULL);
}
static void test_gpt2_lora_packed_equals_unpacked_cpu(void **s)
{
    (void)s;
    on_cpu(REF "/gpt2_model", DT_LORA);
}
static void test_llama_full_packed_equals_unpacked_cpu(void **s)
{
    (void)s;
    on_cpu(REF "/llama_model", DT_FULL);
}
static void test_llama_lora_packed_equals_unpacked_cpu(void **s)
{
    (void)s;
    on_cpu(REF "/llama_model", DT_LORA);
}
static void test_gpt2_full_packed_equals_unpacked_gpu(void **s)
{
    (void)s;
    on_gpu(REF "/gpt2_model", DT_FULL);
}
static void test_llama_full_packed_equals_unpacked_gpu(void **s)
{
    (void)s;
    on_gpu(REF "/llama_model", DT_FULL);
}

/* The CUDA memory estimate follows cuda_attention.cu's choice: the naive
 * score workspace (S and dP, NH·T² floats each) while NH·T²·4 bytes is at
 * most 1 GiB, none beyond (the fused kernels), and always with packing
 * (the fused kernels have no segments), which also sizes by seq_len. */
static void test_estimate_counts_the_naive_score_workspace(void **s)
{
    (void)s;
    /* a 1B Llama shape: 32 heads of 64 */
    dt_mem_model g = {1, 16, 2048, 32, 8, 64, 8192, 128256, 131072, 1, 0};
    char err[DT_ERR_LEN];
    const long long NH = 32;
    struct { int T, packing, longest; int naive; } cs[] = {
        {2048, 0, 0, 1},    /* 32·2048²·4 = 512 MiB: naive */
        {8192, 0, 0, 0},    /* 8 GiB: fused */
        {8192, 1, 0, 1},    /* packing: naive at any T */
        {8192, 1, 100, 1},  /* packing sizes by seq_len, not the longest row */
    };
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        dt_mem_job j = {.method = 1, .rank = 8, .targets = "q,v", .batch = 2,
                        .seq_len = cs[i].T, .longest_row = cs[i].longest, .cuda = 1,
                        .threads = 1, .packing = cs[i].packing};
        dt_mem_estimate e;
        assert_int_equal(dt_mem_estimate_job(&g, &j, &e, err), 0);
        long long T = cs[i].T, scores = 2 * NH * T * T * 4;
        printf("T=%d packing=%d: workspace %lld bytes, S+dP %lld\n", cs[i].T,
               cs[i].packing, e.workspace, scores);
        assert_int_equal(e.seq_eff, cs[i].T);
        if (cs[i].naive)
            assert_true(e.workspace >= scores + scores / 4);
        else
            assert_true(e.workspace < NH * T * T * 4 / 8);
    }
}

/* The batcher on 5 rows of 4, 7, 3, 9, 2 tokens (3, 6, 2, 8, 1 input
 * positions), one epoch in row order (seed whose permutation is checked):
 * unpacked, a micro-batch is padded to its longest row, not to T; packed,
 * rows go in while they fit T, positions restart per row, padding is
 * masked at position 0, and the rows taken are returned. */
static void test_batches_pad_to_the_longest_row_and_pack_rows(void **s)
{
    (void)s;
    static const int len[5] = {4, 7, 3, 9, 2};
    int32_t ids[5][9], labels[5][9];
    dt_row rows[5];
    for (int r = 0; r < 5; r++) {
        for (int j = 0; j < len[r]; j++) {
            ids[r][j] = 10 * r + j;
            labels[r][j] = j == 0 ? -100 : 10 * r + j + 1;
        }
        rows[r] = (dt_row){ids[r], labels[r], len[r]};
    }
    dt_dataset ds = {rows, 5, 0};
    int perm[5];
    int32_t bi[2 * 16], bt_[2 * 16], bp[2 * 16];
    batcher b = {&ds, 1, perm, -1, bi, bt_, 2, 16, 0, bp};
    int t;
    long nt;
    /* the stream's first rows under this seed, to know what to expect */
    tr_batch_at(&b, 0, &t, &nt);
    int r0 = perm[0], r1 = perm[1];
    int want = len[r0] - 1 > len[r1] - 1 ? len[r0] - 1 : len[r1] - 1;
    assert_int_equal(t, want); /* the longest of the two rows, not T = 16 */
    assert_int_equal(b.real, len[r0] - 1 + len[r1] - 1);
    /* packed: greedy in stream order within T = 16 */
    long took = tr_batch_packed(&b, 0, &t, &nt);
    long p = 0, real = 0, cnt = 0;
    int longest = 0;
    for (int q = 0; q < 2; q++) {
        int at = 0;
        for (int k = 0;; k++) {
            int r = perm[p % 5], n = len[r] - 1;
            if (k > 0 && at + n > 16)
                break;
            for (int j = 0; j < n; j++) {
                assert_int_equal(bi[q * t + at + j], ids[r][j]);
                assert_int_equal(bt_[q * t + at + j], labels[r][j]);
                assert_int_equal(bp[q * t + at + j], j);
                cnt += labels[r][j] != -100;
            }
            at += n;
            p++;
        }
        real += at;
        longest = at > longest ? at : longest;
        for (int j = at; j < t; j++) {
            assert_int_equal(bt_[q * t + j], -100);
            assert_int_equal(bp[q * t + j], 0);
        }
    }
    assert_int_equal(took, p);
    assert_true(took > 2); /* more rows than sequences */
    assert_int_equal(t, longest);
    assert_int_equal(b.real, real);
    assert_int_equal(nt, cnt);
}

/* ---- the training loop ------------------------------------------------ */

static char g_dir[256];

/* A model dir = the GPT-2 fixture's weights + the GPT-2 tokenizer; 24 rows
 * of 10..16 pre-tokenized ids (2 or 3 fit a 32-position sequence). */
static int setup(void **s)
{
    (void)s;
    char cwd[1024], a[1400], b[1400];
    snprintf(g_dir, sizeof g_dir, "/tmp/dt_pack_XXXXXX");
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
    uint32_t r = 12345;
    for (int row = 0; row < 24; row++) {
        int n = 10 + row % 7;
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

static void opts(dt_train_opts *o, const char *out, char *model, char *data)
{
    dt_train_defaults(o);
    snprintf(model, 300, "%s/model", g_dir);
    snprintf(data, 300, "%s/data.jsonl", g_dir);
    o->model = model;
    o->data = data;
    o->out = out;
    o->method = DT_DELTA_LORA;
    o->rank = 4;
    o->alpha = 8;
    o->start_step = 2;
    o->targets = "q,v";
    o->lr = 1e-2f;
    o->batch = 3;
    o->accum = 2;
    o->seq_len = 32;
    o->steps = 6;
    o->threads = 2;
    o->json = 1;
    o->model_dropout = 0.1f; /* attention dropout under the packed mask too */
    o->packing = 1;
}

static int stop_at_3(void *ud, const dt_progress *p)
{
    (void)ud;
    return p->step == 3;
}

static int64_t g_total;
static int note_total(void *ud, const dt_progress *p)
{
    (void)ud;
    g_total = p->total_steps;
    return 0;
}

static char *slurp(const char *path, size_t *len)
{
    char *buf, err[DT_ERR_LEN];
    if (dt_read_file(path, &buf, len, err))
        fail_msg("%s", err);
    return buf;
}

static void test_packed_run_resumed_is_byte_identical(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out1[300], out2[300], model[300], data[300], p1[400], p2[400];
    dt_train_opts o;
    snprintf(out1, sizeof out1, "%s/run1", g_dir);
    snprintf(out2, sizeof out2, "%s/run2", g_dir);
    opts(&o, out1, model, data);
    if (dt_train(&o, err))
        fail_msg("%s", err);
    opts(&o, out2, model, data);
    o.on_progress = stop_at_3;
    assert_int_equal(dt_train(&o, err), DT_ECANCEL);
    /* 3 steps of 2 x 3 packed sequences took more rows than 18 unpacked */
    snprintf(p2, sizeof p2, "%s/checkpoints/step-00000003/state.json", out2);
    json_t *st = json_load_file(p2, 0, NULL);
    assert_non_null(st);
    long dp = (long)json_integer_value(json_object_get(st, "data_pos"));
    json_decref(st);
    printf("data position after 3 packed steps: %ld rows\n", dp);
    assert_true(dp > 3 * 2 * 3 + 6);
    o.on_progress = NULL;
    o.resume = 1;
    if (dt_train(&o, err))
        fail_msg("%s", err);
    snprintf(p1, sizeof p1, "%s/merged/model.safetensors", out1);
    snprintf(p2, sizeof p2, "%s/merged/model.safetensors", out2);
    size_t n1, n2;
    char *a = slurp(p1, &n1), *b = slurp(p2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
}

/* --epochs with packing: batch_size counts packed sequences, so one epoch
 * of 24 rows at 2-3 rows per sequence takes fewer than ceil(24 / 3) steps. */
static void test_packed_epoch_counts_packed_sequences(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out[300], model[300], data[300];
    dt_train_opts o;
    snprintf(out, sizeof out, "%s/epoch", g_dir);
    opts(&o, out, model, data);
    o.accum = 1;
    o.steps = 0;
    o.epochs = 1;
    o.on_progress = note_total;
    if (dt_train(&o, err))
        fail_msg("%s", err);
    printf("one packed epoch: %lld steps (unpacked: 8)\n", (long long)g_total);
    assert_true(g_total >= 3 && g_total <= 4); /* 24 rows / (3 x 2..3 rows) */
}

static void test_unpacked_checkpoint_is_not_resumed_packed(void **s)
{
    (void)s;
    char err[DT_ERR_LEN], out[300], model[300], data[300];
    dt_train_opts o;
    snprintf(out, sizeof out, "%s/mixed", g_dir);
    opts(&o, out, model, data);
    o.packing = 0;
    o.on_progress = stop_at_3;
    assert_int_equal(dt_train(&o, err), DT_ECANCEL);
    o.on_progress = NULL;
    o.packing = 1;
    o.resume = 1;
    assert_int_equal(dt_train(&o, err), DT_EINVAL);
    assert_non_null(strstr(err, "--packing"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_full_packed_equals_unpacked_cpu),
        cmocka_unit_test(test_gpt2_lora_packed_equals_unpacked_cpu),
        cmocka_unit_test(test_llama_full_packed_equals_unpacked_cpu),
        cmocka_unit_test(test_llama_lora_packed_equals_unpacked_cpu),
        cmocka_unit_test(test_packing_without_segments_differs),
        cmocka_unit_test(test_bad_positions_are_refused),
        cmocka_unit_test(test_estimate_counts_the_naive_score_workspace),
        cmocka_unit_test(test_batches_pad_to_the_longest_row_and_pack_rows),
        cmocka_unit_test(test_gpt2_full_packed_equals_unpacked_gpu),
        cmocka_unit_test(test_llama_full_packed_equals_unpacked_gpu),
        cmocka_unit_test_setup_teardown(test_packed_run_resumed_is_byte_identical, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_packed_epoch_counts_packed_sequences, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_unpacked_checkpoint_is_not_resumed_packed, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
