"""Hostile HTTP input on one real stack (short connection timeout, small
body caps): slowloris, huge headers, Content-Length + Transfer-Encoding
smuggling, oversized bodies, path traversal in ids and upload filenames,
deep / huge / non-finite JSON. Every case asserts the exact answer (a 4xx,
with the {"error": {...}} envelope where our code answers) and that the
server still serves another client afterwards. Raw sockets where urllib
cannot express the request. (Invalid UTF-8: test_utf8.py.)"""
import json
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, start_stack, TINY_ID  # noqa: E402

TIMEOUT_S, MAX_JSON, MAX_UPLOAD, PER_IP = 3, 16384, 65536, 60
S = None
G = {}


def setUpModule():
    global S
    try:
        S = start_stack(env={"DELTATUNE_CONNECTION_TIMEOUT": str(TIMEOUT_S),
                             "DELTATUNE_MAX_JSON_BYTES": str(MAX_JSON),
                             "DELTATUNE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
                             "DELTATUNE_MAX_CONNECTIONS_PER_IP": str(PER_IP)})
        StackTest.s = S
        G["file"] = StackTest().upload_ok()["id"]
        host, port = S.url.split("//", 1)[1].rsplit(":", 1)
        G["addr"] = (host, int(port.strip("/")))
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    if S:
        S.stop()


def connect(timeout=10, source=None):
    c = socket.create_connection(G["addr"], timeout=timeout,
                                 source_address=(source, 0) if source else None)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def read_all(c, timeout=10):
    """Everything the server sends until it closes (or timeout)."""
    c.settimeout(timeout)
    buf = b""
    end = time.time() + timeout
    while time.time() < end:
        try:
            d = c.recv(65536)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError):
            break
        if not d:
            break
        buf += d
    return buf


def parse(raw):
    """All responses in raw bytes: [(status, headers, body bytes)]."""
    out = []
    while raw.startswith(b"HTTP/"):
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        st = int(lines[0].split()[1])
        hd = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            hd[k.strip().lower()] = v.strip()
        if "content-length" in hd:
            n = int(hd["content-length"])
            body, raw = rest[:n], rest[n:]
        elif hd.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size, _, rest = rest.partition(b"\r\n")
                try:
                    n = int(size.split(b";")[0], 16)
                except ValueError:
                    n = 0
                if n == 0:
                    rest = rest.partition(b"\r\n")[2]
                    break
                body, rest = body + rest[:n], rest[n + 2:]
            raw = rest
        else:
            body, raw = rest, b""
        out.append((st, hd, body))
    return out


def raw_request(data, timeout=10, half_close=False):
    c = connect(timeout)
    try:
        c.sendall(data)
        if half_close:
            c.shutdown(socket.SHUT_WR)
        return parse(read_all(c, timeout))
    finally:
        c.close()


def head(method, path, extra="", key=None):
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key or S.key}\r\n"
            f"Connection: close\r\n{extra}").encode()


