/* tokenizer_io.c: tokenizer sources and output. Reads a model directory
 * (tokenizer.json, else vocab.json + merges.txt, else GPT-2's encoder.json +
 * vocab.bpe, plus tokenizer_config.json / special_tokens_map.json /
 * config.json for BOS, EOS and the chat template) or GGUF metadata, and
 * writes a Hugging Face tokenizer.json. Every malformed file is DT_EFORMAT
 * with a message naming the file and what is wrong. */
#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "base/dt.h"
#include "base/file.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- loading: tokenizer.json, vocab.json + merges.txt -------------------- */

/* Reads and parses a JSON file: new reference, or NULL with *rc set.
 * flags: jansson's (JSON_DECODE_INT_AS_REAL for configs, whose
 * model_max_length can be 1e30 written as an integer). */
static json_t *json_file_flags(const char *path, size_t flags, int *rc,
                               char *err)
{
    char *buf;
    size_t len;
    if ((*rc = dt_read_file(path, &buf, &len, err)) != DT_OK)
        return NULL;
    json_error_t je;
    json_t *j = json_loadb(buf, len, flags, &je);
    free(buf);
    if (!j)
        *rc = dt_errf(err, DT_EFORMAT, "%s: malformed JSON at line %d: %s",
                      path, je.line, je.text);
    return j;
}

static json_t *json_file(const char *path, int *rc, char *err)
{
    return json_file_flags(path, 0, rc, err);
}

static int id_of(json_t *v, int64_t *id)
{
    *id = json_integer_value(v);
    return json_is_integer(v) && *id >= 0 && *id < TOK_MAX_ID ? 0 : -1;
}

/* An id in a config read with JSON_DECODE_INT_AS_REAL. */
static int config_id(json_t *v, int64_t *id)
{
    double d = json_real_value(v);
    *id = (int64_t)d;
    return json_is_real(v) && d >= 0 && d < TOK_MAX_ID && (double)*id == d
           ? 0 : id_of(v, id);
}

/* New tokenizer from a {"token": id} object plus HF added_tokens entries. */
static dt_tokenizer *from_vocab(json_t *vocab, json_t *added, size_t nmerges,
                                const char *src, char *err)
{
    const char *key;
    json_t *v;
    size_t i;
    int64_t id, n = 0;
    if (!json_is_object(vocab) || (added && !json_is_array(added))) {
        dt_errf(err, DT_EFORMAT, "%s: vocab is not an object", src);
        return NULL;
    }
    json_object_foreach(vocab, key, v) {
        if (id_of(v, &id)) {
            dt_errf(err, DT_EFORMAT, "%s: vocab entry \"%.64s\" has no valid "
                    "id", src, key);
            return NULL;
        }
        n = id + 1 > n ? id + 1 : n;
    }
    json_array_foreach(added, i, v) {
        if (id_of(json_object_get(v, "id"), &id)
            || !json_is_string(json_object_get(v, "content"))) {
            dt_errf(err, DT_EFORMAT, "%s: added_tokens[%zu] needs an id and a "
                    "content", src, i);
            return NULL;
        }
        n = id + 1 > n ? id + 1 : n;
    }
    dt_tokenizer *t = dt_tok__new(n, (int64_t)nmerges);
    int rc = t ? DT_OK : DT_ENOMEM;
    json_object_foreach(vocab, key, v)
        if (rc == DT_OK)
            rc = dt_tok__set(t, json_integer_value(v), key, strlen(key));
    json_array_foreach(added, i, v) {
        json_t *c = json_object_get(v, "content");
        id = json_integer_value(json_object_get(v, "id"));
        if (rc == DT_OK)
            rc = dt_tok__set(t, id, json_string_value(c), json_string_length(c));
        if (rc == DT_OK)
            t->kind[id] = json_is_true(json_object_get(v, "special"))
                ? TOK_SPECIAL : TOK_ADDED;
    }
    if (rc != DT_OK || dt_tok__index(t) != DT_OK) {
        dt_errf(err, DT_ENOMEM, "%s: out of memory", src);
        dt_tokenizer_free(t);
        return NULL;
    }
    return t;
}

