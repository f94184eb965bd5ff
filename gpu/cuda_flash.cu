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
 * Variants on tensor cores (bf16 wmma 16 x 16 x 16, fp32 accumulation) of
 * the forward and of both backward kernels run with DT_ATTENTION=bf16:
 * k_flash_fwd_bf16, k_flash_bwd_kv_bf16 and k_flash_bwd_q_bf16. Operands of
 * the products (Q, K, V, dO, P, dS) are rounded to bf16; softmax, scores
 * and accumulators stay fp32; same dropout mask, no atomics, the same
 * causal tile skipping and in-place GQA. Tolerance against the fp32 CPU
 * backend 1e-2 relative (measured under the emulator: out and lse up to
 * 2.4e-3, dq and dk up to 3.7e-3, dv up to 2.4e-3).
 *
 * Head dims 64 and 128 are compiled (cuda_flash_supports); the caller falls
 * back to the naive kernels for other head dims. Every fp32 tile is padded
 * to D + 1 floats per row in shared memory, so the rows a warp reads at once
 * fall in different banks (bf16 tiles: D + 8, as wmma wants multiples of 8).
 * Static shared memory stays under 48 KiB in every kernel. */
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
 * backward: k_flash_bwd_kv_bf16 and k_flash_bwd_q_bf16 below). Q, K and V
 * are rounded to bf16 in shared memory and P to bf16 for P V; scores, the
 * online softmax, its running max and sum and the output rows stay fp32.
 * Block: 4 warps, each 16 query rows (64 rows), key tiles of 32. Lane l of
 * a warp owns row l / 2 of the warp's rows and, in each 16-wide column
 * block, the 8 columns
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

/* Backward on tensor cores (DT_ATTENTION=bf16): the two kernels above with
 * every product on bf16 wmma tiles (16 x 16 x 16, fp32 accumulation). Q, K,
 * V and dO are rounded to bf16 in shared memory; S = Q K^T and dP = dO V^T
 * are recomputed on tensor cores, P = exp(S * scale - lse) and
 * dS = P ∘ (dP∘Z - Drow) in fp32, and P∘Z and dS rounded to bf16 for
 * dV += (P∘Z)^T dO, dK += dS^T Q and dQ += dS K. Dropout's Z is the fp32
 * kernels' (same mask, same key). No atomics: each block owns its output
 * tile and accumulates it in a fixed order, so results are bitwise
 * repeatable. Block: 4 warps; both kernels take tiles of 32 query rows by
 * 32 keys, warp w the 16 x 16 score block (w / 2, w % 2) and, of the
 * block's 32 x D output, rows 16 * (w / 2) .. + 15, columns
 * (w % 2) * D / 2 .. + D / 2 - 1, held in accumulator fragments.
 * Each warp's score blocks go through its 16 x 16 scratch in shared memory
 * (wmma's register layout is opaque): lane l takes row l / 2, columns
 * (l % 2) * 8 .. + 7. Static shared memory (D = 128 / 64): dK/dV 44 / 28
 * KiB, dQ 41 / 26 KiB. */
#define FLBB 32 /* query rows and keys per tile, both backward kernels */

/* Rows r0 .. r0+R-1 of head h of batch row b of a (B,T,H,D) tensor into s
 * (R, LQ) as bf16; rows at or past T are zeros. Every thread takes part;
 * the caller places the barriers. */
template <int D, int R, int LQ>
static __device__ void flb_load(__nv_bfloat16 *s, const float *g, long b,
                                int r0, int T, int H, int h)
{
    for (int x = threadIdx.x; x < R * D; x += FL_THREADS) {
        int r = x / D, d = x % D, t = r0 + r;
        s[r * LQ + d] = __float2bfloat16(t < T ? g[((b * T + t) * H + h) * D + d] : 0.0f);
    }
}

/* The warp's 16 x 16 block of A B^T (A rows a, B rows bm, D columns, both
 * bf16 with leading dimension LQ) into its scratch scr (ldm LR), and this
 * lane's 8 values of it (row lane / 2, columns (lane % 2) * 8 ..) into o. */
