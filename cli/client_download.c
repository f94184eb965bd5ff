/* client_download.c: `deltatune models download MODEL [FILE] [-o DIR]
 * [--adapter | --merged]`.
 *
 * Lists the model's files with their sizes and SHA-256
 * (GET /v1/models/{id}/files), then fetches each one (or the one named)
 * from /v1/models/{id}/files/{name} into DIR/NAME.part and renames it to
 * DIR/NAME once its SHA-256 matches. An interrupted download leaves the
 * .part file; the next run asks only for the rest (Range: bytes=N-) and
 * hashes what is already there. A file already in place with the right
 * hash is not fetched again. On a terminal (stderr) a progress bar shows
 * the bytes, the rate and the ETA. A fine-tune's PEFT adapter is listed as
 * files under "adapter/": they land in DIR/adapter/, or, with --adapter,
 * only they are fetched, into DIR itself (a directory PEFT loads). */
#include "client_internal.h"
#include "base/clock.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct dl {
    cl_ctx *c;
    const char *name;      /* borrowed */
    FILE *f;               /* the .part file, appended to */
    EVP_MD_CTX *md;
    int64_t have;          /* bytes in the .part file (hashed) */
    int64_t total;         /* the file's size from the listing */
    int64_t start;         /* bytes present when this transfer began */
    long status;           /* HTTP status of this transfer */
    int restarted;         /* the server sent the whole file: started over */
    int werr;              /* a write to the .part file failed (errno) */
    cl_buf errbody;
    int bar;               /* draw a progress bar on stderr */
    double t0, last_draw;
} dl;

/* Hashes the first `bytes` of path into md. */
static int hash_file(EVP_MD_CTX *md, const char *path, int64_t bytes)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char buf[1 << 16];
    int64_t left = bytes;
    while (left > 0) {
        size_t want = left < (int64_t)sizeof buf ? (size_t)left : sizeof buf;
        size_t got = fread(buf, 1, want, f);
        if (got == 0) break;
        EVP_DigestUpdate(md, buf, got);
        left -= (int64_t)got;
    }
    fclose(f);
    return left ? -1 : 0;
}

static void hex_digest(EVP_MD_CTX *md, char out[65])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_DigestFinal_ex(md, d, &n);
    for (unsigned i = 0; i < n && i < 32; i++) sprintf(out + 2 * i, "%02x", d[i]);
    out[64] = 0;
}

static void draw(dl *d, int final)
{
    if (!d->bar) return;
    double now = dt_now();
    if (!final && now - d->last_draw < 0.1) return;
    d->last_draw = now;
    double el = now - d->t0, moved = (double)(d->have - d->start);
    double rate = moved / (el > 1e-3 ? el : 1e-3);
    char bar[40], got[32], tot[32], r[32], eta[32];
    cl_fmt_bar(bar, sizeof bar, 24, d->total ? (double)d->have / (double)d->total : 1);
    cl_fmt_bytes(got, sizeof got, (double)d->have);
    cl_fmt_bytes(tot, sizeof tot, (double)d->total);
    cl_fmt_bytes(r, sizeof r, rate);
    cl_fmt_dur(eta, sizeof eta, rate > 0 ? (double)(d->total - d->have) / rate : -1);
    fprintf(stderr, "\r%-24.24s [%s] %s / %s  %s/s  ETA %s\033[K", d->name, bar, got, tot, r,
            eta);
    fflush(stderr);
}

static size_t on_data(char *p, size_t sz, size_t n, void *ud)
{
    dl *d = ud;
    size_t len = sz * n;
    if (!d->status) {
        curl_easy_getinfo(d->c->curl, CURLINFO_RESPONSE_CODE, &d->status);
        if (d->status == 200 && d->have > 0) {
            /* The server sent the whole file, not the range: start over. */
            if (ftruncate(fileno(d->f), 0) || fseek(d->f, 0, SEEK_SET)) {
                d->werr = errno;
                return 0;
            }
            EVP_DigestInit_ex(d->md, EVP_sha256(), NULL);
            d->have = d->start = 0;
            d->restarted = 1;
        }
    }
    if (d->status != 200 && d->status != 206)
        return cl_buf_add(&d->errbody, p, len) ? 0 : len;
    if (fwrite(p, 1, len, d->f) != len) {
        d->werr = errno ? errno : EIO;
        return 0;
    }
    EVP_DigestUpdate(d->md, p, len);
    d->have += (int64_t)len;
    draw(d, 0);
    return len;
}

