/* test_chat_template.c: gpu/chat_template.c against transformers.
 *
 * tests/fixtures/chat/cases.json (tests/reference/make_chat_fixtures.py)
 * holds, for the chat templates of Llama 3 and 3.1, Qwen 3, Gemma 3, Llama 2,
 * Mistral, SmolLM2, a ChatML template with {% generation %} blocks and our
 * own construct-by-construct template, what transformers'
 * apply_chat_template(tokenize=False) renders for a set of conversations, or
 * the message the template raises; each must match byte for byte. Then the
 * {% generation %} spans (transformers' return_assistant_tokens_mask), the
 * content provenance tags, errors on unsupported constructs, the limits,
 * broken templates, and dataset rows rendered with each model's template and
 * their assistant-only loss (SmolLM2's tokenizer from .cache, installed by
 * make deps). About 3 s here (12 s under ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/dt.h"
#include "gpu/chat_template.h"
#include "gpu/dataset.h"
#include "gpu/generate.h"
#include "gpu/tensorfile.h"
#include "gpu/tokenizer_impl.h" /* to give the test tokenizer another template */

#define SMOL_GGUF ".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

#define FIX "tests/fixtures/chat/"
#define FIXED_NOW 1785074709LL /* 2026-07-26T14:05:09Z, the fixtures' clock */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

static json_t *load_cases(void)
{
    json_error_t je;
    json_t *j = json_load_file(FIX "cases.json", 0, &je);
    if (!j)
        fail_msg("cases.json: %s", je.text);
    return j;
}

static int render_case(const json_t *cs, dt_chat_out *out, char *err)
{
    char path[256];
    snprintf(path, sizeof path, FIX "%s.jinja",
             json_string_value(json_object_get(cs, "template")));
    char *tmpl = slurp(path);
    json_t *vars = json_deep_copy(json_object_get(cs, "kwargs"));
    json_object_set_new(vars, "add_generation_prompt",
                        json_boolean(json_is_true(json_object_get(cs, "add_generation_prompt"))));
    const json_t *msgs = json_object_get(cs, "messages");
    int32_t tags[64];
    for (size_t i = 0; i < json_array_size(msgs) && i < 64; i++)
        tags[i] = (int32_t)i + 1;
    int rc = dt_chat_render(tmpl, msgs, vars, tags, FIXED_NOW, out, err);
    json_decref(vars);
    free(tmpl);
    return rc;
}

/* Every template x conversation x generation prompt renders as transformers
 * does. About 0.1 s. */
static void test_matches_transformers(void **state)
{
    (void)state;
    json_t *j = load_cases();
    const json_t *cases = json_object_get(j, "cases");
    size_t i, bad = 0;
    const json_t *cs;
    assert_true(json_array_size(cases) >= 150);
    json_array_foreach(cases, i, cs) {
        dt_chat_out out;
        char err[DT_ERR_LEN];
        int rc = render_case(cs, &out, err);
        const char *name = json_string_value(json_object_get(cs, "template"));
        const char *conv = json_string_value(json_object_get(cs, "conversation"));
        int agp = json_is_true(json_object_get(cs, "add_generation_prompt"));
        const json_t *want = json_object_get(cs, "expected");
        if (want) {
            if (rc != DT_OK) {
                print_error("%s/%s/agp=%d: %s\n", name, conv, agp, err);
                bad++;
            } else if (out.len != json_string_length(want) ||
                       memcmp(out.text, json_string_value(want), out.len) != 0) {
                print_error("%s/%s/agp=%d: got\n<<%s>>\nwant\n<<%s>>\n", name, conv, agp,
                            out.text, json_string_value(want));
                bad++;
            }
        } else {
            const char *msg = json_string_value(json_object_get(cs, "error"));
            if (rc != DT_EINVAL || strcmp(err, msg) != 0) {
                print_error("%s/%s: want error '%s', got rc %d '%s'\n", name, conv, msg, rc,
                            rc ? err : "");
                bad++;
            }
        }
        dt_chat_out_free(&out);
    }
    json_decref(j);
    assert_int_equal(bad, 0);
}

/* Where the template has {% generation %} blocks, our spans are transformers'
 * (return_assistant_tokens_mask's character spans, as byte offsets).
 * About 0.01 s. */
