/* cli.c: `deltatune`, the command line: engine subcommands (train, tokenize,
 * generate). */
#include <stdio.h>
#include <string.h>

#include "api/admin.h"
#include "gpu/cli_train.h"
#include "gpu/cpu_tune.h"

static const char usage[] =
    "usage: deltatune <command> [options]\n"
    "\n"
    "commands:\n"
    "  train      fine-tune a model (full, lora, delta_lora)\n"
    "  tokenize   print the token ids of stdin\n"
    "  generate   complete a prompt with a model\n"
    "  migrate    apply database migrations\n"
    "  keys       create | list | revoke API keys\n"
    "  models     add | list base models\n"
    "\n"
    "'deltatune <command> --help' describes a command.\n";

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "migrate") || !strcmp(argv[1], "keys") || !strcmp(argv[1], "models"))
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
