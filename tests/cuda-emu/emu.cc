/* emu.cc: the CUDA emulator's runtime: device memory, streams, launches with
 * every thread of a block as a cooperative fiber, warp shuffles, and cuBLAS
 * on OpenBLAS. See README.md for what it checks and what it cannot.
 *
 * Environment:
 *   EMU_ORDER=fwd|rev|rand|skew  the order a block's runnable threads run in
 *                                (default fwd); rand reshuffles every pass
 *                                (EMU_SEED, default 1); skew runs each warp,
 *                                its shuffles included, ahead to its next
 *                                __syncthreads before the next warp
 *   EMU_FAIL_MALLOC=N            the Nth cudaMalloc fails (out of memory)
 *   EMU_FAIL_MALLOC_ERROR=E      ... with cudaError_t E instead (e.g. 719,
 *                                a launch failure: a device fault)
 *   EMU_DEVICE_BYTES=B           the device's memory (default 80 GiB)
 *   EMU_STATS=1                  print launches and peak memory at exit */
#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cuda_runtime.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <map>
#include <random>
#include <vector>

#include <cblas.h>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

[[noreturn]] static void emu_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emu_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda-emu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* ---- settings ------------------------------------------------------------------ */

enum { ORDER_FWD, ORDER_REV, ORDER_RAND, ORDER_SKEW };

static struct {
    int ready;
    int order;
    unsigned seed;
    long fail_malloc; /* the Nth cudaMalloc fails; 0 = never */
    cudaError_t fail_error; /* with this error (default out of memory) */
    size_t device_bytes;
    int stats;
} cfg;

static struct {
    long mallocs, launches, fibers;
    size_t used, peak;
} stats;

static void print_stats(void)
{
    fprintf(stderr, "cuda-emu: %ld launches, %ld threads, %ld allocations, peak %.1f MiB\n",
            stats.launches, stats.fibers, stats.mallocs, stats.peak / 1048576.0);
}

static void settings(void)
{
    if (cfg.ready)
        return;
    cfg.ready = 1;
    const char *o = getenv("EMU_ORDER");
    if (!o || !*o || !strcmp(o, "fwd"))
        cfg.order = ORDER_FWD;
    else if (!strcmp(o, "rev"))
        cfg.order = ORDER_REV;
    else if (!strcmp(o, "rand"))
        cfg.order = ORDER_RAND;
    else if (!strcmp(o, "skew"))
        cfg.order = ORDER_SKEW;
    else
        emu_die("EMU_ORDER=%s: use fwd, rev, rand or skew", o);
    const char *s = getenv("EMU_SEED");
    cfg.seed = s ? (unsigned)strtoul(s, NULL, 10) : 1u;
    const char *f = getenv("EMU_FAIL_MALLOC");
    cfg.fail_malloc = f ? strtol(f, NULL, 10) : 0;
    const char *fe = getenv("EMU_FAIL_MALLOC_ERROR");
    cfg.fail_error = fe ? (cudaError_t)atoi(fe) : cudaErrorMemoryAllocation;
    const char *d = getenv("EMU_DEVICE_BYTES");
    cfg.device_bytes = d ? (size_t)strtoull(d, NULL, 10) : (size_t)80 << 30;
    cfg.stats = getenv("EMU_STATS") && atoi(getenv("EMU_STATS"));
    if (cfg.stats)
        atexit(print_stats);
}

/* ---- errors ----------------------------------------------------------------------- */

static cudaError_t last_error = cudaSuccess;

static cudaError_t fail(cudaError_t e)
{
    last_error = e;
    return e;
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unrecognized error code";
}

/* ---- device memory ------------------------------------------------------------------ */

static std::map<uintptr_t, size_t> &allocations(void)
{
    static std::map<uintptr_t, size_t> m; /* start -> bytes */
    return m;
}

