/* tensorfile.h: reading and writing named tensors (safetensors, GGUF).
 *
 * A dt_tensorset is a list of named fp32 host tensors plus the metadata the
 * file carried. Loading converts every supported dtype to fp32 (F32, F16,
 * BF16 for safetensors; F32, F16, BF16, Q8_0, Q4_0, Q4_1 for GGUF). Every
 * malformed file is a DT_EFORMAT with a message naming the file and what is
 * wrong; nothing here may crash on hostile input. */
#ifndef DT_TENSORFILE_H
#define DT_TENSORFILE_H

#include <stdint.h>
#include <stddef.h>
#include "base/file.h"

#define DT_MAX_DIMS 4

typedef enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 } dt_dtype;

/* How a tensor not yet converted is stored in its file (lazy tensors:
 * dt_safetensors_open, dt_gguf_open). */
typedef enum {
    DT_RAW_NONE = 0, DT_RAW_F32, DT_RAW_F16, DT_RAW_BF16,
    DT_RAW_Q8_0, DT_RAW_Q4_0, DT_RAW_Q4_1
} dt_raw_type;

/* What dt_tensor_convert does to the file's values after converting them:
 * nothing; a 2-D transpose (the file holds shape[1] x shape[0], GPT-2's
 * Conv1D); or llama.cpp's Q/K row permutation undone (xform_arg heads). */
enum { DT_XF_NONE = 0, DT_XF_TRANSPOSE = 1, DT_XF_UNPERMUTE = 2 };

typedef struct dt_tensor {
    char *name;              /* owned */
    int ndim;
    int64_t shape[DT_MAX_DIMS]; /* as stored in the file, outermost first */
    int64_t numel;
    float *data;             /* owned, numel floats; NULL while a lazy
                                tensor is not converted */
    dt_dtype src_dtype;      /* dtype in the source file (F32 for quantized) */
    /* Lazy tensors: the file's bytes, inside a mapping that the set holds
     * (dt_tensorset.maps), converted to fp32 on demand by dt_tensor_convert.
     * raw NULL: no source (an eager tensor, or a released one). */
    const unsigned char *raw;
    int raw_type;            /* dt_raw_type */
    int xform, xform_arg;    /* DT_XF_*, applied by dt_tensor_convert */
} dt_tensor;

/* GGUF metadata, kept as a flat list of key -> value. Arrays of strings (the
 * tokenizer vocabulary, merges) and arrays of numbers are kept whole. */
typedef enum {
    DT_META_INT = 0, DT_META_FLOAT, DT_META_STR, DT_META_BOOL,
    DT_META_STR_ARR, DT_META_INT_ARR, DT_META_FLOAT_ARR
} dt_meta_type;

typedef struct dt_meta {
    char *key;
    dt_meta_type type;
    int64_t i;        /* INT, BOOL */
    double f;         /* FLOAT */
    char *s;          /* STR */
    char **sarr;      /* STR_ARR */
    int64_t *iarr;    /* INT_ARR */
    double *farr;     /* FLOAT_ARR */
    int64_t n;        /* array length */
} dt_meta;

typedef struct dt_tensorset {
    dt_tensor *t;
    int n, cap;
    dt_meta *meta;
    int nmeta, capmeta;
    dt_map *maps;      /* the mappings lazy tensors point into (owned) */
    int nmaps;
} dt_tensorset;

void dt_tensorset_init(dt_tensorset *ts);
void dt_tensorset_free(dt_tensorset *ts); /* frees contents, not ts */
/* Forgets every lazy tensor's source and unmaps the set's files (converted
 * data stays). */
void dt_tensorset_drop_sources(dt_tensorset *ts);
/* Moves src's mappings into dst (src keeps none). DT_ENOMEM on failure. */
int dt_tensorset_take_maps(dt_tensorset *dst, dt_tensorset *src);
/* Converts lazy tensor t from its file into dst (numel floats, t's shape,
 * its xform applied). DT_EINVAL naming the tensor when it has no source,
 * DT_ENOMEM when a scratch buffer cannot be had. Reads only the mapping. */
