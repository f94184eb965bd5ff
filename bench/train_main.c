/* train_main.c: `deltatune train` alone, for the lent GPU machine, which
 * lacks the service's libraries (libpq, hiredis, curl, microhttpd) that the
 * full CLI links. scripts/gpu-check builds it as $BUILD/deltatune-train from
 * the engine library and gpu/cli_train.c; bench/engine_gpu.py uses it when
 * $BUILD/deltatune is missing. Usage: deltatune-train train [OPTIONS]. */
#include "cli_train.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "train") != 0) {
        fprintf(stderr, "usage: %s train [OPTIONS] (see deltatune train --help)\n", argv[0]);
        return 2;
    }
    return dt_cmd_train(argc - 1, argv + 1);
}
