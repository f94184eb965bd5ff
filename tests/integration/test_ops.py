"""Operations endpoints: /healthz, /readyz, /metrics (Prometheus text with the
documented series), /v1/openapi.json (the contract, as JSON) - all public."""
import json
import os
import re
import time
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, start_stack  # noqa: E402

S = None


def setUpModule():
    global S
    S = start_stack()
    StackTest.s = S


def tearDownModule():
    if S:
        S.stop()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')


class Ops(StackTest):
    def test_health(self):
        st, _, b = self.s.api("GET", "/healthz", key=False)
        self.assertEqual(st, 200, b)
        st, _, b = self.s.api("GET", "/readyz", key=False)
        self.assertEqual(st, 200, b)

    def test_metrics(self):
        self.call("GET", "/v1/models")
        self.s.api("GET", "/v1/files/file-nope")
        # A request is counted when MHD reports it complete, which can come
        # a moment after the client has read the whole reply: scrape until
        # both are in (or 5 s pass, and the assertions below say what is not).
        deadline = time.time() + 5
        while True:
            st, hd, b = self.s.api("GET", "/metrics", key=False, raw=True)
            text = b.decode()
            if st != 200 or time.time() > deadline or (
                    'route="models.list",status="200"' in text and 'status="404"' in text):
                break
            time.sleep(0.05)
        self.assertEqual(st, 200)
        self.assertTrue(hd["content-type"].startswith("text/plain"), hd)
        text = b.decode()
        series, types = {}, {}
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                types[name] = kind
                continue
            if line.startswith("#"):
                continue
            m = SAMPLE.match(line)
            self.assertTrue(m, f"not a Prometheus sample: {line!r}")
            series.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
        for name, kind in (("deltatune_http_requests_total", "counter"),
                           ("deltatune_http_request_duration_seconds", "histogram"),
                           ("deltatune_jobs", "gauge"), ("deltatune_queue_depth", "gauge"),
                           ("deltatune_redis_up", "gauge"), ("deltatune_db_up", "gauge"),
                           ("deltatune_training_tokens_per_second", "gauge"),
                           ("deltatune_worker_heartbeat_age_seconds", "gauge"),
                           ("deltatune_workers_alive", "gauge")):
            self.assertEqual(types.get(name), kind, name)
        self.assertEqual(series["deltatune_db_up"], [("", 1.0)])
        self.assertEqual(series["deltatune_redis_up"], [("", 1.0)])
        self.assertGreaterEqual(series["deltatune_workers_alive"][0][1], 1)
        req = dict(series["deltatune_http_requests_total"])
        self.assertGreaterEqual(req.get('{route="models.list",status="200"}', 0), 1, req)
        self.assertTrue(any('status="404"' in k for k in req), req)
        self.assertTrue(any(k.startswith("deltatune_http_request_duration_seconds_bucket") for k in series))
        self.assertIn("deltatune_http_request_duration_seconds_count", series)
        statuses = {k for k, _ in series["deltatune_jobs"]}
        for s in ("queued", "running", "succeeded", "failed", "cancelled", "paused"):
            self.assertIn(f'{{status="{s}"}}', statuses)

    def test_openapi(self):
        st, hd, doc = self.s.api("GET", "/v1/openapi.json", key=False)
        self.assertEqual(st, 200)
        self.assertIsInstance(doc, dict, "openapi.json is not JSON")
        self.assertTrue(doc["openapi"].startswith("3."))
        for p in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/{job_id}/cancel",
                  "/v1/models/{model_id}/files/{name}", "/healthz", "/metrics"):
            self.assertIn(p, doc["paths"])
        self.assertIn("Hyperparameters", doc["components"]["schemas"])
        json.dumps(doc)

    def test_unknown_route_and_method(self):
        self.err("GET", "/v1/nothing", want=404)
        st, _, _ = self.s.api("PUT", "/v1/files")
        self.assertEqual(st, 405)


if __name__ == "__main__":
    unittest.main()
