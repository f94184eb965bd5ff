#!/usr/bin/env python3
"""Reference fixtures for the deltatune C engine (PyTorch + transformers + PEFT).

Usage:  .venv/bin/python tests/reference/make_fixtures.py tests/fixtures [--check64]

Writes <root>/ref/: gpt2_model/, llama_model/ (tiny random HF models), one
folder per training case (case.json, data.safetensors, init.safetensors,
expected.safetensors), smollm2/ (logits of the real GGUF model) and
qwen3_gguf/ (a tiny Qwen 3 GGUF and transformers' logits on it).
--families writes only the model-family fixtures (llama3_*, qwen2_*,
mistral_*, qwen3_*: make_family_models).
--check64 additionally reruns every case in float64 and prints how far the
float32 results are from it (nothing is written for that).

Conventions (see tests/reference/README.md for the full list):
  canonical names: no "transformer."/"model." prefix; every linear weight
  (out, in) -- GPT-2 Conv1D weights are transposed from their (in, out)
  storage. LoRA factors "lora.<layer>.<t>.A" (r, in), ".B" (rows, r).

Checker the C tests should use (float32):
  rel(a, ref)  = max|a - ref| / max(max|ref|, 1e-30)       logits, loss: < 1e-4
  norm(a, ref) = ||a - ref||_2 / max(||ref||_2, 1e-30)     grads, final: < 1e-3
and for delta_lora also norm(final.W - W0, expected final.W - W0) < 1e-3
(W0 from the model dir; checking the change of W, not only W, keeps a
wrong-sign or transposed update from hiding behind the large W0).
"""
import json
import math
import os
import re
import sys
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # before transformers imports tqdm
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

R, ALPHA = 4, 8.0
SCALE = ALPHA / R
LR, WD, BETAS, EPS, CLIP = 1e-2, 0.01, (0.9, 0.999), 1e-8, 1.0
STEPS, LAMBDA, K = 5, 0.5, 2
B, T, V = 2, 16, 96
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
          "mlp.c_proj.weight")
SHORT = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
         "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
         "c_attn": "c_attn"}
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
             "down_proj"]
# case -> (arch, method, PEFT target modules or "slices", short target list)
CASES = {
    "gpt2_full": ("gpt2", "full", None, ""),
    "gpt2_lora": ("gpt2", "lora", ["c_attn"], "c_attn"),
    "gpt2_delta_qv": ("gpt2", "delta_lora", "slices", "q,v"),
    "gpt2_delta_cattn": ("gpt2", "delta_lora", ["c_attn"], "c_attn"),
    "llama_full": ("llama", "full", None, ""),
    "llama_lora": ("llama", "lora", LLAMA_ALL, "q,k,v,o,gate,up,down"),
    "llama_delta": ("llama", "delta_lora", ["q_proj", "v_proj"], "q,v"),
    # model families (make_family_models): Llama 3 rope scaling, Qwen 2
    # q/k/v biases, Mistral (sliding window wider than T)
    "llama3_lora": ("llama3", "lora", LLAMA_ALL, "q,k,v,o,gate,up,down"),
    "llama3_delta": ("llama3", "delta_lora", ["q_proj", "v_proj"], "q,v"),
    "qwen2_full": ("qwen2", "full", None, ""),
    "qwen2_lora": ("qwen2", "lora", ["q_proj", "k_proj", "v_proj"], "q,k,v"),
    "qwen2_delta": ("qwen2", "delta_lora", ["q_proj", "k_proj"], "q,k"),
    "mistral_lora": ("mistral", "lora", LLAMA_ALL, "q,k,v,o,gate,up,down"),
    "mistral_delta": ("mistral", "delta_lora", ["q_proj", "v_proj"], "q,v"),
    # Qwen 3: per-head q_norm/k_norm (RMSNorm over head_dim before RoPE),
    # head_dim 16 so that n_head*head_dim (64) != hidden_size (32)
    "qwen3_full": ("qwen3", "full", None, ""),
    "qwen3_lora": ("qwen3", "lora", LLAMA_ALL, "q,k,v,o,gate,up,down"),
    "qwen3_delta": ("qwen3", "delta_lora", ["q_proj", "k_proj"], "q,k"),
}
FAMILIES = ("llama3", "qwen2", "mistral", "qwen3")
SMOL_GGUF = ".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_PROMPT = "The capital of France is"


