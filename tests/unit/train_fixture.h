/* train_fixture.h: the training-loop fixture of test_train and
 * test_packing: a temporary directory (g_dir) holding a model directory,
 * the tiny GPT-2 reference fixture's weights with the GPT-2 tokenizer that
 * scripts/install-deps fetches (symlinked), and data.jsonl, 24 rows of
 * 10..16 pre-tokenized ids below the tiny vocabulary (96); the options of a
 * short Delta-LoRA run on it; a progress callback that stops the run at
 * step 3; a whole-file read, two runs' merged models compared; and, for model-level tests on a reference
 * model's weights, a model with its parameters nudged off their init and
 * its gradients read back. Header-only (static), for the two test
 * programs, included after cmocka.h; tf_setup / tf_teardown are cmocka
 * setup and teardown. */
#ifndef DT_TEST_TRAIN_FIXTURE_H
#define DT_TEST_TRAIN_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dt.h"
#include "base/file.h"
#include "gpu/backend.h"
#include "gpu/model.h"
#include "gpu/train.h"

#define TF_GPT2_FIX "tests/fixtures/ref/gpt2_model"
#define TF_GPT2_TOK ".cache/gpt2-tokenizer"

static char g_dir[256];

static int tf_setup(void **s)
{
    (void)s;
    char cwd[1024], a[1400], b[1400];
    snprintf(g_dir, sizeof g_dir, "/tmp/dt_train_XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(b, sizeof b, "%s/model", g_dir);
    mkdir(b, 0755);
    const char *files[] = {TF_GPT2_FIX "/config.json", TF_GPT2_FIX "/model.safetensors",
                           TF_GPT2_TOK "/vocab.json", TF_GPT2_TOK "/merges.txt"};
    for (int i = 0; i < 4; i++) {
        snprintf(a, sizeof a, "%s/%s", cwd, files[i]);
        snprintf(b, sizeof b, "%s/model/%s", g_dir, strrchr(files[i], '/') + 1);
        assert_int_equal(symlink(a, b), 0);
    }
    snprintf(b, sizeof b, "%s/data.jsonl", g_dir);
    FILE *f = fopen(b, "w");
    assert_non_null(f);
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

static int tf_teardown(void **s)
{
    (void)s;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A 6-step Delta-LoRA run (rank 4, q,v, batch 3, seq_len 16, 2 threads)
 * of the fixture's model on its data into out; model and data (300 bytes
 * each) receive the paths. */
static void tf_opts(dt_train_opts *o, const char *out, char *model, char *data)
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
    o->seq_len = 16;
    o->steps = 6;
    o->threads = 2;
    o->json = 1;
}

static int tf_stop_at_3(void *ud, const dt_progress *p)
{
    (void)ud;
    return p->step == 3;
}

/* The whole file (new buffer, the caller frees); fails the test if it
 * cannot be read. */
static char *tf_slurp(const char *path, size_t *len)
{
    char *buf, err[DT_ERR_LEN];
    if (dt_read_file(path, &buf, len, err))
        fail_msg("%s", err);
    return buf;
}

/* The merged models (merged/model.safetensors) two runs into out1 and out2
 * exported are byte-identical. */
static void tf_assert_same_merged(const char *out1, const char *out2)
{
    char p1[400], p2[400];
    snprintf(p1, sizeof p1, "%s/merged/model.safetensors", out1);
    snprintf(p2, sizeof p2, "%s/merged/model.safetensors", out2);
    size_t n1, n2;
    char *a = tf_slurp(p1, &n1), *b = tf_slurp(p2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
}

/* A model on be of the reference weights in dir (loaded into w; the caller
 * frees both) for B rows of T positions: full, or method's adapters (rank
 * 4, alpha 8) on targets, every trainable tensor then moved off its init
 * by the same deterministic amounts (LoRA's B non-zero, so that A receives
 * gradient), so two models built alike hold the same values. */
static dt_model *tf_model(dt_backend *be, dt_weights *w, const char *dir, const char *targets,
                          dt_method method, int B, int T)
{
    char err[DT_ERR_LEN];
    if (dt_weights_load(dir, w, err))
        fail_msg("%s", err);
    dt_lora_opts lo = {method, 4, 8.0f, 0, DT_PREC_FP32, 0, 0.0f, 0};
    if (method != DT_FULL)
        assert_int_equal(dt_parse_targets(targets, w->cfg.arch, &lo.targets, err), 0);
    dt_model *m;
    if (dt_model_new(be, w, &lo, B, T, 7, &m, err))
        fail_msg("%s", err);
    int np;
    dt_param *ps = dt_model_params(m, &np);
    for (int i = 0; i < np; i++) {
        float *h = malloc((size_t)ps[i].n * sizeof(float));
        assert_non_null(h);
        be->i.download(be, h, ps[i].p, (size_t)ps[i].n * sizeof(float));
        for (long j = 0; j < ps[i].n; j++)
            h[j] += 0.01f * (float)((j * 2654435761u) % 1000) / 1000.0f;
        be->i.upload(be, ps[i].p, h, (size_t)ps[i].n * sizeof(float));
        free(h);
    }
    return m;
}

/* Every trainable tensor's gradient, concatenated (new array of *total
 * floats). */
static float *tf_grads(dt_backend *be, dt_model *m, long *total)
{
    int np;
    dt_param *ps = dt_model_params(m, &np);
    long n = 0;
    for (int i = 0; i < np; i++)
        n += ps[i].n;
    float *out = malloc((size_t)n * sizeof(float)), *p = out;
    assert_non_null(out);
    for (int i = 0; i < np; i++) {
        be->i.download(be, p, ps[i].g, (size_t)ps[i].n * sizeof(float));
        p += ps[i].n;
    }
    *total = n;
    return out;
}

#endif
