/* files.c: /v1/files. Uploads are multipart/form-data streamed by MHD's
 * post processor straight into a temp file in <artifact_root>/files with
 * a byte cap and a SHA-256 computed on the way; the file gets a
 * server-generated name (files/<id>.jsonl), is validated as JSONL
 * (dt_dataset_validate_lines: memory bounded by the line cap
 * DELTATUNE_MAX_LINE_BYTES, which a longer line exceeds with a 400 while it
 * streams in, before it is stored) and recorded with status processed or error (with
 * the bad lines in status_details). A job can only use processed files. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/log.h"
#include "api/objects.h"
#include "gpu/engine_api.h"
#include "handlers.h"
#include "http.h"
#include "base/file.h"
#include "base/id.h"

#define MAX_REPORT_LINES 20

/* POST /v1/files's request context (r->ctx): made by files_upload_begin,
 * freed by files_upload_free (the request's ctx_cleanup). */
typedef struct upload {
    struct MHD_PostProcessor *pp;
    char id[DB_ID_LEN];
    char tmp[PATH_MAX];
    int fd;
    int committed;
    auth_sha256 *sha;
    char sha_hex[65];
    int64_t bytes;
    int64_t line_bytes;         /* bytes of the file's current line so far */
    long line;                  /* its number, from 1 */
    int have_file;
    char filename[256];
    char purpose[32];
    char expires[32];           /* expires_after[seconds] */
    int64_t cap;                /* bytes this upload may have (usage.c's limits) */
    char cap_msg[300];          /* the 413 message past it */
    int status;                 /* first problem: HTTP status, 0 = fine */
    char param[64];
    char msg[300];
} upload;

static void upload_fail(upload *u, int status, const char *param, const char *msg)
{
    if (u->status) return; /* keep the first problem */
    u->status = status;
    snprintf(u->param, sizeof u->param, "%s", param ? param : "");
    snprintf(u->msg, sizeof u->msg, "%s", msg);
}

/* Appends a form value piece at offset off into a small buffer. */
static void field_append(upload *u, char *buf, size_t cap, const char *name, const char *data,
                         uint64_t off, size_t size)
{
    if (off + size >= cap) {
        upload_fail(u, 400, name, "form field value too long");
        return;
    }
    memcpy(buf + off, data, size);
    buf[off + size] = 0;
}

/* Follows the file's lines as it streams in: a line longer than max bytes
 * (its "\n" not counted, as dt_dataset_validate_lines counts) fails the
 * upload with a 400 naming the line, and nothing more of the file is
 * stored or held: memory stays bounded whatever the line's length. */
static int line_too_long(upload *u, const char *data, size_t size, int64_t max)
{
    if (!u->line) u->line = 1;
    while (size > 0) {
        const char *nl = memchr(data, '\n', size);
        size_t k = nl ? (size_t)(nl - data) : size;
        u->line_bytes += (int64_t)k;
        if (u->line_bytes > max) {
            char m[300];
            snprintf(m, sizeof m, "line %ld of the file is longer than the limit of %lld bytes "
                     "per line (DELTATUNE_MAX_LINE_BYTES); rows are cut to seq_len tokens "
                     "anyway: split long text into several rows", u->line, (long long)max);
            upload_fail(u, 400, "file", m);
            return 1;
        }
        if (!nl) break;
        u->line++;
        u->line_bytes = 0;
        size -= k + 1;
        data = nl + 1;
    }
    return 0;
}

