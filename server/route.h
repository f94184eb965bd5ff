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
    R_JSON = 2,    /* a JSON body, capped at max_json_bytes */
    R_UPLOAD = 4,  /* a multipart upload, capped at max_upload_bytes */
};

typedef struct route {
    const char *method;          /* "GET", "POST", "DELETE" */
    const char *pattern;
    const char *name;            /* metrics label */
    void (*handler)(struct req *r);
    unsigned flags;
} route;

/* Matches path against pattern, copying {params} into params. Returns the
 * number of parameters (>= 0), or -1 when it does not match (or a parameter
 * is longer than ROUTE_PARAM_LEN-1). */
int route_match(const char *pattern, const char *path,
                char params[][ROUTE_PARAM_LEN], int maxp);

/* Finds the route for (method, path) in table[0..n). Returns its index, -1
 * when no pattern matches the path (404), or -2 when a pattern matches with
 * another method (405). */
int route_find(const route *table, int n, const char *method, const char *path,
               char params[][ROUTE_PARAM_LEN]);

#endif
