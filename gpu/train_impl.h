/* train_impl.h: what the training loop (train.c) shares with its data
 * order (train_data.c) and checkpoints (checkpoint.c). Not for use outside
 * gpu/train*.c, gpu/checkpoint.c and the unit tests of the batcher. */
#ifndef DT_TRAIN_IMPL_H
#define DT_TRAIN_IMPL_H

#include <stdint.h>

#include "dataset.h"
#include "train.h"

#define OPS (be->i)

/* The endless shuffled stream of rows: epoch e is a seeded Fisher-Yates
 * permutation, so position pos of the stream depends on the seed alone. */
typedef struct batcher {
    const dt_dataset *ds;
    uint64_t seed;
    int *perm;
    long perm_epoch;
    int32_t *ids, *tgt; /* (B, T) host */
    int B, T;
    long real;          /* tokens of the last batch that are not padding */
    int32_t *pos;       /* (B, T) host, packing: position within each row */
} batcher;

/* Fills rows [pos, pos+B) of the stream into bt->ids/tgt, padded to the
 * longest row (at most T); *t_out = positions, *ntok = unmasked targets,
 * bt->real = positions holding a token of a row (prompt and completion),
 * the rest being padding. */
int tr_batch_at(batcher *bt, long pos, int *t_out, long *ntok);

/* Packing (--packing): fills B sequences of up to T positions from the
 * stream at pos, each taking consecutive rows while they fit (at least one:
 * a row longer than T is cut to T, as unpacked), padded to the longest
 * sequence; bt->pos gets each token's position within its row (0 at
 * padding). *t_out, *ntok and bt->real as tr_batch_at. Returns the rows
 * taken: the next batch starts at pos + that. ids NULL: counts only. */
long tr_batch_packed(batcher *bt, long pos, int *t_out, long *ntok);

/* Optimizer steps of `epochs` passes over the data with packing: the
 * stream's rows packed as tr_batch_packed does, accum batches per step,
 * until epochs * nrows rows are taken. */
int64_t tr_packed_total_steps(batcher *bt, int epochs, int accum);

/* Mean loss over every row of ds (no gradient) into *out. */
int tr_eval_loss(dt_model *m, const dt_dataset *ds, int B, int T, double *out, char *err);

/* Uploads a PEFT adapter's factors (dt_peft_load) into the model's LoRA
 * A and B (--init-adapter; a checkpoint's merge): the model was built with
 * the adapter's rank, alpha and targets. */
struct dt_peft_adapter;
int tr_load_adapter(dt_model *m, const struct dt_peft_adapter *ad, char *err);

/* Writes the PEFT adapter of a lora or delta_lora model as it is now into
 * dir (for delta_lora the exact rank-2r adapter; moved: W has moved, so
 * A_K, B_K exist). The final export and every checkpoint use it. */
int tr_adapter_write(dt_model *m, const dt_train_opts *o, dt_weights *w, int moved,
                     const char *dir, char *err);

/* Writes checkpoint step-<opt->t> under o->out/checkpoints (temp dir,
 * fsync, rename, DONE): weights.safetensors (every trainable tensor and
 * every W that Delta-LoRA moves), optimizer.safetensors (their AdamW
 * moments) and, for lora and delta_lora, adapter/ (tr_adapter_write: the
 * checkpoint as a PEFT adapter on the base w). A failure leaves the
 * previous one newest. */
int tr_ckpt_save(dt_model *m, const dt_train_opts *o, dt_weights *w, const dt_optim *opt,
                 int64_t total, unsigned targets, long trained_tokens, long data_pos,
                 char *err);

/* A resume must share the settings that shape the run: method, rank, α, λ,
 * K, target modules, total steps, batch size, accumulation and packing (the data
 * position and the LR schedule follow from them). A checkpoint written with
 * others is refused, naming the setting (keys an older checkpoint lacks are
 * not checked). */
int tr_ckpt_check(const char *dir, const dt_train_opts *o, int64_t K, int64_t total,
                  unsigned targets, char *err);

/* Restores a checkpoint directory written by tr_ckpt_save (or an older
 * one-file state.safetensors). *data_pos: the stream position the next
 * step starts at (rows taken so far), -1 when the checkpoint predates it. */
int tr_ckpt_load(dt_model *m, const char *dir, dt_optim *opt, long *trained_tokens,
                 long *data_pos, char *err);

#endif
