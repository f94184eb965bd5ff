"""hyperparameters.packing through the service: a job with packing true is
stored, shown on the job object and trained by the worker (--packing) to
success; absent it is false; a value that is not a boolean is a 400 naming
the field. About 15 s on this machine (one stack, one 3-step job)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, hp, TINY_ID  # noqa: E402
from common import setUpModule, tearDownModule  # noqa: E402,F401 (one stack for the module)


class Packing(StackTest):
    def test_packed_job_succeeds_and_bad_value_is_named(self):
        f = self.upload_ok()
        st, _, e = self.s.api("POST", "/v1/fine_tuning/jobs", {
            "model": TINY_ID, "training_file": f["id"],
            "method": hp("lora", max_steps=3, packing="yes")})
        self.assertEqual(st, 400, e)
        self.assertEqual(e["error"]["param"], "method.lora.hyperparameters.packing", e)
        plain = self.create_job(f["id"], hp("lora", max_steps=1))
        self.assertIs(plain["method"]["lora"]["hyperparameters"]["packing"], False, plain)
        j = self.create_job(f["id"], hp("lora", max_steps=3, packing=True))
        self.assertIs(j["method"]["lora"]["hyperparameters"]["packing"], True, j)
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        self.assertIs(j["method"]["lora"]["hyperparameters"]["packing"], True, j)
        self.assertEqual(j["progress"]["step"], 3, j)
        self.assertGreater(j["progress"]["tokens_per_second"], 0, j)


if __name__ == "__main__":
    unittest.main()
