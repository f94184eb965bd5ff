#!/usr/bin/env python3
"""`deltatune export --gguf` read back with the `gguf` Python package
(llama.cpp's own reader, gguf-py): metadata, tokenizer, tensor names, types
and shapes as llama.cpp expects them, and the dequantized values against the
source weights with Q/K permuted as llama.cpp's converter does (computed here
independently with numpy). Run by `make check-gguf` (makes .venv-gguf with
numpy + gguf); BUILD names the build folder (default build).

With LLAMA_CPP_PYTHON=1 and llama-cpp-python importable, also: llama.cpp
loads the SmolLM2 export and its 16 greedy tokens equal ours."""
import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

import numpy as np
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("BUILD", "build")
CLI = os.path.join(ROOT, BUILD, "deltatune")
REF = os.path.join(ROOT, "tests", "fixtures", "ref")
SMOLLM = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
TINY_GPT2 = os.path.join(ROOT, ".cache", "tiny-gpt2")


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": np.float32, "F16": np.float16}[v["dtype"]]
        out[k] = np.frombuffer(data[a:b], dtype=dt).astype(np.float32).reshape(v["shape"])
    return out


def vocab_dir(fixture, tmp):
    """The fixture model plus a 96-token byte-level vocabulary."""
    d = os.path.join(tmp, fixture)
    os.makedirs(d, exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(REF, fixture, f), d)
    vocab = {chr(c): i for i, c in enumerate(range(33, 127))}
    vocab["\u0120"] = 94
    vocab["\u0120t"] = 95
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n\u0120 t\n")
    return d, vocab


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows."""
    shape = w.shape
    return (w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


def field(r, key):
    f = r.fields[key]
    return f.contents()


def export(model, out, typ):
    p = subprocess.run([CLI, "export", "--gguf", "--type", typ, model, out],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


class GGUFPackage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dt-gguf-py-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check_model(self, fixture):
        d, vocab = vocab_dir(fixture, self.tmp)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        src = load_safetensors(os.path.join(d, "model.safetensors"))
        src = {k[len("model."):] if k.startswith("model.") else k: v for k, v in src.items()}
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        for typ in ("f16", "q8_0", "q4_0"):
            out = os.path.join(self.tmp, f"{fixture}-{typ}.gguf")
            export(d, out, typ)
            r = gguf.GGUFReader(out)
            self.assertEqual(field(r, "general.architecture"), "llama")
            self.assertEqual(field(r, "general.alignment"), 32)
            self.assertEqual(field(r, "general.file_type"), {"f16": 1, "q8_0": 7, "q4_0": 2}[typ])
            self.assertEqual(field(r, "llama.block_count"), cfg["num_hidden_layers"])
            self.assertEqual(field(r, "llama.embedding_length"), cfg["hidden_size"])
            self.assertEqual(field(r, "llama.feed_forward_length"), cfg["intermediate_size"])
            self.assertEqual(field(r, "llama.context_length"), cfg["max_position_embeddings"])
            self.assertEqual(field(r, "llama.attention.head_count"), nh)
            self.assertEqual(field(r, "llama.attention.head_count_kv"), nkv)
            self.assertEqual(field(r, "llama.vocab_size"), cfg["vocab_size"])
            self.assertAlmostEqual(field(r, "llama.attention.layer_norm_rms_epsilon"), cfg["rms_norm_eps"], places=9)
            theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
            self.assertEqual(field(r, "llama.rope.freq_base"), theta)
            self.assertEqual(field(r, "tokenizer.ggml.model"), "gpt2")
            self.assertEqual(field(r, "tokenizer.ggml.pre"), "gpt-2")
            toks = field(r, "tokenizer.ggml.tokens")
            self.assertEqual(toks, sorted(vocab, key=vocab.get))
            self.assertEqual(field(r, "tokenizer.ggml.merges"), ["\u0120 t"])
            self.assertEqual(field(r, "tokenizer.ggml.token_type"), [1] * 96)
            tensors = {t.name: t for t in r.tensors}
            L = cfg["num_hidden_layers"]
            names = {"token_embd.weight", "output_norm.weight"}
            if not cfg.get("tie_word_embeddings"):
                names.add("output.weight")
            for i in range(L):
                for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"):
                    names.add(f"blk.{i}.{n}.weight")
                if "layers.0.self_attn.q_proj.bias" in src:
                    for n in ("attn_q", "attn_k", "attn_v"):
                        names.add(f"blk.{i}.{n}.bias")
            self.assertEqual(set(tensors), names)
            canon = {"token_embd.weight": "embed_tokens.weight",
                     "output_norm.weight": "norm.weight", "output.weight": "lm_head.weight"}
            blk = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
                   "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                   "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                   "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
            for name, t in tensors.items():
                if name.startswith("blk."):
                    _, i, n, suf = name.split(".")
                    cn = f"layers.{i}.{blk[n]}.{suf}"
                else:
                    cn = canon[name]
                w = src[cn]
                if name.split(".")[-2] == "attn_q":
                    w = permute(w, nh)
                elif name.split(".")[-2] == "attn_k":
                    w = permute(w, nkv)
                # gguf lists dims innermost first
                self.assertEqual([int(x) for x in t.shape], list(reversed(w.shape)), name)
                if w.ndim == 1:
                    want = gguf.GGMLQuantizationType.F32
                elif typ == "f16":
                    want = gguf.GGMLQuantizationType.F16
                elif typ == "q4_0" and name == "output.weight":
                    want = gguf.GGMLQuantizationType.Q8_0
                else:
                    want = {"q8_0": gguf.GGMLQuantizationType.Q8_0,
                            "q4_0": gguf.GGMLQuantizationType.Q4_0}[typ]
                self.assertEqual(t.tensor_type, want, name)
                got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
                if want == gguf.GGMLQuantizationType.F32:
                    np.testing.assert_array_equal(got, w, err_msg=name)
                elif want == gguf.GGMLQuantizationType.F16:
                    np.testing.assert_array_equal(got, w.astype(np.float16).astype(np.float32), err_msg=name)
                else:
                    blocks = w.reshape(-1, 32)
                    amax = np.abs(blocks).max(axis=1, keepdims=True)
                    step = amax / (127.0 if want == gguf.GGMLQuantizationType.Q8_0 else 8.0)
                    err = np.abs(got.reshape(-1, 32) - blocks)
                    self.assertTrue((err <= step * 1.01 + 1e-7).all(), name)

    def test_llama(self):
        self.check_model("llama_model")

    def test_qwen2_biases(self):
        self.check_model("qwen2_model")

    @unittest.skipUnless(os.path.exists(SMOLLM), "SmolLM2 GGUF missing (scripts/install-deps)")
    def test_smollm2_tokenizer_and_template(self):
        out = os.path.join(self.tmp, "smol-q4.gguf")
        export(SMOLLM, out, "q4_0")
        src, r = gguf.GGUFReader(SMOLLM), gguf.GGUFReader(out)
        for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                  "tokenizer.ggml.eos_token_id", "tokenizer.chat_template", "tokenizer.ggml.model",
                  "tokenizer.ggml.pre", "llama.block_count", "llama.attention.head_count_kv"):
            self.assertEqual(field(r, k), field(src, k), k)
        # llama.cpp token types: the special tokens are control (3).
        tt, toks = field(r, "tokenizer.ggml.token_type"), field(r, "tokenizer.ggml.tokens")
        self.assertEqual(tt[toks.index("<|im_start|>")], 3)
        self.assertEqual(field(r, "tokenizer.ggml.pre"), "smollm")
        tensors = {t.name: t for t in r.tensors}
        self.assertNotIn("output.weight", tensors)  # tied
        # q4_0: the tied embedding is also the output matrix: q8_0.
        self.assertEqual(tensors["token_embd.weight"].tensor_type, gguf.GGMLQuantizationType.Q8_0)
        self.assertEqual(tensors["blk.0.ffn_up.weight"].tensor_type, gguf.GGMLQuantizationType.Q4_0)

    def test_cli_errors_name_the_field_and_file(self):
        p = subprocess.run([CLI, "export", "--gguf", "--type", "q5_k", "m", "o.gguf"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--type must be f16, q8_0 or q4_0", p.stderr)
        missing = os.path.join(self.tmp, "no-such-model")
        p = subprocess.run([CLI, "export", "--gguf", missing, os.path.join(self.tmp, "o.gguf")],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn(missing, p.stderr)
        p = subprocess.run([CLI, "export", os.path.join(REF, "llama_model"), "o.gguf"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--gguf is required", p.stderr)
        d, _ = vocab_dir("llama3_model", self.tmp)
        p = subprocess.run([CLI, "export", "--gguf", d, os.path.join(self.tmp, "g.gguf")],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("RoPE scaling", p.stderr)
        self.assertIn(d, p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "g.gguf")))

    @unittest.skipUnless(os.path.isdir(TINY_GPT2), "tiny GPT-2 missing (tests/harness/tiny_model.py)")
    def test_gpt2(self):
        """GPT-2 as llama.cpp's gpt2 architecture: hyperparameters, names,
        position_embd f32, Conv1D weights written as (out, in)."""
        out = os.path.join(self.tmp, "gpt2-f16.gguf")
        export(TINY_GPT2, out, "f16")
        with open(os.path.join(TINY_GPT2, "config.json")) as f:
            cfg = json.load(f)
        src = load_safetensors(os.path.join(TINY_GPT2, "model.safetensors"))
        r = gguf.GGUFReader(out)
        self.assertEqual(field(r, "general.architecture"), "gpt2")
        self.assertEqual(field(r, "gpt2.block_count"), cfg["n_layer"])
        self.assertEqual(field(r, "gpt2.context_length"), cfg["n_positions"])
        self.assertEqual(field(r, "gpt2.embedding_length"), cfg["n_embd"])
        self.assertEqual(field(r, "gpt2.attention.head_count"), cfg["n_head"])
        self.assertEqual(field(r, "tokenizer.ggml.pre"), "gpt-2")
        self.assertEqual(len(field(r, "tokenizer.ggml.tokens")), cfg["vocab_size"])
        t = {x.name: x for x in r.tensors}
        self.assertEqual(t["position_embd.weight"].tensor_type, gguf.GGMLQuantizationType.F32)
        self.assertEqual(t["blk.0.attn_qkv.weight"].tensor_type, gguf.GGMLQuantizationType.F16)
        self.assertNotIn("output.weight", t)
        key = lambda k: k if k in src else "transformer." + k
        w = src[key("h.0.attn.c_attn.weight")]  # Conv1D (in, out)
        got = gguf.quants.dequantize(t["blk.0.attn_qkv.weight"].data, t["blk.0.attn_qkv.weight"].tensor_type)
        np.testing.assert_array_equal(got.reshape(w.T.shape), w.T.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(
            gguf.quants.dequantize(t["position_embd.weight"].data, t["position_embd.weight"].tensor_type)
            .reshape(src[key("wpe.weight")].shape), src[key("wpe.weight")])


if __name__ == "__main__":
    unittest.main()