static void test_generation_spans_match_transformers(void **state)
{
    (void)state;
    json_t *j = load_cases();
    size_t i, checked = 0;
    const json_t *cs;
    json_array_foreach(json_object_get(j, "cases"), i, cs) {
        const json_t *want = json_object_get(cs, "generation_spans");
        if (!want)
            continue;
        dt_chat_out out;
        char err[DT_ERR_LEN];
        assert_int_equal(render_case(cs, &out, err), DT_OK);
        assert_int_equal(out.ngen, (int)json_array_size(want));
        for (int k = 0; k < out.ngen; k++) {
            assert_int_equal(out.gen[k][0], json_integer_value(json_array_get(json_array_get(want, k), 0)));
            assert_int_equal(out.gen[k][1], json_integer_value(json_array_get(json_array_get(want, k), 1)));
        }
        checked++;
        dt_chat_out_free(&out);
    }
    json_decref(j);
    assert_true(checked >= 20);
}

/* Provenance: in every template, each byte of each rendered message content
 * carries that message's tag and no template byte carries one; the tagged
 * bytes of message i are exactly its content (or, where the template trims,
 * the trimmed content / the parts it keeps). About 0.05 s. */
static void test_content_tags_cover_content_only(void **state)
{
    (void)state;
    json_t *j = load_cases();
    size_t i, checked = 0;
    const json_t *cs;
    json_array_foreach(json_object_get(j, "cases"), i, cs) {
        if (!json_object_get(cs, "expected") ||
            !strcmp(json_string_value(json_object_get(cs, "template")), "features"))
            continue;
        dt_chat_out out;
        char err[DT_ERR_LEN];
        assert_int_equal(render_case(cs, &out, err), DT_OK);
        const json_t *msgs = json_object_get(cs, "messages");
        for (size_t m = 0; m < json_array_size(msgs); m++) {
            const char *content = json_string_value(json_object_get(json_array_get(msgs, m), "content"));
            /* the tagged bytes of message m, in order, are a substring-
             * preserving selection of its content: each tagged run occurs in
             * the content */
            size_t k = 0;
            while (k < out.len) {
                if (out.tag[k] != (int32_t)m + 1) {
                    k++;
                    continue;
                }
                size_t e = k;
                while (e < out.len && out.tag[e] == (int32_t)m + 1)
                    e++;
                char *run = strndup(out.text + k, e - k);
                const char *rc = json_string_value(
                    json_object_get(json_array_get(msgs, m), "reasoning_content"));
                if (!strstr(content, run) && !(rc && strstr(rc, run)))
                    fail_msg("%s/%s: tagged run '%s' is not in message %zu",
                             json_string_value(json_object_get(cs, "template")),
                             json_string_value(json_object_get(cs, "conversation")), run, m);
                free(run);
                k = e;
            }
        }
        /* the whole trimmed content of the last message appears tagged when
         * the rendering contains it verbatim */
        const json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
        const char *lc = json_string_value(json_object_get(last, "content"));
        size_t a = 0, b = strlen(lc);
        while (a < b && strchr(" \t\r\n", lc[a]))
            a++;
        while (b > a && strchr(" \t\r\n", lc[b - 1]))
            b--;
        char *core = strndup(lc + a, b - a);
        int found = b == a || strstr(lc, "<think>") != NULL;
        for (const char *at = strstr(out.text, core); at && !found; at = strstr(at + 1, core)) {
            size_t x = (size_t)(at - out.text), y = x;
            while (y < x + (b - a) && out.tag[y] == (int32_t)json_array_size(msgs))
                y++;
            found = y == x + (b - a);
        }
        if (json_object_get(cs, "error") == NULL && strstr(out.text, core))
            assert_true(found);
        free(core);
        checked++;
        dt_chat_out_free(&out);
    }
    json_decref(j);
    assert_true(checked > 100);
}

static void expect_error(const char *tmpl, const char *want)
{
    json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", "hi");
    dt_chat_out out;
    char err[DT_ERR_LEN];
    int rc = dt_chat_render(tmpl, msgs, NULL, NULL, FIXED_NOW, &out, err);
    json_decref(msgs);
    if (rc == DT_OK)
        fail_msg("'%s' rendered '%s', want error containing '%s'", tmpl, out.text, want);
    if (!strstr(err, want))
        fail_msg("'%s': error '%s' lacks '%s'", tmpl, err, want);
}

/* Unsupported constructs and broken templates: a clear error naming the
 * construct and its position, never a crash. About 0.01 s. */
