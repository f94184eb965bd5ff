/* test_generate.c: the KV-cached decoder (gpu/generate.c) against the
 * no-cache path `deltatune generate` used before it: a full forward pass
 * over the whole prefix and the argmax of the last position's logits. For
 * the GPT-2 and Llama (GQA, RoPE) tiny fixtures, with and without LoRA
 * factors, several prompts, 40 new greedy tokens: the same tokens, and each
 * step's logits within 1e-5 relative (normalised error) of the full
 * forward's. The batched decode step (continuous batching) against the same
 * sequences stepped alone: the same logits within 1e-5 and the same greedy
 * tokens, sequences joining and retiring between steps. A LoRA and a
 * Delta-LoRA adapter applied over the shared base while decoding against the
 * merged model, alone and in a batch mixing adapters. About 8 s on this
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
#include "gpu/export.h"
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

/* The precision of the models of run_case and run_batch_case, and the
 * logits' tolerance: fp32 1e-5; bf16 1e-2, as the activations are rounded
 * to bf16 before each GEMM with a frozen weight and the paths' fp32
 * summation orders differ, so an element may round the other way (2^-9
 * relative each; measured up to 3.3e-4). */
static dt_precision g_prec = DT_PREC_FP32;
static double g_tol = 1e-5;

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
    dt_lora_opts lo = {DT_LORA, lora ? 4 : 0, 8.0f, 0, g_prec, 0, 0.0f, 0};
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
            if (e > g_tol)
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
    dt_lora_opts lo = {DT_LORA, 0, 0.0f, 0, DT_PREC_FP32, 0, 0.0f, 0};
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
    dt_lora_opts lo = {DT_LORA, lora ? 4 : 0, 8.0f, 0, g_prec, 0, 0.0f, 0};
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
    /* the prompts: the batch's prefilled together (dt_decoder_feed_batch:
     * whole prompts stacked into chunks of `rows` rows, one longer than a
     * chunk alone), the others one by one */
    int32_t pids[MAXS][16];
    const int32_t *pp[MAXS];
    int plens[MAXS];
    for (int i = 0; i < nseq; i++) {
        int plen = 1 + (i * 5) % 13, maxT = plen + STEPS + 2;
        /* caches of different sizes: the scratch is the one with most rows */
        assert_int_equal(dt_decoder_new(m, maxT + i, &bat[i], err), 0);
        assert_int_equal(dt_decoder_new(m, maxT, &one[i], err), 0);
        for (int k = 0; k < plen; k++)
            pids[i][k] = (int32_t)(rng_next(&rs) % (uint64_t)V);
        pp[i] = pids[i];
        plens[i] = plen;
        steps[i] = STEPS - (i % 4) * 5; /* retire at different steps */
        done[i] = 0;
    }
    if (dt_decoder_feed_batch(bat, nseq, pp, plens, lb, err))
        fail_msg("feed_batch: %s", err);
    for (int i = 0; i < nseq; i++) {
        assert_int_equal(dt_decoder_feed(one[i], pids[i], plens[i], lo1, err), 0);
        double e = nerr(lb + (size_t)i * V, lo1, V);
        if (e > 1e-5)
            fail_msg("%s lora=%d seq %d (%d prompt tokens, chunks of %d rows): prefill "
                     "logits differ by %g", dir, lora, i, plens[i], rows, e);
        next_b[i] = argmax(lb + (size_t)i * V, V);
        next_o[i] = argmax(lo1, V);
        assert_int_equal(next_b[i], next_o[i]);
        assert_int_equal(dt_decoder_len(bat[i]), plens[i]);
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
            if (e > g_tol)
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

/* --precision bf16: the frozen linears, the embedding table and the LM head
 * (GPT-2's tied, Llama's untied) in bf16 on the device; cached and batched
 * decoding read them as the forward pass does and give its tokens. */
static void test_bf16_decoding_equals_full_forward(void **s)
{
    (void)s;
    g_prec = DT_PREC_BF16;
    g_tol = 1e-2;
    run_case("gpt2_model", 1, 2);
    run_case("llama_model", 1, 2);
    run_batch_case("gpt2_model", 1, 64, 4);
    run_batch_case("llama_model", 0, 64, 4);
    g_prec = DT_PREC_FP32;
    g_tol = 1e-5;
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
    dt_lora_opts lo = {DT_LORA, 0, 0.0f, 0, DT_PREC_FP32, 0, 0.0f, 0};
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

/* ---- adapters over a shared base ---------------------------------------- */

static void randomize(float *h, long n, uint64_t *rs)
{
    for (long j = 0; j < n; j++)
        h[j] = ((float)(rng_next(rs) % 2001) - 1000.0f) * 2e-4f;
}

/* Greedy decoding of prompt ids(n) for NSTEP tokens on d: logits (NSTEP, V). */
#define NSTEP 12
static void decode_greedy(dt_decoder *d, const int32_t *ids, int n, float *logits, int V)
{
    char err[DT_ERR_LEN] = "";
    dt_decoder_reset(d);
    assert_int_equal(dt_decoder_feed(d, ids, n, logits, err), 0);
    for (int s = 1; s < NSTEP; s++) {
        int32_t next = argmax(logits + (size_t)(s - 1) * V, V);
        if (dt_decoder_feed(d, &next, 1, logits + (size_t)s * V, err))
            fail_msg("feed: %s", err);
    }
}

/* A LoRA (delta = 0) or Delta-LoRA (delta = 1, the exact rank-2r adapter)
 * fine-tune of the fixture `dir`, all targets: its PEFT adapter written by
 * the exporter, its merged weights computed here on the host (W + s·B·A;
 * W + s(1+λ)·B·A − sλ·B_K·A_K). The base with the adapter loaded beside it
 * decodes as the merged model does (logits within 1e-5, the same greedy
 * tokens), alone and in a batched step that mixes it with the bare base;
 * the adapter's device bytes are its factors alone. */
static void run_adapter_case(const char *dir, int delta)
{
    char err[DT_ERR_LEN] = "", path[256], tmp[] = "/tmp/dt_adapter_XXXXXX";
    snprintf(path, sizeof path, REF "/%s", dir);
    assert_non_null(mkdtemp(tmp));
    dt_backend *be = dt_backend_new("cpu", 2, err);
    dt_weights w, mw, bw;
    memset(&w, 0, sizeof w);
    memset(&mw, 0, sizeof mw);
    memset(&bw, 0, sizeof bw);
    if (dt_weights_load(path, &w, err) || dt_weights_load(path, &mw, err) ||
        dt_weights_load(path, &bw, err))
        fail_msg("%s: %s (run make fixtures)", path, err);
    int V = w.cfg.vocab, r = 4;
    float alpha = 8.0f, lambda = 0.5f, s = alpha / (float)r;
    dt_lora_opts lo = {DT_LORA, r, alpha, 0, DT_PREC_FP32, 0, 0.0f, 0};
    assert_int_equal(dt_parse_targets("all", w.cfg.arch, &lo.targets, err), 0);
    dt_model *mt = NULL;
    assert_int_equal(dt_model_new(be, &w, &lo, 1, 16, 7, &mt, err), 0);
    int nl = 0;
    dt_lora *ls = dt_model_loras(mt, &nl);
    assert_true(nl > 0);
    dt_adapter_entry *e = calloc((size_t)nl, sizeof *e);
    float **AK = calloc((size_t)nl, sizeof *AK), **BK = calloc((size_t)nl, sizeof *BK);
    uint64_t rs = 4242;
    long long want_bytes = 0;
    for (int i = 0; i < nl; i++) {
        const dt_tensor *W = dt_tensorset_find(&mw.ts, ls[i].wname);
        assert_non_null(W);
        float *A = malloc((size_t)r * ls[i].in * sizeof *A);
        float *B = malloc((size_t)ls[i].rows * r * sizeof *B);
        randomize(A, (long)r * ls[i].in, &rs);
        randomize(B, (long)ls[i].rows * r, &rs);
        e[i] = (dt_adapter_entry){ls[i].wname, ls[i].row_off, ls[i].rows,
                                  (int)W->shape[0], ls[i].in, r, A, B};
        float *Wd = W->data;
        for (int o = 0; o < ls[i].rows; o++)
            for (int k = 0; k < ls[i].in; k++) {
                double acc = 0;
                for (int j = 0; j < r; j++)
                    acc += (double)B[(size_t)o * r + j] * A[(size_t)j * ls[i].in + k];
                Wd[(size_t)(ls[i].row_off + o) * ls[i].in + k] +=
                    (float)((delta ? s * (1 + lambda) : s) * acc);
            }
        if (delta) {
            AK[i] = malloc((size_t)r * ls[i].in * sizeof **AK);
            BK[i] = malloc((size_t)ls[i].rows * r * sizeof **BK);
            randomize(AK[i], (long)r * ls[i].in, &rs);
            randomize(BK[i], (long)ls[i].rows * r, &rs);
            for (int o = 0; o < ls[i].rows; o++)
                for (int k = 0; k < ls[i].in; k++) {
                    double acc = 0;
                    for (int j = 0; j < r; j++)
                        acc += (double)BK[i][(size_t)o * r + j] * AK[i][(size_t)j * ls[i].in + k];
                    Wd[(size_t)(ls[i].row_off + o) * ls[i].in + k] -= (float)(s * lambda * acc);
                }
        }
    }
    if (delta)
        assert_int_equal(dt_export_peft_delta(&w, e, (const float *const *)AK,
                                              (const float *const *)BK, nl, alpha, lambda,
                                              NULL, tmp, err), 0);
    else
        assert_int_equal(dt_export_peft(&w, e, nl, alpha, NULL, tmp, err), 0);
    /* the adapter's factors: whole modules (GPT-2's q, k, v slices as one
     * block adapter on c_attn), rank r or 2r */
    {
        dt_peft_adapter pa;
        assert_int_equal(dt_peft_load(tmp, &w, &pa, err), 0);
        assert_int_equal(pa.rank, delta ? 2 * r : r);
        for (int i = 0; i < pa.ts.n; i++)
            want_bytes += pa.ts.t[i].numel * 4;
        dt_peft_free(&pa);
    }

    dt_lora_opts plain = {DT_LORA, 0, 0.0f, 0, DT_PREC_FP32, 0, 0.0f, 0};
    dt_model *mm = NULL, *mb = NULL;
    assert_int_equal(dt_model_new(be, &mw, &plain, 1, 16, 0, &mm, err), 0);
    assert_int_equal(dt_model_new(be, &bw, &plain, 1, 16, 0, &mb, err), 0);
    dt_decoder_adapter *ad = NULL;
    if (dt_decoder_adapter_load(mb, &bw, tmp, &ad, err))
        fail_msg("adapter: %s", err);
    assert_int_equal(dt_decoder_adapter_bytes(ad), want_bytes);
    dt_decoder *dm = NULL, *da = NULL, *db = NULL;
    int maxT = 40;
    assert_int_equal(dt_decoder_new(mm, maxT, &dm, err), 0);
    assert_int_equal(dt_decoder_new(mb, maxT, &da, err), 0);
    assert_int_equal(dt_decoder_new(mb, maxT, &db, err), 0);
    dt_decoder_set_adapter(da, ad);
    float *lm = malloc((size_t)NSTEP * V * sizeof *lm);
    float *la = malloc((size_t)NSTEP * V * sizeof *la);
    float *lb = malloc((size_t)NSTEP * V * sizeof *lb);
    int32_t ids[20];
    for (int i = 0; i < 20; i++)
        ids[i] = (int32_t)(rng_next(&rs) % (uint64_t)V);
    decode_greedy(dm, ids, 20, lm, V);
    decode_greedy(da, ids, 20, la, V);
    decode_greedy(db, ids, 20, lb, V); /* the bare base, for the mixed batch */
    double moved = nerr(lb, lm, V);
    if (moved < 1e-3)
        fail_msg("%s: the fine-tune hardly moves the logits (%g): a weak test", dir, moved);
    for (int t = 0; t < NSTEP; t++) {
        double e1 = nerr(la + (size_t)t * V, lm + (size_t)t * V, V);
        if (e1 > 1e-5)
            fail_msg("%s delta=%d step %d: base+adapter logits differ from the merged "
                     "model's by %g", dir, delta, t, e1);
        assert_int_equal(argmax(la + (size_t)t * V, V), argmax(lm + (size_t)t * V, V));
    }
    /* a batch mixing the adapter and the bare base over one base model:
     * row 0 and 2 with the adapter (as the merged model), row 1 without */
    dt_decoder *x0 = NULL, *x1 = NULL, *x2 = NULL;
    assert_int_equal(dt_decoder_new(mb, maxT, &x0, err), 0);
    assert_int_equal(dt_decoder_new(mb, maxT, &x1, err), 0);
    assert_int_equal(dt_decoder_new(mb, maxT, &x2, err), 0);
    dt_decoder_set_adapter(x0, ad);
    dt_decoder_set_adapter(x2, ad);
    float *l3 = malloc((size_t)3 * V * sizeof *l3);
    dt_decoder *xs[3] = {x0, x1, x2};
    for (int i = 0; i < 3; i++)
        assert_int_equal(dt_decoder_feed(xs[i], ids, 20, l3, err), 0);
    for (int t = 1; t < NSTEP; t++) {
        int32_t nx[3] = {argmax(lm + (size_t)(t - 1) * V, V), argmax(lb + (size_t)(t - 1) * V, V),
                         argmax(lm + (size_t)(t - 1) * V, V)};
        assert_int_equal(dt_decoder_step_batch(xs, 3, nx, l3, err), 0);
        double e0 = nerr(l3, lm + (size_t)t * V, V);
        double e1 = nerr(l3 + V, lb + (size_t)t * V, V);
        double e2 = nerr(l3 + 2 * (size_t)V, lm + (size_t)t * V, V);
        if (e0 > 1e-5 || e1 > 1e-5 || e2 > 1e-5)
            fail_msg("%s delta=%d mixed batch step %d: %g %g %g", dir, delta, t, e0, e1, e2);
    }
    free(l3);
    dt_decoder_free(x0);
    dt_decoder_free(x1);
    dt_decoder_free(x2);
    free(lm);
    free(la);
    free(lb);
    dt_decoder_free(dm);
    dt_decoder_free(da);
    dt_decoder_free(db);
    dt_decoder_adapter_free(ad);
    dt_model_free(mm);
    dt_model_free(mb);
    dt_model_free(mt);
    for (int i = 0; i < nl; i++) {
        free((void *)e[i].A);
        free((void *)e[i].B);
        free(AK[i]);
        free(BK[i]);
    }
    free(e);
    free(AK);
    free(BK);
    dt_weights_free(&w);
    dt_weights_free(&mw);
    dt_weights_free(&bw);
    dt_backend_free(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
}

static void test_lora_adapter_over_base_equals_merged_model(void **s)
{
    (void)s;
    run_adapter_case("gpt2_model", 0);
    run_adapter_case("llama_model", 0);
}

static void test_delta_lora_exact_adapter_over_base_equals_merged_model(void **s)
{
    (void)s;
    run_adapter_case("gpt2_model", 1);
    run_adapter_case("llama_model", 1);
    run_adapter_case("qwen3_model", 1);
}

/* An adapter whose tensor names no linear of the model: refused, naming it. */
static void test_adapter_for_another_model_is_refused(void **s)
{
    (void)s;
    char err[DT_ERR_LEN] = "", tmp[] = "/tmp/dt_adapter_XXXXXX";
    assert_non_null(mkdtemp(tmp));
    dt_backend *be = dt_backend_new("cpu", 1, err);
    dt_weights g, l;
    memset(&g, 0, sizeof g);
    memset(&l, 0, sizeof l);
    assert_int_equal(dt_weights_load(REF "/gpt2_model", &g, err), 0);
    assert_int_equal(dt_weights_load(REF "/llama_model", &l, err), 0);
    const dt_tensor *W = dt_tensorset_find(&g.ts, "h.0.attn.c_proj.weight");
    assert_non_null(W);
    int in = (int)W->shape[1], out = (int)W->shape[0];
    float *A = calloc((size_t)2 * in, sizeof *A), *B = calloc((size_t)out * 2, sizeof *B);
    dt_adapter_entry e = {"h.0.attn.c_proj.weight", 0, out, out, in, 2, A, B};
    assert_int_equal(dt_export_peft(&g, &e, 1, 4.0f, NULL, tmp, err), 0);
    dt_lora_opts plain = {DT_LORA, 0, 0.0f, 0, DT_PREC_FP32, 0, 0.0f, 0};
    dt_model *m = NULL;
    assert_int_equal(dt_model_new(be, &l, &plain, 1, 8, 0, &m, err), 0);
    dt_decoder_adapter *ad = NULL;
    assert_int_not_equal(dt_decoder_adapter_load(m, &l, tmp, &ad, err), 0);
    assert_null(ad);
    assert_non_null(strstr(err, "c_proj"));
    dt_model_free(m);
    free(A);
    free(B);
    dt_weights_free(&g);
    dt_weights_free(&l);
    dt_backend_free(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_cached_greedy_equals_full_forward),
        cmocka_unit_test(test_llama_gqa_cached_greedy_equals_full_forward),
        cmocka_unit_test(test_lora_cached_greedy_equals_full_forward),
        cmocka_unit_test(test_limits_and_eos),
        cmocka_unit_test(test_batched_step_equals_single_sequence_steps),
        cmocka_unit_test(test_bf16_decoding_equals_full_forward),
        cmocka_unit_test(test_batched_step_larger_than_scratch_runs_in_chunks),
        cmocka_unit_test(test_batched_step_refuses_bad_batches),
        cmocka_unit_test(test_lora_adapter_over_base_equals_merged_model),
        cmocka_unit_test(test_delta_lora_exact_adapter_over_base_equals_merged_model),
        cmocka_unit_test(test_adapter_for_another_model_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
