/* test_dataset.c: JSONL loading, loss masks and validation reports.
 *
 * Links only gpu/dt.c and gpu/dataset.c: the tokenizer is a fake defined here
 * (one id per byte, vocab 300). With g_chatml set it knows <|im_start|>=256
 * and <|im_end|>=257; <|endoftext|>=258 is always the EOS. g_bos selects the
 * BOS id (-1: none, as GPT-2-style tokenizers whose BOS equals EOS). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/dt.h"
#include "gpu/dataset.h"
#include "gpu/tokenizer.h"

/* ---------------------------------------------------------------- fake */

enum { T_IM_START = 256, T_IM_END = 257, T_EOS = 258, T_BOS = 259,
       T_VOCAB = 300 };

struct dt_tokenizer { int unused; };
static struct dt_tokenizer g_tok;
static int g_chatml = 1;
static int32_t g_bos = -1;

dt_tokenizer *dt_tokenizer_load_dir(const char *dir, char *err)
{
    dt_errf(err, DT_ENOTSUP, "fake tokenizer");
    return NULL;
}

dt_tokenizer *dt_tokenizer_from_gguf(const dt_tensorset *ts, char *err)
{
    dt_errf(err, DT_ENOTSUP, "fake tokenizer");
    return NULL;
}

void dt_tokenizer_free(dt_tokenizer *tok) {}

int32_t dt_tokenizer_token_id(const dt_tokenizer *tok, const char *token)
{
    if (g_chatml && strcmp(token, "<|im_start|>") == 0)
        return T_IM_START;
    if (g_chatml && strcmp(token, "<|im_end|>") == 0)
        return T_IM_END;
    if (strcmp(token, "<|endoftext|>") == 0)
        return T_EOS;
    return -1;
}

/* The longest text the loader asked the fake to encode (truncation). */
static size_t g_max_encoded;

size_t dt_tokenizer_max_token_bytes(const dt_tokenizer *tok)
{
    return 13; /* "<|endoftext|>" */
}

int dt_tokenizer_encode(const dt_tokenizer *tok, const char *text, size_t len,
                        int allow_special, int32_t **ids, int *n, char *err)
{
    if (len > g_max_encoded)
        g_max_encoded = len;
    static const char *const specials[] = {"<|im_start|>", "<|im_end|>",
                                           "<|endoftext|>"};
    int32_t *out = malloc((len + 1) * sizeof *out);
    if (!out)
        return dt_errf(err, DT_ENOMEM, "fake: out of memory");
    int k = 0;
    for (size_t i = 0; i < len;) {
        int matched = 0;
        for (int s = 0; allow_special && s < 3 && !matched; s++) {
            size_t sl = strlen(specials[s]);
            int32_t id = dt_tokenizer_token_id(tok, specials[s]);
            if (id >= 0 && len - i >= sl && memcmp(text + i, specials[s], sl) == 0) {
                out[k++] = id;
                i += sl;
                matched = 1;
            }
        }
        if (!matched)
            out[k++] = (uint8_t)text[i++];
    }
    *ids = out;
    *n = k;
    return DT_OK;
}

char *dt_tokenizer_decode(const dt_tokenizer *tok, const int32_t *ids, int n)
{
    char *s = malloc((size_t)n + 1);
    for (int i = 0; s && i < n; i++)
        s[i] = ids[i] < 256 ? (char)ids[i] : '?';
    if (s)
        s[n] = 0;
    return s;
}

int dt_tokenizer_vocab_size(const dt_tokenizer *tok) { return T_VOCAB; }
int32_t dt_tokenizer_bos(const dt_tokenizer *tok) { return g_bos; }
int32_t dt_tokenizer_eos(const dt_tokenizer *tok) { return T_EOS; }
const char *dt_tokenizer_chat_template(const dt_tokenizer *tok) { return NULL; }

int dt_tokenizer_write_json(const dt_tokenizer *tok, const char *path,
                            char *err)
{
    return dt_errf(err, DT_ENOTSUP, "fake tokenizer");
}

/* ------------------------------------------------------------- helpers */

typedef struct fixture {
    char dir[64];
    char path[128];
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/test_dataset.XXXXXX");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof fx->path, "%s/data.jsonl", fx->dir);
    g_chatml = 1;
    g_bos = -1;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    unlink(fx->path);
    rmdir(fx->dir);
    free(fx);
    return 0;
}