static enum MHD_Result on_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *filename, const char *content_type,
                                const char *transfer_encoding, const char *data, uint64_t off,
                                size_t size)
{
    req *r = cls;
    upload *u = r->ctx;
    if (!key) return MHD_YES;
    if (!strcmp(key, "file")) {
        if (off == 0 && u->bytes > 0) {
            upload_fail(u, 400, "file", "send exactly one file");
            return MHD_YES;
        }
        if (!u->have_file && filename) {
            const char *base = filename; /* basename after '/' or '\\' */
            for (const char *p = filename; *p; p++)
                if (*p == '/' || *p == '\\') base = p + 1;
            snprintf(u->filename, sizeof u->filename, "%s", base);
            for (char *p = u->filename; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '_';
            api_utf8_fix(u->filename, '_'); /* stored in PostgreSQL, sent as JSON */
        }
        u->have_file = 1;
        if (u->status) return MHD_YES;
        if (u->bytes + (int64_t)size > u->cap) {
            upload_fail(u, 413, "file", u->cap_msg);
            return MHD_YES;
        }
        if (line_too_long(u, data, size, r->s->cfg.max_line_bytes)) return MHD_YES;
        for (size_t done = 0; done < size;) {
            ssize_t w = write(u->fd, data + done, size - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                log_msg(DT_LOG_ERROR, "files.write", "%s: %s", u->tmp, strerror(errno));
                upload_fail(u, 500, NULL, "could not store the upload");
                return MHD_YES;
            }
            done += (size_t)w;
        }
        auth_sha256_update(u->sha, data, size);
        u->bytes += (int64_t)size;
    } else if (!strcmp(key, "purpose")) {
        field_append(u, u->purpose, sizeof u->purpose, "purpose", data, off, size);
    } else if (!strcmp(key, "expires_after[seconds]")) {
        field_append(u, u->expires, sizeof u->expires, key, data, off, size);
    } else if (!strcmp(key, "expires_after[anchor]")) {
        char a[32] = "";
        field_append(u, a, sizeof a, key, data, off, size);
        if (off == 0 && strncmp(a, "created_at", size < 10 ? size : 10))
            upload_fail(u, 400, "expires_after.anchor", "expires_after[anchor] must be created_at");
    } else {
        char m[200];
        snprintf(m, sizeof m, "unknown form field: %.64s", key);
        upload_fail(u, 400, key, m);
    }
    return MHD_YES;
}

int files_upload_begin(req *r)
{
    char err[DT_ERR_LEN], dir[PATH_MAX];
    upload *u = calloc(1, sizeof *u);
    if (!u) { reply_error(r, 500, "internal_error", NULL, "out of memory"); return -1; }
    u->fd = -1;
    r->ctx = u;
    r->ctx_cleanup = files_upload_free; /* from here on, whatever ends the request */
    /* The owner's upload and storage limits, before any byte is stored. */
    owner_usage use;
    db *d = req_db(r);
    if (!d || usage_get(r, d, USAGE_STORAGE, &use)) return -1;
    u->cap = use.max_upload_bytes;
    snprintf(u->cap_msg, sizeof u->cap_msg, "file exceeds the upload limit of %lld bytes "
             "(max_upload)", (long long)u->cap);
    if (use.max_storage_bytes > 0 && use.max_storage_bytes - use.storage_bytes < u->cap) {
        u->cap = use.max_storage_bytes - use.storage_bytes;
        snprintf(u->cap_msg, sizeof u->cap_msg, "file exceeds owner %s's storage: %lld of the "
                 "limit of %lld bytes (max_storage) are in use, %lld bytes left: delete "
                 "files or models first", r->owner, (long long)use.storage_bytes,
                 (long long)use.max_storage_bytes,
                 (long long)(u->cap > 0 ? u->cap : 0));
    }
    u->pp = MHD_create_post_processor(r->conn, 64 * 1024, on_field, r);
    if (!u->pp) {
        reply_error(r, 400, "invalid_content_type", NULL,
                    "send the file as multipart/form-data with fields file and purpose");
        return -1;
    }
    u->sha = auth_sha256_new();
    if (!u->sha || dt_id_new("file-", u->id, sizeof u->id) ||
        config_artifact_path(&r->s->cfg, "files", dir, sizeof dir) || dt_mkdirs(dir, err) ||
        snprintf(u->tmp, sizeof u->tmp, "%s/.upload-%s.tmp", dir, u->id) >= (int)sizeof u->tmp) {
        log_msg(DT_LOG_ERROR, "files.tmp", "cannot prepare %s: %s", dir, err);
        reply_error(r, 500, "internal_error", NULL, "could not store the upload");
        return -1;
    }
    u->fd = open(u->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (u->fd < 0) {
        log_msg(DT_LOG_ERROR, "files.tmp", "%s: %s", u->tmp, strerror(errno));
        u->tmp[0] = 0;
        reply_error(r, 500, "internal_error", NULL, "could not store the upload");
        return -1;
    }
    return 0;
}

int files_upload_data(req *r, const char *data, size_t n)
{
    upload *u = r->ctx;
    if (u->pp && MHD_post_process(u->pp, data, n) != MHD_YES) {
        upload_fail(u, 400, NULL, "malformed multipart/form-data body");
        MHD_destroy_post_processor(u->pp);
        u->pp = NULL;
    }
    return 0;
}

void files_upload_end(req *r)
{
    upload *u = r->ctx;
    if (!u) return;
    if (u->pp) {
        if (MHD_destroy_post_processor(u->pp) != MHD_YES)
            upload_fail(u, 400, NULL, "malformed or truncated multipart/form-data body");
        u->pp = NULL;
    }
    if (u->fd >= 0) {
        if (close(u->fd)) upload_fail(u, 500, NULL, "could not store the upload");
        u->fd = -1;
    }
    if (u->sha) {
        auth_sha256_final(u->sha, u->sha_hex);
        auth_sha256_free(u->sha);
        u->sha = NULL;
    }
    /* what an Idempotency-Key replay must match: the fields and the content */
    char desc[512];
    snprintf(desc, sizeof desc, "files\n%s\n%s\n%s\n%s", u->purpose, u->filename, u->expires,
             u->sha_hex);
    auth_sha256_hex(desc, strlen(desc), r->request_hash);
}

void files_upload_free(req *r)
{
    upload *u = r->ctx;
    if (!u) return;
    if (u->pp) MHD_destroy_post_processor(u->pp);
    if (u->fd >= 0) close(u->fd);
    if (u->tmp[0] && !u->committed) unlink(u->tmp);
    auth_sha256_free(u->sha);
    free(u);
    r->ctx = NULL;
}

void files_create(req *r)
{
    upload *u = r->ctx;
    char err[DT_ERR_LEN], final[PATH_MAX], rel[DB_PATH_LEN];
    if (u->status) { reply_error(r, u->status, u->status == 413 ? "file_too_large" :
                                 "invalid_value", u->param, "%s", u->msg); return; }
    if (!u->have_file) { reply_error(r, 400, "missing_required_parameter", "file",
                                     "missing required field: file"); return; }
    if (!u->purpose[0]) { reply_error(r, 400, "missing_required_parameter", "purpose",
                                      "missing required field: purpose"); return; }
    if (strcmp(u->purpose, "fine-tune")) {
        reply_error(r, 400, "invalid_value", "purpose",
                    "purpose must be \"fine-tune\" (got \"%.40s\")", u->purpose);
        return;
    }
    int64_t expires = 0;
    if (u->expires[0]) {
        char *end;
        long long secs = strtoll(u->expires, &end, 10);
        if (*end || secs < 3600 || secs > 2592000) {
            reply_error(r, 400, "invalid_value", "expires_after.seconds",
                        "expires_after[seconds] must be between 3600 and 2592000");
            return;
        }
        expires = (int64_t)time(NULL) + secs;
    }
    db_file f;
    memset(&f, 0, sizeof f);
    snprintf(f.id, sizeof f.id, "%s", u->id);
    snprintf(f.owner, sizeof f.owner, "%s", r->owner);
    snprintf(f.filename, sizeof f.filename, "%s", u->filename[0] ? u->filename : "upload.jsonl");
    snprintf(f.purpose, sizeof f.purpose, "%s", u->purpose);
    snprintf(f.sha256, sizeof f.sha256, "%s", u->sha_hex);
    f.bytes = u->bytes;
    f.expires_at = expires;
    char *report = NULL;
    long nlines = 0;
    int rc = dt_dataset_validate_lines(u->tmp, MAX_REPORT_LINES, (long)r->s->cfg.max_line_bytes,
                                       &report, &nlines, err);
    if (rc && rc != DT_EINVAL) {
        free(report);
        log_msg(DT_LOG_ERROR, "files.validate", "%s: %s", u->id, err);
        reply_error(r, 500, "internal_error", NULL, "could not read the upload back");
        return;
    }
    snprintf(f.status, sizeof f.status, "%s", rc ? "error" : "processed");
    if (rc) {
        /* report lines name the temp file: show the upload's own name */
        const char *src = report ? report : err;
        size_t tl = strlen(u->tmp), o = 0;
        for (const char *p = src; *p && o + 1 < sizeof f.status_details;) {
            if (!strncmp(p, u->tmp, tl)) {
                int w = snprintf(f.status_details + o, sizeof f.status_details - o, "%s",
                                 f.filename);
                o = w < 0 ? o : o + (size_t)w;
                if (o >= sizeof f.status_details) o = sizeof f.status_details - 1;
                p += tl;
            } else {
                f.status_details[o++] = *p++;
            }
        }
        f.status_details[o] = 0;
        api_utf8_fix(f.status_details, '?'); /* a character cut at the end */
    }
    free(report);
    f.nlines = nlines;
    snprintf(rel, sizeof rel, "files/%s.jsonl", u->id);
    snprintf(f.path, sizeof f.path, "%s", rel);
    if (config_artifact_path(&r->s->cfg, rel, final, sizeof final) || rename(u->tmp, final)) {
        log_msg(DT_LOG_ERROR, "files.rename", "%s: %s", u->tmp, strerror(errno));
        reply_error(r, 500, "internal_error", NULL, "could not store the upload");
        return;
    }
    u->tmp[0] = 0; /* now owned by the final name */
    db *d = req_db(r);
    if (!d) { unlink(final); return; }
    rc = db_file_create(d, &f, err);
    if (rc) {
        unlink(final);
        reply_db(r, rc, err);
        return;
    }
    u->committed = 1;
    db_file_get(d, r->owner, f.id, &f, err); /* created_at as stored */
    log_msg(DT_LOG_INFO, "files.created", "%s owner=%s bytes=%lld status=%s", f.id, f.owner,
            (long long)f.bytes, f.status);
    reply_json(r, 200, obj_file(&f));
}

void files_list(req *r)
{
    char err[DT_ERR_LEN];
    int limit;
    if (http_parse_limit(req_query(r, "limit"), 100, 10000, &limit)) {
        reply_error(r, 400, "invalid_value", "limit", "limit must be an integer 1-10000");
        return;
    }
    const char *order = req_query(r, "order");
    if (order && strcmp(order, "asc") && strcmp(order, "desc")) {
        reply_error(r, 400, "invalid_value", "order", "order must be asc or desc");
        return;
    }
    db *d = req_db(r);
    if (!d) return;
    db_file *fs = NULL;
    int n = 0;
    bool more = false;
    int rc = db_file_list(d, r->owner, req_query(r, "after"), limit, req_query(r, "purpose"),
                          order && !strcmp(order, "asc"), &fs, &n, &more, err);
    if (rc) { reply_db(r, rc, err); return; }
    json_t *data = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(data, obj_file(&fs[i]));
    free(fs);
    reply_json(r, 200, obj_list(data, more));
}

void files_get(req *r)
{
    char err[DT_ERR_LEN];
    db *d = req_db(r);
    if (!d) return;
    db_file f;
    int rc = db_file_get(d, r->owner, r->params[0], &f, err);
    if (rc == DB_ENOTFOUND && !results_file(r, r->params[0], &f, NULL)) rc = 0;
    if (rc) { reply_db(r, rc, err); return; }
    reply_json(r, 200, obj_file(&f));
}

void files_delete(req *r)
{
    char err[DT_ERR_LEN], path[PATH_MAX];
    db *d = req_db(r);
    if (!d) return;
    db_file f;
    int rc = db_file_delete(d, r->owner, r->params[0], &f, err);
    if (rc) { reply_db(r, rc, err); return; }
    if (!config_artifact_path(&r->s->cfg, f.path, path, sizeof path) && unlink(path) &&
        errno != ENOENT)
        log_msg(DT_LOG_WARN, "files.unlink", "%s: %s", path, strerror(errno));
    reply_json(r, 200, json_pack("{s:s, s:s, s:b}", "id", f.id, "object", "file",
                                 "deleted", 1));
}

void files_content(req *r)
{
    char err[DT_ERR_LEN], path[PATH_MAX];
    db *d = req_db(r);
    if (!d) return;
    db_file f;
    int rc = db_file_get(d, r->owner, r->params[0], &f, err);
    char *csv = NULL;
    if (rc == DB_ENOTFOUND && !results_file(r, r->params[0], &f, &csv)) {
        struct MHD_Response *resp = MHD_create_response_from_buffer(
            (size_t)f.bytes, csv, MHD_RESPMEM_MUST_FREE);
        if (!resp) { free(csv); reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
        MHD_add_response_header(resp, "Content-Type", "text/csv");
        reply_mhd(r, 200, resp);
        return;
    }
    if (rc) { reply_db(r, rc, err); return; }
    int fd = -1;
    struct stat st;
    if (config_artifact_path(&r->s->cfg, f.path, path, sizeof path) ||
        (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st)) {
        if (fd >= 0) close(fd);
        reply_error(r, 404, "not_found", NULL, "the content of %s is gone", f.id);
        return;
    }
    struct MHD_Response *resp = MHD_create_response_from_fd64((uint64_t)st.st_size, fd);
    if (!resp) { close(fd); reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
    MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
    reply_mhd(r, 200, resp);
}
