/* backend_cpu.c: the CPU backend (OpenBLAS sgemm + OpenMP loops).
 *
 * Device pointers are host pointers. Every op is bitwise deterministic for a
 * given thread count: loops use static schedules, each output element is
 * written by exactly one thread, and reductions over rows (weight gradients,
 * sums) run in a fixed order that does not depend on scheduling. Many are
 * independent of the thread count too (sum, sumsq, norms, bias/embedding
 * gradients); GEMM results may depend on OpenBLAS's own partitioning.
 *
 * Inside an OpenMP parallel region the OpenMP build of OpenBLAS runs sgemm on
 * the calling thread, which the attention ops rely on. */
#include "backend.h"
#include "base/dt.h"
#include "cpu_gemm_small.h"
#include "dt_math.h"
#include "half.h"

#include <cblas.h>
#include <malloc.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cpu_ctx {
    float *scratch;       /* per-thread attention scratch, nthreads * per */
    size_t scratch_floats; /* capacity of scratch, floats */
    int poison;            /* DT_POISON_ALLOC=1: alloc fills with NaN bytes */
    float *rope;           /* dt_rope_table(rope_T, rope_D, rope_theta) */
    int rope_T, rope_D;
    float rope_theta;
    int err;               /* sticky error reported by sync(), 0 if none */
    char errmsg[DT_ERR_LEN];
} cpu_ctx;

/* Records an error for the next sync() (the first one wins). */
static void cpu__fail(dt_backend *be, int code, const char *msg)
{
    cpu_ctx *c = be->ctx;
    if (c->err)
        return;
    c->err = code;
    snprintf(c->errmsg, sizeof c->errmsg, "cpu backend: %s", msg);
}

/* Counts (sign 1) or uncounts (-1) a buffer of the backend's own (attention
 * scratch, RoPE table) in live_bytes, as alloc/free do, so that peak_bytes
 * includes them. p may be NULL. */
static void cpu__count(dt_backend *be, void *p, int sign)
{
    if (!p)
        return;
    size_t n = malloc_usable_size(p);
    if (sign > 0) {
        be->live_bytes += n;
        if (be->live_bytes > be->peak_bytes)
            be->peak_bytes = be->live_bytes;
    } else {
        be->live_bytes -= n;
    }
}

/* Returns scratch of at least n floats for each of nt threads, or NULL after
 * recording DT_ENOMEM. Borrowed: owned by the context. */
static float *cpu__scratch(dt_backend *be, size_t per, int nt)
{
    cpu_ctx *c = be->ctx;
    size_t need = per * (size_t)nt;
    if (need > c->scratch_floats) {
        cpu__count(be, c->scratch, -1);
        free(c->scratch);
        c->scratch = NULL;
        c->scratch_floats = 0;
        if (posix_memalign((void **)&c->scratch, 64, need * sizeof(float))) {
            c->scratch = NULL;
            cpu__fail(be, DT_ENOMEM, "out of memory for attention scratch");
            return NULL;
        }
        c->scratch_floats = need;
        cpu__count(be, c->scratch, 1);
    }
    return c->scratch;
}

/* ---- memory --------------------------------------------------------------- */

/* Uninitialised, as the contract says. With DT_POISON_ALLOC=1 (the unit
 * tests) every byte is 0xFF, NaN as float and double, as the CUDA emulator
 * does: a read of memory nothing wrote shows up in the results. Off by
 * default: filling costs a pass over memory. */
static void *cpu_alloc(dt_backend *be, size_t bytes)
{
    cpu_ctx *c = be->ctx;
    void *p = NULL;
    size_t n = (bytes + 63) & ~(size_t)63;
    if (n == 0)
        n = 64;
    if (n < bytes || posix_memalign(&p, 64, n))
        return NULL;
    if (c->poison)
        memset(p, 0xff, n);
    be->live_bytes += malloc_usable_size(p);
    if (be->live_bytes > be->peak_bytes)
        be->peak_bytes = be->live_bytes;
    return p;
}

static void cpu_free(dt_backend *be, void *p)
{
    if (p)
        be->live_bytes -= malloc_usable_size(p);
    free(p);
}

static void cpu_memcpy(dt_backend *be, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        memcpy(dst, src, bytes);
}

static void cpu_memset0(dt_backend *be, void *p, size_t bytes)
{
    if (bytes)
        memset(p, 0, bytes);
}

static int cpu_sync(dt_backend *be, char *err)
{
    cpu_ctx *c = be->ctx;
    int code = c->err;
    if (code) {
        dt_errf(err, code, "%s", c->errmsg);
        c->err = 0;
        c->errmsg[0] = 0;
    }
    return code;
}

/* ---- GEMM ------------------------------------------------------------------- */

