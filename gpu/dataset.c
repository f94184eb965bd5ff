/* dataset.c: JSONL training data -> token rows with loss masks (the
 * checks and the scanner are in dataset_check.c).
 *
 * The file is streamed one line at a time, so the file is never held in
 * memory whole; the loader takes lines of any length (the service's upload
 * check caps them, DT_DATASET_MAX_LINE_DEFAULT), and a row's text is
 * tokenized only as far as its seq_len + 1 kept tokens need (b_room): text
 * past that is neither copied nor tokenized. Line handling: a UTF-8
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
 *   messages    The model's own chat_template (tokenizer_config.json or
 *               GGUF tokenizer.chat_template) when it has one: see
 *               render_chat_template below for the rendering and the loss.
 *               Without one, ChatML when the tokenizer has both <|im_start|> and
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
#include "dataset_impl.h"

#include "chat_template.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * Rendering rows to tokens (ds_builder, dataset_impl.h). Masked text is
 * gathered in `pend` and encoded in one piece when a trained segment or
 * special token follows, so masked template text tokenizes as one string
 * would. */

/* Bytes of text still worth tokenizing: every token covers at most maxb
 * bytes, so (tokens still wanted + 1) * maxb bytes give at least one token
 * more than the row keeps (the last one may end where the text was cut, and
 * is dropped). Text beyond it is never copied nor tokenized, so a 200 MB
 * "text" costs the bytes of its JSON line, not ~26 bytes per byte. */
static size_t b_room(const ds_builder *b, size_t pending)
{
    if (b->n >= b->limit)
        return 0;
    size_t want = ((size_t)(b->limit - b->n) + 1) * b->maxb;
    return want > pending ? want - pending : 0;
}

