#!/usr/bin/env python3
"""engine_cpu.py: deltatune's CPU engine against PyTorch + PEFT, side by side.

Runs `build/deltatune train` and an equivalent PyTorch + PEFT loop (own
subprocesses, same threads, rows and hyper-parameters) for lora and delta_lora
on a random GPT-2-small-shaped model and SmolLM2-135M: steady-state tokens/s,
peak RSS, the sgemm peak (roofline) and a perf profile of the engine. Writes
bench/results/engine-cpu.md; bench/README.md explains each measurement.
"""
import argparse, contextlib, json, os, platform, re, shutil, statistics, subprocess
import sys, tempfile, time

from common import (ALPHA, CLIP, GGUF, LAMBDA, LR, RANK, ROOT, SEED, add_lora, engine_cmd as
                    common_engine_cmd, flops_per_token, read_rows, save_random_gpt2,
                    torch_prepare, torch_step, write_rows)

CACHE = os.path.join(ROOT, ".cache", "bench")
ENGINE = os.path.join(ROOT, "build", "deltatune")
GPT2_DIR = os.path.join(CACHE, "gpt2-small-random")
TOK_DIR = os.path.join(ROOT, "..", "shared", "data", "gpt2-tokenizer")
BLAS_LIB = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # removed: OpenBLAS picks its kernels
FORCED = os.environ.get("OPENBLAS_CORETYPE") or "Haswell"  # kernels of the extra engine run
MODELS = {  # engine model path, HF (dir, gguf_file), LoRA targets, vocab
    "gpt2-small": dict(engine=GPT2_DIR, hf=(GPT2_DIR, None), targets=["c_attn"], vocab=50257),
    "smollm2-135m": dict(engine=GGUF, hf=(os.path.dirname(GGUF), os.path.basename(GGUF)),
                         targets=["q_proj", "v_proj"], vocab=49152),
}


