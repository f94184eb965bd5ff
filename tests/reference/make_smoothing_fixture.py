"""Writes tests/fixtures/ref/label_smoothing/expected.safetensors: PyTorch's
cross-entropy with label smoothing, the values test_dropout.c's
test_label_smoothing_matches_pytorch compares the engine's
cross_entropy_smooth op against.

    .venv/bin/python tests/reference/make_smoothing_fixture.py tests/fixtures

For each eps in EPS: logits (N, V) float32 (N(0, 3²), seeded), targets (N,)
as float32 (the engine's loader reads floats) with rows 2 and 5 masked
(-100), and
  loss.<eps>:  CrossEntropyLoss(reduction="none", label_smoothing=eps) per
               row (0 on masked rows),
  grad.<eps>:  d mean-loss / d logits (reduction="mean" over the unmasked
               rows, as the engine scales its gradient by 1/tokens).
Deterministic (torch.manual_seed, float32)."""
import os
import sys

import torch
from safetensors.torch import save_file

N, V = 7, 50
EPS = (0.1, 0.3)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    torch.manual_seed(1234)
    logits = torch.randn(N, V) * 3.0
    tgt = torch.randint(0, V, (N,))
    tgt[2] = -100
    tgt[5] = -100
    out = {"logits": logits.clone(), "targets": tgt.float()}
    for eps in EPS:
        x = logits.clone().requires_grad_(True)
        rows = torch.nn.CrossEntropyLoss(reduction="none", label_smoothing=eps,
                                         ignore_index=-100)(x, tgt)
        mean = torch.nn.CrossEntropyLoss(reduction="mean", label_smoothing=eps,
                                         ignore_index=-100)(x, tgt)
        mean.backward()
        out[f"loss.{eps}"] = rows.detach().float().contiguous()
        out[f"grad.{eps}"] = x.grad.detach().float().contiguous()
        print(f"eps {eps}: mean loss {mean.item():.6f}")
    d = os.path.join(sys.argv[1], "ref", "label_smoothing")
    os.makedirs(d, exist_ok=True)
    save_file(out, os.path.join(d, "expected.safetensors"))


if __name__ == "__main__":
    main()
