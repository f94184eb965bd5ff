/* gpu_seat.h: the backend the GPU tests (test_gpu_ops, test_gpu_train)
 * compare with the CPU: the CUDA device, or, for proving the tests
 * themselves on a machine without one, a CPU stand-in:
 *   DT_GPU_SELFTEST=1          a plain 1-thread CPU backend;
 *   DT_GPU_SELFTEST=perturbed  a 1-thread CPU backend whose GEMMs add their
 *                              K halves in the other order and put 1e-6
 *                              relative noise on every output (another
 *                              summation order and rounding, as a GPU's
 *                              GEMM has): every GPU test must pass it.
 * Header-only (static), for the two test programs. */
#ifndef DT_TEST_GPU_SEAT_H
#define DT_TEST_GPU_SEAT_H

#include <stdlib.h>
#include <string.h>

#include "gpu/backend.h"

static void (*cpu_gemm)(dt_backend *, int, int, int, int, int, float, const float *, int,
                        const float *, int, float, float *, int);

/* A deterministic value in [-1, 1] for element i of call c. */
static double noise(unsigned long c, unsigned long i)
{
    unsigned long long z = (c * 0x9E3779B97F4A7C15ull) ^ (i + 0x632BE59BD9B4E019ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) / 4503599627370496.0 - 1.0;
}

/* C = alpha op(A) op(B) + beta C with the K halves added high half first,
 * then 1e-6 relative noise on every output: another summation order and
 * another rounding, as a GPU's GEMM has. */
static void perturbed_gemm(dt_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                           const float *A, int lda, const float *B, int ldb, float beta,
                           float *C, int ldc)
{
    /* The noise depends on the call's shape, not on how many calls came
     * before, so a repeated op stays bitwise repeatable. */
    unsigned long call = ((unsigned long)M * 1000003u + (unsigned long)N) * 1000003u +
                         (unsigned long)K * 4u + (unsigned long)(ta * 2 + tb);
    int h = K / 2;
    if (h == 0) {
        cpu_gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    } else {
        const float *A1 = ta ? A + (long)h * lda : A + h, *B1 = tb ? B + h : B + (long)h * ldb;
        cpu_gemm(be, ta, tb, M, N, K - h, alpha, A1, lda, B1, ldb, beta, C, ldc);
        cpu_gemm(be, ta, tb, M, N, h, alpha, A, lda, B, ldb, 1.0f, C, ldc);
    }
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            C[(long)r * ldc + c] *= (float)(1.0 + 1e-6 * noise(call, (unsigned long)r * N + c));
}

static void perturbed_gemm_batched(dt_backend *be, int ta, int tb, int M, int N, int K,
                                   float alpha, const float *A, int lda, long sA,
                                   const float *B, int ldb, long sB, float beta, float *C,
                                   int ldc, long sC, int batch)
{
    for (int b = 0; b < batch; b++)
        perturbed_gemm(be, ta, tb, M, N, K, alpha, A + b * sA, lda, B + b * sB, ldb, beta,
                       C + b * sC, ldc);
}

/* The backend in the CUDA seat: the CUDA device, or a CPU stand-in for the
 * self-tests. */
static dt_backend *gpu_seat_backend(char *err)
{
    const char *st = getenv("DT_GPU_SELFTEST");
    if (st && !strcmp(st, "perturbed")) {
        dt_backend *be = dt_backend_cpu_new(1, err);
        if (be) {
            cpu_gemm = be->i.gemm;
            be->i.gemm = perturbed_gemm;
            be->i.gemm_batched = perturbed_gemm_batched;
        }
        return be;
    }
    if (st && atoi(st))
        return dt_backend_cpu_new(1, err);
    return dt_backend_cuda_new(0, err);
}

#endif
