#!/usr/bin/env python3
"""Inference benchmark (`make bench-inference`, issue 17): SmolLM2-135M served by
deltatune against transformers' `generate` and llama.cpp, side by side in one run.

- deltatune: a real stack (tests/harness/stack.py: PostgreSQL, Redis, server) and
  one serving worker (`deltatune-worker --serve --threads N`); requests are streamed
  `POST /v1/completions` over loopback HTTP, as a client sees them.
- transformers: `generate` on the same weights (the Q4_1 GGUF dequantized to fp32 by
  transformers' GGUF loader, as tests/integration/test_inference.py does; transformers
  cannot save a model it loaded from GGUF), `torch.set_num_threads(N)`, fp32; one
  stream, then batches of 4 and 16 prompts (left padding).
- llama.cpp (llama-cpp-python, when .venv-llama has it): the same weights as F32
  (the GGUF dequantized by the gguf package) and F16 (`deltatune export --gguf`),
  `n_threads=N`; one stream (its Python API decodes one sequence at a time).

Same work on every side: the prompts are fixed texts, tokenized once by
`deltatune tokenize` (the ids transformers and llama.cpp are fed; the server's
prompt_tokens is checked against them); greedy; every side generates max_tokens new
tokens (transformers with min_new_tokens = max_tokens, llama.cpp ignoring EOS;
deltatune cannot be told to ignore EOS, so the prompts are texts it continues past
max_tokens, and a shorter answer is reported).

Measured: single-stream time to first token (from sending the request / calling
generate to the first token) and decode tokens/s ((n - 1) / time from the first to
the last token), median over the prompts; aggregate tokens/s at 1, 4 and 16
concurrent streams (all new tokens / wall time from the first request sent to the
last token received, prefill and queueing included). Each side runs in its own
process, one after the other, so they do not share the CPU.

Usage: python3 bench/inference.py [--threads N] [--max-tokens 64] [--prompts 4]
       [--streams 1,4,16] [--no-llama] [--omp-wait-policy passive|active] [--quick]
       [--out bench/results/inference.md]
The parent needs only Python's standard library; the transformers side runs in
.venv (scripts/make-venv), the llama.cpp side in .venv-llama.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import http.client
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from service import loadavg, machine_busy_s, pids_cpu_s, stack_pids  # noqa: E402
BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
GGUF = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
SCRATCH = os.path.join(ROOT, ".cache", "bench")
F32 = os.path.join(SCRATCH, "smollm2-135m-f32.gguf")
F16 = os.path.join(SCRATCH, "smollm2-135m-f16.gguf")
TORCH_PY = os.path.join(ROOT, ".venv", "bin", "python")
LLAMA_PY = os.path.join(ROOT, ".venv-llama", "bin", "python")

# Beginnings of texts a base model continues at length (the Instruct model
# included): none invites an early end of text.
PROMPTS = [
    "The history of the city of Paris begins with a small fishing village on an island in the river Seine. Over the centuries,",
    "Photosynthesis is the process by which green plants turn light into chemical energy. In the first stage,",
    "Chapter 1. The old lighthouse keeper climbed the spiral stairs one last time, counting every step as he went:",
    "A recipe for a simple bread: mix flour, water, yeast and salt in a large bowl, then",
    "The main differences between a compiled language and an interpreted language are the following. First,",
    "Dear diary, today was the strangest day of my life. It started when I opened the front door and",
    "The rules of chess are simple to learn. Each player starts with sixteen pieces: one king, one queen,",
    "In the year 2150, the first colony ship left Earth for a planet orbiting a distant star. On board were",
    "Water boils at one hundred degrees Celsius at sea level, but at high altitude the boiling point is lower because",
    "The following is a list of the largest cities in Europe, with a short description of each: 1. London,",
    "To train a neural network, one first chooses a loss function that measures how wrong the predictions are. Then",
    "Once upon a time, in a kingdom by the sea, there lived a young princess who loved to build ships. Every morning",
    "The heart is a muscular organ that pumps blood through the body. It has four chambers: the left and right atria",
    "Step-by-step guide to planting a vegetable garden. Step 1: choose a sunny spot that gets at least six hours of",
    "The Roman Empire was one of the largest empires in history. At its height it stretched from Britain in the north to",
    "My favourite place in the world is a small cabin in the mountains. Every summer my family drives there, and",
]


# ---- shared helpers -------------------------------------------------------------------



def own_cpu_s(pids):
    """CPU seconds of this process, its waited-for children and the processes pids."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + pids_cpu_s(pids)


