/* handlers.h: one function per route (the table is in routes.c), grouped
 * by resource file. Each answers with exactly one reply_* call. */
#ifndef DT_SERVER_HANDLERS_H
#define DT_SERVER_HANDLERS_H

#include "http.h"
#include "httputil.h"

/* files.c */
void files_create(req *r);
void files_list(req *r);
void files_get(req *r);
void files_delete(req *r);
void files_content(req *r);

/* jobs.c */
void jobs_create(req *r);
void jobs_list(req *r);
void jobs_get(req *r);
void jobs_cancel(req *r);
void jobs_pause(req *r);
void jobs_resume(req *r);
void jobs_events(req *r);
void jobs_checkpoints(req *r);

/* models.c */
void models_list(req *r);
void models_get(req *r);
void models_delete(req *r);
void models_files(req *r);
void models_file(req *r);
void models_archive(req *r);

/* ops.c */
void ops_healthz(req *r);
void ops_readyz(req *r);
void ops_metrics(req *r);
void ops_openapi(req *r);

/* routes.c */
extern const route server_routes[];
extern const int server_nroutes;

#endif
