/* cuda_flash.cu: fused causal grouped-query attention for the CUDA backend,
 * forward and backward, flash-attention style (FlashAttention-2's loop
 * order), in fp32 with scalar FMAs.
 *
 * Forward: one block per (query tile, head, batch row). The query tile stays
 * in shared memory; key and value tiles stream through it; each query row
 * keeps a running max m and sum l of exp(s - m) (online softmax) and its
 * output row in registers, rescaled when m grows. Key tiles past the tile's
 * last query row are never visited (the causal mask skips them whole), and
 * no (T, T) buffer exists anywhere. lse = m + log(l) is saved.
 *
 * Backward: scores are recomputed from the saved lse. Two kernels, no
 * atomics, so results are bitwise repeatable:
 *   - dK, dV: one block per (key tile, kv head, batch row), looping over
 *     the query heads of the group and the query tiles at or below the
 *     diagonal, accumulating dK and dV in registers in a fixed order;
 *   - dQ: one block per (query tile, head, batch row), looping over the key
 *     tiles up to the diagonal.
 * Drow = rowsum(dO * O), the softmax backward's row term, comes in from the
 * caller (cuda_attention.cu computes it).
 *
 * Grouped-query attention reads K and V in place: query head h uses kv head
 * h / (NH / NKV); nothing is copied per head. Attention dropout uses the
 * naive path's mask: dt_dropout keyed on ((b*NH + h)*T + i)*T + j
 * (backend.h), applied to P for the output and regenerated in the backward.
 *
 * A forward variant on tensor cores (bf16 wmma, fp32 accumulation) runs
 * with DT_ATTENTION=bf16: wider tolerance (about 1e-2 relative), see
 * k_flash_fwd_bf16.
 *
 * Head dims 64 and 128 are compiled (cuda_flash_supports); the caller falls
 * back to the naive kernels for other head dims. Every tile is padded to
 * D + 1 floats per row in shared memory, so the rows a warp reads at once
 * fall in different banks. Static shared memory stays under 48 KiB. */
#include "cuda_internal.cuh"

#include <cuda_bf16.h>
#include <mma.h>

/* Full unrolling where a loop indexes a register array; partial (8) for the
 * dot products, whose full unrolling at D = 128 spills registers. */
#ifdef __CUDACC__
#define FL_UNROLL _Pragma("unroll")
#define FL_UNROLL8 _Pragma("unroll 8")
#else
#define FL_UNROLL
#define FL_UNROLL8
#endif

#define FL_THREADS 128 /* threads per block, every kernel here */
#define FL_FULL 0xffffffffu

/* =========================================================================
 * device helpers
 * ========================================================================= */

/* Rows r0 .. r0+R-1 of head h of batch row b of a (B,T,H,D) tensor into s
 * (R, D+1); rows at or past T are zeros. Every thread of the block takes
 * part; the caller places the barriers. */
template <int D, int R>
static __device__ void fl_load(float *s, const float *g, long b, int r0, int T,
                               int H, int h)
{
    for (int x = threadIdx.x; x < R * D; x += FL_THREADS) {
        int r = x / D, d = x % D, t = r0 + r;
        s[r * (D + 1) + d] = t < T ? g[((b * T + t) * H + h) * D + d] : 0.0f;
    }
}

/* Dot product of two shared-memory rows of D floats. */
template <int D>
static __device__ inline float fl_dot(const float *a, const float *b)
{
    float s = 0.0f;
    FL_UNROLL8
    for (int d = 0; d < D; d++)
        s += a[d] * b[d];
    return s;
}

/* Max and sum over the TPR consecutive lanes that share a row. */
template <int TPR> static __device__ inline float fl_group_max(float v)
{
    FL_UNROLL
    for (int o = 1; o < TPR; o <<= 1)
        v = fmaxf(v, __shfl_xor_sync(FL_FULL, v, o));
    return v;
}

