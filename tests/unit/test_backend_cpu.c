/* test_backend_cpu.c: every op of the CPU backend against a naive
 * double-precision reference written here.
 *
 * Tolerances:
 * - fp32 forward ops: normalized error |out - ref| / |ref| < 1e-5 (2-norms),
 *   where ref is computed in double from the same fp32 inputs.
 * - backward ops: against central finite differences of the double
 *   reference forward (h = 1e-4 in double, so the FD error is ~1e-8) or an
 *   analytical double reference, normalized error < 1e-4 (fp32 rounding of
 *   the backend's gradient dominates; the brief's budget is ~1e-3).
 * - determinism: bitwise equality (memcmp). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/backend.h"
#include "base/dt.h"
#include "gpu/dt_math.h"

#define TOL_FWD 1e-5
#define TOL_BWD 1e-4
#define FD_H 1e-4

static dt_backend *be;

/* ---- helpers ----------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* Uniform in [-1, 1). */
static float frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *randv(long n, float scale)
{
    float *x = malloc((size_t)n * sizeof *x);
    assert_non_null(x);
    for (long i = 0; i < n; i++)
        x[i] = frand() * scale;
    return x;
}

static double *dalloc(long n)
{
    double *x = calloc((size_t)n, sizeof *x);
    assert_non_null(x);
    return x;
}

static float *falloc(long n)
{
    float *x = calloc((size_t)n, sizeof *x);
    assert_non_null(x);
    return x;
}

/* |out - ref| / |ref| in 2-norm (absolute when ref is 0). */
static double nerr(const float *out, const double *ref, long n)
{
    double e = 0.0, r = 0.0;
    for (long i = 0; i < n; i++) {
        double d = out[i] - ref[i];
        e += d * d;
        r += ref[i] * ref[i];
    }
    return r > 0 ? sqrt(e / r) : sqrt(e);
}

#define assert_close(out, ref, n, tol)                                         \
    do {                                                                       \
        double e_ = nerr((out), (ref), (n));                                   \
        if (!(e_ < (tol)))                                                     \
            fail_msg("%s: normalized error %.3g >= %.3g", #out, e_,            \
                     (double)(tol));                                           \
    } while (0)

/* A double forward used by finite differences: returns sum(out * G). */
typedef double (*fd_fn)(void *ctx);

/* Central finite differences of f with respect to every entry of x (a double
 * array f reads through ctx). */
static void fd_grad(fd_fn f, void *ctx, double *x, long n, double *grad)
{
    for (long i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_H;
        double fp = f(ctx);
        x[i] = x0 - FD_H;
        double fm = f(ctx);
        x[i] = x0;
        grad[i] = (fp - fm) / (2 * FD_H);
    }
}

static double *todouble(const float *x, long n)
{
    double *d = dalloc(n);
    for (long i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

/* ---- memory -------------------------------------------------------------------- */

/* alloc() returns uninitialised memory; with DT_POISON_ALLOC=1 (as
 * scripts/run-tests sets) every byte is 0xFF, NaN as float and double, so a
 * read of memory nothing wrote shows up in results. */
static void test_alloc_is_aligned_and_poisoned_under_DT_POISON_ALLOC(void **state)
{
    const char *was = getenv("DT_POISON_ALLOC");
    char saved[16] = "";
    if (was)
        snprintf(saved, sizeof saved, "%s", was);
    setenv("DT_POISON_ALLOC", "1", 1);
    char err[DT_ERR_LEN];
    dt_backend *pb = dt_backend_cpu_new(1, err);
    assert_non_null(pb);
    unsigned char *p = pb->i.alloc(pb, 1000);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 64, 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(p[i], 0xff);
    assert_true(isnan(((float *)p)[0]) && isnan(((double *)p)[1]));
    pb->i.memset0(pb, p, 1000);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(p[i], 0);
    pb->i.free(pb, p);
    pb->i.free(pb, NULL);
    dt_backend_free(pb);
    if (was)
        setenv("DT_POISON_ALLOC", saved, 1);
    else
        unsetenv("DT_POISON_ALLOC");
}

static void test_upload_download_copy_memset_roundtrip(void **state)
{
    float src[17], back[17];
    for (int i = 0; i < 17; i++)
        src[i] = (float)i * 1.5f;
    float *a = be->i.alloc(be, sizeof src), *b = be->i.alloc(be, sizeof src);
    be->i.upload(be, a, src, sizeof src);
    be->i.copy(be, b, a, sizeof src);
    be->i.download(be, back, b, sizeof src);
    assert_memory_equal(back, src, sizeof src);
    be->i.memset0(be, b, sizeof src);
    be->i.download(be, back, b, sizeof src);
    for (int i = 0; i < 17; i++)
        assert_true(back[i] == 0.0f);
    assert_int_equal(be->i.sync(be, NULL), 0);
    be->i.free(be, a);
    be->i.free(be, b);
}

/* ---- GEMM ------------------------------------------------------------------------ */

/* C(M,N) = alpha op(A) op(B) + beta C in double. */
static void ref_gemm(int ta, int tb, int M, int N, int K, double alpha,
                     const float *A, int lda, const float *B, int ldb,
                     double beta, const float *C0, double *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(long)k * lda + i] : A[(long)i * lda + k];
                double b = tb ? B[(long)j * ldb + k] : B[(long)k * ldb + j];
                s += a * b;
            }
            C[(long)i * ldc + j] = alpha * s + beta * C0[(long)i * ldc + j];
        }
}

/* M = 1 (a decode step) runs as sgemv: every transpose, with strides
 * (op(A)'s one row is a column of A when ta, elements lda apart). */
static void test_gemm_matches_reference_all_transposes_and_leading_dims(
    void **state)
{
    for (int M = 5; M >= 1; M -= 4)
    for (int N = 7, K = 3, ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 3, ldc = N + 1;
            long na = (long)(ta ? K : M) * lda, nb = (long)(tb ? N : K) * ldb;
            long nc = (long)M * ldc;
            float *A = randv(na, 1), *B = randv(nb, 1), *C = randv(nc, 1);
            double *R = dalloc(nc);
            for (long i = 0; i < nc; i++)
                R[i] = C[i]; /* padding columns must stay untouched */
            ref_gemm(ta, tb, M, N, K, 0.7, A, lda, B, ldb, 0.3, C, R, ldc);
            be->i.gemm(be, ta, tb, M, N, K, 0.7f, A, lda, B, ldb, 0.3f, C,
                       ldc);
            assert_close(C, R, nc, TOL_FWD);
            free(A), free(B), free(C), free(R);
        }
}

