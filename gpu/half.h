/* half.h: fp16 / bf16 <-> fp32 conversion (round to nearest even on the way
 * down; NaN stays NaN). Used by the tensor-file readers and writers. */
#ifndef DT_HALF_H
#define DT_HALF_H

#include <stdint.h>

float dt_f16_to_f32(uint16_t h);
uint16_t dt_f32_to_f16(float f);
float dt_bf16_to_f32(uint16_t h);
uint16_t dt_f32_to_bf16(float f);

#endif
