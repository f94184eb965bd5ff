/* fuzz_safetensors: dt_safetensors_load (gpu/tensorfile.c) on arbitrary
 * bytes: the 8-byte header length, the JSON header (dtypes, shapes,
 * data_offsets, __metadata__) and the data section. Every input must give
 * DT_OK or a clean error, never a crash, leak or undefined behaviour. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/dt.h"
#include "fuzz_common.h"
#include "gpu/tensorfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[DT_ERR_LEN];
    int fd = fuzz_memfd(data, size, path);
    dt_tensorset ts;
    dt_tensorset_init(&ts);
    int rc = dt_safetensors_load(path, &ts, err);
    if (rc == DT_OK) {
        /* what loaders do next: look tensors up, read every value */
        for (int i = 0; i < ts.n; i++) {
            volatile float acc = 0;
            if (dt_tensorset_find(&ts, ts.t[i].name) == NULL) abort();
            for (int64_t k = 0; k < ts.t[i].numel; k++) acc += ts.t[i].data[k];
            (void)acc;
        }
    } else if (!err[0]) {
        abort(); /* every error names the problem */
    }
    dt_tensorset_free(&ts);
    close(fd);
    return 0;
}
