#!/usr/bin/env python3
"""e2e_smollm2.py: does Delta-LoRA beat its controls? SmolLM2-135M-Instruct on E2E NLG,
trained by our engine on the CPU, several seeds per condition.

Delta-LoRA with start step K = 0 and no clipping is LoRA with alpha·(1+λ) under Adam
(docs/DELTA-LORA.md), so a gain at equal alpha and learning rate may be nothing but a
larger effective step. The conditions (all at equal steps, batch, data and schedule):

  full           full fine-tuning                                   (2 seeds)
  lora           LoRA, alpha                                        (3 seeds)
  lora-alpha     LoRA, alpha·(1+λ) with λ = 0.5  (control)          (3 seeds)
  lora-lr        LoRA, lr·(1+λ) with λ = 0.5     (control)          (3 seeds)
  delta-0.5      Delta-LoRA, λ = 0.5                                (3 seeds)
  delta-2        Delta-LoRA, λ = 2 (the paper's E2E setting)        (3 seeds)

Data: ../shared/data/e2e/valid.txt ("mr||reference" per line): the first --train-lines
lines train, the last --heldout-lines lines are held out (their MRs are disjoint from the
training MRs: checked and reported). Rows {"prompt": "<mr>\\n", "completion": " <ref>"}.
Per run: held-out loss every --eval-interval steps, then greedy generation by our engine
(`deltatune generate --prompts-file`, one line per distinct held-out MR) scored against all
of that MR's references: BLEU and chrF (sacrebleu, multi-reference) and ROUGE-L (rouge-score,
the best F1 over an MR's references, averaged over MRs). For LoRA and Delta-LoRA runs the
numerical rank of the merged model's change to one targeted weight (layer 0 q_proj) is
measured by SVD: ≤ r for LoRA, ≤ 2r for Delta-LoRA (the telescoping identity).

Each run's result is cached in bench/results/e2e-runs/<condition>-s<seed>.json (committed:
the bench resumes where it stopped, on this machine or another); a cached run is reused
when its settings are unchanged. Writes bench/results/e2e-smollm2.md and
bench/results/e2e-smollm2.svg (held-out loss against step, mean ± sd over seeds).

    make bench-e2e                               # everything (about 2 h on 2 idle cores)
    .venv-e2e/bin/python bench/e2e_smollm2.py --only lora,delta-0.5 --seeds 1
    .venv-e2e/bin/python bench/e2e_smollm2.py --quick   # a 1-minute smoke run, to /tmp
    .venv-e2e/bin/python bench/e2e_smollm2.py --report-only   # the report from the cache
"""
import argparse, hashlib, json, math, os, resource, shutil, statistics, subprocess, sys, tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "build", "deltatune")
GGUF = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
E2E = os.path.join(ROOT, "..", "shared", "data", "e2e", "valid.txt")
WORK = os.path.join(ROOT, ".cache", "bench", "e2e")
RESULTS = os.path.join(ROOT, "bench", "results")
LAMBDA_CTRL = 0.5  # the λ whose controls are run
IDLE_LOAD = 0.2  # cores other processes may use for a run to count as on an idle machine

# name: (method, overrides, seeds, what it is)
CONDITIONS = {
    "full": ("full", {}, 2, "full fine-tuning"),
    "lora": ("lora", {}, 3, "LoRA, alpha"),
    "lora-alpha": ("lora", {"alpha_mult": 1 + LAMBDA_CTRL}, 3,
                   f"LoRA, alpha·(1+λ), λ = {LAMBDA_CTRL:g} (control)"),
    "lora-lr": ("lora", {"lr_mult": 1 + LAMBDA_CTRL}, 3,
                f"LoRA, lr·(1+λ), λ = {LAMBDA_CTRL:g} (control)"),
    "delta-0.5": ("delta_lora", {"lambda": 0.5}, 3, "Delta-LoRA, λ = 0.5"),
    "delta-2": ("delta_lora", {"lambda": 2.0}, 3, "Delta-LoRA, λ = 2 (paper's E2E λ)"),
}