static void test_gemm_batched_matches_reference(void **state)
{
    int M = 4, N = 6, K = 5, batch = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
            long sA = (long)(ta ? K : M) * lda + 3;
            long sB = (long)(tb ? N : K) * ldb + 1;
            long sC = (long)M * ldc + 2;
            float *A = randv(sA * batch, 1), *B = randv(sB * batch, 1);
            float *C = randv(sC * batch, 1);
            double *R = todouble(C, sC * batch);
            for (int i = 0; i < batch; i++)
                ref_gemm(ta, tb, M, N, K, 1.25, A + i * sA, lda, B + i * sB,
                         ldb, 1.0, C + i * sC, R + i * sC, ldc);
            be->i.gemm_batched(be, ta, tb, M, N, K, 1.25f, A, lda, sA, B, ldb,
                               sB, 1.0f, C, ldc, sC, batch);
            assert_close(C, R, sC * batch, TOL_FWD);
            free(A), free(B), free(C), free(R);
        }
}

/* A·Wᵀ with 2-32 rows of A runs without packing (gpu/cpu_gemm_small.c):
 * every edge of its 4x4 blocks and of its 16-float K chunks, strides,
 * alpha and beta (beta 0 ignores C, NaN included), against the reference;
 * and since each element is one thread's dot product, the same bits with
 * 1 and 2 threads. */
static void test_gemm_few_rows_matches_reference_and_is_thread_independent(
    void **state)
{
    static const int Ms[] = {2, 3, 4, 5, 8, 13, 16, 29, 32}, Ns[] = {1, 3, 4, 5, 8, 67},
                     Ks[] = {1, 15, 16, 17, 64, 100};
    for (size_t im = 0; im < sizeof Ms / sizeof *Ms; im++)
    for (size_t in = 0; in < sizeof Ns / sizeof *Ns; in++)
    for (size_t ik = 0; ik < sizeof Ks / sizeof *Ks; ik++)
    for (int zb = 0; zb < 2; zb++) {
        int M = Ms[im], N = Ns[in], K = Ks[ik];
        int lda = K + 3, ldw = K + 1, ldc = N + 2;
        long nc = (long)M * ldc;
        float *A = randv((long)M * lda, 1), *W = randv((long)N * ldw, 1);
        float *C = randv(nc, 1), *C1 = falloc(nc);
        double *R = todouble(C, nc);
        float beta = zb ? 0.0f : 0.3f;
        ref_gemm(0, 1, M, N, K, 0.7, A, lda, W, ldw, beta, C, R, ldc);
        if (zb)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++)
                    C[(long)i * ldc + j] = NAN; /* beta 0: never read */
        memcpy(C1, C, (size_t)nc * sizeof *C);
        omp_set_num_threads(1);
        be->i.gemm(be, 0, 1, M, N, K, 0.7f, A, lda, W, ldw, beta, C1, ldc);
        omp_set_num_threads(2);
        be->i.gemm(be, 0, 1, M, N, K, 0.7f, A, lda, W, ldw, beta, C, ldc);
        if (nerr(C, R, nc) >= TOL_FWD)
            fail_msg("M=%d N=%d K=%d beta=%g: normalized error %.3g", M, N, K,
                     (double)beta, nerr(C, R, nc));
        if (memcmp(C, C1, (size_t)nc * sizeof *C))
            fail_msg("M=%d N=%d K=%d: 1 and 2 threads differ", M, N, K);
        free(A), free(W), free(C), free(C1), free(R);
    }
}

/* ---- embedding ---------------------------------------------------------------- */

static void test_embedding_fwd_adds_token_and_position_rows(void **state)
{
    int B = 2, T = 3, C = 5, V = 4;
    int32_t ids[6] = {3, 0, 3, 1, 2, 1};
    float *wte = randv(V * C, 1), *wpe = randv(T * C, 1);
    float *out = falloc(B * T * C);
    double *ref = dalloc(B * T * C);
    for (int w = 0; w < 2; w++) {
        for (int r = 0; r < B * T; r++)
            for (int c = 0; c < C; c++)
                ref[r * C + c] = (double)wte[ids[r] * C + c] +
                                 (w ? wpe[(r % T) * C + c] : 0.0);
        be->i.embedding_fwd(be, out, ids, wte, w ? wpe : NULL, B, T, C);
        assert_close(out, ref, B * T * C, TOL_FWD);
    }
    free(wte), free(wpe), free(out), free(ref);
}

static void test_embedding_bwd_accumulates_repeated_ids(void **state)
{
    int B = 2, T = 3, C = 70, V = 4; /* C > one column block */
    int32_t ids[6] = {3, 0, 3, 1, 3, 1};
    float *dout = randv(B * T * C, 1);
    float *dwte = randv(V * C, 1), *dwpe = randv(T * C, 1);
    double *rte = todouble(dwte, V * C), *rpe = todouble(dwpe, T * C);
    for (int r = 0; r < B * T; r++)
        for (int c = 0; c < C; c++) {
            rte[ids[r] * C + c] += dout[r * C + c];
            rpe[(r % T) * C + c] += dout[r * C + c];
        }
    be->i.embedding_bwd(be, dwte, dwpe, dout, ids, B, T, C);
    assert_close(dwte, rte, V * C, TOL_FWD);
    assert_close(dwpe, rpe, T * C, TOL_FWD);
    be->i.embedding_bwd(be, NULL, NULL, dout, ids, B, T, C); /* no-op */
    free(dout), free(dwte), free(dwpe), free(rte), free(rpe);
}

/* ---- LayerNorm / RMSNorm ------------------------------------------------------ */

typedef struct norm_ctx {
    int N, C, rms;
    double eps;
    double *x, *w, *b; /* b may be NULL */
    const float *G;    /* upstream gradient: loss = sum(out * G) */
    double *out;       /* optional output (N, C) */
} norm_ctx;