static void cpu_gemm(dt_backend *be, int ta, int tb, int M, int N, int K,
                     float alpha, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (M == 1 && K > 0) {
        /* one row (a decode step): y = op(B)·x as a matrix-vector product,
         * which streams B once; sgemm would pack it first */
        cblas_sgemv(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? N : K, tb ? K : N,
                    alpha, B, ldb, A, ta ? lda : 1, beta, C, 1);
        return;
    }
    /* a few rows against a weight (a batched decode step): no packing */
    if (!ta && tb && M <= DT_GEMM_SMALL_MAX_M &&
        dt_cpu_gemm_nt_small(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        return;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
                beta, C, ldc);
}

/* gemm_bf16w on the CPU: the oracle of the CUDA backend's bf16 path. Both
 * operands are rounded to bf16 into fp32 copies (A with dt_f32_to_bf16, the
 * rounding the CUDA conversion kernel does) and multiplied by sgemm. */
static void cpu_gemm_bf16w(dt_backend *be, int ta, int tw, int M, int N,
                           int K, float alpha, const float *A, int lda,
                           const uint16_t *W, int ldw, float beta, float *C,
                           int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    long arows = ta ? K : M, wrows = tw ? N : K;
    size_t na = (size_t)arows * lda, nw = (size_t)wrows * ldw;
    float *a = malloc(na * sizeof(float)), *w = malloc(nw * sizeof(float));
    if (!a || !w) {
        free(a);
        free(w);
        char msg[128];
        snprintf(msg, sizeof msg, "gemm_bf16w: out of memory for %zu bytes "
                 "of scratch", (na + nw) * sizeof(float));
        cpu__fail(be, DT_ENOMEM, msg);
        return;
    }
#pragma omp parallel for if (na > 65536)
    for (long i = 0; i < (long)na; i++)
        a[i] = dt_bf16_to_f32(dt_f32_to_bf16(A[i]));
#pragma omp parallel for if (nw > 65536)
    for (long i = 0; i < (long)nw; i++)
        w[i] = dt_bf16_to_f32(W[i]);
    cpu_gemm(be, ta, tw, M, N, K, alpha, a, lda, w, ldw, beta, C, ldc);
    free(a);
    free(w);
}

static void cpu_set_tf32(dt_backend *be, int tf32)
{
    (void)be;
    (void)tf32;
}

static void cpu_gemm_batched(dt_backend *be, int ta, int tb, int M, int N,
                             int K, float alpha, const float *A, int lda,
                             long sA, const float *B, int ldb, long sB,
                             float beta, float *C, int ldc, long sC, int batch)
{
    for (int i = 0; i < batch; i++)
        cpu_gemm(be, ta, tb, M, N, K, alpha, A + i * sA, lda, B + i * sB, ldb,
                 beta, C + i * sC, ldc);
}

/* ---- embedding ---------------------------------------------------------------- */

static void cpu_embedding_fwd(dt_backend *be, float *out, const int32_t *ids,
                              const float *wte, const float *wpe, int B, int T,
                              int C)
{
    long BT = (long)B * T;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < BT; r++) {
        const float *e = wte + (long)ids[r] * C;
        const float *p = wpe ? wpe + (r % T) * C : NULL;
        float *o = out + r * C;
        for (int c = 0; c < C; c++)
            o[c] = p ? e[c] + p[c] : e[c];
    }
}

/* embedding_fwd over a bf16 table (backend.h). */
static void cpu_embedding_fwd_bf16(dt_backend *be, float *out,
                                   const int32_t *ids, const uint16_t *wte,
                                   const float *wpe, int B, int T, int C)
{
    (void)be;
    long BT = (long)B * T;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < BT; r++) {
        const uint16_t *e = wte + (long)ids[r] * C;
        const float *p = wpe ? wpe + (r % T) * C : NULL;
        float *o = out + r * C;
        for (int c = 0; c < C; c++)
            o[c] = p ? dt_bf16_to_f32(e[c]) + p[c] : dt_bf16_to_f32(e[c]);
    }
}

/* Column block width for reductions over rows: each thread owns whole column
 * blocks and adds rows in order, so the result is deterministic. */
#define CPU_COLBLK 64

/* What cpu_colsum adds up, per row r and column c (as the CUDA backend's
 * k_colsum_part): dy (bias, LayerNorm db), dy * ((x - mean) * rstd)
 * (LayerNorm dw), dy * (x * rstd) (RMSNorm dw). */
enum { COLSUM_DY, COLSUM_LN_DW, COLSUM_RMS_DW };

/* out(C) += the column sums over N rows of the mode's term; dy and x are
 * (N, C), mean and rstd (N); x, mean and rstd may be NULL where the mode does
 * not read them. */
static void cpu_colsum(float *out, const float *dy, const float *x,
                       const float *mean, const float *rstd, int N, int C,
                       int mode)
{
    int nblk = (C + CPU_COLBLK - 1) / CPU_COLBLK;
#pragma omp parallel for schedule(static)
    for (int cb = 0; cb < nblk; cb++) {
        int c0 = cb * CPU_COLBLK;
        int c1 = c0 + CPU_COLBLK < C ? c0 + CPU_COLBLK : C;
        float acc[CPU_COLBLK] = {0};
        for (int r = 0; r < N; r++) {
            const float *d = dy + (long)r * C;
            if (mode == COLSUM_DY) {
                for (int c = c0; c < c1; c++)
                    acc[c - c0] += d[c];
                continue;
            }
            const float *xr = x + (long)r * C;
            float rs = rstd[r];
            if (mode == COLSUM_LN_DW) {
                float m = mean[r];
                for (int c = c0; c < c1; c++)
                    acc[c - c0] += d[c] * ((xr[c] - m) * rs);
            } else {
                for (int c = c0; c < c1; c++)
                    acc[c - c0] += d[c] * (xr[c] * rs);
            }
        }
        for (int c = c0; c < c1; c++)
            out[c] += acc[c - c0];
    }
}

static void cpu_embedding_bwd(dt_backend *be, float *dwte, float *dwpe,
                              const float *dout, const int32_t *ids, int B,
                              int T, int C)
{
    int nblk = (C + CPU_COLBLK - 1) / CPU_COLBLK;
#pragma omp parallel for schedule(static)
    for (int cb = 0; cb < nblk; cb++) {
        int c0 = cb * CPU_COLBLK;
        int c1 = c0 + CPU_COLBLK < C ? c0 + CPU_COLBLK : C;
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                long r = (long)b * T + t;
                const float *d = dout + r * C;
                if (dwte) {
                    float *w = dwte + (long)ids[r] * C;
                    for (int c = c0; c < c1; c++)
                        w[c] += d[c];
                }
                if (dwpe) {
                    float *w = dwpe + (long)t * C;
                    for (int c = c0; c < c1; c++)
                        w[c] += d[c];
                }
            }
        }
    }
}

/* ---- LayerNorm / RMSNorm ---------------------------------------------------- */

/* One row of LayerNorm: out(C) from x(C); *mean, *rstd saved. Shared by
 * layernorm_fwd and residual_norm_fwd so that the fused op is bit-identical
 * to the separate ones. */
