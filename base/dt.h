/* dt.h: error codes, the base of every folder (base/ is the bottom of the
 * dependency picture in docs/ARCHITECTURE.md: it includes nothing above it).
 *
 * Functions return 0 (DT_OK) or a negative DT_E* code. Human detail goes into
 * a caller-provided `char err[DT_ERR_LEN]`, written with dt_errf(). Nothing in
 * a library calls exit(). */
#ifndef DT_H
#define DT_H

#include <stddef.h>
#include <stdint.h>

#define DT_ERR_LEN 512

enum {
    DT_OK = 0,
    DT_EINVAL = -1,   /* bad argument or bad user input */
    DT_EIO = -2,      /* read/write failed (errno in the message) */
    DT_ENOMEM = -3,   /* host or device allocation failed */
    DT_EFORMAT = -4,  /* malformed file */
    DT_ENOTSUP = -5,  /* valid but unsupported (dtype, architecture, ...) */
    DT_ECANCEL = -6,  /* stopped on request (signal, job cancel) */
    DT_EDEVICE = -7,  /* device/driver error */
    DT_ENAN = -8,     /* loss or gradient became NaN/Inf */
};

const char *dt_strerror(int code);

/* Formats into err (if non-NULL, DT_ERR_LEN bytes) and returns code, so that
 * `return dt_errf(err, DT_EFORMAT, "%s: truncated", path);` reads naturally. */
int dt_errf(char *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* calloc that returns a real (1-byte) block for a zero-sized request, so a
 * NULL result always means out of memory. Callers still check. */
void *dt_calloc(size_t n, size_t size);

#endif
