/* export.c: the merged model as a Hugging Face directory, and PEFT LoRA
 * adapters (write and read back).
 *
 * Export reverses modelio.c's canonicalization: the input's prefix comes
 * back, GPT-2 Conv1D weights go back to (in, out), a tied lm_head is left
 * out, and tensors are written in the input's dtype. */
#include "export.h"
#include "base/dt.h"
#include "base/file.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int is_conv1d(const dt_weights *w, const char *name)
{
    return w->cfg.arch == DT_ARCH_GPT2 &&
           (ends_with(name, ".attn.c_attn.weight") ||
            ends_with(name, ".attn.c_proj.weight") ||
            ends_with(name, ".mlp.c_fc.weight") ||
            ends_with(name, ".mlp.c_proj.weight"));
}

/* Writes a JSON value as a file (2-space indent, keys in insertion order). */
static int write_json(const char *path, json_t *j, char *err)
{
    char *txt = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                  JSON_REAL_PRECISION(9));
    if (!txt)
        return dt_errf(err, DT_ENOMEM, "%s: cannot encode JSON", path);
    size_t n = strlen(txt);
    char *buf = malloc(n + 2);
    if (!buf) {
        free(txt);
        return dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
    }
    memcpy(buf, txt, n);
    buf[n] = '\n';
    free(txt);
    int rc = dt_write_file_atomic(path, buf, n + 1, err);
    free(buf);
    return rc;
}

/* The shortest decimal that reads back as the same float, as a JSON real
 * (so 1e-5f is written 1e-05, not 9.99999975e-06). */
static json_t *json_float(float f)
{
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if (strtof(buf, NULL) == f)
            break;
    }
    return json_real(strtod(buf, NULL));
}

static const char *meta_token(const dt_weights *w, const char *idkey,
                              int64_t *id)
{
    const dt_meta *m = dt_tensorset_meta(&w->ts, idkey);
    const dt_meta *toks = dt_tensorset_meta(&w->ts, "tokenizer.ggml.tokens");
    *id = -1;
    if (!m || m->type != DT_META_INT)
        return NULL;
    *id = m->i;
    if (!toks || toks->type != DT_META_STR_ARR || m->i < 0 || m->i >= toks->n)
        return NULL;
    return toks->sarr[m->i];
}

static json_t *id_or_null(int64_t id)
{
    return id >= 0 ? json_integer(id) : json_null();
}

/* config.json for a GGUF input in the export dtype: a LlamaForCausalLM, or a
 * Qwen3ForCausalLM for a qwen3 GGUF (q_norm/k_norm). */
static int write_llama_config(const dt_weights *w, const dt_tokenizer *tok,
                              dt_dtype dtype, const char *path, char *err)
{
    const dt_config *c = &w->cfg;
    int64_t bos, eos;
    meta_token(w, "tokenizer.ggml.bos_token_id", &bos);
    meta_token(w, "tokenizer.ggml.eos_token_id", &eos);
    if (tok && dt_tokenizer_bos(tok) >= 0)
        bos = dt_tokenizer_bos(tok);
    if (tok && dt_tokenizer_eos(tok) >= 0)
        eos = dt_tokenizer_eos(tok);
    json_t *j = json_object();
    json_object_set_new(j, "architectures", json_pack("[s]", c->qk_norm
                                                      ? "Qwen3ForCausalLM"
                                                      : "LlamaForCausalLM"));
    json_object_set_new(j, "model_type",
                        json_string(c->qk_norm ? "qwen3" : "llama"));
    if (c->qk_norm)
        json_object_set_new(j, "use_sliding_window", json_false());
    json_object_set_new(j, "hidden_size", json_integer(c->d_model));
    json_object_set_new(j, "intermediate_size", json_integer(c->d_ff));
    json_object_set_new(j, "num_hidden_layers", json_integer(c->n_layer));
    json_object_set_new(j, "num_attention_heads", json_integer(c->n_head));
    json_object_set_new(j, "num_key_value_heads", json_integer(c->n_kv_head));
    json_object_set_new(j, "head_dim", json_integer(c->head_dim));
    json_object_set_new(j, "max_position_embeddings", json_integer(c->max_pos));
    json_object_set_new(j, "rms_norm_eps", json_float(c->norm_eps));
    json_object_set_new(j, "rope_theta", json_float(c->rope_theta));
    json_object_set_new(j, "rope_scaling", json_null());
    json_object_set_new(j, "hidden_act", json_string("silu"));
    json_object_set_new(j, "attention_bias", json_boolean(c->attn_bias));
    json_object_set_new(j, "mlp_bias", json_boolean(c->mlp_bias));
    json_object_set_new(j, "vocab_size", json_integer(c->vocab));
    json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tied));
    json_object_set_new(j, "bos_token_id", id_or_null(bos));
    json_object_set_new(j, "eos_token_id", id_or_null(eos));
    json_object_set_new(j, "torch_dtype",
                        json_string(dt_export_dtype_name(dtype)));
    int rc = write_json(path, j, err);
    json_decref(j);
    return rc;
}

