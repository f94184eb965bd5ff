/* gguf.c: GGUF (v2, v3) reader with dequantization to fp32.
 *
 * Layout: "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv
 * (string key, u32 type, value), then n_tensors (string name, u32 n_dims,
 * u64 dims[n_dims] innermost first, u32 type, u64 offset), padding to
 * general.alignment (default 32), then the data section; tensor offsets are
 * relative to it. Strings are u64 length + bytes. The file is mmap'd and every
 * read is bounds-checked: a hostile file gives DT_EFORMAT, never a crash. */
#include "tensorfile.h"
#include "base/dt.h"
#include "half.h"
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum { GV_U8 = 0, GV_I8, GV_U16, GV_I16, GV_U32, GV_I32, GV_F32, GV_BOOL,
       GV_STR, GV_ARR, GV_U64, GV_I64, GV_F64, GV_COUNT };

/* ggml tensor types this reader knows about (names for error messages). */
enum { GT_F32 = 0, GT_F16 = 1, GT_Q4_0 = 2, GT_Q4_1 = 3, GT_Q8_0 = 8,
       GT_BF16 = 30 };
static const char *const gt_names[] = {
    [0] = "F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [6] = "Q5_0",
    [7] = "Q5_1", [8] = "Q8_0", [9] = "Q8_1", [10] = "Q2_K", [11] = "Q3_K",
    [12] = "Q4_K", [13] = "Q5_K", [14] = "Q6_K", [15] = "Q8_K",
    [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S",
    [20] = "IQ4_NL", [21] = "IQ3_S", [22] = "IQ2_S", [23] = "IQ4_XS",
    [24] = "I8", [25] = "I16", [26] = "I32", [27] = "I64", [28] = "F64",
    [29] = "IQ1_M", [30] = "BF16", [34] = "TQ1_0", [35] = "TQ2_0",
    [39] = "MXFP4", [40] = "NVFP4", [41] = "Q1_0",
};
#define GT_MAX ((int)(sizeof gt_names / sizeof gt_names[0]))

#define GGUF_MAX_STR (1u << 30)  /* no single string is 1 GiB */
#define GGUF_MAX_DEPTH 4         /* nested arrays are skipped to this depth */

typedef struct rd {
    const unsigned char *p;
    uint64_t size, off;
    const char *path;
    char *err;
} rd;

static int rd_trunc(rd *r, const char *what)
{
    return dt_errf(r->err, DT_EFORMAT,
                   "%s: truncated or corrupt while reading %s at offset %llu",
                   r->path, what, (unsigned long long)r->off);
}

static int rd_bytes(rd *r, void *dst, uint64_t n, const char *what)
{
    if (n > r->size - r->off)
        return rd_trunc(r, what);
    memcpy(dst, r->p + r->off, (size_t)n);
    r->off += n;
    return DT_OK;
}

static int rd_u32(rd *r, uint32_t *v, const char *what)
{
    return rd_bytes(r, v, 4, what); /* little-endian host */
}

static int rd_u64(rd *r, uint64_t *v, const char *what)
{
    return rd_bytes(r, v, 8, what);
}

/* Reads a string: *s is a new malloc'd NUL-terminated copy (or NULL when s
 * is NULL: the string is only skipped). */
static int rd_str(rd *r, char **s, const char *what)
{
    uint64_t len = 0;
    int rc = rd_u64(r, &len, what);
    if (rc)
        return rc;
    if (len > GGUF_MAX_STR || len > r->size - r->off)
        return dt_errf(r->err, DT_EFORMAT,
                       "%s: %s: string length %llu exceeds the file", r->path,
                       what, (unsigned long long)len);
    if (s) {
        *s = malloc((size_t)len + 1);
        if (!*s)
            return dt_errf(r->err, DT_ENOMEM, "%s: out of memory", r->path);
        memcpy(*s, r->p + r->off, (size_t)len);
        (*s)[len] = 0;
    }
    r->off += len;
    return DT_OK;
}

static const int gv_size[GV_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* Reads one scalar of type t as int64 or double. */
static int rd_scalar(rd *r, uint32_t t, int64_t *iv, double *fv, int *isf)
{
    unsigned char b[8];
    int rc = rd_bytes(r, b, (uint64_t)gv_size[t], "metadata value");
    if (rc)
        return rc;
    *isf = 0;
    switch (t) {
    case GV_U8: *iv = b[0]; break;
    case GV_I8: *iv = (int8_t)b[0]; break;
    case GV_BOOL: *iv = b[0] != 0; break;
    case GV_U16: { uint16_t x; memcpy(&x, b, 2); *iv = x; break; }
    case GV_I16: { int16_t x; memcpy(&x, b, 2); *iv = x; break; }
    case GV_U32: { uint32_t x; memcpy(&x, b, 4); *iv = x; break; }
    case GV_I32: { int32_t x; memcpy(&x, b, 4); *iv = x; break; }
    case GV_U64: { uint64_t x; memcpy(&x, b, 8); *iv = (int64_t)x; break; }
    case GV_I64: { int64_t x; memcpy(&x, b, 8); *iv = x; break; }
    case GV_F32: { float x; memcpy(&x, b, 4); *fv = x; *isf = 1; break; }
    case GV_F64: { double x; memcpy(&x, b, 8); *fv = x; *isf = 1; break; }
    }
    return DT_OK;
}

/* Skips an array body (element type already read), recursing into nested
 * arrays up to GGUF_MAX_DEPTH. */
static int rd_skip_array(rd *r, uint32_t et, int depth)
{
    uint64_t n = 0;
    int rc = rd_u64(r, &n, "array length");
    if (rc)
        return rc;
    if (et >= GV_COUNT)
        return dt_errf(r->err, DT_EFORMAT, "%s: array element type %u unknown",
                       r->path, et);
    if (et != GV_STR && et != GV_ARR) {
        if (n > (r->size - r->off) / (uint64_t)gv_size[et])
            return dt_errf(r->err, DT_EFORMAT,
                           "%s: array of %llu elements exceeds the file",
                           r->path, (unsigned long long)n);
        r->off += n * (uint64_t)gv_size[et];
        return DT_OK;
    }
    if (n > (r->size - r->off) / 8)
        return dt_errf(r->err, DT_EFORMAT,
                       "%s: array of %llu elements exceeds the file", r->path,
                       (unsigned long long)n);
    if (et == GV_ARR && depth >= GGUF_MAX_DEPTH)
        return dt_errf(r->err, DT_EFORMAT, "%s: arrays nested too deeply",
                       r->path);
    for (uint64_t i = 0; i < n; i++) {
        if (et == GV_STR) {
            rc = rd_str(r, NULL, "array string");
        } else {
            uint32_t inner = 0;
            rc = rd_u32(r, &inner, "array element type");
            if (!rc)
                rc = rd_skip_array(r, inner, depth + 1);
        }
        if (rc)
            return rc;
    }
    return DT_OK;
}

/* Reads a value of type t into m (key already set). Nested arrays are
 * skipped (*skip set): nothing in this engine reads them. */
static int rd_value(rd *r, uint32_t t, dt_meta *m, int *skip)
{
    *skip = 0;
    if (t >= GV_COUNT)
        return dt_errf(r->err, DT_EFORMAT, "%s: key %s: unknown value type %u",
                       r->path, m->key, t);
    int isf, rc;
    if (t == GV_STR) {
        m->type = DT_META_STR;
        return rd_str(r, &m->s, m->key);
    }
    if (t != GV_ARR) {
        rc = rd_scalar(r, t, &m->i, &m->f, &isf);
        m->type = isf ? DT_META_FLOAT : t == GV_BOOL ? DT_META_BOOL
                                                     : DT_META_INT;
        return rc;
    }
    uint32_t et = 0;
    if ((rc = rd_u32(r, &et, "array element type")))
        return rc;
    if (et == GV_ARR) {
        *skip = 1;
        return rd_skip_array(r, et, 1);
    }
    if (et >= GV_COUNT)
        return dt_errf(r->err, DT_EFORMAT, "%s: key %s: unknown array type %u",
                       r->path, m->key, et);
    uint64_t n = 0;
    if ((rc = rd_u64(r, &n, "array length")))
        return rc;
    uint64_t minsz = et == GV_STR ? 8 : (uint64_t)gv_size[et];
    if (n > (r->size - r->off) / minsz)
        return dt_errf(r->err, DT_EFORMAT,
                       "%s: key %s: array of %llu elements exceeds the file",
                       r->path, m->key, (unsigned long long)n);
    m->n = (int64_t)n;
    if (et == GV_STR) {
        m->type = DT_META_STR_ARR;
        m->sarr = dt_calloc((size_t)n, sizeof(char *));
        if (!m->sarr)
            return dt_errf(r->err, DT_ENOMEM, "%s: out of memory", r->path);
        for (uint64_t i = 0; i < n; i++)
            if ((rc = rd_str(r, &m->sarr[i], m->key)))
                return rc;
        return DT_OK;
    }
    int fl = et == GV_F32 || et == GV_F64;
    m->type = fl ? DT_META_FLOAT_ARR : DT_META_INT_ARR;
    if (fl)
        m->farr = dt_calloc((size_t)n, sizeof(double));
    else
        m->iarr = dt_calloc((size_t)n, sizeof(int64_t));
    if (fl ? !m->farr : !m->iarr)
        return dt_errf(r->err, DT_ENOMEM, "%s: out of memory", r->path);
    for (uint64_t i = 0; i < n; i++) {
        int64_t iv = 0;
        double fv = 0;
        if ((rc = rd_scalar(r, et, &iv, &fv, &isf)))
            return rc;
        if (fl)
            m->farr[i] = fv;
        else
            m->iarr[i] = iv;
    }
    return DT_OK;
}

static void meta_clear(dt_meta *m)
{
    free(m->key);
    free(m->s);
    if (m->sarr)
        for (int64_t i = 0; i < m->n; i++)
            free(m->sarr[i]);
    free(m->sarr);
    free(m->iarr);
    free(m->farr);
    memset(m, 0, sizeof *m);
}

/* Appends one key/value to ts (steals m's contents). */
static int meta_push(dt_tensorset *ts, dt_meta *m, rd *r)
{
    if (ts->nmeta == ts->capmeta) {
        int cap = ts->capmeta ? ts->capmeta * 2 : 64;
        dt_meta *nm = realloc(ts->meta, (size_t)cap * sizeof *nm);
        if (!nm)
            return dt_errf(r->err, DT_ENOMEM, "%s: out of memory", r->path);
        ts->meta = nm;
        ts->capmeta = cap;
    }
    ts->meta[ts->nmeta++] = *m;
    memset(m, 0, sizeof *m);
    return DT_OK;
}

typedef struct ginfo {
    char *name;
    int ndim;
    int64_t shape[DT_MAX_DIMS]; /* outermost first */
    int64_t numel;
    uint32_t type;
    uint64_t offset, nbytes;
} ginfo;

/* Block size (elements) and block bytes of a supported type; 0 if not. */
static int gt_block(uint32_t t, int *blk, int *bytes)
{
    switch (t) {
    case GT_F32: *blk = 1; *bytes = 4; return 1;
    case GT_F16: case GT_BF16: *blk = 1; *bytes = 2; return 1;
    case GT_Q8_0: *blk = 32; *bytes = 34; return 1;
    case GT_Q4_0: *blk = 32; *bytes = 18; return 1;
    case GT_Q4_1: *blk = 32; *bytes = 20; return 1;
    default: return 0;
    }
}

static float h2f(const unsigned char *p)
{
    return dt_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

/* Dequantizes numel elements (a multiple of the block size). */
static void dequant(const unsigned char *src, uint32_t type, int64_t numel,
                    float *dst)
{
    if (type == GT_F32) {
        memcpy(dst, src, (size_t)numel * 4);
        return;
    }
    if (type == GT_F16 || type == GT_BF16) {
#pragma omp parallel for if (numel > (1 << 16)) schedule(static)
        for (int64_t i = 0; i < numel; i++) {
            uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
            dst[i] = type == GT_F16 ? dt_f16_to_f32(h) : dt_bf16_to_f32(h);
        }
        return;
    }
    int64_t nb = numel / 32;
#pragma omp parallel for if (nb > 2048) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        float *y = dst + b * 32;
        if (type == GT_Q8_0) {
            const unsigned char *q = src + b * 34;
            float d = h2f(q);
            for (int j = 0; j < 32; j++)
                y[j] = (float)(int8_t)q[2 + j] * d;
        } else if (type == GT_Q4_0) {
            const unsigned char *q = src + b * 18;
            float d = h2f(q);
            for (int j = 0; j < 16; j++) {
                y[j] = (float)((q[2 + j] & 0x0f) - 8) * d;
                y[j + 16] = (float)((q[2 + j] >> 4) - 8) * d;
            }
        } else { /* Q4_1 */
            const unsigned char *q = src + b * 20;
            float d = h2f(q), m = h2f(q + 2);
            for (int j = 0; j < 16; j++) {
                y[j] = (float)(q[4 + j] & 0x0f) * d + m;
                y[j + 16] = (float)(q[4 + j] >> 4) * d + m;
            }
        }
    }
}

void dt_raw_to_f32(const unsigned char *src, int raw_type, int64_t numel,
                   float *dst)
{
    static const uint32_t gt[] = {GT_F32, GT_F32, GT_F16, GT_BF16, GT_Q8_0,
                                  GT_Q4_0, GT_Q4_1};
    dequant(src, gt[raw_type > 0 && raw_type <= DT_RAW_Q4_1 ? raw_type : 1],
            numel, dst);
}

/* The raw type of a supported GGUF type. */
static int gt_raw(uint32_t t)
{
    switch (t) {
    case GT_F16: return DT_RAW_F16;
    case GT_BF16: return DT_RAW_BF16;
    case GT_Q8_0: return DT_RAW_Q8_0;
    case GT_Q4_0: return DT_RAW_Q4_0;
    case GT_Q4_1: return DT_RAW_Q4_1;
    default: return DT_RAW_F32;
    }
}

/* Reads one tensor info and checks it (not yet against the data section). */
static int rd_tensor_info(rd *r, ginfo *g)
{
    int rc = rd_str(r, &g->name, "tensor name");
    if (rc)
        return rc;
    uint32_t nd = 0;
    if ((rc = rd_u32(r, &nd, "tensor dims")))
        return rc;
    if (nd < 1 || nd > DT_MAX_DIMS)
        return dt_errf(r->err, DT_EFORMAT, "%s: tensor %s: n_dims %u (1..%d)",
                       r->path, g->name, nd, DT_MAX_DIMS);
    g->ndim = (int)nd;
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t x = 0;
        if ((rc = rd_u64(r, &x, "tensor dims")))
            return rc;
        if (x > (uint64_t)INT64_MAX || (x != 0 && numel > (UINT64_MAX >> 8) / x))
            return dt_errf(r->err, DT_EFORMAT,
                           "%s: tensor %s: dimensions overflow", r->path,
                           g->name);
        numel *= x;
        g->shape[nd - 1 - d] = (int64_t)x; /* innermost first -> last */
    }
    g->numel = (int64_t)numel;
    if ((rc = rd_u32(r, &g->type, "tensor type")) ||
        (rc = rd_u64(r, &g->offset, "tensor offset")))
        return rc;
    if (g->type >= (uint32_t)GT_MAX || !gt_names[g->type])
        return dt_errf(r->err, DT_EFORMAT, "%s: tensor %s: unknown type id %u",
                       r->path, g->name, g->type);
    return DT_OK;
}

/* The fixed header: magic, version (2 or 3) and the two counts, checked
 * against the file's size. */
static int rd_header(rd *r, uint64_t *nt, uint64_t *nkv)
{
    char magic[4];
    uint32_t ver = 0;
    *nt = *nkv = 0;
    if (r->size < 24)
        return dt_errf(r->err, DT_EFORMAT, "%s: file truncated (%llu bytes)",
                       r->path, (unsigned long long)r->size);
    rd_bytes(r, magic, 4, "magic");
    if (memcmp(magic, "GGUF", 4) != 0)
        return dt_errf(r->err, DT_EFORMAT, "%s: bad magic (not a GGUF file)",
                       r->path);
    rd_u32(r, &ver, "version");
    if (ver != 2 && ver != 3)
        return dt_errf(r->err, DT_ENOTSUP, "%s: GGUF version %u (2 or 3 "
                       "only)", r->path, ver);
    rd_u64(r, nt, "tensor count");
    rd_u64(r, nkv, "metadata count");
    /* A key/value takes at least 8 + 4 + 1 bytes, a tensor info 8+4+8+4+8. */
    if (*nkv > (r->size - r->off) / 13 || *nt > (r->size - r->off) / 32)
        return dt_errf(r->err, DT_EFORMAT,
                       "%s: counts (%llu tensors, %llu keys) exceed the file",
                       r->path, (unsigned long long)*nt,
                       (unsigned long long)*nkv);
    return DT_OK;
}

static int gguf_parse(const char *path, const unsigned char *p, uint64_t size,
                      dt_tensorset *ts, int meta_only, int lazy, char *err)
{
    rd r = {p, size, 0, path, err};
    int rc, n0 = ts->n, m0 = ts->nmeta;
    ginfo *gi = NULL;
    uint64_t nt = 0, nkv = 0;
    dt_meta m;
    memset(&m, 0, sizeof m);
    if ((rc = rd_header(&r, &nt, &nkv)))
        return rc;
    uint64_t align = 32;
    for (uint64_t k = 0; k < nkv; k++) {
        uint32_t t = 0;
        int skip;
        if ((rc = rd_str(&r, &m.key, "metadata key")) ||
            (rc = rd_u32(&r, &t, "metadata type")) ||
            (rc = rd_value(&r, t, &m, &skip)))
            goto fail;
        if (dt_tensorset_meta(ts, m.key)) {
            rc = dt_errf(err, DT_EFORMAT, "%s: duplicate key %s", path, m.key);
            goto fail;
        }
        if (strcmp(m.key, "general.alignment") == 0) {
            if (m.type != DT_META_INT || m.i <= 0 || m.i > (1 << 24) ||
                (m.i & (m.i - 1)) != 0) {
                rc = dt_errf(err, DT_EFORMAT, "%s: bad general.alignment",
                             path);
                goto fail;
            }
            align = (uint64_t)m.i;
        }
        if (skip)
            meta_clear(&m); /* nested array: skipped */
        else if ((rc = meta_push(ts, &m, &r)))
            goto fail;
    }
    if (meta_only)
        return DT_OK;
    gi = dt_calloc((size_t)nt, sizeof *gi);
    if (!gi) {
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (uint64_t i = 0; i < nt; i++)
        if ((rc = rd_tensor_info(&r, &gi[i])))
            goto fail;
    uint64_t data0 = (r.off + align - 1) / align * align;
    if (data0 > size) {
        rc = dt_errf(err, DT_EFORMAT, "%s: data section starts past the end",
                     path);
        goto fail;
    }
    uint64_t datalen = size - data0;
    for (uint64_t i = 0; i < nt; i++) {
        ginfo *g = &gi[i];
        int blk, bb;
        if (!gt_block(g->type, &blk, &bb)) {
            rc = dt_errf(err, DT_ENOTSUP,
                         "%s: tensor %s has unsupported type %s (supported: "
                         "F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                         path, g->name, gt_names[g->type]);
            goto fail;
        }
        if (g->shape[g->ndim - 1] % blk != 0) {
            rc = dt_errf(err, DT_EFORMAT,
                         "%s: tensor %s: row length %lld not a multiple of "
                         "the %s block size", path, g->name,
                         (long long)g->shape[g->ndim - 1], gt_names[g->type]);
            goto fail;
        }
        g->nbytes = (uint64_t)g->numel / (uint64_t)blk * (uint64_t)bb;
        if (g->offset % align != 0 || g->offset > datalen ||
            g->nbytes > datalen - g->offset) {
            rc = dt_errf(err, DT_EFORMAT,
                         "%s: tensor %s: data [%llu, +%llu) lies outside the "
                         "data section (%llu bytes) or is misaligned", path,
                         g->name, (unsigned long long)g->offset,
                         (unsigned long long)g->nbytes,
                         (unsigned long long)datalen);
            goto fail;
        }
    }
    for (uint64_t i = 0; i < nt; i++) {
        ginfo *g = &gi[i];
        float *buf = NULL;
        if (!lazy) {
            buf = malloc((size_t)(g->numel ? g->numel : 1) * sizeof(float));
            if (!buf) {
                rc = dt_errf(err, DT_ENOMEM, "%s: out of memory for tensor "
                             "%s", path, g->name);
                goto fail;
            }
            dequant(p + data0 + g->offset, g->type, g->numel, buf);
        }
        dt_dtype sd = g->type == GT_F16 ? DT_F16
                      : g->type == GT_BF16 ? DT_BF16 : DT_F32;
        if ((rc = dt_tensorset_add(ts, g->name, g->ndim, g->shape, buf, sd,
                                   err))) {
            char tmp[DT_ERR_LEN];
            snprintf(tmp, sizeof tmp, "%s: %s", path, err ? err : "");
            if (err)
                memcpy(err, tmp, DT_ERR_LEN);
            goto fail;
        }
        if (lazy) {
            dt_tensor *t = &ts->t[ts->n - 1];
            t->raw = p + data0 + g->offset;
            t->raw_type = gt_raw(g->type);
        }
    }
    for (uint64_t i = 0; i < nt; i++)
        free(gi[i].name);
    free(gi);
    return DT_OK;
fail:
    meta_clear(&m);
    if (gi)
        for (uint64_t i = 0; i < nt; i++)
            free(gi[i].name);
    free(gi);
    while (ts->n > n0) {
        ts->n--;
        free(ts->t[ts->n].name);
        free(ts->t[ts->n].data);
    }
    while (ts->nmeta > m0)
        meta_clear(&ts->meta[--ts->nmeta]);
    return rc;
}

static int gguf_read(const char *path, dt_tensorset *ts, int meta_only,
                     int lazy, char *err)
{
    dt_map map;
    int rc = dt_file_map(path, 24, &map, err);
    if (rc)
        return rc;
    int n0 = ts->n, m0 = ts->nmeta;
    rc = gguf_parse(path, map.data, map.size, ts, meta_only, lazy, err);
    if (!rc && lazy) {
        dt_map *a = realloc(ts->maps, (size_t)(ts->nmaps + 1) * sizeof *a);
        if (a) {
            ts->maps = a;
            ts->maps[ts->nmaps++] = map; /* ts keeps the mapping */
            return DT_OK;
        }
        while (ts->n > n0) {
            ts->n--;
            free(ts->t[ts->n].name);
        }
        while (ts->nmeta > m0)
            meta_clear(&ts->meta[--ts->nmeta]);
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
    }
    dt_file_unmap(&map);
    return rc;
}

int dt_gguf_load(const char *path, dt_tensorset *ts, char *err)
{
    return gguf_read(path, ts, 0, 0, err);
}

int dt_gguf_open(const char *path, dt_tensorset *ts, char *err)
{
    return gguf_read(path, ts, 0, 1, err);
}

int dt_gguf_load_meta(const char *path, dt_tensorset *ts, char *err)
{
    return gguf_read(path, ts, 1, 0, err);
}

/* One key/value for dt_gguf_scan: kv->key already read. Strings point into
 * the mapping; arrays are skipped, their count kept. */
static int scan_value(rd *r, uint32_t t, dt_gguf_kv *kv)
{
    int rc, isf;
    if (t >= GV_COUNT)
        return dt_errf(r->err, DT_EFORMAT, "%s: key %s: unknown value type %u",
                       r->path, kv->key, t);
    if (t == GV_STR) {
        uint64_t off;
        if ((rc = rd_u64(r, &kv->len, kv->key)))
            return rc;
        off = r->off;
        r->off -= 8;
        if ((rc = rd_str(r, NULL, kv->key)))
            return rc;
        kv->type = DT_META_STR;
        kv->s = (const char *)r->p + off;
        return DT_OK;
    }
    if (t != GV_ARR) {
        if ((rc = rd_scalar(r, t, &kv->i, &kv->f, &isf)))
            return rc;
        kv->type = isf ? DT_META_FLOAT : t == GV_BOOL ? DT_META_BOOL
                                                      : DT_META_INT;
        return DT_OK;
    }
    uint32_t et = 0;
    if ((rc = rd_u32(r, &et, "array element type")) ||
        (rc = rd_u64(r, &kv->n, "array length")))
        return rc;
    r->off -= 8; /* rd_skip_array reads the length again */
    kv->type = et == GV_STR ? DT_META_STR_ARR
               : et == GV_F32 || et == GV_F64 ? DT_META_FLOAT_ARR
                                              : DT_META_INT_ARR;
    return rd_skip_array(r, et, 1);
}

int dt_gguf_scan(const char *path, dt_gguf_kv_fn on_kv,
                 dt_gguf_tensor_fn on_tensor, void *ud, char *err)
{
    dt_map map;
    int rc = dt_file_map(path, 24, &map, err);
    if (rc)
        return rc;
    rd r = {map.data, map.size, 0, path, err};
    uint64_t nt, nkv;
    char *key = NULL;
    ginfo g;
    memset(&g, 0, sizeof g);
    if ((rc = rd_header(&r, &nt, &nkv)))
        goto out;
    for (uint64_t k = 0; k < nkv; k++) {
        uint32_t t = 0;
        dt_gguf_kv kv;
        memset(&kv, 0, sizeof kv);
        if ((rc = rd_str(&r, &key, "metadata key")) ||
            (rc = rd_u32(&r, &t, "metadata type")))
            goto out;
        kv.key = key;
        if ((rc = scan_value(&r, t, &kv)))
            goto out;
        if (on_kv)
            on_kv(ud, &kv);
        free(key);
        key = NULL;
    }
    for (uint64_t i = 0; on_tensor && i < nt; i++) {
        if ((rc = rd_tensor_info(&r, &g)))
            goto out;
        on_tensor(ud, g.name);
        free(g.name);
        g.name = NULL;
    }
out:
    free(key);
    free(g.name);
    dt_file_unmap(&map);
    return rc;
}