static void cpu__layernorm_row(float *o, float *mean, float *rstd,
                               const float *x, const float *w, const float *b,
                               int C, float eps)
{
    double s = 0.0;
    for (int c = 0; c < C; c++)
        s += x[c];
    float m = (float)(s / C);
    double v = 0.0;
    for (int c = 0; c < C; c++) {
        double d = (double)x[c] - m;
        v += d * d;
    }
    float rs = (float)(1.0 / sqrt(v / C + eps)); /* biased variance */
    for (int c = 0; c < C; c++) {
        float n = (x[c] - m) * rs;
        o[c] = b ? n * w[c] + b[c] : n * w[c];
    }
    if (mean)
        *mean = m;
    if (rstd)
        *rstd = rs;
}

static void cpu_layernorm_fwd(dt_backend *be, float *out, float *mean,
                              float *rstd, const float *inp, const float *w,
                              const float *b, int N, int C, float eps)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++)
        cpu__layernorm_row(out + (long)r * C, mean ? mean + r : NULL,
                           rstd ? rstd + r : NULL, inp + (long)r * C, w, b, C,
                           eps);
}

static void cpu_layernorm_bwd(dt_backend *be, float *dinp, float *dw,
                              float *db, const float *dout, const float *inp,
                              const float *w, const float *mean,
                              const float *rstd, int N, int C)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        const float *x = inp + (long)r * C, *d = dout + (long)r * C;
        float m = mean[r], rs = rstd[r];
        double s1 = 0.0, s2 = 0.0; /* sum(dnorm), sum(dnorm * norm) */
        for (int c = 0; c < C; c++) {
            float n = (x[c] - m) * rs;
            float dn = d[c] * w[c];
            s1 += dn;
            s2 += (double)dn * n;
        }
        float m1 = (float)(s1 / C), m2 = (float)(s2 / C);
        float *di = dinp + (long)r * C;
        for (int c = 0; c < C; c++) {
            float n = (x[c] - m) * rs;
            float dn = d[c] * w[c];
            di[c] += rs * (dn - m1 - n * m2);
        }
    }
    if (dw)
        cpu_colsum(dw, dout, inp, mean, rstd, N, C, COLSUM_LN_DW);
    if (db)
        cpu_colsum(db, dout, NULL, NULL, NULL, N, C, COLSUM_DY);
}

/* One row of RMSNorm (see cpu__layernorm_row). */
static void cpu__rmsnorm_row(float *o, float *rstd, const float *x,
                             const float *w, int C, float eps)
{
    double s = 0.0;
    for (int c = 0; c < C; c++)
        s += (double)x[c] * x[c];
    float rs = (float)(1.0 / sqrt(s / C + eps));
    for (int c = 0; c < C; c++)
        o[c] = w[c] * (x[c] * rs); /* HF: weight * (x * rsqrt(..)) */
    if (rstd)
        *rstd = rs;
}

static void cpu_rmsnorm_fwd(dt_backend *be, float *out, float *rstd,
                            const float *inp, const float *w, int N, int C,
                            float eps)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++)
        cpu__rmsnorm_row(out + (long)r * C, rstd ? rstd + r : NULL,
                         inp + (long)r * C, w, C, eps);
}

static void cpu_residual_norm_fwd(dt_backend *be, float *res, float *copy,
                                  float *out, float *mean, float *rstd,
                                  const float *x, const float *y,
                                  const float *w, const float *b, int N, int C,
                                  float eps, int rms)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        float *o = res + (long)r * C;
        const float *xr = x + (long)r * C, *yr = y + (long)r * C;
        for (int c = 0; c < C; c++)
            o[c] = xr[c] + yr[c];
        if (copy)
            memcpy(copy + (long)r * C, o, (size_t)C * sizeof(float));
        if (rms)
            cpu__rmsnorm_row(out + (long)r * C, rstd ? rstd + r : NULL, o, w,
                             C, eps);
        else
            cpu__layernorm_row(out + (long)r * C, mean ? mean + r : NULL,
                               rstd ? rstd + r : NULL, o, w, b, C, eps);
    }
}

static void cpu_rmsnorm_bwd(dt_backend *be, float *dinp, float *dw,
                            const float *dout, const float *inp,
                            const float *w, const float *rstd, int N, int C)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        const float *x = inp + (long)r * C, *d = dout + (long)r * C;
        float rs = rstd[r];
        double s = 0.0; /* sum(dnorm * norm) */
        for (int c = 0; c < C; c++)
            s += (double)(d[c] * w[c]) * (x[c] * rs);
        float m2 = (float)(s / C);
        float *di = dinp + (long)r * C;
        for (int c = 0; c < C; c++) {
            float n = x[c] * rs;
            di[c] += rs * (d[c] * w[c] - n * m2);
        }
    }
    if (dw)
        cpu_colsum(dw, dout, inp, NULL, rstd, N, C, COLSUM_RMS_DW);
}

/* ---- activations ---------------------------------------------------------- */

static void cpu_gelu_fwd(dt_backend *be, float *out, const float *inp, long n)
{
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++)
        out[i] = dt_gelu_tanh(inp[i]);
}

static void cpu_gelu_bwd(dt_backend *be, float *dinp, const float *inp,
                         const float *dout, long n)
{
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++)
        dinp[i] += dout[i] * dt_gelu_tanh_grad(inp[i]);
}

static void cpu_swiglu_fwd(dt_backend *be, float *out, const float *gate,
                           const float *up, long n)
{
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++)
        out[i] = dt_swiglu(gate[i], up[i]);
}

static void cpu_swiglu_bwd(dt_backend *be, float *dgate, float *dup,
                           const float *dout, const float *gate,
                           const float *up, long n)
{
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        float dg, du;
        dt_swiglu_grad(dout[i], gate[i], up[i], &dg, &du);
        dgate[i] = dg;
        dup[i] = du;
    }
}

/* The RoPE table for T positions of (D, theta), or NULL after recording
 * DT_ENOMEM. Borrowed: owned by the context, recomputed only when D or
 * theta change or T grows. */
