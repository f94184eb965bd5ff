/* dt_math.h: per-element math shared by the CPU backend (C) and the CUDA
 * backend (nvcc), so that both compute the same formula in the same order.
 *
 * Everything here is `static inline DT_HD` and uses only math functions
 * CUDA provides (expf, tanhf, sqrtf, and sqrt in double for the clip). */
#ifndef DT_MATH_H
#define DT_MATH_H

#ifdef __CUDACC__
#define DT_HD __host__ __device__
#else
#define DT_HD
#include <math.h>
#endif
#include <stdint.h>

/* ---- exp and tanh that vectorize -------------------------------------------
 * libm's expf/tanhf are scalar calls, which keep the CPU's elementwise loops
 * (GELU, SiLU, softmax) from vectorizing: on GPT-2 they were ~15% of a
 * training step. dt_expf is exp with Cody-Waite range reduction and a degree-6
 * polynomial (relative error < 2e-7, i.e. ~1-2 ulp), written with plain
 * arithmetic and bit casts so GCC vectorizes it under `omp simd`. On the GPU
 * the hardware functions are used instead. */
#ifdef __CUDA_ARCH__
static inline DT_HD float dt_expf(float x) { return expf(x); }
static inline DT_HD float dt_tanhf(float x) { return tanhf(x); }
#else
static inline float dt_expf(float x)
{
    /* clamp: below -87.3 the result underflows to ~0, above 88.7 overflows */
    x = x < -87.33654f ? -87.33654f : x;
    x = x > 88.72283f ? 88.72283f : x;
    float n = __builtin_floorf(x * 1.44269504f + 0.5f); /* round(x / ln2) */
    float r = x - n * 0.693145752f;                      /* ln2 = hi + lo */
    r = r - n * 1.42860677e-06f;
    float p = 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; unsigned u; } u = { .f = p };
    /* p * 2^n; n in [-126, 128] after the clamps. Unsigned arithmetic:
     * shifting a negative int is undefined in C. */
    u.u += (unsigned)(int)n << 23;
    return u.f;
}

/* tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)) for |x| >= 0.4, where that
 * form loses nothing to cancellation; its odd Taylor series through x^13
 * below (truncation error < 2e-9). Both are computed and one is selected,
 * which keeps the loop branch-free for the vectorizer. */
static inline float dt_tanhf(float x)
{
    float a = x < 0 ? -x : x;
    float big = 1.0f - 2.0f / (dt_expf(2.0f * a) + 1.0f);
    float a2 = a * a;
    float small = 21844.0f / 6081075.0f;
    small = small * a2 - 1382.0f / 155925.0f;
    small = small * a2 + 62.0f / 2835.0f;
    small = small * a2 - 17.0f / 315.0f;
    small = small * a2 + 2.0f / 15.0f;
    small = small * a2 - 1.0f / 3.0f;
    small = (small * a2) * a + a;
    float t = a < 0.4f ? small : big;
    return x < 0 ? -t : t;
}
#endif

/* sqrt(2/pi), the constant of GPT-2's gelu_new. */
#define DT_GELU_K 0.7978845608028654f
#define DT_GELU_C 0.044715f

/* ---- GELU (tanh approximation, GPT-2 gelu_new) --------------------------- */

/* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
static inline DT_HD float dt_gelu_tanh(float x)
{
    float u = DT_GELU_K * (x + DT_GELU_C * x * x * x);
    return 0.5f * x * (1.0f + dt_tanhf(u));
}

/* d/dx of dt_gelu_tanh. */
static inline DT_HD float dt_gelu_tanh_grad(float x)
{
    float u = DT_GELU_K * (x + DT_GELU_C * x * x * x);
    float th = dt_tanhf(u);
    float du = DT_GELU_K * (1.0f + 3.0f * DT_GELU_C * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

/* ---- SiLU / SwiGLU ------------------------------------------------------- */

static inline DT_HD float dt_sigmoid(float x)
{
    return 1.0f / (1.0f + dt_expf(-x));
}

/* silu(x) = x * sigmoid(x) */
static inline DT_HD float dt_silu(float x)
{
    return x * dt_sigmoid(x);
}

/* d/dx silu(x) = s (1 + x (1 - s)), s = sigmoid(x) */
static inline DT_HD float dt_silu_grad(float x)
{
    float s = dt_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}

/* out = silu(gate) * up */
static inline DT_HD float dt_swiglu(float gate, float up)
{
    return dt_silu(gate) * up;
}

/* Backward of dt_swiglu for one element: dgate and dup from dout. */
static inline DT_HD void dt_swiglu_grad(float dout, float gate, float up,
                                        float *dgate, float *dup)
{
    float s = dt_sigmoid(gate);
    *dgate = dout * up * s * (1.0f + gate * (1.0f - s));
    *dup = dout * gate * s;
}

/* ---- AdamW (PyTorch torch.optim.AdamW, foreach=False order) --------------- */

/* One step on one parameter. g is multiplied by gscale first (gradient
 * clipping); bc1 = 1 - b1^t, bc2 = 1 - b2^t. PyTorch applies decoupled weight
 * decay as p *= 1 - lr*wd, then p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps),
 * which equals p -= lr*(m/bc1)/(sqrt(v/bc2)+eps). */
static inline DT_HD void dt_adamw_step(float *p, float g, float *m, float *v,
                                       float lr, float b1, float b2, float eps,
                                       float wd, float bc1, float bc2,
                                       float gscale)
{
    g *= gscale;
    float pp = *p * (1.0f - lr * wd);
    float mm = b1 * *m + (1.0f - b1) * g;
    float vv = b2 * *v + (1.0f - b2) * g * g;
    float denom = sqrtf(vv) / sqrtf(bc2) + eps;
    pp -= (lr / bc1) * mm / denom;
    *p = pp;
    *m = mm;
    *v = vv;
}

/* ---- gradient clipping -------------------------------------------------- */

/* torch.nn.utils.clip_grad_norm_'s scale from the squared global norm:
 * coef = max_norm / (norm + 1e-6), used when < 1 (and max_norm > 0).
 * Returns 0, with *gscale unset, when the norm is not finite. */
static inline DT_HD int dt_clip_scale(double sumsq, float max_norm,
                                      float *gscale)
{
    double norm = sqrt(sumsq);
    if (!isfinite(norm))
        return 0;
    *gscale = 1.0f;
    if (max_norm > 0.0f) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0)
            *gscale = (float)coef;
    }
    return 1;
}