/* Writes the fixture's data file with exactly these bytes. */
static const char *write_data(void **state, const char *bytes, size_t n)
{
    fixture *fx = *state;
    FILE *f = fopen(fx->path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f);
    return fx->path;
}

static const char *write_str(void **state, const char *text)
{
    return write_data(state, text, strlen(text));
}

/* Expected row built piece by piece: text (one id per byte) or a token, each
 * with whether it is a trained target. */
typedef struct expect {
    int32_t ids[512];
    int loss[512];
    int n;
} expect;

static void ex_text(expect *e, const char *s, int loss)
{
    for (; *s; s++) {
        e->ids[e->n] = (uint8_t)*s;
        e->loss[e->n++] = loss;
    }
}

static void ex_tok(expect *e, int32_t id, int loss)
{
    e->ids[e->n] = id;
    e->loss[e->n++] = loss;
}

static void assert_row_matches(const dt_row *r, const expect *e)
{
    assert_int_equal(r->n, e->n);
    for (int i = 0; i < e->n; i++) {
        assert_int_equal(r->ids[i], e->ids[i]);
        int32_t want = i + 1 < e->n && e->loss[i + 1] ? e->ids[i + 1] : -100;
        assert_int_equal(r->labels[i], want);
    }
}

/* Loads a one-row file and checks it succeeds. */
static void load_ok(const char *path, int seq_len, dt_dataset *ds)
{
    char err[DT_ERR_LEN] = "", *report = NULL;
    int rc = dt_dataset_load(path, &g_tok, seq_len, ds, &report, err);
    if (rc != DT_OK)
        fail_msg("load failed: %s\n%s", err, report ? report : "");
    assert_null(report);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

/* The report's k-th line (0-based) into out. */
static void report_line(const char *report, int k, char *out, size_t cap)
{
    const char *s = report;
    for (int i = 0; i < k && s; i++) {
        s = strchr(s, '\n');
        s = s ? s + 1 : NULL;
    }
    assert_non_null(s);
    size_t n = strcspn(s, "\n");
    assert_true(n < cap);
    memcpy(out, s, n);
    out[n] = 0;
}

/* Loads a file expected to fail; returns the report (caller frees). */
static char *load_fails(const char *path, int seq_len, char *err)
{
    dt_dataset ds;
    char *report = NULL;
    assert_int_equal(dt_dataset_load(path, &g_tok, seq_len, &ds, &report, err),
                     DT_EINVAL);
    assert_int_equal(ds.nrows, 0);
    assert_null(ds.rows);
    assert_non_null(report);
    return report;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

/* --------------------------------------------------------------- tests */

static void test_text_row_labels_are_shifted_ids_all_trained(void **state)
{
    dt_dataset ds;
    load_ok(write_str(state, "{\"text\": \"abc\"}\n"), 64, &ds);
    assert_int_equal(ds.nrows, 1);
    int32_t ids[] = {'a', 'b', 'c', T_EOS};
    int32_t labels[] = {'b', 'c', T_EOS, -100};
    assert_int_equal(ds.rows[0].n, 4);
    assert_memory_equal(ds.rows[0].ids, ids, sizeof ids);
    assert_memory_equal(ds.rows[0].labels, labels, sizeof labels);
    assert_int_equal(ds.ntokens, 3);
    dt_dataset_free(&ds);
}

static void test_bos_added_only_when_distinct_from_eos(void **state)
{
    g_bos = T_BOS;
    dt_dataset ds;
    load_ok(write_str(state, "{\"text\": \"ab\"}\n"), 64, &ds);
    int32_t ids[] = {T_BOS, 'a', 'b', T_EOS};
    int32_t labels[] = {'a', 'b', T_EOS, -100};
    assert_memory_equal(ds.rows[0].ids, ids, sizeof ids);
    assert_memory_equal(ds.rows[0].labels, labels, sizeof labels);
    dt_dataset_free(&ds);

    g_bos = T_EOS; /* GPT-2: bos == eos, so no BOS */
    load_ok(write_str(state, "{\"text\": \"ab\"}\n"), 64, &ds);
    assert_int_equal(ds.rows[0].n, 3);
    assert_int_equal(ds.rows[0].ids[0], 'a');
    dt_dataset_free(&ds);
}

static void test_prompt_completion_masks_prompt_exactly(void **state)
{
    dt_dataset ds;
    load_ok(write_str(state, "{\"prompt\": \"ab\", \"completion\": \"cd\"}\n"),
            64, &ds);
    expect e = {0};
    ex_text(&e, "ab", 0);
    ex_text(&e, "cd", 1);
    ex_tok(&e, T_EOS, 1);
    assert_row_matches(&ds.rows[0], &e);
    assert_int_equal(ds.ntokens, 3);
    dt_dataset_free(&ds);
}

/* Found by tests/fuzz/fuzz_jsonl: an empty masked text on a fresh row did
 * pointer arithmetic on the still-NULL pending buffer (UBSan, make asan). */
static void test_empty_prompt_is_fine(void **state)
{
    dt_dataset ds;
    load_ok(write_str(state, "{\"prompt\": \"\", \"completion\": \"cd\"}\n"), 64, &ds);
    expect e = {0};
    ex_text(&e, "cd", 1);
    ex_tok(&e, T_EOS, 1);
    assert_row_matches(&ds.rows[0], &e);
    dt_dataset_free(&ds);
}

static void test_chat_chatml_trains_only_assistant_content_and_im_end(void **state)
{
    dt_dataset ds;
    load_ok(write_str(state,
        "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"},"
        " {\"role\": \"user\", \"content\": \"U\"},"
        " {\"role\": \"assistant\", \"content\": \"A1\"},"
        " {\"role\": \"user\", \"content\": \"V\"},"
        " {\"role\": \"assistant\", \"content\": \"A2\"}]}\n"), 256, &ds);
    expect e = {0};
    const char *roles[] = {"system", "user", "assistant", "user", "assistant"};
    const char *contents[] = {"S", "U", "A1", "V", "A2"};
    for (int m = 0; m < 5; m++) {
        int a = strcmp(roles[m], "assistant") == 0;
        ex_tok(&e, T_IM_START, 0);
        ex_text(&e, roles[m], 0);
        ex_text(&e, "\n", 0);
        ex_text(&e, contents[m], a);
        ex_tok(&e, T_IM_END, a);
        ex_text(&e, "\n", 0);
    }
    assert_row_matches(&ds.rows[0], &e);
    assert_int_equal(ds.ntokens, 6);
    dt_dataset_free(&ds);
}

static void test_chat_plain_template_without_chatml_tokens(void **state)
{
    g_chatml = 0;
    dt_dataset ds;
    load_ok(write_str(state,
        "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"},"
        " {\"role\": \"user\", \"content\": \"U\"},"
        " {\"role\": \"assistant\", \"content\": \"A\"}]}\n"), 256, &ds);
    expect e = {0};
    ex_text(&e, "### System:\nS\n\n### User:\nU\n\n### Assistant:\n", 0);
    ex_text(&e, "A", 1);
    ex_tok(&e, T_EOS, 1);
    ex_text(&e, "\n\n", 0);
    assert_row_matches(&ds.rows[0], &e);
    assert_int_equal(ds.ntokens, 2);
    dt_dataset_free(&ds);
}

