/* models.c: /v1/models: base models and the owner's fine-tuned models and
 * checkpoints; their files with SHA-256 (computed once, cached in the
 * model_files table keyed by size and mtime), single files with Range and
 * ETag served zero-copy (sendfile via MHD's fd responses), and the whole
 * directory as a tar stream (ustar, with pax headers for long names and
 * files of 8 GiB or more). Only names listed from the model's own
 * directory can be served, so a request can't name a path. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/log.h"
#include "api/objects.h"
#include "gpu/engine_api.h"
#include "handlers.h"

typedef struct mfile {
    char name[256];
    char path[PATH_MAX];
    int64_t bytes;
    int64_t mtime_ns;
    int64_t mtime;
} mfile;

static int cmp_mfile(const void *a, const void *b)
{
    return strcmp(((const mfile *)a)->name, ((const mfile *)b)->name);
}

static void fill_stat(mfile *f, const struct stat *st)
{
    f->bytes = st->st_size;
    f->mtime = st->st_mtim.tv_sec;
    f->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* The files of a model: its .gguf, or the regular files of its directory
 * (not hidden, not temporaries), sorted by name. *out is malloc'd. */
static int model_files(server *s, const db_model *m, mfile **out, int *n)
{
    char root[PATH_MAX];
    struct stat st;
    *out = NULL;
    *n = 0;
    if (config_artifact_path(&s->cfg, m->path, root, sizeof root) || stat(root, &st))
        return -1;
    if (S_ISREG(st.st_mode)) {
        mfile *f = calloc(1, sizeof *f);
        if (!f) return -1;
        const char *base = strrchr(root, '/');
        snprintf(f->name, sizeof f->name, "%.255s", base ? base + 1 : root);
        snprintf(f->path, sizeof f->path, "%s", root);
        fill_stat(f, &st);
        *out = f;
        *n = 1;
        return 0;
    }
    DIR *dp = opendir(root);
    if (!dp) return -1;
    int cap = 16, k = 0;
    mfile *fs = calloc((size_t)cap, sizeof *fs);
    /* pass 0: the model's directory; then its adapter/ (the PEFT adapter of
     * a fine-tune or checkpoint) and merged/ (a checkpoint's merged model,
     * an hf export), listed as "adapter/<name>" and "merged/<name>" */
    static const char *const pres[] = {"", "adapter/", "merged/"};
    char sub[PATH_MAX];
    for (int pass = 0; pass < 3; pass++) {
        const char *dir = pass ? sub : root, *pre = pres[pass];
        size_t pl = strlen(pre);
        for (struct dirent *e; fs && dp && (e = readdir(dp));) {
            size_t nl = strlen(e->d_name);
            if (e->d_name[0] == '.' || pl + nl >= sizeof fs->name ||
                (nl > 4 && !strcmp(e->d_name + nl - 4, ".tmp")))
                continue;
            char p[PATH_MAX];
            if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p) continue;
            if (stat(p, &st) || !S_ISREG(st.st_mode)) continue;
            if (k == cap) {
                mfile *g = realloc(fs, (size_t)(cap *= 2) * sizeof *fs);
                if (!g) { free(fs); fs = NULL; break; }
                fs = g;
            }
            memcpy(fs[k].name, pre, pl); /* pl + nl < sizeof name: checked above */
            memcpy(fs[k].name + pl, e->d_name, nl + 1);
            memcpy(fs[k].path, p, strlen(p) + 1);
            fill_stat(&fs[k], &st);
            k++;
        }
        if (dp)
            closedir(dp);
        dp = NULL;
        if (pass < 2 && snprintf(sub, sizeof sub, "%s/%.*s", root,
                                 (int)strlen(pres[pass + 1]) - 1, pres[pass + 1]) <
                            (int)sizeof sub)
            dp = opendir(sub);
    }
    if (!fs) return -1;
    qsort(fs, (size_t)k, sizeof *fs, cmp_mfile);
    *out = fs;
    *n = k;
    return 0;
}

/* Loads the model the route names ({id}); replies 404 itself. */
static int load_model(req *r, db_model *m)
{
    char err[DT_ERR_LEN];
    db *d = req_db(r);
    if (!d) return -1;
    int rc = db_model_get(d, r->owner, r->params[0], m, err);
    if (rc) { reply_db(r, rc, err); return -1; }
    return 0;
}