static double ref_norm(void *vp)
{
    norm_ctx *n = vp;
    double loss = 0.0;
    for (int r = 0; r < n->N; r++) {
        const double *x = n->x + (long)r * n->C;
        double m = 0.0, v = 0.0;
        if (!n->rms) {
            for (int c = 0; c < n->C; c++)
                m += x[c];
            m /= n->C;
        }
        for (int c = 0; c < n->C; c++)
            v += (x[c] - m) * (x[c] - m);
        double rs = 1.0 / sqrt(v / n->C + n->eps);
        for (int c = 0; c < n->C; c++) {
            double o = (x[c] - m) * rs * n->w[c] + (n->b ? n->b[c] : 0.0);
            if (n->out)
                n->out[(long)r * n->C + c] = o;
            if (n->G)
                loss += o * n->G[(long)r * n->C + c];
        }
    }
    return loss;
}

static void check_norm_fwd(int rms, int with_bias)
{
    int N = 6, C = 33;
    float *x = randv(N * C, 2), *w = randv(C, 1), *b = randv(C, 1);
    for (int i = 0; i < N * C; i++)
        x[i] += 0.5f; /* a non-zero mean */
    float *out = falloc(N * C), *mean = falloc(N), *rstd = falloc(N);
    norm_ctx n = {N, C, rms, 1e-5, todouble(x, N * C), todouble(w, C),
                  with_bias ? todouble(b, C) : NULL, NULL, dalloc(N * C)};
    ref_norm(&n);
    if (rms)
        be->i.rmsnorm_fwd(be, out, rstd, x, w, N, C, 1e-5f);
    else
        be->i.layernorm_fwd(be, out, mean, rstd, x, w, with_bias ? b : NULL, N,
                            C, 1e-5f);
    assert_close(out, n.out, N * C, TOL_FWD);
    for (int r = 0; r < N && !rms; r++) {
        double m = 0.0;
        for (int c = 0; c < C; c++)
            m += x[r * C + c];
        assert_true(fabs(mean[r] - m / C) < 1e-6);
    }
    free(x), free(w), free(b), free(out), free(mean), free(rstd);
    free(n.x), free(n.w), free(n.b), free(n.out);
}

static void test_layernorm_fwd_matches_reference(void **state)
{
    check_norm_fwd(0, 1);
    check_norm_fwd(0, 0);
}

static void test_rmsnorm_fwd_matches_reference(void **state)
{
    check_norm_fwd(1, 0);
}

/* dinp, dw, db against finite differences; dinp, dw and db accumulate (they
 * start from 1.0 here); dw/db NULL leaves dinp unchanged. */
static void check_norm_bwd(int rms)
{
    int N = 5, C = 70; /* C > one column block */
    float *x = randv(N * C, 2), *w = randv(C, 1), *b = randv(C, 1);
    float *G = randv(N * C, 1);
    for (int i = 0; i < N * C; i++)
        x[i] += 0.3f;
    float *out = falloc(N * C), *mean = falloc(N), *rstd = falloc(N);
    float *dinp = falloc(N * C), *dw = falloc(C), *db = falloc(C);
    float *dinp2 = falloc(N * C);
    for (int i = 0; i < N * C; i++)
        dinp[i] = 1.0f;
    for (int i = 0; i < C; i++)
        dw[i] = db[i] = 1.0f;
    if (rms) {
        be->i.rmsnorm_fwd(be, out, rstd, x, w, N, C, 1e-5f);
        be->i.rmsnorm_bwd(be, dinp, dw, G, x, w, rstd, N, C);
        be->i.rmsnorm_bwd(be, dinp2, NULL, G, x, w, rstd, N, C);
    } else {
        be->i.layernorm_fwd(be, out, mean, rstd, x, w, b, N, C, 1e-5f);
        be->i.layernorm_bwd(be, dinp, dw, db, G, x, w, mean, rstd, N, C);
        be->i.layernorm_bwd(be, dinp2, NULL, NULL, G, x, w, mean, rstd, N, C);
    }
    for (int i = 0; i < N * C; i++)
        dinp[i] -= 1.0f;
    for (int i = 0; i < C; i++)
        dw[i] -= 1.0f, db[i] -= 1.0f;
    norm_ctx n = {N, C, rms, 1e-5, todouble(x, N * C), todouble(w, C),
                  rms ? NULL : todouble(b, C), G, NULL};
    double *gx = dalloc(N * C), *gw = dalloc(C), *gb = dalloc(C);
    fd_grad(ref_norm, &n, n.x, N * C, gx);
    fd_grad(ref_norm, &n, n.w, C, gw);
    assert_close(dinp, gx, N * C, TOL_BWD);
    assert_close(dinp2, gx, N * C, TOL_BWD);
    assert_close(dw, gw, C, TOL_BWD);
    if (!rms) {
        fd_grad(ref_norm, &n, n.b, C, gb);
        assert_close(db, gb, C, TOL_BWD);
    }
    free(x), free(w), free(b), free(G), free(out), free(mean), free(rstd);
    free(dinp), free(dw), free(db), free(dinp2);
    free(n.x), free(n.w), free(n.b), free(gx), free(gw), free(gb);
}

static void test_layernorm_bwd_matches_finite_differences(void **state)
{
    check_norm_bwd(0);
}

static void test_rmsnorm_bwd_matches_finite_differences(void **state)
{
    check_norm_bwd(1);
}

/* ---- activations ---------------------------------------------------------------- */