def torch_child(a):
    """One PyTorch + PEFT run; prints JSON lines like the engine does."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D
    torch.set_num_threads(a.threads)
    torch.manual_seed(SEED)
    spec, (d, f) = MODELS[a.model], MODELS[a.model]["hf"]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                 **({"gguf_file": f} if f else {}))
    cfg, gpt2 = model.config, model.config.model_type == "gpt2"
    mm = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
    model = add_lora(model, spec["targets"], gpt2)
    model.train()
    loras, params, opt = torch_prepare(model, cfg, mm)
    rows = read_rows(a.data)
    for step in range(a.total):
        x = torch.tensor(rows[step * a.batch:(step + 1) * a.batch])
        loss = torch_step(model, loras, params, opt, x, a.method, gpt2)
        print(json.dumps({"type": "metrics", "step": step + 1, "total_steps": a.total,
                          "train_loss": loss.item()}), flush=True)


def cpu_busy():  # (busy, total) jiffies of the whole machine
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def wait_quiet(limit_s=90, max_busy=0.15):  # until others use < max_busy of the CPUs
    for _ in range(limit_s):
        (b0, s0), _, (b1, s1) = cpu_busy(), time.sleep(1.0), cpu_busy()
        if (b1 - b0) / max(1, s1 - s0) < max_busy:
            return


def run_once(cmd, env, a):
    """Runs cmd; returns its timings, RSS and the load other processes caused."""
    wait_quiet()
    (b0, s0), t_start = cpu_busy(), time.perf_counter()
    err = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    steps, info, hwm = [], {}, {}
    for line in p.stdout:
        t, j = time.perf_counter(), json.loads(line) if line.startswith("{") else {}
        if j.get("type") == "info":
            info = j
        elif j.get("type") == "metrics":
            steps.append((t, time.monotonic(), j["train_loss"]))
            with contextlib.suppress(OSError):  # VmHWM reset after step 1: steps 2 .. n-1
                if j["step"] == 1:
                    open(f"/proc/{p.pid}/clear_refs", "w").write("5")
                st = open(f"/proc/{p.pid}/status").read()
                hwm[j["step"]] = int(re.search(r"VmHWM:\s*(\d+)", st)[1])
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall, (b1, s1), ncpu = time.perf_counter() - t_start, cpu_busy(), os.cpu_count()
    if p.returncode != 0:
        sys.exit(f"FAILED (exit {p.returncode}): {' '.join(cmd)}\n{err.seek(0) or err.read()[-4000:]}")
    n, tok = len(steps), a.batch * a.seq
    dts = [steps[i][0] - steps[i - 1][0] for i in range(a.warmup, n)]
    other = ((b1 - b0) / max(1, s1 - s0) * ncpu * wall - ru.ru_utime - ru.ru_stime) / (ncpu * wall)
    return dict(step_times=dts, step_median=(med := statistics.median(dts)), tok_s=tok / med,
                tok_s_mean=tok * len(dts) / sum(dts), loss_mean=statistics.mean(x[2] for x in steps),
                rss_proc_mb=ru.ru_maxrss / 1024, rss_train_mb=hwm.get(n - 1, 0) / 1024,
                wall=wall, other_load=max(0.0, other), info=info,
                mono=(steps[a.warmup - 1][1], steps[-1][1]))


def run_measured(cmd, env, a, retries=2):
    """Reruns while others took > 15% of the CPUs; keeps the least disturbed run."""
    best = None
    for attempt in range(1, retries + 2):
        r = run_once(cmd, env, a)
        best = r if best is None or r["other_load"] < best["other_load"] else best
        if r["other_load"] < 0.15:
            break
        print(f"   (other processes used {r['other_load']:.0%} of the CPUs)", flush=True)
    return dict(best, attempts=attempt)


def engine_cmd(model, method, data, out, a):
    return common_engine_cmd(ENGINE, MODELS[model]["engine"], MODELS[model]["targets"], method,
                             data, out, a, ["--threads", str(a.threads)])


def bench_env(threads, **kw):
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    return dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **kw)


def run_engine(model, method, data, a, env_extra=None, perf_file=None, retries=2):
    out = tempfile.mkdtemp(prefix="run-", dir=CACHE)
    cmd = engine_cmd(model, method, data, out, a)
    if perf_file:  # sample timestamps in CLOCK_MONOTONIC, as time.monotonic()
        cmd = ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-F", "499", "-o", perf_file, "--"] + cmd
    try:
        return run_measured(cmd, bench_env(a.threads, **(env_extra or {})), a, retries)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_torch(model, method, data, a):
    return run_measured([sys.executable, os.path.abspath(__file__), "--torch-child",
                         "--model", model, "--method", method, "--data", data, "--threads",
                         str(a.threads), "--batch", str(a.batch), "--total", str(a.total)],
                        bench_env(a.threads), a)


def ensure_inputs(a):
    global ENGINE  # run a copy: teammates may rebuild build/deltatune meanwhile
    os.makedirs(CACHE, exist_ok=True)
    if not os.access(ENGINE, os.X_OK):
        sys.exit(f"{ENGINE} missing: run `make -j2 all` first")
    ENGINE = shutil.copy2(ENGINE, os.path.join(CACHE, "deltatune.snapshot"))
    if not os.path.exists(GGUF):
        sys.exit(f"{GGUF} missing: run scripts/install-deps")
    if not os.path.exists(os.path.join(GPT2_DIR, "model.safetensors")):
        save_random_gpt2(GPT2_DIR, (12, 768, 12), TOK_DIR,
                         [("vocab.json",) * 2, ("vocab.bpe", "merges.txt"), ("tokenizer.json",) * 2])
    data = {}
    for name, spec in MODELS.items():
        data[name] = os.path.join(CACHE, f"rows-{name}-B{a.batch}-T{a.seq}-n{a.total}.jsonl")
        write_rows(data[name], spec["vocab"], a)
    return data


PEAK_PY = """import ctypes, sys, time
n, lib = 2048, sys.argv[1]
if lib == "torch":
    import torch; torch.set_num_threads(int(sys.argv[2]))
    a, b = torch.randn(n, n), torch.randn(n, n); f, core = (lambda: a @ b), "MKL"
else:  # cblas_sgemm of the given library, row-major, no transposes
    import numpy as np; L = ctypes.CDLL(lib); a, b, c = (np.ones((n, n), np.float32) for _ in "abc")
    P, one, zero = lambda x: ctypes.c_void_p(x.ctypes.data), ctypes.c_float(1), ctypes.c_float(0)
    f = lambda: L.cblas_sgemm(101, 111, 111, n, n, n, one, P(a), n, P(b), n, zero, P(c), n)
    L.openblas_get_corename.restype = ctypes.c_char_p; core = L.openblas_get_corename().decode()
f(); ts = []
for _ in range(10):
    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
