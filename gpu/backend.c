/* backend.c: picks a backend by device name ("cpu", "cuda", "cuda:N",
 * "auto") and frees one. */
#include "backend.h"
#include "base/dt.h"

#include <math.h>
#include <pthread.h>
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

static float rope__inv_freq(int i, int D, float theta, float factor,
                            float low, float high, int orig);
static void rope__lookup(int k, float *theta, float *factor, float *low,
                         float *high, int *orig);

void dt_rope_table(float *cs, int T, int D, float theta)
{
    float factor = 0.0f, low = 0.0f, high = 0.0f;
    int orig = 0;
    if (theta < 0.0f) { /* a dt_rope_key */
        int k = (int)(-theta) - 1;
        rope__lookup(k, &theta, &factor, &low, &high, &orig);
    }
    int half = D / 2;
    for (int i = 0; i < half; i++) {
        float inv = rope__inv_freq(i, D, theta, factor, low, high, orig);
        for (int t = 0; t < T; t++) {
            double ang = (double)((float)t * inv);
            float *p = cs + 2 * ((size_t)t * half + i);
            p[0] = (float)cos(ang);
            p[1] = (float)sin(ang);
        }
    }
}

/* One inverse frequency, in fp32 as transformers computes it
 * (_compute_default_rope_parameters, _compute_llama3_parameters). */
static float rope__inv_freq(int i, int D, float theta, float factor,
                            float low, float high, int orig)
{
    float e = (float)(2 * i) / (float)D; /* fp32, as HF's arange / dim */
    float inv = 1.0f / (float)pow((double)theta, (double)e);
    if (factor == 0.0f)
        return inv;
    float low_wl = (float)orig / low, high_wl = (float)orig / high;
    float wl = 2.0f * (float)M_PI / inv;
    float scaled = wl > low_wl ? inv / factor : inv;
    if (!(wl < high_wl) && !(wl > low_wl)) { /* medium: interpolate */
        float sm = ((float)orig / wl - low) / (high - low);
        scaled = (1.0f - sm) * scaled / factor + sm * scaled;
    }
    return scaled;
}

/* dt_rope_key's registry: the backends cache one table per (D, theta), so a
 * scaled RoPE travels as a distinct negative "theta" that indexes this list
 * (append-only, so a key stays valid for the life of the process). */
#define ROPE_KEYS 64
static struct { float theta, factor, low, high; int orig; } rope__keys[ROPE_KEYS];
static int rope__nkeys;
static pthread_mutex_t rope__mu = PTHREAD_MUTEX_INITIALIZER;

float dt_rope_key(float theta, float factor, float low, float high, int orig)
{
    if (factor == 0.0f)
        return theta;
    pthread_mutex_lock(&rope__mu);
    int i;
    for (i = 0; i < rope__nkeys; i++)
        if (rope__keys[i].theta == theta && rope__keys[i].factor == factor &&
            rope__keys[i].low == low && rope__keys[i].high == high &&
            rope__keys[i].orig == orig)
            break;
    if (i == rope__nkeys && i < ROPE_KEYS) {
        rope__keys[i].theta = theta;
        rope__keys[i].factor = factor;
        rope__keys[i].low = low;
        rope__keys[i].high = high;
        rope__keys[i].orig = orig;
        rope__nkeys++;
    }
    pthread_mutex_unlock(&rope__mu);
    return i < ROPE_KEYS ? -(float)(i + 1) : theta; /* full: unscaled */
}

static void rope__lookup(int k, float *theta, float *factor, float *low,
                         float *high, int *orig)
{
    pthread_mutex_lock(&rope__mu);
    if (k >= 0 && k < rope__nkeys) {
        *theta = rope__keys[k].theta;
        *factor = rope__keys[k].factor;
        *low = rope__keys[k].low;
        *high = rope__keys[k].high;
        *orig = rope__keys[k].orig;
    } else {
        *theta = 10000.0f;
    }
    pthread_mutex_unlock(&rope__mu);
}