static double ref_gelu(double x)
{
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

static double ref_silu(double x) { return x / (1.0 + exp(-x)); }

static void test_gelu_fwd_matches_reference(void **state)
{
    long n = 1000;
    float *x = randv(n, 5), *out = falloc(n);
    double *ref = dalloc(n);
    for (long i = 0; i < n; i++)
        ref[i] = ref_gelu(x[i]);
    be->i.gelu_fwd(be, out, x, n);
    assert_close(out, ref, n, TOL_FWD);
    free(x), free(out), free(ref);
}

static void test_gelu_bwd_matches_finite_differences_and_accumulates(
    void **state)
{
    long n = 1000;
    float *x = randv(n, 5), *dout = randv(n, 1), *dinp = falloc(n);
    double *ref = dalloc(n);
    for (long i = 0; i < n; i++) {
        dinp[i] = 2.0f;
        ref[i] = 2.0 + dout[i] * (ref_gelu(x[i] + FD_H) -
                                  ref_gelu(x[i] - FD_H)) / (2 * FD_H);
    }
    be->i.gelu_bwd(be, dinp, x, dout, n);
    assert_close(dinp, ref, n, TOL_BWD);
    free(x), free(dout), free(dinp), free(ref);
}

static void test_swiglu_fwd_matches_reference(void **state)
{
    long n = 1000;
    float *g = randv(n, 5), *u = randv(n, 2), *out = falloc(n);
    double *ref = dalloc(n);
    for (long i = 0; i < n; i++)
        ref[i] = ref_silu(g[i]) * u[i];
    be->i.swiglu_fwd(be, out, g, u, n);
    assert_close(out, ref, n, TOL_FWD);
    free(g), free(u), free(out), free(ref);
}

static void test_swiglu_bwd_matches_finite_differences_and_overwrites(
    void **state)
{
    long n = 1000;
    float *g = randv(n, 5), *u = randv(n, 2), *dout = randv(n, 1);
    float *dg = randv(n, 9), *du = randv(n, 9); /* garbage: overwritten */
    double *rg = dalloc(n), *ru = dalloc(n);
    for (long i = 0; i < n; i++) {
        rg[i] = dout[i] * u[i] *
                (ref_silu(g[i] + FD_H) - ref_silu(g[i] - FD_H)) / (2 * FD_H);
        ru[i] = dout[i] * ref_silu(g[i]);
    }
    be->i.swiglu_bwd(be, dg, du, dout, g, u, n);
    assert_close(dg, rg, n, TOL_BWD);
    assert_close(du, ru, n, TOL_BWD);
    free(g), free(u), free(dout), free(dg), free(du), free(rg), free(ru);
}

/* ---- RoPE ---------------------------------------------------------------------------- */

static void ref_rope(double *y, const float *x, int B, int T, int H, int D,
                     double theta)
{
    int half = D / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                long o = (((long)b * T + t) * H + h) * D;
                for (int i = 0; i < half; i++) {
                    double ang = t * pow(theta, -2.0 * i / D);
                    double a = x[o + i], c = x[o + i + half];
                    y[o + i] = a * cos(ang) - c * sin(ang);
                    y[o + i + half] = c * cos(ang) + a * sin(ang);
                }
            }
}

static void test_rope_matches_rotate_half_reference(void **state)
{
    int B = 2, T = 9, H = 3, D = 8;
    long n = (long)B * T * H * D;
    float *x = randv(n, 1);
    double *ref = dalloc(n);
    ref_rope(ref, x, B, T, H, D, 10000.0);
    be->i.rope(be, x, B, T, H, D, 10000.0f, 0);
    assert_close(x, ref, n, TOL_FWD);
    free(x), free(ref);
}

static void test_rope_inverse_undoes_forward(void **state)
{
    int B = 1, T = 40, H = 2, D = 16;
    long n = (long)B * T * H * D;
    float *x = randv(n, 1), *y = malloc((size_t)n * sizeof *y);
    memcpy(y, x, (size_t)n * sizeof *y);
    be->i.rope(be, y, B, T, H, D, 500000.0f, 0);
    be->i.rope(be, y, B, T, H, D, 500000.0f, 1);
    double *xd = todouble(x, n);
    assert_close(y, xd, n, TOL_FWD);
    free(x), free(y), free(xd);
}

/* The inverse is the transpose: <R x, y> = <x, Rᵀ y>, so rope(inverse=1)
 * is the backward pass of rope. */
static void test_rope_inverse_is_transpose(void **state)
{
    int B = 2, T = 6, H = 2, D = 4;
    long n = (long)B * T * H * D;
    float *x = randv(n, 1), *y = randv(n, 1);
    float *rx = malloc((size_t)n * 4), *ry = malloc((size_t)n * 4);
    memcpy(rx, x, (size_t)n * 4);
    memcpy(ry, y, (size_t)n * 4);
    be->i.rope(be, rx, B, T, H, D, 10000.0f, 0);
    be->i.rope(be, ry, B, T, H, D, 10000.0f, 1);
    double a = 0, b = 0;
    for (long i = 0; i < n; i++)
        a += (double)rx[i] * y[i], b += (double)x[i] * ry[i];
    assert_true(fabs(a - b) < 1e-5 * (fabs(a) + 1));
    free(x), free(y), free(rx), free(ry);
}

/* ---- bias / BLAS-1 ----------------------------------------------------------------------- */

static void test_add_bias_broadcasts_over_rows(void **state)
{
    int N = 7, C = 5;
    float *y = randv(N * C, 1), *bias = randv(C, 1);
    double *ref = todouble(y, N * C);
    for (int r = 0; r < N; r++)
        for (int c = 0; c < C; c++)
            ref[r * C + c] += bias[c];
    be->i.add_bias(be, y, bias, N, C);
    assert_close(y, ref, N * C, TOL_FWD);
    free(y), free(bias), free(ref);
}

static void test_bias_bwd_accumulates_column_sums(void **state)
{
    int N = 9, C = 131;
    float *dy = randv(N * C, 1), *db = randv(C, 1);
    double *ref = todouble(db, C);
    for (int r = 0; r < N; r++)
        for (int c = 0; c < C; c++)
            ref[c] += dy[r * C + c];
    be->i.bias_bwd(be, db, dy, N, C);
    assert_close(db, ref, C, TOL_FWD);
    free(dy), free(db), free(ref);
}

static void test_axpy_scale_copy2d_match_reference(void **state)
{
    long n = 1001;
    float *x = randv(n, 1), *y = randv(n, 1);
    double *ref = todouble(y, n);
    for (long i = 0; i < n; i++)
        ref[i] = ref[i] + 0.5 * x[i];
    be->i.axpy(be, n, 0.5f, x, y);
    assert_close(y, ref, n, TOL_FWD);
    for (long i = 0; i < n; i++)
        ref[i] = (double)y[i] * -3.0;
    be->i.scale(be, n, -3.0f, y);
    assert_close(y, ref, n, TOL_FWD);

    int rows = 4, cols = 3, lds = 7, ldd = 5;
    float *src = randv(rows * lds, 1), *dst = randv(rows * ldd, 1);
    double *rd = todouble(dst, rows * ldd);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            rd[r * ldd + c] = 2.0 * src[r * lds + c];
    be->i.copy2d(be, dst, ldd, src, lds, rows, cols, 2.0f);
    assert_close(dst, rd, rows * ldd, TOL_FWD);
    free(x), free(y), free(ref), free(src), free(dst), free(rd);
}

/* ---- attention ------------------------------------------------------------------------- */

