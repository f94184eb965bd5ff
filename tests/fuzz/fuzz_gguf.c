/* fuzz_gguf: dt_gguf_load and dt_gguf_load_meta (gpu/gguf.c) on arbitrary
 * bytes (header, metadata key/values of every type, arrays, tensor infos,
 * alignment, quantized data), then dt_tokenizer_from_gguf on the metadata
 * (gpu/tokenizer_io.c) and one encode/decode with the result; then the
 * header scanner (dt_gguf_scan) through dt_arch_info_read and
 * dt_mem_model_read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/dt.h"
#include "fuzz_common.h"
#include "gpu/engine_api.h"
#include "gpu/tensorfile.h"
#include "gpu/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[DT_ERR_LEN];
    int fd = fuzz_memfd(data, size, path);
    dt_tensorset ts;

    /* metadata only (what the tokenizer reads) */
    dt_tensorset_init(&ts);
    err[0] = 0;
    if (dt_gguf_load_meta(path, &ts, err) == DT_OK) {
        dt_tokenizer *tok = dt_tokenizer_from_gguf(&ts, err);
        if (tok) {
            static const char text[] = "Hello, world! <|im_start|>user\n\xc3\xa9t\xc3\xa9 42<|im_end|>";
            int32_t *ids = NULL;
            int n = 0;
            if (dt_tokenizer_encode(tok, text, sizeof text - 1, 1, &ids, &n, err) == DT_OK) {
                free(dt_tokenizer_decode(tok, ids, n));
                free(ids);
            }
            dt_tokenizer_bos(tok);
            dt_tokenizer_eos(tok);
            dt_tokenizer_chat_template(tok);
            dt_tokenizer_free(tok);
        }
    } else if (!err[0]) {
        abort();
    }
    dt_tensorset_free(&ts);

    /* tensors too (dequantized to fp32) */
    dt_tensorset_init(&ts);
    err[0] = 0;
    if (dt_gguf_load(path, &ts, err) == DT_OK) {
        for (int i = 0; i < ts.n; i++) {
            volatile float acc = 0;
            for (int64_t k = 0; k < ts.t[i].numel; k++) acc += ts.t[i].data[k];
            (void)acc;
        }
    } else if (!err[0]) {
        abort();
    }
    dt_tensorset_free(&ts);

    /* the header scanner of the model info and the memory estimate */
    dt_arch_info ai;
    dt_mem_model mm;
    err[0] = 0;
    if (dt_arch_info_read(path, &ai, err) != DT_OK && !err[0])
        abort();
    err[0] = 0;
    if (dt_mem_model_read(path, &mm, err) != DT_OK && !err[0])
        abort();
    close(fd);
    return 0;
}
