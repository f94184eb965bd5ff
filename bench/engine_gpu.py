#!/usr/bin/env python3
"""engine_gpu.py: deltatune's CUDA engine against PyTorch + PEFT on one GPU, side by side.

For lora and delta_lora on GPT-2 124M (random weights), GPT-2 Medium (random weights of
its shape) and SmolLM2-135M (.cache/smollm2 GGUF), B x T = 8 x 1024, it runs
`deltatune train --device cuda:0 --json` and an equivalent PyTorch + PEFT loop (a
`--torch-child` subprocess, same rows and hyper-parameters) and reports tokens/s
(B*T / median step time after the warmup), MFU and peak device memory. Precisions:
`bf16` (engine `--precision bf16`: frozen weights in bf16, bf16 GEMMs with fp32
accumulation, Delta-LoRA in its low-rank form; PyTorch: fp32 master weights, bf16
autocast, SDPA, as users run PEFT), `tf32` (engine `--precision tf32`, torch allow_tf32)
and `fp32` (both strict). The report is rewritten after every case, so a run cut short
by a time limit still leaves what it measured.

  python3 bench/engine_gpu.py                    # on the GPU machine (scripts/gpu-check)
  python3 bench/engine_gpu.py --dry-run          # here: CPU, tiny shapes, report to /tmp
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

from common import (ALPHA, CLIP, GGUF, LAMBDA, LR, RANK, ROOT, SEED, add_lora, engine_cmd as
                    common_engine_cmd, flops_per_token, read_rows, save_random_gpt2,
                    torch_prepare, torch_step, write_rows)

CACHE = os.path.join(ROOT, ".cache", "bench-gpu")
TOK_DIR = os.path.join(ROOT, ".cache", "gpt2-tokenizer")
# Dense H100/H200 SXM peaks, TFLOP/s (shared/GPU.md, NVIDIA's datasheet without sparsity),
# and the bf16 GEMM rate measured on an H200 (~790): MFU is reported against both.
PEAK_TFLOPS = {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0}
MEASURED_TFLOPS = {"bf16": 790.0}
PRECISIONS = ("bf16", "tf32", "fp32")
GPT2_SHAPES = {"gpt2-small": (12, 768, 12), "gpt2-medium": (24, 1024, 16)}
MODELS = {  # engine model path, HF (dir, gguf_file), LoRA targets, vocab
    "gpt2-small": dict(dir=os.path.join(CACHE, "gpt2-small-random"), gguf=None,
                       targets=["c_attn"], vocab=50257),
    "gpt2-medium": dict(dir=os.path.join(CACHE, "gpt2-medium-random"), gguf=None,
                        targets=["c_attn"], vocab=50257),
    "smollm2-135m": dict(dir=os.path.dirname(GGUF), gguf=os.path.basename(GGUF),
                         targets=["q_proj", "v_proj"], vocab=49152),
}


def engine_path(m):
    return os.path.join(m["dir"], m["gguf"]) if m["gguf"] else m["dir"]


def torch_child(a):
    """One PyTorch + PEFT run on a.device; prints JSON lines like the engine."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D
    import contextlib
    tf32 = a.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(SEED)
    dev = torch.device(a.device)
    spec = MODELS[a.model]
    model = AutoModelForCausalLM.from_pretrained(
        spec["dir"], dtype=torch.float32, attn_implementation="sdpa",
        **({"gguf_file": spec["gguf"]} if spec["gguf"] else {}))
    cfg, gpt2 = model.config, model.config.model_type == "gpt2"
    mm = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
    if getattr(cfg, "tie_word_embeddings", False) and not any(
            isinstance(m, (torch.nn.Linear, Conv1D)) and m.weight is model.get_output_embeddings().weight
            for m in model.modules()):
        mm += model.get_output_embeddings().weight.numel()
    model = add_lora(model, spec["targets"], gpt2)
    model.to(dev).train()
    loras, params, opt = torch_prepare(model, cfg, mm)
    rows = read_rows(a.data)
    cuda = dev.type == "cuda"
    for step in range(a.total):
        if cuda and step == a.warmup:  # the peak of the timed steps only
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        x = torch.tensor(rows[step * a.batch:(step + 1) * a.batch], device=dev)
        # bf16: autocast over the step (fp32 master weights and AdamW state)
        ctx = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
               if a.precision == "bf16" else contextlib.nullcontext())
        with ctx:
            loss = torch_step(model, loras, params, opt, x, a.method, gpt2)
        j = {"type": "metrics", "step": step + 1, "total_steps": a.total,
             "train_loss": loss.item()}  # .item() waits for the step
        if cuda:
            j["peak_device_bytes"] = torch.cuda.max_memory_allocated(dev)
        print(json.dumps(j), flush=True)


