/* fuzz_tokenizer: dt_tokenizer_load_dir (gpu/tokenizer_io.c, gpu/tokenizer.c)
 * on a model directory whose files come from the input, then encode and
 * decode with the loaded tokenizer, and a tokenizer.json write + reload.
 *
 * Input: one selector byte, then up to three parts separated by the line
 * "\n@@\n". The selector's low two bits pick the file set:
 *   0: tokenizer.json, tokenizer_config.json, (text to encode)
 *   1: vocab.json, merges.txt, tokenizer_config.json
 *   2: encoder.json, vocab.bpe, special_tokens_map.json
 *   3: tokenizer.json, config.json, special_tokens_map.json
 * Bit 2 makes encode recognise special tokens. The last part is also
 * encoded as text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/dt.h"
#include "fuzz_common.h"
#include "gpu/tokenizer.h"

static const char *const sets[4][3] = {
    {"tokenizer.json", "tokenizer_config.json", NULL},
    {"vocab.json", "merges.txt", "tokenizer_config.json"},
    {"encoder.json", "vocab.bpe", "special_tokens_map.json"},
    {"tokenizer.json", "config.json", "special_tokens_map.json"},
};
static const char *const all_files[] = {"tokenizer.json", "tokenizer_config.json",
    "vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "special_tokens_map.json",
    "config.json", "out.json"};

static void encode(const dt_tokenizer *tok, const char *text, size_t n, int special)
{
    char err[DT_ERR_LEN];
    int32_t *ids = NULL;
    int nids = 0;
    if (dt_tokenizer_encode(tok, text, n, special, &ids, &nids, err) == DT_OK) {
        int vs = dt_tokenizer_vocab_size(tok);
        for (int i = 0; i < nids; i++)
            if (ids[i] < 0 || ids[i] >= vs) abort(); /* ids stay in the vocabulary */
        free(dt_tokenizer_decode(tok, ids, nids));
        free(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *dir = fuzz_tmpdir();
    char err[DT_ERR_LEN];
    if (size < 1) return 0;
    int sel = data[0] & 3, special = (data[0] >> 2) & 1;
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    const char *last = p;
    size_t lastn = 0;
    for (size_t k = 0; k < sizeof all_files / sizeof *all_files; k++)
        fuzz_unlink(dir, all_files[k]);
    for (int part = 0; part < 3 && p <= end; part++) {
        const char *sep = memmem(p, (size_t)(end - p), "\n@@\n", 4);
        const char *e = sep ? sep : end;
        if (sets[sel][part]) fuzz_write(dir, sets[sel][part], p, (size_t)(e - p));
        last = p;
        lastn = (size_t)(e - p);
        if (!sep) break;
        p = sep + 4;
    }
    err[0] = 0;
    dt_tokenizer *tok = dt_tokenizer_load_dir(dir, err);
    if (!tok) {
        if (!err[0]) abort(); /* every failure says why */
        return 0;
    }
    static const char text[] = "Hello, world! <|im_start|>user\n\xc3\xa9t\xc3\xa9  42 \xf0\x9f\x98\x80<|endoftext|>";
    encode(tok, text, sizeof text - 1, special);
    encode(tok, last, lastn > 4096 ? 4096 : lastn, special);
    int vs = dt_tokenizer_vocab_size(tok);
    int32_t b = dt_tokenizer_bos(tok), e = dt_tokenizer_eos(tok);
    if (b >= vs || e >= vs || b < -1 || e < -1) abort();
    dt_tokenizer_token_id(tok, "<|im_start|>");
    dt_tokenizer_chat_template(tok);
    int32_t some[4] = {0, vs - 1, b, e};
    free(dt_tokenizer_decode(tok, some, 2));

    /* the GGUF export path writes tokenizer.json from a loaded tokenizer */
    char out[512];
    snprintf(out, sizeof out, "%s/out.json", dir);
    if (dt_tokenizer_write_json(tok, out, err) == DT_OK) {
        for (size_t k = 0; k < sizeof all_files / sizeof *all_files - 1; k++)
            fuzz_unlink(dir, all_files[k]);
        char tj[512];
        snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
        if (rename(out, tj)) abort();
        dt_tokenizer *back = dt_tokenizer_load_dir(dir, err);
        dt_tokenizer_free(back);
    }
    dt_tokenizer_free(tok);
    return 0;
}
