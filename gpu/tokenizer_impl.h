/* tokenizer_impl.h: internals shared by tokenizer.c (BPE, encode, decode)
 * and tokenizer_io.c (tokenizer.json, vocab.json + merges.txt, GGUF metadata,
 * writing tokenizer.json). Not part of the public API. */
#ifndef DT_TOKENIZER_IMPL_H
#define DT_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include "tokenizer.h"

#define TOK_MAX_ID (1 << 24)  /* sanity cap on ids read from files */
#define TOK_NCP 324           /* byte characters are code points < 324 */

enum { TOK_NORMAL = 0, TOK_ADDED = 1, TOK_SPECIAL = 2 };

typedef struct { int32_t rank, id; } tok_merge;

struct dt_tokenizer {
    int32_t n;              /* vocabulary size: highest id + 1 */
    char **str;             /* (n) token text, owned; NULL for unused ids */
    uint32_t *len;          /* (n) byte length of str */
    uint8_t *kind;          /* (n) TOK_NORMAL / TOK_ADDED / TOK_SPECIAL */
    int32_t *vslot;         /* (vcap) string -> id table, -1 = empty */
    uint32_t vcap;
    uint64_t *mkey;         /* (mcap) a << 32 | b, UINT64_MAX = empty */
    tok_merge *mval;        /* (mcap) */
    uint32_t mcap;
    int32_t (*merges)[2];   /* (nmerges) pairs in rank order, for writing */
    int32_t nmerges;
    uint16_t byte_cp[256];  /* GPT-2 byte -> unicode character */
    int16_t cp_byte[TOK_NCP]; /* and back, -1 when not a byte character */
    int32_t byte_id[256];   /* id of each byte's character, -1 if absent */
    int32_t *added;         /* (nadded) added ids by first byte, longest first */
    int32_t nadded;
    int32_t added_at[257];  /* added[added_at[b] .. added_at[b+1]) start with b */
    int add_prefix_space, use_regex, ignore_merges;
    int digits;             /* 0: none, 1: runs of \p{N}, 2: each \p{N} */
    int32_t unk, bos, eos;
    char *chat_template;    /* owned or NULL */
};

/* Builders. A source fills a tokenizer in this order: dt_tok__new, then
 * dt_tok__set for every id (and kind[] for added tokens), dt_tok__index,
 * the merges in rank order, then dt_tok__finish. All return DT_OK or a
 * DT_E* code; merge errors are DT_EFORMAT naming src and the merge number. */
dt_tokenizer *dt_tok__new(int64_t n, int64_t nmerges);  /* NULL: no memory */
int dt_tok__set(dt_tokenizer *t, int64_t id, const char *s, size_t n);
int dt_tok__index(dt_tokenizer *t);
int dt_tok__merge_add(dt_tokenizer *t, const char *a, size_t na, const char *b,
                      size_t nb, const char *src, int64_t line, char *err);
int dt_tok__merge_line(dt_tokenizer *t, const char *s, size_t n,
                       const char *src, int64_t line, char *err);
int dt_tok__finish(dt_tokenizer *t);
/* Id of the token text s (n bytes), or -1. */
int32_t dt_tok__find(const dt_tokenizer *t, const char *s, size_t n);

#endif