static int merges_json(dt_tokenizer *t, json_t *merges, const char *src,
                       char *err)
{
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        int rc;
        json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
        if (json_is_string(m))
            rc = dt_tok__merge_line(t, json_string_value(m), json_string_length(m),
                            src, (int64_t)i + 1, err);
        else if (json_array_size(m) == 2 && json_is_string(a) && json_is_string(b))
            rc = dt_tok__merge_add(t, json_string_value(a), json_string_length(a),
                           json_string_value(b), json_string_length(b), src,
                           (int64_t)i + 1, err);
        else
            rc = dt_errf(err, DT_EFORMAT, "%s: merge %zu is neither \"a b\" "
                         "nor [a, b]", src, i + 1);
        if (rc != DT_OK)
            return rc;
    }
    return DT_OK;
}

static int bool_opt(json_t *o, const char *k, int dflt)
{
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int is_type(json_t *o, const char *type)
{
    const char *s = json_string_value(json_object_get(o, "type"));
    return s && !strcmp(s, type);
}

static dt_tokenizer *load_tokenizer_json(const char *path, char *err)
{
    int rc;
    json_t *root = json_file(path, &rc, err);
    json_t *model = json_object_get(root, "model");
    json_t *merges = json_object_get(model, "merges");
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    dt_tokenizer *t = NULL;
    if (!root)
        return NULL;
    if (!json_is_object(model) || (json_object_get(model, "type")
        && !is_type(model, "BPE")) || !json_is_array(merges))
        dt_errf(err, DT_EFORMAT, "%s: model is not a BPE model with merges",
                path);
    else if ((t = from_vocab(json_object_get(model, "vocab"),
                             json_object_get(root, "added_tokens"),
                             json_array_size(merges), path, err))) {
        t->ignore_merges = bool_opt(model, "ignore_merges", 0);
        t->unk = unk ? dt_tok__find(t, unk, strlen(unk)) : -1;
        if (merges_json(t, merges, path, err) != DT_OK
            || dt_tok__hf_pipeline(t, root, path, err) != DT_OK
            || (dt_tok__finish(t) != DT_OK
                && dt_errf(err, DT_ENOMEM, "%s: out of memory", path))) {
            dt_tokenizer_free(t);
            t = NULL;
        }
    }
    json_decref(root);
    return t;
}

static dt_tokenizer *load_vocab_merges(const char *vpath, const char *mpath,
                                       char *err)
{
    int rc;
    char *buf = NULL;
    size_t len, nlines = 1;
    dt_tokenizer *t = NULL;
    json_t *vocab = json_file(vpath, &rc, err);
    if (!vocab || dt_read_file(mpath, &buf, &len, err) != DT_OK)
        goto done;
    for (size_t i = 0; i < len; i++)
        nlines += buf[i] == '\n';
    if (!(t = from_vocab(vocab, NULL, nlines, vpath, err)))
        goto done;
    int64_t line = 0;
    for (char *p = buf, *end = buf + len; p < end && rc == DT_OK; p++) {
        char *e = memchr(p, '\n', (size_t)(end - p));
        e = e ? e : end;
        size_t n = (size_t)(e - p) - (e > p && e[-1] == '\r');
        line++;
        if (n > 0 && strncmp(p, "#version", 8))  /* HF skips #version lines */
            rc = dt_tok__merge_line(t, p, n, mpath, line, err);
        p = e;
    }
    int32_t eot = dt_tok__find(t, "<|endoftext|>", 13);
    if (eot >= 0)
        t->kind[eot] = TOK_SPECIAL;  /* GPT-2's one special token */
    dt_tok__gpt2_steps(t, 0, 0, 1);
    if (rc != DT_OK || (dt_tok__finish(t) != DT_OK
                        && dt_errf(err, DT_ENOMEM, "%s: out of memory", vpath))) {
        dt_tokenizer_free(t);
        t = NULL;
    }
done:
    json_decref(vocab);
    free(buf);
    return t;
}

/* ---- model directory --------------------------------------------------- */

static int exists(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f)
        fclose(f);
    return f != NULL;
}

