/* tokenizer.h: byte-level BPE (GPT-2 style), ids identical to Hugging Face
 * `tokenizers` on the same files.
 *
 * Sources: tokenizer.json (model.type == "BPE" with a ByteLevel
 * pre-tokenizer), vocab.json + merges.txt (GPT-2's encoder.json + vocab.bpe),
 * or GGUF metadata (tokenizer.ggml.tokens / merges / token_type). Special
 * tokens (added_tokens) are matched in the text before BPE. */
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
 * Special tokens in the text are recognised when allow_special is set. */
int dt_tokenizer_encode(const dt_tokenizer *tok, const char *text, size_t len,
                        int allow_special, int32_t **ids, int *n, char *err);
/* Decodes ids to a new malloc'd NUL-terminated string. */
char *dt_tokenizer_decode(const dt_tokenizer *tok, const int32_t *ids, int n);

int dt_tokenizer_vocab_size(const dt_tokenizer *tok);
/* Bytes of the longest token string (added tokens included; byte-level
 * strings counted as stored, at least the raw bytes they stand for): every
 * token of an encoding covers at most this many input bytes, so the first k
 * tokens of a text come from its first k * max bytes (dataset truncation). */
size_t dt_tokenizer_max_token_bytes(const dt_tokenizer *tok);
/* Id of a token string (e.g. "<|im_start|>"), or -1. */
int32_t dt_tokenizer_token_id(const dt_tokenizer *tok, const char *token);
/* Ids of beginning/end of sequence tokens, -1 when absent. */
int32_t dt_tokenizer_bos(const dt_tokenizer *tok);
int32_t dt_tokenizer_eos(const dt_tokenizer *tok);
/* The model's chat template text (tokenizer_config.json or GGUF
 * tokenizer.chat_template), or NULL. Borrowed. */
const char *dt_tokenizer_chat_template(const dt_tokenizer *tok);

/* Writes a Hugging Face tokenizer.json for this vocabulary (used when a GGUF
 * model is exported as a safetensors directory). */
int dt_tokenizer_write_json(const dt_tokenizer *tok, const char *path,
                            char *err);

#endif
