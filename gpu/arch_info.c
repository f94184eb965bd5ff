/* arch_info.c: what a user sees of a base model (engine_api.h): its family,
 * context length and whether it ships a chat template, read from a Hugging
 * Face directory's config.json and tokenizer_config.json (or
 * chat_template.jinja) or from a .gguf file's metadata, without loading
 * weights or the tokenizer, so the server (which links no model code) can
 * call it. */
#include "engine_api.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "base/dt.h"
#include "tensorfile.h"

static long long pos_int(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? json_integer_value(v) : 0;
}

static int read_dir(const char *dir, dt_arch_info *a, char *err)
{
    char path[4200];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return dt_errf(err, DT_EINVAL, "%s: path too long", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        return dt_errf(err, DT_EFORMAT, "%s: %s", path, je.text);
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    snprintf(a->family, sizeof a->family, "%s", mt ? mt : "");
    const char *keys[] = {"max_position_embeddings", "n_positions", "n_ctx", NULL};
    for (int i = 0; keys[i] && !a->context_length; i++)
        a->context_length = pos_int(root, keys[i]);
    json_decref(root);
    /* transformers prefers chat_template.jinja to tokenizer_config.json's
     * "chat_template" (a string, or a list of named templates) */
    struct stat st;
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    if (!stat(path, &st) && S_ISREG(st.st_mode) && st.st_size > 0) {
        a->chat_template = 1;
        return 0;
    }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    root = json_load_file(path, 0, &je);
    json_t *ct = json_object_get(root, "chat_template");
    a->chat_template = (json_is_string(ct) && json_string_length(ct) > 0) ||
                       (json_is_array(ct) && json_array_size(ct) > 0);
    json_decref(root);
    return 0;
}

/* ---- a GGUF file's metadata (dt_gguf_scan, gpu/gguf.c) ------------------- */

static void gguf_kv(void *ud, const dt_gguf_kv *kv)
{
    dt_arch_info *a = ud;
    size_t al = strlen(a->family);
    if (kv->type == DT_META_STR && !strcmp(kv->key, "general.architecture")) {
        int n = kv->len < sizeof a->family ? (int)kv->len : (int)sizeof a->family - 1;
        snprintf(a->family, sizeof a->family, "%.*s", n, kv->s);
    } else if (kv->type == DT_META_STR && !strcmp(kv->key, "tokenizer.chat_template")) {
        a->chat_template = kv->len > 0;
    } else if (kv->type == DT_META_INT && kv->i > 0 && al &&
               !strncmp(kv->key, a->family, al) &&
               !strcmp(kv->key + al, ".context_length")) {
        /* general.architecture comes first in files llama.cpp writes */
        a->context_length = kv->i;
    }
}

static int read_gguf(const char *path, dt_arch_info *a, char *err)
{
    return dt_gguf_scan(path, gguf_kv, NULL, a, err);
}

int dt_arch_info_read(const char *path, dt_arch_info *a, char *err)
{
    struct stat st;
    memset(a, 0, sizeof *a);
    if (stat(path, &st))
        return dt_errf(err, DT_EIO, "%s: %s", path, strerror(errno));
    int rc = S_ISDIR(st.st_mode) ? read_dir(path, a, err) : read_gguf(path, a, err);
    if (rc)
        memset(a, 0, sizeof *a);
    return rc;
}
