/* modelio.c: loading model weights into the canonical form of model.h.
 *
 * Sources: a Hugging Face directory (config.json + safetensors, GPT-2 or the
 * Llama family) or a llama GGUF file. Every tensor the architecture needs is
 * checked for presence and shape; known buffers (GPT-2 attn.bias, rotary
 * inv_freq) are dropped; anything else is refused, so that a model is never
 * silently changed. */
#include "model.h"
#include "base/dt.h"
#include "base/file.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* Expected tensors                                                         */

typedef struct tspec {
    char name[96];      /* canonical name */
    int ndim;
    int64_t shape[2];   /* expected shape in the file's orientation */
    int conv1d;         /* GPT-2 Conv1D: file (in, out) -> canonical (out, in) */
    int perm_heads;     /* GGUF Q/K: undo llama.cpp's row permutation */
    int src;            /* index in the raw set, -1 while missing */
} tspec;

typedef struct speclist {
    tspec *s;
    int n, cap;
} speclist;

static int spec_add(speclist *L, int ndim, int64_t a, int64_t b, int conv1d,
                    const char *fmt, int layer)
{
    if (L->n == L->cap) {
        int cap = L->cap ? L->cap * 2 : 256;
        tspec *s = realloc(L->s, (size_t)cap * sizeof *s);
        if (!s)
            return DT_ENOMEM;
        L->s = s;
        L->cap = cap;
    }
    tspec *t = &L->s[L->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->ndim = ndim;
    t->shape[0] = a;
    t->shape[1] = b;
    t->conv1d = conv1d;
    t->src = -1;
    return DT_OK;
}

static int build_spec(const dt_config *c, speclist *L)
{
    int64_t C = c->d_model, F = c->d_ff, V = c->vocab;
    int rc = 0;
#define ADD1(n, fmt, l) rc |= spec_add(L, 1, n, 0, 0, fmt, l)
#define ADD2(a, b, cv, fmt, l) rc |= spec_add(L, 2, a, b, cv, fmt, l)
    if (c->arch == DT_ARCH_GPT2) {
        ADD2(V, C, 0, "wte.weight", 0);
        ADD2(c->max_pos, C, 0, "wpe.weight", 0);
        for (int l = 0; l < c->n_layer; l++) {
            ADD1(C, "h.%d.ln_1.weight", l);
            ADD1(C, "h.%d.ln_1.bias", l);
            ADD2(C, 3 * C, 1, "h.%d.attn.c_attn.weight", l);
            ADD1(3 * C, "h.%d.attn.c_attn.bias", l);
            ADD2(C, C, 1, "h.%d.attn.c_proj.weight", l);
            ADD1(C, "h.%d.attn.c_proj.bias", l);
            ADD1(C, "h.%d.ln_2.weight", l);
            ADD1(C, "h.%d.ln_2.bias", l);
            ADD2(C, F, 1, "h.%d.mlp.c_fc.weight", l);
            ADD1(F, "h.%d.mlp.c_fc.bias", l);
            ADD2(F, C, 1, "h.%d.mlp.c_proj.weight", l);
            ADD1(C, "h.%d.mlp.c_proj.bias", l);
        }
        ADD1(C, "ln_f.weight", 0);
        ADD1(C, "ln_f.bias", 0);
    } else {
        int64_t Q = (int64_t)c->n_head * c->head_dim;
        int64_t K = (int64_t)c->n_kv_head * c->head_dim;
        ADD2(V, C, 0, "embed_tokens.weight", 0);
        for (int l = 0; l < c->n_layer; l++) {
            ADD1(C, "layers.%d.input_layernorm.weight", l);
            ADD2(Q, C, 0, "layers.%d.self_attn.q_proj.weight", l);
            ADD2(K, C, 0, "layers.%d.self_attn.k_proj.weight", l);
            ADD2(K, C, 0, "layers.%d.self_attn.v_proj.weight", l);
            ADD2(C, Q, 0, "layers.%d.self_attn.o_proj.weight", l);
            if (c->attn_bias) {
                ADD1(Q, "layers.%d.self_attn.q_proj.bias", l);
                ADD1(K, "layers.%d.self_attn.k_proj.bias", l);
                ADD1(K, "layers.%d.self_attn.v_proj.bias", l);
            }
            if (c->o_bias)
                ADD1(C, "layers.%d.self_attn.o_proj.bias", l);
            if (c->qk_norm) {
                ADD1(c->head_dim, "layers.%d.self_attn.q_norm.weight", l);
                ADD1(c->head_dim, "layers.%d.self_attn.k_norm.weight", l);
            }
            ADD1(C, "layers.%d.post_attention_layernorm.weight", l);
            ADD2(F, C, 0, "layers.%d.mlp.gate_proj.weight", l);
            ADD2(F, C, 0, "layers.%d.mlp.up_proj.weight", l);
            ADD2(C, F, 0, "layers.%d.mlp.down_proj.weight", l);
            if (c->mlp_bias) {
                ADD1(F, "layers.%d.mlp.gate_proj.bias", l);
                ADD1(F, "layers.%d.mlp.up_proj.bias", l);
                ADD1(C, "layers.%d.mlp.down_proj.bias", l);
            }
        }
        ADD1(C, "norm.weight", 0);
    }
    if (!c->tied)
        ADD2(V, C, 0, "lm_head.weight", 0);
#undef ADD1
#undef ADD2
    return rc ? DT_ENOMEM : DT_OK;
}

static tspec *spec_find(speclist *L, const char *name)
{
    for (int i = 0; i < L->n; i++)
        if (strcmp(L->s[i].name, name) == 0)
            return &L->s[i];
    return NULL;
}

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *s)
{
    int k = snprintf(buf, n, "(");
    for (int d = 0; d < ndim && k < (int)n; d++)
        k += snprintf(buf + k, n - (size_t)k, d ? ",%lld" : "%lld",
                      (long long)s[d]);
    if (k < (int)n)
        snprintf(buf + k, n - (size_t)k, ")");
}

