/* usage.c: an owner's limits and what counts against them: the admission
 * checks of POST /v1/fine_tuning/jobs (429 active jobs, 413 storage) and
 * POST /v1/files (413 upload size and storage), and GET /v1/usage.
 *
 * Limits: the owner's overrides (owner_limits, `deltatune owners set`)
 * where set, else the server's defaults (DELTATUNE_OWNER_MAX_JOBS,
 * DELTATUNE_OWNER_MAX_STORAGE, DELTATUNE_MAX_UPLOAD_BYTES); 0 = no limit.
 * An upload limit is never above DELTATUNE_MAX_UPLOAD_BYTES, which the HTTP
 * layer enforces for everyone. Storage is the owner's uploads (files.bytes)
 * plus what exists on disk under each of the owner's job directories
 * (checkpoints, merged models, anything exported there), measured on each
 * check: O(files in the owner's job directories). */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/log.h"
#include "handlers.h"

/* Bytes of the regular files under the directory fd (closed here); symbolic
 * links are not followed. */
static int64_t dir_bytes(int fd, int depth)
{
    DIR *dir = fdopendir(fd);
    if (!dir) { close(fd); return 0; }
    int64_t total = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat st;
        if (fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue;
        if (S_ISREG(st.st_mode)) {
            total += st.st_size;
        } else if (S_ISDIR(st.st_mode) && depth < 32) {
            int sub = openat(dirfd(dir), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
                             O_CLOEXEC);
            if (sub >= 0) total += dir_bytes(sub, depth + 1);
        }
    }
    closedir(dir);
    return total;
}

/* Resolves the owner's limits; 0 or -1 after replying. */
static int load_limits(req *r, db *d, owner_usage *u)
{
    char err[DT_ERR_LEN];
    const api_config *c = &r->s->cfg;
    db_owner_limits l;
    int rc = db_owner_limits_get(d, r->owner, &l, err);
    if (rc) { reply_db(r, rc, err); return -1; }
    u->max_jobs = l.max_jobs >= 0 ? l.max_jobs : c->owner_max_jobs;
    u->max_storage_bytes = l.max_storage_bytes >= 0 ? l.max_storage_bytes
                                                    : c->owner_max_storage_bytes;
    u->max_upload_bytes = c->max_upload_bytes;
    if (l.max_upload_bytes > 0 && l.max_upload_bytes < c->max_upload_bytes)
        u->max_upload_bytes = l.max_upload_bytes;
    u->max_runtime_seconds = c->max_runtime_seconds;
    return 0;
}

int usage_get(req *r, db *d, int what, owner_usage *u)
{
    char err[DT_ERR_LEN];
    memset(u, 0, sizeof *u);
    if (load_limits(r, d, u)) return -1;
    int rc;
    if ((what & USAGE_JOBS) && (rc = db_owner_active_jobs(d, r->owner, &u->active_jobs, err))) {
        reply_db(r, rc, err);
        return -1;
    }
    if (!(what & USAGE_STORAGE)) return 0;
    char (*dirs)[DB_PATH_LEN] = NULL;
    int n = 0;
    rc = db_owner_storage(d, r->owner, &u->file_bytes, &dirs, &n, err);
    if (rc) { reply_db(r, rc, err); return -1; }
    for (int i = 0; i < n; i++) {
        char path[PATH_MAX];
        if (config_artifact_path(&r->s->cfg, dirs[i], path, sizeof path)) continue;
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) u->job_bytes += dir_bytes(fd, 0);
    }
    free(dirs);
    u->storage_bytes = u->file_bytes + u->job_bytes;
    return 0;
}

int usage_admit_job(req *r, db *d)
{
    owner_usage u;
    if (usage_get(r, d, USAGE_JOBS | USAGE_STORAGE, &u)) return -1;
    if (u.max_jobs > 0 && u.active_jobs >= u.max_jobs) {
        reply_error(r, 429, "too_many_active_jobs", NULL,
                    "owner %s has %lld active jobs (validating_files, queued, running or "
                    "paused) and the limit is %lld (max_jobs): wait for one to end, or "
                    "cancel one, then retry", r->owner, (long long)u.active_jobs,
                    (long long)u.max_jobs);
        return -1;
    }
    if (u.max_storage_bytes > 0 && u.storage_bytes >= u.max_storage_bytes) {
        reply_error(r, 413, "storage_limit_exceeded", NULL,
                    "owner %s stores %lld bytes (uploads %lld, jobs' checkpoints and models "
                    "%lld) and the limit is %lld bytes (max_storage): delete files or "
                    "models first", r->owner, (long long)u.storage_bytes,
                    (long long)u.file_bytes, (long long)u.job_bytes,
                    (long long)u.max_storage_bytes);
        return -1;
    }
    return 0;
}

static json_t *limit_json(int64_t v)
{
    return v > 0 ? json_integer(v) : json_null();
}

void usage_route(req *r)
{
    db *d = req_db(r);
    if (!d) return;
    owner_usage u;
    if (usage_get(r, d, USAGE_JOBS | USAGE_STORAGE, &u)) return;
    json_t *lim = json_object();
    json_object_set_new(lim, "max_active_jobs", limit_json(u.max_jobs));
    json_object_set_new(lim, "max_storage_bytes", limit_json(u.max_storage_bytes));
    json_object_set_new(lim, "max_upload_bytes", limit_json(u.max_upload_bytes));
    json_object_set_new(lim, "max_runtime_seconds", limit_json(u.max_runtime_seconds));
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("usage"));
    json_object_set_new(o, "owner", json_string(r->owner));
    json_object_set_new(o, "active_jobs", json_integer(u.active_jobs));
    json_object_set_new(o, "storage_bytes", json_integer(u.storage_bytes));
    json_object_set_new(o, "file_bytes", json_integer(u.file_bytes));
    json_object_set_new(o, "job_bytes", json_integer(u.job_bytes));
    json_object_set_new(o, "limits", lim);
    reply_json(r, 200, o);
}