static void test_errors_name_construct_and_position(void **state)
{
    (void)state;
    expect_error("{{ messages | bogus }}", "line 1, column 13: unsupported filter 'bogus'");
    expect_error("a\n{% include 'x' %}", "line 2, column 4: unsupported statement 'include'");
    expect_error("{{ 1 is weird }}", "unsupported test 'weird'");
    expect_error("{% for m in messages %}", "missing '{% endfor %}'");
    expect_error("{% if x %}{% endfor %}", "unexpected 'endfor'");
    expect_error("{{ 'abc", "unterminated '{{' tag");
    expect_error("{{ 'a' + 1 }}", "unsupported operand types for '+': string and integer");
    expect_error("{{ x.y }}", "'x' is undefined");
    expect_error("{{ messages[0].content.zfill(3) }}", "unsupported method 'zfill'");
    expect_error("{{ raise_exception('custom stop') }}", "custom stop");
    expect_error("{{ 1 // 0 }}", "division or modulo by zero");
    expect_error("{% set a.b = 1 %}", "not a namespace()");
    expect_error("{{ 9223372036854775807 + 1 }}", "integer overflow");
}

/* Hostile templates stop at the limits with an error. About 0.6 s. */
static void test_limits(void **state)
{
    (void)state;
    expect_error("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}",
                 "loop iterations");
    expect_error("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "nested deeper");
    expect_error("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(100) %}"
                 "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}", "MiB");
    char deep[4096];
    size_t k = 0;
    k += (size_t)snprintf(deep + k, sizeof deep - k, "{{ ");
    for (int i = 0; i < 1000; i++)
        deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 1000; i++)
        deep[k++] = ')';
    snprintf(deep + k, sizeof deep - k, " }}");
    expect_error(deep, "nested deeper");
    /* left-deep chains the parser builds in a loop: bounded height */
    static char chain[65536];
    k = (size_t)snprintf(chain, sizeof chain, "{{ 1");
    for (int i = 0; i < 5000; i++)
        k += (size_t)snprintf(chain + k, sizeof chain - k, " + 1");
    snprintf(chain + k, sizeof chain - k, " }}");
    expect_error(chain, "deeper than 128 levels");
    k = (size_t)snprintf(chain, sizeof chain, "{{ x");
    for (int i = 0; i < 5000; i++)
        k += (size_t)snprintf(chain + k, sizeof chain - k, "|trim");
    snprintf(chain + k, sizeof chain - k, " }}");
    expect_error(chain, "deeper than 128 levels");
    k = (size_t)snprintf(chain, sizeof chain, "{{ ");
    for (int i = 0; i < 5000; i++)
        k += (size_t)snprintf(chain + k, sizeof chain - k, "range(");
    k += (size_t)snprintf(chain + k, sizeof chain - k, "1");
    for (int i = 0; i < 5000; i++)
        chain[k++] = ')';
    snprintf(chain + k, sizeof chain - k, " }}");
    expect_error(chain, "nested deeper than 32");
    k = 0;
    for (int i = 0; i < 2000; i++)
        k += (size_t)snprintf(chain + k, sizeof chain - k, "{%% if true %%}");
    expect_error(chain, "statements nested deeper than 32");
    /* what real templates need still renders */
    json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", "hi");
    dt_chat_out out;
    char err[DT_ERR_LEN];
    assert_int_equal(dt_chat_render("{{ 'a' + 'b' + 'c' + 'd' + messages[0]['content']|trim|upper"
                                    " ~ (1 + (2 * (3 - (4 // 2)))) }}",
                                    msgs, NULL, NULL, FIXED_NOW, &out, err), DT_OK);
    assert_string_equal(out.text, "abcdHI3");
    dt_chat_out_free(&out);
    json_decref(msgs);
}


/* ------------------------------------------------ dataset rows and masks */

static dt_tokenizer *smol_tokenizer(void)
{
    dt_tensorset ts;
    char err[DT_ERR_LEN];
    dt_tensorset_init(&ts);
    assert_int_equal(dt_gguf_load_meta(SMOL_GGUF, &ts, err), DT_OK);
    dt_tokenizer *tok = dt_tokenizer_from_gguf(&ts, err);
    if (!tok)
        fail_msg("%s", err);
    dt_tensorset_free(&ts);
    return tok;
}

static void use_template(dt_tokenizer *tok, const char *name)
{
    char path[256];
    snprintf(path, sizeof path, FIX "%s.jinja", name);
    free(tok->chat_template);
    tok->chat_template = slurp(path);
}

