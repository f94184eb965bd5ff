"""Fine-tunes publish their PEFT adapter: a `lora` job's adapter and a
`delta_lora` job's exact rank-2r adapter are files of the fine-tuned model
under the prefix adapter/, listed by GET /v1/models/{id}/files with sha256,
served one by one, and `deltatune models download ID --adapter` fetches only
them. The module takes about 25 s on this machine.

    BUILD=build python3 -m unittest tests.integration.test_adapters -v
"""
import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, hp, sha256, start_stack  # noqa: E402

S = None


def setUpModule():
    global S
    S = StackTest.s = start_stack()


def tearDownModule():
    if S:
        S.stop()


class Adapters(StackTest):
    def train(self, method, **kw):
        f = self.upload_ok()
        if method != "full":
            kw.update(rank=4, alpha=8)
        j = self.create_job(f["id"], method=hp(method, max_steps=4, **kw))
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        return j["fine_tuned_model"]

    def adapter_files(self, model):
        files = {x["name"]: x for x in self.call("GET", f"/v1/models/{model}/files")["data"]}
        self.assertIn("model.safetensors", files)  # the merged model is still there
        ad = {k: v for k, v in files.items() if k.startswith("adapter/")}
        self.assertIn("adapter/adapter_config.json", ad, sorted(files))
        self.assertIn("adapter/adapter_model.safetensors", ad, sorted(files))
        blobs = {}
        for name, x in ad.items():
            self.assertRegex(x["sha256"], r"^[0-9a-f]{64}$")
            b = self.call("GET", f"/v1/models/{model}/files/{name}", raw=True)[1]
            self.assertEqual(len(b), x["bytes"], name)
            self.assertEqual(sha256(b), x["sha256"], name)
            blobs[name] = b
        # --adapter: only the adapter's files, into DIR itself
        out = tempfile.mkdtemp(prefix="dt_adapter_dl_")
        try:
            r = self.s.cli("models", "download", model, "--adapter", "-o", out, "--json")
            got = {x["name"]: x for x in map(json.loads, r.stdout.splitlines())}
            self.assertEqual(sorted(got), sorted(ad))
            self.assertEqual(sorted(os.listdir(out)), sorted(n[len("adapter/"):] for n in ad))
            for name, x in ad.items():
                with open(os.path.join(out, name[len("adapter/"):]), "rb") as fh:
                    self.assertEqual(sha256(fh.read()), x["sha256"], name)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return json.loads(blobs["adapter/adapter_config.json"])

    def test_lora_job_publishes_its_adapter(self):
        """About 10 s."""
        cfg = self.adapter_files(self.train("lora"))
        self.assertEqual(cfg["peft_type"], "LORA")
        # GPT-2's q and v are row slices of c_attn: one block-structured
        # adapter on c_attn of rank 2 x 4, alpha scaled alike (s = 8/4)
        self.assertEqual(cfg["r"], 8)
        self.assertEqual(cfg["lora_alpha"], 16)

    def test_delta_lora_job_publishes_the_exact_rank_2r_adapter(self):
        """About 10 s."""
        cfg = self.adapter_files(self.train("delta_lora", start_step=2))
        self.assertEqual(cfg["peft_type"], "LORA")
        # r' = 2r and alpha' = 2 alpha (s' = s), on the c_attn block of q, v
        self.assertEqual(cfg["r"], 16)
        self.assertEqual(cfg["lora_alpha"], 32)

    def test_full_job_has_no_adapter(self):
        """About 8 s."""
        m = self.train("full")
        files = [x["name"] for x in self.call("GET", f"/v1/models/{m}/files")["data"]]
        self.assertFalse([n for n in files if n.startswith("adapter/")], files)
        r = self.s.cli("models", "download", m, "--adapter", "-o", "/nonexistent-dir", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no adapter", r.stderr)


if __name__ == "__main__":
    unittest.main()