typedef struct dl_opts {
    cl_ctx *c;
    const char *out;
    curl_off_t rate;      /* bytes a second, 0 = no limit */
    int adapter;          /* --adapter: only the adapter/ files */
    int merged;           /* --merged: only the merged/ files (a checkpoint's) */
} dl_opts;

/* The directory prefix of a listed file: "adapter/" (a PEFT adapter),
 * "merged/" (a checkpoint's merged model) or "" (the model's own). */
static const char *prefix_of(const char *name)
{
    return !strncmp(name, "adapter/", 8) ? "adapter/" : !strncmp(name, "merged/", 7) ? "merged/"
                                                                                     : "";
}

/* Fetches one file. Returns 0 (ok, *how says "downloaded", "resumed" or
 * "present"), CL_EXIT_ERROR (printed). */
static int fetch(dl_opts *o, const char *model_esc, const char *dir, const char *name,
                 const char *local, int64_t bytes, const char *sha, const char **how)
{
    cl_ctx *c = o->c;
    char path[4200], part[4300], esc[1000], url[6000], got[65], range[64];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, local);
    snprintf(part, sizeof part, "%s.part", path);
    dl d = {.c = c, .name = name, .total = bytes, .md = EVP_MD_CTX_new(),
            .bar = !c->json && isatty(STDERR_FILENO)};
    int rc = CL_EXIT_ERROR;
    if (!d.md) goto out;

    /* Already there? */
    if (!stat(path, &st) && st.st_size == bytes) {
        EVP_DigestInit_ex(d.md, EVP_sha256(), NULL);
        if (!hash_file(d.md, path, bytes)) {
            hex_digest(d.md, got);
            if (!strcmp(got, sha)) {
                *how = "present";
                rc = 0;
                goto out;
            }
        }
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        EVP_DigestInit_ex(d.md, EVP_sha256(), NULL);
        d.have = 0;
        if (!stat(part, &st) && st.st_size > 0 && st.st_size <= bytes &&
            !hash_file(d.md, part, st.st_size)) {
            d.have = st.st_size;
        } else {
            EVP_DigestInit_ex(d.md, EVP_sha256(), NULL);
            if (unlink(part) && errno != ENOENT) {
                fprintf(stderr, "deltatune %s: %s: %s\n", c->cmd, part, strerror(errno));
                goto out;
            }
        }
        d.start = d.have;
        d.restarted = 0;
        *how = d.have ? "resumed" : "downloaded";
        if (d.have)
            fprintf(stderr, "%s: resuming at byte %lld of %lld (%s)\n", name,
                    (long long)d.have, (long long)bytes, part);
        if (d.have < bytes || bytes == 0) {
            if (!(d.f = fopen(part, "ab"))) {
                fprintf(stderr, "deltatune %s: %s: %s\n", c->cmd, part, strerror(errno));
                goto out;
            }
            /* "adapter/NAME", "merged/NAME": the prefix stays a path segment */
            const char *pre = prefix_of(name);
            snprintf(url, sizeof url, "%s/v1/models/%s/files/%s%s", c->url, model_esc,
                     pre, cl_esc(esc, sizeof esc, name + strlen(pre)));
            struct curl_slist *h = NULL;
            if (d.have) {
                snprintf(range, sizeof range, "Range: bytes=%lld-", (long long)d.have);
                h = curl_slist_append(h, range);
            }
            h = cl_prepare(c, url, h);
            curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_data);
            curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &d);
            if (o->rate) curl_easy_setopt(c->curl, CURLOPT_MAX_RECV_SPEED_LARGE, o->rate);
            d.status = 0;
            d.errbody.n = 0;
            d.t0 = dt_now();
            d.last_draw = 0;
            CURLcode cr = curl_easy_perform(c->curl);
            curl_slist_free_all(h);
            if (!d.status) curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &d.status);
            int ok_flush = fflush(d.f) == 0 && fsync(fileno(d.f)) == 0;
            if (!ok_flush && !d.werr) d.werr = errno;
            fclose(d.f);
            d.f = NULL;
            draw(&d, 1);
            if (d.bar) fputs("\r\033[K", stderr);
            if (d.werr) {
                fprintf(stderr, "deltatune %s: writing %s: %s\n", c->cmd, part, strerror(d.werr));
                goto out;
            }
            if (d.status == 416 && attempt == 0) {
                unlink(part); /* our .part does not fit the file: start over */
                continue;
            }
            if (d.status && d.status != 200 && d.status != 206) {
                cl_print_api_error(c, url, d.status, &d.errbody);
                goto out;
            }
            if (cr != CURLE_OK) {
                cl_print_net_error(c, url, cr);
                fprintf(stderr, "deltatune %s: %lld of %lld bytes are in %s; run the same "
                                "command again to resume\n", c->cmd, (long long)d.have,
                        (long long)bytes, part);
                goto out;
            }
            if (d.restarted) *how = "downloaded";
        }
        hex_digest(d.md, got);
        if (d.have == bytes && !strcmp(got, sha)) {
            if (rename(part, path)) {
                fprintf(stderr, "deltatune %s: rename %s: %s\n", c->cmd, part, strerror(errno));
                goto out;
            }
            rc = 0;
            goto out;
        }
        unlink(part);
        if (d.start > 0 && attempt == 0) {
            fprintf(stderr, "%s: the resumed file does not match its sha256; downloading it "
                            "again from the start\n", name);
            continue;
        }
        fprintf(stderr, "deltatune %s: %s: got %lld bytes with sha256 %s; the API lists %lld "
                        "bytes with sha256 %s\n", c->cmd, name, (long long)d.have, got,
                (long long)bytes, sha);
        goto out;
    }
