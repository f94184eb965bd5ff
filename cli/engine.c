/* engine.c: the engine's subcommands of `deltatune`: train, tokenize,
 * generate. Each returns a process exit status (0 ok, 1 error, 2 usage,
 * 130 interrupted) and prints errors to stderr as "deltatune train: ...". */
#include "engine.h"

#include <stdatomic.h>
#include <errno.h>
#include <jansson.h>
#include <strings.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/dt.h"
#include "gpu/generate.h"
#include "gpu/model.h"
#include "gpu/train.h"

static atomic_int g_stop; /* set by the SIGINT/SIGTERM handler */

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static const char train_usage[] =
"usage: deltatune train --model PATH --data FILE --out DIR [options]\n"
"\n"
"Fine-tunes a GPT-2 or Llama-family model (Hugging Face directory or .gguf)\n"
"on a JSONL file and writes DIR/merged/ (a Hugging Face directory),\n"
"DIR/adapter/ (PEFT, for --method lora; for delta_lora the exact rank-2r\n"
"adapter of docs/DELTA-LORA.md) and DIR/checkpoints/.\n"
"\n"
"  --model PATH            base model: HF directory or .gguf file\n"
"  --data FILE             training JSONL ({text} | {prompt,completion} |\n"
"                          {messages} | {input_ids[,labels]})\n"
"  --valid FILE            validation JSONL (loss reported)\n"
"  --out DIR               output directory\n"
"  --method M              delta_lora (default) | lora | full\n"
"  --rank R                LoRA rank r (default 8)\n"
"  --alpha A               LoRA alpha; scaling is alpha/r (default 16)\n"
"  --lambda L              Delta-LoRA update ratio (default 0.5)\n"
"  --start-step K          Delta-LoRA: W moves from optimizer step K+1 on\n"
"                          (the paper's K is ours + 1: its K=500 is 501 here;\n"
"                          default: 10% of the total steps; a warning if\n"
"                          K >= total; see docs/DELTA-LORA.md)\n"
"  --target-modules LIST   q,k,v,o,gate,up,down or module names (q_proj,\n"
"                          c_attn, ...); 'all' (default q,v)\n"
"  --lr X                  peak learning rate (default 2e-4)\n"
"  --lr-scheduler S        linear (default) | cosine | constant\n"
"  --warmup-steps N        linear warmup steps (default 0)\n"
"  --weight-decay X        AdamW decoupled weight decay (default 0)\n"
"  --max-grad-norm X       global-norm clipping, 0 = off (default 1.0)\n"
"  --adam-epsilon X        AdamW epsilon (default 1e-8)\n"
"  --model-dropout X       dropout in training (off in validation and\n"
"                          generation) replacing the config's (default:\n"
"                          config.json's GPT-2 resid/embd/attn_pdrop, 0.1 when\n"
"                          missing; Llama attention_dropout); 0 turns it off\n"
"  --lora-dropout P        lora only: dropout on the LoRA branch input, as\n"
"                          PEFT's lora_dropout (default 0; refused for\n"
"                          delta_lora, whose paper removes it)\n"
"  --label-smoothing E     label smoothing of the training loss, as torch's\n"
"                          CrossEntropyLoss(label_smoothing=E) (default 0)\n"
"  --batch-size B          rows per micro-batch (default 4); with --packing,\n"
"                          packed sequences per micro-batch\n"
"  --grad-accum G          micro-batches per optimizer step (default 1)\n"
"  --seq-len T             max predicted tokens per row (default 256)\n"
"  --packing               pack several rows into each sequence of up to\n"
"                          --seq-len positions (attention and positions kept\n"
"                          within each row, loss on each row's predicted\n"
"                          tokens; default off: one row per sequence, padded\n"
"                          to the batch's longest row)\n"
"  --epochs E | --steps N  training length (default 1 epoch)\n"
"  --seed S                seed for data order and LoRA init (default 42)\n"
"  --threads N             CPU threads (default: all cores)\n"
"  --device D              cpu (default) | cuda[:N] | auto\n"
"  --precision P           auto (default) | fp32 | tf32 | bf16. auto: bf16 on\n"
"                          CUDA devices of compute capability >= 8.0, fp32\n"
"                          elsewhere. bf16: frozen linear weights, embedding\n"
"                          table and LM head in bf16 on the device, bf16\n"
"                          GEMMs with fp32 accumulation;\n"
"                          LoRA factors, norms, softmax, loss and AdamW stay\n"
"                          fp32; Delta-LoRA never rounds W (its update is two\n"
"                          low-rank terms, docs/DELTA-LORA.md); full keeps\n"
"                          fp32 weights. tf32: CUDA only (DT_TF32=1 is its\n"
"                          alias when --precision is not given)\n"
"  --activation-checkpointing M\n"
"                          auto (default) | on | off. on: keep only each\n"
"                          layer's input through the forward pass and\n"
"                          recompute the layer's activations before its\n"
"                          backward pass (same gradients, bit for bit; one\n"
"                          more forward pass of compute; the activations of\n"
"                          one layer held instead of every layer's). auto:\n"
"                          on only when the memory estimate without it\n"
"                          exceeds the budget (the CUDA device's memory,\n"
"                          else this machine's available memory)\n"
"  --eval-interval N       validation every N steps (default: at the end)\n"
"  --checkpoint-interval N checkpoint every N steps (default: at the end)\n"
"  --init-adapter DIR      start A and B from a PEFT LoRA adapter\n"
"  --export-dtype D        merged model's dtype: float32 | bfloat16 | float16\n"
"                          (default: the input's; bfloat16 for a GGUF input;\n"
"                          the merge is computed in fp32 and rounded once,\n"
"                          round-to-nearest-even)\n"
"  --export-shard-size N   merged model: bytes per safetensors file, above\n"
"                          which it is sharded with model.safetensors.index.json\n"
"                          (default 5000000000, as transformers; suffixes\n"
"                          KB MB GB)\n"
"  --resume                continue from the newest complete checkpoint\n"
"  --json                  JSON lines progress (default when not a terminal)\n"
"  --estimate              print the run's peak memory (bytes; weights,\n"
"                          trainable + optimizer, activations, workspace,\n"
"                          runtime) and exit without training; --out not needed;\n"
"                          says whether activation checkpointing is on and\n"
"                          the estimate without it\n"
"\n"
"Ctrl-C writes a checkpoint and exits; rerun with --resume to continue.\n";