/* tokenizer.json, tokenizer_config.json and generation_config.json for a
 * GGUF input (token strings come from the GGUF vocabulary). */
static int write_gguf_tokenizer(const dt_weights *w, const dt_tokenizer *tok,
                                const char *outdir, char *err)
{
    char path[4096];
    if (!tok)
        return dt_errf(err, DT_EINVAL, "%s: exporting a GGUF model needs its "
                       "tokenizer", outdir);
    snprintf(path, sizeof path, "%s/tokenizer.json", outdir);
    int rc = dt_tokenizer_write_json(tok, path, err);
    if (rc)
        return rc;
    int64_t bos, eos, unk, pad;
    const char *sb = meta_token(w, "tokenizer.ggml.bos_token_id", &bos);
    const char *se = meta_token(w, "tokenizer.ggml.eos_token_id", &eos);
    const char *su = meta_token(w, "tokenizer.ggml.unknown_token_id", &unk);
    const char *sp = meta_token(w, "tokenizer.ggml.padding_token_id", &pad);
    const char *tmpl = dt_tokenizer_chat_template(tok);
    const dt_meta *ct = dt_tensorset_meta(&w->ts, "tokenizer.chat_template");
    if (!tmpl && ct && ct->type == DT_META_STR)
        tmpl = ct->s;
    const dt_meta *ab = dt_tensorset_meta(&w->ts,
                                          "tokenizer.ggml.add_bos_token");
    json_t *j = json_object();
    json_object_set_new(j, "tokenizer_class",
                        json_string("PreTrainedTokenizerFast"));
    json_object_set_new(j, "bos_token", sb ? json_string(sb) : json_null());
    json_object_set_new(j, "eos_token", se ? json_string(se) : json_null());
    json_object_set_new(j, "unk_token", su ? json_string(su) : json_null());
    json_object_set_new(j, "pad_token", sp ? json_string(sp) : json_null());
    json_object_set_new(j, "add_bos_token",
                        json_boolean(ab && ab->type == DT_META_BOOL && ab->i));
    json_object_set_new(j, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(j, "model_max_length", json_integer(w->cfg.max_pos));
    if (tmpl)
        json_object_set_new(j, "chat_template", json_string(tmpl));
    snprintf(path, sizeof path, "%s/tokenizer_config.json", outdir);
    rc = write_json(path, j, err);
    json_decref(j);
    if (rc)
        return rc;
    j = json_object();
    json_object_set_new(j, "bos_token_id", id_or_null(bos));
    json_object_set_new(j, "eos_token_id", id_or_null(eos));
    if (pad >= 0)
        json_object_set_new(j, "pad_token_id", json_integer(pad));
    snprintf(path, sizeof path, "%s/generation_config.json", outdir);
    rc = write_json(path, j, err);
    json_decref(j);
    return rc;
}

/* Copies the tokenizer files the input directory has; *n_copied counts
 * them. */
static int copy_tokenizer_files(const char *src, const char *dst,
                                int *n_copied, char *err)
{
    static const char *const files[] = {
        "tokenizer.json", "tokenizer_config.json", "vocab.json",
        "merges.txt", "special_tokens_map.json", "generation_config.json",
        "added_tokens.json", "chat_template.jinja", NULL,
    };
    *n_copied = 0;
    for (int i = 0; files[i]; i++) {
        char a[4096], b[4096];
        snprintf(a, sizeof a, "%s/%s", src, files[i]);
        snprintf(b, sizeof b, "%s/%s", dst, files[i]);
        struct stat st;
        if (stat(a, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        char *buf;
        size_t len;
        int rc = dt_read_file(a, &buf, &len, err);
        if (rc)
            return rc;
        rc = dt_write_file_atomic(b, buf, len, err);
        free(buf);
        if (rc)
            return rc;
        (*n_copied)++;
    }
    return DT_OK;
}

void dt_export_opts_default(dt_export_opts *o)
{
    o->dtype = -1;
    o->shard_size = DT_EXPORT_SHARD_DEFAULT;
}

const char *dt_export_dtype_name(dt_dtype d)
{
    return d == DT_F16 ? "float16" : d == DT_BF16 ? "bfloat16" : "float32";
}

dt_dtype dt_export_dtype_default(const dt_weights *w)
{
    return w->from_gguf ? DT_BF16 : w->dtype;
}

int dt_export_dtype_parse(const char *s, dt_dtype *d, const char *what,
                          char *err)
{
    static const struct { const char *name; dt_dtype d; } names[] = {
        {"float32", DT_F32}, {"fp32", DT_F32}, {"f32", DT_F32},
        {"bfloat16", DT_BF16}, {"bf16", DT_BF16},
        {"float16", DT_F16}, {"fp16", DT_F16}, {"f16", DT_F16},
    };
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) {
            *d = names[i].d;
            return DT_OK;
        }
    return dt_errf(err, DT_EINVAL, "%s must be float32, bfloat16 or float16, "
                   "got \"%s\"", what, s ? s : "");
}

/* The input's config.json with torch_dtype (and dtype, newer transformers'
 * name, when the input has it) set to the export's dtype; byte for byte the
 * input's when it already says so. */
static int write_hf_config(const char *config_json, dt_dtype dtype,
                           const char *path, char *err)
{
    const char *name = dt_export_dtype_name(dtype);
    json_error_t je;
    json_t *j = json_loads(config_json, 0, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        return dt_errf(err, DT_EFORMAT, "%s: config.json is not a JSON "
                       "object: %s", path, je.text);
    }
    const char *td = json_string_value(json_object_get(j, "torch_dtype"));
    json_t *dv = json_object_get(j, "dtype");
    int same = td && strcmp(td, name) == 0 &&
               (!dv || (json_is_string(dv) &&
                        strcmp(json_string_value(dv), name) == 0));
    int rc;
    if (same) {
        rc = dt_write_file_atomic(path, config_json, strlen(config_json), err);
    } else {
        json_object_set_new(j, "torch_dtype", json_string(name));
        if (dv)
            json_object_set_new(j, "dtype", json_string(name));
        rc = write_json(path, j, err);
    }
    json_decref(j);
    return rc;
}

static int64_t entry_bytes(const dt_st_entry *e)
{
    int64_t numel = 1;
    for (int d = 0; d < e->ndim; d++)
        numel *= e->shape[d];
    return numel * (e->dtype == DT_F32 ? 4 : 2);
}

int dt_export_write_sharded(const char *outdir, const dt_st_entry *e, int n,
                            long long shard_size, int *nshards, char *err)
{
    char path[4096];
    const char *meta = "{\"format\":\"pt\"}";
    if (shard_size <= 0)
        shard_size = DT_EXPORT_SHARD_DEFAULT;
    int64_t total = 0;
    for (int i = 0; i < n; i++)
        total += entry_bytes(&e[i]);
    if (nshards)
        *nshards = 1;
    if (total <= shard_size) {
        snprintf(path, sizeof path, "%s/model.safetensors", outdir);
        return dt_safetensors_write(path, e, n, meta, err);
    }
    /* first[k]: index of shard k's first tensor; first[ns] = n */
    int *first = dt_calloc((size_t)n + 2, sizeof *first);
    if (!first)
        return dt_errf(err, DT_ENOMEM, "%s: out of memory", outdir);
    int ns = 0;
    int64_t cur = 0;
    for (int i = 0; i < n; i++) {
        int64_t b = entry_bytes(&e[i]);
        if (i == 0 || (cur > 0 && cur + b > shard_size)) {
            first[ns++] = i;
            cur = 0;
        }
        cur += b;
    }
    first[ns] = n;
    json_t *idx = json_object(), *md = json_object(), *wm = json_object();
    json_object_set_new(md, "total_size", json_integer(total));
    json_object_set_new(idx, "metadata", md);
    json_object_set_new(idx, "weight_map", wm);
    int rc = DT_OK;
    for (int k = 0; k < ns && !rc; k++) {
        char file[64];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1,
                 ns);
        snprintf(path, sizeof path, "%s/%s", outdir, file);
        rc = dt_safetensors_write(path, e + first[k], first[k + 1] - first[k],
                                  meta, err);
        for (int i = first[k]; i < first[k + 1] && !rc; i++)
            json_object_set_new(wm, e[i].name, json_string(file));
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json",
                 outdir);
        rc = write_json(path, idx, err);
    }
    json_decref(idx);
    free(first);
    if (!rc && nshards)
        *nshards = ns;
    return rc;
}

