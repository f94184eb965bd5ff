/* fuzz_multipart: POST /v1/files through the server's upload path: MHD's
 * multipart/form-data post processor driving server/files.c (on_field: the
 * file, purpose and expires_after fields, the byte cap, the SHA-256), then
 * files_create (field checks, dt_dataset_validate on the stored upload, the
 * bad-line report rewritten to the upload's name) up to the database, which
 * the harness keeps "down" (fuzz_http.h).
 *
 * Input: the Content-Type header value, a newline, then the request body;
 * the harness adds the request line, an Authorization header (any key
 * passes the harness's auth hook) and Content-Length. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_http.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_http_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *nl = memchr(data, '\n', size);
    if (!nl || nl - (const char *)data > 512) return 0;
    size_t ctlen = (size_t)(nl - (const char *)data), blen = size - ctlen - 1;
    char head[1024];
    int h = snprintf(head, sizeof head,
                     "POST /v1/files HTTP/1.1\r\nHost: fuzz\r\n"
                     "Authorization: Bearer dt-fuzz-0123456789\r\nContent-Type: %.*s\r\n"
                     "Content-Length: %zu\r\n\r\n", (int)ctlen, (const char *)data, blen);
    char *req = malloc((size_t)h + blen);
    if (!req) abort();
    memcpy(req, head, (size_t)h);
    memcpy(req + h, nl + 1, blen);
    int status = fuzz_http_request(req, (size_t)h + blen);
    /* a well-formed request always gets an answer: 4xx for bad input, or
     * 503 once the upload got as far as the database */
    if (status == 500) { /* an internal error; 503 = the database, 505 = MHD */
        fprintf(stderr, "fuzz_multipart: status %d\n", status);
        abort();
    }
    free(req);
    return 0;
}
