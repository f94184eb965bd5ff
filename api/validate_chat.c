/* validate_chat.c: chat and completion request bodies (see
 * validate_chat.h). Each check returns the HTTP status through api_errorf,
 * naming the field ("messages[2].content", "stop[1]"). */
#include "validate_chat.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BAD(param, ...) api_errorf(e, 400, "invalid_value", param, __VA_ARGS__)
#define UNSUPPORTED(param, ...) api_errorf(e, 400, "unsupported_value", param, __VA_ARGS__)

/* A number field in [lo, hi] or null/absent (*set 0). */
static int num_field(const json_t *body, const char *name, double lo, double hi, double *out,
                     int *set, api_error *e)
{
    const json_t *v = json_object_get(body, name);
    *set = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return BAD(name, "%s must be a number", name);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) return BAD(name, "%s must be between %g and %g", name, lo, hi);
    *out = x;
    *set = 1;
    return 0;
}

/* A field whose only accepted values change nothing: null/absent, or a
 * number equal to `zero`. */
static int zero_number(const json_t *body, const char *name, double zero, double lo, double hi,
                       api_error *e)
{
    double x;
    int set;
    int rc = num_field(body, name, lo, hi, &x, &set, e);
    if (rc) return rc;
    if (set && x != zero)
        return UNSUPPORTED(name, "%s other than %g is not supported", name, zero);
    return 0;
}

static int bool_field(const json_t *body, const char *name, int *out, api_error *e)
{
    const json_t *v = json_object_get(body, name);
    *out = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return BAD(name, "%s must be true or false", name);
    *out = json_is_true(v);
    return 0;
}

/* Message content: a string, or a list of {"type":"text","text":...}
 * parts (joined); null only for an assistant message. New string in *out. */
static int content_text(const json_t *c, size_t i, int assistant, json_t **out, api_error *e)
{
    char p[64];
    snprintf(p, sizeof p, "messages[%zu].content", i);
    if (json_is_string(c)) {
        *out = json_incref((json_t *)c);
        return 0;
    }
    if (json_is_null(c) || !c) {
        if (!assistant) return BAD(p, "%s is required", p);
        *out = json_string("");
        return 0;
    }
    if (!json_is_array(c)) return BAD(p, "%s must be a string or a list of text parts", p);
    size_t n = 0, j;
    const json_t *part;
    json_array_foreach(c, j, part) {
        const json_t *t = json_object_get(part, "text");
        const char *type = json_string_value(json_object_get(part, "type"));
        char pp[96];
        snprintf(pp, sizeof pp, "%s[%zu].type", p, j);
        if (!json_is_object(part) || !type) return BAD(pp, "%s must be \"text\"", pp);
        if (strcmp(type, "text"))
            return UNSUPPORTED(pp, "content parts of type \"%s\" are not supported (text only)",
                               type);
        snprintf(pp, sizeof pp, "%s[%zu].text", p, j);
        if (!json_is_string(t)) return BAD(pp, "%s must be a string", pp);
        n += json_string_length(t);
    }
    char *buf = malloc(n + 1);
    if (!buf) return api_errorf(e, 500, "internal_error", NULL, "out of memory");
    size_t off = 0;
    json_array_foreach(c, j, part) {
        const json_t *t = json_object_get(part, "text");
        memcpy(buf + off, json_string_value(t), json_string_length(t));
        off += json_string_length(t);
    }
    *out = json_stringn(buf, off);
    free(buf);
    return 0;
}

