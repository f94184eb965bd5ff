/* ckpt_export.c: a checkpoint as a model: its merged weights written as a
 * Hugging Face directory (dt_ckpt_export), so that a checkpoint downloads,
 * serves and trains on as a fine-tuned model does.
 *
 * The merge needs no training state. A lora or delta_lora checkpoint holds
 * its PEFT adapter (adapter/, tr_adapter_write): for delta_lora the exact
 * rank-2r one (W_T + s·B_T·A_T = W_0 + s(1+λ)·B_T·A_T − sλ·B_K·A_K), so the
 * merged model is the base plus the adapter whatever form (W moved, or the
 * low-rank form of bf16 runs) the run kept W in. It is merged as
 * --init-adapter loads one: a LoRA model with the adapter's rank, alpha and
 * targets on the CPU backend, then dt_model_merged. A full checkpoint's
 * weights.safetensors holds every trained weight: they replace the base's. */
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dt.h"
#include "base/file.h"
#include "export.h"
#include "train_impl.h"

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    remove(p);
    return 0;
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The checkpoint's method (state.json), or a negative DT_E* code. */
static int ckpt_method(const char *ckpt, char *err)
{
    char path[4600];
    snprintf(path, sizeof path, "%s/state.json", ckpt);
    json_error_t je;
    json_t *js = json_load_file(path, 0, &je);
    json_t *m = js ? json_object_get(js, "method") : NULL;
    int method = json_is_integer(m) ? (int)json_integer_value(m) : -1;
    json_decref(js);
    if (method != DT_FULL && method != DT_LORA && method != DT_DELTA_LORA)
        return dt_errf(err, DT_EFORMAT, "%s: not a complete checkpoint (no readable "
                       "state.json with its method)", ckpt);
    return method;
}

/* full: the checkpoint's trained weights replace the base's in w->ts. */
static int merge_full(dt_weights *w, const char *ckpt, char *err)
{
    char path[4600];
    snprintf(path, sizeof path, "%s/weights.safetensors", ckpt);
    if (access(path, F_OK)) /* the older one-file format */
        snprintf(path, sizeof path, "%s/state.safetensors", ckpt);
    dt_tensorset ts;
    dt_tensorset_init(&ts);
    int rc = dt_safetensors_load(path, &ts, err), used = 0;
    for (int i = 0; !rc && i < ts.n; i++) {
        const dt_tensor *t = &ts.t[i];
        size_t L = strlen(t->name);
        if (L > 7 && (!strcmp(t->name + L - 7, ".adam_m") || !strcmp(t->name + L - 7, ".adam_v")))
            continue;
        dt_tensor *W = dt_tensorset_find(&w->ts, t->name);
        if (!W)
            rc = dt_errf(err, DT_EFORMAT, "%s: tensor %s is not a weight of the base model",
                         path, t->name);
        else if (W->numel != t->numel)
            rc = dt_errf(err, DT_EFORMAT, "%s: tensor %s has %lld elements, the base's "
                         "%lld", path, t->name, (long long)t->numel, (long long)W->numel);
        else
            memcpy(W->data, t->data, (size_t)t->numel * sizeof(float));
        used++;
    }
    if (!rc && !used)
        rc = dt_errf(err, DT_EFORMAT, "%s: no weights", path);
    dt_tensorset_free(&ts);
    return rc;
}

/* lora, delta_lora: base + the checkpoint's adapter/ into *merged. */
static int merge_adapter(dt_weights *w, const char *ckpt, dt_tensorset *merged, char *err)
{
    char dir[4600];
    snprintf(dir, sizeof dir, "%s/adapter", ckpt);
    if (access(dir, F_OK))
        return dt_errf(err, DT_ENOTSUP, "%s: the checkpoint has no adapter/ (written by an "
                       "older version)", ckpt);
    dt_peft_adapter ad;
    memset(&ad, 0, sizeof ad);
    dt_backend *be = NULL;
    dt_model *m = NULL;
    int rc = dt_peft_load(dir, w, &ad, err);
    if (rc)
        return rc;
    dt_lora_opts lo = {DT_LORA, ad.rank, ad.alpha, 0, DT_PREC_FP32, 0, 0.0f, 0};
    if ((rc = dt_parse_targets(ad.targets, w->cfg.arch, &lo.targets, err)))
        goto out;
    if (!(be = dt_backend_new("cpu", 0, err))) {
        rc = DT_EDEVICE;
        goto out;
    }
    w->release_on_upload = 1; /* one host copy of the weights at a time */
    if ((rc = dt_model_new(be, w, &lo, 1, 1, 0, &m, err)) ||
        (rc = tr_load_adapter(m, &ad, err)))
        goto out;
    dt_model_release_activations(m);
    rc = dt_model_merged(m, merged, err);
out:
    dt_model_free(m);
    dt_backend_free(be);
    dt_peft_free(&ad);
    return rc;
}

int dt_ckpt_export(const char *base, const char *ckpt, const char *outdir,
                   const char *dtype, long long shard_size, char *err)
{
    dt_weights w;
    dt_tensorset merged;
    dt_tokenizer *tok = NULL;
    dt_export_opts xo;
    char tmp[4200], old[4200];
    int rc, made = 0;
    memset(&w, 0, sizeof w);
    dt_tensorset_init(&merged);
    dt_export_opts_default(&xo);
    if (shard_size > 0)
        xo.shard_size = shard_size;
    int method = ckpt_method(ckpt, err);
    if (method < 0)
        return method;
    if (dtype && dtype[0] && strcmp(dtype, "auto")) {
        dt_dtype d;
        if ((rc = dt_export_dtype_parse(dtype, &d, "dtype", err)))
            return rc;
        xo.dtype = d;
    }
    if (!(tok = dt_model_tokenizer(base, err)))
        return DT_EFORMAT;
    if ((rc = dt_weights_load(base, &w, err)))
        goto out;
    if (method == DT_FULL)
        rc = merge_full(&w, ckpt, err);
    else
        rc = merge_adapter(&w, ckpt, &merged, err);
    if (rc)
        goto out;
    /* Written beside outdir and renamed into place: a reader (a job that
     * trains on it, a download) never sees a half-written directory, and two
     * writers of one checkpoint never share one. */
    snprintf(tmp, sizeof tmp, "%s.partial.%ld", outdir, (long)getpid());
    snprintf(old, sizeof old, "%s.old.%ld", outdir, (long)getpid());
    rm_tree(tmp);
    made = 1;
    if ((rc = dt_export_hf_opts(&w, method == DT_FULL ? &w.ts : &merged, tok, tmp, &xo, err)))
        goto out;
    /* An older outdir is moved aside first; another writer of the same
     * checkpoint may swap at the same time, so a vanished or reappeared
     * outdir is tried again. */
    for (int tries = 0;; tries++) {
        int had = access(outdir, F_OK) == 0;
        if (had && rename(outdir, old) && errno != ENOENT) {
            rc = dt_errf(err, DT_EIO, "%s: cannot replace: %s", outdir, strerror(errno));
            goto out;
        }
        if (rename(tmp, outdir) == 0) {
            made = 0;
            rm_tree(old);
            break;
        }
        if ((errno != ENOTEMPTY && errno != EEXIST) || tries >= 3) {
            rc = dt_errf(err, DT_EIO, "%s: rename: %s", outdir, strerror(errno));
            goto out;
        }
    }
out:
    if (made)
        rm_tree(tmp);
    dt_tensorset_free(&merged);
    dt_weights_free(&w);
    dt_tokenizer_free(tok);
    return rc;
}
