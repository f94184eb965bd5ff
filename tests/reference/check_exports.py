"""Checks that what `deltatune train` exports loads in the Python ecosystem.

usage: check_exports.py BASE_MODEL_DIR RUN_DIR [RUN_DIR ...]

For each run directory (the --out of a `deltatune train` run):
- RUN_DIR/merged loads with transformers' AutoModelForCausalLM as the base
  model's class (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, ...)
  with the same rope parameters, and its logits are finite;
- when RUN_DIR/adapter exists (--method lora): PeftModel.from_pretrained on
  the base model gives the same logits as the merged model (max abs diff
  printed; must be < 1e-4).
Exit status 0 when every check passes. Needs the .venv of `make fixtures`.
"""
import os
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM


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
        base_cfg = AutoConfig.from_pretrained(base_dir)
        want = base_cfg.architectures[0]
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
