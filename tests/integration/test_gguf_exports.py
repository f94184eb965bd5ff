"""GGUF exports on request: POST /v1/models/{id}/exports {"format": "gguf",
"type": ...} is 202 with a queued export that a real worker builds into the
fine-tuned model's directory as model.gguf; when it has succeeded the file is
listed by GET /v1/models/{id}/files with its sha256, downloads with that
digest, is a GGUF v3 Llama file of the asked type, and counts toward the
owner's storage. Bad format/type are 400s naming the field, another owner's
model is a 404, a base model a 400, an owner over its storage a 413, and an
export the writer refuses ends failed naming the reason. About
30 s (one stack, one short LoRA job on a tiny Llama)."""
import os
import struct
import sys
import tempfile
import shutil
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, start_stack, hp, sha256, TRAIN_ROWS  # noqa: E402
from test_models_info import tiny_llama  # noqa: E402

S = None
TMP = None


def setUpModule():
    global S, TMP
    S = start_stack()
    StackTest.s = S
    TMP = tempfile.mkdtemp(prefix="dt-gguf-it-")


def tearDownModule():
    if S:
        S.stop()
    if TMP:
        shutil.rmtree(TMP, ignore_errors=True)


def gguf_summary(blob):
    """(version, metadata {key: scalar or str}, tensors {name: type id}) of a
    GGUF file, read with the standard library (arrays skipped)."""
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from("<" + fmt, blob, off)
        off += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal off
        n = take("Q")
        s = blob[off:off + n].decode()
        off += n
        return s

    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        nonlocal off
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            for _ in range(n):
                value(et)
            return None
        return take(sizes[t])

    assert blob[:4] == b"GGUF", blob[:4]
    off = 4
    version, nt, nkv = take("I"), take("Q"), take("Q")
    meta = {}
    for _ in range(nkv):
        k = string()
        meta[k] = value(take("I"))
    tensors = {}
    for _ in range(nt):
        name = string()
        nd = take("I")
        for _ in range(nd):
            take("Q")
        tensors[name] = take("I")
        take("Q")
    return version, meta, tensors


