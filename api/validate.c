/* validate.c: POST /v1/fine_tuning/jobs body -> db_job, with every problem
 * reported as a 400 naming the exact field path (see validate.h for the
 * fields, ranges and defaults). */
#include "validate.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/hparams.h"

enum { M_FULL = 1, M_LORA = 2, M_DELTA = 4, M_ALL = 7 };
enum { H_INT, H_NUM, H_LRM, H_SCHED, H_TARGETS, H_SEED, H_XDTYPE, H_PREC, H_BOOL };

/* How the API reads each hyperparameter; its limits are base/hparams.c's. */
typedef struct hparam {
    dt_hp lim;           /* name and limits: dt_hparam_limits[lim] */
    int type;
    size_t off;          /* field of db_job */
    unsigned methods;    /* which methods accept it */
} hparam;

#define O(x) offsetof(db_job, x)
static const hparam hparams[] = {
    {DT_HP_N_EPOCHS, H_INT, O(n_epochs), M_ALL},
    {DT_HP_BATCH_SIZE, H_INT, O(batch_size), M_ALL},
    {DT_HP_LEARNING_RATE, H_NUM, O(learning_rate), M_ALL},
    {DT_HP_LEARNING_RATE_MULTIPLIER, H_LRM, O(learning_rate), M_ALL},
    {DT_HP_RANK, H_INT, O(rank), M_LORA | M_DELTA},
    {DT_HP_ALPHA, H_NUM, O(alpha), M_LORA | M_DELTA},
    {DT_HP_LAMBDA, H_NUM, O(lambda), M_DELTA},
    {DT_HP_START_STEP, H_INT, O(start_step), M_DELTA},
    {DT_HP_TARGET_MODULES, H_TARGETS, O(target_modules), M_LORA | M_DELTA},
    {DT_HP_SEQ_LEN, H_INT, O(seq_len), M_ALL},
    {DT_HP_WARMUP_STEPS, H_INT, O(warmup_steps), M_ALL},
    {DT_HP_WEIGHT_DECAY, H_NUM, O(weight_decay), M_ALL},
    {DT_HP_MAX_GRAD_NORM, H_NUM, O(max_grad_norm), M_ALL},
    {DT_HP_LR_SCHEDULER, H_SCHED, O(lr_scheduler), M_ALL},
    {DT_HP_GRADIENT_ACCUMULATION_STEPS, H_INT, O(grad_accum), M_ALL},
    {DT_HP_MAX_STEPS, H_INT, O(max_steps), M_ALL},
    {DT_HP_CHECKPOINT_INTERVAL, H_INT, O(checkpoint_interval), M_ALL},
    {DT_HP_EVAL_INTERVAL, H_INT, O(eval_interval), M_ALL},
    {DT_HP_SEED, H_SEED, O(seed), M_ALL},
    {DT_HP_EXPORT_DTYPE, H_XDTYPE, O(export_dtype), M_ALL},
    {DT_HP_PRECISION, H_PREC, O(precision), M_ALL},
    {DT_HP_PACKING, H_BOOL, O(packing), M_ALL},
};
#define NHP (int)(sizeof hparams / sizeof hparams[0])

static const char *const target_names[][2] = {
    {"q", "q"}, {"k", "k"}, {"v", "v"}, {"o", "o"}, {"gate", "gate"}, {"up", "up"},
    {"down", "down"}, {"c_attn", "c_attn"}, {"q_proj", "q"}, {"k_proj", "k"},
    {"v_proj", "v"}, {"o_proj", "o"}, {"gate_proj", "gate"}, {"up_proj", "up"},
    {"down_proj", "down"},
};

static void defaults(db_job *j)
{
    snprintf(j->method, sizeof j->method, "delta_lora");
    j->n_epochs = 3;
    j->batch_size = 4;
    j->learning_rate = VALIDATE_DEFAULT_LR;
    j->rank = 8;
    j->alpha = 16;
    j->lambda = 0.5;
    j->start_step = -1;
    snprintf(j->target_modules, sizeof j->target_modules, "q,v");
    j->seq_len = VALIDATE_DEFAULT_SEQ_LEN;
    j->warmup_steps = 0;
    j->weight_decay = 0;
    j->max_grad_norm = 1.0;
    snprintf(j->lr_scheduler, sizeof j->lr_scheduler, "linear");
    j->grad_accum = 1;
    j->seed = 42;
}

