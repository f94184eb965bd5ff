"""Bad input on every endpoint, on one stack with small body caps: every
mistake is a 4xx with the error envelope and error.param naming the field,
and nothing is stored (PostgreSQL row counts and the upload directory are
unchanged). Bad JSONL is stored with status "error" naming the line."""
import glob
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, start_stack, hp, TRAIN_ROWS, TINY_ID  # noqa: E402

MAX_JSON, MAX_UPLOAD, MAX_LINE = 16384, 65536, 4096
S = None
GOOD = {}


def _setup():
    global S
    S = start_stack(env={"DELTATUNE_MAX_JSON_BYTES": str(MAX_JSON),
                         "DELTATUNE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
                         "DELTATUNE_MAX_LINE_BYTES": str(MAX_LINE)})
    StackTest.s = S
    t = StackTest()
    GOOD["file"] = t.upload_ok()["id"]
    st, _, bad = S.upload('{"text": "ok"}\nnot json\n')
    GOOD["bad_file"] = bad["id"]
    # One real job, finished, so job sub-routes have a target.
    j = t.create_job(GOOD["file"], hp(max_steps=1))
    GOOD["job"] = t.wait(j["id"], {"succeeded", "failed", "cancelled"})["id"]


def setUpModule():
    try:
        _setup()
    except BaseException:
        tearDownModule()  # not called by unittest when setUpModule fails
        raise


def tearDownModule():
    if S:
        S.stop()


# Hyperparameters: (name, values out of range or of the wrong type).
HP_BAD = {
    "n_epochs": [0, 101, 1.5, "3", True, [], "Auto"],
    "batch_size": [0, 257, -1, 2.5, "x"],
    "learning_rate": [0, -1e-4, 1.5, "fast", "nan"],
    "learning_rate_multiplier": [0, 101, -1, {}],
    "rank": [0, 257, 8.5, "eight"],
    "alpha": [0, -1, 4097, "x"],
    "lambda": [-0.1, 101, "x"],
    "start_step": [-2, 10000001, 1.5],
    "target_modules": ["", "q,zz", ["q", "nope"], [1], 7, ["q", "q"]],
    "seq_len": [7, 8193, 0, "long"],
    "warmup_steps": [-1, 1000001],
    "weight_decay": [-0.1, 1.1],
    "max_grad_norm": [-1, 1000001],
    "lr_scheduler": ["exponential", 1],
    "gradient_accumulation_steps": [0, 1025],
    "max_steps": [-1, 10000001],
    "checkpoint_interval": [-1, 10000001],
    "eval_interval": [-1, 10000001],
    "seed": [-1, 1.5, "x"],
    "nonsense": [1],
}


