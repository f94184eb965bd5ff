/* estimate.c: a training job's peak memory from the model's config numbers
 * and the job's settings (engine_api.h), without loading the model.
 *
 * The sizes mirror what the engine allocates: dt_model_new's weights,
 * trainable tensors with their gradient and AdamW moments, LoRA factors and
 * Delta-LoRA's catA/catB and A_K/B_K (model.c), every activation buffer of
 * alloc_acts for B x T (T = min(seq_len, the longest row); with activation
 * checkpointing one layer's, besides every layer's input), the backends' own scratch
 * (CPU attention blocks and RoPE table; CUDA attention workspace), and on
 * the CPU, where "device" memory is the process's memory, the host copies
 * of the phases after training: a checkpoint (every trainable tensor and its
 * moments, Delta-LoRA's moved W) while the activations are still held, and
 * the export (the merged weights beside the model). The peak is the largest
 * phase. Only numbers from config.json or the GGUF header are read, so the
 * server (which links no model code) can call it.
 *
 * Kept in step with model.c by tests/integration/test_admission.py, which
 * compares the estimate with measured peaks (within 15 %). */
#include "engine_api.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/dt.h"
#include "tensorfile.h"

/* ---- config numbers: config.json ------------------------------------------ */

static int js_get(json_t *o, const char *key, long long def, long long *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return def < 0 ? -1 : 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 ||
        json_integer_value(v) > (1LL << 31))
        return -1;
    *out = json_integer_value(v);
    return 0;
}