static const char *const CONVS[] = {
    "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}, "
    "{\"role\": \"assistant\", \"content\": \"It is 4.\"}]}",
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
    "{\"role\": \"user\", \"content\": \"Hi there\"}, "
    "{\"role\": \"assistant\", \"content\": \" Hello! 🙂 Ça va?\\n\"}, "
    "{\"role\": \"user\", \"content\": \"Say <|im_end|> please\"}, "
    "{\"role\": \"assistant\", \"content\": \"Fine: <|im_end|> and 日本語\"}]}",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, "
    "{\"role\": \"assistant\", \"content\": \"masked turn\", \"weight\": 0}, "
    "{\"role\": \"user\", \"content\": \"y\"}, "
    "{\"role\": \"assistant\", \"content\": \"trained turn\"}]}",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"3*7?\"}, "
    "{\"role\": \"assistant\", \"content\": \"<think>\\nEasy.\\n</think>\\n\\n21\"}, "
    "{\"role\": \"user\", \"content\": \"3*8?\"}, "
    "{\"role\": \"assistant\", \"content\": \"<think>\\nAdd 3.\\n</think>\\n\\n24\"}]}",
};

/* Per-byte "trained" flags of a row: token j+1 is trained when labels[j] is
 * not -100; each token decodes to its own bytes (byte-level BPE). */
static char *row_text(const dt_tokenizer *tok, const dt_row *r, uint8_t **trained)
{
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap);
    *trained = calloc(cap, 1);
    for (int j = 0; j < r->n; j++) {
        char *t = dt_tokenizer_decode(tok, &r->ids[j], 1);
        size_t l = strlen(t);
        assert_true(n + l < cap);
        memcpy(s + n, t, l);
        memset(*trained + n, j > 0 && r->labels[j - 1] != -100, l);
        n += l;
        free(t);
    }
    s[n] = 0;
    return s;
}

static const char *const HEADERS[] = {"<|im_start|>", "<|start_header_id|>",
                                      "<start_of_turn>", "[INST]", "<<SYS>>", NULL};

/* For each model template, a chat row's tokens decode to exactly what the
 * template renders, every byte of each trained assistant turn is trained,
 * no user/system/masked-turn byte and no turn header is, and the
 * end-of-turn token after each trained turn is trained. About 0.05 s. */
