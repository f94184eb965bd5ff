/* job_opts.h: a job row's hyperparameters as the engine's dt_train_opts.
 * (Engine side of the worker; see glue.h for why this is a header apart.) */
#ifndef DT_WORKER_JOB_OPTS_H
#define DT_WORKER_JOB_OPTS_H

#include "api/db.h"
#include "gpu/train.h"

/* Fills o from dt_train_defaults() and the job's resolved hyperparameters:
 * method, rank, alpha, lambda, start_step, learning_rate, n_epochs,
 * batch_size, gradient accumulation, seq_len, max_steps, seed,
 * target_modules, warmup_steps, weight_decay, max_grad_norm, lr_scheduler,
 * checkpoint and eval intervals (0 = the worker's choice for train_rows of
 * data). Paths, device and callbacks are left for the caller. Returns 0, or
 * DT_EINVAL naming the field in err (an unknown method or scheduler). */
int wk_job_opts(const db_job *j, long train_rows, dt_train_opts *o, char *err);

#endif
