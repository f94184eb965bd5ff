/* routes.c: the one route table of deltatune-server. Order matters only
 * where two patterns could match the same path (none do today). A route
 * that streams its body names its body hooks here (route.h). */
#include "chat.h"
#include "handlers.h"

const route server_routes[] = {
    {.method = "POST", .pattern = "/v1/files", .name = "files.create", .handler = files_create,
     .flags = R_UPLOAD, .body_begin = files_upload_begin, .body_data = files_upload_data,
     .body_end = files_upload_end},
    ROUTE("GET", "/v1/files", "files.list", files_list, 0),
    ROUTE("GET", "/v1/files/{id}", "files.get", files_get, 0),
    ROUTE("DELETE", "/v1/files/{id}", "files.delete", files_delete, 0),
    ROUTE("GET", "/v1/files/{id}/content", "files.content", files_content, 0),

    ROUTE("POST", "/v1/fine_tuning/jobs", "jobs.create", jobs_create, R_JSON),
    ROUTE("GET", "/v1/fine_tuning/jobs", "jobs.list", jobs_list, 0),
    ROUTE("GET", "/v1/fine_tuning/jobs/{id}", "jobs.get", jobs_get, 0),
    ROUTE("POST", "/v1/fine_tuning/jobs/{id}/cancel", "jobs.cancel", jobs_cancel, R_JSON),
    ROUTE("POST", "/v1/fine_tuning/jobs/{id}/pause", "jobs.pause", jobs_pause, R_JSON),
    ROUTE("POST", "/v1/fine_tuning/jobs/{id}/resume", "jobs.resume", jobs_resume, R_JSON),
    ROUTE("GET", "/v1/fine_tuning/jobs/{id}/events", "jobs.events", jobs_events_route, 0),
    ROUTE("GET", "/v1/fine_tuning/jobs/{id}/checkpoints", "jobs.checkpoints", jobs_checkpoints, 0),

    ROUTE("GET", "/v1/models", "models.list", models_list, 0),
    ROUTE("GET", "/v1/models/{id}", "models.get", models_get, 0),
    ROUTE("DELETE", "/v1/models/{id}", "models.delete", models_delete, 0),
    ROUTE("GET", "/v1/models/{id}/files", "models.files", models_files, 0),
    ROUTE("GET", "/v1/models/{id}/files/{name}", "models.file", models_file, 0),
    ROUTE("GET", "/v1/models/{id}/files/adapter/{name}", "models.adapter_file",
          models_adapter_file, 0),
    ROUTE("GET", "/v1/models/{id}/files/merged/{name}", "models.merged_file",
          models_merged_file, 0),
    ROUTE("GET", "/v1/models/{id}/archive", "models.archive", models_archive, 0),
    ROUTE("POST", "/v1/models/{id}/exports", "exports.create", exports_create, R_JSON),
    ROUTE("GET", "/v1/models/{id}/exports", "exports.list", exports_list, 0),
    ROUTE("GET", "/v1/models/{id}/exports/{export_id}", "exports.get", exports_get, 0),

    ROUTE("POST", "/v1/chat/completions", "chat.completions", chat_completions, R_JSON),
    ROUTE("POST", "/v1/completions", "completions", completions, R_JSON),

    ROUTE("GET", "/v1/usage", "usage", usage_route, 0),

    ROUTE("GET", "/v1/openapi.json", "openapi", ops_openapi, R_PUBLIC),
    ROUTE("GET", "/healthz", "healthz", ops_healthz, R_PUBLIC),
    ROUTE("GET", "/readyz", "readyz", ops_readyz, R_PUBLIC),
    ROUTE("GET", "/metrics", "metrics", ops_metrics, R_PUBLIC),

    ROUTE("GET", "/", "static.index", static_index, R_PUBLIC),
    ROUTE("GET", "/static/{name}", "static.asset", static_asset, R_PUBLIC),
};
const int server_nroutes = (int)(sizeof server_routes / sizeof server_routes[0]);
