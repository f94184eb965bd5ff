/* test_gguf_write.c: the GGUF writer (gpu/gguf_write.c) against our own
 * reader (gpu/gguf.c + modelio.c): every tensor reads back within its type's
 * error (f16: exactly the f16 rounding; q8_0 and q4_0: the block bounds),
 * the configuration and tokenizer read back the same, the engine's logits on
 * the f16 file equal those of the Hugging Face f16 export, and what cannot
 * be written is refused naming the reason; GPT-2 is written as llama.cpp's
 * gpt2 architecture. Fixtures: tests/fixtures/ref
 * tiny Llama and Qwen2 models (a byte-level vocabulary of 96 tokens is
 * written next to them), SmolLM2 and the tokenizers of .cache (skipped when
 * missing). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dt.h"
#include "base/file.h"
#include "gpu/backend.h"
#include "gpu/export.h"
#include "gpu/gguf_write.h"
#include "gpu/half.h"
#include "gpu/model.h"

#define REF "tests/fixtures/ref"
#define SMOLLM ".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#define HFTOK ".cache/hf-tokenizers"

static char g_tmp[256];

static int rm_cb(const char *p, const struct stat *sb, int f, struct FTW *b)
{
    (void)sb; (void)f; (void)b;
    return remove(p);
}

static int setup(void **s)
{
    (void)s;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/dt_gguf_write_XXXXXX");
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int teardown(void **s)
{
    (void)s;
    return nftw(g_tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void put_file(const char *path, const char *text)
{
    char err[DT_ERR_LEN];
    if (dt_write_file_atomic(path, text, strlen(text), err))
        fail_msg("%s", err);
}

/* A model directory: the fixture's config.json and weights plus a GPT-2
 * style vocabulary of 96 tokens (the printable ASCII bytes, the space byte
 * "Ġ" and one merge), the vocabulary size of the fixtures. */
static void model_dir(const char *fixture, char *dir, size_t cap)
{
    snprintf(dir, cap, "%s/%s", g_tmp, fixture);
    mkdir(dir, 0755);
    char a[512], b[512];
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof a, "%s/" REF "/%s/%s", getcwd(b, sizeof b),
                 fixture, files[i]);
        char dst[512];
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        if (access(dst, F_OK) != 0)
            assert_int_equal(symlink(a, dst), 0);
    }
    char vocab[4096];
    int k = snprintf(vocab, sizeof vocab, "{");
    int id = 0;
    for (int c = 33; c <= 126; c++) {
        char e[8];
        if (c == '"' || c == '\\')
            snprintf(e, sizeof e, "\\%c", c);
        else
            snprintf(e, sizeof e, "%c", c);
        k += snprintf(vocab + k, sizeof vocab - (size_t)k, "\"%s\":%d,", e,
                      id++);
    }
    snprintf(vocab + k, sizeof vocab - (size_t)k,
             "\"\xc4\xa0\":%d,\"\xc4\xa0t\":%d}", id, id + 1);
    snprintf(a, sizeof a, "%s/vocab.json", dir);
    put_file(a, vocab);
    snprintf(a, sizeof a, "%s/merges.txt", dir);
    put_file(a, "#version: 0.2\n\xc4\xa0 t\n");
}

