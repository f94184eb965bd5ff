/* file.h: whole-file helpers: read, write atomically, mkdir -p, and a
 * read-only memory map (the one mmap in the code base: safetensors and GGUF
 * readers use it). */
#ifndef DT_FILE_H
#define DT_FILE_H

#include <stddef.h>
#include <stdint.h>

/* Reads a whole file. *out is a new malloc'd buffer (NUL-terminated, the
 * terminator not counted in *len). */
int dt_read_file(const char *path, char **out, size_t *len, char *err);

/* Writes a whole file atomically: path.tmp, fsync, rename, fsync dir. */
int dt_write_file_atomic(const char *path, const void *data, size_t len,
                         char *err);

/* mkdir -p. */
int dt_mkdirs(const char *path, char *err);

/* A read-only private mapping of a whole regular file. */
typedef struct dt_map {
    const uint8_t *data; /* borrowed until dt_file_unmap */
    uint64_t size;       /* bytes */
} dt_map;

/* Maps path. DT_EIO when it cannot be opened or is not a regular file,
 * DT_EFORMAT ("file truncated") when it is shorter than min_size bytes; the
 * message names the file. On success the caller owns *m (dt_file_unmap). */
int dt_file_map(const char *path, uint64_t min_size, dt_map *m, char *err);

/* Unmaps; a zeroed or already unmapped dt_map is fine. */
void dt_file_unmap(dt_map *m);

#endif
