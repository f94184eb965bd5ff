/* test_emu.cc: the emulator's own contract (README.md): barriers, shuffles
 * and thread orders behave as on a GPU, the faults it promises to stop are
 * stopped with their message, and the runtime and cuBLAS checks answer as
 * CUDA does. Written in CUDA's dialect: it compiles with nvcc too. Each
 * expected abort runs in a child process. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef DT_LAUNCH
#define DT_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif

static int failures;

static void check(int ok, const char *what)
{
    printf("%-64s %s\n", what, ok ? "ok" : "FAIL");
    failures += !ok;
}

/* Runs fn in a child; 1 when it aborted and its stderr contains want. */
static int aborts_with(void (*fn)(void), const char *want)
{
    int fds[2];
    if (pipe(fds))
        return 0;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        fn();
        _exit(0);
    }
    close(fds[1]);
    char buf[4096];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = 0;
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    int ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(buf, want);
    if (!ok)
        fprintf(stderr, "  expected an abort naming \"%s\"; got status %d and: %s\n", want, st,
                buf);
    return ok;
}

/* ---- kernels ------------------------------------------------------------------ */

/* out[blockIdx.x] = the sum of in over the block (tree in shared memory). */
static __global__ void k_block_sum(float *out, const float *in)
{
    __shared__ float sh[256];
    int t = threadIdx.x;
    sh[t] = in[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s)
            sh[t] += sh[t + s];
        __syncthreads();
    }
    if (t == 0)
        out[blockIdx.x] = sh[0];
}

