/* test_tensorfile.c: safetensors and GGUF reading/writing, model loading
 * into the canonical form, HF export and PEFT adapters.
 *
 * Fixtures in tests/fixtures/tensorfile come from
 * tests/reference/make_tensorfile_fixtures.py (the `gguf` package); the
 * malformed files and tiny HF directories are built here in a temp dir. Run
 * from the repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dt.h"
#include "gpu/chat_template.h"
#include "gpu/export.h"
#include "gpu/tokenizer.h"
#include "gpu/model.h"
#include "gpu/tensorfile.h"
#include "base/file.h"
#include "gpu/half.h"

#define FIX "tests/fixtures/tensorfile/"
#define SMOLLM ".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

/* A tensor set, initialised. */
#define TSET(x) dt_tensorset x; dt_tensorset_init(&x)

static char g_tmp[256];
static char g_err[DT_ERR_LEN];

static int rm_cb(const char *p, const struct stat *s, int f, struct FTW *w)
{
    return remove(p);
}

static int setup(void **state)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/dt_tensorfile_XXXXXX");
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    return nftw(g_tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_tmp, name);
    return buf[k];
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* ------------------------------------------------------------------ */
/* safetensors                                                        */

static void roundtrip(dt_dtype dt)
{
    float a[6], b[3] = {1.0f, -2.5f, 1e-3f};
    for (int i = 0; i < 6; i++)
        a[i] = 0.1f * (float)i - 0.3f;
    int64_t sa[2] = {2, 3}, sb[1] = {3};
    dt_st_entry e[2] = {{"layer.a", 2, sa, a, dt}, {"b", 1, sb, b, dt}};
    const char *p = tmp_path("rt.safetensors");
    assert_int_equal(dt_safetensors_write(p, e, 2, "{\"format\":\"pt\"}",
                                          g_err), 0);
    TSET(ts);
    assert_int_equal(dt_safetensors_load(p, &ts, g_err), 0);
    assert_int_equal(ts.n, 2);
    dt_tensor *t = dt_tensorset_find(&ts, "layer.a");
    assert_non_null(t);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->src_dtype, dt);
    for (int i = 0; i < 6; i++) {
        float want = dt == DT_F32 ? a[i]
                     : dt == DT_F16 ? dt_f16_to_f32(dt_f32_to_f16(a[i]))
                                    : dt_bf16_to_f32(dt_f32_to_bf16(a[i]));
        assert_true(t->data[i] == want);
    }
    assert_true(dt_tensorset_find(&ts, "b")->data[1] == -2.5f);
    dt_tensorset_free(&ts);
}

static void test_st_roundtrip_f32(void **s) { roundtrip(DT_F32); }
static void test_st_roundtrip_f16(void **s) { roundtrip(DT_F16); }
static void test_st_roundtrip_bf16(void **s) { roundtrip(DT_BF16); }

static void test_st_header_is_padded_to_8_bytes(void **s)
{
    float x = 1;
    int64_t sh[1] = {1};
    dt_st_entry e = {"x", 1, sh, &x, DT_F32};
    const char *p = tmp_path("pad.safetensors");
    assert_int_equal(dt_safetensors_write(p, &e, 1, NULL, g_err), 0);
    char *buf;
    size_t len;
    assert_int_equal(dt_read_file(p, &buf, &len, g_err), 0);
    uint64_t h;
    memcpy(&h, buf, 8);
    assert_int_equal(h % 8, 0);
    assert_int_equal(len, 8 + h + 4);
    free(buf);
}

/* Writes header length + header + datalen bytes; hlen_override != 0 replaces
 * the length field. */
static const char *st_raw(const char *name, const char *hdr, size_t datalen,
                          uint64_t hlen_override)
{
    const char *p = tmp_path(name);
    size_t hl = strlen(hdr);
    unsigned char *buf = calloc(1, 8 + hl + datalen);
    uint64_t h = hlen_override ? hlen_override : hl;
    memcpy(buf, &h, 8);
    memcpy(buf + 8, hdr, hl);
    write_bytes(p, buf, 8 + hl + datalen);
    free(buf);
    return p;
}

static void expect_st_error(const char *p, int code, const char *what)
{
    TSET(ts);
    g_err[0] = 0;
    assert_int_equal(dt_safetensors_load(p, &ts, g_err), code);
    assert_non_null(strstr(g_err, p));
    if (what && !strstr(g_err, what))
        fail_msg("message \"%s\" lacks \"%s\"", g_err, what);
    assert_int_equal(ts.n, 0);
    dt_tensorset_free(&ts);
}

#define ONE(name, dt, shape, b, e) \
    "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape \
    ",\"data_offsets\":[" #b "," #e "]}"

static void test_st_truncated_file(void **s)
{
    write_bytes(tmp_path("t1.safetensors"), "abc", 3);
    expect_st_error(tmp_path("t1.safetensors"), DT_EFORMAT, "truncated");
    expect_st_error(st_raw("t2.safetensors", "{}", 0, 64), DT_EFORMAT,
                    "exceeds the file size");
}

static void test_st_huge_header_length(void **s)
{
    expect_st_error(st_raw("h.safetensors", "{}", 0, 1ull << 40), DT_EFORMAT,
                    "100 MB");
}

static void test_st_header_not_json(void **s)
{
    expect_st_error(st_raw("j.safetensors", "{\"a\":", 0, 0), DT_EFORMAT,
                    "JSON");
}

static void test_st_offsets_out_of_range(void **s)
{
    expect_st_error(st_raw("o.safetensors", "{" ONE("a", "F32", "[2]", 0, 8)
                           "}", 4, 0), DT_EFORMAT, "out of range");
}

static void test_st_overlapping_offsets(void **s)
{
    expect_st_error(st_raw("ov.safetensors", "{" ONE("a", "F32", "[2]", 0, 8)
                           "," ONE("b", "F32", "[2]", 4, 12) "}", 12, 0),
                    DT_EFORMAT, "overlaps");
}

static void test_st_data_not_covered(void **s)
{
    expect_st_error(st_raw("gap.safetensors", "{" ONE("a", "F32", "[1]", 4, 8)
                           "}", 8, 0), DT_EFORMAT, "gap");
    expect_st_error(st_raw("tail.safetensors", "{" ONE("a", "F32", "[1]", 0, 4)
                           "}", 8, 0), DT_EFORMAT, "cover");
}

static void test_st_shape_dtype_size_mismatch(void **s)
{
    expect_st_error(st_raw("sz.safetensors", "{" ONE("a", "F16", "[3]", 0, 8)
                           "}", 8, 0), DT_EFORMAT, "shape x dtype");
}

static void test_st_unknown_dtype(void **s)
{
    expect_st_error(st_raw("ud.safetensors", "{" ONE("a", "X7", "[2]", 0, 8)
                           "}", 8, 0), DT_EFORMAT, "unknown dtype X7");
}

static void test_st_unsupported_dtype_is_enotsup(void **s)
{
    expect_st_error(st_raw("i64.safetensors", "{" ONE("a", "I64", "[1]", 0, 8)
                           "}", 8, 0), DT_ENOTSUP, "I64");
}