/* Adds the matched raw tensors to w->ts in spec order, checking shapes:
 * lazy tensors (no data) that point into the raw set's mappings, which w->ts
 * takes over, with their canonical shape and the conversion that makes it
 * (GPT-2 Conv1D transposed, GGUF Q/K un-permuted), done by
 * dt_tensor_convert when a tensor is needed. */
static int canon_finish(const char *path, dt_tensorset *raw, speclist *L,
                        dt_weights *w, char *err)
{
    for (int i = 0; i < L->n; i++) {
        tspec *s = &L->s[i];
        if (s->src < 0)
            return dt_errf(err, DT_EFORMAT, "%s: missing tensor %s", path,
                           s->name);
        dt_tensor *t = &raw->t[s->src];
        int ok = t->ndim == s->ndim;
        for (int d = 0; ok && d < s->ndim; d++)
            ok = t->shape[d] == s->shape[d];
        if (!ok) {
            char got[96], want[96];
            fmt_shape(got, sizeof got, t->ndim, t->shape);
            fmt_shape(want, sizeof want, s->ndim, s->shape);
            return dt_errf(err, DT_EFORMAT,
                           "%s: tensor %s: shape %s expected %s", path,
                           s->name, got, want);
        }
    }
    w->dtype = L->n ? raw->t[L->s[0].src].src_dtype : DT_F32;
    if (dt_tensorset_take_maps(&w->ts, raw))
        return dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < L->n; i++) {
        tspec *s = &L->s[i];
        dt_tensor *t = &raw->t[s->src];
        int64_t shape[2] = {s->shape[0], s->shape[1]};
        if (s->conv1d) { /* file (in, out) -> canonical (out, in) */
            shape[0] = s->shape[1];
            shape[1] = s->shape[0];
        }
        int rc = dt_tensorset_add(&w->ts, s->name, s->ndim, shape, NULL,
                                  t->src_dtype, err);
        if (rc)
            return rc;
        dt_tensor *c = &w->ts.t[w->ts.n - 1];
        c->raw = t->raw;
        c->raw_type = t->raw_type;
        c->xform = s->conv1d ? DT_XF_TRANSPOSE
                   : s->perm_heads > 0 ? DT_XF_UNPERMUTE : DT_XF_NONE;
        c->xform_arg = s->perm_heads;
    }
    return DT_OK;
}