template <int TPR> static __device__ inline float fl_group_sum(float v)
{
    FL_UNROLL
    for (int o = 1; o < TPR; o <<= 1)
        v += __shfl_xor_sync(FL_FULL, v, o);
    return v;
}

/* =========================================================================
 * kernels
 * ========================================================================= */

/* Forward. Block: BM query rows of head blockIdx.y, batch row blockIdx.z;
 * the tiles run last first (blockIdx.x = 0 is the last, longest tile).
 * Thread t owns query row t / TPR and the score columns and output dims
 * t % TPR + TPR * x. out (B,T,NH,D), lse (B,NH,T). */
template <int D, int BM, int BN>
static __global__ void k_flash_fwd(float *out, float *lse, const float *q,
                                   const float *k, const float *v, int T,
                                   int NH, int NKV, float scale, uint64_t key,
                                   uint32_t thr, float dscale)
{
    constexpr int TPR = FL_THREADS / BM, NS = BN / TPR, NO = D / TPR;
    static_assert(FL_THREADS % BM == 0 && BN % TPR == 0 && D % TPR == 0 &&
                      TPR <= 32, "tile shape");
    __shared__ float sq[BM * (D + 1)];  /* the query tile */
    __shared__ float skv[BN * (D + 1)]; /* a key tile, then its value tile */
    __shared__ float sp[BM * (BN + 1)]; /* P of the tile (dropout applied) */
    int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV);
    int i0 = (gridDim.x - 1 - blockIdx.x) * BM;
    int r = threadIdx.x / TPR, qd = threadIdx.x % TPR, i = i0 + r;
    uint64_t rowkey = (((uint64_t)b * NH + h) * T + i) * T; /* + j: dropout */
    float o[NO], m = -INFINITY, l = 0.0f;
    FL_UNROLL
    for (int x = 0; x < NO; x++)
        o[x] = 0.0f;
    fl_load<D, BM>(sq, q, b, i0, T, NH, h);
    /* Key tiles past the last query row of this tile are fully masked. */
    int jend = min(T, i0 + BM);
    for (int j0 = 0; j0 < jend; j0 += BN) {
        __syncthreads(); /* sq loaded; the last tile's reads of skv done */
        fl_load<D, BN>(skv, k, b, j0, T, NKV, g);
        __syncthreads();
        float s[NS], mt = -INFINITY;
        FL_UNROLL
        for (int x = 0; x < NS; x++) {
            int c = qd + TPR * x;
            float d = fl_dot<D>(sq + r * (D + 1), skv + c * (D + 1));
            s[x] = j0 + c <= i ? d * scale : -INFINITY;
            mt = fmaxf(mt, s[x]);
        }
        /* The first tile holds key 0 <= i, so m is finite from then on. */
        float mn = fmaxf(m, fl_group_max<TPR>(mt));
        float corr = expf(m - mn), ps = 0.0f;
        FL_UNROLL
        for (int x = 0; x < NS; x++) {
            int c = qd + TPR * x;
            float p = expf(s[x] - mn);
            ps += p;
            if (thr)
                p = dt_dropout(p, key, rowkey + j0 + c, thr, dscale);
            sp[r * (BN + 1) + c] = p;
        }
        l = l * corr + fl_group_sum<TPR>(ps);
        m = mn;
        FL_UNROLL
        for (int x = 0; x < NO; x++)
            o[x] *= corr;
        __syncthreads(); /* sp written; the scores' reads of skv done */
        fl_load<D, BN>(skv, v, b, j0, T, NKV, g);
        __syncthreads();
        for (int c = 0; c < BN; c++) {
            float p = sp[r * (BN + 1) + c];
            const float *vr = skv + c * (D + 1) + qd;
            FL_UNROLL
            for (int x = 0; x < NO; x++)
                o[x] += p * vr[TPR * x];
        }
    }
    if (i >= T)
        return;
    float inv = 1.0f / l;
    float *orow = out + (((long)b * T + i) * NH + h) * D + qd;
    FL_UNROLL
    for (int x = 0; x < NO; x++)
        orow[TPR * x] = o[x] * inv;
    if (qd == 0)
        lse[((long)b * NH + h) * T + i] = m + logf(l);
}