/* 1 when [p, p+n) lies inside one device allocation. */
static int on_device(const void *p, size_t n)
{
    auto &m = allocations();
    uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin())
        return 0;
    --it;
    return a >= it->first && a + n <= it->first + it->second && a + n >= a;
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    settings();
    *p = NULL;
    stats.mallocs++;
    if (cfg.fail_malloc && stats.mallocs == cfg.fail_malloc)
        return fail(cfg.fail_error);
    if (bytes > cfg.device_bytes - stats.used)
        return fail(cudaErrorMemoryAllocation);
    void *q = NULL;
    if (posix_memalign(&q, 256, bytes ? bytes : 1))
        return fail(cudaErrorMemoryAllocation);
    /* Poisoned: all-ones bytes are NaN as float and double, so a read of
     * memory no kernel or copy wrote shows up in the results. */
    memset(q, 0xff, bytes);
    allocations()[(uintptr_t)q] = bytes;
    stats.used += bytes;
    stats.peak = std::max(stats.peak, stats.used);
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    auto &m = allocations();
    auto it = m.find((uintptr_t)p);
    if (it == m.end())
        return fail(cudaErrorInvalidDevicePointer);
    stats.used -= it->second;
    m.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    settings();
    *free_bytes = cfg.device_bytes - stats.used;
    *total_bytes = cfg.device_bytes;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind)
{
    if (!n)
        return cudaSuccess;
    int dd = on_device(dst, n), sd = on_device(src, n);
    switch (kind) {
    case cudaMemcpyHostToHost: if (dd || sd) return fail(cudaErrorInvalidValue); break;
    case cudaMemcpyHostToDevice: if (!dd || sd) return fail(cudaErrorInvalidValue); break;
    case cudaMemcpyDeviceToHost: if (dd || !sd) return fail(cudaErrorInvalidValue); break;
    case cudaMemcpyDeviceToDevice: if (!dd || !sd) return fail(cudaErrorInvalidValue); break;
    case cudaMemcpyDefault: break;
    default: return fail(cudaErrorInvalidMemcpyDirection);
    }
    memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t)
{
    return cudaMemcpy(dst, src, n, kind);
}

cudaError_t cudaMemset(void *p, int v, size_t n)
{
    if (n && !on_device(p, n))
        return fail(cudaErrorInvalidValue);
    memset(p, v, n);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { return cudaMemset(p, v, n); }

/* ---- device, streams ----------------------------------------------------------------- */

struct emu_stream {
    unsigned flags;
};

cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}

static int current_device;

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device)
{
    if (device != 0)
        return fail(cudaErrorInvalidDevice);
    if (attr == cudaDevAttrComputeCapabilityMajor)
        *value = 9;
    else if (attr == cudaDevAttrComputeCapabilityMinor)
        *value = 0;
    else
        return fail(cudaErrorInvalidValue);
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int d)
{
    if (d != 0)
        return fail(cudaErrorInvalidDevice);
    current_device = d;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *d)
{
    *d = current_device;
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    *s = new emu_stream{flags};
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}

/* Work runs when it is issued, so a stream is always idle. */
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

/* ---- fibers ---------------------------------------------------------------------------- */

enum { T_RUN, T_SYNC, T_WARP, T_DONE };

typedef struct fiber {
    ucontext_t uc;
    char *stack;
    uint3 tid;
    int state;
    unsigned mask;   /* T_WARP: the shuffle's member mask */
    int phase;       /* T_WARP: which half of a shuffle */
    uint64_t value;  /* the value this lane offers to a shuffle */
#ifdef EMU_ASAN
    void *fake;
#endif
} fiber;

#define STACK_BYTES (256 * 1024)

static struct {
    int active;                        /* inside a launch */
    const char *kernel;
    const std::function<void()> *body;
    std::vector<fiber> f;
    int n, cur;
    ucontext_t sched;
#ifdef EMU_ASAN
    void *sched_fake;
    const void *sched_bottom;
    size_t sched_size;
#endif
} blk;

dim3 emu_block_idx, emu_block_dim, emu_grid_dim;

uint3 emu_thread_idx(void)
{
    if (!blk.active)
        emu_die("threadIdx read outside a kernel");
    return blk.f[blk.cur].tid;
}

/* Back to the scheduler; returns when the scheduler runs this fiber again. */
static void fiber_yield(int dying)
{
    fiber *t = &blk.f[blk.cur];
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(dying ? NULL : &t->fake, blk.sched_bottom, blk.sched_size);
#else
    (void)dying;
#endif
    swapcontext(&t->uc, &blk.sched);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(t->fake, NULL, NULL);
#endif
}

static void fiber_main(void)
{
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(NULL, &blk.sched_bottom, &blk.sched_size);
#endif
    (*blk.body)();
    blk.f[blk.cur].state = T_DONE;
    fiber_yield(1);
    emu_die("a finished thread was resumed");
}

static void run_fiber(int i)
{
    blk.cur = i;
    fiber *t = &blk.f[i];
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&blk.sched_fake, t->stack, STACK_BYTES);
#endif
    swapcontext(&blk.sched, &t->uc);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(blk.sched_fake, NULL, NULL);
#endif
}

