/* models.c: the directory the engine loads for a model id. Base and
 * fine-tuned models are their stored path; a checkpoint is a model through
 * its merged Hugging Face directory, <checkpoint>/merged, built from its
 * base and its adapter (or full weights) by dt_ckpt_export the first time a
 * job, an export or a download needs it, and then kept (it lies under the
 * job's directory: it counts toward the owner's storage). */
#include "worker.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/log.h"
#include "base/clock.h"
#include "gpu/train.h"

/* A checkpoint whose base is a checkpoint ... : a job trained on a
 * checkpoint's merged model has checkpoints too. Far deeper than any real
 * chain; a cycle cannot be built, this only bounds a corrupt table. */
#define WK_MODEL_DEPTH 16

static int model_dir(db *d, const api_config *cfg, const char *id, const char *dtype,
                     int rebuild, char *out, size_t n, int depth, char *err)
{
    db_model m;
    int rc = db_model_get(d, NULL, id, &m, err);
    if (rc)
        return rc;
    if (config_artifact_path(cfg, m.path, out, n))
        return dt_errf(err, DT_EINVAL, "the stored path of model %s is too long", id);
    if (strcmp(m.kind, "checkpoint"))
        return 0;
    char ckpt[DB_PATH_LEN], base[DB_PATH_LEN], done[DB_PATH_LEN + 32];
    struct stat st;
    snprintf(ckpt, sizeof ckpt, "%s", out);
    if (snprintf(out, n, "%s/merged", ckpt) >= (int)n)
        return dt_errf(err, DT_EINVAL, "the stored path of model %s is too long", id);
    snprintf(done, sizeof done, "%s/merged/config.json", ckpt);
    if (!rebuild && !stat(done, &st))
        return 0; /* built before */
    snprintf(done, sizeof done, "%s/DONE", ckpt);
    if (stat(done, &st))
        return dt_errf(err, DT_EFORMAT, "checkpoint %s is not complete (its files are "
                       "missing)", id);
    if (depth >= WK_MODEL_DEPTH)
        return dt_errf(err, DT_EINVAL, "model %s: its chain of bases is longer than %d",
                       id, WK_MODEL_DEPTH);
    if ((rc = model_dir(d, cfg, m.base, NULL, 0, base, sizeof base, depth + 1, err)))
        return rc == DB_ENOTFOUND ? dt_errf(err, DT_EINVAL, "the base model %s of "
                                            "checkpoint %s no longer exists", m.base, id)
                                  : rc;
    double t0 = dt_now();
    if ((rc = dt_ckpt_export(base, ckpt, out, dtype, cfg->export_shard_size, err))) {
        /* the user's words: the checkpoint's id, not the server's paths */
        char why[DT_ERR_LEN];
        size_t cl = strlen(ckpt), bl = strlen(base);
        const char *w = !strncmp(err, ckpt, cl) ? err + cl : !strncmp(err, base, bl) ? err + bl
                                                                                     : err;
        w += strspn(w, ": /");
        snprintf(why, sizeof why, "%s", w);
        return dt_errf(err, rc, "checkpoint %s cannot be merged: %s", id, why);
    }
    log_msg(DT_LOG_INFO, "model.merged", "%s: merged model built in %.1f s", id,
            dt_now() - t0);
    return 0;
}

int wk_model_dir(db *d, const api_config *cfg, const char *id, const char *dtype,
                 int rebuild, char *out, size_t n, char *err)
{
    return model_dir(d, cfg, id, dtype, rebuild, out, n, 0, err);
}