/* Points the spec entry of canonical name `cname` at raw tensor i. */
static int spec_match(const char *path, speclist *L, const char *cname,
                      const char *rawname, int i, char *err)
{
    tspec *s = spec_find(L, cname);
    if (!s)
        return dt_errf(err, DT_ENOTSUP, "%s: unexpected tensor %s", path,
                       rawname);
    if (s->src >= 0)
        return dt_errf(err, DT_EFORMAT, "%s: tensor %s appears twice", path,
                       cname);
    s->src = i;
    return DT_OK;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int check_config(const char *path, const dt_config *c, char *err)
{
    int big = 1 << 24;
    if (c->n_layer <= 0 || c->d_model <= 0 || c->n_head <= 0 ||
        c->n_kv_head <= 0 || c->head_dim <= 0 || c->d_ff <= 0 ||
        c->vocab <= 0 || c->max_pos <= 0 || c->n_layer > 4096 ||
        c->d_model > big || c->d_ff > big || c->vocab > big ||
        c->n_head > 4096 || c->head_dim > 4096 || c->max_pos > big)
        return dt_errf(err, DT_EFORMAT, "%s: config values out of range", path);
    if (c->n_head % c->n_kv_head != 0)
        return dt_errf(err, DT_EFORMAT,
                       "%s: %d attention heads not a multiple of %d kv heads",
                       path, c->n_head, c->n_kv_head);
    if (c->arch == DT_ARCH_GPT2 && c->d_model % c->n_head != 0)
        return dt_errf(err, DT_EFORMAT, "%s: n_embd %d not divisible by "
                       "n_head %d", path, c->d_model, c->n_head);
    if (c->arch == DT_ARCH_LLAMA && c->head_dim % 2 != 0)
        return dt_errf(err, DT_ENOTSUP, "%s: odd head_dim %d", path,
                       c->head_dim);
    return DT_OK;
}

/* ------------------------------------------------------------------------ */
/* Hugging Face directories                                                 */

/* Reads an integer field: absent or null gives def (or an error when def is
 * -1). */
static int js_int(json_t *o, const char *key, int def, int *out,
                  const char *path, char *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (def == -1)
            return dt_errf(err, DT_EFORMAT, "%s: missing %s", path, key);
        *out = def;
        return DT_OK;
    }
    double x = json_number_value(v);
    if (!json_is_number(v) || x < 0 || x > 1e9 || x != (double)(long long)x)
        return dt_errf(err, DT_EFORMAT, "%s: %s is not a valid integer", path,
                       key);
    *out = (int)x;
    return DT_OK;
}

static float js_num(json_t *o, const char *key, float def)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? (float)json_number_value(v) : def;
}

static int js_bool(json_t *o, const char *key, int def)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

static int has_arch(json_t *root, const char *name)
{
    json_t *a = json_object_get(root, "architectures");
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v)
        if (json_is_string(v) && strcmp(json_string_value(v), name) == 0)
            return 1;
    return 0;
}

/* Reads a RoPE scaling object (config.json's rope_scaling, or
 * transformers 5's rope_parameters): absent, null or of type "default" is
 * plain RoPE; type "llama3" sets c->rope_factor etc.; any other type is an
 * error naming it. */
static int rope_scaling(const char *path, const char *key, json_t *o,
                        dt_config *c, char *err)
{
    if (!o || json_is_null(o))
        return DT_OK;
    if (!json_is_object(o))
        return dt_errf(err, DT_EFORMAT, "%s: %s is not an object", path, key);
    const char *t = json_string_value(json_object_get(o, "rope_type"));
    if (!t)
        t = json_string_value(json_object_get(o, "type"));
    if (!t)
        return json_object_get(o, "factor")
                   ? dt_errf(err, DT_EFORMAT, "%s: %s has no rope_type", path,
                             key)
                   : DT_OK; /* rope_parameters with only rope_theta */
    if (strcmp(t, "default") == 0)
        return DT_OK;
    if (strcmp(t, "llama3") != 0)
        return dt_errf(err, DT_ENOTSUP, "%s: %s type %s is not supported "
                       "(default and llama3 only)", path, key, t);
    const char *nums[] = {"factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"};
    double v[4];
    for (int i = 0; i < 4; i++) {
        json_t *x = json_object_get(o, nums[i]);
        if (!json_is_number(x) || !(json_number_value(x) > 0.0))
            return dt_errf(err, DT_EFORMAT, "%s: %s.%s must be a positive "
                           "number for rope_type llama3", path, key, nums[i]);
        v[i] = json_number_value(x);
    }
    if (!(v[2] > v[1]) || v[3] > 1e9)
        return dt_errf(err, DT_EFORMAT, "%s: %s: high_freq_factor must exceed "
                       "low_freq_factor", path, key);
    c->rope_factor = (float)v[0];
    c->rope_low_freq = (float)v[1];
    c->rope_high_freq = (float)v[2];
    c->rope_orig_ctx = (int)v[3];
    return DT_OK;
}