def rel(p):
    return os.path.relpath(p, ROOT) if isinstance(p, str) and p.startswith(ROOT) else p


# ---- data --------------------------------------------------------------------------------
def prepare(a, work):
    lines = [l.rstrip("\n") for l in open(E2E, encoding="utf-8") if "||" in l]
    if a.train_lines + a.heldout_lines > len(lines):
        sys.exit(f"{E2E} has {len(lines)} lines; --train-lines + --heldout-lines is "
                 f"{a.train_lines + a.heldout_lines}")
    split = {"train": lines[:a.train_lines], "heldout": lines[-a.heldout_lines:]}
    os.makedirs(work, exist_ok=True)
    paths = {}
    for name, rows in split.items():
        paths[name] = os.path.join(work, f"{name}.jsonl")
        with open(paths[name], "w", encoding="utf-8") as f:
            for l in rows:
                mr, ref = l.split("||", 1)
                f.write(json.dumps({"prompt": mr.strip() + "\n",
                                    "completion": " " + ref.strip()}) + "\n")
    refs = {}  # held-out MR -> its references, in file order
    for l in split["heldout"]:
        mr, ref = (x.strip() for x in l.split("||", 1))
        refs.setdefault(mr, []).append(ref)
    train_mrs = {l.split("||", 1)[0].strip() for l in split["train"]}
    paths["prompts"] = os.path.join(work, "prompts.jsonl")
    with open(paths["prompts"], "w", encoding="utf-8") as f:
        for mr in refs:
            f.write(json.dumps(mr + "\n") + "\n")
    facts = dict(n_lines=len(lines), train_mrs=len(train_mrs), heldout_mrs=len(refs),
                 shared_mrs=len(train_mrs & set(refs)))
    return paths, refs, facts


# ---- one run -----------------------------------------------------------------------------
def run_settings(a, cond, seed):
    method, ov, _, _ = CONDITIONS[cond]
    s = dict(method=method, seed=seed, steps=a.steps, batch=a.batch, seq_len=a.seq_len,
             lr=a.lr * ov.get("lr_mult", 1.0), eval_interval=a.eval_interval,
             train_lines=a.train_lines, heldout_lines=a.heldout_lines,
             max_tokens=a.max_tokens, threads=a.threads)
    if method != "full":
        s.update(rank=a.rank, alpha=a.alpha * ov.get("alpha_mult", 1.0), targets="q,v")
    if method == "delta_lora":
        s.update(lam=ov["lambda"], start_step=a.start_step)
    return s


def settings_key(s):
    keep = {k: v for k, v in s.items() if k != "threads"}  # threads change speed, not results
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def train_cmd(s, paths, out):
    c = [ENGINE, "train", "--model", GGUF, "--data", paths["train"], "--valid", paths["heldout"],
         "--out", out, "--method", s["method"], "--steps", str(s["steps"]),
         "--batch-size", str(s["batch"]), "--seq-len", str(s["seq_len"]), "--lr", repr(s["lr"]),
         "--eval-interval", str(s["eval_interval"]), "--checkpoint-interval", str(s["steps"]),
         "--threads", str(s["threads"]), "--seed", str(s["seed"]),
         "--export-dtype", "float32", "--json"]
    if s["method"] != "full":
        c += ["--rank", str(s["rank"]), "--alpha", repr(s["alpha"]),
              "--target-modules", s["targets"]]
    if s["method"] == "delta_lora":
        c += ["--lambda", repr(s["lam"]), "--start-step", str(s["start_step"])]
    return c


def child_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def machine_busy_s():
    """CPU seconds every process of the machine has used (/proc/stat)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def run_logged(cmd, log):
    """(completed process, wall seconds, CPU seconds of the child, CPU seconds the rest
    of the machine used meanwhile). OpenMP threads spin while they wait, so the child's
    CPU seconds grow too when other work shares the cores: only a run with little other
    load tells the bench's cost."""
    log.write("$ " + " ".join(map(rel, cmd)) + "\n")
    log.flush()
    t0, c0, m0 = time.perf_counter(), child_cpu_s(), machine_busy_s()
    p = subprocess.run(cmd, capture_output=True, text=True)
    log.write(p.stdout)
    log.write(p.stderr)
    log.flush()
    cpu = child_cpu_s() - c0
    return p, time.perf_counter() - t0, cpu, max(0.0, machine_busy_s() - m0 - cpu)


