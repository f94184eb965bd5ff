/* backend_cuda.cu: the CUDA backend (cuBLAS GEMMs + fp32 kernels).
 *
 * Implements the table of backend.h on one device and one stream; the
 * attention ops live in cuda_attention.cu, the optimizer's multi-tensor ops
 * in cuda_optim.cu, what they share in cuda_internal.cuh. Per-element math comes from dt_math.h, the same
 * functions the CPU backend calls, so the CPU tests cover the formulas this
 * file runs.
 *
 * Errors: every CUDA/cuBLAS call goes through CU()/CUBLAS(), which record the
 * first failure with file:line in the context; sync() reports it. A device
 * error (DT_EDEVICE) is sticky: from then on the compute ops do nothing. A
 * workspace that cannot grow (DT_ENOMEM) or a bad shape (DT_EINVAL) is
 * cleared once sync() reported it.
 * Running out of memory in alloc() is no error at all: alloc returns NULL and
 * remembers the requested size (dt_backend_cuda_oom_bytes) for the caller;
 * any other cudaMalloc failure is a sticky DT_EDEVICE with CUDA's string.
 * peak_bytes is the device's memory in use after every cudaMalloc, the
 * workspace and the RoPE table included.
 *
 * Determinism: no float atomics. Column sums (bias, norm weights) use
 * per-chunk partials reduced in a fixed order; embedding_bwd groups tokens by
 * id on the host (stable; the caller passes the host's ids) and adds them in
 * token order; attention sums the
 * query heads of a kv group inside one GEMM (K = rep*T). Results are bitwise
 * repeatable on one device. The fp32 GEMMs use TF32 only when asked
 * (set_tf32: --precision tf32, or DT_TF32=1 from creation on, its alias);
 * bf16 GEMMs (gemm_bf16w) accumulate in fp32. */
#include "cuda_internal.cuh"

#include <cuda_bf16.h>

extern "C" size_t dt_backend_cuda_oom_bytes(dt_backend *be);

/* =========================================================================
 * context helpers
 * ========================================================================= */

void cuda_fail(cuda_ctx *c, int code, const char *what, const char *detail,
               const char *file, int line)
{
    if (c->err)
        return;
    c->err = code;
    snprintf(c->msg, sizeof c->msg, "%s:%d: %s: %s", file, line, what, detail);
}

int cu_check(cuda_ctx *c, cudaError_t e, const char *what, const char *file,
             int line)
{
    if (e == cudaSuccess)
        return 0;
    /* Out of memory leaves the CUDA context usable: clear it there. */
    int code = DT_EDEVICE;
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        code = DT_ENOMEM;
    }
    cuda_fail(c, code, what, cudaGetErrorString(e), file, line);
    return -1;
}

int cublas_check(cuda_ctx *c, cublasStatus_t s, const char *what,
                 const char *file, int line)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    cuda_fail(c, s == CUBLAS_STATUS_ALLOC_FAILED ? DT_ENOMEM : DT_EDEVICE,
              what, cublasGetStatusString(s), file, line);
    return -1;
}

/* Records the device's memory in use (total - free: every allocation, the
 * workspace and the RoPE table included) when it is a new peak. Memory only
 * grows in cudaMalloc, so calling this after each one sees the peak. */
static void note_peak(cuda_ctx *c)
{
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) == cudaSuccess && tot - fr > c->be->peak_bytes)
        c->be->peak_bytes = tot - fr;
}

int dev_malloc(cuda_ctx *c, void **p, size_t bytes)
{
    *p = NULL;
    if (CU(c, cudaMalloc(p, bytes ? bytes : 1)) != 0) {
        *p = NULL;
        return -1;
    }
    note_peak(c);
    return 0;
}

void *ws_get(cuda_ctx *c, size_t bytes)
{
    if (bytes <= c->ws_bytes)
        return c->ws;
    if (c->ws)
        CU(c, cudaFree(c->ws));
    c->ws = NULL;
    c->ws_bytes = 0;
    size_t want = bytes + bytes / 4;
    if (dev_malloc(c, &c->ws, want) != 0)
        return NULL;
    c->ws_bytes = want;
    return c->ws;
}

/* =========================================================================
 * kernels
 * ========================================================================= */

static __device__ float block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float x = lane < (int)(blockDim.x >> 5) ? sh[lane] : -INFINITY;
        x = warp_max(x);
        if (lane == 0)
            sh[0] = x;
    }
    __syncthreads();
    return sh[0];
}

/* ---- embedding ----------------------------------------------------------- */

/* out(BT,C) = wte[ids] (+ wpe[t]). Negative ids give a zero row. */
static __global__ void k_embedding_fwd(float *out, const int32_t *ids,
                                       const float *wte, const float *wpe,
                                       int T, int C, long n)
{
    GRID_STRIDE(i, n) {
        long bt = i / C;
        int c = (int)(i % C), t = (int)(bt % T), id = ids[bt];
        float v = id >= 0 ? wte[(long)id * C + c] : 0.0f;
        if (wpe)
            v += wpe[(long)t * C + c];
        out[i] = v;
    }
}

/* k_embedding_fwd over a bf16 table: the bf16 bits widened to fp32
 * (exact), as dt_bf16_to_f32 does on the host. */
static __global__ void k_embedding_fwd_bf16(float *out, const int32_t *ids,
                                            const __nv_bfloat16 *wte,
                                            const float *wpe, int T, int C,
                                            long n)
{
    GRID_STRIDE(i, n) {
        long bt = i / C;
        int c = (int)(i % C), t = (int)(bt % T), id = ids[bt];
        float v = id >= 0 ? __bfloat162float(wte[(long)id * C + c]) : 0.0f;
        if (wpe)
            v += wpe[(long)t * C + c];
        out[i] = v;
    }
}

/* One block column per distinct id (seg), one thread per channel: adds the
 * tokens of that id in token order, as a sequential loop would. */
static __global__ void k_embedding_bwd_wte(float *dwte, const float *dout,
                                           const int *order,
                                           const int *seg_start,
                                           const int *seg_id, int C)
{
    int s = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    float *row = dwte + (long)seg_id[s] * C + c;
    float v = *row;
    for (int j = seg_start[s]; j < seg_start[s + 1]; j++)
        v += dout[(long)order[j] * C + c];
    *row = v;
}