class Abuse(StackTest):
    def assert_serving(self, within=3.0):
        t0 = time.time()
        st, _, b = self.s.api("GET", "/v1/models", timeout=within + 5)
        took = time.time() - t0
        self.assertEqual(st, 200, b)
        self.assertIn(TINY_ID, [m["id"] for m in b["data"]])
        self.assertLess(took, within, f"GET /v1/models took {took:.2f}s")
        return took

    def assert_envelope(self, body, param=None):
        e = json.loads(body)["error"]
        for k in ("message", "type", "param", "code"):
            self.assertIn(k, e)
        self.assertTrue(e["message"])
        if param is not None:
            self.assertEqual(e["param"], param, e)
        return e

    def artifact_files(self):
        root = os.path.realpath(self.s.env.get("DELTATUNE_ARTIFACT_ROOT") or
                                os.path.join(self.s.run, "artifacts"))
        return sorted(os.path.join(d, x) for d, _, fs in os.walk(root) for x in fs)

    def file_ids(self):
        return sorted(f["id"] for f in self.call("GET", "/v1/files?limit=10000")["data"])

    # ---- slowloris ---------------------------------------------------------
    def test_slowloris(self):
        n = 50
        socks = []
        for i in range(n):
            c = connect()
            c.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
            socks.append(c)
        # Dribble one more header byte a second for two seconds: still partial.
        for _ in range(2):
            time.sleep(1)
            for c in socks:
                c.sendall(b"X")
        t_last = time.time()
        # While they hang, another client is served quickly.
        took = self.assert_serving(within=2.0)
        # The server closes every one of them after the idle timeout.
        closed_at = [None] * n

        def watch(i, c):
            c.settimeout(TIMEOUT_S + 10)
            try:
                while True:
                    d = c.recv(4096)
                    if not d:
                        break
            except OSError:
                pass
            closed_at[i] = time.time() - t_last

        ts = [threading.Thread(target=watch, args=(i, c)) for i, c in enumerate(socks)]
        for t in ts:
            t.start()
        # ... and keeps serving while they wait to be closed.
        self.assert_serving(within=2.0)
        for t in ts:
            t.join()
        for c in socks:
            c.close()
        self.assertTrue(all(x is not None and x < TIMEOUT_S + 3 for x in closed_at),
                        f"closed after {closed_at}")
        print(f"\n  slowloris: {n} conns closed after {min(closed_at):.1f}-{max(closed_at):.1f}s "
              f"idle (timeout {TIMEOUT_S}s); GET during the attack {took*1000:.0f} ms", file=sys.stderr)
        self.assert_serving()

    def check_rejected(self, resps, what):
        """4xx, or closed with no answer; never 2xx/5xx."""
        if resps:
            st = resps[0][0]
            self.assertTrue(400 <= st < 500, f"{what}: status {st}")
            return st
        return None

    def test_one_huge_header(self):
        req = head("GET", "/v1/models", "X-Big: " + "a" * 100_000 + "\r\n\r\n")
        st = self.check_rejected(raw_request(req), "100 KB header")
        print(f"\n  100 KB header -> {st or 'closed'}", file=sys.stderr)
        self.assert_serving()

    def test_many_headers(self):
        req = head("GET", "/v1/models", "".join(f"X-H{i}: v\r\n" for i in range(10_000)) + "\r\n")
        st = self.check_rejected(raw_request(req), "10,000 headers")
        print(f"\n  10,000 headers -> {st or 'closed'}", file=sys.stderr)
        self.assert_serving()

    # ---- request smuggling -------------------------------------------------
    def test_content_length_with_chunked(self):
        victim = self.upload_ok()["id"]
        smuggled = (f"DELETE /v1/files/{victim} HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {S.key}\r\n\r\n").encode()
        for order in ("cl-te", "te-cl"):
            body = b"0\r\n\r\n" + smuggled
            cl = f"Content-Length: {len(body)}\r\n"
            te = "Transfer-Encoding: chunked\r\n"
            hdrs = (cl + te) if order == "cl-te" else (te + cl)
            req = (f"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {S.key}\r\n"
                   f"Content-Type: application/json\r\n{hdrs}\r\n").encode() + body
            resps = raw_request(req, timeout=5)
            with self.subTest(order=order):
                self.assertTrue(resps, "no answer")
                self.assertEqual(resps[0][0], 400, resps)
                self.assertEqual(len(resps), 1, f"a second request was processed: {resps}")
                time.sleep(0.3)
                self.assertEqual(self.call("GET", f"/v1/files/{victim}")["id"], victim)
        self.assert_serving()

    # ---- oversized bodies --------------------------------------------------
    def oversized(self, path, ctype, n):
        before = self.file_ids()
        art_before = self.artifact_files()
        jobs_before = self.count("jobs")
        c = connect(10)
        try:
            t0 = time.time()
            c.sendall(head("POST", path, f"Content-Type: {ctype}\r\nContent-Length: {n}\r\n\r\n"))
            resps = parse(read_all(c, 5))   # no body byte sent
            took = time.time() - t0
        finally:
            c.close()
        self.assertTrue(resps, f"POST {path} with Content-Length {n}: no answer before the body")
        self.assertEqual(resps[0][0], 413, resps)
        self.assert_envelope(resps[0][2])
        self.assertLess(took, 4.0)
        self.assertEqual(self.file_ids(), before)
        self.assertEqual(self.count("jobs"), jobs_before)
        self.assertEqual(self.artifact_files(), art_before)
        self.assert_serving()
        return took

    def test_oversized_json(self):
        t = self.oversized("/v1/fine_tuning/jobs", "application/json", MAX_JSON + 1)
        print(f"\n  JSON body cap + 1 -> 413 in {t*1000:.0f} ms", file=sys.stderr)

    def test_oversized_upload(self):
        t = self.oversized("/v1/files", "multipart/form-data; boundary=xx", MAX_UPLOAD + 65536 + 1)
        print(f"\n  upload cap + 64 KiB multipart allowance + 1 -> 413 in {t*1000:.0f} ms", file=sys.stderr)

    def test_chunked_upload_past_cap(self):
        """A chunked multipart upload (no Content-Length) that grows past the
        cap: 413, and no file object, no file left under the artifact root."""
        before, art_before = self.file_ids(), self.artifact_files()
        b = "xxabusebnd"
        pre = (f"--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
               f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
               "Content-Type: application/jsonl\r\n\r\n").encode()
        row = b'{"text": "' + b"a" * 4000 + b'"}\n'
        c = connect(10)
        sent = 0
        try:
            c.sendall(head("POST", "/v1/files", f"Content-Type: multipart/form-data; boundary={b}\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n"))
            try:
                for chunk in [pre] + [row] * (3 * MAX_UPLOAD // len(row)):
                    c.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                c.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(f"\r\n--{b}--\r\n"), f"\r\n--{b}--\r\n".encode()))
            except OSError:
                pass    # the server answered and closed while we were still sending
            resps = parse(read_all(c, 5))
        finally:
            c.close()
        self.assertTrue(resps, f"chunked upload of {sent} bytes: no answer")
        self.assertEqual(resps[0][0], 413, resps)
        self.assert_envelope(resps[0][2])
        time.sleep(0.3)
        self.assertEqual(self.file_ids(), before)
        self.assertEqual(self.artifact_files(), art_before)
        print(f"\n  chunked upload past the cap -> 413 after {sent} bytes sent", file=sys.stderr)
        self.assert_serving()

    # ---- traversal in ids --------------------------------------------------
    def test_traversal_ids(self):
        f = G["file"]
        bads = ["..", "../../etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2f..%2fetc%2fpasswd",
                f"{f}%00", f"{f}%00.json", "%00", f"..%2f{f}", f"{f}%2f..%2f..", "%2e%2e"]
        templates = ["/v1/files/{x}", "/v1/files/{x}/content", "/v1/fine_tuning/jobs/{x}",
                     "/v1/fine_tuning/jobs/{x}/cancel", "/v1/fine_tuning/jobs/{x}/events",
                     "/v1/fine_tuning/jobs/{x}/pause", "/v1/fine_tuning/jobs/{x}/resume",
                     "/v1/models/{x}/archive",
                     "/v1/fine_tuning/jobs/{x}/checkpoints", "/v1/models/{x}", "/v1/models/{x}/files",
                     f"/v1/models/{TINY_ID}/files/{{x}}", "/v1/models/{x}/files/config.json"]
        seen = {}
        for t in templates:
            for b in bads:
                path = t.replace("{x}", b)
                method = "POST" if path.endswith(("/cancel", "/pause", "/resume")) else "GET"
                resps = raw_request(head(method, path, "Content-Length: 0\r\n\r\n"))
                with self.subTest(path=path):
                    self.assertTrue(resps, f"{method} {path}: no answer")
                    st = resps[0][0]
                    self.assertIn(st, (400, 404), f"{method} {path} -> {st}: {resps[0][2][:300]!r}")
                    if resps[0][1].get("content-type", "").startswith("application/json"):
                        self.assert_envelope(resps[0][2])
                    seen[st] = seen.get(st, 0) + 1
        self.assertEqual(self.call("GET", f"/v1/files/{f}")["id"], f)
        print(f"\n  traversal ids: {sum(seen.values())} requests -> {seen}", file=sys.stderr)
        self.assert_serving()

    def test_upload_filename_traversal(self):
        root = os.path.realpath(self.s.env.get("DELTATUNE_ARTIFACT_ROOT") or
                                os.path.join(self.s.run, "artifacts"))
        outside = os.path.realpath(os.path.join(root, "..", "..", "etc", "passwd"))
        self.assertFalse(os.path.exists(outside))
        for name in ("../../etc/passwd", "..\\..\\x.jsonl", "/etc/passwd", "a\x00/../../b.jsonl",
                     "x\x01\x7f\x1b[31m.jsonl", "n" * 10_000 + ".jsonl"):
            with self.subTest(filename=name):
                st, _, fobj = self.s.upload("{\"text\": \"hi\"}\n", filename=name)
                print(f"\n  upload filename {name[:40]!r} -> {st} {str(fobj.get('filename') or fobj.get('error'))[:60]!r}",
                      file=sys.stderr)
                if st == 200:
                    self.assertNotIn("/", fobj["filename"], fobj)
                    self.assertNotIn("\\", fobj["filename"], fobj)
                    self.assertFalse(fobj["filename"].startswith(".."), fobj)
                    self.assertFalse(any(ord(ch) < 32 or ord(ch) == 127 for ch in fobj["filename"]), fobj)
                    self.assertLessEqual(len(fobj["filename"].encode()), 255, fobj)
                else:
                    self.assertEqual(st, 400, fobj)
                    self.assertEqual(fobj["error"]["param"], "file", fobj)
        self.assertFalse(os.path.exists(outside))
        self.assertFalse(os.path.exists("/etc/passwd.jsonl"))
        for d, _, files in os.walk(root):
            for x in files:
                self.assertTrue(os.path.realpath(os.path.join(d, x)).startswith(root + os.sep))
        self.assert_serving()

    # ---- hostile JSON ------------------------------------------------------
    def json_post(self, raw):
        return self.s.api("POST", "/v1/fine_tuning/jobs", raw.encode() if isinstance(raw, str) else raw,
                          headers={"Content-Type": "application/json"})

    def test_deep_nesting(self):
        n0 = self.count("jobs")
        for body in ("[" * 100_000, "[" * 8000 + "]" * 8000, '{"a":' * 5000 + "1" + "}" * 5000):
            body = body[:MAX_JSON - 1] if len(body) >= MAX_JSON else body
            st, _, b = self.json_post(body)
            with self.subTest(body=body[:20]):
                self.assertEqual(st, 400, b)
                self.assertIn("error", b)
        # Deeper than the cap, too: 413 (the cap is what bounds parser work).
        st, _, b = self.json_post("[" * 100_000)
        self.assertIn(st, (400, 413), b)
        print(f"\n  100,000 '[' -> {st} {b['error']['code']}", file=sys.stderr)
        self.assertEqual(self.count("jobs"), n0)
        self.assert_serving()

    def test_huge_numbers(self):
        n0 = self.count("jobs")
        for param in ("n_epochs", "learning_rate_multiplier", "seed", "batch_size"):
            for num in ("1e400", "-1e400", "18446744073709551616", "123456789012345678901234567890"):
                raw = ('{"model": "%s", "training_file": "%s", "method": {"type": "supervised", '
                       '"supervised": {"hyperparameters": {"%s": %s}}}}' % (TINY_ID, G["file"], param, num))
                with self.subTest(param=param, num=num):
                    st, _, b = self.json_post(raw)
                    self.assertEqual(st, 400, b)
                    self.assertEqual(b["error"]["param"], f"method.supervised.hyperparameters.{param}", b)
                    self.assertEqual(b["error"]["code"], "invalid_value", b)
        # -0: a valid JSON number equal to 0, out of range for these three
        # (seed accepts 0, so -0 there is a valid seed, not tested here).
        for param in ("n_epochs", "learning_rate_multiplier", "batch_size"):
            for num in ("-0", "-0.0"):
                raw = ('{"model": "%s", "training_file": "%s", "method": {"type": "supervised", '
                       '"supervised": {"hyperparameters": {"%s": %s}}}}' % (TINY_ID, G["file"], param, num))
                with self.subTest(param=param, num=num):
                    st, _, b = self.json_post(raw)
                    self.assertEqual(st, 400, b)
                    self.assertEqual(b["error"]["param"], f"method.supervised.hyperparameters.{param}", b)
        self.assertEqual(self.count("jobs"), n0)
        self.assert_serving()

    def test_duplicate_keys(self):
        n0 = self.count("jobs")
        for raw in ('{"model": "%s", "model": "%s", "training_file": "%s"}' % (TINY_ID, TINY_ID, G["file"]),
                    '{"model": "%s", "training_file": "%s", "training_file": "file-x"}' % (TINY_ID, G["file"]),
                    '{"model": "%s", "training_file": "%s", "method": {"type": "supervised", "type": "dpo"}}'
                    % (TINY_ID, G["file"])):
            with self.subTest(raw=raw):
                st, _, b = self.json_post(raw)
                self.assertEqual(st, 400, b)
                e = self.assert_envelope(json.dumps(b))
                self.assertIn("duplicate", e["message"].lower(), e)
                self.assertEqual(e["code"], "invalid_json", e)
        self.assertEqual(self.count("jobs"), n0)
        self.assert_serving()

    def test_non_finite_literals(self):
        for lit in ("NaN", "Infinity", "-Infinity", "nan", "inf"):
            raw = ('{"model": "%s", "training_file": "%s", "method": {"type": "supervised", '
                   '"supervised": {"hyperparameters": {"learning_rate_multiplier": %s}}}}'
                   % (TINY_ID, G["file"], lit))
            with self.subTest(lit=lit):
                st, _, b = self.json_post(raw)
                self.assertEqual(st, 400, b)
                self.assertIn("error", b)
        self.assert_serving()

    def test_not_an_object(self):
        for raw in ("[]", "[1,2]", '"x"', "1", "null", "true", "", " "):
            with self.subTest(raw=raw):
                st, _, b = self.json_post(raw)
                self.assertEqual(st, 400, b)
                self.assertIn("error", b)
                self.assertTrue(b["error"]["message"])
        self.assert_serving()


if __name__ == "__main__":
    unittest.main()