template <int D, int LQ, int LR>
static __device__ inline void flb_abt(float o[8], const __nv_bfloat16 *a,
                                      const __nv_bfloat16 *bm, float *scr)
{
    using namespace nvcuda;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    FL_UNROLL
    for (int kk = 0; kk < D / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, a + kk * 16, LQ);
        wmma::load_matrix_sync(fb, bm + kk * 16, LQ);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(scr, acc, LR, wmma::mem_row_major);
    __syncwarp();
    int lane = threadIdx.x & 31;
    FL_UNROLL
    for (int e = 0; e < 8; e++)
        o[e] = scr[(lane / 2) * LR + (lane & 1) * 8 + e];
    __syncwarp(); /* read before the scratch is written again */
}

/* acc[n] += A B: A (16 x K, bf16, ldm la) times the 16-wide column blocks
 * n of B (K x ..., bf16, ldm lb), n < NC. */
template <int NC, int K>
static __device__ inline void flb_acc(
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> *acc,
    const __nv_bfloat16 *a, int la, const __nv_bfloat16 *bm, int lb)
{
    using namespace nvcuda;
    FL_UNROLL
    for (int n = 0; n < NC; n++)
        FL_UNROLL
        for (int kk = 0; kk < K / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
            wmma::load_matrix_sync(fa, a + kk * 16, la);
            wmma::load_matrix_sync(fb, bm + kk * 16 * lb + n * 16, lb);
            wmma::mma_sync(acc[n], fa, fb, acc[n]);
        }
}

/* Stores acc[n] * mul (the warp's rows row0 .. row0 + 15, column blocks
 * col0 / 16 + n) into rows of a (B,T,H,D) tensor, through the scratch;
 * rows at or past T are not written. */
template <int D, int NC, int LR>
static __device__ inline void flb_store(
    float *g, const nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> *acc,
    float *scr, float mul, long b, int row0, int col0, int T, int H, int h)
{
    using namespace nvcuda;
    int lane = threadIdx.x & 31, t = row0 + lane / 2;
    FL_UNROLL
    for (int n = 0; n < NC; n++) {
        wmma::store_matrix_sync(scr, acc[n], LR, wmma::mem_row_major);
        __syncwarp();
        if (t < T) {
            float *grow = g + ((b * T + t) * H + h) * D + col0 + n * 16 + (lane & 1) * 8;
            FL_UNROLL
            for (int e = 0; e < 8; e++)
                grow[e] = scr[(lane / 2) * LR + (lane & 1) * 8 + e] * mul;
        }
        __syncwarp(); /* read before the next block overwrites it */
    }
}

/* Backward on tensor cores, dK and dV: FLBB keys of kv head blockIdx.y,
 * batch row blockIdx.z; steps of FLBB query rows over every query head of
 * the group, from the diagonal down. Scores are computed transposed,
 * S^T = K Q^T and dP^T = V dO^T, so that P∘Z and dS land in shared memory
 * as (key, query) tiles, the A operands of dV and dK. dk, dv (B,T,NKV,D). */