static double nerr(const float *a, const float *b, long n)
{
    double d = 0, r = 0;
    for (long i = 0; i < n; i++) {
        if (!isfinite(a[i]))
            return INFINITY;
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

/* Logits (T x vocab, malloc'd) of the model at w for ids. */
static float *logits_of(dt_weights *w, const int32_t *ids, int T)
{
    char err[DT_ERR_LEN];
    dt_backend *be = dt_backend_cpu_new(1, err);
    assert_non_null(be);
    dt_lora_opts lo = {DT_LORA, 0, 0, 0, DT_PREC_FP32, 0, 0.0f, 0};
    dt_model *m;
    if (dt_model_new(be, w, &lo, 1, T, 0, &m, err))
        fail_msg("%s", err);
    float *out = malloc((size_t)T * w->cfg.vocab * sizeof(float));
    assert_int_equal(dt_model_forward(m, ids, NULL, 1, T, 0.0f, NULL, NULL,
                                      err), 0);
    assert_int_equal(dt_model_logits(m, out, 1, T, err), 0);
    dt_model_free(m);
    dt_backend_free(be);
    return out;
}

/* Writes the model at src as type to out; returns the writer's code. */
static int export_to(const char *src, dt_gguf_type type, const char *out,
                     char *err)
{
    return dt_gguf_export(src, type, out, NULL, NULL, err);
}

static float f16r(float x)
{
    return dt_f16_to_f32(dt_f32_to_f16(x));
}

/* Checks one tensor read back from a file of `type` against the original:
 * 1-D exact, f16 the f16 rounding, q8_0 / q4_0 within the block bound
 * (half a step plus the f16 rounding of the scale; q4_0's largest value can
 * clamp by a whole step). */
static void check_tensor(const dt_tensor *o, const dt_tensor *r, int type,
                         const char *name)
{
    assert_int_equal(o->ndim, r->ndim);
    for (int d = 0; d < o->ndim; d++)
        assert_int_equal(o->shape[d], r->shape[d]);
    if (o->ndim == 1 || type == DT_GGUF_F16) {
        for (int64_t i = 0; i < o->numel; i++) {
            float want = o->ndim == 1 ? o->data[i] : f16r(o->data[i]);
            if (r->data[i] != want)
                fail_msg("%s[%lld] = %.9g, expected %.9g", name, (long long)i,
                         r->data[i], want);
        }
        return;
    }
    for (int64_t b = 0; b < o->numel / 32; b++) {
        const float *x = o->data + b * 32, *y = r->data + b * 32;
        float amax = 0;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float bound = type == DT_GGUF_Q8_0
                          ? amax / 127.0f * (0.5f + 127.0f / 1024.0f)
                          : amax / 8.0f * (1.0f + 8.0f / 1024.0f);
        for (int j = 0; j < 32; j++)
            if (fabsf(x[j] - y[j]) > bound + 1e-7f)
                fail_msg("%s block %lld [%d]: %.9g read back as %.9g (bound "
                         "%.3g)", name, (long long)b, j, x[j], y[j], bound);
    }
}

/* A file of each type reads back with the same configuration and every
 * tensor within its type's error; Q/K come back un-permuted (so the writer's
 * permutation is exactly the inverse of the reader's). */
static void roundtrip(const char *fixture)
{
    char dir[512], out[600], err[DT_ERR_LEN];
    model_dir(fixture, dir, sizeof dir);
    dt_weights w;
    if (dt_weights_load(dir, &w, err))
        fail_msg("%s", err);
    const dt_gguf_type types[] = {DT_GGUF_F16, DT_GGUF_Q8_0, DT_GGUF_Q4_0};
    for (int k = 0; k < 3; k++) {
        snprintf(out, sizeof out, "%s/%s-%s.gguf", g_tmp, fixture,
                 dt_gguf_type_name(types[k]));
        if (export_to(dir, types[k], out, err))
            fail_msg("%s", err);
        dt_weights r;
        if (dt_weights_load(out, &r, err))
            fail_msg("%s", err);
        const dt_config *a = &w.cfg, *b = &r.cfg;
        assert_int_equal(b->arch, DT_ARCH_LLAMA);
        assert_int_equal(a->n_layer, b->n_layer);
        assert_int_equal(a->d_model, b->d_model);
        assert_int_equal(a->n_head, b->n_head);
        assert_int_equal(a->n_kv_head, b->n_kv_head);
        assert_int_equal(a->head_dim, b->head_dim);
        assert_int_equal(a->d_ff, b->d_ff);
        assert_int_equal(a->vocab, b->vocab);
        assert_int_equal(a->max_pos, b->max_pos);
        assert_int_equal(a->tied, b->tied);
        assert_int_equal(a->attn_bias, b->attn_bias);
        assert_true(a->norm_eps == b->norm_eps);
        assert_true(a->rope_theta == b->rope_theta);
        assert_int_equal(w.ts.n, r.ts.n);
        for (int i = 0; i < w.ts.n; i++) {
            const dt_tensor *o = &w.ts.t[i];
            const dt_tensor *t = dt_tensorset_find(&r.ts, o->name);
            if (!t)
                fail_msg("%s: %s missing", out, o->name);
            /* q4_0 writes the output matrix as q8_0 */
            int ty = types[k] == DT_GGUF_Q4_0 &&
                             !strcmp(o->name, "lm_head.weight")
                         ? DT_GGUF_Q8_0 : (int)types[k];
            check_tensor(o, t, ty, o->name);
        }
        /* the tokenizer (pre-tokenizer "gpt-2") reads back and encodes the
         * same */
        dt_tokenizer *ta = dt_model_tokenizer(dir, err);
        dt_tokenizer *tb = dt_model_tokenizer(out, err);
        if (!ta || !tb)
            fail_msg("%s", err);
        const char *txt = "the cat sat on the mat, twice: 2x!";
        int32_t *ia = NULL, *ib = NULL;
        int na = 0, nb = 0;
        assert_int_equal(dt_tokenizer_encode(ta, txt, strlen(txt), 0, &ia, &na,
                                             err), 0);
        assert_int_equal(dt_tokenizer_encode(tb, txt, strlen(txt), 0, &ib, &nb,
                                             err), 0);
        assert_int_equal(na, nb);
        assert_memory_equal(ia, ib, (size_t)na * sizeof *ia);
        free(ia);
        free(ib);
        dt_tokenizer_free(ta);
        dt_tokenizer_free(tb);
        dt_weights_free(&r);
    }
    dt_weights_free(&w);
}

static void test_roundtrip_llama(void **s)
{
    (void)s;
    roundtrip("llama_model");
}

static void test_roundtrip_qwen2_biases(void **s)
{
    (void)s;
    roundtrip("qwen2_model");
}

/* The engine's logits on the f16 GGUF equal those on the Hugging Face f16
 * export of the same model within f16 rounding, and those of the f32 model
 * with the same matrices rounded to f16 to float precision. */
static void logits_case(const char *fixture)
{
    char dir[512], out[600], hf[600], err[DT_ERR_LEN];
    model_dir(fixture, dir, sizeof dir);
    snprintf(out, sizeof out, "%s/%s-logits.gguf", g_tmp, fixture);
    snprintf(hf, sizeof hf, "%s/%s-hf16", g_tmp, fixture);
    if (export_to(dir, DT_GGUF_F16, out, err))
        fail_msg("%s", err);
    dt_weights w, g, h;
    if (dt_weights_load(dir, &w, err))
        fail_msg("%s", err);
    dt_tokenizer *tok = dt_model_tokenizer(dir, err);
    assert_non_null(tok);
    dt_export_opts xo;
    dt_export_opts_default(&xo);
    xo.dtype = DT_F16;
    if (dt_export_hf_opts(&w, &w.ts, tok, hf, &xo, err))
        fail_msg("%s", err);
    if (dt_weights_load(out, &g, err) || dt_weights_load(hf, &h, err))
        fail_msg("%s", err);
    enum { T = 12 };
    int32_t ids[T];
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)((i * 37 + 5) % w.cfg.vocab);
    float *lg = logits_of(&g, ids, T), *lh = logits_of(&h, ids, T);
    for (int i = 0; i < w.ts.n; i++) /* the f32 model, matrices in f16 */
        if (w.ts.t[i].ndim == 2)
            for (int64_t j = 0; j < w.ts.t[i].numel; j++)
                w.ts.t[i].data[j] = f16r(w.ts.t[i].data[j]);
    float *lw = logits_of(&w, ids, T);
    long n = (long)T * w.cfg.vocab;
    double e_hf = nerr(lg, lh, n), e_w = nerr(lg, lw, n);
    printf("  %s: f16 GGUF vs HF f16 export %.2e, vs f16-rounded matrices "
           "%.2e\n", fixture, e_hf, e_w);
    assert_true(e_w < 1e-6);
    assert_true(e_hf < 2e-3); /* the HF export also rounds the norms */
    free(lg);
    free(lh);
    free(lw);
    dt_tokenizer_free(tok);
    dt_weights_free(&w);
    dt_weights_free(&g);
    dt_weights_free(&h);
}

static void test_logits_f16_llama(void **s)
{
    (void)s;
    logits_case("llama_model");
}

static void test_logits_f16_qwen2(void **s)
{
    (void)s;
    logits_case("qwen2_model");
}

/* The tokenizer read back from the file encodes like the original. */
static void same_encoding(const dt_tokenizer *a, const dt_tokenizer *b)
{
    static const char *texts[] = {
        "Hello world! It's 2026: 12345 apples, 3.14 pears.\n\n  indented",
        "<|im_start|>user\nBonjour, ça va? 你好 🙂<|im_end|>\n",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi",
        "tabs\tand  double  spaces   and\r\nCRLF",
    };
    char err[DT_ERR_LEN];
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        int32_t *x = NULL, *y = NULL;
        int nx = 0, ny = 0;
        assert_int_equal(dt_tokenizer_encode(a, texts[k], strlen(texts[k]),
                                             DT_TOK_SPECIAL, &x, &nx, err), 0);
        assert_int_equal(dt_tokenizer_encode(b, texts[k], strlen(texts[k]),
                                             DT_TOK_SPECIAL, &y, &ny, err), 0);
        assert_int_equal(nx, ny);
        for (int i = 0; i < nx; i++)
            if (x[i] != y[i])
                fail_msg("text %zu: token %d is %d, read back %d", k, i, x[i],
                         y[i]);
        free(x);
        free(y);
    }
    assert_int_equal(dt_tokenizer_vocab_size(a), dt_tokenizer_vocab_size(b));
    assert_int_equal(dt_tokenizer_bos(a), dt_tokenizer_bos(b));
    assert_int_equal(dt_tokenizer_eos(a), dt_tokenizer_eos(b));
    assert_int_equal(dt_tokenizer_adds_bos(a), dt_tokenizer_adds_bos(b));
    const char *ca = dt_tokenizer_chat_template(a);
    const char *cb = dt_tokenizer_chat_template(b);
    assert_true((ca == NULL) == (cb == NULL));
    if (ca)
        assert_string_equal(ca, cb);
}