class Watch:
    """Load average before, and the cores this side used (this process, its children,
    the processes pids: the stack) and the cores every other process on the machine
    used meanwhile (/proc/stat), as bench/service.py reports them."""
    def __init__(self, pids=()):
        self.pids = set(pids)

    def __enter__(self):
        self.la0, self.b0, self.t0 = loadavg(), machine_busy_s(), time.time()
        self.o0 = own_cpu_s(self.pids)
        return self

    def __exit__(self, *exc):
        dt = max(1e-9, time.time() - self.t0)
        self.own = (own_cpu_s(self.pids) - self.o0) / dt
        self.other = max(0.0, (machine_busy_s() - self.b0) / dt - self.own)

    def info(self):
        return {"load_before": self.la0, "own_cores": self.own, "other_cores": self.other}


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def tokenize(text):
    r = subprocess.run([os.path.join(BUILD, "deltatune"), "tokenize", "--model", GGUF],
                       input=text, capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


# ---- deltatune: the served model over HTTP ------------------------------------------

def stream_completion(url, key, model, prompt, max_tokens):
    """One streamed POST /v1/completions (greedy). Returns the send time, the arrival
    time of every chunk that carries text, the text, usage and finish_reason."""
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Authorization": "Bearer " + key,
                                                "Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"/v1/completions answered {r.status}: {r.read()[:500]!r}")
    res = {"t_send": t0, "times": [], "text": "", "usage": None, "finish": None}
    while True:
        line = r.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        now = time.perf_counter()
        ev = json.loads(data)
        if "error" in ev:
            raise RuntimeError(f"stream error: {ev['error']}")
        for ch in ev.get("choices") or []:
            if ch.get("text"):
                res["times"].append(now)
                res["text"] += ch["text"]
            res["finish"] = ch.get("finish_reason") or res["finish"]
        if ev.get("usage"):
            res["usage"] = ev["usage"]
    res["t_end"] = time.perf_counter()
    c.close()
    return res


def concurrent(fn, n):
    """fn(i) for i < n in n threads started together; the results in order."""
    out, errs = [None] * n, []
    go = threading.Barrier(n)

    def run(i):
        try:
            go.wait()
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 (reported below)
            errs.append(e)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise errs[0]
    return out


def single_stats(runs):
    """Median time to first token and decode tokens/s of single-stream runs, each a
    dict with ttft, n (new tokens) and decode (seconds from first to last token)."""
    return {"ttft_s": median([r["ttft"] for r in runs]),
            "decode_tok_s": median([(r["n"] - 1) / r["decode"] for r in runs if r["decode"] > 0]),
            "tokens": [r["n"] for r in runs]}


def run_deltatune(a, prompts, ids):
    from stack import Stack
    env = {"DELTATUNE_SERVE_WORKERS": "0",
           # 16 streams queue behind each other on a one-request-at-a-time worker
           "DELTATUNE_INFER_QUEUE_WAIT": "3600", "DELTATUNE_INFER_SILENCE": "600",
           "DELTATUNE_LOG_LEVEL": "warn"}
    if a.omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = a.omp_wait_policy
    res = {"checks": []}
    with Stack(model="smollm2", threads=a.threads, env=env) as s:
        if a.omp_wait_policy == "default":   # as scripts/up runs it (the harness sets passive)
            s.env.pop("OMP_WAIT_POLICY", None)
        s.start_worker("bench-serve", extra=("--serve",))
        end = time.time() + 60
        while s.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND "
                     "status = 'serving'") != "1":
            if time.time() > end:
                raise RuntimeError("the serving worker did not register:\n" + s.log("bench-serve"))
            time.sleep(0.3)
        t = time.time()
        stream_completion(s.url, s.key, s.model_id, prompts[0], 4)  # loads the model
        res["load_s"] = time.time() - t
        pids = stack_pids(s) | {p.pid for p in s.workers.values()}
        with Watch(pids) as w:
            runs = []
            for i in range(a.prompts):
                r = stream_completion(s.url, s.key, s.model_id, prompts[i], a.max_tokens)
                n = r["usage"]["completion_tokens"]
                if r["usage"]["prompt_tokens"] != len(ids[i]):
                    res["checks"].append(f"prompt {i}: the server counted "
                                         f"{r['usage']['prompt_tokens']} prompt tokens, "
                                         f"`deltatune tokenize` {len(ids[i])}")
                if not r["times"]:
                    raise RuntimeError(f"prompt {i}: no text came back ({r['finish']})")
                runs.append({"ttft": r["times"][0] - r["t_send"], "n": n, "text": r["text"],
                             "decode": r["times"][-1] - r["times"][0]})
        res["single"] = dict(single_stats(runs), **w.info())
        res["texts"] = [r["text"] for r in runs]
        res["agg"] = {}
        for c in a.streams:
            with Watch(pids) as w:
                rs = concurrent(lambda i: stream_completion(
                    s.url, s.key, s.model_id, prompts[i % len(prompts)], a.max_tokens), c)
            toks = sum(r["usage"]["completion_tokens"] for r in rs)
            wall = max(r["times"][-1] for r in rs) - min(r["t_send"] for r in rs)
            res["agg"][c] = dict(tok_s=toks / wall, tokens=toks, wall_s=wall,
                                 ttft_s=median([r["times"][0] - r["t_send"] for r in rs]),
                                 **w.info())
            print(f"bench: deltatune {c} streams: {toks / wall:.1f} tok/s", flush=True)
    return res