static void test_chat_weight_zero_masks_that_turn(void **state)
{
    dt_dataset ds;
    load_ok(write_str(state,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"U\"},"
        " {\"role\": \"assistant\", \"content\": \"X\", \"weight\": 0},"
        " {\"role\": \"user\", \"content\": \"V\"},"
        " {\"role\": \"assistant\", \"content\": \"Y\", \"weight\": 1}]}\n"),
        256, &ds);
    expect e = {0};
    const char *roles[] = {"user", "assistant", "user", "assistant"};
    const char *contents[] = {"U", "X", "V", "Y"};
    for (int m = 0; m < 4; m++) {
        int a = m == 3;
        ex_tok(&e, T_IM_START, 0);
        ex_text(&e, roles[m], 0);
        ex_text(&e, "\n", 0);
        ex_text(&e, contents[m], a);
        ex_tok(&e, T_IM_END, a);
        ex_text(&e, "\n", 0);
    }
    assert_row_matches(&ds.rows[0], &e);
    assert_int_equal(ds.ntokens, 2);
    dt_dataset_free(&ds);
}

static void test_chat_content_special_strings_are_plain_text(void **state)
{
    dt_dataset ds;
    load_ok(write_str(state,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"<|im_end|>\"},"
        " {\"role\": \"assistant\", \"content\": \"A\"}]}\n"), 256, &ds);
    const dt_row *r = &ds.rows[0];
    int ends = 0;
    for (int i = 0; i < r->n; i++)
        ends += r->ids[i] == T_IM_END;
    assert_int_equal(ends, 2); /* the two turn ends, not the user's text */
    dt_dataset_free(&ds);
}

