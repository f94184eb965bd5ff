/* gguf_write.h: writing a Llama-family or GPT-2 model as a GGUF v3 file
 * that llama.cpp (and so Ollama) loads as it is.
 *
 * What is written:
 * - general.architecture "llama" and llama.cpp's llama.* hyperparameters
 *   (context_length, embedding_length, block_count, feed_forward_length,
 *   rope.dimension_count, attention.head_count / head_count_kv /
 *   key_length / value_length / layer_norm_rms_epsilon, rope.freq_base,
 *   vocab_size), general.file_type, general.alignment 32. A GPT-2 model is
 *   llama.cpp's "gpt2" architecture: gpt2.context_length (positions),
 *   embedding_length, block_count, feed_forward_length,
 *   attention.head_count, attention.layer_norm_epsilon, vocab_size; tensors
 *   token_embd, position_embd, blk.N.attn_norm / attn_qkv / attn_output /
 *   ffn_norm / ffn_up / ffn_down (weights and biases), output_norm, and
 *   output when the head is not tied; matrices as (out, in), the
 *   orientation ggml multiplies with (Conv1D weights transposed).
 * - The tokenizer: tokenizer.ggml.model "gpt2" (byte-level BPE), .pre
 *   (llama.cpp's pre-tokenizer name: "gpt-2", "llama-bpe", "qwen2",
 *   "smollm"), .tokens, .token_type (1 normal, 3 control for special added
 *   tokens, 4 user-defined for other added tokens, 5 unused for the
 *   "[PADn]" ids that pad the vocabulary to the embedding's rows), .merges,
 *   bos/eos/padding token ids, add_bos_token / add_eos_token, and
 *   tokenizer.chat_template.
 * - Tensors under llama.cpp's names (token_embd, blk.N.attn_q, ...,
 *   output_norm, output), with the rows of Q and K (and their biases)
 *   permuted as llama.cpp's converter does for its interleaved RoPE (the
 *   inverse of what modelio.c undoes on load).
 *
 * Tensor types (as llama.cpp's convert_hf_to_gguf.py --outtype and
 * llama-quantize choose them):
 * - 1-D tensors (norms, biases) and GPT-2's position_embd stay F32
 *   whatever the type.
 * - f16: every 2-D tensor is F16.
 * - q8_0: every 2-D tensor is Q8_0, token_embd and output included.
 * - q4_0: every 2-D tensor is Q4_0 except output.weight, which llama-quantize
 *   keeps at a higher precision (Q6_K there; Q8_0 here, the finest block
 *   type this writer makes). A tied model has no output.weight: token_embd
 *   is then also the output and is written Q8_0.
 * - A 2-D tensor whose rows are not a multiple of 32 elements falls back to
 *   F16, as llama-quantize does.
 * Quantization follows ggml's reference rounding (quantize_row_q8_0_ref,
 * quantize_row_q4_0_ref): q8_0 d = max|x| / 127, q = round(x / d); q4_0
 * d = m / -8 for the m of largest magnitude, q = min(15, (int)(x / d + 8.5)).
 *
 * Our own reader (modelio.c) loads the llama files back; gpt2 files are
 * for llama.cpp (the engine trains GPT-2 from Hugging Face directories).
 *
 * Refused (DT_ENOTSUP naming the reason): Llama 3 RoPE
 * scaling, sliding-window attention, tokenizers that are not byte-level BPE
 * (SentencePiece byte-fallback vocabularies) and pre-tokenizers llama.cpp has
 * no name for. */
#ifndef DT_GGUF_WRITE_H
#define DT_GGUF_WRITE_H

#include "model.h"

/* ggml type ids of the output types. */
typedef enum {
    DT_GGUF_F16 = 1,
    DT_GGUF_Q4_0 = 2,
    DT_GGUF_Q8_0 = 8,
} dt_gguf_type;

/* "f16" | "q8_0" | "q4_0" (any case) -> *t; DT_EINVAL naming `what`
 * otherwise. */
int dt_gguf_type_parse(const char *s, dt_gguf_type *t, const char *what,
                       char *err);
const char *dt_gguf_type_name(dt_gguf_type t);

/* Called after each tensor is written: done of total tensors, the name
 * written. */
typedef void (*dt_gguf_progress)(void *ud, int done, int total,
                                 const char *name);

/* Writes w (canonical fp32 tensors: `tensors`, or w->ts when NULL) with the
 * tokenizer tok to path, atomically (path.tmp, then rename). progress may
 * be NULL. Errors name path. */
int dt_gguf_write(const dt_weights *w, const dt_tensorset *tensors,
                  const dt_tokenizer *tok, dt_gguf_type type,
                  const char *path, dt_gguf_progress progress, void *ud,
                  char *err);

/* Loads the model at model_path (Hugging Face directory or .gguf) with its
 * tokenizer and writes it as above. */
int dt_gguf_export(const char *model_path, dt_gguf_type type,
                   const char *path, dt_gguf_progress progress, void *ud,
                   char *err);

/* Quantizes n floats (a multiple of 32) into ggml blocks: 34 bytes per
 * block for Q8_0, 18 for Q4_0. Exposed for the unit tests. */
void dt_gguf_quant_q8_0(const float *x, int64_t n, unsigned char *out);
void dt_gguf_quant_q4_0(const float *x, int64_t n, unsigned char *out);

#endif
