/* cpu_gemm_small.c: see cpu_gemm_small.h.
 *
 * Blocks of 4 rows of W × 4 rows of A: per 16 columns of K, 4 loads of W
 * and 4 of A feed 16 FMAs into 16 accumulators (one zmm register each);
 * the 16 dot products are then summed horizontally together (hsum16), 15
 * shuffle+add pairs instead of 16 separate reductions. Each block of 4 W
 * rows is read from memory by the first pass over A's rows and from L1 by
 * the others (4 rows of K = 1536 floats: 24 KiB). Threads split N in
 * blocks of 4 rows, statically. */
#include "cpu_gemm_small.h"

#include <immintrin.h>
#include <stddef.h>

#define AVX512 __attribute__((target("avx512f")))

/* out[e] = sum of the 16 lanes of v[e], e = 0..15. */
AVX512 static inline __m512 hsum16(const __m512 *v)
{
    __m512 x[8], z[4];
    /* per 128-bit lane: (a0+a2, b0+b2, a1+a3, b1+b3) of v[2i], v[2i+1] */
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    /* per 128-bit lane: the lane sums of v[4i..4i+3] */
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(x[2 * i]), b = _mm512_castps_pd(x[2 * i + 1]);
        z[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    /* across the four lanes: 0x88 takes lanes (0, 2), 0xdd lanes (1, 3) */
    __m512 u0 = _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88),
                              _mm512_shuffle_f32x4(z[0], z[1], 0xdd));
    __m512 u1 = _mm512_add_ps(_mm512_shuffle_f32x4(z[2], z[3], 0x88),
                              _mm512_shuffle_f32x4(z[2], z[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, 0x88),
                         _mm512_shuffle_f32x4(u0, u1, 0xdd));
}

static inline void put(float *c, float v, float beta)
{
    *c = beta == 0.0f ? v : v + beta * *c;
}

/* Rows n0..n0+nn-1 (nn <= 4) of W's nrows against every row of A. */
AVX512 static void block(int M, int n0, int nn, int nrows, int K, float alpha,
                         const float *A, int lda, const float *W, int ldw,
                         float beta, float *C, int ldc)
{
    const float *w0 = W + (size_t)n0 * ldw;
    __mmask16 tail = (__mmask16)((1u << (K % 16)) - 1);
    int kfull = K - K % 16, pf = n0 + 8 <= nrows;
    for (int m0 = 0; m0 < M; m0 += 4) {
        int mm = M - m0 < 4 ? M - m0 : 4;
        const float *a0 = A + (size_t)m0 * lda;
        if (mm == 4 && nn == 4) {
            __m512 acc[16], w[4];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                acc[i] = _mm512_setzero_ps();
            for (int k = 0; k < kfull; k += 16) {
                /* the first pass streams these W rows from memory: ask
                 * for the next block's (about 15% faster than the
                 * hardware prefetcher alone, measured) */
                if (m0 == 0 && pf)
#pragma GCC unroll 4
                    for (int j = 0; j < 4; j++)
                        _mm_prefetch((const char *)(w0 + (size_t)(j + 4) * ldw + k),
                                     _MM_HINT_T0);
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++)
                    w[j] = _mm512_loadu_ps(w0 + (size_t)j * ldw + k);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    __m512 a = _mm512_loadu_ps(a0 + (size_t)i * lda + k);
#pragma GCC unroll 4
                    for (int j = 0; j < 4; j++)
                        acc[4 * i + j] = _mm512_fmadd_ps(a, w[j], acc[4 * i + j]);
                }
            }
            if (tail) {
                for (int j = 0; j < 4; j++)
                    w[j] = _mm512_maskz_loadu_ps(tail, w0 + (size_t)j * ldw + kfull);
                for (int i = 0; i < 4; i++) {
                    __m512 a = _mm512_maskz_loadu_ps(tail, a0 + (size_t)i * lda + kfull);
                    for (int j = 0; j < 4; j++)
                        acc[4 * i + j] = _mm512_fmadd_ps(a, w[j], acc[4 * i + j]);
                }
            }
            float o[16];
            _mm512_storeu_ps(o, _mm512_mul_ps(hsum16(acc), _mm512_set1_ps(alpha)));
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    put(C + (size_t)(m0 + i) * ldc + n0 + j, o[4 * i + j], beta);
            continue;
        }
        /* edges: one dot product at a time */
        for (int i = 0; i < mm; i++)
            for (int j = 0; j < nn; j++) {
                const float *a = a0 + (size_t)i * lda, *w = w0 + (size_t)j * ldw;
                __m512 s = _mm512_setzero_ps();
                for (int k = 0; k < kfull; k += 16)
                    s = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(w + k), s);
                if (tail)
                    s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a + kfull),
                                        _mm512_maskz_loadu_ps(tail, w + kfull), s);
                put(C + (size_t)(m0 + i) * ldc + n0 + j,
                    alpha * _mm512_reduce_add_ps(s), beta);
            }
    }
}

int dt_cpu_gemm_nt_small(int M, int N, int K, float alpha, const float *A,
                         int lda, const float *W, int ldw, float beta,
                         float *C, int ldc)
{
    static int avx512 = -1;
    if (avx512 < 0) /* a benign race: every thread stores the same value */
        avx512 = __builtin_cpu_supports("avx512f") ? 1 : 0;
    if (!avx512 || M < 1 || N < 1 || K < 1)
        return 0;
    int nb = (N + 3) / 4;
#pragma omp parallel for schedule(static) if (nb >= 16)
    for (int b = 0; b < nb; b++) {
        int n0 = 4 * b, nn = N - n0 < 4 ? N - n0 : 4;
        block(M, n0, nn, N, K, alpha, A, lda, W, ldw, beta, C, ldc);
    }
    return 1;
}