print(2 * n ** 3 / min(ts) / 1e9, core)
"""


def sgemm_peaks(threads):
    """GFLOP/s of a 2048³ fp32 GEMM, best of 10: the engine's OpenBLAS and torch (MKL)."""
    def peak(lib, **e):  # (GFLOP/s, kernel name)
        out = subprocess.check_output([sys.executable, "-c", PEAK_PY, lib, str(threads)],
                                      env=bench_env(threads, **e), text=True).split()
        return float(out[0]), out[1]
    wait_quiet()
    lib = BLAS_LIB + "/libopenblas.so.0"
    return {"openblas": peak(lib), "forced": peak(lib, OPENBLAS_CORETYPE=FORCED),
            "torch": peak("torch")}


def perf_top(perf_file, t0, t1, n=14):
    """Flat profile of the timed steps only (CLOCK_MONOTONIC window t0..t1)."""
    out = subprocess.run(["perf", "report", "-i", perf_file, "--stdio", "--no-children",
                          "--sort", "dso,symbol", "--time", f"{t0:.6f},{t1:.6f}"],
                         capture_output=True, text=True).stdout
    rows = [re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[.\]\s+(.+?)[\s-]*$", l) for l in out.splitlines()]
    return [(float(m[1]), m[2], m[3]) for m in rows if m][:n]


def machine():
    import torch
    sh = lambda c: subprocess.run(c, capture_output=True, text=True, shell=True).stdout.strip()
    lscpu = sh("lscpu")
    get = lambda k: (re.search(rf"^{re.escape(k)}:\s*(.+)$", lscpu, re.M) or [0, "?"])[1]
    mem = int(open("/proc/meminfo").readline().split()[1]) / 1024 / 1024
    osname = (re.search(r'PRETTY_NAME="(.+)"', open("/etc/os-release").read()) or [0, "?"])[1]
    blas = sh("dpkg-query -W -f='${Version}' libopenblas0-openmp") or "?"
    built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.stat(ENGINE).st_mtime))
    eng = (f"`build/deltatune` built {built} (run from a copy taken at the start), sha256 "
           f"{sh(f'sha256sum {ENGINE}')[:12]}, git HEAD {sh(f'git -C {ROOT} rev-parse --short HEAD')}"
           " + uncommitted work")
    return [f"CPU: {get('Model name')} (family {get('CPU family')}, model {get('Model')}), "
            f"{os.cpu_count()} cores, {get('Thread(s) per core')} thread/core, L2 "
            f"{get('L2 cache')}, L3 {get('L3 cache')}, hypervisor {get('Hypervisor vendor')}",
            f"RAM: {mem:.1f} GiB; OS: {osname}, kernel {platform.release()}",
            f"gcc {sh('gcc -dumpfullversion')}; OpenBLAS {blas} (openmp); torch "
            f"{torch.__version__} (BLAS: {'MKL' if torch.backends.mkl.is_available() else '?'});"
            f" python {platform.python_version()}", f"Engine: {eng}", "Inherited environment: "
            + (", ".join(f"{k}={os.environ[k]}" for k in BLAS_VARS if k in os.environ) or "none")
            + " — removed for every measured process (see bench/README.md)."]


def summary(res, extra, peaks, profiles):  # the goals, every model's figure, what dominates
    models = dict.fromkeys(m for m, _ in res)
    sp = {f"{m} {k}": e["tok_s"] / t["tok_s"] for (m, k), (e, t) in res.items()}
    rss = {f"{m} {k}": e["rss_proc_mb"] / t["rss_proc_mb"] for (m, k), (e, t) in res.items()}
    dl = [{m: res[(m, "delta_lora")][i]["step_median"] / res[(m, "lora")][i]["step_median"]
           for m in models} for i in (0, 1)]
    fmt = lambda d, spec=".2f": ", ".join(f"{k} {v:{spec}}" for k, v in d.items())
    verdict = lambda ok: "met" if ok else "**NOT met**"
    L = ["## Summary", "",
         f"- Speed ≥ 1.5× PyTorch: {verdict(min(sp.values()) >= 1.5)} ({fmt(sp)}).",
         f"- Peak RSS (proc) ≤ 0.6× PyTorch: {verdict(max(rss.values()) <= 0.6)} ({fmt(rss)}).",
         f"- Delta-LoRA step ≤ 1.05× LoRA step (engine): {verdict(max(dl[0].values()) <= 1.05)} "
         f"(engine {fmt(dl[0], '.3f')}; PyTorch {fmt(dl[1], '.3f')})."]
    if extra:
        L.append(f"- BLAS: sgemm peak {peaks['openblas'][0]:.0f} GFLOP/s for the engine's OpenBLAS "
                 f"({peaks['openblas'][1]}) vs {peaks['torch'][0]:.0f} for PyTorch's MKL. With "
                 f"OpenBLAS forced to {FORCED} ({peaks['forced'][0]:.0f} GFLOP/s) the engine runs "
                 f"lora at " + fmt({m: x["tok_s"] / res[(m, "lora")][1]["tok_s"]
                                    for m, x in extra.items()}) + "× PyTorch.")
    L += [f"- {m}: sgemm is {sum(p for p, d, _ in rows if 'blas' in d):.0f}% of the engine's "
          f"samples; its own top kernel: `{next((s for _, d, s in rows if 'deltatune' in d), '?')}`."
          for m, rows in profiles.items()]
    return L + [""]


