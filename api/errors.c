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

/* Length of the valid UTF-8 sequence at p (1-4), or 0: a stray
 * continuation byte, an overlong form, a surrogate, > U+10FFFF or a
 * sequence cut short. */
static size_t utf8_seq(const unsigned char *p)
{
    unsigned c = p[0];
    if (c < 0x80) return 1;
    size_t n = c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2
             : c >= 0xf0 && c <= 0xf4 ? 3 : 0;
    if (!n) return 0;
    unsigned cp = c & (n == 1 ? 0x1f : n == 2 ? 0x0f : 0x07);
    for (size_t k = 1; k <= n; k++) {
        if ((p[k] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[k] & 0x3f);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || (cp >= 0xd800 && cp <= 0xdfff) ||
        cp > 0x10ffff)
        return 0;
    return n + 1;
}

int api_utf8_valid(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_seq(p);
        if (!n) return 0;
        p += n;
    }
    return 1;
}

void api_utf8_fix(char *s, char repl)
{
    for (unsigned char *p = (unsigned char *)s; *p;) {
        size_t n = utf8_seq(p);
        if (!n) *p++ = (unsigned char)repl;
        else p += n;
    }
}

json_t *api_error_json(const api_error *e)
{
    const char *type = e->type ? e->type : api_error_type(e->status);
    /* messages quote what the client sent, and jansson refuses invalid
     * UTF-8 (the reply would go out empty) */
    char msg[sizeof e->message], param[sizeof e->param], code[sizeof e->code];
    snprintf(msg, sizeof msg, "%s", e->message);
    snprintf(param, sizeof param, "%s", e->param);
    snprintf(code, sizeof code, "%s", e->code);
    api_utf8_fix(msg, '?');
    api_utf8_fix(param, '?');
    api_utf8_fix(code, '?');
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error",
                     "message", msg,
                     "type", type,
                     "param", param[0] ? json_string(param) : json_null(),
                     "code", code[0] ? json_string(code) : json_null());
}
