/* httputil.h: small HTTP parsers with no MHD dependency (unit-tested):
 * Range headers, ETags, paging parameters, ustar headers. */
#ifndef DT_SERVER_HTTPUTIL_H
#define DT_SERVER_HTTPUTIL_H

#include <stdint.h>

/* Parses a Range header against a resource of size bytes. Supports one
 * range: "bytes=a-b", "bytes=a-", "bytes=-n". Returns 0 with *start and *len
 * set, 1 when the header should be ignored (absent, not bytes, several
 * ranges, syntactically invalid: serve the whole body), or -1 when it is
 * valid but unsatisfiable (416: starts past the end, or "bytes=-0"). */
int http_parse_range(const char *h, int64_t size, int64_t *start, int64_t *len);

/* 1 when an If-None-Match value matches etag (a list, "*", or W/ forms). */
int http_etag_match(const char *if_none_match, const char *etag);

/* Parses a "limit" query value: NULL -> def; 1..max integer -> 0; else -1. */
int http_parse_limit(const char *s, int def, int max, int *out);

#define TAR_BLOCK 512
/* Writes a ustar header for a regular file. name may be up to 100 bytes,
 * or up to 255 split at a '/' into prefix (155) + name (100). Returns 0 or
 * -1 if the name does not fit or size exceeds 8 GiB - 1 (octal field). */
int tar_header(unsigned char out[TAR_BLOCK], const char *name, int64_t size,
               int64_t mtime, unsigned mode);
/* The head of an archive member: its ustar header, preceded by a pax
 * extended header ('x': path and/or size records) when the name does not
 * fit ustar or the size is 8 GiB or more. Writes the head to out and
 * returns its length (1, or 3 to 8 blocks), or -1 (empty name, negative
 * size, a name too long even for TAR_HEAD_MAX). */
#define TAR_HEAD_MAX (8 * TAR_BLOCK)
int tar_head(unsigned char out[TAR_HEAD_MAX], const char *name, int64_t size,
             int64_t mtime, unsigned mode);
/* Bytes an entry of size bytes takes in the archive (header + padded data). */
int64_t tar_entry_size(int64_t size);

#endif
