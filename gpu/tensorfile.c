/* tensorfile.c: named fp32 tensor sets, safetensors reading and writing, and
 * Hugging Face weight directories (single file or sharded index).
 *
 * The safetensors format: 8-byte little-endian header length N, N bytes of
 * JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}, then the data section; offsets are relative to the
 * data section and must tile it exactly (no gaps, no overlap, no trailing
 * bytes), as the reference implementation requires. */
#include "tensorfile.h"
#include "base/dt.h"
#include "half.h"
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u * 1024 * 1024) /* bytes, as in safetensors */

/* ------------------------------------------------------------------------ */
/* Tensor sets                                                              */

void dt_tensorset_init(dt_tensorset *ts)
{
    memset(ts, 0, sizeof *ts);
}

static void meta_free(dt_meta *m)
{
    free(m->key);
    free(m->s);
    if (m->sarr) {
        for (int64_t i = 0; i < m->n; i++)
            free(m->sarr[i]);
        free(m->sarr);
    }
    free(m->iarr);
    free(m->farr);
}

void dt_tensorset_free(dt_tensorset *ts)
{
    if (!ts)
        return;
    for (int i = 0; i < ts->n; i++) {
        free(ts->t[i].name);
        free(ts->t[i].data);
    }
    free(ts->t);
    for (int i = 0; i < ts->nmeta; i++)
        meta_free(&ts->meta[i]);
    free(ts->meta);
    for (int i = 0; i < ts->nmaps; i++)
        dt_file_unmap(&ts->maps[i]);
    free(ts->maps);
    dt_tensorset_init(ts);
}

void dt_tensorset_drop_sources(dt_tensorset *ts)
{
    for (int i = 0; i < ts->n; i++) {
        ts->t[i].raw = NULL;
        ts->t[i].raw_type = DT_RAW_NONE;
    }
    for (int i = 0; i < ts->nmaps; i++)
        dt_file_unmap(&ts->maps[i]);
    free(ts->maps);
    ts->maps = NULL;
    ts->nmaps = 0;
}

/* Appends one mapping to ts (which then owns it). */
static int tensorset_add_map(dt_tensorset *ts, const dt_map *m)
{
    dt_map *a = realloc(ts->maps, (size_t)(ts->nmaps + 1) * sizeof *a);
    if (!a)
        return DT_ENOMEM;
    ts->maps = a;
    ts->maps[ts->nmaps++] = *m;
    return DT_OK;
}

int dt_tensorset_take_maps(dt_tensorset *dst, dt_tensorset *src)
{
    while (src->nmaps > 0) {
        if (tensorset_add_map(dst, &src->maps[0]))
            return DT_ENOMEM;
        memmove(src->maps, src->maps + 1,
                (size_t)(src->nmaps - 1) * sizeof *src->maps);
        src->nmaps--;
    }
    free(src->maps);
    src->maps = NULL;
    return DT_OK;
}

/* Undoes llama.cpp's Q/K permutation for its interleaved RoPE, as
 * transformers' GGUF loader does (_reverse_permute_weights):
 * W.reshape(n_head, rows/n_head/2, 2, in).swapaxes(1, 2).reshape(rows, in),
 * i.e. new row h*2d + j*d + i = old row h*2d + 2*i + j. One head's rows of
 * scratch. */
static int unpermute_rows(float *w, int64_t rows, int64_t in, int n_head)
{
    int64_t hd = rows / n_head, half = hd / 2;
    float *tmp = malloc((size_t)(hd * in > 0 ? hd * in : 1) * sizeof(float));
    if (!tmp)
        return DT_ENOMEM;
    for (int h = 0; h < n_head; h++) {
        float *blk = w + (int64_t)h * hd * in;
        for (int j = 0; j < 2; j++)
            for (int64_t i = 0; i < half; i++)
                memcpy(tmp + (j * half + i) * in, blk + (2 * i + j) * in,
                       (size_t)in * sizeof(float));
        memcpy(blk, tmp, (size_t)(hd * in) * sizeof(float));
    }
    free(tmp);
    return DT_OK;
}

/* Bytes of n elements of a raw type (quantized: n a multiple of 32). */
static int64_t raw_bytes(int raw_type, int64_t n)
{
    switch (raw_type) {
    case DT_RAW_F32: return n * 4;
    case DT_RAW_F16: case DT_RAW_BF16: return n * 2;
    case DT_RAW_Q8_0: return n / 32 * 34;
    case DT_RAW_Q4_0: return n / 32 * 18;
    default: return n / 32 * 20; /* Q4_1 */
    }
}