static int parse_f(const char *s, float *out, const char *flag)
{
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !isfinite(v)) {
        fprintf(stderr, "deltatune train: %s: not a number: \"%s\"\n", flag, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

static int parse_i(const char *s, int *out, const char *flag)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < -1 || v > 1000000000) {
        fprintf(stderr, "deltatune train: %s: not a valid integer: \"%s\"\n", flag, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* deltatune train --estimate: the run's peak memory, nothing trained. */
static int print_estimate(const dt_train_opts *o, int json)
{
    char err[DT_ERR_LEN] = "";
    dt_mem_estimate e;
    int ckpt = 0;
    long long off = 0, budget = 0;
    int rc = dt_train_estimate_ckpt(o, &e, &ckpt, &off, &budget, err);
    if (rc) {
        fprintf(stderr, "deltatune train: %s\n", err[0] ? err : dt_strerror(rc));
        return 1;
    }
    const char *dev = o->device ? o->device : "cpu";
    if (json) {
        printf("{\"type\":\"estimate\",\"total_bytes\":%lld,\"weights_bytes\":%lld,"
               "\"trainable_bytes\":%lld,\"activations_bytes\":%lld,"
               "\"workspace_bytes\":%lld,\"runtime_bytes\":%lld,\"batch_size\":%d,"
               "\"seq_len\":%d,\"activation_seq_len\":%d,\"device\":\"%s\","
               "\"activation_checkpointing\":%s,\"activation_checkpointing_mode\":\"%s\","
               "\"total_bytes_without_checkpointing\":%lld,\"budget_bytes\":%lld}\n",
               e.total, e.weights, e.trainable, e.activations, e.workspace, e.runtime,
               o->batch, o->seq_len, e.seq_eff, dev, ckpt ? "true" : "false",
               dt_act_ckpt_name(o->act_ckpt), off, budget);
        return 0;
    }
    const struct { const char *what; long long n; } rows[] = {
        {"weights", e.weights}, {"trainable + optimizer", e.trainable},
        {"activations", e.activations}, {"workspace", e.workspace},
        {"runtime (this process)", e.runtime}};
    char h[32];
    dt_mem_human(e.total, h, sizeof h);
    printf("peak memory estimate: %lld bytes (%s) on %s, batch %d x %d tokens "
           "(seq_len %d; activations sized by the longest row)\n", e.total, h, dev, o->batch, e.seq_eff,
           o->seq_len);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        dt_mem_human(rows[i].n, h, sizeof h);
        printf("  %-24s %14lld bytes  %10s\n", rows[i].what, rows[i].n, h);
    }
    char hoff[32], hb[32];
    dt_mem_human(off, hoff, sizeof hoff);
    dt_mem_human(budget, hb, sizeof hb);
    printf("activation checkpointing: %s (%s); without it %lld bytes (%s)", ckpt ? "on" : "off",
           dt_act_ckpt_name(o->act_ckpt), off, hoff);
    if (o->act_ckpt == DT_ACT_CKPT_AUTO)
        printf(", budget %lld bytes (%s)", budget, hb);
    printf("\n");
    return 0;
}

/* "N", "N KB|MB|GB" (decimal, as transformers' "5GB") -> *out > 0. */
static int parse_bytes(const char *s, long long *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !(v > 0))
        return -1;
    while (*end == ' ')
        end++;
    double mul = 1;
    if (!strcasecmp(end, "kb")) mul = 1e3;
    else if (!strcasecmp(end, "mb")) mul = 1e6;
    else if (!strcasecmp(end, "gb")) mul = 1e9;
    else if (*end) return -1;
    v *= mul;
    if (v < 1 || v > 9e18)
        return -1;
    *out = (long long)v;
    return 0;
}

int dt_cmd_train(int argc, char **argv)
{
    enum { O_MODEL = 256, O_DATA, O_VALID, O_OUT, O_METHOD, O_RANK, O_ALPHA,
           O_LAMBDA, O_K, O_TARGETS, O_LR, O_SCHED, O_WARMUP, O_WD, O_CLIP, O_EPS,
           O_BATCH, O_ACCUM, O_SEQ, O_EPOCHS, O_STEPS, O_SEED, O_THREADS,
           O_DEVICE, O_EVAL, O_CKPT, O_INIT, O_RESUME, O_JSON, O_ESTIMATE, O_HELP,
           O_MDROP, O_LDROP, O_LSMOOTH, O_XDTYPE, O_XSHARD, O_PREC, O_PACK,
           O_ACKPT };
    static const struct option opts[] = {
        {"model", 1, 0, O_MODEL}, {"data", 1, 0, O_DATA}, {"valid", 1, 0, O_VALID},
        {"out", 1, 0, O_OUT}, {"method", 1, 0, O_METHOD}, {"rank", 1, 0, O_RANK},
        {"alpha", 1, 0, O_ALPHA}, {"lambda", 1, 0, O_LAMBDA},
        {"start-step", 1, 0, O_K}, {"target-modules", 1, 0, O_TARGETS},
        {"lr", 1, 0, O_LR}, {"lr-scheduler", 1, 0, O_SCHED},
        {"warmup-steps", 1, 0, O_WARMUP}, {"weight-decay", 1, 0, O_WD},
        {"max-grad-norm", 1, 0, O_CLIP}, {"adam-epsilon", 1, 0, O_EPS}, {"batch-size", 1, 0, O_BATCH},
        {"grad-accum", 1, 0, O_ACCUM}, {"seq-len", 1, 0, O_SEQ},
        {"epochs", 1, 0, O_EPOCHS}, {"steps", 1, 0, O_STEPS}, {"seed", 1, 0, O_SEED},
        {"threads", 1, 0, O_THREADS}, {"device", 1, 0, O_DEVICE},
        {"eval-interval", 1, 0, O_EVAL}, {"checkpoint-interval", 1, 0, O_CKPT},
        {"init-adapter", 1, 0, O_INIT}, {"resume", 0, 0, O_RESUME},
        {"json", 0, 0, O_JSON}, {"estimate", 0, 0, O_ESTIMATE}, {"help", 0, 0, O_HELP},
        {"model-dropout", 1, 0, O_MDROP}, {"lora-dropout", 1, 0, O_LDROP},
        {"label-smoothing", 1, 0, O_LSMOOTH}, {"export-dtype", 1, 0, O_XDTYPE},
        {"export-shard-size", 1, 0, O_XSHARD}, {"precision", 1, 0, O_PREC},
        {"packing", 0, 0, O_PACK}, {"activation-checkpointing", 1, 0, O_ACKPT},
        {0, 0, 0, 0}};
    dt_train_opts o;
    dt_train_defaults(&o);
    o.json = !isatty(STDERR_FILENO);
    int c, bad = 0, seed = 42, epochs_set = 0, estimate = 0, json_flag = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: o.model = optarg; break;
        case O_DATA: o.data = optarg; break;
        case O_VALID: o.valid = optarg; break;
        case O_OUT: o.out = optarg; break;
        case O_METHOD:
            if (!strcmp(optarg, "delta_lora")) o.method = DT_DELTA_LORA;
            else if (!strcmp(optarg, "lora")) o.method = DT_LORA;
            else if (!strcmp(optarg, "full")) o.method = DT_FULL;
            else {
                fprintf(stderr, "deltatune train: --method: \"%s\" is not one of "
                        "delta_lora, lora, full\n", optarg);
                bad = 1;
            }
            break;
        case O_RANK: bad |= parse_i(optarg, &o.rank, "--rank"); break;
        case O_ALPHA: bad |= parse_f(optarg, &o.alpha, "--alpha"); break;
        case O_LAMBDA: bad |= parse_f(optarg, &o.lambda, "--lambda"); break;
        case O_K: bad |= parse_i(optarg, &o.start_step, "--start-step"); break;
        case O_TARGETS: o.targets = optarg; break;
        case O_LR: bad |= parse_f(optarg, &o.lr, "--lr"); break;
        case O_SCHED:
            if (!strcmp(optarg, "linear")) o.sched = DT_SCHED_LINEAR;
            else if (!strcmp(optarg, "cosine")) o.sched = DT_SCHED_COSINE;
            else if (!strcmp(optarg, "constant")) o.sched = DT_SCHED_CONSTANT;
            else {
                fprintf(stderr, "deltatune train: --lr-scheduler: \"%s\" is not one "
                        "of linear, cosine, constant\n", optarg);
                bad = 1;
            }
            break;
        case O_WARMUP: bad |= parse_i(optarg, &o.warmup, "--warmup-steps"); break;
        case O_WD: bad |= parse_f(optarg, &o.weight_decay, "--weight-decay"); break;
        case O_CLIP: bad |= parse_f(optarg, &o.max_grad_norm, "--max-grad-norm"); break;
        case O_EPS: bad |= parse_f(optarg, &o.adam_eps, "--adam-epsilon"); break;
        case O_MDROP:
            bad |= parse_f(optarg, &o.model_dropout, "--model-dropout");
            if (!bad && !(o.model_dropout >= 0.0f && o.model_dropout < 1.0f)) {
                fprintf(stderr, "deltatune train: --model-dropout must be in "
                        "[0, 1), got %s\n", optarg);
                bad = 1;
            }
            break;
        case O_LDROP: bad |= parse_f(optarg, &o.lora_dropout, "--lora-dropout"); break;
        case O_LSMOOTH: bad |= parse_f(optarg, &o.label_smoothing, "--label-smoothing"); break;
        case O_BATCH: bad |= parse_i(optarg, &o.batch, "--batch-size"); break;
        case O_ACCUM: bad |= parse_i(optarg, &o.accum, "--grad-accum"); break;
        case O_SEQ: bad |= parse_i(optarg, &o.seq_len, "--seq-len"); break;
        case O_EPOCHS: bad |= parse_i(optarg, &o.epochs, "--epochs"); epochs_set = 1; break;
        case O_STEPS: bad |= parse_i(optarg, &o.steps, "--steps"); break;
        case O_SEED: bad |= parse_i(optarg, &seed, "--seed"); o.seed = (uint64_t)seed; break;
        case O_THREADS: bad |= parse_i(optarg, &o.threads, "--threads"); break;
        case O_DEVICE: o.device = optarg; break;
        case O_PREC: {
            int p = dt_precision_parse(optarg);
            if (p < 0) {
                fprintf(stderr, "deltatune train: --precision %s: use auto, fp32, "
                        "tf32 or bf16\n", optarg);
                bad = 1;
            } else {
                o.precision = (dt_precision)p;
            }
            break;
        }
        case O_EVAL: bad |= parse_i(optarg, &o.eval_interval, "--eval-interval"); break;
        case O_CKPT: bad |= parse_i(optarg, &o.ckpt_interval, "--checkpoint-interval"); break;
        case O_INIT: o.init_adapter = optarg; break;
        case O_XDTYPE: o.export_dtype = optarg; break;
        case O_XSHARD:
            if (parse_bytes(optarg, &o.export_shard_size) != 0) {
                fprintf(stderr, "deltatune train: --export-shard-size must be "
                        "a positive byte count (e.g. 2000000000, 500MB, 2GB), "
                        "got \"%s\"\n", optarg);
                bad = 1;
            }
            break;
        case O_RESUME: o.resume = 1; break;
        case O_PACK: o.packing = 1; break;
        case O_ACKPT: {
            int a = dt_act_ckpt_parse(optarg);
            if (a < 0) {
                fprintf(stderr, "deltatune train: --activation-checkpointing %s: use "
                        "auto, on or off\n", optarg);
                bad = 1;
            } else {
                o.act_ckpt = a;
            }
            break;
        }
        case O_JSON: o.json = 1; json_flag = 1; break;
        case O_ESTIMATE: estimate = 1; break;
        case O_HELP: case 'h': fputs(train_usage, stdout); return 0;
        default: bad = 1;
        }
    }
    if (o.steps > 0 && epochs_set) {
        fprintf(stderr, "deltatune train: give --epochs or --steps, not both\n");
        bad = 1;
    }
    if (o.steps > 0)
        o.epochs = 0;
    if (!bad && (!o.model || !o.data || (!o.out && !estimate))) {
        fprintf(stderr, "deltatune train: --model, --data and --out are required\n");
        bad = 1;
    }
    if (bad || optind < argc) {
        if (optind < argc)
            fprintf(stderr, "deltatune train: unexpected argument \"%s\"\n", argv[optind]);
        fprintf(stderr, "run 'deltatune train --help' for the options\n");
        return 2;
    }
    if (estimate)
        return print_estimate(&o, json_flag);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    o.stop = &g_stop;
    char err[DT_ERR_LEN] = "";
    int rc = dt_train(&o, err);
    if (rc == DT_ECANCEL) {
        fprintf(stderr, "\ndeltatune train: %s\n", err);
        return 130;
    }
    if (rc) {
        fprintf(stderr, "\ndeltatune train: %s\n", err[0] ? err : dt_strerror(rc));
        return 1;
    }
    if (!o.json)
        fprintf(stderr, "deltatune train: merged model written to %s/merged\n", o.out);
    return 0;
}

