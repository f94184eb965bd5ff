/* fuzz_jsonl: JSONL training files through the upload validator
 * (dt_dataset_validate, what POST /v1/files runs) and the worker's loader
 * (dt_dataset_load with a byte-level BPE tokenizer: text, prompt/completion,
 * messages in ChatML or the plain template, input_ids/labels), gpu/dataset.c.
 *
 * The input is the file itself. Its length picks the tokenizer (odd: ChatML
 * tokens present, even: plain template, no BOS) and seq_len (8..71).
 * Checked: every loaded row's ids are in the vocabulary, its labels are
 * -100 or ids, rows fit seq_len, ntokens counts the unmasked targets, and a
 * file the loader accepts also passes the validator. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu/dataset.h"
#include "base/dt.h"
#include "fuzz_common.h"
#include "gpu/tokenizer.h"

static dt_tokenizer *toks[2];

/* UTF-8 of code point c into out; returns the length. */
static int utf8(unsigned c, char *out)
{
    if (c < 0x80) { out[0] = (char)c; return 1; }
    out[0] = (char)(0xc0 | (c >> 6));
    out[1] = (char)(0x80 | (c & 0x3f));
    return 2;
}

/* A GPT-2 style byte-level tokenizer.json: the 256 byte symbols, a few
 * merges and, when chatml, <|im_start|>/<|im_end|> and a distinct BOS. */
static dt_tokenizer *make_tokenizer(int chatml)
{
    static char buf[16384];
    char dir[512], sym[256][4];
    size_t o = 0;
    int n = 0;
    for (unsigned b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        unsigned cp = keep ? b : 256 + (unsigned)n++;
        int k = utf8(cp, sym[b]);
        sym[b][k] = 0;
    }
    o += (size_t)snprintf(buf + o, sizeof buf - o, "{\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (unsigned b = 0; b < 256; b++) {
        const char *s = sym[b];
        if (b == '"' || b == '\\')
            o += (size_t)snprintf(buf + o, sizeof buf - o, "\"\\%s\":%u,", s, b);
        else
            o += (size_t)snprintf(buf + o, sizeof buf - o, "\"%s\":%u,", s, b);
    }
    o += (size_t)snprintf(buf + o, sizeof buf - o,
                          "\"he\":256,\"ll\":257,\"hell\":258,\"\xc4\xa0t\":259,\"\xc4\xa0th\":260},"
                          "\"merges\":[\"h e\",\"l l\",\"he ll\",\"\xc4\xa0 t\",\"\xc4\xa0t h\"]},"
                          "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false},"
                          "\"added_tokens\":[{\"id\":261,\"content\":\"<|endoftext|>\",\"special\":true}");
    if (chatml)
        o += (size_t)snprintf(buf + o, sizeof buf - o,
                              ",{\"id\":262,\"content\":\"<|im_start|>\",\"special\":true},"
                              "{\"id\":263,\"content\":\"<|im_end|>\",\"special\":true},"
                              "{\"id\":264,\"content\":\"<s>\",\"special\":true}");
    o += (size_t)snprintf(buf + o, sizeof buf - o, "]}");
    if (o >= sizeof buf) abort();
    snprintf(dir, sizeof dir, "%s/tok%d", fuzz_tmpdir(), chatml);
    mkdir(dir, 0700);
    fuzz_write(dir, "tokenizer.json", buf, o);
    if (chatml) {
        static const char cfg[] = "{\"bos_token\":\"<s>\",\"eos_token\":\"<|im_end|>\"}";
        fuzz_write(dir, "tokenizer_config.json", cfg, sizeof cfg - 1);
    }
    char err[DT_ERR_LEN];
    dt_tokenizer *t = dt_tokenizer_load_dir(dir, err);
    if (!t) { fprintf(stderr, "fuzz_jsonl: tokenizer: %s\n", err); abort(); }
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    toks[0] = make_tokenizer(0);
    toks[1] = make_tokenizer(1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[DT_ERR_LEN];
    int fd = fuzz_memfd(data, size, path);

    char *report = NULL;
    long nlines = -1;
    int vrc = dt_dataset_validate(path, 5, &report, &nlines, err);
    if (vrc != DT_OK && (!err[0] || (vrc == DT_EINVAL && !report))) abort();
    if (nlines < 0) abort();
    free(report);

    const dt_tokenizer *tok = toks[size & 1];
    int seq_len = 8 + (int)(size % 64), vocab = dt_tokenizer_vocab_size(tok);
    dt_dataset ds;
    report = NULL;
    int lrc = dt_dataset_load(path, tok, seq_len, &ds, &report, err);
    if (lrc == DT_OK) {
        long ntok = 0;
        if (vrc != DT_OK) abort(); /* the loader accepted what the validator refused */
        if (ds.nrows <= 0) abort();
        for (int i = 0; i < ds.nrows; i++) {
            const dt_row *r = &ds.rows[i];
            if (r->n < 1 || r->n > seq_len + 1) abort();
            for (int k = 0; k < r->n; k++) {
                if (r->ids[k] < 0 || r->ids[k] >= vocab) abort();
                if (r->labels[k] != -100 && (r->labels[k] < 0 || r->labels[k] >= vocab)) abort();
                ntok += r->labels[k] != -100;
            }
        }
        if (ntok != ds.ntokens) abort();
        dt_dataset_free(&ds);
    } else if (!err[0]) {
        abort();
    }
    free(report);
    close(fd);
    return 0;
}
