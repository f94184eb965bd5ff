/* engine.h: the engine's `deltatune` subcommands. Each takes the
 * subcommand's argv (argv[0] = the subcommand name) and returns an exit
 * status. */
#ifndef DT_CLI_ENGINE_H
#define DT_CLI_ENGINE_H

int dt_cmd_train(int argc, char **argv);
int dt_cmd_tokenize(int argc, char **argv);
int dt_cmd_generate(int argc, char **argv);
/* export.c */
int dt_cmd_export(int argc, char **argv);

#endif
