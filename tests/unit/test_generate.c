/* test_generate.c: the KV-cached decoder (gpu/generate.c) against the
 * no-cache path `deltatune generate` used before it: a full forward pass
 * over the whole prefix and the argmax of the last position's logits. For
 * the GPT-2 and Llama (GQA, RoPE) tiny fixtures, with and without LoRA
 * factors, several prompts, 40 new greedy tokens: the same tokens, and each
 * step's logits within 1e-5 relative (normalised error) of the full
 * forward's. The batched decode step (continuous batching) against the same
 * sequences stepped alone: the same logits within 1e-5 and the same greedy
 * tokens, sequences joining and retiring between steps. About 8 s on this
 * machine (2 shared cores). */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/dt.h"
#include "gpu/backend.h"
#include "gpu/generate.h"
#include "gpu/model.h"

#define REF "tests/fixtures/ref"
#define NEW 40

static double nerr(const float *a, const float *b, long n)
{
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

typedef struct step_log {
    float *logits; /* (NEW, V) */
    int n;
} step_log;

static void keep_logits(void *ud, int step, const float *logits, int V)
{
    step_log *s = ud;
    assert_int_equal(step, s->n);
    memcpy(s->logits + (size_t)step * V, logits, (size_t)V * sizeof(float));
    s->n++;
}

/* Greedy decoding of `prompts` prompts with the decoder and the old path. */
static void run_case(const char *dir, int lora, int threads)
{
    char err[DT_ERR_LEN] = "", path[256];
    snprintf(path, sizeof path, REF "/%s", dir);
    dt_backend *be = dt_backend_new("cpu", threads, err);
    assert_non_null(be);
    dt_weights w;
    memset(&w, 0, sizeof w);
    if (dt_weights_load(path, &w, err))
        fail_msg("%s: %s (run make fixtures)", path, err);
    int V = w.cfg.vocab, T = w.cfg.max_pos;
    dt_lora_opts lo = {DT_LORA, lora ? 4 : 0, 8.0f, 0, DT_PREC_FP32, 0, 0.0f};
    if (lora && dt_parse_targets("all", w.cfg.arch, &lo.targets, err))
        fail_msg("%s", err);
    dt_model *m = NULL;
    assert_int_equal(dt_model_new(be, &w, &lo, 1, T, 7, &m, err), 0);
    uint64_t rs = 12345;
    if (lora) { /* B starts at zero: give the adapters some effect */
        int np = 0;
        dt_param *p = dt_model_params(m, &np);
        for (int i = 0; i < np; i++) {
            float *h = malloc((size_t)p[i].n * sizeof *h);
            for (long j = 0; j < p[i].n; j++)
                h[j] = ((float)(rng_next(&rs) % 2001) - 1000.0f) * 2e-4f;
            be->i.upload(be, p[i].p, h, (size_t)p[i].n * sizeof *h);
            free(h);
        }
    }
    dt_decoder *d = NULL;
    assert_int_equal(dt_decoder_new(m, T, &d, err), 0);
    float *full = malloc((size_t)T * V * sizeof *full);
    step_log log = {malloc((size_t)NEW * V * sizeof(float)), 0};
    int32_t ids[64];
    const int lens[] = {1, 5, 17};
    for (int pi = 0; pi < 3; pi++) {
        int n = lens[pi];
        for (int i = 0; i < n; i++)
            ids[i] = (int32_t)(rng_next(&rs) % (uint64_t)V);
        dt_gen_opts o = {.max_tokens = NEW, .temperature = 0.0f, .top_p = 1.0f,
                         .eos = -1};
        int32_t *out = NULL;
        int nout = 0;
        const char *finish = NULL;
        log.n = 0;
        if (dt_generate(d, ids, n, &o, &out, &nout, &finish, keep_logits, &log,
                        err))
            fail_msg("dt_generate: %s", err);
        assert_int_equal(nout, NEW);
        assert_string_equal(finish, "length");
        assert_int_equal(log.n, NEW);
        /* the old path: the whole prefix every step, argmax of the last row */
        for (int s = 0; s < NEW; s++) {
            int t = n + s;
            assert_int_equal(dt_model_forward(m, ids, NULL, 1, t, 0.0f, NULL,
                                              NULL, err), 0);
            assert_int_equal(dt_model_logits(m, full, 1, t, err), 0);
            const float *row = full + (size_t)(t - 1) * V;
            int best = 0;
            for (int j = 1; j < V; j++)
                if (row[j] > row[best])
                    best = j;
            double e = nerr(log.logits + (size_t)s * V, row, V);
            if (e > 1e-5)
                fail_msg("%s lora=%d prompt %d step %d: logits differ by %g",
                         dir, lora, pi, s, e);
            if (out[s] != best)
                fail_msg("%s lora=%d prompt %d step %d: token %d, full "
                         "forward %d", dir, lora, pi, s, out[s], best);
            ids[t] = best;
        }
        free(out);
    }
    free(log.logits);
    free(full);
    dt_decoder_free(d);
    dt_model_free(m);
    dt_weights_free(&w);
    dt_backend_free(be);
}

static void test_gpt2_cached_greedy_equals_full_forward(void **s)
{
    (void)s;
    run_case("gpt2_model", 0, 1);
    run_case("gpt2_model", 0, 2);
}

static void test_llama_gqa_cached_greedy_equals_full_forward(void **s)
{
    (void)s;
    run_case("llama_model", 0, 1);
    run_case("llama_model", 0, 2);
    /* Llama 3 rope scaling and Qwen 2's q/k/v biases: the decoder rotates
     * by the model's RoPE table and adds the biases as the forward pass does */
    run_case("llama3_model", 0, 1);
    run_case("qwen2_model", 0, 1);
    /* Qwen 3: q_norm/k_norm per head before RoPE, head_dim·n_head != C */
    run_case("qwen3_model", 0, 1);
}

static void test_lora_cached_greedy_equals_full_forward(void **s)
{
    (void)s;
    run_case("gpt2_model", 1, 2);
    run_case("llama_model", 1, 2);
}

/* A prompt that fills the context is refused with a message, not run past
 * the cache; EOS stops with finish "stop". */
static void test_limits_and_eos(void **s)
{
    (void)s;
    char err[DT_ERR_LEN] = "";
    dt_backend *be = dt_backend_new("cpu", 1, err);
    dt_weights w;
    memset(&w, 0, sizeof w);
    assert_int_equal(dt_weights_load(REF "/llama_model", &w, err), 0);
    dt_lora_opts lo = {DT_LORA, 0, 0.0f, 0, DT_PREC_FP32, 0, 0.0f};
    dt_model *m = NULL;
    assert_int_equal(dt_model_new(be, &w, &lo, 1, 8, 0, &m, err), 0);
    dt_decoder *d = NULL;
    assert_int_equal(dt_decoder_new(m, 64, &d, err), 0);
    int32_t ids[64] = {0};
    for (int i = 0; i < 64; i++)
        ids[i] = i % 96;
    dt_gen_opts o = {.max_tokens = 10, .top_p = 1.0f, .eos = -1};
    int32_t *out = NULL;
    int nout = 0;
    const char *finish = NULL;
    assert_int_not_equal(dt_generate(d, ids, 64, &o, &out, &nout, &finish,
                                     NULL, NULL, err), 0);
    assert_non_null(strstr(err, "the model takes 64"));
    /* a 20-token prompt with the model's 8-row buffers: fed in chunks; then
     * the first greedy token made EOS stops at once */
    assert_int_equal(dt_generate(d, ids, 20, &o, &out, &nout, &finish, NULL,
                                 NULL, err), 0);
    assert_int_equal(nout, 10);
    int32_t first = out[0];
    free(out);
    o.eos = first;
    assert_int_equal(dt_generate(d, ids, 20, &o, &out, &nout, &finish, NULL,
                                 NULL, err), 0);
    assert_int_equal(nout, 0);
    assert_string_equal(finish, "stop");
    free(out);
    /* sampling is reproducible from the seed */
    int32_t *a = NULL, *b = NULL;
    int na = 0, nb = 0;
    dt_gen_opts so = {.max_tokens = 12, .temperature = 1.0f, .top_p = 0.9f,
                      .seed = 3, .eos = -1};
    assert_int_equal(dt_generate(d, ids, 5, &so, &a, &na, &finish, NULL, NULL,
                                 err), 0);
    assert_int_equal(dt_generate(d, ids, 5, &so, &b, &nb, &finish, NULL, NULL,
                                 err), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, (size_t)na * sizeof *a);
    free(a);
    free(b);
    dt_decoder_free(d);
    dt_model_free(m);
    dt_weights_free(&w);
    dt_backend_free(be);
}

/* ---- continuous batching ------------------------------------------------- */

static int argmax(const float *x, int V)
{
    int best = 0;
    for (int j = 1; j < V; j++)
        if (x[j] > x[best])
            best = j;
    return best;
}

/* nseq sequences with prompts of different lengths, greedy: one set of
 * decoders steps together through dt_decoder_step_batch, the other one by
 * one through dt_decoder_feed. Sequence i joins at step i % 3 (continuous
 * batching admits between steps) and the batch shrinks as the short
 * sequences retire; each batched row's logits equal its lone step's within
 * 1e-5 and the greedy tokens are identical. rows: the model's activation
 * rows (the scratch), below nseq to exercise chunked batches. */
static void run_batch_case(const char *dir, int lora, int rows, int nseq)
{
    char err[DT_ERR_LEN] = "", path[256];
    snprintf(path, sizeof path, REF "/%s", dir);
    dt_backend *be = dt_backend_new("cpu", 2, err);
    assert_non_null(be);
    dt_weights w;
    memset(&w, 0, sizeof w);
    if (dt_weights_load(path, &w, err))
        fail_msg("%s: %s (run make fixtures)", path, err);
    int V = w.cfg.vocab;
    dt_lora_opts lo = {DT_LORA, lora ? 4 : 0, 8.0f, 0, DT_PREC_FP32, 0, 0.0f};
    if (lora && dt_parse_targets("all", w.cfg.arch, &lo.targets, err))
        fail_msg("%s", err);
    dt_model *m = NULL;
    assert_int_equal(dt_model_new(be, &w, &lo, 1, rows, 7, &m, err), 0);
    uint64_t rs = 777;
    if (lora) {
        int np = 0;
        dt_param *p = dt_model_params(m, &np);
        for (int i = 0; i < np; i++) {
            float *h = malloc((size_t)p[i].n * sizeof *h);
            for (long j = 0; j < p[i].n; j++)
                h[j] = ((float)(rng_next(&rs) % 2001) - 1000.0f) * 2e-4f;
            be->i.upload(be, p[i].p, h, (size_t)p[i].n * sizeof *h);
            free(h);
        }
    }
    enum { MAXS = 16, STEPS = 24 };
    assert_true(nseq <= MAXS);
    dt_decoder *bat[MAXS], *one[MAXS], *act[MAXS];
    int32_t next_b[MAXS], next_o[MAXS], feed[MAXS], who[MAXS];
    int steps[MAXS], done[MAXS];
    float *lb = malloc((size_t)MAXS * V * sizeof(float));
    float *lo1 = malloc((size_t)V * sizeof(float));
    for (int i = 0; i < nseq; i++) {
        int plen = 1 + (i * 5) % 13, maxT = plen + STEPS + 2;
        /* caches of different sizes: the scratch is the one with most rows */
        assert_int_equal(dt_decoder_new(m, maxT + i, &bat[i], err), 0);
        assert_int_equal(dt_decoder_new(m, maxT, &one[i], err), 0);
        int32_t ids[16];
        for (int k = 0; k < plen; k++)
            ids[k] = (int32_t)(rng_next(&rs) % (uint64_t)V);
        assert_int_equal(dt_decoder_feed(bat[i], ids, plen, lb, err), 0);
        next_b[i] = argmax(lb, V);
        assert_int_equal(dt_decoder_feed(one[i], ids, plen, lo1, err), 0);
        next_o[i] = argmax(lo1, V);
        assert_int_equal(next_b[i], next_o[i]);
        steps[i] = STEPS - (i % 4) * 5; /* retire at different steps */
        done[i] = 0;
    }
    int batched_max = 0;
    for (int s = 0; s < STEPS + 3; s++) {
        int n = 0;
        for (int i = 0; i < nseq; i++)
            if (s >= i % 3 && done[i] < steps[i]) {
                act[n] = bat[i];
                feed[n] = next_b[i];
                who[n++] = i;
            }
        if (!n)
            break;
        if (n > batched_max)
            batched_max = n;
        if (dt_decoder_step_batch(act, n, feed, lb, err))
            fail_msg("step_batch: %s", err);
        for (int r = 0; r < n; r++) {
            int i = who[r];
            assert_int_equal(dt_decoder_feed(one[i], &next_o[i], 1, lo1, err), 0);
            double e = nerr(lb + (size_t)r * V, lo1, V);
            if (e > 1e-5)
                fail_msg("%s lora=%d seq %d step %d (batch of %d): logits differ by %g",
                         dir, lora, i, done[i], n, e);
            next_b[i] = argmax(lb + (size_t)r * V, V);
            next_o[i] = argmax(lo1, V);
            if (next_b[i] != next_o[i])
                fail_msg("%s seq %d step %d: batched token %d, alone %d", dir, i,
                         done[i], next_b[i], next_o[i]);
            assert_int_equal(dt_decoder_len(bat[i]), dt_decoder_len(one[i]));
            done[i]++;
        }
    }
    assert_int_equal(batched_max, nseq);
    for (int i = 0; i < nseq; i++) {
        assert_int_equal(done[i], steps[i]);
        dt_decoder_free(bat[i]);
        dt_decoder_free(one[i]);
    }
    free(lb);
    free(lo1);
    dt_model_free(m);
    dt_weights_free(&w);
    dt_backend_free(be);
}

static void test_batched_step_equals_single_sequence_steps(void **s)
{
    (void)s;
    run_batch_case("gpt2_model", 0, 64, 5);
    run_batch_case("llama_model", 0, 64, 5);
    run_batch_case("qwen3_model", 0, 64, 4);
    run_batch_case("gpt2_model", 1, 64, 4);
    run_batch_case("llama_model", 1, 64, 4);
}

static void test_batched_step_larger_than_scratch_runs_in_chunks(void **s)
{
    (void)s;
    /* 4 activation rows per decoder, 11 sequences: chunks of 4, 4 and 3 */
    run_batch_case("llama_model", 0, 4, 11);
    run_batch_case("gpt2_model", 0, 4, 11);
}

/* Sequences of two models, a sequence twice, an empty cache: refused. */
static void test_batched_step_refuses_bad_batches(void **s)
{
    (void)s;
    char err[DT_ERR_LEN] = "";
    dt_backend *be = dt_backend_new("cpu", 1, err);
    dt_weights w;
    memset(&w, 0, sizeof w);
    assert_int_equal(dt_weights_load(REF "/llama_model", &w, err), 0);
    dt_lora_opts lo = {DT_LORA, 0, 0.0f, 0, DT_PREC_FP32, 0, 0.0f};
    dt_model *m1 = NULL, *m2 = NULL;
    assert_int_equal(dt_model_new(be, &w, &lo, 1, 8, 0, &m1, err), 0);
    assert_int_equal(dt_model_new(be, &w, &lo, 1, 8, 0, &m2, err), 0);
    dt_decoder *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(dt_decoder_new(m1, 16, &a, err), 0);
    assert_int_equal(dt_decoder_new(m2, 16, &b, err), 0);
    assert_int_equal(dt_decoder_new(m1, 16, &c, err), 0);
    int32_t ids[2] = {3, 4};
    assert_int_equal(dt_decoder_feed(a, ids, 2, NULL, err), 0);
    assert_int_equal(dt_decoder_feed(b, ids, 2, NULL, err), 0);
    dt_decoder *two[2] = {a, b};
    assert_int_equal(dt_decoder_step_batch(two, 2, ids, NULL, err), DT_EINVAL);
    assert_non_null(strstr(err, "another model"));
    dt_decoder *dup[2] = {a, a};
    assert_int_equal(dt_decoder_step_batch(dup, 2, ids, NULL, err), DT_EINVAL);
    assert_non_null(strstr(err, "twice"));
    dt_decoder *empty[2] = {a, c};
    assert_int_equal(dt_decoder_step_batch(empty, 2, ids, NULL, err), DT_EINVAL);
    int32_t bad[1] = {100000};
    assert_int_equal(dt_decoder_step_batch(&a, 1, bad, NULL, err), DT_EINVAL);
    assert_non_null(strstr(err, "out of range"));
    assert_int_equal(dt_decoder_len(a), 2); /* nothing ran */
    dt_decoder_free(a);
    dt_decoder_free(b);
    dt_decoder_free(c);
    dt_model_free(m1);
    dt_model_free(m2);
    dt_weights_free(&w);
    dt_backend_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_cached_greedy_equals_full_forward),
        cmocka_unit_test(test_llama_gqa_cached_greedy_equals_full_forward),
        cmocka_unit_test(test_lora_cached_greedy_equals_full_forward),
        cmocka_unit_test(test_limits_and_eos),
        cmocka_unit_test(test_batched_step_equals_single_sequence_steps),
        cmocka_unit_test(test_batched_step_larger_than_scratch_runs_in_chunks),
        cmocka_unit_test(test_batched_step_refuses_bad_batches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
