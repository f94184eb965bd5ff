/* tokenizer_hf.c: a Hugging Face tokenizer.json's pipeline around its BPE
 * model: normalizer (NFC, Prepend, Replace with a string, Sequence),
 * pre_tokenizer (Split with a known regex or a string, ByteLevel, Digits,
 * Metaspace, Sequence), decoder (ByteLevel, Replace, ByteFallback, Fuse,
 * Strip, Metaspace, Sequence) and post_processor (TemplateProcessing,
 * ByteLevel, Sequence), plus the added tokens' flags. Anything else is
 * DT_EFORMAT naming the component and its type, so a model is refused at
 * load time rather than tokenized differently from `tokenizers`. */
#include "tokenizer_impl.h"
#include "base/dt.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *type_of(json_t *o)
{
    const char *s = json_string_value(json_object_get(o, "type"));
    return s ? s : "(no type)";
}

static int is(json_t *o, const char *type)
{
    return !strcmp(type_of(o), type);
}

static int unsupported(char *err, const char *src, const char *what, json_t *o,
                       const char *supported)
{
    return dt_errf(err, DT_EFORMAT, "%s: unsupported %s \"%.64s\" (supported: "
                   "%s)", src, what, type_of(o), supported);
}

/* A copy of the string member k of o, or NULL (then *rc is set). */
static char *str_of(json_t *o, const char *k, size_t *n, int *rc,
                    const char *src, const char *what, char *err)
{
    json_t *v = json_object_get(o, k);
    char *s = json_is_string(v) ? malloc(json_string_length(v) + 1) : NULL;
    if (!s) {
        *rc = json_is_string(v) ? dt_errf(err, DT_ENOMEM, "%s: out of memory",
                                          src)
            : dt_errf(err, DT_EFORMAT, "%s: %s \"%s\" needs a string \"%s\"",
                      src, what, type_of(o), k);
        return NULL;
    }
    memcpy(s, json_string_value(v), json_string_length(v) + 1);
    *n = json_string_length(v);
    return s;
}

/* The string of a {"String": s} pattern; a {"Regex": r} one is refused. */
static char *pattern_string(json_t *o, size_t *n, int *rc, const char *src,
                            const char *what, char *err)
{
    json_t *pat = json_object_get(o, "pattern");
    if (!json_is_string(json_object_get(pat, "String"))) {
        json_t *re = json_object_get(pat, "Regex");
        *rc = dt_errf(err, DT_EFORMAT, "%s: unsupported %s \"%s\" pattern "
                      "%s%.200s%s (only a String pattern)", src, what,
                      type_of(o), re ? "regex \"" : "", re ?
                      json_string_value(re) ? json_string_value(re) : "?" : "",
                      re ? "\"" : "");
        return NULL;
    }
    return str_of(pat, "String", n, rc, src, what, err);
}