# ---- transformers (child process, .venv) ----------------------------------------------

def hf_child(cfg):
    import torch
    import transformers as tf
    from transformers.generation.streamers import BaseStreamer
    torch.set_num_threads(cfg["threads"])
    t = time.time()
    tf.utils.logging.disable_progress_bar()
    d, f = os.path.dirname(GGUF), os.path.basename(GGUF)
    m = tf.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(d, gguf_file=f)
    out = {"load_s": time.time() - t, "torch": torch.__version__,
           "transformers": tf.__version__, "torch_threads": torch.get_num_threads(),
           "dtype": str(next(m.parameters()).dtype),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    N = cfg["max_tokens"]

    class Clock(BaseStreamer):  # put(): the prompt first, then every new token
        def __init__(self):
            self.t = []

        def put(self, value):
            self.t.append(time.perf_counter())

        def end(self):
            pass

    def gen(batch, streamer=None):
        L = max(len(x) for x in batch)
        x = torch.tensor([[pad] * (L - len(r)) + r for r in batch])
        am = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in batch])
        with torch.inference_mode():
            return m.generate(input_ids=x, attention_mask=am, max_new_tokens=N,
                              min_new_tokens=N, do_sample=False, pad_token_id=pad,
                              streamer=streamer)[:, L:]
    ids = cfg["ids"]
    gen([ids[0][:8]])  # warm-up
    runs, texts = [], []
    for r in ids[:cfg["prompts"]]:
        c = Clock()
        t0 = time.perf_counter()
        y = gen([r], c)
        runs.append({"ttft": c.t[1] - t0, "n": y.shape[1], "decode": c.t[-1] - c.t[1]})
        texts.append(tok.decode(y[0]))
    out["single"], out["texts"], out["agg"] = single_stats(runs), texts, {}
    # the weights a decode step reads: every linear's, the LM head's included
    # (tied or not, the head multiplies by the whole vocabulary x d_model)
    out["linear_params"] = sum(x.weight.numel() for x in m.modules()
                               if isinstance(x, torch.nn.Linear))
    out["roofline"] = roofline(torch, cfg["threads"])
    for b in cfg["streams"]:
        batch = [ids[i % len(ids)] for i in range(b)]
        t0 = time.perf_counter()
        y = gen(batch)
        wall = time.perf_counter() - t0
        out["agg"][b] = {"tok_s": y.numel() / wall, "tokens": y.numel(), "wall_s": wall}
        print(f"bench: transformers batch {b}: {y.numel() / wall:.1f} tok/s", file=sys.stderr,
              flush=True)
    return out


