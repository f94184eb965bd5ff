/* train.c: the training loop behind `deltatune train` and the worker:
 * options and their limits, loading, the step loop (progress, validation,
 * checkpoints, stop requests) and the export. The optimizer step is in
 * optim.c, the data order in train_data.c, checkpoints in checkpoint.c. */
#include "train.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/dt.h"
#include "base/file.h"
#include "base/hparams.h"
#include "dataset.h"
#include "export.h"
#include "train_impl.h"

void dt_train_defaults(dt_train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->device = "cpu";
    o->method = DT_DELTA_LORA;
    o->rank = 8;
    o->alpha = 16.0f;
    o->lambda = 0.5f;
    o->start_step = -1;
    o->targets = "q,v";
    o->lr = 2e-4f;
    o->sched = DT_SCHED_LINEAR;
    o->warmup = 0;
    o->weight_decay = 0.0f;
    o->max_grad_norm = 1.0f;
    o->adam_eps = 1e-8f;
    o->model_dropout = -1.0f; /* config.json's */
    o->batch = 4;
    o->accum = 1;
    o->seq_len = 256;
    o->epochs = 1;
    o->steps = 0;
    o->seed = 42;
    o->threads = 0;
    o->eval_interval = 0;
    o->ckpt_interval = 0;
    o->ckpt_keep = 2;
}

int64_t dt_train_total_steps(int steps, int epochs, long rows, int batch, int accum)
{
    if (steps > 0)
        return steps;
    int64_t per = (int64_t)(batch > 0 ? batch : 1) * (accum > 0 ? accum : 1);
    return ((int64_t)epochs * rows + per - 1) / per;
}

/* The stop request between two micro-batches (0 = go on). */
static int micro_stop(const dt_train_opts *o, int64_t step, int micro)
{
    int v = o->stop ? atomic_load(o->stop) : 0;
    if (!v && o->on_micro)
        v = o->on_micro(o->ud, step, micro);
    return v == DT_PROGRESS_ABORT ? DT_PROGRESS_ABORT : v ? DT_PROGRESS_STOP : 0;
}

int tr_load_adapter(dt_model *m, const dt_peft_adapter *ad, char *err)
{
    dt_backend *be = dt_model_backend(m);
    int nl;
    dt_lora *ls = dt_model_loras(m, &nl);
    for (int i = 0; i < nl; i++) {
        char base[160], name[200];
        snprintf(base, sizeof base, "%s", ls[i].wname);
        char *dot = strstr(base, ".weight");
        if (dot)
            *dot = 0;
        dt_param *fac[2] = {ls[i].A, ls[i].B};
        static const char *suf[2] = {"lora_A", "lora_B"};
        for (int j = 0; j < 2; j++) {
            snprintf(name, sizeof name, "%s.%s", base, suf[j]);
            dt_tensor *t = dt_tensorset_find((dt_tensorset *)&ad->ts, name);
            if (!t)
                return dt_errf(err, DT_EINVAL, "--init-adapter: no %s for "
                               "target %s", name, ls[i].tname);
            if (t->numel != fac[j]->n)
                return dt_errf(err, DT_EINVAL, "--init-adapter: %s has %lld "
                               "elements, expected %ld (a row slice such as GPT-2 "
                               "q of c_attn needs an adapter on the whole module)",
                               name, (long long)t->numel, fac[j]->n);
            OPS.upload(be, fac[j]->p, t->data, (size_t)t->numel * sizeof(float));
        }
    }
    return OPS.sync(be, err);
}

