#!/usr/bin/env python3
"""e2e_smollm2.py: the paper's comparison (full fine-tuning vs LoRA vs
Delta-LoRA) at small scale: SmolLM2-135M-Instruct on E2E NLG with our engine.

Splits ../shared/data/e2e/valid.txt ("mr||reference" per line)
deterministically: the first --train-lines lines train, the last
--heldout-lines lines are held out. Rows are {"prompt": "<mr>\\n",
"completion": " <reference>"} (loss on the completion and its EOS). Each
method runs `deltatune train` with the same steps, batch, sequence length,
learning rate and seed, --valid on the held-out rows (evaluated at the end);
a near-zero-lr one-step run gives the base model's held-out loss. Without
--steps, the step count is sized from a short timing probe to fit --budget-min.
Writes bench/results/e2e-smollm2.md and keeps the merged models under
.cache/bench/e2e/.

    .venv/bin/python bench/e2e_smollm2.py [--steps N] [--budget-min 22] [--lr 2e-4]
"""
import argparse, json, math, os, shutil, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "build", "deltatune")
GGUF = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
E2E = os.path.join(ROOT, "..", "shared", "data", "e2e", "valid.txt")
WORK = os.path.join(ROOT, ".cache", "bench", "e2e")
METHODS = ("full", "lora", "delta_lora")


def rel(p):  # paths as typed from the project root; the engine copy as build/deltatune
    if p == ENGINE:
        return "build/deltatune"
    return os.path.relpath(p, ROOT) if isinstance(p, str) and p.startswith(ROOT) else p


def prepare(a):
    """Writes train.jsonl / heldout.jsonl; returns paths and split facts."""
    lines = [l.rstrip("\n") for l in open(E2E, encoding="utf-8") if "||" in l]
    if a.train_lines + a.heldout_lines > len(lines):
        sys.exit(f"{E2E} has {len(lines)} lines; need {a.train_lines + a.heldout_lines}")
    split = {"train": lines[:a.train_lines], "heldout": lines[-a.heldout_lines:]}
    os.makedirs(WORK, exist_ok=True)
    paths = {}
    for name, rows in split.items():
        paths[name] = os.path.join(WORK, f"{name}.jsonl")
        with open(paths[name], "w", encoding="utf-8") as f:
            for l in rows:
                mr, ref = l.split("||", 1)
                f.write(json.dumps({"prompt": mr.strip() + "\n",
                                    "completion": " " + ref.strip()}) + "\n")
    mrs = {k: {l.split("||", 1)[0].strip() for l in v} for k, v in split.items()}
    facts = dict(n_lines=len(lines), train_mrs=len(mrs["train"]),
                 heldout_mrs=len(mrs["heldout"]), shared_mrs=len(mrs["train"] & mrs["heldout"]))
    return paths, split["heldout"], facts


def train_cmd(a, method, data, out, steps, lr, valid=None):
    c = [ENGINE, "train", "--model", GGUF, "--data", data, "--out", out, "--method", method,
         "--steps", str(steps), "--batch-size", str(a.batch), "--seq-len", str(a.seq_len),
         "--lr", str(lr), "--threads", str(a.threads), "--seed", str(a.seed), "--json"]
    if method != "full":
        c += ["--rank", "8", "--alpha", "16", "--target-modules", "q,v"]
    if method == "delta_lora":
        c += ["--lambda", "0.5"]  # K: the engine's default, 10% of the steps
    return c + (["--valid", valid] if valid else [])


def cpu_busy():  # (busy, total) jiffies of the whole machine
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def run_train(cmd, log):
    """Runs one training; returns (metrics lines, per-step times, wall, rc,
    stderr, share of the CPUs other processes used meanwhile)."""
    t0, (b0, s0) = time.perf_counter(), cpu_busy()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, stamps = [], []
    for line in p.stdout:
        log.write(line)
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("type") == "metrics":
            lines.append(j)
            stamps.append(time.perf_counter())
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    rc, (b1, s1), wall = os.waitstatus_to_exitcode(status), cpu_busy(), time.perf_counter() - t0
    log.write(err)
    dts = [b - a for a, b in zip(stamps, stamps[1:])]
    ncpu = os.cpu_count()
    other = ((b1 - b0) / max(1, s1 - s0) * ncpu * wall - ru.ru_utime - ru.ru_stime) / (ncpu * wall)
    return lines, dts, wall, rc, err, max(0.0, other)


def trainable(out):
    """Trainable elements (tensors with AdamW moments) and moved-W elements,
    read from the final checkpoint's safetensors header."""
    ck = sorted(d for d in os.listdir(os.path.join(out, "checkpoints")) if d.startswith("step-"))
    hdr = {}
    for name in ("weights.safetensors", "optimizer.safetensors", "state.safetensors"):
        p = os.path.join(out, "checkpoints", ck[-1], name)
        if os.path.exists(p):
            with open(p, "rb") as f:
                hdr.update(json.loads(f.read(int.from_bytes(f.read(8), "little"))))
    numel = {k: math.prod(v["shape"]) for k, v in hdr.items() if k != "__metadata__"}
    train = sum(n for k, n in numel.items() if k + ".adam_m" in numel)
    moved = sum(n for k, n in numel.items()
                if not k.endswith((".adam_m", ".adam_v")) and k + ".adam_m" not in numel)
    return train, moved