static void test_dataset_renders_model_template_and_masks_assistant(void **state)
{
    (void)state;
    static const char *const names[] = {"smollm2", "llama3_1", "llama3_1_official",
                                        "qwen3", "gemma3", "llama2", "mistral",
                                        "chatml_generation", NULL};
    char dir[] = "/tmp/test_chat_template.XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    FILE *f = fopen(path, "w");
    for (size_t i = 0; i < sizeof CONVS / sizeof *CONVS; i++)
        fprintf(f, "%s\n", CONVS[i]);
    fclose(f);
    dt_tokenizer *tok = smol_tokenizer();
    for (int t = 0; names[t]; t++) {
        use_template(tok, names[t]);
        dt_dataset ds;
        char err[DT_ERR_LEN], *report = NULL;
        int rc = dt_dataset_load(path, tok, 4096, &ds, &report, err);
        if (rc != DT_OK)
            fail_msg("%s: %s", names[t], report ? report : err);
        assert_int_equal(ds.nrows, 4);
        for (int r = 0; r < ds.nrows; r++) {
            json_t *row = json_loads(CONVS[r], 0, NULL);
            const json_t *msgs = json_object_get(row, "messages");
            int32_t tags[8];
            for (size_t i = 0; i < json_array_size(msgs); i++)
                tags[i] = (int32_t)i + 1;
            json_t *vars = json_pack("{s:b,s:s,s:s}", "add_generation_prompt", 0,
                                     "bos_token", "<|im_start|>", "eos_token", "<|im_end|>");
            dt_chat_out want;
            assert_int_equal(dt_chat_render(tok->chat_template, msgs, vars, tags, -1, &want,
                                            err), DT_OK);
            uint8_t *tr;
            char *got = row_text(tok, &ds.rows[r], &tr);
            if (strcmp(got, want.text) != 0)
                fail_msg("%s row %d: tokens decode to\n%s\nrendered\n%s", names[t], r, got,
                         want.text);
            for (size_t k = 0; k < want.len; k++) {
                int32_t m = want.tag[k];
                const json_t *msg = m ? json_array_get(msgs, (size_t)m - 1) : NULL;
                int asst = msg && !strcmp(json_string_value(json_object_get(msg, "role")),
                                          "assistant");
                int w = !json_is_integer(json_object_get(msg, "weight")) ||
                        json_integer_value(json_object_get(msg, "weight")) != 0;
                if (m && (asst && w) != tr[k])
                    fail_msg("%s row %d: byte %zu of message %d (%s) trained=%d:\n%s",
                             names[t], r, k, m - 1,
                             json_string_value(json_object_get(msg, "role")), tr[k], got + k);
            }
            for (int h = 0; HEADERS[h]; h++)
                for (const char *at = strstr(got, HEADERS[h]); at; at = strstr(at + 1, HEADERS[h]))
                    for (size_t k = 0; k < strlen(HEADERS[h]); k++)
                        if (want.tag[at - got + (long)k] == 0 && tr[at - got + (long)k])
                            fail_msg("%s row %d: header %s trained", names[t], r, HEADERS[h]);
            /* the end-of-turn marker after each trained turn is trained */
            static const char *const ends[] = {"<|im_end|>", "<|eot_id|>", "<end_of_turn>",
                                               NULL};
            for (size_t k = 0; k + 1 < want.len; k++) {
                int32_t m = want.tag[k];
                if (m <= 0 || want.tag[k + 1] == m || !tr[k])
                    continue;
                const char *after = want.text + k + 1;
                while (*after == ' ')
                    after++;
                for (int e = 0; ends[e]; e++)
                    if (!strncmp(after, ends[e], strlen(ends[e])) &&
                        !tr[(size_t)(after - want.text) + strlen(ends[e]) - 1])
                        fail_msg("%s row %d: %s after a trained turn is not trained",
                                 names[t], r, ends[e]);
            }
            /* with {% generation %} blocks the loss is exactly those spans
             * (less the masked turn's) */
            for (size_t k = 0; k < want.len && want.ngen; k++) {
                int in = 0;
                for (int g = 0; g < want.ngen; g++)
                    in |= k >= want.gen[g][0] && k < want.gen[g][1];
                if (tr[k] && !in)
                    fail_msg("%s row %d: byte %zu trained outside {%% generation %%}",
                             names[t], r, k);
                if (in && !tr[k] && !(r == 2 && strstr(want.text + k, "trained turn")))
                    fail_msg("%s row %d: byte %zu in {%% generation %%} not trained",
                             names[t], r, k);
            }
            /* Qwen 3 rebuilds the latest turn's reasoning block: trained
             * whole, from "<think>" to its <|im_end|> */
            const char *think = strstr(got, "<think>");
            while (think && strstr(think + 1, "<think>"))
                think = strstr(think + 1, "<think>");
            if (think && !strcmp(names[t], "qwen3")) {
                const char *end = strstr(think, "<|im_end|>") + strlen("<|im_end|>");
                for (const char *q = think; q < end; q++)
                    if (!tr[q - got])
                        fail_msg("qwen3 row %d: byte %ld of the reasoning turn not trained",
                                 r, (long)(q - got));
            }
            free(got);
            free(tr);
            dt_chat_out_free(&want);
            json_decref(vars);
            json_decref(row);
        }
        dt_dataset_free(&ds);
    }
    dt_tokenizer_free(tok);
    remove(path);
    rmdir(dir);
}

/* Broken templates: every prefix of every fixture template, and each with
 * one byte changed at every position, renders or fails with DT_EINVAL and
 * a message; never crashes, hangs or leaks (ASan runs this too).
 * About 1.5 s. */
static void test_truncated_and_mutated_templates_fail_cleanly(void **state)
{
    (void)state;
    static const char *const names[] = {"llama3_1", "llama3_1_official", "qwen3",
                                        "gemma3", "llama2", "mistral", "smollm2", "chatml_generation",
                                        "features", NULL};
    json_t *msgs = json_pack("[{s:s,s:s},{s:s,s:s}]", "role", "user", "content", "hi",
                             "role", "assistant", "content", "yo");
    json_t *vars = json_pack("{s:b,s:s,s:s}", "add_generation_prompt", 1, "bos_token",
                             "<s>", "eos_token", "</s>");
    static const char subst[] = "{}%#-'\"()[]|.x";
    long ok = 0, refused = 0;
    for (int t = 0; names[t]; t++) {
        char path[256];
        snprintf(path, sizeof path, FIX "%s.jinja", names[t]);
        char *tmpl = slurp(path);
        size_t n = strlen(tmpl);
        char *buf = malloc(n + 1);
        for (size_t k = 0; k <= n; k++) {
            for (int mode = 0; mode < 2; mode++) {
                memcpy(buf, tmpl, n + 1);
                if (mode == 0)
                    buf[k] = 0;
                else if (k < n)
                    buf[k] = subst[k % (sizeof subst - 1)];
                else
                    continue;
                dt_chat_out out;
                char err[DT_ERR_LEN];
                int rc = dt_chat_render(buf, msgs, vars, NULL, FIXED_NOW, &out, err);
                if (rc == DT_OK) {
                    assert_non_null(out.text);
                    ok++;
                    dt_chat_out_free(&out);
                } else {
                    assert_int_equal(rc, DT_EINVAL);
                    assert_true(strlen(err) > 0);
                    refused++;
                }
            }
        }
        free(buf);
        free(tmpl);
    }
    json_decref(msgs);
    json_decref(vars);
    assert_true(ok > 0 && refused > 0);
}

