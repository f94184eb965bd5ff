#!/usr/bin/env python3
"""engine_cpu.py: deltatune's CPU engine against PyTorch + PEFT, side by side.

Runs `build/deltatune train` and an equivalent PyTorch + PEFT loop (own
subprocesses, same threads, rows and hyper-parameters) for lora and delta_lora
on a random GPT-2-small-shaped model and SmolLM2-135M: steady-state tokens/s,
peak RSS, the sgemm peak (roofline) and a perf profile of the engine; and on
real chat data (E2E through SmolLM2's chat template, the same token ids on both
sides), padded to each batch's longest row and packed (engine --packing vs
TRL's packing): real tokens/s, peak RSS. Writes bench/results/engine-cpu.md;
bench/README.md explains each measurement.
"""
import argparse, contextlib, json, os, platform, re, shutil, statistics, subprocess
import sys, tempfile, time

from common import (ALPHA, CLIP, GGUF, LAMBDA, LR, RANK, ROOT, SEED, add_lora, engine_cmd as
                    common_engine_cmd, flops_per_token, read_rows, save_random_gpt2,
                    stream_order, torch_prepare, torch_step, write_rows)

CACHE = os.path.join(ROOT, ".cache", "bench")
ENGINE = os.path.join(ROOT, "build", "deltatune")
GPT2_DIR = os.path.join(CACHE, "gpt2-small-random")
TOK_DIR = os.path.join(ROOT, "..", "shared", "data", "gpt2-tokenizer")
BENCH_ROWS = os.path.join(ROOT, "build", "bench_rows")  # the engine's token rows (dataset_rows.c)
E2E = os.path.join(ROOT, "..", "shared", "data", "e2e", "valid.txt")
TRL_PY = os.path.join(ROOT, ".cache", "trl-venv", "bin", "python")  # a venv with trl (README)
CHAT_SKIP = {"gpt2-small": "GPT-2 has no chat template: transformers refuses apply_chat_template "
             "and the engine falls back to its own plain template, so no user-side rendering "
             "exists to match"}
BLAS_LIB = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # removed: OpenBLAS picks its kernels
FORCED = os.environ.get("OPENBLAS_CORETYPE") or "Haswell"  # kernels of the extra engine run
MODELS = {  # engine model path, HF (dir, gguf_file), LoRA targets, vocab
    "gpt2-small": dict(engine=GPT2_DIR, hf=(GPT2_DIR, None), targets=["c_attn"], vocab=50257),
    "smollm2-135m": dict(engine=GGUF, hf=(os.path.dirname(GGUF), os.path.basename(GGUF)),
                         targets=["q_proj", "v_proj"], vocab=49152),
}


def hf_ids(out):  # apply_chat_template(tokenize=True): a list, or a BatchEncoding
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def chat_rows(a, tok):
    """The chat rows as transformers renders them (apply_chat_template; loss from the end
    of the generation prompt through the answer's closing EOS, <|im_end|>), each as
    (ids, targets) with targets[k] the token after ids[k] or -100, exactly as the engine
    stores them. Exits naming the first row where the engine's rows differ."""
    msgs = [json.loads(l)["messages"] for l in open(a.chat)]
    eng = [json.loads(l) for l in open(a.engine_rows)]
    if len(msgs) != len(eng):
        sys.exit(f"MISMATCH: {len(msgs)} chats, {len(eng)} engine rows")
    rows = []
    for i, (m, e) in enumerate(zip(msgs, eng)):
        ids = hf_ids(tok.apply_chat_template(m, tokenize=True))
        start = len(hf_ids(tok.apply_chat_template(m[:-1], tokenize=True,
                                                   add_generation_prompt=True)))
        end = ids.index(tok.eos_token_id, start) if tok.eos_token_id in ids[start:] else len(ids)
        tgt = [t if start <= k <= end else -100 for k, t in enumerate(ids)][1:] + [-100]
        if ids != e["ids"] or tgt != e["labels"]:
            sys.exit(f"MISMATCH: chat row {i + 1} of {a.chat}: transformers' apply_chat_template"
                     f" and the engine disagree (truncated at --chat-seq?)\n transformers ids "
                     f"{ids}\n engine ids       {e['ids']}\n transformers targets {tgt}\n "
                     f"engine targets       {e['labels']}")
        if len(ids) > 1 and tgt[-2] != -100:  # the inputs below leave out the last token
            sys.exit(f"chat row {i + 1}: its last token is trained (truncated? raise --chat-seq)")
        rows.append((ids, tgt))
    return rows