/* A JSON number that is an integer (1 or 1.0), into *out. */
static int as_integer(json_t *v, double *out)
{
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        /* Beyond 2^53 a double is not exact: 2^53 + 1 would pass a check
         * against 2^53. Such values are out of every range here. */
        const json_int_t exact = (json_int_t)1 << 53;
        *out = i > exact ? 1e300 : i < -exact ? -1e300 : (double)i;
        return 1;
    }
    if (json_is_real(v)) {
        double x = json_real_value(v);
        if (isfinite(x) && x == floor(x)) { *out = x; return 1; }
    }
    return 0;
}

static int range_error(api_error *e, const char *path, const hparam *hp)
{
    const dt_hparam_limit *h = &dt_hparam_limits[hp->lim];
    if (hp->type == H_INT || hp->type == H_SEED)
        return api_errorf(e, 400, "invalid_value", path,
                          "%s must be an integer between %.0f and %.0f", path, h->min, h->max);
    return api_errorf(e, 400, "invalid_value", path, "%s must be a number %s %g and <= %g",
                      path, h->min_exclusive ? ">" : ">=", h->min, h->max);
}

static int parse_targets(json_t *v, const char *path, char *out, size_t outlen, api_error *e)
{
    char buf[256], norm[128] = "";
    unsigned seen = 0;
    if (json_is_string(v)) {
        snprintf(buf, sizeof buf, "%s", json_string_value(v));
    } else if (json_is_array(v) && json_array_size(v) > 0 && json_array_size(v) <= 16) {
        buf[0] = 0;
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) {
            if (!json_is_string(x))
                return api_errorf(e, 400, "invalid_type", path,
                                  "%s must be a list of module names", path);
            if (strlen(buf) + strlen(json_string_value(x)) + 2 >= sizeof buf)
                return api_errorf(e, 400, "invalid_value", path, "%s is too long", path);
            if (i) strcat(buf, ",");
            strcat(buf, json_string_value(x));
        }
    } else {
        return api_errorf(e, 400, "invalid_type", path,
                          "%s must be a string like \"q,v\" or a list of module names", path);
    }
    char *save = NULL;
    int count = 0;
    for (char *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        int k = -1;
        for (int i = 0; i < (int)(sizeof target_names / sizeof target_names[0]); i++)
            if (!strcmp(t, target_names[i][0])) k = i;
        if (k < 0)
            return api_errorf(e, 400, "invalid_value", path,
                              "%s: unknown module \"%.64s\" (use q, k, v, o, gate, up, down "
                              "or c_attn)", path, t);
        const char *n = target_names[k][1];
        int bit = 0;
        for (int i = 0; i < 8; i++)
            if (!strcmp(n, target_names[i][0])) bit = i;
        if (seen & (1u << bit))
            return api_errorf(e, 400, "invalid_value", path, "%s: \"%s\" listed twice", path, n);
        seen |= 1u << bit;
        if (count++) strcat(norm, ",");
        strcat(norm, n);
    }
    if (!count)
        return api_errorf(e, 400, "invalid_value", path, "%s must name at least one module",
                          path);
    size_t nl = strlen(norm); /* at most "q,k,v,o,gate,up,down,c_attn" */
    if (nl >= outlen)
        return api_errorf(e, 400, "invalid_value", path, "%s: too many modules", path);
    memcpy(out, norm, nl + 1);
    return 0;
}