static void test_tokenizer_smollm2(void **s)
{
    (void)s;
    if (access(SMOLLM, R_OK) != 0) {
        printf("  SKIPPED: %s missing (run scripts/install-deps)\n", SMOLLM);
        skip();
    }
    char out[600], err[DT_ERR_LEN];
    snprintf(out, sizeof out, "%s/smol-q8.gguf", g_tmp);
    if (export_to(SMOLLM, DT_GGUF_Q8_0, out, err))
        fail_msg("%s", err);
    dt_tokenizer *a = dt_model_tokenizer(SMOLLM, err);
    dt_tokenizer *b = dt_model_tokenizer(out, err);
    assert_non_null(a);
    assert_non_null(b);
    same_encoding(a, b);
    dt_tokenizer_free(a);
    dt_tokenizer_free(b);
}

/* A synthetic one-layer tied Llama whose vocabulary is the tokenizer's, so
 * that a real tokenizer directory can be written and read back. */
static void synth_weights_ff(dt_weights *w, int vocab, const char *src, int dff)
{
    memset(w, 0, sizeof *w);
    dt_tensorset_init(&w->ts);
    dt_config *c = &w->cfg;
    c->arch = DT_ARCH_LLAMA;
    c->n_layer = 1;
    c->d_model = 32;
    c->n_head = 4;
    c->n_kv_head = 2;
    c->head_dim = 8;
    c->d_ff = dff;
    c->vocab = vocab;
    c->max_pos = 128;
    c->norm_eps = 1e-5f;
    c->rope_theta = 500000.0f;
    c->tied = 1;
    snprintf(w->src_dir, sizeof w->src_dir, "%s", src);
    static const struct { const char *n; int r, c; } t[] = {
        {"embed_tokens.weight", -1, 32},
        {"layers.0.input_layernorm.weight", 32, 0},
        {"layers.0.self_attn.q_proj.weight", 32, 32},
        {"layers.0.self_attn.k_proj.weight", 16, 32},
        {"layers.0.self_attn.v_proj.weight", 16, 32},
        {"layers.0.self_attn.o_proj.weight", 32, 32},
        {"layers.0.post_attention_layernorm.weight", 32, 0},
        {"layers.0.mlp.gate_proj.weight", -2, 32},
        {"layers.0.mlp.up_proj.weight", -2, 32},
        {"layers.0.mlp.down_proj.weight", 32, -2},
        {"norm.weight", 32, 0},
    };
    char err[DT_ERR_LEN];
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        int64_t shape[2] = {t[i].r == -1 ? vocab : t[i].r == -2 ? dff : t[i].r,
                            t[i].c == -2 ? dff : t[i].c};
        int nd = t[i].c ? 2 : 1;
        int64_t n = shape[0] * (nd == 2 ? shape[1] : 1);
        float *d = malloc((size_t)n * sizeof(float));
        for (int64_t j = 0; j < n; j++)
            d[j] = (float)((j * 7919 + (int64_t)i * 31) % 201 - 100) / 400.0f;
        assert_int_equal(dt_tensorset_add(&w->ts, t[i].n, nd, shape, d,
                                          DT_F32, err), 0);
    }
}