/* ---- the base models' info, cached ---------------------------------------------
 * GET /v1/models shows each base's family, context length and template,
 * which dt_arch_info_read finds in config.json or the GGUF header (a GGUF's
 * metadata holds its whole vocabulary: megabytes). The answers are kept
 * per path and read again only when the path (and, for a directory, its
 * config.json and tokenizer_config.json) changed: size, mtime or inode. */
#define INFO_SLOTS 64

typedef struct info_slot {
    char path[PATH_MAX];
    int64_t stamp[3];             /* the path's, config.json's, tokenizer_config.json's */
    dt_arch_info a;
    int ok;                       /* the read succeeded (else a is zero) */
    uint64_t used;
} info_slot;

static struct {
    pthread_mutex_t mu;
    info_slot slot[INFO_SLOTS];
    uint64_t tick, reads;
} infos = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int64_t file_stamp(const char *dir, const char *name)
{
    char p[PATH_MAX + 64];
    struct stat st;
    if (snprintf(p, sizeof p, "%s%s%s", dir, name[0] ? "/" : "", name) >= (int)sizeof p ||
        stat(p, &st))
        return -1;
    /* one number that moves when any of them does */
    return (int64_t)st.st_mtim.tv_sec * 1000000007LL + st.st_mtim.tv_nsec +
           (int64_t)st.st_size * 31 + (int64_t)st.st_ino * 1000003LL;
}

uint64_t models_info_reads(void)
{
    pthread_mutex_lock(&infos.mu);
    uint64_t n = infos.reads;
    pthread_mutex_unlock(&infos.mu);
    return n;
}

/* dt_arch_info_read through the cache. */
static int arch_info(const char *root, dt_arch_info *a, char *err)
{
    int64_t stamp[3] = {file_stamp(root, ""), file_stamp(root, "config.json"),
                        file_stamp(root, "tokenizer_config.json")};
    if (stamp[0] < 0)
        return dt_arch_info_read(root, a, err); /* gone: the reader says how */
    pthread_mutex_lock(&infos.mu);
    info_slot *hit = NULL, *old = &infos.slot[0];
    for (int i = 0; i < INFO_SLOTS; i++) {
        info_slot *sl = &infos.slot[i];
        if (sl->path[0] && !strcmp(sl->path, root)) hit = sl;
        if (sl->used < old->used) old = sl;
    }
    if (hit && !memcmp(hit->stamp, stamp, sizeof stamp)) {
        hit->used = ++infos.tick;
        *a = hit->a;
        int ok = hit->ok;
        pthread_mutex_unlock(&infos.mu);
        return ok ? 0 : dt_errf(err, DT_EFORMAT, "%s: unreadable model info", root);
    }
    infos.reads++;
    pthread_mutex_unlock(&infos.mu);
    /* read outside the lock: two requests may both read; the last one stays */
    int rc = dt_arch_info_read(root, a, err);
    if (rc) memset(a, 0, sizeof *a);
    pthread_mutex_lock(&infos.mu);
    info_slot *sl = hit ? hit : old;
    if (!hit) {
        for (int i = 0; i < INFO_SLOTS; i++)   /* a racing request may have added it */
            if (!strcmp(infos.slot[i].path, root)) sl = &infos.slot[i];
    }
    if (strlen(root) < sizeof sl->path) {
        snprintf(sl->path, sizeof sl->path, "%s", root);
        memcpy(sl->stamp, stamp, sizeof stamp);
        sl->a = *a;
        sl->ok = !rc;
        sl->used = ++infos.tick;
    }
    pthread_mutex_unlock(&infos.mu);
    return rc;
}

/* Adds what a user sees of the model's base (family, context_length,
 * chat_template; a fine-tuned model or checkpoint inherits its base's) to
 * the model object o. The base is found among the listed models ms (n) or,
 * failing that, in the database; unknown facts are null (false for
 * chat_template). */