static const float *cpu__rope_table(dt_backend *be, int T, int D, float theta)
{
    cpu_ctx *c = be->ctx;
    if (c->rope && c->rope_D == D && c->rope_theta == theta && c->rope_T >= T)
        return c->rope;
    cpu__count(be, c->rope, -1);
    free(c->rope);
    c->rope = malloc((size_t)T * (D / 2) * 2 * sizeof(float) + 1);
    c->rope_T = 0;
    if (!c->rope) {
        cpu__fail(be, DT_ENOMEM, "out of memory for the RoPE table");
        return NULL;
    }
    cpu__count(be, c->rope, 1);
    dt_rope_table(c->rope, T, D, theta);
    c->rope_T = T;
    c->rope_D = D;
    c->rope_theta = theta;
    return c->rope;
}

/* One (position, pair) cos/sin from the table, applied to every head. */
static void cpu_rope(dt_backend *be, float *x, int B, int T, int H, int D,
                     float theta, int inverse)
{
    const float *cs = cpu__rope_table(be, T, D, theta);
    if (!cs)
        return;
    long BT = (long)B * T;
    int half = D / 2;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < BT; r++) {
        int t = (int)(r % T);
        float *row = x + r * H * D;
        const float *ct = cs + 2 * (size_t)t * half;
        for (int i = 0; i < half; i++) {
            float c = ct[2 * i], s = ct[2 * i + 1];
            for (int h = 0; h < H; h++) {
                float *v = row + (long)h * D;
                dt_rope_apply(&v[i], &v[i + half], c, s, inverse);
            }
        }
    }
}

/* rope at the positions pos(B*T) (packing): pos[r] < T, so the table of
 * T positions covers them. */
static void cpu_rope_pos(dt_backend *be, float *x, const int32_t *pos, int B,
                         int T, int H, int D, float theta, int inverse)
{
    const float *cs = cpu__rope_table(be, T, D, theta);
    if (!cs)
        return;
    long BT = (long)B * T;
    int half = D / 2;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < BT; r++) {
        float *row = x + r * H * D;
        const float *ct = cs + 2 * (size_t)pos[r] * half;
        for (int i = 0; i < half; i++) {
            float c = ct[2 * i], s = ct[2 * i + 1];
            for (int h = 0; h < H; h++) {
                float *v = row + (long)h * D;
                dt_rope_apply(&v[i], &v[i + half], c, s, inverse);
            }
        }
    }
}

static void cpu_rope_at(dt_backend *be, float *x, int T, int H, int D,
                        float theta, int pos0)
{
    /* the table grows in steps of 256 positions, not one per token */
    const float *cs = cpu__rope_table(be, (pos0 + T + 255) / 256 * 256, D, theta);
    if (!cs)
        return;
    int half = D / 2;
    for (long r = 0; r < T; r++) {
        float *row = x + r * H * D;
        const float *ct = cs + 2 * (size_t)(pos0 + r) * half;
        for (int i = 0; i < half; i++) {
            float c = ct[2 * i], s = ct[2 * i + 1];
            for (int h = 0; h < H; h++) {
                float *v = row + (long)h * D;
                dt_rope_apply(&v[i], &v[i + half], c, s, 0);
            }
        }
    }
}

/* Bias then GELU in one pass: h += bias, out = gelu(h). */
static void cpu_bias_gelu_fwd(dt_backend *be, float *out, float *h,
                              const float *bias, int N, int C)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        float *hr = h + (long)r * C, *o = out + (long)r * C;
        for (int c = 0; c < C; c++) {
            hr[c] += bias[c];
            o[c] = dt_gelu_tanh(hr[c]);
        }
    }
}

/* ---- row selection ------------------------------------------------------------ */

static void cpu_gather_rows(dt_backend *be, float *dst, const float *src,
                            const int32_t *idx, int n, int C)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        memcpy(dst + (long)i * C, src + (long)idx[i] * C,
               (size_t)C * sizeof(float));
}

static void cpu_scatter_rows(dt_backend *be, float *dst, const float *src,
                             const int32_t *idx, int n, int C)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        memcpy(dst + (long)idx[i] * C, src + (long)i * C,
               (size_t)C * sizeof(float));
}

/* ---- bias / BLAS-1 ----------------------------------------------------------- */

static void cpu_add_bias(dt_backend *be, float *y, const float *bias, int N,
                         int C)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        float *o = y + (long)r * C;
        for (int c = 0; c < C; c++)
            o[c] += bias[c];
    }
}

static void cpu_bias_bwd(dt_backend *be, float *dbias, const float *dy, int N,
                         int C)
{
    cpu_colsum(dbias, dy, NULL, NULL, NULL, N, C, COLSUM_DY);
}

static void cpu_axpy(dt_backend *be, long n, float a, const float *x, float *y)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void cpu_scale(dt_backend *be, long n, float a, float *x)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++)
        x[i] *= a;
}

static void cpu_copy2d(dt_backend *be, float *dst, int ldd, const float *src,
                       int lds, int rows, int cols, float a)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        float *d = dst + (long)r * ldd;
        const float *s = src + (long)r * lds;
        for (int c = 0; c < cols; c++)
            d[c] = a * s[c];
    }
}

/* ---- attention ------------------------------------------------------------------ */

/* Query rows are processed in blocks of up to ATT_BLK: the block's scores
 * against keys 0..i1-1 (the causal prefix) are one sgemm, so the masked upper
 * triangle is mostly skipped and scratch stays ATT_BLK x T per thread. */
#define ATT_BLK 64

/* Attention dropout: p = 0 is none. */
typedef struct att_drop {
    float p, scale;
    uint32_t thr;
    uint64_t key;
} att_drop;

static att_drop att__drop(float p, uint64_t key)
{
    att_drop d = {p > 0.0f ? p : 0.0f, 1.0f, 0, key};
    if (d.p > 0.0f) {
        d.scale = 1.0f / (1.0f - d.p);
        d.thr = dt_drop_thresh(d.p);
    }
    return d;
}

