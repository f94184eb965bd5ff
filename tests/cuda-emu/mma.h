/* mma.h (emulated): nvcuda::wmma, the warp-level matrix fragments, for
 * bf16 x bf16 -> fp32 and fp32 tiles of 16 x 16 x 16.
 *
 * On a GPU a fragment is spread over the 32 lanes of a warp in an opaque
 * layout. Here every lane holds the whole tile, loads and computes it
 * alike, and stores the same values: the result is the same. Loads, stores
 * and products are warp collectives, as on a GPU: every lane of a full warp
 * must reach each one (the emulator stops a warp whose lanes do not).
 * Products are accumulated in fp32 in k order. */
#ifndef DT_CUDA_EMU_MMA_H
#define DT_CUDA_EMU_MMA_H

#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

/* Every lane of the warp meets here, as the _sync operations require. */
static inline void emu_warp_collective(void) { (void)emu_shfl_xor(0xffffffffu, 0, 0, 32); }

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
    static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
    static constexpr int num_elements = rows * cols;
    float x[rows * cols]; /* the whole tile, row-major, as fp32 */
};

template <typename Use, int M, int N, int K, typename T, typename L>
static inline void fill_fragment(fragment<Use, M, N, K, T, L> &f, float v)
{
    for (int i = 0; i < f.num_elements; i++)
        f.x[i] = v;
}

static inline float emu_wmma_load(const __nv_bfloat16 *p, long i) { return __bfloat162float(p[i]); }
static inline float emu_wmma_load(const float *p, long i) { return p[i]; }

/* A or B tile from memory with leading dimension ldm (elements). */
template <typename Use, int M, int N, int K, typename T, typename L, typename P>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, L> &f, const P *p, unsigned ldm)
{
    emu_warp_collective();
    constexpr bool col = std::is_same<L, col_major>::value;
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            f.x[r * f.cols + c] = emu_wmma_load(p, col ? (long)c * ldm + r : (long)r * ldm + c);
}

/* An accumulator tile from memory in the given layout. */
template <int M, int N, int K>
static inline void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p,
                                    unsigned ldm, layout_t layout)
{
    emu_warp_collective();
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            f.x[r * N + c] = p[layout == mem_col_major ? (long)c * ldm + r : (long)r * ldm + c];
}

template <int M, int N, int K>
static inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f,
                                     unsigned ldm, layout_t layout)
{
    emu_warp_collective();
    emu_warp_collective();
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            p[layout == mem_col_major ? (long)c * ldm + r : (long)r * ldm + c] = f.x[r * N + c];
}

/* d = a b + c, fp32 accumulation. */
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
static inline void mma_sync(fragment<accumulator, M, N, K, float> &d,
                            const fragment<matrix_a, M, N, K, TA, LA> &a,
                            const fragment<matrix_b, M, N, K, TB, LB> &b,
                            const fragment<accumulator, M, N, K, float> &c)
{
    emu_warp_collective();
    float out[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = c.x[i * N + j];
            for (int k = 0; k < K; k++)
                s += a.x[i * K + k] * b.x[k * N + j];
            out[i * N + j] = s;
        }
    for (int i = 0; i < M * N; i++)
        d.x[i] = out[i];
}

} // namespace wmma
} // namespace nvcuda

#endif
