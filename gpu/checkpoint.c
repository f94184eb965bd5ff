/* checkpoint.c: training checkpoints: find the newest complete one, write
 * one atomically (per-process temp directory, fsync, rename, DONE), read one
 * back. */
#include <dirent.h>
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
#include "train_impl.h"

/* "step-N" (nothing after the number): the step, else -1. */
static int64_t step_of(const char *name)
{
    long long step;
    int end = 0;
    if (sscanf(name, "step-%lld%n", &step, &end) != 1 || name[end] || step <= 0)
        return -1;
    return (int64_t)step;
}

static int has_file(const char *dir, const char *name)
{
    char p[4600];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

/* Complete (DONE) and resumable (the optimizer state, or the older one-file
 * state, is there). */
static int resumable(const char *dir)
{
    return has_file(dir, "DONE") &&
           (has_file(dir, "optimizer.safetensors") || has_file(dir, "state.safetensors"));
}

int64_t dt_ckpt_latest(const char *out, char *dir, size_t dirlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoints", out);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int64_t best = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t step = step_of(e->d_name);
        char sub[4400];
        if (step <= best)
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (resumable(sub)) {
            best = step;
            snprintf(dir, dirlen, "%s", sub);
        }
    }
    closedir(d);
    return best;
}

static int cmp_i64_desc(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

int dt_ckpt_prune(const char *out, int keep, char *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoints", out);
    DIR *d = opendir(path);
    if (!d)
        return errno == ENOENT ? 0
                               : (err ? dt_errf(err, DT_EIO, "%s: %s", path, strerror(errno))
                                      : DT_EIO);
    int64_t *steps = NULL;
    int n = 0, cap = 0, removed = 0, rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t step = step_of(e->d_name);
        char sub[4400];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (step <= 0 || !has_file(sub, "DONE") || !has_file(sub, "optimizer.safetensors"))
            continue;
        if (n == cap) {
            int64_t *g = realloc(steps, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *g);
            if (!g) {
                rc = err ? dt_errf(err, DT_ENOMEM, "out of memory") : DT_ENOMEM;
                break;
            }
            steps = g;
        }
        steps[n++] = step;
    }
    closedir(d);
    if (!rc) {
        qsort(steps, (size_t)n, sizeof *steps, cmp_i64_desc);
        for (int i = keep > 0 ? keep : 0; i < n; i++) {
            char f[4600];
            snprintf(f, sizeof f, "%s/step-%08lld/optimizer.safetensors", path,
                     (long long)steps[i]);
            if (unlink(f) == 0 || errno == ENOENT) {
                removed++;
            } else {
                rc = err ? dt_errf(err, DT_EIO, "%s: %s", f, strerror(errno)) : DT_EIO;
                break;
            }
        }
    }
    free(steps);
    return rc ? rc : removed;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    remove(p);
    return 0;
}

/* Removes a directory tree (best effort). */
static void rm_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The tensors a checkpoint holds: every trainable tensor and the W that
 * Delta-LoRA moves (weights.safetensors), the AdamW moments of the
 * trainable ones (optimizer.safetensors: dropped by retention). */
