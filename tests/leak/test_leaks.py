"""Valgrind leak check of deltatune-server and deltatune-worker over a full
job lifecycle (make test-valgrind; tests/leak/setup installs valgrind).

One stack on the tiny model whose server and worker run under valgrind
(DELTATUNE_WRAP, see scripts/up). Over HTTP: upload, a 3-step delta_lora job
(events, checkpoints, models, a merged file download), a second job created
and cancelled, a file deleted. Then the stack stops gracefully (SIGTERM,
scripts/down waits) and every vg.<pid>.log must show no definite/indirect
leak and no memory error. Python standard library only.
"""
import glob
import os
import re
import shutil
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack, TRAIN_ROWS, TINY_ID  # noqa: E402

SUPP = os.path.join(HERE, "deltatune.supp")
FAST = {"seq_len": 32, "batch_size": 2}


def hp(**kw):
    h = dict(FAST)
    h.update(kw)
    return {"type": "delta_lora", "delta_lora": {"hyperparameters": h}}


def vg_wrap(run):
    return ("valgrind --leak-check=full --show-leak-kinds=definite,indirect "
            "--errors-for-leak-kinds=definite,indirect --num-callers=30 "
            f"--log-file={run}/vg.%p.log --suppressions={SUPP}")


class ValgrindLeaks(unittest.TestCase):
    maxDiff = None

    def call(self, s, method, path, body=None, want=200, **kw):
        st, hd, b = s.api(method, path, body, timeout=120, **kw)
        self.assertEqual(st, want, f"{method} {path} -> {st} (want {want}): {b!r:.600}")
        return b

    def test_full_lifecycle_no_leaks(self):
        build = os.path.abspath(os.environ.get("BUILD", os.path.join(ROOT, "build")))
        for b in ("deltatune", "deltatune-server", "deltatune-worker"):
            if not os.access(os.path.join(build, b), os.X_OK):
                self.fail(f"{build}/{b} is missing: run 'make all' first")
        if not shutil.which("valgrind"):
            self.fail("valgrind is not installed: run tests/leak/setup")
        run = tempfile.mkdtemp(prefix="dt-leak-", dir=os.environ.get("TMPDIR", "/tmp"))
        t0 = time.time()
        s = Stack(model="tiny", threads=1, build=build, run_dir=run, env={
            "DELTATUNE_WRAP": vg_wrap(run),
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "DT_NO_BLAS_TUNE": "1",             # no re-exec of /proc/self/exe (would leave valgrind)
            "DELTATUNE_LEASE_SECONDS": "600",   # valgrind is ~50x slower: no lease expiry mid-step
            "DELTATUNE_UP_TIMEOUT": "180",      # readiness wait in scripts/up
        })
        try:
            s.start()
            self.lifecycle(s)
        finally:
            s.stop(keep=True)  # SIGTERM; scripts/down waits for each process to exit
        try:
            print(f"\nleak: stack ran {time.time() - t0:.0f} s", file=sys.stderr)
            self.check_logs(run)
        finally:
            if not os.environ.get("DELTATUNE_TEST_KEEP"):
                shutil.rmtree(run, ignore_errors=True)

    def lifecycle(self, s):
        st, _, f = s.upload(TRAIN_ROWS)
        self.assertEqual(st, 200, f)
        body = {"model": TINY_ID, "training_file": f["id"],
                "method": hp(max_steps=3, checkpoint_interval=1), "suffix": "vg"}
        j = self.call(s, "POST", "/v1/fine_tuning/jobs", body)
        self.assertIn(j["status"], ("validating_files", "queued", "running"))
        j = s.wait_job(j["id"], {"succeeded", "failed", "cancelled"}, timeout=600)
        self.assertEqual(j["status"], "succeeded", j)
        ev = self.call(s, "GET", f"/v1/fine_tuning/jobs/{j['id']}/events?limit=100")["data"]
        self.assertTrue(ev, "no events")
        ck = self.call(s, "GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")["data"]
        self.assertTrue(ck, "no checkpoints")
        model = j["fine_tuned_model"]
        models = {m["id"] for m in self.call(s, "GET", "/v1/models")["data"]}
        self.assertIn(model, models)
        files = self.call(s, "GET", f"/v1/models/{model}/files")["data"]
        self.assertTrue(files)
        name = files[0]["name"]
        st, _, b = s.api("GET", f"/v1/models/{model}/files/{name}", raw=True, timeout=120)
        self.assertEqual(st, 200)
        self.assertEqual(len(b), files[0]["bytes"])

        body["method"] = hp(max_steps=200)
        j2 = self.call(s, "POST", "/v1/fine_tuning/jobs", body)
        time.sleep(2)
        c = self.call(s, "POST", f"/v1/fine_tuning/jobs/{j2['id']}/cancel")
        self.assertIn(c["status"], ("cancelled", "queued", "running"))  # running: the worker stops it
        s.wait_job(j2["id"], {"cancelled"}, timeout=300)

        st, _, f2 = s.upload(TRAIN_ROWS, filename="gone.jsonl")
        self.assertEqual(st, 200, f2)
        d = self.call(s, "DELETE", f"/v1/files/{f2['id']}")
        self.assertTrue(d["deleted"])

    def check_logs(self, run):
        logs = sorted(glob.glob(os.path.join(run, "vg.*.log")))
        seen = set()
        for path in logs:
            with open(path, errors="replace") as fh:
                text = fh.read()
            m = re.search(r"^==\d+== Command: (\S+)", text, re.M)
            if not m:
                continue
            prog = os.path.basename(m.group(1))
            if prog not in ("deltatune-server", "deltatune-worker"):
                continue
            seen.add(prog)
            summary = [l for l in text.splitlines()
                       if re.search(r"(definitely|indirectly|possibly) lost:|still reachable:|ERROR SUMMARY:", l)]
            print(f"leak: {prog} ({os.path.basename(path)}):", file=sys.stderr)
            for l in summary:
                print("    " + l, file=sys.stderr)
            with self.subTest(prog=prog, log=path):
                # SIGTERM must lead to an orderly exit that frees what the
                # process owns, not death by the signal (which hides leaks).
                self.assertNotRegex(text, r"Process terminating with default action of signal",
                                    f"{prog} did not shut down cleanly on SIGTERM, see {path}")
                self.assertRegex(text, r"ERROR SUMMARY: 0 errors",
                                 f"{prog}: memory errors or leaks, see {path}:\n{text[-20000:]}")
                for kind in ("definitely", "indirectly"):
                    for n in re.findall(rf"{kind} lost: ([\d,]+) bytes", text):
                        self.assertEqual(n, "0", f"{prog}: {kind} lost {n} bytes, see {path}:\n{text[-20000:]}")
        self.assertEqual(seen, {"deltatune-server", "deltatune-worker"},
                         f"valgrind logs missing for some process: {logs}")


if __name__ == "__main__":
    unittest.main()