static json_t *with_info(req *r, json_t *o, const db_model *m, const db_model *ms, int n)
{
    db_model cur = *m, tmp;
    char err[DT_ERR_LEN], root[PATH_MAX];
    dt_arch_info a;
    int found = !strcmp(cur.kind, "base");
    for (int hop = 0; !found && hop < 4 && cur.base[0]; hop++) {
        int k = -1;
        for (int i = 0; i < n; i++)
            if (!strcmp(ms[i].id, cur.base)) k = i;
        if (k >= 0) tmp = ms[k];
        else if (!r->d || db_model_get(r->d, r->owner, cur.base, &tmp, err)) break;
        cur = tmp;
        found = !strcmp(cur.kind, "base");
    }
    if (!found || config_artifact_path(&r->s->cfg, cur.path, root, sizeof root) ||
        arch_info(root, &a, err))
        memset(&a, 0, sizeof a);
    json_object_set_new(o, "family", a.family[0] ? json_string(a.family) : json_null());
    json_object_set_new(o, "context_length", a.context_length > 0
                        ? json_integer((json_int_t)a.context_length) : json_null());
    json_object_set_new(o, "chat_template", json_boolean(a.chat_template));
    return o;
}

void models_list(req *r)
{
    char err[DT_ERR_LEN];
    db *d = req_db(r);
    if (!d) return;
    db_model *ms = NULL;
    int n = 0;
    int rc = db_model_list(d, r->owner, &ms, &n, err);
    if (rc) { reply_db(r, rc, err); return; }
    json_t *data = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(data, with_info(r, obj_model(&ms[i]), &ms[i], ms, n));
    free(ms);
    reply_json(r, 200, obj_list(data, false));
}

void models_get(req *r)
{
    db_model m;
    if (load_model(r, &m)) return;
    reply_json(r, 200, with_info(r, obj_model(&m), &m, NULL, 0));
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    return remove(p) && errno != ENOENT ? -1 : 0;
}

void models_delete(req *r)
{
    char err[DT_ERR_LEN], path[PATH_MAX];
    db_model m;
    if (load_model(r, &m)) return;
    if (!strcmp(m.kind, "base")) {
        reply_error(r, 403, "permission_denied", NULL,
                    "%s is a base model; the operator manages base models", m.id);
        return;
    }
    int rc = db_model_delete(r->d, r->owner, m.id, &m, err);
    if (rc) { reply_db(r, rc, err); return; }
    /* Only artifacts the service wrote (relative paths) are removed. */
    if (m.path[0] && m.path[0] != '/' && !strstr(m.path, "..") &&
        !config_artifact_path(&r->s->cfg, m.path, path, sizeof path) &&
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) && errno != ENOENT)
        log_msg(DT_LOG_WARN, "models.delete", "%s: %s", path, strerror(errno));
    reply_json(r, 200, json_pack("{s:s, s:s, s:b}", "id", m.id, "object", "model",
                                 "deleted", 1));
}

static int sha256_file(const char *path, char hex[65])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    auth_sha256 *h = auth_sha256_new();
    char *buf = malloc(1 << 20);
    int rc = (h && buf) ? 0 : -1;
    for (ssize_t n; !rc && (n = read(fd, buf, 1 << 20)) != 0;) {
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = -1;
            break;
        }
        auth_sha256_update(h, buf, (size_t)n);
    }
    if (!rc) auth_sha256_final(h, hex);
    auth_sha256_free(h);
    free(buf);
    close(fd);
    return rc;
}

void models_files(req *r)
{
    char err[DT_ERR_LEN];
    db_model m;
    if (load_model(r, &m)) return;
    mfile *fs;
    int n;
    if (model_files(r->s, &m, &fs, &n)) {
        reply_error(r, 404, "not_found", NULL, "the files of %s are not available", m.id);
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < n; i++) {
        char hex[65];
        int rc = db_model_file_digest(r->d, m.id, fs[i].name, fs[i].bytes, fs[i].mtime_ns, hex,
                                      err);
        if (rc == DB_ENOTFOUND) {
            if (sha256_file(fs[i].path, hex)) {
                json_decref(data);
                free(fs);
                reply_error(r, 500, "internal_error", NULL, "could not read %s", fs[i].name);
                return;
            }
            rc = db_model_file_digest_put(r->d, m.id, fs[i].name, fs[i].bytes, fs[i].mtime_ns,
                                          hex, err);
        }
        if (rc) {
            json_decref(data);
            free(fs);
            reply_db(r, rc, err);
            return;
        }
        json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s}", "object", "model.file",
                                              "name", fs[i].name, "bytes",
                                              (json_int_t)fs[i].bytes, "sha256", hex));
    }
    free(fs);
    reply_json(r, 200, obj_list(data, false));
}