typedef struct att_ctx {
    int B, T, NH, NKV, D;
    double *q, *k, *v; /* (B,T,NH,D), (B,T,NKV,D) x2 */
    const float *G;    /* loss = sum(out * G) */
    double *out, *lse; /* optional outputs */
} att_ctx;

#define QI(a, b, t, h, d) ((((long)(b) * (a)->T + (t)) * (a)->NH + (h)) * (a)->D + (d))
#define KI(a, b, t, h, d) ((((long)(b) * (a)->T + (t)) * (a)->NKV + (h)) * (a)->D + (d))

/* Naive causal softmax attention in double. */
static double ref_attention(void *vp)
{
    att_ctx *a = vp;
    double scale = 1.0 / sqrt((double)a->D), loss = 0.0;
    double *p = dalloc(a->T);
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < a->NH; h++) {
            int kh = h / (a->NH / a->NKV);
            for (int i = 0; i < a->T; i++) {
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j <= i; j++) {
                    double s = 0.0;
                    for (int d = 0; d < a->D; d++)
                        s += a->q[QI(a, b, i, h, d)] * a->k[KI(a, b, j, kh, d)];
                    p[j] = s * scale;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j <= i; j++)
                    sum += p[j] = exp(p[j] - mx);
                if (a->lse)
                    a->lse[((long)b * a->NH + h) * a->T + i] = mx + log(sum);
                for (int d = 0; d < a->D; d++) {
                    double o = 0.0;
                    for (int j = 0; j <= i; j++)
                        o += p[j] / sum * a->v[KI(a, b, j, kh, d)];
                    if (a->out)
                        a->out[QI(a, b, i, h, d)] = o;
                    if (a->G)
                        loss += o * a->G[QI(a, b, i, h, d)];
                }
            }
        }
    free(p);
    return loss;
}

static void check_attention_fwd(int B, int T, int NH, int NKV, int D)
{
    long nq = (long)B * T * NH * D, nk = (long)B * T * NKV * D;
    float *q = randv(nq, 1), *k = randv(nk, 1), *v = randv(nk, 1);
    float *out = falloc(nq), *lse = falloc((long)B * NH * T);
    att_ctx a = {B, T, NH, NKV, D, todouble(q, nq), todouble(k, nk),
                 todouble(v, nk), NULL, dalloc(nq), dalloc((long)B * NH * T)};
    ref_attention(&a);
    be->i.attention_fwd(be, out, lse, q, k, v, B, T, NH, NKV, D);
    assert_int_equal(be->i.sync(be, NULL), 0);
    assert_close(out, a.out, nq, TOL_FWD);
    assert_close(lse, a.lse, (long)B * NH * T, TOL_FWD);
    free(q), free(k), free(v), free(out), free(lse);
    free(a.q), free(a.k), free(a.v), free(a.out), free(a.lse);
}

/* The batched decode step's attention: one query row per sequence, each
 * against its own cache (lengths around the 8-key blocks of the scores
 * loop), the same bits as attention_decode of each row alone, which matches
 * the reference (test_gpu_ops checks it against the CUDA backend too). */
static void test_attention_decode_batch_equals_one_row_at_a_time(void **state)
{
    enum { n = 6, NH = 6, NKV = 2, D = 16 };
    static const int tk[n] = {1, 7, 8, 9, 17, 30};
    const float *kp[n], *vp[n];
    float *kc[n], *vc[n], *q = randv((long)n * NH * D, 1);
    float *out = falloc((long)n * NH * D), *one = falloc((long)NH * D);
    for (int i = 0; i < n; i++) {
        kp[i] = kc[i] = randv((long)tk[i] * NKV * D, 1);
        vp[i] = vc[i] = randv((long)tk[i] * NKV * D, 1);
    }
    assert_non_null(be->i.attention_decode_batch);
    be->i.attention_decode_batch(be, out, q, kp, vp, tk, n, NH, NKV, D);
    char err[DT_ERR_LEN];
    assert_int_equal(be->i.sync(be, err), 0);
    for (int i = 0; i < n; i++) {
        be->i.attention_decode(be, one, q + (long)i * NH * D, kc[i], vc[i], 1,
                               tk[i], NH, NKV, D);
        if (memcmp(one, out + (long)i * NH * D, sizeof(float) * NH * D))
            fail_msg("sequence %d (%d keys): batched and one-row results differ",
                     i, tk[i]);
        /* against softmax(q·kᵀ/√D)·v in double */
        for (int h = 0; h < NH; h++) {
            const float *qh = q + ((long)i * NH + h) * D;
            int g = h / (NH / NKV);
            double sc[30], mx = -1e300, sum = 0, o[D] = {0};
            for (int j = 0; j < tk[i]; j++) {
                double s = 0;
                for (int d = 0; d < D; d++)
                    s += (double)qh[d] * kc[i][((long)j * NKV + g) * D + d];
                sc[j] = s / sqrt((double)D);
                mx = sc[j] > mx ? sc[j] : mx;
            }
            for (int j = 0; j < tk[i]; j++)
                sum += sc[j] = exp(sc[j] - mx);
            for (int j = 0; j < tk[i]; j++)
                for (int d = 0; d < D; d++)
                    o[d] += sc[j] / sum * vc[i][((long)j * NKV + g) * D + d];
            assert_close(one + (long)h * D, o, D, TOL_FWD);
        }
    }
    for (int i = 0; i < n; i++)
        free(kc[i]), free(vc[i]);
    free(q), free(out), free(one);
}

static void test_attention_fwd_matches_naive_softmax_attention(void **state)
{
    check_attention_fwd(2, 7, 2, 2, 8);
}

static void test_attention_fwd_gqa_shares_kv_heads(void **state)
{
    check_attention_fwd(2, 6, 4, 2, 8);
}

static void test_attention_fwd_long_sequence_spans_row_blocks(void **state)
{
    check_attention_fwd(1, 150, 2, 1, 4);
}

/* Runs attention fwd+bwd on the backend and compares dq, dk, dv with finite
 * differences of the double reference; dq/dk/dv start as garbage
 * (overwritten). */
