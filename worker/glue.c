/* glue.c: the worker's engine side: job row -> dt_train_opts, one training
 * run with the worker's callbacks, and engine errors -> errors a user can act
 * on. Knows nothing of SQL or Redis (worker.c does that). */
#include "glue.h"
#include "job_opts.h"
#include "api/validate.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- hyperparameters ------------------------------------------------------ */

long wk_total_steps(const db_job *j, long rows)
{
    if (j->max_steps > 0)
        return j->max_steps;
    long per = (long)(j->batch_size > 0 ? j->batch_size : 1) *
               (j->grad_accum > 0 ? j->grad_accum : 1);
    long epochs = j->n_epochs > 0 ? j->n_epochs : 1;
    return rows > 0 ? (epochs * rows + per - 1) / per : 0;
}

int wk_default_ckpt_interval(long total_steps)
{
    long k = (total_steps + 9) / 10;
    if (k < WK_MIN_CKPT_INTERVAL)
        k = WK_MIN_CKPT_INTERVAL;
    if (k > INT_MAX)
        k = INT_MAX;
    return (int)k;
}

int wk_job_opts(const db_job *j, long train_rows, dt_train_opts *o, char *err)
{
    dt_train_defaults(o);
    if (!strcmp(j->method, "delta_lora"))
        o->method = DT_DELTA_LORA;
    else if (!strcmp(j->method, "lora"))
        o->method = DT_LORA;
    else if (!strcmp(j->method, "full"))
        o->method = DT_FULL;
    else
        return dt_errf(err, DT_EINVAL, "method: unknown type \"%s\"", j->method);

    if (!j->lr_scheduler[0] || !strcmp(j->lr_scheduler, "linear"))
        o->sched = DT_SCHED_LINEAR;
    else if (!strcmp(j->lr_scheduler, "cosine"))
        o->sched = DT_SCHED_COSINE;
    else if (!strcmp(j->lr_scheduler, "constant"))
        o->sched = DT_SCHED_CONSTANT;
    else
        return dt_errf(err, DT_EINVAL, "lr_scheduler: unknown \"%s\"", j->lr_scheduler);

    if (o->method != DT_FULL) {
        o->rank = j->rank;
        o->alpha = (float)j->alpha;
        if (j->target_modules[0])
            o->targets = j->target_modules;
    }
    if (o->method == DT_DELTA_LORA) {
        o->lambda = (float)j->lambda;
        o->start_step = j->start_step;
    }
    o->lr = (float)j->learning_rate;
    o->epochs = j->n_epochs;
    o->steps = j->max_steps > 0 ? j->max_steps : 0;
    o->batch = j->batch_size;
    o->accum = j->grad_accum > 0 ? j->grad_accum : 1;
    o->seq_len = j->seq_len;
    o->seed = (uint64_t)j->seed;
    o->warmup = j->warmup_steps;
    o->weight_decay = (float)j->weight_decay;
    o->max_grad_norm = (float)j->max_grad_norm;
    long total = wk_total_steps(j, train_rows);
    o->ckpt_interval = j->checkpoint_interval > 0 ? j->checkpoint_interval
                                                  : wk_default_ckpt_interval(total);
    /* Validation loss at every checkpoint, so each checkpoint's metrics
     * carry it. */
    o->eval_interval = j->eval_interval > 0 ? j->eval_interval : o->ckpt_interval;
    if (j->export_dtype[0])
        o->export_dtype = j->export_dtype;
    /* hyperparameters.precision ("" = auto: bf16 on a GPU that has it, fp32
     * on the CPU); the API accepted only names the engine knows. */
    if (j->precision[0] && dt_precision_parse(j->precision) > 0)
        o->precision = (dt_precision)dt_precision_parse(j->precision);
    o->packing = j->packing; /* hyperparameters.packing */
    o->resume = 1;
    o->json = 0;
    return 0;
}

/* The positions of a Hugging Face GPT-2 directory (config.json n_positions or
 * n_ctx), or 0 when unknown or not GPT-2 (Llama-family models use RoPE and
 * have no hard limit in the engine). */
static int model_positions(const char *model_path)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", model_path) >= (int)sizeof path)
        return 0;
    json_t *c = json_load_file(path, 0, NULL);
    if (!c)
        return 0;
    int n = 0;
    const char *type = json_string_value(json_object_get(c, "model_type"));
    if (type && !strcmp(type, "gpt2")) {
        json_t *v = json_object_get(c, "n_positions");
        if (!json_is_integer(v))
            v = json_object_get(c, "n_ctx");
        if (json_is_integer(v) && json_integer_value(v) > 0 &&
            json_integer_value(v) < 1 << 30)
            n = (int)json_integer_value(v);
    }
    json_decref(c);
    return n;
}

/* ---- one run ----------------------------------------------------------------- */