/* out[t] = the warp's sum by shuffles. */
static __global__ void k_warp_sum(float *out, const float *in)
{
    float v = in[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}

/* __syncwarp: each lane publishes, then reads its neighbour's slot. */
static __global__ void k_syncwarp(float *out)
{
    __shared__ float sh[32];
    int lane = threadIdx.x & 31;
    sh[lane] = (float)(lane + 1);
    __syncwarp();
    out[lane] = sh[(lane + 1) & 31];
}

/* A race: thread 0 publishes, the others read without a barrier. */
static __global__ void k_racy(float *out)
{
    __shared__ float sh[1];
    if (threadIdx.x == 0)
        sh[0] = 1.0f;
    if (threadIdx.x == 0)
        __syncthreads(); /* only thread 0 waits: see k_partial_barrier */
    out[threadIdx.x] = sh[0];
}

static __global__ void k_racy_no_barrier(float *out, float *flag)
{
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float v = 1.0f + w;
    v += __shfl_xor_sync(0xffffffffu, v, 1); /* a shuffle: a warp can run ahead here */
    if (lane == 0)
        sh[w] = v;
    /* the barrier that belongs here is missing */
    out[threadIdx.x] = sh[(w + 1) % (blockDim.x >> 5)];
    (void)flag;
}

static __global__ void k_partial_barrier(float *out)
{
    if (threadIdx.x >= 64)
        return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

static __global__ void k_shuffle_exited(float *out)
{
    if (threadIdx.x & 1)
        return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

static __global__ void k_deadlock(float *out)
{
    if (threadIdx.x < 16)
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    else
        __syncthreads();
}

/* One warp: C(16x16) = A(16x16, bf16, row-major) B(16x16, bf16, col-major). */
static __global__ void k_wmma(float *c, const __nv_bfloat16 *a, const __nv_bfloat16 *b)
{
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

static float *dev_floats(int n)
{
    float *p = NULL;
    cudaMalloc(&p, (size_t)n * sizeof(float));
    return p;
}

static void run_partial_barrier(void)
{
    float *d = dev_floats(128);
    DT_LAUNCH(k_partial_barrier, 1, 128, 0, 0)(d);
}

static void run_shuffle_exited(void)
{
    float *d = dev_floats(32);
    DT_LAUNCH(k_shuffle_exited, 1, 32, 0, 0)(d);
}

static void run_deadlock(void)
{
    float *d = dev_floats(64);
    DT_LAUNCH(k_deadlock, 1, 64, 0, 0)(d);
}

static void run_racy(void)
{
    float *d = dev_floats(64);
    DT_LAUNCH(k_racy, 1, 64, 0, 0)(d);
}

static void run_gemm_overrun(void)
{
    cublasHandle_t h;
    cublasCreate(&h);
    float *a = dev_floats(16), *b = dev_floats(16), *c = dev_floats(16), one = 1, zero = 0;
    /* 4x4 operands, but C said to be 5 rows apart: runs past its 16 floats */
    cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, a, 4, b, 4, &zero, c, 5);
}

int main(void)
{
    /* barriers: a shared-memory tree reduction is exact in every order */
    float h[512], r[2];
    for (int i = 0; i < 512; i++)
        h[i] = (float)(i % 7);
    float *in = dev_floats(512), *out = dev_floats(512);
    cudaMemcpy(in, h, sizeof h, cudaMemcpyHostToDevice);
    DT_LAUNCH(k_block_sum, 2, 256, 0, 0)(out, in);
    cudaMemcpy(r, out, sizeof r, cudaMemcpyDeviceToHost);
    float want0 = 0, want1 = 0;
    for (int i = 0; i < 256; i++) {
        want0 += h[i];
        want1 += h[256 + i];
    }
    check(r[0] == want0 && r[1] == want1, "block reduction with __syncthreads is exact");

    /* shuffles */
    float w[32];
    DT_LAUNCH(k_warp_sum, 1, 32, 0, 0)(out, in);
    cudaMemcpy(w, out, sizeof w, cudaMemcpyDeviceToHost);
    float ws = 0;
    for (int i = 0; i < 32; i++)
        ws += h[i];
    int same = 1;
    for (int i = 0; i < 32; i++)
        same &= w[i] == ws;
    check(same, "__shfl_xor_sync butterfly gives every lane the warp's sum");
    for (int i = 0; i < 32; i++)
        w[i] = 0.0f;
    DT_LAUNCH(k_syncwarp, 1, 32, 0, 0)(out);
    cudaMemcpy(w, out, sizeof w, cudaMemcpyDeviceToHost);
    same = 1;
    for (int i = 0; i < 32; i++)
        same &= w[i] == (float)(((i + 1) & 31) + 1);
    check(same, "__syncwarp: every lane's store is seen by the others after it");

    /* a missing barrier: under EMU_ORDER=skew warp 0 reads warp 1's slot
     * before warp 1 wrote it (NaN-poisoned static shared memory is not
     * emulated, so the slot holds what the previous launch left) */
    const char *order = getenv("EMU_ORDER");
    if (order && !strcmp(order, "skew")) {
        float first[64], second[64];
        DT_LAUNCH(k_racy_no_barrier, 1, 64, 0, 0)(out, in);
        cudaMemcpy(first, out, sizeof first, cudaMemcpyDeviceToHost);
        check(first[0] != 2.0f * 2.0f, "skew: a read before the missing barrier sees stale data");
        (void)second;
    }

    /* faults the emulator stops, with their message */
    check(aborts_with(run_partial_barrier, "__syncthreads reached by 64 of 128 threads"),
          "a barrier reached by part of a block aborts");
    check(aborts_with(run_shuffle_exited, "has exited"),
          "a shuffle naming an exited lane aborts");
    check(aborts_with(run_deadlock, "deadlock"), "a deadlock aborts with each thread's state");
    check(aborts_with(run_racy, "__syncthreads reached by 1 of 64 threads"),
          "a barrier in divergent code aborts");
    check(aborts_with(run_gemm_overrun, "runs past its device allocation"),
          "a GEMM operand past its allocation aborts");

    /* launch configuration */
    cudaGetLastError();
    DT_LAUNCH(k_warp_sum, 1, 2048, 0, 0)(out, in);
    check(cudaGetLastError() == cudaErrorInvalidConfiguration,
          "a block of 2048 threads is an invalid configuration");
    DT_LAUNCH(k_warp_sum, 0, 32, 0, 0)(out, in);
    check(cudaGetLastError() == cudaErrorInvalidConfiguration, "an empty grid is invalid");

    /* memory */
    float *p = dev_floats(4), back[4];
    cudaMemcpy(back, p, sizeof back, cudaMemcpyDeviceToHost);
    check(isnan(back[0]) && isnan(back[3]), "fresh device memory reads as NaN");
    check(cudaMemcpy(back, p, sizeof back, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "a copy in the wrong direction is an error");
    check(cudaMemcpy(back, p, 5 * sizeof(float), cudaMemcpyDeviceToHost) ==
              cudaErrorInvalidValue, "a copy past an allocation is an error");
    check(cudaFree(back) == cudaErrorInvalidDevicePointer, "freeing a host pointer is an error");
    check(cudaFree(p) == cudaSuccess && cudaFree(NULL) == cudaSuccess, "free, and free(NULL)");

    /* cuBLAS's argument checks */
    cublasHandle_t hb;
    cublasCreate(&hb);
    float one = 1, zero = 0;
    float *a = dev_floats(16), *b = dev_floats(16), *c = dev_floats(16);
    check(cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, a, 3, b, 4, &zero, c, 4) ==
              CUBLAS_STATUS_INVALID_VALUE, "sgemm: lda < m is CUBLAS_STATUS_INVALID_VALUE");
    check(cublasSgemm(hb, CUBLAS_OP_T, CUBLAS_OP_N, 4, 4, 2, &one, a, 1, b, 4, &zero, c, 4) ==
              CUBLAS_STATUS_INVALID_VALUE, "sgemm: lda < k for op T is invalid");
    check(cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, -1, 4, 4, &one, a, 4, b, 4, &zero, c, 4) ==
              CUBLAS_STATUS_INVALID_VALUE, "sgemm: a negative size is invalid");
    check(cublasSgemmStridedBatched(hb, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, a, 2, 4, b, 2,
                                    4, &zero, c, 2, 4, -1) == CUBLAS_STATUS_INVALID_VALUE,
          "batched: a negative batch count is invalid");

    /* bf16: conversions round to nearest even; GemmEx accumulates in fp32 */
    check(__bfloat162float(__float2bfloat16(1.00390625f)) == 1.0f &&
              __bfloat162float(__float2bfloat16(1.01171875f)) == 1.015625f,
          "bf16 rounds to nearest, ties to even");
    check(isnan(__bfloat162float(__float2bfloat16(NAN))), "bf16 keeps NaN");
    __nv_bfloat16 ha[4], hbb[4];
    float ha32[4] = {1.00390625f, 2.0f, -3.0f, 0.5f}, hb32[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    for (int i = 0; i < 4; i++) {
        ha[i] = __float2bfloat16(ha32[i]);
        hbb[i] = __float2bfloat16(hb32[i]);
    }
    __nv_bfloat16 *da, *db;
    cudaMalloc(&da, sizeof ha);
    cudaMalloc(&db, sizeof hbb);
    cudaMemcpy(da, ha, sizeof ha, cudaMemcpyHostToDevice);
    cudaMemcpy(db, hbb, sizeof hbb, cudaMemcpyHostToDevice);
    /* (1x4) x (4x1): 1 + 2 - 3 + 0.5 with the first input rounded to 1 */
    check(cublasGemmEx(hb, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 4, &one, da, CUDA_R_16BF, 1, db,
                       CUDA_R_16BF, 4, &zero, c, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
          "GemmEx bf16 x bf16 -> fp32 runs");
    float got;
    cudaMemcpy(&got, c, sizeof got, cudaMemcpyDeviceToHost);
    check(got == 0.5f, "GemmEx rounds inputs to bf16 and sums in fp32");
    /* wmma: a warp's 16x16x16 bf16 product with fp32 accumulation */
    __nv_bfloat16 ta[256], tb[256];
    float fa[256], fb[256], tc[256];
    for (int i = 0; i < 256; i++) {
        ta[i] = __float2bfloat16((float)((i * 7) % 13 - 6) / 8.0f);
        tb[i] = __float2bfloat16((float)((i * 5) % 11 - 5) / 4.0f);
        fa[i] = __bfloat162float(ta[i]);
        fb[i] = __bfloat162float(tb[i]);
    }
    __nv_bfloat16 *wa, *wb;
    float *wc = dev_floats(256);
    cudaMalloc(&wa, sizeof ta);
    cudaMalloc(&wb, sizeof tb);
    cudaMemcpy(wa, ta, sizeof ta, cudaMemcpyHostToDevice);
    cudaMemcpy(wb, tb, sizeof tb, cudaMemcpyHostToDevice);
    DT_LAUNCH(k_wmma, 1, 32, 0, 0)(wc, wa, wb);
    cudaMemcpy(tc, wc, sizeof tc, cudaMemcpyDeviceToHost);
    int wok = 1;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = 0;
            for (int k = 0; k < 16; k++)
                s += fa[i * 16 + k] * fb[j * 16 + k]; /* b is column-major */
            wok &= tc[i * 16 + j] == s;
        }
    check(wok, "wmma 16x16x16 bf16 -> fp32 equals the host product");
    cublasDestroy(hb);

    printf("%s\n", failures ? "test_emu: FAILED" : "test_emu: every check passed");
    return failures ? 1 : 0;
}