def generate(model, paths, max_tokens, threads, log):
    cmd = [ENGINE, "generate", "--model", model, "--prompts-file", paths["prompts"],
           "--max-tokens", str(max_tokens), "--threads", str(threads)]
    p, wall, cpu, other = run_logged(cmd, log)
    if p.returncode:
        raise RuntimeError(f"generate failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
    outs = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    # one line per completion: what follows the first newline is not part of it
    return [o["text"].strip().split("\n")[0].strip() for o in outs], wall, cpu, other


def scores(hyps, refs):
    import sacrebleu
    from rouge_score import rouge_scorer
    mrs = list(refs)
    if len(hyps) != len(mrs):
        raise RuntimeError(f"{len(hyps)} generations for {len(mrs)} MRs")
    n = max(len(r) for r in refs.values())
    streams = [[refs[m][i] if i < len(refs[m]) else None for m in mrs] for i in range(n)]
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rl = [max(sc.score(r, h)["rougeL"].fmeasure for r in refs[m]) for h, m in zip(hyps, mrs)]
    return dict(bleu=sacrebleu.corpus_bleu(hyps, streams).score,
                chrf=sacrebleu.corpus_chrf(hyps, streams).score,
                rouge_l=100.0 * statistics.mean(rl))


def read_tensor(d, name):
    """One tensor of a (possibly sharded) safetensors directory as float64."""
    import numpy as np
    from safetensors.numpy import safe_open
    idx = os.path.join(d, "model.safetensors.index.json")
    files = ([os.path.join(d, json.load(open(idx))["weight_map"][name])] if os.path.exists(idx)
             else [os.path.join(d, "model.safetensors")])
    with safe_open(files[0], "np") as f:
        return f.get_tensor(name).astype(np.float64)


WNAME = "model.layers.0.self_attn.q_proj.weight"


def delta_rank(merged, base_merged):
    """Numerical rank of merged - base for WNAME and the change's relative Frobenius size."""
    import numpy as np
    w0 = read_tensor(base_merged, WNAME)
    d = read_tensor(merged, WNAME) - w0
    sv = np.linalg.svd(d, compute_uv=False)
    if sv[0] == 0:
        return 0, 0.0
    # Both files are fp32: rounding W0 + dW to fp32 adds full-rank noise of about
    # eps32 * |W0| per element, so count only what stands above it as well.
    tol = max(1e-4 * sv[0], 64 * np.finfo(np.float32).eps * np.linalg.norm(w0, 2))
    return int((sv > tol).sum()), float(np.linalg.norm(d) / np.linalg.norm(w0))


def one_run(a, cond, seed, paths, refs, base_merged, log):
    s = run_settings(a, cond, seed)
    out = os.path.join(a.work, f"out-{cond}-s{seed}")
    shutil.rmtree(out, ignore_errors=True)
    cmd = train_cmd(s, paths, out)
    p, wall, cpu, other = run_logged(cmd, log)
    if p.returncode:
        raise RuntimeError(f"{cond} seed {seed}: train failed (exit {p.returncode}): "
                           f"{p.stderr.strip()[-800:]}")
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    lines = [j for j in lines if j.get("type") == "metrics"]
    curve = [[j["step"], j["valid_loss"]] for j in lines if "valid_loss" in j]
    train = [[j["step"], j["train_loss"]] for j in lines]
    merged = os.path.join(out, "merged")
    hyps, gen_wall, gen_cpu, gen_other = generate(merged, paths, s["max_tokens"], s["threads"], log)
    r = dict(condition=cond, settings=s, key=settings_key(s), curve=curve, train=train,
             valid=curve[-1][1] if curve else None, hyps=hyps, **scores(hyps, refs),
             train_wall_s=round(wall, 1), generate_wall_s=round(gen_wall, 1),
             cpu_s=round(cpu + gen_cpu, 1),
             # cores the rest of the machine used, on average, while this run ran
             other_load=round((other + gen_other) / (wall + gen_wall), 2),
             command=" ".join(map(rel, cmd)), engine_commit=a.commit)
    if s["method"] != "full" and base_merged:
        r["rank"], r["rel_change"] = delta_rank(merged, base_merged)
    shutil.rmtree(out, ignore_errors=True)  # 540 MB per merged fp32 model
    return r


def base_run(a, paths, refs, log):
    """The base model: held-out loss, generations and an fp32 export to diff against (one
    LoRA step at lr 1e-9, so B stays ~1e-9)."""
    s = run_settings(a, "lora", a.seeds_base)
    s.update(steps=1, lr=1e-9, eval_interval=1)
    out = os.path.join(a.work, "out-base")
    shutil.rmtree(out, ignore_errors=True)
    p, _, _, _ = run_logged(train_cmd(s, paths, out), log)
    if p.returncode:
        raise RuntimeError(f"base: train failed (exit {p.returncode}): {p.stderr.strip()[-800:]}")
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    valid = [j["valid_loss"] for j in lines if "valid_loss" in j][-1]
    hyps, _, _, _ = generate(GGUF, paths, s["max_tokens"], s["threads"], log)
    return dict(valid=valid, hyps=hyps, **scores(hyps, refs)), os.path.join(out, "merged")


# ---- report ------------------------------------------------------------------------------
def ms(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"


def welch(x, y):
    """(mean difference x - y, Welch's t); t is None with fewer than 2 values a side."""
    if len(x) < 2 or len(y) < 2:
        return statistics.mean(x) - statistics.mean(y), None
    vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    d = statistics.mean(x) - statistics.mean(y)
    return d, (d / math.sqrt(vx + vy) if vx + vy > 0 else None)


def svg_plot(runs, path):
    """Held-out loss against step: mean over seeds per condition, sd as a band."""
    series = {}
    for c in CONDITIONS:
        rs = [r for r in runs if r["condition"] == c and r["curve"]]
        if not rs:
            continue
        steps = [s for s, _ in rs[0]["curve"]]
        pts = []
        for i, st in enumerate(steps):
            v = [r["curve"][i][1] for r in rs if i < len(r["curve"])]
            pts.append((st, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0))
        series[c] = pts
    if not series:
        return False
    W, H, L, R, T, B = 720, 420, 70, 170, 30, 50
    xs = [p[0] for s in series.values() for p in s]
    ys = [p[1] + k * p[2] for s in series.values() for p in s for k in (-1, 1)]
    x0, x1 = 0, max(xs)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 0.05
    y0, y1 = y0 - pad, y1 + pad
    X = lambda x: L + (W - L - R) * (x - x0) / ((x1 - x0) or 1)
    Y = lambda y: T + (H - T - B) * (1 - (y - y0) / ((y1 - y0) or 1))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2 - 60}" y="18">held-out loss vs step</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
         f'<text x="{(L + W - R) / 2 - 15}" y="{H - 12}">step</text>']
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        o.append(f'<text x="8" y="{Y(yv) + 4:.1f}">{yv:.3f}</text>')
        o.append(f'<line x1="{L - 4}" y1="{Y(yv):.1f}" x2="{W - R}" y2="{Y(yv):.1f}" '
                 f'stroke="#ddd"/>')
    for st in sorted({p[0] for s in series.values() for p in s}):
        o.append(f'<text x="{X(st) - 10:.1f}" y="{H - B + 16}">{st}</text>')
    for k, (c, pts) in enumerate(series.items()):
        col = colors[k % len(colors)]
        band = ([f"{X(s):.1f},{Y(m + d):.1f}" for s, m, d in pts] +
                [f"{X(s):.1f},{Y(m - d):.1f}" for s, m, d in reversed(pts)])
        o.append(f'<polygon points="{" ".join(band)}" fill="{col}" fill-opacity="0.15"/>')
        o.append(f'<polyline points="{" ".join(f"{X(s):.1f},{Y(m):.1f}" for s, m, _ in pts)}" '
                 f'fill="none" stroke="{col}" stroke-width="2"/>')
        o.append(f'<line x1="{W - R + 10}" y1="{T + 10 + 18 * k}" x2="{W - R + 30}" '
                 f'y2="{T + 10 + 18 * k}" stroke="{col}" stroke-width="3"/>')
        o.append(f'<text x="{W - R + 35}" y="{T + 14 + 18 * k}">{c}</text>')
    o.append("</svg>")
    open(path, "w").write("\n".join(o) + "\n")
    return True


