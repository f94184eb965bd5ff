/* gguf_write.c: a Llama-family or GPT-2 model as GGUF v3 (see gguf_write.h).
 *
 * The header (metadata and tensor infos) is built in memory, then written,
 * padded to the alignment, then each tensor's data is converted and written
 * one at a time (padded to the alignment), so that the file never exists in
 * memory at once. The file is written as path.tmp and renamed into place.
 *
 * The tokenizer's internals (tokenizer_impl.h) are read here to name the
 * pre-tokenizer the way llama.cpp does and to list the merges: GGUF is the
 * one writer that needs them, and the names are the inverse of what
 * tokenizer_io.c maps when it reads GGUF metadata. */
#include "gguf_write.h"
#include "base/dt.h"
#include "half.h"
#include "tokenizer_impl.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define GGUF_ALIGN 32

enum { GV_U32 = 4, GV_I32 = 5, GV_F32 = 6, GV_BOOL = 7, GV_STR = 8,
       GV_ARR = 9 };
enum { GT_F32 = 0 };

/* ---- types and quantization --------------------------------------------- */

int dt_gguf_type_parse(const char *s, dt_gguf_type *t, const char *what,
                       char *err)
{
    if (s && !strcasecmp(s, "f16"))
        *t = DT_GGUF_F16;
    else if (s && !strcasecmp(s, "q8_0"))
        *t = DT_GGUF_Q8_0;
    else if (s && !strcasecmp(s, "q4_0"))
        *t = DT_GGUF_Q4_0;
    else
        return dt_errf(err, DT_EINVAL, "%s must be f16, q8_0 or q4_0 (got "
                       "\"%.64s\")", what, s ? s : "");
    return DT_OK;
}

const char *dt_gguf_type_name(dt_gguf_type t)
{
    return t == DT_GGUF_F16 ? "f16" : t == DT_GGUF_Q8_0 ? "q8_0" : "q4_0";
}

static void put_f16(unsigned char *p, float x)
{
    uint16_t h = dt_f32_to_f16(x);
    p[0] = (unsigned char)(h & 0xff);
    p[1] = (unsigned char)(h >> 8);
}