def roofline(torch, threads):
    """This machine's limits for fp32 decoding, measured with torch (its own
    threads): the read bandwidth of a 600 MB array (a sum, best of 3) and the
    fp32 GEMM rate of a large product (1024 x 576 by 576 x 1536, best of 3)."""
    torch.set_num_threads(threads)
    x = torch.ones(150_000_000, dtype=torch.float32)
    bw = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        x.sum()
        bw = max(bw, x.numel() * 4 / (time.perf_counter() - t0))
    del x
    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    torch.mm(a, b)
    peak = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        peak = max(peak, 10 * 2 * 1024 * 576 * 1536 / (time.perf_counter() - t0))
    return {"read_bytes_s": bw, "gemm_flop_s": peak}


def make_f32(cfg):
    """The Q4_1 GGUF with every tensor dequantized to F32 (the gguf package), for
    llama.cpp: the weights our engine and transformers compute with."""
    import numpy as np
    import gguf
    r = gguf.GGUFReader(GGUF)
    w = gguf.GGUFWriter(F32 + ".tmp", r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vt = f.types[0]
        val = 0 if f.name == "general.file_type" else f.contents()  # 0: all F32
        w.add_key_value(f.name, val, vt,
                        sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.ascontiguousarray(
            gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(F32 + ".tmp", F32)
    return {"f32": F32}


# ---- llama.cpp (child process, .venv-llama) -------------------------------------------

def llama_child(cfg):
    import numpy as np
    import llama_cpp
    out = {"version": llama_cpp.__version__, "types": {}}
    for typ, path in cfg["files"].items():
        t = time.time()
        llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=cfg["threads"],
                              n_threads_batch=cfg["threads"], verbose=False)
        load = time.time() - t
        N = cfg["max_tokens"]

        V = llm.n_vocab()

        def argmax():  # the last position's logits (eval keeps them only with logits_all)
            return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,))))

        def decode(ids):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            y = [argmax()]  # EOS is not special here: N tokens every time
            t1 = time.perf_counter()
            while len(y) < N:
                llm.eval([y[-1]])
                y.append(argmax())
            return y, t1 - t0, time.perf_counter() - t1
        decode(cfg["ids"][0][:8])  # warm-up
        runs, texts = [], []
        for ids in cfg["ids"][:cfg["prompts"]]:
            y, ttft, dec = decode(ids)
            runs.append({"ttft": ttft, "n": len(y), "decode": dec})
            texts.append(llm.detokenize(y).decode("utf-8", "replace"))
        out["types"][typ] = dict(single_stats(runs), load_s=load, texts=texts,
                                 bytes=os.path.getsize(path))
        print(f"bench: llama.cpp {typ}: {out['types'][typ]['decode_tok_s']:.1f} tok/s",
              file=sys.stderr, flush=True)
        del llm
    return out


