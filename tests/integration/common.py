"""Shared pieces of the HTTP integration tests (tests/integration/test_*.py).

Each test module starts one stack (tests/harness/stack.py) in setUpModule
and stops it in tearDownModule; its tests share it and speak HTTP only
(plus psql for row counts). BUILD (environment) picks the build directory,
as for the harness. Python standard library only.
"""
import hashlib
import json
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack, TRAIN_ROWS, TINY_ID  # noqa: E402,F401

# Jobs on the tiny model: short rows, a few steps (~20 ms each on one thread).
FAST = {"seq_len": 32, "batch_size": 2}


def hp(method="delta_lora", **kw):
    h = dict(FAST)
    h.update(kw)
    return {"type": method, method: {"hyperparameters": h}}


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def start_stack(env=None):
    """A stack on the tiny model, or SkipTest when the binaries are missing."""
    build = os.path.abspath(os.environ.get("BUILD", os.path.join(ROOT, "build")))
    for b in ("deltatune", "deltatune-server", "deltatune-worker"):
        if not os.access(os.path.join(build, b), os.X_OK):
            raise unittest.SkipTest(f"{build}/{b} is missing: run 'make all' first")
    return Stack(model="tiny", env=env, build=build).start()


def setUpModule():
    """The module fixture of a test module whose tests share one stack on the
    tiny model: `from common import setUpModule, tearDownModule` (unittest
    and pytest look the two names up on the test module)."""
    StackTest.s = start_stack()


def tearDownModule():
    if StackTest.s:
        StackTest.s.stop()
        StackTest.s = None


class StackTest(unittest.TestCase):
    """Base class: self.s is the module's stack (set by the module)."""
    s = None
    maxDiff = None

    # ---- requests with checks ------------------------------------------------
    def call(self, method, path, body=None, want=200, **kw):
        st, hd, b = self.s.api(method, path, body, **kw)
        self.assertEqual(st, want, f"{method} {path} -> {st} (want {want}): {b!r:.600}")
        return b if not kw.get("raw") else (hd, b)

    def err(self, method, path, body=None, want=400, param=None, **kw):
        """A request that must fail with `want` and the error envelope."""
        st, hd, b = self.s.api(method, path, body, **kw)
        self.assertEqual(st, want, f"{method} {path} {body!r:.300} -> {st} (want {want}): {b!r:.600}")
        self.assertIsInstance(b, dict, f"{method} {path}: error body is not JSON: {b!r:.300}")
        e = b.get("error")
        self.assertIsInstance(e, dict, b)
        for k in ("message", "type", "param", "code"):
            self.assertIn(k, e, b)
        self.assertTrue(e["message"], b)
        if param is not None:
            self.assertEqual(e["param"], param, f"{method} {path} {body!r:.300}: {b}")
        return e

    def upload_ok(self, content=TRAIN_ROWS, key=None, filename="train.jsonl"):
        st, _, f = self.s.upload(content, key=key, filename=filename)
        self.assertEqual(st, 200, f)
        self.assertEqual(f["status"], "processed", f)
        return f

    def create_job(self, file_id, method=None, key=None, headers=None, want=200, **extra):
        body = {"model": TINY_ID, "training_file": file_id, "method": method or hp(max_steps=5)}
        body.update(extra)
        st, hd, j = self.s.api("POST", "/v1/fine_tuning/jobs", body, key=key, headers=headers)
        self.assertEqual(st, want, j)
        return j

    def wait(self, job_id, statuses, key=None, timeout=180):
        return self.s.wait_job(job_id, set(statuses), timeout=timeout, key=key)

    def wait_until(self, what, fn, timeout=120, interval=0.2):
        end = time.time() + timeout
        while True:
            v = fn()
            if v:
                return v
            if time.time() > end:
                self.fail(f"timed out after {timeout}s waiting for {what}\n"
                          f"worker log:\n{self.s.log('worker')[-3000:]}")
            time.sleep(interval)

    def list_all(self, path, limit, key=None):
        """Follows `after` through a list endpoint; returns (items, pages)."""
        items, after, pages = [], None, 0
        sep = "&" if "?" in path else "?"
        while True:
            q = f"{path}{sep}limit={limit}" + (f"&after={after}" if after else "")
            page = self.call("GET", q, key=key)
            pages += 1
            self.assertEqual(page["object"], "list", page)
            self.assertLessEqual(len(page["data"]), limit, page)
            items += page["data"]
            if not page["has_more"]:
                return items, pages
            self.assertEqual(len(page["data"]), limit, page)
            after = page["data"][-1]["id"]
            self.assertEqual(page["last_id"], after, page)
            self.assertLess(pages, 1000)

    def count(self, table, where="true"):
        return int(self.s.psql(f"SELECT count(*) FROM {table} WHERE {where}"))


def dump(x):
    return json.dumps(x, indent=1)[:2000]