static void test_openai_extras_are_ignored(void **state)
{
    dt_dataset ds;
    load_ok(write_str(state,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"U\"},"
        " {\"role\": \"assistant\", \"content\": \"A\"}],"
        " \"tools\": [], \"parallel_tool_calls\": false}\n"), 256, &ds);
    assert_int_equal(ds.nrows, 1);
    dt_dataset_free(&ds);
}

static void test_input_ids_labels_follow_hf_shift(void **state)
{
    dt_dataset ds;
    load_ok(write_str(state,
        "{\"input_ids\": [1, 2, 3, 4], \"labels\": [-100, -100, 3, 4]}\n"
        "{\"input_ids\": [5, 6, 7]}\n"), 64, &ds);
    assert_int_equal(ds.nrows, 2);
    int32_t ids0[] = {1, 2, 3, 4}, labels0[] = {-100, 3, 4, -100};
    assert_int_equal(ds.rows[0].n, 4);
    assert_memory_equal(ds.rows[0].ids, ids0, sizeof ids0);
    assert_memory_equal(ds.rows[0].labels, labels0, sizeof labels0);
    int32_t labels1[] = {6, 7, -100};
    assert_memory_equal(ds.rows[1].labels, labels1, sizeof labels1);
    assert_int_equal(ds.ntokens, 4);
    dt_dataset_free(&ds);
}

static void test_rows_truncated_to_seq_len_plus_one_tokens(void **state)
{
    dt_dataset ds;
    load_ok(write_str(state, "{\"text\": \"abcdefghij\"}\n"), 4, &ds);
    int32_t ids[] = {'a', 'b', 'c', 'd', 'e'};
    int32_t labels[] = {'b', 'c', 'd', 'e', -100};
    assert_int_equal(ds.rows[0].n, 5);
    assert_memory_equal(ds.rows[0].ids, ids, sizeof ids);
    assert_memory_equal(ds.rows[0].labels, labels, sizeof labels);
    assert_int_equal(ds.ntokens, 4);
    dt_dataset_free(&ds);
}

static void test_truncation_leaving_no_targets_is_line_error(void **state)
{
    char err[DT_ERR_LEN];
    const char *path = write_str(state,
        "{\"text\": \"ok\"}\n"
        "{\"prompt\": \"a long prompt\", \"completion\": \"b\"}\n");
    char *report = load_fails(path, 4, err);
    char want[256];
    snprintf(want, sizeof want, "%s:2: no tokens to learn from after "
             "truncation to --seq-len 4", path);
    assert_string_equal(err, want);
    assert_int_equal(count_lines(report), 1);
    free(report);
}

static void test_every_bad_line_reported_with_number_and_field(void **state)
{
    char err[DT_ERR_LEN], line[DT_ERR_LEN];
    const char *path = write_str(state,
        "{\"text\": \"good\"}\n"                                       /* 1 */
        "{\"text\": \"unterminated}\n"                                 /* 2 */
        "{\"text\": \"good\"}\n"                                       /* 3 */
        "[1, 2]\n"                                                     /* 4 */
        "{\"prompt\": \"p\"}\n"                                        /* 5 */
        "\n"                                                           /* 6 */
        "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"},"
        " {\"role\": \"bot\", \"content\": \"b\"}]}\n"                 /* 7 */
        "{\"text\": 42}\n");                                           /* 8 */
    char *report = load_fails(path, 64, err);
    assert_int_equal(count_lines(report), 5);
    const char *want[] = {
        ":2: invalid JSON at column",
        ":4: expected a JSON object, got array",
        ":5: field \"completion\": missing",
        ":7: field \"messages\"[1].role: must be one of system, user, assistant",
        ":8: field \"text\": must be a string, got integer",
    };
    for (int k = 0; k < 5; k++) {
        report_line(report, k, line, sizeof line);
        assert_int_equal(strncmp(line, path, strlen(path)), 0);
        assert_contains(line, want[k]);
    }
    report_line(report, 0, line, sizeof line);
    assert_string_equal(err, line);
    free(report);
}