static void test_st_duplicate_names(void **s)
{
    expect_st_error(st_raw("dup.safetensors", "{" ONE("a", "F32", "[1]", 0, 4)
                           "," ONE("a", "F32", "[1]", 4, 8) "}", 8, 0),
                    DT_EFORMAT, NULL);
}

static void write_shard(const char *name, const char *tname, float v)
{
    int64_t sh[1] = {2};
    float d[2] = {v, v + 1};
    dt_st_entry e = {tname, 1, sh, d, DT_F32};
    assert_int_equal(dt_safetensors_write(tmp_path(name), &e, 1, 0, g_err), 0);
}

static void test_hf_sharded_index_loads_every_shard(void **s)
{
    mkdir(tmp_path("shard"), 0755);
    write_shard("shard/a.safetensors", "x", 1);
    write_shard("shard/b.safetensors", "y", 5);
    const char *idx = "{\"metadata\":{},\"weight_map\":{\"x\":\"a.safetensors\","
                      "\"y\":\"b.safetensors\"}}";
    write_bytes(tmp_path("shard/model.safetensors.index.json"), idx,
                strlen(idx));
    TSET(ts);
    assert_int_equal(dt_hf_weights_load(tmp_path("shard"), &ts, g_err), 0);
    assert_int_equal(ts.n, 2);
    assert_true(dt_tensorset_find(&ts, "y")->data[1] == 6.0f);
    dt_tensorset_free(&ts);
    unlink(tmp_path("shard/b.safetensors"));
    assert_int_equal(dt_hf_weights_load(tmp_path("shard"), &ts, g_err),
                     DT_EIO);
    assert_non_null(strstr(g_err, "missing shard b.safetensors"));
    assert_int_equal(ts.n, 0);
    dt_tensorset_free(&ts);
}

/* ------------------------------------------------------------------ */
/* GGUF                                                               */

static void test_gguf_dequant_matches_gguf_package(void **s)
{
    TSET(ts);
    assert_int_equal(dt_gguf_load(FIX "quant.gguf", &ts, g_err), 0);
    const char *names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"};
    const dt_dtype src[] = {DT_F32, DT_F16, DT_BF16, DT_F32, DT_F32, DT_F32};
    for (int k = 0; k < 6; k++) {
        char rn[32];
        snprintf(rn, sizeof rn, "ref.%s", names[k]);
        dt_tensor *t = dt_tensorset_find(&ts, names[k]);
        dt_tensor *r = dt_tensorset_find(&ts, rn);
        assert_true(t && r && t->ndim == 2 && t->src_dtype == src[k]);
        assert_true(t->shape[0] == 2 && t->shape[1] == 64); /* outer first */
        for (int i = 0; i < 128; i++)
            if (fabsf(t->data[i] - r->data[i]) > 1e-6f * fabsf(r->data[i]))
                fail_msg("%s[%d] = %g, gguf gives %g", names[k], i,
                         t->data[i], r->data[i]);
    }
    dt_tensorset_free(&ts);
}

static void test_gguf_metadata_value_types(void **s)
{
    TSET(ts);
    assert_int_equal(dt_gguf_load_meta(FIX "quant.gguf", &ts, g_err), 0);
    assert_int_equal(ts.n, 0);
    struct { const char *k; int64_t v; } ints[] = {
        {"t.u8", 200}, {"t.i8", -100}, {"t.u16", 60000}, {"t.i16", -30000},
        {"t.u32", 4000000000LL}, {"t.i32", -2000000000LL},
        {"t.u64", 1LL << 40}, {"t.i64", -(1LL << 40)}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        const dt_meta *m = dt_tensorset_meta(&ts, ints[i].k);
        assert_true(m && m->type == DT_META_INT && m->i == ints[i].v);
    }
    assert_true(dt_tensorset_meta(&ts, "t.f32")->f == 1.5);
    assert_true(dt_tensorset_meta(&ts, "t.f64")->f == 2.25);
    assert_int_equal(dt_tensorset_meta(&ts, "t.bool")->type, DT_META_BOOL);
    assert_string_equal(dt_tensorset_meta(&ts, "t.str")->s, "h\xc3\xa9llo");
    const dt_meta *ia = dt_tensorset_meta(&ts, "t.iarr");
    assert_true(ia->type == DT_META_INT_ARR && ia->n == 3 && ia->iarr[2] == 3);
    assert_true(dt_tensorset_meta(&ts, "t.farr")->farr[1] == -1.0);
    const dt_meta *sa = dt_tensorset_meta(&ts, "t.sarr");
    assert_true(sa->n == 3 && !strcmp(sa->sarr[1], "bc") && !*sa->sarr[2]);
    assert_null(dt_tensorset_meta(&ts, "t.nested")); /* skipped */
    dt_tensorset_free(&ts);
}

/* A minimal GGUF writer for hand-built and hostile files. */
typedef struct gbuf { unsigned char b[4096]; size_t n; } gbuf;
static void g_put(gbuf *g, const void *p, size_t n)
{ memcpy(g->b + g->n, p, n), g->n += n; }
static void g_u32(gbuf *g, uint32_t v) { g_put(g, &v, 4); }
static void g_u64(gbuf *g, uint64_t v) { g_put(g, &v, 8); }
static void g_str(gbuf *g, const char *s)
{ g_u64(g, strlen(s)), g_put(g, s, strlen(s)); }
static void g_head(gbuf *g, uint64_t nt, uint64_t nkv)
{ g->n = 0, g_put(g, "GGUF", 4), g_u32(g, 3), g_u64(g, nt), g_u64(g, nkv); }
/* Tensor info with dims innermost first. */
static void g_tinfo(gbuf *g, const char *name, uint32_t nd, const uint64_t *d,
                    uint32_t type, uint64_t off)
{
    g_str(g, name);
    g_u32(g, nd);
    for (uint32_t i = 0; i < nd; i++)
        g_u64(g, d[i]);
    g_u32(g, type);
    g_u64(g, off);
}
static void g_align(gbuf *g) { while (g->n % 32) g->b[g->n++] = 0; }

static void test_gguf_handbuilt_q4_blocks(void **s)
{
    gbuf g;
    g_head(&g, 2, 0);
    uint64_t d0[1] = {32}, d1[2] = {32, 1};
    g_tinfo(&g, "a", 1, d0, 2 /* Q4_0 */, 0);
    g_tinfo(&g, "b", 2, d1, 3 /* Q4_1 */, 32);
    g_align(&g);
    uint16_t half = dt_f32_to_f16(0.5f), two = dt_f32_to_f16(2.0f);
    size_t base = g.n;
    g_put(&g, &half, 2);
    for (int j = 0; j < 16; j++)
        g.b[g.n++] = (unsigned char)(j | ((15 - j) << 4));
    g_align(&g);
    g_put(&g, &half, 2);
    g_put(&g, &two, 2);
    for (int j = 0; j < 16; j++)
        g.b[g.n++] = (unsigned char)(j | ((15 - j) << 4));
    assert_int_equal(g.n, base + 52);
    const char *p = tmp_path("hand.gguf");
    write_bytes(p, g.b, g.n);
    TSET(ts);
    assert_int_equal(dt_gguf_load(p, &ts, g_err), 0);
    dt_tensor *a = dt_tensorset_find(&ts, "a"), *b = dt_tensorset_find(&ts, "b");
    assert_true(b->shape[0] == 1 && b->shape[1] == 32); /* outermost first */
    for (int j = 0; j < 16; j++) {
        assert_true(a->data[j] == (j - 8) * 0.5f);          /* low nibbles */
        assert_true(a->data[16 + j] == (7 - j) * 0.5f);     /* high nibbles */
        assert_true(b->data[j] == j * 0.5f + 2.0f);
        assert_true(b->data[16 + j] == (15 - j) * 0.5f + 2.0f);
    }
    dt_tensorset_free(&ts);
}

