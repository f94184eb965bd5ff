"""Service operations on a real stack (tests/harness/stack.py): per-key rate
limiting (429, Retry-After, x-ratelimit-*), files' expires_after (hidden,
then removed by the rescuer's pass), /metrics contents, and no API key in
the logs.

    BUILD=build python3 -m unittest tests/integration/test_service_ops.py -v
"""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
from stack import Stack, TRAIN_ROWS  # noqa: E402


def multipart(fields, content, filename="train.jsonl"):
    b = "----dtops5c2e"
    parts = b""
    for k, v in fields.items():
        parts += f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
    parts += (f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
              f"Content-Type: application/jsonl\r\n\r\n").encode() + content.encode() + \
        f"\r\n--{b}--\r\n".encode()
    return parts, {"Content-Type": f"multipart/form-data; boundary={b}"}


def wait_for(cond, timeout=60, what="condition"):
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def api(s, *args, **kw):
    """s.api, waiting out 429s (these tests share small per-key buckets)."""
    end = time.time() + 60
    while True:
        r = s.api(*args, **kw)
        if r[0] != 429 or time.time() > end:
            return r
        time.sleep(0.5)


class ServiceOps(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # 1 request/s, bursts of 5: a handful of quick requests reach the limit
        cls.s = Stack(env={"DELTATUNE_RATE_LIMIT": "1", "DELTATUNE_RATE_BURST": "5",
                           "DELTATUNE_RESCUE_INTERVAL": "1"}).start()

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def test_rate_limit_answers_429_per_key(self):
        s = self.s
        key = s.new_key("ratelimited")
        statuses, last = [], None
        for _ in range(12):  # 12 requests take far less than the 7 s that would refill 7 tokens
            st, h, body = s.api("GET", "/v1/fine_tuning/jobs", key=key)
            statuses.append(st)
            if st == 429:
                last = (h, body)
        self.assertEqual(statuses[0], 200)
        self.assertIn(429, statuses)
        self.assertEqual(set(statuses), {200, 429})
        h, body = last
        self.assertEqual(body["error"]["code"], "rate_limit_exceeded")
        self.assertEqual(body["error"]["type"], "rate_limit_error")
        self.assertGreaterEqual(int(h["retry-after"]), 1)
        self.assertEqual(h["x-ratelimit-limit-requests"], "5")
        self.assertEqual(h["x-ratelimit-remaining-requests"], "0")
        self.assertTrue(h["x-ratelimit-reset-requests"].endswith("s"))
        # another key has its own bucket; public routes are not limited
        other = s.new_key("ratelimited-other")
        st, h, _ = s.api("GET", "/v1/fine_tuning/jobs", key=other)
        self.assertEqual(st, 200)
        self.assertEqual(h["x-ratelimit-limit-requests"], "5")
        for _ in range(8):
            self.assertEqual(s.api("GET", "/healthz", key=False)[0], 200)
        # the bucket refills: within a few seconds the key works again
        wait_for(lambda: s.api("GET", "/v1/fine_tuning/jobs", key=key)[0] == 200, 30,
                 "the bucket to refill")

    def test_expired_files_are_hidden_and_removed(self):
        s = self.s
        key = s.new_key("expiry")
        body, hdrs = multipart({"purpose": "fine-tune", "expires_after[anchor]": "created_at",
                                "expires_after[seconds]": "3600"}, TRAIN_ROWS)
        st, _, f = api(s, "POST", "/v1/files", body, key=key, headers=hdrs)
        self.assertEqual(st, 200, f)
        self.assertGreater(f["expires_at"], f["created_at"] + 3500)
        body, hdrs = multipart({"purpose": "fine-tune", "expires_after[seconds]": "60"}, TRAIN_ROWS)
        st, _, bad = api(s, "POST", "/v1/files", body, key=key, headers=hdrs)
        self.assertEqual(st, 400)
        self.assertIn(bad["error"]["param"], ("expires_after[seconds]", "expires_after.seconds"))
        path = os.path.join(s.run, "artifacts", "files", f["id"] + ".jsonl")
        self.assertTrue(os.path.exists(path))
        # the hour passes (in the database)
        s.psql(f"UPDATE files SET expires_at = now() - interval '1 second' WHERE id = '{f['id']}'")
        wait_for(lambda: not os.path.exists(path), 60, "the expired file to be removed")
        st, _, _ = api(s, "GET", f"/v1/files/{f['id']}", key=key)
        self.assertEqual(st, 404)
        st, _, lst = api(s, "GET", "/v1/files", key=key)
        self.assertEqual(st, 200)
        self.assertNotIn(f["id"], [x["id"] for x in lst["data"]])
        self.assertIn("removed 1 expired file", s.log("server"))

    def test_succeeded_job_has_a_results_csv(self):
        s = self.s
        key = s.new_key("results")
        body, hdrs = multipart({"purpose": "fine-tune"}, TRAIN_ROWS)
        st, _, f = api(s, "POST", "/v1/files", body, key=key, headers=hdrs)
        self.assertEqual(st, 200, f)
        st, _, j = api(s, "POST", "/v1/fine_tuning/jobs", {
            "model": s.model_id, "training_file": f["id"],
            "method": {"type": "lora", "lora": {"hyperparameters": {"max_steps": 3, "batch_size": 2}}}},
            key=key)
        self.assertEqual(st, 200, j)
        self.assertEqual(j["result_files"], [])
        end = time.time() + 180
        while j["status"] not in ("succeeded", "failed", "cancelled") and time.time() < end:
            time.sleep(1)
            j = api(s, "GET", f"/v1/fine_tuning/jobs/{j['id']}", key=key)[2]
        self.assertEqual(j["status"], "succeeded", j)
        self.assertEqual(len(j["result_files"]), 1)
        rid = j["result_files"][0]
        st, _, rf = api(s, "GET", f"/v1/files/{rid}", key=key)
        self.assertEqual(st, 200, rf)
        self.assertEqual((rf["object"], rf["purpose"], rf["filename"], rf["status"]),
                         ("file", "fine-tune-results", "step_metrics.csv", "processed"))
        st, h, csv = api(s, "GET", f"/v1/files/{rid}/content", key=key, raw=True)
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/csv"))
        self.assertEqual(len(csv), rf["bytes"])
        lines = csv.decode().splitlines()
        self.assertEqual(lines[0].split(",")[:5], ["step", "train_loss", "train_accuracy",
                                                   "valid_loss", "valid_mean_token_accuracy"])
        steps = [int(l.split(",")[0]) for l in lines[1:]]
        self.assertEqual(steps, sorted(set(steps)))
        self.assertEqual(steps[-1], 3)
        self.assertGreater(float(lines[-1].split(",")[1]), 0)  # a training loss
        if os.environ.get("VERBOSE_CSV"):
            print(csv.decode())
        # the owner's only: another key gets 404
        self.assertEqual(api(s, "GET", f"/v1/files/{rid}", key=s.key)[0], 404)
        self.assertEqual(api(s, "GET", f"/v1/files/{rid}/content", key=s.key)[0], 404)

    def test_metrics_and_no_key_in_logs(self):
        s = self.s
        self.assertEqual(api(s, "GET", "/v1/models")[0], 200)
        st, _, text = s.api("GET", "/metrics", key=False, raw=True)
        self.assertEqual(st, 200)
        text = text.decode()
        for needle in ('deltatune_http_requests_total{route="models.list",status="200"}',
                       'deltatune_http_request_duration_seconds_bucket{route="models.list",le="+Inf"}',
                       'deltatune_jobs{status="queued"}', "deltatune_queue_depth ",
                       "deltatune_worker_heartbeat_age_seconds{", "deltatune_training_tokens_per_second "):
            self.assertIn(needle, text)
        for name in ("server", "worker"):
            log = s.log(name)
            self.assertNotIn(s.key, log)
            self.assertNotIn(s.key.split("-")[-1], log)  # the secret part alone
        self.assertNotIn(s.key.split("-")[-1], s.psql("SELECT string_agg(hash, ' ') FROM api_keys"))


if __name__ == "__main__":
    unittest.main()
