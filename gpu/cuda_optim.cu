/* cuda_optim.cu: the optimizer's multi-tensor ops of the CUDA backend
 * (backend.h: sumsq_multi, adamw_multi): the global squared gradient norm
 * of every trainable tensor in two launches that stay on the device, and
 * AdamW over all of them in one launch that reads the clip scale there.
 * Each tensor is reduced exactly as reduce() (backend_cuda.cu) reduces it,
 * and the tensors' sums are added in list order, so the norm has the bits
 * of per-tensor sumsq calls added on the host. */
#include "cuda_internal.cuh"

/* =========================================================================
 * kernels
 * ========================================================================= */

/* sumsq_multi, pass 1: block (x, y) is k_sum_part's block x for tensor y,
 * with tensor y's own block count as the stride; part(count, stride). */
static __global__ void k_sumsq_multi_part(double *part,
                                          const dt_opt_tensor *t, int stride)
{
    __shared__ double sh[32];
    const dt_opt_tensor *x = &t[blockIdx.y];
    long n = x->n;
    int nb = red_blocks(n);
    if ((int)blockIdx.x >= nb)
        return; /* the whole block: no barrier is skipped */
    double acc = 0.0;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)nb * blockDim.x) {
        double v = x->g[i];
        acc += v * v;
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0)
        part[(long)blockIdx.y * stride + blockIdx.x] = acc;
}

/* sumsq_multi, pass 2 (one block): each tensor's partials as k_sum_final
 * adds them, the tensors' sums added in list order into *out. */
static __global__ void k_sumsq_multi_final(double *out, const double *part,
                                           const dt_opt_tensor *t, int count,
                                           int stride)
{
    __shared__ double sh[32];
    double total = 0.0;
    for (int y = 0; y < count; y++) {
        int nb = red_blocks(t[y].n);
        double acc = 0.0;
        for (int i = threadIdx.x; i < nb; i += blockDim.x)
            acc += part[(long)y * stride + i];
        total += block_sum(acc, sh);
    }
    if (threadIdx.x == 0)
        *out = total;
}

/* AdamW over every tensor: blockIdx.y is the tensor, a grid-stride loop
 * over its elements; the clip scale comes from the device's norm. */
static __global__ void k_adamw_multi(const dt_opt_tensor *t, float lr,
                                     float b1, float b2, float eps, float wd,
                                     float bc1, float bc2,
                                     const double *sumsq, float max_norm)
{
    float gscale;
    if (!dt_clip_scale(*sumsq, max_norm, &gscale))
        return;
    const dt_opt_tensor *x = &t[blockIdx.y];
    GRID_STRIDE(i, x->n)
        dt_adamw_step(&x->p[i], x->g[i], &x->m[i], &x->v[i], lr, b1, b2, eps,
                      wd, bc1, bc2, gscale);
}

/* =========================================================================
 * launchers
 * ========================================================================= */

/* The tensor list on the device: uploaded when it differs from the last
 * one (a training run passes the same list every step, so once). NULL
 * with the error recorded. */
static const dt_opt_tensor *opt_list(cuda_ctx *c, const dt_opt_tensor *t,
                                     int count)
{
    size_t bytes = (size_t)count * sizeof *t;
    if (c->opt_dev && count == c->opt_count &&
        memcmp(t, c->opt_host, bytes) == 0)
        return c->opt_dev;
    if (count > c->opt_cap) {
        free(c->opt_host);
        if (c->opt_dev)
            CU(c, cudaFree(c->opt_dev));
        c->opt_dev = NULL;
        c->opt_count = c->opt_cap = 0;
        c->opt_host = (dt_opt_tensor *)malloc(bytes);
        if (!c->opt_host) {
            cuda_fail(c, DT_ENOMEM, "optimizer", "host out of memory",
                      __FILE__, __LINE__);
            return NULL;
        }
        if (dev_malloc(c, (void **)&c->opt_dev, bytes) != 0)
            return NULL;
        c->opt_cap = count;
    }
    memcpy(c->opt_host, t, bytes);
    /* pageable source: staged before the call returns */
    if (CU(c, cudaMemcpyAsync(c->opt_dev, c->opt_host, bytes,
                              cudaMemcpyHostToDevice, c->stream)) != 0)
        return NULL;
    c->opt_count = count;
    return c->opt_dev;
}

void cuda_sumsq_multi(dt_backend *be, double *out,
                             const dt_opt_tensor *t, int count)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err)
        return;
    if (count <= 0) { /* all-zero bytes are 0.0 */
        CU(c, cudaMemsetAsync(out, 0, sizeof *out, c->stream));
        return;
    }
    if (count > 65535) {
        cuda_fail(c, DT_EINVAL, "sumsq_multi", "more than 65535 tensors",
                  __FILE__, __LINE__);
        return;
    }
    int stride = 1;
    for (int i = 0; i < count; i++)
        if (red_blocks(t[i].n) > stride)
            stride = red_blocks(t[i].n);
    const dt_opt_tensor *dt = opt_list(c, t, count);
    double *part = (double *)ws_get(c, (size_t)count * stride * sizeof(double));
    if (!dt || !part)
        return;
    dim3 grid(stride, count);
    DT_LAUNCH(k_sumsq_multi_part, grid, EW_THREADS, 0, c->stream)(part, dt,
                                                                 stride);
    LAUNCHED(c);
    DT_LAUNCH(k_sumsq_multi_final, 1, EW_THREADS, 0, c->stream)(out, part, dt,
                                                               count, stride);
    LAUNCHED(c);
}

void cuda_adamw_multi(dt_backend *be, const dt_opt_tensor *t, int count,
                             float lr, float b1, float b2, float eps, float wd,
                             float bc1, float bc2, const double *sumsq,
                             float max_norm)
{
    cuda_ctx *c = ctx_of(be);
    if (c->err || count <= 0)
        return;
    if (count > 65535) {
        cuda_fail(c, DT_EINVAL, "adamw_multi", "more than 65535 tensors",
                  __FILE__, __LINE__);
        return;
    }
    long maxn = 0;
    for (int i = 0; i < count; i++)
        maxn = t[i].n > maxn ? t[i].n : maxn;
    const dt_opt_tensor *dt = opt_list(c, t, count);
    if (!dt)
        return;
    unsigned bx = blocks_for(maxn, EW_THREADS);
    dim3 grid(bx < 1024 ? bx : 1024, count);
    DT_LAUNCH(k_adamw_multi, grid, EW_THREADS, 0, c->stream)(
        dt, lr, b1, b2, eps, wd, bc1, bc2, sumsq, max_norm);
    LAUNCHED(c);
}