static void fmt_dur(char *buf, size_t n, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(buf, n, "--");
    else if (s >= 3600)
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

static void print_progress(const dt_train_opts *o, const dt_progress *p)
{
    if (o->json) {
        printf("{\"type\":\"metrics\",\"step\":%lld,\"total_steps\":%lld,\"epoch\":%.4f,"
               "\"train_loss\":%.6f,", (long long)p->step, (long long)p->total_steps, p->epoch,
               p->train_loss);
        if (isfinite(p->valid_loss))
            printf("\"valid_loss\":%.6f,", p->valid_loss);
        printf("\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_second\":%.1f,"
               "\"eta_seconds\":%.1f,\"trained_tokens\":%ld,\"peak_device_bytes\":%zu,"
               "\"activation_checkpointing\":%s}\n",
               p->lr, p->grad_norm, p->tokens_per_sec, p->eta_sec, p->trained_tokens,
               p->peak_device_bytes, p->act_ckpt ? "true" : "false");
        fflush(stdout);
        return;
    }
    char eta[32];
    fmt_dur(eta, sizeof eta, p->eta_sec);
    int w = 24, fill = p->total_steps ? (int)((double)w * p->step / p->total_steps) : w;
    char bar[32];
    for (int i = 0; i < w; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    fprintf(stderr, "\r[%s] %lld/%lld loss %.4f", bar, (long long)p->step,
            (long long)p->total_steps, p->train_loss);
    if (isfinite(p->valid_loss))
        fprintf(stderr, " valid %.4f", p->valid_loss);
    fprintf(stderr, " %.0f tok/s ETA %s   ", p->tokens_per_sec, eta);
    if (p->step == p->total_steps || isfinite(p->valid_loss))
        fputc('\n', stderr);
    fflush(stderr);
}

static int load_data(const char *path, const dt_tokenizer *tok, int seq_len,
                     dt_dataset *ds, const char *what, char *err)
{
    char *report = NULL;
    int rc = dt_dataset_load(path, tok, seq_len, ds, &report, err);
    if (rc && report && report[0])
        fprintf(stderr, "%s: %s has problems:\n%s", what, path, report);
    free(report);
    return rc;
}

int tr_adapter_write(dt_model *m, const dt_train_opts *o, dt_weights *w, int moved,
                     const char *dir, char *err)
{
    int nl = 0;
    dt_lora *ls = dt_model_loras(m, &nl);
    int delta = o->method == DT_DELTA_LORA;
    dt_backend *be = dt_model_backend(m);
    dt_adapter_entry *e = calloc((size_t)nl + 1, sizeof *e);
    float **h = calloc((size_t)nl * 4 + 1, sizeof *h); /* A, B, A_K, B_K */
    const float **ak = calloc((size_t)nl + 1, sizeof *ak);
    const float **bk = calloc((size_t)nl + 1, sizeof *bk);
    int rc = 0;
    if (!e || !h || !ak || !bk)
        rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; i < nl && !rc; i++) {
        dt_tensor *W = dt_tensorset_find(&w->ts, ls[i].wname);
        h[2 * i] = malloc((size_t)ls[i].A->n * sizeof(float));
        h[2 * i + 1] = malloc((size_t)ls[i].B->n * sizeof(float));
        if (!h[2 * i] || !h[2 * i + 1] || !W) {
            rc = dt_errf(err, DT_ENOMEM, "out of memory");
            break;
        }
        OPS.download(be, h[2 * i], ls[i].A->p, (size_t)ls[i].A->n * sizeof(float));
        OPS.download(be, h[2 * i + 1], ls[i].B->p, (size_t)ls[i].B->n * sizeof(float));
        if (delta && moved) {
            float **k = h + 2 * nl + 2 * i;
            k[0] = malloc((size_t)ls[i].A->n * sizeof(float));
            k[1] = malloc((size_t)ls[i].B->n * sizeof(float));
            if (!k[0] || !k[1] || !ls[i].AK || !ls[i].BK) {
                rc = dt_errf(err, DT_ENOMEM, "out of memory");
                break;
            }
            OPS.download(be, k[0], ls[i].AK, (size_t)ls[i].A->n * sizeof(float));
            OPS.download(be, k[1], ls[i].BK, (size_t)ls[i].B->n * sizeof(float));
            ak[i] = k[0];
            bk[i] = k[1];
        }
        e[i] = (dt_adapter_entry){ls[i].wname, ls[i].row_off, ls[i].rows,
                                  (int)W->shape[0], ls[i].in, o->rank,
                                  h[2 * i], h[2 * i + 1]};
    }
    if (!rc)
        rc = OPS.sync(be, err);
    if (!rc && o->method == DT_LORA)
        rc = dt_export_peft(w, e, nl, o->alpha, o->model, dir, err);
    else if (!rc && delta)
        rc = dt_export_peft_delta(w, e, ak, bk, nl, o->alpha, o->lambda, o->model, dir, err);
    for (int i = 0; h && i < 4 * nl; i++)
        free(h[i]);
    free(h);
    free(e);
    free(ak);
    free(bk);
    return rc;
}

/* Writes DIR/adapter for lora and delta_lora (tr_adapter_write: the same
 * code writes each checkpoint's adapter), then downloads the merged
 * weights, frees the model (so that the export's host copy does not sit
 * beside the device copy and the activations) and writes DIR/merged. */
static int export_all(dt_model **mp, const dt_train_opts *o, dt_weights *w,
                      const dt_tokenizer *tok, int moved, char *err)
{
    dt_model *m = *mp;
    char dir[4200];
    dt_tensorset merged;
    dt_model_release_activations(m);
    int rc = 0;
    /* bf16: the frozen weights were released after upload in bf16; the
     * merged model is computed from the fp32 base, read again. */
    if (dt_model_bf16(m)) {
        dt_weights_free(w);
        if ((rc = dt_weights_load(o->model, w, err)))
            return rc;
    }
    if (o->method == DT_LORA || o->method == DT_DELTA_LORA) {
        snprintf(dir, sizeof dir, "%s/adapter", o->out);
        if ((rc = tr_adapter_write(m, o, w, moved, dir, err)))
            return rc;
    }
    if ((rc = dt_model_merged(m, &merged, err)))
        return rc;
    dt_model_free(m);
    *mp = NULL;
    snprintf(dir, sizeof dir, "%s/merged", o->out);
    dt_export_opts xo;
    dt_export_opts_default(&xo);
    if (o->export_shard_size > 0)
        xo.shard_size = o->export_shard_size;
    dt_dtype xd;
    if (o->export_dtype &&
        !(rc = dt_export_dtype_parse(o->export_dtype, &xd, "--export-dtype", err)))
        xo.dtype = xd;
    if (!rc)
        rc = dt_export_hf_opts(w, &merged, tok, dir, &xo, err);
    dt_tensorset_free(&merged);
    return rc;
}

/* The options against the hyperparameter limits (base/hparams.c: the same
 * table the API validates jobs with), each error naming the flag. */
static int check_limits(const dt_train_opts *o, char *err)
{
    const struct { dt_hp hp; double x; int applies; } checks[] = {
        {DT_HP_BATCH_SIZE, o->batch, 1},
        {DT_HP_GRADIENT_ACCUMULATION_STEPS, o->accum, 1},
        {DT_HP_SEQ_LEN, o->seq_len, 1},
        {DT_HP_LEARNING_RATE, o->lr, 1},
        {DT_HP_WARMUP_STEPS, o->warmup, 1},
        {DT_HP_WEIGHT_DECAY, o->weight_decay, 1},
        {DT_HP_MAX_GRAD_NORM, o->max_grad_norm, 1},
        {DT_HP_RANK, o->rank, o->method != DT_FULL},
        {DT_HP_ALPHA, o->alpha, o->method != DT_FULL},
        {DT_HP_LAMBDA, o->lambda, o->method == DT_DELTA_LORA},
    };
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        if (!checks[i].applies)
            continue;
        int rc = dt_hparam_check(checks[i].hp, checks[i].x,
                                 dt_hparam_limits[checks[i].hp].flag, err);
        if (rc)
            return rc;
    }
    if (!(o->adam_eps > 0.0f && o->adam_eps < 1.0f))
        return dt_errf(err, DT_EINVAL, "--adam-epsilon must be in (0, 1), got %g",
                       (double)o->adam_eps);
    if (!(o->model_dropout < 1.0f) || (o->model_dropout < 0.0f && o->model_dropout != -1.0f))
        return dt_errf(err, DT_EINVAL, "--model-dropout must be in [0, 1), got %g",
                       (double)o->model_dropout);
    dt_dtype xdt;
    if (o->export_dtype &&
        dt_export_dtype_parse(o->export_dtype, &xdt, "--export-dtype", err))
        return DT_EINVAL;
    if (!(o->lora_dropout >= 0.0f && o->lora_dropout < 1.0f))
        return dt_errf(err, DT_EINVAL, "--lora-dropout must be in [0, 1), got %g",
                       (double)o->lora_dropout);
    if (o->lora_dropout > 0.0f && o->method == DT_DELTA_LORA)
        return dt_errf(err, DT_EINVAL, "--lora-dropout is not available for "
                       "delta_lora: the Delta-LoRA paper removes dropout from the "
                       "low-rank branch (its W update needs the gradient of the "
                       "undropped input); use --method lora or --lora-dropout 0");
    if (o->lora_dropout > 0.0f && o->method != DT_LORA)
        return dt_errf(err, DT_EINVAL, "--lora-dropout applies to --method lora only");
    if (!(o->label_smoothing >= 0.0f && o->label_smoothing < 1.0f))
        return dt_errf(err, DT_EINVAL, "--label-smoothing must be in [0, 1), got %g",
                       (double)o->label_smoothing);
    if (o->epochs < 0 || o->steps < 0 || (o->epochs == 0 && o->steps == 0))
        return dt_errf(err, DT_EINVAL, "--epochs or --steps must be > 0");
    return DT_OK;
}