/* Applies a hyperparameters object (prefix = its field path). */
static int parse_hparams(json_t *h, const char *prefix, unsigned method, db_job *j,
                         int *seed_set, api_error *e)
{
    char path[192];
    if (json_is_null(h)) return 0;
    if (!json_is_object(h))
        return api_errorf(e, 400, "invalid_type", prefix, "%s must be an object", prefix);
    if (json_object_get(h, "learning_rate") && json_object_get(h, "learning_rate_multiplier") &&
        !json_is_string(json_object_get(h, "learning_rate_multiplier"))) {
        snprintf(path, sizeof path, "%.80s.learning_rate_multiplier", prefix);
        return api_errorf(e, 400, "invalid_value", path,
                          "give learning_rate or learning_rate_multiplier, not both");
    }
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v) {
        snprintf(path, sizeof path, "%.80s.%.100s", prefix, key);
        const hparam *hp = NULL;
        for (int i = 0; i < NHP; i++)
            if (!strcmp(key, dt_hparam_limits[hparams[i].lim].name)) hp = &hparams[i];
        if (!hp)
            return api_errorf(e, 400, "unknown_parameter", path,
                              "unknown hyperparameter: %s", path);
        if (!(hp->methods & method))
            return api_errorf(e, 400, "invalid_value", path, "%s does not apply to method %s",
                              path, j->method);
        if (json_is_string(v) && !strcmp(json_string_value(v), "auto")) continue;
        if (json_is_null(v)) continue;
        char *field = (char *)j + hp->off;
        double x;
        switch (hp->type) {
        case H_INT: case H_SEED:
            if (!as_integer(v, &x))
                return api_errorf(e, 400, "invalid_type", path,
                                  "%s must be an integer or \"auto\"", path);
            if (!dt_hparam_ok(hp->lim, x)) return range_error(e, path, hp);
            if (hp->type == H_SEED) { *(int64_t *)field = (int64_t)x; *seed_set = 1; }
            else *(int *)field = (int)x;
            break;
        case H_NUM: case H_LRM:
            if (!json_is_number(v))
                return api_errorf(e, 400, "invalid_type", path,
                                  "%s must be a number or \"auto\"", path);
            x = json_number_value(v);
            if (!dt_hparam_ok(hp->lim, x))
                return range_error(e, path, hp);
            *(double *)field = hp->type == H_LRM ? x * VALIDATE_DEFAULT_LR : x;
            break;
        case H_SCHED: {
            const char *s = json_string_value(v);
            if (!s || (strcmp(s, "linear") && strcmp(s, "cosine") && strcmp(s, "constant")))
                return api_errorf(e, 400, "invalid_value", path,
                                  "%s must be \"linear\", \"cosine\" or \"constant\"", path);
            snprintf(j->lr_scheduler, sizeof j->lr_scheduler, "%s", s);
            break;
        }
        case H_XDTYPE: {
            const char *s = json_string_value(v);
            if (!s || (strcmp(s, "float32") && strcmp(s, "bfloat16") && strcmp(s, "float16")))
                return api_errorf(e, 400, "invalid_value", path,
                                  "%s must be \"float32\", \"bfloat16\", \"float16\" or "
                                  "\"auto\"", path);
            snprintf(j->export_dtype, sizeof j->export_dtype, "%s", s);
            break;
        }
        case H_PREC: {
            const char *s = json_string_value(v);
            if (!s || (strcmp(s, "fp32") && strcmp(s, "tf32") && strcmp(s, "bf16")))
                return api_errorf(e, 400, "invalid_value", path,
                                  "%s must be \"fp32\", \"tf32\", \"bf16\" or \"auto\"",
                                  path);
            snprintf(j->precision, sizeof j->precision, "%s", s);
            break;
        }
        case H_BOOL:
            if (!json_is_boolean(v))
                return api_errorf(e, 400, "invalid_type", path,
                                  "%s must be true, false or \"auto\"", path);
            *(bool *)field = json_is_true(v);
            break;
        case H_TARGETS: {
            int rc = parse_targets(v, path, j->target_modules, sizeof j->target_modules, e);
            if (rc) return rc;
            break;
        }
        }
    }
    return 0;
}

static int parse_method(json_t *m, db_job *j, int *seed_set, api_error *e)
{
    if (!json_is_object(m))
        return api_errorf(e, 400, "invalid_type", "method", "method must be an object");
    json_t *t = json_object_get(m, "type");
    if (!json_is_string(t))
        return api_errorf(e, 400, "invalid_type", "method.type",
                          "method.type must be one of delta_lora, lora, full, supervised");
    const char *type = json_string_value(t);
    unsigned mask;
    const char *resolved = type;
    if (!strcmp(type, "delta_lora")) mask = M_DELTA;
    else if (!strcmp(type, "lora")) mask = M_LORA;
    else if (!strcmp(type, "full")) mask = M_FULL;
    else if (!strcmp(type, "supervised")) { mask = M_DELTA; resolved = "delta_lora"; }
    else
        return api_errorf(e, 400, "invalid_value", "method.type",
                          "method.type \"%.64s\" is not one of delta_lora, lora, full, "
                          "supervised", type);
    snprintf(j->method, sizeof j->method, "%s", resolved);
    snprintf(j->method_input, sizeof j->method_input, "%s", type);
    const char *key;
    json_t *v;
    char path[192];
    json_object_foreach(m, key, v) {
        if (!strcmp(key, "type")) continue;
        snprintf(path, sizeof path, "method.%.100s", key);
        if (strcmp(key, type))
            return api_errorf(e, 400, "unknown_parameter", path,
                              "unexpected field %s for method type %s", path, type);
        if (json_is_null(v)) continue;
        if (!json_is_object(v))
            return api_errorf(e, 400, "invalid_type", path, "%s must be an object", path);
        const char *k2;
        json_t *v2;
        json_object_foreach(v, k2, v2) {
            char p2[192];
            snprintf(p2, sizeof p2, "%.100s.%.60s", path, k2);
            if (strcmp(k2, "hyperparameters"))
                return api_errorf(e, 400, "unknown_parameter", p2, "unknown field: %s", p2);
            int rc = parse_hparams(v2, p2, mask, j, seed_set, e);
            if (rc) return rc;
        }
    }
    return 0;
}