static void check_attention_bwd(int B, int T, int NH, int NKV, int D)
{
    long nq = (long)B * T * NH * D, nk = (long)B * T * NKV * D;
    float *q = randv(nq, 1), *k = randv(nk, 1), *v = randv(nk, 1);
    float *G = randv(nq, 1);
    float *out = falloc(nq), *lse = falloc((long)B * NH * T);
    float *dq = randv(nq, 5), *dk = randv(nk, 5), *dv = randv(nk, 5);
    be->i.attention_fwd(be, out, lse, q, k, v, B, T, NH, NKV, D);
    be->i.attention_bwd(be, dq, dk, dv, G, out, lse, q, k, v, B, T, NH, NKV,
                        D);
    assert_int_equal(be->i.sync(be, NULL), 0);
    att_ctx a = {B, T, NH, NKV, D, todouble(q, nq), todouble(k, nk),
                 todouble(v, nk), G, NULL, NULL};
    double *gq = dalloc(nq), *gk = dalloc(nk), *gv = dalloc(nk);
    fd_grad(ref_attention, &a, a.q, nq, gq);
    fd_grad(ref_attention, &a, a.k, nk, gk);
    fd_grad(ref_attention, &a, a.v, nk, gv);
    assert_close(dq, gq, nq, TOL_BWD);
    assert_close(dk, gk, nk, TOL_BWD);
    assert_close(dv, gv, nk, TOL_BWD);
    free(q), free(k), free(v), free(G), free(out), free(lse);
    free(dq), free(dk), free(dv), free(gq), free(gk), free(gv);
    free(a.q), free(a.k), free(a.v);
}

static void test_attention_bwd_matches_finite_differences(void **state)
{
    check_attention_bwd(2, 5, 2, 2, 8);
}

static void test_attention_bwd_gqa_sums_query_heads_into_kv(void **state)
{
    check_attention_bwd(2, 5, 4, 2, 8);
}

/* One kv head (fewer than threads: the serial path with threaded BLAS) and
 * T spanning several row blocks. */
static void test_attention_bwd_long_sequence_single_kv_head(void **state)
{
    check_attention_bwd(1, 70, 2, 1, 4);
}

static void test_attention_bwd_is_bitwise_deterministic(void **state)
{
    int B = 2, T = 80, NH = 4, NKV = 2, D = 16;
    long nq = (long)B * T * NH * D, nk = (long)B * T * NKV * D;
    float *q = randv(nq, 1), *k = randv(nk, 1), *v = randv(nk, 1);
    float *G = randv(nq, 1), *out = falloc(nq), *lse = falloc((long)B * NH * T);
    float *d1 = falloc(nq + 2 * nk), *d2 = falloc(nq + 2 * nk);
    be->i.attention_fwd(be, out, lse, q, k, v, B, T, NH, NKV, D);
    be->i.attention_bwd(be, d1, d1 + nq, d1 + nq + nk, G, out, lse, q, k, v, B,
                        T, NH, NKV, D);
    be->i.attention_bwd(be, d2, d2 + nq, d2 + nq + nk, G, out, lse, q, k, v, B,
                        T, NH, NKV, D);
    assert_memory_equal(d1, d2, (size_t)(nq + 2 * nk) * sizeof(float));
    free(q), free(k), free(v), free(G), free(out), free(lse), free(d1),
        free(d2);
}

/* ---- loss ------------------------------------------------------------------------------------- */

static void test_cross_entropy_loss_and_grad_match_reference(void **state)
{
    int N = 5, V = 37;
    int32_t tg[5] = {3, -100, 36, 0, 12};
    float *x = randv(N * V, 4), *losses = falloc(N);
    double *rg = dalloc(N * V), *rl = dalloc(N);
    double gs = 0.25;
    for (int r = 0; r < N; r++) {
        if (tg[r] < 0)
            continue;
        double mx = -INFINITY, s = 0.0;
        for (int j = 0; j < V; j++)
            mx = fmax(mx, x[r * V + j]);
        for (int j = 0; j < V; j++)
            s += exp(x[r * V + j] - mx);
        rl[r] = mx + log(s) - x[r * V + tg[r]];
        for (int j = 0; j < V; j++)
            rg[r * V + j] = (exp(x[r * V + j] - mx) / s - (j == tg[r])) * gs;
    }
    be->i.cross_entropy(be, x, losses, tg, N, V, (float)gs);
    assert_close(losses, rl, N, TOL_FWD);
    assert_close(x, rg, N * V, TOL_FWD);
    free(x), free(losses), free(rg), free(rl);
}

static void test_cross_entropy_masked_rows_get_zero_loss_and_grad(void **state)
{
    int N = 3, V = 11;
    int32_t tg[3] = {-100, 11, -5}; /* masked, out of range, negative */
    float *x = randv(N * V, 4), *losses = randv(N, 1);
    be->i.cross_entropy(be, x, losses, tg, N, V, 1.0f);
    for (int i = 0; i < N * V; i++)
        assert_true(x[i] == 0.0f);
    for (int i = 0; i < N; i++)
        assert_true(losses[i] == 0.0f);
    free(x), free(losses);
}

static void test_cross_entropy_is_stable_for_large_logits(void **state)
{
    float x[4] = {1000.0f, 0.0f, -1000.0f, 999.0f}, loss;
    int32_t tg = 3;
    be->i.cross_entropy(be, x, &loss, &tg, 1, 4, 1.0f);
    /* loss = log(1 + e) - 0 relative to the top two logits. */
    assert_true(fabs(loss - log1p(exp(1.0))) < 1e-5);
    for (int i = 0; i < 4; i++)
        assert_true(isfinite(x[i]));
}

static void test_sum_and_sumsq_match_reference(void **state)
{
    long n = 100003;
    float *x = randv(n, 1);
    double s = 0.0, q = 0.0;
    for (long i = 0; i < n; i++)
        s += x[i], q += (double)x[i] * x[i];
    assert_true(fabs(be->i.sum(be, x, n) - s) < 1e-9 * n);
    assert_true(fabs(be->i.sumsq(be, x, n) - q) < 1e-9 * n);
    assert_true(be->i.sum(be, x, 0) == 0.0);
    assert_true(fabs(be->i.sum(be, x, 3) - ((double)x[0] + x[1] + x[2])) <
                1e-12);
    free(x);
}