def setup():
    import transformers
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def perturb(model, seed):
    """Biases 0.1*randn, 1-D weights (all norms here) 1 + 0.1*randn."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


def make_models(ref):
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM)
    torch.manual_seed(1000)
    g = GPT2LMHeadModel(GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=V,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
    perturb(g, 1001)
    g.save_pretrained(os.path.join(ref, "gpt2_model"))
    torch.manual_seed(2000)
    m = LlamaForCausalLM(LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, vocab_size=V,
        max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, attention_dropout=0.0, bos_token_id=0,
        eos_token_id=0, pad_token_id=None))
    perturb(m, 2001)
    m.save_pretrained(os.path.join(ref, "llama_model"))


def make_family_models(ref):
    """Tiny random models in each family's own config class."""
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
    common = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, vocab_size=V,
                  rms_norm_eps=1e-5, attention_dropout=0.0, bos_token_id=0,
                  eos_token_id=0, pad_token_id=None)
    # Llama 3.1-style rope scaling; with head_dim 8 and theta 1e4 the
    # wavelengths 6.3, 63, 628, 6283 hit all three llama3 bands (orig 64,
    # low 1 -> 64, high 4 -> 16): kept, interpolated, divided by factor.
    torch.manual_seed(6000)
    m = LlamaForCausalLM(LlamaConfig(
        max_position_embeddings=512, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0,
                         "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64}, **common))
    perturb(m, 6001)
    m.save_pretrained(os.path.join(ref, "llama3_model"))
    torch.manual_seed(7000)  # Qwen 2: q/k/v biases, untied head
    m = Qwen2ForCausalLM(Qwen2Config(
        max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False, **common))
    perturb(m, 7001)
    m.save_pretrained(os.path.join(ref, "qwen2_model"))
    torch.manual_seed(8000)  # Mistral: sliding window 32 > T
    m = MistralForCausalLM(MistralConfig(
        max_position_embeddings=128, tie_word_embeddings=False,
        sliding_window=32, **common))
    perturb(m, 8001)
    m.save_pretrained(os.path.join(ref, "mistral_model"))
    # Qwen 3: q_norm/k_norm weights (head_dim) perturbed like every norm,
    # tied head as the small Qwen 3 models, no biases, no sliding window.
    torch.manual_seed(9000)
    m = Qwen3ForCausalLM(Qwen3Config(
        max_position_embeddings=64, tie_word_embeddings=True, head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False, attention_bias=False, **common))
    perturb(m, 9001)
    m.save_pretrained(os.path.join(ref, "qwen3_model"))


def make_data(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)
    tgt = torch.full((B, T), -100, dtype=torch.int64)
    tgt[:, :-1] = ids[:, 1:]
    tgt[0, 2] = tgt[0, 3] = tgt[1, 0] = tgt[1, 9] = -100  # a loss mask
    return ids.to(torch.int32), tgt.to(torch.int32)


def canon(arch, name, t):
    """HF parameter name -> (canonical name, tensor in (out, in) layout)."""
    name = name.replace(".base_layer", "")
    for pre in ("base_model.model.", "transformer.", "model."):
        if name.startswith(pre):
            name = name[len(pre):]
    if arch == "gpt2" and name.endswith(CONV1D):
        t = t.t()
    return name, t.detach().float().contiguous()


class SliceLoRA(torch.nn.Module):
    """LoRA on the q and v row slices of GPT-2's c_attn (out = 3C)."""

    def __init__(self, c_attn, C):
        super().__init__()
        self.C = C
        self.A = torch.nn.ParameterDict()
        self.B = torch.nn.ParameterDict()
        for t in ("q", "v"):
            a = torch.empty(R, C)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # PEFT's init
            self.A[t] = torch.nn.Parameter(a)
            self.B[t] = torch.nn.Parameter(torch.zeros(C, R))
        c_attn.register_forward_hook(self.hook)

    def hook(self, mod, inp, out):
        x, C = inp[0], self.C
        dq = SCALE * (x @ self.A["q"].t()) @ self.B["q"].t()
        dv = SCALE * (x @ self.A["v"].t()) @ self.B["v"].t()
        return torch.cat([out[..., :C] + dq, out[..., C:2 * C],
                          out[..., 2 * C:] + dv], dim=-1)


def add_adapters(model, arch, targets, seed):
    """Returns the model and a sorted list of adapters
    (key, A, B, W, col0, col1, transposed): W[(col0:col1) rows of (out,in)]."""
    torch.manual_seed(seed)
    ads = []
    if targets == "slices":
        for i, blk in enumerate(model.transformer.h):
            W, C = blk.attn.c_attn.weight, model.config.n_embd
            for p in blk.parameters():
                p.requires_grad_(False)
            sl = SliceLoRA(blk.attn.c_attn, C)
            blk.attn.slice_lora = sl  # registers the parameters
            ads.append((f"lora.{i}.q", sl.A["q"], sl.B["q"], W, 0, C, True))
            ads.append((f"lora.{i}.v", sl.A["v"], sl.B["v"], W, 2 * C, 3 * C,
                        True))
        for p in model.parameters():
            p.requires_grad_(False)
        for _, a, b, *_ in ads:
            a.requires_grad_(True)
            b.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer
        model = get_peft_model(model, LoraConfig(
            r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets,
            fan_in_fan_out=(arch == "gpt2"), bias="none"))
        for name, mod in model.named_modules():
            if isinstance(mod, LoraLayer):
                m = re.search(r"\.(?:h|layers)\.(\d+)\..*?(\w+)$", name)
                W = mod.base_layer.weight
                rows = mod.lora_B["default"].weight.shape[0]
                ads.append((f"lora.{m.group(1)}.{SHORT[m.group(2)]}",
                            mod.lora_A["default"].weight,
                            mod.lora_B["default"].weight, W, 0, rows,
                            arch == "gpt2"))
    ads.sort(key=lambda a: a[0])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, _, b, *_ in ads:
            b.copy_(0.02 * torch.randn(b.shape, generator=g))
    return model, ads


def delta_update(ad, old_a, old_b):
    _, a, b, W, c0, c1, tr = ad
    d = LAMBDA * SCALE * (b @ a - old_b @ old_a)  # (rows, in)
    if tr:
        W[:, c0:c1] += d.t()  # Conv1D stores (in, out)
    else:
        W[c0:c1, :] += d


def run_case(ref, name, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    arch, method, targets, short = CASES[name]
    mdir = f"{arch}_model"
    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(ref, mdir), dtype=torch.float32,
        attn_implementation="eager")
    ids, tgt = make_data(3000 if arch == "gpt2" else 4000)
    ads = []
    if method != "full":
        model, ads = add_adapters(model, arch, targets, 5000)
    init = {f"{k}.{n}": t.detach().clone().contiguous()
            for k, a, b, *_ in ads for n, t in (("A", a), ("B", b))}
    model = model.to(dtype).eval()  # eval: no dropout anywhere (all 0 anyway)
    if method == "full":
        named = [(canon(arch, n, p)[0], p) for n, p in model.named_parameters()]
    else:
        named = [(f"{k}.{n}", t) for k, a, b, *_ in ads
                 for n, t in (("A", a), ("B", b))]
    params = [p for _, p in named]
    assert all(p.requires_grad for p in params)
    assert sum(p.requires_grad for p in model.parameters()) == len(params)
    groups = [{"params": params, "weight_decay": WD}]
    if method == "full":
        # Hugging Face Trainer's rule: no decay for biases and LayerNorm /
        # RMSNorm weights (the engine's dt_param_decays, gpu/optim.c).
        from transformers import Trainer
        decay = set(Trainer.get_decay_parameter_names(None, model))
        byid = {id(p): n for n, p in model.named_parameters()}
        groups = [{"params": [p for p in params if byid[id(p)] in decay],
                   "weight_decay": WD},
                  {"params": [p for p in params if byid[id(p)] not in decay],
                   "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    out, losses = {}, []
    for step in range(1, STEPS + 1):
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids.long()).logits.reshape(-1, V)
        loss = F.cross_entropy(logits, tgt.long().reshape(-1),
                               ignore_index=-100, reduction="mean")
        loss.backward()
        losses.append(loss.item())
        if step == 1:
            out["logits0"] = logits.detach()
            for n, p in named:
                g = p.grad
                if method == "full":  # n is canonical already
                    n, g = canon(arch, n, g)
                out[f"grad.{n}"] = g.detach().clone()  # clip is in place
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        old = [(a.detach().clone(), b.detach().clone()) for _, a, b, *_ in ads]
        opt.step()
        if method == "delta_lora" and step > K:
            with torch.no_grad():
                for ad, (oa, ob) in zip(ads, old):
                    delta_update(ad, oa, ob)
    out["loss"] = torch.tensor(losses, dtype=torch.float64)
    for n, p in model.named_parameters():
        if "lora_" not in n and "slice_lora" not in n:
            cn, t = canon(arch, n, p)
            out[f"final.{cn}"] = t
    for k, a, b, *_ in ads:
        out[f"final.{k}.A"], out[f"final.{k}.B"] = a.detach(), b.detach()
    out = {k: v.float().contiguous() for k, v in out.items()}
    meta = {"arch": arch, "model_dir": mdir, "method": method, "rank": R,
            "alpha": ALPHA, "targets": short, "lambda": LAMBDA,
            "start_step": K, "lr": LR, "weight_decay": WD,
            "max_grad_norm": CLIP, "steps": STEPS, "B": B, "T": T,
            "betas": list(BETAS), "eps": EPS}
    return meta, {"ids": ids, "targets": tgt}, init, out


def write_case(ref, name):
    meta, data, init, out = run_case(ref, name)
    d = os.path.join(ref, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    save_file(data, os.path.join(d, "data.safetensors"))
    if init:
        save_file(init, os.path.join(d, "init.safetensors"))
    save_file(out, os.path.join(d, "expected.safetensors"))
    print(f"{name}: loss {[round(x, 5) for x in out['loss'].tolist()]}")


def check64(ref, name):
    """Prints the float32 run's distance to a float64 rerun."""
    *_, o32 = run_case(ref, name, torch.float32)
    *_, o64 = run_case(ref, name, torch.float64)
    w0 = load_file(os.path.join(ref, f"{CASES[name][0]}_model",
                                "model.safetensors"))
    w0 = dict(canon(CASES[name][0], k, v) for k, v in w0.items())

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

    def nrm(a, b):
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    worst = {"logits0": rel(o32["logits0"], o64["logits0"]),
             "loss": rel(o32["loss"], o64["loss"]), "grad": 0.0, "final": 0.0,
             "dW": 0.0}
    for k in o32:
        if k.startswith(("grad.", "final.")):
            kind = k.split(".")[0]
            worst[kind] = max(worst[kind], nrm(o32[k], o64[k]))
            wk = k[len("final."):]
            if CASES[name][1] == "delta_lora" and wk in w0:
                d64 = o64[k] - w0[wk]
                if d64.norm() > 0:
                    worst["dW"] = max(worst["dW"], nrm(o32[k] - w0[wk], d64))
    print(f"{name} fp32 vs fp64: " +
          " ".join(f"{k}={v:.2e}" for k, v in worst.items()))


def write_smollm2(ref):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    repo = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    path = os.path.join(repo, SMOL_GGUF)
    if not os.path.exists(path):
        print(f"smollm2: {SMOL_GGUF} missing, skipped")
        return
    gdir, gname = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(
        gdir, gguf_file=gname, dtype=torch.float32,
        attn_implementation="eager").eval()
    ids = tok(SMOL_PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    sd = model.state_dict()
    # float tensors only (ids live in case.json): the engine's loader is fp
    out = {"logits": logits.float().contiguous()}
    for k, sl in (("model.layers.0.self_attn.q_proj.weight", (4, 8)),
                  ("model.layers.0.self_attn.k_proj.weight", (4, 8)),
                  ("model.layers.0.self_attn.v_proj.weight", (4, 8)),
                  ("model.embed_tokens.weight", (2, 8))):
        out["w." + k[len("model."):]] = sd[k][:sl[0], :sl[1]].contiguous()
    # rows 32..35 of q: the second rotate_half half of head 0 (unpermute)
    out["w.layers.0.self_attn.q_proj.weight.rows32"] = \
        sd["model.layers.0.self_attn.q_proj.weight"][32:36, :8].contiguous()
    d = os.path.join(ref, "smollm2")
    os.makedirs(d, exist_ok=True)
    save_file(out, os.path.join(d, "expected.safetensors"))
    c = model.config
    meta = {"gguf": SMOL_GGUF, "prompt": SMOL_PROMPT, "ids": ids,
            "n_layer": c.num_hidden_layers, "d_model": c.hidden_size,
            "n_head": c.num_attention_heads, "n_kv_head": c.num_key_value_heads,
            "vocab": c.vocab_size, "rope_theta": getattr(c, "rope_theta", None)
            or c.rope_parameters["rope_theta"], "norm_eps": c.rms_norm_eps,
            "tied": bool(c.tie_word_embeddings)}
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"smollm2: ids {ids}, top1 {logits.argmax(-1).tolist()}")


GGUF_BLK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
            "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output",
            "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
            "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
            "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_qwen3_gguf(ref):
    """qwen3_gguf/: a tiny random Qwen 3 written as an F32 GGUF the way
    llama.cpp's converter names a Qwen 3 (arch "qwen3", attn_q_norm /
    attn_k_norm, Q/K rows not permuted: Qwen uses NEOX RoPE), and the logits
    transformers computes after loading that file (gguf_file=). head_dim is
    128 because transformers' GGUF reader takes Qwen 3's head_dim from its
    config default, not from qwen3.attention.key_length."""
    import gguf
    import numpy as np
    from transformers import (AutoModelForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)
    torch.manual_seed(9100)
    cfg = Qwen3Config(num_hidden_layers=2, hidden_size=32,
                      num_attention_heads=2, num_key_value_heads=1,
                      head_dim=128, intermediate_size=64, vocab_size=V,
                      rms_norm_eps=1e-6, max_position_embeddings=128,
                      rope_parameters={"rope_type": "default",
                                       "rope_theta": 1000000.0},
                      tie_word_embeddings=True, attention_dropout=0.0,
                      bos_token_id=0, eos_token_id=0, pad_token_id=None)
    m = Qwen3ForCausalLM(cfg)
    perturb(m, 9101)
    d = os.path.join(ref, "qwen3_gguf")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.gguf")
    w = gguf.GGUFWriter(path, "qwen3")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    # a byte-level BPE vocabulary of V tokens: 94 printable ASCII bytes and
    # two merges (the engine loads the GGUF's tokenizer to export it)
    w.add_token_list([chr(33 + i) for i in range(V - 2)] + ["ab", "abc"])
    w.add_token_types([1] * V)
    w.add_token_merges(["a b", "ab c"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    top = {"embed_tokens.weight": "token_embd.weight",
           "norm.weight": "output_norm.weight"}
    for k, t in m.state_dict().items():
        k = k[len("model."):] if k.startswith("model.") else k
        if k == "lm_head.weight":
            continue  # tied
        if k in top:
            n = top[k]
        else:
            _, layer, rest = k.split(".", 2)
            mod, suf = rest.rsplit(".", 1)
            n = f"blk.{layer}.{GGUF_BLK[mod]}.{suf}"
        w.add_tensor(n, t.detach().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = AutoModelForCausalLM.from_pretrained(
        d, gguf_file="model.gguf", dtype=torch.float32,
        attn_implementation="eager").eval()
    assert type(g).__name__ == "Qwen3ForCausalLM"
    ids, _ = make_data(4100)
    with torch.no_grad():
        lg = g(input_ids=ids.long()).logits.reshape(-1, V)
        ref_lg = m.eval()(input_ids=ids.long()).logits.reshape(-1, V)
    assert (lg - ref_lg).abs().max() < 1e-5, "GGUF round trip changed logits"
    save_file({"logits": lg.float().contiguous()},
              os.path.join(d, "expected.safetensors"))
    save_file({"ids": ids}, os.path.join(d, "data.safetensors"))
    print(f"qwen3_gguf: {os.path.getsize(path)} bytes, transformers loads it "
          f"as {type(g).__name__}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    setup()
    ref = os.path.join(sys.argv[1], "ref")
    os.makedirs(ref, exist_ok=True)
    if "--families" in sys.argv:  # only the model-family fixtures
        make_family_models(ref)
        for name in CASES:
            if CASES[name][0] in FAMILIES:
                write_case(ref, name)
        write_qwen3_gguf(ref)
        return
    make_models(ref)
    make_family_models(ref)
    for name in CASES:
        write_case(ref, name)
    write_smollm2(ref)
    write_qwen3_gguf(ref)
    if "--check64" in sys.argv:
        for name in CASES:
            check64(ref, name)


if __name__ == "__main__":
    main()
