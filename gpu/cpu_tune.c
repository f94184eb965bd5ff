/* cpu_tune.c: see cpu_tune.h. */
#include "cpu_tune.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void dt_cpu_tune_reexec(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || getenv("DT_NO_BLAS_TUNE"))
        return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512cd") ||
        !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512dq") ||
        !__builtin_cpu_supports("avx512vl"))
        return;
    const char *core = openblas_get_corename();
    if (!core || (strcasecmp(core, "haswell") && strcasecmp(core, "zen")))
        return;
    if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); /* exec failed: carry on as we are */
}