def hf_example(ids, tgt):
    """A row as a Hugging Face user feeds it: the engine's inputs (every token but the last,
    which is the untrained "\n" after <|im_end|>) and labels that the model shifts."""
    return {"input_ids": ids[:-1], "labels": [-100] + tgt[:len(ids) - 2]}


def chat_batches(a, rows, pad_id):
    """Yields (batch, real tokens, targets) per step: the engine's row order, each
    micro-batch padded on the right to its longest row (attention_mask 0, labels -100 on
    pads), as transformers' DataCollatorForLanguageModeling / DataCollatorForSeq2Seq do;
    or with a.pack TRL's packing: pack_dataset(strategy="bfd") into sequences of at most
    a.seq positions and the padding-free collator (one flattened row, position_ids).
    use_cache=False as SFTTrainer.compute_loss sets it: with SmolLM2's config.use_cache
    the model would build a KV cache, and with a cache transformers does not derive the
    per-row (block-diagonal) attention mask from position_ids: packed rows would attend
    to each other."""
    import torch
    order = stream_order(len(rows), SEED, a.batch * a.total)
    exs = [hf_example(*rows[r]) for r in order]
    if a.pack:
        from datasets import Dataset
        from trl.data_utils import pack_dataset
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
        packed = list(pack_dataset(Dataset.from_list(exs), a.seq, strategy="bfd"))
        coll = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)
        for step in range(a.total):
            b = coll([packed[(step * a.batch + i) % len(packed)] for i in range(a.batch)])
            yield dict(b, use_cache=False), b["input_ids"].numel(), int((b["labels"] != -100).sum())
        return
    for step in range(a.total):
        part = exs[step * a.batch:(step + 1) * a.batch]
        t = max(len(e["input_ids"]) for e in part)
        pads = [t - len(e["input_ids"]) for e in part]
        b = {"input_ids": torch.tensor([e["input_ids"] + [pad_id] * k for e, k in zip(part, pads)]),
             "attention_mask": torch.tensor([[1] * (t - k) + [0] * k for k in pads]),
             "labels": torch.tensor([e["labels"] + [-100] * k for e, k in zip(part, pads)]),
             "use_cache": False}
        yield b, int(b["attention_mask"].sum()), int((b["labels"] != -100).sum())


