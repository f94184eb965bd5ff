/* backend.c: picks a backend by device name ("cpu", "cuda", "cuda:N",
 * "auto") and frees one. */
#include "backend.h"
#include "base/dt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Parses "cuda" (device 0) or "cuda:N"; returns the device index or -1. */
static int backend__cuda_index(const char *device)
{
    if (strcmp(device, "cuda") == 0)
        return 0;
    if (strncmp(device, "cuda:", 5) != 0)
        return -1;
    const char *s = device + 5;
    if (*s < '0' || *s > '9')
        return -1;
    char *end = NULL;
    long n = strtol(s, &end, 10);
    if (*end != '\0' || n < 0 || n > 1024)
        return -1;
    return (int)n;
}

dt_backend *dt_backend_new(const char *device, int threads, char *err)
{
    if (!device || !*device || strcmp(device, "auto") == 0) {
        if (dt_backend_cuda_available()) {
            dt_backend *be = dt_backend_cuda_new(0, err);
            if (be)
                return be;
        }
        return dt_backend_cpu_new(threads, err);
    }
    if (strcmp(device, "cpu") == 0)
        return dt_backend_cpu_new(threads, err);
    int idx = backend__cuda_index(device);
    if (idx >= 0) {
        char why[DT_ERR_LEN] = "";
        dt_backend *be = dt_backend_cuda_new(idx, why);
        if (!be)
            dt_errf(err, DT_EDEVICE,
                    "--device %s: no usable CUDA device (%s)", device,
                    why[0] ? why : "unknown error");
        return be;
    }
    dt_errf(err, DT_EINVAL,
            "--device %s: unknown device (expected cpu, cuda, cuda:N or auto)",
            device);
    return NULL;
}

void dt_backend_free(dt_backend *be)
{
    if (be && be->i.destroy)
        be->i.destroy(be);
}

void dt_rope_table(float *cs, int T, int D, float theta)
{
    int half = D / 2;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)D; /* fp32, as HF's arange / dim */
        float inv = 1.0f / (float)pow((double)theta, (double)e);
        for (int t = 0; t < T; t++) {
            double ang = (double)((float)t * inv);
            float *p = cs + 2 * ((size_t)t * half + i);
            p[0] = (float)cos(ang);
            p[1] = (float)sin(ang);
        }
    }
}
