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

/* ---- a GGUF file's metadata (keys and scalar values only) ---------------- */

typedef struct ai_gg {
    FILE *f;
    int bad;
} ai_gg;

static uint64_t ai_u(ai_gg *g, int bytes)
{
    unsigned char b[8];
    uint64_t v = 0;
    if (g->bad || fread(b, 1, (size_t)bytes, g->f) != (size_t)bytes) {
        g->bad = 1;
        return 0;
    }
    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

/* A string into buf (cut to n-1 bytes, the rest skipped); *len its length. */
static void ai_str(ai_gg *g, char *buf, size_t n, uint64_t *len)
{
    uint64_t l = ai_u(g, 8);
    if (len) *len = l;
    if (g->bad || l > (1ull << 30)) {
        g->bad = 1;
        return;
    }
    size_t take = l < n - 1 ? (size_t)l : n - 1;
    if (fread(buf, 1, take, g->f) != take || fseek(g->f, (long)(l - take), SEEK_CUR))
        g->bad = 1;
    buf[take] = 0;
}

static int ai_size(uint32_t t)
{
    static const int sz[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < 13 ? sz[t] : -1;
}

static int read_gguf(const char *path, dt_arch_info *a, char *err)
{
    ai_gg g = {fopen(path, "rb"), 0};
    if (!g.f)
        return dt_errf(err, DT_EIO, "%s: %s", path, strerror(errno));
    char magic[4];
    if (fread(magic, 1, 4, g.f) != 4 || memcmp(magic, "GGUF", 4)) {
        fclose(g.f);
        return dt_errf(err, DT_EFORMAT, "%s: not a GGUF file", path);
    }
    uint32_t ver = (uint32_t)ai_u(&g, 4);
    ai_u(&g, 8); /* tensor count */
    uint64_t nkv = ai_u(&g, 8);
    if (ver < 2) g.bad = 1;
    for (uint64_t i = 0; i < nkv && !g.bad; i++) {
        char key[160], tmp[8];
        ai_str(&g, key, sizeof key, NULL);
        uint32_t t = (uint32_t)ai_u(&g, 4);
        if (t == 8) {
            uint64_t len = 0;
            if (!strcmp(key, "general.architecture")) {
                ai_str(&g, a->family, sizeof a->family, NULL);
            } else {
                ai_str(&g, tmp, sizeof tmp, &len);
                if (!strcmp(key, "tokenizer.chat_template") && len > 0)
                    a->chat_template = 1;
            }
        } else if (t == 9) {
            uint32_t et = (uint32_t)ai_u(&g, 4);
            uint64_t n = ai_u(&g, 8);
            if (et == 8) {
                for (uint64_t k = 0; k < n && !g.bad; k++) {
                    uint64_t l = ai_u(&g, 8);
                    if (l > (1u << 24) || fseek(g.f, (long)l, SEEK_CUR)) g.bad = 1;
                }
            } else if (ai_size(et) > 0 && n < (1ull << 40)) {
                if (fseek(g.f, (long)(n * (uint64_t)ai_size(et)), SEEK_CUR)) g.bad = 1;
            } else {
                g.bad = 1;
            }
        } else if (ai_size(t) > 0) {
            uint64_t v = ai_u(&g, ai_size(t));
            size_t al = strlen(a->family);
            /* general.architecture comes first in files llama.cpp writes */
            if (al && !strncmp(key, a->family, al) && !strcmp(key + al, ".context_length") &&
                (t <= 5 || t == 10 || t == 11) && (long long)v > 0)
                a->context_length = (long long)v;
        } else {
            g.bad = 1;
        }
    }
    fclose(g.f);
    if (g.bad)
        return dt_errf(err, DT_EFORMAT, "%s: bad GGUF metadata", path);
    return 0;
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