out:
    if (d.f) fclose(d.f);
    EVP_MD_CTX_free(d.md);
    cl_buf_free(&d.errbody);
    return rc;
}

/* mkdir -p */
static int make_dirs(const char *dir)
{
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return -1;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) && errno != EEXIST) return -1;
        *s = '/';
    }
    return mkdir(p, 0755) && errno != EEXIST ? -1 : 0;
}

enum { O_OUT = 'o', O_RATE = CL_O_FIRST_OWN, O_ADAPTER, O_MERGED };

static int dl_opt(void *ud, int id, const char *arg)
{
    dl_opts *o = ud;
    if (id == O_OUT) {
        o->out = arg;
        return 0;
    }
    if (id == O_ADAPTER || id == O_MERGED) {
        *(id == O_ADAPTER ? &o->adapter : &o->merged) = 1;
        if (o->adapter && o->merged) {
            fprintf(stderr, "deltatune %s: --adapter and --merged exclude each other\n",
                    o->c->cmd);
            return -1;
        }
        return 0;
    }
    char *end;
    double v = strtod(arg, &end);
    double mul = !*end ? 1 : (!strcmp(end, "k") || !strcmp(end, "K")) ? 1024
               : (!strcmp(end, "m") || !strcmp(end, "M")) ? 1024 * 1024 : -1;
    if (end == arg || mul < 0 || !(v * mul >= 1) || v * mul > 1e15) {
        fprintf(stderr, "deltatune %s: --limit-rate: \"%s\" is not a rate like 500k or 2M "
                        "(bytes a second)\n", o->c->cmd, arg);
        return -1;
    }
    o->rate = (curl_off_t)(v * mul);
    return 0;
}

static const char download_help[] =
    "usage: deltatune models download MODEL [FILE] [options]\n"
    "\n"
    "Downloads a model's files (a fine-tuned model's merged Hugging Face\n"
    "directory, a checkpoint, or a base model), or only FILE, and checks each\n"
    "file's SHA-256 against GET /v1/models/MODEL/files. Files arrive as\n"
    "NAME.part and are renamed when they match; an interrupted download resumes\n"
    "from its .part file (HTTP Range), a file already present with the right\n"
    "hash is skipped. Prints one line per file: name, bytes, sha256, and\n"
    "downloaded | resumed | present (--json: one JSON object per file).\n"
    "\n"
    "  -o, --output DIR     where to write (default: the model id with ':' and '/'\n"
    "                       replaced by '_', in the current directory)\n"
    "  --limit-rate RATE    at most RATE bytes a second (suffix k or M)\n"
    "  --adapter            only the fine-tune's PEFT adapter (the files listed\n"
    "                       under adapter/), into DIR (default: the model's\n"
    "                       directory above, then adapter/); without it they\n"
    "                       land in DIR/adapter/\n"
    "  --merged             only a checkpoint's merged model (the files listed\n"
    "                       under merged/, built by POST /v1/models/MODEL/exports\n"
    "                       {\"format\": \"hf\"}), into DIR as the Hugging Face\n"
    "                       directory transformers loads (default: the model's\n"
    "                       directory above, then merged/); without it they land\n"
    "                       in DIR/merged/\n"
    CL_COMMON_HELP;