/* The predicted tokens of the longest row of ds (0 for none). */
static int longest_row(const dt_dataset *ds)
{
    int n = 0;
    for (int i = 0; i < ds->nrows; i++)
        if (ds->rows[i].n - 1 > n)
            n = ds->rows[i].n - 1;
    return n;
}

int dt_act_ckpt_parse(const char *s)
{
    if (!s)
        return -1;
    if (!strcmp(s, "auto"))
        return DT_ACT_CKPT_AUTO;
    if (!strcmp(s, "on"))
        return DT_ACT_CKPT_ON;
    if (!strcmp(s, "off"))
        return DT_ACT_CKPT_OFF;
    return -1;
}

const char *dt_act_ckpt_name(int mode)
{
    return mode == DT_ACT_CKPT_ON ? "on" : mode == DT_ACT_CKPT_OFF ? "off" : "auto";
}

/* 1 when the run's device is a CUDA device. */
static int run_cuda(const dt_train_opts *o)
{
    const char *dev = o->device ? o->device : "cpu";
    return !strncmp(dev, "cuda", 4) || (!strcmp(dev, "auto") && dt_backend_cuda_available());
}

/* The memory AUTO checkpointing compares the estimate with: the run's
 * memory_limit; else the CUDA device's memory (be's, or asked of the
 * device when there is no backend yet); else, on the CPU, what this
 * process holds plus what the machine has available (the estimate counts
 * the process's own memory). 0: unknown. */