static void test_unknown_key_is_named(void **state)
{
    char err[DT_ERR_LEN];
    char *report = load_fails(write_str(state,
        "{\"promt\": \"p\", \"completion\": \"c\"}\n"), 64, err);
    assert_contains(err, ":1: field \"promt\": unknown field");
    free(report);
}

static void test_line_problem_kinds_are_reported(void **state)
{
    char err[DT_ERR_LEN], line[DT_ERR_LEN];
    char *report = load_fails(write_str(state,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"\"},"
        " {\"role\": \"assistant\", \"content\": \"a\"}]}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}]}\n"
        "{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n"
        "{\"text\": \"\xff\"}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"u\", \"weight\": 0},"
        " {\"role\": \"assistant\", \"content\": \"a\"}]}\n"
        "{\"text\": \"a\", \"text\": \"b\"}\n"), 64, err);
    const char *want[] = {
        ":1: field \"messages\"[0].content: must not be empty",
        ":2: field \"messages\": no assistant message",
        ":3: field \"labels\": length 2 differs from \"input_ids\" length 3",
        ":4: invalid JSON at column",
        ":5: field \"messages\"[0].weight: only allowed on assistant",
        ":6: invalid JSON at column",
    };
    assert_int_equal(count_lines(report), 6);
    for (int k = 0; k < 6; k++) {
        report_line(report, k, line, sizeof line);
        assert_contains(line, want[k]);
    }
    report_line(report, 3, line, sizeof line);
    assert_contains(line, "UTF-8");
    free(report);
}

static void test_crlf_bom_blank_lines_and_final_line_accepted(void **state)
{
    const char data[] = "\xEF\xBB\xBF{\"text\": \"ab\"}\r\n"
                        "\r\n"
                        "   \n"
                        "{\"text\": \"cd\"}\r\n"
                        "\n"
                        "{\"text\": \"ef\"}";
    dt_dataset ds;
    load_ok(write_data(state, data, sizeof data - 1), 64, &ds);
    assert_int_equal(ds.nrows, 3);
    assert_int_equal(ds.rows[0].ids[0], 'a');
    assert_int_equal(ds.rows[1].ids[1], 'd');
    assert_int_equal(ds.rows[2].n, 3);
    assert_int_equal(ds.ntokens, 6);
    dt_dataset_free(&ds);
}

static void test_long_line_is_read_whole(void **state)
{
    size_t n = 200000;
    char *data = malloc(n + 32);
    assert_non_null(data);
    size_t k = (size_t)sprintf(data, "{\"text\": \"");
    memset(data + k, 'x', n);
    k += n;
    k += (size_t)sprintf(data + k, "\"}\n");
    dt_dataset ds;
    load_ok(write_data(state, data, k), 128, &ds);
    free(data);
    assert_int_equal(ds.rows[0].n, 129);
    assert_int_equal(ds.ntokens, 128);
    dt_dataset_free(&ds);
}

/* A long text, completion, prompt or chat content is tokenized only as far
 * as the row's seq_len + 1 tokens need ((needed + 1) x 13 bytes with the
 * fake's longest token), and the row is what the whole text would give. */