def parse_run(lines, warmup, tokens_per_step):
    """(arrival time, text) lines of one run -> its figures. Pure: tested by --dry-run."""
    steps, info, peak = [], {}, None
    for t, line in lines:
        if not line.startswith("{"):
            continue
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("type") == "info":
            info = j
        elif j.get("type") == "metrics":
            steps.append((t, j["train_loss"]))
            if j.get("peak_device_bytes") is not None:  # the last step's figure is the run's peak
                peak = int(j["peak_device_bytes"])
    if len(steps) <= warmup:
        raise ValueError(f"{len(steps)} metrics lines, need more than {warmup} (warmup)")
    dts = [steps[i][0] - steps[i - 1][0] for i in range(warmup, len(steps))]
    med = statistics.median(dts)
    return dict(step_times=dts, step_median=med, tok_s=tokens_per_step / med,
                loss_mean=statistics.mean(s[1] for s in steps), peak_bytes=peak, info=info,
                steps=len(steps))


def run(cmd, env, a, timeout):
    t0 = time.perf_counter()
    err = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines = []
    try:
        for line in p.stdout:
            lines.append((time.perf_counter(), line))
            if time.perf_counter() - t0 > timeout:
                p.kill()
                break
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    if p.returncode != 0:
        err.seek(0)
        raise RuntimeError(f"exit {p.returncode}: {' '.join(cmd)}\n{err.read()[-3000:]}")
    r = parse_run(lines, a.warmup, a.batch * a.seq)
    r["wall"] = time.perf_counter() - t0
    return r


def engine_cmd(model, method, prec, data, out, a):
    return common_engine_cmd(a.engine, engine_path(MODELS[model]), MODELS[model]["targets"],
                             method, data, out, a,
                             ["--device", a.device, "--precision", prec])


def run_engine(model, method, prec, data, a):
    out = tempfile.mkdtemp(prefix="run-", dir=CACHE)
    env = dict(os.environ)
    env.pop("DT_TF32", None)  # --precision says it
    try:
        return run(engine_cmd(model, method, prec, data, out, a), env, a, a.case_timeout)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_torch(model, method, prec, data, a):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-child", "--model", model,
           "--method", method, "--precision", prec, "--data", data, "--device", a.device,
           "--batch", str(a.batch), "--total", str(a.total), "--warmup", str(a.warmup)]
    return run(cmd, dict(os.environ), a, a.case_timeout)


def ensure_inputs(a):
    os.makedirs(CACHE, exist_ok=True)
    if not a.dry_run and not os.access(a.engine, os.X_OK):
        sys.exit(f"{a.engine} missing: build it (make BUILD=... engine)")
    for name in a.models:
        spec = MODELS[name]
        if spec["gguf"]:
            if not os.path.exists(engine_path(spec)):  # 94 MB: over the device tool's carry limit
                print(f"{engine_path(spec)} missing: {name} skipped", flush=True)
                a.skipped.append(f"{name}: {os.path.relpath(engine_path(spec), ROOT)} missing")
            continue
        if os.path.exists(os.path.join(spec["dir"], "model.safetensors")):
            continue
        save_random_gpt2(spec["dir"], GPT2_SHAPES[name], TOK_DIR,
                         [("vocab.json",) * 2, ("merges.txt",) * 2])
    a.models = [m for m in a.models if not any(x.startswith(m + ":") for x in a.skipped)]
    data = {}
    for name in a.models:
        data[name] = os.path.join(CACHE, f"rows-{name}-B{a.batch}-T{a.seq}-n{a.total}.jsonl")
        write_rows(data[name], MODELS[name]["vocab"], a)
    return data


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def machine(a):
    gpu = sh("nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader") \
        or "no GPU (nvidia-smi failed)"
    try:
        import torch
        tv = f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    except ImportError:
        tv = "torch not importable"
    eng = os.path.relpath(a.engine, ROOT) if a.engine.startswith(ROOT) else a.engine
    return [f"Device: {gpu}", f"{tv}; {sh('nvcc --version | tail -1') or 'nvcc ?'}",
            f"Engine: `{eng}`, git HEAD {sh(f'git -C {ROOT} rev-parse --short HEAD') or '?'}"
            " (+ uncommitted work, if any)"]


def mib(b):
    return f"{b / 2**20:.0f}" if b is not None else "n/a"


