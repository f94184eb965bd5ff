/* hparams.h: the training hyperparameters' limits, written once.
 *
 * One table says which values of each hyperparameter are accepted. Every
 * reader takes its bounds from here: the API's job validation
 * (api/validate.c), the engine's option check (gpu/train.c, which also
 * serves `deltatune train`), the OpenAPI contract (api/openapi.yaml; a unit
 * test proves its minimum/maximum equal this table) and, through the served
 * contract, the dashboard's form. */
#ifndef DT_HPARAMS_H
#define DT_HPARAMS_H

typedef enum dt_hp {
    DT_HP_N_EPOCHS,
    DT_HP_BATCH_SIZE,
    DT_HP_LEARNING_RATE,
    DT_HP_LEARNING_RATE_MULTIPLIER,
    DT_HP_RANK,
    DT_HP_ALPHA,
    DT_HP_LAMBDA,
    DT_HP_START_STEP,
    DT_HP_TARGET_MODULES,
    DT_HP_SEQ_LEN,
    DT_HP_WARMUP_STEPS,
    DT_HP_WEIGHT_DECAY,
    DT_HP_MAX_GRAD_NORM,
    DT_HP_LR_SCHEDULER,
    DT_HP_GRADIENT_ACCUMULATION_STEPS,
    DT_HP_MAX_STEPS,
    DT_HP_CHECKPOINT_INTERVAL,
    DT_HP_EVAL_INTERVAL,
    DT_HP_SEED,
    DT_HP_EXPORT_DTYPE,
    DT_HP_PRECISION,
    DT_HP_PACKING,
    DT_HP_COUNT
} dt_hp;

typedef enum { DT_HPK_INT, DT_HPK_NUM, DT_HPK_STR } dt_hp_kind;

typedef struct dt_hparam_limit {
    const char *name;  /* the API's name: hyperparameters.<name> */
    const char *flag;  /* `deltatune train`'s flag, NULL when it has none */
    dt_hp_kind kind;   /* DT_HPK_STR: a name or list, no numeric limits */
    double min, max;   /* inclusive, except min when min_exclusive */
    int min_exclusive;
} dt_hparam_limit;

/* Indexed by dt_hp; every entry filled. */
extern const dt_hparam_limit dt_hparam_limits[DT_HP_COUNT];

/* The entry named name (API name), or NULL. */
const dt_hparam_limit *dt_hparam_find(const char *name);

/* 1 when x is within hp's limits (and an integer where it must be); 0 for
 * the DT_HPK_STR entries, which take no number. */
int dt_hparam_ok(dt_hp hp, double x);

/* DT_OK when x is within hp's limits; otherwise DT_EINVAL with a message
 * in err naming `what` (a flag or a field path) and the accepted range:
 * "--rank must be an integer between 1 and 256, got 300". */
int dt_hparam_check(dt_hp hp, double x, const char *what, char *err);

#endif