static void expect_gguf_error(const gbuf *g, int code, const char *what)
{
    const char *p = tmp_path("bad.gguf");
    write_bytes(p, g->b, g->n);
    TSET(ts);
    g_err[0] = 0;
    assert_int_equal(dt_gguf_load(p, &ts, g_err), code);
    assert_non_null(strstr(g_err, p));
    if (what && !strstr(g_err, what))
        fail_msg("message \"%s\" lacks \"%s\"", g_err, what);
    assert_int_equal(ts.n + ts.nmeta, 0);
    dt_tensorset_free(&ts);
}

static void pad_to(gbuf *g, size_t n) { while (g->n < n) g->b[g->n++] = 0; }

static void test_gguf_bad_magic(void **s)
{
    gbuf g;
    g_head(&g, 0, 0);
    memcpy(g.b, "GGUX", 4);
    expect_gguf_error(&g, DT_EFORMAT, "magic");
}

static void test_gguf_huge_counts(void **s)
{
    gbuf g;
    g_head(&g, 1ull << 60, 0);
    pad_to(&g, 64);
    expect_gguf_error(&g, DT_EFORMAT, "counts");
    g_head(&g, 0, 1ull << 40);
    pad_to(&g, 64);
    expect_gguf_error(&g, DT_EFORMAT, "counts");
}

static void test_gguf_huge_string_length(void **s)
{
    gbuf g;
    g_head(&g, 0, 1);
    g_u64(&g, 1ull << 62); /* key length */
    pad_to(&g, 64);
    expect_gguf_error(&g, DT_EFORMAT, "string length");
}

static void test_gguf_offset_beyond_file(void **s)
{
    gbuf g;
    g_head(&g, 1, 0);
    uint64_t d[1] = {4};
    g_tinfo(&g, "w", 1, d, 0, 1ull << 20);
    g_align(&g);
    pad_to(&g, g.n + 16);
    expect_gguf_error(&g, DT_EFORMAT, "outside the data section");
}

static void test_gguf_too_many_dims(void **s)
{
    gbuf g;
    g_head(&g, 1, 0);
    uint64_t d[5] = {1, 1, 1, 1, 1};
    g_tinfo(&g, "w", 5, d, 0, 0);
    g_align(&g);
    pad_to(&g, g.n + 16);
    expect_gguf_error(&g, DT_EFORMAT, "n_dims");
}

static void test_gguf_unsupported_type_names_tensor(void **s)
{
    gbuf g;
    g_head(&g, 1, 0);
    uint64_t d[1] = {256};
    g_tinfo(&g, "blk.0.ffn_up.weight", 1, d, 12 /* Q4_K */, 0);
    g_align(&g);
    pad_to(&g, g.n + 256);
    expect_gguf_error(&g, DT_ENOTSUP, "blk.0.ffn_up.weight has unsupported "
                      "type Q4_K");
}

static void test_gguf_every_truncation_fails_cleanly(void **s)
{
    char *buf;
    size_t len;
    assert_int_equal(dt_read_file(FIX "quant.gguf", &buf, &len, g_err), 0);
    const char *p = tmp_path("cut.gguf");
    for (size_t cut = 0; cut < len; cut += (cut < 1200 ? 7 : 301)) {
        write_bytes(p, buf, cut);
        TSET(ts);
        assert_int_equal(dt_gguf_load(p, &ts, g_err), DT_EFORMAT);
        assert_non_null(strstr(g_err, p));
        dt_tensorset_free(&ts);
    }
    /* Random byte corruption: any outcome but a crash. */
    srand(7);
    for (int it = 0; it < 300; it++) {
        char *c = malloc(len);
        memcpy(c, buf, len);
        for (int k = 0; k < 4; k++)
            c[rand() % 1200] = (char)rand();
        write_bytes(p, c, len);
        free(c);
        TSET(ts);
        dt_gguf_load(p, &ts, g_err);
        dt_tensorset_free(&ts);
    }
    free(buf);
}

/* The tiny llama GGUF has Q/K permuted by llama.cpp's converter; loading
 * must give back the Hugging Face tensors exactly. */
static void test_gguf_llama_unpermutes_qk_like_transformers(void **s)
{
    dt_weights w;
    TSET(ref);
    assert_int_equal(dt_weights_load(FIX "tiny_llama.gguf", &w, g_err), 0);
    assert_int_equal(dt_safetensors_load(FIX "tiny_llama_ref.safetensors",
                                         &ref, g_err), 0);
    const dt_config *c = &w.cfg;
    int got[] = {c->arch, c->n_layer, c->d_model, c->n_head, c->n_kv_head,
                 c->head_dim, c->d_ff, c->vocab, c->tied, (int)c->rope_theta};
    int want[] = {DT_ARCH_LLAMA, 2, 16, 4, 2, 4, 32, 32, 0, 50000};
    assert_memory_equal(got, want, sizeof want);
    assert_string_equal(w.prefix, "model.");
    assert_int_equal(w.from_gguf, 1);
    assert_int_equal(w.ts.n, ref.n);
    for (int i = 0; i < ref.n; i++) {
        dt_tensor *t = dt_tensorset_find(&w.ts, ref.t[i].name);
        if (!t)
            fail_msg("missing %s", ref.t[i].name);
        assert_int_equal(t->numel, ref.t[i].numel);
        assert_int_equal(t->shape[0], ref.t[i].shape[0]);
        if (memcmp(t->data, ref.t[i].data, (size_t)t->numel * 4) != 0)
            fail_msg("%s differs from the HF tensor", t->name);
    }
    dt_tensorset_free(&ref);
    dt_weights_free(&w);
}

