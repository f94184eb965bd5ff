/* cuda_runtime.h (emulated): the subset of the CUDA runtime and device
 * language that the .cu files of gpu/ use, for compiling them with g++ and running them
 * on the CPU (tests/cuda-emu/README.md).
 *
 * Kernels are plain functions; a launch (DT_LAUNCH) runs every block in
 * turn and every thread of a block as a cooperative fiber (emu.cc), so
 * __syncthreads and warp shuffles have their real semantics and a missing
 * barrier changes the result under EMU_ORDER. Device memory is host memory
 * filled with NaN bytes when allocated. Streams are synchronous. */
#ifndef DT_CUDA_EMU_RUNTIME_H
#define DT_CUDA_EMU_RUNTIME_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
/* Blocks run one after another on one host thread, so one static copy per
 * kernel is one block's shared memory. */
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorLaunchFailure = 719,
} cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

typedef struct emu_stream *cudaStream_t;
#define cudaStreamNonBlocking 0x01

cudaError_t cudaMalloc(void **p, size_t bytes);
template <typename T> static inline cudaError_t cudaMalloc(T **p, size_t bytes)
{
    return cudaMalloc((void **)p, bytes);
}
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t s = 0);
cudaError_t cudaMemset(void *p, int v, size_t n);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s = 0);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
/* The two attributes the engine asks for: the emulated device reports
 * compute capability 9.0 (an H100/H200), so bf16 is its default precision. */
enum cudaDeviceAttr {
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
};
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);

/* ---- the device side ------------------------------------------------------ */

/* CUDA's min/max overloads for device code. */
#define EMU_MINMAX(T)                                                    \
    static inline T min(T a, T b) { return b < a ? b : a; }             \
    static inline T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned)
EMU_MINMAX(long)
EMU_MINMAX(unsigned long)
EMU_MINMAX(long long)
EMU_MINMAX(float)
EMU_MINMAX(double)
#undef EMU_MINMAX

extern dim3 emu_block_idx, emu_block_dim, emu_grid_dim;
uint3 emu_thread_idx(void);
#define threadIdx (emu_thread_idx())
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim
#define warpSize 32

void __syncthreads(void);
uint64_t emu_shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width);
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = emu_shfl_xor(mask, bits, lane_mask, width);
    T r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* Every lane of the mask meets here: a shuffle that exchanges nothing. */
static inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    (void)emu_shfl_xor(mask, 0, 0, 32);
}

/* ---- launches ---------------------------------------------------------------- */

/* Checks the configuration (cudaErrorInvalidConfiguration for the next
 * cudaGetLastError, as the hardware would), then runs body once per thread. */
void emu_launch(const char *name, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                const std::function<void()> &body);

template <typename K> struct emu_launcher {
    K k;
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    const char *name;
    template <typename... A> void operator()(A... a) const
    {
        K kk = k;
        emu_launch(name, grid, block, smem, stream, [=]() { kk(a...); });
    }
};

#define DT_LAUNCH(kernel, grid, block, smem, stream)                                   \
    emu_launcher<decltype(&kernel)>{&kernel, dim3(grid), dim3(block), (size_t)(smem), \
                                    (stream), #kernel}

#endif
