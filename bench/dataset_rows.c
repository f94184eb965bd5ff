/* dataset_rows.c: the token rows `deltatune train` trains on, for
 * bench/engine_cpu.py's chat workload, which feeds PyTorch the same ids and
 * checks transformers' apply_chat_template against them.
 *
 *   build/bench_rows MODEL DATA.jsonl SEQ_LEN
 *
 * Loads MODEL's tokenizer and DATA as the trainer does (dt_dataset_load with
 * seq_len) and prints one JSON line per row, in file order:
 *   {"ids": [...], "labels": [...]}
 * labels[i] is the target after ids[i] (-100: masked), as in gpu/dataset.h. */
#include <stdio.h>
#include <stdlib.h>

#include "base/dt.h"
#include "gpu/dataset.h"
#include "gpu/model.h"

static void print_ints(const char *key, const int32_t *v, int n)
{
    printf("\"%s\": [", key);
    for (int i = 0; i < n; i++)
        printf(i ? ", %d" : "%d", v[i]);
    putchar(']');
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL DATA.jsonl SEQ_LEN\n", argv[0]);
        return 2;
    }
    char err[DT_ERR_LEN] = "";
    dt_tokenizer *tok = dt_model_tokenizer(argv[1], err);
    if (!tok) {
        fprintf(stderr, "bench_rows: %s\n", err);
        return 1;
    }
    dt_dataset ds = {0};
    char *report = NULL;
    int rc = dt_dataset_load(argv[2], tok, atoi(argv[3]), &ds, &report, err);
    if (rc) {
        fprintf(stderr, "bench_rows: %s\n", report ? report : err);
    } else {
        for (int r = 0; r < ds.nrows; r++) {
            putchar('{');
            print_ints("ids", ds.rows[r].ids, ds.rows[r].n);
            printf(", ");
            print_ints("labels", ds.rows[r].labels, ds.rows[r].n);
            puts("}");
        }
    }
    free(report);
    dt_dataset_free(&ds);
    dt_tokenizer_free(tok);
    return rc ? 1 : 0;
}
