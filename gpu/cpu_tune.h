/* cpu_tune.h: picks OpenBLAS's fastest kernels on CPUs it does not know.
 *
 * OpenBLAS 0.3.21 (Debian 12) falls back to its Haswell (AVX2) sgemm on CPUs
 * newer than it knows (AMD Zen 4/5), although they run its SkylakeX
 * (AVX-512) kernels correctly and about twice as fast (bench/results/
 * engine-cpu.md). The core type is read once, when the library loads, from
 * OPENBLAS_CORETYPE, so a program that wants it sets the variable and
 * re-executes itself before doing anything else. */
#ifndef DT_CPU_TUNE_H
#define DT_CPU_TUNE_H

/* When OPENBLAS_CORETYPE and DT_NO_BLAS_TUNE are unset, the CPU has
 * AVX-512 F/CD/BW/DQ/VL and OpenBLAS chose Haswell or Zen kernels: sets
 * OPENBLAS_CORETYPE=SkylakeX and execv()s /proc/self/exe with argv. Returns
 * (doing nothing) in every other case, including a failed exec. */
void dt_cpu_tune_reexec(char **argv);

/* The core type dt_cpu_tune_reexec switches to for a CPU with (avx512 != 0)
 * or without AVX-512 F/CD/BW/DQ/VL whose OpenBLAS chose kernels `core`:
 * "SkylakeX" or NULL (keep OpenBLAS's choice). Pure: the rule itself. */
const char *dt_cpu_tune_target(const char *core, int avx512);

/* The kernels OpenBLAS runs in this process (openblas_get_corename) and how
 * they were chosen: "re-executed" (dt_cpu_tune_reexec switched them),
 * "OPENBLAS_CORETYPE" (set by the environment), "DT_NO_BLAS_TUNE" (tuning
 * turned off) or "OpenBLAS" (its own choice, which the rule keeps). For
 * the start-up logs of the programs that train. */
const char *dt_cpu_tune_core(const char **how);

#endif
