"""Fine-tunes publish their PEFT adapter: a `lora` job's adapter and a
`delta_lora` job's exact rank-2r adapter are files of the fine-tuned model
under the prefix adapter/, listed by GET /v1/models/{id}/files with sha256,
served one by one, and `deltatune models download ID --adapter` fetches only
them. Checkpoints of lora / delta_lora jobs hold their adapter the same
way, counted in the owner's storage. The module takes about 25 s on this
machine.

    BUILD=build python3 -m unittest tests.integration.test_adapters -v
"""
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, hp, sha256  # noqa: E402
from common import setUpModule, tearDownModule  # noqa: E402,F401 (one stack for the module)


def dir_bytes(path):
    """Bytes of the plain files under path (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


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
        self.err("GET", f"/v1/models/{m}/archive?part=adapter", want=404, param="part")
        r = self.s.cli("models", "download", m, "--adapter", "-o", "/nonexistent-dir", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no adapter", r.stderr)

    def test_checkpoints_are_adapters_and_ids_stay_readable(self):
        """Each checkpoint of a delta_lora job (GET /v1/fine_tuning/jobs/{id}/checkpoints,
        fine_tuned_model_checkpoint) lists its exact adapter as adapter/ files
        with sha256, downloadable by the CLI; the last one's adapter is the
        job's adapter byte for byte. A job on the fine-tuned model gets an id
        naming the original base (no ft:ft:). About 20 s."""
        f = self.upload_ok()
        j = self.create_job(f["id"], method=hp("delta_lora", max_steps=4, rank=4, alpha=8,
                                               start_step=1, checkpoint_interval=2))
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        final = j["fine_tuned_model"]
        cks = self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")["data"]
        self.assertEqual(sorted(c["step_number"] for c in cks), [2, 4], cks)
        fin = {x["name"]: x for x in self.call("GET", f"/v1/models/{final}/files")["data"]}
        shas = {}
        for c in cks:
            mid = c["fine_tuned_model_checkpoint"]
            self.assertTrue(mid.endswith(f":ckpt-step-{c['step_number']}"), mid)
            files = {x["name"]: x for x in self.call("GET", f"/v1/models/{mid}/files")["data"]}
            for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
                self.assertIn(name, files, sorted(files))
                b = self.call("GET", f"/v1/models/{mid}/files/{name}", raw=True)[1]
                self.assertEqual(sha256(b), files[name]["sha256"], name)
            cfg = json.loads(self.call("GET", f"/v1/models/{mid}/files/adapter/adapter_config.json",
                                       raw=True)[1])
            self.assertEqual((cfg["peft_type"], cfg["r"], cfg["lora_alpha"]), ("LORA", 16, 32))
            shas[c["step_number"]] = files["adapter/adapter_model.safetensors"]["sha256"]
        self.assertEqual(shas[4], fin["adapter/adapter_model.safetensors"]["sha256"])
        # GET /v1/models lists the fine-tune, not its checkpoints (as OpenAI);
        # a checkpoint answers by id
        listed = [m["id"] for m in self.call("GET", "/v1/models")["data"]]
        self.assertIn(final, listed)
        for c in cks:
            self.assertNotIn(c["fine_tuned_model_checkpoint"], listed)
            self.assertEqual(self.call("GET", f"/v1/models/{c['fine_tuned_model_checkpoint']}")["id"],
                             c["fine_tuned_model_checkpoint"])
        # the archive's parts: the checkpoint's adapter alone; its merged
        # model only once an hf export built it (test_checkpoint_models);
        # everything (training state and adapter) by default; an unknown
        # part is a 400 naming it
        mid = cks[0]["fine_tuned_model_checkpoint"]
        for part, want in (("adapter", {"adapter_config.json", "adapter_model.safetensors"}),
                           ("", {"weights.safetensors", "adapter/adapter_config.json"})):
            b = self.call("GET", f"/v1/models/{mid}/archive?part={part}", raw=True)[1]
            with tarfile.open(fileobj=io.BytesIO(b)) as tf:
                names = {m.name.split("/", 1)[1] for m in tf.getmembers() if m.isfile()}
            self.assertTrue(want <= names, (part, names))
        self.err("GET", f"/v1/models/{mid}/archive?part=merged", want=404, param="part")
        self.err("GET", f"/v1/models/{mid}/archive?part=gguf", param="part")
        self.assertNotEqual(shas[2], shas[4])
        out = tempfile.mkdtemp(prefix="dt_ckpt_adapter_dl_")
        try:
            mid = [c for c in cks if c["step_number"] == 2][0]["fine_tuned_model_checkpoint"]
            self.s.cli("models", "download", mid, "--adapter", "-o", out, "--json")
            self.assertIn("adapter_model.safetensors", os.listdir(out))
            with open(os.path.join(out, "adapter_model.safetensors"), "rb") as fh:
                self.assertEqual(sha256(fh.read()), shas[2])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        # storage: the checkpoints' adapters are on disk in the job's
        # directory, and /v1/usage counts the owner's job directories whole
        root = self.s.env["DELTATUNE_ARTIFACT_ROOT"]
        ad = [os.path.join(root, "jobs", j["id"], "checkpoints", f"step-{n:08d}", "adapter")
              for n in (2, 4)]
        ad_bytes = sum(dir_bytes(d) for d in ad)
        self.assertGreater(ad_bytes, 0)
        ids = self.s.psql(f"SELECT id FROM jobs WHERE owner = (SELECT owner FROM jobs "
                          f"WHERE id = '{j['id']}')").split()
        on_disk = sum(dir_bytes(os.path.join(root, "jobs", i)) for i in ids)
        self.assertEqual(self.call("GET", "/v1/usage")["job_bytes"], on_disk)
        self.assertGreaterEqual(on_disk, ad_bytes + dir_bytes(os.path.join(root, "jobs",
                                                                              j["id"], "adapter")))
        # readable ids: continuing from the fine-tune names the original base
        j2 = self.create_job(f["id"], method=hp("lora", max_steps=2, rank=4, alpha=8), model=final)
        j2 = self.wait(j2["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j2["status"], "succeeded", j2)
        base = final.split(":")[1]
        self.assertTrue(j2["fine_tuned_model"].startswith(f"ft:{base}:"), j2["fine_tuned_model"])
        self.assertNotIn("ft:ft:", j2["fine_tuned_model"])
        self.assertTrue(j2["fine_tuned_model"].endswith(":" + j2["id"]), j2["fine_tuned_model"])


if __name__ == "__main__":
    unittest.main()