static int read_config_json(const char *dir, dt_mem_model *m, char *err)
{
    char path[4200];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return dt_errf(err, DT_EINVAL, "%s: path too long", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        return dt_errf(err, DT_EFORMAT, "%s: %s", path, je.text);
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    long long L = 0, C = 0, H = 0, KV = 0, D = 0, F = 0, V = 0, P = 0;
    int bad;
    if (mt && !strcmp(mt, "gpt2")) {
        m->llama = 0;
        bad = js_get(root, "n_layer", -1, &L) || js_get(root, "n_embd", -1, &C) ||
              js_get(root, "n_head", -1, &H) || js_get(root, "vocab_size", -1, &V) ||
              js_get(root, "n_positions", 1024, &P) || js_get(root, "n_inner", 4 * C, &F);
        KV = H;
        D = H ? C / H : 0;
        json_t *t = json_object_get(root, "tie_word_embeddings");
        m->tied = t ? json_is_true(t) : 1;
    } else {
        m->llama = 1;
        bad = js_get(root, "num_hidden_layers", -1, &L) ||
              js_get(root, "hidden_size", -1, &C) ||
              js_get(root, "num_attention_heads", -1, &H) ||
              js_get(root, "intermediate_size", -1, &F) ||
              js_get(root, "vocab_size", -1, &V) ||
              js_get(root, "max_position_embeddings", 2048, &P);
        if (!bad)
            bad = js_get(root, "num_key_value_heads", H, &KV) ||
                  js_get(root, "head_dim", C / H, &D);
        m->tied = json_is_true(json_object_get(root, "tie_word_embeddings"));
        json_t *a0 = json_array_get(json_object_get(root, "architectures"), 0);
        m->qk_norm = (mt && !strcmp(mt, "qwen3")) ||
                     (json_is_string(a0) && !strcmp(json_string_value(a0), "Qwen3ForCausalLM"));
    }
    json_decref(root);
    if (bad)
        return dt_errf(err, DT_EFORMAT, "%s: missing or bad size fields", path);
    m->n_layer = (int)L; m->d_model = (int)C; m->n_head = (int)H; m->n_kv_head = (int)KV;
    m->head_dim = (int)D; m->d_ff = (int)F; m->vocab = (int)V; m->max_pos = (int)P;
    return 0;
}

/* ---- config numbers: a GGUF header (dt_gguf_scan, gpu/gguf.c) -------------- */

typedef struct gg {
    char arch[32];
    long long L, C, H, KV, F, V, P, rot, kl;
    int tied;
} gg;

static void gg_kv(void *ud, const dt_gguf_kv *kv)
{
    gg *g = ud;
    if (kv->type == DT_META_STR && !strcmp(kv->key, "general.architecture")) {
        int n = kv->len < sizeof g->arch ? (int)kv->len : (int)sizeof g->arch - 1;
        snprintf(g->arch, sizeof g->arch, "%.*s", n, kv->s);
        return;
    }
    if (!strcmp(kv->key, "tokenizer.ggml.tokens") && !g->V)
        g->V = (long long)kv->n;
    size_t al = strlen(g->arch);
    if (strncmp(kv->key, g->arch, al) || kv->key[al] != '.')
        return;
    const char *k = kv->key + al + 1;
    long long iv = kv->type == DT_META_INT ? kv->i : 0;
    if (!strcmp(k, "block_count")) g->L = iv;
    else if (!strcmp(k, "embedding_length")) g->C = iv;
    else if (!strcmp(k, "attention.head_count")) g->H = iv;
    else if (!strcmp(k, "attention.head_count_kv")) g->KV = iv;
    else if (!strcmp(k, "feed_forward_length")) g->F = iv;
    else if (!strcmp(k, "vocab_size")) g->V = iv;
    else if (!strcmp(k, "context_length")) g->P = iv;
    else if (!strcmp(k, "rope.dimension_count")) g->rot = iv;
    else if (!strcmp(k, "attention.key_length")) g->kl = iv;
}

/* Tied head: no output.weight tensor. */
static void gg_tensor(void *ud, const char *name)
{
    if (!strcmp(name, "output.weight"))
        ((gg *)ud)->tied = 0;
}

static int read_gguf(const char *path, dt_mem_model *m, char *err)
{
    gg g = {.arch = "llama", .P = 2048, .tied = 1};
    int rc = dt_gguf_scan(path, gg_kv, gg_tensor, &g, err);
    if (rc)
        return rc;
    if (g.L <= 0 || g.C <= 0 || g.H <= 0 || g.F <= 0 || g.V <= 0)
        return dt_errf(err, DT_EFORMAT, "%s: GGUF header lacks the model's sizes", path);
    m->llama = strcmp(g.arch, "gpt2") != 0;
    m->qk_norm = strcmp(g.arch, "qwen3") == 0;
    m->tied = g.tied;
    m->n_layer = (int)g.L; m->d_model = (int)g.C; m->n_head = (int)g.H;
    m->n_kv_head = (int)(g.KV > 0 ? g.KV : g.H);
    /* as modelio.c: key_length, else the rotary dimension, else C / H */
    m->head_dim = (int)(g.kl > 0 ? g.kl : g.rot > 0 ? g.rot : g.C / g.H);
    m->d_ff = (int)g.F; m->vocab = (int)g.V; m->max_pos = (int)g.P;
    return 0;
}

int dt_mem_model_read(const char *path, dt_mem_model *m, char *err)
{
    struct stat st;
    memset(m, 0, sizeof *m);
    if (stat(path, &st))
        return dt_errf(err, DT_EIO, "%s: %s", path, strerror(errno));
    int rc = S_ISDIR(st.st_mode) ? read_config_json(path, m, err) : read_gguf(path, m, err);
    if (rc)
        return rc;
    if (m->n_layer <= 0 || m->n_layer > 4096 || m->d_model <= 0 || m->n_head <= 0 ||
        m->n_kv_head <= 0 || m->head_dim <= 0 || m->d_ff <= 0 || m->vocab <= 0)
        return dt_errf(err, DT_EFORMAT, "%s: bad model sizes", path);
    return 0;
}

/* ---- the estimate ------------------------------------------------------------ */

/* What OpenBLAS and the OpenMP threads touch once the GEMMs run (their
 * packing buffers), measured on the CPU backend: about 32 MiB. */
#define DT_MEM_CPU_THREAD_BUFS (32LL << 20)

/* Target bits as model.c's dt_parse_targets reads them (q k v o gate up
 * down, c_attn = the whole GPT-2 qkv, c_fc = up, c_proj = o and down; "all"),
 * for counting adapters only: unknown names count nothing (the engine and the
 * API reject them with their own message). */
enum { T_Q = 1, T_K = 2, T_V = 4, T_O = 8, T_GATE = 16, T_UP = 32, T_DOWN = 64, T_CATTN = 128 };

static unsigned parse_targets(const char *list, int llama)
{
    static const struct { const char *n; unsigned b; } tab[] = {
        {"q", T_Q}, {"k", T_K}, {"v", T_V}, {"o", T_O}, {"gate", T_GATE}, {"up", T_UP},
        {"down", T_DOWN}, {"q_proj", T_Q}, {"k_proj", T_K}, {"v_proj", T_V},
        {"o_proj", T_O}, {"gate_proj", T_GATE}, {"up_proj", T_UP}, {"down_proj", T_DOWN},
        {"c_attn", T_CATTN}, {"c_fc", T_UP}, {"c_proj", T_O | T_DOWN},
        {"attn.c_proj", T_O}, {"mlp.c_proj", T_DOWN}};
    unsigned mask = 0;
    const char *p = list && *list ? list : "q,v";
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t len = strcspn(p, ",");
        while (len && p[len - 1] == ' ')
            len--;
        if (len == 3 && !strncmp(p, "all", 3))
            mask |= llama ? 0x7f : (T_CATTN | T_O | T_UP | T_DOWN);
        for (size_t i = 0; len && i < sizeof tab / sizeof tab[0]; i++)
            if (strlen(tab[i].n) == len && !strncmp(tab[i].n, p, len))
                mask |= tab[i].b;
        p += strcspn(p, ",");
    }
    if (!llama)
        mask &= ~(unsigned)T_GATE;
    return mask;
}

