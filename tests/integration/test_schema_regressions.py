"""Regressions from the schemathesis run (tests/schema/): the served contract
(GET /v1/openapi.json) documents what the server really answers, and carries
the OpenAPI links the stateful run follows."""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "harness"))
from stack import Stack  # noqa: E402


class SchemaRegressions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Stack(model="tiny")
        cls.s.start()
        st, _, body = cls.s.api("GET", "/v1/openapi.json")
        assert st == 200, st
        cls.doc = json.loads(body) if isinstance(body, (str, bytes)) else body

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def test_401_is_real_and_documented(self):
        st, _, _ = self.s.api("GET", "/v1/files/file-85724fb8573f9157a9a8c7b5", key=False)
        self.assertEqual(st, 401)
        for path, item in self.doc["paths"].items():
            if not path.startswith("/v1/") or path == "/v1/openapi.json":
                continue
            for m, op in item.items():
                if isinstance(op, dict) and "responses" in op:
                    self.assertIn("401", op["responses"], f"{m.upper()} {path} lacks 401")

    def test_long_idempotency_key_is_documented_400(self):
        st, _, body = self.s.api("POST", "/v1/fine_tuning/jobs/ftjob-0123456789abcdef01234567/pause",
                                 headers={"Idempotency-Key": "k" * 300})
        self.assertEqual(st, 400, body)
        for op in ("cancel", "pause", "resume"):
            r = self.doc["paths"]["/v1/fine_tuning/jobs/{job_id}/" + op]["post"]["responses"]
            self.assertIn("400", r)
            self.assertIn("422", r)

    def test_links_present(self):
        l1 = self.doc["paths"]["/v1/files"]["post"]["responses"]["200"]["links"]
        self.assertEqual({v["operationId"] for v in l1.values()}, {"retrieveFile", "downloadFile", "deleteFile"})
        l2 = self.doc["paths"]["/v1/fine_tuning/jobs"]["post"]["responses"]["200"]["links"]
        self.assertEqual(len(l2), 6)


if __name__ == "__main__":
    unittest.main()
