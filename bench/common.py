"""common.py: what bench/engine_cpu.py and bench/engine_gpu.py share.

The hyper-parameters both sides train with, the engine's `train` command line,
the PyTorch + PEFT side (its setup after the model is loaded and one training
step), the FLOP count per token and the random inputs (rows of ids, a random
GPT-2 of a given shape). torch and transformers are imported inside the
functions that need them, so the parent processes run without them.
"""
import json, os, random, shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
RANK, ALPHA, LAMBDA, LR, CLIP, SEED = 8, 16, 0.5, 1e-4, 1.0, 1234


def engine_cmd(engine, model_path, targets, method, data, out, a, where):
    """`engine train` with the shared hyper-parameters; where is the engine's placement,
    ["--threads", N] or ["--device", D], which stands before --seed."""
    delta = ["--lambda", str(LAMBDA), "--start-step", "0"] if method == "delta_lora" else []
    return [engine, "train", "--model", model_path, "--data", data, "--out", out,
            "--method", method, "--rank", str(RANK), "--alpha", str(ALPHA),
            "--target-modules", ",".join(targets), "--lr", str(LR),
            "--lr-scheduler", "constant", "--max-grad-norm", str(CLIP),
            "--batch-size", str(a.batch), "--seq-len", str(a.seq), "--steps", str(a.total)] \
        + where + ["--seed", str(SEED), "--json"] + delta


def add_lora(model, targets, gpt2):
    """The PEFT model: LoRA (RANK, ALPHA, no dropout) on the targets; GPT-2's Conv1D
    stores W as (in, out), hence fan_in_fan_out."""
    from peft import LoraConfig, get_peft_model
    return get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                            target_modules=targets, fan_in_fan_out=gpt2))


def torch_prepare(model, cfg, mm):
    """For the PEFT model, in place and in train mode: prints the info line the engine
    prints (what flops_per_token reads; mm: the matmul weights) and returns
    (loras, params, opt), the LoRA layers, the trained parameters and their AdamW."""
    import torch
    loras = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    params = [p for p in model.parameters() if p.requires_grad]
    n_head = getattr(cfg, "n_head", None) or cfg.num_attention_heads
    d_model = getattr(cfg, "n_embd", None) or cfg.hidden_size
    print(json.dumps({"type": "info", "matmul_params": mm,
                      "n_layer": getattr(cfg, "n_layer", None) or cfg.num_hidden_layers,
                      "attn_dim": n_head * (getattr(cfg, "head_dim", None) or d_model // n_head),
                      "lora_io": sum(m.lora_A["default"].in_features +
                                     m.lora_B["default"].out_features for m in loras)}), flush=True)
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    return loras, params, opt


def read_rows(path):
    """The rows of ids write_rows wrote."""
    return [json.loads(l)["input_ids"] for l in open(path)]


def torch_step(model, loras, params, opt, x, method, gpt2):
    """One training step on x: (B, T+1) ids, cross-entropy of positions :-1 against
    targets 1:; or a dict of model inputs with "labels" (a Hugging Face batch: the
    model shifts the labels and averages over those != -100). Then clipping, AdamW
    and for delta_lora the update of W. Returns the loss."""
    import torch
    if isinstance(x, dict):
        loss = model(**x).loss
    else:
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                 x[:, 1:].reshape(-1))
        del logits  # (B, T, V): not kept through backward
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, CLIP)
    if method == "delta_lora":
        old = [(m.lora_A["default"].weight.detach().clone(),
                m.lora_B["default"].weight.detach().clone()) for m in loras]
    opt.step()
    opt.zero_grad(set_to_none=True)
    if method == "delta_lora":  # W += λ·s·(BA − B_old A_old): one rank-2r GEMM
        k = LAMBDA * ALPHA / RANK
        with torch.no_grad():
            for m, (A0, B0) in zip(loras, old):
                A, B = m.lora_A["default"].weight, m.lora_B["default"].weight
                W = m.base_layer.weight  # GPT-2's Conv1D stores W as (in, out)
                (W.t() if gpt2 else W).addmm_(torch.cat([B, -B0], 1),
                                              torch.cat([A, A0], 0), alpha=k)
    return loss


def _mix64(z):  # base/random.c dt_mix64 (splitmix64's finaliser)
    M = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def stream_order(nrows, seed, count):
    """The engine's row order (gpu/train_data.c): the dataset row at stream positions
    0 .. count-1, a seeded Fisher-Yates permutation per epoch."""
    order = []
    for e in range((count + nrows - 1) // nrows):
        s, perm = _mix64(seed ^ _mix64(e + 1)), list(range(nrows))
        for i in range(nrows - 1, 0, -1):
            s = _mix64(s)
            j = s % (i + 1)
            perm[i], perm[j] = perm[j], perm[i]
        order += perm
    return order[:count]


def flops_per_token(info, seq):
    """4·N_mm (forward 2·N_mm, backward input gradients 2·N_mm; no weight gradients of the
    frozen matmuls) + 12·L·T·d_attn (QKᵀ and AV, forward + 2× backward, dense over T) +
    6·r·Σ(in+out) (the adapters: forward, both gradients). bench/README.md explains it."""
    return (4 * info["matmul_params"] + 12 * info["n_layer"] * seq * info["attn_dim"]
            + 6 * RANK * info["lora_io"])


def save_random_gpt2(out_dir, shape, tok_dir, tok_files):
    """A GPT-2 of shape (n_layer, n_embd, n_head) with seeded random weights, saved to
    out_dir with the tokenizer files (src, dst) copied from tok_dir."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    L, d, h = shape
    GPT2LMHeadModel(GPT2Config(n_layer=L, n_embd=d, n_head=h, vocab_size=50257,
                               n_positions=1024, attn_pdrop=0.0, resid_pdrop=0.0,
                               embd_pdrop=0.0)).save_pretrained(out_dir)
    for src, dst in tok_files:
        shutil.copyfile(os.path.join(tok_dir, src), os.path.join(out_dir, dst))


def write_rows(path, vocab, a):
    """a.batch * a.total rows of a.seq + 1 random ids below vocab (seeded by SEED)."""
    r = random.Random(SEED)
    with open(path, "w") as f:  # T+1 ids per row: T positions, T targets
        for _ in range(a.batch * a.total):
            ids = [r.randrange(vocab) for _ in range(a.seq + 1)]
            f.write(json.dumps({"input_ids": ids}) + "\n")
