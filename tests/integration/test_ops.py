"""Operations endpoints: /healthz, /readyz, /metrics (Prometheus text with the
documented series, behind the ops token DELTATUNE_METRICS_TOKEN, its queries
indexed), /v1/openapi.json (the contract, as JSON); and the races and state
of issue 13: HEAD on downloads, model deletion while a job uses the model
(409), archives of models with long ids (pax), event streams closed when
their key is revoked.

    BUILD=build python3 -m unittest tests.integration.test_ops -v
"""
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import sys
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, TRAIN_ROWS, StackTest, TINY_ID, hp, start_stack  # noqa: E402

S = None
TOKEN = "ops-token-5d1c8e0f"  # DELTATUNE_METRICS_TOKEN of this module's stack
OPS = {"Authorization": "Bearer " + TOKEN}


def setUpModule():
    global S
    S = start_stack(env={"DELTATUNE_METRICS_TOKEN": TOKEN, "DELTATUNE_SSE_RECHECK_SECONDS": "1"})
    StackTest.s = S


def sql_of(name):
    """The text of a prepared statement of api/db_sql.c, by its name."""
    src = open(os.path.join(ROOT, "api", "db_sql.c")).read()
    m = re.search(r'\{"%s",\s*((?:"(?:[^"\\]|\\.)*"\s*)+)\}' % re.escape(name), src)
    assert m, f"no statement {name} in api/db_sql.c"
    return "".join(json.loads(x) for x in re.findall(r'"(?:[^"\\]|\\.)*"', m.group(1)))


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

    def test_model_info_read_once_per_change(self):
        """GET /v1/models shows each base's family and context length from
        its files; they are read once and again only when they change
        (deltatune_model_info_reads_total counts the reads). Under 1 s."""
        def reads():
            st, _, b = self.s.api("GET", "/metrics", key=False, raw=True, headers=OPS)
            self.assertEqual(st, 200)
            m = re.search(r"^deltatune_model_info_reads_total (\d+)$", b.decode(), re.M)
            self.assertTrue(m, "no deltatune_model_info_reads_total")
            return int(m.group(1))

        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "tiny-copy")
            shutil.copytree(os.path.join(ROOT, ".cache", "tiny-gpt2"), d)
            self.s.cli("models", "add", "--id", "tiny-info-copy", "--path", d)
            self.call("GET", "/v1/models")
            r0 = reads()
            for _ in range(3):
                got = [m for m in self.call("GET", "/v1/models")["data"]
                       if m["id"] == "tiny-info-copy"]
                self.assertEqual(got[0]["context_length"], 256, got)
            self.assertEqual(self.call("GET", "/v1/models/tiny-info-copy")["family"], "gpt2")
            self.assertEqual(reads(), r0, "the unchanged base was read again")
            cfg = os.path.join(d, "config.json")
            c = json.load(open(cfg))
            c["n_positions"] = 128
            with open(cfg + ".tmp", "w") as f:
                json.dump(c, f)
            os.replace(cfg + ".tmp", cfg)
            m = self.call("GET", "/v1/models/tiny-info-copy")
            self.assertEqual(m["context_length"], 128, m)
            self.assertEqual(reads(), r0 + 1)
            self.s.psql("DELETE FROM models WHERE id = 'tiny-info-copy'")

    def test_metrics(self):
        """A request is counted before its reply is queued, so one scrape right
        after it finds it (no waiting). Under 0.1 s."""
        self.call("GET", "/v1/models")
        self.s.api("GET", "/v1/files/file-nope")
        st, hd, b = self.s.api("GET", "/metrics", key=False, raw=True, headers=OPS)
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

    def test_metrics_counts_each_request_before_its_reply(self):
        """Eight clients at once each send a request of its own series
        (route, status) and then scrape: each request is in the next scrape
        (the count used to come after the reply, and a quick scrape missed
        it under load). About 2 s (up to 10 s under load)."""
        series = [("GET", "/healthz", "healthz", 200), ("GET", "/readyz", "readyz", 200),
                  ("GET", "/v1/openapi.json", "openapi", 200), ("GET", "/", "static.index", 200),
                  ("GET", "/v1/nothing", "unmatched", 404), ("GET", "/v1/models", "models.list", 401),
                  ("GET", "/v1/files", "files.list", 401), ("GET", "/v1/fine_tuning/jobs", "jobs.list", 401)]
        u = urllib.parse.urlsplit(self.s.url)

        def fetch(method, path, headers=None):
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            body = r.read()
            c.close()
            return r.status, body

        def count(route, status):
            st, b = fetch("GET", "/metrics", OPS)
            m = re.search(r'^deltatune_http_requests_total\{route="%s",status="%d"\} (\d+)$'
                          % (re.escape(route), status), b.decode(), re.M)
            return int(m.group(1)) if m else 0

        missed = []

        def client(method, path, route, status):
            for i in range(60):
                before = count(route, status)
                st, _ = fetch(method, path)
                if st != status:
                    missed.append(f"{path}: {st}")
                    return
                after = count(route, status)
                if after != before + 1:
                    missed.append(f"{route} {status}: request {i}: {before} -> {after}")
                    return
        threads = [threading.Thread(target=client, args=x) for x in series]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(missed, [])

    def test_metrics_needs_the_ops_token(self):
        """/metrics shows every owner's jobs: 401 without the ops token, with a
        wrong one, and with an API key. About 0.1 s."""
        for headers in (None, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer " + self.s.key}):
            st, hd, b = self.s.api("GET", "/metrics", key=False, headers=headers)
            self.assertEqual(st, 401, f"{b!r:.300}")
            self.assertIn("DELTATUNE_METRICS_TOKEN", b["error"]["message"])
            self.assertEqual(hd.get("www-authenticate"), "Bearer")
        self.assertEqual(self.s.api("GET", "/metrics", key=False, headers=OPS)[0], 200)

    def test_metrics_queries_skip_finished_jobs(self):
        """With 20000 finished jobs, /metrics counts them right, and its queries
        (and the in-use check of a model delete) read only unfinished rows
        (EXPLAIN ANALYZE of the server's statements). About 5 s."""
        f = self.upload_ok()
        j = self.create_job(f["id"], hp(max_steps=1))
        self.call("POST", f"/v1/fine_tuning/jobs/{j['id']}/cancel")
        self.wait(j["id"], {"cancelled", "succeeded", "failed"})
        n = 20000
        self.s.psql(
            "INSERT INTO jobs SELECT r.* FROM jobs j, generate_series(1, %d) g, LATERAL "
            "jsonb_populate_record(j, jsonb_build_object('id', 'ftjob-bulk' || g, 'seq', "
            "nextval(pg_get_serial_sequence('jobs', 'seq')), 'status', 'succeeded', 'owner', "
            "'bulk')) r WHERE j.id = '%s'; ANALYZE jobs" % (n, j["id"]))
        try:
            want = {st: int(c) for st, c in (l.split("|") for l in self.s.psql(
                "SELECT status, count(*) FROM jobs GROUP BY status").splitlines())}
            st, _, b = self.s.api("GET", "/metrics", key=False, raw=True, headers=OPS)
            self.assertEqual(st, 200)
            got = dict(re.findall(r'^deltatune_jobs\{status="(\w+)"\} (\d+)$', b.decode(), re.M))
            for status in ("queued", "running", "succeeded", "failed", "cancelled", "paused"):
                self.assertEqual(int(got[status]), want.get(status, 0), (status, got, want))
            self.assertGreaterEqual(int(got["succeeded"]), n)
            for name, params in (("stats_jobs", ()), ("stats_job_totals", ()), ("stats_tps", ()),
                                 ("model_in_use", (TINY_ID,))):
                q = sql_of(name)
                for i, p in enumerate(params, 1):
                    q = q.replace(f"${i}", "'" + p.replace("'", "''") + "'")
                plan = json.loads(self.s.psql(f"EXPLAIN (ANALYZE, FORMAT JSON) {q}"))[0]["Plan"]
                read, nodes = 0, [plan]
                while nodes:
                    node = nodes.pop()
                    nodes += node.get("Plans", [])
                    if node.get("Relation Name") == "jobs":
                        read += node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
                self.assertLess(read, 100, f"{name} reads {read} rows of jobs: {json.dumps(plan)[:1500]}")
        finally:
            self.s.psql("DELETE FROM jobs WHERE owner = 'bulk'")
        st, _, b = self.s.api("GET", "/metrics", key=False, raw=True, headers=OPS)
        got = dict(re.findall(r'^deltatune_jobs\{status="(\w+)"\} (\d+)$', b.decode(), re.M))
        self.assertLess(int(got["succeeded"]), n)

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


class ModelOps(StackTest):
    """One fine-tuned model of an owner with a 64-character name, from a job
    with a 64-character suffix: its id is longer than tar's 155-byte prefix."""
    owner = "o" * 59 + "_long"
    key = model = None

    @classmethod
    def setUpClass(cls):
        cls.key = S.new_key(cls.owner)
        st, _, f = S.upload(TRAIN_ROWS, key=cls.key)
        assert st == 200, f
        cls.file = f
        st, _, j = S.api("POST", "/v1/fine_tuning/jobs", {
            "model": TINY_ID, "training_file": f["id"], "method": hp(max_steps=2),
            "suffix": "s" * 60 + "_sfx"}, key=cls.key)
        assert st == 200, j
        j = S.wait_job(j["id"], {"succeeded", "failed", "cancelled"}, timeout=180, key=cls.key)
        assert j["status"] == "succeeded", j
        cls.model = j["fine_tuned_model"]
        assert len(cls.model) > 155, cls.model

    def get(self, path, method="GET", headers=None):
        """(status, headers, body) with http.client, for HEAD as for GET."""
        u = urllib.parse.urlsplit(self.s.url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        h = {"Authorization": "Bearer " + self.key}
        h.update(headers or {})
        c.request(method, path, headers=h)
        r = c.getresponse()
        body = r.read()
        hd = {k.lower(): v for k, v in r.getheaders()}
        c.close()
        return r.status, hd, body

    def test_archive_of_a_long_id_is_a_valid_tar(self):
        """The archive of a model whose id exceeds tar's 155-byte prefix is a
        whole tar (pax headers) that Python's tarfile reads with the right
        names and contents, under a directory named after the id. Under 1 s
        (ModelOps' shared fine-tune job, in setUpClass: about 10 s)."""
        m = self.model
        st, hd, body = self.get(f"/v1/models/{urllib.parse.quote(m, safe=':')}/archive")
        self.assertEqual(st, 200, body[:300])
        self.assertEqual(int(hd["content-length"]), len(body))
        files = {x["name"]: x for x in self.call("GET", f"/v1/models/{m}/files", key=self.key)["data"]}
        self.assertTrue(files)
        top = m.replace("_", "%5F").replace(":", "_")
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as t:
            members = t.getmembers()
            self.assertEqual(sorted(x.name for x in members), sorted(f"{top}/{n}" for n in files))
            for x in members:
                data = t.extractfile(x).read()
                f = files[x.name.split("/", 1)[1]]
                self.assertEqual((len(data), hashlib.sha256(data).hexdigest()), (f["bytes"], f["sha256"]))
        self.assertIn(f'filename="{top}.tar"', hd["content-disposition"])

    def test_head_on_downloads(self):
        """HEAD on file content, model files and archives: GET's status and
        headers (Content-Length, ETag, Content-Type, Range), no body. Under 0.5 s."""
        m = urllib.parse.quote(self.model, safe=":")
        name = sorted(x["name"] for x in self.call("GET", f"/v1/models/{m}/files", key=self.key)["data"])[0]
        for path, headers in ((f"/v1/files/{self.file['id']}/content", None),
                              (f"/v1/models/{m}/files/{name}", None),
                              (f"/v1/models/{m}/files/{name}", {"Range": "bytes=0-9"}),
                              (f"/v1/models/{TINY_ID}/files/config.json", None),
                              (f"/v1/models/{m}/archive", None),
                              (f"/v1/files/{self.file['id']}", None),
                              (f"/v1/fine_tuning/jobs/ftjob-nope", None)):
            gst, ghd, gbody = self.get(path, "GET", headers)
            hst, hhd, hbody = self.get(path, "HEAD", headers)
            self.assertEqual(hst, gst, (path, hbody))
            self.assertEqual(hbody, b"", path)
            for k in ("content-length", "content-type", "etag", "content-range", "accept-ranges",
                      "content-disposition"):
                self.assertEqual(hhd.get(k), ghd.get(k), (path, k))
            self.assertEqual(int(hhd["content-length"]), len(gbody), path)
        self.assertEqual(self.get(f"/v1/models/{m}/files/{name}", "HEAD")[0], 200)
        st, _, _ = self.get("/v1/files", "PUT")
        self.assertEqual(st, 405)

    def test_delete_model_used_by_an_unfinished_job(self):
        """A fine-tuned model that a job which has not finished uses as its
        base cannot be deleted (409 naming the job); once the job is
        cancelled, it can. Uses a copy of the model. About 1 s."""
        m = self.model
        copy = m[:-4] + "copy"
        self.s.psql(f"INSERT INTO models SELECT (jsonb_populate_record(m, jsonb_build_object('id', "
                    f"'{copy}'))).* FROM models m WHERE id = '{m}'")
        st, _, j = self.s.api("POST", "/v1/fine_tuning/jobs", {
            "model": copy, "training_file": self.file["id"], "method": hp(max_steps=100000)},
            key=self.key)
        self.assertEqual(st, 200, j)
        p = self.call("POST", f"/v1/fine_tuning/jobs/{j['id']}/pause", key=self.key)
        self.assertIn(p["status"], ("paused", "running", "queued"), p)
        e = self.err("DELETE", f"/v1/models/{copy}", want=409, key=self.key)
        self.assertIn(j["id"], e["message"])
        self.assertEqual(self.call("GET", f"/v1/models/{copy}", key=self.key)["id"], copy)
        self.call("POST", f"/v1/fine_tuning/jobs/{j['id']}/cancel", key=self.key)
        self.wait(j["id"], {"cancelled", "succeeded", "failed"}, key=self.key)
        self.s.psql(f"UPDATE models SET path = '' WHERE id = '{copy}'")  # the copy's files are m's
        d = self.call("DELETE", f"/v1/models/{copy}", key=self.key)
        self.assertEqual((d["id"], d["deleted"]), (copy, True))
        self.assertEqual(self.call("GET", f"/v1/models/{m}", key=self.key)["id"], m)

    def test_event_stream_closes_when_its_key_is_revoked(self):
        """An open event stream ends within DELTATUNE_SSE_RECHECK_SECONDS (1 s
        here) of its key's revocation, with an invalid_api_key error event.
        About 3 s."""
        key = self.s.new_key(self.owner)
        st, _, j = self.s.api("POST", "/v1/fine_tuning/jobs", {
            "model": TINY_ID, "training_file": self.file["id"], "method": hp(max_steps=100000)},
            key=key)
        self.assertEqual(st, 200, j)
        self.call("POST", f"/v1/fine_tuning/jobs/{j['id']}/pause", key=key)
        self.wait(j["id"], {"paused"}, key=key, timeout=60)
        u = urllib.parse.urlsplit(self.s.url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
        try:
            c.request("GET", f"/v1/fine_tuning/jobs/{j['id']}/events?stream=true",
                      headers={"Authorization": "Bearer " + key})
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            self.assertTrue(r.readline().startswith(b"retry:"))
            self.s.cli("keys", "revoke", key.split("-")[1])
            t0, lines = time.time(), []
            while time.time() - t0 < 15:
                line = r.readline()
                if not line:
                    break
                lines.append(line.decode())
            took = time.time() - t0
            self.assertLess(took, 6, f"the stream went on {took:.1f} s after revocation: {lines[-5:]}")
            text = "".join(lines)
            self.assertIn("event: error\n", text)
            err = json.loads(text.split("event: error\n", 1)[1].split("\n", 1)[0][len("data: "):])
            self.assertEqual(err["error"]["code"], "invalid_api_key")
        finally:
            c.close()
            # the key is revoked: the test ends the paused job itself
            self.s.psql(f"UPDATE jobs SET status = 'cancelled' WHERE id = '{j['id']}'")


if __name__ == "__main__":
    unittest.main()