int cl_models_download(int argc, char **argv)
{
    static const struct option opts[] = {
        CL_COMMON_OPTS, {"output", required_argument, 0, O_OUT},
        {"limit-rate", required_argument, 0, O_RATE},
        {"adapter", no_argument, 0, O_ADAPTER}, {"merged", no_argument, 0, O_MERGED},
        {0, 0, 0, 0}};
    cl_ctx c;
    cl_init(&c, "models download");
    dl_opts o = {.c = &c};
    const char *pos[2];
    int np, rc = cl_parse(&c, argc, argv, opts, download_help, dl_opt, &o, pos, 2, &np);
    if (rc) return rc == CL_HELP_SHOWN ? 0 : rc;
    if (np < 1) {
        fprintf(stderr, "deltatune models download: give the model id\n%s", download_help);
        return CL_EXIT_USAGE;
    }
    const char *model = pos[0], *only = np > 1 ? pos[1] : NULL;
    char dir[1024], mesc[1200], path[1400];
    if (o.out) {
        snprintf(dir, sizeof dir, "%s", o.out);
    } else {
        snprintf(dir, sizeof dir, "%s", model);
        for (char *s = dir; *s; s++)
            if (*s == ':' || *s == '/') *s = '_';
        if (o.adapter && strlen(dir) + 8 < sizeof dir)
            strcat(dir, "/adapter");
        if (o.merged && strlen(dir) + 7 < sizeof dir)
            strcat(dir, "/merged");
    }
    if ((rc = cl_connect(&c))) return rc;
    cl_esc(mesc, sizeof mesc, model);
    snprintf(path, sizeof path, "/v1/models/%s/files", mesc);
    json_t *l;
    if ((rc = cl_call(&c, "GET", path, NULL, NULL, NULL, &l))) goto done;
    json_t *files = json_object_get(l, "data");
    size_t i;
    json_t *f;
    int found = 0;
    json_array_foreach(files, i, f) {
        const char *name = cl_str(f, "name");
        /* --adapter / --merged: the files under that prefix, into DIR */
        const char *pre = prefix_of(name), *want = o.adapter ? "adapter/" : o.merged ? "merged/"
                                                                                   : NULL;
        const char *base = name + strlen(pre), *local = want ? base : name;
        if (only && strcmp(name, only) && !(want && !strcmp(base, only))) continue;
        if (want && strcmp(pre, want)) continue;
        found++;
        if (!base[0] || base[0] == '.' || strchr(base, '/') ||
            strlen(cl_str(f, "sha256")) != 64) {
            fprintf(stderr, "deltatune %s: the server lists an unusable file \"%s\"\n", c.cmd,
                    name);
            rc = CL_EXIT_ERROR;
            break;
        }
        if (found == 1 && make_dirs(dir)) {
            fprintf(stderr, "deltatune %s: cannot create %s: %s\n", c.cmd, dir, strerror(errno));
            rc = CL_EXIT_ERROR;
            break;
        }
        char sub[1100];
        snprintf(sub, sizeof sub, "%s/%s", dir, pre);
        if (pre[0] && !want && make_dirs(sub)) {
            fprintf(stderr, "deltatune %s: cannot create %s: %s\n", c.cmd, sub, strerror(errno));
            rc = CL_EXIT_ERROR;
            break;
        }
        const char *how = "";
        int64_t bytes = (int64_t)cl_num(f, "bytes", 0);
        if ((rc = fetch(&o, mesc, dir, name, local, bytes, cl_str(f, "sha256"), &how))) break;
        if (c.json) {
            json_t *r = json_pack("{s:s, s:I, s:s, s:s++, s:s}", "name", name, "bytes",
                                  (json_int_t)bytes, "sha256", cl_str(f, "sha256"), "path",
                                  dir, "/", local, "status", how);
            cl_print_json(r, 0);
            json_decref(r);
        } else {
            printf("%-28s %12lld  sha256 %.16s…  %s\n", name, (long long)bytes,
                   cl_str(f, "sha256"), how);
            fflush(stdout);
        }
    }
    if (!rc && !found) {
        if (only)
            fprintf(stderr, "deltatune %s: model %s has no file \"%s\"\n", c.cmd, model, only);
        else if (o.adapter)
            fprintf(stderr, "deltatune %s: model %s has no adapter (only lora and "
                    "delta_lora fine-tunes have one)\n", c.cmd, model);
        else if (o.merged)
            fprintf(stderr, "deltatune %s: model %s lists no merged/ files: a checkpoint's "
                    "merged model is built by POST /v1/models/%s/exports {\"format\": "
                    "\"hf\"} (a fine-tuned model is a merged directory: download it "
                    "without --merged)\n", c.cmd, model, model);
        else
            fprintf(stderr, "deltatune %s: model %s lists no files\n", c.cmd, model);
        rc = CL_EXIT_ERROR;
    }
    if (!rc && !c.json && !only)
        fprintf(stderr, "%d file%s in %s\n", found, found == 1 ? "" : "s", dir);
    json_decref(l);
done:
    cl_close(&c);
    return rc;
}
