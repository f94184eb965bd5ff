/* admin.h: `deltatune migrate | keys ... | models ...`, the operator's
 * commands (wired into cli/main.c). */
#ifndef DT_CLI_ADMIN_H
#define DT_CLI_ADMIN_H

/* argv[0] is the subcommand: "migrate", "keys" or "models". Returns the
 * process exit status (0 ok, 1 failure, 2 usage). */
int dt_admin_main(int argc, char **argv);

#endif
