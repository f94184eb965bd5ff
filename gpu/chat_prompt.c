/* chat_prompt.c: the prompt of a chat for generation (dt_chat_prompt,
 * dt_chat_end_token in generate.h), rendered as dataset.c renders chat rows
 * for training, with the assistant's turn opened. */
#include "generate.h"

#include <stdlib.h>
#include <string.h>

#include "base/dt.h"
#include "chat_template.h"
#include "dataset_impl.h"

/* ---- chat prompts ------------------------------------------------------------
 *
 * The prompt must be, token for token, what training makes of the same
 * chat up to the answer (dataset.c's builder), so the tokenization below
 * follows the builder's rules: text that is not trained accumulates and is
 * encoded in one piece until a control token, a trained span or a change of
 * "control-token strings recognised" interrupts it; each trained span (an
 * earlier assistant turn with its end-of-turn marker) is encoded on its own.
 * test_chat_template's test_chat_prompt_is_the_training_row_up_to_the_answer
 * holds the two together. */

typedef struct pbuild {
    const dt_tokenizer *tok;
    int32_t *ids;
    int n, cap;
    char *pend;                  /* untrained text not yet encoded */
    size_t plen, pcap;
    int allow;                   /* control-token strings recognised */
    char *err;
} pbuild;

static int pb_push(pbuild *b, const int32_t *ids, int n)
{
    if (b->n + n > b->cap) {
        int cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        int32_t *v = realloc(b->ids, (size_t)cap * sizeof *v);
        if (!v)
            return dt_errf(b->err, DT_ENOMEM, "out of memory");
        b->ids = v;
        b->cap = cap;
    }
    memcpy(b->ids + b->n, ids, (size_t)n * sizeof *ids);
    b->n += n;
    return 0;
}

static int pb_encode(pbuild *b, const char *s, size_t len)
{
    int32_t *ids = NULL;
    int n = 0;
    if (!len)
        return 0;
    int rc = dt_tokenizer_encode(b->tok, s, len, b->allow ? DT_TOK_SPECIAL : 0, &ids, &n,
                                 b->err);
    if (!rc && n)
        rc = pb_push(b, ids, n);
    free(ids);
    return rc;
}

static int pb_flush(pbuild *b)
{
    int rc = pb_encode(b, b->pend, b->plen);
    b->plen = 0;
    return rc;
}

/* Untrained text waits; trained text is encoded on its own. */
static int pb_text(pbuild *b, const char *s, size_t len, int trained)
{
    if (trained) {
        int rc = pb_flush(b);
        return rc ? rc : pb_encode(b, s, len);
    }
    if (b->plen + len + 1 > b->pcap) {
        size_t cap = b->pcap ? b->pcap : 256;
        while (cap < b->plen + len + 1)
            cap *= 2;
        char *p = realloc(b->pend, cap);
        if (!p)
            return dt_errf(b->err, DT_ENOMEM, "out of memory");
        b->pend = p;
        b->pcap = cap;
    }
    memcpy(b->pend + b->plen, s, len);
    b->plen += len;
    return 0;
}

static int pb_str(pbuild *b, const char *s, int trained)
{
    return pb_text(b, s, strlen(s), trained);
}

static int pb_token(pbuild *b, int32_t id)
{
    if (id < 0)
        return 0;
    int rc = pb_flush(b);
    return rc ? rc : pb_push(b, &id, 1);
}

static int pb_allow(pbuild *b, int allow)
{
    if (allow == b->allow)
        return 0;
    int rc = pb_flush(b);
    b->allow = allow;
    return rc;
}

static char *token_str(const dt_tokenizer *tok, int32_t id)
{
    return id >= 0 ? dt_tokenizer_decode(tok, &id, 1) : NULL;
}

/* The model's own template: earlier assistant turns are trained spans
 * (widened as training widens them), message content holding control-token
 * strings is encoded with them as text, the rest together. */