/* With a {% generation %} template, a dataset row's token ids and trained
 * tokens equal what transformers' apply_chat_template(tokenize=True,
 * return_assistant_tokens_mask=True) returns with the same (SmolLM2)
 * tokenizer: ids[j] == input_ids[j] and "token j is trained" (labels[j-1]
 * != -100) == assistant_masks[j]. The one difference by design: control-
 * token strings inside message content stay text here. About 0.1 s. */
static void test_dataset_mask_matches_transformers_assistant_masks(void **state)
{
    (void)state;
    json_t *j = load_cases();
    dt_tokenizer *tok = smol_tokenizer();
    use_template(tok, "chatml_generation");
    char dir[] = "/tmp/test_chat_template.XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    size_t i, checked = 0;
    const json_t *cs;
    json_array_foreach(json_object_get(j, "cases"), i, cs) {
        const json_t *want_ids = json_object_get(cs, "smollm2_ids");
        const json_t *want_mask = json_object_get(cs, "smollm2_assistant_masks");
        const json_t *msgs = json_object_get(cs, "messages");
        if (!want_ids || json_is_true(json_object_get(cs, "add_generation_prompt")))
            continue;
        /* only rows the dataset format accepts and can train on */
        int usable = 0;
        size_t m;
        const json_t *msg;
        json_array_foreach(msgs, m, msg) {
            const char *role = json_string_value(json_object_get(msg, "role"));
            if (json_object_size(msg) != 2 || !json_is_string(json_object_get(msg, "content")))
                usable = -1000;
            usable += role && !strcmp(role, "assistant");
        }
        /* "whitespace_and_specials" puts "<|im_end|>" in a message: transformers
         * encodes it as the control token, we on purpose as text (a message
         * cannot end its own turn); test_dataset_renders_model_template_...
         * covers that row */
        if (usable <= 0 ||
            !strcmp(json_string_value(json_object_get(cs, "conversation")),
                    "whitespace_and_specials"))
            continue;
        json_t *row = json_pack("{s:O}", "messages", msgs);
        assert_int_equal(json_dump_file(row, path, JSON_COMPACT), 0);
        json_decref(row);
        dt_dataset ds;
        char err[DT_ERR_LEN], *report = NULL;
        if (dt_dataset_load(path, tok, 4096, &ds, &report, err) != DT_OK)
            fail_msg("%s: %s", json_string_value(json_object_get(cs, "conversation")),
                     report ? report : err);
        const dt_row *r = &ds.rows[0];
        const char *conv = json_string_value(json_object_get(cs, "conversation"));
        if ((size_t)r->n != json_array_size(want_ids))
            fail_msg("%s: %d tokens, transformers %zu", conv, r->n, json_array_size(want_ids));
        for (int k = 0; k < r->n; k++) {
            long w = (long)json_integer_value(json_array_get(want_ids, (size_t)k));
            int wm = (int)json_integer_value(json_array_get(want_mask, (size_t)k));
            int got = k > 0 && r->labels[k - 1] != -100;
            if (r->ids[k] != w || got != wm)
                fail_msg("%s: token %d: id %d mask %d, transformers id %ld mask %d", conv, k,
                         r->ids[k], got, w, wm);
        }
        dt_dataset_free(&ds);
        checked++;
    }
    dt_tokenizer_free(tok);
    json_decref(j);
    remove(path);
    rmdir(dir);
    assert_true(checked >= 5);
}

/* A row the model's template refuses (Gemma 3: roles must alternate) is a
 * line problem naming the line and the template's own message. About 0.06 s. */