static void synth_weights(dt_weights *w, int vocab, const char *src)
{
    synth_weights_ff(w, vocab, src, 64);
}

static void tokenizer_dir_case(const char *name)
{
    char dir[512], out[600], err[DT_ERR_LEN];
    snprintf(dir, sizeof dir, HFTOK "/%s", name);
    if (access(dir, R_OK) != 0) {
        printf("  SKIPPED: %s missing (run scripts/install-deps)\n", dir);
        skip();
    }
    dt_tokenizer *a = dt_tokenizer_load_dir(dir, err);
    if (!a)
        fail_msg("%s", err);
    dt_weights w;
    synth_weights(&w, dt_tokenizer_vocab_size(a), dir);
    snprintf(out, sizeof out, "%s/%s.gguf", g_tmp, name);
    if (dt_gguf_write(&w, NULL, a, DT_GGUF_Q8_0, out, NULL, NULL, err))
        fail_msg("%s", err);
    dt_tokenizer *b = dt_model_tokenizer(out, err);
    if (!b)
        fail_msg("%s", err);
    same_encoding(a, b);
    dt_tokenizer_free(a);
    dt_tokenizer_free(b);
    dt_weights_free(&w);
}

static void test_tokenizer_llama3(void **s)
{
    (void)s;
    tokenizer_dir_case("llama3_1");
}