static char *stack_pool(int i)
{
    static std::vector<char *> pool;
    while ((int)pool.size() <= i) {
        void *p = mmap(NULL, STACK_BYTES, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            emu_die("cannot map a thread stack: %s", strerror(errno));
        pool.push_back((char *)p);
    }
    return pool[i];
}

void __syncthreads(void)
{
    if (!blk.active)
        emu_die("__syncthreads outside a kernel");
    blk.f[blk.cur].state = T_SYNC;
    fiber_yield(0);
}

uint64_t emu_shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width)
{
    if (!blk.active)
        emu_die("__shfl_xor_sync outside a kernel");
    if (width != 32)
        emu_die("%s: __shfl_xor_sync with width %d is not emulated", blk.kernel, width);
    int me = blk.cur, lane = me & 31, base = me & ~31;
    if (!(mask & (1u << lane)))
        emu_die("%s: thread %d calls __shfl_xor_sync with a mask (0x%08x) that leaves it out",
                blk.kernel, me, mask);
    int src = lane ^ (lane_mask & 31);
    if (base + src >= blk.n || !(mask & (1u << src)))
        emu_die("%s: thread %d shuffles from lane %d, which is not in the warp's mask 0x%08x",
                blk.kernel, me, src, mask);
    fiber *t = &blk.f[me];
    t->value = bits;
    t->mask = mask;
    t->phase = 0;
    t->state = T_WARP; /* 1: every lane of mask has offered its value */
    fiber_yield(0);
    uint64_t r = blk.f[base + src].value;
    t->phase = 1;
    t->state = T_WARP; /* 2: every lane has read before any offers again */
    fiber_yield(0);
    return r;
}

static const char *state_name(int s)
{
    static const char *names[] = {"runnable", "at __syncthreads", "in a shuffle", "exited"};
    return names[s];
}

/* Releases warp `base`'s shuffle if every lane of its mask reached it; 1
 * if so. Stops on lanes shuffling with different masks or at different
 * shuffles, and on a mask that names an exited lane. */
static int release_warp(int base)
{
    int hi = std::min(blk.n, base + 32), waiting = 0;
    unsigned mask = 0;
    int phase = -1;
    for (int i = base; i < hi; i++)
        if (blk.f[i].state == T_WARP) {
            if (waiting && (blk.f[i].mask != mask || blk.f[i].phase != phase))
                emu_die("%s: block (%u,%u,%u) warp %d: lanes shuffle with different "
                        "masks (0x%08x, 0x%08x) or at different shuffles",
                        blk.kernel, emu_block_idx.x, emu_block_idx.y, emu_block_idx.z,
                        base / 32, mask, blk.f[i].mask);
            mask = blk.f[i].mask;
            phase = blk.f[i].phase;
            waiting++;
        }
    if (!waiting)
        return 0;
    int all = 1;
    for (int l = 0; l < 32; l++) {
        if (!(mask & (1u << l)))
            continue;
        int i = base + l;
        if (i >= hi || blk.f[i].state == T_DONE)
            emu_die("%s: block (%u,%u,%u) warp %d: a shuffle names lane %d, which has "
                    "exited", blk.kernel, emu_block_idx.x, emu_block_idx.y,
                    emu_block_idx.z, base / 32, l);
        if (blk.f[i].state != T_WARP)
            all = 0;
    }
    if (!all)
        return 0;
    for (int l = 0; l < 32; l++)
        if (mask & (1u << l))
            blk.f[base + l].state = T_RUN;
    return 1;
}

/* Releases every warp whose shuffle every member reached; 1 if any was. */
static int release_warps(void)
{
    int released = 0;
    for (int base = 0; base < blk.n; base += 32)
        released |= release_warp(base);
    return released;
}

/* EMU_ORDER=skew: the first warp runs ahead, through its shuffles, to its
 * next __syncthreads (or its end) before the next warp starts; a warp that
 * reads shared memory another warp has not finished with sees the damage. */
static int run_skewed(void)
{
    int ran = 0;
    for (int base = 0; base < blk.n; base += 32) {
        int hi = std::min(blk.n, base + 32), again = 1;
        while (again) {
            again = 0;
            for (int i = base; i < hi; i++)
                if (blk.f[i].state == T_RUN) {
                    run_fiber(i);
                    ran = again = 1;
                }
            if (release_warp(base))
                again = 1;
        }
    }
    return ran;
}

