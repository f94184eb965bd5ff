/* dataset.c: JSONL training data -> token rows with loss masks.
 *
 * The file is streamed one line at a time (getline), so lines may be of any
 * length and the file is never held in memory whole. Line handling: a UTF-8
 * BOM on line 1 is skipped, a trailing "\r\n" or "\n" is stripped, a final
 * line without newline is read, and lines holding only whitespace are
 * skipped (they still count for line numbers).
 *
 * Each line is checked by one shape checker shared by dt_dataset_load and
 * dt_dataset_validate, then (load only) rendered to tokens:
 *
 *   text        [BOS] encode(text) [EOS]; every target has loss.
 *   prompt/     [BOS] encode(prompt) encode(completion) [EOS]; prompt and
 *   completion  completion are tokenized separately and concatenated, so the
 *               boundary is exact; loss on completion tokens and the EOS.
 *   messages    ChatML when the tokenizer has both <|im_start|> and
 *               <|im_end|>: [BOS] then per message
 *                 <|im_start|> "{role}\n" "{content}" <|im_end|> "\n"
 *               with loss on assistant content and its <|im_end|>.
 *               Otherwise the plain template: [BOS] then
 *                 "### System:\n{content}\n\n"
 *                 "### User:\n{content}\n\n"
 *                 "### Assistant:\n{content}" EOS "\n\n"
 *               with loss on assistant content and its EOS.
 *               An assistant message with "weight": 0 (OpenAI's field) is
 *               rendered but masked.
 *   input_ids   pre-tokenized. Optional "labels" follow Hugging Face's
 *               convention (labels[i] belongs to position i and the model
 *               shifts): target i = labels[i+1]; labels[0] is unused. Without
 *               labels every target has loss.
 *
 * [BOS] is added only when the tokenizer has a BOS distinct from its EOS
 * (Llama-style); GPT-2-style tokenizers, whose BOS and EOS are the same
 * <|endoftext|>, get none. [EOS] is omitted when the tokenizer has none.
 *
 * Special-token strings ("<|endoftext|>") are recognised inside "text",
 * "prompt" and "completion", as Hugging Face's tokenizer(text) does, but not
 * inside chat message content: the template owns the control tokens, so a
 * message that mentions "<|im_end|>" cannot end its own turn.
 *
 * Keys are strict: an unknown key is an error naming it, so typos surface.
 * The only extras accepted (and ignored) are OpenAI chat-format fields that
 * do not change the rendered text: "tools", "parallel_tool_calls" and
 * "functions" beside "messages". Message objects accept "role", "content"
 * and "weight" (0 or 1, assistant messages only).
 *
 * Duplicate keys in an object are rejected (JSON_REJECT_DUPLICATES): the
 * second value would otherwise silently win.
 *
 * Each bad line contributes its first problem to the report, as
 * "PATH:LINE: field \"messages\"[2].role: must be one of ...". */
#include "dataset.h"
#include "base/dt.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DS_MAX_REPORT_DEFAULT 100
#define DS_LABEL_IGNORE (-100)

enum { SHAPE_TEXT, SHAPE_PC, SHAPE_CHAT, SHAPE_IDS };
enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };

/* ---------------------------------------------------------------------------
 * Problem collection: the report lists at most `max` problems, then a
 * "... and N more problems" line; the first problem is kept whole for err. */

typedef struct problems {
    char *buf;  /* report text, owned until handed to the caller */
    size_t len, cap;
    int max;    /* problems listed in the report */
    long total; /* problems found */
    char first[DT_ERR_LEN];
} problems;

static int problems_append(problems *p, const char *s, size_t n)
{
    if (p->len + n + 1 > p->cap) {
        size_t cap = p->cap ? p->cap : 1024;
        while (cap < p->len + n + 1)
            cap *= 2;
        char *b = realloc(p->buf, cap);
        if (!b)
            return DT_ENOMEM;
        p->buf = b;
        p->cap = cap;
    }
    memcpy(p->buf + p->len, s, n);
    p->len += n;
    p->buf[p->len] = 0;
    return DT_OK;
}

