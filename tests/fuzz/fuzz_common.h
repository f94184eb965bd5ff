/* fuzz_common.h: helpers shared by the libFuzzer targets (tests/fuzz/).
 *
 * Parsers that read files get the input as an anonymous in-memory file
 * (memfd) opened through its /proc/self/fd/N path, so nothing touches the
 * disk; those that read a directory get a private temp directory that is
 * removed at exit. */
#ifndef DT_FUZZ_COMMON_H
#define DT_FUZZ_COMMON_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Writes data into a new memfd and its path into path (64 bytes). Returns
 * the fd (close it when done) or -1. */
static inline int fuzz_memfd(const uint8_t *data, size_t n, char path[64])
{
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    if (fd < 0) { perror("memfd_create"); abort(); }
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, data + done, n - done);
        if (w <= 0) { perror("memfd write"); abort(); }
        done += (size_t)w;
    }
    snprintf(path, 64, "/proc/self/fd/%d", fd);
    return fd;
}

/* Writes data to dir/name (truncating); aborts on failure (not a finding). */
static inline void fuzz_write(const char *dir, const char *name, const void *data, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) { perror(path); abort(); }
}

static inline void fuzz_unlink(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

/* Removes the files of a flat (or one level nested) directory, then it. */
static inline void fuzz_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path)) fuzz_rmtree(path);
    }
    closedir(d);
    rmdir(dir);
}

/* A private temp directory, removed at exit. */
static char fuzz_tmpdir_path[256];
static inline void fuzz_tmpdir_cleanup(void) { fuzz_rmtree(fuzz_tmpdir_path); }
static inline const char *fuzz_tmpdir(void)
{
    if (!fuzz_tmpdir_path[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fuzz_tmpdir_path, sizeof fuzz_tmpdir_path, "%s/dt-fuzz-XXXXXX",
                 t && *t ? t : "/tmp");
        if (!mkdtemp(fuzz_tmpdir_path)) { perror("mkdtemp"); abort(); }
        atexit(fuzz_tmpdir_cleanup);
    }
    return fuzz_tmpdir_path;
}

#endif
