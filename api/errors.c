/* errors.c: the one builder of {"error":{"message","type","param","code"}}. */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *api_error_type(int status)
{
    switch (status) {
    case 400: case 413: case 415: case 422: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 405: return "invalid_request_error";
    case 409: return "conflict_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

int api_errorf(api_error *e, int status, const char *code, const char *param,
               const char *fmt, ...)
{
    e->status = status;
    e->type = NULL;
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return status;
}

json_t *api_error_json(const api_error *e)
{
    const char *type = e->type ? e->type : api_error_type(e->status);
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error",
                     "message", e->message,
                     "type", type,
                     "param", e->param[0] ? json_string(e->param) : json_null(),
                     "code", e->code[0] ? json_string(e->code) : json_null());
}