int validate_metadata(json_t *md, const char *param, api_error *e)
{
    if (json_is_null(md)) return 0;
    if (!json_is_object(md))
        return api_errorf(e, 400, "invalid_type", param, "%s must be an object of strings",
                          param);
    if (json_object_size(md) > 16)
        return api_errorf(e, 400, "invalid_value", param, "%s has more than 16 keys", param);
    const char *key;
    json_t *v;
    json_object_foreach(md, key, v) {
        char path[192];
        snprintf(path, sizeof path, "%.100s.%.64s", param, key);
        if (strlen(key) > 64 || !*key)
            return api_errorf(e, 400, "invalid_value", param,
                              "%s keys must be 1 to 64 characters", param);
        if (!json_is_string(v))
            return api_errorf(e, 400, "invalid_type", path, "%s must be a string", path);
        if (strlen(json_string_value(v)) > 512)
            return api_errorf(e, 400, "invalid_value", path,
                              "%s is longer than 512 characters", path);
    }
    return 0;
}

static int string_field(json_t *body, const char *name, int required, char *out,
                        size_t outlen, api_error *e)
{
    json_t *v = json_object_get(body, name);
    if (!v || json_is_null(v)) {
        if (required)
            return api_errorf(e, 400, "missing_required_parameter", name,
                              "missing required parameter: %s", name);
        out[0] = 0;
        return 0;
    }
    if (!json_is_string(v))
        return api_errorf(e, 400, "invalid_type", name, "%s must be a string", name);
    const char *s = json_string_value(v);
    if (strlen(s) >= outlen)
        return api_errorf(e, 400, "invalid_value", name, "%s is longer than %zu characters",
                          name, outlen - 1);
    if (required && !*s)
        return api_errorf(e, 400, "invalid_value", name, "%s must not be empty", name);
    strcpy(out, s);
    return 0;
}

