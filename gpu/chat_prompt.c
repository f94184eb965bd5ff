/* chat_prompt.c: the prompt of a chat for generation (dt_chat_prompt,
 * dt_chat_end_token in generate.h), rendered by dataset.c's builder as it
 * renders chat rows for training, with the assistant's turn opened. */
#include "generate.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/dt.h"
#include "dataset_impl.h"

/* The prompt must be, token for token, what training makes of the same
 * chat up to the answer, so it is made by the same builder
 * (ds_render_chat): text that is not trained accumulates and is encoded in
 * one piece until a control token, a trained span or a change of
 * "control-token strings recognised" interrupts it; each trained span (an
 * earlier assistant turn with its end-of-turn marker) is encoded on its own.
 * No limit: a prompt is never cut (the serving worker refuses one longer
 * than the model's context). test_chat_template's
 * test_chat_prompt_is_the_training_row_up_to_the_answer holds the two
 * together. */
int dt_chat_prompt(const dt_tokenizer *tok, const json_t *messages,
                   int32_t **ids, int *n, char *err)
{
    ds_builder b = {.tok = tok, .limit = INT32_MAX, .maxb = DT_TOK_NO_BOUND};
    *ids = NULL;
    *n = 0;
    int rc = ds_render_chat(&b, messages, 1);
    if (rc) {
        if (err)
            snprintf(err, DT_ERR_LEN, "%s", b.err[0] ? b.err : dt_strerror(rc));
        ds_builder_free(&b);
        return rc;
    }
    *ids = b.ids;
    *n = b.n;
    b.ids = NULL;
    ds_builder_free(&b);
    return 0;
}

int32_t dt_chat_end_token(const dt_tokenizer *tok)
{
    static const char *const ends[] = {"<|im_end|>", "<|eot_id|>", "<end_of_turn>",
                                       "<|end|>", NULL};
    for (int k = 0; ends[k]; k++) {
        int32_t id = dt_tokenizer_token_id(tok, ends[k]);
        if (id >= 0)
            return id;
    }
    return -1;
}