/* dwpe[t] += sum over b of dout[b,t], in b order. */
static __global__ void k_embedding_bwd_wpe(float *dwpe, const float *dout,
                                           int B, int T, int C)
{
    GRID_STRIDE(i, (long)T * C) {
        float v = dwpe[i];
        for (int b = 0; b < B; b++)
            v += dout[(long)b * T * C + i];
        dwpe[i] = v;
    }
}

/* ---- normalization (one warp per row) ------------------------------------ */

static __global__ void k_layernorm_fwd(float *out, float *mean, float *rstd,
                                       const float *inp, const float *w,
                                       const float *b, int N, int C, float eps)
{
    WARP_ROW(row, lane, N);
    const float *x = inp + (long)row * C;
    float s = 0.0f;
    for (int i = lane; i < C; i += 32)
        s += x[i];
    float m = warp_sum(s) / C;
    float v = 0.0f;
    for (int i = lane; i < C; i += 32)
        v += (x[i] - m) * (x[i] - m);
    float r = 1.0f / sqrtf(warp_sum(v) / C + eps);
    float *o = out + (long)row * C;
    for (int i = lane; i < C; i += 32) {
        float y = (x[i] - m) * r * w[i];
        o[i] = b ? y + b[i] : y;
    }
    if (lane == 0) {
        if (mean)
            mean[row] = m;
        if (rstd)
            rstd[row] = r;
    }
}

/* dinp += (w*dout - mean(w*dout) - norm * mean(w*dout*norm)) * rstd. */
static __global__ void k_layernorm_bwd_dinp(float *dinp, const float *dout,
                                            const float *inp, const float *w,
                                            const float *mean,
                                            const float *rstd, int N, int C)
{
    WARP_ROW(row, lane, N);
    long off = (long)row * C;
    float m = mean[row], r = rstd[row], s1 = 0.0f, s2 = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float dn = w[i] * dout[off + i];
        s1 += dn;
        s2 += dn * (inp[off + i] - m) * r;
    }
    s1 = warp_sum(s1) / C;
    s2 = warp_sum(s2) / C;
    for (int i = lane; i < C; i += 32) {
        float n = (inp[off + i] - m) * r;
        dinp[off + i] += (w[i] * dout[off + i] - s1 - n * s2) * r;
    }
}

static __global__ void k_rmsnorm_fwd(float *out, float *rstd, const float *inp,
                                     const float *w, int N, int C, float eps)
{
    WARP_ROW(row, lane, N);
    const float *x = inp + (long)row * C;
    float s = 0.0f;
    for (int i = lane; i < C; i += 32)
        s += x[i] * x[i];
    float r = 1.0f / sqrtf(warp_sum(s) / C + eps);
    for (int i = lane; i < C; i += 32)
        out[(long)row * C + i] = w[i] * (x[i] * r);
    if (lane == 0 && rstd)
        rstd[row] = r;
}

/* dinp += rstd * (w*dout - norm * mean(w*dout*norm)), norm = x*rstd. */
static __global__ void k_rmsnorm_bwd_dinp(float *dinp, const float *dout,
                                          const float *inp, const float *w,
                                          const float *rstd, int N, int C)
{
    WARP_ROW(row, lane, N);
    long off = (long)row * C;
    float r = rstd[row], s = 0.0f;
    for (int i = lane; i < C; i += 32)
        s += (dout[off + i] * w[i]) * (inp[off + i] * r);
    s = warp_sum(s) / C;
    for (int i = lane; i < C; i += 32)
        dinp[off + i] += r * (dout[off + i] * w[i] - inp[off + i] * r * s);
}

/* Column sums in two passes, deterministic. Pass 1: part(nchunk, C), one
 * thread per column summing a chunk of rows in order. Each term is
 *   mode 0: dy            (bias, LayerNorm db)
 *   mode 1: dy * (x - mean) * rstd   (LayerNorm dw)
 *   mode 2: dy * x * rstd            (RMSNorm dw)
 * Pass 2: out[c] += sum over chunks in order. */
static __global__ void k_colsum_part(float *part, const float *dy,
                                     const float *x, const float *mean,
                                     const float *rstd, int N, int C,
                                     int rows, int mode)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    int r0 = blockIdx.y * rows, r1 = min(N, r0 + rows);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) {
        long i = (long)r * C + c;
        float v = dy[i];
        if (mode == 1)
            v *= (x[i] - mean[r]) * rstd[r];
        else if (mode == 2)
            v *= x[i] * rstd[r];
        acc += v;
    }
    part[(long)blockIdx.y * C + c] = acc;
}

static __global__ void k_colsum_final(float *out, const float *part,
                                      int nchunk, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    float acc = 0.0f;
    for (int k = 0; k < nchunk; k++)
        acc += part[(long)k * C + c];
    out[c] += acc;
}

/* ---- elementwise ----------------------------------------------------------- */

static __global__ void k_gelu_fwd(float *out, const float *inp, long n)
{
    GRID_STRIDE(i, n) out[i] = dt_gelu_tanh(inp[i]);
}

static __global__ void k_gelu_bwd(float *dinp, const float *inp,
                                  const float *dout, long n)
{
    GRID_STRIDE(i, n) dinp[i] += dt_gelu_tanh_grad(inp[i]) * dout[i];
}

static __global__ void k_swiglu_fwd(float *out, const float *gate,
                                    const float *up, long n)
{
    GRID_STRIDE(i, n) out[i] = dt_swiglu(gate[i], up[i]);
}

static __global__ void k_swiglu_bwd(float *dgate, float *dup, const float *dout,
                                    const float *gate, const float *up, long n)
{
    GRID_STRIDE(i, n) {
        float dg, du;
        dt_swiglu_grad(dout[i], gate[i], up[i], &dg, &du);
        dgate[i] = dg;
        dup[i] = du;
    }
}

/* One thread per (b, t, h, pair i); cos/sin from the host's table
 * cs(T, D/2, 2). */
