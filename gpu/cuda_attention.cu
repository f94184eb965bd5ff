/* cuda_attention.cu: causal grouped-query attention for the CUDA backend,
 * forward and backward: the entry points of the backend table, which pick
 * the fused kernels of cuda_flash.cu for head dims 64 and 128, and the
 * naive version, kept as the reference and for every other head dim:
 * cuBLAS strided-batched GEMMs plus row kernels.
 *
 * DT_ATTENTION (environment, read at each call): "naive" forces the naive
 * version for every head dim; "flash" the fused fp32 kernels where they
 * apply; "bf16" the fused kernels on bf16 tensor cores, forward and
 * backward. Unset (or any other value): the naive version while its score
 * workspace, NH * T * T floats, stays within ATTN_NAIVE_MAX_BYTES, the fused
 * kernels beyond (where they apply). Measured on an H200 (2026-12-04,
 * bench/results/gpu-check.md), the naive version on cuBLAS is 1.4-2.1x
 * faster forward and 2-4x faster backward than the fused fp32 kernels,
 * which have no tensor-core tiling yet: it stays the default until they
 * beat it, and the fused kernels keep long sequences in memory.
 * Packing (attention_fwd_seg / _bwd_seg: a block-diagonal causal mask, keys
 * of the rows before a query's own masked) always runs the naive version:
 * the fused kernels have no segments, so a packed sequence's score
 * workspace is NH * T * T floats whatever T.
 *
 * The naive version: scores go to a (NH, T, T) workspace per batch
 * row, so memory grows with T^2 and masked entries are still multiplied.
 * lse(B,NH,T) is saved so the backward pass recomputes P instead of keeping
 * it. No atomics: dK and dV of a kv head are summed over its query heads
 * inside one GEMM, so results are bitwise repeatable. */
#include "cuda_internal.cuh"

/* =========================================================================
 * kernels
 * ========================================================================= */

/* (B,T,H,D) <-> (B,H,T,D); to_heads=1 goes left to right. */
static __global__ void k_permute_bthd(float *dst, const float *src, int T,
                                      int H, int D, int to_heads, long n)
{
    GRID_STRIDE(i, n) {
        int d = (int)(i % D);
        long r = i / D;
        int h = (int)(r % H);
        long bt = r / H;
        int t = (int)(bt % T);
        long b = bt / T;
        long j = ((b * H + h) * T + t) * D + d;
        if (to_heads)
            dst[j] = src[i];
        else
            dst[i] = src[j];
    }
}

/* Causal softmax over the rows of S (rows, T) in place, one warp per row;
 * row i is query position i % T. Saves lse = max + log(sum). */
static __global__ void k_attn_softmax(float *S, float *lse, long rows, int T,
                                      uint64_t key, uint32_t thr, float dscale,
                                      uint64_t base, const int32_t *pos)
{
    long row = (long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows)
        return;
    int t = (int)(row % T);
    /* pos(T) of this batch row or NULL: keys lo..t (packing's segments) */
    int lo = pos ? t - pos[t] : 0;
    float *s = S + row * T;
    float m = -INFINITY, sum = 0.0f;
    for (int j = lo + lane; j <= t; j += 32)
        m = fmaxf(m, s[j]);
    m = warp_max(m);
    for (int j = lo + lane; j <= t; j += 32)
        sum += expf(s[j] - m);
    sum = warp_sum(sum);
    for (int j = lane; j < T; j += 32) {
        int in = j >= lo && j <= t;
        float p = in ? expf(s[j] - m) / sum : 0.0f;
        if (thr && in) /* attention dropout on P (dt_dropout) */
            p = dt_dropout(p, key, base + (uint64_t)row * T + j, thr, dscale);
        s[j] = p;
    }
    if (lane == 0)
        lse[row] = m + logf(sum);
}