void dt_tensor_drop_pages(const dt_tensor *t)
{
    if (!t->raw)
        return;
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->raw;
    uintptr_t e = a + (uintptr_t)raw_bytes(t->raw_type, t->numel);
    uintptr_t a0 = (a + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    uintptr_t e0 = e & ~((uintptr_t)pg - 1);
    /* Whole pages inside the tensor only; a read-only file mapping faults
     * them in again from the page cache if they are read later. */
    if (pg > 0 && e0 > a0)
        madvise((void *)a0, e0 - a0, MADV_DONTNEED);
}

int dt_tensor_convert(const dt_tensor *t, float *dst, char *err)
{
    if (!t->raw || t->raw_type == DT_RAW_NONE)
        return dt_errf(err, DT_EINVAL, "tensor %s: no file data to read (its "
                       "weights were released)", t->name);
    if (t->xform == DT_XF_TRANSPOSE) {
        /* The file holds (in, out) = (shape[1], shape[0]); dst is (out, in).
         * File rows are converted a block at a time into a small scratch
         * and scattered: no second full-size buffer. */
        int64_t out = t->shape[0], in = t->shape[1];
        const int64_t RB = 64;
        float *tmp = malloc((size_t)(RB * out > 0 ? RB * out : 1) * sizeof(float));
        if (!tmp)
            return dt_errf(err, DT_ENOMEM, "tensor %s: out of memory",
                           t->name);
        for (int64_t k0 = 0; k0 < in; k0 += RB) {
            int64_t kn = in - k0 < RB ? in - k0 : RB;
            dt_raw_to_f32(t->raw + raw_bytes(t->raw_type, k0 * out),
                          t->raw_type, kn * out, tmp);
#pragma omp parallel for if (kn * out > (1 << 16)) schedule(static)
            for (int64_t o = 0; o < out; o++)
                for (int64_t k = 0; k < kn; k++)
                    dst[o * in + k0 + k] = tmp[k * out + o];
        }
        free(tmp);
        return DT_OK;
    }
    dt_raw_to_f32(t->raw, t->raw_type, t->numel, dst);
    if (t->xform == DT_XF_UNPERMUTE) {
        int64_t in = t->ndim == 2 ? t->shape[1] : 1; /* bias: 1 column */
        if (unpermute_rows(dst, t->shape[0], in, t->xform_arg))
            return dt_errf(err, DT_ENOMEM, "tensor %s: out of memory",
                           t->name);
    }
    return DT_OK;
}

dt_tensor *dt_tensorset_find(dt_tensorset *ts, const char *name)
{
    for (int i = 0; i < ts->n; i++)
        if (strcmp(ts->t[i].name, name) == 0)
            return &ts->t[i];
    return NULL;
}

const dt_meta *dt_tensorset_meta(const dt_tensorset *ts, const char *key)
{
    for (int i = 0; i < ts->nmeta; i++)
        if (strcmp(ts->meta[i].key, key) == 0)
            return &ts->meta[i];
    return NULL;
}

/* Steals `data` on every path: it is freed when the tensor cannot be added. */
int dt_tensorset_add(dt_tensorset *ts, const char *name, int ndim,
                     const int64_t *shape, float *data, dt_dtype src_dtype,
                     char *err)
{
    if (ndim < 0 || ndim > DT_MAX_DIMS) {
        free(data);
        return dt_errf(err, DT_EINVAL, "tensor %s: %d dimensions (max %d)",
                       name, ndim, DT_MAX_DIMS);
    }
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && numel > INT64_MAX / shape[d])) {
            free(data);
            return dt_errf(err, DT_EINVAL, "tensor %s: bad shape", name);
        }
        numel *= shape[d];
    }
    if (dt_tensorset_find(ts, name)) {
        free(data);
        return dt_errf(err, DT_EFORMAT, "duplicate tensor name %s", name);
    }
    if (ts->n == ts->cap) {
        int cap = ts->cap ? ts->cap * 2 : 64;
        dt_tensor *t = realloc(ts->t, (size_t)cap * sizeof *t);
        if (!t) {
            free(data);
            return dt_errf(err, DT_ENOMEM, "tensor set: out of memory");
        }
        ts->t = t;
        ts->cap = cap;
    }
    char *nm = strdup(name);
    if (!nm) {
        free(data);
        return dt_errf(err, DT_ENOMEM, "tensor set: out of memory");
    }
    dt_tensor *t = &ts->t[ts->n++];
    memset(t, 0, sizeof *t);
    t->name = nm;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->numel = numel;
    t->data = data;
    t->src_dtype = src_dtype;
    return DT_OK;
}