int tr_ckpt_save(dt_model *m, const dt_train_opts *o, dt_weights *w, const dt_optim *opt,
                 int64_t total, unsigned targets, long trained_tokens, long data_pos,
                 char *err)
{
    dt_backend *be = dt_model_backend(m);
    int np, nl;
    dt_param *ps = dt_model_params(m, &np);
    dt_lora *ls = dt_model_loras(m, &nl);
    int cap = 3 * np + 3 * nl; /* + W, A_K, B_K per adapter */
    dt_st_entry *en = calloc((size_t)cap, sizeof *en);
    dt_st_entry *eo = calloc((size_t)cap, sizeof *eo);
    int nw = 0, no = 0;
    float **bufs = calloc((size_t)cap, sizeof *bufs);
    char (*names)[160] = calloc((size_t)cap, sizeof *names);
    int64_t (*shapes)[2] = calloc((size_t)cap, sizeof *shapes);
    int n = 0, rc = 0, made_tmp = 0;
    char dir[4096], tmp[4200], path[4300];
    if (!en || !eo || !bufs || !names || !shapes) {
        rc = dt_errf(err, DT_ENOMEM, "out of memory writing a checkpoint");
        goto done;
    }
    for (int i = 0; i < np; i++) {
        const float *src[3] = {ps[i].p, ps[i].m, ps[i].v};
        static const char *suf[3] = {"", ".adam_m", ".adam_v"};
        for (int j = 0; j < 3; j++) {
            snprintf(names[n], sizeof names[n], "%s%s", ps[i].name, suf[j]);
            shapes[n][0] = ps[i].n;
            bufs[n] = malloc((size_t)ps[i].n * sizeof(float));
            if (!bufs[n]) {
                rc = dt_errf(err, DT_ENOMEM, "out of memory writing a checkpoint");
                goto done;
            }
            OPS.download(be, bufs[n], src[j], (size_t)ps[i].n * sizeof(float));
            dt_st_entry x = {names[n], 1, shapes[n], bufs[n], DT_F32};
            if (j == 0)
                en[nw++] = x;
            else
                eo[no++] = x;
            n++;
        }
    }
    if (o->method == DT_DELTA_LORA) {
        for (int i = 0; i < nl; i++) {
            int dup = 0;
            for (int j = 0; j < n; j++)
                dup |= !strcmp(names[j], ls[i].wname);
            float *dev;
            long cnt;
            if (dup || dt_model_get_weight(m, ls[i].wname, &dev, &cnt))
                continue;
            snprintf(names[n], sizeof names[n], "%s", ls[i].wname);
            shapes[n][0] = cnt;
            bufs[n] = malloc((size_t)cnt * sizeof(float));
            if (!bufs[n]) {
                rc = dt_errf(err, DT_ENOMEM, "out of memory writing a checkpoint");
                goto done;
            }
            OPS.download(be, bufs[n], dev, (size_t)cnt * sizeof(float));
            en[nw++] = (dt_st_entry){names[n], 1, shapes[n], bufs[n], DT_F32};
            n++;
        }
        /* A_K, B_K (the exact adapter's second half), once W has moved */
        for (int i = 0; i < nl && opt->t > opt->start_step; i++) {
            for (int k = 0; k < 2; k++) {
                const char *an = k ? ls[i].B->name : ls[i].A->name;
                float *dev;
                long cnt;
                snprintf(names[n], sizeof names[n], "%s_K", an);
                if (dt_model_get_weight(m, names[n], &dev, &cnt))
                    continue;
                shapes[n][0] = cnt;
                bufs[n] = malloc((size_t)cnt * sizeof(float));
                if (!bufs[n]) {
                    rc = dt_errf(err, DT_ENOMEM, "out of memory writing a checkpoint");
                    goto done;
                }
                OPS.download(be, bufs[n], dev, (size_t)cnt * sizeof(float));
                en[nw++] = (dt_st_entry){names[n], 1, shapes[n], bufs[n], DT_F32};
                n++;
            }
        }
    }
    if ((rc = OPS.sync(be, err)))
        goto done;
    snprintf(dir, sizeof dir, "%s/checkpoints/step-%08lld", o->out, (long long)opt->t);
    /* The temporary name is this process's own, so two writers of one step
     * (a stale worker and the job's new owner) never share a half-written
     * directory. */
    snprintf(tmp, sizeof tmp, "%s.partial.%ld", dir, (long)getpid());
    if ((rc = dt_mkdirs(tmp, err)))
        goto done;
    made_tmp = 1;
    snprintf(path, sizeof path, "%s/weights.safetensors", tmp);
    if ((rc = dt_safetensors_write(path, en, nw, NULL, err)))
        goto done;
    snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
    if ((rc = dt_safetensors_write(path, eo, no, NULL, err)))
        goto done;
    /* The run's settings that a resume must share (tr_ckpt_check). */
    json_t *st = json_pack("{s:I, s:i, s:i, s:f, s:f, s:I, s:I, s:I, s:i, s:i, s:I, s:i}",
        "step", (json_int_t)opt->t, "method", (int)o->method, "rank", o->rank,
        "alpha", (double)o->alpha, "lambda", (double)o->lambda,
        "start_step", (json_int_t)opt->start_step, "total_steps", (json_int_t)total,
        "target_mask", (json_int_t)targets, "batch_size", o->batch,
        "grad_accum", o->accum, "seed", (json_int_t)o->seed,
        "threads", be->threads);
    if (st) {
        json_object_set_new(st, "trained_tokens", json_integer(trained_tokens));
        /* the data position: with packing a step takes a varying number of
         * rows, so a resume cannot derive it from the step */
        json_object_set_new(st, "data_pos", json_integer(data_pos));
        json_object_set_new(st, "packing", json_integer(o->packing ? 1 : 0));
    }
    char *js = st ? json_dumps(st, JSON_COMPACT) : NULL;
    json_decref(st);
    if (!js) {
        rc = dt_errf(err, DT_ENOMEM, "checkpoint state: out of memory");
        goto done;
    }
    size_t len = strlen(js);
    snprintf(path, sizeof path, "%s/state.json", tmp);
    rc = dt_write_file_atomic(path, js, len, err);
    free(js);
    if (rc)
        goto done;
    /* The checkpoint as a model: its PEFT adapter, from the weights above. */
    if (o->method == DT_LORA || o->method == DT_DELTA_LORA) {
        snprintf(path, sizeof path, "%s/adapter", tmp);
        if ((rc = tr_adapter_write(m, o, w, opt->t > opt->start_step, path, err)))
            goto done;
    }
    char cmd[8600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir); /* a stale incomplete one */
    if (access(dir, F_OK) == 0 && system(cmd) != 0) {
        rc = dt_errf(err, DT_EIO, "%s: cannot replace", dir);
        goto done;
    }
    if (rename(tmp, dir) != 0) {
        rc = dt_errf(err, DT_EIO, "%s: rename: %s", dir, strerror(errno));
        goto done;
    }
    made_tmp = 0;
    snprintf(path, sizeof path, "%s/DONE", dir);
    if ((rc = dt_write_file_atomic(path, "ok\n", 3, err)))
        goto done;
    if (o->on_checkpoint && o->on_checkpoint(o->ud, opt->t, dir))
        rc = dt_errf(err, DT_ECANCEL, "checkpoint %lld refused by the caller",
                     (long long)opt->t);
done:
    if (rc && made_tmp) /* a failed write (disk full) leaves nothing behind */
        rm_tree(tmp);
    for (int i = 0; i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(en);
    free(eo);
    free(names);
    free(shapes);
    return rc;
}

static int ckpt_load_file(dt_model *m, const char *path, char *err);

static const char *method_name(int m)
{
    return m == DT_FULL ? "full" : m == DT_LORA ? "lora" : m == DT_DELTA_LORA ? "delta_lora" : "?";
}

int tr_ckpt_check(const char *dir, const dt_train_opts *o, int64_t K, int64_t total,
                  unsigned targets, char *err)
{
    char path[4600];
    snprintf(path, sizeof path, "%s/state.json", dir);
    json_error_t je;
    json_t *js = json_load_file(path, 0, &je);
    if (!js)
        return dt_errf(err, DT_EFORMAT, "%s: unreadable checkpoint state", path);
    int lora = o->method != DT_FULL, delta = o->method == DT_DELTA_LORA;
    /* flag, this run's value, whether it applies; compared as numbers */
    const struct { const char *key, *flag; double now; int applies; } s[] = {
        {"method", "--method", o->method, 1},
        {"rank", "--rank", o->rank, lora},
        {"alpha", "--alpha", (float)o->alpha, lora},
        {"target_mask", "--target-modules", targets, lora},
        {"lambda", "--lambda", (float)o->lambda, delta},
        {"start_step", "--start-step", (double)K, delta},
        {"total_steps", "--steps/--epochs (total optimizer steps)", (double)total, 1},
        {"batch_size", "--batch-size", o->batch, 1},
        {"grad_accum", "--grad-accum", o->accum, 1},
        {"packing", "--packing (1) or none (0)", o->packing ? 1 : 0, 1},
    };
    int rc = DT_OK;
    for (size_t i = 0; i < sizeof s / sizeof s[0] && !rc; i++) {
        json_t *v = json_object_get(js, s[i].key);
        if (!s[i].applies || !json_is_number(v))
            continue;
        double was = json_number_value(v);
        if (!strcmp(s[i].key, "alpha") || !strcmp(s[i].key, "lambda"))
            was = (float)was; /* written from a float */
        if (was == s[i].now)
            continue;
        if (!strcmp(s[i].key, "method"))
            rc = dt_errf(err, DT_EINVAL, "cannot resume from %s: it was trained with "
                         "--method %s, this run has --method %s (use the same setting, "
                         "or a new --out to start over)", dir, method_name((int)was),
                         method_name(o->method));
        else if (!strcmp(s[i].key, "target_mask"))
            rc = dt_errf(err, DT_EINVAL, "cannot resume from %s: it was trained with other "
                         "--target-modules than '%s' (use the same setting, or a new --out "
                         "to start over)", dir, o->targets);
        else
            rc = dt_errf(err, DT_EINVAL, "cannot resume from %s: it was trained with %s %.9g, "
                         "this run has %.9g (use the same setting, or a new --out to start "
                         "over)", dir, s[i].flag, was, s[i].now);
    }
    json_decref(js);
    return rc;
}

int tr_ckpt_load(dt_model *m, const char *dir, dt_optim *opt,
                     long *trained_tokens, long *data_pos, char *err)
{
    dt_backend *be = dt_model_backend(m);
    char path[4600];
    snprintf(path, sizeof path, "%s/state.json", dir);
    json_error_t je;
    json_t *js = json_load_file(path, 0, &je);
    if (!js || !json_is_integer(json_object_get(js, "step"))) {
        json_decref(js);
        return dt_errf(err, DT_EFORMAT, "%s: unreadable checkpoint state", path);
    }
    opt->t = (int64_t)json_integer_value(json_object_get(js, "step"));
    *trained_tokens = (long)json_integer_value(json_object_get(js, "trained_tokens"));
    json_t *dp = json_object_get(js, "data_pos");
    *data_pos = json_is_integer(dp) ? (long)json_integer_value(dp) : -1;
    /* CPU results are bitwise reproducible for one thread count only (the
     * OpenMP reductions and OpenBLAS split work by thread). */
    int th = (int)json_integer_value(json_object_get(js, "threads"));
    if (th > 0 && be->threads > 0 && th != be->threads)
        fprintf(stderr, "warning: %s was written with %d CPU threads, resuming with %d: "
                "the result differs in the last bits from an uninterrupted run\n", dir, th,
                be->threads);
    json_decref(js);
    /* weights + optimizer state, or the older one-file state */
    static const char *const files[] = {"weights.safetensors", "optimizer.safetensors",
                                        "state.safetensors"};
    int rc = 0;
    for (int f = 0; f < 3 && !rc; f++) {
        if (f == 2 && has_file(dir, files[0]))
            break;
        if (f < 2 && !has_file(dir, files[0]))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        rc = ckpt_load_file(m, path, err);
    }
    return rc ? rc : OPS.sync(be, err);
}

/* Uploads every tensor of one checkpoint file to the model. */
static int ckpt_load_file(dt_model *m, const char *path, char *err)
{
    dt_backend *be = dt_model_backend(m);
    dt_tensorset ts;
    dt_tensorset_init(&ts);
    int rc = dt_safetensors_load(path, &ts, err);
    int np;
    dt_param *ps = dt_model_params(m, &np);
    for (int i = 0; !rc && i < ts.n; i++) {
        dt_tensor *t = &ts.t[i];
        float *dst = NULL;
        long cnt = -1;
        size_t L = strlen(t->name);
        for (int j = 0; j < np && !dst; j++) {
            size_t pl = strlen(ps[j].name);
            if (L == pl + 7 && !strncmp(t->name, ps[j].name, pl)) {
                if (!strcmp(t->name + pl, ".adam_m")) dst = ps[j].m;
                if (!strcmp(t->name + pl, ".adam_v")) dst = ps[j].v;
                cnt = ps[j].n;
            }
        }
        if (!dst && dt_model_get_weight(m, t->name, &dst, &cnt))
            rc = dt_errf(err, DT_EFORMAT, "%s: tensor %s does not belong to this "
                         "model/method", path, t->name);
        else if (cnt != t->numel)
            rc = dt_errf(err, DT_EFORMAT, "%s: tensor %s has %lld elements, "
                         "expected %ld", path, t->name, (long long)t->numel, cnt);
        else
            OPS.upload(be, dst, t->data, (size_t)cnt * sizeof(float));
    }
    if (!rc)
        rc = OPS.sync(be, err); /* the upload reads ts's memory */
    dt_tensorset_free(&ts);
    return rc;
}