static long long ckpt_budget(const dt_train_opts *o, const dt_backend *be)
{
    if (o->memory_limit > 0)
        return o->memory_limit;
    if (be ? be->total_bytes > 0 : run_cuda(o)) {
        if (be)
            return (long long)be->total_bytes;
        const char *dev = o->device ? o->device : "cuda";
        return (long long)dt_backend_cuda_total(dev[4] == ':' ? atoi(dev + 5) : 0);
    }
    long long avail = dt_mem_available();
    return avail > 0 ? avail + dt_mem_self_rss() : 0;
}

/* The estimate of a run whose data is loaded (valid may be empty), with
 * activation checkpointing as o->act_ckpt says (AUTO: compared with
 * budget, dt_mem_estimate_auto_ckpt); the choice in *act_ckpt, the total
 * without it in *off (either may be NULL). */
static int run_estimate(const dt_train_opts *o, const dt_dataset *ds,
                        const dt_dataset *vs, long long budget, int *act_ckpt,
                        long long *off, dt_mem_estimate *e, char *err)
{
    dt_mem_model mm;
    int rc = dt_mem_model_read(o->model, &mm, err);
    if (rc)
        return rc;
    int lr = longest_row(ds), lv = longest_row(vs);
    long long toks = 0;
    for (int i = 0; i < ds->nrows; i++)
        toks += ds->rows[i].n;
    for (int i = 0; i < vs->nrows; i++)
        toks += vs->rows[i].n;
    const char *dev = o->device ? o->device : "cpu";
    int cuda = run_cuda(o);
    dt_mem_job j = {o->method, o->rank, o->method == DT_FULL ? NULL : o->targets,
                    o->batch, o->seq_len, (lr > lv ? lr : lv) > 0 ? (lr > lv ? lr : lv) : 1,
                    toks, cuda,
                    o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN),
                    dt_mem_self_rss(), o->packing, o->act_ckpt == DT_ACT_CKPT_ON};
    /* the precision dt_train resolves (dt_precision_resolve) */
    int bf16 = o->precision == DT_PREC_BF16;
    if (o->precision == DT_PREC_AUTO && cuda) {
        const char *tf32 = getenv("DT_TF32");
        bf16 = !(tf32 && !strcmp(tf32, "1")) &&
               dt_backend_cuda_bf16(dev[4] == ':' ? atoi(dev + 5) : 0);
    }
    if (o->act_ckpt == DT_ACT_CKPT_AUTO)
        rc = dt_mem_estimate_auto_ckpt(&mm, &j, bf16, budget, e, off, err);
    else
        rc = dt_mem_estimate_job_prec(&mm, &j, bf16, e, err);
    if (!rc && off && o->act_ckpt != DT_ACT_CKPT_AUTO) {
        dt_mem_job j0 = j;
        dt_mem_estimate e0;
        j0.act_ckpt = 0;
        rc = dt_mem_estimate_job_prec(&mm, &j0, bf16, &e0, err);
        *off = e0.total;
    }
    if (act_ckpt)
        *act_ckpt = j.act_ckpt;
    return rc;
}