static int messages_field(const json_t *body, json_t *work, api_error *e)
{
    const json_t *msgs = json_object_get(body, "messages");
    if (!msgs) return api_errorf(e, 400, "missing_required_parameter", "messages",
                                 "messages is required");
    if (!json_is_array(msgs) || !json_array_size(msgs))
        return BAD("messages", "messages must be a non-empty list of messages");
    if (json_array_size(msgs) > CHAT_MAX_MESSAGES)
        return BAD("messages", "messages holds more than %d messages", CHAT_MAX_MESSAGES);
    json_t *out = json_array();
    size_t i;
    const json_t *m;
    json_array_foreach(msgs, i, m) {
        char p[64];
        snprintf(p, sizeof p, "messages[%zu]", i);
        if (!json_is_object(m)) {
            json_decref(out);
            return BAD(p, "%s must be an object with role and content", p);
        }
        const char *key;
        const json_t *v;
        json_object_foreach((json_t *)m, key, v) {
            if (strcmp(key, "role") && strcmp(key, "content") && strcmp(key, "name") &&
                strcmp(key, "refusal")) {
                char pk[128];
                snprintf(pk, sizeof pk, "%s.%.60s", p, key);
                json_decref(out);
                if (!strcmp(key, "tool_calls") || !strcmp(key, "tool_call_id") ||
                    !strcmp(key, "function_call") || !strcmp(key, "audio"))
                    return UNSUPPORTED(pk, "%s is not supported", pk);
                return BAD(pk, "unknown field %s", pk);
            }
        }
        const char *role = json_string_value(json_object_get(m, "role"));
        snprintf(p, sizeof p, "messages[%zu].role", i);
        if (!role) {
            json_decref(out);
            return BAD(p, "%s must be one of system, developer, user, assistant", p);
        }
        if (strcmp(role, "system") && strcmp(role, "developer") && strcmp(role, "user") &&
            strcmp(role, "assistant")) {
            json_decref(out);
            if (!strcmp(role, "tool") || !strcmp(role, "function"))
                return UNSUPPORTED(p, "%s \"%s\" is not supported (no tools)", p, role);
            return BAD(p, "%s must be one of system, developer, user, assistant", p);
        }
        const json_t *name = json_object_get(m, "name");
        if (name && !json_is_string(name) && !json_is_null(name)) {
            snprintf(p, sizeof p, "messages[%zu].name", i);
            json_decref(out);
            return BAD(p, "%s must be a string", p);
        }
        json_t *text = NULL;
        int rc = content_text(json_object_get(m, "content"), i, !strcmp(role, "assistant"),
                              &text, e);
        if (rc) {
            json_decref(out);
            return rc;
        }
        json_array_append_new(out, json_pack("{s:s, s:o}", "role",
                                             !strcmp(role, "developer") ? "system" : role,
                                             "content", text));
    }
    json_object_set_new(work, "messages", out);
    return 0;
}

static int prompt_field(const json_t *body, json_t *work, api_error *e)
{
    const json_t *p = json_object_get(body, "prompt");
    if (!p) return api_errorf(e, 400, "missing_required_parameter", "prompt",
                              "prompt is required");
    if (json_is_array(p)) {
        if (json_array_size(p) != 1 || !json_is_string(json_array_get(p, 0)))
            return UNSUPPORTED("prompt", "prompt must be a string (or a list of one string: "
                               "one completion per request)");
        p = json_array_get(p, 0);
    }
    if (!json_is_string(p)) return BAD("prompt", "prompt must be a string");
    if (!json_string_length(p)) return BAD("prompt", "prompt must not be empty");
    json_object_set(work, "prompt", (json_t *)p);
    return 0;
}

static int stop_field(const json_t *body, json_t *work, api_error *e)
{
    const json_t *v = json_object_get(body, "stop");
    json_t *list = json_array();
    json_object_set_new(work, "stop", list);
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        if (!json_string_length(v)) return BAD("stop", "stop must not be empty");
        json_array_append(list, (json_t *)v);
        return 0;
    }
    if (!json_is_array(v)) return BAD("stop", "stop must be a string or a list of strings");
    if (json_array_size(v) > CHAT_MAX_STOP)
        return BAD("stop", "stop holds at most %d strings", CHAT_MAX_STOP);
    size_t i;
    const json_t *s;
    json_array_foreach(v, i, s) {
        char p[32];
        snprintf(p, sizeof p, "stop[%zu]", i);
        if (!json_is_string(s) || !json_string_length(s))
            return BAD(p, "%s must be a non-empty string", p);
        if (json_string_length(s) > 256) return BAD(p, "%s is longer than 256 bytes", p);
        json_array_append(list, (json_t *)s);
    }
    return 0;
}

/* Fields accepted whatever their value (of the right type), since they
 * change nothing in the output. */
static const char *const ignored_fields[] = {"user", "metadata", "store", "service_tier",
                                             "parallel_tool_calls", "prompt_cache_key",
                                             "safety_identifier", NULL};

static int known(const char *key, int chat)
{
    static const char *const common[] = {"model", "stream", "stream_options", "max_tokens",
        "temperature", "top_p", "seed", "stop", "n", "logprobs", "frequency_penalty",
        "presence_penalty", "logit_bias", NULL};
    static const char *const chat_only[] = {"messages", "max_completion_tokens",
        "top_logprobs", "tools", "tool_choice", "functions", "function_call",
        "response_format", "modalities", "reasoning_effort", NULL};
    static const char *const completion_only[] = {"prompt", "echo", "suffix", "best_of", NULL};
    for (int i = 0; common[i]; i++) if (!strcmp(key, common[i])) return 1;
    for (int i = 0; ignored_fields[i]; i++) if (!strcmp(key, ignored_fields[i])) return 1;
    const char *const *more = chat ? chat_only : completion_only;
    for (int i = 0; more[i]; i++) if (!strcmp(key, more[i])) return 1;
    return 0;
}

/* Present and neither null nor one of the accepted no-op values. */
static int is_given(const json_t *v)
{
    return v && !json_is_null(v);
}

