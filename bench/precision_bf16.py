#!/usr/bin/env python3
"""bf16 against fp32 training on SmolLM2-135M (the GPU-speed issue: "bf16 vs
fp32 on SmolLM2-135M for 100 steps: final loss within 1 %").

Two runs of `deltatune train` that differ only in --precision: the same data
(E2E chat rows through the model's chat template), seed, method and steps.
bf16 here is the engine's bf16 path on this machine's backend (on the CPU:
frozen weights rounded to bf16 and bf16 rounding at the GEMM inputs, fp32
accumulation, the same rounding points as the CUDA path; see docs/GPU.md),
so the comparison is of the numerics, not of speed. Reports the held-out
loss at each evaluation and the mean training loss of the last 10 steps,
with their relative differences, into bench/results/precision-bf16.md.

    python3 bench/precision_bf16.py [--steps 100] [--method delta_lora]
    python3 bench/precision_bf16.py --quick     # 4 steps, a smoke test

Nothing is downloaded: the model is .cache/smollm2 (scripts/install-deps), the
data ../shared/data/e2e/valid.txt or the committed scripts/demo-data.jsonl.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "build", "deltatune")
GGUF = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
E2E = os.path.join(ROOT, "..", "shared", "data", "e2e", "valid.txt")
DEMO = os.path.join(ROOT, "scripts", "demo-data.jsonl")
OUT_MD = os.path.join(ROOT, "bench", "results", "precision-bf16.md")


def data(tmp, rows):
    """Chat rows: every 10th held out."""
    if os.path.exists(E2E):
        text = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "e2e-to-chat.py"),
                               E2E, str(rows)], capture_output=True, text=True, check=True).stdout
        src = f"{os.path.relpath(E2E, ROOT)} ({rows} meaning representations)"
    else:
        text = open(DEMO).read()
        src = "scripts/demo-data.jsonl"
    lines = [l for l in text.splitlines() if l.strip()]
    train = os.path.join(tmp, "train.jsonl")
    valid = os.path.join(tmp, "valid.jsonl")
    with open(train, "w") as t, open(valid, "w") as v:
        for i, l in enumerate(lines):
            (v if i % 10 == 9 else t).write(l + "\n")
    return train, valid, src


def run(a, prec, train, valid, tmp):
    out = os.path.join(tmp, "out-" + prec)
    cmd = [ENGINE, "train", "--model", GGUF, "--data", train, "--valid", valid, "--out", out,
           "--method", a.method, "--steps", str(a.steps), "--batch-size", str(a.batch),
           "--seq-len", str(a.seq_len), "--lr", repr(a.lr), "--seed", str(a.seed),
           "--eval-interval", str(a.eval_interval), "--checkpoint-interval", str(a.steps),
           "--threads", str(a.threads), "--precision", prec, "--json"]
    if a.method != "full":
        cmd += ["--rank", "8", "--alpha", "16", "--target-modules", "q,v"]
    if a.method == "delta_lora":
        cmd += ["--lambda", "0.5", "--start-step", str(max(1, a.steps // 10))]
    print(f"{prec}: {' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd)}",
          flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode:
        sys.exit(f"{prec} run failed (exit {p.returncode}): {p.stderr.strip()[-1500:]}")
    ms = [json.loads(l) for l in p.stdout.splitlines() if l.startswith('{"type":"metrics"')]
    train_loss = {m["step"]: m["train_loss"] for m in ms if m.get("train_loss") is not None}
    valid_loss = {m["step"]: m["valid_loss"] for m in ms if m.get("valid_loss") is not None}
    peak = max((m.get("peak_device_bytes") or 0) for m in ms) if ms else 0
    return dict(train=train_loss, valid=valid_loss, wall=wall, peak=peak)


def rel(a, b):
    return abs(a - b) / abs(b) if b else float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--method", default="delta_lora", choices=("lora", "delta_lora", "full"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-interval", type=int, default=25)
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="4 steps, results not written")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.eval_interval, a.rows = 4, 2, 60
    for p, fix in ((ENGINE, "make -j2 all"), (GGUF, "scripts/install-deps")):
        if not os.path.exists(p):
            sys.exit(f"{p} missing ({fix})")
    with tempfile.TemporaryDirectory(prefix="precision-bf16-") as tmp:
        train, valid, src = data(tmp, a.rows)
        r = {p: run(a, p, train, valid, tmp) for p in ("fp32", "bf16")}
    f, b = r["fp32"], r["bf16"]
    last = sorted(f["train"])[-10:]
    tf = sum(f["train"][s] for s in last) / len(last)
    tb = sum(b["train"][s] for s in last) / len(last)
    steps = sorted(set(f["valid"]) & set(b["valid"]))
    vf, vb = f["valid"][steps[-1]], b["valid"][steps[-1]]
    ok = rel(vb, vf) <= 0.01 and rel(tb, tf) <= 0.01
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    md = [
        "# bf16 vs fp32 training, SmolLM2-135M-Instruct",
        "",
        f"`bench/precision_bf16.py` at {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Machine: {cpu}, {os.cpu_count()} cores, {a.threads} threads, CPU backend (OpenBLAS). "
        f"Load average at the end: {os.getloadavg()[0]:.1f} (the machine was shared; times "
        "are indicative only).",
        "",
        f"Two runs differing only in `--precision`: `{a.method}` (rank 8, α 16, targets q,v"
        + (", λ 0.5, K " + str(max(1, a.steps // 10)) if a.method == "delta_lora" else "")
        + f"), {a.steps} steps, batch {a.batch} × seq_len {a.seq_len}, lr {a.lr}, seed {a.seed}; "
        f"data: {src} through the chat template, every 10th row held out.",
        "",
        "| held-out loss at step | fp32 | bf16 | relative difference |",
        "|---|---|---|---|",
    ]
    for s in steps:
        md.append(f"| {s} | {f['valid'][s]:.4f} | {b['valid'][s]:.4f} | "
                  f"{100 * rel(b['valid'][s], f['valid'][s]):.2f} % |")
    md += [
        "",
        "| | fp32 | bf16 | relative difference |",
        "|---|---|---|---|",
        f"| mean training loss, steps {last[0]}–{last[-1]} | {tf:.4f} | {tb:.4f} | "
        f"{100 * rel(tb, tf):.2f} % |",
        f"| peak memory (bytes) | {f['peak']:,} | {b['peak']:,} | {b['peak'] / f['peak']:.2f}× |"
        if f["peak"] else "",
        f"| wall time (s) | {f['wall']:.0f} | {b['wall']:.0f} | |",
        "",
        f"**Goal (final loss within 1 %): {'met' if ok else 'NOT met'}** — held-out loss "
        f"{vf:.4f} (fp32) vs {vb:.4f} (bf16), {100 * rel(vb, vf):.2f} %; training loss "
        f"{100 * rel(tb, tf):.2f} %.",
        "",
    ]
    text = "\n".join(l for l in md if l is not None) + "\n"
    print(text)
    if not a.quick:
        with open(OUT_MD, "w") as fh:
            fh.write(text)
        print(f"wrote {os.path.relpath(OUT_MD, ROOT)}")


if __name__ == "__main__":
    main()