def torch_child(a):
    """One PyTorch + PEFT run; prints JSON lines like the engine does (plus real_tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.pytorch_utils import Conv1D
    torch.set_num_threads(a.threads)
    torch.manual_seed(SEED)
    spec, (d, f) = MODELS[a.model], MODELS[a.model]["hf"]
    kw = {"gguf_file": f} if f else {}
    if a.chat:  # tokenized and batched before the model loads: nothing of it is timed
        tok = AutoTokenizer.from_pretrained(d, **kw)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        batches = list(chat_batches(a, chat_rows(a, tok), pad))
    else:
        batches = [(torch.tensor(x), a.batch * (len(x[0]) - 1), a.batch * (len(x[0]) - 1))
                   for x in (read_rows(a.rows)[s * a.batch:(s + 1) * a.batch]
                             for s in range(a.total))]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, **kw)
    cfg, gpt2 = model.config, model.config.model_type == "gpt2"
    mm = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
    model = add_lora(model, spec["targets"], gpt2)
    model.train()
    loras, params, opt = torch_prepare(model, cfg, mm)
    trained = 0
    for step, (x, real, targets) in enumerate(batches):
        loss = torch_step(model, loras, params, opt, x, a.method, gpt2)
        trained += targets
        print(json.dumps({"type": "metrics", "step": step + 1, "total_steps": a.total,
                          "train_loss": loss.item(), "trained_tokens": trained,
                          "real_tokens": real}), flush=True)


def cpu_busy():  # (busy, total) jiffies of the whole machine
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


QUIET_WAIT_S = 90  # --quick: 0 (a smoke run neither waits nor repeats disturbed runs)


def wait_quiet(limit_s=None, max_busy=0.15):  # until others use < max_busy of the CPUs
    for _ in range(QUIET_WAIT_S if limit_s is None else limit_s):
        (b0, s0), _, (b1, s1) = cpu_busy(), time.sleep(1.0), cpu_busy()
        if (b1 - b0) / max(1, s1 - s0) < max_busy:
            return


def run_once(cmd, env, a, plan=None):
    """Runs cmd; returns its timings, RSS and the load other processes caused. plan: the
    (real tokens, targets) of each step when they vary (chat rows); the side's cumulative
    trained_tokens must follow it (same rows in the same batches) or the run fails."""
    wait_quiet()
    (b0, s0), t_start = cpu_busy(), time.perf_counter()
    err = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    steps, info, hwm, toks, trained = [], {}, {}, [], 0
    for line in p.stdout:
        t, j = time.perf_counter(), json.loads(line) if line.startswith("{") else {}
        if j.get("type") == "info":
            info = j
        elif j.get("type") == "metrics":
            steps.append((t, time.monotonic(), j["train_loss"]))
            k = j["step"] - 1
            toks.append(j.get("real_tokens") or (plan[k][0] if plan else a.batch * a.seq))
            if plan and (trained := trained + plan[k][1]) != j.get("trained_tokens"):
                p.kill()
                sys.exit(f"MISMATCH: step {k + 1} of {' '.join(cmd[:3])}: trained_tokens "
                         f"{j.get('trained_tokens')}, the plan {trained} (batches differ)")
            if plan and "real_tokens" in j and j["real_tokens"] != plan[k][0]:
                p.kill()
                sys.exit(f"MISMATCH: step {k + 1}: {j['real_tokens']} real tokens, the plan "
                         f"{plan[k][0]} (batches differ)")
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
    timed = toks[a.warmup:n]  # the real tokens of the timed steps
    other = ((b1 - b0) / max(1, s1 - s0) * ncpu * wall - ru.ru_utime - ru.ru_stime) / (ncpu * wall)
    med = statistics.median(dts)
    return dict(step_times=dts, step_median=med, tok_s=tok / med if plan is None and not any(
                    t != tok for t in timed) else sum(timed) / sum(dts),
                tok_s_mean=sum(timed) / sum(dts), loss_mean=statistics.mean(x[2] for x in steps),
                real_tokens=sum(toks),
                rss_proc_mb=ru.ru_maxrss / 1024, rss_train_mb=hwm.get(n - 1, 0) / 1024,
                wall=wall, other_load=max(0.0, other), info=info,
                mono=(steps[a.warmup - 1][1], steps[-1][1]))


def run_measured(cmd, env, a, retries=2, plan=None):
    """Reruns while others took > 15% of the CPUs; keeps the least disturbed run."""
    best, retries = None, retries if QUIET_WAIT_S else 0
    for attempt in range(1, retries + 2):
        r = run_once(cmd, env, a, plan)
        best = r if best is None or r["other_load"] < best["other_load"] else best
        if r["other_load"] < 0.15:
            break
        print(f"   (other processes used {r['other_load']:.0%} of the CPUs)", flush=True)
    return dict(best, attempts=attempt)


def engine_cmd(model, method, data, out, a):
    return common_engine_cmd(ENGINE, MODELS[model]["engine"], MODELS[model]["targets"], method,
                             data, out, a, ["--threads", str(a.threads)]) \
        + (["--packing"] if getattr(a, "pack", False) else [])


def bench_env(threads, **kw):
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    return dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **kw)


def run_engine(model, method, data, a, env_extra=None, perf_file=None, retries=2):
    """data: the random rows' path, or a chat workload (chat_inputs)."""
    out = tempfile.mkdtemp(prefix="run-", dir=CACHE)
    chat = data if isinstance(data, dict) else None
    cmd = engine_cmd(model, method, chat["path"] if chat else data, out, a)
    if perf_file:  # sample timestamps in CLOCK_MONOTONIC, as time.monotonic()
        cmd = ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-F", "499", "-o", perf_file, "--"] + cmd
    try:
        return run_measured(cmd, bench_env(a.threads, **(env_extra or {})), a, retries,
                            chat["plan_pack" if a.pack else "plan"] if chat else None)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_torch(model, method, data, a):
    """data as for run_engine; chat rows packed (a.pack) run TRL's packing in the trl venv."""
    cmd = [TRL_PY if a.pack else sys.executable, os.path.abspath(__file__), "--torch-child",
           "--model", model, "--method", method, "--threads", str(a.threads), "--batch",
           str(a.batch), "--seq", str(a.seq), "--total", str(a.total)]
    if isinstance(data, dict):
        cmd += ["--chat", data["path"], "--engine-rows", data["rows"]] + (["--pack"] if a.pack else [])
    else:
        cmd += ["--rows", data]
    plan = data["plan"] if isinstance(data, dict) and not a.pack else None  # TRL packs its own way
    return run_measured(cmd, bench_env(a.threads), a, plan=plan)