static __global__ void k_rope(float *x, const float *cs, int T, int H, int D,
                              int inverse, long n)
{
    int half = D / 2;
    GRID_STRIDE(j, n) {
        int i = (int)(j % half);
        long bth = j / half;
        int t = (int)((bth / H) % T);
        float *v = x + bth * D;
        const float *p = cs + 2 * ((long)t * half + i);
        dt_rope_apply(&v[i], &v[i + half], p[0], p[1], inverse);
    }
}

/* k_rope at the positions pos(B*T) (packing): one thread per (b, t, h,
 * pair i). */
static __global__ void k_rope_pos(float *x, const float *cs,
                                  const int32_t *pos, int H, int D,
                                  int inverse, long n)
{
    int half = D / 2;
    GRID_STRIDE(j, n) {
        int i = (int)(j % half);
        long bth = j / half;
        long t = pos[bth / H];
        float *v = x + bth * D;
        const float *p = cs + 2 * (t * half + i);
        dt_rope_apply(&v[i], &v[i + half], p[0], p[1], inverse);
    }
}

static __global__ void k_add_bias(float *y, const float *bias, int C, long n)
{
    GRID_STRIDE(i, n) y[i] += bias[i % C];
}

/* y = bf16(x), round to nearest even (as dt_f32_to_bf16 on the host). */
static __global__ void k_to_bf16(__nv_bfloat16 *y, const float *x, long n)
{
    GRID_STRIDE(i, n) y[i] = __float2bfloat16(x[i]);
}

static __global__ void k_axpy(long n, float a, const float *x, float *y)
{
    GRID_STRIDE(i, n) y[i] = a * x[i] + y[i];
}

static __global__ void k_scale(long n, float a, float *x)
{
    GRID_STRIDE(i, n) x[i] *= a;
}

static __global__ void k_copy2d(float *dst, int ldd, const float *src, int lds,
                                int cols, float a, long n)
{
    GRID_STRIDE(i, n) {
        long r = i / cols;
        int c = (int)(i % cols);
        dst[r * ldd + c] = a * src[r * lds + c];
    }
}

static __global__ void k_adamw(float *p, const float *g, float *m, float *v,
                               long n, float lr, float b1, float b2, float eps,
                               float wd, float bc1, float bc2, float gscale)
{
    GRID_STRIDE(i, n)
        dt_adamw_step(&p[i], g[i], &m[i], &v[i], lr, b1, b2, eps, wd, bc1, bc2,
                      gscale);
}

/* ---- loss and reductions ----------------------------------------------------- */

/* One block per row. Out-of-range targets count as masked. */
static __global__ void k_cross_entropy(float *logits, float *losses,
                                       const int32_t *targets, int V,
                                       float grad_scale)
{
    __shared__ float sh[32];
    long row = blockIdx.x;
    float *x = logits + row * V;
    int tgt = targets[row];
    if (tgt < 0 || tgt >= V) {
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            x[i] = 0.0f;
        if (threadIdx.x == 0)
            losses[row] = 0.0f;
        return;
    }
    float xt = x[tgt]; /* read before the row is overwritten */
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        m = fmaxf(m, x[i]);
    m = block_max(m, sh);
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        s += expf(x[i] - m);
    s = block_sum(s, sh);
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float p = expf(x[i] - m) / s;
        x[i] = (p - (i == tgt ? 1.0f : 0.0f)) * grad_scale;
    }
    if (threadIdx.x == 0)
        losses[row] = logf(s) + m - xt;
}

/* cross_entropy with label smoothing eps (dt_ce_smooth_loss): one block
 * per row, sums of x and exp in fixed block order. */
static __global__ void k_cross_entropy_smooth(float *logits, float *losses,
                                              const int32_t *targets, int V,
                                              float grad_scale, float eps)
{
    __shared__ float sh[32];
    __shared__ double shd[32];
    long row = blockIdx.x;
    float *x = logits + row * V;
    int tgt = targets[row];
    if (tgt < 0 || tgt >= V) {
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            x[i] = 0.0f;
        if (threadIdx.x == 0)
            losses[row] = 0.0f;
        return;
    }
    float xt = x[tgt];
    float m = -INFINITY;
    double sx = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        m = fmaxf(m, x[i]);
        sx += x[i];
    }
    m = block_max(m, sh);
    sx = block_sum(sx, shd);
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        s += expf(x[i] - m);
    s = block_sum(s, sh);
    float u = eps / (float)V;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float p = expf(x[i] - m) / s;
        x[i] = (p - u - (i == tgt ? 1.0f - eps : 0.0f)) * grad_scale;
    }
    if (threadIdx.x == 0)
        losses[row] = dt_ce_smooth_loss((double)m + log((double)s), xt, sx / V,
                                        eps);
}

/* y = (acc ? y : 0) + dropout(x) (dt_dropout); y may be x when !acc. */
static __global__ void k_dropout(float *y, const float *x, long n,
                                 uint64_t key, uint32_t thr, float scale,
                                 int acc)
{
    GRID_STRIDE(i, n) {
        float d = dt_dropout(x[i], key, (uint64_t)i, thr, scale);
        y[i] = acc ? y[i] + d : d;
    }
}

/* part[block] = sum (or sum of squares) of a grid-stride slice, in double. */
static __global__ void k_sum_part(double *part, const float *x, long n, int sq)
{
    __shared__ double sh[32];
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        double v = x[i];
        acc += sq ? v * v : v;
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0)
        part[blockIdx.x] = acc;
}

static __global__ void k_sum_final(double *out, const double *part, int nb)
{
    __shared__ double sh[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < nb; i += blockDim.x)
        acc += part[i];
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0)
        *out = acc;
}

/* =========================================================================
 * launchers
 * ========================================================================= */

/* Out of memory is no error: NULL, and the size is remembered
 * (dt_backend_cuda_oom_bytes). Any other failure (a sticky device fault)
 * is recorded as DT_EDEVICE with CUDA's error string for sync(). The memory
 * is not zeroed (backend.h). */
static void *cuda_alloc(dt_backend *be, size_t bytes)
{
    cuda_ctx *c = ctx_of(be);
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError(); /* out of memory is not sticky */
        c->oom_bytes = bytes;
        return NULL;
    }
    if (cu_check(c, e, "cudaMalloc", __FILE__, __LINE__) != 0)
        return NULL;
    note_peak(c);
    return p;
}

static void cuda_free(dt_backend *be, void *p)
{
    if (p)
        CU(ctx_of(be), cudaFree(p));
}