typedef struct run_ctx {
    const wk_run *r;
} run_ctx;

static int on_progress(void *ud, const dt_progress *p)
{
    const wk_run *r = ((run_ctx *)ud)->r;
    db_progress dp = {
        .step = p->step,
        .total_steps = p->total_steps,
        .epoch = p->epoch,
        .train_loss = p->train_loss,
        .valid_loss = p->valid_loss,
        .tokens_per_second = p->tokens_per_sec,
        .eta_seconds = p->eta_sec,
        .trained_tokens = p->trained_tokens,
        .peak_device_bytes = (int64_t)p->peak_device_bytes,
        .act_ckpt = p->act_ckpt,
    };
    int rc = r->on_progress ? r->on_progress(r->ud, &dp, p->lr, p->grad_norm) : 0;
    if (rc == WK_ABORT)
        return DT_PROGRESS_ABORT;
    if ((p->ckpt_due || rc) && r->before_checkpoint && r->before_checkpoint(r->ud, p->step))
        return DT_PROGRESS_ABORT;
    return rc ? DT_PROGRESS_STOP : 0;
}

static int on_checkpoint(void *ud, int64_t step, const char *dir)
{
    const wk_run *r = ((run_ctx *)ud)->r;
    return r->on_checkpoint ? r->on_checkpoint(r->ud, step, dir) : 0;
}

int wk_train(const wk_run *r, char *err)
{
    dt_train_opts o;
    int rc = wk_job_opts(r->job, r->train_rows, &o, err);
    if (rc)
        return rc;
    /* The default seq_len is a default, not a request: a model with fewer
     * positions trains at its own context. (An explicit seq_len of 256 is
     * indistinguishable from the default and is lowered too.) */
    int npos = r->model_path ? model_positions(r->model_path) : 0;
    if (npos > 1 && o.seq_len == VALIDATE_DEFAULT_SEQ_LEN && o.seq_len > npos)
        o.seq_len = npos;
    run_ctx ctx = {r};
    o.model = r->model_path;
    o.data = r->train_path;
    o.valid = r->valid_path;
    o.out = r->out_dir;
    o.device = r->device;
    o.threads = r->threads;
    o.on_progress = on_progress;
    o.on_checkpoint = on_checkpoint;
    o.ud = &ctx;
    o.stop = r->stop;
    o.memory_limit = r->memory_limit;
    if (r->ckpt_keep > 0)
        o.ckpt_keep = r->ckpt_keep;
    o.export_shard_size = r->export_shard_size;
    return dt_train(&o, err);
}

long long wk_default_memory_limit(const char *device)
{
    long long total = 0;
    if (device && (!strncmp(device, "cuda", 4) ||
                   (!strcmp(device, "auto") && dt_backend_cuda_available()))) {
        char err[DT_ERR_LEN] = "";
        dt_backend *be = dt_backend_new(device, 1, err);
        if (be) {
            total = (long long)be->total_bytes;
            dt_backend_free(be);
        }
    } else {
        total = dt_mem_available();
    }
    return total / 5 * 4;
}

int64_t wk_ckpt_latest(const char *out_dir)
{
    char dir[4096];
    int64_t step = dt_ckpt_latest(out_dir, dir, sizeof dir);
    return step > 0 ? step : 0;
}

int wk_ckpt_prune(const char *out_dir, int keep, char *err)
{
    return dt_ckpt_prune(out_dir, keep, err);
}

/* ---- errors ------------------------------------------------------------------- */

/* Copies src into out (n bytes) with every occurrence of `from` replaced by
 * `to` (from may be NULL or ""). */
static void replace_all(char *out, size_t n, const char *src, const char *from,
                        const char *to)
{
    size_t fl = from ? strlen(from) : 0, o = 0;
    while (*src && o + 1 < n) {
        if (fl && !strncmp(src, from, fl)) {
            int w = snprintf(out + o, n - o, "%s", to);
            o += (size_t)w < n - o ? (size_t)w : n - o - 1;
            src += fl;
        } else {
            out[o++] = *src++;
        }
    }
    out[o] = 0;
}

static int mentions(const char *s, const char *path)
{
    return path && path[0] && strstr(s, path) != NULL;
}

static void hp_param(char *out, size_t n, const db_job *j, const char *name)
{
    /* The field as the client sent it: method.<type>.hyperparameters.<name>,
     * or the legacy top-level hyperparameters object. */
    const char *t = j->method_input[0] ? j->method_input : j->method;
    if (t[0])
        snprintf(out, n, "method.%s.hyperparameters.%s", t, name);
    else
        snprintf(out, n, "hyperparameters.%s", name);
}