def trl_available():
    """Whether the trl venv imports trl and datasets (None) or why not (a sentence)."""
    if not os.access(TRL_PY, os.X_OK):
        return f"no venv with trl at {os.path.relpath(TRL_PY, ROOT)} (bench/README.md)"
    r = subprocess.run([TRL_PY, "-c", "import trl, datasets, peft, transformers; print(trl.__version__)"],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"trl does not import: {r.stderr.strip()[-200:]}"


def chat_inputs(a, model):
    """E2E through the chat template: every distinct meaning representation of valid.txt
    as a {"messages": [user MR, assistant reference]} row (scripts/e2e-to-chat.py), the
    engine's token rows of them (build/bench_rows, what `train` loads) and per step the
    (real tokens, targets) of the engine's batches: padded (plan) and packed (plan_pack)."""
    mrs = {l.split("||", 1)[0].strip() for l in open(E2E, encoding="utf-8") if "||" in l}
    path = os.path.join(CACHE, f"chat-e2e-{len(mrs)}.jsonl")
    with open(path, "w") as f:
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "e2e-to-chat.py"), E2E,
                        str(len(mrs))], stdout=f, check=True)
    rows_path = os.path.join(CACHE, f"chat-e2e-{len(mrs)}-{model}-T{a.chat_seq}.rows.jsonl")
    with open(rows_path, "w") as f:
        subprocess.run([BENCH_ROWS, MODELS[model]["engine"], path, str(a.chat_seq)], stdout=f,
                       check=True)
    rows = [json.loads(l) for l in open(rows_path)]
    n_in = [min(len(r["ids"]) - 1, a.chat_seq) for r in rows]  # input positions, targets
    n_tg = [sum(t != -100 for t in r["labels"][:k]) for r, k in zip(rows, n_in)]
    order = stream_order(len(rows), SEED, a.batch * a.total * (a.chat_seq + 1))
    plan = [(sum(n_in[r] for r in order[s * a.batch:(s + 1) * a.batch]),
             sum(n_tg[r] for r in order[s * a.batch:(s + 1) * a.batch])) for s in range(a.total)]
    plan_pack, p = [], 0  # gpu/train_data.c tr_batch_packed: greedy, in stream order
    for _ in range(a.total):
        real = tg = 0
        for _ in range(a.batch):
            length = k = 0
            while not (k > 0 and length + n_in[order[p]] > a.chat_seq):
                length, k, real, tg, p = length + n_in[order[p]], k + 1, real + n_in[order[p]], \
                    tg + n_tg[order[p]], p + 1
        plan_pack.append((real, tg))
    return dict(path=path, rows=rows_path, plan=plan, plan_pack=plan_pack, nrows=len(rows),
                mean_len=statistics.mean(n_in), max_len=max(n_in))


