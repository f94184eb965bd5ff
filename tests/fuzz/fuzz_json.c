/* fuzz_json: JSON request bodies. POST /v1/fine_tuning/jobs's handler
 * (server/jobs.c: req_json's parse with duplicate keys rejected, then
 * api/validate.c's validate_job_create with every hyperparameter, method,
 * metadata, seed, suffix and legacy field) up to the database, which is
 * "down" here (fuzz_http.h); then validate_job_create directly: a body it
 * accepts must resolve to values inside the documented ranges
 * (api/validate.h), metadata must re-parse as an object of <= 16 strings,
 * and the job must render (obj_job, as in the reply). The same bytes go
 * through api/validate_chat.c's validate_chat as a chat and as a
 * completion body: an accepted one must hold only in-range values and
 * string contents. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/log.h"
#include "api/objects.h"
#include "api/validate.h"
#include "api/validate_chat.h"
#include "server/handlers.h"

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "fuzz_json: %s\n", #c); abort(); } } while (0)

static int in(double x, double lo, double hi) { return isfinite(x) && x >= lo && x <= hi; }

static void check_job(const db_job *j)
{
    CHECK(!strcmp(j->method, "delta_lora") || !strcmp(j->method, "lora") ||
          !strcmp(j->method, "full"));
    CHECK(j->model[0] && j->training_file[0]);
    CHECK(in(j->n_epochs, 1, 100) && in(j->batch_size, 1, 256));
    CHECK(j->learning_rate > 0 && j->learning_rate <= 100 * VALIDATE_DEFAULT_LR + 1);
    CHECK(in(j->rank, 1, 256) && j->alpha > 0 && j->alpha <= 4096);
    CHECK(in(j->lambda, 0, 100) && in(j->start_step, -1, 1e7));
    CHECK(in(j->seq_len, 8, 8192) && in(j->warmup_steps, 0, 1e6));
    CHECK(in(j->weight_decay, 0, 1) && in(j->max_grad_norm, 0, 1e6));
    CHECK(!strcmp(j->lr_scheduler, "linear") || !strcmp(j->lr_scheduler, "cosine") ||
          !strcmp(j->lr_scheduler, "constant"));
    CHECK(in(j->grad_accum, 1, 1024) && in(j->max_steps, 0, 1e7));
    CHECK(in(j->checkpoint_interval, 0, 1e7) && in(j->eval_interval, 0, 1e7));
    CHECK(j->seed >= 0 && j->seed <= (INT64_C(1) << 53));
    CHECK(j->target_modules[0]);
    for (const char *s = j->suffix; *s; s++)
        CHECK((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_');
    if (j->metadata) {
        json_t *md = json_loads(j->metadata, 0, NULL);
        api_error e;
        CHECK(json_is_object(md) && json_object_size(md) <= 16);
        CHECK(validate_metadata(md, "metadata", &e) == 0);
        json_decref(md);
    }
}

static void check_chat(const json_t *body)
{
    for (int chat = 0; chat < 2; chat++) {
        chat_req cr;
        api_error e;
        memset(&e, 0, sizeof e);
        if (validate_chat(body, chat, 4096, &cr, &e)) {
            CHECK(e.status == 400 && e.message[0]);
            continue;
        }
        const json_t *w = cr.work;
        CHECK(cr.model[0]);
        CHECK(!strcmp(json_string_value(json_object_get(w, "kind")), chat ? "chat" : "completion"));
        json_int_t mt = json_integer_value(json_object_get(w, "max_tokens"));
        CHECK(mt >= 0 && mt <= 4096);
        CHECK(in(json_number_value(json_object_get(w, "temperature")), 0, 2));
        double p = json_number_value(json_object_get(w, "top_p"));
        CHECK(p > 0 && p <= 1);
        const json_t *stop = json_object_get(w, "stop");
        CHECK(json_is_array(stop) && json_array_size(stop) <= CHAT_MAX_STOP);
        size_t i;
        const json_t *v;
        json_array_foreach(stop, i, v) CHECK(json_is_string(v) && json_string_length(v));
        if (chat) {
            const json_t *msgs = json_object_get(w, "messages");
            CHECK(json_array_size(msgs) >= 1 && json_array_size(msgs) <= CHAT_MAX_MESSAGES);
            json_array_foreach(msgs, i, v) {
                CHECK(json_is_string(json_object_get(v, "role")));
                CHECK(json_is_string(json_object_get(v, "content")));
            }
        } else {
            CHECK(json_string_length(json_object_get(w, "prompt")) > 0);
        }
        CHECK(!cr.include_usage || cr.stream);
        json_int_t k = json_integer_value(json_object_get(w, "top_logprobs"));
        CHECK(k >= 0 && k <= CHAT_MAX_TOP_LOGPROBS);
        /* completions: logprobs = N asks for them, with N (at most 5) top ones */
        CHECK(chat || !json_object_get(w, "logprobs") ||
              (json_is_integer(json_object_get(body, "logprobs")) &&
               k == json_integer_value(json_object_get(body, "logprobs")) &&
               k <= COMPLETION_MAX_LOGPROBS));
        chat_req_clear(&cr);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static server s;
    if (!s.routes) {
        log_init("fuzz", 99);
        config_defaults(&s.cfg);
        s.routes = server_routes;
        s.nroutes = server_nroutes;
    }
    /* the handler, as the server runs it */
    req r;
    memset(&r, 0, sizeof r);
    r.s = &s;
    r.method = "POST";
    r.url = "/v1/fine_tuning/jobs";
    snprintf(r.owner, sizeof r.owner, "fuzz-owner");
    r.body = malloc(size + 1);
    CHECK(r.body);
    memcpy(r.body, data, size);
    r.body[size] = 0;
    r.body_len = size;
    jobs_create(&r);
    CHECK(r.status == 400 || r.status == 503); /* bad body, or valid and on to the database */
    CHECK(r.json && json_is_object(json_object_get(r.json, "error")));
    json_decref(r.json);
    free(r.body);

    /* the validator's result */
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (!body) return 0;
    db_job j;
    api_error e;
    memset(&e, 0, sizeof e);
    if (validate_job_create(body, &j, &e) == 0) {
        check_job(&j);
        json_t *o = obj_job(&j);
        CHECK(o);
        json_decref(o);
    } else {
        CHECK(e.status == 400 && e.message[0]);
    }
    db_job_clear(&j);
    check_chat(body);
    json_t *md = json_object_get(body, "metadata");
    validate_metadata(md ? md : body, "metadata", &e);
    json_decref(body);
    return 0;
}
