/* train_data.c: the order rows are trained in (a seeded permutation per
 * epoch, so a resumed run needs only the step number), batches padded to
 * their longest row, and the validation loss. */
#include <math.h>
#include <stdlib.h>

#include "base/dt.h"
#include "base/random.h"
#include "train_impl.h"

/* perm = the shuffled row order of epoch e (Fisher-Yates, seeded). */
static void epoch_perm(int *perm, int n, uint64_t seed, long e)
{
    uint64_t s = dt_mix64(seed ^ dt_mix64((uint64_t)e + 1));
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        s = dt_mix64(s);
        int j = (int)(s % (uint64_t)(i + 1));
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}


/* Fills rows [pos, pos+B) of the endless shuffled stream, padded to the
 * longest row; returns t (positions) and the unmasked target count. */
int tr_batch_at(batcher *bt, long pos, int *t_out, long *ntok)
{
    const dt_dataset *ds = bt->ds;
    int t = 1;
    int rows[1024];
    for (int i = 0; i < bt->B; i++) {
        long p = pos + i, e = p / ds->nrows;
        if (e != bt->perm_epoch) {
            epoch_perm(bt->perm, ds->nrows, bt->seed, e);
            bt->perm_epoch = e;
        }
        rows[i] = bt->perm[p % ds->nrows];
        int n = ds->rows[rows[i]].n - 1;
        if (n > t)
            t = n;
    }
    if (t > bt->T)
        t = bt->T;
    long cnt = 0;
    bt->real = 0;
    for (int i = 0; i < bt->B; i++) {
        const dt_row *r = &ds->rows[rows[i]];
        int n = r->n - 1 < t ? r->n - 1 : t;
        bt->real += n;
        for (int j = 0; j < t; j++) {
            bt->ids[i * t + j] = j < n ? r->ids[j] : 0;
            bt->tgt[i * t + j] = j < n ? r->labels[j] : -100;
            cnt += j < n && r->labels[j] != -100;
        }
    }
    *t_out = t;
    *ntok = cnt;
    return 0;
}

/* The dataset row at position p of the stream. */
static const dt_row *stream_row(batcher *bt, long p)
{
    const dt_dataset *ds = bt->ds;
    long e = p / ds->nrows;
    if (e != bt->perm_epoch) {
        epoch_perm(bt->perm, ds->nrows, bt->seed, e);
        bt->perm_epoch = e;
    }
    return &ds->rows[bt->perm[p % ds->nrows]];
}

/* Input positions of a row: its tokens but the last, at most T. */
static int row_inputs(const dt_row *r, int T)
{
    int n = r->n - 1;
    return n < 0 ? 0 : n > T ? T : n;
}

long tr_batch_packed(batcher *bt, long pos, int *t_out, long *ntok)
{
    long p = pos, cnt = 0;
    int t = 1;
    int nrow[1024];
    long first[1024];
    bt->real = 0;
    for (int i = 0; i < bt->B; i++) {
        int len = 0, k = 0;
        first[i] = p;
        for (;;) {
            int n = row_inputs(stream_row(bt, p), bt->T);
            if (k > 0 && len + n > bt->T)
                break;
            len += n;
            k++;
            p++;
        }
        nrow[i] = k;
        if (len > t)
            t = len;
        bt->real += len;
    }
    for (int i = 0; bt->ids && i < bt->B; i++) {
        int32_t *ids = bt->ids + (long)i * t, *tgt = bt->tgt + (long)i * t;
        int32_t *ps = bt->pos + (long)i * t;
        int at = 0;
        for (int r = 0; r < nrow[i]; r++) {
            const dt_row *row = stream_row(bt, first[i] + r);
            int n = row_inputs(row, bt->T);
            for (int j = 0; j < n; j++, at++) {
                ids[at] = row->ids[j];
                tgt[at] = row->labels[j];
                ps[at] = j;
                cnt += row->labels[j] != -100;
            }
        }
        for (; at < t; at++) { /* padding: a row of one position each */
            ids[at] = 0;
            tgt[at] = -100;
            ps[at] = 0;
        }
    }
    *t_out = t;
    *ntok = cnt;
    return p - pos;
}

int64_t tr_packed_total_steps(batcher *bt, int epochs, int accum)
{
    long end = (long)(epochs > 0 ? epochs : 1) * bt->ds->nrows, p = 0;
    int64_t steps = 0;
    int t;
    long nt;
    while (p < end) {
        for (int g = 0; g < accum; g++)
            p += tr_batch_packed(bt, p, &t, &nt);
        steps++;
    }
    return steps;
}

/* Mean loss over every row of ds (no gradient). */
int tr_eval_loss(dt_model *m, const dt_dataset *ds, int B, int T,
                     double *out, char *err)
{
    int32_t *ids = malloc((size_t)B * T * sizeof *ids);
    int32_t *tgt = malloc((size_t)B * T * sizeof *tgt);
    if (!ids || !tgt) {
        free(ids);
        free(tgt);
        return dt_errf(err, DT_ENOMEM, "out of memory");
    }
    double sum = 0.0;
    long ntok = 0;
    int rc = 0;
    for (int s = 0; s < ds->nrows && !rc; s += B) {
        int b = ds->nrows - s < B ? ds->nrows - s : B, t = 1;
        for (int i = 0; i < b; i++)
            if (ds->rows[s + i].n - 1 > t)
                t = ds->rows[s + i].n - 1;
        if (t > T)
            t = T;
        for (int i = 0; i < b; i++) {
            const dt_row *r = &ds->rows[s + i];
            int n = r->n - 1 < t ? r->n - 1 : t;
            for (int j = 0; j < t; j++) {
                ids[i * t + j] = j < n ? r->ids[j] : 0;
                tgt[i * t + j] = j < n ? r->labels[j] : -100;
            }
        }
        double ls;
        long nt;
        rc = dt_model_forward(m, ids, tgt, b, t, 0.0f, &ls, &nt, err);
        sum += ls;
        ntok += nt;
    }
    free(ids);
    free(tgt);
    *out = ntok ? sum / ntok : NAN;
    return rc;
}