static void test_smollm2_gguf_config(void **s)
{
    if (access(SMOLLM, R_OK) != 0) {
        print_message("skipping: %s absent (run scripts/install-deps)\n",
                      SMOLLM);
        skip();
    }
    dt_weights w;
    assert_int_equal(dt_weights_load(SMOLLM, &w, g_err), 0);
    const dt_config *c = &w.cfg;
    int got[] = {c->n_layer, c->d_model, c->n_head, c->n_kv_head, c->head_dim,
                 c->d_ff, c->vocab, c->tied, (int)c->rope_theta};
    int want[] = {30, 576, 9, 3, 64, 1536, 49152, 1, 100000};
    assert_memory_equal(got, want, sizeof want);
    assert_null(dt_tensorset_find(&w.ts, "lm_head.weight"));
    dt_tensor *k = dt_tensorset_find(&w.ts, "layers.29.self_attn.k_proj.weight");
    assert_int_equal(k->shape[0], 192);
    assert_int_equal(k->shape[1], 576);
    assert_int_equal(w.ts.n, 2 + 30 * 9);
    dt_weights_free(&w);
}

/* ------------------------------------------------------------------ */
/* HF directories, export, PEFT                                       */

enum { GC = 8, GL = 2, GV = 16, GP = 12, GF = 32 };

/* A tiny GPT-2 directory in the file layout: Conv1D (in, out), prefix,
 * attn.bias buffers, bf16. `skip` leaves one tensor out. */