static void test_long_strings_tokenized_only_up_to_seq_len(void **state)
{
    size_t n = 3000000;
    char *big = malloc(n + 1), *data = malloc(4 * n + 512);
    assert_non_null(big);
    assert_non_null(data);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    big[n] = 0;
    size_t k = (size_t)sprintf(data, "{\"text\": \"%s\"}\n", big);
    k += (size_t)sprintf(data + k, "{\"prompt\": \"%s\", \"completion\": \"c\"}\n", big);
    k += (size_t)sprintf(data + k, "{\"prompt\": \"p\", \"completion\": \"%s\"}\n", big);
    k += (size_t)sprintf(data + k, "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, "
                         "{\"role\": \"assistant\", \"content\": \"%s\"}]}\n", big);
    dt_dataset ds;
    g_max_encoded = 0;
    const char *path = write_data(state, data, k);
    char err[DT_ERR_LEN] = "", *report = NULL;
    /* row 2's prompt fills the row: nothing left to learn, a line error */
    assert_int_equal(dt_dataset_load(path, &g_tok, 64, &ds, &report, err), DT_EINVAL);
    assert_contains(report, ":2: no tokens to learn from after truncation to --seq-len 64");
    assert_int_equal(count_lines(report), 1);
    free(report);
    assert_true(g_max_encoded <= 66 * 13);

    /* the other rows: the first 65 tokens of the whole strings */
    k = (size_t)sprintf(data, "{\"text\": \"%s\"}\n", big);
    k += (size_t)sprintf(data + k, "{\"prompt\": \"p\", \"completion\": \"%s\"}\n", big);
    k += (size_t)sprintf(data + k, "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, "
                         "{\"role\": \"assistant\", \"content\": \"%s\"}]}\n", big);
    g_max_encoded = 0;
    load_ok(write_data(state, data, k), 64, &ds);
    assert_true(g_max_encoded <= 66 * 13);
    assert_int_equal(ds.nrows, 3);
    expect e = {0};
    char head[80];
    memcpy(head, big, 65);
    head[65] = 0;
    ex_text(&e, head, 1);
    assert_row_matches(&ds.rows[0], &e);
    memset(&e, 0, sizeof e);
    ex_text(&e, "p", 0);
    head[64] = 0;
    ex_text(&e, head, 1);
    assert_row_matches(&ds.rows[1], &e);
    memset(&e, 0, sizeof e);
    ex_tok(&e, T_IM_START, 0);
    ex_text(&e, "user\nu", 0);
    ex_tok(&e, T_IM_END, 0);
    ex_text(&e, "\n", 0);
    ex_tok(&e, T_IM_START, 0);
    ex_text(&e, "assistant\n", 0);
    head[65 - e.n] = 0;
    ex_text(&e, head, 1);
    assert_row_matches(&ds.rows[2], &e);
    dt_dataset_free(&ds);
    free(big);
    free(data);
}

/* Validation with a line cap: a longer line is named with its number, its
 * length and the limit, the lines around it are still checked, and the line
 * cap does not count the "\n". */
static void test_validate_line_cap_names_line_and_limit(void **state)
{
    size_t n = 5000;
    char *data = malloc(n + 256);
    assert_non_null(data);
    size_t k = (size_t)sprintf(data, "{\"text\": \"ok\"}\n{\"text\": \"");
    memset(data + k, 'x', n);
    k += n;
    k += (size_t)sprintf(data + k, "\"}\nnot json\n{\"text\": \"1234\"}\n");
    const char *path = write_data(state, data, k);
    free(data);
    char err[DT_ERR_LEN], *report = NULL, want[200];
    long nlines = 0;
    assert_int_equal(dt_dataset_validate_lines(path, 10, 1024, &report, &nlines, err),
                     DT_EINVAL);
    assert_int_equal(nlines, 4);
    assert_int_equal(count_lines(report), 2);
    snprintf(want, sizeof want, "%s:2: line is %zu bytes, longer than the limit of 1024 bytes "
             "per line", path, n + 12);
    assert_contains(report, want);
    assert_contains(err, want);
    assert_contains(report, ":3: invalid JSON");
    free(report);
    /* exactly at the cap: accepted ("{\"text\": \"1234\"}" is 16 bytes) */
    path = write_str(state, "{\"text\": \"1234\"}\r\n{\"text\": \"1234\"}");
    assert_int_equal(dt_dataset_validate_lines(path, 10, 17, &report, &nlines, err), DT_OK);
    assert_int_equal(dt_dataset_validate_lines(path, 10, 16, &report, &nlines, err),
                     DT_EINVAL);
    assert_contains(report, ":1: line is 17 bytes");
    assert_int_equal(count_lines(report), 1);
    free(report);
    /* the default cap */
    assert_int_equal(dt_dataset_validate(path, 10, &report, &nlines, err), DT_OK);
}

static void test_empty_file_is_error(void **state)
{
    char err[DT_ERR_LEN], want[256];
    const char *path = write_str(state, "\n  \n");
    char *report = load_fails(path, 64, err);
    snprintf(want, sizeof want, "%s: no training rows", path);
    assert_string_equal(err, want);
    free(report);
}

static void test_out_of_range_id_is_error(void **state)
{
    char err[DT_ERR_LEN];
    char *report = load_fails(write_str(state,
        "{\"input_ids\": [1, 2]}\n"
        "{\"input_ids\": [1, 300]}\n"
        "{\"input_ids\": [1, 2], \"labels\": [-100, -5]}\n"), 64, err);
    assert_contains(err, ":2: field \"input_ids\"[1]: 300 is out of range "
                    "[0, 300)");
    assert_int_equal(count_lines(report), 2);
    assert_contains(report, ":3: field \"labels\"[1]: -5 is out of range");
    free(report);
}

