"""What a user sees of the models (issue 15, "The user's view"): `deltatune
models add` takes Llama-family Hugging Face directories and GGUF files and
refuses an architecture the engine does not support at add time, naming it;
GET /v1/models and /v1/models/{id} show each base's family, context length
and chat template presence, and fine-tuned models show their base's.

    BUILD=build python3 -m unittest tests.integration.test_models_info -v
"""
import array
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, StackTest, TINY_ID, TRAIN_ROWS, hp, start_stack  # noqa: E402

GPT2_TOKENIZER = os.path.join(ROOT, ".cache", "gpt2-tokenizer")
SMOLLM2_GGUF = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def tiny_llama(out, model_type="llama", arch="LlamaForCausalLM", ctx=512, chat_template=True,
               qk_norm=False):
    """A 2-layer random Llama-shaped HF directory (width 32, tied head) with
    GPT-2's vocabulary; model_type/arch name the family in config.json.
    qk_norm: Qwen 3's per-head q_norm/k_norm (head_dim 16, so n_head*head_dim
    = 64 != width)."""
    vocab, d, layers, heads, kv, ff = 50257, 32, 2, 4, 2, 64
    hd = 16 if qk_norm else d // heads
    os.makedirs(out)
    rng = random.Random(7)
    names = [("model.embed_tokens.weight", [vocab, d])]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [(p + "input_layernorm.weight", [d]), (p + "self_attn.q_proj.weight", [heads * hd, d]),
                  (p + "self_attn.k_proj.weight", [kv * hd, d]), (p + "self_attn.v_proj.weight", [kv * hd, d]),
                  (p + "self_attn.o_proj.weight", [d, heads * hd]),
                  *([(p + "self_attn.q_norm.weight", [hd]), (p + "self_attn.k_norm.weight", [hd])]
                    if qk_norm else []),
                  (p + "post_attention_layernorm.weight", [d]), (p + "mlp.gate_proj.weight", [ff, d]),
                  (p + "mlp.up_proj.weight", [ff, d]), (p + "mlp.down_proj.weight", [d, ff])]
    names.append(("model.norm.weight", [d]))
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, shape in names:
        n = 1
        for s in shape:
            n *= s
        a = (array.array("f", [1.0]) * n if name.endswith("norm.weight")
             else array.array("f", (rng.gauss(0, 0.02) for _ in range(n))))
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    cfg = {"architectures": [arch], "model_type": model_type, "hidden_size": d,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
           "intermediate_size": ff, "vocab_size": vocab, "max_position_embeddings": ctx,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
           "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256}
    if qk_norm:
        cfg.update(head_dim=hd, use_sliding_window=False, sliding_window=None)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f)
    for n in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(GPT2_TOKENIZER, n), out)
    if chat_template:
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump({"chat_template": CHATML, "eos_token": "<|endoftext|>"}, f)
    return out


def setUpModule():
    StackTest.s = start_stack()
    StackTest.tmp = tempfile.mkdtemp(prefix="dt-models-info-")


def tearDownModule():
    if StackTest.s:
        StackTest.s.stop()
    shutil.rmtree(StackTest.tmp, ignore_errors=True)