/* ---- RoPE (Hugging Face rotate_half layout) ------------------------------ */

/* The angles' cos and sin come from one host table, dt_rope_table()
 * (backend.h), that both backends share: the device never evaluates
 * powf/sinf/cosf, whose results differ from the host's libm. */

/* Rotates the pair (x0 = x[i], x1 = x[i + D/2]) by the angle whose cos/sin
 * are c, s (by -angle when inverse): x0' = x0 c - x1 s, x1' = x1 c + x0 s,
 * i.e. x*cos + rotate_half(x)*sin. In place. */
static inline DT_HD void dt_rope_apply(float *x0, float *x1, float c, float s,
                                       int inverse)
{
    if (inverse)
        s = -s;
    float a = *x0, b = *x1;
    *x0 = a * c - b * s;
    *x1 = b * c + a * s;
}

/* ---- dropout: a counter-based mask --------------------------------------- */

/* Dropout keeps no mask: element i of a tensor is kept or dropped by a hash
 * of (key, i), where the key is derived on the host from (seed, optimizer
 * step, micro-batch, layer, site) by dt_drop_key. The backward pass (and the
 * attention backward, which recomputes the probabilities) regenerates the
 * same mask, a resumed run draws the same masks as an uninterrupted one, and
 * both backends compute the same integers. */

/* splitmix64's finalizer: a bijection of 64-bit integers with full
 * avalanche. */
static inline DT_HD uint64_t dt_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Dropout sites of one layer (the `site` of dt_drop_key). */
enum {
    DT_DROP_EMBD = 0,  /* the embedding output (layer = 0) */
    DT_DROP_ATTN = 1,  /* attention probabilities */
    DT_DROP_RESID1 = 2, /* attention block output before the residual add */
    DT_DROP_RESID2 = 3, /* MLP block output before the residual add */
    DT_DROP_LORA = 8,  /* LoRA branch input; + the linear's index */
};

static inline DT_HD uint64_t dt_drop_key(uint64_t seed, uint64_t step,
                                         uint32_t micro, uint32_t layer,
                                         uint32_t site)
{
    uint64_t k = dt_mix64(seed ^ 0x5bd1e9955bd1e995ull);
    k = dt_mix64(k + step * 0x9e3779b97f4a7c15ull);
    k = dt_mix64(k + ((uint64_t)micro << 32 | layer));
    return dt_mix64(k + site + 1);
}

/* An element is dropped when the top 24 bits of its hash are below
 * dt_drop_thresh(p) = p * 2^24 (truncated): it is kept with probability
 * 1 - p to within 2^-24, as torch.bernoulli(1 - p). */
static inline DT_HD uint32_t dt_drop_thresh(float p)
{
    return (uint32_t)(p * 16777216.0f);
}

/* 1 when element i of the tensor keyed `key` is kept. splitmix64's stream:
 * consecutive i are consecutive states of the generator seeded with key. */
static inline DT_HD int dt_drop_keep(uint64_t key, uint64_t i, uint32_t thr)
{
    return (uint32_t)(dt_mix64(key + (i + 1) * 0x9e3779b97f4a7c15ull) >> 40) >= thr;
}

/* x * mask / (1 - p): the kept element scaled by `scale` = 1 / (1 - p). */
static inline DT_HD float dt_dropout(float x, uint64_t key, uint64_t i,
                                     uint32_t thr, float scale)
{
    return dt_drop_keep(key, i, thr) ? x * scale : 0.0f;
}

/* ---- cross-entropy with label smoothing ---------------------------------- */

/* torch.nn.CrossEntropyLoss(label_smoothing=eps) for one row, given
 * lse = log sum exp(x), the target's logit xt and mean = sum(x) / V:
 * (1 - eps) (lse - xt) + eps (lse - mean). */
static inline DT_HD float dt_ce_smooth_loss(double lse, float xt, double mean,
                                            float eps)
{
    return (float)((1.0 - eps) * (lse - xt) + eps * (lse - mean));
}

#endif