static int problems_add(problems *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int problems_add(problems *p, const char *fmt, ...)
{
    char line[DT_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (p->total++ == 0)
        snprintf(p->first, sizeof p->first, "%s", line);
    if (p->total > p->max)
        return DT_OK;
    int rc = problems_append(p, line, strlen(line));
    return rc ? rc : problems_append(p, "\n", 1);
}

/* Hands the report to *report (new string) and the first problem to err. */
static void problems_finish(problems *p, char **report, char *err)
{
    if (p->total > p->max) {
        char more[64];
        int n = snprintf(more, sizeof more, "... and %ld more problems\n",
                         p->total - p->max);
        problems_append(p, more, (size_t)n);
    }
    if (report) {
        *report = p->buf;
        p->buf = NULL;
    }
    if (err)
        snprintf(err, DT_ERR_LEN, "%s", p->first);
    free(p->buf);
    p->buf = NULL;
}

/* ---------------------------------------------------------------------------
 * Shape checks (no tokenizer). Each returns 0 or -1 with the problem, without
 * the "PATH:LINE: " prefix, in msg. */

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE: case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "value";
}

static int fail(char *msg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int fail(char *msg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, DT_ERR_LEN, fmt, ap);
    va_end(ap);
    return -1;
}

static int in_list(const char *key, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(key, *list) == 0)
            return 1;
    return 0;
}

/* A string field that must be present; non-empty unless allow_empty. `name`
 * is the field as reported, e.g. "\"messages\"[1].content". */
static int check_string(const json_t *v, const char *name, int allow_empty,
                        char *msg)
{
    if (!v)
        return fail(msg, "field %s: missing", name);
    if (!json_is_string(v))
        return fail(msg, "field %s: must be a string, got %s", name,
                    json_type_name(v));
    if (!allow_empty && json_string_length(v) == 0)
        return fail(msg, "field %s: must not be empty", name);
    return 0;
}

static int role_of(const char *s)
{
    if (strcmp(s, "system") == 0) return ROLE_SYSTEM;
    if (strcmp(s, "user") == 0) return ROLE_USER;
    if (strcmp(s, "assistant") == 0) return ROLE_ASSISTANT;
    return -1;
}

/* Weight of a message: 1 unless "weight": 0. */
static int message_weight(const json_t *m)
{
    const json_t *w = json_object_get(m, "weight");
    return !(w && json_is_integer(w) && json_integer_value(w) == 0);
}

static int check_messages(const json_t *msgs, char *msg)
{
    if (!json_is_array(msgs))
        return fail(msg, "field \"messages\": must be an array, got %s",
                    json_type_name(msgs));
    if (json_array_size(msgs) == 0)
        return fail(msg, "field \"messages\": must not be empty");
    static const char *const keys[] = {"role", "content", "weight", NULL};
    int assistants = 0, trained = 0;
    size_t i;
    const json_t *m;
    json_array_foreach(msgs, i, m) {
        char name[64];
        if (!json_is_object(m))
            return fail(msg, "field \"messages\"[%zu]: must be an object, "
                        "got %s", i, json_type_name(m));
        const char *key;
        const json_t *v;
        json_object_foreach((json_t *)m, key, v) {
            if (!in_list(key, keys))
                return fail(msg, "field \"messages\"[%zu].%s: unknown field "
                            "(a message accepts role, content, weight)",
                            i, key);
        }
        snprintf(name, sizeof name, "\"messages\"[%zu].role", i);
        const json_t *role = json_object_get(m, "role");
        if (check_string(role, name, 0, msg) < 0)
            return -1;
        int r = role_of(json_string_value(role));
        if (r < 0)
            return fail(msg, "field %s: must be one of system, user, "
                        "assistant", name);
        snprintf(name, sizeof name, "\"messages\"[%zu].content", i);
        if (check_string(json_object_get(m, "content"), name, 0, msg) < 0)
            return -1;
        const json_t *w = json_object_get(m, "weight");
        if (w) {
            if (r != ROLE_ASSISTANT)
                return fail(msg, "field \"messages\"[%zu].weight: only "
                            "allowed on assistant messages", i);
            if (!json_is_integer(w) || (json_integer_value(w) != 0 &&
                                        json_integer_value(w) != 1))
                return fail(msg, "field \"messages\"[%zu].weight: must be "
                            "0 or 1", i);
        }
        if (r == ROLE_ASSISTANT) {
            assistants++;
            trained += message_weight(m);
        }
    }
    if (assistants == 0)
        return fail(msg, "field \"messages\": no assistant message to learn "
                    "from");
    if (trained == 0)
        return fail(msg, "field \"messages\": every assistant message has "
                    "weight 0");
    return 0;
}

