/* dt.c: error strings and the allocation helper. */
#include "dt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *dt_strerror(int code)
{
    switch (code) {
    case DT_OK: return "ok";
    case DT_EINVAL: return "invalid argument";
    case DT_EIO: return "I/O error";
    case DT_ENOMEM: return "out of memory";
    case DT_EFORMAT: return "malformed file";
    case DT_ENOTSUP: return "not supported";
    case DT_ECANCEL: return "cancelled";
    case DT_EDEVICE: return "device error";
    case DT_ENAN: return "loss is not finite";
    default: return "unknown error";
    }
}

int dt_errf(char *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, DT_ERR_LEN, fmt, ap);
        va_end(ap);
    }
    return code;
}

void *dt_calloc(size_t n, size_t size)
{
    if (n == 0 || size == 0)
        return calloc(1, 1);
    return calloc(n, size);
}