def report(a, runs, base, facts, refs, missing, started, minutes):
    by = {c: [r for r in runs if r["condition"] == c] for c in CONDITIONS}
    s0 = run_settings(a, "lora", 1)
    L = ["# Does Delta-LoRA beat its controls? SmolLM2-135M on E2E (deltatune engine, CPU)", "",
         f"Generated by `bench/e2e_smollm2.py` on {started}; {minutes:.0f} min of new runs "
         f"this time ({len(runs)} runs in all, each cached in `bench/results/e2e-runs/`).", "",
         "## Setup", "",
         f"- Data: `../shared/data/e2e/valid.txt` ({facts['n_lines']} lines). Train: the first "
         f"{a.train_lines} lines ({facts['train_mrs']} MRs). Held out: the last "
         f"{a.heldout_lines} lines ({facts['heldout_mrs']} MRs, {facts['shared_mrs']} of them "
         "also in train). Rows `{\"prompt\": \"<mr>\\n\", \"completion\": \" <ref>\"}`; loss on "
         "the completion and EOS.",
         f"- Every run: {a.steps} optimizer steps, batch {a.batch}, seq_len {a.seq_len}, linear "
         f"decay from lr {a.lr:g} (no warmup), AdamW (wd 0), max grad norm 1.0, fp32 on the "
         f"CPU, {a.threads} threads. LoRA and Delta-LoRA: rank {a.rank}, alpha {a.alpha:g} "
         f"(s = {a.alpha / a.rank:g}), targets q,v. Delta-LoRA: --start-step {a.start_step} "
         f"(W first moves at optimizer step {a.start_step + 1}; the paper's K = "
         f"{a.start_step + 1}, docs/DELTA-LORA.md).",
         "- Held-out loss: mean token loss over all held-out rows, every "
         f"{a.eval_interval} steps. Generation: greedy by our engine (`deltatune generate "
         f"--prompts-file`, at most {a.max_tokens} tokens, cut at the first newline), one per "
         "held-out MR, scored against all of that MR's references: BLEU and chrF "
         "(sacrebleu, corpus level, multi-reference), ROUGE-L (rouge-score F1, best "
         "reference per MR, averaged).",
         f"- Rank: numerical rank (singular values above 1e-4 of the largest and above fp32 "
         "rounding, 64·eps·‖W₀‖₂) of the merged "
         f"model's change to `{WNAME}` against the base exported the same way; "
         "\"change\" is ‖ΔW‖/‖W₀‖.",
         "- \"train s/run\" is wall time on the machine as it was (runs may share it with "
         "other work, niced): indicative only; losses and scores do not depend on it.", "",
         "## Results (mean ± sd over seeds)", "",
         "| condition | what | seeds | held-out loss | BLEU | ROUGE-L | chrF | rank of ΔW | "
         "change | train s/run |", "|---|---|---|---|---|---|---|---|---|---|"]
    if base:
        L.append(f"| base | no fine-tuning | – | {base['valid']:.4f} | {base['bleu']:.2f} | "
                 f"{base['rouge_l']:.2f} | {base['chrf']:.2f} | – | – | – |")
    for c, rs in by.items():
        if not rs:
            L.append(f"| {c} | {CONDITIONS[c][3]} | 0 | (not run) | | | | | | |")
            continue
        ranks = sorted({r["rank"] for r in rs if "rank" in r})
        L.append(f"| {c} | {CONDITIONS[c][3]} | {len(rs)} | {ms([r['valid'] for r in rs], '.4f')} | "
                 f"{ms([r['bleu'] for r in rs], '.2f')} | {ms([r['rouge_l'] for r in rs], '.2f')} | "
                 f"{ms([r['chrf'] for r in rs], '.2f')} | "
                 f"{', '.join(map(str, ranks)) if ranks else '–'} | "
                 f"{ms([r.get('rel_change') for r in rs], '.2e')} | "
                 f"{ms([r['train_wall_s'] for r in rs], '.0f')} |")
    # conclusion, from the numbers
    L += ["", "## Conclusion", ""]
    concl = []
    for dc in ("delta-0.5", "delta-2"):
        dr = by.get(dc, [])
        for ctrl in ("lora", "lora-alpha", "lora-lr"):
            cr = by.get(ctrl, [])
            if not dr or not cr:
                continue
            for metric, better, fmt in (("valid", -1, ".4f"), ("bleu", 1, ".2f"),
                                        ("rouge_l", 1, ".2f")):
                dv, t = welch([r[metric] for r in dr], [r[metric] for r in cr])
                if t is None:
                    verdict = "too few seeds to say"
                elif abs(t) < 2:
                    verdict = "within seed noise (|t| < 2)"
                else:
                    verdict = "better" if dv * better > 0 else "worse"
                concl.append(f"| {dc} vs {ctrl} | {metric} | {dv:+{fmt}} | "
                             f"{'–' if t is None else f'{t:+.2f}'} | {verdict} |")
    if concl:
        L += ["Each Delta-LoRA condition against each LoRA run, difference of means "
              "(Delta-LoRA minus control; lower loss and higher BLEU/ROUGE-L are better) and "
              "Welch's t over seeds. The controls match λ = 0.5 (LoRA with α·1.5 or "
              "lr·1.5); Delta-LoRA with λ = 2 takes steps like LoRA with α·3 (plus a frozen "
              "offset from step K), a step size none of the controls has, so a gain of "
              "delta-2 over them is not separated from its larger effective step:", "",
              "| comparison | metric | difference | t | reading |", "|---|---|---|---|---|"] + concl
        L += ["", "In words: " + plain_words(by)]
    else:
        L.append("Not enough runs yet to compare Delta-LoRA with its controls "
                 "(run the bench to completion).")
    todo = [f"{c} ({n - len(by[c])} of {n})" for c, (_, _, n, _) in CONDITIONS.items()
            if len(by[c]) < n]
    if todo:
        L += ["", "**Runs still to do** (run `make bench-e2e`; cached runs are kept): "
              + ", ".join(todo) + "."]
    if missing:
        L += ["", f"**Incomplete**: {len(missing)} run(s) not done yet: "
              + ", ".join(f"{c} seed {s}" for c, s in missing)
              + ". Rerun the same command: cached runs are kept."]
    L += cost_lines(a, runs, sum(n for _, _, n, _ in CONDITIONS.values()))
    L += ["", "![held-out loss vs step](e2e-smollm2.svg)", "",
          "## Held-out loss along the run (mean over seeds)", ""]
    steps = sorted({s for r in runs for s, _ in r["curve"]})
    present = [c for c in CONDITIONS if by[c]]
    L += ["| step | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for st in steps:
        row = []
        for c in present:
            v = [v for r in by[c] for s, v in r["curve"] if s == st]
            row.append(f"{statistics.mean(v):.4f}" if v else "–")
        L.append(f"| {st} | " + " | ".join(row) + " |")
    mr0 = next(iter(refs))
    L += ["", "## One held-out MR, greedy outputs (seed 1 of each condition)", "",
          f"MR: `{mr0}`", "", f"First reference: {refs[mr0][0]}", "",
          "| condition | output |", "|---|---|"]
    if base:
        L.append(f"| base | {base['hyps'][0].replace('|', '/')} |")
    for c in present:
        L.append(f"| {c} | {by[c][0]['hyps'][0].replace('|', '/')} |")
    L += ["", "## Commands", "", "```",
          "make bench-e2e    # = .venv-e2e/bin/python bench/e2e_smollm2.py " + " ".join(sys.argv[1:])]
    L += [r["command"] for r in runs[:1]]
    L += ["```", "Every run's command, settings, curve and generations: "
          "`bench/results/e2e-runs/*.json`.", ""]
    return "\n".join(L)


def plain_words(by):
    def mean(c, k):
        return statistics.mean(r[k] for r in by[c]) if by.get(c) else None
    l, la, lr = (mean(c, "valid") for c in ("lora", "lora-alpha", "lora-lr"))
    ctrls = [(n, v) for n, v in (("alpha·(1+λ)", la), ("lr·(1+λ)", lr)) if v is not None]
    parts = []
    for dc, lam in (("delta-0.5", "0.5"), ("delta-2", "2")):
        d = mean(dc, "valid")
        if d is None:
            continue
        if l is not None:
            parts.append(f"at equal alpha and lr Delta-LoRA λ={lam} has held-out loss {d:.4f} "
                         f"vs LoRA's {l:.4f}")
        if ctrls:
            best = min(ctrls, key=lambda x: x[1])
            parts.append(f"the best λ = 0.5 control (LoRA with {best[0]}) reaches "
                         f"{best[1]:.4f}, so Delta-LoRA λ={lam} "
                         + ("does not beat it" if d >= best[1] else "is lower than it"))
    if parts:
        parts.append("the t column says whether each gap exceeds seed noise")
    return "; ".join(parts) + "." if parts else "no comparison yet."


def cost_lines(a, runs, plan_n):
    """What the bench costs: wall time per run (training, evaluation, generation) of the
    runs that had the machine to themselves, and the whole bench from those."""
    idle = {}
    for r in runs:
        if r.get("other_load") is not None and r["other_load"] < IDLE_LOAD:
            idle.setdefault(r["settings"]["method"], []).append(
                r["train_wall_s"] + r["generate_wall_s"])
    L = ["", "## Cost", ""]
    if not idle:
        return L + ["No run has yet recorded that it ran on an otherwise idle machine "
                    f"(other load below {IDLE_LOAD} cores), so the bench's cost here is not "
                    "measured yet."]
    L += [f"Wall time per run (training with held-out evaluation, then generation) of the runs "
          f"that ran with other processes using under {IDLE_LOAD} cores on average "
          "(`other_load` in each run's JSON):", "",
          "| method | idle runs | wall s/run |", "|---|---|---|"]
    for m, xs in idle.items():
        L.append(f"| {m} | {len(xs)} | {statistics.mean(xs):.0f} |")
    allm = statistics.mean(x for xs in idle.values() for x in xs)
    per = {m: statistics.mean(xs) for m, xs in idle.items()}
    total = sum(per.get(CONDITIONS[c][0], allm) * n for c, (_, _, n, _) in CONDITIONS.items())
    unmeasured = sorted({CONDITIONS[c][0] for c in CONDITIONS} - set(per))
    L += ["", f"The whole bench ({plan_n} runs) takes about {total / 3600:.1f} h on this "
          f"machine when it has it to itself"
          + (f" ({', '.join(unmeasured)} counted at the mean of the measured methods)"
             if unmeasured else "") + ". The \"train s/run\" column above includes runs "
          "that shared the machine."]
    return L


# ---- main --------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--start-step", type=int, default=25, help="Delta-LoRA's K (ours)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--eval-interval", type=int, default=50)
    ap.add_argument("--train-lines", type=int, default=4000)
    ap.add_argument("--heldout-lines", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", default="", help="comma-separated conditions")
    ap.add_argument("--seeds", type=int, default=0, help="at most this many seeds each")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: the report from the cached runs (the rest listed as to do)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny steps and data, one seed, cache and report in /tmp")
    a = ap.parse_args()
    global ENGINE  # a copy: teammates may rebuild build/deltatune meanwhile
    a.seeds_base = 1
    a.work, runs_dir, out_md = WORK, os.path.join(RESULTS, "e2e-runs"), \
        os.path.join(RESULTS, "e2e-smollm2.md")
    if a.quick:
        tmp = tempfile.mkdtemp(prefix="e2e-quick-")
        a.work, runs_dir, out_md = tmp, os.path.join(tmp, "runs"), os.path.join(tmp, "e2e.md")
        a.steps, a.start_step, a.eval_interval, a.train_lines, a.heldout_lines = 4, 1, 2, 40, 12
        a.max_tokens, a.seeds, a.seq_len = 8, min(a.seeds or 2, 2), 64
    if a.report_only:  # a work folder of its own: a running bench's files stay untouched
        a.work = tempfile.mkdtemp(prefix="e2e-report-")
    only = [c for c in a.only.split(",") if c]
    for c in only:
        if c not in CONDITIONS:
            sys.exit(f"--only: unknown condition {c!r} (known: {', '.join(CONDITIONS)})")
    for p, fix in ((ENGINE, "make -j2 all"), (GGUF, "scripts/install-deps"), (E2E, "see ../shared")):
        if not os.path.exists(p):
            sys.exit(f"{p} missing ({fix})")
    try:
        import numpy, sacrebleu, rouge_score, safetensors  # noqa: F401
    except ImportError as e:
        sys.exit(f"{e}: run with .venv-e2e/bin/python (make bench-e2e creates it)")
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(runs_dir, exist_ok=True)
    ENGINE = shutil.copy2(ENGINE, os.path.join(a.work, "deltatune"))
    a.commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    paths, refs, facts = prepare(a, a.work)
    log = open(os.path.join(a.work, "runs.log"), "a")
    plan = [(c, s) for c, (_, _, n, _) in CONDITIONS.items() if not only or c in only
            for s in range(1, (min(n, a.seeds) if a.seeds else n) + 1)]
    # seed 1 of every LoRA-family condition first, then seed 2, …, full last: a run
    # stopped early still holds a like-for-like comparison
    order = list(CONDITIONS)
    plan.sort(key=lambda cs: (cs[0] == "full", cs[1], order.index(cs[0])))

    base_path = os.path.join(runs_dir, "base.json")
    base, base_merged = None, None
    bkey = settings_key(dict(run_settings(a, "lora", 1), steps=1, lr=1e-9, eval_interval=1))
    if os.path.exists(base_path) and json.load(open(base_path)).get("key") == bkey and \
            os.path.isdir(os.path.join(a.work, "out-base", "merged")):
        base = json.load(open(base_path))
        base_merged = os.path.join(a.work, "out-base", "merged")
    runs, missing = [], []
    for c, s in plan:
        path = os.path.join(runs_dir, f"{c}-s{s}.json")
        key = settings_key(run_settings(a, c, s))
        if os.path.exists(path):
            r = json.load(open(path))
            if r.get("key") == key:
                runs.append(r)
                continue
        if a.report_only:
            continue
        if base is None:
            print("base model ...", flush=True)
            base, base_merged = base_run(a, paths, refs, log)
            base["key"] = bkey
            json.dump(base, open(base_path, "w"), indent=1)
        print(f"{c} seed {s} ...", flush=True)
        try:
            r = one_run(a, c, s, paths, refs, base_merged, log)
        except RuntimeError as e:
            print(f"   FAILED: {e}", flush=True)
            missing.append((c, s))
            continue
        json.dump(r, open(path + ".tmp", "w"), indent=1)
        os.replace(path + ".tmp", path)
        runs.append(r)
        print(f"   valid {r['valid']:.4f}  BLEU {r['bleu']:.2f}  ROUGE-L {r['rouge_l']:.2f}  "
              f"chrF {r['chrf']:.2f}  rank {r.get('rank', '–')}  {r['train_wall_s']:.0f} s",
              flush=True)
    if base is None and os.path.exists(base_path):
        base = json.load(open(base_path))
    svg_plot(runs, os.path.splitext(out_md)[0] + ".svg")
    text = report(a, runs, base, facts, refs, missing, started, (time.time() - t0) / 60)
    open(out_md, "w", encoding="utf-8").write(text)
    print(text)
    print(f"\nwrote {rel(out_md)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