static void run_block(std::vector<int> &order, std::mt19937 &rng)
{
    for (;;) {
        int ran = 0;
        if (cfg.order == ORDER_RAND)
            std::shuffle(order.begin(), order.end(), rng);
        if (cfg.order == ORDER_SKEW)
            ran = run_skewed();
        else
            for (int i : order)
                if (blk.f[i].state == T_RUN) {
                    run_fiber(i);
                    ran = 1;
                }
        int done = 0, sync = 0;
        for (int i = 0; i < blk.n; i++) {
            done += blk.f[i].state == T_DONE;
            sync += blk.f[i].state == T_SYNC;
        }
        if (done == blk.n)
            return;
        if (release_warps())
            continue;
        if (sync && sync + done == blk.n) {
            if (done)
                emu_die("%s: block (%u,%u,%u): __syncthreads reached by %d of %d threads "
                        "(%d exited before it)", blk.kernel, emu_block_idx.x, emu_block_idx.y,
                        emu_block_idx.z, sync, blk.n, done);
            for (int i = 0; i < blk.n; i++)
                blk.f[i].state = T_RUN;
            continue;
        }
        if (!ran) {
            fprintf(stderr, "cuda-emu: %s: block (%u,%u,%u) deadlocked:\n", blk.kernel,
                    emu_block_idx.x, emu_block_idx.y, emu_block_idx.z);
            for (int i = 0; i < blk.n; i++)
                if (blk.f[i].state != T_DONE)
                    fprintf(stderr, "  thread %d: %s\n", i, state_name(blk.f[i].state));
            emu_die("%s: deadlock (threads wait at different barriers)", blk.kernel);
        }
    }
}

/* Thread i of the block about to run, at the start of the kernel. */
static __attribute__((noinline)) void fiber_init(int i, dim3 block)
{
    fiber *t = &blk.f[i];
    t->tid.x = (unsigned)i % block.x;
    t->tid.y = ((unsigned)i / block.x) % block.y;
    t->tid.z = (unsigned)i / (block.x * block.y);
    t->state = T_RUN;
    t->stack = stack_pool(i);
    getcontext(&t->uc);
    t->uc.uc_stack.ss_sp = t->stack;
    t->uc.uc_stack.ss_size = STACK_BYTES;
    t->uc.uc_link = NULL;
    makecontext(&t->uc, fiber_main, 0);
}

/* The order runnable threads are visited in within one pass. */
static void make_order(std::vector<int> &order, int n)
{
    order.resize(n);
    for (int i = 0; i < n; i++)
        order[i] = i;
    if (cfg.order == ORDER_REV)
        std::reverse(order.begin(), order.end());
}

void emu_launch(const char *name, dim3 grid, dim3 block, size_t smem, cudaStream_t,
                const std::function<void()> &body)
{
    settings();
    if (blk.active)
        emu_die("%s launched from inside %s (dynamic parallelism is not emulated)", name,
                blk.kernel);
    unsigned long nthreads = (unsigned long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !nthreads || nthreads > 1024 || block.x > 1024 ||
        block.y > 1024 || block.z > 64 || grid.x > 2147483647u || grid.y > 65535 ||
        grid.z > 65535 || smem > 48 * 1024) {
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    stats.launches++;
    blk.active = 1;
    blk.kernel = name;
    blk.body = &body;
    blk.n = (int)nthreads;
    blk.f.resize(blk.n);
    emu_grid_dim = grid;
    emu_block_dim = block;
    std::vector<int> order;
    make_order(order, blk.n);
    std::mt19937 rng(cfg.seed + (unsigned)stats.launches);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                emu_block_idx = dim3(bx, by, bz);
                for (int i = 0; i < blk.n; i++)
                    fiber_init(i, block);
                stats.fibers += blk.n;
                run_block(order, rng);
            }
    blk.active = 0;
}

/* ---- cuBLAS ------------------------------------------------------------------------------ */