/* Drow(B,NH,T) = sum_d dout * out, the softmax backward's row term. */
static __global__ void k_attn_drow(float *drow, const float *dout,
                                   const float *out, int T, int NH, int D,
                                   long rows)
{
    long row = (long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows)
        return;
    int t = (int)(row % T), h = (int)((row / T) % NH);
    long b = row / ((long)T * NH);
    long off = ((b * T + t) * NH + h) * D;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32)
        s += dout[off + d] * out[off + d];
    s = warp_sum(s);
    if (lane == 0)
        drow[row] = s;
}

/* Recomputes P = exp(S - lse) in place of S and dS = P (dP - Drow) in place
 * of dP, causal-masked, one warp per row. */
static __global__ void k_attn_dscore(float *S, float *dP, const float *lse,
                                     const float *drow, long rows, int T,
                                     uint64_t key, uint32_t thr, float dscale,
                                     uint64_t base, const int32_t *pos)
{
    long row = (long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows)
        return;
    int t = (int)(row % T);
    int lo = pos ? t - pos[t] : 0; /* as in k_attn_softmax */
    float l = lse[row], dr = drow[row];
    float *s = S + row * T, *dp = dP + row * T;
    for (int j = lane; j < T; j += 32) {
        int in = j >= lo && j <= t;
        float p = in ? expf(s[j] - l) : 0.0f;
        /* With dropout, out = (P∘Z) V: dV takes P∘Z and
         * dS = P ∘ (dP∘Z - Drow), Z = mask / (1 - p). */
        float z = thr && in ? dt_dropout(1.0f, key, base + (uint64_t)row * T + j,
                                         thr, dscale)
                            : 1.0f;
        s[j] = p * z;
        dp[j] = in ? p * (dp[j] * z - dr) : 0.0f;
    }
}

/* =========================================================================
 * launchers
 * ========================================================================= */

/* Attention layout. The query heads of kv group g are g*rep .. g*rep+rep-1
 * (rep = NH/NKV). With q permuted to qp(B,NH,T,D), the queries of one group
 * form one matrix Qg(rep*T, D), so per batch row b one strided-batched GEMM
 * over the NKV groups computes every score S(NH*T, T) = scale Qg K_g^T,
 * K_g = k[b, :, g, :] (ld NKV*D). In the backward pass the same stacking
 * makes dK_g and dV_g single GEMMs with K = rep*T: the sum over the query
 * heads of a group happens inside cuBLAS, deterministically. The score
 * workspace is per batch row: (NH, T, T). */
typedef struct attn_ws {
    float *qp, *op, *dqp; /* (B,NH,T,D) each */
    float *S, *dP;        /* (NH,T,T) each */
    float *drow;          /* (B,NH,T) */
} attn_ws;

static int attn_ws_get(cuda_ctx *c, attn_ws *w, int B, int T, int NH, int D,
                       int bwd)
{
    size_t x = (size_t)B * NH * T * D, s = (size_t)NH * T * T;
    size_t total = bwd ? 3 * x + 2 * s + (size_t)B * NH * T : 2 * x + s;
    float *p = (float *)ws_get(c, total * sizeof(float));
    if (!p)
        return -1;
    w->qp = p;
    w->op = p + x;
    w->S = p + 2 * x;
    w->dqp = bwd ? w->S + s : NULL;
    w->dP = bwd ? w->dqp + x : NULL;
    w->drow = bwd ? w->dP + s : NULL;
    return 0;
}

/* Rejects shapes the GEMM layout cannot express (0 when fine). */
static int attn_bad_shape(cuda_ctx *c, int NH, int NKV, int D)
{
    if (NKV > 0 && NH % NKV == 0 && D > 0)
        return 0;
    cuda_fail(c, DT_EINVAL, "attention", "NH must be a multiple of NKV",
              __FILE__, __LINE__);
    return 1;
}

/* The largest naive score workspace (one batch row's NH x T x T floats)
 * the default choice accepts: 1 GiB (T = 4096 at 16 heads). */
#define ATTN_NAIVE_MAX_BYTES (1ull << 30)

/* 1 when the fused kernels (cuda_flash.cu) run for head dim D (see the
 * top of this file). */
