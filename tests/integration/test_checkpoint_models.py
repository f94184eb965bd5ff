"""Checkpoints that are models (issue 16): a checkpoint's merged Hugging Face
directory is built on request by a worker (POST /v1/models/{id}/exports
{"format": "hf"}), listed under merged/ with sha256 and downloaded with
GET /v1/models/{id}/archive?part=merged; its weights are the checkpoint's
state (the last checkpoint's equal the job's final merged model to fp32
rounding) and our engine generates from it what it generates from the
fine-tuned model. A checkpoint is the base of a new job: the job trains from
the checkpoint's weights and its id names the original base. About 40 s
here (one stack, three short jobs on the tiny GPT-2).

    BUILD=build python3 -m unittest tests/integration/test_checkpoint_models.py -v
"""
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, StackTest, TINY_ID, hp, sha256  # noqa: E402
from common import setUpModule, tearDownModule  # noqa: E402,F401 (one stack for the module)

TORCH_PY = os.path.join(ROOT, ".venv", "bin", "python")


def tensors(blob):
    """{name: float32 array} of a safetensors blob (F32, F16, BF16)."""
    n = struct.unpack("<Q", blob[:8])[0]
    hdr = json.loads(blob[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        raw = blob[8 + n + a:8 + n + b]
        if v["dtype"] == "F32":
            x = np.frombuffer(raw, "<f4")
        elif v["dtype"] == "F16":
            x = np.frombuffer(raw, "<f2").astype(np.float32)
        elif v["dtype"] == "BF16":
            x = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(v["dtype"])
        out[k] = x.reshape(v["shape"]).astype(np.float32)
    return out


class CheckpointModels(StackTest):
    @classmethod
    def setUpClass(cls):
        t = cls()
        f = t.upload_ok()
        cls.file = f["id"]
        j = t.create_job(f["id"], method=hp("delta_lora", max_steps=4, rank=4, alpha=8,
                                            start_step=1, checkpoint_interval=2))
        j = t.wait(j["id"], {"succeeded", "failed", "cancelled"})
        assert j["status"] == "succeeded", j
        cls.job, cls.ft = j, j["fine_tuned_model"]
        cks = t.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")["data"]
        cls.ck = {c["step_number"]: c["fine_tuned_model_checkpoint"] for c in cks}
        assert sorted(cls.ck) == [2, 4], cks

    def file_blob(self, model, name):
        return self.call("GET", f"/v1/models/{model}/files/{name}", raw=True)[1]

    def hf_export(self, model, **body):
        x = self.call("POST", f"/v1/models/{model}/exports", dict(format="hf", **body), want=202)
        self.assertEqual((x["format"], x["file"], x["type"]),
                         ("hf", "merged", body.get("type", "auto")), x)

        def done():
            y = self.call("GET", f"/v1/models/{model}/exports/{x['id']}")
            return y if y["status"] in ("succeeded", "failed") else None
        y = self.wait_until("the hf export", done, timeout=120)
        self.assertEqual(y["status"], "succeeded", y)
        return y

    def generate(self, model_dir):
        r = self.s.cli("generate", "--model", model_dir, "--prompt", "name : Place 5 |",
                       "--max-tokens", "12", "--threads", "1")
        return r.stdout

    def base_tensors(self):
        path = self.s.psql(f"SELECT path FROM models WHERE id = '{TINY_ID}'").strip()
        with open(os.path.join(path, "model.safetensors"), "rb") as fh:
            return tensors(fh.read())

    def test_a_merged_needs_an_hf_export_and_bad_requests_name_the_field(self):
        """Before an hf export a checkpoint's part=merged is a 404 saying how to
        build it; hf's type is checked; hf of a fine-tuned model is a 400
        (it is a merged directory already); another owner's checkpoint is a 404."""
        c2 = self.ck[2]
        e = self.err("GET", f"/v1/models/{c2}/archive?part=merged", want=404, param="part")
        self.assertIn('"format": "hf"', e["message"])
        self.err("POST", f"/v1/models/{c2}/exports", {"format": "hf", "type": "float64"},
                 param="type")
        self.err("POST", f"/v1/models/{c2}/exports", {"format": "hf", "type": "q8_0"},
                 param="type")
        self.err("POST", f"/v1/models/{c2}/exports", {"format": "safetensors"}, param="format")
        e = self.err("POST", f"/v1/models/{self.ft}/exports", {"format": "hf"}, param="format")
        self.assertIn("fine-tuned", e["message"])
        e = self.err("POST", "/v1/completions", {"model": c2, "prompt": "x"}, param="model")
        self.assertEqual(e["code"], "model_not_ready", e)
        other = self.s.new_key("ckpt-other")
        self.err("POST", f"/v1/models/{c2}/exports", {"format": "hf"}, want=404, key=other)
        self.err("GET", f"/v1/models/{c2}/archive?part=merged", want=404, key=other)

    def test_b_hf_export_is_the_checkpoint_state(self):
        """The last checkpoint's merged directory: listed under merged/ with
        sha256, its archive a directory with config.json, model.safetensors
        and the tokenizer (no training state), weights equal to the job's
        final merged model to fp32 rounding (base + the exact rank-2r
        adapter vs the trained W_T + s·B·A), generating with our engine what
        the fine-tuned model generates, and counted in the owner's storage."""
        c4 = self.ck[4]
        before = self.call("GET", "/v1/usage")["storage_bytes"]
        y = self.hf_export(c4)
        files = {f["name"]: f for f in self.call("GET", f"/v1/models/{c4}/files")["data"]}
        merged = {k: v for k, v in files.items() if k.startswith("merged/")}
        for n in ("merged/config.json", "merged/model.safetensors"):
            self.assertIn(n, merged, sorted(files))
        self.assertEqual(y["bytes"], sum(v["bytes"] for v in merged.values()))
        blob = self.file_blob(c4, "merged/model.safetensors")
        self.assertEqual(sha256(blob), merged["merged/model.safetensors"]["sha256"])
        got = tensors(blob)
        want = tensors(self.file_blob(self.ft, "model.safetensors"))
        self.assertEqual(sorted(got), sorted(want))
        base = self.base_tensors()
        moved = 0.0
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=2e-6, err_msg=k)
            moved = max(moved, float(np.abs(want[k] - base[k]).max()))
        self.assertGreater(moved, 1e-4)  # the checkpoint is not the base
        _, tar = self.call("GET", f"/v1/models/{c4}/archive?part=merged", raw=True)
        d = tempfile.mkdtemp(prefix="dt_ckpt_merged_")
        try:
            with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
                names = {m.name.split("/", 1)[1] for m in tf.getmembers() if m.isfile()}
                self.assertEqual(names, {n[len("merged/"):] for n in merged})
                self.assertFalse(names & {"weights.safetensors", "optimizer.safetensors",
                                          "state.json", "DONE"}, names)
                tf.extractall(d)
            top = os.path.join(d, os.listdir(d)[0])
            root = self.s.env["DELTATUNE_ARTIFACT_ROOT"]
            ft_dir = os.path.join(root, "jobs", self.job["id"], "merged")
            self.assertEqual(self.generate(top), self.generate(ft_dir))
            if os.path.exists(TORCH_PY) and subprocess.run(
                    [TORCH_PY, "-c", "import torch, transformers"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL).returncode == 0:
                code = ("import sys, torch, transformers as t\n"
                        "m = t.AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
                        "print(m(torch.tensor([[1, 2, 3]])).logits.shape)\n")
                r = subprocess.run([TORCH_PY, "-c", code, top], capture_output=True, text=True,
                                   timeout=300)
                self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            else:
                print(f"\n  transformers load skipped: {TORCH_PY} lacks torch/transformers "
                      "(scripts/make-venv)", file=sys.stderr)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        after = self.call("GET", "/v1/usage")["storage_bytes"]
        self.assertGreaterEqual(after - before, y["bytes"])

    def test_c_checkpoint_is_the_base_of_a_new_job(self):
        """A job on the step-2 checkpoint trains from its weights (one LoRA
        step at a learning rate of 1e-9 leaves them as they were: its merged
        model equals the checkpoint's merged model, which the worker built,
        and differs from the base); its id names the original base (no
        ft:ft:, no ckpt-step); another owner's checkpoint is not found; a
        GGUF of the checkpoint is built from its merged model."""
        c2 = self.ck[2]
        other = self.s.new_key("ckpt-base-other")
        body = {"model": c2, "training_file": self.file,
                "method": hp("lora", max_steps=1, rank=4, alpha=8, learning_rate=1e-9)}
        e = self.err("POST", "/v1/fine_tuning/jobs", body, param="model", key=other)
        self.assertEqual(e["code"], "model_not_found", e)
        j = self.create_job(self.file, method=body["method"], model=c2)
        self.assertEqual(j["model"], c2)
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        ft2 = j["fine_tuned_model"]
        self.assertTrue(ft2.startswith(f"ft:{TINY_ID}:"), ft2)
        self.assertNotIn("ft:ft:", ft2)
        self.assertNotIn("ckpt-step", ft2)
        self.assertTrue(ft2.endswith(":" + j["id"]), ft2)
        names = [x["name"] for x in self.call("GET", f"/v1/models/{c2}/files")["data"]]
        self.assertIn("merged/model.safetensors", names)  # built by the job's worker
        ck = tensors(self.file_blob(c2, "merged/model.safetensors"))
        got = tensors(self.file_blob(ft2, "model.safetensors"))
        base = self.base_tensors()
        moved = 0.0
        for k in ck:
            np.testing.assert_allclose(got[k], ck[k], rtol=0, atol=1e-6, err_msg=k)
            moved = max(moved, float(np.abs(ck[k] - base[k]).max()))
        self.assertGreater(moved, 1e-4)
        # the new job's own checkpoint merges on its base, the checkpoint's
        # merged model (a chain of bases): it is the new job's final model
        c = self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")["data"][0]
        self.assertEqual(c["step_number"], 1, c)
        self.hf_export(c["fine_tuned_model_checkpoint"])
        cc = tensors(self.file_blob(c["fine_tuned_model_checkpoint"], "merged/model.safetensors"))
        for k in got:
            np.testing.assert_allclose(cc[k], got[k], rtol=0, atol=1e-6, err_msg=k)
        x = self.call("POST", f"/v1/models/{c2}/exports", {"format": "gguf"}, want=202)

        def done():
            y = self.call("GET", f"/v1/models/{c2}/exports/{x['id']}")
            return y if y["status"] in ("succeeded", "failed") else None
        y = self.wait_until("the gguf export", done, timeout=120)
        self.assertEqual(y["status"], "succeeded", y)
        gguf = self.file_blob(c2, "model.gguf")
        self.assertEqual(gguf[:4], b"GGUF")

    def test_d_checkpoint_serves_its_merged_model(self):
        """Once merged, the last checkpoint answers a completion as the
        fine-tuned model does (same state: same greedy tokens)."""
        p = self.s.start_worker("serve-ckpt", extra=("--serve",))
        try:
            end = time.time() + 30
            while int(self.s.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND "
                                  "status = 'serving'")) < 1:
                self.assertLess(time.time(), end, "no serving worker registered")
                time.sleep(0.2)
            if not any(f["name"] == "merged/config.json" for f in
                       self.call("GET", f"/v1/models/{self.ck[4]}/files")["data"]):
                self.hf_export(self.ck[4])
            body = {"prompt": "name : Place 5 |", "temperature": 0, "max_tokens": 12}
            a = self.call("POST", "/v1/completions", dict(body, model=self.ck[4]))
            b = self.call("POST", "/v1/completions", dict(body, model=self.ft))
            self.assertEqual(a["model"], self.ck[4])
            self.assertEqual(a["choices"][0]["text"], b["choices"][0]["text"])
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)

    def test_e_full_checkpoint_is_its_weights(self):
        """A full job's last checkpoint merges to the job's final model
        exactly (its weights are the model's), in the asked dtype."""
        j = self.create_job(self.file, method=hp("full", max_steps=2, checkpoint_interval=2))
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        c = self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")["data"][0]
        mid = c["fine_tuned_model_checkpoint"]
        self.hf_export(mid, type="float32")
        got = tensors(self.file_blob(mid, "merged/model.safetensors"))
        want = tensors(self.file_blob(j["fine_tuned_model"], "model.safetensors"))
        self.assertEqual(sorted(got), sorted(want))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        cfg = json.loads(self.file_blob(mid, "merged/config.json"))
        self.assertEqual(cfg["torch_dtype"], "float32")

    def test_f_a_checkpoint_that_cannot_be_merged_fails_clearly(self):
        """A lora checkpoint without its adapter/ (as older versions wrote
        them): the hf export ends failed and a job on it fails
        model_unavailable naming `model`, both saying why with the
        checkpoint's id and none of the server's paths."""
        j = self.create_job(self.file, method=hp("lora", max_steps=2, rank=4, alpha=8,
                                                 checkpoint_interval=2))
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        mid = self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")["data"][0][
            "fine_tuned_model_checkpoint"]
        root = self.s.env["DELTATUNE_ARTIFACT_ROOT"]
        shutil.rmtree(os.path.join(root, "jobs", j["id"], "checkpoints", "step-00000002",
                                   "adapter"))
        x = self.call("POST", f"/v1/models/{mid}/exports", {"format": "hf"}, want=202)

        def done():
            y = self.call("GET", f"/v1/models/{mid}/exports/{x['id']}")
            return y if y["status"] in ("succeeded", "failed") else None
        y = self.wait_until("the hf export", done, timeout=120)
        self.assertEqual(y["status"], "failed", y)
        self.assertIn(mid, y["error"])
        self.assertIn("adapter", y["error"])
        self.assertNotIn(root, y["error"])
        j2 = self.create_job(self.file, method=hp("lora", max_steps=1), model=mid)
        j2 = self.wait(j2["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j2["status"], "failed", j2)
        self.assertEqual((j2["error"]["code"], j2["error"]["param"]), ("model_unavailable", "model"),
                         j2)
        self.assertIn("adapter", j2["error"]["message"])
        self.assertNotIn(root, j2["error"]["message"])
        print(f"\n  failed merge: {y['error']}\n  failed job: {j2['error']['message']}",
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