void wk_classify_error(int rc, const char *detail, const wk_run *r,
                       wk_error *e)
{
    const db_job *j = r->job;
    char a[600], b[600]; /* detail, cut to fit the message */
    /* Server paths become the names the user gave them. */
    replace_all(a, sizeof a, detail ? detail : "", r->train_path, j->training_file);
    replace_all(b, sizeof b, a, r->valid_path, j->validation_file);
    replace_all(a, sizeof a, b, r->model_path, j->model);
    replace_all(b, sizeof b, a, r->out_dir, "<job output>");
    /* The engine speaks of its command-line flags; the API of fields. */
    static const char *const flags[][2] = {
        {"--seq-len", "seq_len"}, {"--lr-scheduler", "lr_scheduler"}, {"--lr", "learning_rate"}, {"--batch-size", "batch_size"},
        {"--max-grad-norm", "max_grad_norm"}, {"--grad-accum", "gradient_accumulation_steps"},
        {"--rank", "rank"}, {"--alpha", "alpha"}, {"--lambda", "lambda"},
        {"--start-step", "start_step"}, {"--target-modules", "target_modules"},
        {"--warmup-steps", "warmup_steps"}, {"--weight-decay", "weight_decay"},
        {"--epochs", "n_epochs"}, {"--steps", "max_steps"}, {"--method", "method"},
        {"--export-dtype", "export_dtype"}, {"--precision", "precision"},
        {"--packing", "packing"}};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        replace_all(a, sizeof a, b, flags[i][0], flags[i][1]);
        memcpy(b, a, sizeof b);
    }
    const char *d = b;
    memset(e, 0, sizeof *e);

    if (rc == DT_ENAN) {
        snprintf(e->code, sizeof e->code, "training_diverged");
        snprintf(e->message, sizeof e->message,
                 "The training loss became NaN or infinite (%s). Lower the "
                 "learning_rate (it was %g), or set max_grad_norm to clip "
                 "gradients, and create the job again.", d, j->learning_rate);
        hp_param(e->param, sizeof e->param, j, "learning_rate");
    } else if (rc == DT_ENOMEM && strstr(detail ? detail : "", "memory limit")) {
        /* Refused before anything was allocated (dt_train's memory_limit). */
        snprintf(e->code, sizeof e->code, "insufficient_memory");
        snprintf(e->message, sizeof e->message,
                 "The job does not fit the worker's memory and was not started: %s; "
                 "then create the job again.", d);
        hp_param(e->param, sizeof e->param, j, "batch_size");
    } else if (rc == DT_ENOMEM) {
        snprintf(e->code, sizeof e->code, "out_of_memory");
        snprintf(e->message, sizeof e->message,
                 "The worker ran out of memory on device %s (%s). Lower "
                 "batch_size (it was %d) or seq_len (it was %d), or use "
                 "gradient_accumulation_steps, and create the job again.",
                 r->device ? r->device : "?", d, j->batch_size, j->seq_len);
        hp_param(e->param, sizeof e->param, j, "batch_size");
    } else if (mentions(detail, r->train_path)) {
        snprintf(e->code, sizeof e->code, "invalid_training_file");
        snprintf(e->message, sizeof e->message,
                 "The training file %s cannot be used: %s. Fix the file, upload "
                 "it again and create a new job.", j->training_file, d);
        snprintf(e->param, sizeof e->param, "training_file");
    } else if (mentions(detail, r->valid_path)) {
        snprintf(e->code, sizeof e->code, "invalid_validation_file");
        snprintf(e->message, sizeof e->message,
                 "The validation file %s cannot be used: %s. Fix the file, "
                 "upload it again and create a new job.", j->validation_file, d);
        snprintf(e->param, sizeof e->param, "validation_file");
    } else if (mentions(detail, r->model_path) || rc == DT_ENOTSUP) {
        snprintf(e->code, sizeof e->code, "model_unavailable");
        snprintf(e->message, sizeof e->message,
                 "The base model %s could not be loaded: %s. Choose another "
                 "model from GET /v1/models.", j->model, d);
        snprintf(e->param, sizeof e->param, "model");
    } else if (rc == DT_EINVAL) {
        snprintf(e->code, sizeof e->code, "invalid_hyperparameters");
        snprintf(e->message, sizeof e->message,
                 "The engine rejected the job's hyperparameters: %s.", d);
        if (mentions(detail, "--seq-len"))
            hp_param(e->param, sizeof e->param, j, "seq_len");
        else
            snprintf(e->param, sizeof e->param, "method");
    } else if (rc == DT_EDEVICE) {
        snprintf(e->code, sizeof e->code, "device_error");
        snprintf(e->message, sizeof e->message,
                 "The worker's device %s failed: %s. This is not caused by the "
                 "job; create it again, or report it if it repeats.",
                 r->device ? r->device : "?", d);
    } else {
        snprintf(e->code, sizeof e->code, "training_failed");
        snprintf(e->message, sizeof e->message, "Training failed (%s): %s.",
                 dt_strerror(rc), d);
    }
}
