/* cpu_gemm_small.h: C = alpha·A·Wᵀ + beta·C for a few rows of A (a batched
 * decode step: one row per sequence), without packing W.
 *
 * OpenBLAS's sgemm packs its operands into panels before multiplying; with
 * a few rows of A the packing of W (the weight, read once per call) costs
 * more than the product, and a 16-row step of SmolLM2-135M ran at a fifth
 * of the CPU's sgemm peak. This kernel streams each W row once from memory
 * and reuses it from L1 for every row of A: on SmolLM2's shapes, one
 * AVX-512 core, 1.3-1.8x sgemm's GFLOP/s at 16 rows and 1.0-1.5x at 32
 * (at 48 sgemm wins on K = 1536, hence the limit). */
#ifndef DT_CPU_GEMM_SMALL_H
#define DT_CPU_GEMM_SMALL_H

/* Rows of A up to which dt_cpu_gemm_nt_small is used. */
#define DT_GEMM_SMALL_MAX_M 32

/* C(M,N) = alpha·A(M,K)·W(N,K)ᵀ + beta·C, row-major with leading dimensions
 * lda, ldw, ldc; beta == 0 ignores C's contents (NaN included). Each
 * element is one thread's fixed-order dot product: the result does not
 * depend on the thread count. Runs with AVX-512F only: returns 0 (nothing
 * done) on a CPU without it or when M, N or K is < 1, else 1. */
int dt_cpu_gemm_nt_small(int M, int N, int K, float alpha, const float *A,
                         int lda, const float *W, int ldw, float beta,
                         float *C, int ldc);

#endif
