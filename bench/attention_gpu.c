/* attention_gpu.c: the CUDA backend's attention forward and backward timed at GPT-2 and
 * Llama-8B shapes, for each DT_ATTENTION mode: naive (cuBLAS GEMMs + a (T, T) score
 * buffer), flash (the fused fp32 kernels, the default for head dims 64 and 128) and
 * bf16 (the fused kernels on bf16 tensor cores, forward and backward). Run by
 * scripts/gpu-check (bench step) on a lent GPU; built by `make engine` as
 * $(BUILD)/bench_attention. Median-free: 2 warm-up calls, then the mean of 5
 * after a sync. TFLOP/s count the causal half:
 * 2·B·NH·T²·D for the forward, 2.5 times that for the backward. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "gpu/backend.h"
#include "base/dt.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void)
{
    char err[DT_ERR_LEN] = "";
    dt_backend *be = dt_backend_cuda_new(0, err);
    if (!be) { fprintf(stderr, "no cuda: %s\n", err); return 1; }
    static const int shapes[][5] = {{4, 1024, 12, 12, 64}, {4, 2048, 12, 12, 64},
                                    {1, 2048, 32, 8, 128}, {1, 4096, 32, 8, 128}};
    const char *modes[] = {"naive", "flash", "bf16"};
    for (int s = 0; s < 4; s++) {
        int B = shapes[s][0], T = shapes[s][1], NH = shapes[s][2], NKV = shapes[s][3], D = shapes[s][4];
        size_t nq = (size_t)B * T * NH * D, nk = (size_t)B * T * NKV * D;
        float *h = malloc(nq * 4);
        for (size_t i = 0; i < nq; i++) h[i] = (float)rand() / RAND_MAX * 2 - 1;
        float *q = be->i.alloc(be, nq * 4), *k = be->i.alloc(be, nk * 4), *v = be->i.alloc(be, nk * 4);
        float *o = be->i.alloc(be, nq * 4), *dO = be->i.alloc(be, nq * 4), *dq = be->i.alloc(be, nq * 4);
        float *dk = be->i.alloc(be, nk * 4), *dv = be->i.alloc(be, nk * 4);
        float *lse = be->i.alloc(be, (size_t)B * NH * T * 4);
        be->i.upload(be, q, h, nq * 4); be->i.upload(be, dO, h, nq * 4);
        be->i.upload(be, k, h, nk * 4); be->i.upload(be, v, h, nk * 4);
        double fl = 2.0 * B * NH * (double)T * T * D; /* causal: half of 4 B NH T^2 D */
        for (int m = 0; m < 3; m++) {
            setenv("DT_ATTENTION", modes[m], 1);
            for (int w = 0; w < 2; w++) {
                be->i.attention_fwd(be, o, lse, q, k, v, B, T, NH, NKV, D);
                be->i.attention_bwd(be, dq, dk, dv, dO, o, lse, q, k, v, B, T, NH, NKV, D);
            }
            if (be->i.sync(be, err)) { printf("%s: error %s\n", modes[m], err); return 1; }
            int it = 5;
            double t0 = now();
            for (int r = 0; r < it; r++) be->i.attention_fwd(be, o, lse, q, k, v, B, T, NH, NKV, D);
            be->i.sync(be, err);
            double t1 = now();
            for (int r = 0; r < it; r++)
                be->i.attention_bwd(be, dq, dk, dv, dO, o, lse, q, k, v, B, T, NH, NKV, D);
            be->i.sync(be, err);
            double t2 = now();
            double f = (t1 - t0) / it, b = (t2 - t1) / it;
            printf("B=%d T=%d NH=%d NKV=%d D=%d %-6s fwd %8.3f ms %6.1f TFLOP/s  bwd %8.3f ms %6.1f TFLOP/s\n",
                   B, T, NH, NKV, D, modes[m], f * 1e3, fl / f / 1e12, b * 1e3, 2.5 * fl / b / 1e12);
            fflush(stdout);
        }
        be->i.free(be, q); be->i.free(be, k); be->i.free(be, v); be->i.free(be, o);
        be->i.free(be, dO); be->i.free(be, dq); be->i.free(be, dk); be->i.free(be, dv);
        be->i.free(be, lse);
        free(h);
    }
    dt_backend_free(be);
    return 0;
}