/* Backward, dK and dV. Block: BN keys of kv head blockIdx.y, batch row
 * blockIdx.z; steps of BM query rows over every query head of the group.
 * Thread t owns key t / TPR and the dims t % TPR + TPR * x of its dK, dV
 * rows (registers), and the score entries of query rows t % TPR + TPR * x
 * of each step. dk, dv (B,T,NKV,D). */
template <int D, int BN, int BM>
static __global__ void k_flash_bwd_kv(float *dk, float *dv, const float *dout,
                                      const float *lse, const float *drow,
                                      const float *q, const float *k,
                                      const float *v, int T, int NH, int NKV,
                                      float scale, uint64_t key, uint32_t thr,
                                      float dscale)
{
    constexpr int TPR = FL_THREADS / BN, NS = BM / TPR, NO = D / TPR;
    static_assert(FL_THREADS % BN == 0 && BM % TPR == 0 && D % TPR == 0 &&
                      TPR <= 32, "tile shape");
    __shared__ float sk[BN * (D + 1)], sv[BN * (D + 1)]; /* this block's keys */
    __shared__ float sq[BM * (D + 1)], sdo[BM * (D + 1)]; /* the step's rows */
    __shared__ float sp[BN * (BM + 1)];  /* P∘Z, transposed (key, query) */
    __shared__ float sds[BN * (BM + 1)]; /* dS, transposed */
    __shared__ float sl[BM], sr[BM];     /* lse and Drow of the step's rows */
    int b = blockIdx.z, g = blockIdx.y, rep = NH / NKV;
    int j0 = blockIdx.x * BN;
    int c = threadIdx.x / TPR, qd = threadIdx.x % TPR, j = j0 + c;
    float ak[NO], av[NO];
    FL_UNROLL
    for (int x = 0; x < NO; x++)
        ak[x] = av[x] = 0.0f;
    fl_load<D, BN>(sk, k, b, j0, T, NKV, g);
    fl_load<D, BN>(sv, v, b, j0, T, NKV, g);
    for (int hh = 0; hh < rep; hh++) {
        int h = g * rep + hh;
        long hrow = ((long)b * NH + h) * T; /* (b, h) in (B,NH,T) */
        /* Query rows below j0 see none of these keys. */
        for (int i0 = j0 / BM * BM; i0 < T; i0 += BM) {
            __syncthreads(); /* the last step's reads of every tile done */
            fl_load<D, BM>(sq, q, b, i0, T, NH, h);
            fl_load<D, BM>(sdo, dout, b, i0, T, NH, h);
            for (int x = threadIdx.x; x < BM; x += FL_THREADS) {
                int ok = i0 + x < T;
                sl[x] = ok ? lse[hrow + i0 + x] : 0.0f;
                sr[x] = ok ? drow[hrow + i0 + x] : 0.0f;
            }
            __syncthreads();
            FL_UNROLL
            for (int x = 0; x < NS; x++) {
                int rr = qd + TPR * x, i = i0 + rr;
                float sdot = fl_dot<D>(sq + rr * (D + 1), sk + c * (D + 1));
                float pdot = fl_dot<D>(sdo + rr * (D + 1), sv + c * (D + 1));
                int vis = i < T && j <= i;
                float p = vis ? expf(sdot * scale - sl[rr]) : 0.0f;
                /* With dropout, out = (P∘Z) V: dV takes P∘Z and
                 * dS = P ∘ (dP∘Z - Drow), Z = mask / (1 - p). */
                float z = thr && vis ? dt_dropout(1.0f, key, (uint64_t)(hrow + i) * T + j,
                                                  thr, dscale)
                                     : 1.0f;
                sp[c * (BM + 1) + rr] = p * z;
                sds[c * (BM + 1) + rr] = p * (pdot * z - sr[rr]);
            }
            __syncthreads();
            for (int rr = 0; rr < BM; rr++) {
                float pz = sp[c * (BM + 1) + rr], ds = sds[c * (BM + 1) + rr];
                const float *dor = sdo + rr * (D + 1) + qd, *qr = sq + rr * (D + 1) + qd;
                FL_UNROLL
                for (int x = 0; x < NO; x++) {
                    av[x] += pz * dor[TPR * x];
                    ak[x] += ds * qr[TPR * x];
                }
            }
        }
    }
    if (j >= T)
        return;
    long off = (((long)b * T + j) * NKV + g) * D + qd;
    FL_UNROLL
    for (int x = 0; x < NO; x++) {
        dk[off + TPR * x] = ak[x] * scale;
        dv[off + TPR * x] = av[x];
    }
}

