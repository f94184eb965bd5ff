/* client.h: `deltatune jobs | files | models list|download|delete`, the
 * client commands (cli/client*.c). They speak only the public HTTP API at
 * $DELTATUNE_URL with $DELTATUNE_API_KEY (--url and --api-key override), so
 * they work from any machine that can reach the server. */
#ifndef DT_CLI_CLIENT_H
#define DT_CLI_CLIENT_H

/* argv[0] is "jobs", "files" or "models"; argv[1] the subcommand. Returns
 * the process exit status: 0 ok, 1 API or network error, 2 bad usage;
 * `jobs follow` and `jobs create --follow` 0 when the job succeeded, 3 when
 * it failed, 4 when it was cancelled. */
int dt_client_main(int argc, char **argv);

/* `deltatune chat MODEL` (argv[0] == "chat"): chat over POST
 * /v1/chat/completions, streamed; 0, or 1 on an API or network error, 2 on
 * bad usage (client_chat.c). */
int cl_cmd_chat(int argc, char **argv);

/* Decides who answers `deltatune models ...` (argv[0] == "models"): the
 * client (returns 1) for `download` and `delete`, for `list` when an API key is given
 * (--api-key or $DELTATUNE_API_KEY) and for `--help`; the operator's
 * database command (returns 0) for `add` and for `list` with `--admin` or
 * without a key. Removes `--admin` from argv (updating *argc). */
int dt_client_handles_models(int *argc, char **argv);

/* Moves the --url/--api-key options (with their values) found at argv[start]
 * onwards, before anything else, to the end of argv, so that they may be
 * written before the command ("deltatune --url U jobs list", "deltatune jobs
 * --api-key K list") as well as after it. */
void dt_client_hoist_globals(int argc, char **argv, int start);

#endif
