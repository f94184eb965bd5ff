/* dataset_check.c: the JSONL checks that need no tokenizer: the problem
 * report, every line shape's checker and the line scanner (see dataset.c
 * for the accepted shapes and line handling), and dt_dataset_validate, the
 * service's upload check. dataset.c renders checked rows to tokens. */
#include "dataset_impl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * Problem collection: the report lists at most `max` problems, then a
 * "... and N more problems" line; the first problem is kept whole for err. */



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

int ds_problems_add(problems *p, const char *fmt, ...)
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
void ds_problems_finish(problems *p, char **report, char *err)
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

int ds_fail(char *msg, const char *fmt, ...)
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
        return ds_fail(msg, "field %s: missing", name);
    if (!json_is_string(v))
        return ds_fail(msg, "field %s: must be a string, got %s", name,
                    json_type_name(v));
    if (!allow_empty && json_string_length(v) == 0)
        return ds_fail(msg, "field %s: must not be empty", name);
    return 0;
}

int ds_role_of(const char *s)
{
    if (strcmp(s, "system") == 0) return ROLE_SYSTEM;
    if (strcmp(s, "user") == 0) return ROLE_USER;
    if (strcmp(s, "assistant") == 0) return ROLE_ASSISTANT;
    return -1;
}

/* Weight of a message: 1 unless "weight": 0. */
int ds_message_weight(const json_t *m)
{
    const json_t *w = json_object_get(m, "weight");
    return !(w && json_is_integer(w) && json_integer_value(w) == 0);
}

static int check_messages(const json_t *msgs, char *msg)
{
    if (!json_is_array(msgs))
        return ds_fail(msg, "field \"messages\": must be an array, got %s",
                    json_type_name(msgs));
    if (json_array_size(msgs) == 0)
        return ds_fail(msg, "field \"messages\": must not be empty");
    static const char *const keys[] = {"role", "content", "weight", NULL};
    int assistants = 0, trained = 0;
    size_t i;
    const json_t *m;
    json_array_foreach(msgs, i, m) {
        char name[64];
        if (!json_is_object(m))
            return ds_fail(msg, "field \"messages\"[%zu]: must be an object, "
                        "got %s", i, json_type_name(m));
        const char *key;
        const json_t *v;
        json_object_foreach((json_t *)m, key, v) {
            if (!in_list(key, keys))
                return ds_fail(msg, "field \"messages\"[%zu].%s: unknown field "
                            "(a message accepts role, content, weight)",
                            i, key);
        }
        snprintf(name, sizeof name, "\"messages\"[%zu].role", i);
        const json_t *role = json_object_get(m, "role");
        if (check_string(role, name, 0, msg) < 0)
            return -1;
        int r = ds_role_of(json_string_value(role));
        if (r < 0)
            return ds_fail(msg, "field %s: must be one of system, user, "
                        "assistant", name);
        snprintf(name, sizeof name, "\"messages\"[%zu].content", i);
        if (check_string(json_object_get(m, "content"), name, 0, msg) < 0)
            return -1;
        const json_t *w = json_object_get(m, "weight");
        if (w) {
            if (r != ROLE_ASSISTANT)
                return ds_fail(msg, "field \"messages\"[%zu].weight: only "
                            "allowed on assistant messages", i);
            if (!json_is_integer(w) || (json_integer_value(w) != 0 &&
                                        json_integer_value(w) != 1))
                return ds_fail(msg, "field \"messages\"[%zu].weight: must be "
                            "0 or 1", i);
        }
        if (r == ROLE_ASSISTANT) {
            assistants++;
            trained += ds_message_weight(m);
        }
    }
    if (assistants == 0)
        return ds_fail(msg, "field \"messages\": no assistant message to learn "
                    "from");
    if (trained == 0)
        return ds_fail(msg, "field \"messages\": every assistant message has "
                    "weight 0");
    return 0;
}

/* Integers of an id array: each in [0, vocab) (vocab 0: unknown, only >= 0),
 * or -100 when allow_ignore. */
static int check_ids(const json_t *a, const char *name, long vocab,
                     int allow_ignore, char *msg)
{
    if (!json_is_array(a))
        return ds_fail(msg, "field \"%s\": must be an array, got %s", name,
                    json_type_name(a));
    size_t i;
    const json_t *v;
    json_array_foreach(a, i, v) {
        if (!json_is_integer(v))
            return ds_fail(msg, "field \"%s\"[%zu]: must be an integer, got %s",
                        name, i, json_type_name(v));
        json_int_t x = json_integer_value(v);
        if (allow_ignore && x == DS_LABEL_IGNORE)
            continue;
        long limit = vocab > 0 ? vocab : INT32_MAX;
        if (x < 0 || x >= limit)
            return ds_fail(msg, "field \"%s\"[%zu]: %" JSON_INTEGER_FORMAT
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
        return ds_fail(msg, "expected a JSON object, got %s",
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
            return ds_fail(msg, "field \"%s\": unknown field (expected \"text\", "
                        "\"prompt\"+\"completion\", \"messages\" or "
                        "\"input_ids\")", key);
        if (!in_list(key, keys))
            return ds_fail(msg, "field \"%s\": unknown field (%s)", key,
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
            return ds_fail(msg, "field \"input_ids\": missing (required with "
                        "\"labels\")");
        if (check_ids(ids, "input_ids", vocab, 0, msg) < 0)
            return -1;
        if (json_array_size(ids) < 2)
            return ds_fail(msg, "field \"input_ids\": needs at least 2 tokens, "
                        "got %zu", json_array_size(ids));
        if (labels) {
            if (check_ids(labels, "labels", vocab, 1, msg) < 0)
                return -1;
            if (json_array_size(labels) != json_array_size(ids))
                return ds_fail(msg, "field \"labels\": length %zu differs from "
                            "\"input_ids\" length %zu", json_array_size(labels),
                            json_array_size(ids));
        }
        return shape;
    }
    }
    return ds_fail(msg, "no fields: expected \"text\", \"prompt\"+\"completion\", "
                "\"messages\" or \"input_ids\"");
}

/* ---------------------------------------------------------------------------
 * Line scanner shared by load and validate: calls on_row for every line that
 * parses and passes check_row; on_row returns 0, -1 with a line problem in
 * msg, or a negative DT_E* (< -1) to stop. */

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\f' &&
            s[i] != '\v')
            return 0;
    return 1;
}