/* Integers of an id array: each in [0, vocab) (vocab 0: unknown, only >= 0),
 * or -100 when allow_ignore. */
static int check_ids(const json_t *a, const char *name, long vocab,
                     int allow_ignore, char *msg)
{
    if (!json_is_array(a))
        return fail(msg, "field \"%s\": must be an array, got %s", name,
                    json_type_name(a));
    size_t i;
    const json_t *v;
    json_array_foreach(a, i, v) {
        if (!json_is_integer(v))
            return fail(msg, "field \"%s\"[%zu]: must be an integer, got %s",
                        name, i, json_type_name(v));
        json_int_t x = json_integer_value(v);
        if (allow_ignore && x == DS_LABEL_IGNORE)
            continue;
        long limit = vocab > 0 ? vocab : INT32_MAX;
        if (x < 0 || x >= limit)
            return fail(msg, "field \"%s\"[%zu]: %" JSON_INTEGER_FORMAT
                        " is out of range [0, %ld)%s", name, i, x, limit,
                        allow_ignore ? " and not -100" : "");
    }
    return 0;
}

/* Checks one parsed line. Returns its SHAPE_* or -1 with msg. */
static int check_row(const json_t *obj, long vocab, char *msg)
{
    static const char *const k_text[] = {"text", NULL};
    static const char *const k_pc[] = {"prompt", "completion", NULL};
    static const char *const k_chat[] = {"messages", "tools",
                                         "parallel_tool_calls", "functions",
                                         NULL};
    static const char *const k_ids[] = {"input_ids", "labels", NULL};
    static const char *const expl[] = {
        "a \"text\" row accepts only text",
        "a \"prompt\" row accepts prompt, completion",
        "a \"messages\" row accepts messages, tools, parallel_tool_calls, "
        "functions",
        "an \"input_ids\" row accepts input_ids, labels"};

    if (!json_is_object(obj))
        return fail(msg, "expected a JSON object, got %s",
                    json_type_name(obj));
    int shape;
    const char *const *keys;
    if (json_object_get(obj, "messages"))
        shape = SHAPE_CHAT, keys = k_chat;
    else if (json_object_get(obj, "input_ids") || json_object_get(obj, "labels"))
        shape = SHAPE_IDS, keys = k_ids;
    else if (json_object_get(obj, "prompt") ||
             json_object_get(obj, "completion"))
        shape = SHAPE_PC, keys = k_pc;
    else if (json_object_get(obj, "text"))
        shape = SHAPE_TEXT, keys = k_text;
    else
        shape = -1, keys = NULL;

    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        if (shape < 0)
            return fail(msg, "field \"%s\": unknown field (expected \"text\", "
                        "\"prompt\"+\"completion\", \"messages\" or "
                        "\"input_ids\")", key);
        if (!in_list(key, keys))
            return fail(msg, "field \"%s\": unknown field (%s)", key,
                        expl[shape]);
    }
    switch (shape) {
    case SHAPE_TEXT:
        return check_string(json_object_get(obj, "text"), "\"text\"", 0,
                            msg) < 0 ? -1 : shape;
    case SHAPE_PC:
        if (check_string(json_object_get(obj, "prompt"), "\"prompt\"", 1,
                         msg) < 0 ||
            check_string(json_object_get(obj, "completion"), "\"completion\"",
                         0, msg) < 0)
            return -1;
        return shape;
    case SHAPE_CHAT:
        return check_messages(json_object_get(obj, "messages"), msg) < 0
                   ? -1 : shape;
    case SHAPE_IDS: {
        const json_t *ids = json_object_get(obj, "input_ids");
        const json_t *labels = json_object_get(obj, "labels");
        if (!ids)
            return fail(msg, "field \"input_ids\": missing (required with "
                        "\"labels\")");
        if (check_ids(ids, "input_ids", vocab, 0, msg) < 0)
            return -1;
        if (json_array_size(ids) < 2)
            return fail(msg, "field \"input_ids\": needs at least 2 tokens, "
                        "got %zu", json_array_size(ids));
        if (labels) {
            if (check_ids(labels, "labels", vocab, 1, msg) < 0)
                return -1;
            if (json_array_size(labels) != json_array_size(ids))
                return fail(msg, "field \"labels\": length %zu differs from "
                            "\"input_ids\" length %zu", json_array_size(labels),
                            json_array_size(ids));
        }
        return shape;
    }
    }
    return fail(msg, "no fields: expected \"text\", \"prompt\"+\"completion\", "
                "\"messages\" or \"input_ids\"");
}