static void test_tokenizer_qwen3(void **s)
{
    (void)s;
    tokenizer_dir_case("qwen3");
}

/* A matrix whose rows are not a multiple of 32 elements (down_proj with
 * d_ff 40) falls back to f16 in a q4_0 file; the others are quantized. */
static void test_row_not_multiple_of_32_is_f16(void **s)
{
    (void)s;
    char dir[512], out[600], err[DT_ERR_LEN];
    model_dir("llama_model", dir, sizeof dir);
    dt_tokenizer *tok = dt_model_tokenizer(dir, err);
    assert_non_null(tok);
    dt_weights w, r;
    synth_weights_ff(&w, 96, dir, 40);
    snprintf(out, sizeof out, "%s/ff40.gguf", g_tmp);
    if (dt_gguf_write(&w, NULL, tok, DT_GGUF_Q4_0, out, NULL, NULL, err))
        fail_msg("%s", err);
    if (dt_weights_load(out, &r, err))
        fail_msg("%s", err);
    const dt_tensor *o = dt_tensorset_find(&w.ts, "layers.0.mlp.down_proj.weight");
    const dt_tensor *t = dt_tensorset_find(&r.ts, "layers.0.mlp.down_proj.weight");
    assert_non_null(t);
    assert_int_equal(t->src_dtype, DT_F16);
    check_tensor(o, t, DT_GGUF_F16, o->name);
    o = dt_tensorset_find(&w.ts, "layers.0.mlp.up_proj.weight");
    t = dt_tensorset_find(&r.ts, "layers.0.mlp.up_proj.weight");
    assert_int_equal(t->src_dtype, DT_F32); /* dequantized q4_0 */
    check_tensor(o, t, DT_GGUF_Q4_0, o->name);
    dt_weights_free(&r);
    dt_weights_free(&w);
    dt_tokenizer_free(tok);
}

