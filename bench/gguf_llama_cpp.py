#!/usr/bin/env python3
"""llama.cpp loads our GGUF exports and decodes like our engine (issue 16).

Exports SmolLM2-135M-Instruct (the GGUF of scripts/install-deps) with
`deltatune export --gguf` as f16, q8_0 and q4_0, loads each file with
llama-cpp-python (llama.cpp itself), and checks:
- llama.cpp tokenizes the prompt (chat template rendered, special tokens)
  to the same ids as `deltatune tokenize` on the same file;
- its 16 greedy tokens (argmax of its logits, no sampler) decode to the text
  `deltatune generate` (greedy) writes for the same prompt on the same file.
Not part of `make test` (llama-cpp-python compiles llama.cpp: about 30
minutes on 2 cores). Run with a Python that has llama_cpp and numpy:

    python3 -m venv .venv-llama && .venv-llama/bin/pip install llama-cpp-python numpy
    .venv-llama/bin/python bench/gguf_llama_cpp.py [--types f16,q8_0,q4_0]

Prints one line per type and exits 1 if any check fails."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", os.path.join(ROOT, "build"))
CLI = os.path.join(BUILD, "deltatune")
SMOLLM = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
          "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France? "
          "Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n")
N = 16


def ours(path):
    ids = json.loads(subprocess.run([CLI, "tokenize", "--model", path], input=PROMPT,
                                    capture_output=True, text=True, check=True).stdout)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write(json.dumps(PROMPT) + "\n")
        pf = f.name
    out = subprocess.run([CLI, "generate", "--model", path, "--prompts-file", pf,
                          "--max-tokens", str(N)], capture_output=True, text=True, check=True)
    os.unlink(pf)
    return ids, json.loads(out.stdout.strip().splitlines()[-1])


def llama(path):
    llm = Llama(model_path=path, n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(N):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if t == llm.token_eos():
            break
        out.append(t)
        llm.eval([t])
    return ids, out, llm.detokenize(out).decode("utf-8", "replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    a = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for typ in a.types.split(","):
            path = os.path.join(tmp, f"smollm2-{typ}.gguf")
            subprocess.run([CLI, "export", "--gguf", "--quiet", "--type", typ, SMOLLM, path],
                           check=True)
            our_ids, gen = ours(path)
            ll_ids, ll_out, ll_text = llama(path)
            same_ids = our_ids == ll_ids
            same_text = ll_text == gen["text"]
            ok &= same_ids and same_text
            print(f"{typ}: llama.cpp loaded {os.path.getsize(path)} bytes; prompt ids "
                  f"{'equal' if same_ids else 'DIFFER'} ({len(ll_ids)}); "
                  f"{len(ll_out)} greedy tokens {'equal' if same_text else 'DIFFER'}: "
                  f"llama.cpp {ll_text!r} / ours {gen['text']!r}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