static void cuda_upload(dt_backend *be, void *dst, const void *src,
                        size_t bytes)
{
    cuda_ctx *c = ctx_of(be);
    CU(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
}

static void cuda_download(dt_backend *be, void *dst, const void *src,
                          size_t bytes)
{
    cuda_ctx *c = ctx_of(be);
    CU(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CU(c, cudaStreamSynchronize(c->stream));
}

static void cuda_copy(dt_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_ctx *c = ctx_of(be);
    CU(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
}

static void cuda_memset0(dt_backend *be, void *p, size_t bytes)
{
    cuda_ctx *c = ctx_of(be);
    CU(c, cudaMemsetAsync(p, 0, bytes, c->stream));
}

static int cuda_sync(dt_backend *be, char *err)
{
    cuda_ctx *c = ctx_of(be);
    CU(c, cudaStreamSynchronize(c->stream));
    CU(c, cudaGetLastError());
    int code = c->err;
    if (!code)
        return 0;
    dt_errf(err, code, "CUDA device %d: %s", c->device, c->msg);
    if (code != DT_EDEVICE) { /* ENOMEM, EINVAL: the context is still usable */
        c->err = 0;
        c->msg[0] = 0;
    }
    return code;
}

/* Row-major C = alpha op(A) op(B) + beta C as the column-major product
 * C^T = op(B)^T op(A)^T: swap the operands, keep the op flags. */
void gemm_rm(cuda_ctx *c, int ta, int tb, int M, int N, int K, float alpha,
             const float *A, int lda, long sA, const float *B, int ldb,
             long sB, float beta, float *C, int ldc, long sC, int batch)
{
    if (c->err || M <= 0 || N <= 0 || batch <= 0)
        return;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        CUBLAS(c, cublasSgemm(c->blas, opb, opa, N, M, K, &alpha, B, ldb, A,
                              lda, &beta, C, ldc));
    else
        CUBLAS(c, cublasSgemmStridedBatched(c->blas, opb, opa, N, M, K, &alpha,
                                            B, ldb, sB, A, lda, sA, &beta, C,
                                            ldc, sC, batch));
}

static void cuda_gemm(dt_backend *be, int ta, int tb, int M, int N, int K,
                      float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc)
{
    gemm_rm(ctx_of(be), ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C,
            ldc, 0, 1);
}

static void cuda_gemm_batched(dt_backend *be, int ta, int tb, int M, int N,
                              int K, float alpha, const float *A, int lda,
                              long sA, const float *B, int ldb, long sB,
                              float beta, float *C, int ldc, long sC, int batch)
{
    gemm_rm(ctx_of(be), ta, tb, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C,
            ldc, sC, batch);
}

static void cuda_embedding_fwd(dt_backend *be, float *out, const int32_t *ids,
                               const float *wte, const float *wpe, int B,
                               int T, int C)
{
    cuda_ctx *c = ctx_of(be);
    long n = (long)B * T * C;
    if (c->err || n <= 0)
        return;
    DT_LAUNCH(k_embedding_fwd, blocks_for(n, EW_THREADS), EW_THREADS, 0, c->stream)(
        out, ids, wte, wpe, T, C, n);
    LAUNCHED(c);
}

static void cuda_embedding_fwd_bf16(dt_backend *be, float *out,
                                    const int32_t *ids, const uint16_t *wte,
                                    const float *wpe, int B, int T, int C)
{
    cuda_ctx *c = ctx_of(be);
    long n = (long)B * T * C;
    if (c->err || n <= 0)
        return;
    DT_LAUNCH(k_embedding_fwd_bf16, blocks_for(n, EW_THREADS), EW_THREADS, 0,
              c->stream)(out, ids, (const __nv_bfloat16 *)wte, wpe, T, C, n);
    LAUNCHED(c);
}

static int cmp_id_pos(const void *a, const void *b)
{
    const int *x = (const int *)a, *y = (const int *)b;
    if (x[0] != y[0])
        return x[0] < y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

/* dwte: the host's ids (no copy back) are grouped by id (stable: ties keep
 * token order) and go up as (order, seg_start, seg_id); one kernel row per
 * id. */
static void cuda_embedding_bwd(dt_backend *be, float *dwte, float *dwpe,
                               const float *dout, const int32_t *ids, int B,
                               int T, int C)
{
    cuda_ctx *c = ctx_of(be);
    int n = B * T;
    if (c->err || n <= 0 || C <= 0)
        return;
    if (dwpe) {
        long m = (long)T * C;
        DT_LAUNCH(k_embedding_bwd_wpe, blocks_for(m, EW_THREADS), EW_THREADS, 0,
                  c->stream)(dwpe, dout, B, T, C);
        LAUNCHED(c);
    }
    if (!dwte)
        return;
    size_t need = 5 * (size_t)n + 1; /* pairs(2n), order, start, seg */
    if (c->hbuf_n < need) {
        int *h = (int *)realloc(c->hbuf, need * sizeof(int));
        if (!h) {
            cuda_fail(c, DT_ENOMEM, "embedding_bwd", "host out of memory",
                      __FILE__, __LINE__);
            return;
        }
        c->hbuf = h;
        c->hbuf_n = need;
    }
    const int32_t *hid = ids;
    int *pairs = c->hbuf, *order = pairs + 2 * n;
    int *start = order + n, *seg = start + n + 1;
    int *dws = (int *)ws_get(c, (3 * (size_t)n + 1) * sizeof(int));
    if (!dws)
        return;
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (hid[i] < 0)
            continue; /* matches the zero row of embedding_fwd */
        pairs[2 * m] = hid[i];
        pairs[2 * m + 1] = i;
        m++;
    }
    qsort(pairs, m, 2 * sizeof(int), cmp_id_pos);
    int nseg = 0;
    for (int j = 0; j < m; j++) {
        order[j] = pairs[2 * j + 1];
        if (j == 0 || pairs[2 * j] != pairs[2 * j - 2]) {
            seg[nseg] = pairs[2 * j];
            start[nseg++] = j;
        }
    }
    start[nseg] = m;
    if (nseg == 0)
        return;
    /* Device layout: order(m) start(nseg+1) seg(nseg). */
    int *dorder = dws, *dstart = dws + m, *dseg = dstart + nseg + 1;
    CU(c, cudaMemcpyAsync(dorder, order, m * sizeof(int),
                          cudaMemcpyHostToDevice, c->stream));
    CU(c, cudaMemcpyAsync(dstart, start, (nseg + 1) * sizeof(int),
                          cudaMemcpyHostToDevice, c->stream));
    CU(c, cudaMemcpyAsync(dseg, seg, nseg * sizeof(int),
                          cudaMemcpyHostToDevice, c->stream));
    dim3 grid(nseg, (C + 127) / 128);
    DT_LAUNCH(k_embedding_bwd_wte, grid, 128, 0, c->stream)(dwte, dout, dorder,
                                                     dstart, dseg, C);
    LAUNCHED(c);
}

/* out[c] += column sums of the terms chosen by mode (see k_colsum_part). */
static void colsum(cuda_ctx *c, float *out, const float *dy, const float *x,
                   const float *mean, const float *rstd, int N, int C,
                   int mode)
{
    if (c->err || !out || N <= 0 || C <= 0)
        return;
    int nchunk = (N + 31) / 32;
    if (nchunk > 1024)
        nchunk = 1024;
    int rows = (N + nchunk - 1) / nchunk;
    nchunk = (N + rows - 1) / rows;
    float *part = (float *)ws_get(c, (size_t)nchunk * C * sizeof(float));
    if (!part)
        return;
    dim3 grid((C + 255) / 256, nchunk);
    DT_LAUNCH(k_colsum_part, grid, 256, 0, c->stream)(part, dy, x, mean, rstd, N, C,
                                               rows, mode);
    LAUNCHED(c);
    DT_LAUNCH(k_colsum_final, (C + 255) / 256, 256, 0, c->stream)(out, part, nchunk,
                                                           C);
    LAUNCHED(c);
}

static void cuda_layernorm_fwd(dt_backend *be, float *out, float *mean,
                               float *rstd, const float *inp, const float *w,
                               const float *b, int N, int C, float eps)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err || N <= 0)
        return;
    DT_LAUNCH(k_layernorm_fwd, row_blocks(N), 32 * ROWS_PER_BLOCK, 0, c->stream)(
        out, mean, rstd, inp, w, b, N, C, eps);
    LAUNCHED(c);
}

static void cuda_layernorm_bwd(dt_backend *be, float *dinp, float *dw,
                               float *db, const float *dout, const float *inp,
                               const float *w, const float *mean,
                               const float *rstd, int N, int C)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err || N <= 0)
        return;
    DT_LAUNCH(k_layernorm_bwd_dinp, row_blocks(N), 32 * ROWS_PER_BLOCK, 0, c->stream)(
        dinp, dout, inp, w, mean, rstd, N, C);
    LAUNCHED(c);
    colsum(c, dw, dout, inp, mean, rstd, N, C, 1);
    colsum(c, db, dout, NULL, NULL, NULL, N, C, 0);
}

