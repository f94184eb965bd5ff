/* cpu_tune.c: see cpu_tune.h. */
#include "cpu_tune.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Set (to "1") in the environment of the re-executed program, so that it can
 * tell its kernel choice was made here. */
#define DT_TUNED_ENV "DT_BLAS_TUNED"

const char *dt_cpu_tune_target(const char *core, int avx512)
{
    if (!avx512 || !core || (strcasecmp(core, "haswell") && strcasecmp(core, "zen")))
        return NULL;
    return "SkylakeX";
}

static int has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
}

void dt_cpu_tune_reexec(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || getenv("DT_NO_BLAS_TUNE"))
        return;
    const char *target = dt_cpu_tune_target(openblas_get_corename(), has_avx512());
    if (!target)
        return;
    if (setenv("OPENBLAS_CORETYPE", target, 1) != 0 ||
        setenv(DT_TUNED_ENV, "1", 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); /* exec failed: carry on as we are */
    unsetenv(DT_TUNED_ENV);
}

const char *dt_cpu_tune_core(const char **how)
{
    const char *tuned = getenv(DT_TUNED_ENV);
    if (tuned && !strcmp(tuned, "1") && getenv("OPENBLAS_CORETYPE"))
        *how = "re-executed";
    else if (getenv("OPENBLAS_CORETYPE"))
        *how = "OPENBLAS_CORETYPE";
    else if (getenv("DT_NO_BLAS_TUNE"))
        *how = "DT_NO_BLAS_TUNE";
    else
        *how = "OpenBLAS";
    const char *core = openblas_get_corename();
    return core ? core : "unknown";
}
