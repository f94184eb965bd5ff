/* dt.h: error codes and small helpers shared by every part of the engine.
 *
 * Functions return 0 (DT_OK) or a negative DT_E* code. Human detail goes into
 * a caller-provided `char err[DT_ERR_LEN]`, written with dt_errf(). Nothing in
 * the engine calls exit(). */
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

/* Allocation that never returns NULL silently: callers still check. */
void *dt_calloc(size_t n, size_t size);

/* Reads a whole file. *out is a new malloc'd buffer (NUL-terminated, the
 * terminator not counted in *len). */
int dt_read_file(const char *path, char **out, size_t *len, char *err);

/* Writes a whole file atomically: path.tmp, fsync, rename, fsync dir. */
int dt_write_file_atomic(const char *path, const void *data, size_t len,
                         char *err);

/* mkdir -p. */
int dt_mkdirs(const char *path, char *err);

/* Monotonic seconds. */
double dt_now(void);

/* fp16 / bf16 <-> fp32 conversion (round to nearest even on the way down). */
float dt_f16_to_f32(uint16_t h);
uint16_t dt_f32_to_f16(float f);
float dt_bf16_to_f32(uint16_t h);
uint16_t dt_f32_to_bf16(float f);

#endif
