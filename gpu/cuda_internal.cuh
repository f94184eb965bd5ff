/* cuda_internal.cuh: what backend_cuda.cu and cuda_attention.cu share: the
 * backend context, the error-recording macros, launch helpers and the
 * row-major GEMM wrapper. Internal to the CUDA backend; C++ only. */
#ifndef DT_CUDA_INTERNAL_CUH
#define DT_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backend.h"
#include "base/dt.h"
}
#include "dt_math.h"

typedef struct cuda_ctx {
    dt_backend *be;          /* the owner (its peak_bytes); borrowed */
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    int err;                 /* first error: DT_EDEVICE (sticky), or
                                DT_ENOMEM / DT_EINVAL (cleared by sync) */
    char msg[DT_ERR_LEN];    /* detail of the first error, with file:line */
    size_t oom_bytes;        /* size of the last alloc() that failed */
    void *ws;                /* growable workspace (device) */
    size_t ws_bytes;
    double *red;             /* (CUDA_RED_BLOCKS + 1) partial sums (device) */
    float *rope;             /* dt_rope_table(rope_T, rope_D, rope_theta)
                                (device), uploaded once */
    int rope_T, rope_D;
    float rope_theta;
    dt_opt_tensor *opt_dev;  /* the optimizer's tensor list (device), */
    dt_opt_tensor *opt_host; /* its host copy: uploaded when it changes */
    int opt_count, opt_cap;
    int *hbuf;               /* host scratch for embedding_bwd */
    size_t hbuf_n;           /* ints in hbuf */
    void *bf16_ws;           /* gemm_bf16w: the fp32 operand in bf16 (device) */
    size_t bf16_ws_bytes;
} cuda_ctx;

#define CUDA_RED_BLOCKS 1024 /* fixed, so sums do not depend on the device */
#define ROWS_PER_BLOCK 8     /* warp-per-row kernels: 8 warps of 32 */

/* Record the first failure (sticky) with file:line; return 0 or -1. */
void cuda_fail(cuda_ctx *c, int code, const char *what, const char *detail,
               const char *file, int line);
int cu_check(cuda_ctx *c, cudaError_t e, const char *what, const char *file,
             int line);
int cublas_check(cuda_ctx *c, cublasStatus_t s, const char *what,
                 const char *file, int line);

#define CU(c, call) cu_check((c), (call), #call, __FILE__, __LINE__)
#define CUBLAS(c, call) cublas_check((c), (call), #call, __FILE__, __LINE__)
/* After a kernel launch: catches bad launch configurations. */
#define LAUNCHED(c) cu_check((c), cudaGetLastError(), "kernel launch", \
                             __FILE__, __LINE__)

#define EW_THREADS 256

/* A kernel launch: DT_LAUNCH(kernel, grid, block, smem, stream)(args...).
 * Under nvcc it is the <<<...>>> launch; the CUDA emulator (tests/cuda-emu)
 * defines its own, which runs the kernel on the CPU. */
#ifndef DT_LAUNCH
#define DT_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif

static inline cuda_ctx *ctx_of(dt_backend *be) { return (cuda_ctx *)be->ctx; }

/* Blocks for a grid-stride loop over n elements. */
static inline unsigned blocks_for(long n, int threads)
{
    long b = (n + threads - 1) / threads;
    if (b > 65535L * 16)
        b = 65535L * 16; /* grid-stride loops cover the rest */
    return (unsigned)(b > 0 ? b : 1);
}