static long long weight_floats(const dt_mem_model *c)
{
    long long C = c->d_model, F = c->d_ff, V = c->vocab, L = c->n_layer;
    long long Q = (long long)c->n_head * c->head_dim, K = (long long)c->n_kv_head * c->head_dim;
    long long n;
    if (!c->llama)
        n = V * C + (long long)c->max_pos * C + 2 * C +
            L * (4 * C + 3 * C * C + 3 * C + C * C + C + F * C + F + C * F + C);
    else
        n = V * C + C + L * (2 * C + Q * C + 2 * K * C + C * Q + 3 * F * C +
                             (c->qk_norm ? 2LL * c->head_dim : 0));
    if (!c->tied)
        n += V * C;
    return n;
}

/* The linear layers' weights (what bf16 stores at 2 bytes). */
static long long linear_floats(const dt_mem_model *c)
{
    long long C = c->d_model, F = c->d_ff, L = c->n_layer;
    long long Q = (long long)c->n_head * c->head_dim, K = (long long)c->n_kv_head * c->head_dim;
    if (!c->llama)
        return L * (3 * C * C + C * C + F * C + C * F);
    return L * (Q * C + 2 * K * C + C * Q + 3 * F * C);
}

int dt_mem_estimate_job(const dt_mem_model *c, const dt_mem_job *j, dt_mem_estimate *e,
                    char *err)
{
    return dt_mem_estimate_job_prec(c, j, 0, e, err);
}