def ensure_inputs(a, works):
    global ENGINE  # run a copy: teammates may rebuild build/deltatune meanwhile
    os.makedirs(CACHE, exist_ok=True)
    for exe in [ENGINE] + ([BENCH_ROWS] if {"chat", "chat-packed"} & set(works) else []):
        if not os.access(exe, os.X_OK):
            sys.exit(f"{exe} missing: run `make -j2 all` first")
    ENGINE = shutil.copy2(ENGINE, os.path.join(CACHE, "deltatune.snapshot"))
    if not os.path.exists(GGUF):
        sys.exit(f"{GGUF} missing: run scripts/install-deps")
    if "random" in works and "gpt2-small" in a.models.split(",") and \
            not os.path.exists(os.path.join(GPT2_DIR, "model.safetensors")):
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
            "CPU flags (SIMD): " + (" ".join(f for f in get("Flags").split() if re.match(
                r"(avx|fma|f16c|amx|sse4_2)", f)) or "?"),
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


def chat_summary(chat):  # the issue-14 goal on chat data, per workload
    L = []
    for w, what in (("chat", "padded batches"), ("chat-packed", "packed")):
        sp = {f"{m} {k}": e["tok_s"] / t["tok_s"] for (ww, m, k), (e, t) in chat.items() if ww == w}
        if sp:
            L.append(f"- Chat data ({what}), real tokens/s ≥ 1.5× PyTorch + PEFT: "
                     f"{'met' if min(sp.values()) >= 1.5 else '**NOT met**'} ("
                     + ", ".join(f"{k} {v:.2f}" for k, v in sp.items()) + ").")
    return L


def chat_report(a, chat, chat_info, skips):
    """The chat-data section: setup, the table, what was skipped and why."""
    L = ["## Chat data (E2E through the chat template)", ""]
    for m, ci in chat_info.items():
        L.append(f"- {m}: {ci['nrows']} rows, every distinct meaning representation of "
                 f"`e2e/valid.txt` as user turn, its first reference as assistant turn "
                 f"(`scripts/e2e-to-chat.py`), rendered by the model's chat template (default "
                 f"system prompt included): {ci['mean_len']:.1f} input tokens per row on average, "
                 f"longest {ci['max_len']}; --seq-len {a.chat_seq} (a cap: nothing is cut).")
    L += ["- The engine trains on the chat JSONL (`train --data`); PyTorch gets transformers' "
          "`apply_chat_template` ids, checked equal to the engine's token rows (ids and loss "
          "mask, every row) before it starts; loss on the answer and its `<|im_end|>`.",
          f"- *chat*: B={a.batch} rows per step in the engine's seeded order on both sides, padded "
          "to the batch's longest row (PyTorch: right padding, attention_mask, labels −100 on "
          "pads and prompt tokens, the model's own loss). Both sides' trained-token counts are "
          "checked against the planned batches at every step.",
          f"- *chat-packed*: the engine with `--packing` (rows in its order, greedily into B "
          f"sequences of ≤ {a.chat_seq} positions, attention kept within each row) against "
          f"TRL's packing (`pack_dataset(strategy=\"bfd\")` into sequences of ≤ {a.chat_seq}, "
          "B of them per step through TRL's padding-free collator: one flattened row with "
          "position_ids, as SFTTrainer(packing=True) feeds the model).",
          "- tok/s = real (non-pad) tokens of the timed steps / their time, each side counting "
          "its own batches (identical for *chat*).", "",
          "| data | model | method | engine real tok/s | PyTorch real tok/s | speed ratio (goal "
          "≥ 1.5) | engine RSS MB proc / train | PyTorch RSS MB proc / train | mean loss engine "
          "/ PyTorch | median step s engine / PyTorch | other load (attempts) |",
          "|" + "---|" * 11]
    L += [f"| {w} | {m} | {k} | {e['tok_s']:.0f} | {t['tok_s']:.0f} | "
          f"{e['tok_s'] / t['tok_s']:.2f}× | {e['rss_proc_mb']:.0f} / {e['rss_train_mb']:.0f} | "
          f"{t['rss_proc_mb']:.0f} / {t['rss_train_mb']:.0f} | {e['loss_mean']:.4f} / "
          f"{t['loss_mean']:.4f} | {e['step_median']:.3f} / {t['step_median']:.3f} | "
          f"{e['other_load']:.0%} ({e['attempts']}) / {t['other_load']:.0%} ({t['attempts']}) |"
          for (w, m, k), (e, t) in chat.items()]
    L += [""] + [f"- {w} {m}: skipped: {why}." for (w, m), why in skips.items()]
    return L + [""]