static int attn_use_flash(int D, int NH, int T)
{
    const char *e = getenv("DT_ATTENTION");
    if (!cuda_flash_supports(D) || (e && strcmp(e, "naive") == 0))
        return 0;
    if (e && (strcmp(e, "flash") == 0 || strcmp(e, "bf16") == 0))
        return 1;
    return (unsigned long long)NH * T * T * sizeof(float) > ATTN_NAIVE_MAX_BYTES;
}

/* 1 when the fused kernels run on bf16 tensor cores (DT_ATTENTION=bf16). */
static int attn_flash_bf16(void)
{
    const char *e = getenv("DT_ATTENTION");
    return e && strcmp(e, "bf16") == 0;
}

static void permute(cuda_ctx *c, float *dst, const float *src, int B, int T,
                    int H, int D, int to_heads)
{
    long n = (long)B * T * H * D;
    DT_LAUNCH(k_permute_bthd, blocks_for(n, EW_THREADS), EW_THREADS, 0, c->stream)(
        dst, src, T, H, D, to_heads, n);
    LAUNCHED(c);
}

void cuda_attention_fwd(dt_backend *be, float *out, float *lse,
                               const float *q, const float *k, const float *v,
                               int B, int T, int NH, int NKV, int D)
{
    cuda_attention_fwd_drop(be, out, lse, q, k, v, B, T, NH, NKV, D, 0.0f, 0);
}

/* The mask of element (b, h, i, j) is keyed on ((b*NH + h)*T + i)*T + j;
 * S of batch row b is (NH, T, T) with row h*T + i, so the index is
 * b*NH*T*T + row*T + j. */
static void attn_fwd(dt_backend *be, float *out, float *lse, const float *q,
                     const float *k, const float *v, const int32_t *pos, int B,
                     int T, int NH, int NKV, int D, float pdrop, uint64_t key)
{
    uint32_t thr = pdrop > 0.0f ? dt_drop_thresh(pdrop) : 0;
    float dscale = pdrop > 0.0f ? 1.0f / (1.0f - pdrop) : 1.0f;
    cuda_ctx *c = ctx_of(be);
    attn_ws w;
    if (c->err || B <= 0 || T <= 0 || attn_bad_shape(c, NH, NKV, D))
        return;
    if (!pos && attn_use_flash(D, NH, T)) {
        cuda_flash_fwd(c, out, lse, q, k, v, B, T, NH, NKV, D, thr, dscale, key,
                       attn_flash_bf16());
        return;
    }
    if (attn_ws_get(c, &w, B, T, NH, D, 0) != 0)
        return;
    int rep = NH / NKV, ldk = NKV * D;
    long sq = (long)rep * T * D, ss = (long)rep * T * T;
    float scale = 1.0f / sqrtf((float)D);
    permute(c, w.qp, q, B, T, NH, D, 1);
    for (int b = 0; b < B && !c->err; b++) {
        const float *kb = k + (long)b * T * ldk, *vb = v + (long)b * T * ldk;
        float *qb = w.qp + (long)b * NH * T * D, *ob = w.op + (long)b * NH * T * D;
        gemm_rm(c, 0, 1, rep * T, T, D, scale, qb, D, sq, kb, ldk, D, 0.0f,
                w.S, T, ss, NKV);
        long rows = (long)NH * T;
        DT_LAUNCH(k_attn_softmax, row_blocks(rows), 32 * ROWS_PER_BLOCK, 0, c->stream)(
            w.S, lse + (long)b * NH * T, rows, T, key, thr, dscale,
            (uint64_t)b * NH * T * T, pos ? pos + (long)b * T : NULL);
        LAUNCHED(c);
        gemm_rm(c, 0, 0, rep * T, D, T, 1.0f, w.S, T, ss, vb, ldk, D, 0.0f, ob,
                D, sq, NKV);
    }
    permute(c, out, w.op, B, T, NH, D, 0);
}

void cuda_attention_fwd_drop(dt_backend *be, float *out, float *lse,
                             const float *q, const float *k, const float *v,
                             int B, int T, int NH, int NKV, int D, float pdrop,
                             uint64_t key)
{
    attn_fwd(be, out, lse, q, k, v, NULL, B, T, NH, NKV, D, pdrop, key);
}