/* One (b, h) of the forward pass. Q rows at stride NH*D, K/V rows at NKV*D. */
static void att__fwd_head(float *o, float *lse, const float *q, const float *k,
                          const float *v, int T, int ldq, int ldk, int D,
                          float scale, float *S, const att_drop *dr, long bh,
                          const int32_t *pos)
{
    /* pos(T) or NULL: query i sees keys lo = i - pos[i] .. i (packing) */
    for (int i0 = 0; i0 < T; i0 += ATT_BLK) {
        int nb = T - i0 < ATT_BLK ? T - i0 : ATT_BLK;
        int nk = i0 + nb; /* keys 0..nk-1 */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, nk, D, scale,
                    q + (long)i0 * ldq, ldq, k, ldk, 0.0f, S, nk);
        for (int r = 0; r < nb; r++) {
            int i = i0 + r, lo = pos ? i - pos[i] : 0;
            float *s = S + (long)r * nk;
            float mx = -INFINITY;
            for (int j = lo; j <= i; j++)
                mx = s[j] > mx ? s[j] : mx;
            double sum = 0.0;
            for (int j = lo; j <= i; j++) {
                float e = dt_expf(s[j] - mx);
                s[j] = e;
                sum += e;
            }
            float inv = (float)(1.0 / sum);
            for (int j = lo; j <= i; j++)
                s[j] *= inv;
            if (dr->p > 0.0f) {
                uint64_t base = ((uint64_t)bh * T + i) * T;
                for (int j = lo; j <= i; j++)
                    s[j] = dt_dropout(s[j], dr->key, base + j, dr->thr, dr->scale);
            }
            for (int j = 0; j < lo; j++)
                s[j] = 0.0f;
            for (int j = i + 1; j < nk; j++)
                s[j] = 0.0f;
            lse[i] = mx + (float)log(sum);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, D, nk, 1.0f,
                    S, nk, v, ldk, 0.0f, o + (long)i0 * ldq, ldq);
    }
}

static void cpu_attention_fwd_seg(dt_backend *be, float *out, float *lse,
                                  const float *q, const float *k,
                                  const float *v, const int32_t *pos, int B,
                                  int T, int NH, int NKV, int D, float p,
                                  uint64_t key)
{
    att_drop dr = att__drop(p, key);
    int nt = omp_get_max_threads();
    int blk = T < ATT_BLK ? T : ATT_BLK;
    size_t per = (size_t)blk * T;
    float *scr = cpu__scratch(be, per, nt);
    if (!scr)
        return;
    float scale = 1.0f / sqrtf((float)D);
    int grp = NH / NKV;
    int ldq = NH * D, ldk = NKV * D;
    int nbh = B * NH;
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < nbh; bh++) {
        int b = bh / NH, h = bh % NH, kh = h / grp;
        float *S = scr + per * (size_t)omp_get_thread_num();
        long qoff = (long)b * T * ldq + (long)h * D;
        long koff = (long)b * T * ldk + (long)kh * D;
        att__fwd_head(out + qoff, lse + (long)bh * T, q + qoff, k + koff,
                      v + koff, T, ldq, ldk, D, scale, S, &dr, bh,
                      pos ? pos + (long)b * T : NULL);
    }
}

static void cpu_attention_fwd_drop(dt_backend *be, float *out, float *lse,
                                   const float *q, const float *k,
                                   const float *v, int B, int T, int NH,
                                   int NKV, int D, float p, uint64_t key)
{
    cpu_attention_fwd_seg(be, out, lse, q, k, v, NULL, B, T, NH, NKV, D, p,
                          key);
}

static void cpu_attention_fwd(dt_backend *be, float *out, float *lse,
                              const float *q, const float *k, const float *v,
                              int B, int T, int NH, int NKV, int D)
{
    cpu_attention_fwd_drop(be, out, lse, q, k, v, B, T, NH, NKV, D, 0.0f, 0);
}

/* One (query row, head) per iteration: scores over the visible keys,
 * softmax with the row maximum, then the weighted sum of values. */
/* One query row qi (head h's D values) against keys and values 0..n-1 of
 * the cache k, v (rows ldk apart, head g at g·D): o = softmax(qi·kᵀ·scale)·v.
 * S: n floats of scratch. */
static void att__decode_row(float *o, const float *qi, const float *k,
                            const float *v, int n, long ldk, int g, int D,
                            float scale, float *S)
{
    float mx = -INFINITY;
    int j = 0;
    /* 8 keys at a time: 8 independent sums (each over d in order, so the
     * same floats as one key at a time) instead of one dependent chain */
    for (; j + 8 <= n; j += 8) {
        const float *kj = k + j * ldk + (long)g * D;
        float s[8] = {0};
        for (int d = 0; d < D; d++)
            for (int u = 0; u < 8; u++)
                s[u] += qi[d] * kj[u * ldk + d];
        for (int u = 0; u < 8; u++)
            S[j + u] = s[u] * scale;
    }
    for (; j < n; j++) {
        const float *kj = k + j * ldk + (long)g * D;
        float s = 0.0f;
        for (int d = 0; d < D; d++)
            s += qi[d] * kj[d];
        S[j] = s * scale;
    }
    for (j = 0; j < n; j++)
        if (S[j] > mx)
            mx = S[j];
    float sum = 0.0f;
    for (int j = 0; j < n; j++) {
        S[j] = expf(S[j] - mx);
        sum += S[j];
    }
    memset(o, 0, (size_t)D * sizeof(float));
    for (int j = 0; j < n; j++) {
        const float *vj = v + j * ldk + (long)g * D;
        float p = S[j] / sum;
        for (int d = 0; d < D; d++)
            o[d] += p * vj[d];
    }
}

static void cpu_attention_decode(dt_backend *be, float *out, const float *q,
                                 const float *k, const float *v, int tq,
                                 int tk, int NH, int NKV, int D)
{
    (void)be;
    int grp = NH / NKV;
    float scale = 1.0f / sqrtf((float)D);
    long ldq = (long)NH * D, ldk = (long)NKV * D;
#pragma omp parallel
    {
        float *S = malloc((size_t)tk * sizeof(float) + 1);
#pragma omp for schedule(static)
        for (long ih = 0; ih < (long)tq * NH; ih++) {
            int i = (int)(ih / NH), h = (int)(ih % NH);
            if (S)
                att__decode_row(out + i * ldq + (long)h * D, q + i * ldq + (long)h * D,
                                k, v, tk - tq + i + 1, ldk, h / grp, D, scale, S);
        }
        if (!S)
#pragma omp critical(dt_cpu_fail)
            cpu__fail(be, DT_ENOMEM, "attention_decode: out of memory for scores");
        free(S);
    }
}