/* Blocks for a warp-per-row kernel. */
static inline unsigned row_blocks(long rows)
{
    return (unsigned)((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
}

/* cudaMalloc of the backend's own buffers (workspace, RoPE table, the
 * optimizer's tensor list): 0, or -1 with the failure recorded as cu_check
 * classifies it (DT_ENOMEM, cleared by sync, or a sticky DT_EDEVICE with
 * CUDA's error string); the peak (peak_bytes) includes them. */
int dev_malloc(cuda_ctx *c, void **p, size_t bytes);

/* Workspace of at least `bytes` (device), or NULL with the sticky error set.
 * Valid until the next ws_get(); growing frees the old buffer, and cudaFree
 * waits for the kernels that still use it. */
void *ws_get(cuda_ctx *c, size_t bytes);

/* Row-major C = alpha op(A) op(B) + beta C; batch > 1 uses the strides. */
void gemm_rm(cuda_ctx *c, int ta, int tb, int M, int N, int K, float alpha,
             const float *A, int lda, long sA, const float *B, int ldb,
             long sB, float beta, float *C, int ldc, long sC, int batch);

/* Attention ops of the table (cuda_attention.cu). */
void cuda_attention_fwd(dt_backend *be, float *out, float *lse, const float *q,
                        const float *k, const float *v, int B, int T, int NH,
                        int NKV, int D);
void cuda_attention_bwd(dt_backend *be, float *dq, float *dk, float *dv,
                        const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, int B,
                        int T, int NH, int NKV, int D);

/* Decode attention: tq new query rows against a KV cache of tk rows. */
void cuda_attention_decode(dt_backend *be, float *out, const float *q,
                           const float *k, const float *v, int tq, int tk,
                           int NH, int NKV, int D);

/* The same with attention dropout p keyed by key (backend.h). */
void cuda_attention_fwd_drop(dt_backend *be, float *out, float *lse,
                             const float *q, const float *k, const float *v,
                             int B, int T, int NH, int NKV, int D, float p,
                             uint64_t key);
void cuda_attention_bwd_drop(dt_backend *be, float *dq, float *dk, float *dv,
                             const float *dout, const float *out,
                             const float *lse, const float *q, const float *k,
                             const float *v, int B, int T, int NH, int NKV,
                             int D, float p, uint64_t key);

/* The same under packing's block-diagonal causal mask (pos: backend.h);
 * always the naive kernels (the fused ones have no segments). */
void cuda_attention_fwd_seg(dt_backend *be, float *out, float *lse,
                            const float *q, const float *k, const float *v,
                            const int32_t *pos, int B, int T, int NH, int NKV,
                            int D, float p, uint64_t key);
void cuda_attention_bwd_seg(dt_backend *be, float *dq, float *dk, float *dv,
                            const float *dout, const float *out,
                            const float *lse, const float *q, const float *k,
                            const float *v, const int32_t *pos, int B, int T,
                            int NH, int NKV, int D, float p, uint64_t key);

/* Fused (flash) causal attention (cuda_flash.cu), the kernels behind the
 * attention ops when cuda_flash_supports(D) (1 for D = 64 and 128). thr and
 * dscale are dropout's threshold and scale (thr 0: no dropout), key its
 * key; bf16 = 1: on bf16 tensor cores (forward and backward). drow (B,NH,T) =
 * rowsum(dout * out). Errors are recorded in c. */
int cuda_flash_supports(int D);
void cuda_flash_fwd(cuda_ctx *c, float *out, float *lse, const float *q,
                    const float *k, const float *v, int B, int T, int NH,
                    int NKV, int D, uint32_t thr, float dscale, uint64_t key,
                    int bf16);
void cuda_flash_bwd(cuda_ctx *c, float *dq, float *dk, float *dv,
                    const float *dout, const float *lse, const float *drow,
                    const float *q, const float *k, const float *v, int B,
                    int T, int NH, int NKV, int D, uint32_t thr, float dscale,
                    uint64_t key, int bf16);

/* The optimizer's multi-tensor ops of the table (cuda_optim.cu). */
void cuda_sumsq_multi(dt_backend *be, double *out, const dt_opt_tensor *t,
                      int count);
void cuda_adamw_multi(dt_backend *be, const dt_opt_tensor *t, int count,
                      float lr, float b1, float b2, float eps, float wd,
                      float bc1, float bc2, const double *sumsq,
                      float max_norm);

/* ---- device helpers ------------------------------------------------------ */

#define GRID_STRIDE(i, n)                                                   \
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);     \
         i += (long)gridDim.x * blockDim.x)

/* A warp-per-row kernel's prologue: declares row (this warp's row) and lane
 * (this thread's place in the warp, 0..31), and returns from the warps of the
 * last block that have no row below nrows. */
#define WARP_ROW(row, lane, nrows)                                          \
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32,               \
        lane = threadIdx.x & 31;                                            \
    if (row >= (nrows))                                                     \
        return

template <typename T> static __device__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ inline float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Partial-sum blocks of an n-float reduction (reduce() and sumsq_multi
 * launch the same, so the two give the same bits). */
static __host__ __device__ inline int red_blocks(long n)
{
    long nb = (n + 4L * EW_THREADS - 1) / (4L * EW_THREADS);
    return nb > CUDA_RED_BLOCKS ? CUDA_RED_BLOCKS : (int)nb;
}

/* Block-wide reduction in a fixed order; every thread gets the result.
 * sh holds 32 values; blockDim.x is a multiple of 32. */
template <typename T> static __device__ T block_sum(T v, T *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        T x = lane < (int)(blockDim.x >> 5) ? sh[lane] : (T)0;
        x = warp_sum(x);
        if (lane == 0)
            sh[0] = x;
    }
    __syncthreads();
    return sh[0];
}

#endif