/* Buffered line reader: a line longer than max bytes (0: no limit) is
 * counted, not kept, so memory is bounded by max whatever the line's
 * length. */
typedef struct line_reader {
    FILE *f;
    size_t pos, end;
    char buf[64 * 1024];
} line_reader;

/* Reads the next line (without its "\n") into *line (grown to at most
 * max + 1 bytes). *n: bytes kept; *bytes: the line's length; *over: the
 * line is longer than max and was not kept. 1: a line, 0: end of file,
 * DT_ENOMEM or DT_EIO. */
static int read_line(line_reader *r, char **line, size_t *cap, size_t max, size_t *n,
                     long long *bytes, int *over)
{
    int any = 0;
    *n = 0;
    *bytes = 0;
    *over = 0;
    for (;;) {
        if (r->pos == r->end) {
            r->pos = 0;
            r->end = fread(r->buf, 1, sizeof r->buf, r->f);
            if (r->end == 0)
                return ferror(r->f) ? DT_EIO : any;
        }
        any = 1;
        char *start = r->buf + r->pos;
        char *nl = memchr(start, '\n', r->end - r->pos);
        size_t k = nl ? (size_t)(nl - start) : r->end - r->pos;
        r->pos += k + (nl ? 1 : 0);
        *bytes += (long long)k;
        if (!*over && max > 0 && *n + k > max)
            *over = 1;
        if (!*over && k > 0) {
            if (*n + k + 1 > *cap) {
                size_t c = *cap ? *cap : 1024;
                while (c < *n + k + 1)
                    c *= 2;
                char *b = realloc(*line, c);
                if (!b)
                    return DT_ENOMEM;
                *line = b;
                *cap = c;
            }
            memcpy(*line + *n, start, k);
            *n += k;
        }
        if (nl)
            return 1;
    }
}

int ds_scan_file(const char *path, long vocab, long max_line, problems *p, long *nrows,
                 row_fn on_row, void *ctx, char *err)
{
    line_reader *lr = malloc(sizeof *lr);
    if (!lr)
        return dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
    lr->pos = lr->end = 0;
    lr->f = fopen(path, "rb");
    if (!lr->f) {
        free(lr);
        return dt_errf(err, DT_EIO, "%s: %s", path, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0, got;
    long long bytes;
    int over, more;
    long lineno = 0;
    int rc = DT_OK;
    *nrows = 0;
    errno = 0;
    while ((more = read_line(lr, &line, &cap, max_line > 0 ? (size_t)max_line : 0, &got,
                             &bytes, &over)) == 1) {
        lineno++;
        if (over) {
            (*nrows)++;
            rc = ds_problems_add(p, "%s:%ld: line is %lld bytes, longer than the limit of %ld "
                                 "bytes per line (rows are cut to seq_len tokens anyway: "
                                 "split the text into several rows)",
                                 path, lineno, bytes, max_line);
            if (rc != DT_OK)
                break;
            continue;
        }
        char *s = line;
        size_t n = got;
        if (lineno == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
            s += 3, n -= 3;
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
            rc = ds_problems_add(p, "%s:%ld: invalid JSON at column %d: %s%s",
                              path, lineno, je.column, je.text, hint);
        } else {
            int shape = check_row(obj, vocab, msg);
            int r = shape < 0 ? -1 : on_row(ctx, obj, shape, msg);
            if (r == -1)
                rc = ds_problems_add(p, "%s:%ld: %s", path, lineno, msg);
            else if (r < 0)
                rc = dt_errf(err, r, "%s:%ld: %s", path, lineno, msg);
            json_decref(obj);
        }
        if (rc != DT_OK)
            break;
    }
    if (rc == DT_OK && more == DT_EIO)
        rc = dt_errf(err, DT_EIO, "%s: read: %s", path, strerror(errno));
    else if (rc == DT_OK && more == DT_ENOMEM)
        rc = DT_ENOMEM;
    if (rc == DT_ENOMEM && err && !err[0])
        dt_errf(err, rc, "%s: out of memory", path);
    free(line);
    fclose(lr->f);
    free(lr);
    return rc;
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
    return dt_dataset_validate_lines(path, max_report, DT_DATASET_MAX_LINE_DEFAULT, report,
                                     nlines, err);
}

int dt_dataset_validate_lines(const char *path, int max_report, long max_line_bytes,
                              char **report, long *nlines, char *err)
{
    if (report)
        *report = NULL;
    if (err)
        err[0] = 0;
    problems p = {.max = max_report > 0 ? max_report : DS_MAX_REPORT_DEFAULT};
    long lines = 0, good = 0;
    int rc = ds_scan_file(path, 0, max_line_bytes, &p, &lines, validate_row, &good, err);
    if (nlines)
        *nlines = lines;
    if (rc == DT_OK && p.total == 0 && good == 0)
        rc = ds_problems_add(&p, "%s: no training rows", path);
    if (rc == DT_OK && p.total > 0) {
        ds_problems_finish(&p, report, err);
        rc = DT_EINVAL;
    }
    free(p.buf);
    return rc;
}
