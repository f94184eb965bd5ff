"""Checks that what `deltatune train` exports loads in the Python ecosystem.

usage: check_exports.py BASE_MODEL_DIR RUN_DIR [RUN_DIR ...]

For each run directory (the --out of a `deltatune train` run):
- RUN_DIR/merged loads with transformers' AutoModelForCausalLM and its logits
  are finite;
- for a run whose directory name ends in _lora or _delta_lora, RUN_DIR/adapter
  must exist (delta_lora: the exact rank-2r adapter, r' = 2r,
  lora_alpha' = 2*alpha), and PeftModel.from_pretrained on the base model
  gives the same logits as the merged model (max abs diff printed; must be
  < 1e-4, fp32 rounding).
Exit status 0 when every check passes. Needs the .venv of `make fixtures`.
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def main():
    base_dir, runs = sys.argv[1], sys.argv[2:]
    torch.manual_seed(0)
    ok = True
    for run in runs:
        merged = AutoModelForCausalLM.from_pretrained(os.path.join(run, "merged"),
                                                      dtype=torch.float32).eval()
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
            base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            peft_model = PeftModel.from_pretrained(base, adapter).eval()
            diff = (logits(peft_model, ids) - lm).abs().max().item()
            print(f"{run}: PEFT adapter on the base model vs merged: max |diff| {diff:.2e}")
            ok &= diff < 1e-4
    print("all export checks passed" if ok else "EXPORT CHECK FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