/* GET /v1/models/{id}/files/adapter/{name}: a file of the adapter/ prefix
 * (the route's {name} is one path segment). */
void models_adapter_file(req *r)
{
    char name[ROUTE_PARAM_LEN];
    if (snprintf(name, sizeof name, "adapter/%s", r->params[1]) >= (int)sizeof name) {
        reply_error(r, 404, "not_found", NULL, "model %s has no file adapter/%.200s",
                    r->params[0], r->params[1]);
        return;
    }
    memcpy(r->params[1], name, strlen(name) + 1);
    models_file(r);
}

/* GET /v1/models/{id}/files/merged/{name}: a file of a checkpoint's merged
 * model (an hf export). */
void models_merged_file(req *r)
{
    char name[ROUTE_PARAM_LEN];
    if (snprintf(name, sizeof name, "merged/%s", r->params[1]) >= (int)sizeof name) {
        reply_error(r, 404, "not_found", NULL, "model %s has no file merged/%.200s",
                    r->params[0], r->params[1]);
        return;
    }
    memcpy(r->params[1], name, strlen(name) + 1);
    models_file(r);
}

void models_file(req *r)
{
    db_model m;
    if (load_model(r, &m)) return;
    mfile *fs;
    int n, k = -1;
    if (model_files(r->s, &m, &fs, &n)) {
        reply_error(r, 404, "not_found", NULL, "the files of %s are not available", m.id);
        return;
    }
    for (int i = 0; i < n; i++)
        if (!strcmp(fs[i].name, r->params[1])) k = i;
    if (k < 0) {
        free(fs);
        reply_error(r, 404, "not_found", NULL, "model %s has no file %.200s", m.id, r->params[1]);
        return;
    }
    int fd = open(fs[k].path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    free(fs);
    if (fd < 0 || fstat(fd, &st)) {
        if (fd >= 0) close(fd);
        reply_error(r, 404, "not_found", NULL, "file vanished");
        return;
    }
    char etag[64], cr[96];
    snprintf(etag, sizeof etag, "\"%" PRIx64 "-%" PRIx64 "\"", (uint64_t)st.st_size,
             (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec);
    struct MHD_Response *resp;
    if (http_etag_match(req_header(r, "If-None-Match"), etag)) {
        close(fd);
        resp = MHD_create_response_from_buffer(0, (char *)"", MHD_RESPMEM_PERSISTENT);
        if (!resp) { reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
        MHD_add_response_header(resp, "ETag", etag);
        reply_mhd(r, 304, resp);
        return;
    }
    int64_t start = 0, len = st.st_size;
    int status = 200;
    const char *range = req_header(r, "Range");
    const char *if_range = req_header(r, "If-Range");
    if (range && (!if_range || !strcmp(if_range, etag))) {
        int pr = http_parse_range(range, st.st_size, &start, &len);
        if (pr < 0) {
            close(fd);
            api_error e;
            api_errorf(&e, 416, "range_not_satisfiable", "Range",
                       "range %.80s is outside the file's %lld bytes", range,
                       (long long)st.st_size);
            json_t *body = api_error_json(&e);
            char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
            json_decref(body);
            resp = text ? MHD_create_response_from_buffer(strlen(text), text,
                                                          MHD_RESPMEM_MUST_FREE) : NULL;
            if (!resp) { free(text); reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
            snprintf(cr, sizeof cr, "bytes */%lld", (long long)st.st_size);
            MHD_add_response_header(resp, "Content-Range", cr);
            MHD_add_response_header(resp, "Content-Type", "application/json");
            reply_mhd(r, 416, resp);
            return;
        }
        if (pr == 0) status = 206;
    }
    resp = MHD_create_response_from_fd_at_offset64((uint64_t)len, fd, (uint64_t)start);
    if (!resp) { close(fd); reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
    MHD_add_response_header(resp, "ETag", etag);
    MHD_add_response_header(resp, "Accept-Ranges", "bytes");
    MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
    if (status == 206) {
        snprintf(cr, sizeof cr, "bytes %lld-%lld/%lld", (long long)start,
                 (long long)(start + len - 1), (long long)st.st_size);
        MHD_add_response_header(resp, "Content-Range", cr);
    }
    reply_mhd(r, status, resp);
}

/* ---- tar stream ----------------------------------------------------------------- */

typedef struct tarctx {
    mfile *fs;
    int n;
    int64_t *start;      /* archive offset of each entry's head */
    int *hlen;           /* length of each entry's head (tar_head) */
    int64_t total;       /* bytes including the two zero end blocks */
    char prefix[3 * DB_MODEL_ID_LEN]; /* directory name inside the archive */
    int cur;             /* entry whose fd is open */
    int fd;
    int head_of;         /* entry whose head is in head (-1: none) */
    unsigned char head[TAR_HEAD_MAX];
} tarctx;

/* The entry's name in the archive: prefix/name. */
static int tar_name(const tarctx *t, int i, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s", t->prefix, t->fs[i].name);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* The archive's top directory: the model id with ':' written '_', letters,
 * digits, '-' and '.' (not first) kept, and every other byte (including
 * '_') written %XX, so that distinct ids never share a directory and the
 * directory is a plain file name: ft:base:owner:sfx:ftjob-x ->
 * ft_base_owner_sfx_ftjob-x; my_suffix -> my%5Fsuffix. */
static void archive_dir(const char *id, char *out, size_t cap)
{
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)id; *p && k + 4 <= cap; p++) {
        if (*p == ':') out[k++] = '_';
        else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                 (*p >= '0' && *p <= '9') || *p == '-' || (*p == '.' && p != (const unsigned char *)id))
            out[k++] = (char)*p;
        else k += (size_t)snprintf(out + k, cap - k, "%%%02X", *p);
    }
    out[k] = 0;
}

static void tar_free(void *cls)
{
    tarctx *t = cls;
    if (t->fd >= 0) close(t->fd);
    free(t->fs);
    free(t->start);
    free(t->hlen);
    free(t);
}

static ssize_t tar_read(void *cls, uint64_t pos64, char *buf, size_t max)
{
    tarctx *t = cls;
    int64_t pos = (int64_t)pos64;
    if (pos >= t->total) return MHD_CONTENT_READER_END_OF_STREAM;
    int i = 0;
    while (i < t->n && t->start[i] + t->hlen[i] + tar_entry_size(t->fs[i].bytes) - TAR_BLOCK <= pos)
        i++;
    if (i == t->n) { /* end blocks */
        size_t k = (size_t)(t->total - pos) < max ? (size_t)(t->total - pos) : max;
        memset(buf, 0, k);
        return (ssize_t)k;
    }
    int64_t off = pos - t->start[i], hl = t->hlen[i];
    if (off < hl) {
        if (t->head_of != i) {
            char name[PATH_MAX + sizeof t->prefix];
            if (tar_name(t, i, name, sizeof name) ||
                tar_head(t->head, name, t->fs[i].bytes, t->fs[i].mtime, 0644) != hl)
                return MHD_CONTENT_READER_END_WITH_ERROR;
            t->head_of = i;
        }
        size_t k = (size_t)(hl - off) < max ? (size_t)(hl - off) : max;
        memcpy(buf, t->head + off, k);
        return (ssize_t)k;
    }
    int64_t doff = off - hl;
    if (doff >= t->fs[i].bytes) { /* padding to the block */
        int64_t left = hl + tar_entry_size(t->fs[i].bytes) - TAR_BLOCK - off;
        size_t k = (size_t)left < max ? (size_t)left : max;
        memset(buf, 0, k);
        return (ssize_t)k;
    }
    if (t->cur != i) {
        if (t->fd >= 0) close(t->fd);
        t->fd = open(t->fs[i].path, O_RDONLY | O_CLOEXEC);
        t->cur = i;
        if (t->fd < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    int64_t left = t->fs[i].bytes - doff;
    size_t k = (size_t)left < max ? (size_t)left : max;
    ssize_t got = pread(t->fd, buf, k, doff);
    if (got <= 0) return MHD_CONTENT_READER_END_WITH_ERROR; /* file shrank */
    return got;
}

void models_archive(req *r)
{
    db_model m;
    if (load_model(r, &m)) return;
    tarctx *t = calloc(1, sizeof *t);
    if (!t) { reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
    t->fd = -1;
    t->cur = -1;
    t->head_of = -1;
    /* part: all files (default), "merged" (the model without adapter/; a
     * checkpoint's merged/, built by an hf export, as the directory
     * transformers loads) or "adapter" (only adapter/, as a directory PEFT
     * loads). */
    const char *part = req_query(r, "part");
    int want = 0;
    if (part && !strcmp(part, "merged")) want = 1;
    else if (part && !strcmp(part, "adapter")) want = 2;
    else if (part && *part) {
        tar_free(t);
        reply_error(r, 400, "invalid_value", "part", "part must be merged or adapter");
        return;
    }
    if (model_files(r->s, &m, &t->fs, &t->n)) {
        tar_free(t);
        reply_error(r, 404, "not_found", NULL, "the files of %s are not available", m.id);
        return;
    }
    int ckpt = !strcmp(m.kind, "checkpoint");
    if (want) {
        /* the prefix kept, at the top of the archive's directory */
        const char *pre = want == 2 ? "adapter/" : ckpt ? "merged/" : NULL;
        size_t pl = pre ? strlen(pre) : 0;
        int k = 0;
        for (int i = 0; i < t->n; i++) {
            int keep = pre ? !strncmp(t->fs[i].name, pre, pl)
                           : strncmp(t->fs[i].name, "adapter/", 8) != 0;
            if (!keep) continue;
            t->fs[k] = t->fs[i];
            memmove(t->fs[k].name, t->fs[k].name + pl, strlen(t->fs[k].name + pl) + 1);
            k++;
        }
        t->n = k;
        if (!k) {
            tar_free(t);
            if (want == 1 && ckpt)
                reply_error(r, 404, "not_found", "part", "checkpoint %s has no merged model "
                            "yet: build it with POST /v1/models/{id}/exports "
                            "{\"format\": \"hf\"} and download it when the export has "
                            "succeeded", m.id);
            else
                reply_error(r, 404, "not_found", "part", "model %s has no %s files", m.id,
                            want == 2 ? "adapter" : "merged model");
            return;
        }
    }
    archive_dir(m.id, t->prefix, sizeof t->prefix);
    if (want == 2) {
        size_t pl = strlen(t->prefix);
        snprintf(t->prefix + pl, sizeof t->prefix - pl, "-adapter");
    }
    t->start = calloc((size_t)t->n + 1, sizeof *t->start);
    t->hlen = calloc((size_t)t->n + 1, sizeof *t->hlen);
    if (!t->start || !t->hlen) {
        tar_free(t);
        reply_error(r, 500, "internal_error", NULL, "out of memory");
        return;
    }
    int64_t off = 0;
    for (int i = 0; i < t->n; i++) {
        char name[PATH_MAX + sizeof t->prefix];
        int hl = tar_name(t, i, name, sizeof name) ? -1
               : tar_head(t->head, name, t->fs[i].bytes, t->fs[i].mtime, 0644);
        if (hl < 0) { /* before any header is sent, not a cut-off stream */
            tar_free(t);
            reply_error(r, 500, "internal_error", NULL,
                        "cannot write a tar header for %s of %s", name, m.id);
            return;
        }
        t->start[i] = off;
        t->hlen[i] = hl;
        off += hl + tar_entry_size(t->fs[i].bytes) - TAR_BLOCK;
    }
    t->total = off + 2 * TAR_BLOCK;
    struct MHD_Response *resp =
        MHD_create_response_from_callback((uint64_t)t->total, 256 * 1024, tar_read, t, tar_free);
    if (!resp) { tar_free(t); reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
    char cd[sizeof t->prefix + 64];
    snprintf(cd, sizeof cd, "attachment; filename=\"%s.tar\"", t->prefix);
    MHD_add_response_header(resp, "Content-Type", "application/x-tar");
    MHD_add_response_header(resp, "Content-Disposition", cd);
    reply_mhd(r, 200, resp);
}