def report(a, res, failures, started, elapsed):
    def mfu(r, prec):
        return flops_per_token(r["info"], a.seq) * r["tok_s"] / (PEAK_TFLOPS[prec] * 1e12)

    def mfus(r, prec):  # "datasheet (measured)" for bf16
        m = f"{mfu(r, prec):.1%}"
        if prec in MEASURED_TFLOPS:
            m += f" ({mfu(r, prec) * PEAK_TFLOPS[prec] / MEASURED_TFLOPS[prec]:.1%})"
        return m
    L = ["# deltatune CUDA engine vs PyTorch + PEFT", "",
         f"Generated by `bench/engine_gpu.py` on {started} in {elapsed / 60:.1f} min"
         + (" (**dry run: CPU, tiny shapes, not a measurement**)" if a.dry_run else "") + ".", "",
         "## Machine", ""] + [f"- {m}" for m in machine(a)] + [""]
    L += ["## Setup", "",
          f"- B={a.batch}, T={a.seq} (rows of T+1 random ids, seed {SEED}); {a.warmup} warmup + "
          f"{a.steps} timed steps; tok/s = B·T / median step time (time between the per-step "
          "JSON lines; each side waits for the step's loss before printing).",
          f"- rank {RANK}, alpha {ALPHA}, lr {LR} constant, AdamW (0.9, 0.999, 1e-8, wd 0), max "
          f"grad norm {CLIP}, no dropout; targets GPT-2 `c_attn`, SmolLM2 `q_proj,v_proj`; "
          f"Delta-LoRA λ={LAMBDA}, K=0 (W moves every step). PyTorch: fp32 weights, SDPA attention.",
          "- Precision: **bf16** = engine `--precision bf16` (frozen weights stored in bf16, bf16 "
          "GEMMs with fp32 accumulation via cublasGemmEx; LoRA factors, norms, softmax, loss, "
          "AdamW in fp32; Delta-LoRA in its low-rank form, W never written), PyTorch fp32 master "
          "weights under `torch.autocast(bfloat16)` with SDPA, as users run PEFT; **tf32** = fp32 "
          "storage, GEMMs on TF32 tensor cores (engine `--precision tf32`, torch `allow_tf32`); "
          "**fp32** = strict fp32 GEMMs on both sides.",
          "- MFU = FLOPs/token × tok/s ÷ dense H100/H200 SXM peak: fp32 67, TF32 495, bf16 989 "
          "TFLOP/s (datasheet); bf16 rows also give, in parentheses, MFU against ~790 TFLOP/s, "
          "the bf16 GEMM rate measured on an H200. FLOPs/token = 4·N_mm + "
          "12·L·T·d_attn + 6·r·Σ(in+out): N_mm every matmul weight incl. the LM head (frozen: "
          "forward + input gradient, no weight gradient), attention dense over T, r the rank.",
          "- Peak memory: PyTorch `torch.cuda.max_memory_allocated` over the timed steps (reset "
          "after the warmup; the caching allocator's reserved memory is higher); engine "
          "`peak_device_bytes` of its last step line (the backend's own allocations, whole run).", "",
          "## Results", "",
          "| model | method | precision | engine tok/s | PyTorch tok/s | speed ratio (goal ≥ 2) | "
          "engine MFU (bf16: vs ~790) | PyTorch MFU | engine peak MiB | PyTorch peak MiB | "
          "Delta-LoRA / LoRA step (engine, PyTorch) |", "|" + "---|" * 11]
    for (model, method, prec), (e, t) in res.items():
        lo = res.get((model, "lora", prec))
        dl = (f"{e['step_median'] / lo[0]['step_median']:.3f}, "
              f"{t['step_median'] / lo[1]['step_median']:.3f}"
              if method == "delta_lora" and lo else "")
        L.append(f"| {model} | {method} | {prec} | {e['tok_s']:.0f} | {t['tok_s']:.0f} | "
                 f"{e['tok_s'] / t['tok_s']:.2f}× | {mfus(e, prec)} | {mfus(t, prec)} | "
                 f"{mib(e['peak_bytes'])} | {mib(t['peak_bytes'])} | {dl} |")
    if a.skipped:
        L += ["", "Skipped: " + "; ".join(a.skipped) + "."]
    if failures:
        L += ["", "## Failures", ""] + [f"- {k}: `{v.splitlines()[0][:300]}`" + "\n\n```\n"
                                         + v[-1500:] + "\n```" for k, v in failures.items()]
    L += ["", "## Raw", "", "| model | method | precision | side | median step s | mean train loss "
          "| wall s | GFLOP/token | step times (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for (model, method, prec), pair in res.items():
        for side, r in zip(("engine", "pytorch"), pair):
            L.append(f"| {model} | {method} | {prec} | {side} | {r['step_median']:.4f} | "
                     f"{r['loss_mean']:.4f} | {r['wall']:.0f} | "
                     f"{flops_per_token(r['info'], a.seq) / 1e9:.3f} | "
                     + " ".join(f"{x:.3f}" for x in r["step_times"]) + " |")
    L += ["", "## Command", "", "```", "python3 bench/engine_gpu.py " + " ".join(sys.argv[1:]),
          "```", ""]
    return "\n".join(L)


def self_test():
    """parse_run on synthetic lines (no processes)."""
    lines = [(0.0, "noise\n"), (0.1, '{"type":"info","matmul_params":10,"n_layer":1,'
                                      '"attn_dim":2,"lora_io":3}\n')]
    lines += [((1.0, 1.5, 1.75, 2.0, 2.25)[i], json.dumps(
        {"type": "metrics", "step": i + 1, "train_loss": 2.0, "peak_device_bytes": 100 + i}) + "\n")
        for i in range(5)]
    r = parse_run(lines, 1, 1000)
    assert r["step_times"] == [0.5, 0.25, 0.25, 0.25], r["step_times"]
    assert abs(r["tok_s"] - 4000) < 1e-6 and r["peak_bytes"] == 104 and r["steps"] == 5, r
    assert flops_per_token(r["info"], 4) == 4 * 10 + 12 * 1 * 4 * 2 + 6 * RANK * 3
    try:
        parse_run(lines[:3], 1, 1000)
        raise AssertionError("one metrics line must not parse with warmup 1")
    except ValueError:
        pass
    print("engine_gpu.py self-test: ok", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, B=1 T=32, 1 warmup + 2 steps, gpt2-small only, report to /tmp")
    ap.add_argument("--device", default=None, help="cuda:0 (default), cpu with --dry-run")
    ap.add_argument("--engine", default=None,
                    help="deltatune binary (default $BUILD/deltatune or $BUILD/deltatune-train, "
                         "BUILD=build-gpu)")
    for k, v in dict(batch=8, seq=1024, warmup=2, steps=5).items():
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--precisions", default="bf16,tf32,fp32")
    ap.add_argument("--case-timeout", type=float, default=120, help="seconds per process")
    ap.add_argument("--out", default=None, help="report (default bench/results/engine-gpu.md)")
    ap.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    for flag, ty in (("--model", str), ("--method", str), ("--data", str), ("--total", int),
                     ("--precision", str)):
        ap.add_argument(flag, type=ty, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_child:
        return torch_child(a)
    if a.dry_run:
        self_test()
        a.device = a.device or "cpu"
        a.batch, a.seq, a.warmup, a.steps = 1, 32, 1, 2
        if a.models == ",".join(MODELS):
            a.models = "gpt2-small"
        if a.precisions == "bf16,tf32,fp32":
            a.precisions = "fp32,bf16"  # the CPU has no TF32
        a.out = a.out or os.path.join(tempfile.gettempdir(), "engine-gpu-dry-run.md")
    a.device = a.device or "cuda:0"
    build = os.path.join(ROOT, os.environ.get("BUILD", "build-gpu"))
    a.engine = os.path.abspath(a.engine or next(  # deltatune-train: cli/main.c, engine commands only
        (p for p in (os.path.join(build, n) for n in ("deltatune", "deltatune-train"))
         if os.access(p, os.X_OK)), os.path.join(build, "deltatune")))
    a.out = a.out or os.path.join(ROOT, "bench", "results", "engine-gpu.md")
    a.models = a.models.split(",")
    a.total = a.warmup + max(1, a.steps)
    a.skipped = []
    unknown = [m for m in a.models if m not in MODELS]
    if unknown or any(p not in PRECISIONS for p in a.precisions.split(",")):
        sys.exit(f"unknown model or precision: {unknown} {a.precisions}")
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    data = ensure_inputs(a)
    res, failures = {}, {}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    for prec in a.precisions.split(","):
        for model in a.models:
            for method in ("lora", "delta_lora"):
                key = f"{model} {method} {prec}"
                print(f"{key}: engine, then PyTorch ...", flush=True)
                try:
                    e = run_engine(model, method, prec, data[model], a)
                    t = run_torch(model, method, prec, data[model], a)
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as ex:
                    failures[key] = str(ex)
                    print(f"   FAILED: {str(ex)[:2000]}", flush=True)
                    continue
                e["info"] = e["info"] or t["info"]  # the engine prints no shapes: PyTorch's
                res[(model, method, prec)] = (e, t)
                print(f"   {e['tok_s']:.0f} vs {t['tok_s']:.0f} tok/s, peak {mib(e['peak_bytes'])}"
                      f" vs {mib(t['peak_bytes'])} MiB", flush=True)
                open(a.out, "w").write(report(a, res, failures, started, time.time() - t0))
    text = report(a, res, failures, started, time.time() - t0)
    open(a.out, "w").write(text)
    print(text)
    return 1 if failures or not res else 0


if __name__ == "__main__":
    sys.exit(main())