def generate(model, prompt, threads):
    r = subprocess.run([ENGINE, "generate", "--model", model, "--prompt", prompt,
                        "--max-tokens", "60", "--threads", str(threads)],
                       capture_output=True, text=True)
    if r.returncode:
        return f"(generate failed, exit {r.returncode}: {r.stderr.strip()[-300:]})"
    return r.stdout[len(prompt):].strip() if r.stdout.startswith(prompt) else r.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, help="optimizer steps per method (default: sized)")
    ap.add_argument("--budget-min", type=float, default=22.0,
                    help="wall-clock budget of the three trainings when sizing --steps")
    ap.add_argument("--lr", type=float, default=2e-4, help="the same for every method")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--train-lines", type=int, default=4000)
    ap.add_argument("--heldout-lines", type=int, default=300)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "e2e-smollm2.md"))
    a = ap.parse_args()
    global ENGINE  # run a copy: teammates may rebuild build/deltatune meanwhile
    for p, fix in ((ENGINE, "make -j2 all"), (GGUF, "scripts/install-deps"), (E2E, "see ../shared")):
        if not os.path.exists(p):
            sys.exit(f"{p} missing ({fix})")
    os.makedirs(WORK, exist_ok=True)
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.stat(ENGINE).st_mtime))
    ENGINE = shutil.copy2(ENGINE, os.path.join(WORK, "deltatune"))
    started, t_all = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    paths, heldout, facts = prepare(a)
    log = open(os.path.join(WORK, "train.log"), "w")
    failures = []

    # timing probe: 4 steps each of lora and full, no validation
    probe = {}
    if not a.steps:
        for m in ("lora", "full"):
            out = os.path.join(WORK, f"probe-{m}")
            lines, dts, wall, rc, err, _ = run_train(train_cmd(a, m, paths["train"], out, 4, a.lr),
                                                     log)
            shutil.rmtree(out, ignore_errors=True)
            if rc:
                sys.exit(f"probe failed: {' '.join(train_cmd(a, m, paths['train'], out, 4, a.lr))}"
                         f"\n{err}")
            probe[m] = (statistics.median(dts), wall - sum(dts))  # s/step, the rest
        per_step = 2 * probe["lora"][0] + probe["full"][0]
        # per run: load, first step, export (the probe's rest) and the held-out
        # evaluation (forward only: about a third of a lora step per batch)
        eval_s = a.heldout_lines / a.batch * probe["lora"][0] / 3
        fixed = 2 * probe["lora"][1] + probe["full"][1] + 3 * eval_s
        a.steps = max(20, int((a.budget_min * 60 - fixed) / per_step) // 10 * 10)
        print(f"probe: lora {probe['lora'][0]:.2f} s/step, full {probe['full'][0]:.2f} s/step "
              f"-> {a.steps} steps per method", flush=True)

    # base model's held-out loss: one lora step at lr 1e-9 (B stays ~0)
    out = os.path.join(WORK, "out-base")
    cmd = train_cmd(a, "lora", paths["train"], out, 1, 1e-9, paths["heldout"])
    lines, _, _, rc, err, _ = run_train(cmd, log)
    base_valid = lines[-1].get("valid_loss") if not rc and lines else None
    if rc:
        failures.append((cmd, rc, err))
    shutil.rmtree(out, ignore_errors=True)

    results = {}
    for m in METHODS:
        out = os.path.join(WORK, f"out-{m}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = train_cmd(a, m, paths["train"], out, a.steps, a.lr, paths["heldout"])
        print(f"{m}: {a.steps} steps ...", flush=True)
        lines, dts, wall, rc, err, other = run_train(cmd, log)
        r = dict(cmd=cmd, rc=rc, err=err, wall=wall, lines=lines, other=other,
                 step_s=statistics.median(dts) if dts else float("nan"))
        if rc:
            failures.append((cmd, rc, err))
        if lines:
            r["train_last"] = lines[-1]["train_loss"]
            r["train_last10"] = statistics.mean(j["train_loss"] for j in lines[-10:])
            r["valid"] = lines[-1].get("valid_loss")
            r["tok_s"] = lines[-1]["tokens_per_second"]
        if os.path.isdir(os.path.join(out, "checkpoints")):
            r["trainable"], r["moved"] = trainable(out)
            shutil.rmtree(os.path.join(out, "checkpoints"))  # GBs for full; keep merged/
        results[m] = r
        print(f"   rc {rc}, valid {r.get('valid')}, {wall:.0f} s", flush=True)

    # sample generation for one held-out MR, before and after
    mr = heldout[0].split("||", 1)[0].strip()
    refs = [l.split("||", 1)[1].strip() for l in heldout if l.split("||", 1)[0].strip() == mr]
    samples = [("base (no fine-tuning)", generate(GGUF, mr + "\n", a.threads))]
    for m in METHODS:
        merged = os.path.join(WORK, f"out-{m}", "merged")
        if os.path.isdir(merged):
            samples.append((m, generate(merged, mr + "\n", a.threads)))

    # report
    L = ["# SmolLM2-135M on E2E: full vs LoRA vs Delta-LoRA (deltatune engine, CPU)", "",
         f"Generated by `bench/e2e_smollm2.py` on {started} in "
         f"{(time.time() - t_all) / 60:.1f} min, {a.threads} threads (shared 2-core machine).",
         "", "## Setup", "",
         f"- Data: `../shared/data/e2e/valid.txt` ({facts['n_lines']} lines, E2E validation "
         f"set). Train = first {a.train_lines} lines ({facts['train_mrs']} distinct MRs), "
         f"held-out = last {a.heldout_lines} lines ({facts['heldout_mrs']} MRs; "
         f"{facts['shared_mrs']} MRs also in train).",
         "- Row format: `{\"prompt\": \"<mr>\\n\", \"completion\": \" <reference>\"}` "
         "(plain text, no chat template); the engine adds BOS/EOS, loss on the completion "
         "and its EOS only. Held-out loss = mean token loss over all held-out completions, "
         "evaluated once at the end (`--valid`).",
         f"- Same for every method: {a.steps} steps, batch {a.batch}, --seq-len {a.seq_len}, "
         f"lr {a.lr:g} with the default linear decay and no warmup, AdamW (wd 0), max grad "
         f"norm 1.0, seed {a.seed}. LoRA / Delta-LoRA: rank 8, alpha 16, targets q,v; "
         "Delta-LoRA λ 0.5, K = the default 10% of the steps.",
         "- Model: `.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, dequantized to fp32 by "
         f"the engine (training in fp32). Engine: `build/deltatune` built {built}, run from a "
         "copy taken at the start.",
         "- Wall times are on a shared machine: *other load* = share of the CPUs other "
         "processes used during that run. OpenBLAS environment as inherited: "
         + (", ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                      if k in os.environ) or "none") + " (bench/README.md)."]
    if probe:
        L.append(f"- Steps sized from a timing probe: lora {probe['lora'][0]:.2f} s/step, full "
                 f"{probe['full'][0]:.2f} s/step, budget {a.budget_min:g} min.")
    L += ["", "## Results", "",
          "| method | steps | lr | train loss, last step (mean of last 10) | held-out loss | "
          "wall time (other load) | s/step | trainable params | W elements moved without "
          "gradient |", "|---|---|---|---|---|---|---|---|---|",
          f"| base model (no training) | 0 | – | – | {base_valid:.4f} | – | – | – | – |"
          if base_valid else "| base model | – | – | – | (failed) | – | – | – | – |"]
    for m, r in results.items():
        if "valid" in r and r["rc"] == 0:
            L.append(f"| {m} | {a.steps} | {a.lr:g} | {r['train_last']:.4f} "
                     f"({r['train_last10']:.4f}) | {r['valid']:.4f} | {r['wall']:.0f} s ({r['other']:.0%}) | "
                     f"{r['step_s']:.2f} | {r.get('trainable', 0):,} | {r.get('moved', 0):,} |")
        else:
            L.append(f"| {m} | {a.steps} | {a.lr:g} | FAILED (exit {r['rc']}) | – | "
                     f"{r['wall']:.0f} s | – | – | – |")
    L += ["", "Train loss (one batch of 4 rows, so noisy) along the run:", "", "| step | " + " | ".join(results) + " |",
          "|---" * (len(results) + 1) + "|"]
    stride = max(1, a.steps // 10)
    for i in range(stride - 1, a.steps, stride):
        L.append(f"| {i + 1} | " + " | ".join(
            f"{r['lines'][i]['train_loss']:.3f}" if i < len(r["lines"]) else "–"
            for r in results.values()) + " |")
    L += ["", "## Sample generation (greedy, `deltatune generate`, one held-out MR)", "",
          f"Prompt: `{mr}` + newline", "", "References in the held-out set:", ""]
    L += [f"- {x}" for x in refs[:5]] + [""]
    L += ["| model | output |", "|---|---|"]
    L += ["| %s | %s |" % (name, text.replace("|", "\\|").replace("\n", " "))
          for name, text in samples]
    if failures:
        L += ["", "## Failures", ""]
        for cmd, rc, err in failures:
            L += ["```", " ".join(map(rel, cmd)), f"exit {rc}", err.strip()[-2000:], "```"]
    L += ["", "## Commands", "", "```", ".venv/bin/python bench/e2e_smollm2.py "
          + " ".join(sys.argv[1:])] + [" ".join(map(rel, results[m]["cmd"])) for m in results]
    L += [f"{rel(ENGINE)} generate --model {rel(os.path.join(WORK, 'out-lora', 'merged'))} "
          f"--prompt \"$MR\"$'\\n' --max-tokens 60", "```", "",
          f"Raw JSON lines: `{rel(os.path.join(WORK, 'train.log'))}`.", ""]
    open(a.out, "w", encoding="utf-8").write("\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