class GGUFExports(StackTest):
    @classmethod
    def setUpClass(cls):
        d = tiny_llama(os.path.join(TMP, "tiny-llama"))
        cls.s.cli("models", "add", "--id", "tiny-llama", "--path", d)
        st, _, f = cls.s.upload(TRAIN_ROWS)
        assert st == 200, f
        st, _, j = cls.s.api("POST", "/v1/fine_tuning/jobs",
                             {"model": "tiny-llama", "training_file": f["id"],
                              "method": hp("lora", max_steps=3)})
        assert st == 200, j
        j = cls.s.wait_job(j["id"], {"succeeded", "failed", "cancelled"})
        assert j["status"] == "succeeded", j
        cls.ft = j["fine_tuned_model"]

    def export_path(self, model=None):
        return f"/v1/models/{model or self.ft}/exports"

    def test_a_bad_requests_name_the_field(self):
        """format and type are checked (400 naming them); another owner's
        model is 404; a base model is 400."""
        p = self.export_path()
        self.err("POST", p, {}, param="format")
        self.err("POST", p, {"format": "ggml"}, param="format")
        e = self.err("POST", p, {"format": "gguf", "type": "q5_k"}, param="type")
        self.assertIn("f16, q8_0 or q4_0", e["message"])
        self.err("POST", p, {"format": "gguf", "type": 8}, param="type")
        self.err("POST", p, {"format": "gguf", "dtype": "f16"}, param="dtype")
        other = self.s.new_key("gguf-other")
        self.err("POST", p, {"format": "gguf", "type": "q8_0"}, want=404, key=other)
        self.err("GET", p, want=404, key=other)
        e = self.err("POST", self.export_path("tiny-llama"), {"format": "gguf"})
        self.assertIn("base model", e["message"])
        self.assertEqual(self.count("model_exports"), 0)

    def test_b_export_listed_downloadable_counted(self):
        """q8_0: 202 queued, built by the worker, listed with sha256,
        downloaded with that digest, a GGUF v3 llama file with Q8_0
        matrices, counted in GET /v1/usage."""
        before = self.call("GET", "/v1/usage")["storage_bytes"]
        x = self.call("POST", self.export_path(), {"format": "gguf", "type": "q8_0"}, want=202)
        self.assertEqual((x["object"], x["model"], x["format"], x["type"], x["file"]),
                         ("model.export", self.ft, "gguf", "q8_0", "model.gguf"), x)
        self.assertIn(x["status"], ("queued", "running"), x)
        self.assertTrue(x["id"].startswith("export-"), x)

        def done():
            y = self.call("GET", f"{self.export_path()}/{x['id']}")
            return y if y["status"] in ("succeeded", "failed") else None
        y = self.wait_until("the export", done, timeout=120)
        self.assertEqual(y["status"], "succeeded", y)
        self.assertIsNotNone(y["finished_at"], y)
        listed = self.call("GET", self.export_path())["data"]
        self.assertEqual([z["id"] for z in listed], [x["id"]])
        files = {f["name"]: f for f in self.call("GET", f"/v1/models/{self.ft}/files")["data"]}
        self.assertIn("model.gguf", files)
        self.assertEqual(files["model.gguf"]["bytes"], y["bytes"])
        _, blob = self.call("GET", f"/v1/models/{self.ft}/files/model.gguf", raw=True)
        self.assertEqual(sha256(blob), files["model.gguf"]["sha256"])
        self.assertEqual(len(blob), y["bytes"])
        version, meta, tensors = gguf_summary(blob)
        self.assertEqual(version, 3)
        self.assertEqual(meta["general.architecture"], "llama")
        self.assertEqual(meta["general.file_type"], 7)  # mostly Q8_0
        self.assertEqual(meta["llama.block_count"], 2)
        self.assertEqual(meta["tokenizer.ggml.model"], "gpt2")
        self.assertEqual(tensors["blk.0.ffn_up.weight"], 8)  # Q8_0
        self.assertEqual(tensors["blk.0.attn_norm.weight"], 0)  # F32
        after = self.call("GET", "/v1/usage")["storage_bytes"]
        self.assertGreaterEqual(after - before, y["bytes"])

    def test_c_storage_limit(self):
        """An owner at its storage limit gets a 413 and nothing is queued."""
        owner = "gguf-full"
        key = self.s.new_key(owner)
        self.s.cli("owners", "set", owner, "--max-storage", "1")
        # The owner's stored bytes (a 10-byte file) and a fine-tuned model of
        # its own (the default owner's model directory), set up in the
        # database directly.
        self.s.psql(f"INSERT INTO models (id, kind, owner, base, job_id, path) "
                    f"SELECT 'ft:gguf-full-model', 'fine_tuned', '{owner}', base, job_id, path "
                    f"FROM models WHERE id = '{self.ft}'")
        self.s.psql(f"INSERT INTO files (id, owner, filename, purpose, bytes, status, sha256, "
                    f"path) VALUES ('file-ggufbig', '{owner}', 'x', 'fine-tune', 10, "
                    f"'processed', '', 'x')")
        e = self.err("POST", self.export_path("ft:gguf-full-model"), {"format": "gguf"},
                     want=413, key=key)
        self.assertIn("max_storage", e["message"])
        self.assertEqual(self.count("model_exports", "owner = 'gguf-full'"), 0)

    def test_d_failed_export_names_the_reason(self):
        """A model the writer cannot write (here a directory whose
        config.json names an architecture the engine does not know) ends
        `failed` with the reason, without the server's paths, and lists no
        model.gguf."""
        d = os.path.join(TMP, "bad-model")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write('{"model_type": "bert", "architectures": ["BertModel"]}')
        owner = self.call("GET", "/v1/usage")["owner"]
        self.s.psql(f"INSERT INTO models (id, kind, owner, base, job_id, path) VALUES "
                    f"('ft:gguf-bad', 'fine_tuned', '{owner}', 'tiny-llama', '', '{d}')")
        x = self.call("POST", self.export_path("ft:gguf-bad"), {"format": "gguf", "type": "q4_0"},
                      want=202)

        def done():
            y = self.call("GET", f"{self.export_path('ft:gguf-bad')}/{x['id']}")
            return y if y["status"] in ("succeeded", "failed") else None
        y = self.wait_until("the export", done, timeout=60)
        self.assertEqual(y["status"], "failed", y)
        self.assertTrue(y["error"], y)
        self.assertNotIn(d, y["error"], y)
        self.assertIsNone(y["bytes"], y)
        names = [f["name"] for f in self.call("GET", "/v1/models/ft:gguf-bad/files")["data"]]
        self.assertNotIn("model.gguf", names)
        print(f"\n  failed export: {y['error']}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