template <int D>
static __global__ void k_flash_bwd_kv_bf16(float *dk, float *dv,
                                           const float *dout, const float *lse,
                                           const float *drow, const float *q,
                                           const float *k, const float *v,
                                           int T, int NH, int NKV, float scale,
                                           uint64_t key, uint32_t thr,
                                           float dscale)
{
    using namespace nvcuda;
    constexpr int BN = FLBB, BM = FLBB, NC = D / 32;
    constexpr int LQ = D + 8, LP = BM + 8, LR = 20;
    alignas(32) __shared__ __nv_bfloat16 sk[BN * LQ], sv[BN * LQ]; /* the keys */
    alignas(32) __shared__ __nv_bfloat16 sq[BM * LQ], sdo[BM * LQ]; /* a step */
    alignas(32) __shared__ __nv_bfloat16 sp[BN * LP];  /* P∘Z, (key, query) */
    alignas(32) __shared__ __nv_bfloat16 sds[BN * LP]; /* dS, (key, query) */
    alignas(32) __shared__ float sr[4 * 16 * LR];      /* per warp: a block */
    __shared__ float sl[BM], sd[BM]; /* lse and Drow of the step's rows */
    int b = blockIdx.z, g = blockIdx.y, rep = NH / NKV, j0 = blockIdx.x * BN;
    int w = threadIdx.x / 32, lane = threadIdx.x & 31, wr = w / 2, wc = w % 2;
    int c = wr * 16 + lane / 2, j = j0 + c; /* this lane's key */
    float *scr = sr + w * 16 * LR;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> ak[NC], av[NC];
    FL_UNROLL
    for (int n = 0; n < NC; n++) {
        wmma::fill_fragment(ak[n], 0.0f);
        wmma::fill_fragment(av[n], 0.0f);
    }
    flb_load<D, BN, LQ>(sk, k, b, j0, T, NKV, g);
    flb_load<D, BN, LQ>(sv, v, b, j0, T, NKV, g);
    for (int hh = 0; hh < rep; hh++) {
        int h = g * rep + hh;
        long hrow = ((long)b * NH + h) * T; /* (b, h) in (B,NH,T) */
        /* Query rows below j0 see none of these keys (BM = BN). */
        for (int i0 = j0; i0 < T; i0 += BM) {
            __syncthreads(); /* every warp done with the last step's tiles */
            flb_load<D, BM, LQ>(sq, q, b, i0, T, NH, h);
            flb_load<D, BM, LQ>(sdo, dout, b, i0, T, NH, h);
            for (int x = threadIdx.x; x < BM; x += FL_THREADS) {
                int ok = i0 + x < T;
                sl[x] = ok ? lse[hrow + i0 + x] : 0.0f;
                sd[x] = ok ? drow[hrow + i0 + x] : 0.0f;
            }
            __syncthreads();
            float s[8], dp[8];
            flb_abt<D, LQ, LR>(s, sk + wr * 16 * LQ, sq + wc * 16 * LQ, scr);
            flb_abt<D, LQ, LR>(dp, sv + wr * 16 * LQ, sdo + wc * 16 * LQ, scr);
            FL_UNROLL
            for (int e = 0; e < 8; e++) {
                int rr = wc * 16 + (lane & 1) * 8 + e, i = i0 + rr;
                int vis = i < T && j <= i;
                float p = vis ? expf(s[e] * scale - sl[rr]) : 0.0f;
                /* With dropout, out = (P∘Z) V: dV takes P∘Z and
                 * dS = P ∘ (dP∘Z - Drow), Z = mask / (1 - p). */
                float z = 1.0f;
                if (thr && vis)
                    z = dt_dropout(1.0f, key, (uint64_t)(hrow + i) * T + j, thr, dscale);
                sp[c * LP + rr] = __float2bfloat16(p * z);
                sds[c * LP + rr] = __float2bfloat16(p * (dp[e] * z - sd[rr]));
            }
            __syncthreads();
            /* The warp's rows of dV and dK, its half of the columns. */
            flb_acc<NC, BM>(av, sp + wr * 16 * LP, LP, sdo + wc * (D / 2), LQ);
            flb_acc<NC, BM>(ak, sds + wr * 16 * LP, LP, sq + wc * (D / 2), LQ);
        }
    }
    flb_store<D, NC, LR>(dk, ak, scr, scale, b, j0 + wr * 16, wc * (D / 2), T, NKV, g);
    flb_store<D, NC, LR>(dv, av, scr, 1.0f, b, j0 + wr * 16, wc * (D / 2), T, NKV, g);
}

/* Backward on tensor cores, dQ: FLBB query rows of head blockIdx.y, batch
 * row blockIdx.z (last tile first), over the key tiles up to the diagonal.
 * dq (B,T,NH,D). */