/* What cannot be written is refused naming the reason, and nothing is left
 * behind. */
static void test_refusals(void **s)
{
    (void)s;
    char dir[512], out[600], err[DT_ERR_LEN];
    dt_gguf_type t;
    assert_int_equal(dt_gguf_type_parse("q5_k", &t, "type", err), DT_EINVAL);
    assert_non_null(strstr(err, "type must be f16, q8_0 or q4_0"));
    assert_int_equal(dt_gguf_type_parse("Q4_0", &t, "type", err), DT_OK);
    assert_int_equal(t, DT_GGUF_Q4_0);

    snprintf(out, sizeof out, "%s/refused.gguf", g_tmp);
    model_dir("llama3_model", dir, sizeof dir);
    assert_int_equal(export_to(dir, DT_GGUF_F16, out, err), DT_ENOTSUP);
    assert_non_null(strstr(err, "RoPE scaling"));
    model_dir("mistral_model", dir, sizeof dir);
    assert_int_equal(export_to(dir, DT_GGUF_F16, out, err), DT_ENOTSUP);
    assert_non_null(strstr(err, "sliding-window"));
    assert_int_equal(access(out, F_OK), -1);

    /* A SentencePiece (byte-fallback) vocabulary has no gpt2 form. */
    if (access(HFTOK "/llama2", R_OK) == 0) {
        dt_tokenizer *tok = dt_tokenizer_load_dir(HFTOK "/llama2", err);
        assert_non_null(tok);
        dt_weights w;
        synth_weights(&w, dt_tokenizer_vocab_size(tok), HFTOK "/llama2");
        assert_int_equal(dt_gguf_write(&w, NULL, tok, DT_GGUF_F16, out, NULL,
                                       NULL, err), DT_ENOTSUP);
        assert_non_null(strstr(err, "not byte-level BPE"));
        assert_int_equal(access(out, F_OK), -1);
        dt_tokenizer_free(tok);
        dt_weights_free(&w);
    }

    /* An unwritable destination names the file. */
    model_dir("llama_model", dir, sizeof dir);
    assert_int_equal(export_to(dir, DT_GGUF_F16, "/nonexistent-dir/x.gguf",
                               err), DT_EIO);
    assert_non_null(strstr(err, "/nonexistent-dir/x.gguf"));
}

/* GPT-2 as llama.cpp's gpt2 architecture, read back tensor by tensor with
 * our GGUF reader (the model loader reads llama files only): llama.cpp's
 * names, (out, in) matrices in the type (q4_0: a tied token_embd is q8_0),
 * position_embd and 1-D tensors exactly f32, the gpt2.* hyperparameters. */