/* Reads all of stdin into a new buffer. */
static char *read_stdin(size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0)
            break;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
    }
    *len = n;
    return buf;
}

int dt_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            puts("usage: deltatune tokenize --model PATH < text\n"
                 "Prints the token ids of stdin as a JSON array.");
            return 0;
        } else {
            fprintf(stderr, "deltatune tokenize: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "deltatune tokenize: --model is required\n");
        return 2;
    }
    char err[DT_ERR_LEN] = "";
    dt_tokenizer *tok = dt_model_tokenizer(model, err);
    if (!tok) {
        fprintf(stderr, "deltatune tokenize: %s\n", err);
        return 1;
    }
    size_t len;
    char *text = read_stdin(&len);
    int32_t *ids = NULL;
    int n = 0, rc = text ? dt_tokenizer_encode(tok, text, len, 1, &ids, &n, err) : DT_ENOMEM;
    if (rc) {
        fprintf(stderr, "deltatune tokenize: %s\n", err[0] ? err : dt_strerror(rc));
    } else {
        putchar('[');
        for (int i = 0; i < n; i++)
            printf(i ? ", %d" : "%d", ids[i]);
        puts("]");
    }
    free(ids);
    free(text);
    dt_tokenizer_free(tok);
    return rc ? 1 : 0;
}