static void cuda_rmsnorm_fwd(dt_backend *be, float *out, float *rstd,
                             const float *inp, const float *w, int N, int C,
                             float eps)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err || N <= 0)
        return;
    DT_LAUNCH(k_rmsnorm_fwd, row_blocks(N), 32 * ROWS_PER_BLOCK, 0, c->stream)(
        out, rstd, inp, w, N, C, eps);
    LAUNCHED(c);
}

static void cuda_rmsnorm_bwd(dt_backend *be, float *dinp, float *dw,
                             const float *dout, const float *inp,
                             const float *w, const float *rstd, int N, int C)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err || N <= 0)
        return;
    DT_LAUNCH(k_rmsnorm_bwd_dinp, row_blocks(N), 32 * ROWS_PER_BLOCK, 0, c->stream)(
        dinp, dout, inp, w, rstd, N, C);
    LAUNCHED(c);
    colsum(c, dw, dout, inp, NULL, rstd, N, C, 2);
}

/* Elementwise launches share one shape: a grid-stride loop over n. */
#define EW_LAUNCH(c, n, kernel, ...)                                          \
    do {                                                                      \
        if ((c)->err || (n) <= 0)                                             \
            return;                                                           \
        DT_LAUNCH(kernel, blocks_for((n), EW_THREADS), EW_THREADS, 0, (c)->stream)(  \
            __VA_ARGS__);                                                     \
        LAUNCHED(c);                                                          \
    } while (0)

static void cuda_gelu_fwd(dt_backend *be, float *out, const float *inp, long n)
{
    EW_LAUNCH(ctx_of(be), n, k_gelu_fwd, out, inp, n);
}

static void cuda_gelu_bwd(dt_backend *be, float *dinp, const float *inp,
                          const float *dout, long n)
{
    EW_LAUNCH(ctx_of(be), n, k_gelu_bwd, dinp, inp, dout, n);
}

static void cuda_swiglu_fwd(dt_backend *be, float *out, const float *gate,
                            const float *up, long n)
{
    EW_LAUNCH(ctx_of(be), n, k_swiglu_fwd, out, gate, up, n);
}

static void cuda_swiglu_bwd(dt_backend *be, float *dgate, float *dup,
                            const float *dout, const float *gate,
                            const float *up, long n)
{
    EW_LAUNCH(ctx_of(be), n, k_swiglu_bwd, dgate, dup, dout, gate, up, n);
}

/* The RoPE table on the device, or NULL with the error recorded: computed
 * on the host (dt_rope_table, as the CPU backend does) and uploaded once per
 * (D, theta), again only when T grows. */
static const float *rope_table(dt_backend *be, int T, int D, float theta)
{
    cuda_ctx *c = ctx_of(be);
    if (c->rope && c->rope_D == D && c->rope_theta == theta && c->rope_T >= T)
        return c->rope;
    size_t bytes = (size_t)T * (D / 2) * 2 * sizeof(float);
    float *h = (float *)malloc(bytes + 1);
    if (!h) {
        cuda_fail(c, DT_ENOMEM, "rope", "host out of memory", __FILE__,
                  __LINE__);
        return NULL;
    }
    dt_rope_table(h, T, D, theta);
    if (c->rope)
        CU(c, cudaFree(c->rope));
    c->rope = NULL;
    c->rope_T = 0;
    if (dev_malloc(c, (void **)&c->rope, bytes) == 0) {
        CU(c, cudaMemcpyAsync(c->rope, h, bytes, cudaMemcpyHostToDevice,
                              c->stream));
        /* once per model: h is freed only after the copy has read it */
        CU(c, cudaStreamSynchronize(c->stream));
    }
    free(h);
    if (c->err)
        return NULL;
    c->rope_T = T;
    c->rope_D = D;
    c->rope_theta = theta;
    return c->rope;
}

