/* optim.c: one optimizer step: global-norm clipping, the Delta-LoRA
 * snapshot, AdamW on every trainable tensor and (t > K) Delta-LoRA's W
 * update. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/dt.h"
#include "train_impl.h"

void dt_optim_defaults(dt_optim *o)
{
    memset(o, 0, sizeof *o);
    o->lr = 2e-4f;
    o->b1 = 0.9f;
    o->b2 = 0.999f;
    o->eps = 1e-8f;
    o->weight_decay = 0.0f;
    o->max_grad_norm = 1.0f;
    o->lambda = 0.5f;
    o->start_step = 0;
}

float dt_lr_at(dt_sched s, float lr, int64_t warmup, int64_t total, int64_t k)
{
    if (k < warmup)
        return (float)((double)lr * (double)k / (double)(warmup > 0 ? warmup : 1));
    if (s == DT_SCHED_CONSTANT)
        return lr;
    int64_t span = total - warmup;
    if (span <= 0)
        return s == DT_SCHED_LINEAR ? 0.0f : lr;
    double p = (double)(k - warmup) / (double)span;
    if (s == DT_SCHED_LINEAR)
        return (float)(lr * fmax(0.0, 1.0 - p));
    return (float)(lr * 0.5 * (1.0 + cos(M_PI * p)));
}

/* Hugging Face Trainer's rule (get_decay_parameter_names, transformers
 * 5.x): no weight decay for parameters inside nn.LayerNorm modules (GPT-2's
 * ln_1, ln_2, ln_f) or whose lower-cased name matches "bias", "layernorm",
 * "rmsnorm", "(^|.)norm($|.)" or "_norm($|.)" (Llama's input_layernorm,
 * post_attention_layernorm and final norm); everything else, embeddings,
 * the LM head and LoRA factors included, is decayed. */
static int has_part(const char *name, const char *part)
{
    size_t n = strlen(part);
    for (const char *p = strstr(name, part); p; p = strstr(p + 1, part))
        if ((p == name || p[-1] == '.') && (p[n] == 0 || p[n] == '.'))
            return 1;
    return 0;
}

int dt_param_decays(const char *name)
{
    if (strstr(name, "bias") || strstr(name, "layernorm") ||
        strstr(name, "rmsnorm") || has_part(name, "norm"))
        return 0;
    for (const char *p = strstr(name, "_norm"); p; p = strstr(p + 1, "_norm"))
        if (p[5] == 0 || p[5] == '.')
            return 0;
    /* GPT-2's LayerNorm modules (the isinstance(nn.LayerNorm) rule) */
    if (has_part(name, "ln_1") || has_part(name, "ln_2") ||
        has_part(name, "ln_f"))
        return 0;
    return 1;
}

/* AdamW on every tensor: with weight decay and tensors that the rule above
 * exempts, in two launches (decayed, then exempt), both reading the clip
 * scale from the one squared norm. */
static void adamw_all(dt_model *m, dt_backend *be, const dt_opt_tensor *ts,
                      int np, const dt_optim *o, float lr, float bc1,
                      float bc2, const double *d_ss)
{
    int nd = 0, np_ = 0;
    dt_opt_tensor *dec = NULL, *no = NULL;
    int npar;
    dt_param *ps = dt_model_params(m, &npar);
    if (o->weight_decay != 0.0f && npar == np) {
        for (int i = 0; i < np; i++)
            nd += dt_param_decays(ps[i].name);
        if (nd < np) {
            dec = malloc((size_t)(nd ? nd : 1) * sizeof *dec);
            no = malloc((size_t)(np - nd) * sizeof *no);
        }
    }
    if (!dec || !no) { /* every tensor decays (or out of host memory) */
        free(dec);
        free(no);
        OPS.adamw_multi(be, ts, np, lr, o->b1, o->b2, o->eps, o->weight_decay,
                        bc1, bc2, d_ss, o->max_grad_norm);
        return;
    }
    nd = 0;
    for (int i = 0; i < np; i++) {
        if (dt_param_decays(ps[i].name))
            dec[nd++] = ts[i];
        else
            no[np_++] = ts[i];
    }
    if (nd)
        OPS.adamw_multi(be, dec, nd, lr, o->b1, o->b2, o->eps, o->weight_decay,
                        bc1, bc2, d_ss, o->max_grad_norm);
    OPS.adamw_multi(be, no, np_, lr, o->b1, o->b2, o->eps, 0.0f, bc1, bc2,
                    d_ss, o->max_grad_norm);
    free(dec);
    free(no);
}

/* Every trainable tensor in two multi-tensor launches (squared norm, then
 * AdamW with the clip scale read where it runs): the norm comes back in
 * the step's one copy to the host, after AdamW, so nothing waits for it.
 * A non-finite norm updates nothing and fails the step (before Delta-LoRA
 * moves W). */
int dt_optim_step(dt_model *m, dt_optim *o, dt_method method, float lr,
                  double *gnorm, char *err)
{
    dt_backend *be = dt_model_backend(m);
    int np;
    double *d_ss;
    const dt_opt_tensor *ts = dt_model_opt_tensors(m, &np, &d_ss);
    OPS.sumsq_multi(be, d_ss, ts, np);
    int64_t t = o->t + 1;
    int delta = method == DT_DELTA_LORA && t > o->start_step;
    if (delta && t == o->start_step + 1)
        dt_model_delta_keep(m); /* A_K, B_K: W moves for the first time */
    if (delta)
        dt_model_delta_snapshot(m);
    float bc1 = 1.0f - powf(o->b1, (float)t), bc2 = 1.0f - powf(o->b2, (float)t);
    adamw_all(m, be, ts, np, o, lr, bc1, bc2, d_ss);
    double ss = NAN;
    OPS.download(be, &ss, d_ss, sizeof ss);
    int rc = OPS.sync(be, err);
    if (rc)
        return rc;
    double norm = sqrt(ss);
    if (gnorm)
        *gnorm = norm;
    if (!isfinite(norm))
        return dt_errf(err, DT_ENAN, "gradient norm is %g at step %lld "
                       "(try a lower --lr)", norm, (long long)t);
    if (!delta) {
        o->t = t;
        return 0;
    }
    dt_model_delta_apply(m, o->lambda);
    o->t = t;
    return OPS.sync(be, err);
}