/* "<s>" or {"content": "<s>"} -> id, or -1. */
static int32_t token_ref(const dt_tokenizer *t, json_t *v)
{
    if (json_is_object(v))
        v = json_object_get(v, "content");
    return json_is_string(v) ? dt_tok__find(t, json_string_value(v),
                                          json_string_length(v)) : -1;
}

/* BOS/EOS and chat template from the first file that names them. */
static int dir_config(dt_tokenizer *t, const char *dir, char *err)
{
    static const char *files[] = { "tokenizer_config.json",
                                   "special_tokens_map.json", "config.json" };
    char path[4096];
    int rc = DT_OK;
    for (int f = 0; f < 3 && rc == DT_OK; f++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        json_t *j = exists(path) ? json_file_flags(path, JSON_DECODE_INT_AS_REAL,
                                                   &rc, err) : NULL, *v;
        int64_t id;
        if (!j)
            continue;
        if (t->bos < 0) t->bos = token_ref(t, json_object_get(j, "bos_token"));
        if (t->eos < 0) t->eos = token_ref(t, json_object_get(j, "eos_token"));
        if (t->bos < 0 && !config_id(json_object_get(j, "bos_token_id"), &id))
            t->bos = id < t->n ? (int32_t)id : -1;
        if (t->eos < 0 && !config_id(json_object_get(j, "eos_token_id"), &id))
            t->eos = id < t->n ? (int32_t)id : -1;
        json_t *ct = json_object_get(j, "chat_template");
        size_t i;
        json_array_foreach(ct, i, v)  /* [{"name": "default", "template"}] */
            if (json_is_string(json_object_get(v, "name"))
                && !strcmp(json_string_value(json_object_get(v, "name")), "default"))
                ct = json_object_get(v, "template");
        if (json_is_string(ct) && !t->chat_template
            && !(t->chat_template = strdup(json_string_value(ct))))
            rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
        json_decref(j);
    }
    /* transformers saves a single template as chat_template.jinja and
     * prefers it to tokenizer_config.json's "chat_template" */
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    if (rc == DT_OK && exists(path)) {
        char *tpl;
        size_t len;
        if ((rc = dt_read_file(path, &tpl, &len, err)) == DT_OK) {
            free(t->chat_template);
            t->chat_template = tpl;
        }
    }
    int32_t eot = dt_tok__find(t, "<|endoftext|>", 13);
    if (t->bos < 0) t->bos = eot;
    if (t->eos < 0) t->eos = eot;
    return rc;
}

dt_tokenizer *dt_tokenizer_load_dir(const char *dir, char *err)
{
    char a[4096], b[4096];
    dt_tokenizer *t = NULL;
    snprintf(a, sizeof a, "%s/tokenizer.json", dir);
    if (exists(a)) {
        t = load_tokenizer_json(a, err);
    } else {
        for (int k = 0; k < 2; k++) {
            snprintf(a, sizeof a, "%s/%s", dir, k ? "encoder.json" : "vocab.json");
            snprintf(b, sizeof b, "%s/%s", dir, k ? "vocab.bpe" : "merges.txt");
            if (exists(a) && exists(b))
                break;
            if (k == 1) {
                dt_errf(err, DT_EIO, "%s: no tokenizer.json, vocab.json + "
                        "merges.txt or encoder.json + vocab.bpe", dir);
                return NULL;
            }
        }
        t = load_vocab_merges(a, b, err);
    }
    if (t && dir_config(t, dir, err) != DT_OK) {
        dt_tokenizer_free(t);
        t = NULL;
    }
    return t;
}

/* ---- GGUF metadata ------------------------------------------------------- */

static const dt_meta *meta(const dt_tensorset *ts, const char *key,
                           dt_meta_type type)
{
    for (int i = 0; i < ts->nmeta; i++)
        if (ts->meta[i].key && !strcmp(ts->meta[i].key, key))
            return ts->meta[i].type == type ? &ts->meta[i] : NULL;
    return NULL;
}

