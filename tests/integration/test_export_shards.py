"""Merged models are sharded above DELTATUNE_EXPORT_SHARD_SIZE (the worker's
setting, default 5 GB as transformers): a job's merged model and a
checkpoint's hf export are model-0000i-of-0000n.safetensors files with
model.safetensors.index.json (metadata.total_size, a weight_map naming
every tensor's shard), each listed with sha256. About 15 s (one stack with a
1 MB shard size, one short job on the tiny GPT-2).

    BUILD=build python3 -m unittest tests/integration/test_export_shards.py -v
"""
import json
import os
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, hp, sha256, start_stack  # noqa: E402

S = None
SHARD = 1000000


def setUpModule():
    global S
    S = StackTest.s = start_stack(env={"DELTATUNE_EXPORT_SHARD_SIZE": str(SHARD)})


def tearDownModule():
    if S:
        S.stop()


class ExportShards(StackTest):
    def check_sharded(self, model, prefix=""):
        files = {f["name"]: f for f in self.call("GET", f"/v1/models/{model}/files")["data"]}
        self.assertNotIn(prefix + "model.safetensors", files, sorted(files))
        index = json.loads(self.call("GET", f"/v1/models/{model}/files/{prefix}"
                                     "model.safetensors.index.json", raw=True)[1])
        shards = sorted(n for n in files if n.startswith(prefix + "model-") and
                        n.endswith(".safetensors"))
        self.assertGreater(len(shards), 1, sorted(files))
        self.assertEqual(sorted({prefix + v for v in index["weight_map"].values()}), shards)
        total, names = 0, set()
        for n in shards:
            blob = self.call("GET", f"/v1/models/{model}/files/{n}", raw=True)[1]
            self.assertEqual(sha256(blob), files[n]["sha256"], n)
            hl = struct.unpack("<Q", blob[:8])[0]
            hdr = json.loads(blob[8:8 + hl])
            hdr.pop("__metadata__", None)
            if len(blob) - 8 - hl > SHARD:  # only a tensor larger than a shard is alone
                self.assertEqual(len(hdr), 1, (n, sorted(hdr)))
            total += len(blob) - 8 - hl
            for k in hdr:
                self.assertEqual(prefix + index["weight_map"][k], n, k)
                names.add(k)
        self.assertEqual(names, set(index["weight_map"]))
        self.assertEqual(index["metadata"]["total_size"], total)

    def test_job_and_checkpoint_merged_models_are_sharded(self):
        f = self.upload_ok()
        j = self.create_job(f["id"], method=hp("lora", max_steps=2, rank=4, alpha=8,
                                               checkpoint_interval=2))
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        self.check_sharded(j["fine_tuned_model"])
        ck = self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")["data"][0]
        mid = ck["fine_tuned_model_checkpoint"]
        x = self.call("POST", f"/v1/models/{mid}/exports", {"format": "hf"}, want=202)

        def done():
            y = self.call("GET", f"/v1/models/{mid}/exports/{x['id']}")
            return y if y["status"] in ("succeeded", "failed") else None
        y = self.wait_until("the hf export", done, timeout=120)
        self.assertEqual(y["status"], "succeeded", y)
        self.check_sharded(mid, "merged/")


if __name__ == "__main__":
    unittest.main()