static int hf_config(const char *path, json_t *root, dt_config *c, char *err)
{
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    static const char *const llama_types[] = {"llama", "mistral", "qwen2",
                                              "qwen3", "smollm", NULL};
    int qwen3 = has_arch(root, "Qwen3ForCausalLM") ||
                (mt && strcmp(mt, "qwen3") == 0);
    int qwen = qwen3 || has_arch(root, "Qwen2ForCausalLM") ||
               (mt && strcmp(mt, "qwen2") == 0);
    int is_llama = has_arch(root, "LlamaForCausalLM") ||
                   has_arch(root, "MistralForCausalLM") || qwen;
    for (int i = 0; mt && llama_types[i]; i++)
        is_llama |= strcmp(mt, llama_types[i]) == 0;
    int rc;
    memset(c, 0, sizeof *c);
    if ((mt && strcmp(mt, "gpt2") == 0) || has_arch(root, "GPT2LMHeadModel")) {
        c->arch = DT_ARCH_GPT2;
        int npos;
        if ((rc = js_int(root, "n_layer", -1, &c->n_layer, path, err)) ||
            (rc = js_int(root, "n_embd", -1, &c->d_model, path, err)) ||
            (rc = js_int(root, "n_head", -1, &c->n_head, path, err)) ||
            (rc = js_int(root, "n_ctx", 1024, &npos, path, err)) ||
            (rc = js_int(root, "n_positions", npos, &c->max_pos, path, err)) ||
            (rc = js_int(root, "vocab_size", -1, &c->vocab, path, err)) ||
            (rc = js_int(root, "n_inner", 4 * c->d_model, &c->d_ff, path, err)))
            return rc;
        if (js_bool(root, "scale_attn_by_inverse_layer_idx", 0) ||
            js_bool(root, "reorder_and_upcast_attn", 0))
            return dt_errf(err, DT_ENOTSUP, "%s: GPT-2 attention variants "
                           "are not supported", path);
        c->n_kv_head = c->n_head;
        c->head_dim = c->n_head ? c->d_model / c->n_head : 0;
        c->norm_eps = js_num(root, "layer_norm_epsilon", 1e-5f);
        c->rope_theta = 10000.0f; /* unused */
        c->tied = js_bool(root, "tie_word_embeddings", 1);
        /* transformers' GPT2Config defaults: 0.1 each */
        c->resid_pdrop = js_num(root, "resid_pdrop", 0.1f);
        c->embd_pdrop = js_num(root, "embd_pdrop", 0.1f);
        c->attn_pdrop = js_num(root, "attn_pdrop", 0.1f);
    } else if (is_llama) {
        c->arch = DT_ARCH_LLAMA;
        c->qk_norm = qwen3; /* per-head q_norm / k_norm */
        if ((rc = js_int(root, "num_hidden_layers", -1, &c->n_layer, path,
                         err)) ||
            (rc = js_int(root, "hidden_size", -1, &c->d_model, path, err)) ||
            (rc = js_int(root, "num_attention_heads", -1, &c->n_head, path,
                         err)) ||
            (rc = js_int(root, "num_key_value_heads", c->n_head, &c->n_kv_head,
                         path, err)) ||
            (rc = js_int(root, "head_dim",
                         c->n_head ? c->d_model / c->n_head : 0, &c->head_dim,
                         path, err)) ||
            (rc = js_int(root, "intermediate_size", -1, &c->d_ff, path, err)) ||
            (rc = js_int(root, "vocab_size", -1, &c->vocab, path, err)) ||
            (rc = js_int(root, "max_position_embeddings", 2048, &c->max_pos,
                         path, err)))
            return rc;
        json_t *rp = json_object_get(root, "rope_parameters");
        c->rope_theta = js_num(root, "rope_theta", js_num(rp, "rope_theta",
                                                          10000.0f));
        c->norm_eps = js_num(root, "rms_norm_eps", 1e-6f);
        c->tied = js_bool(root, "tie_word_embeddings", 0);
        c->attn_pdrop = js_num(root, "attention_dropout", 0.0f);
        if ((rc = rope_scaling(path, "rope_scaling",
                               json_object_get(root, "rope_scaling"), c,
                               err)) ||
            (rc = rope_scaling(path, "rope_parameters", rp, c, err)))
            return rc;
        /* Mistral's sliding window (Qwen 2/3's when use_sliding_window). */
        json_t *sw = json_object_get(root, "sliding_window");
        if (json_is_integer(sw) && json_integer_value(sw) > 0 &&
            (!qwen || js_bool(root, "use_sliding_window", 0)))
            c->sliding_window = json_integer_value(sw) > INT32_MAX
                                    ? INT32_MAX
                                    : (int)json_integer_value(sw);
        if (js_num(root, "partial_rotary_factor", 1.0f) != 1.0f)
            return dt_errf(err, DT_ENOTSUP, "%s: partial rotary embeddings "
                           "are not supported", path);
        const char *act = json_string_value(json_object_get(root,
                                                            "hidden_act"));
        if (act && strcmp(act, "silu") != 0)
            return dt_errf(err, DT_ENOTSUP, "%s: hidden_act %s (silu only)",
                           path, act);
    } else {
        json_t *a0 = json_array_get(json_object_get(root, "architectures"), 0);
        if (json_is_string(a0))
            return dt_errf(err, DT_ENOTSUP, "%s: unsupported architecture %s "
                           "(supported: GPT2LMHeadModel, LlamaForCausalLM, "
                           "MistralForCausalLM, Qwen2ForCausalLM, "
                           "Qwen3ForCausalLM)", path,
                           json_string_value(a0));
        return dt_errf(err, DT_ENOTSUP, "%s: unknown architecture %s", path,
                       mt ? mt : "(none)");
    }
    const struct { const char *key; float p; } drops[] = {
        {"resid_pdrop", c->resid_pdrop}, {"embd_pdrop", c->embd_pdrop},
        {c->arch == DT_ARCH_GPT2 ? "attn_pdrop" : "attention_dropout",
         c->attn_pdrop}};
    for (int i = 0; i < 3; i++)
        if (!(drops[i].p >= 0.0f && drops[i].p < 1.0f))
            return dt_errf(err, DT_EFORMAT, "%s: %s must be in [0, 1), got %g",
                           path, drops[i].key, (double)drops[i].p);
    return DT_OK;
}