static int b_push(ds_builder *b, int32_t id, int loss)
{
    if (b->n >= b->limit) { /* beyond the row's truncation */
        b->cut = 1;
        return DT_OK;
    }
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

static int b_encode(ds_builder *b, const char *s, size_t len, int loss)
{
    if (len == 0)
        return DT_OK;
    size_t room = b_room(b, 0), want = (size_t)(b->limit > b->n ? b->limit - b->n : 0);
    int32_t *ids = NULL;
    int n = 0;
    int rc;
    if (len > room) {
        b->cut = 1;
        rc = dt_tokenizer_encode(b->tok, s, room, b->allow_special, &ids, &n, b->err);
        /* fewer tokens than the row needs (bytes without a token id): the
         * whole text, as before */
        if (rc == DT_OK && (size_t)n <= want) {
            free(ids);
            ids = NULL;
            rc = dt_tokenizer_encode(b->tok, s, len, b->allow_special, &ids, &n, b->err);
        }
    } else {
        rc = dt_tokenizer_encode(b->tok, s, len, b->allow_special, &ids, &n, b->err);
    }
    for (int i = 0; rc == DT_OK && i < n; i++)
        rc = b_push(b, ids[i], loss);
    free(ids);
    return rc;
}

static int b_flush(ds_builder *b)
{
    int rc = b_encode(b, b->pend, b->plen, 0);
    b->plen = 0;
    return rc;
}

/* Appends text; trained text is encoded on its own for an exact boundary. */
static int b_text(ds_builder *b, const char *s, size_t len, int loss)
{
    if (loss) {
        int rc = b_flush(b);
        return rc ? rc : b_encode(b, s, len, 1);
    }
    size_t room = b_room(b, b->plen);
    if (len > room) { /* masked text past the row's end */
        b->cut = 1;
        len = room;
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

static int b_str(ds_builder *b, const char *s, int loss)
{
    return b_text(b, s, strlen(s), loss);
}

static int b_json(ds_builder *b, const json_t *str, int loss)
{
    return b_text(b, json_string_value(str), json_string_length(str), loss);
}

/* Appends a special token (skipped when id < 0). */
static int b_token(ds_builder *b, int32_t id, int loss)
{
    if (id < 0)
        return DT_OK;
    int rc = b_flush(b);
    return rc ? rc : b_push(b, id, loss);
}

/* ---------------------------------------------------------------------------
 * Chat rows in the model's own chat_template (gpu/chat_template.c renders it
 * as transformers' apply_chat_template(tokenize=False) does, with
 * add_generation_prompt false and the tokenizer's BOS/EOS strings as
 * bos_token/eos_token; the template writes the BOS itself, so none is
 * added here).
 *
 * Loss: with {% generation %} blocks in the template, exactly those spans
 * (transformers' return_assistant_tokens_mask); a span holding a masked
 * ("weight": 0) turn's text is not trained. Without them (the usual case),
 * the renderer tags every byte copied from a message's content, through
 * the template's concatenation, slicing, strip/trim and split, and the loss
 * span of a trained assistant message runs from its first to its last
 * tagged byte (so a Qwen 3 "<think>...</think>" block the template rebuilds
 * from the content is trained whole), widened back over the spaces the
 * template puts right before it (Llama 2 / Mistral's " " + content, so the
 * text tokenizes as " word" does at inference) and over a "<think>\n" or
 * empty "<think>\n\n</think>\n\n" opener the template writes right before
 * it (Qwen 3's latest turn: what the model generates after the header), and
 * forward over spaces and
 * the end-of-turn marker that follows (the tokenizer's EOS, <|im_end|>,
 * <|eot_id|>, <|eom_id|>, <end_of_turn>, <|end|>, </s>, <|endoftext|>),
 * which the model must learn to emit. Header text and user/system content are never trained.
 *
 * Tokens: the rendered text is encoded in segments of equal loss (a trained
 * span on its own, as for prompt/completion, for an exact boundary);
 * control-token strings are recognised in template text, and in content only
 * when that content has none (checked by encoding it both ways), so a
 * message mentioning "<|im_end|>" cannot end its own turn. */

static const char *const end_markers[] = {"<|im_end|>", "<|eot_id|>",
    "<|eom_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>", NULL};

static char *token_text(const dt_tokenizer *tok, int32_t id)
{
    return id >= 0 ? dt_tokenizer_decode(tok, &id, 1) : NULL;
}

/* Bytes of the end-of-turn marker at s (after optional spaces), or 0. */
static size_t end_marker_at(const char *eos, const char *s, size_t n)
{
    size_t sp = 0;
    while (sp < n && s[sp] == ' ')
        sp++;
    if (eos && eos[0] && n - sp >= strlen(eos) && !memcmp(s + sp, eos, strlen(eos)))
        return sp + strlen(eos);
    for (int k = 0; end_markers[k]; k++) {
        size_t l = strlen(end_markers[k]);
        if (n - sp >= l && !memcmp(s + sp, end_markers[k], l))
            return sp + l;
    }
    return 0;
}

/* Widens a span start back over the reasoning block opener a template puts
 * right before the turn's text (Qwen 3: "<think>\n" before the reasoning,
 * or the empty "<think>\n\n</think>\n\n" before the answer). */
static size_t think_start(const dt_chat_out *o, size_t a)
{
    static const char *const openers[] = {"<think>\n\n</think>\n\n", "<think>\n",
                                          NULL};
    for (int k = 0; openers[k]; k++) {
        size_t l = strlen(openers[k]), j;
        if (a < l || memcmp(o->text + a - l, openers[k], l) != 0)
            continue;
        for (j = a - l; j < a && o->tag[j] == 0; j++)
            ;
        if (j == a)
            return a - l;
    }
    return a;
}

/* Does encoding s with and without special-token matching differ? */
static int has_specials(ds_builder *b, const char *s, size_t len, int *out)
{
    int32_t *x = NULL, *y = NULL;
    int nx = 0, ny = 0;
    int rc = dt_tokenizer_encode(b->tok, s, len, 1, &x, &nx, b->err);
    if (rc == DT_OK)
        rc = dt_tokenizer_encode(b->tok, s, len, 0, &y, &ny, b->err);
    *out = rc == DT_OK && (nx != ny || memcmp(x, y, (size_t)nx * sizeof *x) != 0);
    free(x);
    free(y);
    return rc;
}

/* Is message m a trained turn? An assistant message, unless it has
 * "weight": 0; for a prompt (dt_chat_prompt) every assistant message, as
 * the prompt builder has always taken them (served chats carry no weight). */
static int trained_turn(const json_t *m, int prompt)
{
    const char *role = json_string_value(json_object_get(m, "role"));
    return role && ds_role_of(role) == ROLE_ASSISTANT && (prompt || ds_message_weight(m));
}

static int render_chat_template(ds_builder *b, const json_t *msgs, const char *tmpl,
                                int prompt)
{
    const dt_tokenizer *tok = b->tok;
    size_t nm = json_array_size(msgs);
    int32_t *tags = malloc((nm ? nm : 1) * sizeof *tags);
    char *bos = token_text(tok, dt_tokenizer_bos(tok));
    char *eos = token_text(tok, dt_tokenizer_eos(tok));
    json_t *vars = json_object();
    dt_chat_out out = {0};
    uint8_t *loss = NULL, *plain = NULL;
    int rc = DT_ENOMEM;
    if (!tags || !vars || (dt_tokenizer_bos(tok) >= 0 && !bos) ||
        (dt_tokenizer_eos(tok) >= 0 && !eos))
        goto done;
    for (size_t i = 0; i < nm; i++) {
        int trained = trained_turn(json_array_get(msgs, i), prompt);
        tags[i] = trained ? (int32_t)i + 1 : -(int32_t)i - 1;
    }
    json_object_set_new(vars, "add_generation_prompt", json_boolean(prompt));
    if (bos)
        json_object_set_new(vars, "bos_token", json_string(bos));
    if (eos)
        json_object_set_new(vars, "eos_token", json_string(eos));
    rc = dt_chat_render(tmpl, msgs, vars, tags, -1, &out, b->err);
    if (rc != DT_OK) {
        /* the template's own raise_exception text: say where it comes from */
        if (strncmp(b->err, "chat template", 13) != 0) {
            char m[DT_ERR_LEN - 16];
            size_t l = strnlen(b->err, sizeof m - 1);
            memcpy(m, b->err, l);
            m[l] = 0;
            snprintf(b->err, sizeof b->err, "chat template: %s", m);
        }
        if (prompt) /* a chat the template refuses is the request's fault */
            rc = DT_EINVAL;
        goto done;
    }
    rc = DT_ENOMEM;
    size_t n = out.len;
    loss = calloc(n + 1, 1);
    plain = calloc(n + 1, 1); /* 1: content whose special strings stay text */
    if (!loss || !plain)
        goto done;
    /* a prompt's spans are its assistant turns' content (only where its text
     * is split matters there), {% generation %} blocks or not */
    if (out.ngen > 0 && !prompt) {
        for (int g = 0; g < out.ngen; g++) {
            int masked = 0;
            for (size_t k = out.gen[g][0]; k < out.gen[g][1]; k++) {
                int32_t t = out.tag[k];
                masked |= t < 0 && ds_role_of(json_string_value(json_object_get(
                               json_array_get(msgs, (size_t)(-t - 1)), "role"))) ==
                                   ROLE_ASSISTANT;
            }
            for (size_t k = out.gen[g][0]; !masked && k < out.gen[g][1]; k++)
                loss[k] = 1;
        }
    } else {
        for (size_t i = 0; i < nm; i++) {
            if (tags[i] <= 0)
                continue;
            size_t a = n, z = 0;
            for (size_t k = 0; k < n; k++)
                if (out.tag[k] == tags[i]) {
                    if (a == n)
                        a = k;
                    z = k + 1;
                }
            if (a == n)
                continue; /* the template did not render this turn */
            while (a > 0 && out.text[a - 1] == ' ' && out.tag[a - 1] == 0)
                a--;
            a = think_start(&out, a);
            z += end_marker_at(eos, out.text + z, n - z);
            memset(loss + a, 1, z - a);
        }
    }
    /* content runs holding special-token strings are encoded as text; only
     * the text the row can keep is looked at (every token covers at most
     * maxb bytes, so bytes past (limit + 1) * maxb are never tokenized) */
    size_t bound = n;
    if (b->maxb > 0 && ((size_t)b->limit + 1) * b->maxb < bound)
        bound = ((size_t)b->limit + 1) * b->maxb;
    for (size_t k = 0; k < bound;) {
        size_t e = k + 1;
        while (e < n && out.tag[e] == out.tag[k])
            e++;
        if (out.tag[k] != 0) {
            int sp;
            if ((rc = has_specials(b, out.text + k, (e < bound ? e : bound) - k, &sp)))
                goto done;
            if (sp)
                memset(plain + k, 1, e - k);
        }
        k = e;
    }
    rc = DT_OK;
    for (size_t k = 0; k < n && rc == DT_OK;) {
        size_t e = k + 1;
        while (e < n && loss[e] == loss[k] && plain[e] == plain[k])
            e++;
        int allow = !plain[k];
        if (allow != b->allow_special) {
            if ((rc = b_flush(b)))
                break;
            b->allow_special = allow;
        }
        rc = b_text(b, out.text + k, e - k, loss[k]);
        k = e;
    }
    if (rc == DT_OK)
        rc = b_flush(b);
done:
    if (rc == DT_ENOMEM && !b->err[0])
        snprintf(b->err, sizeof b->err, "out of memory");
    free(tags);
    free(bos);
    free(eos);
    free(loss);
    free(plain);
    json_decref(vars);
    dt_chat_out_free(&out);
    return rc;
}

/* ChatML or the plain template (see the file's header); a prompt ends with
 * the assistant's turn opened. A row's roles were checked before (system,
 * user, assistant); any other role in a prompt is written as a user's. */
static int render_chat(ds_builder *b, const json_t *msgs, int prompt)
{
    const dt_tokenizer *tok = b->tok;
    int32_t im_start = dt_tokenizer_token_id(tok, "<|im_start|>");
    int32_t im_end = dt_tokenizer_token_id(tok, "<|im_end|>");
    int32_t eos = dt_tokenizer_eos(tok);
    int chatml = im_start >= 0 && im_end >= 0;
    size_t i;
    const json_t *m;
    int rc = DT_OK;
    b->allow_special = 0;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        const json_t *content = json_object_get(m, "content");
        if (!role || !json_is_string(content))
            return dt_errf(b->err, DT_EINVAL, "messages[%zu]: role and content must be "
                           "strings", i);
        int asst = ds_role_of(role) == ROLE_ASSISTANT;
        int loss = trained_turn(m, prompt);
        if (chatml) {
            if ((rc = b_token(b, im_start, 0)) || (rc = b_str(b, role, 0)) ||
                (rc = b_str(b, "\n", 0)) || (rc = b_json(b, content, loss)) ||
                (rc = b_token(b, im_end, loss)) || (rc = b_str(b, "\n", 0)))
                return rc;
        } else {
            const char *hdr = ds_role_of(role) == ROLE_SYSTEM ? "### System:\n"
                            : asst ? "### Assistant:\n" : "### User:\n";
            if ((rc = b_str(b, hdr, 0)) || (rc = b_json(b, content, loss)) ||
                (asst && (rc = b_token(b, eos, loss))) || (rc = b_str(b, "\n\n", 0)))
                return rc;
        }
    }
    if (prompt && chatml && ((rc = b_token(b, im_start, 0)) || (rc = b_str(b, "assistant\n", 0))))
        return rc;
    if (prompt && !chatml && (rc = b_str(b, "### Assistant:\n", 0)))
        return rc;
    return b_flush(b);
}

int ds_render_chat(ds_builder *b, const json_t *msgs, int prompt)
{
    const dt_tokenizer *tok = b->tok;
    const char *tmpl = dt_tokenizer_chat_template(tok);
    b->allow_special = 1; /* template text: its control tokens are tokens */
    if (tmpl)
        return render_chat_template(b, msgs, tmpl, prompt);
    int32_t bos = dt_tokenizer_bos(tok), eos = dt_tokenizer_eos(tok);
    int rc = bos >= 0 && bos != eos ? b_push(b, bos, 0) : DT_OK;
    return rc ? rc : render_chat(b, msgs, prompt);
}

void ds_builder_free(ds_builder *b)
{
    free(b->ids);
    free(b->loss);
    free(b->pend);
    b->ids = NULL;
    b->loss = NULL;
    b->pend = NULL;
    b->n = b->cap = 0;
    b->plen = b->pcap = 0;
}

static int render_row(ds_builder *b, const json_t *obj, int shape)
{
    const dt_tokenizer *tok = b->tok;
    int32_t bos = dt_tokenizer_bos(tok), eos = dt_tokenizer_eos(tok);
    int rc;
    b->n = 0;
    b->plen = 0;
    b->cut = 0;
    b->allow_special = 1;
    if (shape == SHAPE_IDS) {
        const json_t *ids = json_object_get(obj, "input_ids");
        for (size_t i = 0; i < json_array_size(ids); i++)
            if ((rc = b_push(b, (int32_t)json_integer_value(
                                    json_array_get(ids, i)), 1)))
                return rc;
        return DT_OK;
    }
    if (shape == SHAPE_CHAT)
        return ds_render_chat(b, json_object_get(obj, "messages"), 0);
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
    }
    return b_token(b, eos, 1);
}

typedef struct load_ctx {
    ds_builder b;
    int seq_len;
    dt_dataset *ds;
    int rows_cap;
} load_ctx;

static int load_row(void *vctx, const json_t *obj, int shape, char *msg)
{
    load_ctx *c = vctx;
    ds_builder *b = &c->b;
    b->err[0] = 0;
    int rc = render_row(b, obj, shape);
    if (rc == DT_ENOMEM) {
        ds_fail(msg, "out of memory");
        return DT_ENOMEM;
    }
    if (rc != DT_OK)
        return ds_fail(msg, "%s%s", strncmp(b->err, "chat template", 13) ? "tokenizer: " : "",
                       b->err[0] ? b->err : dt_strerror(rc));

    int n = b->n, truncated = b->cut || n > c->seq_len + 1;
    if (truncated)
        n = c->seq_len + 1;
    dt_row row = {.ids = malloc((size_t)n * sizeof(int32_t)),
                  .labels = malloc((size_t)n * sizeof(int32_t)), .n = n};
    if (!row.ids || !row.labels) {
        free(row.ids);
        free(row.labels);
        ds_fail(msg, "out of memory");
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
            return ds_fail(msg, "no tokens to learn from after truncation to "
                        "--seq-len %d", c->seq_len);
        return ds_fail(msg, "no tokens to learn from");
    }
    dt_dataset *ds = c->ds;
    if (ds->nrows == c->rows_cap) {
        int cap = c->rows_cap ? c->rows_cap * 2 : 1024;
        dt_row *rows = realloc(ds->rows, (size_t)cap * sizeof *rows);
        if (!rows) {
            free(row.ids);
            free(row.labels);
            ds_fail(msg, "out of memory");
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
    load_ctx c = {.b = {.tok = tok,
                        .limit = seq_len < INT32_MAX ? seq_len + 1 : INT32_MAX,
                        .maxb = dt_tokenizer_max_token_bytes(tok)},
                  .seq_len = seq_len, .ds = ds};
    long nlines;
    int rc = ds_scan_file(path, vocab > 0 ? vocab : 0, 0, &p, &nlines, load_row, &c, err);
    ds_builder_free(&c.b);
    if (rc == DT_OK && p.total == 0 && ds->nrows == 0)
        rc = ds_problems_add(&p, "%s: no training rows", path);
    if (rc == DT_OK && p.total > 0) {
        ds_problems_finish(&p, report, err);
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