int dt_export_hf(const dt_weights *w, const dt_tensorset *merged,
                 const dt_tokenizer *tok, const char *outdir, char *err)
{
    return dt_export_hf_opts(w, merged, tok, outdir, NULL, err);
}

int dt_export_hf_opts(const dt_weights *w, const dt_tensorset *merged,
                      const dt_tokenizer *tok, const char *outdir,
                      const dt_export_opts *xo, char *err)
{
    dt_export_opts dxo;
    if (!xo) {
        dt_export_opts_default(&dxo);
        xo = &dxo;
    }
    dt_dtype dtype = xo->dtype == DT_F32 || xo->dtype == DT_F16 ||
                             xo->dtype == DT_BF16
                         ? (dt_dtype)xo->dtype
                         : dt_export_dtype_default(w);
    int rc = dt_mkdirs(outdir, err);
    if (rc)
        return rc;
    int n = 0;
    dt_st_entry *e = dt_calloc((size_t)merged->n, sizeof *e);
    char **names = dt_calloc((size_t)merged->n, sizeof *names);
    float **owned = dt_calloc((size_t)merged->n, sizeof *owned);
    int64_t (*shapes)[DT_MAX_DIMS] = dt_calloc((size_t)merged->n,
                                               sizeof *shapes);
    if (!e || !names || !owned || !shapes) {
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", outdir);
        goto out;
    }
    for (int i = 0; i < merged->n; i++) {
        const dt_tensor *t = &merged->t[i];
        int is_head = strcmp(t->name, "lm_head.weight") == 0;
        if (is_head && w->cfg.tied)
            continue;
        size_t len = strlen(w->prefix) + strlen(t->name) + 1;
        names[n] = malloc(len);
        if (!names[n]) {
            rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", outdir);
            goto out;
        }
        snprintf(names[n], len, "%s%s", is_head ? "" : w->prefix, t->name);
        e[n].name = names[n];
        e[n].ndim = t->ndim;
        e[n].data = t->data;
        e[n].dtype = dtype;
        memcpy(shapes[n], t->shape, sizeof shapes[n]);
        if (is_conv1d(w, t->name) && t->ndim == 2) {
            /* canonical (out, in) -> Conv1D (in, out) */
            int64_t out = t->shape[0], in = t->shape[1];
            owned[n] = malloc((size_t)t->numel * sizeof(float));
            if (!owned[n]) {
                rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", outdir);
                goto out;
            }
#pragma omp parallel for if (t->numel > (1 << 16)) schedule(static)
            for (int64_t k = 0; k < in; k++)
                for (int64_t o = 0; o < out; o++)
                    owned[n][k * out + o] = t->data[o * in + k];
            shapes[n][0] = in;
            shapes[n][1] = out;
            e[n].data = owned[n];
        }
        e[n].shape = shapes[n];
        n++;
    }
    char path[4096];
    if ((rc = dt_export_write_sharded(outdir, e, n, xo->shard_size, NULL,
                                      err)))
        goto out;
    snprintf(path, sizeof path, "%s/config.json", outdir);
    if (w->config_json)
        rc = write_hf_config(w->config_json, dtype, path, err);
    else
        rc = write_llama_config(w, tok, dtype, path, err);
    if (rc)
        goto out;
    if (w->from_gguf) {
        rc = write_gguf_tokenizer(w, tok, outdir, err);
    } else {
        int copied = 0;
        rc = copy_tokenizer_files(w->src_dir, outdir, &copied, err);
        if (!rc && copied == 0 && tok) {
            snprintf(path, sizeof path, "%s/tokenizer.json", outdir);
            rc = dt_tokenizer_write_json(tok, path, err);
        }
    }
out:
    for (int i = 0; i < merged->n && names; i++) {
        free(names[i]);
        if (owned)
            free(owned[i]);
    }
    free(names);
    free(owned);
    free(shapes);
    free(e);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* PEFT adapters                                                            */

/* The module prefix in the model's own structure (PEFT names modules from
 * the PyTorch model, not from the checkpoint's keys). */
static const char *arch_prefix(const dt_weights *w)
{
    return w->cfg.arch == DT_ARCH_GPT2 ? "transformer." : "model.";
}

/* PEFT target_modules entry for a module: its last component, except GPT-2's
 * c_proj which exists in both attn and mlp. */
static void target_name(const char *module, char *out, size_t cap)
{
    const char *last = strrchr(module, '.');
    last = last ? last + 1 : module;
    if (strcmp(last, "c_proj") == 0 && last - module >= 5) {
        const char *p = last - 2;
        while (p > module && *p != '.')
            p--;
        snprintf(out, cap, "%s", *p == '.' ? p + 1 : p);
    } else {
        snprintf(out, cap, "%s", last);
    }
}

int dt_export_peft(const dt_weights *w, const dt_adapter_entry *e, int n,
                   float alpha, const char *base_model_name,
                   const char *outdir, char *err)
{
    if (n <= 0)
        return dt_errf(err, DT_EINVAL, "%s: no adapters to export", outdir);
    int rc = dt_mkdirs(outdir, err);
    if (rc)
        return rc;
    int *group = dt_calloc((size_t)n, sizeof(int)); /* first entry of group */
    dt_st_entry *st = dt_calloc((size_t)n * 2, sizeof *st);
    char **names = dt_calloc((size_t)n * 2, sizeof *names);
    float **bufs = dt_calloc((size_t)n * 2, sizeof *bufs);
    int64_t (*shapes)[2] = dt_calloc((size_t)n * 2, sizeof *shapes);
    json_t *targets = json_array(), *rpat = json_object(),
           *apat = json_object(), *cfg = NULL;
    int ns = 0, cfg_rank = 0;
    double cfg_alpha = 0;
    if (!group || !st || !names || !bufs || !shapes) {
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", outdir);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        group[i] = i;
        for (int k = 0; k < i; k++)
            if (strcmp(e[k].wname, e[i].wname) == 0) {
                group[i] = group[k];
                break;
            }
        if (!ends_with(e[i].wname, ".weight") || e[i].rank <= 0 ||
            e[i].row_off < 0 || e[i].rows <= 0 ||
            e[i].row_off + e[i].rows > e[i].out ||
            e[i].out != e[group[i]].out || e[i].in != e[group[i]].in) {
            rc = dt_errf(err, DT_EINVAL, "%s: bad adapter entry for %s",
                         outdir, e[i].wname);
            goto out;
        }
    }
    for (int g = 0; g < n; g++) {
        if (group[g] != g)
            continue;
        int R = 0, out = e[g].out, in = e[g].in, roff = 0;
        for (int i = g; i < n; i++)
            if (group[i] == g)
                R += e[i].rank;
        float *A = dt_calloc((size_t)R * (size_t)in, sizeof(float));
        float *B = dt_calloc((size_t)out * (size_t)R, sizeof(float));
        bufs[ns] = A;
        bufs[ns + 1] = B;
        if (!A || !B) {
            rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", outdir);
            goto out;
        }
        /* Scaling alpha_g / R must equal alpha / r_i for every slice: with
         * alpha_g = alpha * R / r_g, slice i's B block is scaled r_g / r_i
         * (1 when all ranks are equal, the usual case). */
        double alpha_g = (double)alpha * R / e[g].rank;
        for (int i = g; i < n; i++) {
            if (group[i] != g)
                continue;
            int r = e[i].rank;
            float f = (float)e[g].rank / (float)r;
            memcpy(A + (size_t)roff * in, e[i].A, (size_t)r * in * sizeof(float));
            for (int row = 0; row < e[i].rows; row++)
                for (int k = 0; k < r; k++)
                    B[(size_t)(e[i].row_off + row) * R + roff + k] =
                        e[i].B[(size_t)row * r + k] * f;
            roff += r;
        }
        char module[256], key[320], tname[256];
        size_t ml = strlen(e[g].wname) - strlen(".weight");
        if (ml >= sizeof module)
            ml = sizeof module - 1;
        memcpy(module, e[g].wname, ml);
        module[ml] = 0;
        for (int ab = 0; ab < 2; ab++) {
            snprintf(key, sizeof key, "base_model.model.%s%s.lora_%c.weight",
                     arch_prefix(w), module, ab ? 'B' : 'A');
            names[ns] = strdup(key);
            if (!names[ns]) {
                rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", outdir);
                goto out;
            }
            shapes[ns][0] = ab ? out : R;
            shapes[ns][1] = ab ? R : in;
            st[ns] = (dt_st_entry){names[ns], 2, shapes[ns], bufs[ns], DT_F32};
            ns++;
        }
        if (cfg_rank == 0) {
            cfg_rank = R;
            cfg_alpha = alpha_g;
        } else if (R != cfg_rank || alpha_g != cfg_alpha) {
            json_object_set_new(rpat, module, json_integer(R));
            json_object_set_new(apat, module, json_real(alpha_g));
        }
        target_name(module, tname, sizeof tname);
        int seen = 0;
        size_t ti;
        json_t *tv;
        json_array_foreach(targets, ti, tv)
            seen |= strcmp(json_string_value(tv), tname) == 0;
        if (!seen)
            json_array_append_new(targets, json_string(tname));
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", outdir);
    if ((rc = dt_safetensors_write(path, st, ns, "{\"format\":\"pt\"}", err)))
        goto out;
    cfg = json_object();
    json_object_set_new(cfg, "peft_type", json_string("LORA"));
    json_object_set_new(cfg, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(cfg, "base_model_name_or_path",
                        base_model_name ? json_string(base_model_name)
                                        : json_null());
    json_object_set_new(cfg, "r", json_integer(cfg_rank));
    json_object_set_new(cfg, "lora_alpha",
                        cfg_alpha == (double)(long long)cfg_alpha
                            ? json_integer((json_int_t)cfg_alpha)
                            : json_real(cfg_alpha));
    json_object_set(cfg, "target_modules", targets);
    json_object_set_new(cfg, "lora_dropout", json_real(0.0));
    json_object_set_new(cfg, "bias", json_string("none"));
    json_object_set_new(cfg, "fan_in_fan_out",
                        json_boolean(w->cfg.arch == DT_ARCH_GPT2));
    json_object_set_new(cfg, "inference_mode", json_true());
    json_object_set_new(cfg, "init_lora_weights", json_true());
    json_object_set_new(cfg, "use_rslora", json_false());
    json_object_set_new(cfg, "use_dora", json_false());
    json_object_set_new(cfg, "modules_to_save", json_null());
    json_object_set(cfg, "rank_pattern", rpat);
    json_object_set(cfg, "alpha_pattern", apat);
    snprintf(path, sizeof path, "%s/adapter_config.json", outdir);
    rc = write_json(path, cfg, err);
out:
    json_decref(cfg);
    json_decref(targets);
    json_decref(rpat);
    json_decref(apat);
    for (int i = 0; i < 2 * n && names; i++) {
        free(names[i]);
        if (bufs)
            free(bufs[i]);
    }
    free(names);
    free(bufs);
    free(shapes);
    free(st);
    free(group);
    return rc;
}

int dt_export_peft_delta(const dt_weights *w, const dt_adapter_entry *e,
                         const float *const *AK, const float *const *BK, int n,
                         float alpha, float lambda, const char *base_model_name,
                         const char *outdir, char *err)
{
    if (n <= 0)
        return dt_errf(err, DT_EINVAL, "%s: no adapters to export", outdir);
    dt_adapter_entry *e2 = dt_calloc((size_t)n, sizeof *e2);
    float **bufs = dt_calloc((size_t)n * 2, sizeof *bufs);
    char base[1200];
    int rc = 0;
    if (!e2 || !bufs) {
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", outdir);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        int r = e[i].rank, R = 2 * r, in = e[i].in, rows = e[i].rows;
        /* W never moved: K = T, and (1+λ)·B·A − λ·B·A = B·A */
        const float *ak = AK && AK[i] ? AK[i] : e[i].A;
        const float *bk = BK && BK[i] ? BK[i] : e[i].B;
        float *A = bufs[2 * i] = dt_calloc((size_t)R * in, sizeof(float));
        float *B = bufs[2 * i + 1] = dt_calloc((size_t)rows * R, sizeof(float));
        if (!A || !B) {
            rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", outdir);
            goto out;
        }
        memcpy(A, e[i].A, (size_t)r * in * sizeof(float));
        memcpy(A + (size_t)r * in, ak, (size_t)r * in * sizeof(float));
        for (int row = 0; row < rows; row++)
            for (int k = 0; k < r; k++) {
                B[(size_t)row * R + k] = (1.0f + lambda) * e[i].B[(size_t)row * r + k];
                B[(size_t)row * R + r + k] = -lambda * bk[(size_t)row * r + k];
            }
        e2[i] = e[i];
        e2[i].rank = R;
        e2[i].A = A;
        e2[i].B = B;
    }
    const char *bn = base_model_name ? base_model_name : "";
    if (w->from_gguf)
        snprintf(base, sizeof base, "%s (dequantized to float32)", bn);
    else
        snprintf(base, sizeof base, "%s", bn);
    rc = dt_export_peft(w, e2, n, 2.0f * alpha,
                        base_model_name || w->from_gguf ? base : NULL, outdir, err);
    if (!rc) {
        char path[4096];
        snprintf(path, sizeof path, "%s/README.md", outdir);
        FILE *f = fopen(path, "w");
        if (!f)
            rc = dt_errf(err, DT_EIO, "%s: %s", path, strerror(errno));
        else {
            fprintf(f, "# Delta-LoRA adapter\n\n"
                    "This PEFT LoRA adapter reproduces the Delta-LoRA fine-tune exactly: "
                    "merged = W_0 + s(1+lambda)*B_T*A_T - s*lambda*B_K*A_K, written with "
                    "r' = 2r, A' = [A_T ; A_K], B' = [(1+lambda)*B_T , -lambda*B_K], "
                    "lora_alpha' = 2*alpha (lambda = %g).\n\n", (double)lambda);
            if (w->from_gguf)
                fprintf(f, "It applies to the base as the engine read it: the GGUF file "
                        "%s dequantized to float32 (not the quantized weights).\n", bn);
            else
                fprintf(f, "It applies to the base %s as stored (W_0).\n", bn);
            if (fclose(f))
                rc = dt_errf(err, DT_EIO, "%s: %s", path, strerror(errno));
        }
    }
out:
    for (int i = 0; bufs && i < 2 * n; i++)
        free(bufs[i]);
    free(bufs);
    free(e2);
    return rc;
}

/* Maps a PEFT key to "<canonical module>.lora_A"/".lora_B" and checks the
 * module is a 2-D weight of the model; *isB says which factor. */
static int peft_key(const dt_weights *w, const char *dir, const char *key,
                    char *out, size_t cap, int *isB, const dt_tensor **W,
                    char *err)
{
    const char *p = key, *pre = "base_model.model.";
    if (strncmp(p, pre, strlen(pre)) == 0)
        p += strlen(pre);
    const char *ap = arch_prefix(w);
    if (strncmp(p, ap, strlen(ap)) == 0)
        p += strlen(ap);
    const char *suf = NULL;
    if (ends_with(p, ".lora_A.weight"))
        suf = ".lora_A.weight", *isB = 0;
    else if (ends_with(p, ".lora_B.weight"))
        suf = ".lora_B.weight", *isB = 1;
    else
        return dt_errf(err, DT_ENOTSUP, "%s: unsupported adapter tensor %s",
                       dir, key);
    int ml = (int)(strlen(p) - strlen(suf));
    char wname[320];
    snprintf(wname, sizeof wname, "%.*s.weight", ml, p);
    *W = dt_tensorset_find((dt_tensorset *)&w->ts, wname);
    if (!*W || (*W)->ndim != 2)
        return dt_errf(err, DT_EFORMAT, "%s: tensor %s: the model has no "
                       "linear %s", dir, key, wname);
    snprintf(out, cap, "%.*s.lora_%c", ml, p, *isB ? 'B' : 'A');
    return DT_OK;
}

int dt_peft_load(const char *dir, const dt_weights *w, dt_peft_adapter *ad,
                 char *err)
{
    memset(ad, 0, sizeof *ad);
    dt_tensorset_init(&ad->ts);
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return dt_errf(err, DT_EFORMAT, "%s: not a JSON object: %s", path,
                       je.text);
    }
    dt_tensorset raw;
    dt_tensorset_init(&raw);
    int rc = DT_OK;
    const char *pt = json_string_value(json_object_get(cfg, "peft_type"));
    json_t *jr = json_object_get(cfg, "r"), *ja = json_object_get(cfg,
                                                                   "lora_alpha");
    json_t *tm = json_object_get(cfg, "target_modules");
    if ((pt && strcmp(pt, "LORA") != 0) || json_is_true(json_object_get(
                                               cfg, "use_dora"))) {
        rc = dt_errf(err, DT_ENOTSUP, "%s: only plain LoRA adapters are "
                     "supported", path);
        goto out;
    }
    if (json_object_size(json_object_get(cfg, "rank_pattern")) ||
        json_object_size(json_object_get(cfg, "alpha_pattern"))) {
        rc = dt_errf(err, DT_ENOTSUP, "%s: rank_pattern/alpha_pattern are "
                     "not supported", path);
        goto out;
    }
    if (!json_is_integer(jr) || json_integer_value(jr) <= 0 ||
        json_integer_value(jr) > 65536 || !json_is_number(ja)) {
        rc = dt_errf(err, DT_EFORMAT, "%s: needs integer r and lora_alpha",
                     path);
        goto out;
    }
    ad->rank = (int)json_integer_value(jr);
    ad->alpha = (float)json_number_value(ja);
    if (json_is_string(tm)) {
        snprintf(ad->targets, sizeof ad->targets, "%s", json_string_value(tm));
    } else {
        size_t i;
        json_t *v;
        json_array_foreach(tm, i, v) {
            size_t k = strlen(ad->targets);
            snprintf(ad->targets + k, sizeof ad->targets - k, "%s%s",
                     k ? "," : "", json_is_string(v) ? json_string_value(v)
                                                      : "");
        }
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if ((rc = dt_safetensors_load(path, &raw, err)))
        goto out;
    for (int i = 0; i < raw.n; i++) {
        dt_tensor *t = &raw.t[i];
        char cn[320];
        int isB = 0;
        const dt_tensor *W = NULL;
        if ((rc = peft_key(w, dir, t->name, cn, sizeof cn, &isB, &W, err)))
            goto out;
        int64_t want0 = isB ? W->shape[0] : ad->rank;
        int64_t want1 = isB ? ad->rank : W->shape[1];
        if (t->ndim != 2 || t->shape[0] != want0 || t->shape[1] != want1) {
            rc = dt_errf(err, DT_EFORMAT, "%s: tensor %s: shape expected "
                         "(%lld,%lld)", path, t->name, (long long)want0,
                         (long long)want1);
            goto out;
        }
        float *data = t->data;
        t->data = NULL; /* stolen by the add, even when it fails */
        if ((rc = dt_tensorset_add(&ad->ts, cn, 2, t->shape, data, DT_F32,
                                   err)))
            goto out;
    }
    for (int i = 0; i < ad->ts.n; i++) {
        char other[320];
        snprintf(other, sizeof other, "%s", ad->ts.t[i].name);
        size_t l = strlen(other);
        other[l - 1] = other[l - 1] == 'A' ? 'B' : 'A';
        if (!dt_tensorset_find(&ad->ts, other)) {
            rc = dt_errf(err, DT_EFORMAT, "%s: %s has no matching %s", path,
                         ad->ts.t[i].name, other);
            goto out;
        }
    }
out:
    dt_tensorset_free(&raw);
    json_decref(cfg);
    if (rc)
        dt_peft_free(ad);
    return rc;
}

void dt_peft_free(dt_peft_adapter *ad)
{
    if (!ad)
        return;
    dt_tensorset_free(&ad->ts);
    memset(ad, 0, sizeof *ad);
}