struct emu_cublas {
    cudaStream_t stream;
    cublasMath_t math;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new emu_cublas{NULL, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

/* cuBLAS's checks of a column-major GEMM's shape: every one that fails is
 * CUBLAS_STATUS_INVALID_VALUE, as the library answers. */
static cublasStatus_t gemm_check(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                 int m, int n, int k, int lda, int ldb, int ldc)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m < 0 || n < 0 || k < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    int arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
    if (lda < std::max(1, arows) || ldb < std::max(1, brows) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

/* Bytes a column-major (rows x cols, ld) matrix spans. */
static size_t span(int rows, int cols, int ld)
{
    if (!rows || !cols)
        return 0;
    return ((size_t)(cols - 1) * ld + rows) * sizeof(float);
}

static int gemm_on_device(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                          const float *A, int lda, const float *B, int ldb, const float *C,
                          int ldc)
{
    int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    return (!span(ar, ac, lda) || on_device(A, span(ar, ac, lda))) &&
           (!span(br, bc, ldb) || on_device(B, span(br, bc, ldb))) &&
           (!span(m, n, ldc) || on_device(C, span(m, n, ldc)));
}

static void sgemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (!m || !n)
        return;
    cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, alpha, A, lda, B, ldb,
                beta, C, ldc);
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
    cublasStatus_t s = gemm_check(h, ta, tb, m, n, k, lda, ldb, ldc);
    if (s)
        return s;
    if (!gemm_on_device(ta, tb, m, n, k, A, lda, B, ldb, C, ldc))
        emu_die("cublasSgemm(m=%d n=%d k=%d lda=%d ldb=%d ldc=%d): an operand runs past its "
                "device allocation", m, n, k, lda, ldb, ldc);
    sgemm(ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long strideA, const float *B, int ldb,
                                         long long strideB, const float *beta, float *C,
                                         int ldc, long long strideC, int batchCount)
{
    cublasStatus_t s = gemm_check(h, ta, tb, m, n, k, lda, ldb, ldc);
    if (s)
        return s;
    if (batchCount < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int b = 0; b < batchCount; b++) {
        const float *a = A + b * strideA, *bb = B + b * strideB;
        float *c = C + b * strideC;
        if (!gemm_on_device(ta, tb, m, n, k, a, lda, bb, ldb, c, ldc))
            emu_die("cublasSgemmStridedBatched(m=%d n=%d k=%d, batch %d of %d): an operand "
                    "runs past its device allocation", m, n, k, b, batchCount);
        sgemm(ta, tb, m, n, k, *alpha, a, lda, bb, ldb, *beta, c, ldc);
    }
    return CUBLAS_STATUS_SUCCESS;
}

static size_t type_bytes(cudaDataType_t t)
{
    return t == CUDA_R_32F ? 4 : 2;
}

/* A column-major (rows x cols, ld) operand of type t as fp32. */
static std::vector<float> widen(const void *p, cudaDataType_t t, int rows, int cols, int ld)
{
    std::vector<float> out((size_t)rows * cols);
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++) {
            size_t i = (size_t)c * ld + r;
            out[(size_t)c * rows + r] =
                t == CUDA_R_32F ? ((const float *)p)[i]
                                : __bfloat162float(((const __nv_bfloat16 *)p)[i]);
        }
    return out;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType_t Atype,
                            int lda, const void *B, cudaDataType_t Btype, int ldb,
                            const void *beta, void *C, cudaDataType_t Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t)
{
    cublasStatus_t s = gemm_check(h, ta, tb, m, n, k, lda, ldb, ldc);
    if (s)
        return s;
    for (cudaDataType_t t : {Atype, Btype, Ctype})
        if (t != CUDA_R_32F && t != CUDA_R_16BF)
            return CUBLAS_STATUS_NOT_SUPPORTED;
    if (Atype != Btype || (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_TF32))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    size_t sa = span(ar, ac, lda) / 4 * type_bytes(Atype);
    size_t sb = span(br, bc, ldb) / 4 * type_bytes(Btype);
    size_t sc = span(m, n, ldc) / 4 * type_bytes(Ctype);
    if ((sa && !on_device(A, sa)) || (sb && !on_device(B, sb)) || (sc && !on_device(C, sc)))
        emu_die("cublasGemmEx(m=%d n=%d k=%d lda=%d ldb=%d ldc=%d): an operand runs past its "
                "device allocation", m, n, k, lda, ldb, ldc);
    if (!m || !n)
        return CUBLAS_STATUS_SUCCESS;
    std::vector<float> a = widen(A, Atype, ar, ac, lda), b = widen(B, Btype, br, bc, ldb);
    std::vector<float> c = widen(C, Ctype, m, n, ldc);
    sgemm(ta, tb, m, n, k, *(const float *)alpha, a.data(), std::max(1, ar), b.data(),
          std::max(1, br), *(const float *)beta, c.data(), m);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            size_t o = (size_t)j * ldc + i;
            float v = c[(size_t)j * m + i];
            if (Ctype == CUDA_R_32F)
                ((float *)C)[o] = v;
            else
                ((__nv_bfloat16 *)C)[o] = __float2bfloat16(v);
        }
    return CUBLAS_STATUS_SUCCESS;
}
