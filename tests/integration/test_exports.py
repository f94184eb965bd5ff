"""The merged model a job exports: hyperparameters.export_dtype sets the
dtype of its safetensors and config.json's torch_dtype; a bad value is a 400
naming the field. About 15 s on this machine (one stack, one 3-step job)."""
import json
import os
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, hp, sha256, TINY_ID  # noqa: E402
from common import setUpModule, tearDownModule  # noqa: E402,F401 (one stack for the module)


def safetensors_dtypes(blob):
    n = struct.unpack("<Q", blob[:8])[0]
    hdr = json.loads(blob[8:8 + n])
    return {v["dtype"] for k, v in hdr.items() if k != "__metadata__"}


class ExportDtype(StackTest):
    def test_export_dtype_float16_and_bad_value(self):
        """A job with export_dtype float16 exports F16 tensors and
        torch_dtype float16, listed with sha256; "float64" is a 400 naming
        hyperparameters.export_dtype. About 14 s."""
        f = self.upload_ok()
        st, _, e = self.s.api("POST", "/v1/fine_tuning/jobs", {
            "model": TINY_ID, "training_file": f["id"],
            "method": hp("full", max_steps=3, export_dtype="float64")})
        self.assertEqual(st, 400, e)
        self.assertEqual(e["error"]["param"], "method.full.hyperparameters.export_dtype", e)
        self.assertIn("bfloat16", e["error"]["message"])
        j = self.create_job(f["id"], hp("full", max_steps=3, export_dtype="float16"))
        self.assertEqual(j["method"]["full"]["hyperparameters"]["export_dtype"], "float16", j)
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        model = j["fine_tuned_model"]
        files = {x["name"]: x for x in self.call("GET", f"/v1/models/{model}/files")["data"]}
        _, cfg = self.call("GET", f"/v1/models/{model}/files/config.json", raw=True)
        self.assertEqual(json.loads(cfg)["torch_dtype"], "float16")
        _, st_blob = self.call("GET", f"/v1/models/{model}/files/model.safetensors", raw=True)
        self.assertEqual(sha256(st_blob), files["model.safetensors"]["sha256"])
        self.assertEqual(safetensors_dtypes(st_blob), {"F16"})


if __name__ == "__main__":
    unittest.main()
