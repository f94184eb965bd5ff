"""The server side of the dashboard, over plain HTTP (Python standard library
only): the embedded static files (Content-Type, ETag, caching, CSP) and the
Server-Sent Events stream of job events (order, Last-Event-ID, the end
event, caps, ownership, a clean shutdown with streams open)."""
import http.client
import json
import os
import re
import signal
import sys
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import TRAIN_ROWS, Stack  # noqa: E402

BUILD = os.path.abspath(os.environ.get("BUILD", os.path.join(ROOT, "build")))


class SSE:
    """One event stream: GET .../events?stream=true, read block by block."""

    def __init__(self, s, job_id, key=None, last_event_id=None, timeout=60):
        u = urllib.parse.urlparse(s.url)
        self.c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        h = {"Authorization": "Bearer " + (key or s.key), "Accept": "text/event-stream"}
        if last_event_id:
            h["Last-Event-ID"] = last_event_id
        self.c.request("GET", f"/v1/fine_tuning/jobs/{job_id}/events?stream=true", headers=h)
        self.r = self.c.getresponse()
        self.status = self.r.status
        self.headers = {k.lower(): v for k, v in self.r.getheaders()}

    def blocks(self):
        """Yields (fields dict, comment lines) per block until the stream ends."""
        buf = b""
        while True:
            line = self.r.readline()
            if not line:
                return
            if line in (b"\n", b"\r\n"):
                fields, comments = {}, []
                for l in buf.decode().splitlines():
                    if l.startswith(":"):
                        comments.append(l[1:].strip())
                    elif ":" in l:
                        k, v = l.split(":", 1)
                        fields[k] = fields.get(k, "") + v[1:] if v.startswith(" ") else v
                yield fields, comments
                buf = b""
            else:
                buf += line

    def close(self):
        self.c.close()


def create_job(s, key=None, steps=4):
    st, _, f = s.upload(TRAIN_ROWS, key=key)
    assert st == 200, f
    st, _, j = s.api("POST", "/v1/fine_tuning/jobs", {
        "model": s.model_id, "training_file": f["id"],
        "method": {"type": "lora", "lora": {"hyperparameters": {
            "max_steps": steps, "batch_size": 2, "seq_len": 32}}}}, key=key)
    assert st == 200, j
    return j["id"]


