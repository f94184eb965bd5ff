/* errors.h: the one builder of error replies,
 *   {"error":{"message","type","param","code"}}
 * (OpenAI's shape). Every 4xx/5xx the service sends goes through
 * api_error_json(); server/http.c wraps it in an HTTP response. */
#ifndef DT_API_ERRORS_H
#define DT_API_ERRORS_H

#include <jansson.h>

typedef struct api_error {
    int status;          /* HTTP status: 400, 401, 404, 409, 413, 422, 429, 503 ... */
    const char *type;    /* invalid_request_error | authentication_error |
                            not_found_error | conflict_error | rate_limit_error |
                            server_error (NULL: derived from status) */
    char code[64];       /* stable machine code ("invalid_value", ...) */
    char param[192];     /* field path at fault ("" = null) */
    char message[768];
} api_error;

/* Fills e and returns status (so `return api_errorf(e, 400, ...)` works). */
int api_errorf(api_error *e, int status, const char *code, const char *param,
               const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Returns a new reference: the error body. */
json_t *api_error_json(const api_error *e);

/* The type string for an HTTP status. */
const char *api_error_type(int status);

/* 1 when s is valid UTF-8: what jansson and PostgreSQL (UTF8) accept. */
int api_utf8_valid(const char *s);
/* Replaces, in place, each byte of s that is not part of a valid UTF-8
 * sequence (stray, overlong, surrogate, > U+10FFFF, cut short) by repl. */
void api_utf8_fix(char *s, char repl);

#endif