static void test_sum_is_bitwise_deterministic_across_thread_counts(
    void **state)
{
    long n = 5000017;
    float *x = randv(n, 1);
    double a = be->i.sum(be, x, n), b = be->i.sum(be, x, n);
    double qa = be->i.sumsq(be, x, n);
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    double c = be->i.sum(be, x, n), qc = be->i.sumsq(be, x, n);
    omp_set_num_threads(nt);
    assert_memory_equal(&a, &b, sizeof a);
    assert_memory_equal(&a, &c, sizeof a);
    assert_memory_equal(&qa, &qc, sizeof qa);
    free(x);
}

/* ---- optimizer --------------------------------------------------------------------------------- */

static void test_adamw_matches_hand_computed_steps(void **state)
{
    /* Step 1: g = 0.5 * gscale 2 = 1; p = 1 * (1 - 0.1*0.01) = 0.999;
     * m = 0.1, v = 0.001, mhat = vhat = 1; p = 0.999 - 0.1 * 1/(1 + 1e-8). */
    float p = 1.0f, g = 0.5f, m = 0.0f, v = 0.0f;
    float lr = 0.1f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f;
    be->i.adamw(be, &p, &g, &m, &v, 1, lr, b1, b2, eps, wd, 1 - b1, 1 - b2,
                2.0f);
    assert_true(fabs(p - (0.999 - 0.1 / (1 + 1e-8))) < 1e-6);
    /* 0.9f and 0.999f are not exact: 1 - 0.999f = 0.00099998713. */
    assert_true(fabs(m - 0.1) < 1e-6);
    assert_true(fabs(v - 0.001) < 1e-4 * 0.001);

    /* Step 2 in double from the values above (with the fp32 constants the
     * op receives), g = -0.25, gscale 1. */
    double B1 = b1, B2 = b2, LR = lr, WD = wd, EPS = eps;
    double P = p, M = m, Vv = v, G2 = -0.25;
    double bc1 = 1 - B1 * B1, bc2 = 1 - B2 * B2;
    P -= LR * WD * P;
    M = B1 * M + (1 - B1) * G2;
    Vv = B2 * Vv + (1 - B2) * G2 * G2;
    P -= LR * (M / bc1) / (sqrt(Vv / bc2) + EPS);
    g = -0.25f;
    be->i.adamw(be, &p, &g, &m, &v, 1, lr, b1, b2, eps, wd, (float)bc1,
                (float)bc2, 1.0f);
    assert_true(fabs(p - P) < 1e-6);
    assert_true(fabs(m - M) < 1e-6 * fabs(M));
    assert_true(fabs(v - Vv) < 1e-6 * Vv);
}

/* sumsq_multi is the per-tensor sumsq results added in list order, bit for
 * bit; adamw_multi is per-tensor adamw with torch's clip scale computed
 * from that norm, bit for bit; a non-finite norm updates nothing. */
static void test_multi_tensor_ops_match_per_tensor_ops_bitwise(void **state)
{
    enum { NT = 4 };
    static const long sizes[NT] = {1, 1000, 70001, 3};
    float *p[2][NT], *m[2][NT], *v[2][NT], *g[NT];
    dt_opt_tensor ts[NT];
    for (int i = 0; i < NT; i++) {
        long n = sizes[i];
        g[i] = randv(n, 3);
        for (int c = 0; c < 2; c++) {
            p[c][i] = randv(n, 1);
            m[c][i] = randv(n, 0.1);
            v[c][i] = randv(n, 0.1);
            for (long j = 0; j < n; j++)
                v[c][i][j] = fabsf(v[c][i][j]);
        }
        memcpy(p[1][i], p[0][i], (size_t)n * 4);
        memcpy(m[1][i], m[0][i], (size_t)n * 4);
        memcpy(v[1][i], v[0][i], (size_t)n * 4);
        ts[i] = (dt_opt_tensor){p[1][i], g[i], m[1][i], v[1][i], n};
    }
    double ss_ref = 0.0, ss = -1.0;
    for (int i = 0; i < NT; i++)
        ss_ref += be->i.sumsq(be, g[i], sizes[i]);
    be->i.sumsq_multi(be, &ss, ts, NT);
    assert_memory_equal(&ss, &ss_ref, sizeof ss);
    /* max_norm 1 clips (the norm is ~500); 0 does not clip */
    for (int step = 1; step <= 2; step++) {
        float max_norm = step == 1 ? 1.0f : 0.0f;
        double coef = max_norm / (sqrt(ss_ref) + 1e-6);
        float gscale = step == 1 && coef < 1.0 ? (float)coef : 1.0f;
        for (int i = 0; i < NT; i++)
            be->i.adamw(be, p[0][i], g[i], m[0][i], v[0][i], sizes[i], 1e-3f,
                        0.9f, 0.999f, 1e-8f, 0.01f, 0.1f, 0.001f, gscale);
        be->i.adamw_multi(be, ts, NT, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.1f,
                          0.001f, &ss, max_norm);
        for (int i = 0; i < NT; i++) {
            assert_memory_equal(p[0][i], p[1][i], (size_t)sizes[i] * 4);
            assert_memory_equal(m[0][i], m[1][i], (size_t)sizes[i] * 4);
            assert_memory_equal(v[0][i], v[1][i], (size_t)sizes[i] * 4);
        }
    }
    double bad = NAN;
    be->i.adamw_multi(be, ts, NT, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.1f,
                      0.001f, &bad, 1.0f);
    for (int i = 0; i < NT; i++)
        assert_memory_equal(p[0][i], p[1][i], (size_t)sizes[i] * 4);
    be->i.sumsq_multi(be, &ss, ts, 0);
    assert_true(ss == 0.0);
    for (int i = 0; i < NT; i++) {
        free(g[i]);
        for (int c = 0; c < 2; c++)
            free(p[c][i]), free(m[c][i]), free(v[c][i]);
    }
}

/* peak_bytes counts the backend's own buffers (attention scratch), not
 * only what alloc() returned. */
static void test_peak_bytes_counts_attention_scratch(void **state)
{
    char err[DT_ERR_LEN];
    dt_backend *pb = dt_backend_cpu_new(1, err);
    assert_non_null(pb);
    int B = 1, T = 300, NH = 2, D = 16;
    long nq = (long)B * T * NH * D;
    float *q = randv(nq, 1), *k = randv(nq, 1), *v = randv(nq, 1);
    float *out = falloc(nq), *lse = falloc((long)B * NH * T);
    size_t before = pb->peak_bytes;
    pb->i.attention_fwd(pb, out, lse, q, k, v, B, T, NH, NH, D);
    assert_int_equal(pb->i.sync(pb, err), 0);
    /* one thread: a 64 x T block of scores */
    assert_true(pb->peak_bytes >= before + 64 * (size_t)T * sizeof(float));
    dt_backend_free(pb);
    free(q), free(k), free(v), free(out), free(lse);
}