static void make_gpt2_dir(const char *dir, const char *prefix, int lm_head,
                          const char *skip_name)
{
    mkdir(dir, 0755);
    const char *cfg = "{\"architectures\":[\"GPT2LMHeadModel\"],\"model_type\":"
                      "\"gpt2\",\"n_layer\":2,\"n_embd\":8,\"n_head\":2,"
                      "\"n_positions\":12,\"vocab_size\":16,\"n_inner\":null}";
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_bytes(p, cfg, strlen(cfg));
    struct { const char *n; int64_t a, b; } L[] = {
        {"ln_1.weight", GC, 0}, {"ln_1.bias", GC, 0},
        {"attn.c_attn.weight", GC, 3 * GC}, {"attn.c_attn.bias", 3 * GC, 0},
        {"attn.c_proj.weight", GC, GC}, {"attn.c_proj.bias", GC, 0},
        {"ln_2.weight", GC, 0}, {"ln_2.bias", GC, 0},
        {"mlp.c_fc.weight", GC, GF}, {"mlp.c_fc.bias", GF, 0},
        {"mlp.c_proj.weight", GF, GC}, {"mlp.c_proj.bias", GC, 0},
        {"attn.bias", 1, GP}};
    dt_st_entry e[64];
    char names[64][96];
    int64_t shapes[64][2];
    float *bufs[64];
    int n = 0;
    for (int t = -4; t < (int)(GL * 13) + 1; t++) {
        const char *base;
        int64_t a, b;
        if (t == -4) base = "wte.weight", a = GV, b = GC;
        else if (t == -3) base = "wpe.weight", a = GP, b = GC;
        else if (t == -2) base = "ln_f.weight", a = GC, b = 0;
        else if (t == -1) base = "ln_f.bias", a = GC, b = 0;
        else if (t == GL * 13) {
            if (!lm_head)
                continue;
            base = "lm_head.weight", a = GV, b = GC;
        } else base = L[t % 13].n, a = L[t % 13].a, b = L[t % 13].b;
        if (t >= 0 && t < GL * 13)
            snprintf(names[n], 96, "%sh.%d.%s", prefix, t / 13, base);
        else
            snprintf(names[n], 96, "%s%s", t == GL * 13 ? "" : prefix, base);
        if (skip_name && strcmp(names[n], skip_name) == 0)
            continue;
        shapes[n][0] = a;
        shapes[n][1] = b;
        int64_t numel = a * (b ? b : 1);
        bufs[n] = malloc((size_t)numel * 4);
        for (int64_t i = 0; i < numel; i++)
            bufs[n][i] = dt_bf16_to_f32(dt_f32_to_bf16(
                sinf(0.37f * (float)i + (float)n)));
        e[n] = (dt_st_entry){names[n], b ? 2 : 1, shapes[n], bufs[n], DT_BF16};
        n++;
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(dt_safetensors_write(p, e, n, NULL, g_err), 0);
    for (int i = 0; i < n; i++)
        free(bufs[i]);
}

static void test_gpt2_dir_loads_canonical(void **s)
{
    const char *dir = tmp_path("gpt2");
    make_gpt2_dir(dir, "transformer.", 1, NULL);
    dt_weights w;
    TSET(raw);
    assert_int_equal(dt_weights_load(dir, &w, g_err), 0);
    assert_int_equal(dt_hf_weights_load(dir, &raw, g_err), 0);
    assert_int_equal(w.cfg.arch, DT_ARCH_GPT2);
    assert_int_equal(w.cfg.d_ff, 4 * GC);
    assert_int_equal(w.cfg.tied, 1);
    assert_int_equal(w.dtype, DT_BF16);
    assert_string_equal(w.prefix, "transformer.");
    assert_null(dt_tensorset_find(&w.ts, "lm_head.weight")); /* tied: dropped */
    assert_null(dt_tensorset_find(&w.ts, "h.0.attn.bias"));
    assert_int_equal(w.ts.n, 4 + 12 * GL);
    dt_tensor *c = dt_tensorset_find(&w.ts, "h.1.attn.c_attn.weight");
    dt_tensor *f = dt_tensorset_find(&raw, "transformer.h.1.attn.c_attn.weight");
    assert_int_equal(c->shape[0], 3 * GC);
    assert_int_equal(c->shape[1], GC);
    for (int o = 0; o < 3 * GC; o++)
        for (int k = 0; k < GC; k++)
            assert_true(c->data[o * GC + k] == f->data[k * 3 * GC + o]);
    dt_tensorset_free(&raw);
    dt_weights_free(&w);
}

static void test_gpt2_missing_tensor_and_bad_shape(void **s)
{
    dt_weights w;
    make_gpt2_dir(tmp_path("g_miss"), "", 0, "h.1.mlp.c_fc.bias");
    assert_int_equal(dt_weights_load(tmp_path("g_miss"), &w, g_err),
                     DT_EFORMAT);
    assert_non_null(strstr(g_err, "missing tensor h.1.mlp.c_fc.bias"));
    make_gpt2_dir(tmp_path("g_shape"), "", 0, NULL);
    const char *cfg = "{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_embd\":8,"
                      "\"n_head\":2,\"n_positions\":12,\"vocab_size\":17}";
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", tmp_path("g_shape"));
    write_bytes(p, cfg, strlen(cfg));
    assert_int_equal(dt_weights_load(tmp_path("g_shape"), &w, g_err),
                     DT_EFORMAT);
    assert_non_null(strstr(g_err, "wte.weight: shape (16,8) expected (17,8)"));
}

static void test_unknown_architecture_is_enotsup(void **s)
{
    mkdir(tmp_path("bert"), 0755);
    const char *cfg = "{\"model_type\":\"bert\"}";
    write_bytes(tmp_path("bert/config.json"), cfg, strlen(cfg));
    dt_weights w;
    assert_int_equal(dt_weights_load(tmp_path("bert"), &w, g_err), DT_ENOTSUP);
    assert_non_null(strstr(g_err, "unknown architecture bert"));
}

static void test_llama_untied_needs_lm_head(void **s)
{
    /* The tiny llama reference tensors, without prefix and lm_head. */
    TSET(ref);
    assert_int_equal(dt_safetensors_load(FIX "tiny_llama_ref.safetensors",
                                         &ref, g_err), 0);
    dt_st_entry e[64];
    int n = 0;
    for (int i = 0; i < ref.n; i++)
        if (strcmp(ref.t[i].name, "lm_head.weight") != 0)
            e[n++] = (dt_st_entry){ref.t[i].name, ref.t[i].ndim,
                                   ref.t[i].shape, ref.t[i].data, DT_F32};
    mkdir(tmp_path("llama"), 0755);
    assert_int_equal(dt_safetensors_write(tmp_path("llama/model.safetensors"),
                                          e, n, NULL, g_err), 0);
    const char *cfg = "{\"model_type\":\"llama\",\"num_hidden_layers\":2,"
        "\"hidden_size\":16,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
        "\"intermediate_size\":32,\"vocab_size\":32,\"rms_norm_eps\":1e-5,"
        "\"rope_parameters\":{\"rope_theta\":50000.0,\"rope_type\":\"default\"}}";
    write_bytes(tmp_path("llama/config.json"), cfg, strlen(cfg));
    dt_weights w;
    assert_int_equal(dt_weights_load(tmp_path("llama"), &w, g_err), DT_EFORMAT);
    assert_non_null(strstr(g_err, "missing tensor lm_head.weight"));
    const char *tied = "{\"model_type\":\"llama\",\"num_hidden_layers\":2,"
        "\"hidden_size\":16,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
        "\"intermediate_size\":32,\"vocab_size\":32,\"tie_word_embeddings\":true,"
        "\"rope_parameters\":{\"rope_theta\":50000.0,\"rope_type\":\"default\"}}";
    write_bytes(tmp_path("llama/config.json"), tied, strlen(tied));
    assert_int_equal(dt_weights_load(tmp_path("llama"), &w, g_err), 0);
    assert_true(w.cfg.rope_theta == 50000.0f);
    assert_string_equal(w.prefix, "");
    dt_weights_free(&w);
    dt_tensorset_free(&ref);
}

static void test_export_hf_roundtrip_keeps_layout(void **s)
{
    const char *dir = tmp_path("gpt2x"), *out = tmp_path("gpt2x_out");
    make_gpt2_dir(dir, "transformer.", 0, NULL);
    write_bytes(tmp_path("gpt2x/vocab.json"), "{}", 2);
    dt_weights w, w2;
    assert_int_equal(dt_weights_load(dir, &w, g_err), 0);
    assert_int_equal(dt_export_hf(&w, &w.ts, NULL, out, g_err), 0);
    assert_int_equal(dt_weights_load(out, &w2, g_err), 0);
    assert_int_equal(w2.ts.n, w.ts.n);
    assert_int_equal(w2.dtype, DT_BF16);
    for (int i = 0; i < w.ts.n; i++) {
        dt_tensor *t = dt_tensorset_find(&w2.ts, w.ts.t[i].name);
        assert_non_null(t);
        assert_memory_equal(t->data, w.ts.t[i].data, t->numel * 4);
    }
    TSET(a); /* file keys and orientation as in the input */
    TSET(b);
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    assert_int_equal(dt_safetensors_load(p, &b, g_err), 0);
    assert_int_equal(dt_hf_weights_load(dir, &a, g_err), 0);
    assert_int_equal(b.n, a.n - GL); /* minus the attn.bias buffers */
    for (int i = 0; i < b.n; i++) {
        dt_tensor *t = dt_tensorset_find(&a, b.t[i].name);
        assert_non_null(t);
        assert_int_equal(t->shape[0], b.t[i].shape[0]);
        assert_memory_equal(t->data, b.t[i].data, t->numel * 4);
    }
    snprintf(p, sizeof p, "%s/vocab.json", out);
    assert_int_equal(access(p, R_OK), 0);
    dt_tensorset_free(&a);
    dt_tensorset_free(&b);
    dt_weights_free(&w2);
    dt_weights_free(&w);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static char *config_dtype(const char *out)
{
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", out);
    json_t *j = json_load_file(p, 0, NULL);
    assert_non_null(j);
    char *r = strdup(json_string_value(json_object_get(j, "torch_dtype")));
    json_decref(j);
    return r;
}

/* export_dtype: the fp32 merge is rounded once, to nearest even, into the
 * asked dtype (ties and just-above-ties of bf16 and f16), config.json's
 * torch_dtype names it, and the default is the input's dtype. About 0.1 s. */
static void test_export_dtype_rounds_to_nearest_even(void **s)
{
    const char *dir = tmp_path("gpt2d"), *out = tmp_path("gpt2d_out");
    make_gpt2_dir(dir, "transformer.", 0, NULL);
    dt_weights w;
    assert_int_equal(dt_weights_load(dir, &w, g_err), 0);
    const float u8 = ldexpf(1, -8), u11 = ldexpf(1, -11);
    const float vals[8] = {1 + u8, 1 + 3 * u8, 1 + u8 + ldexpf(1, -16),
                           -(1 + u8), 1 + u11, 1 + 3 * u11,
                           1 + u11 + ldexpf(1, -20), 3};
    const float want_bf16[8] = {1, 1 + ldexpf(1, -6), 1 + ldexpf(1, -7), -1,
                                1, 1, 1, 3};
    const float want_f16[8] = {1 + u8, 1 + 3 * u8, 1 + u8, -(1 + u8), 1,
                               1 + ldexpf(1, -9), 1 + ldexpf(1, -10), 3};
    dt_tensor *wte = dt_tensorset_find(&w.ts, "wte.weight");
    assert_non_null(wte);
    for (int64_t i = 0; i < wte->numel; i++)
        wte->data[i] = vals[i % 8];
    static const struct { int dtype; dt_dtype file; const char *name; } cases[] = {
        {DT_BF16, DT_BF16, "bfloat16"}, {DT_F16, DT_F16, "float16"},
        {DT_F32, DT_F32, "float32"}, {-1, DT_BF16, "bfloat16"} /* input's */};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        dt_export_opts xo;
        dt_export_opts_default(&xo);
        xo.dtype = cases[c].dtype;
        rm_rf(out);
        assert_int_equal(dt_export_hf_opts(&w, &w.ts, NULL, out, &xo, g_err), 0);
        char p[600];
        snprintf(p, sizeof p, "%s/model.safetensors", out);
        TSET(b);
        assert_int_equal(dt_safetensors_load(p, &b, g_err), 0);
        for (int i = 0; i < b.n; i++)
            assert_int_equal(b.t[i].src_dtype, cases[c].file);
        dt_tensor *t = dt_tensorset_find(&b, "transformer.wte.weight");
        assert_non_null(t);
        for (int64_t i = 0; i < t->numel; i++) {
            float want = cases[c].file == DT_BF16 ? want_bf16[i % 8]
                       : cases[c].file == DT_F16  ? want_f16[i % 8]
                                                  : vals[i % 8];
            if (t->data[i] != want)
                fail_msg("dtype %s: element %lld: %.9g, want %.9g",
                         cases[c].name, (long long)i, (double)t->data[i],
                         (double)want);
        }
        char *cd = config_dtype(out);
        assert_string_equal(cd, cases[c].name);
        free(cd);
        dt_tensorset_free(&b);
    }
    dt_dtype d;
    assert_int_equal(dt_export_dtype_parse("bfloat16", &d, "export_dtype", g_err), 0);
    assert_int_equal(d, DT_BF16);
    assert_int_equal(dt_export_dtype_parse("float64", &d, "export_dtype", g_err),
                     DT_EINVAL);
    assert_non_null(strstr(g_err, "export_dtype"));
    w.from_gguf = 1; /* a GGUF input's default is bf16 */
    assert_int_equal(dt_export_dtype_default(&w), DT_BF16);
    w.from_gguf = 0;
    dt_weights_free(&w);
}

/* Above the shard size the merged model is model-0000i-of-0000n.safetensors
 * plus model.safetensors.index.json in transformers' format; it loads back
 * the same. Below it: one model.safetensors, no index. About 0.1 s. */
static void test_export_shards_with_index(void **s)
{
    const char *dir = tmp_path("gpt2s"), *out = tmp_path("gpt2s_out");
    make_gpt2_dir(dir, "transformer.", 0, NULL);
    dt_weights w, w2;
    assert_int_equal(dt_weights_load(dir, &w, g_err), 0);
    dt_export_opts xo;
    dt_export_opts_default(&xo);
    xo.dtype = DT_F32;
    xo.shard_size = 1000; /* bytes */
    assert_int_equal(dt_export_hf_opts(&w, &w.ts, NULL, out, &xo, g_err), 0);
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    assert_int_not_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", out);
    json_t *idx = json_load_file(p, 0, NULL);
    assert_non_null(idx);
    json_t *wm = json_object_get(idx, "weight_map");
    json_int_t total = json_integer_value(json_object_get(
        json_object_get(idx, "metadata"), "total_size"));
    assert_int_equal(json_object_size(wm), (size_t)w.ts.n); /* untied GPT-2: all */
    /* every shard file: its tensors are the ones the map gives it, its data
     * at most the shard size unless it holds one tensor */
    int nshards = 0;
    char first[64] = "";
    json_int_t sum = 0;
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        const char *fn = json_string_value(v);
        assert_non_null(fn);
        if (!first[0])
            snprintf(first, sizeof first, "%s", fn);
        int k, n;
        assert_int_equal(sscanf(fn, "model-%05d-of-%05d.safetensors", &k, &n), 2);
        nshards = n;
        snprintf(p, sizeof p, "%s/%s", out, fn);
        TSET(sh);
        assert_int_equal(dt_safetensors_load(p, &sh, g_err), 0);
        assert_non_null(dt_tensorset_find(&sh, key));
        int64_t bytes = 0;
        for (int i = 0; i < sh.n; i++) {
            bytes += sh.t[i].numel * 4;
            assert_string_equal(json_string_value(json_object_get(
                wm, sh.t[i].name)), fn);
            if (!strcmp(sh.t[i].name, key))
                sum += sh.t[i].numel * 4;
        }
        assert_true(bytes <= 1000 || sh.n == 1);
        dt_tensorset_free(&sh);
    }
    assert_true(nshards > 1);
    assert_int_equal(strncmp(first, "model-00001-of-", 15), 0);
    assert_int_equal(sum, total);
    json_decref(idx);
    assert_int_equal(dt_weights_load(out, &w2, g_err), 0);
    assert_int_equal(w2.ts.n, w.ts.n);
    for (int i = 0; i < w.ts.n; i++) {
        dt_tensor *t = dt_tensorset_find(&w2.ts, w.ts.t[i].name);
        assert_non_null(t);
        assert_memory_equal(t->data, w.ts.t[i].data, t->numel * 4);
    }
    dt_weights_free(&w2);
    rm_rf(out); /* the default (5 GB): one file, no index */
    xo.shard_size = 0;
    assert_int_equal(dt_export_hf_opts(&w, &w.ts, NULL, out, &xo, g_err), 0);
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    assert_int_equal(access(p, R_OK), 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", out);
    assert_int_not_equal(access(p, F_OK), 0);
    dt_weights_free(&w);
}

/* The exported tokenizer carries the chat template training rendered with
 * (the GGUF's tokenizer.chat_template): a conversation renders the same with
 * the base's template and with the exported one, byte for byte, and the
 * exported directory reads back as that template. About 1 s. */
static void test_export_chat_template_matches_training(void **s)
{
    if (access(SMOLLM, R_OK) != 0) {
        print_message("skipping: %s absent (run scripts/install-deps)\n",
                      SMOLLM);
        skip();
    }
    TSET(meta);
    assert_int_equal(dt_gguf_load_meta(SMOLLM, &meta, g_err), 0);
    dt_tokenizer *tok = dt_tokenizer_from_gguf(&meta, g_err);
    assert_non_null(tok);
    const char *train_tmpl = dt_tokenizer_chat_template(tok);
    assert_non_null(train_tmpl);
    dt_weights w;
    memset(&w, 0, sizeof w);
    w.ts = meta; /* metadata only: the tokenizer files are what is checked */
    w.from_gguf = 1;
    snprintf(w.prefix, sizeof w.prefix, "model.");
    TSET(none);
    const char *out = tmp_path("smollm_export");
    assert_int_equal(dt_export_hf_opts(&w, &none, tok, out, NULL, g_err), 0);
    dt_tokenizer *tok2 = dt_tokenizer_load_dir(out, g_err);
    assert_non_null(tok2);
    assert_string_equal(dt_tokenizer_chat_template(tok2), train_tmpl);
    json_t *convs[2] = {
        json_pack("[{s:s,s:s},{s:s,s:s},{s:s,s:s}]", "role", "user", "content",
                  "Hi", "role", "assistant", "content", "Hello!", "role",
                  "user", "content", "2+2?"),
        json_pack("[{s:s,s:s},{s:s,s:s},{s:s,s:s}]", "role", "system",
                  "content", "Be terse.", "role", "user", "content", "Hi",
                  "role", "assistant", "content", "Hello!")};
    for (int c = 0; c < 2; c++) {
        dt_chat_out a, b;
        assert_int_equal(dt_chat_render(train_tmpl, convs[c], NULL, NULL, 0,
                                        &a, g_err), 0);
        assert_int_equal(dt_chat_render(dt_tokenizer_chat_template(tok2),
                                        convs[c], NULL, NULL, 0, &b, g_err), 0);
        assert_int_equal(a.len, b.len);
        assert_memory_equal(a.text, b.text, a.len);
        dt_chat_out_free(&a);
        dt_chat_out_free(&b);
        json_decref(convs[c]);
    }
    dt_tokenizer_free(tok2);
    dt_tokenizer_free(tok);
    dt_tensorset_free(&meta);
}

static void test_peft_gpt2_qv_slices_become_one_c_attn(void **s)
{
    const char *dir = tmp_path("gpt2p"), *out = tmp_path("peft");
    make_gpt2_dir(dir, "", 0, NULL);
    dt_weights w;
    assert_int_equal(dt_weights_load(dir, &w, g_err), 0);
    enum { R = 2 };
    float Aq[R * GC], Bq[GC * R], Av[R * GC], Bv[GC * R];
    for (int i = 0; i < R * GC; i++) {
        Aq[i] = (float)i * 0.5f, Av[i] = -(float)i;
        Bq[i] = (float)i + 1, Bv[i] = 0.25f * (float)i;
    }
    dt_adapter_entry e[2] = {
        {"h.0.attn.c_attn.weight", 0, GC, 3 * GC, GC, R, Aq, Bq},
        {"h.0.attn.c_attn.weight", 2 * GC, GC, 3 * GC, GC, R, Av, Bv}};
    assert_int_equal(dt_export_peft(&w, e, 2, 16.0f, "gpt2", out, g_err), 0);
    char p[600];
    snprintf(p, sizeof p, "%s/adapter_config.json", out);
    json_t *cfg = json_load_file(p, 0, NULL);
    assert_non_null(cfg);
    assert_int_equal(json_integer_value(json_object_get(cfg, "r")), 2 * R);
    assert_true(json_number_value(json_object_get(cfg, "lora_alpha")) == 32.0);
    assert_true(json_is_true(json_object_get(cfg, "fan_in_fan_out")));
    assert_string_equal(json_string_value(json_array_get(
        json_object_get(cfg, "target_modules"), 0)), "c_attn");
    json_decref(cfg);
    TSET(ts);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", out);
    assert_int_equal(dt_safetensors_load(p, &ts, g_err), 0);
    dt_tensor *B = dt_tensorset_find(&ts, "base_model.model.transformer.h.0."
                                     "attn.c_attn.lora_B.weight");
    assert_non_null(B);
    assert_int_equal(B->shape[0], 3 * GC);
    assert_int_equal(B->shape[1], 2 * R);
    assert_true(B->data[0 * 2 * R + 1] == Bq[1]);        /* q rows, q cols */
    assert_true(B->data[0 * 2 * R + R] == 0.0f);         /* q rows, v cols */
    assert_true(B->data[GC * 2 * R + 0] == 0.0f);        /* k rows */
    assert_true(B->data[(2 * GC + 1) * 2 * R + R + 1] == Bv[1 * R + 1]);
    dt_tensorset_free(&ts);
    dt_peft_adapter ad;
    assert_int_equal(dt_peft_load(out, &w, &ad, g_err), 0);
    assert_int_equal(ad.rank, 2 * R);
    assert_true(ad.alpha == 32.0f);
    assert_string_equal(ad.targets, "c_attn");
    dt_tensor *A = dt_tensorset_find(&ad.ts, "h.0.attn.c_attn.lora_A");
    assert_non_null(A);
    assert_true(A->data[R * GC + 3] == Av[3]);
    assert_non_null(dt_tensorset_find(&ad.ts, "h.0.attn.c_attn.lora_B"));
    dt_peft_free(&ad);
    dt_weights_free(&w);
}

/* ------------------------------------------------------------------ */
/* Streaming load: dt_weights_open + dt_model_new                      */

/* Every device weight of m equals the fp32 tensor of the eager load. */
static void assert_device_equals(dt_backend *be, dt_model *m,
                                 const dt_weights *ref)
{
    for (int i = 0; i < ref->ts.n; i++) {
        const dt_tensor *t = &ref->ts.t[i];
        float *dev = NULL;
        long n = 0;
        if (dt_model_get_weight(m, t->name, &dev, &n) != 0)
            fail_msg("%s not on the device", t->name);
        assert_int_equal(n, t->numel);
        float *h = malloc((size_t)n * sizeof(float));
        be->i.download(be, h, dev, (size_t)n * sizeof(float));
        if (memcmp(h, t->data, (size_t)n * sizeof(float)) != 0)
            fail_msg("%s: uploaded values differ from dt_weights_load's",
                     t->name);
        free(h);
    }
}

/* One Llama layer at C = V = F = 1024: nine 4 MiB matrices (embedding,
 * q, k, v, o, gate, up, down, untied head) and three norms, in bf16. */
enum { SC = 1024 };
static int64_t make_big_llama(const char *dir)
{
    mkdir(dir, 0755);
    const char *cfg = "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":"
                      "\"llama\",\"num_hidden_layers\":1,\"hidden_size\":1024,"
                      "\"num_attention_heads\":8,\"num_key_value_heads\":8,"
                      "\"intermediate_size\":1024,\"vocab_size\":1024,"
                      "\"tie_word_embeddings\":false}";
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_bytes(p, cfg, strlen(cfg));
    static const char *const names[] = {
        "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight", "model.norm.weight",
        "lm_head.weight"};
    enum { N = sizeof names / sizeof names[0] };
    dt_st_entry e[N];
    int64_t shapes[N][2];
    float *buf = malloc((size_t)SC * SC * sizeof(float));
    for (int64_t i = 0; i < (int64_t)SC * SC; i++)
        buf[i] = sinf(0.001f * (float)i) * 0.05f;
    int64_t total = 0;
    for (int i = 0; i < N; i++) {
        int norm = strstr(names[i], "norm") != NULL;
        shapes[i][0] = SC;
        shapes[i][1] = norm ? 0 : SC;
        e[i] = (dt_st_entry){names[i], norm ? 1 : 2, shapes[i], buf, DT_BF16};
        total += (norm ? SC : (int64_t)SC * SC) * 4;
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(dt_safetensors_write(p, e, N, NULL, g_err), 0);
    free(buf);
    return total;
}

/* Issue 14: dt_model_new converts, uploads and frees one tensor at a time
 * from the mapped file: the host never holds two 4 MiB tensors at once,
 * where dt_weights_load holds all nine. The device gets the same bits. */
static void test_open_streams_one_tensor_at_a_time(void **s)
{
    const char *dir = tmp_path("big_llama");
    int64_t total = make_big_llama(dir);
    const int64_t one = (int64_t)SC * SC * 4; /* the largest tensor */
    dt_weights ref, w;
    assert_int_equal(dt_weights_load(dir, &ref, g_err), 0);
    assert_int_equal(dt_weights_host_peak(&ref), total); /* eager: all */
    assert_true(total > 8 * one);

    assert_int_equal(dt_weights_open(dir, &w, g_err), 0);
    assert_int_equal(w.ts.n, ref.ts.n);
    assert_int_equal(w.dtype, DT_BF16);
    for (int i = 0; i < w.ts.n; i++)
        assert_null(w.ts.t[i].data); /* nothing converted yet */
    assert_int_equal(dt_weights_host_peak(&w), 0);
    dt_backend *be = dt_backend_cpu_new(1, g_err);
    assert_non_null(be);
    dt_lora_opts lo = {DT_LORA, 0, 0.0f, 0, DT_PREC_FP32, 0, 0.0f, 0};
    dt_model *m = NULL;
    w.release_on_upload = 1;
    assert_int_equal(dt_model_new(be, &w, &lo, 1, 4, 0, &m, g_err), 0);
    int64_t peak = dt_weights_host_peak(&w);
    printf("host fp32 peak at load: %lld bytes streamed, %lld eager (%d "
           "tensors)\n", (long long)peak, (long long)total, w.ts.n);
    assert_true(peak < 2 * one);
    assert_int_equal(peak, one);
    for (int i = 0; i < w.ts.n; i++)
        assert_null(w.ts.t[i].data); /* none kept on the host */
    assert_device_equals(be, m, &ref);
    /* Released: the file is unmapped, nothing can be converted again. */
    dt_weights_release_data(&w);
    assert_null(dt_weights_data(&w, &w.ts.t[0], g_err));
    assert_non_null(strstr(g_err, "released"));
    assert_int_equal(w.ts.nmaps, 0);
    dt_model_free(m);
    dt_weights_free(&w);

    /* Without release_on_upload the host keeps every tensor, as an eager
     * load does after dt_model_new. */
    assert_int_equal(dt_weights_open(dir, &w, g_err), 0);
    assert_int_equal(dt_model_new(be, &w, &lo, 1, 4, 0, &m, g_err), 0);
    for (int i = 0; i < w.ts.n; i++) {
        assert_non_null(w.ts.t[i].data);
        assert_memory_equal(w.ts.t[i].data, ref.ts.t[i].data,
                            (size_t)ref.ts.t[i].numel * 4);
    }
    assert_int_equal(dt_weights_host_peak(&w), total);
    dt_model_free(m);
    dt_weights_free(&w);
    dt_weights_free(&ref);
    dt_backend_free(be);
}

/* The conversions that make the canonical form, done lazily at upload:
 * GPT-2's Conv1D transposed (bf16), llama.cpp's Q/K rows un-permuted (f32
 * GGUF) and SmolLM2's Q4_1 / Q8_0 blocks; the bf16 device path too. */
static void stream_matches_load(const char *path, dt_precision prec)
{
    dt_weights ref, w;
    assert_int_equal(dt_weights_load(path, &ref, g_err), 0);
    assert_int_equal(dt_weights_open(path, &w, g_err), 0);
    dt_backend *be = dt_backend_cpu_new(1, g_err);
    dt_lora_opts lo = {DT_LORA, 4, 8.0f, DT_T_Q | DT_T_V, prec, 0, 0.0f, 0};
    dt_model *m = NULL;
    w.release_on_upload = 1;
    assert_int_equal(dt_model_new(be, &w, &lo, 1, 4, 0, &m, g_err), 0);
    int64_t big = 0;
    for (int i = 0; i < ref.ts.n; i++)
        if (ref.ts.t[i].numel * 4 > big)
            big = ref.ts.t[i].numel * 4;
    assert_true(dt_weights_host_peak(&w) <= big);
    if (prec == DT_PREC_FP32) {
        assert_device_equals(be, m, &ref);
    } else {
        /* bf16: the merged export converts the fp32 bases from the file
         * again while the weights are not released... */
        dt_tensorset merged;
        assert_int_equal(dt_model_merged(m, &merged, g_err), 0);
        for (int i = 0; i < ref.ts.n; i++) {
            dt_tensor *t = dt_tensorset_find(&merged, ref.ts.t[i].name);
            assert_non_null(t);
            if (memcmp(t->data, ref.ts.t[i].data, (size_t)t->numel * 4))
                fail_msg("%s: merged base differs", t->name);
        }
        dt_tensorset_free(&merged);
        /* ...and refuses once they are */
        dt_weights_release_data(&w);
        assert_int_equal(dt_model_merged(m, &merged, g_err), DT_EINVAL);
        assert_non_null(strstr(g_err, "released"));
    }
    dt_model_free(m);
    dt_backend_free(be);
    dt_weights_free(&w);
    dt_weights_free(&ref);
}

static void test_open_conversions_match_load(void **s)
{
    const char *dir = tmp_path("gpt2_stream");
    make_gpt2_dir(dir, "transformer.", 1, NULL);
    stream_matches_load(dir, DT_PREC_FP32);
    stream_matches_load(dir, DT_PREC_BF16);
    stream_matches_load(FIX "tiny_llama.gguf", DT_PREC_FP32);
    stream_matches_load(FIX "tiny_llama.gguf", DT_PREC_BF16);
    if (access(SMOLLM, R_OK) == 0)
        stream_matches_load(SMOLLM, DT_PREC_FP32);
    else
        printf("SmolLM2 GGUF not found (make deps): its Q4_1 case skipped\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_st_roundtrip_f32),
        cmocka_unit_test(test_st_roundtrip_f16),
        cmocka_unit_test(test_st_roundtrip_bf16),
        cmocka_unit_test(test_st_header_is_padded_to_8_bytes),
        cmocka_unit_test(test_st_truncated_file),
        cmocka_unit_test(test_st_huge_header_length),
        cmocka_unit_test(test_st_header_not_json),
        cmocka_unit_test(test_st_offsets_out_of_range),
        cmocka_unit_test(test_st_overlapping_offsets),
        cmocka_unit_test(test_st_data_not_covered),
        cmocka_unit_test(test_st_shape_dtype_size_mismatch),
        cmocka_unit_test(test_st_unknown_dtype),
        cmocka_unit_test(test_st_unsupported_dtype_is_enotsup),
        cmocka_unit_test(test_st_duplicate_names),
        cmocka_unit_test(test_hf_sharded_index_loads_every_shard),
        cmocka_unit_test(test_gguf_dequant_matches_gguf_package),
        cmocka_unit_test(test_gguf_metadata_value_types),
        cmocka_unit_test(test_gguf_handbuilt_q4_blocks),
        cmocka_unit_test(test_gguf_bad_magic),
        cmocka_unit_test(test_gguf_huge_counts),
        cmocka_unit_test(test_gguf_huge_string_length),
        cmocka_unit_test(test_gguf_offset_beyond_file),
        cmocka_unit_test(test_gguf_too_many_dims),
        cmocka_unit_test(test_gguf_unsupported_type_names_tensor),
        cmocka_unit_test(test_gguf_every_truncation_fails_cleanly),
        cmocka_unit_test(test_gguf_llama_unpermutes_qk_like_transformers),
        cmocka_unit_test(test_smollm2_gguf_config),
        cmocka_unit_test(test_gpt2_dir_loads_canonical),
        cmocka_unit_test(test_gpt2_missing_tensor_and_bad_shape),
        cmocka_unit_test(test_unknown_architecture_is_enotsup),
        cmocka_unit_test(test_llama_untied_needs_lm_head),
        cmocka_unit_test(test_export_hf_roundtrip_keeps_layout),
        cmocka_unit_test(test_export_dtype_rounds_to_nearest_even),
        cmocka_unit_test(test_export_shards_with_index),
        cmocka_unit_test(test_export_chat_template_matches_training),
        cmocka_unit_test(test_peft_gpt2_qv_slices_become_one_c_attn),
        cmocka_unit_test(test_open_streams_one_tensor_at_a_time),
        cmocka_unit_test(test_open_conversions_match_load),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
