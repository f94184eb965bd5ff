/* route.c: path pattern matching for the route table. */
#include "route.h"

#include <string.h>

int route_match(const char *pattern, const char *path, char params[][ROUTE_PARAM_LEN],
                int maxp)
{
    int np = 0;
    const char *p = pattern, *s = path;
    while (*p) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            if (!close || np >= maxp) return -1;
            size_t n = strcspn(s, "/");
            if (n == 0 || n >= ROUTE_PARAM_LEN) return -1;
            memcpy(params[np], s, n);
            params[np][n] = 0;
            np++;
            s += n;
            p = close + 1;
        } else {
            if (*p != *s) return -1;
            p++;
            s++;
        }
    }
    return *s ? -1 : np;
}

int route_find(const route *table, int n, const char *method, const char *path,
               char params[][ROUTE_PARAM_LEN])
{
    int other_method = 0;
    /* HEAD is GET without the body (RFC 9110 9.3.2): MHD sends a HEAD
     * reply's headers, Content-Length included, and never its body. */
    int head = !strcmp(method, "HEAD");
    char tmp[ROUTE_MAXP][ROUTE_PARAM_LEN];
    for (int i = 0; i < n; i++) {
        if (route_match(table[i].pattern, path, tmp, ROUTE_MAXP) < 0) continue;
        if (strcmp(table[i].method, method) && !(head && !strcmp(table[i].method, "GET"))) {
            other_method = 1;
            continue;
        }
        memcpy(params, tmp, sizeof tmp);
        return i;
    }
    return other_method ? -2 : -1;
}