/* DT_ENOMEM naming the bytes, the limit and the settings to lower when the
 * estimate exceeds o->memory_limit. */
static int check_memory(const dt_train_opts *o, const dt_mem_estimate *e, char *err)
{
    if (o->memory_limit <= 0 || e->total <= o->memory_limit)
        return 0;
    char need[32], lim[32];
    dt_mem_human(e->total, need, sizeof need);
    dt_mem_human(o->memory_limit, lim, sizeof lim);
    return dt_errf(err, DT_ENOMEM, "the job needs about %lld bytes (%s) for batch %d x %d "
                   "tokens, above this worker's memory limit of %lld bytes (%s); lower "
                   "--batch-size (%d), --seq-len (%d)%s%s",
                   e->total, need, o->batch, e->seq_eff, o->memory_limit, lim, o->batch,
                   o->seq_len, o->method == DT_FULL ? " or use --method lora instead of full"
                                                    : ", --rank or the --target-modules",
                   o->method == DT_FULL ? "" : " (method lora needs the least)");
}

int dt_train_estimate(const dt_train_opts *o, dt_mem_estimate *e, char *err)
{
    return dt_train_estimate_ckpt(o, e, NULL, NULL, NULL, err);
}

int dt_train_estimate_ckpt(const dt_train_opts *o, dt_mem_estimate *e,
                           int *act_ckpt, long long *off, long long *budget,
                           char *err)
{
    dt_tokenizer *tok = NULL;
    dt_dataset ds = {0}, vs = {0};
    int rc;
    memset(e, 0, sizeof *e);
    if (!o->model || !o->data)
        return dt_errf(err, DT_EINVAL, "--model and --data are required");
    if ((rc = check_limits(o, err)))
        return rc;
    if (!(tok = dt_model_tokenizer(o->model, err)))
        return DT_EFORMAT;
    rc = load_data(o->data, tok, o->seq_len, &ds, "--data", err);
    if (!rc && o->valid)
        rc = load_data(o->valid, tok, o->seq_len, &vs, "--valid", err);
    long long bud = o->act_ckpt == DT_ACT_CKPT_AUTO ? ckpt_budget(o, NULL) : 0;
    if (budget)
        *budget = bud;
    if (!rc)
        rc = run_estimate(o, &ds, &vs, bud, act_ckpt, off, e, err);
    dt_dataset_free(&ds);
    dt_dataset_free(&vs);
    dt_tokenizer_free(tok);
    return rc;
}

/* Retention after a checkpoint: older ones keep their weights only. A
 * failure costs disk, not the run: a warning. */
static void prune(const dt_train_opts *o)
{
    char err[DT_ERR_LEN];
    if (o->ckpt_keep > 0 && dt_ckpt_prune(o->out, o->ckpt_keep, err) < 0)
        fprintf(stderr, "warning: checkpoint retention: %s\n", err);
}

