/* validate_chat.h: validation of POST /v1/chat/completions and
 * POST /v1/completions bodies (OpenAI's shapes).
 *
 * Every field OpenAI defines is either supported, accepted because its
 * value changes nothing (user, store, metadata, service_tier,
 * frequency_penalty 0, presence_penalty 0, an empty logit_bias, n 1,
 * tools [], tool_choice "none", response_format text, ...),
 * or a 400 naming it when its value would change the output in a way that
 * is not supported; an unknown field is a 400 naming it. */
#ifndef DT_API_VALIDATE_CHAT_H
#define DT_API_VALIDATE_CHAT_H

#include <jansson.h>

#include "errors.h"

#define CHAT_MAX_MESSAGES 4096
#define CHAT_MAX_STOP 4
#define CHAT_MODEL_LEN 256
#define CHAT_MAX_TOP_LOGPROBS 20
/* /v1/completions: logprobs = N, at most this (OpenAI's limit) */
#define COMPLETION_MAX_LOGPROBS 5

typedef struct chat_req {
    int chat;                    /* 1: chat.completions, 0: completions */
    char model[CHAT_MODEL_LEN];  /* the model id asked for */
    int stream;                  /* stream: true */
    int include_usage;           /* stream_options.include_usage */
    /* What the serving worker needs (new reference): kind, messages (every
     * content a string; "developer" as "system") or prompt, max_tokens (0:
     * the default), temperature, top_p, seed (when given), stop (a list),
     * logprobs and top_logprobs (chat, when logprobs is true). */
    json_t *work;
} chat_req;

/* Validates body for chat (1) or completions (0). max_tokens_cap: the
 * server's limit on max_tokens. 0 with *out filled (free with
 * chat_req_clear), or the status with e filled. */
int validate_chat(const json_t *body, int chat, int max_tokens_cap, chat_req *out,
                  api_error *e);
void chat_req_clear(chat_req *r);

#endif