static void cpu_attention_decode_batch(dt_backend *be, float *out, const float *q,
                                       const float *const *k, const float *const *v,
                                       const int *tk, int n, int NH, int NKV, int D)
{
    int grp = NH / NKV, tmax = 1;
    float scale = 1.0f / sqrtf((float)D);
    long ld = (long)NH * D, ldk = (long)NKV * D;
    for (int i = 0; i < n; i++)
        if (tk[i] > tmax)
            tmax = tk[i];
#pragma omp parallel
    {
        float *S = malloc((size_t)tmax * sizeof(float));
#pragma omp for schedule(static)
        for (long ih = 0; ih < (long)n * NH; ih++) {
            int i = (int)(ih / NH), h = (int)(ih % NH);
            if (S)
                att__decode_row(out + i * ld + (long)h * D, q + i * ld + (long)h * D,
                                k[i], v[i], tk[i], ldk, h / grp, D, scale, S);
        }
        if (!S)
#pragma omp critical(dt_cpu_fail)
            cpu__fail(be, DT_ENOMEM, "attention_decode: out of memory for scores");
        free(S);
    }
}

/* Backward of one (b, kv head): loops over its query heads in order, so dk
 * and dv (this kv head's rows) are accumulated by one thread in a fixed
 * order. S and dP are blk x T scratch. */
static void att__bwd_kvhead(float *dq, float *dk, float *dv, const float *dout,
                            const float *out, const float *lse, const float *q,
                            const float *k, const float *v, int T, int grp,
                            int ldq, int ldk, int D, float scale, int blk,
                            float *S, float *dP, const att_drop *dr, long bh0,
                            const int32_t *pos)
{
    /* pos(T) or NULL: query i sees keys i - pos[i] .. i (packing) */
    for (int t = 0; t < T; t++) {
        memset(dk + (long)t * ldk, 0, (size_t)D * sizeof(float));
        memset(dv + (long)t * ldk, 0, (size_t)D * sizeof(float));
    }
    for (int g = 0; g < grp; g++) {
        long ho = (long)g * D; /* query head offset within the group */
        const float *qh = q + ho, *oh = out + ho, *doh = dout + ho;
        const float *lh = lse + (long)g * T;
        float *dqh = dq + ho;
        for (int i0 = 0; i0 < T; i0 += blk) {
            int nb = T - i0 < blk ? T - i0 : blk;
            int nk = i0 + nb;
            const float *qb = qh + (long)i0 * ldq, *dob = doh + (long)i0 * ldq;
            /* P = exp(scale * Q Kᵀ - lse), masked above the diagonal. */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, nk, D,
                        scale, qb, ldq, k, ldk, 0.0f, S, nk);
            /* dP = dO Vᵀ */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, nk, D,
                        1.0f, dob, ldq, v, ldk, 0.0f, dP, nk);
            for (int r = 0; r < nb; r++) {
                int i = i0 + r, lo = pos ? i - pos[i] : 0;
                float *s = S + (long)r * nk, *dp = dP + (long)r * nk;
                const float *orow = oh + (long)i * ldq;
                const float *drow = doh + (long)i * ldq;
                float di = 0.0f; /* rowsum(dO * O) */
                for (int d = 0; d < D; d++)
                    di += drow[d] * orow[d];
                float l = lh[i];
                if (dr->p > 0.0f) {
                    /* out = (P∘Z) V, Z = mask/(1-p): dV takes P∘Z, and
                     * dS = P ∘ (dP∘Z - rowsum(dO∘O)). */
                    uint64_t base = ((uint64_t)(bh0 + g) * T + i) * T;
                    for (int j = lo; j <= i; j++) {
                        float p = dt_expf(s[j] - l);
                        float z = dt_dropout(1.0f, dr->key, base + j, dr->thr,
                                             dr->scale);
                        s[j] = p * z;
                        dp[j] = p * (dp[j] * z - di);
                    }
                } else {
                    for (int j = lo; j <= i; j++) {
                        float p = dt_expf(s[j] - l);
                        s[j] = p;
                        dp[j] = p * (dp[j] - di); /* dS */
                    }
                }
                for (int j = 0; j < lo; j++)
                    s[j] = dp[j] = 0.0f;
                for (int j = i + 1; j < nk; j++)
                    s[j] = dp[j] = 0.0f;
            }
            /* dV[0:nk] += Pᵀ dO */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, nb,
                        1.0f, S, nk, dob, ldq, 1.0f, dv, ldk);
            /* dQ = scale * dS K (overwrites: this head's rows only) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, D, nk,
                        scale, dP, nk, k, ldk, 0.0f, dqh + (long)i0 * ldq, ldq);
            /* dK[0:nk] += scale * dSᵀ Q */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, nb,
                        scale, dP, nk, qb, ldq, 1.0f, dk, ldk);
        }
    }
}

