/* serve.h: deltatune-worker --serve, the serving loop (serve.c): chat and
 * completion requests taken from Redis, answered token by token on each
 * request's reply list, concurrent requests on one model decoded together
 * (continuous batching), with loaded models kept in an LRU set within the
 * worker's memory limit. */
#ifndef DT_WORKER_SERVE_H
#define DT_WORKER_SERVE_H

#include "worker.h"

/* Runs until SIGTERM/SIGINT (installed here; the active requests are
 * finished first, taken ones not yet started go back to the queue) or
 * o->max_jobs requests. Returns a process exit status. */
int wk_serve(const wk_opts *o);

#endif
