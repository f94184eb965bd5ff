/* export.c: `deltatune export --gguf --type f16|q8_0|q4_0 MODEL OUT.gguf`:
 * a Hugging Face directory or a GGUF file the engine reads, written as a
 * GGUF file llama.cpp loads (gpu/gguf_write.h). Exit status 0 ok, 1 error,
 * 2 usage. */
#include "engine.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/dt.h"
#include "gpu/gguf_write.h"

static const char export_usage[] =
"usage: deltatune export --gguf [--type f16|q8_0|q4_0] MODEL OUT.gguf\n"
"Writes MODEL (a Hugging Face model directory or a .gguf file) as a GGUF v3\n"
"file that llama.cpp and Ollama load: Llama-family and GPT-2 models, with the\n"
"tokenizer and the chat template in the metadata.\n"
"  --type T   tensor type of the matrices: f16 (default), q8_0, q4_0;\n"
"             norms and biases stay f32; with q4_0 the output matrix is\n"
"             q8_0\n"
"  --quiet    no progress on stderr\n";

typedef struct progress_state {
    int tty, last_pct;
} progress_state;

/* Prints progress on stderr: a rewritten line on a terminal, otherwise a
 * line per 10%. */
static void on_progress(void *ud, int done, int total, const char *name)
{
    progress_state *p = ud;
    int pct = total ? done * 100 / total : 100;
    if (p->tty) {
        fprintf(stderr, "\rdeltatune export: %d/%d tensors (%d%%) %-32.32s",
                done, total, pct, name);
        if (done == total)
            fputc('\n', stderr);
    } else if (pct / 10 != p->last_pct / 10 || done == total) {
        fprintf(stderr, "deltatune export: %d/%d tensors (%d%%)\n", done,
                total, pct);
    }
    p->last_pct = pct;
    fflush(stderr);
}

int dt_cmd_export(int argc, char **argv)
{
    const char *type_s = "f16", *pos[2] = {NULL, NULL};
    int gguf = 0, quiet = 0, npos = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gguf")) {
            gguf = 1;
        } else if (!strcmp(argv[i], "--type") && i + 1 < argc) {
            type_s = argv[++i];
        } else if (!strncmp(argv[i], "--type=", 7)) {
            type_s = argv[i] + 7;
        } else if (!strcmp(argv[i], "--quiet")) {
            quiet = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(export_usage, stdout);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "deltatune export: unknown option \"%s\"\n%s",
                    argv[i], export_usage);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = argv[i];
        } else {
            fprintf(stderr, "deltatune export: unexpected argument \"%s\"\n%s",
                    argv[i], export_usage);
            return 2;
        }
    }
    if (!gguf || npos != 2) {
        fprintf(stderr, "deltatune export: %s\n%s",
                !gguf ? "--gguf is required (the one export format)"
                      : "MODEL and OUT.gguf are required", export_usage);
        return 2;
    }
    char err[DT_ERR_LEN] = "";
    dt_gguf_type type;
    if (dt_gguf_type_parse(type_s, &type, "--type", err) != DT_OK) {
        fprintf(stderr, "deltatune export: %s\n", err);
        return 2;
    }
    progress_state ps = {isatty(2), -1};
    int rc = dt_gguf_export(pos[0], type, pos[1], quiet ? NULL : on_progress,
                            &ps, err);
    if (rc) {
        fprintf(stderr, "deltatune export: %s\n",
                err[0] ? err : dt_strerror(rc));
        return 1;
    }
    if (!quiet)
        fprintf(stderr, "deltatune export: wrote %s (%s)\n", pos[1],
                dt_gguf_type_name(type));
    return 0;
}