def report(a, res, extra, peaks, profiles, chat, chat_info, skips, started, elapsed):
    (ob, core), (fo, fcore), (tp, _) = peaks["openblas"], peaks["forced"], peaks["torch"]
    L = ["# deltatune CPU engine vs PyTorch + PEFT", "",
         f"Generated by `bench/engine_cpu.py` on {started} in {elapsed / 60:.1f} min.", "",
         "## Machine", ""] + [f"- {m}" for m in machine()] + [
         f"- BLAS kernels: the engine's OpenBLAS picks **{core}** ({ob:.0f} GFLOP/s sgemm); "
         f"PyTorch uses MKL ({tp:.0f} GFLOP/s).", ""]
    if res:
        L += summary(res, extra, peaks, profiles)[:-1] + chat_summary(chat) + [""]
    else:
        L += ["## Summary", ""] + chat_summary(chat) + [""]
    L += chat_report(a, chat, chat_info, skips) if chat or skips else []
    if not res:
        return "\n".join(L + ["## Command", "", "```", ".venv/bin/python bench/engine_cpu.py "
                               + " ".join(sys.argv[1:]), "```", ""])
    L += ["## Random rows: setup", "",
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
          "## Random rows: results", "",
          "| model | method | engine tok/s | PyTorch tok/s | speed ratio (goal ≥ 1.5) | "
          "engine RSS MB proc / train | PyTorch RSS MB proc / train | "
          "RSS ratio proc / train (goal ≤ 0.6) |", "|" + "---|" * 8]
    L += [f"| {m} | {k} | {e['tok_s']:.0f} | {t['tok_s']:.0f} | {e['tok_s'] / t['tok_s']:.2f}× | "
          f"{e['rss_proc_mb']:.0f} / {e['rss_train_mb']:.0f} | {t['rss_proc_mb']:.0f} / "
          f"{t['rss_train_mb']:.0f} | {e['rss_proc_mb'] / t['rss_proc_mb']:.2f} / "
          f"{e['rss_train_mb'] / max(1, t['rss_train_mb']):.2f} |" for (m, k), (e, t) in res.items()]
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
    ap.add_argument("--chat-seq", type=int, default=256,
                    help="--seq-len of the chat runs: a cap (batches pad to their longest row)")
    ap.add_argument("--data", default="random,chat,chat-packed",
                    help="workloads: random (FULL rows of --seq random ids), chat (E2E through "
                         "the chat template, padded batches), chat-packed (engine --packing vs "
                         "TRL's packing)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per side and method (fastest kept)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-extra", action="store_true", help="no forced-core runs, no perf")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 warmup + 3 steps, 1 "
                    "repeat, --no-extra, report to .cache/bench/engine-cpu-quick.md")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "engine-cpu.md"))
    ap.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    for flag, ty in (("--model", str), ("--method", str), ("--rows", str), ("--chat", str),
                     ("--engine-rows", str), ("--total", int)):
        ap.add_argument(flag, type=ty, help=argparse.SUPPRESS)
    ap.add_argument("--pack", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_child:
        return torch_child(a)
    if a.quick:
        global QUIET_WAIT_S
        a.warmup, a.steps, a.repeat, a.no_extra, QUIET_WAIT_S = 1, 3, 1, True, 0
        if a.out == ap.get_default("out"):
            a.out = os.path.join(CACHE, "engine-cpu-quick.md")
    a.total, a.pack, works = a.warmup + max(1, a.steps), False, a.data.split(",")
    if a.warmup < 1 or not set(works) <= {"random", "chat", "chat-packed"}:
        sys.exit("--warmup must be >= 1; --data: random, chat, chat-packed")
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    data = ensure_inputs(a, works)
    print("sgemm GFLOP/s:", peaks := sgemm_peaks(a.threads), flush=True)
    res, extra, profiles, chat, chat_info, skips = {}, {}, {}, {}, {}, {}
    use_perf = not a.no_extra and shutil.which("perf") is not None
    fastest = lambda old, new: new if old is None or new["tok_s"] > old["tok_s"] else old
    trl_missing = trl_available() if "chat-packed" in works else None
    for model in a.models.split(","):
        for rep, method in [(r, m) for r in range(a.repeat) for m in ("lora", "delta_lora")
                            if "random" in works]:
            print(f"{model} {method} ({rep + 1}/{a.repeat}): engine, then PyTorch ...", flush=True)
            e, t = run_engine(model, method, data[model], a), run_torch(model, method, data[model], a)
            print(f"   {e['tok_s']:.0f} vs {t['tok_s']:.0f} tok/s, {e['rss_proc_mb']:.0f} vs "
                  f"{t['rss_proc_mb']:.0f} MB", flush=True)
            old = res.get((model, method), (None, None))
            res[(model, method)] = (fastest(old[0], e), fastest(old[1], t))
        if not a.no_extra and "random" in works:  # the forced kernels; then a short perf run
            extra[model] = run_engine(model, "lora", data[model], a,
                                      env_extra={"OPENBLAS_CORETYPE": FORCED})
        if use_perf and "random" in works:  # a short run: 1 warmup + 4 profiled steps
            pa, pf = argparse.Namespace(**dict(vars(a), warmup=1, total=5)), f"{CACHE}/perf.data"
            r = run_engine(model, "lora", data[model], pa, perf_file=pf, retries=0)
            profiles[model] = perf_top(pf, *r["mono"])
        for w in (w for w in ("chat", "chat-packed") if w in works):
            if model in CHAT_SKIP or (w == "chat-packed" and trl_missing):
                skips[(w, model)] = CHAT_SKIP.get(model) or trl_missing
                continue
            ci = chat_info[model] = chat_info.get(model) or chat_inputs(a, model)
            ca = argparse.Namespace(**dict(vars(a), seq=a.chat_seq, pack=w == "chat-packed"))
            for rep, method in [(r, m) for r in range(a.repeat) for m in ("lora", "delta_lora")]:
                print(f"{model} {w} {method} ({rep + 1}/{a.repeat}): engine, then PyTorch ...",
                      flush=True)
                e, t = run_engine(model, method, ci, ca), run_torch(model, method, ci, ca)
                print(f"   {e['tok_s']:.0f} vs {t['tok_s']:.0f} real tok/s, "
                      f"{e['rss_proc_mb']:.0f} vs {t['rss_proc_mb']:.0f} MB", flush=True)
                old = chat.get((w, model, method), (None, None))
                chat[(w, model, method)] = (fastest(old[0], e), fastest(old[1], t))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    text = report(a, res, extra, peaks, profiles, chat, chat_info, skips, started,
                  time.time() - t0)
    open(a.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