static void test_missing_file_is_io_error(void **state)
{
    dt_dataset ds;
    char err[DT_ERR_LEN], *report = NULL;
    assert_int_equal(dt_dataset_load("/nonexistent/x.jsonl", &g_tok, 64, &ds,
                                     &report, err), DT_EIO);
    assert_null(report);
    assert_contains(err, "/nonexistent/x.jsonl");
}

static void test_report_capped_at_100_problems(void **state)
{
    char *data = malloc(150 * 8 + 1), err[DT_ERR_LEN], line[DT_ERR_LEN];
    assert_non_null(data);
    data[0] = 0;
    for (int i = 0; i < 150; i++)
        strcat(data, "[1]\n");
    char *report = load_fails(write_str(state, data), 64, err);
    free(data);
    assert_int_equal(count_lines(report), 101);
    report_line(report, 100, line, sizeof line);
    assert_string_equal(line, "... and 50 more problems");
    free(report);
}

static void test_validate_counts_lines_and_finds_same_errors(void **state)
{
    const char *path = write_str(state,
        "{\"text\": \"good\"}\n"
        "\n"
        "{\"text\": \"bad\n"
        "{\"prompt\": \"p\", \"completion\": \"\"}\n"
        "{\"messages\": [{\"role\": \"assistant\", \"content\": 1}]}\n"
        "{\"input_ids\": [1, \"x\"]}\n");
    char err[DT_ERR_LEN], verr[DT_ERR_LEN], *vreport = NULL;
    long nlines = 0;
    char *report = load_fails(path, 64, err);
    assert_int_equal(dt_dataset_validate(path, 0, &vreport, &nlines, verr),
                     DT_EINVAL);
    assert_int_equal(nlines, 5);
    assert_non_null(vreport);
    assert_int_equal(count_lines(vreport), 4);
    assert_string_equal(vreport, report);
    assert_string_equal(verr, err);
    free(vreport);
    free(report);

    char *capped = NULL;
    assert_int_equal(dt_dataset_validate(path, 2, &capped, &nlines, verr),
                     DT_EINVAL);
    assert_int_equal(count_lines(capped), 3);
    assert_contains(capped, "... and 2 more problems");
    free(capped);
}

static void test_validate_accepts_good_file(void **state)
{
    char err[DT_ERR_LEN], *report = NULL;
    long nlines = 0;
    const char *path = write_str(state,
        "{\"text\": \"a\"}\n\n{\"input_ids\": [1, 99999]}\n");
    assert_int_equal(dt_dataset_validate(path, 10, &report, &nlines, err),
                     DT_OK);
    assert_null(report);
    assert_int_equal(nlines, 2);
    write_str(state, "");
    assert_int_equal(dt_dataset_validate(path, 10, &report, &nlines, err),
                     DT_EINVAL);
    assert_contains(err, ": no training rows");
    free(report);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_text_row_labels_are_shifted_ids_all_trained),
        T(test_bos_added_only_when_distinct_from_eos),
        T(test_prompt_completion_masks_prompt_exactly),
        T(test_empty_prompt_is_fine),
        T(test_chat_chatml_trains_only_assistant_content_and_im_end),
        T(test_chat_plain_template_without_chatml_tokens),
        T(test_chat_weight_zero_masks_that_turn),
        T(test_chat_content_special_strings_are_plain_text),
        T(test_openai_extras_are_ignored),
        T(test_input_ids_labels_follow_hf_shift),
        T(test_rows_truncated_to_seq_len_plus_one_tokens),
        T(test_truncation_leaving_no_targets_is_line_error),
        T(test_every_bad_line_reported_with_number_and_field),
        T(test_unknown_key_is_named),
        T(test_line_problem_kinds_are_reported),
        T(test_crlf_bom_blank_lines_and_final_line_accepted),
        T(test_long_line_is_read_whole),
        T(test_long_strings_tokenized_only_up_to_seq_len),
        T(test_validate_line_cap_names_line_and_limit),
        T(test_empty_file_is_error),
        T(test_out_of_range_id_is_error),
        T(test_missing_file_is_io_error),
        T(test_report_capped_at_100_problems),
        T(test_validate_counts_lines_and_finds_same_errors),
        T(test_validate_accepts_good_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