static void cuda_rope(dt_backend *be, float *x, int B, int T, int H, int D,
                      float theta, int inverse)
{
    long n = (long)B * T * H * (D / 2);
    cuda_ctx *c = ctx_of(be);
    if (c->err || n <= 0)
        return;
    const float *cs = rope_table(be, T, D, theta);
    if (!cs)
        return;
    EW_LAUNCH(c, n, k_rope, x, cs, T, H, D, inverse, n);
}

/* pos[r] < T (a position within a row of the sequence): the table of T
 * positions covers them. */
static void cuda_rope_pos(dt_backend *be, float *x, const int32_t *pos, int B,
                          int T, int H, int D, float theta, int inverse)
{
    long n = (long)B * T * H * (D / 2);
    cuda_ctx *c = ctx_of(be);
    if (c->err || n <= 0)
        return;
    const float *cs = rope_table(be, T, D, theta);
    if (!cs)
        return;
    EW_LAUNCH(c, n, k_rope_pos, x, cs, pos, H, D, inverse, n);
}

/* rope on x(T,H,D) at positions pos0..: one thread per (t, h, pair i). */
static __global__ void k_rope_at(float *x, const float *cs, int H, int D,
                                 int pos0, long n)
{
    int half = D / 2;
    GRID_STRIDE(j, n) {
        int i = (int)(j % half);
        long th = j / half;
        long t = th / H;
        float *v = x + th * D;
        const float *p = cs + 2 * ((pos0 + t) * half + i);
        dt_rope_apply(&v[i], &v[i + half], p[0], p[1], 0);
    }
}

static void cuda_rope_at(dt_backend *be, float *x, int T, int H, int D,
                         float theta, int pos0)
{
    long n = (long)T * H * (D / 2);
    cuda_ctx *c = ctx_of(be);
    if (c->err || n <= 0)
        return;
    /* the table grows in steps of 256 positions, not one per token */
    const float *cs = rope_table(be, (pos0 + T + 255) / 256 * 256, D, theta);
    if (!cs)
        return;
    EW_LAUNCH(c, n, k_rope_at, x, cs, H, D, pos0, n);
}

static void cuda_add_bias(dt_backend *be, float *y, const float *bias, int N,
                          int C)
{
    long n = (long)N * C;
    EW_LAUNCH(ctx_of(be), n, k_add_bias, y, bias, C, n);
}

static void cuda_bias_bwd(dt_backend *be, float *dbias, const float *dy, int N,
                          int C)
{
    colsum(ctx_of(be), dbias, dy, NULL, NULL, NULL, N, C, 0);
}

/* gemm_bf16w (backend.h): A rounded to bf16 into a scratch buffer kept by
 * the context (grown, never shrunk), then one cublasGemmEx with bf16 inputs
 * and fp32 accumulation and output, operands swapped as in gemm_rm. */
static void cuda_gemm_bf16w(dt_backend *be, int ta, int tw, int M, int N,
                            int K, float alpha, const float *A, int lda,
                            const uint16_t *W, int ldw, float beta, float *C,
                            int ldc)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err || M <= 0 || N <= 0)
        return;
    long na = (long)(ta ? K : M) * lda;
    size_t bytes = (size_t)na * sizeof(__nv_bfloat16);
    if (bytes > c->bf16_ws_bytes) {
        if (c->bf16_ws)
            CU(c, cudaFree(c->bf16_ws));
        c->bf16_ws = NULL;
        c->bf16_ws_bytes = 0;
        if (dev_malloc(c, &c->bf16_ws, bytes) != 0)
            return;
        c->bf16_ws_bytes = bytes;
    }
    __nv_bfloat16 *a = (__nv_bfloat16 *)c->bf16_ws;
    EW_LAUNCH(c, na, k_to_bf16, a, A, na);
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opw = tw ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS(c, cublasGemmEx(c->blas, opw, opa, N, M, K, &alpha, W, CUDA_R_16BF,
                           ldw, a, CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc,
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static void cuda_set_tf32(dt_backend *be, int tf32)
{
    cuda_ctx *c = ctx_of(be);
    CUBLAS(c, cublasSetMathMode(c->blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                              : CUBLAS_DEFAULT_MATH));
}

static void cuda_axpy(dt_backend *be, long n, float a, const float *x, float *y)
{
    EW_LAUNCH(ctx_of(be), n, k_axpy, n, a, x, y);
}

static void cuda_scale(dt_backend *be, long n, float a, float *x)
{
    EW_LAUNCH(ctx_of(be), n, k_scale, n, a, x);
}

static void cuda_copy2d(dt_backend *be, float *dst, int ldd, const float *src,
                        int lds, int rows, int cols, float a)
{
    long n = (long)rows * cols;
    EW_LAUNCH(ctx_of(be), n, k_copy2d, dst, ldd, src, lds, cols, a, n);
}

static void cuda_adamw(dt_backend *be, float *p, const float *g, float *m,
                       float *v, long n, float lr, float b1, float b2,
                       float eps, float wd, float bc1, float bc2, float gscale)
{
    EW_LAUNCH(ctx_of(be), n, k_adamw, p, g, m, v, n, lr, b1, b2, eps, wd, bc1,
              bc2, gscale);
}

static void cuda_cross_entropy(dt_backend *be, float *logits, float *losses,
                               const int32_t *targets, int N, int V,
                               float grad_scale)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err || N <= 0)
        return;
    DT_LAUNCH(k_cross_entropy, N, 512, 0, c->stream)(logits, losses, targets, V,
                                             grad_scale);
    LAUNCHED(c);
}