int dt_mem_estimate_job_prec(const dt_mem_model *c, const dt_mem_job *j, int bf16,
                             dt_mem_estimate *e, char *err)
{
    memset(e, 0, sizeof *e);
    if (j->batch < 1 || j->seq_len < 1)
        return dt_errf(err, DT_EINVAL, "batch size and sequence length must be >= 1");
    if (j->method != 0 && j->rank < 1)
        return dt_errf(err, DT_EINVAL, "rank must be >= 1 for LoRA");
    long long T = j->seq_len;
    if (j->longest_row > 0 && j->longest_row < T && !j->packing)
        T = j->longest_row;
    e->seq_eff = (int)T;
    long long B = j->batch, N = B * T;
    long long C = c->d_model, F = c->d_ff, L = c->n_layer, V = c->vocab;
    long long qd = (long long)c->n_head * c->head_dim, kd = (long long)c->n_kv_head * c->head_dim;
    long long r = j->method ? j->rank : 0;
    long long W = weight_floats(c);
    /* bf16 (not for full): the frozen linear weights, the embedding table
     * and an untied LM head at 2 bytes (hb of them); Wd is the device's
     * weights in floats, W stays the fp32 model (export). */
    int half = bf16 && j->method != 0;
    long long hb = half ? linear_floats(c) + (c->tied ? 1 : 2) * V * C : 0;
    long long Wd = W - hb / 2;

    /* trainable tensors: p (LoRA factors; full: the weights themselves),
     * g, m, v; Delta-LoRA's catA/catB (2r rows/columns) and A_K/B_K (r);
     * per adapter u(N, r). */
    long long ptrain = 0, cat = 0, u = 0, moved = 0;
    if (j->method == 0) {
        ptrain = W;
    } else {
        unsigned t = parse_targets(j->targets, c->llama);
        long long rows[8] = {0}, ins[8] = {0}, wsz[8] = {0};
        if (!c->llama) {
            rows[0] = 3 * C; ins[0] = C; wsz[0] = 3 * C * C;   /* c_attn */
            rows[1] = C; ins[1] = C; wsz[1] = 3 * C * C;       /* q, k, v slices */
            rows[2] = C; ins[2] = C; wsz[2] = C * C;           /* o */
            rows[3] = F; ins[3] = C; wsz[3] = F * C;           /* up */
            rows[4] = C; ins[4] = F; wsz[4] = C * F;           /* down */
            int ncattn = !!(t & T_CATTN), nqkv = !!(t & T_Q) + !!(t & T_K) + !!(t & T_V);
            int cnt[5] = {ncattn, nqkv, !!(t & T_O), !!(t & T_UP), !!(t & T_DOWN)};
            for (int i = 0; i < 5; i++) {
                ptrain += L * cnt[i] * (r * ins[i] + rows[i] * r);
                cat += L * cnt[i] * 3 * r * (ins[i] + rows[i]);
                u += L * cnt[i] * N * r;
            }
            if (ncattn || nqkv)
                moved += L * wsz[0];
            for (int i = 2; i < 5; i++)
                moved += cnt[i] ? L * wsz[i] : 0;
        } else {
            long long outs[7] = {qd, kd, kd, C, F, F, C}, in7[7] = {C, C, C, qd, C, C, F};
            for (int i = 0; i < 7; i++) {
                if (!(t & (1u << i)))
                    continue;
                ptrain += L * (r * in7[i] + outs[i] * r);
                cat += L * 3 * r * (in7[i] + outs[i]);
                u += L * N * r;
                moved += L * outs[i] * in7[i];
            }
        }
        if (j->method != 2)
            cat = moved = 0;
        if (half && j->method == 2) { /* the low-rank form: no catA/catB */
            cat /= 3;                 /* (2r), A_K/B_K (r) stay; no W in */
            moved = 0;                /* checkpoints */
        }
    }
    /* + the squared gradient norm: one double, 2 floats (model.c) */
    long long trainable = (j->method == 0 ? 3 : 4) * ptrain + cat + 2;

    /* activations: alloc_acts (model.c), floats (ids, targets and the LM
     * head's predicted rows, packing's positions: 4N int32). */
    long long wide = qd > C ? qd : C;
    long long head_rows = N < (16LL << 20) / V ? N : (16LL << 20) / V;
    if (head_rows < 1)
        head_rows = 1;
    /* Lk: the layers whose activations are held at once: every layer, or
     * one with activation checkpointing (the residual stream, (L + 1)·N·C,
     * keeps every layer's input either way) */
    long long Lk = j->act_ckpt ? 1 : L;
    long long acts = 4 * N + (L + 1) * N * C + 3 * Lk * N * C + 4 * Lk * N +
                     Lk * N * (2 * qd + 2 * kd) + Lk * N * c->n_head + Lk * N * F + N * F +
                     (c->llama ? Lk * N * F : 2 * N * 3 * C) + N * C + 2 * N +
                     head_rows * V + N + N * C + 2 * N * wide + N * qd + 2 * N * kd +
                     3 * N * F + N * (r > 0 ? r : 1) + u;
    if (c->qk_norm) /* Qwen 3: q, k before their norms, and the norms' rstd */
        acts += Lk * N * (qd + kd) + Lk * N * (c->n_head + c->n_kv_head);

    /* the backend's own buffers */
    long long work;
    long long nh = c->n_head, D = c->head_dim;
    if (j->cuda) {
        /* cuda_attention.cu's choice (docs/GPU.md): the naive version while
         * its score workspace, NH·T² floats per batch row, is at most 1 GiB
         * (always with packing, and for head dims the fused kernels do not
         * take), its backward holding qp, dout, dq (B,NH,T,D), S and dP
         * (NH,T,T) and Drow (B,NH,T); the fused kernels beyond it, whose
         * backward's only workspace is Drow. One workspace buffer, grown to
         * 1.25 times the largest request (ws_get), plus the RoPE table. */
        int naive = j->packing || (D != 64 && D != 128) ||
                    4 * nh * T * T <= (1LL << 30);
        long long ws = naive ? 3 * B * nh * T * D + 2 * nh * T * T + B * nh * T : B * nh * T;
        work = ws + ws / 4 + T * D;
    } else {
        int nt = j->threads > 0 ? j->threads : 1;
        long long blk = T < 256 ? T : 256;
        work = 2 * blk * T * nt + T * D;
    }
    if (half) { /* gemm_bf16w's scratch: the widest input in bf16 (CUDA);
                 * fp32 copies of the input and the weight (CPU). The LM
                 * head's backward GEMM takes a chunk of logit gradients
                 * (head_rows, V) as its input, against the (V, C) head. */
        long long win = F > C ? F : C;
        win = qd > win ? qd : win;
        long long lin = j->cuda ? N * win : N * win + win * (F > C ? F : 3 * C);
        long long head = j->cuda ? head_rows * V : head_rows * V + V * C;
        work += j->cuda ? (lin > head ? lin : head) / 2 : (lin > head ? lin : head);
    }
    long long train = Wd + trainable + acts + work;
    long long peak = train;
    if (!j->cuda) {
        /* Host phases (CPU: the same memory). The batch's host ids/targets,
         * the model's host ids and the head's predicted rows (3N), the
         * tokenized data. A checkpoint downloads every trainable tensor
         * and both moments (Delta-LoRA: and the moved W) while the
         * activations are held; the export holds the merged weights beside
         * the model, the activations freed. */
        long long host = 2 * B * j->seq_len + 3 * N + (j->runtime_bytes ? 0 : 2 * j->data_tokens) +
                         DT_MEM_CPU_THREAD_BUFS / 4;
        long long ckpt = train + 3 * ptrain + moved;
        long long exp = Wd + trainable + W;
        train += host;
        peak = train;
        if (ckpt + host > peak)
            peak = ckpt + host;
        if (exp > peak)
            peak = exp;
    }
    e->weights = 4 * (W - hb) + 2 * hb; /* exact: hb may be odd */
    e->trainable = 4 * trainable;
    e->activations = 4 * acts;
    e->workspace = 4 * (peak - Wd - trainable - acts);
    e->runtime = j->cuda ? 0 : j->runtime_bytes;
    e->total = e->weights + e->trainable + e->activations + e->workspace + e->runtime;
    return 0;
}