int validate_job_create(json_t *body, db_job *j, api_error *e)
{
    static const char *const known[] = {"model", "training_file", "validation_file",
                                        "method", "hyperparameters", "suffix", "seed",
                                        "metadata", "integrations", "max_runtime_seconds"};
    memset(j, 0, sizeof *j);
    defaults(j);
    if (!json_is_object(body))
        return api_errorf(e, 400, "invalid_type", NULL, "the request body must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) {
        int ok = 0;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (!strcmp(key, known[i])) ok = 1;
        if (!ok)
            return api_errorf(e, 400, "unknown_parameter", key,
                              "Unrecognized request argument supplied: %.100s", key);
    }
    int rc;
    if ((rc = string_field(body, "model", 1, j->model, sizeof j->model, e)) ||
        (rc = string_field(body, "training_file", 1, j->training_file, sizeof j->training_file, e)) ||
        (rc = string_field(body, "validation_file", 0, j->validation_file,
                           sizeof j->validation_file, e)) ||
        (rc = string_field(body, "suffix", 0, j->suffix, sizeof j->suffix, e)))
        return rc;
    for (const char *s = j->suffix; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_'))
            return api_errorf(e, 400, "invalid_value", "suffix",
                              "suffix may contain only letters, digits, '-' and '_'");
    int seed_set = 0;
    json_t *method = json_object_get(body, "method");
    json_t *legacy = json_object_get(body, "hyperparameters");
    if (method && !json_is_null(method)) {
        if (legacy && !json_is_null(legacy))
            return api_errorf(e, 400, "invalid_value", "hyperparameters",
                              "hyperparameters is deprecated: with method, give them in "
                              "method.<type>.hyperparameters");
        if ((rc = parse_method(method, j, &seed_set, e))) return rc;
    } else {
        snprintf(j->method_input, sizeof j->method_input, "%s", j->method);
        if (legacy && (rc = parse_hparams(legacy, "hyperparameters", M_DELTA, j, &seed_set, e)))
            return rc;
    }
    json_t *seed = json_object_get(body, "seed");
    if (seed && !json_is_null(seed)) {
        double x;
        if (!as_integer(seed, &x))
            return api_errorf(e, 400, "invalid_type", "seed", "seed must be an integer");
        if (x < 0 || x > 9007199254740992.0)
            return api_errorf(e, 400, "invalid_value", "seed",
                              "seed must be between 0 and 2^53");
        j->seed = (int64_t)x;
    }
    json_t *rt = json_object_get(body, "max_runtime_seconds");
    if (rt && !json_is_null(rt)) {
        double x;
        if (!as_integer(rt, &x))
            return api_errorf(e, 400, "invalid_type", "max_runtime_seconds",
                              "max_runtime_seconds must be an integer (seconds)");
        if (x < 1 || x > 2147483647.0)
            return api_errorf(e, 400, "invalid_value", "max_runtime_seconds",
                              "max_runtime_seconds must be between 1 and the server's limit");
        j->max_runtime_seconds = (int)x;
    }
    json_t *md = json_object_get(body, "metadata");
    if (md && (rc = validate_metadata(md, "metadata", e))) return rc;
    json_t *integ = json_object_get(body, "integrations");
    if (integ && !json_is_null(integ) && !json_is_array(integ))
        return api_errorf(e, 400, "invalid_type", "integrations", "integrations must be a list");
    /* No outbound network is assumed: an integration (wandb, ...) could
     * never report, so one is refused rather than silently dropped. */
    if (json_array_size(integ) > 0)
        return api_errorf(e, 400, "invalid_value", "integrations",
                          "integrations are not supported (this service makes no outbound "
                          "connections); omit integrations or send an empty list");
    if (md && json_is_object(md)) {
        j->metadata = json_dumps(md, JSON_COMPACT | JSON_SORT_KEYS);
        if (!j->metadata) return api_errorf(e, 500, "internal_error", NULL, "out of memory");
    }
    return 0;
}

int validate_export_create(json_t *body, db_export *x, api_error *e)
{
    static const char *const gguf_types[] = {"f16", "q8_0", "q4_0", NULL};
    static const char *const hf_types[] = {"auto", "float32", "bfloat16", "float16", NULL};
    if (!json_is_object(body))
        return api_errorf(e, 400, "invalid_type", NULL, "the body must be a JSON object");
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        if (strcmp(k, "format") && strcmp(k, "type"))
            return api_errorf(e, 400, "unknown_parameter", k,
                              "unknown parameter %.64s (format, type)", k);
    }
    json_t *f = json_object_get(body, "format"), *t = json_object_get(body, "type");
    if (!f)
        return api_errorf(e, 400, "missing_required_parameter", "format",
                          "format is required (\"gguf\" or \"hf\")");
    const char *fs = json_string_value(f);
    if (!fs || (strcmp(fs, "gguf") && strcmp(fs, "hf")))
        return api_errorf(e, 400, "invalid_value", "format",
                          "format must be \"gguf\" (a GGUF file for llama.cpp) or \"hf\" "
                          "(a checkpoint's merged Hugging Face directory)");
    int hf = !strcmp(fs, "hf");
    snprintf(x->format, sizeof x->format, "%s", fs);
    /* hf: the directory's prefix among the model's files; gguf: the file */
    snprintf(x->file, sizeof x->file, "%s", hf ? "merged" : "model.gguf");
    const char *const *types = hf ? hf_types : gguf_types;
    const char *ts = types[0];
    if (t && !json_is_null(t)) {
        ts = json_string_value(t);
        int ok = 0;
        for (size_t i = 0; ts && types[i]; i++)
            ok |= !strcmp(ts, types[i]);
        if (!ok)
            return api_errorf(e, 400, "invalid_value", "type", hf
                              ? "type of format hf must be auto, float32, bfloat16 or float16 "
                                "(the merged model's dtype; auto: the base's, bfloat16 for a "
                                "GGUF base)"
                              : "type must be f16, q8_0 or q4_0");
    }
    snprintf(x->type, sizeof x->type, "%s", ts);
    return 0;
}