/* llama.cpp's pre-tokenizer names whose regex is "\p{N}" then GPT-2's. */
static int digits_pre(const char *pre)
{
    static const char *names[] = { "smollm", "starcoder", "refact",
        "command-r", "codeshell", "exaone", "minerva" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(pre, names[i]))
            return 1;
    return 0;
}

/* llama.cpp's names for the Llama 3 and Qwen 2 split regexes: TS_*, or -1. */
static int split_pre(const char *pre)
{
    if (!strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3"))
        return TS_LLAMA3;
    if (!strcmp(pre, "qwen2"))
        return TS_QWEN2;
    return -1;
}

dt_tokenizer *dt_tokenizer_from_gguf(const dt_tensorset *ts, char *err)
{
    const char *src = "GGUF tokenizer metadata";
    const dt_meta *model = meta(ts, "tokenizer.ggml.model", DT_META_STR);
    const dt_meta *tok = meta(ts, "tokenizer.ggml.tokens", DT_META_STR_ARR);
    const dt_meta *mer = meta(ts, "tokenizer.ggml.merges", DT_META_STR_ARR);
    const dt_meta *typ = meta(ts, "tokenizer.ggml.token_type", DT_META_INT_ARR);
    const dt_meta *pre = meta(ts, "tokenizer.ggml.pre", DT_META_STR);
    const dt_meta *bos = meta(ts, "tokenizer.ggml.bos_token_id", DT_META_INT);
    const dt_meta *eos = meta(ts, "tokenizer.ggml.eos_token_id", DT_META_INT);
    const dt_meta *tpl = meta(ts, "tokenizer.chat_template", DT_META_STR);
    const dt_meta *addb = meta(ts, "tokenizer.ggml.add_bos_token", DT_META_BOOL);
    const char *pname = pre && pre->s ? pre->s : "default";
    int digits = digits_pre(pname) ? 2 : 0, split = split_pre(pname);
    if (model && model->s && strcmp(model->s, "gpt2")) {
        dt_errf(err, DT_ENOTSUP, "%s: tokenizer model \"%.64s\" is not "
                "byte-level BPE (gpt2)", src, model->s);
        return NULL;
    }
    if (!tok || !mer || tok->n <= 0 || tok->n >= TOK_MAX_ID || !tok->sarr
        || mer->n < 0 || (mer->n > 0 && !mer->sarr) || (typ && typ->n > 0 && !typ->iarr)) {
        dt_errf(err, DT_EFORMAT, "%s: tokenizer.ggml.tokens / merges missing "
                "or invalid", src);
        return NULL;
    }
    /* "gpt-2" is llama.cpp's name for GPT-2's regex (what gguf_write.c
     * writes); "gpt2" and "default" are read the same way. */
    if (!digits && split < 0 && strcmp(pname, "gpt2") && strcmp(pname, "gpt-2")
        && strcmp(pname, "default")) {
        dt_errf(err, DT_ENOTSUP, "%s: pre-tokenizer \"%.64s\" is not supported",
                src, pname);
        return NULL;
    }
    dt_tokenizer *t = dt_tok__new(tok->n, mer->n);
    int rc = t ? DT_OK : DT_ENOMEM;
    for (int64_t i = 0; i < tok->n && rc == DT_OK; i++) {
        const char *s = tok->sarr[i] ? tok->sarr[i] : "";
        int64_t ty = typ && i < typ->n ? typ->iarr[i] : 1;
        rc = dt_tok__set(t, i, s, strlen(s));
        t->kind[i] = ty == 3 ? TOK_SPECIAL : ty == 4 ? TOK_ADDED : TOK_NORMAL;
    }
    if (rc == DT_OK)
        rc = dt_tok__index(t);
    if (rc != DT_OK)
        dt_errf(err, rc, "%s: out of memory", src);
    for (int64_t i = 0; i < mer->n && rc == DT_OK; i++) {
        const char *s = mer->sarr[i] ? mer->sarr[i] : "";
        rc = dt_tok__merge_line(t, s, strlen(s), src, i + 1, err);
    }
    if (rc == DT_OK && (rc = dt_tok__finish(t)) != DT_OK)
        dt_errf(err, rc, "%s: out of memory", src);
    if (rc == DT_OK && tpl && tpl->s && !(t->chat_template = strdup(tpl->s)))
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", src);
    if (rc != DT_OK) {
        dt_tokenizer_free(t);
        return NULL;
    }
    if (split < 0) {
        dt_tok__gpt2_steps(t, digits, 0, 1);
    } else {  /* as the model's tokenizer.json: [NFC,] Split, ByteLevel */
        dt_tok__gpt2_steps(t, 0, 0, 0);
        memmove(&t->pre[1], &t->pre[0], sizeof t->pre[0]);
        t->pre[0] = (tok_pre){ .type = TP_REGEX, .kind = split };
        t->npre = 2;
        if (split == TS_QWEN2)
            t->norm[t->nnorm++] = (tok_norm){ .type = TN_NFC };
        t->ignore_merges = split == TS_LLAMA3;  /* as Llama 3's file */
    }
    t->bos = bos && bos->i >= 0 && bos->i < t->n ? (int32_t)bos->i : -1;
    t->eos = eos && eos->i >= 0 && eos->i < t->n ? (int32_t)eos->i : -1;
    if (addb && addb->i && t->bos >= 0)
        t->tpl_pre[t->ntpl_pre++] = t->bos;
    return t;
}

/* ---- writing tokenizer.json ---------------------------------------------- */

static json_t *byte_level(int prefix, int trim, int regex)
{
    return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel",
                     "add_prefix_space", prefix, "trim_offsets", trim,
                     "use_regex", regex);
}