static int bool_of(json_t *o, const char *k, int dflt)
{
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int too_many(char *err, const char *src, const char *what)
{
    return dt_errf(err, DT_EFORMAT, "%s: more than %d %s steps", src,
                   TOK_MAXSTEP, what);
}

/* ---- normalizer -------------------------------------------------------- */

static int normalizer(dt_tokenizer *t, json_t *o, const char *src, char *err)
{
    int rc = DT_OK;
    size_t i;
    json_t *v;
    if (!o || json_is_null(o))
        return DT_OK;
    if (is(o, "Sequence")) {
        json_array_foreach(json_object_get(o, "normalizers"), i, v)
            if ((rc = normalizer(t, v, src, err)) != DT_OK)
                return rc;
        return DT_OK;
    }
    if (!is(o, "NFC") && !is(o, "Prepend") && !is(o, "Replace"))
        return unsupported(err, src, "normalizer", o,
                           "NFC, Prepend, Replace, Sequence");
    if (t->nnorm == TOK_MAXSTEP)
        return too_many(err, src, "normalizer");
    tok_norm *z = &t->norm[t->nnorm];
    memset(z, 0, sizeof *z);
    if (is(o, "NFC")) {
        z->type = TN_NFC;
    } else if (is(o, "Prepend")) {
        z->type = TN_PREPEND;
        z->a = str_of(o, "prepend", &z->na, &rc, src, "normalizer", err);
    } else {
        z->type = TN_REPLACE;
        z->a = pattern_string(o, &z->na, &rc, src, "normalizer", err);
        if (z->a)
            z->b = str_of(o, "content", &z->nb, &rc, src, "normalizer", err);
        if (rc == DT_OK && z->na == 0)
            rc = dt_errf(err, DT_EFORMAT, "%s: normalizer \"Replace\" has an "
                         "empty pattern", src);
    }
    t->nnorm++;  /* counted even when incomplete, so it is freed */
    return rc;
}

/* ---- pre_tokenizer ------------------------------------------------------- */

static int behavior_of(json_t *o)
{
    static const char *names[] = { "Isolated", "Removed", "MergedWithPrevious",
                                   "MergedWithNext", "Contiguous" };
    const char *b = json_string_value(json_object_get(o, "behavior"));
    for (int k = 0; b && k < 5; k++)
        if (!strcmp(b, names[k]))
            return k;
    return -1;
}

/* Metaspace's prepend_scheme: 0 always, 1 first, 2 never; old files say
 * add_prefix_space instead. -1 when unknown. */
static int prepend_scheme(json_t *o)
{
    const char *s = json_string_value(json_object_get(o, "prepend_scheme"));
    if (!s)
        return bool_of(o, "add_prefix_space", 1) ? 0 : 2;
    return !strcmp(s, "always") ? 0 : !strcmp(s, "first") ? 1
         : !strcmp(s, "never") ? 2 : -1;
}

static int pre_tokenizer(dt_tokenizer *t, json_t *o, const char *src, char *err)
{
    int rc = DT_OK;
    size_t i;
    json_t *v;
    if (!o || json_is_null(o))
        return DT_OK;
    if (is(o, "Sequence")) {
        json_array_foreach(json_object_get(o, "pretokenizers"), i, v)
            if ((rc = pre_tokenizer(t, v, src, err)) != DT_OK)
                return rc;
        return DT_OK;
    }
    if (!is(o, "Split") && !is(o, "ByteLevel") && !is(o, "Digits")
        && !is(o, "Metaspace"))
        return unsupported(err, src, "pre_tokenizer", o,
                           "Split, ByteLevel, Digits, Metaspace, Sequence");
    if (t->npre == TOK_MAXSTEP)
        return too_many(err, src, "pre_tokenizer");
    tok_pre *s = &t->pre[t->npre];
    memset(s, 0, sizeof *s);
    if (is(o, "ByteLevel")) {
        s->type = TP_BYTELEVEL;
        s->flag = bool_of(o, "add_prefix_space", 0);
        s->kind = bool_of(o, "use_regex", 1);
        t->byte_level = 1;
    } else if (is(o, "Digits")) {
        s->type = TP_DIGITS;
        s->flag = bool_of(o, "individual_digits", 0);
    } else if (is(o, "Metaspace")) {
        s->type = TP_METASPACE;
        s->kind = prepend_scheme(o);
        s->flag = bool_of(o, "split", 1);
        s->a = str_of(o, "replacement", &s->na, &rc, src, "pre_tokenizer", err);
        if (rc == DT_OK && (s->kind < 0 || s->na == 0))
            rc = dt_errf(err, DT_EFORMAT, "%s: pre_tokenizer \"Metaspace\" has "
                         "an unknown prepend_scheme or an empty replacement",
                         src);
    } else {
        json_t *pat = json_object_get(o, "pattern");
        json_t *re = json_object_get(pat, "Regex");
        s->behavior = behavior_of(o);
        if (bool_of(o, "invert", 0) || s->behavior < 0)
            rc = dt_errf(err, DT_EFORMAT, "%s: unsupported pre_tokenizer "
                         "\"Split\" behavior \"%.32s\"%s", src,
                         json_string_value(json_object_get(o, "behavior"))
                         ? json_string_value(json_object_get(o, "behavior"))
                         : "?", bool_of(o, "invert", 0) ? " with invert" : "");
        else if (json_is_string(re)) {
            s->type = TP_REGEX;
            s->kind = dt_tok__split_kind(json_string_value(re));
            if (s->kind < 0 || s->behavior != TB_ISOLATED)
                rc = dt_errf(err, DT_EFORMAT, "%s: unsupported pre_tokenizer "
                             "\"Split\" regex \"%.300s\"%s (known: the GPT-2, "
                             "Llama 3 and Qwen 2 patterns, behavior Isolated)",
                             src, json_string_value(re), s->kind < 0 ? ""
                             : " with behavior other than Isolated");
        } else {
            s->type = TP_STRING;
            s->a = pattern_string(o, &s->na, &rc, src, "pre_tokenizer", err);
            if (rc == DT_OK && s->na == 0)
                rc = dt_errf(err, DT_EFORMAT, "%s: pre_tokenizer \"Split\" has "
                             "an empty pattern", src);
        }
    }
    t->npre++;
    return rc;
}

/* ---- decoder ------------------------------------------------------------- */

static int decoder(dt_tokenizer *t, json_t *o, const char *src, char *err)
{
    int rc = DT_OK;
    size_t i;
    json_t *v;
    if (!o || json_is_null(o))
        return DT_OK;
    t->has_decoder = 1;
    if (is(o, "Sequence")) {
        json_array_foreach(json_object_get(o, "decoders"), i, v)
            if ((rc = decoder(t, v, src, err)) != DT_OK)
                return rc;
        return DT_OK;
    }
    static const char *types[] = { "ByteLevel", "Replace", "ByteFallback",
                                   "Fuse", "Strip", "Metaspace" };
    int ty = -1;
    for (int k = 0; k < 6; k++)
        if (is(o, types[k]))
            ty = k;
    if (ty < 0)
        return unsupported(err, src, "decoder", o, "ByteLevel, Replace, "
                           "ByteFallback, Fuse, Strip, Metaspace, Sequence");
    if (t->ndec == TOK_MAXSTEP)
        return too_many(err, src, "decoder");
    tok_dec *d = &t->dec[t->ndec++];
    memset(d, 0, sizeof *d);
    d->type = ty;  /* TD_* are in the order of types[] */
    if (ty == TD_REPLACE) {
        d->a = pattern_string(o, &d->na, &rc, src, "decoder", err);
        if (d->a)
            d->b = str_of(o, "content", &d->nb, &rc, src, "decoder", err);
        if (rc == DT_OK && d->na == 0)
            rc = dt_errf(err, DT_EFORMAT, "%s: decoder \"Replace\" has an "
                         "empty pattern", src);
    } else if (ty == TD_STRIP) {
        d->a = str_of(o, "content", &d->na, &rc, src, "decoder", err);
        d->start = (int)json_integer_value(json_object_get(o, "start"));
        d->stop = (int)json_integer_value(json_object_get(o, "stop"));
    } else if (ty == TD_METASPACE) {
        d->a = str_of(o, "replacement", &d->na, &rc, src, "decoder", err);
        d->flag = prepend_scheme(o) != 2;
        if (rc == DT_OK && d->na == 0)
            rc = dt_errf(err, DT_EFORMAT, "%s: decoder \"Metaspace\" has an "
                         "empty replacement", src);
    }
    return rc;
}

/* ---- post_processor ------------------------------------------------------ */

static int template_ids(dt_tokenizer *t, json_t *o, const char *src, char *err)
{
    json_t *single = json_object_get(o, "single"), *item;
    json_t *specials = json_object_get(o, "special_tokens");
    size_t i, k;
    int seen = 0;
    if (!json_is_array(single))
        return dt_errf(err, DT_EFORMAT, "%s: post_processor "
                       "\"TemplateProcessing\" has no \"single\" template", src);
    json_array_foreach(single, i, item) {
        json_t *sp = json_object_get(item, "SpecialToken");
        json_t *seq = json_object_get(item, "Sequence");
        if (seq) {
            const char *id = json_string_value(json_object_get(seq, "id"));
            if (!id || strcmp(id, "A") || seen)
                return dt_errf(err, DT_EFORMAT, "%s: post_processor "
                               "\"TemplateProcessing\": the single template "
                               "must hold sequence A once", src);
            seen = 1;
            continue;
        }
        const char *name = json_string_value(json_object_get(sp, "id"));
        json_t *ids = json_object_get(json_object_get(specials, name ? name
                                                      : ""), "ids"), *v;
        if (!name || !json_is_array(ids))
            return dt_errf(err, DT_EFORMAT, "%s: post_processor "
                           "\"TemplateProcessing\": item %zu of the single "
                           "template is not a known special token", src, i);
        json_array_foreach(ids, k, v) {
            int64_t id = json_integer_value(v);
            int32_t *dst = seen ? t->tpl_post : t->tpl_pre;
            int *nd = seen ? &t->ntpl_post : &t->ntpl_pre;
            if (!json_is_integer(v) || id < 0 || id >= t->n)
                return dt_errf(err, DT_EFORMAT, "%s: post_processor special "
                               "token \"%.64s\" has an id outside the "
                               "vocabulary", src, name);
            if (*nd == 4)
                return dt_errf(err, DT_EFORMAT, "%s: post_processor adds more "
                               "than 4 tokens on one side", src);
            dst[(*nd)++] = (int32_t)id;
        }
    }
    return DT_OK;
}

static int post_processor(dt_tokenizer *t, json_t *o, const char *src,
                          char *err)
{
    int rc;
    size_t i;
    json_t *v;
    if (!o || json_is_null(o) || is(o, "ByteLevel"))  /* offsets only */
        return DT_OK;
    if (is(o, "Sequence")) {
        json_array_foreach(json_object_get(o, "processors"), i, v)
            if ((rc = post_processor(t, v, src, err)) != DT_OK)
                return rc;
        return DT_OK;
    }
    if (!is(o, "TemplateProcessing"))
        return unsupported(err, src, "post_processor", o,
                           "TemplateProcessing, ByteLevel, Sequence");
    return template_ids(t, o, src, err);
}

/* ---- all of it ------------------------------------------------------------ */

int dt_tok__hf_pipeline(dt_tokenizer *t, void *root_, const char *src,
                        char *err)
{
    json_t *root = root_, *v;
    json_t *model = json_object_get(root, "model");
    int rc;
    size_t i;
    if ((rc = normalizer(t, json_object_get(root, "normalizer"), src, err))
        || (rc = pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), src,
                               err))
        || (rc = decoder(t, json_object_get(root, "decoder"), src, err))
        || (rc = post_processor(t, json_object_get(root, "post_processor"),
                                src, err)))
        return rc;
    for (int k = 0; k + 1 < t->npre; k++)
        if (t->pre[k].type == TP_BYTELEVEL)
            return dt_errf(err, DT_EFORMAT, "%s: unsupported pre_tokenizer "
                           "\"ByteLevel\" before another pre-tokenizer (it "
                           "must come last)", src);
    /* the BPE model's options */
    static const char *affixes[] = { "continuing_subword_prefix",
                                     "end_of_word_suffix" };
    for (int k = 0; k < 2; k++) {
        json_t *a = json_object_get(model, affixes[k]);
        if (a && !json_is_null(a) && !(json_is_string(a)
                                       && json_string_length(a) == 0))
            return dt_errf(err, DT_EFORMAT, "%s: unsupported model option "
                           "\"%s\"", src, affixes[k]);
    }
    v = json_object_get(model, "dropout");
    if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0))
        return dt_errf(err, DT_EFORMAT, "%s: unsupported model option "
                       "\"dropout\" (random merges)", src);
    t->byte_fallback = bool_of(model, "byte_fallback", 0);
    t->fuse_unk = bool_of(model, "fuse_unk", 0);
    /* the added tokens' flags */
    json_array_foreach(json_object_get(root, "added_tokens"), i, v) {
        int64_t id = json_integer_value(json_object_get(v, "id"));
        int l = bool_of(v, "lstrip", 0), r = bool_of(v, "rstrip", 0);
        const char *c = json_string_value(json_object_get(v, "content"));
        if (bool_of(v, "single_word", 0))
            return dt_errf(err, DT_EFORMAT, "%s: added token \"%.64s\": "
                           "unsupported single_word", src, c ? c : "?");
        /* HF's default: special tokens are not normalized, others are */
        int nz = bool_of(v, "normalized",
                         !json_is_true(json_object_get(v, "special")));
        if (!l && !r && !nz)
            continue;
        if (!t->aflag && !(t->aflag = dt_calloc((size_t)t->n, 1)))
            return dt_errf(err, DT_ENOMEM, "%s: out of memory", src);
        t->aflag[id] = (uint8_t)((l ? TOK_LSTRIP : 0) | (r ? TOK_RSTRIP : 0)
                                 | (nz ? TOK_NORMALIZED : 0));
    }
    /* kept for dt_tokenizer_write_json */
    json_t *keep = json_object();
    static const char *parts[] = { "normalizer", "pre_tokenizer",
                                   "post_processor", "decoder" };
    for (int k = 0; keep && k < 4; k++) {
        json_t *p = json_object_get(root, parts[k]);
        json_object_set(keep, parts[k], p ? p : json_null());
    }
    t->hf_json = keep ? json_dumps(keep, JSON_COMPACT) : NULL;
    json_decref(keep);
    if (!t->hf_json)
        return dt_errf(err, DT_ENOMEM, "%s: out of memory", src);
    return DT_OK;
}
