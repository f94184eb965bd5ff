"""Many owners on one service (issue 13, "Quotas, fairness, limits"):
per-owner limits on active jobs (429), storage and upload size (413), set
with `deltatune owners set` and shown by GET /v1/usage; fair claiming
between owners; the per-job runtime limit; and total step counts that would
overflow (400). One stack; each test uses its own owners. About 30-40 s
on this machine in all (the stack's start included)."""
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, start_stack, hp, TRAIN_ROWS, TINY_ID  # noqa: E402

S = None
MAX_RUNTIME = 3600   # the server's DELTATUNE_MAX_RUNTIME_SECONDS here
MAX_JOBS = 50        # DELTATUNE_OWNER_MAX_JOBS
MAX_STORAGE = 1 << 30  # DELTATUNE_OWNER_MAX_STORAGE


def setUpModule():
    global S
    S = start_stack(env={"DELTATUNE_MAX_RUNTIME_SECONDS": str(MAX_RUNTIME),
                         "DELTATUNE_OWNER_MAX_JOBS": str(MAX_JOBS),
                         "DELTATUNE_OWNER_MAX_STORAGE": str(MAX_STORAGE)})
    StackTest.s = S


def tearDownModule():
    if S:
        S.stop()


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


class Quotas(StackTest):
    def owners_set(self, owner, *args):
        return self.s.cli("owners", "set", owner, *args).stdout

    def usage(self, key):
        u = self.call("GET", "/v1/usage", key=key)
        self.assertEqual(u["object"], "usage", u)
        return u

    def finish_all(self, ids, key=None):
        """Cancels what is still unfinished and waits until nothing runs."""
        for i in ids:
            self.s.api("POST", f"/v1/fine_tuning/jobs/{i}/cancel", key=key)
        for i in ids:
            self.wait(i, {"succeeded", "failed", "cancelled"}, key=key, timeout=60)

    def test_active_jobs_limit_is_429_for_every_key_of_the_owner(self):
        """429 past the owner's active-jobs limit, whichever of its keys is
        used; a slot frees when a job ends. About 4 s."""
        k1, k2 = self.s.new_key("q-jobs"), self.s.new_key("q-jobs")
        self.owners_set("q-jobs", "--max-jobs", "2")
        f = self.upload_ok(key=k1)
        long = hp(max_steps=100000)
        j1 = self.create_job(f["id"], long, key=k1)
        j2 = self.create_job(f["id"], long, key=k2)
        ids = [j1["id"], j2["id"]]
        try:
            for k in (k1, k2):
                e = self.err("POST", "/v1/fine_tuning/jobs", {"model": TINY_ID, "training_file": f["id"],
                                                              "method": long}, want=429, key=k)
                self.assertEqual(e["code"], "too_many_active_jobs", e)
                self.assertIn("has 2 active jobs", e["message"])
                self.assertIn("limit is 2", e["message"])
            self.assertEqual(self.usage(k2)["active_jobs"], 2)
            # Another owner is not limited by q-jobs's jobs.
            ko = self.s.new_key("q-jobs-other")
            fo = self.upload_ok(key=ko)
            jo = self.create_job(fo["id"], long, key=ko)
            self.finish_all([jo["id"]], key=ko)
            # Once one ends, the owner may create one again.
            self.call("POST", f"/v1/fine_tuning/jobs/{j1['id']}/cancel", key=k1)
            self.wait(j1["id"], {"cancelled"}, key=k1, timeout=60)
            ids.append(self.create_job(f["id"], long, key=k1)["id"])
        finally:
            self.finish_all(ids, key=k1)

    def test_storage_and_upload_limits_are_413(self):
        """413 for an upload over the owner's upload limit, an upload past
        its storage, and a job while its storage is full; GET /v1/usage
        counts the uploads. About 3 s."""
        k = self.s.new_key("q-disk")
        size = len(TRAIN_ROWS.encode())
        self.assertGreater(size, 1024)
        f = self.upload_ok(key=k)
        self.assertEqual(f["bytes"], size)
        # Upload size: 1K for this owner.
        self.owners_set("q-disk", "--max-upload", "1K")
        st, _, b = self.s.upload(TRAIN_ROWS, key=k)
        self.assertEqual(st, 413, b)
        self.assertEqual(b["error"]["param"], "file", b)
        self.assertIn("1024 bytes", b["error"]["message"])
        # Storage: room for less than a second copy.
        self.owners_set("q-disk", "--max-upload", "default", "--max-storage", str(size + 100))
        st, _, b = self.s.upload(TRAIN_ROWS, key=k)
        self.assertEqual(st, 413, b)
        self.assertIn(f"{size} of the limit of {size + 100} bytes", b["error"]["message"])
        self.assertEqual(self.usage(k)["storage_bytes"], size)  # the refused upload left nothing
        # Full: a new job (which would add checkpoints) is refused too.
        self.owners_set("q-disk", "--max-storage", str(size))
        e = self.err("POST", "/v1/fine_tuning/jobs", {"model": TINY_ID, "training_file": f["id"],
                                                      "method": hp(max_steps=1)}, want=413, key=k)
        self.assertEqual(e["code"], "storage_limit_exceeded", e)
        self.assertIn(f"stores {size} bytes", e["message"])
        self.assertIn(f"limit is {size} bytes", e["message"])
        # Deleting the file frees the space.
        self.call("DELETE", f"/v1/files/{f['id']}", key=k)
        self.assertEqual(self.usage(k)["storage_bytes"], 0)
        self.upload_ok(key=k)

    def test_usage_and_owners_cli(self):
        """GET /v1/usage shows the server's defaults, then what `deltatune
        owners set` gave the owner (K/M suffixes); `owners list` lists it;
        "default" restores a default; bad values exit 2. About 5 s."""
        k = self.s.new_key("q-usage")
        u = self.usage(k)
        self.assertEqual(u["owner"], "q-usage")
        self.assertEqual((u["active_jobs"], u["storage_bytes"], u["file_bytes"], u["job_bytes"]), (0, 0, 0, 0))
        self.assertEqual(u["limits"], {"max_active_jobs": MAX_JOBS, "max_storage_bytes": MAX_STORAGE,
                                       "max_upload_bytes": 512 << 20, "max_runtime_seconds": MAX_RUNTIME})
        self.owners_set("q-usage", "--max-jobs", "7", "--max-storage", "2M", "--max-upload", "512K")
        u = self.usage(k)
        self.assertEqual(u["limits"]["max_active_jobs"], 7)
        self.assertEqual(u["limits"]["max_storage_bytes"], 2 << 20)
        self.assertEqual(u["limits"]["max_upload_bytes"], 512 << 10)
        rows = [l.split() for l in self.s.cli("owners", "list").stdout.splitlines()]
        self.assertIn(["q-usage", "7", str(2 << 20), str(512 << 10), "0", "0"], rows)
        # 0 = no limit (null); "default" = the server's again.
        self.owners_set("q-usage", "--max-jobs", "default", "--max-storage", "0")
        u = self.usage(k)
        self.assertEqual(u["limits"]["max_active_jobs"], MAX_JOBS)
        self.assertIsNone(u["limits"]["max_storage_bytes"])
        for bad in (["--max-storage", "12X"], ["--max-jobs", "-1"], []):
            r = self.s.cli("owners", "set", "q-usage", *bad, check=False)
            self.assertEqual(r.returncode, 2, (bad, r.stderr))
        r = self.s.cli("owners", "set", "no/such", "--max-jobs", "1", check=False)
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_fair_claiming_between_owners(self):
        """Owner A queues 4 jobs, then owner B 1; with one worker, B's job
        starts right after A's first, not after all of A's. Then
        /v1/usage counts A's job directories (checkpoints, models) as they
        are on disk. About 9 s."""
        ka, kb = self.s.new_key("fair-a"), self.s.new_key("fair-b")
        fa, fb = self.upload_ok(key=ka), self.upload_ok(key=kb)
        # No worker while the queue fills, so that the order is the
        # claim's alone: stop scripts/up's worker (idle: SIGTERM ends it).
        pid = self.s.pid("worker")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

        def gone():
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
        self.wait_until("the worker to exit", gone, timeout=60)
        short = hp(max_steps=3)
        a = [self.create_job(fa["id"], short, key=ka)["id"] for _ in range(4)]
        b = self.create_job(fb["id"], short, key=kb)["id"]
        self.s.start_worker("fair-worker")
        for i in a:
            self.wait(i, {"succeeded"}, key=ka, timeout=120)
        self.wait(b, {"succeeded"}, key=kb, timeout=120)
        order = self.s.psql("SELECT id FROM jobs WHERE owner IN ('fair-a', 'fair-b') "
                            "ORDER BY started_at").split()
        self.assertEqual(order, [a[0], b, a[1], a[2], a[3]],
                         f"start order; A = {a}, B = {b}")
        # Storage counts what A's jobs left on disk.
        root = self.s.env["DELTATUNE_ARTIFACT_ROOT"]
        on_disk = sum(dir_bytes(os.path.join(root, "jobs", i)) for i in a)
        u = self.usage(ka)
        self.assertGreater(on_disk, 0)
        self.assertEqual(u["job_bytes"], on_disk)
        self.assertEqual(u["file_bytes"], fa["bytes"])
        self.assertEqual(u["storage_bytes"], on_disk + fa["bytes"])
        self.assertEqual(u["active_jobs"], 0)

    def test_runtime_limit(self):
        """max_runtime_seconds: 400 below 1 or above the server's limit; a
        job past it fails with max_runtime_exceeded after one attempt.
        About 3 s."""
        f = self.upload_ok()
        body = {"model": TINY_ID, "training_file": f["id"], "method": hp(max_steps=100000)}
        for bad in (0, -5, MAX_RUNTIME + 1, "60", 1.5):
            with self.subTest(max_runtime_seconds=bad):
                self.err("POST", "/v1/fine_tuning/jobs", dict(body, max_runtime_seconds=bad),
                         param="max_runtime_seconds")
        t0 = time.time()
        j = self.create_job(f["id"], hp(max_steps=100000), max_runtime_seconds=2)
        j = self.wait(j["id"], {"failed", "succeeded", "cancelled"}, timeout=60)
        self.assertEqual(j["status"], "failed", j)
        self.assertEqual(j["error"]["code"], "max_runtime_exceeded", j)
        self.assertEqual(j["max_runtime_seconds"], 2, j)
        self.assertEqual(j["error"]["param"], "max_runtime_seconds", j)
        self.assertIn("max_runtime_seconds (2 s)", j["error"]["message"])
        self.assertLess(time.time() - t0, 30)
        self.assertEqual(self.s.psql(f"SELECT attempt FROM jobs WHERE id = '{j['id']}'"), "1")

    def test_total_steps_overflow_is_400(self):
        """n_epochs x rows whose optimizer steps pass 2^31 - 1 (21.5 M rows
        x 100 epochs at batch 1, which wrapped the engine's int) is a 400
        naming n_epochs where the client gave it; the same rows at batch 4
        fit. The row count is the files table's, set here as if the file
        were that long. About 1 s."""
        f = self.upload_ok()
        self.s.psql(f"UPDATE files SET nlines = 21500000 WHERE id = '{f['id']}'")
        e = self.err("POST", "/v1/fine_tuning/jobs",
                     {"model": TINY_ID, "training_file": f["id"],
                      "method": {"type": "lora", "lora": {"hyperparameters": {"n_epochs": 100, "batch_size": 1}}}},
                     param="method.lora.hyperparameters.n_epochs")
        self.assertIn("2150000000 optimizer steps", e["message"])
        self.err("POST", "/v1/fine_tuning/jobs",
                 {"model": TINY_ID, "training_file": f["id"],
                  "hyperparameters": {"n_epochs": 100, "batch_size": 1}},
                 param="hyperparameters.n_epochs")
        ok = self.create_job(f["id"], {"type": "lora", "lora": {"hyperparameters": {
            "n_epochs": 100, "batch_size": 4, "seq_len": 32}}})
        self.finish_all([ok["id"]])


if __name__ == "__main__":
    unittest.main()