void cuda_attention_fwd_seg(dt_backend *be, float *out, float *lse,
                            const float *q, const float *k, const float *v,
                            const int32_t *pos, int B, int T, int NH, int NKV,
                            int D, float pdrop, uint64_t key)
{
    attn_fwd(be, out, lse, q, k, v, pos, B, T, NH, NKV, D, pdrop, key);
}

void cuda_attention_bwd(dt_backend *be, float *dq, float *dk, float *dv,
                               const float *dout, const float *out,
                               const float *lse, const float *q,
                               const float *k, const float *v, int B, int T,
                               int NH, int NKV, int D)
{
    cuda_attention_bwd_drop(be, dq, dk, dv, dout, out, lse, q, k, v, B, T, NH,
                            NKV, D, 0.0f, 0);
}

static void attn_bwd(dt_backend *be, float *dq, float *dk, float *dv,
                     const float *dout, const float *out, const float *lse,
                     const float *q, const float *k, const float *v,
                     const int32_t *pos, int B, int T, int NH, int NKV, int D,
                     float pdrop, uint64_t key)
{
    uint32_t thr = pdrop > 0.0f ? dt_drop_thresh(pdrop) : 0;
    float dscale = pdrop > 0.0f ? 1.0f / (1.0f - pdrop) : 1.0f;
    cuda_ctx *c = ctx_of(be);
    attn_ws w;
    if (c->err || B <= 0 || T <= 0 || attn_bad_shape(c, NH, NKV, D))
        return;
    long allrows = (long)B * NH * T;
    if (!pos && attn_use_flash(D, NH, T)) {
        /* The only workspace: Drow (B,NH,T). */
        float *drow = (float *)ws_get(c, (size_t)allrows * sizeof(float));
        if (!drow)
            return;
        DT_LAUNCH(k_attn_drow, row_blocks(allrows), 32 * ROWS_PER_BLOCK, 0, c->stream)(
            drow, dout, out, T, NH, D, allrows);
        if (LAUNCHED(c) != 0)
            return;
        cuda_flash_bwd(c, dq, dk, dv, dout, lse, drow, q, k, v, B, T, NH, NKV,
                       D, thr, dscale, key, attn_flash_bf16());
        return;
    }
    if (attn_ws_get(c, &w, B, T, NH, D, 1) != 0)
        return;
    int rep = NH / NKV, ldk = NKV * D;
    long sq = (long)rep * T * D, ss = (long)rep * T * T, rows = (long)NH * T;
    float scale = 1.0f / sqrtf((float)D);
    float *dop = w.op; /* dout in (B,NH,T,D) */
    permute(c, w.qp, q, B, T, NH, D, 1);
    permute(c, dop, dout, B, T, NH, D, 1);
    DT_LAUNCH(k_attn_drow, row_blocks(allrows), 32 * ROWS_PER_BLOCK, 0, c->stream)(
        w.drow, dout, out, T, NH, D, allrows);
    LAUNCHED(c);
    for (int b = 0; b < B && !c->err; b++) {
        long xo = (long)b * NH * T * D, ko = (long)b * T * ldk;
        float *qb = w.qp + xo, *dob = dop + xo, *dqb = w.dqp + xo;
        /* S = scale Q K^T, dP = dO V^T, then P and dS in place. */
        gemm_rm(c, 0, 1, rep * T, T, D, scale, qb, D, sq, k + ko, ldk, D, 0.0f,
                w.S, T, ss, NKV);
        gemm_rm(c, 0, 1, rep * T, T, D, 1.0f, dob, D, sq, v + ko, ldk, D, 0.0f,
                w.dP, T, ss, NKV);
        DT_LAUNCH(k_attn_dscore, row_blocks(rows), 32 * ROWS_PER_BLOCK, 0, c->stream)(
            w.S, w.dP, lse + (long)b * NH * T, w.drow + (long)b * NH * T, rows,
            T, key, thr, dscale, (uint64_t)b * NH * T * T,
            pos ? pos + (long)b * T : NULL);
        LAUNCHED(c);
        /* dV_g = P_g^T dO_g, dQ_g = scale dS_g K_g, dK_g = scale dS_g^T Q_g. */
        gemm_rm(c, 1, 0, T, D, rep * T, 1.0f, w.S, T, ss, dob, D, sq, 0.0f,
                dv + ko, ldk, D, NKV);
        gemm_rm(c, 0, 0, rep * T, D, T, scale, w.dP, T, ss, k + ko, ldk, D,
                0.0f, dqb, D, sq, NKV);
        gemm_rm(c, 1, 0, T, D, rep * T, scale, w.dP, T, ss, qb, D, sq, 0.0f,
                dk + ko, ldk, D, NKV);
    }
    permute(c, dq, w.dqp, B, T, NH, D, 0);
}

