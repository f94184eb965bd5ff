/* tokenizer_impl.h: internals shared by tokenizer.c (BPE, encode, decode),
 * tokenizer_decode.c (decoders), tokenizer_text.c (UTF-8, character
 * classes, NFC, split regexes),
 * tokenizer_hf.c (a tokenizer.json's normalizer, pre-tokenizer, decoder and
 * post-processor) and tokenizer_io.c (tokenizer.json, vocab.json +
 * merges.txt, GGUF metadata, writing tokenizer.json). Not public API. */
#ifndef DT_TOKENIZER_IMPL_H
#define DT_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include "tokenizer.h"

#define TOK_MAX_ID (1 << 24)  /* sanity cap on ids read from files */
#define TOK_NCP 324           /* byte characters are code points < 324 */

enum { TOK_NORMAL = 0, TOK_ADDED = 1, TOK_SPECIAL = 2 };
/* added-token flags (aflag): lstrip, rstrip, matched after the normalizers */
enum { TOK_LSTRIP = 1, TOK_RSTRIP = 2, TOK_NORMALIZED = 4 };
#define TOK_BADCP 0x80000000u  /* an invalid UTF-8 byte (| the byte in NFC) */
enum { UC_O = 0, UC_L = 1, UC_N = 2, UC_S = 3 };  /* other/letter/number/space */

/* Pipeline steps read from tokenizer.json (tokenizer_hf.c). */
#define TOK_MAXSTEP 8
enum { TN_NFC, TN_PREPEND, TN_REPLACE };
typedef struct { int type; char *a, *b; size_t na, nb; } tok_norm;
enum { TS_GPT2, TS_LLAMA3, TS_QWEN2, TS_COUNT };       /* known split regexes */
enum { TB_ISOLATED, TB_REMOVED, TB_PREV, TB_NEXT, TB_CONTIG };  /* behaviors */
enum { TP_REGEX, TP_STRING, TP_DIGITS, TP_METASPACE, TP_BYTELEVEL };
/* REGEX: kind = TS_*; STRING: a = pattern, behavior; DIGITS: flag =
 * individual; METASPACE: a = replacement, kind = 0 always / 1 first /
 * 2 never, flag = split; BYTELEVEL: flag = add_prefix_space, kind = use_regex */
typedef struct { int type, kind, behavior, flag; char *a; size_t na; } tok_pre;
enum { TD_BYTELEVEL, TD_REPLACE, TD_BYTEFALLBACK, TD_FUSE, TD_STRIP,
       TD_METASPACE };
/* REPLACE: a -> b; STRIP: a = content, start, stop; METASPACE: a =
 * replacement, flag = strip the first token's leading space */
typedef struct { int type, start, stop, flag; char *a, *b; size_t na, nb; } tok_dec;

typedef struct { int32_t rank, id; } tok_merge;

/* Added tokens to match, by the first byte of their text, longest first:
 * ids[at[b] .. at[b+1]) start with byte b. txt is the token text (raw) or
 * its normalized form (owned, for normalized=true tokens). */
typedef struct {
    int32_t *ids;
    char **txt;
    uint32_t *tlen;
    int32_t nids, at[257];
    int owned;
} tok_aidx;

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
    tok_aidx araw;          /* added tokens matched in the text as it is */
    tok_aidx anorm;         /* normalized=true ones, in the normalized text */
    int add_prefix_space, use_regex, ignore_merges;
    int digits;             /* 0: none, 1: runs of \p{N}, 2: each \p{N} */
    int32_t unk, bos, eos;
    char *chat_template;    /* owned or NULL */
    /* tokenizer.json pipeline; sources without one (vocab.json + merges,
     * GGUF) get [Digits,] ByteLevel from dt_tok__gpt2_steps */
    tok_norm norm[TOK_MAXSTEP]; int nnorm;
    tok_pre pre[TOK_MAXSTEP]; int npre;
    tok_dec dec[TOK_MAXSTEP]; int ndec;
    int byte_level;         /* a ByteLevel pre-tokenizer: BPE on bytes */
    int byte_fallback, fuse_unk, has_decoder;
    int32_t fb_id[256];     /* ids of <0xNN>, -1 if absent */
    uint8_t *aflag;         /* (n) TOK_LSTRIP / TOK_RSTRIP, or NULL */
    int32_t tpl_pre[4], tpl_post[4];  /* post-processor: around a sequence */
    int ntpl_pre, ntpl_post;
    char *hf_json;          /* the tokenizer.json's normalizer, pre_tokenizer,
                               post_processor and decoder as written, or NULL */
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
/* GPT-2's pipeline: [Digits (digits 1: runs, 2: each),] ByteLevel. */
void dt_tok__gpt2_steps(dt_tokenizer *t, int digits, int add_prefix_space,
                        int use_regex);
void dt_tok__free_steps(dt_tokenizer *t);

/* tokenizer_hf.c: reads root's normalizer, pre_tokenizer, decoder and
 * post_processor (after the vocabulary is loaded). DT_EFORMAT naming the
 * component type for anything unsupported. */
int dt_tok__hf_pipeline(dt_tokenizer *t, void *root, const char *src,
                        char *err);

/* tokenizer_text.c */
int dt_tok__utf8_put(uint32_t cp, char *o);
/* Decodes one code point; an invalid sequence is one byte of TOK_BADCP. */
uint32_t dt_tok__utf8_next(const uint8_t *p, size_t n, size_t *adv);
int dt_tok__uc_class(uint32_t c);  /* UC_* */
/* TS_* of a Split regex as tokenizer.json spells it, or -1. */
int dt_tok__split_kind(const char *pattern);
const char *dt_tok__split_pattern(int kind);  /* and back */
/* End of the match of regex kind at i (< n); every position matches. */
size_t dt_tok__split_match(int kind, const uint8_t *p, size_t n, size_t i);
/* The first occurrence of s (m > 0 bytes) in p (n bytes), or NULL. */
const uint8_t *dt_tok__find_bytes(const uint8_t *p, size_t n, const char *s,
                                  size_t m);
/* Replaces every a by b in *s (*n bytes; *s is freed first when *own, and
 * the result is owned). */
int dt_tok__replace_all(char **s, size_t *n, int *own, const char *a,
                        size_t na, const char *b, size_t nb);
/* 0: already NFC; 1: *out (malloc'd, *on bytes); < 0: DT_E* code. */
int dt_tok__nfc(const uint8_t *p, size_t n, char **out, size_t *on);

#endif