void dt_gguf_quant_q8_0(const float *x, int64_t n, unsigned char *out)
{
    for (int64_t b = 0; b < n / 32; b++) {
        const float *v = x + b * 32;
        unsigned char *q = out + b * 34;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(v[j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(q, d);
        for (int j = 0; j < 32; j++)
            q[2 + j] = (unsigned char)(int8_t)roundf(v[j] * id);
    }
}

void dt_gguf_quant_q4_0(const float *x, int64_t n, unsigned char *out)
{
    for (int64_t b = 0; b < n / 32; b++) {
        const float *v = x + b * 32;
        unsigned char *q = out + b * 18;
        float amax = 0.0f, m = 0.0f;
        for (int j = 0; j < 32; j++)
            if (fabsf(v[j]) > amax) {
                amax = fabsf(v[j]);
                m = v[j];
            }
        float d = m / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(q, d);
        for (int j = 0; j < 16; j++) {
            int a = (int)(int8_t)(v[j] * id + 8.5f);
            int c = (int)(int8_t)(v[j + 16] * id + 8.5f);
            a = a > 15 ? 15 : a;
            c = c > 15 ? 15 : c;
            q[2 + j] = (unsigned char)(a | (c << 4));
        }
    }
}

/* Bytes of n elements of ggml type t (n a multiple of the block). */
static uint64_t type_bytes(int t, int64_t n)
{
    switch (t) {
    case GT_F32: return (uint64_t)n * 4;
    case DT_GGUF_F16: return (uint64_t)n * 2;
    case DT_GGUF_Q8_0: return (uint64_t)n / 32 * 34;
    default: return (uint64_t)n / 32 * 18;
    }
}

/* ---- a growable byte buffer ---------------------------------------------- */

typedef struct buf {
    unsigned char *p;
    size_t n, cap;
    int oom;
} buf;

static void b_put(buf *b, const void *src, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void b_u32(buf *b, uint32_t v) { b_put(b, &v, 4); }
static void b_u64(buf *b, uint64_t v) { b_put(b, &v, 8); }

static void b_str(buf *b, const char *s)
{
    size_t n = strlen(s);
    b_u64(b, n);
    b_put(b, s, n);
}

static void kv_u32(buf *b, uint64_t *nkv, const char *k, uint32_t v)
{
    b_str(b, k);
    b_u32(b, GV_U32);
    b_u32(b, v);
    (*nkv)++;
}

static void kv_f32(buf *b, uint64_t *nkv, const char *k, float v)
{
    b_str(b, k);
    b_u32(b, GV_F32);
    b_put(b, &v, 4);
    (*nkv)++;
}

static void kv_bool(buf *b, uint64_t *nkv, const char *k, int v)
{
    unsigned char c = v != 0;
    b_str(b, k);
    b_u32(b, GV_BOOL);
    b_put(b, &c, 1);
    (*nkv)++;
}

static void kv_str(buf *b, uint64_t *nkv, const char *k, const char *v)
{
    b_str(b, k);
    b_u32(b, GV_STR);
    b_str(b, v);
    (*nkv)++;
}

/* ---- the tokenizer -------------------------------------------------------- */

/* llama.cpp's name for the tokenizer's pre-tokenizer (the inverse of
 * tokenizer_io.c's digits_pre / split_pre), or NULL when it has none. */
static const char *pre_name(const dt_tokenizer *t)
{
    int regex = -1, digits = 0, bl = 0, other = 0;
    for (int i = 0; i < t->npre; i++) {
        const tok_pre *s = &t->pre[i];
        if (s->type == TP_REGEX && regex < 0 && !bl && s->behavior == TB_ISOLATED)
            regex = s->kind;
        else if (s->type == TP_DIGITS && s->flag && !digits && !bl)
            digits = 1;
        else if (s->type == TP_BYTELEVEL && !bl && !s->flag) {
            bl = 1;
            if (s->kind) {  /* ByteLevel's own regex is GPT-2's */
                if (regex >= 0)
                    other = 1;
                regex = TS_GPT2;
            }
        } else
            other = 1;
    }
    if (other || !bl || regex < 0)
        return NULL;
    int nfc = t->nnorm == 1 && t->norm[0].type == TN_NFC;
    if (t->nnorm && !nfc)
        return NULL;
    if (regex == TS_QWEN2 && !digits)
        return "qwen2"; /* llama.cpp's qwen2 pre-tokenizer applies NFC */
    if (nfc)
        return NULL;
    if (regex == TS_LLAMA3 && !digits)
        return "llama-bpe";
    if (regex == TS_GPT2)
        return digits ? "smollm" : "gpt-2";
    return NULL;
}

/* The padding token's id: the GGUF input's, or tokenizer_config.json's
 * pad_token in the input directory; -1 when none. */
static int64_t pad_id(const dt_weights *w, const dt_tokenizer *tok)
{
    if (w->from_gguf) {
        const dt_meta *m = dt_tensorset_meta(&w->ts,
                                             "tokenizer.ggml.padding_token_id");
        return m && m->type == DT_META_INT ? m->i : -1;
    }
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", w->src_dir);
    json_t *root = json_load_file(path, 0, NULL);
    if (!root)
        return -1;
    json_t *p = json_object_get(root, "pad_token");
    const char *s = json_is_string(p) ? json_string_value(p)
                    : json_string_value(json_object_get(p, "content"));
    int64_t id = s ? dt_tokenizer_token_id(tok, s) : -1;
    json_decref(root);
    return id;
}

/* Appends the tokenizer metadata for a vocabulary of V rows. */
static int put_tokenizer(buf *b, uint64_t *nkv, const dt_weights *w,
                         const dt_tokenizer *t, int64_t V, const char *path,
                         char *err)
{
    if (!t->byte_level)
        return dt_errf(err, DT_ENOTSUP, "%s: the tokenizer is not byte-level "
                       "BPE (SentencePiece-style vocabularies are not "
                       "exported to GGUF)", path);
    const char *pre = pre_name(t);
    if (!pre)
        return dt_errf(err, DT_ENOTSUP, "%s: the tokenizer's pre-tokenizer "
                       "has no llama.cpp name (gpt-2, llama-bpe, qwen2 and "
                       "smollm are exported)", path);
    if (t->n > V)
        return dt_errf(err, DT_EFORMAT, "%s: the tokenizer has %d ids but "
                       "the embedding only %lld rows", path, (int)t->n,
                       (long long)V);
    kv_str(b, nkv, "tokenizer.ggml.model", "gpt2");
    kv_str(b, nkv, "tokenizer.ggml.pre", pre);
    b_str(b, "tokenizer.ggml.tokens");
    b_u32(b, GV_ARR);
    b_u32(b, GV_STR);
    b_u64(b, (uint64_t)V);
    for (int64_t i = 0; i < V; i++) {
        if (i < t->n && t->str[i]) {
            b_u64(b, t->len[i]);
            b_put(b, t->str[i], t->len[i]);
        } else {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
            b_str(b, pad);
        }
    }
    (*nkv)++;
    b_str(b, "tokenizer.ggml.token_type");
    b_u32(b, GV_ARR);
    b_u32(b, GV_I32);
    b_u64(b, (uint64_t)V);
    for (int64_t i = 0; i < V; i++) {
        int32_t ty = 5; /* unused */
        if (i < t->n && t->str[i])
            ty = t->kind[i] == TOK_SPECIAL ? 3 : t->kind[i] == TOK_ADDED ? 4
                                                                         : 1;
        b_put(b, &ty, 4);
    }
    (*nkv)++;
    b_str(b, "tokenizer.ggml.merges");
    b_u32(b, GV_ARR);
    b_u32(b, GV_STR);
    b_u64(b, (uint64_t)t->nmerges);
    for (int32_t i = 0; i < t->nmerges; i++) {
        int32_t a = t->merges[i][0], c = t->merges[i][1];
        b_u64(b, (uint64_t)t->len[a] + 1 + t->len[c]);
        b_put(b, t->str[a], t->len[a]);
        b_put(b, " ", 1);
        b_put(b, t->str[c], t->len[c]);
    }
    (*nkv)++;
    if (t->bos >= 0)
        kv_u32(b, nkv, "tokenizer.ggml.bos_token_id", (uint32_t)t->bos);
    if (t->eos >= 0)
        kv_u32(b, nkv, "tokenizer.ggml.eos_token_id", (uint32_t)t->eos);
    if (t->unk >= 0)
        kv_u32(b, nkv, "tokenizer.ggml.unknown_token_id", (uint32_t)t->unk);
    int64_t pad = pad_id(w, t);
    if (pad >= 0 && pad < V)
        kv_u32(b, nkv, "tokenizer.ggml.padding_token_id", (uint32_t)pad);
    kv_bool(b, nkv, "tokenizer.ggml.add_bos_token", dt_tokenizer_adds_bos(t));
    kv_bool(b, nkv, "tokenizer.ggml.add_eos_token", dt_tokenizer_adds_eos(t));
    const char *ct = dt_tokenizer_chat_template(t);
    if (ct)
        kv_str(b, nkv, "tokenizer.chat_template", ct);
    return DT_OK;
}

/* ---- tensors -------------------------------------------------------------- */

typedef struct wt {
    char gname[64];     /* llama.cpp's name */
    const dt_tensor *t; /* canonical tensor (borrowed) */
    int type;           /* ggml type written */
    int perm;           /* heads of the Q/K row permutation, 0: none */
    uint64_t offset, nbytes;
} wt;

typedef struct plan {
    wt *t;
    int n, cap;
} plan;

/* Adds canonical tensor cname as gname (with layer l substituted in both). */
static int plan_add(plan *P, dt_tensorset *ts, const char *cfmt,
                    const char *gfmt, int l, int perm, const char *path,
                    char *err)
{
    char cn[128];
    snprintf(cn, sizeof cn, cfmt, l);
    const dt_tensor *t = dt_tensorset_find(ts, cn);
    if (!t)
        return dt_errf(err, DT_EFORMAT, "%s: the model has no tensor %s",
                       path, cn);
    if (P->n == P->cap) {
        int cap = P->cap ? P->cap * 2 : 64;
        wt *nt = realloc(P->t, (size_t)cap * sizeof *nt);
        if (!nt)
            return dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
        P->t = nt;
        P->cap = cap;
    }
    wt *x = &P->t[P->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->gname, sizeof x->gname, gfmt, l);
    x->t = t;
    x->perm = perm;
    return DT_OK;
}

static int build_plan(const dt_config *c, dt_tensorset *ts, plan *P,
                      const char *path, char *err)
{
    int rc = DT_OK;
#define ADD(cf, gf, l, perm) \
    if ((rc = plan_add(P, ts, cf, gf, l, perm, path, err))) return rc
    if (c->arch == DT_ARCH_GPT2) { /* llama.cpp's gpt2 architecture */
        static const char *const nm[][2] = {
            {"ln_1.weight", "attn_norm.weight"}, {"ln_1.bias", "attn_norm.bias"},
            {"attn.c_attn.weight", "attn_qkv.weight"},
            {"attn.c_attn.bias", "attn_qkv.bias"},
            {"attn.c_proj.weight", "attn_output.weight"},
            {"attn.c_proj.bias", "attn_output.bias"},
            {"ln_2.weight", "ffn_norm.weight"}, {"ln_2.bias", "ffn_norm.bias"},
            {"mlp.c_fc.weight", "ffn_up.weight"}, {"mlp.c_fc.bias", "ffn_up.bias"},
            {"mlp.c_proj.weight", "ffn_down.weight"},
            {"mlp.c_proj.bias", "ffn_down.bias"},
        };
        ADD("wte.weight", "token_embd.weight", 0, 0);
        ADD("wpe.weight", "position_embd.weight", 0, 0);
        for (int l = 0; l < c->n_layer; l++)
            for (size_t i = 0; i < sizeof nm / sizeof nm[0]; i++) {
                char cf[64], gf[64];
                snprintf(cf, sizeof cf, "h.%%d.%s", nm[i][0]);
                snprintf(gf, sizeof gf, "blk.%%d.%s", nm[i][1]);
                ADD(cf, gf, l, 0);
            }
        ADD("ln_f.weight", "output_norm.weight", 0, 0);
        ADD("ln_f.bias", "output_norm.bias", 0, 0);
        if (!c->tied)
            ADD("lm_head.weight", "output.weight", 0, 0);
        return DT_OK;
    }
    ADD("embed_tokens.weight", "token_embd.weight", 0, 0);
    for (int l = 0; l < c->n_layer; l++) {
        ADD("layers.%d.input_layernorm.weight", "blk.%d.attn_norm.weight", l, 0);
        ADD("layers.%d.self_attn.q_proj.weight", "blk.%d.attn_q.weight", l,
            c->n_head);
        ADD("layers.%d.self_attn.k_proj.weight", "blk.%d.attn_k.weight", l,
            c->n_kv_head);
        ADD("layers.%d.self_attn.v_proj.weight", "blk.%d.attn_v.weight", l, 0);
        if (c->attn_bias) {
            ADD("layers.%d.self_attn.q_proj.bias", "blk.%d.attn_q.bias", l,
                c->n_head);
            ADD("layers.%d.self_attn.k_proj.bias", "blk.%d.attn_k.bias", l,
                c->n_kv_head);
            ADD("layers.%d.self_attn.v_proj.bias", "blk.%d.attn_v.bias", l, 0);
        }
        ADD("layers.%d.self_attn.o_proj.weight", "blk.%d.attn_output.weight",
            l, 0);
        if (c->o_bias)
            ADD("layers.%d.self_attn.o_proj.bias", "blk.%d.attn_output.bias",
                l, 0);
        ADD("layers.%d.post_attention_layernorm.weight",
            "blk.%d.ffn_norm.weight", l, 0);
        ADD("layers.%d.mlp.gate_proj.weight", "blk.%d.ffn_gate.weight", l, 0);
        ADD("layers.%d.mlp.up_proj.weight", "blk.%d.ffn_up.weight", l, 0);
        ADD("layers.%d.mlp.down_proj.weight", "blk.%d.ffn_down.weight", l, 0);
        if (c->mlp_bias) {
            ADD("layers.%d.mlp.gate_proj.bias", "blk.%d.ffn_gate.bias", l, 0);
            ADD("layers.%d.mlp.up_proj.bias", "blk.%d.ffn_up.bias", l, 0);
            ADD("layers.%d.mlp.down_proj.bias", "blk.%d.ffn_down.bias", l, 0);
        }
    }
    ADD("norm.weight", "output_norm.weight", 0, 0);
    if (!c->tied)
        ADD("lm_head.weight", "output.weight", 0, 0);
#undef ADD
    return DT_OK;
}

/* The ggml type of one tensor (see gguf_write.h for the rules). */
static int tensor_type(const wt *x, dt_gguf_type type, int tied)
{
    const dt_tensor *t = x->t;
    if (t->ndim < 2 || !strcmp(x->gname, "position_embd.weight"))
        return GT_F32; /* as llama.cpp's converter keeps them */
    if (type == DT_GGUF_F16 || t->shape[t->ndim - 1] % 32 != 0)
        return DT_GGUF_F16;
    if (type == DT_GGUF_Q4_0 &&
        (!strcmp(x->gname, "output.weight") ||
         (tied && !strcmp(x->gname, "token_embd.weight"))))
        return DT_GGUF_Q8_0;
    return type;
}

/* llama.cpp's Q/K permutation of a (rows, in) matrix for n_head heads: new
 * row h*hd + 2*i + j = old row h*hd + j*hd/2 + i (the inverse of
 * modelio.c's unpermute_rows). dst and src do not overlap. */
static void permute_rows(float *dst, const float *src, int64_t rows,
                         int64_t in, int n_head)
{
    int64_t hd = rows / n_head, half = hd / 2;
    for (int h = 0; h < n_head; h++)
        for (int j = 0; j < 2; j++)
            for (int64_t i = 0; i < half; i++)
                memcpy(dst + (h * hd + 2 * i + j) * in,
                       src + (h * hd + j * half + i) * in,
                       (size_t)in * sizeof(float));
}

static int write_all(FILE *f, const void *p, size_t n, const char *path,
                     char *err)
{
    if (n && fwrite(p, 1, n, f) != n)
        return dt_errf(err, DT_EIO, "%s: write: %s", path, strerror(errno));
    return DT_OK;
}

static int write_pad(FILE *f, uint64_t n, const char *path, char *err)
{
    static const unsigned char zero[GGUF_ALIGN];
    return write_all(f, zero, (size_t)((GGUF_ALIGN - n % GGUF_ALIGN)
                                       % GGUF_ALIGN), path, err);
}

/* Converts and writes one tensor's data. */
static int write_tensor(FILE *f, const wt *x, const char *path, char *err)
{
    const dt_tensor *t = x->t;
    const float *src = t->data;
    float *perm = NULL;
    unsigned char *out = NULL;
    int rc = DT_OK;
    if (x->perm) {
        int64_t rows = t->shape[0], in = t->ndim > 1 ? t->shape[1] : 1;
        perm = malloc((size_t)t->numel * sizeof(float));
        if (!perm) {
            rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
            goto out;
        }
        permute_rows(perm, src, rows, in, x->perm);
        src = perm;
    }
    if (x->type == GT_F32) {
        rc = write_all(f, src, x->nbytes, path, err);
        goto out;
    }
    out = malloc((size_t)x->nbytes);
    if (!out) {
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if (x->type == DT_GGUF_F16) {
#pragma omp parallel for if (t->numel > (1 << 16)) schedule(static)
        for (int64_t i = 0; i < t->numel; i++)
            put_f16(out + 2 * i, src[i]);
    } else {
        int64_t nb = t->numel / 32;
        int q8 = x->type == DT_GGUF_Q8_0, bb = q8 ? 34 : 18;
#pragma omp parallel for if (nb > 2048) schedule(static)
        for (int64_t b = 0; b < nb; b++) {
            if (q8)
                dt_gguf_quant_q8_0(src + b * 32, 32, out + b * bb);
            else
                dt_gguf_quant_q4_0(src + b * 32, 32, out + b * bb);
        }
    }
    rc = write_all(f, out, x->nbytes, path, err);
out:
    free(perm);
    free(out);
    return rc;
}

/* Refuses what llama.cpp's llama loader (or this writer) cannot represent. */
static int check_model(const dt_config *c, const char *path, char *err)
{
    if (c->arch == DT_ARCH_GPT2)
        return DT_OK;
    if (c->rope_factor != 0.0f)
        return dt_errf(err, DT_ENOTSUP, "%s: GGUF export of Llama 3 RoPE "
                       "scaling (rope_type llama3) is not supported", path);
    if (c->sliding_window > 0)
        return dt_errf(err, DT_ENOTSUP, "%s: GGUF export of sliding-window "
                       "attention is not supported (llama.cpp's llama "
                       "architecture attends to the whole context)", path);
    if (c->head_dim % 2 != 0 || c->n_head <= 0 || c->n_kv_head <= 0)
        return dt_errf(err, DT_EFORMAT, "%s: head layout not exportable",
                       path);
    return DT_OK;
}

/* The model's name for general.name: the last path component without
 * .gguf. */
static void model_name(const char *src, char *out, size_t cap)
{
    size_t n = strlen(src);
    while (n > 1 && src[n - 1] == '/')
        n--;
    size_t s = n;
    while (s > 0 && src[s - 1] != '/')
        s--;
    size_t len = n - s;
    if (len > 5 && !strncmp(src + n - 5, ".gguf", 5))
        len -= 5;
    if (len >= cap)
        len = cap - 1;
    memcpy(out, src + s, len);
    out[len] = 0;
    if (!out[0])
        snprintf(out, cap, "model");
}

int dt_gguf_write(const dt_weights *w, const dt_tensorset *tensors,
                  const dt_tokenizer *tok, dt_gguf_type type,
                  const char *path, dt_gguf_progress progress, void *ud,
                  char *err)
{
    const dt_config *c = &w->cfg;
    dt_tensorset *ts = (dt_tensorset *)(tensors ? tensors : &w->ts);
    plan P = {0};
    buf meta = {0}, infos = {0};
    uint64_t nkv = 0;
    FILE *f = NULL;
    char tmp[4096];
    int rc = check_model(c, path, err);
    if (rc)
        return rc;
    if (type != DT_GGUF_F16 && type != DT_GGUF_Q8_0 && type != DT_GGUF_Q4_0)
        return dt_errf(err, DT_EINVAL, "%s: unknown GGUF type %d", path,
                       (int)type);
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return dt_errf(err, DT_EINVAL, "%s: path too long", path);
    if ((rc = build_plan(c, ts, &P, path, err)))
        goto fail;

    /* Metadata. */
    char name[256];
    model_name(w->src_dir, name, sizeof name);
    const char *arch = c->arch == DT_ARCH_GPT2 ? "gpt2" : "llama";
    char key[96];
#define AKEY(k) (snprintf(key, sizeof key, "%s." k, arch), key)
    kv_str(&meta, &nkv, "general.architecture", arch);
    kv_str(&meta, &nkv, "general.name", name);
    kv_u32(&meta, &nkv, "general.alignment", GGUF_ALIGN);
    kv_u32(&meta, &nkv, "general.file_type",
           type == DT_GGUF_F16 ? 1 : type == DT_GGUF_Q8_0 ? 7 : 2);
    if (type != DT_GGUF_F16)
        kv_u32(&meta, &nkv, "general.quantization_version", 2);
    kv_u32(&meta, &nkv, AKEY("vocab_size"), (uint32_t)c->vocab);
    kv_u32(&meta, &nkv, AKEY("context_length"), (uint32_t)c->max_pos);
    kv_u32(&meta, &nkv, AKEY("embedding_length"), (uint32_t)c->d_model);
    kv_u32(&meta, &nkv, AKEY("block_count"), (uint32_t)c->n_layer);
    kv_u32(&meta, &nkv, AKEY("feed_forward_length"), (uint32_t)c->d_ff);
    kv_u32(&meta, &nkv, AKEY("attention.head_count"), (uint32_t)c->n_head);
    if (c->arch == DT_ARCH_GPT2) {
        kv_f32(&meta, &nkv, AKEY("attention.layer_norm_epsilon"), c->norm_eps);
    } else {
        kv_u32(&meta, &nkv, AKEY("rope.dimension_count"), (uint32_t)c->head_dim);
        kv_u32(&meta, &nkv, AKEY("attention.head_count_kv"), (uint32_t)c->n_kv_head);
        kv_u32(&meta, &nkv, AKEY("attention.key_length"), (uint32_t)c->head_dim);
        kv_u32(&meta, &nkv, AKEY("attention.value_length"), (uint32_t)c->head_dim);
        kv_f32(&meta, &nkv, AKEY("attention.layer_norm_rms_epsilon"), c->norm_eps);
        kv_f32(&meta, &nkv, AKEY("rope.freq_base"), c->rope_theta);
    }
#undef AKEY
    if ((rc = put_tokenizer(&meta, &nkv, w, tok, c->vocab, path, err)))
        goto fail;

    /* Tensor infos: dims innermost first, offsets aligned. */
    uint64_t off = 0;
    for (int i = 0; i < P.n; i++) {
        wt *x = &P.t[i];
        const dt_tensor *t = x->t;
        x->type = tensor_type(x, type, c->tied);
        x->nbytes = type_bytes(x->type, t->numel);
        x->offset = off;
        off += (x->nbytes + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN;
        b_str(&infos, x->gname);
        b_u32(&infos, (uint32_t)t->ndim);
        for (int d = t->ndim - 1; d >= 0; d--)
            b_u64(&infos, (uint64_t)t->shape[d]);
        b_u32(&infos, (uint32_t)x->type);
        b_u64(&infos, x->offset);
    }
    if (meta.oom || infos.oom) {
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
        goto fail;
    }

    f = fopen(tmp, "wb");
    if (!f) {
        rc = dt_errf(err, DT_EIO, "%s: %s", tmp, strerror(errno));
        goto fail;
    }
    uint32_t ver = 3;
    uint64_t nt = (uint64_t)P.n;
    if ((rc = write_all(f, "GGUF", 4, path, err)) ||
        (rc = write_all(f, &ver, 4, path, err)) ||
        (rc = write_all(f, &nt, 8, path, err)) ||
        (rc = write_all(f, &nkv, 8, path, err)) ||
        (rc = write_all(f, meta.p, meta.n, path, err)) ||
        (rc = write_all(f, infos.p, infos.n, path, err)) ||
        (rc = write_pad(f, 24 + meta.n + infos.n, path, err)))
        goto fail;
    for (int i = 0; i < P.n; i++) {
        if ((rc = write_tensor(f, &P.t[i], path, err)) ||
            (rc = write_pad(f, P.t[i].nbytes, path, err)))
            goto fail;
        if (progress)
            progress(ud, i + 1, P.n, P.t[i].gname);
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        rc = dt_errf(err, DT_EIO, "%s: write: %s", path, strerror(errno));
        goto fail;
    }
    if (fclose(f) != 0) {
        f = NULL;
        rc = dt_errf(err, DT_EIO, "%s: close: %s", path, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        rc = dt_errf(err, DT_EIO, "%s: rename: %s", path, strerror(errno));
        goto fail;
    }
    free(P.t);
    free(meta.p);
    free(infos.p);
    return DT_OK;
fail:
    if (f)
        fclose(f);
    unlink(tmp);
    free(P.t);
    free(meta.p);
    free(infos.p);
    return rc;
}

int dt_gguf_export(const char *model_path, dt_gguf_type type,
                   const char *path, dt_gguf_progress progress, void *ud,
                   char *err)
{
    dt_weights w;
    dt_tokenizer *tok = NULL;
    int rc = dt_weights_load(model_path, &w, err);
    if (rc)
        return rc;
    if ((rc = check_model(&w.cfg, model_path, err)))
        goto out;
    tok = dt_model_tokenizer(model_path, err);
    if (!tok) {
        rc = DT_EFORMAT;
        goto out;
    }
    rc = dt_gguf_write(&w, NULL, tok, type, path, progress, ud, err);
out:
    dt_tokenizer_free(tok);
    dt_weights_free(&w);
    return rc;
}
