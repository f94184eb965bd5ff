/* hparams.c: the hyperparameter limits table. Change a limit here and the
 * API, the engine, `deltatune train` and (through the served OpenAPI
 * contract, which test_hparams checks against this table) the dashboard
 * all follow. */
#include "hparams.h"

#include <math.h>
#include <string.h>

#include "dt.h"

/* seed: any integer a JSON number represents exactly (2^53). */
const dt_hparam_limit dt_hparam_limits[DT_HP_COUNT] = {
    [DT_HP_N_EPOCHS] = {"n_epochs", "--epochs", DT_HPK_INT, 1, 100, 0},
    [DT_HP_BATCH_SIZE] = {"batch_size", "--batch-size", DT_HPK_INT, 1, 256, 0},
    [DT_HP_LEARNING_RATE] = {"learning_rate", "--lr", DT_HPK_NUM, 0, 1, 1},
    [DT_HP_LEARNING_RATE_MULTIPLIER] = {"learning_rate_multiplier", NULL, DT_HPK_NUM, 0, 100, 1},
    [DT_HP_RANK] = {"rank", "--rank", DT_HPK_INT, 1, 256, 0},
    [DT_HP_ALPHA] = {"alpha", "--alpha", DT_HPK_NUM, 0, 4096, 1},
    [DT_HP_LAMBDA] = {"lambda", "--lambda", DT_HPK_NUM, 0, 100, 0},
    [DT_HP_START_STEP] = {"start_step", "--start-step", DT_HPK_INT, -1, 1e7, 0},
    [DT_HP_TARGET_MODULES] = {"target_modules", "--target-modules", DT_HPK_STR, 0, 0, 0},
    [DT_HP_SEQ_LEN] = {"seq_len", "--seq-len", DT_HPK_INT, 8, 8192, 0},
    [DT_HP_WARMUP_STEPS] = {"warmup_steps", "--warmup-steps", DT_HPK_INT, 0, 1e6, 0},
    [DT_HP_WEIGHT_DECAY] = {"weight_decay", "--weight-decay", DT_HPK_NUM, 0, 1, 0},
    [DT_HP_MAX_GRAD_NORM] = {"max_grad_norm", "--max-grad-norm", DT_HPK_NUM, 0, 1e6, 0},
    [DT_HP_LR_SCHEDULER] = {"lr_scheduler", "--lr-scheduler", DT_HPK_STR, 0, 0, 0},
    [DT_HP_GRADIENT_ACCUMULATION_STEPS] = {"gradient_accumulation_steps", "--grad-accum", DT_HPK_INT, 1,
                                           1024, 0},
    [DT_HP_MAX_STEPS] = {"max_steps", "--steps", DT_HPK_INT, 0, 1e7, 0},
    [DT_HP_CHECKPOINT_INTERVAL] = {"checkpoint_interval", "--checkpoint-interval", DT_HPK_INT, 0, 1e7, 0},
    [DT_HP_EVAL_INTERVAL] = {"eval_interval", "--eval-interval", DT_HPK_INT, 0, 1e7, 0},
    [DT_HP_SEED] = {"seed", "--seed", DT_HPK_INT, 0, 9007199254740992.0, 0},
    [DT_HP_EXPORT_DTYPE] = {"export_dtype", "--export-dtype", DT_HPK_STR, 0, 0, 0},
    [DT_HP_PRECISION] = {"precision", "--precision", DT_HPK_STR, 0, 0, 0},
    /* a boolean: no numeric limits (DT_HPK_STR's "no number") */
    [DT_HP_PACKING] = {"packing", "--packing", DT_HPK_STR, 0, 0, 0},
};

const dt_hparam_limit *dt_hparam_find(const char *name)
{
    for (int i = 0; i < DT_HP_COUNT; i++)
        if (!strcmp(dt_hparam_limits[i].name, name))
            return &dt_hparam_limits[i];
    return NULL;
}

int dt_hparam_ok(dt_hp hp, double x)
{
    const dt_hparam_limit *h = &dt_hparam_limits[hp];
    if (h->kind == DT_HPK_STR)
        return 0;
    if (!isfinite(x) || x > h->max || x < h->min || (h->min_exclusive && x == h->min))
        return 0;
    return h->kind != DT_HPK_INT || x == floor(x);
}

int dt_hparam_check(dt_hp hp, double x, const char *what, char *err)
{
    const dt_hparam_limit *h = &dt_hparam_limits[hp];
    if (dt_hparam_ok(hp, x))
        return DT_OK;
    if (h->kind == DT_HPK_INT)
        return dt_errf(err, DT_EINVAL, "%s must be an integer between %.0f and %.0f, got %g",
                       what, h->min, h->max, x);
    return dt_errf(err, DT_EINVAL, "%s must be a number %s %g and <= %g, got %g", what,
                   h->min_exclusive ? ">" : ">=", h->min, h->max, x);
}
