/* tokenizer.h: BPE tokenizers, ids identical to Hugging Face `tokenizers` on
 * the same files.
 *
 * Sources: tokenizer.json (model.type == "BPE": byte-level as GPT-2, SmolLM2,
 * Llama 3 and Qwen 2/3 ship it, or SentencePiece-style with byte_fallback as
 * Llama 2, Mistral and Gemma ship it; the normalizers NFC, Prepend, Replace;
 * the pre-tokenizers Split (the GPT-2, Llama 3 and Qwen regexes, or a
 * string), ByteLevel, Digits, Metaspace; their Sequences; the decoders
 * ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace; a
 * TemplateProcessing post-processor), vocab.json + merges.txt (GPT-2's
 * encoder.json + vocab.bpe), or GGUF metadata (tokenizer.ggml.tokens /
 * merges / token_type). Anything else is refused naming the component.
 * Special tokens (added_tokens) are matched in the text before the rest.
 * Text that is not valid UTF-8 is accepted: each invalid byte is a
 * character of its own (class "other" for the split regexes, unchanged by
 * NFC) encoded as its byte token (byte-level BPE, or <0xNN> with
 * byte_fallback), so decoding returns the same bytes. */
#ifndef DT_TOKENIZER_H
#define DT_TOKENIZER_H

#include <stdint.h>
#include <stddef.h>
#include "tensorfile.h"

typedef struct dt_tokenizer dt_tokenizer;

/* Loads from a model directory (tokenizer.json, else vocab.json+merges.txt,
 * else encoder.json+vocab.bpe). NULL with detail in err. */
dt_tokenizer *dt_tokenizer_load_dir(const char *dir, char *err);
/* Loads from GGUF metadata already read by dt_gguf_load. */
dt_tokenizer *dt_tokenizer_from_gguf(const dt_tensorset *ts, char *err);
void dt_tokenizer_free(dt_tokenizer *tok);

/* Encodes len bytes of UTF-8 text. *ids is a new malloc'd array of *n ids.
 * flags: DT_TOK_SPECIAL recognises special tokens in the text (non-special
 * added tokens always are); DT_TOK_ADD adds the post-processor's tokens
 * around the text (BOS for Llama, Gemma), as HF's add_special_tokens. */
#define DT_TOK_SPECIAL 1
#define DT_TOK_ADD 2
int dt_tokenizer_encode(const dt_tokenizer *tok, const char *text, size_t len,
                        int flags, int32_t **ids, int *n, char *err);
/* Decodes ids to a new malloc'd NUL-terminated string (NULL: no memory),
 * through the tokenizer's decoders as HF's decode(skip_special_tokens=False),
 * except that bytes that are not valid UTF-8 are returned as they are. */
char *dt_tokenizer_decode(const dt_tokenizer *tok, const int32_t *ids, int n);

int dt_tokenizer_vocab_size(const dt_tokenizer *tok);
/* Bytes of the longest token string (added tokens included; byte-level
 * strings counted as stored, at least the raw bytes they stand for), times
 * what the normalizers can shrink text by (NFC: 3): every token of an
 * encoding covers at most this many input bytes, so the first k tokens of a
 * text come from its first k * max bytes (dataset truncation).
 * DT_TOK_NO_BOUND when there is no such bound (lstrip/rstrip added tokens,
 * a Replace by nothing); (2^31) * DT_TOK_NO_BOUND still fits a size_t. */
#define DT_TOK_NO_BOUND ((size_t)UINT32_MAX)
size_t dt_tokenizer_max_token_bytes(const dt_tokenizer *tok);
/* Id of a token string (e.g. "<|im_start|>"), or -1. */
int32_t dt_tokenizer_token_id(const dt_tokenizer *tok, const char *token);
/* Ids of beginning/end of sequence tokens, -1 when absent. */
int32_t dt_tokenizer_bos(const dt_tokenizer *tok);
int32_t dt_tokenizer_eos(const dt_tokenizer *tok);
/* Whether DT_TOK_ADD (HF's post-processor) puts BOS first / EOS last. */
int dt_tokenizer_adds_bos(const dt_tokenizer *tok);
int dt_tokenizer_adds_eos(const dt_tokenizer *tok);
/* The model's chat template text (tokenizer_config.json or GGUF
 * tokenizer.chat_template), or NULL. Borrowed. */
const char *dt_tokenizer_chat_template(const dt_tokenizer *tok);

/* Writes a Hugging Face tokenizer.json for this vocabulary (used when a GGUF
 * model is exported as a safetensors directory). */
int dt_tokenizer_write_json(const dt_tokenizer *tok, const char *path,
                            char *err);

#endif