class ModelsInfoTest(StackTest):
    def model(self, model_id):
        return self.call("GET", f"/v1/models/{model_id}")

    def listed(self, model_id):
        data = self.call("GET", "/v1/models")["data"]
        got = [m for m in data if m["id"] == model_id]
        self.assertEqual(len(got), 1, [m["id"] for m in data])
        return got[0]

    def test_base_info_gpt2(self):
        """The tiny GPT-2 base: family gpt2, n_positions 256, no chat template
        (under 1 s after the module's stack starts, about 15 s)."""
        want = {"family": "gpt2", "context_length": 256, "chat_template": False}
        for m in (self.model(TINY_ID), self.listed(TINY_ID)):
            self.assertEqual({k: m.get(k, "missing") for k in want}, want, m)
            self.assertEqual((m["object"], m["owned_by"]), ("model", "deltatune"))

    def test_llama_dir_add_train_and_inherit(self):
        """A Llama-shaped HF directory with a chat template is added by the
        CLI (which prints its family), shows family llama, its context length
        and chat_template true; a job on it succeeds and its fine-tuned model
        shows the same (about 6 s)."""
        d = tiny_llama(os.path.join(self.tmp, "tiny-llama"))
        r = self.s.cli("models", "add", "--id", "tiny-llama", "--path", d)
        self.assertIn("family llama, context length 512, chat template", r.stderr)
        want = {"family": "llama", "context_length": 512, "chat_template": True}
        for m in (self.model("tiny-llama"), self.listed("tiny-llama")):
            self.assertEqual({k: m.get(k, "missing") for k in want}, want, m)
        f = self.s.upload(TRAIN_ROWS)[2]
        job = self.call("POST", "/v1/fine_tuning/jobs",
                        {"model": "tiny-llama", "training_file": f["id"],
                         "method": hp("lora", n_epochs=1)})
        job = self.s.wait_job(job["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(job["status"], "succeeded", job)
        ft = job["fine_tuned_model"]
        for m in (self.model(ft), self.listed(ft)):
            self.assertEqual(m["parent"], "tiny-llama", m)
            self.assertEqual({k: m.get(k, "missing") for k in want}, want, m)

    def test_qwen3_dir_add_and_train(self):
        """A Qwen 3 directory (Qwen3ForCausalLM, per-head q_norm/k_norm) is
        added by the CLI, shows family qwen3, and a delta_lora job on it
        succeeds (about 6 s)."""
        d = tiny_llama(os.path.join(self.tmp, "tiny-qwen3"), model_type="qwen3",
                       arch="Qwen3ForCausalLM", ctx=1024, qk_norm=True)
        r = self.s.cli("models", "add", "--id", "tiny-qwen3", "--path", d)
        self.assertIn("family qwen3, context length 1024, chat template", r.stderr)
        want = {"family": "qwen3", "context_length": 1024, "chat_template": True}
        for m in (self.model("tiny-qwen3"), self.listed("tiny-qwen3")):
            self.assertEqual({k: m.get(k, "missing") for k in want}, want, m)
        f = self.s.upload(TRAIN_ROWS)[2]
        job = self.call("POST", "/v1/fine_tuning/jobs",
                        {"model": "tiny-qwen3", "training_file": f["id"],
                         "method": hp("delta_lora", n_epochs=1)})
        job = self.s.wait_job(job["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(job["status"], "succeeded", job)

    def test_gemma3_refused_at_add_by_name(self):
        """Gemma 3 is not implemented: `models add` refuses its directory with
        "unsupported architecture Gemma3ForCausalLM" and the supported list,
        and does not register it (about 3 s)."""
        d = tiny_llama(os.path.join(self.tmp, "gemma3"), model_type="gemma3_text",
                       arch="Gemma3ForCausalLM")
        r = self.s.cli("models", "add", "--id", "tiny-gemma3", "--path", d, check=False)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("unsupported architecture Gemma3ForCausalLM (supported: ", r.stderr)
        self.assertIn("Qwen3ForCausalLM", r.stderr)
        self.err("GET", "/v1/models/tiny-gemma3", want=404)

    @unittest.skipUnless(os.path.exists(SMOLLM2_GGUF), "SmolLM2 GGUF not installed")
    def test_gguf_base_info(self):
        """SmolLM2-135M-Instruct's GGUF: general.architecture llama,
        llama.context_length 8192 and tokenizer.chat_template, read from the
        file's metadata (about 3 s)."""
        self.s.cli("models", "add", "--id", "smollm2-gguf", "--path", SMOLLM2_GGUF)
        want = {"family": "llama", "context_length": 8192, "chat_template": True}
        for m in (self.model("smollm2-gguf"), self.listed("smollm2-gguf")):
            self.assertEqual({k: m.get(k, "missing") for k in want}, want, m)

    def test_unsupported_architecture_refused_at_add(self):
        """A directory of an architecture the engine does not train (here
        model_type "falcon") is refused by `models add`, naming it, and is
        not registered (about 3 s)."""
        d = tiny_llama(os.path.join(self.tmp, "falcon"), model_type="falcon",
                       arch="FalconForCausalLM")
        r = self.s.cli("models", "add", "--id", "tiny-falcon", "--path", d, check=False)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("falcon", r.stderr)
        self.assertRegex(r.stderr, r"(unknown|unsupported) architecture (falcon|FalconForCausalLM)")
        self.err("GET", "/v1/models/tiny-falcon", want=404)


if __name__ == "__main__":
    unittest.main()
