/* fuzz_query: raw HTTP requests (request line, path, query string, headers)
 * through MHD's request parser, the server's router (route_find over the
 * real table: {param} segments, 404 vs 405) and every handler's query and
 * header parsing (limit, after, order, metadata[k]=v filters, stream,
 * Range, If-None-Match, Last-Event-ID, ...) up to the database, which the
 * harness keeps "down" (fuzz_http.h). The input is sent as it is. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <string.h>

#include "fuzz_http.h"
#include "server/httputil.h"

/* The header-value parsers that the handlers reach only after the
 * database (Range, If-None-Match on model files; limit), on every line. */
static void value_parsers(const char *s)
{
    static const int64_t sizes[] = {0, 1, 100, INT64_MAX};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        int64_t start = -1, len = -1;
        int rc = http_parse_range(s, sizes[k], &start, &len);
        if (rc == 0 && (start < 0 || len <= 0 || start > sizes[k] - len)) {
            fprintf(stderr, "fuzz_query: range \"%s\" on %lld bytes gave %lld+%lld\n", s,
                    (long long)sizes[k], (long long)start, (long long)len);
            abort();
        }
    }
    http_etag_match(s, "\"3f2a\"");
    http_etag_match("\"3f2a\"", s);
    int v = 0;
    if (!http_parse_limit(s, 20, 100, &v) && (v < 1 || v > 100)) abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_http_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char line[1024];
    const char *p = (const char *)data, *end = p + size;
    for (int k = 0; k < 64 && p < end; k++) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        e = e ? e : end;
        size_t n = (size_t)(e - p) < sizeof line - 1 ? (size_t)(e - p) : sizeof line - 1;
        memcpy(line, p, n);
        line[n] = 0;
        if (n && line[n - 1] == '\r') line[n - 1] = 0;
        const char *colon = strchr(line, ':');
        value_parsers(colon ? colon + 1 + (colon[1] == ' ') : line);
        p = e + 1;
    }
    int status = fuzz_http_request((const char *)data, size);
    if (status == 500) { /* an internal error; 503 = the database, 505 = MHD */
        fprintf(stderr, "fuzz_query: status %d\n", status);
        abort();
    }
    return 0;
}
