/* cuda_bf16.h (emulated): the bf16 type and its conversions (round to
 * nearest even, NaN kept quiet), as the device library has them. */
#ifndef DT_CUDA_EMU_BF16_H
#define DT_CUDA_EMU_BF16_H

#include <stdint.h>
#include <string.h>

#include "cuda_runtime.h"

struct __nv_bfloat16 {
    uint16_t x;
};

static inline __nv_bfloat16 __float2bfloat16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        b.x = (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    else
        b.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return b;
}

static inline float __bfloat162float(__nv_bfloat16 b)
{
    uint32_t u = (uint32_t)b.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#endif