void cuda_attention_bwd_drop(dt_backend *be, float *dq, float *dk, float *dv,
                             const float *dout, const float *out,
                             const float *lse, const float *q, const float *k,
                             const float *v, int B, int T, int NH, int NKV,
                             int D, float pdrop, uint64_t key)
{
    attn_bwd(be, dq, dk, dv, dout, out, lse, q, k, v, NULL, B, T, NH, NKV, D,
             pdrop, key);
}

void cuda_attention_bwd_seg(dt_backend *be, float *dq, float *dk, float *dv,
                            const float *dout, const float *out,
                            const float *lse, const float *q, const float *k,
                            const float *v, const int32_t *pos, int B, int T,
                            int NH, int NKV, int D, float pdrop, uint64_t key)
{
    attn_bwd(be, dq, dk, dv, dout, out, lse, q, k, v, pos, B, T, NH, NKV, D,
             pdrop, key);
}


/* =========================================================================
 * decode attention (gpu/generate.c)
 * ========================================================================= */

/* One thread per (query row i, head h), online softmax over the visible
 * keys, accumulating into out directly (no scratch): the straightforward
 * version, a few rows at a time is what decoding asks for. */
static __global__ void k_attn_decode(float *out, const float *q,
                                     const float *k, const float *v, int tq,
                                     int tk, int NH, int NKV, int D,
                                     float scale, long n)
{
    GRID_STRIDE(ih, n) {
        int i = (int)(ih / NH), h = (int)(ih % NH), g = h / (NH / NKV);
        int cnt = tk - tq + i + 1;
        const float *qi = q + ((long)i * NH + h) * D;
        float *o = out + ((long)i * NH + h) * D;
        float mx = -INFINITY, l = 0.0f;
        for (int d = 0; d < D; d++)
            o[d] = 0.0f;
        for (int j = 0; j < cnt; j++) {
            const float *kj = k + ((long)j * NKV + g) * D;
            const float *vj = v + ((long)j * NKV + g) * D;
            float s = 0.0f;
            for (int d = 0; d < D; d++)
                s += qi[d] * kj[d];
            s *= scale;
            if (s > mx) {
                float r = expf(mx - s);
                l *= r;
                for (int d = 0; d < D; d++)
                    o[d] *= r;
                mx = s;
            }
            float p = expf(s - mx);
            l += p;
            for (int d = 0; d < D; d++)
                o[d] += p * vj[d];
        }
        for (int d = 0; d < D; d++)
            o[d] /= l;
    }
}

void cuda_attention_decode(dt_backend *be, float *out, const float *q,
                           const float *k, const float *v, int tq, int tk,
                           int NH, int NKV, int D)
{
    cuda_ctx *c = ctx_of(be);
    long n = (long)tq * NH;
    if (c->err || n <= 0 || attn_bad_shape(c, NH, NKV, D))
        return;
    DT_LAUNCH(k_attn_decode, blocks_for(n, 64), 64, 0, c->stream)(
        out, q, k, v, tq, tk, NH, NKV, D, 1.0f / sqrtf((float)D), n);
    LAUNCHED(c);
}