static int noop_fields(const json_t *body, int chat, api_error *e)
{
    const json_t *v;
    int rc;
    if ((rc = zero_number(body, "frequency_penalty", 0, -2, 2, e)) ||
        (rc = zero_number(body, "presence_penalty", 0, -2, 2, e)))
        return rc;
    if ((v = json_object_get(body, "n")) && is_given(v)) {
        if (!json_is_integer(v)) return BAD("n", "n must be an integer");
        if (json_integer_value(v) != 1)
            return UNSUPPORTED("n", "only n = 1 is supported (one choice per request)");
    }
    if ((v = json_object_get(body, "logit_bias")) && is_given(v)) {
        if (!json_is_object(v)) return BAD("logit_bias", "logit_bias must be an object");
        if (json_object_size(v))
            return UNSUPPORTED("logit_bias", "logit_bias is not supported");
    }
    if ((v = json_object_get(body, "logprobs")) && is_given(v)) {
        if (chat ? !json_is_boolean(v) : !json_is_integer(v))
            return BAD("logprobs", chat ? "logprobs must be true or false"
                                        : "logprobs must be an integer");
        if (!chat && (json_integer_value(v) < 0 ||
                      json_integer_value(v) > COMPLETION_MAX_LOGPROBS))
            return BAD("logprobs", "logprobs must be an integer between 0 and %d",
                       COMPLETION_MAX_LOGPROBS);
    }
    if (!chat) {
        if ((v = json_object_get(body, "echo")) && is_given(v)) {
            if (!json_is_boolean(v)) return BAD("echo", "echo must be true or false");
            if (json_is_true(v)) return UNSUPPORTED("echo", "echo = true is not supported");
        }
        if ((v = json_object_get(body, "suffix")) && is_given(v))
            return UNSUPPORTED("suffix", "suffix is not supported");
        if ((v = json_object_get(body, "best_of")) && is_given(v)) {
            if (!json_is_integer(v)) return BAD("best_of", "best_of must be an integer");
            if (json_integer_value(v) != 1)
                return UNSUPPORTED("best_of", "only best_of = 1 is supported");
        }
        return 0;
    }
    if ((v = json_object_get(body, "top_logprobs")) && is_given(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > CHAT_MAX_TOP_LOGPROBS)
            return BAD("top_logprobs", "top_logprobs must be an integer between 0 and %d",
                       CHAT_MAX_TOP_LOGPROBS);
        if (json_integer_value(v) > 0 && !json_is_true(json_object_get(body, "logprobs")))
            return BAD("top_logprobs", "top_logprobs needs logprobs: true");
    }
    if ((v = json_object_get(body, "tools")) && is_given(v)) {
        if (!json_is_array(v)) return BAD("tools", "tools must be a list");
        if (json_array_size(v)) return UNSUPPORTED("tools", "tools are not supported");
    }
    if ((v = json_object_get(body, "functions")) && is_given(v))
        return UNSUPPORTED("functions", "functions are not supported");
    if ((v = json_object_get(body, "function_call")) && is_given(v))
        return UNSUPPORTED("function_call", "function_call is not supported");
    if ((v = json_object_get(body, "tool_choice")) && is_given(v) &&
        !(json_is_string(v) && (!strcmp(json_string_value(v), "none") ||
                                !strcmp(json_string_value(v), "auto"))))
        return UNSUPPORTED("tool_choice", "tool_choice other than \"none\" or \"auto\" is not "
                           "supported (no tools)");
    if ((v = json_object_get(body, "response_format")) && is_given(v)) {
        const char *t = json_string_value(json_object_get(v, "type"));
        if (!json_is_object(v) || !t)
            return BAD("response_format", "response_format must be an object with a type");
        if (strcmp(t, "text"))
            return UNSUPPORTED("response_format.type", "response_format \"%s\" is not "
                               "supported (text only)", t);
    }
    if ((v = json_object_get(body, "modalities")) && is_given(v)) {
        size_t i;
        const json_t *m;
        if (!json_is_array(v)) return BAD("modalities", "modalities must be a list");
        json_array_foreach(v, i, m)
            if (!json_is_string(m) || strcmp(json_string_value(m), "text"))
                return UNSUPPORTED("modalities", "only the text modality is supported");
    }
    if ((v = json_object_get(body, "reasoning_effort")) && is_given(v))
        return UNSUPPORTED("reasoning_effort", "reasoning_effort is not supported");
    return 0;
}