int dt_train(const dt_train_opts *o_in, char *err)
{
    dt_train_opts o = *o_in;
    dt_backend *be = NULL;
    dt_weights w;
    dt_tokenizer *tok = NULL;
    dt_dataset ds = {0}, vs = {0};
    dt_model *m = NULL;
    dt_peft_adapter ad;
    int have_ad = 0, rc;
    int32_t *ids = NULL, *tgt = NULL, *pos = NULL;
    int *perm = NULL;
    memset(&w, 0, sizeof w);

    if (!o.model || !o.data || !o.out)
        return dt_errf(err, DT_EINVAL, "--model, --data and --out are required");
    if ((rc = check_limits(&o, err)))
        return rc;
    if ((rc = dt_mkdirs(o.out, err)))
        return rc;
    if (!(be = dt_backend_new(o.device, o.threads, err)))
        return DT_EDEVICE;
    if (!(tok = dt_model_tokenizer(o.model, err))) {
        rc = DT_EFORMAT;
        goto fail;
    }
    if ((rc = load_data(o.data, tok, o.seq_len, &ds, "--data", err)))
        goto fail;
    if (o.valid && (rc = load_data(o.valid, tok, o.seq_len, &vs, "--valid", err)))
        goto fail;
    /* Activations are sized by the longest row, not seq_len; a run over its
     * memory limit stops here, before the weights are loaded. */
    int T = o.seq_len, longest = longest_row(&ds);
    if (longest_row(&vs) > longest)
        longest = longest_row(&vs);
    if (longest >= 1 && longest < T && !o.packing)
        T = longest; /* packing fills sequences up to seq_len */
    /* Activation checkpointing: on, off, or (AUTO) on only when the
     * estimate without it exceeds the budget (ckpt_budget). */
    int act_ckpt = o.act_ckpt == DT_ACT_CKPT_ON;
    if (o.memory_limit > 0 || o.act_ckpt == DT_ACT_CKPT_AUTO) {
        dt_mem_estimate est;
        char why[DT_ERR_LEN] = "";
        long long budget = ckpt_budget(&o, be), off = 0;
        if (run_estimate(&o, &ds, &vs, budget, &act_ckpt, &off, &est, why) == 0) {
            if (o.act_ckpt == DT_ACT_CKPT_AUTO && act_ckpt) {
                char hoff[32], hon[32], hb[32];
                dt_mem_human(off, hoff, sizeof hoff);
                dt_mem_human(est.total, hon, sizeof hon);
                dt_mem_human(budget, hb, sizeof hb);
                fprintf(stderr, "activation checkpointing on (auto): the run needs about "
                        "%s without it, above the %s budget; %s with it\n", hoff, hb, hon);
            }
            if ((rc = check_memory(&o, &est, err)))
                goto fail;
        } else {
            fprintf(stderr, "warning: no memory estimate (%s)\n", why);
        }
    }
    /* Mapped, not converted: dt_model_new converts, uploads and frees one
     * tensor at a time (release_on_upload below). */
    if ((rc = dt_weights_open(o.model, &w, err)))
        goto fail;
    /* seq_len is the contract, whatever the rows: a GPT-2 has no positions
     * beyond its table. */
    if (w.cfg.arch == DT_ARCH_GPT2 && o.seq_len > w.cfg.max_pos) {
        rc = dt_errf(err, DT_EINVAL, "--seq-len %d exceeds the model's %d positions",
                     o.seq_len, w.cfg.max_pos);
        goto fail;
    }

    dt_precision prec;
    if ((rc = dt_precision_resolve(o.precision, be, &prec, err)))
        goto fail;
    dt_lora_opts lo = {o.method, o.rank, o.alpha, 0, prec, o.delta_lowrank,
                       o.lambda, act_ckpt};
    if (o.init_adapter && o.method != DT_FULL) {
        if ((rc = dt_peft_load(o.init_adapter, &w, &ad, err)))
            goto fail;
        have_ad = 1;
        lo.rank = o.rank = ad.rank;
        lo.alpha = o.alpha = ad.alpha;
        o.targets = ad.targets;
    }
    if (o.method != DT_FULL && (rc = dt_parse_targets(o.targets, w.cfg.arch, &lo.targets, err)))
        goto fail;

    ids = malloc((size_t)o.batch * o.seq_len * sizeof *ids);
    tgt = malloc((size_t)o.batch * o.seq_len * sizeof *tgt);
    pos = malloc((size_t)o.batch * o.seq_len * sizeof *pos);
    perm = malloc((size_t)ds.nrows * sizeof *perm);
    if (!ids || !tgt || !pos || !perm) {
        rc = dt_errf(err, DT_ENOMEM, "out of memory");
        goto fail;
    }
    batcher bt = {&ds, o.seed, perm, -1, NULL, NULL, o.batch, o.seq_len, 0, NULL};
    long rows_per_step = (long)o.batch * o.accum;
    int64_t total = dt_train_total_steps(o.steps, o.epochs, ds.nrows, o.batch, o.accum);
    if (o.packing && o.steps <= 0) /* batch counts packed sequences */
        total = tr_packed_total_steps(&bt, o.epochs, o.accum);
    bt.ids = ids;
    bt.tgt = tgt;
    bt.pos = pos;
    int64_t K = o.start_step >= 0 ? o.start_step : (int64_t)((double)total * DT_DELTA_START_FRAC);
    if (o.method == DT_DELTA_LORA && K >= total)
        fprintf(stderr, "warning: --start-step %lld >= total steps %lld: W never moves "
                "(this run is plain LoRA)\n", (long long)K, (long long)total);

    if (o.resume) { /* before the model: a changed rank or target set is named */
        char dir[4400];
        if (dt_ckpt_latest(o.out, dir, sizeof dir) > 0 &&
            (rc = tr_ckpt_check(dir, &o, K, total, lo.targets, err)))
            goto fail;
    }

    w.release_on_upload = 1; /* one tensor converted on the host at a time */
    if ((rc = dt_model_new(be, &w, &lo, o.batch, T, o.seed, &m, err)))
        goto fail;
    if (have_ad && (rc = tr_load_adapter(m, &ad, err)))
        goto fail;
    dt_weights_release_data(&w);
    {
        /* dropout and label smoothing: training passes only */
        const dt_config *mc = dt_model_config(m);
        dt_dropouts dr = {mc->embd_pdrop, mc->resid_pdrop, mc->attn_pdrop,
                          o.lora_dropout};
        if (o.model_dropout >= 0.0f) { /* Llama has attention dropout only */
            dr.attn = o.model_dropout;
            dr.embd = dr.resid = mc->arch == DT_ARCH_GPT2 ? o.model_dropout : 0.0f;
        }
        if ((rc = dt_model_set_dropout(m, &dr, err)))
            goto fail;
        dt_model_set_label_smoothing(m, o.label_smoothing);
    }

    dt_optim opt;
    dt_optim_defaults(&opt);
    opt.lr = o.lr;
    opt.weight_decay = o.weight_decay;
    opt.max_grad_norm = o.max_grad_norm;
    opt.eps = o.adam_eps;
    opt.lambda = o.lambda;
    opt.start_step = K;
    long trained = 0;
    long data_pos = 0;    /* stream rows taken by the completed steps */
    int64_t ckpt_at = -1; /* the step of the newest checkpoint on disk */
    if (o.resume) {
        char dir[4400];
        if (dt_ckpt_latest(o.out, dir, sizeof dir) > 0) {
            if ((rc = tr_ckpt_load(m, dir, &opt, &trained, &data_pos, err)))
                goto fail;
            if (data_pos < 0 && o.packing) {
                rc = dt_errf(err, DT_EFORMAT, "cannot resume from %s with --packing: it "
                             "has no data position", dir);
                goto fail;
            }
            if (!o.packing) /* the position follows from the step */
                data_pos = (long)opt.t * rows_per_step;
            ckpt_at = opt.t;
            /* the low-rank form: A_K, B_K came back with the checkpoint */
            dt_model_delta_set_moved(m, o.method == DT_DELTA_LORA &&
                                            opt.t > opt.start_step);
            if (!o.json)
                fprintf(stderr, "resuming from %s (step %lld)\n", dir, (long long)opt.t);
        }
    }

    double t0 = dt_now();
    int64_t first = opt.t;
    long tok_run = 0;
    while (opt.t < total) {
        int64_t step = opt.t; /* 0-based index of this step */
        /* tokens of the whole optimizer step, so the loss is their mean;
         * next: the stream position after this step */
        long nstep = 0, nt, real = 0, next = data_pos;
        int tt, halt = 0;
        for (int g = 0; g < o.accum; g++) {
            if (o.packing) {
                next += tr_batch_packed(&bt, next, &tt, &nt);
            } else {
                tr_batch_at(&bt, data_pos + (long)g * o.batch, &tt, &nt);
                next += o.batch;
            }
            nstep += nt;
            real += bt.real;
        }
        dt_model_zero_grad(m);
        double loss = 0.0;
        long at = data_pos; /* packing: the next micro-batch's first row */
        for (int g = 0; g < o.accum && nstep > 0; g++) {
            double ls;
            /* A stop request between micro-batches drops the partial
             * accumulation: the model is still at step opt.t. */
            if (g > 0 && (halt = micro_stop(&o, step, g)))
                break;
            if (o.packing)
                at += tr_batch_packed(&bt, at, &tt, &nt);
            else
                tr_batch_at(&bt, data_pos + (long)g * o.batch, &tt, &nt);
            dt_model_train_mode(m, o.seed, step, g); /* dropout masks' key */
            if ((rc = dt_model_forward_packed(m, ids, tgt, o.packing ? pos : NULL, o.batch,
                                              tt, 1.0f / nstep, &ls, &nt, err)) ||
                (rc = dt_model_backward(m, err)))
                goto fail;
            loss += ls;
        }
        if (halt == DT_PROGRESS_ABORT) {
            rc = dt_errf(err, DT_ECANCEL, "aborted in step %lld/%lld; the step in progress "
                         "was dropped, no checkpoint written", (long long)step + 1,
                         (long long)total);
            goto fail;
        }
        if (halt) {
            if (opt.t > 0 && opt.t != ckpt_at &&
                (rc = tr_ckpt_save(m, &o, &w, &opt, total, lo.targets, trained, data_pos,
                                   err)))
                goto fail;
            if (opt.t > 0 && opt.t != ckpt_at)
                prune(&o);
            rc = dt_errf(err, DT_ECANCEL, "stopped in step %lld/%lld; the step in progress "
                         "was dropped, %s", (long long)step + 1, (long long)total,
                         opt.t > 0 ? "continue from the checkpoint of the last completed "
                                     "step with --resume"
                                   : "no step was completed");
            goto fail;
        }
        dt_model_eval_mode(m); /* validation below: no dropout */
        loss /= nstep > 0 ? nstep : 1;
        if (!isfinite(loss)) {
            rc = dt_errf(err, DT_ENAN, "loss became %g at step %lld (try a lower --lr)",
                         loss, (long long)step + 1);
            goto fail;
        }
        float lr = dt_lr_at(o.sched, o.lr, o.warmup, total, step);
        double gn;
        if ((rc = dt_optim_step(m, &opt, o.method, lr, &gn, err)))
            goto fail;
        trained += nstep;
        tok_run += real;
        data_pos = next;
        dt_progress p = {opt.t, total, (double)data_pos / ds.nrows, loss,
                         NAN, 0, 0, lr, gn, trained, 0, 0, tok_run, act_ckpt};
        double el = dt_now() - t0;
        p.tokens_per_sec = el > 0 ? tok_run / el : 0;
        p.eta_sec = el / (double)(opt.t - first) * (double)(total - opt.t);
        if (vs.nrows && ((o.eval_interval && opt.t % o.eval_interval == 0) || opt.t == total))
            if ((rc = tr_eval_loss(m, &vs, o.batch, o.seq_len, &p.valid_loss, err)))
                goto fail;
        p.peak_device_bytes = dt_model_backend(m)->peak_bytes;
        p.ckpt_due = (o.ckpt_interval && opt.t % o.ckpt_interval == 0) || opt.t == total;
        int stop = o.on_progress ? o.on_progress(o.ud, &p) : (print_progress(&o, &p), 0);
        if (o.stop && atomic_load(o.stop) == DT_PROGRESS_ABORT)
            stop = DT_PROGRESS_ABORT;
        if (stop == DT_PROGRESS_ABORT) {
            rc = dt_errf(err, DT_ECANCEL, "aborted at step %lld/%lld by the caller; no "
                         "checkpoint written", (long long)opt.t, (long long)total);
            goto fail;
        }
        if (o.stop && atomic_load(o.stop))
            stop = 1;
        if (p.ckpt_due || stop) {
            if ((rc = tr_ckpt_save(m, &o, &w, &opt, total, lo.targets, trained, data_pos,
                                   err)))
                goto fail;
            ckpt_at = opt.t;
            prune(&o);
        }
        if (stop && opt.t < total) {
            rc = dt_errf(err, DT_ECANCEL, "stopped at step %lld/%lld; checkpoint written, "
                         "continue with --resume", (long long)opt.t, (long long)total);
            goto fail;
        }
    }
    rc = export_all(&m, &o, &w, tok, opt.t > opt.start_step, err);
fail:
    free(ids);
    free(tgt);
    free(pos);
    free(perm);
    if (have_ad)
        dt_peft_free(&ad);
    dt_model_free(m);
    dt_dataset_free(&ds);
    dt_dataset_free(&vs);
    dt_tokenizer_free(tok);
    dt_weights_free(&w);
    dt_backend_free(be);
    return rc;
}
