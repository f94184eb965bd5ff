"""Checks that what `deltatune train` exports loads in the Python ecosystem.

usage: check_exports.py BASE_MODEL_DIR RUN_DIR [RUN_DIR ...]

For each run directory (the --out of a `deltatune train` run):
- RUN_DIR/merged loads with transformers' AutoModelForCausalLM as the base
  model's class (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, ...)
  with the same rope parameters, and its logits are finite;
- for a run whose directory name ends in _lora or _delta_lora, RUN_DIR/adapter
  must exist (delta_lora: the exact rank-2r adapter, r' = 2r,
  lora_alpha' = 2*alpha), and PeftModel.from_pretrained on the base model
  gives the same logits as the merged model (max abs diff printed; must be
  < 1e-4, fp32 rounding).

usage: check_exports.py --gguf BASE.gguf RUN_DIR [RUN_DIR ...]

The same for runs trained on a GGUF file: the base is that file as
transformers loads it (gguf_file=), its class and rope parameters what the
merged model must have.

usage: check_exports.py --compare FP32_RUN RUN [RUN ...]

Each RUN is the same training as FP32_RUN exported with --export-dtype
and/or --export-shard-size: its merged directory loads in transformers (a
sharded one through model.safetensors.index.json, whose weight_map and
metadata.total_size must match the shards), config.json's dtype names the
tensors' dtype, every weight equals FP32_RUN's rounded once to that dtype
(round-to-nearest-even, as torch's .to(); at most one unit in the last place
apart, for nondeterministic summation order in training) and its logits match
FP32_RUN's within that rounding.
Exit status 0 when every check passes. Needs the .venv of `make fixtures`.
"""
import json
import os
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def st_tensors(merged_dir):
    """name -> tensor in its stored dtype, from model.safetensors or the
    shards of model.safetensors.index.json (checked)."""
    from safetensors.torch import load_file
    index = os.path.join(merged_dir, "model.safetensors.index.json")
    if not os.path.exists(index):
        return load_file(os.path.join(merged_dir, "model.safetensors")), 1
    with open(index) as f:
        idx = json.load(f)
    out, total = {}, 0
    files = sorted(set(idx["weight_map"].values()))
    for fn in files:
        for k, v in load_file(os.path.join(merged_dir, fn)).items():
            assert idx["weight_map"][k] == fn, (k, fn)
            out[k] = v
            total += v.numel() * v.element_size()
    assert set(out) == set(idx["weight_map"]), "weight_map names missing tensors"
    assert idx["metadata"]["total_size"] == total, (idx["metadata"], total)
    return out, len(files)


def compare(ref_run, runs):
    ids = None
    ok = True
    ref_dir = os.path.join(ref_run, "merged")
    ref_model = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
    ref_w, _ = st_tensors(ref_dir)
    ids = torch.randint(0, ref_model.config.vocab_size, (2, 12))
    ref_logits = logits(ref_model, ids)
    for run in runs:
        d = os.path.join(run, "merged")
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        w, nfiles = st_tensors(d)
        dtypes = {str(t.dtype).replace("torch.", "") for t in w.values()}
        named = cfg.get("torch_dtype", cfg.get("dtype"))
        good = dtypes == {named} and cfg.get("dtype", named) == named
        print(f"{run}: {nfiles} safetensors file(s), tensors {sorted(dtypes)}, "
              f"config.json says {named}: {'ok' if good else 'MISMATCH'}")
        ok &= good
        worst = 0.0
        for k, t in w.items():
            want = ref_w[k].to(t.dtype)
            if t.shape != want.shape:
                print(f"{run}: {k}: shape {tuple(t.shape)} != {tuple(want.shape)}")
                ok = False
                continue
            # distance in units in the last place of the stored dtype
            ulp = torch.finfo(t.dtype).eps * want.float().abs().clamp_min(
                torch.finfo(t.dtype).tiny)
            worst = max(worst, ((t.float() - want.float()).abs() / ulp).max().item())
        print(f"{run}: weights vs fp32 export rounded once: max {worst:.2f} ulp")
        ok &= worst <= 1.0
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        lg = logits(model, ids)
        diff = (lg - ref_logits).abs().max().item()
        scale = ref_logits.abs().max().item()
        eps = torch.finfo(next(iter(w.values())).dtype).eps
        tol = max(1e-5, 16 * eps * scale)  # a few roundings of every weight
        print(f"{run}: logits vs fp32 export: max |diff| {diff:.2e} (tolerance {tol:.2e})")
        ok &= diff <= tol
    print("all export checks passed" if ok else "EXPORT CHECK FAILED")
    sys.exit(0 if ok else 1)


def main():
    torch.manual_seed(0)
    if sys.argv[1] == "--compare":
        return compare(sys.argv[2], sys.argv[3:])
    base_kw = {}
    if sys.argv[1] == "--gguf":  # a GGUF base: its directory and file name
        base_dir, gguf = os.path.split(os.path.abspath(sys.argv[2]))
        base_kw, runs = {"gguf_file": gguf}, sys.argv[3:]
    else:
        base_dir, runs = sys.argv[1], sys.argv[2:]
    torch.manual_seed(0)
    ok = True
    for run in runs:
        merged = AutoModelForCausalLM.from_pretrained(os.path.join(run, "merged"),
                                                      dtype=torch.float32).eval()
        base_cfg = AutoConfig.from_pretrained(base_dir, **base_kw)
        # a GGUF's config names no class: the one its model_type maps to
        want = (base_cfg.architectures or
                [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[base_cfg.model_type]])[0]
        same = (type(merged).__name__ == want and
                getattr(merged.config, "rope_parameters", None) ==
                getattr(base_cfg, "rope_parameters", None))
        print(f"{run}: merged is {type(merged).__name__} (base {want}), "
              f"same rope parameters: {same}")
        ok &= same
        vocab = merged.config.vocab_size
        ids = torch.randint(0, vocab, (2, 12))
        lm = logits(merged, ids)
        fin = bool(torch.isfinite(lm).all())
        print(f"{run}: merged loads in transformers, logits finite: {fin}")
        ok &= fin
        adapter = os.path.join(run, "adapter")
        wants = os.path.basename(run.rstrip("/")).endswith(("_lora", "_delta_lora"))
        if wants and not os.path.isdir(adapter):
            print(f"{run}: no PEFT adapter in {adapter}")
            ok = False
        if os.path.isdir(adapter):
            from peft import PeftModel
            base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                        **base_kw)
            peft_model = PeftModel.from_pretrained(base, adapter).eval()
            diff = (logits(peft_model, ids) - lm).abs().max().item()
            print(f"{run}: PEFT adapter on the base model vs merged: max |diff| {diff:.2e}")
            ok &= diff < 1e-4
    print("all export checks passed" if ok else "EXPORT CHECK FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
