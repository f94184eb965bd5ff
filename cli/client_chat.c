/* client_chat.c: `deltatune chat MODEL`, a chat with a model over the HTTP
 * API (POST /v1/chat/completions with stream: true), answers printed as
 * they stream in. Interactive (one line a turn, the conversation kept and
 * sent again each turn; an empty line or end of input ends it), or one
 * shot with --prompt. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "client_internal.h"

static const char chat_help[] =
    "usage: deltatune chat MODEL [--prompt TEXT] [--system TEXT] [--max-tokens N]\n"
    "                      [--temperature T] [--seed S] [common options]\n"
    "Chats with MODEL (a base model or one of your fine-tuned models, see\n"
    "`deltatune models list`) through the server's serving workers; answers\n"
    "are printed as they are generated. Without --prompt: one line a turn\n"
    "from the terminal (or stdin), the conversation kept; an empty line or\n"
    "end of input ends it. --json prints each answer's final JSON\n"
    "(chat.completion) instead of streaming text.\n"
    "  --prompt TEXT     one question, one answer, then exit\n"
    "  --system TEXT     a system message first\n"
    "  --max-tokens N    new tokens per answer at most (default: the server's)\n"
    "  --temperature T   0 (default) greedy; up to 2\n"
    "  --seed S          sampling seed (with --temperature > 0)\n"
    CL_COMMON_HELP;

enum { O_PROMPT = CL_O_FIRST_OWN, O_SYSTEM, O_MAX, O_TEMP, O_SEED };

typedef struct chat_opts {
    const char *prompt, *system;
    long max_tokens, seed;
    int has_seed;
    double temperature;
} chat_opts;

static int chat_opt(void *ud, int id, const char *arg)
{
    chat_opts *o = ud;
    char *end;
    switch (id) {
    case O_PROMPT: o->prompt = arg; return 0;
    case O_SYSTEM: o->system = arg; return 0;
    case O_MAX:
        o->max_tokens = strtol(arg, &end, 10);
        if (*end || o->max_tokens < 1) {
            fprintf(stderr, "deltatune chat: --max-tokens must be a positive integer\n");
            return -1;
        }
        return 0;
    case O_TEMP:
        o->temperature = strtod(arg, &end);
        if (*end || !(o->temperature >= 0 && o->temperature <= 2)) {
            fprintf(stderr, "deltatune chat: --temperature must be between 0 and 2\n");
            return -1;
        }
        return 0;
    case O_SEED:
        o->seed = strtol(arg, &end, 10);
        o->has_seed = 1;
        if (*end) {
            fprintf(stderr, "deltatune chat: --seed must be an integer\n");
            return -1;
        }
        return 0;
    }
    return -1;
}

/* One streamed answer being read. */
typedef struct turn {
    cl_ctx *c;
    long status;
    cl_buf line, errbody, text;
    int failed;                  /* an error chunk came */
} turn;

/* One "data: ..." line of the stream. */
static void on_data(turn *t, const char *d)
{
    if (!strcmp(d, "[DONE]")) return;
    json_t *j = json_loads(d, 0, NULL);
    if (!j) return;
    json_t *e = json_object_get(j, "error");
    if (e) {
        fprintf(stderr, "\ndeltatune chat: the answer broke off: %s (%s)\n",
                cl_str(e, "message"), cl_str(e, "code"));
        t->failed = 1;
    }
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    const char *s = json_string_value(json_object_get(json_object_get(ch, "delta"), "content"));
    if (s && *s) {
        fputs(s, stdout);
        fflush(stdout);
        cl_buf_add(&t->text, s, strlen(s));
    }
    json_decref(j);
}

static size_t on_stream(char *p, size_t sz, size_t n, void *ud)
{
    turn *t = ud;
    size_t len = sz * n;
    if (!t->status) curl_easy_getinfo(t->c->curl, CURLINFO_RESPONSE_CODE, &t->status);
    if (t->status != 200) return cl_buf_add(&t->errbody, p, len) ? 0 : len;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\n') {
            cl_buf_add(&t->line, "", 0);
            const char *l = t->line.p ? t->line.p : "";
            if (!strncmp(l, "data: ", 6)) on_data(t, l + 6);
            t->line.n = 0;
        } else if (p[i] != '\r' && cl_buf_add(&t->line, p + i, 1)) {
            return 0;
        }
    }
    return len;
}