/* The pre-tokenizer of a tokenizer without a tokenizer.json of its own
 * (GGUF, vocab.json + merges.txt): [Split,] [Digits,] ByteLevel. */
static json_t *pre_steps_json(const dt_tokenizer *t)
{
    json_t *seq = json_array();
    for (int k = 0; seq && k < t->npre; k++) {
        const tok_pre *s = &t->pre[k];
        json_t *o = s->type == TP_BYTELEVEL ? byte_level(s->flag, 1, s->kind)
            : s->type == TP_DIGITS ? json_pack("{s:s, s:b}", "type", "Digits",
                                               "individual_digits", s->flag)
            : s->type == TP_REGEX ? json_pack("{s:s, s:{s:s}, s:s, s:b}",
                "type", "Split", "pattern", "Regex",
                dt_tok__split_pattern(s->kind), "behavior", "Isolated",
                "invert", 0)
            : NULL;
        if (json_array_append_new(seq, o)) {
            json_decref(seq);
            return NULL;
        }
    }
    if (json_array_size(seq) == 1) {
        json_t *one = json_incref(json_array_get(seq, 0));
        json_decref(seq);
        return one;
    }
    return seq ? json_pack("{s:s, s:o}", "type", "Sequence", "pretokenizers",
                           seq) : NULL;
}

/* NFC or null, and BOS by a TemplateProcessing (GGUF add_bos_token). */
static json_t *norm_steps_json(const dt_tokenizer *t)
{
    return t->nnorm == 1 && t->norm[0].type == TN_NFC
        ? json_pack("{s:s}", "type", "NFC") : json_null();
}

static json_t *post_json(const dt_tokenizer *t)
{
    if (t->ntpl_pre != 1 || t->ntpl_post != 0)
        return byte_level(1, 0, 1);
    const char *b = t->str[t->tpl_pre[0]];
    return json_pack("{s:s, s:[o, {s:{s:s, s:i}}], s:[o, {s:{s:s, s:i}}, o, "
                     "{s:{s:s, s:i}}], s:{s:{s:s, s:[i], s:[s]}}}",
                     "type", "TemplateProcessing", "single",
                     json_pack("{s:{s:s, s:i}}", "SpecialToken", "id", b,
                               "type_id", 0),
                     "Sequence", "id", "A", "type_id", 0, "pair",
                     json_pack("{s:{s:s, s:i}}", "SpecialToken", "id", b,
                               "type_id", 0),
                     "Sequence", "id", "A", "type_id", 0,
                     json_pack("{s:{s:s, s:i}}", "SpecialToken", "id", b,
                               "type_id", 1),
                     "Sequence", "id", "B", "type_id", 1,
                     "special_tokens", b, "id", b, "ids",
                     (int)t->tpl_pre[0], "tokens", b);
}