int dt_tensor_convert(const dt_tensor *t, float *dst, char *err);
/* Drops the whole pages of lazy tensor t's file bytes from the process's
 * mapping (MADV_DONTNEED: they stay in the page cache, out of its resident
 * set), once t was converted for an upload. */
void dt_tensor_drop_pages(const dt_tensor *t);
/* Converts numel elements of a raw type to fp32 (quantized types: numel a
 * multiple of their 32-element blocks). */
void dt_raw_to_f32(const unsigned char *src, int raw_type, int64_t numel,
                   float *dst);
/* Borrowed pointer or NULL. */
dt_tensor *dt_tensorset_find(dt_tensorset *ts, const char *name);
const dt_meta *dt_tensorset_meta(const dt_tensorset *ts, const char *key);
/* Adds a tensor; steals `data` (malloc'd, numel floats). */
int dt_tensorset_add(dt_tensorset *ts, const char *name, int ndim,
                     const int64_t *shape, float *data, dt_dtype src_dtype,
                     char *err);

/* Appends the tensors of one .safetensors file to ts. */
int dt_safetensors_load(const char *path, dt_tensorset *ts, char *err);

/* Loads a Hugging Face model directory's weights: model.safetensors, or the
 * shards listed by model.safetensors.index.json. */
int dt_hf_weights_load(const char *dir, dt_tensorset *ts, char *err);
/* The same three, lazily: every check of the load, no tensor converted (data
 * NULL, raw pointing into the file's mapping, which ts keeps until
 * dt_tensorset_free or dt_tensorset_drop_sources). */
int dt_safetensors_open(const char *path, dt_tensorset *ts, char *err);
int dt_hf_weights_open(const char *dir, dt_tensorset *ts, char *err);
int dt_gguf_open(const char *path, dt_tensorset *ts, char *err);

/* Writes tensors as one .safetensors file in the given dtype, atomically.
 * `names` optionally renames (NULL: use t->name); metadata_json is an
 * optional JSON object text for "__metadata__" (string values only). */
typedef struct dt_st_entry {
    const char *name;
    int ndim;
    const int64_t *shape;
    const float *data;
    dt_dtype dtype;
} dt_st_entry;
int dt_safetensors_write(const char *path, const dt_st_entry *entries, int n,
                         const char *metadata_json, char *err);

/* Loads a GGUF file: all tensors dequantized to fp32 with shape given
 * outermost first (GGUF stores innermost first: it is reversed here), and all
 * metadata key/values. */
int dt_gguf_load(const char *path, dt_tensorset *ts, char *err);
/* Same, metadata only (no tensor is read): for the tokenizer. */
int dt_gguf_load_meta(const char *path, dt_tensorset *ts, char *err);

/* One key/value of a GGUF header as dt_gguf_scan reports it. Scalars: type
 * DT_META_INT / _BOOL (i) or DT_META_FLOAT (f). A string: DT_META_STR, s
 * points at its len bytes inside the file's mapping (not NUL-terminated).
 * Arrays are skipped: type DT_META_STR_ARR / _INT_ARR / _FLOAT_ARR (nested
 * arrays: _INT_ARR) with only their element count n. Valid during the
 * callback only. */
typedef struct dt_gguf_kv {
    const char *key;
    int type;
    int64_t i;
    double f;
    const char *s;
    uint64_t len, n;
} dt_gguf_kv;
typedef void (*dt_gguf_kv_fn)(void *ud, const dt_gguf_kv *kv);
typedef void (*dt_gguf_tensor_fn)(void *ud, const char *name);
/* Reads a GGUF file's header without keeping or converting anything (the
 * server's model info and memory estimate): calls on_kv for every key/value
 * and then, when on_tensor is not NULL, on_tensor with every tensor's name.
 * The same bounds checks as dt_gguf_load: a hostile header is DT_EFORMAT
 * with detail in err, never a crash. */
int dt_gguf_scan(const char *path, dt_gguf_kv_fn on_kv,
                 dt_gguf_tensor_fn on_tensor, void *ud, char *err);

#endif