int validate_chat(const json_t *body, int chat, int max_tokens_cap, chat_req *out,
                  api_error *e)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(body)) return BAD(NULL, "the body must be a JSON object");
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)body, key, v)
        if (!known(key, chat)) {
            char p[96];
            snprintf(p, sizeof p, "%.80s", key);
            return BAD(p, "unknown parameter %s", p);
        }
    const json_t *model = json_object_get(body, "model");
    if (!model) return api_errorf(e, 400, "missing_required_parameter", "model",
                                  "model is required");
    if (!json_is_string(model) || !json_string_length(model) ||
        json_string_length(model) >= CHAT_MODEL_LEN)
        return BAD("model", "model must be a model id (a non-empty string of at most %d "
                   "bytes)", CHAT_MODEL_LEN - 1);
    snprintf(out->model, sizeof out->model, "%s", json_string_value(model));
    int rc;
    if ((rc = bool_field(body, "stream", &out->stream, e))) return rc;
    const json_t *so = json_object_get(body, "stream_options");
    if (is_given(so)) {
        if (!json_is_object(so)) return BAD("stream_options", "stream_options must be an object");
        json_object_foreach((json_t *)so, key, v) {
            if (strcmp(key, "include_usage") && strcmp(key, "include_obfuscation")) {
                char p[96];
                snprintf(p, sizeof p, "stream_options.%.60s", key);
                return BAD(p, "unknown parameter %s", p);
            }
            if (!json_is_boolean(v) && !json_is_null(v)) {
                char p[96];
                snprintf(p, sizeof p, "stream_options.%.60s", key);
                return BAD(p, "%s must be true or false", p);
            }
        }
        if (!out->stream)
            return BAD("stream_options", "stream_options is only allowed with stream: true");
        out->include_usage = json_is_true(json_object_get(so, "include_usage"));
    }
    for (int i = 0; ignored_fields[i]; i++) {
        v = json_object_get(body, ignored_fields[i]);
        if (!strcmp(ignored_fields[i], "user") && is_given(v) && !json_is_string(v))
            return BAD("user", "user must be a string");
        if (!strcmp(ignored_fields[i], "metadata") && is_given(v) && !json_is_object(v))
            return BAD("metadata", "metadata must be an object");
        if (!strcmp(ignored_fields[i], "store") && is_given(v) && !json_is_boolean(v))
            return BAD("store", "store must be true or false");
    }
    if ((rc = noop_fields(body, chat, e))) return rc;

    /* max_tokens, or chat's newer max_completion_tokens (the same thing). */
    int max_tokens = 0;
    const char *mnames[] = {"max_tokens", chat ? "max_completion_tokens" : NULL};
    for (int i = 0; i < 2 && mnames[i]; i++) {
        v = json_object_get(body, mnames[i]);
        if (!is_given(v)) continue;
        if (!json_is_integer(v)) return BAD(mnames[i], "%s must be an integer", mnames[i]);
        json_int_t n = json_integer_value(v);
        if (n < 1 || n > max_tokens_cap)
            return BAD(mnames[i], "%s must be between 1 and %d", mnames[i], max_tokens_cap);
        if (max_tokens && max_tokens != n)
            return BAD(mnames[i], "max_tokens and max_completion_tokens disagree");
        max_tokens = (int)n;
    }
    double temperature = 1.0, top_p = 1.0;
    int set;
    if ((rc = num_field(body, "temperature", 0, 2, &temperature, &set, e))) return rc;
    if ((rc = num_field(body, "top_p", 0, 1, &top_p, &set, e))) return rc;
    if (set && top_p == 0) temperature = 0; /* only the most likely token is left */
    v = json_object_get(body, "seed");
    if (is_given(v) && !json_is_integer(v)) return BAD("seed", "seed must be an integer");

    json_t *work = json_pack("{s:s, s:i, s:f, s:f}", "kind", chat ? "chat" : "completion",
                             "max_tokens", max_tokens, "temperature", temperature, "top_p",
                             top_p > 0 ? top_p : 1.0);
    if (!work) return api_errorf(e, 500, "internal_error", NULL, "out of memory");
    if (is_given(v)) json_object_set(work, "seed", (json_t *)v);
    if (chat && json_is_true(json_object_get(body, "logprobs"))) {
        const json_t *k = json_object_get(body, "top_logprobs");
        json_object_set_new(work, "logprobs", json_true());
        json_object_set_new(work, "top_logprobs",
                            json_integer(json_is_integer(k) ? json_integer_value(k) : 0));
    } else if (!chat && json_is_integer(json_object_get(body, "logprobs"))) {
        /* the legacy form: logprobs = N asks for the chosen token's and the N
         * most likely; the worker reports both as for chat */
        json_object_set_new(work, "logprobs", json_true());
        json_object_set_new(work, "top_logprobs",
                            json_integer(json_integer_value(json_object_get(body, "logprobs"))));
    }
    rc = chat ? messages_field(body, work, e) : prompt_field(body, work, e);
    if (!rc) rc = stop_field(body, work, e);
    if (rc) {
        json_decref(work);
        return rc;
    }
    out->chat = chat;
    out->work = work;
    return 0;
}

void chat_req_clear(chat_req *r)
{
    json_decref(r->work);
    r->work = NULL;
}