/* Backward, dQ. Block: BM query rows of head blockIdx.y, batch row
 * blockIdx.z (last tile first), over the key tiles up to the diagonal.
 * Thread t owns query row t / TPR, the score columns and dQ dims
 * t % TPR + TPR * x. dq (B,T,NH,D). */
template <int D, int BM, int BN>
static __global__ void k_flash_bwd_q(float *dq, const float *dout,
                                     const float *lse, const float *drow,
                                     const float *q, const float *k,
                                     const float *v, int T, int NH, int NKV,
                                     float scale, uint64_t key, uint32_t thr,
                                     float dscale)
{
    constexpr int TPR = FL_THREADS / BM, NS = BN / TPR, NO = D / TPR;
    static_assert(FL_THREADS % BM == 0 && BN % TPR == 0 && D % TPR == 0 &&
                      TPR <= 32, "tile shape");
    __shared__ float sq[BM * (D + 1)], sdo[BM * (D + 1)]; /* this block's rows */
    __shared__ float sk[BN * (D + 1)], sv[BN * (D + 1)];  /* the step's keys */
    __shared__ float sds[BM * (BN + 1)];                  /* dS of the step */
    int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV);
    int i0 = (gridDim.x - 1 - blockIdx.x) * BM;
    int r = threadIdx.x / TPR, qd = threadIdx.x % TPR, i = i0 + r;
    long hrow = ((long)b * NH + h) * T;
    float li = i < T ? lse[hrow + i] : 0.0f, dr = i < T ? drow[hrow + i] : 0.0f;
    float aq[NO];
    FL_UNROLL
    for (int x = 0; x < NO; x++)
        aq[x] = 0.0f;
    fl_load<D, BM>(sq, q, b, i0, T, NH, h);
    fl_load<D, BM>(sdo, dout, b, i0, T, NH, h);
    int jend = min(T, i0 + BM);
    for (int j0 = 0; j0 < jend; j0 += BN) {
        __syncthreads(); /* sq, sdo loaded; the last step's reads done */
        fl_load<D, BN>(sk, k, b, j0, T, NKV, g);
        fl_load<D, BN>(sv, v, b, j0, T, NKV, g);
        __syncthreads();
        FL_UNROLL
        for (int x = 0; x < NS; x++) {
            int c = qd + TPR * x, j = j0 + c;
            float sdot = fl_dot<D>(sq + r * (D + 1), sk + c * (D + 1));
            float pdot = fl_dot<D>(sdo + r * (D + 1), sv + c * (D + 1));
            int vis = i < T && j <= i;
            float p = vis ? expf(sdot * scale - li) : 0.0f;
            float z = thr && vis ? dt_dropout(1.0f, key, (uint64_t)(hrow + i) * T + j,
                                              thr, dscale)
                                 : 1.0f;
            sds[r * (BN + 1) + c] = p * (pdot * z - dr);
        }
        __syncthreads();
        for (int c = 0; c < BN; c++) {
            float ds = sds[r * (BN + 1) + c];
            const float *kr = sk + c * (D + 1) + qd;
            FL_UNROLL
            for (int x = 0; x < NO; x++)
                aq[x] += ds * kr[TPR * x];
        }
    }
    if (i >= T)
        return;
    float *qrow = dq + (((long)b * T + i) * NH + h) * D + qd;
    FL_UNROLL
    for (int x = 0; x < NO; x++)
        qrow[TPR * x] = aq[x] * scale;
}