def report(a, res, extra, peaks, profiles, started, elapsed):
    L = ["# deltatune CPU engine vs PyTorch + PEFT", "",
         f"Generated by `bench/engine_cpu.py` on {started} in {elapsed / 60:.1f} min.", "",
         "## Machine", ""] + [f"- {m}" for m in machine()] + [""] + summary(res, extra, peaks, profiles)
    L += ["## Setup", "",
          f"- {a.threads} threads both sides; B={a.batch}, T={a.seq} (rows of T+1 random ids, "
          f"seed {SEED}: {a.batch * a.seq} positions and targets per step on both sides); "
          f"{a.warmup} warmup + {a.steps} timed steps; tok/s = B·T / median step time; "
          f"{a.repeat} runs per side and method, alternating lora / delta_lora, fastest kept.",
          f"- rank {RANK}, alpha {ALPHA}, lr {LR} constant, AdamW (0.9, 0.999, 1e-8, wd 0), "
          f"max grad norm {CLIP}, fp32, no dropout; targets GPT-2 `c_attn` (both sides), "
          f"SmolLM2 `q_proj,v_proj`; Delta-LoRA λ={LAMBDA}, K=0 (W moves every step).",
          "- GPT-2: random weights (12 layers, d 768, 12 heads, vocab 50257). SmolLM2-135M: the "
          "Q4_1 GGUF (engine), the same GGUF dequantized to fp32 by transformers (PyTorch). RSS "
          "*proc* = child's `ru_maxrss` (load + training + the engine's checkpoint and export), "
          "*train* = VmHWM over steps 2 .. n-1. Details: bench/README.md.", "",
          "## Results", "",
          "| model | method | engine tok/s | PyTorch tok/s | speed ratio (goal ≥ 1.5) | "
          "engine RSS MB proc / train | PyTorch RSS MB proc / train | "
          "RSS ratio proc / train (goal ≤ 0.6) |", "|" + "---|" * 8]
    L += [f"| {m} | {k} | {e['tok_s']:.0f} | {t['tok_s']:.0f} | {e['tok_s'] / t['tok_s']:.2f}× | "
          f"{e['rss_proc_mb']:.0f} / {e['rss_train_mb']:.0f} | {t['rss_proc_mb']:.0f} / "
          f"{t['rss_train_mb']:.0f} | {e['rss_proc_mb'] / t['rss_proc_mb']:.2f} / "
          f"{e['rss_train_mb'] / max(1, t['rss_train_mb']):.2f} |" for (m, k), (e, t) in res.items()]
    (ob, core), (fo, fcore), (tp, _) = peaks["openblas"], peaks["forced"], peaks["torch"]
    L += ["", "## Roofline", "",
          f"sgemm peak, 2048×2048×2048 fp32, best of 10, {a.threads} threads: the OpenBLAS the "
          f"engine links, its own kernel choice ({core}) **{ob:.0f} GFLOP/s**, forced "
          f"`OPENBLAS_CORETYPE={FORCED}` ({fcore}) **{fo:.0f} GFLOP/s**; torch (MKL) "
          f"**{tp:.0f} GFLOP/s**.", "",
          "FLOPs per token = 4·N_mm + 12·L·T·d_attn + 6·r·Σ(in+out) (N_mm: weights of every "
          "matmul incl. the LM head; attention dense over T; see bench/README.md).", "",
          f"| model | method | GFLOP/token | engine GFLOP/s | of the OpenBLAS ({core}) peak | "
          "PyTorch GFLOP/s | of the MKL peak |", "|---|---|---|---|---|---|---|"]
    for (model, method), (e, t) in res.items():
        f = flops_per_token(t["info"], a.seq) / 1e9
        ge, gt = f * e["tok_s"], f * t["tok_s"]
        L.append(f"| {model} | {method} | {f:.3f} | {ge:.0f} | {ge / ob:.0%} | {gt:.0f} | "
                 f"{gt / tp:.0%} |")
    if extra:
        L += ["", f"### Engine (lora) with `OPENBLAS_CORETYPE={FORCED}` ({fcore} kernels)", ""]
        L += [f"- {m}: {x['tok_s']:.0f} tok/s ({x['tok_s'] / res[(m, 'lora')][1]['tok_s']:.2f}× "
              f"PyTorch, {x['tok_s'] / res[(m, 'lora')][0]['tok_s']:.2f}× the engine with {core}; "
              f"{flops_per_token(res[(m, 'lora')][1]['info'], a.seq) * x['tok_s'] / 1e9 / fo:.0%}"
              f" of the {fcore} peak)" for m, x in extra.items()]
    if profiles:
        L += ["", "## Where the engine's time goes (perf, timed steps only, lora)", ""]
        for model, rows in profiles.items():
            L += [f"**{model}** (`perf record -F 499`, share of the samples):", "",
                  "| % | object | symbol |", "|---|---|---|"]
            L += [f"| {p:.1f} | {d} | `{s}` |" for p, d, s in rows] + [""]
    L += ["", "## Raw (each side sees every row once, so mean train losses should agree)", "",
          "| model | method | side | median step s | mean tok/s | mean train loss | wall s | "
          "other load (attempts) | step times (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for (model, method), pair in res.items():
        for side, r in zip(("engine", "pytorch"), pair):
            L.append(f"| {model} | {method} | {side} | {r['step_median']:.3f} | "
                     f"{r['tok_s_mean']:.0f} | {r['loss_mean']:.4f} | {r['wall']:.0f} | "
                     f"{r['other_load']:.0%} ({r['attempts']}) | "
                     + " ".join(f"{x:.2f}" for x in r["step_times"]) + " |")
    cmd = ["build/deltatune"] + engine_cmd("smollm2-135m", "delta_lora", "ROWS.jsonl", "OUT", a)[1:]
    L += ["", "## Commands", "", "```", ".venv/bin/python bench/engine_cpu.py " + " ".join(
          sys.argv[1:]) + "   # = make bench without arguments", "# one engine run:",
          " ".join(os.path.relpath(x, ROOT) if x.startswith(ROOT) else x for x in cmd), "```", ""]
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for k, v in dict(threads=os.cpu_count(), batch=4, seq=128, warmup=3, steps=10).items():
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--repeat", type=int, default=2, help="runs per side and method (fastest kept)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-extra", action="store_true", help="no forced-core runs, no perf")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "engine-cpu.md"))
    ap.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    for flag, ty in (("--model", str), ("--method", str), ("--data", str), ("--total", int)):
        ap.add_argument(flag, type=ty, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_child:
        return torch_child(a)
    a.total = a.warmup + max(1, a.steps)
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    data = ensure_inputs(a)
    print("sgemm GFLOP/s:", peaks := sgemm_peaks(a.threads), flush=True)
    res, extra, profiles = {}, {}, {}
    use_perf = not a.no_extra and shutil.which("perf") is not None
    fastest = lambda old, new: new if old is None or new["tok_s"] > old["tok_s"] else old
    for model in a.models.split(","):
        for rep, method in [(r, m) for r in range(a.repeat) for m in ("lora", "delta_lora")]:
            print(f"{model} {method} ({rep + 1}/{a.repeat}): engine, then PyTorch ...", flush=True)
            e, t = run_engine(model, method, data[model], a), run_torch(model, method, data[model], a)
            print(f"   {e['tok_s']:.0f} vs {t['tok_s']:.0f} tok/s, {e['rss_proc_mb']:.0f} vs "
                  f"{t['rss_proc_mb']:.0f} MB", flush=True)
            old = res.get((model, method), (None, None))
            res[(model, method)] = (fastest(old[0], e), fastest(old[1], t))
        if not a.no_extra:  # the forced kernels; then a short perf run
            extra[model] = run_engine(model, "lora", data[model], a,
                                      env_extra={"OPENBLAS_CORETYPE": FORCED})
        if use_perf:  # a short run: 1 warmup + 4 profiled steps
            pa, pf = argparse.Namespace(**dict(vars(a), warmup=1, total=5)), f"{CACHE}/perf.data"
            r = run_engine(model, "lora", data[model], pa, perf_file=pf, retries=0)
            profiles[model] = perf_top(pf, *r["mono"])
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    open(a.out, "w").write(text := report(a, res, extra, peaks, profiles, started, time.time() - t0))
    print(text)


if __name__ == "__main__":
    main()