int dt_mem_estimate_auto_ckpt(const dt_mem_model *c, dt_mem_job *j, int bf16,
                              long long budget, dt_mem_estimate *e,
                              long long *off, char *err)
{
    j->act_ckpt = 0;
    int rc = dt_mem_estimate_job_prec(c, j, bf16, e, err);
    if (rc)
        return rc;
    if (off)
        *off = e->total;
    if (budget <= 0 || e->total <= budget)
        return 0;
    j->act_ckpt = 1;
    return dt_mem_estimate_job_prec(c, j, bf16, e, err);
}

long long dt_mem_self_rss(void)
{
    /* tests pin it: the resident size drifts between two estimates of one
     * process by what the allocator keeps (tens of MB in the unit tests) */
    const char *pin = getenv("DT_SELF_RSS_BYTES");
    if (pin && *pin)
        return strtoll(pin, NULL, 10);
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) {
            kb = strtoll(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb * 1024;
}

long long dt_mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[256];
    long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "MemAvailable:", 13)) {
            kb = strtoll(line + 13, NULL, 10);
            break;
        }
    fclose(f);
    return kb * 1024;
}

int dt_mem_parse_size(const char *s, long long *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0)
        return DT_EINVAL;
    while (*end == ' ')
        end++;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 0: break;
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1024.0 * 1024; end++; break;
    case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: return DT_EINVAL;
    }
    if (toupper((unsigned char)*end) == 'I')
        end++;
    if (toupper((unsigned char)*end) == 'B')
        end++;
    if (*end || v * mul >= 9.0e18)
        return DT_EINVAL;
    *out = (long long)(v * mul);
    return 0;
}

void dt_mem_human(long long bytes, char *buf, size_t n)
{
    static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}