static void cpu_attention_bwd_seg(dt_backend *be, float *dq, float *dk,
                                  float *dv, const float *dout,
                                  const float *out, const float *lse,
                                  const float *q, const float *k,
                                  const float *v, const int32_t *pos, int B,
                                  int T, int NH, int NKV, int D, float p,
                                  uint64_t key)
{
    att_drop dr = att__drop(p, key);
    int nt = omp_get_max_threads();
    int nkv = B * NKV;
    /* With fewer kv heads than threads, run them one after another and let
     * OpenBLAS thread each (bigger blocks); otherwise one kv head per thread
     * with single-threaded sgemm. Both are deterministic for a thread count. */
    int outer = nkv >= nt || nt == 1;
    int blk = outer ? ATT_BLK : 256;
    if (blk > T)
        blk = T;
    size_t per = 2 * (size_t)blk * T;
    float *scr = cpu__scratch(be, per, outer ? nt : 1);
    if (!scr)
        return;
    float scale = 1.0f / sqrtf((float)D);
    int grp = NH / NKV;
    int ldq = NH * D, ldk = NKV * D;
#pragma omp parallel for schedule(static) if (outer)
    for (int bk = 0; bk < nkv; bk++) {
        int b = bk / NKV, kh = bk % NKV;
        float *S = scr + per * (size_t)(outer ? omp_get_thread_num() : 0);
        long qoff = (long)b * T * ldq + (long)kh * grp * D;
        long koff = (long)b * T * ldk + (long)kh * D;
        const float *l = lse + ((long)b * NH + (long)kh * grp) * T;
        att__bwd_kvhead(dq + qoff, dk + koff, dv + koff, dout + qoff,
                        out + qoff, l, q + qoff, k + koff, v + koff, T, grp,
                        ldq, ldk, D, scale, blk, S, S + (size_t)blk * T, &dr,
                        (long)b * NH + (long)kh * grp,
                        pos ? pos + (long)b * T : NULL);
    }
}

static void cpu_attention_bwd_drop(dt_backend *be, float *dq, float *dk,
                                   float *dv, const float *dout,
                                   const float *out, const float *lse,
                                   const float *q, const float *k,
                                   const float *v, int B, int T, int NH,
                                   int NKV, int D, float p, uint64_t key)
{
    cpu_attention_bwd_seg(be, dq, dk, dv, dout, out, lse, q, k, v, NULL, B, T,
                          NH, NKV, D, p, key);
}

static void cpu_attention_bwd(dt_backend *be, float *dq, float *dk, float *dv,
                              const float *dout, const float *out,
                              const float *lse, const float *q, const float *k,
                              const float *v, int B, int T, int NH, int NKV,
                              int D)
{
    cpu_attention_bwd_drop(be, dq, dk, dv, dout, out, lse, q, k, v, B, T, NH,
                           NKV, D, 0.0f, 0);
}

static void cpu_dropout(dt_backend *be, float *y, const float *x, long n,
                        float p, uint64_t key, int acc)
{
    (void)be;
    if (!(p > 0.0f)) {
        if (acc)
            cblas_saxpy((int)n, 1.0f, x, 1, y, 1);
        else if (y != x)
            memcpy(y, x, (size_t)n * sizeof(float));
        return;
    }
    uint32_t thr = dt_drop_thresh(p);
    float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        float d = dt_dropout(x[i], key, (uint64_t)i, thr, scale);
        y[i] = acc ? y[i] + d : d;
    }
}

/* ---- loss / reductions ---------------------------------------------------------- */

static void cpu_cross_entropy_smooth(dt_backend *be, float *logits,
                                     float *losses, const int32_t *targets,
                                     int N, int V, float grad_scale, float eps)
{
    (void)be;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        float *x = logits + (long)r * V;
        int32_t tg = targets[r];
        if (tg < 0 || tg >= V) {
            memset(x, 0, (size_t)V * sizeof(float));
            losses[r] = 0.0f;
            continue;
        }
        float mx = -INFINITY;
        double sx = 0.0;
        for (int j = 0; j < V; j++) {
            mx = x[j] > mx ? x[j] : mx;
            sx += x[j];
        }
        double sum = 0.0;
        for (int j = 0; j < V; j++)
            sum += dt_expf(x[j] - mx);
        double lse = mx + log(sum);
        losses[r] = dt_ce_smooth_loss(lse, x[tg], sx / V, eps);
        float inv = (float)(1.0 / sum), u = eps / (float)V;
        for (int j = 0; j < V; j++)
            x[j] = (dt_expf(x[j] - mx) * inv - u) * grad_scale;
        x[tg] -= (1.0f - eps) * grad_scale;
    }
}

static void cpu_cross_entropy(dt_backend *be, float *logits, float *losses,
                              const int32_t *targets, int N, int V,
                              float grad_scale)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        float *x = logits + (long)r * V;
        int32_t tg = targets[r];
        /* Masked (-100) rows, and out-of-range targets the caller should have
         * rejected, get zero loss and zero gradient: never read x[tg]. */
        if (tg < 0 || tg >= V) {
            memset(x, 0, (size_t)V * sizeof(float));
            losses[r] = 0.0f;
            continue;
        }
        float mx = -INFINITY;
        for (int j = 0; j < V; j++)
            mx = x[j] > mx ? x[j] : mx;
        double sum = 0.0;
        for (int j = 0; j < V; j++)
            sum += dt_expf(x[j] - mx);
        double lse = mx + log(sum);
        losses[r] = (float)(lse - x[tg]);
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < V; j++)
            x[j] = dt_expf(x[j] - mx) * inv * grad_scale;
        x[tg] -= grad_scale;
    }
}

/* Fixed chunking that depends only on n (at most SUM_CHUNKS chunks), each
 * chunk summed in double with 8 fixed lanes, chunks added in order: the
 * result does not depend on the thread count. */
#define SUM_CHUNKS 1024
#define SUM_MINCHUNK 16384

static double cpu__reduce(const float *x, long n, int squares)
{
    if (n <= 0)
        return 0.0;
    long chunk = (n + SUM_CHUNKS - 1) / SUM_CHUNKS;
    if (chunk < SUM_MINCHUNK)
        chunk = SUM_MINCHUNK;
    long nch = (n + chunk - 1) / chunk;
    double part[SUM_CHUNKS];
#pragma omp parallel for schedule(static)
    for (long ci = 0; ci < nch; ci++) {
        long a = ci * chunk, e = a + chunk < n ? a + chunk : n;
        double lane[8] = {0};
        long i = a;
        for (; i + 8 <= e; i += 8)
            for (int l = 0; l < 8; l++) {
                double y = x[i + l];
                lane[l] += squares ? y * y : y;
            }
        for (; i < e; i++) {
            double y = x[i];
            lane[0] += squares ? y * y : y;
        }
        part[ci] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                   ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    }
    double s = 0.0;
    for (long ci = 0; ci < nch; ci++)
        s += part[ci];
    return s;
}