static void test_gpt2(void **s)
{
    (void)s;
    const char *src = ".cache/tiny-gpt2";
    if (access(src, R_OK) != 0) {
        printf("  SKIPPED: %s missing (python3 tests/harness/tiny_model.py)\n",
               src);
        skip();
    }
    char out[600], err[DT_ERR_LEN];
    dt_weights w;
    if (dt_weights_load(src, &w, err))
        fail_msg("%s", err);
    static const char *const nm[][2] = {
        {"wte.weight", "token_embd.weight"},
        {"wpe.weight", "position_embd.weight"},
        {"h.1.ln_1.weight", "blk.1.attn_norm.weight"},
        {"h.1.ln_1.bias", "blk.1.attn_norm.bias"},
        {"h.1.attn.c_attn.weight", "blk.1.attn_qkv.weight"},
        {"h.1.attn.c_attn.bias", "blk.1.attn_qkv.bias"},
        {"h.1.attn.c_proj.weight", "blk.1.attn_output.weight"},
        {"h.1.mlp.c_fc.weight", "blk.1.ffn_up.weight"},
        {"h.1.mlp.c_proj.weight", "blk.1.ffn_down.weight"},
        {"h.1.mlp.c_proj.bias", "blk.1.ffn_down.bias"},
        {"ln_f.bias", "output_norm.bias"},
    };
    const dt_gguf_type types[] = {DT_GGUF_F16, DT_GGUF_Q4_0};
    for (int k = 0; k < 2; k++) {
        snprintf(out, sizeof out, "%s/gpt2-%s.gguf", g_tmp,
                 dt_gguf_type_name(types[k]));
        if (export_to(src, types[k], out, err))
            fail_msg("%s", err);
        dt_tensorset r;
        dt_tensorset_init(&r);
        if (dt_gguf_load(out, &r, err))
            fail_msg("%s", err);
        const dt_meta *m = dt_tensorset_meta(&r, "general.architecture");
        assert_non_null(m);
        assert_string_equal(m->s, "gpt2");
        assert_int_equal(dt_tensorset_meta(&r, "gpt2.block_count")->i,
                         w.cfg.n_layer);
        assert_int_equal(dt_tensorset_meta(&r, "gpt2.context_length")->i,
                         w.cfg.max_pos);
        assert_int_equal(dt_tensorset_meta(&r, "gpt2.feed_forward_length")->i,
                         w.cfg.d_ff);
        assert_int_equal(dt_tensorset_meta(&r, "gpt2.attention.head_count")->i,
                         w.cfg.n_head);
        assert_float_equal(
            dt_tensorset_meta(&r, "gpt2.attention.layer_norm_epsilon")->f,
            w.cfg.norm_eps, 1e-12);
        assert_string_equal(
            dt_tensorset_meta(&r, "tokenizer.ggml.pre")->s, "gpt-2");
        assert_null(dt_tensorset_find(&r, "output.weight")); /* tied */
        for (size_t i = 0; i < sizeof nm / sizeof nm[0]; i++) {
            const dt_tensor *o = dt_tensorset_find(&w.ts, nm[i][0]);
            const dt_tensor *t = dt_tensorset_find(&r, nm[i][1]);
            if (!o || !t)
                fail_msg("%s / %s missing", nm[i][0], nm[i][1]);
            int ty = types[k];
            if (!strcmp(nm[i][1], "position_embd.weight"))
                ty = -1; /* f32: checked as a 1-D tensor would be */
            else if (ty == DT_GGUF_Q4_0 &&
                     !strcmp(nm[i][1], "token_embd.weight"))
                ty = DT_GGUF_Q8_0;
            if (ty == -1) {
                assert_int_equal(o->numel, t->numel);
                assert_memory_equal(o->data, t->data,
                                    (size_t)o->numel * sizeof(float));
                assert_int_equal(t->shape[0], o->shape[0]);
            } else {
                check_tensor(o, t, ty, nm[i][1]);
            }
        }
        dt_tensorset_free(&r);
    }
    dt_weights_free(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_llama),
        cmocka_unit_test(test_roundtrip_qwen2_biases),
        cmocka_unit_test(test_logits_f16_llama),
        cmocka_unit_test(test_logits_f16_qwen2),
        cmocka_unit_test(test_tokenizer_smollm2),
        cmocka_unit_test(test_tokenizer_llama3),
        cmocka_unit_test(test_tokenizer_qwen3),
        cmocka_unit_test(test_gpt2),
        cmocka_unit_test(test_row_not_multiple_of_32_is_f16),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