class BadInput(StackTest):
    def setUp(self):
        self.before = self.snapshot()

    def tearDown(self):
        # A rejected upload's temp file is removed when the connection
        # completes, just after the answer: allow a moment.
        for _ in range(50):
            now = self.snapshot()
            if now == self.before:
                break
            time.sleep(0.2)
        self.assertEqual(now, self.before, "bad requests stored something")

    def snapshot(self):
        updir = os.path.join(self.s.env.get("DELTATUNE_ARTIFACT_ROOT", os.path.join(self.s.run, "artifacts")), "files")
        names = sorted(os.listdir(updir)) if os.path.isdir(updir) else []
        return {t: self.count(t) for t in ("files", "jobs", "job_events", "models", "checkpoints",
                                           "idempotency_keys")} | {"upload dir": names}

    def job(self, body, param, want=400, **kw):
        return self.err("POST", "/v1/fine_tuning/jobs", body, want=want, param=param, **kw)

    def base(self, **kw):
        b = {"model": TINY_ID, "training_file": GOOD["file"]}
        b.update(kw)
        return b

    # ---- POST /v1/fine_tuning/jobs ---------------------------------------
    def test_malformed_bodies(self):
        for raw in (b"{x", b"", b"{\"model\": \"tiny-gpt2\",", b"[1,2]", b"\"str\"", b"null", b"42",
                    b"{\"model\":\"a\"} trailing", b"\xff\xfe{}", b"{\"model\":\"tiny-gpt2\",\"model\":\"x\"}"):
            with self.subTest(body=raw):
                self.err("POST", "/v1/fine_tuning/jobs", raw, headers={"Content-Type": "application/json"})

    def test_wrong_types_and_missing_fields(self):
        cases = [
            ({"training_file": GOOD["file"]}, "model"),
            ({"model": TINY_ID}, "training_file"),
            (self.base(model=5), "model"),
            (self.base(model=None), "model"),
            (self.base(training_file=["x"]), "training_file"),
            (self.base(validation_file=7), "validation_file"),
            (self.base(suffix=7), "suffix"),
            (self.base(suffix="x" * 65), "suffix"),
            (self.base(suffix="bad suffix!"), "suffix"),
            (self.base(seed=-1), "seed"),
            (self.base(seed="42"), "seed"),
            (self.base(metadata="x"), "metadata"),
            (self.base(metadata=[1]), "metadata"),
            (self.base(integrations="x"), "integrations"),
            (self.base(method="lora"), "method"),
            (self.base(method={}), "method.type"),
            (self.base(method={"type": "qlora"}), "method.type"),
            (self.base(method={"type": 3}), "method.type"),
            (self.base(method={"type": "lora", "lora": []}), "method.lora"),
            (self.base(method={"type": "lora", "lora": {"hyperparameters": 3}}), "method.lora.hyperparameters"),
            (self.base(hyperparameters=[]), "hyperparameters"),
            (self.base(nonsense=1), "nonsense"),
            (self.base(method={"type": "lora", "lora": {"extra": 1}}), "method.lora.extra"),
        ]
        for body, param in cases:
            with self.subTest(body=body):
                self.job(body, param)
        for body in (self.base(metadata={"k": 1}), self.base(metadata={"k" * 65: "v"}),
                     self.base(metadata={"k": "v" * 513}),
                     self.base(metadata={f"k{i}": "v" for i in range(17)})):
            with self.subTest(body=str(body)[:80]):
                e = self.job(body, None)
                self.assertTrue(e["param"] and e["param"].startswith("metadata"), e)
        # Another method's block, or two blocks.
        for m in ({"type": "lora", "delta_lora": {}}, {"type": "lora", "lora": {}, "full": {}}):
            with self.subTest(method=m):
                e = self.job(self.base(method=m), None)
                self.assertTrue(e["param"].startswith("method"), e)

    def test_integrations_are_refused_naming_the_field(self):
        """A wandb (or any) integration is a 400 naming `integrations`, not
        silently dropped: the service makes no outbound connections. About 1 s."""
        for integ in ([{"type": "wandb", "wandb": {"project": "p"}}], [{}],
                      [{"type": "wandb"}, {"type": "other"}]):
            with self.subTest(integrations=integ):
                e = self.job(self.base(integrations=integ), "integrations")
                self.assertIn("integrations", e["message"], e)
                self.assertEqual(e["type"], "invalid_request_error", e)

    def test_hyperparameters_out_of_range(self):
        for name, values in HP_BAD.items():
            for v in values:
                with self.subTest(name=name, value=v):
                    self.job(self.base(method={"type": "delta_lora",
                                               "delta_lora": {"hyperparameters": {name: v}}}),
                             f"method.delta_lora.hyperparameters.{name}")
        # The legacy top-level object names its own path.
        self.job(self.base(hyperparameters={"n_epochs": 0}), "hyperparameters.n_epochs")
        self.job(self.base(hyperparameters={"batch_size": "big"}), "hyperparameters.batch_size")
        # Parameters of another method.
        self.job(self.base(method={"type": "lora", "lora": {"hyperparameters": {"lambda": 0.5}}}),
                 "method.lora.hyperparameters.lambda")
        self.job(self.base(method={"type": "full", "full": {"hyperparameters": {"rank": 4}}}),
                 "method.full.hyperparameters.rank")
        # The first bad value is reported even after good ones.
        self.job(self.base(method={"type": "lora", "lora": {"hyperparameters": {"rank": 4, "alpha": 8, "seq_len": 4}}}),
                 "method.lora.hyperparameters.seq_len")

    def test_unknown_model_and_files(self):
        # The contract: the create endpoint answers 400 (not 404) naming the field.
        self.job(self.base(model="no-such-model"), "model")
        self.job(self.base(model="ft:tiny-gpt2:demo:x:ftjob-000000000000000000000000"), "model")
        self.job(self.base(training_file="file-000000000000000000000000"), "training_file")
        self.job(self.base(training_file=""), "training_file")
        self.job(self.base(validation_file="file-000000000000000000000000"), "validation_file")
        e = self.job(self.base(training_file=GOOD["bad_file"]), "training_file")
        self.assertIn(GOOD["bad_file"], e["message"])

    def test_oversized_json(self):
        big = self.base(metadata={"pad": "x" * 500}, suffix="s")
        raw = json.dumps(big).encode()[:-1] + b"," + b" " * (MAX_JSON + 10) + b"\"integrations\":[]}"
        e = self.err("POST", "/v1/fine_tuning/jobs", raw, want=413,
                     headers={"Content-Type": "application/json"})
        self.assertIn(str(MAX_JSON), e["message"])
        # The same without Content-Length (chunked): cut while streaming.
        st, body = self.raw_post("/v1/fine_tuning/jobs", [raw[i:i + 4096] for i in range(0, len(raw), 4096)],
                                 {"Content-Type": "application/json"})
        self.assertEqual(st, 413, body)

    def raw_post(self, path, chunks, headers):
        c = http.client.HTTPConnection(self.s.url.split("//", 1)[1], timeout=30)
        h = {"Authorization": "Bearer " + self.s.key, **headers}
        try:
            c.request("POST", path, body=iter(chunks), headers=h, encode_chunked=True)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.getresponse()
        b = r.read()
        c.close()
        return r.status, b

    def test_idempotency_key_too_long(self):
        self.job(self.base(), "Idempotency-Key", headers={"Idempotency-Key": "k" * 256})

    # ---- POST /v1/files ----------------------------------------------------------
    def multipart(self, parts, boundary="----dtbad"):
        body = b""
        for name, value, filename in parts:
            disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
            body += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode()
            body += value if isinstance(value, bytes) else value.encode()
            body += b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        return self.s.api("POST", "/v1/files", body,
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def test_upload_errors(self):
        data = TRAIN_ROWS.encode()
        cases = [
            ([("file", data, "t.jsonl")], "purpose"),
            ([("purpose", "fine-tune", None)], "file"),
            ([("purpose", "assistants", None), ("file", data, "t.jsonl")], "purpose"),
            ([("purpose", "fine-tune", None), ("file", data, "t.jsonl"),
              ("expires_after[anchor]", "created_at", None), ("expires_after[seconds]", "10", None)],
             "expires_after"),
            ([("purpose", "fine-tune", None), ("file", data, "t.jsonl"),
              ("expires_after[anchor]", "last_access", None), ("expires_after[seconds]", "3600", None)],
             "expires_after"),
            ([("purpose", "fine-tune", None), ("file", data, "t.jsonl"), ("surprise", "1", None)], "surprise"),
        ]
        for parts, param in cases:
            with self.subTest(parts=[p[0] for p in parts], param=param):
                st, _, b = self.multipart(parts)
                self.assertEqual(st, 400, b)
                # expires_after[x] may be named expires_after.x
                self.assertTrue(b["error"]["param"] == param or param == "expires_after" and
                                b["error"]["param"].startswith(param), b)
        self.err("POST", "/v1/files", {"purpose": "fine-tune"})
        self.err("POST", "/v1/files", b"junk", headers={"Content-Type": "multipart/form-data; boundary=zz"})
        self.err("POST", "/v1/files", b"junk", headers={"Content-Type": "text/plain"})

    def test_oversized_upload(self):
        # Just over the cap (cut while streaming), and far over it (refused
        # on Content-Length before reading).
        for n in (MAX_UPLOAD + 100, 4 * MAX_UPLOAD):
            rows = (TRAIN_ROWS.encode() * (n // len(TRAIN_ROWS) + 1))[:n]
            st, _, b = self.s.upload(rows)
            self.assertEqual(st, 413, b)
            self.assertIn("error", b)

    def test_line_over_the_cap_is_400_naming_line_and_limit(self):
        """A line longer than DELTATUNE_MAX_LINE_BYTES (4096 here; its "\\n" not
        counted) is a 400 naming the line and the limit, and nothing is stored;
        a line of exactly the limit is accepted. About 2 s."""
        ok = json.dumps({"text": "fine"}) + "\n"
        at_cap = '{"text": "' + "x" * (MAX_LINE - 12) + '"}'
        self.assertEqual(len(at_cap), MAX_LINE)
        for long_line in (at_cap[:-2] + 'xx"}', at_cap[:-2] + "x" * 50000 + '"}'):
            st, _, b = self.s.upload(ok + ok + long_line + "\n" + ok)
            self.assertEqual(st, 400, b)
            self.assertEqual(b["error"]["param"], "file", b)
            self.assertIn("line 3 ", b["error"]["message"], b)
            self.assertIn(f"limit of {MAX_LINE} bytes", b["error"]["message"], b)
        st, _, f = self.s.upload(ok + at_cap + "\n" + ok)
        self.assertEqual((st, f.get("status")), (200, "processed"), f)
        self.call("DELETE", f"/v1/files/{f['id']}")

    # ---- queries and ids ------------------------------------------------------
    def test_bad_queries(self):
        j = GOOD["job"]
        for path, param in (("/v1/files?limit=0", "limit"), ("/v1/files?limit=10001", "limit"),
                            ("/v1/files?limit=abc", "limit"), ("/v1/files?order=sideways", "order"),
                            ("/v1/fine_tuning/jobs?limit=0", "limit"), ("/v1/fine_tuning/jobs?limit=101", "limit"),
                            ("/v1/fine_tuning/jobs?limit=1x", "limit"),
                            (f"/v1/fine_tuning/jobs/{j}/events?limit=0", "limit"),
                            (f"/v1/fine_tuning/jobs/{j}/events?limit=1001", "limit"),
                            (f"/v1/fine_tuning/jobs/{j}/checkpoints?limit=0", "limit"),
                            (f"/v1/fine_tuning/jobs/{j}/checkpoints?limit=101", "limit")):
            with self.subTest(path=path):
                self.err("GET", path, param=param)

    def test_unknown_ids(self):
        j, m = "ftjob-000000000000000000000000", "no-such-model"
        for method, path in (("GET", "/v1/files/file-000000000000000000000000"),
                             ("GET", "/v1/files/file-000000000000000000000000/content"),
                             ("DELETE", "/v1/files/file-000000000000000000000000"),
                             ("GET", f"/v1/fine_tuning/jobs/{j}"), ("POST", f"/v1/fine_tuning/jobs/{j}/cancel"),
                             ("POST", f"/v1/fine_tuning/jobs/{j}/pause"), ("POST", f"/v1/fine_tuning/jobs/{j}/resume"),
                             ("GET", f"/v1/fine_tuning/jobs/{j}/events"), ("GET", f"/v1/fine_tuning/jobs/{j}/checkpoints"),
                             ("GET", "/v1/fine_tuning/jobs/garbage%00id"),
                             ("GET", f"/v1/models/{m}"), ("DELETE", f"/v1/models/{m}"),
                             ("GET", f"/v1/models/{m}/files"), ("GET", f"/v1/models/{m}/files/config.json"),
                             ("GET", f"/v1/models/{m}/archive"),
                             ("GET", f"/v1/models/{TINY_ID}/files/nope.bin"),
                             ("GET", f"/v1/models/{TINY_ID}/files/..%2F..%2F..%2Fetc%2Fpasswd")):
            with self.subTest(route=f"{method} {path}"):
                self.err(method, path, want=404)
        self.err("DELETE", f"/v1/models/{TINY_ID}", want=403)

    def test_state_conflicts(self):
        j = GOOD["job"]  # succeeded
        for action in ("cancel", "pause", "resume"):
            self.err("POST", f"/v1/fine_tuning/jobs/{j}/{action}", want=409)


class BadJsonl(StackTest):
    """Bad JSONL is stored (status error) - the one bad input that adds a row."""

    def test_bad_lines_are_named(self):
        before = self.count("files")
        content = "\n".join([json.dumps({"prompt": "a", "completion": "b"}), "not json",
                             json.dumps({"prompt": "a"}), json.dumps({"messages": "x"}),
                             json.dumps({"text": 5})]) + "\n"
        st, _, f = self.s.upload(content)
        self.assertEqual(st, 200, f)
        self.assertEqual(f["status"], "error", f)
        d = f["status_details"]
        for line in (2, 3, 4, 5):
            self.assertRegex(d, rf"(\bline {line}\b|:{line}:)", d)
        self.assertNotRegex(d, r"(\bline 1\b|:1:)")
        self.assertNotIn(self.s.run, d, "a server path leaked")
        self.assertEqual(self.count("files"), before + 1)
        got = self.call("GET", f"/v1/files/{f['id']}")
        self.assertEqual((got["status"], got["status_details"]), ("error", d))
        for content in ("", "\n\n", "{}\n"):
            with self.subTest(content=content):
                st, _, f = self.s.upload(content)
                self.assertEqual(st, 200, f)
                self.assertEqual(f["status"], "error", f)
                self.assertTrue(f["status_details"], f)


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def peak_rss_kib(cmd):
    """Runs cmd; returns (exit status, stderr, its peak RSS in KiB)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stderr.close()
    return p.returncode, err.decode(errors="replace"), ru.ru_maxrss


class CostlyInput(unittest.TestCase):
    """Input whose cost grows with one line's length: its own stack, with the
    default line cap (1 MiB) and an upload cap big enough for a 64 MiB line."""
    s = None

    @classmethod
    def setUpClass(cls):
        cls.s = start_stack(env={"DELTATUNE_MAX_UPLOAD_BYTES": "96M"})

    @classmethod
    def tearDownClass(cls):
        if cls.s:
            cls.s.stop()

    def test_long_line_refused_while_streaming_server_memory_bounded(self):
        """A 64 MiB line is refused as it streams in (400 naming line 2 and the
        1 MiB cap) and the server's peak memory (VmHWM) grows by less than
        16 MiB: the line is neither stored nor held. (Before: stored, then
        validated with the whole line and its JSON in memory, ~3 bytes per
        byte.) About 2 s."""
        s = self.s
        pid = s.pid("server")
        line = b'{"text": "' + b"ab " * ((64 << 20) // 3) + b'"}'
        body = b'{"text": "short"}\n' + line + b"\n" + b'{"text": "short"}\n'
        before = vm_hwm_kib(pid)
        files_before = s.psql("SELECT count(*) FROM files")
        st, _, b = s.upload(body)
        grown = vm_hwm_kib(pid) - before
        self.assertLess(grown, 16 << 10, f"server VmHWM grew by {grown} KiB for a "
                        f"{len(line) >> 20} MiB line (status {st})")
        self.assertEqual(st, 400, b)
        self.assertEqual(b["error"]["param"], "file", b)
        self.assertIn("line 2 ", b["error"]["message"])
        self.assertIn(f"limit of {1 << 20} bytes", b["error"]["message"])
        self.assertEqual(s.psql("SELECT count(*) FROM files"), files_before)
        files = os.path.join(s.run, "artifacts", "files")
        deadline = time.time() + 10
        while glob.glob(os.path.join(files, ".upload-*")) and time.time() < deadline:
            time.sleep(0.1)  # removed as the connection completes
        self.assertEqual(glob.glob(os.path.join(files, ".upload-*")), [])
        print(f"\nfigures: 64 MiB line upload: server VmHWM +{grown} KiB", file=sys.stderr)

    def test_train_tokenizes_a_long_line_only_up_to_seq_len(self):
        """`deltatune train` loading a file whose first row is one 4 MB word
        (no spaces: one BPE piece) peaks at less than 8 MB more than on a file
        of short rows: the text is tokenized only as far as seq_len + 1 tokens
        need. (Before: the whole word was BPE-encoded, ~14 bytes per byte and
        8 s.) The run stops right after loading --data (--valid is missing),
        so the figure is the loader's. About 2 s."""
        tmp = tempfile.mkdtemp(prefix="costly-", dir=self.s.run)
        rng = random.Random(3)
        word = bytes(97 + b % 26 for b in rng.randbytes(4_000_000)).decode()
        short = "".join(json.dumps({"text": f"hello world {i}"}) + "\n" for i in range(8))
        peaks = {}
        for name, content in (("short", short), ("long", json.dumps({"text": word}) + "\n" + short)):
            path = os.path.join(tmp, name + ".jsonl")
            with open(path, "w") as f:
                f.write(content)
            rc, err, peaks[name] = peak_rss_kib([
                os.path.join(self.s.build, "deltatune"), "train", "--model", self.s.model_path,
                "--data", path, "--valid", os.path.join(tmp, "missing.jsonl"),
                "--out", os.path.join(tmp, "out"), "--seq-len", "32", "--threads", "1"])
            self.assertNotEqual(rc, 0)
            self.assertIn("missing.jsonl", err)  # --data loaded, --valid not there
        grown = peaks["long"] - peaks["short"]
        self.assertLess(grown, 8000, f"peak RSS grew by {grown} KiB for a 4 MB line")
        print(f"\nfigures: train on a 4 MB line: peak RSS +{grown} KiB", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