static void test_dataset_reports_template_refusal_with_line(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_chat_template.XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "%s\n", CONVS[0]);
    fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
               "{\"role\": \"user\", \"content\": \"b\"}, "
               "{\"role\": \"assistant\", \"content\": \"c\"}]}\n");
    fclose(f);
    dt_tokenizer *tok = smol_tokenizer();
    use_template(tok, "gemma3");
    dt_dataset ds;
    char err[DT_ERR_LEN], *report = NULL;
    assert_int_equal(dt_dataset_load(path, tok, 4096, &ds, &report, err), DT_EINVAL);
    char want[256];
    snprintf(want, sizeof want, "%s:2: chat template: Conversation roles must alternate "
             "user/assistant/user/assistant/...", path);
    if (!report || strncmp(report, want, strlen(want)) != 0)
        fail_msg("report '%s', want '%s'", report ? report : "(none)", want);
    free(report);
    dt_tokenizer_free(tok);
    remove(path);
    rmdir(dir);
}

/* A model directory's chat_template.jinja (what transformers now saves) is
 * the template, ahead of tokenizer_config.json's "chat_template"; without
 * it, the config's (string or [{"name": "default", ...}] list) is.
 * About 0.2 s. */
static void test_model_dir_chat_template_jinja_wins(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_chat_template.XXXXXX", p[256], cwd[1024];
    assert_non_null(mkdtemp(dir));
    assert_non_null(getcwd(cwd, sizeof cwd));
    static const char *const links[] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++) {
        char src[1400];
        snprintf(src, sizeof src, "%s/.cache/gpt2-tokenizer/%s", cwd, links[i]);
        snprintf(p, sizeof p, "%s/%s", dir, links[i]);
        assert_int_equal(symlink(src, p), 0);
    }
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(p, "w");
    fprintf(f, "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, "
               "{\"name\": \"default\", \"template\": \"{{ 'from config' }}\"}]}");
    fclose(f);
    char err[DT_ERR_LEN];
    dt_tokenizer *tok = dt_tokenizer_load_dir(dir, err);
    if (!tok)
        fail_msg("%s", err);
    assert_string_equal(dt_tokenizer_chat_template(tok), "{{ 'from config' }}");
    dt_tokenizer_free(tok);
    snprintf(p, sizeof p, "%s/chat_template.jinja", dir);
    f = fopen(p, "w");
    fprintf(f, "{{ 'from jinja file' }}\n");
    fclose(f);
    tok = dt_tokenizer_load_dir(dir, err);
    if (!tok)
        fail_msg("%s", err);
    assert_string_equal(dt_tokenizer_chat_template(tok), "{{ 'from jinja file' }}\n");
    dt_tokenizer_free(tok);
    static const char *const names[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                        "chat_template.jinja"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        remove(p);
    }
    rmdir(dir);
}

/* The prompt the serving worker generates from (dt_chat_prompt, the chat
 * without its last assistant turn) is, token for token, the start of the
 * row training makes of the whole chat, up to that turn's answer: for each
 * model template (SmolLM2's tokenizer), for ChatML without a template and,
 * with the tiny GPT-2's tokenizer, for the plain template. (Qwen 3 is left
 * out: its template writes an empty <think> block into the last assistant
 * turn of a training row, which transformers' generation prompt does not.) */