static void cuda_cross_entropy_smooth(dt_backend *be, float *logits,
                                      float *losses, const int32_t *targets,
                                      int N, int V, float grad_scale,
                                      float eps)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err || N <= 0)
        return;
    DT_LAUNCH(k_cross_entropy_smooth, N, 512, 0, c->stream)(
        logits, losses, targets, V, grad_scale, eps);
    LAUNCHED(c);
}

static void cuda_dropout(dt_backend *be, float *y, const float *x, long n,
                         float p, uint64_t key, int acc)
{
    cuda_ctx *c = ctx_of(be);
    if (!(p > 0.0f)) { /* the identity: a plain copy or add */
        if (acc)
            EW_LAUNCH(c, n, k_axpy, n, 1.0f, x, y);
        else if (y != x && !c->err && n > 0)
            CU(c, cudaMemcpyAsync(y, x, (size_t)n * sizeof(float),
                                  cudaMemcpyDeviceToDevice, c->stream));
        return;
    }
    EW_LAUNCH(c, n, k_dropout, y, x, n, key, dt_drop_thresh(p),
              1.0f / (1.0f - p), acc);
}

static double reduce(cuda_ctx *c, const float *x, long n, int sq)
{
    if (c->err)
        return NAN; /* sync() reports why */
    if (n <= 0)
        return 0.0;
    int blocks = red_blocks(n);
    DT_LAUNCH(k_sum_part, blocks, EW_THREADS, 0, c->stream)(c->red, x, n, sq);
    LAUNCHED(c);
    DT_LAUNCH(k_sum_final, 1, EW_THREADS, 0, c->stream)(c->red + CUDA_RED_BLOCKS,
                                                 c->red, blocks);
    LAUNCHED(c);
    double r = NAN;
    CU(c, cudaMemcpyAsync(&r, c->red + CUDA_RED_BLOCKS, sizeof r,
                          cudaMemcpyDeviceToHost, c->stream));
    CU(c, cudaStreamSynchronize(c->stream));
    return c->err ? NAN : r;
}

static double cuda_sum(dt_backend *be, const float *x, long n)
{
    return reduce(ctx_of(be), x, n, 0);
}

static double cuda_sumsq(dt_backend *be, const float *x, long n)
{
    return reduce(ctx_of(be), x, n, 1);
}

static void cuda_destroy(dt_backend *be)
{
    if (!be)
        return;
    cuda_ctx *c = ctx_of(be);
    if (c) {
        cudaStreamSynchronize(c->stream);
        cudaFree(c->ws);
        cudaFree(c->red);
        cudaFree(c->rope);
        cudaFree(c->bf16_ws);
        cudaFree(c->opt_dev);
        free(c->opt_host);
        if (c->blas)
            cublasDestroy(c->blas);
        if (c->stream)
            cudaStreamDestroy(c->stream);
        free(c->hbuf);
        free(c);
    }
    free(be);
}

/* =========================================================================
 * backend table
 * ========================================================================= */

/* ---- row selection and fused ops ------------------------------------------- */

/* dst row i = src row idx[i] (scatter = 0) or dst row idx[i] = src row i
 * (scatter = 1), one thread per element. */
static __global__ void k_rows(float *dst, const float *src, const int32_t *idx,
                              int C, int scatter, long n)
{
    GRID_STRIDE(j, n) {
        long i = j / C, c = j % C, r = idx[i];
        if (scatter)
            dst[r * C + c] = src[i * C + c];
        else
            dst[i * C + c] = src[r * C + c];
    }
}

static void cuda_gather_rows(dt_backend *be, float *dst, const float *src,
                             const int32_t *idx, int n, int C)
{
    long total = (long)n * C;
    EW_LAUNCH(ctx_of(be), total, k_rows, dst, src, idx, C, 0, total);
}

static void cuda_scatter_rows(dt_backend *be, float *dst, const float *src,
                              const int32_t *idx, int n, int C)
{
    long total = (long)n * C;
    EW_LAUNCH(ctx_of(be), total, k_rows, dst, src, idx, C, 1, total);
}

/* h += bias; out = gelu(h): one read and two writes instead of two reads
 * and two writes with add_bias then gelu_fwd. */
static __global__ void k_bias_gelu(float *out, float *h, const float *bias,
                                   int C, long n)
{
    GRID_STRIDE(i, n) {
        float v = h[i] + bias[i % C];
        h[i] = v;
        out[i] = dt_gelu_tanh(v);
    }
}

static void cuda_bias_gelu_fwd(dt_backend *be, float *out, float *h,
                               const float *bias, int N, int C)
{
    long n = (long)N * C;
    EW_LAUNCH(ctx_of(be), n, k_bias_gelu, out, h, bias, C, n);
}

/* res = x + y (copy = res), out = norm(res): one warp per row, the sums as
 * k_layernorm_fwd / k_rmsnorm_fwd take them. Each lane reads back only the
 * elements it wrote. */
static __global__ void k_residual_norm(float *res, float *copy, float *out,
                                       float *mean, float *rstd,
                                       const float *x, const float *y,
                                       const float *w, const float *b, int N,
                                       int C, float eps, int rms)
{
    WARP_ROW(row, lane, N);
    long off = (long)row * C;
    float s = 0.0f, m = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float v = x[off + i] + y[off + i];
        res[off + i] = v;
        if (copy)
            copy[off + i] = v;
        s += rms ? v * v : v;
    }
    float r;
    if (rms) {
        r = 1.0f / sqrtf(warp_sum(s) / C + eps);
        for (int i = lane; i < C; i += 32)
            out[off + i] = w[i] * (res[off + i] * r);
    } else {
        m = warp_sum(s) / C;
        float v = 0.0f;
        for (int i = lane; i < C; i += 32)
            v += (res[off + i] - m) * (res[off + i] - m);
        r = 1.0f / sqrtf(warp_sum(v) / C + eps);
        for (int i = lane; i < C; i += 32) {
            float o = (res[off + i] - m) * r * w[i];
            out[off + i] = b ? o + b[i] : o;
        }
    }
    if (lane == 0) {
        if (mean && !rms)
            mean[row] = m;
        if (rstd)
            rstd[row] = r;
    }
}