/* ---------------------------------------------------------------------------
 * Line scanner shared by load and validate: calls on_row for every line that
 * parses and passes check_row; on_row returns 0, -1 with a line problem in
 * msg, or a negative DT_E* (< -1) to stop. */

typedef int (*row_fn)(void *ctx, const json_t *obj, int shape, char *msg);

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\f' &&
            s[i] != '\v')
            return 0;
    return 1;
}

static int scan_file(const char *path, long vocab, problems *p, long *nrows,
                     row_fn on_row, void *ctx, char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return dt_errf(err, DT_EIO, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    long lineno = 0;
    int rc = DT_OK;
    *nrows = 0;
    errno = 0;
    while ((got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        char *s = line;
        size_t n = (size_t)got;
        if (lineno == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
            s += 3, n -= 3;
        if (n > 0 && s[n - 1] == '\n')
            n--;
        if (n > 0 && s[n - 1] == '\r')
            n--;
        if (is_blank(s, n))
            continue;
        (*nrows)++;
        json_error_t je;
        char msg[DT_ERR_LEN];
        json_t *obj = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
        if (!obj) {
            const char *hint = json_error_code(&je) == json_error_invalid_utf8
                                   ? " (invalid UTF-8)" : "";
            rc = problems_add(p, "%s:%ld: invalid JSON at column %d: %s%s",
                              path, lineno, je.column, je.text, hint);
        } else {
            int shape = check_row(obj, vocab, msg);
            int r = shape < 0 ? -1 : on_row(ctx, obj, shape, msg);
            if (r == -1)
                rc = problems_add(p, "%s:%ld: %s", path, lineno, msg);
            else if (r < 0)
                rc = dt_errf(err, r, "%s:%ld: %s", path, lineno, msg);
            json_decref(obj);
        }
        if (rc != DT_OK)
            break;
    }
    if (rc == DT_OK && ferror(f))
        rc = dt_errf(err, DT_EIO, "%s: read: %s", path, strerror(errno));
    else if (rc == DT_ENOMEM && err && !err[0])
        dt_errf(err, rc, "%s: out of memory", path);
    free(line);
    fclose(f);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Rendering rows to tokens. Masked text is gathered in `pend` and encoded in
 * one piece when a trained segment or special token follows, so masked
 * template text tokenizes as one string would. */

typedef struct builder {
    const dt_tokenizer *tok;
    int allow_special;
    int32_t *ids;  /* (n) */
    uint8_t *loss; /* (n) 1: token j is a trained target (predicted at j-1) */
    int n, cap;
    char *pend;    /* masked text not yet encoded */
    size_t plen, pcap;
    char err[DT_ERR_LEN];
} builder;

static int b_push(builder *b, int32_t id, int loss)
{
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 256;
        int32_t *ids = realloc(b->ids, (size_t)cap * sizeof *ids);
        if (!ids)
            return DT_ENOMEM;
        b->ids = ids;
        uint8_t *l = realloc(b->loss, (size_t)cap);
        if (!l)
            return DT_ENOMEM;
        b->loss = l;
        b->cap = cap;
    }
    b->ids[b->n] = id;
    b->loss[b->n++] = (uint8_t)loss;
    return DT_OK;
}

static int b_encode(builder *b, const char *s, size_t len, int loss)
{
    if (len == 0)
        return DT_OK;
    int32_t *ids = NULL;
    int n = 0;
    int rc = dt_tokenizer_encode(b->tok, s, len, b->allow_special, &ids, &n,
                                 b->err);
    for (int i = 0; rc == DT_OK && i < n; i++)
        rc = b_push(b, ids[i], loss);
    free(ids);
    return rc;
}

static int b_flush(builder *b)
{
    int rc = b_encode(b, b->pend, b->plen, 0);
    b->plen = 0;
    return rc;
}

/* Appends text; trained text is encoded on its own for an exact boundary. */
static int b_text(builder *b, const char *s, size_t len, int loss)
{
    if (loss) {
        int rc = b_flush(b);
        return rc ? rc : b_encode(b, s, len, 1);
    }
    if (len == 0) /* e.g. "prompt": "" on a fresh row: pend may still be NULL */
        return DT_OK;
    if (b->plen + len > b->pcap) {
        size_t cap = b->pcap ? b->pcap : 256;
        while (cap < b->plen + len)
            cap *= 2;
        char *p = realloc(b->pend, cap);
        if (!p)
            return DT_ENOMEM;
        b->pend = p;
        b->pcap = cap;
    }
    memcpy(b->pend + b->plen, s, len);
    b->plen += len;
    return DT_OK;
}

static int b_str(builder *b, const char *s, int loss)
{
    return b_text(b, s, strlen(s), loss);
}

static int b_json(builder *b, const json_t *str, int loss)
{
    return b_text(b, json_string_value(str), json_string_length(str), loss);
}

/* Appends a special token (skipped when id < 0). */
static int b_token(builder *b, int32_t id, int loss)
{
    if (id < 0)
        return DT_OK;
    int rc = b_flush(b);
    return rc ? rc : b_push(b, id, loss);
}

static int render_chat(builder *b, const json_t *msgs)
{
    const dt_tokenizer *tok = b->tok;
    int32_t im_start = dt_tokenizer_token_id(tok, "<|im_start|>");
    int32_t im_end = dt_tokenizer_token_id(tok, "<|im_end|>");
    int32_t eos = dt_tokenizer_eos(tok);
    int chatml = im_start >= 0 && im_end >= 0;
    static const char *const plain_hdr[] = {"### System:\n", "### User:\n",
                                            "### Assistant:\n"};
    size_t i;
    const json_t *m;
    int rc = DT_OK;
    b->allow_special = 0;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        const json_t *content = json_object_get(m, "content");
        int r = role_of(role);
        int loss = r == ROLE_ASSISTANT && message_weight(m);
        if (chatml) {
            if ((rc = b_token(b, im_start, 0)) || (rc = b_str(b, role, 0)) ||
                (rc = b_str(b, "\n", 0)) || (rc = b_json(b, content, loss)) ||
                (rc = b_token(b, im_end, loss)) || (rc = b_str(b, "\n", 0)))
                return rc;
        } else if (r == ROLE_ASSISTANT) {
            if ((rc = b_str(b, plain_hdr[r], 0)) ||
                (rc = b_json(b, content, loss)) ||
                (rc = b_token(b, eos, loss)) || (rc = b_str(b, "\n\n", 0)))
                return rc;
        } else {
            if ((rc = b_str(b, plain_hdr[r], 0)) ||
                (rc = b_json(b, content, 0)) || (rc = b_str(b, "\n\n", 0)))
                return rc;
        }
    }
    return b_flush(b);
}

static int render_row(builder *b, const json_t *obj, int shape)
{
    const dt_tokenizer *tok = b->tok;
    int32_t bos = dt_tokenizer_bos(tok), eos = dt_tokenizer_eos(tok);
    int rc;
    b->n = 0;
    b->plen = 0;
    b->allow_special = 1;
    if (shape == SHAPE_IDS) {
        const json_t *ids = json_object_get(obj, "input_ids");
        for (size_t i = 0; i < json_array_size(ids); i++)
            if ((rc = b_push(b, (int32_t)json_integer_value(
                                    json_array_get(ids, i)), 1)))
                return rc;
        return DT_OK;
    }
    if (bos >= 0 && bos != eos && (rc = b_push(b, bos, 0)))
        return rc;
    switch (shape) {
    case SHAPE_TEXT:
        if ((rc = b_json(b, json_object_get(obj, "text"), 1)))
            return rc;
        break;
    case SHAPE_PC:
        if ((rc = b_json(b, json_object_get(obj, "prompt"), 0)) ||
            (rc = b_json(b, json_object_get(obj, "completion"), 1)))
            return rc;
        break;
    case SHAPE_CHAT:
        return render_chat(b, json_object_get(obj, "messages"));
    }
    return b_token(b, eos, 1);
}

typedef struct load_ctx {
    builder b;
    int seq_len;
    dt_dataset *ds;
    int rows_cap;
} load_ctx;

static int load_row(void *vctx, const json_t *obj, int shape, char *msg)
{
    load_ctx *c = vctx;
    builder *b = &c->b;
    b->err[0] = 0;
    int rc = render_row(b, obj, shape);
    if (rc == DT_ENOMEM) {
        fail(msg, "out of memory");
        return DT_ENOMEM;
    }
    if (rc != DT_OK)
        return fail(msg, "tokenizer: %s", b->err[0] ? b->err : dt_strerror(rc));

    int n = b->n, truncated = n > c->seq_len + 1;
    if (truncated)
        n = c->seq_len + 1;
    dt_row row = {.ids = malloc((size_t)n * sizeof(int32_t)),
                  .labels = malloc((size_t)n * sizeof(int32_t)), .n = n};
    if (!row.ids || !row.labels) {
        free(row.ids);
        free(row.labels);
        fail(msg, "out of memory");
        return DT_ENOMEM;
    }
    memcpy(row.ids, b->ids, (size_t)n * sizeof(int32_t));
    const json_t *labels = shape == SHAPE_IDS ? json_object_get(obj, "labels")
                                              : NULL;
    long targets = 0;
    for (int i = 0; i < n; i++) {
        int32_t t = DS_LABEL_IGNORE;
        if (i + 1 < n) {
            if (labels)
                t = (int32_t)json_integer_value(json_array_get(labels, i + 1));
            else if (b->loss[i + 1])
                t = b->ids[i + 1];
        }
        row.labels[i] = t;
        targets += t != DS_LABEL_IGNORE;
    }
    if (targets == 0) {
        free(row.ids);
        free(row.labels);
        if (truncated)
            return fail(msg, "no tokens to learn from after truncation to "
                        "--seq-len %d", c->seq_len);
        return fail(msg, "no tokens to learn from");
    }
    dt_dataset *ds = c->ds;
    if (ds->nrows == c->rows_cap) {
        int cap = c->rows_cap ? c->rows_cap * 2 : 1024;
        dt_row *rows = realloc(ds->rows, (size_t)cap * sizeof *rows);
        if (!rows) {
            free(row.ids);
            free(row.labels);
            fail(msg, "out of memory");
            return DT_ENOMEM;
        }
        ds->rows = rows;
        c->rows_cap = cap;
    }
    ds->rows[ds->nrows++] = row;
    ds->ntokens += targets;
    return 0;
}

int dt_dataset_load(const char *path, const dt_tokenizer *tok, int seq_len,
                    dt_dataset *ds, char **report, char *err)
{
    memset(ds, 0, sizeof *ds);
    if (report)
        *report = NULL;
    if (err)
        err[0] = 0;
    if (seq_len < 1)
        return dt_errf(err, DT_EINVAL, "%s: --seq-len must be >= 1, got %d",
                       path, seq_len);
    int vocab = dt_tokenizer_vocab_size(tok);
    problems p = {.max = DS_MAX_REPORT_DEFAULT};
    load_ctx c = {.b = {.tok = tok}, .seq_len = seq_len, .ds = ds};
    long nlines;
    int rc = scan_file(path, vocab > 0 ? vocab : 0, &p, &nlines, load_row, &c,
                       err);
    free(c.b.ids);
    free(c.b.loss);
    free(c.b.pend);
    if (rc == DT_OK && p.total == 0 && ds->nrows == 0)
        rc = problems_add(&p, "%s: no training rows", path);
    if (rc == DT_OK && p.total > 0) {
        problems_finish(&p, report, err);
        rc = DT_EINVAL;
    }
    free(p.buf);
    if (rc != DT_OK)
        dt_dataset_free(ds);
    return rc;
}

void dt_dataset_free(dt_dataset *ds)
{
    if (!ds)
        return;
    for (int i = 0; i < ds->nrows; i++) {
        free(ds->rows[i].ids);
        free(ds->rows[i].labels);
    }
    free(ds->rows);
    memset(ds, 0, sizeof *ds);
}

static int validate_row(void *ctx, const json_t *obj, int shape, char *msg)
{
    ++*(long *)ctx;
    return 0;
}

/* *nlines counts the non-blank lines, good or bad. max_report <= 0 means the
 * default of 100. */
int dt_dataset_validate(const char *path, int max_report, char **report,
                        long *nlines, char *err)
{
    if (report)
        *report = NULL;
    if (err)
        err[0] = 0;
    problems p = {.max = max_report > 0 ? max_report : DS_MAX_REPORT_DEFAULT};
    long lines = 0, good = 0;
    int rc = scan_file(path, 0, &p, &lines, validate_row, &good, err);
    if (nlines)
        *nlines = lines;
    if (rc == DT_OK && p.total == 0 && good == 0)
        rc = problems_add(&p, "%s: no training rows", path);
    if (rc == DT_OK && p.total > 0) {
        problems_finish(&p, report, err);
        rc = DT_EINVAL;
    }
    free(p.buf);
    return rc;
}