/* ---- the facade ---------------------------------------------------------------------------------- */

static void test_backend_new_selects_cpu_and_rejects_unknown_devices(
    void **state)
{
    char err[DT_ERR_LEN] = "";
    dt_backend *b = dt_backend_new("cpu", 0, err);
    assert_non_null(b);
    assert_string_equal(b->i.name, "cpu");
    dt_backend_free(b);
    dt_backend_free(NULL);

    assert_null(dt_backend_new("tpu", 0, err));
    assert_non_null(strstr(err, "tpu"));
    assert_null(dt_backend_new("cuda:x", 0, err));
    assert_non_null(strstr(err, "cuda:x"));

    if (!dt_backend_cuda_available()) {
        assert_null(dt_backend_new("cuda:3", 0, err));
        assert_non_null(strstr(err, "--device cuda:3: no usable CUDA device"));
        b = dt_backend_new("auto", 0, err);
        assert_non_null(b);
        assert_string_equal(b->i.name, "cpu");
        dt_backend_free(b);
    }
}

static int setup(void **state)
{
    char err[DT_ERR_LEN];
    be = dt_backend_cpu_new(2, err);
    return be ? 0 : -1;
}

static int teardown(void **state)
{
    dt_backend_free(be);
    return 0;
}

/* The vectorizable exp/tanh of dt_math.h stay within 4e-7 / 6e-7 relative error of
 * libm's double-precision results over their whole useful range, saturate
 * cleanly and never produce NaN/Inf from finite input. */
static void test_fast_exp_and_tanh_match_libm(void **state)
{
    (void)state;
    double worst_e = 0, worst_t = 0;
    for (int i = 0; i <= 2000000; i++) {
        float x = -87.0f + 175.0f * (float)i / 2000000.0f;
        double e = exp((double)x), got = dt_expf(x);
        double re = fabs(got - e) / e;
        if (re > worst_e)
            worst_e = re;
        float y = -12.0f + 24.0f * (float)i / 2000000.0f;
        double t = tanh((double)y), gt = dt_tanhf(y);
        double rt = fabs(gt - t) / (fabs(t) > 1e-3 ? fabs(t) : 1e-3);
        if (rt > worst_t)
            worst_t = rt;
    }
    printf("  dt_expf worst rel err %.2e, dt_tanhf %.2e\n", worst_e, worst_t);
    assert_true(worst_e < 4e-7);
    assert_true(worst_t < 6e-7);
    assert_true(dt_expf(-1000.0f) >= 0.0f && dt_expf(-1000.0f) < 1e-37f);
    assert_true(isfinite(dt_expf(88.0f)));
    assert_float_equal(dt_tanhf(50.0f), 1.0f, 0);
    assert_float_equal(dt_tanhf(-50.0f), -1.0f, 0);
    assert_float_equal(dt_tanhf(0.0f), 0.0f, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_exp_and_tanh_match_libm),
        cmocka_unit_test(test_alloc_is_aligned_and_poisoned_under_DT_POISON_ALLOC),
        cmocka_unit_test(test_upload_download_copy_memset_roundtrip),
        cmocka_unit_test(
            test_gemm_matches_reference_all_transposes_and_leading_dims),
        cmocka_unit_test(test_gemm_batched_matches_reference),
        cmocka_unit_test(test_gemm_few_rows_matches_reference_and_is_thread_independent),
        cmocka_unit_test(test_embedding_fwd_adds_token_and_position_rows),
        cmocka_unit_test(test_embedding_bwd_accumulates_repeated_ids),
        cmocka_unit_test(test_layernorm_fwd_matches_reference),
        cmocka_unit_test(test_rmsnorm_fwd_matches_reference),
        cmocka_unit_test(test_layernorm_bwd_matches_finite_differences),
        cmocka_unit_test(test_rmsnorm_bwd_matches_finite_differences),
        cmocka_unit_test(test_gelu_fwd_matches_reference),
        cmocka_unit_test(
            test_gelu_bwd_matches_finite_differences_and_accumulates),
        cmocka_unit_test(test_swiglu_fwd_matches_reference),
        cmocka_unit_test(
            test_swiglu_bwd_matches_finite_differences_and_overwrites),
        cmocka_unit_test(test_rope_matches_rotate_half_reference),
        cmocka_unit_test(test_rope_inverse_undoes_forward),
        cmocka_unit_test(test_rope_inverse_is_transpose),
        cmocka_unit_test(test_add_bias_broadcasts_over_rows),
        cmocka_unit_test(test_bias_bwd_accumulates_column_sums),
        cmocka_unit_test(test_axpy_scale_copy2d_match_reference),
        cmocka_unit_test(test_attention_fwd_matches_naive_softmax_attention),
        cmocka_unit_test(test_attention_decode_batch_equals_one_row_at_a_time),
        cmocka_unit_test(test_attention_fwd_gqa_shares_kv_heads),
        cmocka_unit_test(test_attention_fwd_long_sequence_spans_row_blocks),
        cmocka_unit_test(test_attention_bwd_matches_finite_differences),
        cmocka_unit_test(test_attention_bwd_gqa_sums_query_heads_into_kv),
        cmocka_unit_test(test_attention_bwd_long_sequence_single_kv_head),
        cmocka_unit_test(test_attention_bwd_is_bitwise_deterministic),
        cmocka_unit_test(test_cross_entropy_loss_and_grad_match_reference),
        cmocka_unit_test(test_cross_entropy_masked_rows_get_zero_loss_and_grad),
        cmocka_unit_test(test_cross_entropy_is_stable_for_large_logits),
        cmocka_unit_test(test_sum_and_sumsq_match_reference),
        cmocka_unit_test(test_sum_is_bitwise_deterministic_across_thread_counts),
        cmocka_unit_test(test_adamw_matches_hand_computed_steps),
        cmocka_unit_test(test_multi_tensor_ops_match_per_tensor_ops_bitwise),
        cmocka_unit_test(test_peak_bytes_counts_attention_scratch),
        cmocka_unit_test(
            test_backend_new_selects_cpu_and_rejects_unknown_devices),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