static double cpu_sum(dt_backend *be, const float *x, long n)
{
    return cpu__reduce(x, n, 0);
}

static double cpu_sumsq(dt_backend *be, const float *x, long n)
{
    return cpu__reduce(x, n, 1);
}

/* ---- optimizer ------------------------------------------------------------------- */

static void cpu_adamw(dt_backend *be, float *p, const float *g, float *m,
                      float *v, long n, float lr, float b1, float b2,
                      float eps, float wd, float bc1, float bc2, float gscale)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++)
        dt_adamw_step(&p[i], g[i], &m[i], &v[i], lr, b1, b2, eps, wd, bc1, bc2,
                      gscale);
}

/* The same order as per-tensor sumsq() calls added on the host. */
static void cpu_sumsq_multi(dt_backend *be, double *out, const dt_opt_tensor *t,
                            int count)
{
    double ss = 0.0;
    for (int i = 0; i < count; i++)
        ss += cpu__reduce(t[i].g, t[i].n, 1);
    *out = ss;
}

static void cpu_adamw_multi(dt_backend *be, const dt_opt_tensor *t, int count,
                            float lr, float b1, float b2, float eps, float wd,
                            float bc1, float bc2, const double *sumsq,
                            float max_norm)
{
    float gscale;
    if (!dt_clip_scale(*sumsq, max_norm, &gscale))
        return;
    for (int i = 0; i < count; i++)
        cpu_adamw(be, t[i].p, t[i].g, t[i].m, t[i].v, t[i].n, lr, b1, b2, eps,
                  wd, bc1, bc2, gscale);
}

/* ---- the table --------------------------------------------------------------------- */

static void cpu_destroy(dt_backend *be)
{
    if (!be)
        return;
    cpu_ctx *c = be->ctx;
    if (c) {
        free(c->scratch);
        free(c->rope);
    }
    free(c);
    free(be);
}

static const dt_backend_i cpu_iface = {
    /* .name          = */ "cpu",
    /* .alloc         = */ cpu_alloc,
    /* .free          = */ cpu_free,
    /* .upload        = */ cpu_memcpy,
    /* .download      = */ cpu_memcpy,
    /* .copy          = */ cpu_memcpy,
    /* .memset0       = */ cpu_memset0,
    /* .sync          = */ cpu_sync,
    /* .gemm          = */ cpu_gemm,
    /* .gemm_batched  = */ cpu_gemm_batched,
    /* .embedding_fwd = */ cpu_embedding_fwd,
    /* .embedding_bwd = */ cpu_embedding_bwd,
    /* .layernorm_fwd = */ cpu_layernorm_fwd,
    /* .layernorm_bwd = */ cpu_layernorm_bwd,
    /* .rmsnorm_fwd   = */ cpu_rmsnorm_fwd,
    /* .rmsnorm_bwd   = */ cpu_rmsnorm_bwd,
    /* .gelu_fwd      = */ cpu_gelu_fwd,
    /* .gelu_bwd      = */ cpu_gelu_bwd,
    /* .swiglu_fwd    = */ cpu_swiglu_fwd,
    /* .swiglu_bwd    = */ cpu_swiglu_bwd,
    /* .rope          = */ cpu_rope,
    /* .add_bias      = */ cpu_add_bias,
    /* .bias_bwd      = */ cpu_bias_bwd,
    /* .axpy          = */ cpu_axpy,
    /* .scale         = */ cpu_scale,
    /* .copy2d        = */ cpu_copy2d,
    /* .attention_fwd = */ cpu_attention_fwd,
    /* .attention_bwd = */ cpu_attention_bwd,
    /* .cross_entropy = */ cpu_cross_entropy,
    /* .sum           = */ cpu_sum,
    /* .sumsq         = */ cpu_sumsq,
    /* .adamw         = */ cpu_adamw,
    /* .sumsq_multi   = */ cpu_sumsq_multi,
    /* .adamw_multi   = */ cpu_adamw_multi,
    /* .destroy       = */ cpu_destroy,
    /* .dropout       = */ cpu_dropout,
    /* .attention_fwd_drop = */ cpu_attention_fwd_drop,
    /* .attention_bwd_drop = */ cpu_attention_bwd_drop,
    /* .cross_entropy_smooth = */ cpu_cross_entropy_smooth,
    /* .rope_at       = */ cpu_rope_at,
    /* .attention_decode = */ cpu_attention_decode,
    /* .gather_rows   = */ cpu_gather_rows,
    /* .scatter_rows  = */ cpu_scatter_rows,
    /* .bias_gelu_fwd = */ cpu_bias_gelu_fwd,
    /* .residual_norm_fwd = */ cpu_residual_norm_fwd,
    /* .gemm_bf16w    = */ cpu_gemm_bf16w,
    /* .set_tf32      = */ cpu_set_tf32,
    /* .rope_pos      = */ cpu_rope_pos,
    /* .attention_fwd_seg = */ cpu_attention_fwd_seg,
    /* .attention_bwd_seg = */ cpu_attention_bwd_seg,
    /* .attention_decode_batch = */ cpu_attention_decode_batch,
    /* .embedding_fwd_bf16 = */ cpu_embedding_fwd_bf16,
};

dt_backend *dt_backend_cpu_new(int threads, char *err)
{
    dt_backend *be = calloc(1, sizeof *be);
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        dt_errf(err, DT_ENOMEM, "cpu backend: out of memory");
        return NULL;
    }
    if (threads > 0) {
        omp_set_num_threads(threads);
        openblas_set_num_threads(threads);
    }
    const char *poison = getenv("DT_POISON_ALLOC");
    c->poison = poison && strcmp(poison, "1") == 0;
    be->i = cpu_iface;
    be->ctx = c;
    be->threads = threads > 0 ? threads : omp_get_max_threads();
    return be;
}