/* Forward on tensor cores: bf16 wmma tiles (16 x 16 x 16) with fp32
 * accumulation, chosen by DT_ATTENTION=bf16 (head dims 64 and 128; the
 * backward stays the fp32 kernels above). Q, K and V are rounded to bf16 in
 * shared memory and P to bf16 for P V; scores, the online softmax, its
 * running max and sum and the output rows stay fp32. Block: 4 warps, each
 * 16 query rows (64 rows), key tiles of 32. Lane l of a warp owns row l / 2
 * of the warp's rows and, in each 16-wide column block, the 8 columns
 * (l % 2) * 8 .. + 7 (its output) or, of the score tile, columns
 * (l % 2) * 16 .. + 15. Fragments go through shared memory (wmma's register
 * layout is opaque): scores to ss, each 16 x 16 block of P V to the warp's
 * scratch, from which the lanes rescale and add into their registers. */
#define FLB_BM 64
#define FLB_BN 32
template <int D>
static __global__ void k_flash_fwd_bf16(float *out, float *lse, const float *q,
                                        const float *k, const float *v, int T,
                                        int NH, int NKV, float scale,
                                        uint64_t key, uint32_t thr, float dscale)
{
    using namespace nvcuda;
    constexpr int BM = FLB_BM, BN = FLB_BN, NC = D / 16;
    /* Leading dimensions: multiples of 8 bf16 / 4 floats (wmma), padded
     * against bank conflicts; 16-row steps stay 32-byte aligned. */
    constexpr int LQ = D + 8, LS = BN + 4, LP = BN + 8, LR = 20;
    alignas(32) __shared__ __nv_bfloat16 sq[BM * LQ];  /* the query tile */
    alignas(32) __shared__ __nv_bfloat16 skv[BN * LQ]; /* keys, then values */
    alignas(32) __shared__ float ss[BM * LS];          /* scores (fp32) */
    alignas(32) __shared__ __nv_bfloat16 sp[BM * LP];  /* P (dropout applied) */
    alignas(32) __shared__ float sr[4 * 16 * LR];      /* per warp: a P V block */
    int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV);
    int i0 = (gridDim.x - 1 - blockIdx.x) * BM;
    int w = threadIdx.x / 32, lane = threadIdx.x & 31, half = lane & 1;
    int rw = w * 16 + lane / 2, i = i0 + rw; /* this lane's query row */
    uint64_t rowkey = (((uint64_t)b * NH + h) * T + i) * T; /* + j: dropout */
    float o[NC][8], m = -INFINITY, l = 0.0f;
    FL_UNROLL
    for (int n = 0; n < NC; n++)
        FL_UNROLL
        for (int e = 0; e < 8; e++)
            o[n][e] = 0.0f;
    for (int x = threadIdx.x; x < BM * D; x += FL_THREADS) {
        int r = x / D, d = x % D, t = i0 + r;
        sq[r * LQ + d] = __float2bfloat16(t < T ? q[(((long)b * T + t) * NH + h) * D + d] : 0.0f);
    }
    float *scr = sr + w * 16 * LR;
    int jend = min(T, i0 + BM);
    for (int j0 = 0; j0 < jend; j0 += BN) {
        __syncthreads(); /* sq stored; the last tile's reads of skv done */
        for (int x = threadIdx.x; x < BN * D; x += FL_THREADS) {
            int r = x / D, d = x % D, t = j0 + r;
            skv[r * LQ + d] = __float2bfloat16(t < T ? k[(((long)b * T + t) * NKV + g) * D + d] : 0.0f);
        }
        __syncthreads();
        /* The warp's scores S (16 x BN) = Q_w K^T. */
        FL_UNROLL
        for (int nb = 0; nb < BN / 16; nb++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            FL_UNROLL
            for (int kk = 0; kk < D / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
                wmma::load_matrix_sync(fa, sq + w * 16 * LQ + kk * 16, LQ);
                wmma::load_matrix_sync(fb, skv + nb * 16 * LQ + kk * 16, LQ);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(ss + w * 16 * LS + nb * 16, acc, LS, wmma::mem_row_major);
        }
        __syncwarp();
        float s[16], mt = -INFINITY;
        FL_UNROLL
        for (int x = 0; x < 16; x++) {
            int c = half * 16 + x;
            s[x] = j0 + c <= i ? ss[rw * LS + c] * scale : -INFINITY;
            mt = fmaxf(mt, s[x]);
        }
        /* The first tile holds key 0 <= i, so m is finite from then on. */
        float mn = fmaxf(m, fl_group_max<2>(mt));
        float corr = expf(m - mn), ps = 0.0f;
        FL_UNROLL
        for (int x = 0; x < 16; x++) {
            int c = half * 16 + x;
            float p = expf(s[x] - mn);
            ps += p;
            if (thr)
                p = dt_dropout(p, key, rowkey + j0 + c, thr, dscale);
            sp[rw * LP + c] = __float2bfloat16(p);
        }
        l = l * corr + fl_group_sum<2>(ps);
        m = mn;
        FL_UNROLL
        for (int n = 0; n < NC; n++)
            FL_UNROLL
            for (int e = 0; e < 8; e++)
                o[n][e] *= corr;
        __syncthreads(); /* sp written; every warp's reads of the keys done */
        for (int x = threadIdx.x; x < BN * D; x += FL_THREADS) {
            int r = x / D, d = x % D, t = j0 + r;
            skv[r * LQ + d] = __float2bfloat16(t < T ? v[(((long)b * T + t) * NKV + g) * D + d] : 0.0f);
        }
        __syncthreads();
        /* O_w += P_w V, one 16-wide column block at a time. */
        FL_UNROLL
        for (int n = 0; n < NC; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            FL_UNROLL
            for (int kk = 0; kk < BN / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
                wmma::load_matrix_sync(fa, sp + w * 16 * LP + kk * 16, LP);
                wmma::load_matrix_sync(fb, skv + kk * 16 * LQ + n * 16, LQ);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(scr, acc, LR, wmma::mem_row_major);
            __syncwarp();
            FL_UNROLL
            for (int e = 0; e < 8; e++)
                o[n][e] += scr[(lane / 2) * LR + half * 8 + e];
            __syncwarp(); /* read before the next block overwrites it */
        }
    }
    if (i >= T)
        return;
    float inv = 1.0f / l;
    float *orow = out + (((long)b * T + i) * NH + h) * D + half * 8;
    FL_UNROLL
    for (int n = 0; n < NC; n++)
        FL_UNROLL
        for (int e = 0; e < 8; e++)
            orow[n * 16 + e] = o[n][e] * inv;
    if (half == 0)
        lse[((long)b * NH + h) * T + i] = m + logf(l);
}

/* =========================================================================
 * launchers
 * ========================================================================= */

/* Tile shapes per head dim, chosen to keep each kernel's static shared
 * memory under 48 KiB (padded rows of D + 1 floats):
 *   forward  D=64, 128: 32 query rows x 32 keys (21 KiB, 37 KiB);
 *   dK/dV    D=64: 32 keys x 32 query rows (42 KiB);
 *            D=128: 32 keys x 8 query rows (44 KiB);
 *   dQ       D=64: 32 x 32 (38 KiB); D=128: 16 x 16 (34 KiB). */
int cuda_flash_supports(int D) { return D == 64 || D == 128; }

static unsigned tiles(int T, int n) { return (unsigned)((T + n - 1) / n); }

template <int D, int BM, int BN>
static void flash_fwd(cuda_ctx *c, float *out, float *lse, const float *q,
                      const float *k, const float *v, int B, int T, int NH,
                      int NKV, float scale, uint64_t key, uint32_t thr,
                      float dscale)
{
    dim3 grid(tiles(T, BM), NH, B);
    DT_LAUNCH((k_flash_fwd<D, BM, BN>), grid, FL_THREADS, 0, c->stream)(
        out, lse, q, k, v, T, NH, NKV, scale, key, thr, dscale);
    LAUNCHED(c);
}

template <int D>
static void flash_fwd_bf16(cuda_ctx *c, float *out, float *lse, const float *q,
                           const float *k, const float *v, int B, int T, int NH,
                           int NKV, float scale, uint64_t key, uint32_t thr,
                           float dscale)
{
    dim3 grid(tiles(T, FLB_BM), NH, B);
    DT_LAUNCH(k_flash_fwd_bf16<D>, grid, FL_THREADS, 0, c->stream)(
        out, lse, q, k, v, T, NH, NKV, scale, key, thr, dscale);
    LAUNCHED(c);
}

template <int D, int KBN, int KBM, int QBM, int QBN>
static void flash_bwd(cuda_ctx *c, float *dq, float *dk, float *dv,
                      const float *dout, const float *lse, const float *drow,
                      const float *q, const float *k, const float *v, int B,
                      int T, int NH, int NKV, float scale, uint64_t key,
                      uint32_t thr, float dscale)
{
    dim3 gkv(tiles(T, KBN), NKV, B), gq(tiles(T, QBM), NH, B);
    DT_LAUNCH((k_flash_bwd_kv<D, KBN, KBM>), gkv, FL_THREADS, 0, c->stream)(
        dk, dv, dout, lse, drow, q, k, v, T, NH, NKV, scale, key, thr, dscale);
    if (LAUNCHED(c) != 0)
        return;
    DT_LAUNCH((k_flash_bwd_q<D, QBM, QBN>), gq, FL_THREADS, 0, c->stream)(
        dq, dout, lse, drow, q, k, v, T, NH, NKV, scale, key, thr, dscale);
    LAUNCHED(c);
}

void cuda_flash_fwd(cuda_ctx *c, float *out, float *lse, const float *q,
                    const float *k, const float *v, int B, int T, int NH,
                    int NKV, int D, uint32_t thr, float dscale, uint64_t key,
                    int bf16)
{
    float scale = 1.0f / sqrtf((float)D);
    if (bf16 && D == 64)
        flash_fwd_bf16<64>(c, out, lse, q, k, v, B, T, NH, NKV, scale, key,
                           thr, dscale);
    else if (bf16 && D == 128)
        flash_fwd_bf16<128>(c, out, lse, q, k, v, B, T, NH, NKV, scale, key,
                            thr, dscale);
    else if (D == 64)
        flash_fwd<64, 32, 32>(c, out, lse, q, k, v, B, T, NH, NKV, scale, key,
                              thr, dscale);
    else if (D == 128)
        flash_fwd<128, 32, 32>(c, out, lse, q, k, v, B, T, NH, NKV, scale, key,
                               thr, dscale);
    else
        cuda_fail(c, DT_EINVAL, "flash attention", "head dim not 64 or 128",
                  __FILE__, __LINE__);
}

void cuda_flash_bwd(cuda_ctx *c, float *dq, float *dk, float *dv,
                    const float *dout, const float *lse, const float *drow,
                    const float *q, const float *k, const float *v, int B,
                    int T, int NH, int NKV, int D, uint32_t thr, float dscale,
                    uint64_t key)
{
    float scale = 1.0f / sqrtf((float)D);
    if (D == 64)
        flash_bwd<64, 32, 32, 32, 32>(c, dq, dk, dv, dout, lse, drow, q, k, v,
                                      B, T, NH, NKV, scale, key, thr, dscale);
    else if (D == 128)
        flash_bwd<128, 32, 8, 16, 16>(c, dq, dk, dv, dout, lse, drow, q, k, v,
                                      B, T, NH, NKV, scale, key, thr, dscale);
    else
        cuda_fail(c, DT_EINVAL, "flash attention", "head dim not 64 or 128",
                  __FILE__, __LINE__);
}