/* Frees the tensors added after the first `n` (undoes a failed load). */
static void tensorset_truncate(dt_tensorset *ts, int n)
{
    while (ts->n > n) {
        ts->n--;
        free(ts->t[ts->n].name);
        free(ts->t[ts->n].data);
    }
}

/* ------------------------------------------------------------------------ */
/* safetensors reading                                                      */

static uint64_t rd_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Byte size of a safetensors dtype, 0 when the name is not a dtype. */
static int st_dtype_size(const char *s)
{
    static const struct { const char *name; int size; } tab[] = {
        {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"F8_E5M2", 1}, {"F8_E4M3", 1},
        {"F8_E8M0", 1}, {"F4", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
        {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4}, {"I64", 8},
        {"U64", 8}, {"F64", 8},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(s, tab[i].name) == 0)
            return tab[i].size;
    return 0;
}

typedef struct st_info {
    const char *name;   /* borrowed from the JSON */
    int ndim;
    int64_t shape[DT_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end;
    dt_dtype dtype;
} st_info;

static int cmp_begin(const void *a, const void *b)
{
    const st_info *x = *(st_info *const *)a, *y = *(st_info *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Checks one header entry and fills *si. */
static int st_parse_entry(const char *path, const char *name, json_t *v,
                          uint64_t datalen, st_info *si, char *err)
{
    si->name = name;
    if (!json_is_object(v))
        return dt_errf(err, DT_EFORMAT, "%s: tensor %s: entry is not an object",
                       path, name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) ||
        json_array_size(jo) != 2)
        return dt_errf(err, DT_EFORMAT,
                       "%s: tensor %s: needs dtype, shape and data_offsets",
                       path, name);
    const char *dts = json_string_value(jd);
    int esz = st_dtype_size(dts);
    if (esz == 0)
        return dt_errf(err, DT_EFORMAT, "%s: tensor %s: unknown dtype %s",
                       path, name, dts);
    size_t nd = json_array_size(js);
    if (nd > DT_MAX_DIMS)
        return dt_errf(err, DT_ENOTSUP, "%s: tensor %s: %zu dimensions (max %d)",
                       path, name, nd, DT_MAX_DIMS);
    si->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t d = 0; d < nd; d++) {
        json_t *x = json_array_get(js, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return dt_errf(err, DT_EFORMAT, "%s: tensor %s: bad shape", path,
                           name);
        uint64_t s = (uint64_t)json_integer_value(x);
        if (s != 0 && numel > (UINT64_MAX / 8) / s)
            return dt_errf(err, DT_EFORMAT, "%s: tensor %s: shape overflows",
                           path, name);
        numel *= s;
        si->shape[d] = (int64_t)s;
    }
    si->numel = (int64_t)numel;
    json_t *b = json_array_get(jo, 0), *e = json_array_get(jo, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
        json_integer_value(e) < json_integer_value(b) ||
        (uint64_t)json_integer_value(e) > datalen)
        return dt_errf(err, DT_EFORMAT,
                       "%s: tensor %s: data_offsets out of range (data is %llu "
                       "bytes)", path, name, (unsigned long long)datalen);
    si->begin = (uint64_t)json_integer_value(b);
    si->end = (uint64_t)json_integer_value(e);
    if (numel * (uint64_t)esz != si->end - si->begin)
        return dt_errf(err, DT_EFORMAT,
                       "%s: tensor %s: shape x dtype size is %llu bytes but "
                       "data_offsets span %llu", path, name,
                       (unsigned long long)(numel * (uint64_t)esz),
                       (unsigned long long)(si->end - si->begin));
    if (strcmp(dts, "F32") == 0)
        si->dtype = DT_F32;
    else if (strcmp(dts, "F16") == 0)
        si->dtype = DT_F16;
    else if (strcmp(dts, "BF16") == 0)
        si->dtype = DT_BF16;
    else
        return dt_errf(err, DT_ENOTSUP,
                       "%s: tensor %s: unsupported dtype %s (F32, F16, BF16 "
                       "only)", path, name, dts);
    return DT_OK;
}

/* Converts numel little-endian elements of `dtype` at src to fp32. */
static void convert_to_f32(const unsigned char *src, dt_dtype dtype,
                           int64_t numel, float *dst)
{
    if (dtype == DT_F32) {
        memcpy(dst, src, (size_t)numel * 4); /* little-endian host */
        return;
    }
#pragma omp parallel for if (numel > (1 << 16)) schedule(static)
    for (int64_t i = 0; i < numel; i++) {
        uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
        dst[i] = dtype == DT_F16 ? dt_f16_to_f32(h) : dt_bf16_to_f32(h);
    }
}

static int st_parse_and_load(const char *path, const unsigned char *map,
                             uint64_t size, dt_tensorset *ts, int lazy,
                             char *err)
{
    if (size < 8)
        return dt_errf(err, DT_EFORMAT, "%s: file truncated (%llu bytes)",
                       path, (unsigned long long)size);
    uint64_t hlen = rd_le64(map);
    if (hlen > ST_MAX_HEADER)
        return dt_errf(err, DT_EFORMAT,
                       "%s: header length %llu exceeds the 100 MB limit", path,
                       (unsigned long long)hlen);
    if (hlen > size - 8)
        return dt_errf(err, DT_EFORMAT,
                       "%s: header length %llu exceeds the file size %llu "
                       "(file truncated?)", path, (unsigned long long)hlen,
                       (unsigned long long)size);
    uint64_t datalen = size - 8 - hlen;
    const unsigned char *data = map + 8 + hlen;
    json_error_t je;
    json_t *root = json_loadb((const char *)map + 8, (size_t)hlen,
                              JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return dt_errf(err, DT_EFORMAT, "%s: header is not valid JSON: %s",
                       path, je.text);
    int rc = DT_OK;
    st_info *info = NULL;
    st_info **order = NULL;
    size_t n = 0;
    if (!json_is_object(root)) {
        rc = dt_errf(err, DT_EFORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    size_t cap = json_object_size(root);
    info = dt_calloc(cap, sizeof *info);
    order = dt_calloc(cap, sizeof *order);
    if (!info || !order) {
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        rc = st_parse_entry(path, key, val, datalen, &info[n], err);
        if (rc)
            goto done;
        order[n] = &info[n];
        n++;
    }
    /* The entries must tile the data section exactly. */
    qsort(order, n, sizeof *order, cmp_begin);
    uint64_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        if (order[i]->begin < pos) {
            rc = dt_errf(err, DT_EFORMAT,
                         "%s: tensor %s overlaps the previous tensor's data",
                         path, order[i]->name);
            goto done;
        }
        if (order[i]->begin > pos) {
            rc = dt_errf(err, DT_EFORMAT,
                         "%s: gap in the data section before tensor %s", path,
                         order[i]->name);
            goto done;
        }
        pos = order[i]->end;
    }
    if (pos != datalen) {
        rc = dt_errf(err, DT_EFORMAT,
                     "%s: tensors cover %llu of %llu data bytes", path,
                     (unsigned long long)pos, (unsigned long long)datalen);
        goto done;
    }
    int n0 = ts->n;
    for (size_t i = 0; i < n; i++) {
        st_info *si = &info[i];
        float *buf = NULL;
        if (!lazy) {
            buf = malloc((size_t)(si->numel ? si->numel : 1) * sizeof(float));
            if (!buf) {
                rc = dt_errf(err, DT_ENOMEM, "%s: out of memory for tensor "
                             "%s", path, si->name);
                tensorset_truncate(ts, n0);
                goto done;
            }
            convert_to_f32(data + si->begin, si->dtype, si->numel, buf);
        }
        rc = dt_tensorset_add(ts, si->name, si->ndim, si->shape, buf,
                              si->dtype, err);
        if (!rc && lazy) {
            dt_tensor *t = &ts->t[ts->n - 1];
            t->raw = data + si->begin;
            t->raw_type = si->dtype == DT_F32   ? DT_RAW_F32
                          : si->dtype == DT_F16 ? DT_RAW_F16
                                                : DT_RAW_BF16;
        }
        if (rc) {
            char tmp[DT_ERR_LEN];
            snprintf(tmp, sizeof tmp, "%s: %s", path, err ? err : "");
            if (err)
                memcpy(err, tmp, DT_ERR_LEN);
            tensorset_truncate(ts, n0);
            goto done;
        }
    }
done:
    free(order);
    free(info);
    json_decref(root);
    return rc;
}

static int st_load(const char *path, dt_tensorset *ts, int lazy, char *err)
{
    dt_map map;
    int rc = dt_file_map(path, 8, &map, err);
    if (rc)
        return rc;
    int n0 = ts->n;
    rc = st_parse_and_load(path, map.data, map.size, ts, lazy, err);
    if (!rc && lazy) {
        if (tensorset_add_map(ts, &map) == DT_OK)
            return DT_OK; /* ts keeps the mapping */
        tensorset_truncate(ts, n0);
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
    }
    dt_file_unmap(&map);
    return rc;
}

int dt_safetensors_load(const char *path, dt_tensorset *ts, char *err)
{
    return st_load(path, ts, 0, err);
}

int dt_safetensors_open(const char *path, dt_tensorset *ts, char *err)
{
    return st_load(path, ts, 1, err);
}

/* ------------------------------------------------------------------------ */
/* Hugging Face directories                                                 */

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int hf_weights(const char *dir, dt_tensorset *ts, int lazy, char *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (file_exists(path))
        return st_load(path, ts, lazy, err);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (!file_exists(path))
        return dt_errf(err, DT_EINVAL,
                       "%s: no model.safetensors or "
                       "model.safetensors.index.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return dt_errf(err, DT_EFORMAT, "%s: not valid JSON: %s (line %d)",
                       path, je.text, je.line);
    int rc = DT_OK, n0 = ts->n;
    json_t *wm = json_object_get(root, "weight_map");
    json_t *done = json_object(); /* shard file name -> true */
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        rc = dt_errf(err, DT_EFORMAT, "%s: missing or empty weight_map", path);
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        const char *shard = json_string_value(val);
        if (!shard || !*shard || strchr(shard, '/') || strcmp(shard, "..") == 0) {
            rc = dt_errf(err, DT_EFORMAT, "%s: tensor %s: bad shard name",
                         path, key);
            goto out;
        }
        if (json_object_get(done, shard))
            continue;
        char sp[4096];
        snprintf(sp, sizeof sp, "%s/%s", dir, shard);
        if (!file_exists(sp)) {
            rc = dt_errf(err, DT_EIO, "%s: missing shard %s (listed in %s)",
                         dir, shard, path);
            goto out;
        }
        rc = st_load(sp, ts, lazy, err);
        if (rc)
            goto out;
        json_object_set_new(done, shard, json_true());
    }
    json_object_foreach(wm, key, val) {
        if (!dt_tensorset_find(ts, key)) {
            rc = dt_errf(err, DT_EFORMAT, "%s: tensor %s not found in shard %s",
                         path, key, json_string_value(val));
            goto out;
        }
    }
out:
    if (rc)
        tensorset_truncate(ts, n0); /* mappings stay until ts is freed */
    json_decref(done);
    json_decref(root);
    return rc;
}

int dt_hf_weights_load(const char *dir, dt_tensorset *ts, char *err)
{
    return hf_weights(dir, ts, 0, err);
}

int dt_hf_weights_open(const char *dir, dt_tensorset *ts, char *err)
{
    return hf_weights(dir, ts, 1, err);
}

/* ------------------------------------------------------------------------ */
/* safetensors writing                                                      */

static const char *dtype_name(dt_dtype d)
{
    return d == DT_F16 ? "F16" : d == DT_BF16 ? "BF16" : "F32";
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Builds the header JSON text (new malloc'd string) padded with spaces to a
 * multiple of 8 bytes, as the reference writer does. */
static int st_build_header(const char *path, const dt_st_entry *e, int n,
                           const char *metadata_json, char **out,
                           size_t *outlen, char *err)
{
    int rc = DT_OK;
    json_t *root = json_object();
    if (metadata_json) {
        json_error_t je;
        json_t *md = json_loads(metadata_json, 0, &je);
        if (!json_is_object(md)) {
            json_decref(md);
            json_decref(root);
            return dt_errf(err, DT_EINVAL, "%s: metadata is not a JSON object",
                           path);
        }
        const char *k;
        json_t *v;
        json_object_foreach(md, k, v) {
            if (!json_is_string(v)) {
                json_decref(md);
                json_decref(root);
                return dt_errf(err, DT_EINVAL,
                               "%s: metadata value %s is not a string", path, k);
            }
        }
        json_object_set_new(root, "__metadata__", md);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (e[i].ndim < 0 || e[i].ndim > DT_MAX_DIMS ||
            strcmp(e[i].name, "__metadata__") == 0 ||
            json_object_get(root, e[i].name)) {
            rc = dt_errf(err, DT_EINVAL, "%s: bad or duplicate tensor %s",
                         path, e[i].name);
            goto fail;
        }
        uint64_t numel = 1;
        json_t *shape = json_array();
        for (int d = 0; d < e[i].ndim; d++) {
            numel *= (uint64_t)e[i].shape[d];
            json_array_append_new(shape, json_integer(e[i].shape[d]));
        }
        uint64_t bytes = numel * (e[i].dtype == DT_F32 ? 4 : 2);
        json_t *o = json_pack("{s:s, s:o, s:[I,I]}", "dtype",
                              dtype_name(e[i].dtype), "shape", shape,
                              "data_offsets", (json_int_t)off,
                              (json_int_t)(off + bytes));
        json_object_set_new(root, e[i].name, o);
        off += bytes;
    }
    char *txt = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!txt) {
        rc = dt_errf(err, DT_ENOMEM, "%s: cannot build header", path);
        goto fail;
    }
    size_t len = strlen(txt), padded = (len + 7) & ~(size_t)7;
    char *buf = malloc(padded + 1);
    if (!buf) {
        free(txt);
        rc = dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    memcpy(buf, txt, len);
    memset(buf + len, ' ', padded - len);
    buf[padded] = 0;
    free(txt);
    *out = buf;
    *outlen = padded;
fail:
    json_decref(root);
    return rc;
}

/* Converts and writes one tensor in chunks, so that no full-size converted
 * copy is ever held in memory. */
static int st_write_tensor(int fd, const dt_st_entry *e, unsigned char *chunk,
                           int64_t chunk_elems)
{
    int64_t numel = 1;
    for (int d = 0; d < e->ndim; d++)
        numel *= e->shape[d];
    for (int64_t i0 = 0; i0 < numel; i0 += chunk_elems) {
        int64_t m = numel - i0 < chunk_elems ? numel - i0 : chunk_elems;
        const float *src = e->data + i0;
        size_t bytes;
        if (e->dtype == DT_F32) {
            memcpy(chunk, src, (size_t)m * 4);
            bytes = (size_t)m * 4;
        } else {
            for (int64_t j = 0; j < m; j++) {
                uint16_t h = e->dtype == DT_F16 ? dt_f32_to_f16(src[j])
                                                : dt_f32_to_bf16(src[j]);
                chunk[2 * j] = (unsigned char)(h & 0xff);
                chunk[2 * j + 1] = (unsigned char)(h >> 8);
            }
            bytes = (size_t)m * 2;
        }
        if (write_all(fd, chunk, bytes) != 0)
            return -1;
    }
    return 0;
}

int dt_safetensors_write(const char *path, const dt_st_entry *entries, int n,
                         const char *metadata_json, char *err)
{
    char *hdr = NULL;
    size_t hlen = 0;
    int rc = st_build_header(path, entries, n, metadata_json, &hdr, &hlen, err);
    if (rc)
        return rc;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        free(hdr);
        return dt_errf(err, DT_EINVAL, "%s: path too long", path);
    }
    const int64_t chunk_elems = 1 << 16;
    unsigned char *chunk = malloc((size_t)chunk_elems * 4);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || !chunk) {
        rc = fd < 0 ? dt_errf(err, DT_EIO, "%s: %s", tmp, strerror(errno))
                    : dt_errf(err, DT_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if (write_all(fd, len8, 8) != 0 || write_all(fd, hdr, hlen) != 0)
        goto fail_io;
    for (int i = 0; i < n; i++)
        if (st_write_tensor(fd, &entries[i], chunk, chunk_elems) != 0)
            goto fail_io;
    if (fsync(fd) != 0)
        goto fail_io;
    close(fd);
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = dt_errf(err, DT_EIO, "%s: rename: %s", path, strerror(errno));
        unlink(tmp);
        goto fail;
    }
    char dcopy[4096];
    snprintf(dcopy, sizeof dcopy, "%s", path);
    int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(chunk);
    free(hdr);
    return DT_OK;
fail_io:
    rc = dt_errf(err, DT_EIO, "%s: write: %s", tmp, strerror(errno));
    close(fd);
    fd = -1;
    unlink(tmp);
fail:
    if (fd >= 0)
        close(fd);
    free(chunk);
    free(hdr);
    return rc;
}