class ServerWeb(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Stack(build=BUILD)
        cls.s.start()

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def test_static_files(self):
        s = self.s
        st, h, body = s.api("GET", "/", key=False, raw=True)
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "text/html; charset=utf-8")
        self.assertEqual(h["cache-control"], "no-cache")
        self.assertIn("default-src 'self'", h["content-security-policy"])
        self.assertRegex(h["etag"], r'^"[0-9a-f]{32}"$')
        self.assertNotIn(b"{{v:", body)
        self.assertNotIn(b"http://", body.replace(b"http://www.w3.org", b""))  # no CDN
        st, h2, b2 = s.api("GET", "/", key=False, raw=True, headers={"If-None-Match": h["etag"]})
        self.assertEqual((st, b2), (304, b""))
        self.assertEqual(h2["etag"], h["etag"])
        # every file of server/static/ but index.html is named, with its version
        assets = re.findall(rb'"(/static/([a-z.]+)\?v=([0-9a-f]{16}))"', body)
        on_disk = sorted(n.encode() for n in os.listdir(os.path.join(ROOT, "server", "static"))
                         if n != "index.html" and not n.startswith("."))
        self.assertEqual(sorted(a[1] for a in assets), on_disk)
        self.assertIn(b"app.js", on_disk)
        types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
        for url, name, _ in assets:
            st, h, b = s.api("GET", url.decode(), key=False, raw=True)
            self.assertEqual(st, 200)
            self.assertEqual(h["content-type"], types[os.path.splitext(name.decode())[1]])
            self.assertEqual(h["cache-control"], "public, max-age=31536000, immutable")
            self.assertEqual(h["x-content-type-options"], "nosniff")
            self.assertGreater(len(b), 1000)
            # without the current version: revalidated, not cached for a year
            st, h3, _ = s.api("GET", "/static/" + name.decode() + "?v=old", key=False, raw=True)
            self.assertEqual((st, h3["cache-control"]), (200, "no-cache"))
            self.assertEqual(s.api("GET", "/static/" + name.decode(), key=False, raw=True,
                                   headers={"If-None-Match": h["etag"]})[0], 304)
        for bad in ("/static/nope.js", "/static/index.html", "/static/..%2Fapp.js"):
            self.assertEqual(s.api("GET", bad, key=False)[0], 404, bad)
        self.assertEqual(s.api("POST", "/", key=False)[0], 405)

    def test_stream_replays_then_follows_and_ends(self):
        s = self.s
        job = create_job(s, steps=60)  # long enough to be followed while it runs
        es = SSE(s, job)
        self.assertEqual(es.status, 200)
        self.assertEqual(es.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertEqual(es.headers["cache-control"], "no-cache")
        seqs, events, end = [], [], None
        for fields, _ in es.blocks():
            if fields.get("event") == "end":
                end = json.loads(fields["data"])
                continue
            if "data" in fields:
                self.assertIsNone(end, "nothing after the end event")
                ev = json.loads(fields["data"])
                self.assertEqual(fields["id"], ev["id"])
                self.assertEqual(ev["object"], "fine_tuning.job.event")
                seqs.append(int(ev["id"].split("-")[1]))
                events.append(ev)
        es.close()
        self.assertEqual(end, {"status": "succeeded"})
        self.assertEqual(seqs, sorted(seqs), "oldest first")
        self.assertEqual(len(seqs), len(set(seqs)), "no event twice")
        self.assertTrue(any(e["type"] == "metrics" for e in events))
        # the same events as the list, the last one included
        listed = s.api("GET", f"/v1/fine_tuning/jobs/{job}/events?limit=1000")[2]["data"]
        self.assertEqual([e["id"] for e in reversed(listed)], [e["id"] for e in events])
        # Last-Event-ID: only what came after it; a finished job ends at once
        mid = events[len(events) // 2]["id"]
        es = SSE(s, job, last_event_id=mid)
        got = [json.loads(f["data"])["id"] for f, _ in es.blocks() if "id" in f]
        es.close()
        self.assertEqual(got, [e["id"] for e in events[len(events) // 2 + 1:]])

    def test_stream_errors_and_caps(self):
        s = self.s
        other = s.new_key("sse-other")
        job = create_job(s, key=other, steps=2)
        st, _, b = s.api("GET", f"/v1/fine_tuning/jobs/{job}/events?stream=true")
        self.assertEqual(st, 404, b)  # another owner's job
        st, _, b = s.api("GET", f"/v1/fine_tuning/jobs/{job}/events?stream=yes", key=other)
        self.assertEqual((st, b["error"]["param"]), (400, "stream"))
        st, _, b = s.api("GET", f"/v1/fine_tuning/jobs/{job}/events?stream=true", key=other,
                         headers={"Last-Event-ID": "bogus"})
        self.assertEqual((st, b["error"]["param"]), (400, "Last-Event-ID"))
        self.assertEqual(s.api("GET", f"/v1/fine_tuning/jobs/{job}/events?stream=true", key=False)[0], 401)
        # A paused job's stream stays open (with keep-alives); 8 per owner.
        capkey = s.new_key("sse-cap")
        paused = create_job(s, key=capkey, steps=100000)
        st, _, j = s.api("POST", f"/v1/fine_tuning/jobs/{paused}/pause", {}, key=capkey)
        self.assertEqual(st, 200, j)
        if j["status"] == "running":  # the worker took it first: wait for the pause
            s.wait_job(paused, {"paused"}, key=capkey)
        streams = [SSE(s, paused, key=capkey) for _ in range(8)]
        try:
            self.assertEqual([x.status for x in streams], [200] * 8)
            st, _, b = s.api("GET", f"/v1/fine_tuning/jobs/{paused}/events?stream=true", key=capkey)
            self.assertEqual((st, b["error"]["code"]), (429, "too_many_streams"))
            # the plain list still answers, and the first stream delivers
            self.assertEqual(s.api("GET", f"/v1/fine_tuning/jobs/{paused}/events", key=capkey)[0], 200)
            fields, _ = next(b for b in streams[0].blocks() if "data" in b[0])
            self.assertEqual(json.loads(fields["data"])["object"], "fine_tuning.job.event")
        finally:
            for x in streams:
                x.close()
        # closed streams give their places back (noticed at the next write)
        end = time.time() + 60
        while time.time() < end:
            es = SSE(s, paused, key=capkey)
            es.close()
            if es.status == 200:
                break
            time.sleep(1)
        self.assertEqual(es.status, 200)
        s.api("POST", f"/v1/fine_tuning/jobs/{paused}/cancel", {}, key=capkey)

    def test_zz_shutdown_with_streams_open(self):
        """SIGTERM with suspended streams: the server ends them and exits 0
        (MHD must not be stopped with suspended connections)."""
        s = self.s
        job = create_job(s, steps=100000)
        st, _, j = s.api("POST", f"/v1/fine_tuning/jobs/{job}/pause", {})
        streams = [SSE(s, job) for _ in range(3)]
        for x in streams:
            self.assertEqual(x.status, 200)
            next(x.blocks())
        pid = s.pid("server")
        os.kill(pid, signal.SIGTERM)
        ended = []
        for x in streams:
            for _ in x.blocks():
                pass
            ended.append(True)
            x.close()
        self.assertEqual(ended, [True] * 3)
        end = time.time() + 30
        while time.time() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            self.fail("the server did not exit within 30 s of SIGTERM")
        log = s.log("server")
        self.assertNotIn("PANIC", log.upper().replace("PANIC_", ""))
        self.assertRegex(log, r"shutdown")


if __name__ == "__main__":
    unittest.main(verbosity=2)