static void cuda_residual_norm_fwd(dt_backend *be, float *res, float *copy,
                                   float *out, float *mean, float *rstd,
                                   const float *x, const float *y,
                                   const float *w, const float *b, int N,
                                   int C, float eps, int rms)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err || N <= 0)
        return;
    DT_LAUNCH(k_residual_norm, row_blocks(N), 32 * ROWS_PER_BLOCK, 0,
              c->stream)(res, copy, out, mean, rstd, x, y, w, b, N, C, eps,
                         rms);
    LAUNCHED(c);
}

static const dt_backend_i cuda_iface = {
    /* .name = */ "cuda",
    /* .alloc = */ cuda_alloc,
    /* .free = */ cuda_free,
    /* .upload = */ cuda_upload,
    /* .download = */ cuda_download,
    /* .copy = */ cuda_copy,
    /* .memset0 = */ cuda_memset0,
    /* .sync = */ cuda_sync,
    /* .gemm = */ cuda_gemm,
    /* .gemm_batched = */ cuda_gemm_batched,
    /* .embedding_fwd = */ cuda_embedding_fwd,
    /* .embedding_bwd = */ cuda_embedding_bwd,
    /* .layernorm_fwd = */ cuda_layernorm_fwd,
    /* .layernorm_bwd = */ cuda_layernorm_bwd,
    /* .rmsnorm_fwd = */ cuda_rmsnorm_fwd,
    /* .rmsnorm_bwd = */ cuda_rmsnorm_bwd,
    /* .gelu_fwd = */ cuda_gelu_fwd,
    /* .gelu_bwd = */ cuda_gelu_bwd,
    /* .swiglu_fwd = */ cuda_swiglu_fwd,
    /* .swiglu_bwd = */ cuda_swiglu_bwd,
    /* .rope = */ cuda_rope,
    /* .add_bias = */ cuda_add_bias,
    /* .bias_bwd = */ cuda_bias_bwd,
    /* .axpy = */ cuda_axpy,
    /* .scale = */ cuda_scale,
    /* .copy2d = */ cuda_copy2d,
    /* .attention_fwd = */ cuda_attention_fwd,
    /* .attention_bwd = */ cuda_attention_bwd,
    /* .cross_entropy = */ cuda_cross_entropy,
    /* .sum = */ cuda_sum,
    /* .sumsq = */ cuda_sumsq,
    /* .adamw = */ cuda_adamw,
    /* .sumsq_multi = */ cuda_sumsq_multi,
    /* .adamw_multi = */ cuda_adamw_multi,
    /* .destroy = */ cuda_destroy,
    /* .dropout = */ cuda_dropout,
    /* .attention_fwd_drop = */ cuda_attention_fwd_drop,
    /* .attention_bwd_drop = */ cuda_attention_bwd_drop,
    /* .cross_entropy_smooth = */ cuda_cross_entropy_smooth,
    /* .rope_at = */ cuda_rope_at,
    /* .attention_decode = */ cuda_attention_decode,
    /* .gather_rows = */ cuda_gather_rows,
    /* .scatter_rows = */ cuda_scatter_rows,
    /* .bias_gelu_fwd = */ cuda_bias_gelu_fwd,
    /* .residual_norm_fwd = */ cuda_residual_norm_fwd,
    /* .gemm_bf16w = */ cuda_gemm_bf16w,
    /* .set_tf32 = */ cuda_set_tf32,
    /* .rope_pos = */ cuda_rope_pos,
    /* .attention_fwd_seg = */ cuda_attention_fwd_seg,
    /* .attention_bwd_seg = */ cuda_attention_bwd_seg,
    /* .attention_decode_batch = */ NULL, /* generate.c loops over attention_decode */
    /* .embedding_fwd_bf16 = */ cuda_embedding_fwd_bf16,
};

extern "C" int dt_backend_cuda_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0;
}

extern "C" int dt_backend_cuda_bf16(int device)
{
    int major = 0;
    if (!dt_backend_cuda_available() ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                               device) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return major >= 8;
}

extern "C" size_t dt_backend_cuda_total(int device)
{
    size_t fr = 0, tot = 0;
    if (!dt_backend_cuda_available() || cudaSetDevice(device) != cudaSuccess ||
        cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return tot;
}

/* Size in bytes of the last alloc() that returned NULL (0 if none). */
extern "C" size_t dt_backend_cuda_oom_bytes(dt_backend *be)
{
    return be ? ctx_of(be)->oom_bytes : 0;
}

extern "C" dt_backend *dt_backend_cuda_new(int device, char *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        dt_errf(err, DT_EDEVICE, "CUDA device %d unavailable: %s", device,
                cudaGetErrorString(e));
        return NULL;
    }
    if (device < 0 || device >= n) {
        dt_errf(err, DT_EDEVICE,
                "CUDA device %d unavailable: %d device(s) present", device, n);
        return NULL;
    }
    dt_backend *be = (dt_backend *)calloc(1, sizeof *be);
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!be || !c) {
        dt_errf(err, DT_ENOMEM, "CUDA backend: host out of memory");
        goto fail;
    }
    be->i = cuda_iface;
    be->ctx = c;
    c->be = be;
    be->threads = 1;
    c->device = device;
    CU(c, cudaSetDevice(device));
    CU(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUBLAS(c, cublasCreate(&c->blas));
    if (!c->err) {
        CUBLAS(c, cublasSetStream(c->blas, c->stream));
        const char *tf32 = getenv("DT_TF32");
        int use_tf32 = tf32 && strcmp(tf32, "1") == 0;
        CUBLAS(c, cublasSetMathMode(c->blas, use_tf32
                                                 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                 : CUBLAS_DEFAULT_MATH));
        dev_malloc(c, (void **)&c->red, (CUDA_RED_BLOCKS + 1) * sizeof(double));
        size_t fr = 0, tot = 0;
        if (cudaMemGetInfo(&fr, &tot) == cudaSuccess)
            be->total_bytes = tot;
        int major = 0;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                   device) == cudaSuccess)
            be->bf16_fast = major >= 8;
        else
            (void)cudaGetLastError();
    }
    if (c->err) {
        dt_errf(err, DT_EDEVICE, "CUDA device %d unavailable: %s", device,
                c->msg);
        goto fail;
    }
    return be;
fail:
    if (be && c)
        cuda_destroy(be);
    else {
        free(c);
        free(be);
    }
    return NULL;
}
