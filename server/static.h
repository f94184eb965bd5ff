/* static.h: the dashboard's files, embedded at build time by
 * scripts/static-to-c from server/static/ (build/server/static_files.c). */
#ifndef DT_SERVER_STATIC_H
#define DT_SERVER_STATIC_H

#include <stddef.h>

typedef struct static_file {
    const char *name;            /* "app.js" */
    const char *type;            /* Content-Type */
    const unsigned char *data;
    size_t len;
    const char *etag;            /* strong ETag, quoted */
    const char *version;         /* 16 hex digits: the ?v= of versioned URLs */
} static_file;

extern const static_file server_static_files[];
extern const int server_static_nfiles;

/* The file called name, or NULL. */
const static_file *static_find(const char *name);

#endif
