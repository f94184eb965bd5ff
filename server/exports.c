/* exports.c: /v1/models/{id}/exports: a GGUF file of one of the owner's
 * fine-tuned models or checkpoints (format gguf), or a checkpoint's merged
 * Hugging Face directory (format hf, migration 0011), built on request by a
 * worker (worker/worker.c, gpu/gguf_write.h, gpu/ckpt_export.c) into the
 * model's own directory as model.gguf or merged/. PostgreSQL's
 * model_exports (migration 0008) is the truth; Redis only wakes a worker.
 * When the export has succeeded its files are listed by
 * GET /v1/models/{id}/files with their sha256 and downloaded like every
 * model file (a checkpoint's merged/ as a directory by
 * GET /v1/models/{id}/archive?part=merged); they lie under the job's
 * directory, so they count toward the owner's storage. Base models are
 * exported with the command line (`deltatune export --gguf`), not here:
 * their files are shared. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/log.h"
#include "api/objects.h"
#include "api/queue.h"
#include "api/validate.h"
#include "base/id.h"
#include "handlers.h"

/* Loads the owner's model the route names; replies itself on failure. */
static int export_model(req *r, db *d, db_model *m)
{
    char err[DT_ERR_LEN];
    int rc = db_model_get(d, r->owner, r->params[0], m, err);
    if (rc) { reply_db(r, rc, err); return -1; }
    return 0;
}

void exports_create(req *r)
{
    char err[DT_ERR_LEN], root[PATH_MAX];
    api_error e;
    db_export x;
    memset(&x, 0, sizeof x);
    /* The model first: another owner's model is a 404 whatever the body. */
    db *d = req_db(r);
    if (!d) return;
    db_model m;
    if (export_model(r, d, &m)) return;
    json_t *body = req_json(r);
    if (!body) return;
    int rc = validate_export_create(body, &x, &e);
    json_decref(body);
    if (rc) { reply_apierr(r, &e); return; }
    struct stat st;
    if (!strcmp(m.kind, "base")) {
        reply_error(r, 400, "invalid_model", NULL,
                    "model %.200s is a base model: exports are built for fine-tuned models "
                    "and checkpoints (a base model's files are shared; export one with "
                    "`deltatune export --gguf`)", m.id);
        return;
    }
    if (!strcmp(x.format, "hf") && strcmp(m.kind, "checkpoint")) {
        reply_error(r, 400, "invalid_value", "format",
                    "format hf builds a checkpoint's merged model; %.200s is a fine-tuned "
                    "model, a merged Hugging Face directory already (GET "
                    "/v1/models/{id}/archive?part=merged)", m.id);
        return;
    }
    if (config_artifact_path(&r->s->cfg, m.path, root, sizeof root) || stat(root, &st) ||
        !S_ISDIR(st.st_mode)) {
        reply_error(r, 404, "not_found", NULL, "the files of %.200s are not available", m.id);
        return;
    }
    /* The owner's storage, as for a new job: the file will count toward it. */
    owner_usage u;
    if (usage_get(r, d, USAGE_STORAGE, &u)) return;
    if (u.max_storage_bytes > 0 && u.storage_bytes >= u.max_storage_bytes) {
        reply_error(r, 413, "storage_limit_exceeded", NULL,
                    "owner %s stores %lld bytes and the limit is %lld bytes (max_storage): "
                    "delete files or models first", r->owner, (long long)u.storage_bytes,
                    (long long)u.max_storage_bytes);
        return;
    }
    if (dt_id_new("export-", x.id, sizeof x.id)) {
        reply_error(r, 500, "internal_error", NULL, "no randomness");
        return;
    }
    snprintf(x.owner, sizeof x.owner, "%s", r->owner);
    snprintf(x.model_id, sizeof x.model_id, "%s", m.id);
    rc = db_export_create(d, &x, err);
    if (rc) { reply_db(r, rc, err); return; }
    if (queue_publish(r->s->q, x.id, err))
        log_msg(DT_LOG_WARN, "queue.publish", "%s: %s (workers poll)", x.id, err);
    log_msg(DT_LOG_INFO, "exports.created", "%s owner=%s model=%s %s %s", x.id, x.owner,
            x.model_id, x.format, x.type);
    reply_json(r, 202, obj_export(&x));
}

void exports_list(req *r)
{
    char err[DT_ERR_LEN];
    db *d = req_db(r);
    if (!d) return;
    db_model m;
    if (export_model(r, d, &m)) return;
    db_export *xs;
    int n;
    int rc = db_export_list(d, r->owner, m.id, &xs, &n, err);
    if (rc) { reply_db(r, rc, err); return; }
    json_t *data = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(data, obj_export(&xs[i]));
    free(xs);
    reply_json(r, 200, obj_list(data, false));
}

void exports_get(req *r)
{
    char err[DT_ERR_LEN];
    db *d = req_db(r);
    if (!d) return;
    db_model m;
    if (export_model(r, d, &m)) return;
    db_export x;
    int rc = db_export_get(d, r->owner, m.id, r->params[1], &x, err);
    if (rc) { reply_db(r, rc, err); return; }
    reply_json(r, 200, obj_export(&x));
}