static int chat_by_template(pbuild *b, const char *tmpl, const json_t *msgs)
{
    const dt_tokenizer *tok = b->tok;
    char *err = b->err;
    size_t nm = json_array_size(msgs);
    int32_t *tags = malloc((nm ? nm : 1) * sizeof *tags);
    char *bos = token_str(tok, dt_tokenizer_bos(tok));
    char *eos = token_str(tok, dt_tokenizer_eos(tok));
    json_t *vars = json_object();
    dt_chat_out out = {0};
    uint8_t *loss = NULL, *plain = NULL;
    int rc = dt_errf(err, DT_ENOMEM, "out of memory");
    if (!tags || !vars)
        goto done;
    for (size_t i = 0; i < nm; i++) {
        const char *role = json_string_value(json_object_get(json_array_get(msgs, i), "role"));
        tags[i] = role && !strcmp(role, "assistant") ? (int32_t)i + 1 : -(int32_t)i - 1;
    }
    json_object_set_new(vars, "add_generation_prompt", json_true());
    if (bos)
        json_object_set_new(vars, "bos_token", json_string(bos));
    if (eos)
        json_object_set_new(vars, "eos_token", json_string(eos));
    rc = dt_chat_render(tmpl, msgs, vars, tags, -1, &out, err);
    if (rc) {
        if (strncmp(err, "chat template", 13)) {
            char m[DT_ERR_LEN - 16];
            snprintf(m, sizeof m, "%s", err);
            dt_errf(err, DT_EINVAL, "chat template: %s", m);
        }
        rc = DT_EINVAL;
        goto done;
    }
    size_t n = out.len;
    loss = calloc(n + 1, 1);
    plain = calloc(n + 1, 1);
    if (!loss || !plain) {
        rc = dt_errf(err, DT_ENOMEM, "out of memory");
        goto done;
    }
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
            continue;
        while (a > 0 && out.text[a - 1] == ' ' && out.tag[a - 1] == 0)
            a--;
        a = ds_think_start(&out, a);
        z += ds_end_marker_at(eos, out.text + z, n - z);
        memset(loss + a, 1, z - a);
    }
    for (size_t k = 0; k < n && !rc;) {
        size_t e = k + 1;
        while (e < n && out.tag[e] == out.tag[k])
            e++;
        if (out.tag[k] != 0) {
            int32_t *x = NULL, *y = NULL;
            int nx = 0, ny = 0;
            rc = dt_tokenizer_encode(tok, out.text + k, e - k, DT_TOK_SPECIAL, &x, &nx, err);
            if (!rc)
                rc = dt_tokenizer_encode(tok, out.text + k, e - k, 0, &y, &ny, err);
            if (!rc && (nx != ny || memcmp(x, y, (size_t)nx * sizeof *x)))
                memset(plain + k, 1, e - k);
            free(x);
            free(y);
        }
        k = e;
    }
    b->allow = 1;
    for (size_t k = 0; k < n && !rc;) {
        size_t e = k + 1;
        while (e < n && loss[e] == loss[k] && plain[e] == plain[k])
            e++;
        if (!(rc = pb_allow(b, !plain[k])))
            rc = pb_text(b, out.text + k, e - k, loss[k]);
        k = e;
    }
    if (!rc)
        rc = pb_flush(b);
done:
    free(loss);
    free(plain);
    free(tags);
    free(bos);
    free(eos);
    json_decref(vars);
    dt_chat_out_free(&out);
    return rc;
}

/* ChatML or the plain template, as dataset.c's render_chat writes them. */
static int chat_fallback(pbuild *b, const json_t *msgs)
{
    const dt_tokenizer *tok = b->tok;
    int32_t im_start = dt_tokenizer_token_id(tok, "<|im_start|>");
    int32_t im_end = dt_tokenizer_token_id(tok, "<|im_end|>");
    int32_t bos = dt_tokenizer_bos(tok), eos = dt_tokenizer_eos(tok);
    int chatml = im_start >= 0 && im_end >= 0, rc = 0;
    size_t i;
    const json_t *m;
    b->allow = 0;
    if (bos >= 0 && bos != eos && (rc = pb_token(b, bos)))
        return rc;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        const char *content = json_string_value(json_object_get(m, "content"));
        if (!role || !content)
            return dt_errf(b->err, DT_EINVAL, "messages[%zu]: role and content must be "
                           "strings", i);
        int asst = !strcmp(role, "assistant");
        if (chatml) {
            if ((rc = pb_token(b, im_start)) || (rc = pb_str(b, role, 0)) ||
                (rc = pb_str(b, "\n", 0)) || (rc = pb_str(b, content, asst)))
                return rc;
            if (asst) { /* trained: <|im_end|> after the flush */
                if ((rc = pb_flush(b)) || (rc = pb_push(b, &im_end, 1)))
                    return rc;
            } else if ((rc = pb_token(b, im_end))) {
                return rc;
            }
            if ((rc = pb_str(b, "\n", 0)))
                return rc;
        } else {
            const char *hdr = !strcmp(role, "system") ? "### System:\n"
                            : asst ? "### Assistant:\n" : "### User:\n";
            if ((rc = pb_str(b, hdr, 0)) || (rc = pb_str(b, content, asst)))
                return rc;
            if (asst && (rc = pb_token(b, eos)))
                return rc;
            if ((rc = pb_str(b, "\n\n", 0)))
                return rc;
        }
    }
    if (chatml && !(rc = pb_token(b, im_start)))
        rc = pb_str(b, "assistant\n", 0);
    else if (!chatml)
        rc = pb_str(b, "### Assistant:\n", 0);
    return rc ? rc : pb_flush(b);
}

int dt_chat_prompt(const dt_tokenizer *tok, const json_t *messages,
                   int32_t **ids, int *n, char *err)
{
    pbuild b = {.tok = tok, .err = err};
    *ids = NULL;
    *n = 0;
    const char *tmpl = dt_tokenizer_chat_template(tok);
    int rc = tmpl ? chat_by_template(&b, tmpl, messages) : chat_fallback(&b, messages);
    free(b.pend);
    if (rc) {
        free(b.ids);
        return rc;
    }
    *ids = b.ids;
    *n = b.n;
    return 0;
}

int32_t dt_chat_end_token(const dt_tokenizer *tok)
{
    static const char *const ends[] = {"<|im_end|>", "<|eot_id|>", "<end_of_turn>",
                                       "<|end|>", NULL};
    for (int k = 0; ends[k]; k++) {
        int32_t id = dt_tokenizer_token_id(tok, ends[k]);
        if (id >= 0)
            return id;
    }
    return -1;
}