static void check_prompt_is_row_prefix(dt_tokenizer *tok, const char *name, const char *dir)
{
    static const char *const convs[] = {
        "[{\"role\": \"user\", \"content\": \"What is 2+2?\"}, "
        "{\"role\": \"assistant\", \"content\": \"It is 4.\"}]",
        "[{\"role\": \"user\", \"content\": \"Hi there\"}, "
        "{\"role\": \"assistant\", \"content\": \"Hello!\"}, "
        "{\"role\": \"user\", \"content\": \"Say 日本語\"}, "
        "{\"role\": \"assistant\", \"content\": \"It is 4.\"}]",
    };
    char path[256], err[DT_ERR_LEN], *report = NULL;
    snprintf(path, sizeof path, "%s/prompt.jsonl", dir);
    for (size_t c = 0; c < sizeof convs / sizeof *convs; c++) {
        FILE *f = fopen(path, "w");
        fprintf(f, "{\"messages\": %s}\n", convs[c]);
        fclose(f);
        dt_dataset ds;
        if (dt_dataset_load(path, tok, 4096, &ds, &report, err) != DT_OK)
            fail_msg("%s: %s", name, report ? report : err);
        json_t *msgs = json_loads(convs[c], 0, NULL);
        json_array_remove(msgs, json_array_size(msgs) - 1);
        int32_t *ids = NULL;
        int n = 0;
        if (dt_chat_prompt(tok, msgs, &ids, &n, err) != DT_OK)
            fail_msg("%s: %s", name, err);
        const dt_row *r = &ds.rows[0];
        assert_true(n > 0 && n < r->n);
        for (int i = 0; i < n; i++)
            if (ids[i] != r->ids[i]) {
                for (int q = i - 6; q < i + 3 && q < n; q++) {
                    if (q < 0)
                        continue;
                    char *x = dt_tokenizer_decode(tok, &ids[q], 1);
                    char *y = dt_tokenizer_decode(tok, &r->ids[q], 1);
                    printf("%d: [%s] [%s]\n", q, x, y);
                    free(x); free(y);
                }
                char *a = dt_tokenizer_decode(tok, ids, n);
                char *b = dt_tokenizer_decode(tok, r->ids, r->n);
                fail_msg("%s conv %zu: token %d differs (%d, %d; next %d %d)\nprompt: %s\nrow:    %s",
                         name, c, i, ids[i], r->ids[i], i + 1 < n ? ids[i + 1] : -1,
                         r->ids[i + 1], a, b);
            }
        /* what follows the prompt in the row is the answer, trained */
        assert_int_not_equal(r->labels[n - 1], -100);
        free(ids);
        json_decref(msgs);
        dt_dataset_free(&ds);
    }
}

static void test_chat_prompt_is_the_training_row_up_to_the_answer(void **state)
{
    (void)state;
    static const char *const names[] = {"smollm2", "llama3_1", "gemma3", "llama2", "mistral",
                                        "chatml_generation", NULL};
    char dir[] = "/tmp/test_chat_prompt.XXXXXX", err[DT_ERR_LEN];
    assert_non_null(mkdtemp(dir));
    if (access(SMOL_GGUF, R_OK) == 0) {
        dt_tokenizer *tok = smol_tokenizer();
        for (int t = 0; names[t]; t++) {
            use_template(tok, names[t]);
            check_prompt_is_row_prefix(tok, names[t], dir);
        }
        free(tok->chat_template); /* no template: ChatML (the tokenizer has <|im_start|>) */
        tok->chat_template = NULL;
        check_prompt_is_row_prefix(tok, "chatml", dir);
        dt_tokenizer_free(tok);
    } else {
        printf("SKIPPED: %s absent (run make deps)\n", SMOL_GGUF);
    }
    if (access(".cache/tiny-gpt2/vocab.json", R_OK) == 0) {
        dt_tokenizer *gpt2 = dt_tokenizer_load_dir(".cache/tiny-gpt2", err);
        if (!gpt2)
            fail_msg("%s", err);
        check_prompt_is_row_prefix(gpt2, "plain", dir);
        int32_t *ids = NULL;
        int n = 0;
        json_t *msgs = json_loads("[{\"role\": \"user\", \"content\": \"hi\"}]", 0, NULL);
        assert_int_equal(dt_chat_prompt(gpt2, msgs, &ids, &n, err), DT_OK);
        char *text = dt_tokenizer_decode(gpt2, ids, n);
        assert_string_equal(text, "### User:\nhi\n\n### Assistant:\n");
        free(text);
        free(ids);
        json_decref(msgs);
        dt_tokenizer_free(gpt2);
    } else {
        printf("SKIPPED: .cache/tiny-gpt2 absent (the integration tests write it)\n");
    }
    snprintf(err, sizeof err, "%s/prompt.jsonl", dir);
    unlink(err);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_transformers),
        cmocka_unit_test(test_generation_spans_match_transformers),
        cmocka_unit_test(test_content_tags_cover_content_only),
        cmocka_unit_test(test_errors_name_construct_and_position),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_truncated_and_mutated_templates_fail_cleanly),
        cmocka_unit_test(test_dataset_renders_model_template_and_masks_assistant),
        cmocka_unit_test(test_dataset_mask_matches_transformers_assistant_masks),
        cmocka_unit_test(test_dataset_reports_template_refusal_with_line),
        cmocka_unit_test(test_model_dir_chat_template_jinja_wins),
        cmocka_unit_test(test_chat_prompt_is_the_training_row_up_to_the_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
