/* cli.c: `deltatune`, the command line: engine subcommands (train, tokenize,
 * generate), the operator's database commands (api/admin.c) and the client
 * commands that speak the HTTP API (worker/client.c). */
#include <stdio.h>
#include <string.h>

#include "api/admin.h"
#include "gpu/cli_train.h"
#include "gpu/cpu_tune.h"
#include "worker/client.h"

static const char usage[] =
    "usage: deltatune <command> [options]\n"
    "\n"
    "commands:\n"
    "  train      fine-tune a model (full, lora, delta_lora)\n"
    "  tokenize   print the token ids of stdin\n"
    "  generate   complete a prompt with a model\n"
    "  migrate    apply database migrations\n"
    "  keys       create | list | revoke API keys\n"
    "  models     list | download (HTTP API); add | list --admin (database)\n"
    "  jobs       create | list | get | cancel | pause | resume | follow (HTTP API)\n"
    "  files      upload | list (HTTP API)\n"
    "\n"
    "'deltatune <command> --help' describes a command.\n";

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "jobs") || !strcmp(argv[1], "files"))
        return dt_client_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "models")) {
        int n = argc - 1;
        if (dt_client_handles_models(&n, argv + 1))
            return dt_client_main(n, argv + 1);
        return dt_admin_main(n, argv + 1);
    }
    if (!strcmp(argv[1], "migrate") || !strcmp(argv[1], "keys"))
        return dt_admin_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train") || !strcmp(argv[1], "generate"))
        dt_cpu_tune_reexec(argv); /* returns unless it re-executes */
    if (!strcmp(argv[1], "train"))
        return dt_cmd_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "tokenize"))
        return dt_cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(argv[1], "generate"))
        return dt_cmd_generate(argc - 1, argv + 1);
    fprintf(stderr, "deltatune: unknown command \"%s\"\n%s", argv[1], usage);
    return 2;
}