static int load_hf(const char *dir, dt_weights *w, char *err)
{
    char cpath[4096];
    snprintf(cpath, sizeof cpath, "%s/config.json", dir);
    int rc = dt_read_file(cpath, &w->config_json, NULL, err);
    if (rc)
        return rc;
    json_error_t je;
    json_t *root = json_loads(w->config_json, 0, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return dt_errf(err, DT_EFORMAT, "%s: not a JSON object: %s", cpath,
                       je.text);
    }
    rc = hf_config(cpath, root, &w->cfg, err);
    json_decref(root);
    if (rc)
        return rc;
    dt_tensorset raw;
    dt_tensorset_init(&raw);
    speclist L = {0};
    if ((rc = dt_hf_weights_open(dir, &raw, err)))
        goto out;
    dt_config *c = &w->cfg;
    const char *pfx = c->arch == DT_ARCH_GPT2 ? "transformer." : "model.";
    const char *emb = c->arch == DT_ARCH_GPT2 ? "wte.weight"
                                              : "embed_tokens.weight";
    char key[256];
    snprintf(key, sizeof key, "%s%s", pfx, emb);
    snprintf(w->prefix, sizeof w->prefix, "%s",
             dt_tensorset_find(&raw, key) ? pfx : "");
    size_t pl = strlen(w->prefix);
    if (c->arch == DT_ARCH_LLAMA) {
        /* Biases are optional in the Llama family: read them off layer 0. */
        snprintf(key, sizeof key, "%slayers.0.self_attn.q_proj.bias", w->prefix);
        c->attn_bias = dt_tensorset_find(&raw, key) != NULL;
        snprintf(key, sizeof key, "%slayers.0.self_attn.o_proj.bias", w->prefix);
        c->o_bias = dt_tensorset_find(&raw, key) != NULL;
        snprintf(key, sizeof key, "%slayers.0.mlp.gate_proj.bias", w->prefix);
        c->mlp_bias = dt_tensorset_find(&raw, key) != NULL;
    }
    if ((rc = check_config(cpath, c, err)))
        goto out;
    if ((rc = build_spec(c, &L))) {
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", dir);
        goto out;
    }
    for (int i = 0; i < raw.n; i++) {
        const char *n = raw.t[i].name;
        const char *cn = pl && strncmp(n, w->prefix, pl) == 0 ? n + pl : n;
        if (ends_with(cn, ".attn.bias") || ends_with(cn, ".attn.masked_bias") ||
            ends_with(cn, "rotary_emb.inv_freq"))
            continue; /* buffers, not weights */
        if (c->tied && strcmp(cn, "lm_head.weight") == 0)
            continue; /* tied: the embedding is the head */
        if ((rc = spec_match(dir, &L, cn, n, i, err)))
            goto out;
    }
    rc = canon_finish(dir, &raw, &L, w, err);
out:
    free(L.s);
    dt_tensorset_free(&raw);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* GGUF                                                                     */

static int meta_int(const dt_tensorset *ts, const char *key, int def, int *out,
                    const char *path, char *err)
{
    const dt_meta *m = dt_tensorset_meta(ts, key);
    if (!m) {
        if (def == -1)
            return dt_errf(err, DT_EFORMAT, "%s: missing metadata %s", path,
                           key);
        *out = def;
        return DT_OK;
    }
    if (m->type != DT_META_INT || m->i < 0 || m->i > 1000000000)
        return dt_errf(err, DT_EFORMAT, "%s: metadata %s is not a valid "
                       "integer", path, key);
    *out = (int)m->i;
    return DT_OK;
}

static float meta_float(const dt_tensorset *ts, const char *key, float def)
{
    const dt_meta *m = dt_tensorset_meta(ts, key);
    if (m && m->type == DT_META_FLOAT)
        return (float)m->f;
    if (m && m->type == DT_META_INT)
        return (float)m->i;
    return def;
}

/* Maps a llama or qwen3 GGUF tensor name to the canonical one; returns 0
 * when the name is not one of theirs. *qk: 1 for attn_q, 2 for attn_k (rows
 * that llama.cpp permutes for the llama architecture). */
static int gguf_canon_name(const char *n, char *out, size_t cap, int *qk)
{
    static const char *const top[][2] = {
        {"token_embd.weight", "embed_tokens.weight"},
        {"output_norm.weight", "norm.weight"},
        {"output.weight", "lm_head.weight"},
    };
    static const char *const blk[][2] = {
        {"attn_q", "self_attn.q_proj"}, {"attn_k", "self_attn.k_proj"},
        {"attn_v", "self_attn.v_proj"}, {"attn_output", "self_attn.o_proj"},
        {"ffn_gate", "mlp.gate_proj"}, {"ffn_up", "mlp.up_proj"},
        {"ffn_down", "mlp.down_proj"}, {"attn_norm", "input_layernorm"},
        {"ffn_norm", "post_attention_layernorm"},
        {"attn_q_norm", "self_attn.q_norm"}, {"attn_k_norm", "self_attn.k_norm"},
    };
    *qk = 0;
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (strcmp(n, top[i][0]) == 0) {
            snprintf(out, cap, "%s", top[i][1]);
            return 1;
        }
    int layer, pos = 0;
    if (sscanf(n, "blk.%d.%n", &layer, &pos) != 1 || pos == 0 || layer < 0)
        return 0;
    const char *rest = n + pos, *dot = strrchr(rest, '.');
    if (!dot || (strcmp(dot, ".weight") != 0 && strcmp(dot, ".bias") != 0))
        return 0;
    for (size_t i = 0; i < sizeof blk / sizeof blk[0]; i++) {
        size_t k = strlen(blk[i][0]);
        if ((size_t)(dot - rest) == k && strncmp(rest, blk[i][0], k) == 0) {
            snprintf(out, cap, "layers.%d.%s%s", layer, blk[i][1], dot);
            *qk = i == 0 ? 1 : i == 1 ? 2 : 0;
            return 1;
        }
    }
    return 0;
}

static int load_gguf(const char *path, dt_weights *w, char *err)
{
    dt_tensorset raw;
    dt_tensorset_init(&raw);
    speclist L = {0};
    int rc = dt_gguf_open(path, &raw, err);
    if (rc) {
        dt_tensorset_free(&raw);
        return rc;
    }
    dt_config *c = &w->cfg;
    memset(c, 0, sizeof *c);
    const dt_meta *am = dt_tensorset_meta(&raw, "general.architecture");
    const char *an = am && am->type == DT_META_STR ? am->s : "(none)";
    /* llama, or qwen3: the Llama layout plus attn_q_norm/attn_k_norm, its
     * Q/K rows in Hugging Face order (llama.cpp permutes only llama's). */
    int qwen3 = strcmp(an, "qwen3") == 0;
    if (strcmp(an, "llama") != 0 && !qwen3) {
        rc = dt_errf(err, DT_ENOTSUP, "%s: unsupported architecture %s "
                     "(supported GGUF architectures: llama, qwen3)", path, an);
        goto out;
    }
    c->arch = DT_ARCH_LLAMA;
    c->qk_norm = qwen3;
    const dt_meta *tok = dt_tensorset_meta(&raw, "tokenizer.ggml.tokens");
    int vocab_def = tok && tok->type == DT_META_STR_ARR && tok->n < (1 << 30)
                        ? (int)tok->n : -1;
    int rotdim = 0;
    char k[8][64];
    static const char *const keys[8] = {"block_count", "embedding_length",
        "attention.head_count", "attention.head_count_kv",
        "attention.key_length", "rope.dimension_count", "feed_forward_length",
        "context_length"};
    for (int i = 0; i < 8; i++)
        snprintf(k[i], sizeof k[i], "%s.%s", an, keys[i]);
    if ((rc = meta_int(&raw, k[0], -1, &c->n_layer, path, err)) ||
        (rc = meta_int(&raw, k[1], -1, &c->d_model, path, err)) ||
        (rc = meta_int(&raw, k[2], -1, &c->n_head, path, err)) ||
        (rc = meta_int(&raw, k[3], c->n_head, &c->n_kv_head, path, err)) ||
        (rc = meta_int(&raw, k[4], c->n_head ? c->d_model / c->n_head : 0,
                       &c->head_dim, path, err)) ||
        (rc = meta_int(&raw, k[5], c->head_dim, &rotdim, path, err)) ||
        (rc = meta_int(&raw, k[6], -1, &c->d_ff, path, err)) ||
        (rc = meta_int(&raw, k[7], 2048, &c->max_pos, path, err)))
        goto out;
    /* The vocabulary is the token list; <arch>.vocab_size only without it. */
    char key[96];
    snprintf(key, sizeof key, "%s.vocab_size", an);
    if (vocab_def >= 0)
        c->vocab = vocab_def;
    else if ((rc = meta_int(&raw, key, -1, &c->vocab, path, err)))
        goto out;
    if (rotdim != c->head_dim) {
        rc = dt_errf(err, DT_ENOTSUP, "%s: partial rotary embeddings are not "
                     "supported", path);
        goto out;
    }
    snprintf(key, sizeof key, "%s.rope.scaling.type", an);
    const dt_meta *rs = dt_tensorset_meta(&raw, key);
    if (rs && !(rs->type == DT_META_STR && strcmp(rs->s, "none") == 0)) {
        rc = dt_errf(err, DT_ENOTSUP, "%s: rope scaling is not supported",
                     path);
        goto out;
    }
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", an);
    c->norm_eps = meta_float(&raw, key, 1e-5f);
    snprintf(key, sizeof key, "%s.rope.freq_base", an);
    c->rope_theta = meta_float(&raw, key, 10000.0f);
    c->tied = dt_tensorset_find(&raw, "output.weight") == NULL;
    c->attn_bias = dt_tensorset_find(&raw, "blk.0.attn_q.bias") != NULL;
    c->o_bias = dt_tensorset_find(&raw, "blk.0.attn_output.bias") != NULL;
    c->mlp_bias = dt_tensorset_find(&raw, "blk.0.ffn_gate.bias") != NULL;
    if ((rc = check_config(path, c, err)))
        goto out;
    if ((rc = build_spec(c, &L))) {
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < raw.n; i++) {
        char cn[128];
        int qk;
        if (!gguf_canon_name(raw.t[i].name, cn, sizeof cn, &qk)) {
            rc = dt_errf(err, DT_ENOTSUP, "%s: unexpected tensor %s", path,
                         raw.t[i].name);
            goto out;
        }
        if ((rc = spec_match(path, &L, cn, raw.t[i].name, i, err)))
            goto out;
        /* llama.cpp permutes Q/K biases like the weight rows, and
         * transformers un-permutes every ".attn_q."/".attn_k." tensor;
         * a bias is a 1-column matrix here. */
        if (qk && !qwen3)
            spec_find(&L, cn)->perm_heads = qk == 1 ? c->n_head : c->n_kv_head;
    }
    /* Dequantized values are exact in F32 and would round in BF16, and the
     * largest model this engine trains fits comfortably: export GGUF inputs
     * as F32. */
    rc = canon_finish(path, &raw, &L, w, err);
    w->dtype = DT_F32;
    /* Keep the metadata (tokenizer, bos/eos, chat template) for export. */
    w->ts.meta = raw.meta;
    w->ts.nmeta = raw.nmeta;
    w->ts.capmeta = raw.capmeta;
    raw.meta = NULL;
    raw.nmeta = raw.capmeta = 0;
    snprintf(w->prefix, sizeof w->prefix, "model.");
    w->from_gguf = 1;
out:
    free(L.s);
    dt_tensorset_free(&raw);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                             */

static int is_gguf_path(const char *path)
{
    if (ends_with(path, ".gguf"))
        return 1;
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    int ok = f && fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
    if (f)
        fclose(f);
    return ok;
}

int dt_weights_open(const char *path, dt_weights *w, char *err)
{
    memset(w, 0, sizeof *w);
    dt_tensorset_init(&w->ts);
    struct stat st;
    if (stat(path, &st) != 0)
        return dt_errf(err, DT_EIO, "%s: no such file or directory", path);
    if (strlen(path) >= sizeof w->src_dir)
        return dt_errf(err, DT_EINVAL, "%s: path too long", path);
    snprintf(w->src_dir, sizeof w->src_dir, "%s", path);
    int rc;
    if (S_ISDIR(st.st_mode)) {
        rc = load_hf(path, w, err);
    } else if (is_gguf_path(path)) {
        rc = load_gguf(path, w, err);
    } else {
        rc = dt_errf(err, DT_EINVAL, "%s: neither a model directory nor a "
                     ".gguf file", path);
    }
    if (rc)
        dt_weights_free(w);
    return rc;
}

/* The fp32 bytes of w's tensors held on the host now, plus `extra` (a
 * conversion in flight), into the high-water mark. */
static void host_note(dt_weights *w, int64_t extra)
{
    int64_t now = extra;
    for (int i = 0; i < w->ts.n; i++)
        if (w->ts.t[i].data)
            now += w->ts.t[i].numel * (int64_t)sizeof(float);
    if (now > w->host_peak)
        w->host_peak = now;
}

/* A new buffer with t's canonical fp32 values, converted from the file. */
static float *convert_new(dt_tensor *t, char *err)
{
    float *h = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (!h) {
        dt_errf(err, DT_ENOMEM, "out of host memory converting %s (%lld "
                "bytes)", t->name, (long long)t->numel * 4);
        return NULL;
    }
    if (dt_tensor_convert(t, h, err)) {
        free(h);
        return NULL;
    }
    return h;
}

float *dt_weights_data(dt_weights *w, dt_tensor *t, char *err)
{
    if (t->data)
        return t->data;
    if (!t->raw) {
        dt_errf(err, DT_EINVAL, "tensor %s: its host data was released",
                t->name);
        return NULL;
    }
    host_note(w, t->numel * (int64_t)sizeof(float));
    t->data = convert_new(t, err);
    return t->data;
}

float *dt_weights_upload_begin(dt_weights *w, dt_tensor *t, char *err)
{
    if (t->data || !w->release_on_upload)
        return dt_weights_data(w, t, err);
    if (!t->raw) {
        dt_errf(err, DT_EINVAL, "tensor %s: its host data was released",
                t->name);
        return NULL;
    }
    host_note(w, t->numel * (int64_t)sizeof(float));
    float *h = convert_new(t, err);
    dt_tensor_drop_pages(t); /* read once: out of the resident set */
    return h;
}

void dt_weights_upload_end(dt_weights *w, dt_tensor *t, float *h)
{
    if (!w->release_on_upload)
        return;
    if (h == t->data)
        t->data = NULL;
    free(h);
}

int64_t dt_weights_host_peak(const dt_weights *w)
{
    return w->host_peak;
}

int dt_weights_load(const char *path, dt_weights *w, char *err)
{
    int rc = dt_weights_open(path, w, err);
    for (int i = 0; !rc && i < w->ts.n; i++)
        if (!dt_weights_data(w, &w->ts.t[i], err))
            rc = DT_ENOMEM;
    if (rc) {
        dt_weights_free(w);
        return rc;
    }
    dt_tensorset_drop_sources(&w->ts); /* all in memory: the file is done */
    return DT_OK;
}

void dt_weights_free(dt_weights *w)
{
    if (!w)
        return;
    dt_tensorset_free(&w->ts);
    free(w->config_json);
    memset(w, 0, sizeof *w);
}

dt_tokenizer *dt_model_tokenizer(const char *path, char *err)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        dt_errf(err, DT_EIO, "%s: no such file or directory", path);
        return NULL;
    }
    if (S_ISDIR(st.st_mode))
        return dt_tokenizer_load_dir(path, err);
    dt_tensorset ts;
    dt_tensorset_init(&ts);
    if (dt_gguf_load_meta(path, &ts, err) != DT_OK)
        return NULL;
    dt_tokenizer *tok = dt_tokenizer_from_gguf(&ts, err);
    dt_tensorset_free(&ts);
    return tok;
}
