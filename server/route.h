/* route.h: the route table type and path matching (no MHD here, so the
 * unit tests link it alone).
 *
 * A pattern is a path with {name} segments: "/v1/files/{id}/content".
 * A {name} matches one non-empty segment (MHD has already percent-decoded
 * the path, so a %2F in an id becomes a '/' and cannot match). */
#ifndef DT_SERVER_ROUTE_H
#define DT_SERVER_ROUTE_H

#include <stddef.h>

#define ROUTE_MAXP 3        /* {params} per pattern */
#define ROUTE_PARAM_LEN 512 /* longest parameter (model ids) */

struct req;

enum {
    R_PUBLIC = 1,  /* no Authorization needed (ops endpoints) */
    R_JSON = 2,    /* a JSON body, buffered for req_json, capped at max_json_bytes */
    R_UPLOAD = 4,  /* a large body: capped at max_upload_bytes (+ 64 KiB of framing),
                    * and no database connection is held while it arrives */
};

/* One entry of the route table. The handler runs once the whole body is in
 * and answers with exactly one reply_* call.
 *
 * A route that streams its body instead of having it buffered sets the body
 * hooks (all three, or none). body_begin runs after routing, the body cap
 * and authentication, before the first byte of the body; it may set the
 * request's ctx and ctx_cleanup (http.h), and returns 0, or -1 after a
 * reply_* call (the reply is sent at once, the body is not read). body_data
 * gets each piece of the body within the cap; it returns 0, or -1 to drop
 * the connection. body_end runs once MHD has read the whole body (also when
 * it went over the cap: the reply is then 413), before the handler; it does
 * not run when the request ends early (ctx_cleanup does, in every case). */
typedef struct route {
    const char *method;          /* "GET", "POST", "DELETE" */
    const char *pattern;
    const char *name;            /* metrics label */
    void (*handler)(struct req *r);
    unsigned flags;
    int (*body_begin)(struct req *r);
    int (*body_data)(struct req *r, const char *data, size_t n);
    void (*body_end)(struct req *r);
} route;

/* A table entry without body hooks: its body, if any, is buffered (R_JSON)
 * or ignored. */
#define ROUTE(method_, pattern_, name_, handler_, flags_)                                   \
    {.method = (method_), .pattern = (pattern_), .name = (name_), .handler = (handler_),   \
     .flags = (flags_)}

/* Matches path against pattern, copying {params} into params. Returns the
 * number of parameters (>= 0), or -1 when it does not match (or a parameter
 * is longer than ROUTE_PARAM_LEN-1). */
int route_match(const char *pattern, const char *path,
                char params[][ROUTE_PARAM_LEN], int maxp);

/* Finds the route for (method, path) in table[0..n). Returns its index, -1
 * when no pattern matches the path (404), or -2 when a pattern matches with
 * another method (405). HEAD finds the GET route of the path. */
int route_find(const route *table, int n, const char *method, const char *path,
               char params[][ROUTE_PARAM_LEN]);

#endif
