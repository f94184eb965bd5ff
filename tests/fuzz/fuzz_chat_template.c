/* fuzz_chat_template: the input is a chat template (gpu/chat_template.c),
 * rendered for a fixed conversation with transformers' variables. Checked:
 * it renders or fails with DT_EINVAL and a message (never a crash, hang,
 * leak or sanitizer report); on success the output is NUL-terminated, every
 * byte's tag is 0 or one of the messages', and the {% generation %} spans
 * lie inside the output. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dt.h"
#include "gpu/chat_template.h"

static json_t *msgs, *vars;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    if (!msgs) {
        msgs = json_pack("[{s:s,s:s},{s:s,s:s},{s:s,s:s,s:s},{s:s,s:[{s:s,s:s}]}]",
                         "role", "system", "content", "Be brief.",
                         "role", "user", "content", "Hi <|im_end|> 日本",
                         "role", "assistant", "content", "<think>\nx\n</think>\n\nyo ",
                         "reasoning_content", "why",
                         "role", "user", "content", "type", "text", "text", "more");
        vars = json_pack("{s:b,s:s,s:s,s:b}", "add_generation_prompt", 1, "bos_token",
                         "<s>", "eos_token", "</s>", "enable_thinking", 0);
        if (!msgs || !vars)
            abort();
    }
    char *tmpl = malloc(n + 1);
    if (!tmpl)
        abort();
    memcpy(tmpl, data, n);
    tmpl[n] = 0; /* a NUL inside ends the template, as for a C string */
    static const int32_t tags[4] = {1, 2, 3, 4};
    dt_chat_out out;
    char err[DT_ERR_LEN];
    int rc = dt_chat_render(tmpl, msgs, vars, tags, 1785074709LL, &out, err);
    if (rc == DT_OK) {
        if (!out.text || out.text[out.len] != 0)
            abort();
        for (size_t i = 0; i < out.len; i++)
            if (out.tag[i] < 0 || out.tag[i] > 4)
                abort();
        for (int g = 0; g < out.ngen; g++)
            if (out.gen[g][0] > out.gen[g][1] || out.gen[g][1] > out.len)
                abort();
        dt_chat_out_free(&out);
    } else if (rc != DT_EINVAL || !err[0]) {
        fprintf(stderr, "unexpected rc %d: %s\n", rc, err);
        abort();
    }
    free(tmpl);
    return 0;
}
