/* backend.h: the compute backend interface of the engine.
 *
 * A backend is a table of function pointers (ggml style) behind an opaque
 * handle. Model code only ever sees device pointers returned by alloc(); it
 * never dereferences them, so the same model code drives the CPU backend
 * (OpenBLAS + OpenMP) and the CUDA backend (cuBLAS + kernels).
 *
 * Conventions
 * - All matrices are row-major. Shapes are written as (rows, cols).
 * - Every op is fp32 unless said otherwise. ids/targets are int32.
 * - "dx +=" means the op accumulates into its output gradient; callers zero
 *   gradients with memset0() before a backward pass.
 * - alloc() returns uninitialised memory (the CUDA emulator fills it with
 *   NaN bytes, and so does the CPU backend when DT_POISON_ALLOC=1, as the
 *   unit tests run it): whoever reads a buffer before writing it zeroes it
 *   with memset0() first (AdamW moments, gradients, LoRA's B).
 * - Ops that can fail return 0 or a negative DT_E* code; pure compute ops
 *   return void and report device errors through sync().
 */
#ifndef DT_BACKEND_H
#define DT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct dt_backend dt_backend;

/* One trainable tensor for the multi-tensor optimizer ops: device
 * pointers to n floats each. */
typedef struct dt_opt_tensor {
    float *p;       /* the parameter */
    const float *g; /* its gradient */
    float *m, *v;   /* AdamW's moments */
    long n;
} dt_opt_tensor;

