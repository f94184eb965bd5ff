/* id.c: random object ids. */
#include "id.h"

#include <string.h>

#include "dt.h"
#include "random.h"

int dt_id_new(const char *prefix, char *out, size_t outlen)
{
    static const char hx[] = "0123456789abcdef";
    unsigned char r[DT_ID_RANDOM_HEX / 2];
    size_t pl = strlen(prefix);
    if (outlen < pl + DT_ID_RANDOM_HEX + 1)
        return DT_EINVAL;
    if (dt_random_bytes(r, sizeof r))
        return DT_EIO;
    memcpy(out, prefix, pl);
    for (size_t i = 0; i < sizeof r; i++) {
        out[pl + 2 * i] = hx[r[i] >> 4];
        out[pl + 2 * i + 1] = hx[r[i] & 15];
    }
    out[pl + DT_ID_RANDOM_HEX] = 0;
    return DT_OK;
}
