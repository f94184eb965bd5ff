/* backend_cuda_stub.c: linked instead of backend_cuda.cu when the build has
 * no nvcc (or is a sanitizer build): CUDA is never available, and asking for
 * it fails with a clear message. */
#include "backend.h"
#include "base/dt.h"

dt_backend *dt_backend_cuda_new(int device, char *err)
{
    (void)device;
    dt_errf(err, DT_ENOTSUP,
            "this build has no CUDA backend (nvcc was not found at build time)");
    return NULL;
}

int dt_backend_cuda_available(void) { return 0; }

int dt_backend_cuda_bf16(int device)
{
    (void)device;
    return 0;
}

size_t dt_backend_cuda_total(int device)
{
    (void)device;
    return 0;
}