template <int D>
static __global__ void k_flash_bwd_q_bf16(float *dq, const float *dout,
                                          const float *lse, const float *drow,
                                          const float *q, const float *k,
                                          const float *v, int T, int NH,
                                          int NKV, float scale, uint64_t key,
                                          uint32_t thr, float dscale)
{
    using namespace nvcuda;
    constexpr int BM = FLBB, BN = FLBB, NC = D / 32;
    constexpr int LQ = D + 8, LP = BN + 8, LR = 20;
    alignas(32) __shared__ __nv_bfloat16 sq[BM * LQ], sdo[BM * LQ]; /* the rows */
    alignas(32) __shared__ __nv_bfloat16 sk[BN * LQ], sv[BN * LQ];  /* a step */
    alignas(32) __shared__ __nv_bfloat16 sds[BM * LP]; /* dS of the step */
    alignas(32) __shared__ float sr[4 * 16 * LR];      /* per warp: a block */
    int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV);
    int i0 = (gridDim.x - 1 - blockIdx.x) * BM;
    int w = threadIdx.x / 32, lane = threadIdx.x & 31, wr = w / 2, wc = w % 2;
    int rr = wr * 16 + lane / 2, i = i0 + rr; /* this lane's query row */
    long hrow = ((long)b * NH + h) * T;
    float li = i < T ? lse[hrow + i] : 0.0f, dr = i < T ? drow[hrow + i] : 0.0f;
    float *scr = sr + w * 16 * LR;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> aq[NC];
    FL_UNROLL
    for (int n = 0; n < NC; n++)
        wmma::fill_fragment(aq[n], 0.0f);
    flb_load<D, BM, LQ>(sq, q, b, i0, T, NH, h);
    flb_load<D, BM, LQ>(sdo, dout, b, i0, T, NH, h);
    int jend = min(T, i0 + BM);
    for (int j0 = 0; j0 < jend; j0 += BN) {
        __syncthreads(); /* sq, sdo stored; the last step's reads done */
        flb_load<D, BN, LQ>(sk, k, b, j0, T, NKV, g);
        flb_load<D, BN, LQ>(sv, v, b, j0, T, NKV, g);
        __syncthreads();
        float s[8], dp[8];
        flb_abt<D, LQ, LR>(s, sq + wr * 16 * LQ, sk + wc * 16 * LQ, scr);
        flb_abt<D, LQ, LR>(dp, sdo + wr * 16 * LQ, sv + wc * 16 * LQ, scr);
        FL_UNROLL
        for (int e = 0; e < 8; e++) {
            int c = wc * 16 + (lane & 1) * 8 + e, j = j0 + c;
            int vis = i < T && j <= i;
            float p = vis ? expf(s[e] * scale - li) : 0.0f;
            float z = 1.0f; /* dropout: the dK/dV kernels' mask */
            if (thr && vis)
                z = dt_dropout(1.0f, key, (uint64_t)(hrow + i) * T + j, thr, dscale);
            sds[rr * LP + c] = __float2bfloat16(p * (dp[e] * z - dr));
        }
        __syncthreads();
        flb_acc<NC, BN>(aq, sds + wr * 16 * LP, LP, sk + wc * (D / 2), LQ);
    }
    flb_store<D, NC, LR>(dq, aq, scr, scale, b, i0 + wr * 16, wc * (D / 2), T, NH, h);
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

template <int D>
static void flash_bwd_bf16(cuda_ctx *c, float *dq, float *dk, float *dv,
                           const float *dout, const float *lse,
                           const float *drow, const float *q, const float *k,
                           const float *v, int B, int T, int NH, int NKV,
                           float scale, uint64_t key, uint32_t thr,
                           float dscale)
{
    dim3 gkv(tiles(T, FLBB), NKV, B), gq(tiles(T, FLBB), NH, B);
    DT_LAUNCH(k_flash_bwd_kv_bf16<D>, gkv, FL_THREADS, 0, c->stream)(
        dk, dv, dout, lse, drow, q, k, v, T, NH, NKV, scale, key, thr, dscale);
    if (LAUNCHED(c) != 0)
        return;
    DT_LAUNCH(k_flash_bwd_q_bf16<D>, gq, FL_THREADS, 0, c->stream)(
        dq, dout, lse, drow, q, k, v, T, NH, NKV, scale, key, thr, dscale);
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
                    uint64_t key, int bf16)
{
    float scale = 1.0f / sqrtf((float)D);
    if (bf16 && D == 64)
        flash_bwd_bf16<64>(c, dq, dk, dv, dout, lse, drow, q, k, v, B, T, NH,
                           NKV, scale, key, thr, dscale);
    else if (bf16 && D == 128)
        flash_bwd_bf16<128>(c, dq, dk, dv, dout, lse, drow, q, k, v, B, T, NH,
                            NKV, scale, key, thr, dscale);
    else if (D == 64)
        flash_bwd<64, 32, 32, 32, 32>(c, dq, dk, dv, dout, lse, drow, q, k, v,
                                      B, T, NH, NKV, scale, key, thr, dscale);
    else if (D == 128)
        flash_bwd<128, 32, 8, 16, 16>(c, dq, dk, dv, dout, lse, drow, q, k, v,
                                      B, T, NH, NKV, scale, key, thr, dscale);
    else
        cuda_fail(c, DT_EINVAL, "flash attention", "head dim not 64 or 128",
                  __FILE__, __LINE__);
}
