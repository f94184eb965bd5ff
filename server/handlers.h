/* handlers.h: one function per route (the table is in routes.c), grouped
 * by resource file. Each answers with exactly one reply_* call. */
#ifndef DT_SERVER_HANDLERS_H
#define DT_SERVER_HANDLERS_H

#include "http.h"
#include "httputil.h"

/* files.c. The upload's body hooks (route.h) for POST /v1/files: the
 * multipart body streamed into a temp file; files_upload_begin makes the
 * request's ctx and sets files_upload_free as its ctx_cleanup, which
 * removes the temp file unless files_create committed it. */
int files_upload_begin(req *r);             /* 0, or -1 after replying */
int files_upload_data(req *r, const char *data, size_t n); /* 0 */
void files_upload_end(req *r);              /* body complete: finalize digests */
void files_upload_free(req *r);
void files_create(req *r);
void files_list(req *r);
void files_get(req *r);
void files_delete(req *r);
void files_content(req *r);

/* results.c: a succeeded job's results file (step metrics CSV) by its file
 * id. 0 with *f filled (and *content, malloc'd, when content is non-NULL);
 * DB_ENOTFOUND when file_id names no succeeded job of the caller's;
 * DB_EUNAVAIL, DT_EIO or DT_ENOMEM otherwise. */
int results_file(req *r, const char *file_id, db_file *f, char **content);

/* jobs.c */
void jobs_create(req *r);
void jobs_list(req *r);
void jobs_get(req *r);
void jobs_cancel(req *r);
void jobs_pause(req *r);
void jobs_resume(req *r);
void jobs_events(req *r);
void jobs_checkpoints(req *r);

/* usage.c: an owner's limits (overrides, else the server's defaults; 0 =
 * no limit) and use. usage_get measures what `what` asks for (USAGE_JOBS:
 * active jobs; USAGE_STORAGE: uploads plus the job directories on disk);
 * usage_admit_job answers 429 (active jobs) or 413 (storage) for a new
 * job. Both return 0, or -1 after replying. GET /v1/usage: usage_route. */
enum { USAGE_JOBS = 1, USAGE_STORAGE = 2 };
typedef struct owner_usage {
    int64_t active_jobs;        /* validating_files, queued, running, paused */
    int64_t file_bytes, job_bytes, storage_bytes;
    int64_t max_jobs, max_storage_bytes, max_upload_bytes, max_runtime_seconds;
} owner_usage;
int usage_get(req *r, db *d, int what, owner_usage *u);
int usage_admit_job(req *r, db *d);
void usage_route(req *r);

/* models.c */
/* Reads of model files for GET /v1/models' base info so far (the rest
 * come from models.c's cache; /metrics shows it). */
uint64_t models_info_reads(void);
void models_list(req *r);
void models_get(req *r);
void models_delete(req *r);
void models_files(req *r);
void models_file(req *r);
void models_adapter_file(req *r);
void models_merged_file(req *r);
void models_archive(req *r);

/* exports.c: POST /v1/models/{id}/exports (202 with the queued export),
 * GET /v1/models/{id}/exports, GET /v1/models/{id}/exports/{export_id}. */
void exports_create(req *r);
void exports_list(req *r);
void exports_get(req *r);

/* ops.c. The metrics behind /metrics; main.c sets metrics_observe as the
 * server's on_complete with a metrics as its on_complete_cls. */
typedef struct metrics metrics;
metrics *metrics_new(int nroutes);
void metrics_free(metrics *m);
void metrics_observe(server *s, int route, int status, double seconds);
void ops_healthz(req *r);
void ops_readyz(req *r);
void ops_metrics(req *r);
void ops_openapi(req *r);

/* static.c: the dashboard */
void static_index(req *r);
void static_asset(req *r);

/* sse.c: events, or their live stream with stream=true */
void jobs_events_route(req *r);

/* routes.c */
extern const route server_routes[];
extern const int server_nroutes;

#endif