/* Sends the conversation, prints the answer, appends it to msgs. */
static int one_turn(cl_ctx *c, const char *model, json_t *msgs, const chat_opts *o)
{
    char url[1200];
    json_t *body = json_pack("{s:s, s:O, s:f}", "model", model, "messages", msgs,
                             "temperature", o->temperature);
    if (o->max_tokens) json_object_set_new(body, "max_tokens", json_integer(o->max_tokens));
    if (o->has_seed) json_object_set_new(body, "seed", json_integer(o->seed));
    if (c->json) { /* the whole answer as JSON */
        json_t *out = NULL;
        int rc = cl_call(c, "POST", "/v1/chat/completions", body, NULL, NULL, &out);
        json_decref(body);
        if (rc) return rc;
        cl_print_json(out, 1);
        json_t *m = json_object_get(json_array_get(json_object_get(out, "choices"), 0),
                                    "message");
        json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "assistant", "content",
                                              cl_str(m, "content")));
        json_decref(out);
        return 0;
    }
    json_object_set_new(body, "stream", json_true());
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) return CL_EXIT_ERROR;
    snprintf(url, sizeof url, "%s/v1/chat/completions", c->url);
    turn t = {.c = c};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: text/event-stream");
    h = cl_prepare(c, url, h);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_stream);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &t);
    CURLcode rc = curl_easy_perform(c->curl);
    curl_slist_free_all(h);
    free(text);
    if (!t.status) curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &t.status);
    int out = 0;
    if (t.status && t.status != 200) {
        cl_print_api_error(c, url, t.status, &t.errbody);
        out = CL_EXIT_ERROR;
    } else if (rc != CURLE_OK) {
        fputc('\n', stdout);
        cl_print_net_error(c, url, rc);
        out = CL_EXIT_ERROR;
    } else {
        fputc('\n', stdout);
        fflush(stdout);
        out = t.failed ? CL_EXIT_ERROR : 0;
        json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "assistant", "content",
                                              t.text.p ? t.text.p : ""));
    }
    cl_buf_free(&t.line);
    cl_buf_free(&t.errbody);
    cl_buf_free(&t.text);
    return out;
}

int cl_cmd_chat(int argc, char **argv)
{
    static const struct option opts[] = {
        {"prompt", required_argument, 0, O_PROMPT},
        {"system", required_argument, 0, O_SYSTEM},
        {"max-tokens", required_argument, 0, O_MAX},
        {"temperature", required_argument, 0, O_TEMP},
        {"seed", required_argument, 0, O_SEED},
        CL_COMMON_OPTS,
        {0, 0, 0, 0}};
    cl_ctx c;
    chat_opts o = {0};
    const char *pos[1];
    int npos = 0;
    cl_init(&c, "chat");
    int rc = cl_parse(&c, argc, argv, opts, chat_help, chat_opt, &o, pos, 1, &npos);
    if (rc == CL_HELP_SHOWN) return 0;
    if (rc) return rc;
    if (npos != 1) {
        fprintf(stderr, "deltatune chat: name the model (see deltatune chat --help)\n");
        return CL_EXIT_USAGE;
    }
    if ((rc = cl_connect(&c))) return rc;
    json_t *msgs = json_array();
    if (o.system)
        json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "system", "content",
                                              o.system));
    if ((o.system && !json_array_size(msgs)) ||
        (o.prompt && json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user",
                                                           "content", o.prompt)))) {
        fprintf(stderr, "deltatune chat: --prompt and --system must be valid UTF-8\n");
        rc = CL_EXIT_USAGE;
    } else if (o.prompt) {
        rc = one_turn(&c, pos[0], msgs, &o);
    } else {
        int tty = isatty(0);
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        for (;;) {
            if (tty) {
                fputs("> ", stdout);
                fflush(stdout);
            }
            if ((n = getline(&line, &cap, stdin)) < 0) break;
            while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
            if (!n) break;
            json_t *m = json_pack("{s:s, s:s}", "role", "user", "content", line);
            if (!m) {
                fprintf(stderr, "deltatune chat: that line is not valid UTF-8; say it again\n");
                continue;
            }
            json_array_append_new(msgs, m);
            if ((rc = one_turn(&c, pos[0], msgs, &o))) break;
        }
        free(line);
    }
    json_decref(msgs);
    cl_close(&c);
    return rc;
}