typedef struct dt_backend_i {
    const char *name;

    /* ---- memory ------------------------------------------------------- */
    /* Returns an uninitialised device buffer or NULL (out of memory; the
     * CUDA backend records any other device error for sync()). */
    void *(*alloc)(dt_backend *be, size_t bytes);
    void (*free)(dt_backend *be, void *p); /* free(NULL) is a no-op */
    void (*upload)(dt_backend *be, void *dst, const void *src, size_t bytes);
    void (*download)(dt_backend *be, void *dst, const void *src, size_t bytes);
    void (*copy)(dt_backend *be, void *dst, const void *src, size_t bytes);
    void (*memset0)(dt_backend *be, void *p, size_t bytes);
    /* Waits for queued work; returns 0 or DT_EDEVICE with detail in err. */
    int (*sync)(dt_backend *be, char *err);

    /* ---- GEMM ----------------------------------------------------------- */
    /* C(M,N) = alpha * op(A) * op(B) + beta * C, row-major, with leading
     * dimensions. op(A) is (M,K): A is (M,K) when !ta, (K,M) when ta. */
    void (*gemm)(dt_backend *be, int ta, int tb, int M, int N, int K,
                 float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
    /* The same for `batch` independent products at the given strides
     * (in floats). */
    void (*gemm_batched)(dt_backend *be, int ta, int tb, int M, int N, int K,
                         float alpha, const float *A, int lda, long sA,
                         const float *B, int ldb, long sB, float beta, float *C,
                         int ldc, long sC, int batch);

    /* ---- elementwise / rows --------------------------------------------- */
    /* out(BT,C) = wte[ids] (+ wpe[t] when wpe != NULL). */
    void (*embedding_fwd)(dt_backend *be, float *out, const int32_t *ids,
                          const float *wte, const float *wpe, int B, int T,
                          int C);
    /* dwte[ids] += dout; dwpe[t] += dout (either may be NULL). ids(B*T) is
     * HOST memory, the ids embedding_fwd read on the device: the host has
     * them, so the CUDA backend groups them without a copy back. */
    void (*embedding_bwd)(dt_backend *be, float *dwte, float *dwpe,
                          const float *dout, const int32_t *ids, int B, int T,
                          int C);
    /* LayerNorm over rows of inp(N,C); saves mean(N), rstd(N). b may be NULL. */
    void (*layernorm_fwd)(dt_backend *be, float *out, float *mean, float *rstd,
                          const float *inp, const float *w, const float *b,
                          int N, int C, float eps);
    /* dinp += ..; dw += ..; db += .. (dw, db may be NULL: frozen). */
    void (*layernorm_bwd)(dt_backend *be, float *dinp, float *dw, float *db,
                          const float *dout, const float *inp, const float *w,
                          const float *mean, const float *rstd, int N, int C);
    /* RMSNorm: out = inp * rstd * w, rstd = 1/sqrt(mean(inp^2) + eps). */
    void (*rmsnorm_fwd)(dt_backend *be, float *out, float *rstd,
                        const float *inp, const float *w, int N, int C,
                        float eps);
    void (*rmsnorm_bwd)(dt_backend *be, float *dinp, float *dw,
                        const float *dout, const float *inp, const float *w,
                        const float *rstd, int N, int C);
    /* GELU, tanh approximation (GPT-2's gelu_new). */
    void (*gelu_fwd)(dt_backend *be, float *out, const float *inp, long n);
    void (*gelu_bwd)(dt_backend *be, float *dinp, const float *inp,
                     const float *dout, long n); /* dinp += */
    /* out = silu(gate) * up. */
    void (*swiglu_fwd)(dt_backend *be, float *out, const float *gate,
                       const float *up, long n);
    /* dgate = .., dup = .. (overwritten, not accumulated). */
    void (*swiglu_bwd)(dt_backend *be, float *dgate, float *dup,
                       const float *dout, const float *gate, const float *up,
                       long n);
    /* Rotary embedding in place on x(B,T,H,D), Hugging Face's rotate_half
     * layout (pairs i and i+D/2), positions 0..T-1. inverse=1 applies the
     * transpose rotation (the backward pass). The cos/sin come from
     * dt_rope_table(), which the backend computes once per (D, theta) and
     * keeps (the CUDA backend uploads it once), growing it when T grows. */
    void (*rope)(dt_backend *be, float *x, int B, int T, int H, int D,
                 float theta, int inverse);
    /* y(N,C) += bias(C) broadcast over rows. */
    void (*add_bias)(dt_backend *be, float *y, const float *bias, int N, int C);
    /* dbias(C) += column sums of dy(N,C). */
    void (*bias_bwd)(dt_backend *be, float *dbias, const float *dy, int N,
                     int C);
    /* y = a*x + y over n floats. */
    void (*axpy)(dt_backend *be, long n, float a, const float *x, float *y);
    /* x *= a over n floats. */
    void (*scale)(dt_backend *be, long n, float a, float *x);
    /* dst(rows, cols) at leading dim ldd = a * src(rows, cols) at lds. */
    void (*copy2d)(dt_backend *be, float *dst, int ldd, const float *src,
                   int lds, int rows, int cols, float a);

    /* ---- attention ------------------------------------------------------ */
    /* Causal self-attention with grouped-query heads.
     * q(B,T,NH,D), k and v (B,T,NKV,D), out(B,T,NH,D); NH % NKV == 0.
     * Saves lse(B,NH,T), the log-sum-exp of each scaled score row, so that the
     * backward pass recomputes probabilities instead of keeping (T,T). */
    void (*attention_fwd)(dt_backend *be, float *out, float *lse,
                          const float *q, const float *k, const float *v,
                          int B, int T, int NH, int NKV, int D);
    /* dq, dk, dv are overwritten. */
    void (*attention_bwd)(dt_backend *be, float *dq, float *dk, float *dv,
                          const float *dout, const float *out,
                          const float *lse, const float *q, const float *k,
                          const float *v, int B, int T, int NH, int NKV, int D);

    /* ---- loss ------------------------------------------------------------ */
    /* Cross-entropy over logits(N,V) with targets(N) (-100 = masked).
     * Overwrites logits with dlogits * grad_scale (masked rows get 0) and
     * writes per-row loss into losses(N) (0 for masked rows). */
    void (*cross_entropy)(dt_backend *be, float *logits, float *losses,
                          const int32_t *targets, int N, int V,
                          float grad_scale);
    /* Sum of n floats, returned to the host (also used for losses). */
    double (*sum)(dt_backend *be, const float *x, long n);
    /* Sum of squares of n floats (for the global gradient norm). */
    double (*sumsq)(dt_backend *be, const float *x, long n);

    /* ---- optimizer -------------------------------------------------------- */
    /* One AdamW step, PyTorch semantics: p -= lr*wd*p; m,v updated;
     * p -= lr * mhat / (sqrt(vhat) + eps), with bias corrections bc1, bc2
     * (1 - beta^t) passed in. grad is multiplied by gscale first (clipping). */
    void (*adamw)(dt_backend *be, float *p, const float *g, float *m, float *v,
                  long n, float lr, float b1, float b2, float eps, float wd,
                  float bc1, float bc2, float gscale);
    /* The global squared gradient norm of a list of tensors (t: a host
     * array of count): each g reduced as sumsq() does, the results added in
     * list order, written to *out, a device double; no copy to the host. */
    void (*sumsq_multi)(dt_backend *be, double *out, const dt_opt_tensor *t,
                        int count);
    /* adamw() on every tensor of the list (t: a host array of count), with
     * gscale computed where the step runs from *sumsq (a device double, as
     * sumsq_multi writes it) by dt_clip_scale (dt_math.h): torch's
     * clip_grad_norm_ for max_norm > 0, 1 otherwise. When the norm is not
     * finite nothing is updated (the caller reports it). */
    void (*adamw_multi)(dt_backend *be, const dt_opt_tensor *t, int count,
                        float lr, float b1, float b2, float eps, float wd,
                        float bc1, float bc2, const double *sumsq,
                        float max_norm);

    /* Frees the backend itself. */
    void (*destroy)(dt_backend *be);

    /* ---- dropout and label smoothing (training only) -------------------- */
    /* y = x * keep_i / (1 - p) (acc = 0; y may be x) or y += that (acc = 1)
     * over n floats, keep_i = dt_drop_keep(key, i, dt_drop_thresh(p))
     * (dt_math.h). The mask is a pure function of (key, i): the backward
     * pass of a dropout is the same call on the gradient. */
    void (*dropout)(dt_backend *be, float *y, const float *x, long n, float p,
                    uint64_t key, int acc);
    /* attention_fwd / attention_bwd with dropout p on the probabilities
     * (as torch's attn_dropout after the softmax): element (b, h, i, j) of
     * P is kept by dt_drop_keep(key, ((b*NH + h)*T + i)*T + j, ..) and
     * scaled by 1/(1 - p); lse stays that of the undropped softmax. The
     * backward pass regenerates the mask. p = 0 is attention_fwd / _bwd. */
    void (*attention_fwd_drop)(dt_backend *be, float *out, float *lse,
                               const float *q, const float *k, const float *v,
                               int B, int T, int NH, int NKV, int D, float p,
                               uint64_t key);
    void (*attention_bwd_drop)(dt_backend *be, float *dq, float *dk, float *dv,
                               const float *dout, const float *out,
                               const float *lse, const float *q,
                               const float *k, const float *v, int B, int T,
                               int NH, int NKV, int D, float p, uint64_t key);
    /* cross_entropy with label smoothing eps, as torch's
     * CrossEntropyLoss(label_smoothing=eps): per-row loss
     * (1-eps)(lse - x_t) + eps (lse - mean_j x_j), gradient
     * softmax - (1-eps) onehot - eps/V; masked rows get 0. eps = 0 is
     * cross_entropy. */
    void (*cross_entropy_smooth)(dt_backend *be, float *logits, float *losses,
                                 const int32_t *targets, int N, int V,
                                 float grad_scale, float eps);

    /* ---- incremental decoding (gpu/generate.c) -------------------------- */
    /* rope on x(T,H,D) at positions pos0..pos0+T-1 (one sequence). */
    void (*rope_at)(dt_backend *be, float *x, int T, int H, int D,
                    float theta, int pos0);
    /* Causal attention of tq new query rows q(tq,NH,D) against a KV cache
     * k, v(tk,NKV,D) whose last tq rows are theirs: query i sits at
     * position tk - tq + i and sees keys 0..tk-tq+i. out(tq,NH,D). The same
     * scale and softmax as attention_fwd; NH % NKV == 0. */
    void (*attention_decode)(dt_backend *be, float *out, const float *q,
                             const float *k, const float *v, int tq, int tk,
                             int NH, int NKV, int D);

    /* ---- row selection and fused ops (no wasted work) ------------------- */
    /* dst(n,C) row i = src row idx[i]; idx(n) is a device int32 array of
     * row numbers (the LM head's predicted rows). */
    void (*gather_rows)(dt_backend *be, float *dst, const float *src,
                        const int32_t *idx, int n, int C);
    /* dst row idx[i] = src(n,C) row i; other rows of dst are untouched
     * (idx holds distinct rows). */
    void (*scatter_rows)(dt_backend *be, float *dst, const float *src,
                         const int32_t *idx, int n, int C);
    /* GPT-2's MLP: h(N,C) += bias(C) in place (h keeps the pre-activation
     * for the backward pass), out = gelu(h); one pass instead of add_bias
     * then gelu_fwd, bit-identical to them. */
    void (*bias_gelu_fwd)(dt_backend *be, float *out, float *h,
                          const float *bias, int N, int C);
    /* The residual add and the norm that follows it in one pass over the
     * rows: res = x + y (res may be x), copy = res when copy != NULL (the
     * next block's residual input), out = norm(res) as layernorm_fwd
     * (rms = 0; mean, rstd saved, b may be NULL) or rmsnorm_fwd (rms = 1;
     * mean unused, may be NULL). Bit-identical to the separate ops. */
    void (*residual_norm_fwd)(dt_backend *be, float *res, float *copy,
                              float *out, float *mean, float *rstd,
                              const float *x, const float *y, const float *w,
                              const float *b, int N, int C, float eps, int rms);
    /* ---- bf16 mixed precision (gpu/model_pass.c, --precision bf16) ------- */
    /* C(M,N) = alpha * op(bf16(A)) * op(W) + beta * C with W a bf16 matrix
     * (uint16_t bit patterns, row-major, leading dimension ldw) and A fp32,
     * rounded to bf16 (round to nearest even, dt_f32_to_bf16) before the
     * product; products and sums in fp32. The CUDA backend converts A into
     * a scratch buffer and calls cublasGemmEx (CUDA_R_16BF inputs,
     * CUBLAS_COMPUTE_32F); the CPU backend rounds both to fp32 copies and
     * calls sgemm, so the two agree to fp32 summation order. */
    void (*gemm_bf16w)(dt_backend *be, int ta, int tw, int M, int N, int K,
                       float alpha, const float *A, int lda, const uint16_t *W,
                       int ldw, float beta, float *C, int ldc);
    /* The math mode of the fp32 GEMMs: tf32 = 1 lets the CUDA backend use
     * TF32 tensor cores (--precision tf32); the CPU backend has none and
     * ignores it. */
    void (*set_tf32)(dt_backend *be, int tf32);

    /* ---- packing: several rows in one sequence (--packing) -------------- */
    /* pos(B*T) is a device int32 array: the position of each token within
     * its own row (0 at a row's first token, and at padding). Query i of a
     * sequence sees keys i - pos[i] .. i: causal within its row, keys of
     * the rows before it masked (a block-diagonal causal mask). */
    /* rope with the positions pos instead of 0..T-1. */
    void (*rope_pos)(dt_backend *be, float *x, const int32_t *pos, int B,
                     int T, int H, int D, float theta, int inverse);
    /* attention_fwd_drop / attention_bwd_drop under that mask (dropout as
     * there; p = 0: none). The CUDA backend runs its naive kernels for it
     * (the fused ones have no segments). */
    void (*attention_fwd_seg)(dt_backend *be, float *out, float *lse,
                              const float *q, const float *k, const float *v,
                              const int32_t *pos, int B, int T, int NH,
                              int NKV, int D, float p, uint64_t key);
    void (*attention_bwd_seg)(dt_backend *be, float *dq, float *dk, float *dv,
                              const float *dout, const float *out,
                              const float *lse, const float *q,
                              const float *k, const float *v,
                              const int32_t *pos, int B, int T, int NH,
                              int NKV, int D, float p, uint64_t key);
    /* Optional (NULL: callers loop over attention_decode): one new query
     * row for each of n sequences at once, q and out (n,NH,D); row i
     * attends to its own cache k[i], v[i] (tk[i],NKV,D; host arrays of
     * device pointers and lengths), its query at position tk[i] - 1. Row i
     * equals attention_decode(out_i, q_i, k[i], v[i], 1, tk[i], ...)
     * bitwise: the batched decode step's attention without one launch per
     * sequence. */
    void (*attention_decode_batch)(dt_backend *be, float *out, const float *q,
                                   const float *const *k, const float *const *v,
                                   const int *tk, int n, int NH, int NKV, int D);
    /* ---- bf16 embedding table (--precision bf16, lora / delta_lora) ----- */
    /* embedding_fwd with the table wte(V,C) in bf16 (uint16_t bit patterns,
     * the frozen table of bf16 mode): out(BT,C) = fp32(wte[ids]) (+ wpe[t]
     * when wpe != NULL, fp32); each element exact (bf16 widens to fp32
     * exactly), then one float add, so the CPU and CUDA backends agree
     * bitwise. */
    void (*embedding_fwd_bf16)(dt_backend *be, float *out, const int32_t *ids,
                               const uint16_t *wte, const float *wpe, int B,
                               int T, int C);
} dt_backend_i;

struct dt_backend {
    dt_backend_i i;
    void *ctx;   /* backend private state */
    int threads; /* CPU threads (CPU backend) */
    /* Peak memory: the CPU backend counts its own live allocations; the CUDA
     * backend records the device's memory in use (cudaMemGetInfo: total -
     * free, context and workspaces included) after each allocation. */
    size_t live_bytes, peak_bytes;
    size_t total_bytes; /* CUDA: the device's memory (0: unknown, CPU) */
    int bf16_fast;      /* 1: the device has bf16 tensor cores (CUDA compute
                           capability >= 8.0): --precision defaults to bf16 */
};

/* Creates the backend named by `device`: "cpu", "cuda", "cuda:N" or "auto"
 * (CUDA when a device is usable, else CPU). NULL with detail in err. */
dt_backend *dt_backend_new(const char *device, int threads, char *err);
void dt_backend_free(dt_backend *be);

/* RoPE's table cs(T, D/2, 2): cs[2*(t*D/2 + i)] = cos, [.. + 1] = sin of
 * the angle of position t, pair i, as Hugging Face computes it in fp32:
 * inv_freq = 1 / theta^((2i)/D), angle = (float)t * inv_freq. pow, cos and
 * sin are evaluated in double and rounded once, on the host, so every
 * backend rotates by exactly the same floats. */
void dt_rope_table(float *cs, int T, int D, float theta);
/* RoPE with Llama 3 scaling (factor, low/high frequency factors, original
 * context): returns a key to pass as the ops' theta argument (a negative
 * value; identical parameters give the same key), which dt_rope_table maps
 * back to the base theta and the scaled frequencies. factor 0: returns theta
 * itself. */
float dt_rope_key(float theta, float factor, float low, float high, int orig);

dt_backend *dt_backend_cpu_new(int threads, char *err);
/* Defined by backend_cuda.cu; a stub that fails clearly when built without
 * nvcc. */
dt_backend *dt_backend_cuda_new(int device, char *err);
int dt_backend_cuda_available(void);
/* 1 when CUDA device `device` has bf16 tensor cores (compute capability >=
 * 8.0), as dt_backend.bf16_fast says once created; 0 otherwise or without
 * CUDA. For the memory estimate, before any backend exists. */
int dt_backend_cuda_bf16(int device);
/* The memory of CUDA device `device` in bytes (0 without CUDA), for the
 * estimate's budget before any backend exists. */
size_t dt_backend_cuda_total(int device);

#endif