int dt_tokenizer_write_json(const dt_tokenizer *t, const char *path, char *err)
{
    json_t *added = json_array(), *vocab = json_object(), *merges = json_array();
    json_t *pre = t->hf_json ? json_null() : pre_steps_json(t);
    json_t *hf = t->hf_json ? json_loads(t->hf_json, 0, NULL) : NULL;
    int bad = !added || !vocab || !merges || !pre || (t->hf_json && !hf);
    int pairs = 0;  /* merges as [a, b] when a token holds a space */
    for (int32_t r = 0; r < t->nmerges; r++)
        pairs |= memchr(t->str[t->merges[r][0]], ' ', t->len[t->merges[r][0]])
              || memchr(t->str[t->merges[r][1]], ' ', t->len[t->merges[r][1]]);
    for (int32_t i = 0; i < t->n && !bad; i++) {
        if (!t->str[i])
            continue;
        if (t->kind[i] != TOK_NORMAL)
            bad |= json_array_append_new(added, json_pack(
                "{s:i, s:s%, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i,
                "content", t->str[i], (size_t)t->len[i], "single_word", 0,
                "lstrip", t->aflag && (t->aflag[i] & TOK_LSTRIP),
                "rstrip", t->aflag && (t->aflag[i] & TOK_RSTRIP),
                "normalized", t->aflag && (t->aflag[i] & TOK_NORMALIZED),
                "special", t->kind[i] == TOK_SPECIAL));
        if (dt_tok__find(t, t->str[i], t->len[i]) == i)
            bad |= json_object_set_new(vocab, t->str[i], json_integer(i));
    }
    for (int32_t r = 0; r < t->nmerges && !bad; r++)
        bad |= json_array_append_new(merges, pairs
            ? json_pack("[s%, s%]", t->str[t->merges[r][0]],
                        (size_t)t->len[t->merges[r][0]], t->str[t->merges[r][1]],
                        (size_t)t->len[t->merges[r][1]])
            : json_sprintf("%s %s", t->str[t->merges[r][0]],
                           t->str[t->merges[r][1]]));
    if (bad) {
        json_decref(added); json_decref(vocab); json_decref(merges);
        json_decref(pre); json_decref(hf);
        return dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
    }
    json_t *root = json_pack(  /* steals added, pre, vocab and merges */
        "{s:s, s:n, s:n, s:o, s:o, s:o, s:o, s:o, s:{s:s, s:n, s:n, s:n, s:n,"
        " s:b, s:b, s:b, s:o, s:o}}",
        "version", "1.0", "truncation", "padding", "added_tokens", added,
        "normalizer", norm_steps_json(t), "pre_tokenizer", pre, "post_processor",
        post_json(t), "decoder", byte_level(1, 1, 1), "model", "type",
        "BPE", "dropout", "unk_token", "continuing_subword_prefix",
        "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0,
        "ignore_merges", t->ignore_merges, "vocab", vocab, "merges", merges);
    if (root && hf) {  /* a tokenizer.json's own pipeline, as it was */
        json_object_update(root, hf);
        json_t *m = json_object_get(root, "model");
        json_object_set_new(m, "byte_fallback", json_boolean(t->byte_fallback));
        json_object_set_new(m, "fuse_unk", json_boolean(t->fuse_unk));
        if (t->unk >= 0)
            json_object_set_new(m, "unk_token", json_string(t->str[t->unk]));
    }
    json_decref(hf);
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text)
        return dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
    int rc = dt_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}
