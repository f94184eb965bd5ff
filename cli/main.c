/* main.c: `deltatune`, the command line: the engine's commands (train,
 * tokenize, generate; engine.c), the operator's database commands
 * (migrate, keys, owners, models add|list --admin; admin.c) and the client commands
 * that speak the HTTP API (jobs, files, models list|download|delete;
 * client*.c; --url and --api-key may come before the command).
 *
 * Built with -DDT_CLI_ENGINE_ONLY the same file is `deltatune-train`: the
 * engine's commands alone, linked with the engine and the base only (no
 * libpq, hiredis, curl or microhttpd), for machines that have nothing but a
 * compiler, BLAS and CUDA (scripts/gpu-check, bench/engine_gpu.py). */
#include <stdio.h>
#include <string.h>

#include "engine.h"
#include "gpu/cpu_tune.h"
#ifndef DT_CLI_ENGINE_ONLY
#include "admin.h"
#include "client.h"
#endif

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] = the command's name */
    int blas_tune;                     /* re-exec with the fastest BLAS kernels first */
    const char *help;
} command;

#ifndef DT_CLI_ENGINE_ONLY
/* `models list|download` are client commands; `models add` and
 * `models list --admin` talk to the database. */
static int models_main(int argc, char **argv)
{
    if (dt_client_handles_models(&argc, argv))
        return dt_client_main(argc, argv);
    return dt_admin_main(argc, argv);
}
#endif

static const command commands[] = {
    {"train", dt_cmd_train, 1, "fine-tune a model (full, lora, delta_lora)"},
    {"tokenize", dt_cmd_tokenize, 0, "print the token ids of stdin"},
    {"generate", dt_cmd_generate, 1, "complete a prompt with a model"},
#ifndef DT_CLI_ENGINE_ONLY
    {"migrate", dt_admin_main, 0, "apply database migrations"},
    {"keys", dt_admin_main, 0, "create | list | revoke API keys"},
    {"owners", dt_admin_main, 0, "set | list per-owner limits (jobs, storage, upload)"},
    {"models", models_main, 0, "list | download | delete (HTTP API); add | list --admin (database)"},
    {"jobs", dt_client_main, 0, "create | list | get | cancel | pause | resume | follow (HTTP API)"},
    {"files", dt_client_main, 0, "upload | list | delete (HTTP API)"},
    {"chat", cl_cmd_chat, 0, "chat with a model, answers streamed (HTTP API)"},
#endif
};
#define NCOMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void usage(FILE *f, const char *prog)
{
    fprintf(f, "usage: %s <command> [options]\n\ncommands:\n", prog);
    for (int i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n'%s <command> --help' describes a command.\n", prog);
}

int main(int argc, char **argv)
{
#ifdef DT_CLI_ENGINE_ONLY
    const char *prog = "deltatune-train";
#else
    const char *prog = "deltatune";
#endif
#ifndef DT_CLI_ENGINE_ONLY
    if (argc > 1) dt_client_hoist_globals(argc, argv, 1); /* deltatune --url U jobs ... */
#endif
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout, prog);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < NCOMMANDS; i++) {
        if (strcmp(argv[1], commands[i].name) != 0)
            continue;
        if (commands[i].blas_tune)
            dt_cpu_tune_reexec(argv); /* returns unless it re-executes */
        return commands[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "%s: unknown command \"%s\"\n", prog, argv[1]);
    usage(stderr, prog);
    return 2;
}