def child(py, mode, cfg, timeout):
    """This script in another interpreter: mode's function on cfg, its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.get("threads", 1)))
    env.pop("OMP_WAIT_POLICY", None)
    if cfg.get("omp_wait_policy", "default") != "default":
        env["OMP_WAIT_POLICY"] = cfg["omp_wait_policy"]
    r = subprocess.run([py, os.path.abspath(__file__), "--child", mode],
                       input=json.dumps(cfg), stdout=subprocess.PIPE, text=True, env=env,
                       timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{mode} child exited {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def has(py, mod):
    return os.path.exists(py) and subprocess.run(
        [py, "-c", f"import {mod}"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL).returncode == 0


# ---- the report -----------------------------------------------------------------------

def machine(threads):
    cpu, flags = "?", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    simd = [x for x in flags if x.startswith(("avx", "fma", "f16c", "amx", "sse4"))]
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": " ".join(sorted(simd)),
            "kernel": platform.release(), "threads": threads,
            "commit": commit + (" (with uncommitted changes)" if dirty else "")}


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def cores(w):
    return f"{w['own_cores']:.2f} / {w['other_cores']:.2f}" if "own_cores" in w else ""


def fmt(x, unit=""):
    return "—" if x is None or x != x else f"{x:,.1f}{unit}"


def write_report(a, m, res, out):
    dt, hf, ll = res["deltatune"], res.get("transformers"), res.get("llama")
    def ratio(x, y):
        return "—" if not x or not y or x != x or y != y else f"{x / y:.2f}×"
    L = ["# Inference benchmark", "",
         "`make bench-inference` (bench/inference.py): SmolLM2-135M-Instruct (the Q4_1 GGUF "
         "of scripts/install-deps, dequantized: every side computes with the same fp32 "
         "weights) served by deltatune (a real stack; streamed `POST /v1/completions` over "
         "loopback), against transformers' `generate` (fp32) and llama.cpp (F32 and F16). "
         "Greedy, the same prompt ids on every side, "
         f"{a.max_tokens} new tokens per request, {a.threads} thread(s) on every side. "
         "Each side runs alone, one after the other."
         + (" **Quick run (`--quick`): a smoke test, not a measurement.**" if a.quick else ""),
         "", "## Machine", "",
         f"- CPU: {m['cpu']}, {m['cores']} cores visible; SIMD flags: {m['simd']}",
         f"- Linux {m['kernel']}; threads per side: {m['threads']}; OMP_WAIT_POLICY="
         f"{a.omp_wait_policy if a.omp_wait_policy != 'default' else 'unset (each runtime default)'} on every side",
         f"- commit {m['commit']}",
         f"- transformers {hf['transformers']}, torch {hf['torch']} ({hf['dtype']}, "
         f"torch threads {hf['torch_threads']}, CPU kernels {hf['cpu_capability']})"
         if hf else "- transformers: not run (.venv lacks torch: scripts/make-venv)",
         f"- llama-cpp-python {ll['version']}" if ll and "version" in ll else
         f"- llama.cpp: {res.get('llama_note', 'not run')}",
         f"- load average at the start {res['load_start']}. The machine is shared (other "
         "sessions' builds and a long niced benchmark): each row gives the CPU cores this "
         "side used and those every other process used meanwhile (/proc/stat); where the "
         "latter is well above 0 the row's rates are lower bounds. The transformers and "
         "llama.cpp rows count their whole child process (model load included).", "",
         "## Single stream", "",
         f"Median over {a.prompts} prompts. Time to first token: from sending the request "
         "(deltatune: HTTP, Redis, the worker's prefill, the relay) or calling `generate` / "
         "`eval` to the first new token. Decode: (n − 1) new tokens / time from the first to "
         "the last.", "",
         "| engine | decode tok/s | time to first token | new tokens | load avg before | "
         "CPU cores: this side / other processes |", "|---|---|---|---|---|---|"]
    def row(name, s):
        return (f"| {name} | {fmt(s['decode_tok_s'])} | {fmt(s['ttft_s'] * 1000, ' ms')} | "
                f"{', '.join(map(str, s['tokens']))} | {s.get('load_before', '')} | "
                f"{cores(s)} |")
    L.append(row("deltatune (HTTP, serving worker)", dt["single"]))
    if hf:
        L.append(row("transformers generate", hf["single"]))
    for typ, s in (ll or {}).get("types", {}).items():
        L.append(row(f"llama.cpp {typ.upper()}", s))
    L += ["", "## Aggregate throughput", "",
          "All new tokens / wall time from the first request sent to the last token "
          "received (prefill and queueing included). deltatune: that many concurrent "
          "streamed requests to one serving worker; transformers: one `generate` on a "
          "left-padded batch of that many prompts. llama.cpp is not in this table: "
          "llama-cpp-python's API decodes one sequence at a time.", "",
          "| streams | deltatune tok/s | its median time to first token | transformers tok/s "
          "| deltatune / transformers | deltatune: load avg before, CPU cores this side / "
          "other processes |", "|---|---|---|---|---|---|"]
    for c in a.streams:
        d, h = dt["agg"][c], (hf["agg"].get(str(c)) if hf else None)
        L.append(f"| {c} | {fmt(d['tok_s'])} | {fmt(d['ttft_s'] * 1000, ' ms')} | "
                 f"{fmt(h['tok_s']) if h else '—'} | {ratio(d['tok_s'], h and h['tok_s'])} | "
                 f"{d['load_before']}; {cores(d)} |")
    top = max(a.streams)
    hs = hf["single"]["decode_tok_s"] if hf else None
    hagg = hf["agg"].get(str(top), {}).get("tok_s") if hf else None
    L += ["", "## Goals (issue 17)", "",
          "| goal | measured | met |", "|---|---|---|"]
    def goal(name, r, need):
        got = None if r == "—" else float(r[:-1])
        return f"| {name} | {r} | {'—' if got is None else ('yes' if got >= need else 'no')} |"
    L.append(goal("single-stream decode ≥ 2× transformers", ratio(dt["single"]["decode_tok_s"],
                                                                  hs), 2))
    L.append(goal(f"throughput at {top} streams ≥ 4× transformers'",
                  ratio(dt["agg"][top]["tok_s"], hagg), 4))
    for typ, s in (ll or {}).get("types", {}).items():
        L.append(goal(f"within 1.5× of llama.cpp {typ.upper()} (single-stream decode; "
                      "ours / theirs ≥ 0.67)", ratio(dt["single"]["decode_tok_s"],
                                                     s["decode_tok_s"]), 1 / 1.5))
    if not (ll or {}).get("types"):
        L.append(f"| within 1.5× of llama.cpp | not measured: {res.get('llama_note', '')} | — |")
    rl, lp = (hf or {}).get("roofline"), (hf or {}).get("linear_params")
    if rl and lp:
        bw, pk, wb = rl["read_bytes_s"], rl["gemm_flop_s"], 4.0 * lp
        one = bw / wb
        many = min(top * bw / wb, pk / (2.0 * lp))
        L += ["", "## Ceilings of this machine (fp32)", "",
              f"Measured here with torch ({a.threads} threads): read bandwidth "
              f"{bw / 1e9:.1f} GB/s (sum over a 600 MB array), fp32 GEMM {pk / 1e9:.0f} "
              f"GFLOP/s (1024 x 576 by 576 x 1536). A decode step reads every linear "
              f"weight once, the LM head included: {lp / 1e6:.1f} M fp32 weights, "
              f"{wb / 1e6:.0f} MB, and does 2 FLOPs per weight per stream. So, attention "
              "and every other cost left out:", "",
              "| | ceiling | the goal needs | reachable |", "|---|---|---|---|"]
        for name, ceil, need in (
                ("single-stream decode (bandwidth / bytes per token)", one,
                 2 * hs if hs else None),
                (f"{top} streams (min of {top} x bandwidth / bytes, GEMM rate / FLOPs per "
                 "token)", many, 4 * hagg if hagg else None)):
            L.append(f"| {name} | {ceil:.0f} tok/s | "
                     f"{'—' if need is None else f'{need:.0f} tok/s'} | "
                     f"{'—' if need is None else ('yes' if ceil >= need else 'no')} |")
        L += ["", "A goal whose need is above the ceiling cannot be met in fp32 on this "
              "machine by any engine: the weights would have to be read faster than memory "
              "delivers them, or multiplied faster than the cores' fp32 peak."]
    L += ["", "## Checks", ""]
    L += [f"- {c}" for c in dt["checks"]] or ["- the server's prompt_tokens equal "
                                              "`deltatune tokenize`'s ids for every prompt"]
    short = [n for n in dt["single"]["tokens"] if n < a.max_tokens]
    L.append(f"- deltatune answers shorter than max_tokens (EOS): {len(short)} of "
             f"{len(dt['single']['tokens'])}")
    for name, texts in ([("transformers", hf["texts"])] if hf else []) + \
            [(f"llama.cpp {t.upper()}", s["texts"]) for t, s in (ll or {}).get("types", {}).items()]:
        same = [common_prefix(x, y) for x, y in zip(dt["texts"], texts)]
        full = sum(n >= len(x) for n, x in zip(same, dt["texts"]))
        L.append(f"- greedy text, deltatune vs {name}: identical for {full} of {len(same)} "
                 f"prompts; common prefix {', '.join(map(str, same))} characters (of "
                 f"{', '.join(str(len(x)) for x in dt['texts'])})")
    L.append(f"- model load: deltatune worker {dt['load_s']:.1f} s (first request)"
             + (f", transformers {hf['load_s']:.1f} s" if hf else ""))
    rows = [dt["single"], *dt["agg"].values()] + ([hf["single"]] if hf else []) + \
        list((ll or {}).get("types", {}).values())
    other = [r["other_cores"] for r in rows if "other_cores" in r]
    if other and max(other) > 0.25 * a.threads:
        L += ["", f"**Other processes used {min(other):.2f}–{max(other):.2f} cores of the "
              f"machine's {m['cores']} while the rows ran**: these rates are below the "
              "engines' speeds on an idle machine, and since the sides ran one after the "
              "other under different loads their ratios are indicative only."]
    L += ["", "The serving worker batches concurrent requests on one model into one decode "
          "step (continuous batching, up to `--max-batch`, default 16; docs/ARCHITECTURE.md): "
          "its aggregate throughput grows with the streams, while a request arriving during "
          "a step waits for the next one.", "",
          "## Rerun", "", "```sh", "make bench-inference     # BENCH_ARGS=\"--quick\" for a "
          "smoke run; LLAMA=0 skips building llama-cpp-python", "```"]
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")
    print(f"bench: wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=4, help="single-stream prompts")
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--omp-wait-policy", choices=("default", "passive", "active"),
                    default="default",
                    help="OMP_WAIT_POLICY of every side: default leaves it unset, as users run "
                         "each engine (scripts/up sets none); passive is the test stack's "
                         "(idle OpenMP threads sleep at once: about a third slower decoding "
                         "for deltatune's many small ops per token)")
    ap.add_argument("--quick", action="store_true", help="8 tokens, 2 prompts (< 2 min on an idle machine)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        cfg = json.loads(sys.stdin.read())
        print(json.dumps({"hf": hf_child, "f32": make_f32, "llama": llama_child}[a.child](cfg)))
        return 0
    if a.quick:
        a.max_tokens, a.prompts = 8, 2
    a.streams = [int(x) for x in a.streams.split(",")]
    a.out = a.out or (os.path.join(SCRATCH, "inference-quick.md") if a.quick else
                      os.path.join(ROOT, "bench", "results", "inference.md"))
    if not os.path.exists(GGUF):
        sys.exit(f"bench: {GGUF} is missing (scripts/install-deps)")
    os.makedirs(SCRATCH, exist_ok=True)
    res = {"load_start": loadavg()}
    prompts = PROMPTS[:max(a.prompts, max(a.streams))]
    ids = [tokenize(p) for p in prompts]
    cfg = {"threads": a.threads, "max_tokens": a.max_tokens, "prompts": a.prompts,
           "streams": a.streams, "ids": ids, "omp_wait_policy": a.omp_wait_policy}
    print(f"bench: deltatune ({a.threads} threads)", flush=True)
    res["deltatune"] = run_deltatune(a, prompts, ids)
    if has(TORCH_PY, "torch, transformers"):
        print("bench: transformers", flush=True)
        with Watch() as w:
            res["transformers"] = child(TORCH_PY, "hf", cfg, 1800)
        res["transformers"]["single"].update(w.info())
    if a.no_llama:
        res["llama_note"] = "skipped (--no-llama)"
    elif not has(LLAMA_PY, "llama_cpp"):
        res["llama_note"] = ("llama-cpp-python is not installed in .venv-llama (make "
                             "bench-inference builds it unless LLAMA=0)")
    else:
        if not os.path.exists(F32):
            child(TORCH_PY, "f32", cfg, 600)
        if not os.path.exists(F16):
            subprocess.run([os.path.join(BUILD, "deltatune"), "export", "--gguf", "--quiet",
                            "--type", "f16", GGUF, F16], check=True)
        print("bench: llama.cpp", flush=True)
        with Watch() as w:
            res["llama"] = child(LLAMA_PY, "llama", dict(cfg, files={"f32": F32, "f16": F16}),
                                 1800)
        for s in res["llama"]["types"].values():
            s.update(w.info())
    res["machine"] = machine(a.threads)
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:  # the raw figures
        json.dump(res, f, indent=1)
    write_report(a, res["machine"], res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