/* xorshift for sampling */
/* Generates for one prompt with the KV-cached decoder; the text (malloc'd)
 * in *text. */
static int gen_one(dt_decoder *d, const dt_tokenizer *tok, const char *prompt,
                   const dt_gen_opts *o, char **text, int *nprompt, int *nnew,
                   const char **finish, char *err)
{
    int32_t *prompt_ids = NULL, *out = NULL;
    int n = 0, k = 0;
    *text = NULL;
    if (dt_tokenizer_encode(tok, prompt, strlen(prompt), 1, &prompt_ids, &n,
                            err))
        return 1;
    int rc = dt_generate(d, prompt_ids, n, o, &out, &k, finish, NULL, NULL,
                         err);
    free(prompt_ids);
    if (rc)
        return rc;
    *text = dt_tokenizer_decode(tok, out, k);
    free(out);
    *nprompt = n;
    *nnew = k;
    if (!*text)
        return dt_errf(err, DT_ENOMEM, "out of memory decoding the output");
    return 0;
}

/* --prompts-file: one JSON string per line in, one JSON object per line out
 * ({"text", "prompt_tokens", "completion_tokens", "finish_reason",
 * "seconds"}), all with one model load. */
static int gen_file(dt_decoder *d, const dt_tokenizer *tok, const char *path,
                    const dt_gen_opts *o, char *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return dt_errf(err, DT_EIO, "--prompts-file %s: %s", path,
                       strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rc = 0;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == (size_t)len)
            continue;
        json_error_t je;
        json_t *j = json_loads(line, JSON_DECODE_ANY, &je);
        if (!json_is_string(j)) {
            json_decref(j);
            rc = dt_errf(err, DT_EINVAL, "--prompts-file %s line %d: not a "
                         "JSON string", path, lineno);
            break;
        }
        char *text = NULL;
        const char *finish = "length";
        int np = 0, nn = 0;
        double t0 = dt_now();
        rc = gen_one(d, tok, json_string_value(j), o, &text, &np, &nn, &finish,
                     err);
        if (!rc) {
            json_t *r = json_pack("{s:s, s:i, s:i, s:s, s:f}", "text", text,
                                  "prompt_tokens", np, "completion_tokens", nn,
                                  "finish_reason", finish, "seconds",
                                  dt_now() - t0);
            char *s = r ? json_dumps(r, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
            if (s)
                printf("%s\n", s);
            else
                rc = dt_errf(err, DT_ENOMEM, "out of memory");
            fflush(stdout);
            free(s);
            json_decref(r);
        } else {
            char msg[DT_ERR_LEN];
            snprintf(msg, sizeof msg, "%s", err);
            dt_errf(err, DT_EINVAL, "--prompts-file %s line %d: %s", path,
                    lineno, msg);
        }
        free(text);
        json_decref(j);
    }
    free(line);
    fclose(f);
    return rc;
}

