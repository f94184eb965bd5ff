/* chat_template.h: renders a model's Jinja chat template (the subset real
 * templates use) the way transformers' apply_chat_template(tokenize=False)
 * does: trim_blocks and lstrip_blocks on, the variables messages,
 * add_generation_prompt, tools (none), documents (none) plus any keyword
 * arguments (bos_token, eos_token, enable_thinking, ...), the globals
 * raise_exception, strftime_now, namespace and range, and {% generation %}
 * blocks as in transformers' return_assistant_tokens_mask.
 *
 * Supported: {{ }}, {% %}, {# #} with "-" / "+" whitespace control; if /
 * elif / else, for (tuple targets, "if" filter, else, loop.index / index0 /
 * revindex / revindex0 / first / last / length / previtem / nextitem),
 * break / continue, set (names, namespace attributes, set blocks) with
 * Jinja's scoping (a set inside a for body stays there), macro (with
 * defaults), raw, generation; literals (strings, numbers, lists, dicts,
 * true/false/none); + - * / // % ~, comparisons, in / not in, and / or /
 * not, a if c else b, indexing, slicing, attribute access; string methods
 * strip lstrip rstrip split startswith endswith upper lower replace title
 * capitalize, dict methods items keys values get; filters trim tojson length
 * count string upper lower default (d) first last join list map selectattr
 * rejectattr int float replace items reverse capitalize title abs;
 * tests defined undefined none string number integer float boolean mapping
 * iterable sequence true false even odd equalto (eq, ==) ne (!=) lt gt in.
 * Anything else is an error naming the construct and its line and column.
 *
 * Limits keep hostile templates finite: output size, loop iterations, call,
 * statement and expression nesting (so the C stack stays bounded), memory
 * (DT_CT_MAX_*).
 *
 * Provenance: every output byte carries a tag, the tag of the message whose
 * "content" (or "reasoning_content") it was copied from, through
 * concatenation, slicing, strip, split, trim and case changes, or 0 for bytes
 * the template wrote. The dataset uses it for the loss mask (see dataset.c). */
#ifndef DT_CHAT_TEMPLATE_H
#define DT_CHAT_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#define DT_CT_MAX_OUTPUT (16u << 20)  /* rendered bytes */
#define DT_CT_MAX_MEMORY (256u << 20) /* bytes held by values while rendering */
#define DT_CT_MAX_STEPS 1000000L      /* loop iterations, all loops together */
#define DT_CT_MAX_DEPTH 64            /* nesting of values (lists, dicts) */
#define DT_CT_MAX_NEST 32             /* nested statements, macro calls, brackets */
#define DT_CT_MAX_EXPR 128            /* height of one expression's tree */

typedef struct dt_chat_out {
    char *text;          /* rendered text, NUL-terminated; malloc'd */
    size_t len;
    int32_t *tag;        /* (len) provenance of each byte; 0 = template */
    size_t (*gen)[2];    /* {% generation %} spans [start, end) in bytes */
    int ngen;
} dt_chat_out;

/* Renders tmpl for messages (a JSON array of message objects). vars is a
 * JSON object of further variables (add_generation_prompt, bos_token,
 * eos_token, enable_thinking, ...) or NULL; "tools" and "documents" are none
 * unless given. msg_tag[i] (or 0 when msg_tag is NULL) tags the bytes of
 * message i's content. now (seconds since the epoch, UTC; < 0: the current
 * time) is what strftime_now formats. DT_OK, or DT_EINVAL with the template's
 * own raise_exception message or "chat template: line L, column C: ...". */
int dt_chat_render(const char *tmpl, const json_t *messages, const json_t *vars,
                   const int32_t *msg_tag, long long now, dt_chat_out *out,
                   char *err);
void dt_chat_out_free(dt_chat_out *out);

#endif