int dt_cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *device = "cpu", *pfile = NULL;
    int max_tokens = 32, threads = 0, seed = 0;
    float temperature = 0.0f, top_p = 1.0f;
    dt_precision gprec = DT_PREC_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            puts("usage: deltatune generate --model PATH (--prompt TEXT | --prompts-file FILE)\n"
                 "                          [--max-tokens N] [--temperature T] [--top-p P]\n"
                 "                          [--seed S] [--device D] [--threads N]\n"
                 "                          [--precision auto|fp32|tf32|bf16]\n"
                 "--precision: bf16 keeps the weights of the linear layers, the\n"
                 "embedding table and the LM head in bf16 on the device (auto: bf16\n"
                 "on CUDA devices of compute capability >= 8.0,\n"
                 "fp32 elsewhere; tf32 needs CUDA).\n"
                 "Greedy decoding unless --temperature > 0; stops at EOS. A KV cache\n"
                 "makes each new token one pass over one position.\n"
                 "--prompts-file: one JSON string per line; prints one JSON line per\n"
                 "prompt ({text, prompt_tokens, completion_tokens, finish_reason,\n"
                 "seconds}), loading the model once.");
            return 0;
        }
        if (!v) {
            fprintf(stderr, "deltatune generate: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--prompts-file")) pfile = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--precision")) {
            int p = dt_precision_parse(v);
            if (p < 0) {
                fprintf(stderr, "deltatune generate: --precision %s: use auto, "
                        "fp32, tf32 or bf16\n", v);
                return 2;
            }
            gprec = (dt_precision)p;
        }
        else if (!strcmp(a, "--max-tokens")) max_tokens = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--seed")) seed = atoi(v);
        else if (!strcmp(a, "--temperature")) temperature = (float)atof(v);
        else if (!strcmp(a, "--top-p")) top_p = (float)atof(v);
        else {
            fprintf(stderr, "deltatune generate: unknown option %s\n", a);
            return 2;
        }
    }
    if (!model || !prompt == !pfile || max_tokens < 1 || max_tokens > 4096 ||
        temperature < 0 || !(top_p > 0 && top_p <= 1)) {
        fprintf(stderr, "deltatune generate: need --model, one of --prompt or "
                "--prompts-file, 1 <= --max-tokens <= 4096, --temperature >= 0, "
                "0 < --top-p <= 1\n");
        return 2;
    }
    char err[DT_ERR_LEN] = "";
    dt_backend *be = NULL;
    dt_weights w;
    dt_tokenizer *tok = NULL;
    dt_model *m = NULL;
    dt_decoder *d = NULL;
    int rc = 1;
    memset(&w, 0, sizeof w);
    if (!(be = dt_backend_new(device, threads, err)) || dt_weights_open(model, &w, err) ||
        !(tok = dt_model_tokenizer(model, err)))
        goto done;
    /* The cache holds the prompt and max_tokens (a --prompts-file: prompts
     * of up to 2048 tokens), within GPT-2's positions; the model's own
     * buffers only the chunks of a prefill pass. */
    int ctx = max_tokens + 2048;
    if (prompt) {
        int32_t *pids = NULL;
        int np = 0;
        if (dt_tokenizer_encode(tok, prompt, strlen(prompt), 1, &pids, &np, err))
            goto done;
        free(pids);
        ctx = np + max_tokens;
    }
    if (w.cfg.arch == DT_ARCH_GPT2 && ctx > w.cfg.max_pos)
        ctx = w.cfg.max_pos;
    dt_lora_opts lo = {DT_LORA, 0, 0.0f, 0, DT_PREC_AUTO, 0, 0.0f, 0};
    if (dt_precision_resolve(gprec, be, &lo.precision, err))
        goto done;
    w.release_on_upload = 1; /* one tensor converted on the host at a time */
    if (dt_model_new(be, &w, &lo, 1, ctx < 256 ? ctx : 256, 0, &m, err) ||
        dt_decoder_new(m, ctx, &d, err))
        goto done;
    dt_weights_release_data(&w);
    dt_gen_opts o = {.max_tokens = max_tokens, .temperature = temperature,
                     .top_p = top_p, .seed = (uint64_t)seed,
                     .eos = dt_tokenizer_eos(tok)};
    if (pfile) {
        rc = gen_file(d, tok, pfile, &o, err);
    } else {
        char *text = NULL;
        const char *finish = NULL;
        int np = 0, nn = 0;
        rc = gen_one(d, tok, prompt, &o, &text, &np, &nn, &finish, err);
        if (!rc)
            printf("%s%s\n", prompt, text);
        free(text);
    }
done:
    if (rc)
        fprintf(stderr, "deltatune generate: %s\n", err);
    dt_decoder_free(d);
    dt_model_free(m);
    dt_tokenizer_free(tok);
    dt_weights_free(&w);
    dt_backend_free(be);
    return rc ? 1 : 0;
}
