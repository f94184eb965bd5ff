"""Job lifecycle under stop requests (issue 13): cancel within a micro-batch,
SIGTERM of a worker in the middle of a long optimizer step, the last request
wins (cancel on the last step, pause then resume before the pause took
effect), and checkpoint retention.

The two races are made deterministic with a lock, not with sleeps: the test
holds `LOCK TABLE job_events IN SHARE MODE` in its own psql session. Every
event insert then waits (the worker's metrics event right after a progress
write, the server's "Cancellation requested" after its UPDATE committed),
while plain reads and UPDATEs of the jobs row go on. So the worker is held
right after it looked at the flags, the API's request commits, and the lock
is released: the worker then ends the job the way it decided before the
request. One stack for the module (lease 6 s: a heartbeat every 2 s).
Takes about 2 minutes on the shared 2-core machine (stack start included).
"""
import os
import signal
import subprocess
import threading
import time
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, start_stack, hp  # noqa: E402

S = None


def setUpModule():
    global S
    S = start_stack(env={"DELTATUNE_LEASE_SECONDS": "6", "DELTATUNE_RESCUE_INTERVAL": "1"})


def tearDownModule():
    if S:
        S.stop()


def dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# About 35 ms a micro-batch of 2 rows on the tiny model (one thread): 200
# micro-batches make an optimizer step of several seconds.
SLOW = 200


class EventLock:
    """Holds LOCK TABLE job_events IN SHARE MODE in a psql session until
    release(): event inserts wait, reads and jobs-row updates do not."""

    def __init__(self, s):
        self.p = subprocess.Popen(
            ["psql", "-h", "127.0.0.1", "-p", s.ports["PG_PORT"], "-U", "postgres", "-d", "deltatune",
             "-qAt", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.p.stdin.write("BEGIN; LOCK TABLE job_events IN SHARE MODE; SELECT 'locked';\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline().strip()
        if line != "locked":
            raise RuntimeError(f"psql lock: {line!r} {self.p.stderr.read()}")

    def release(self):
        if self.p.poll() is None:
            self.p.stdin.write("COMMIT;\n")
            self.p.stdin.close()
            self.p.wait(timeout=30)


class Call(threading.Thread):
    """An API call that may wait on the lock: run in the background."""

    def __init__(self, s, method, path):
        super().__init__(daemon=True)
        self.s, self.method, self.path, self.result = s, method, path, None
        self.start()

    def run(self):
        self.result = self.s.api(self.method, self.path, timeout=120)

    def get(self):
        self.join(120)
        return self.result


class Lifecycle(StackTest):
    s = property(lambda self: S)

    def row(self, jid, cols):
        return S.psql(f"SELECT {cols} FROM jobs WHERE id = '{jid}'").split("|")

    def metrics_events(self, jid):
        return self.count("job_events", f"job_id = '{jid}' AND type = 'metrics'")

    def out_dir(self, jid):
        rel = S.psql(f"SELECT output_dir FROM jobs WHERE id = '{jid}'")
        return rel if rel.startswith("/") else os.path.join(S.run, "artifacts", rel)

    def ckpt_files(self, jid, name):
        d = os.path.join(self.out_dir(jid), "checkpoints")
        if not os.path.isdir(d):
            return []
        return sorted(os.path.join(d, c, name) for c in os.listdir(d)
                      if os.path.exists(os.path.join(d, c, name)))

    def warm_pool(self, want=3):
        """The server connects its pool lazily and prepares every statement
        at connect, which waits on the event lock: make `want` pool
        connections exist first (concurrent requests), so that two requests
        can commit while the lock is held."""
        def backends():
            return int(S.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'deltatune' "
                              "AND backend_type = 'client backend'"))
        base = 4  # the worker's two, the server's background one, this psql

        def burst():
            ts = [Call(S, "GET", "/v1/fine_tuning/jobs?limit=100") for _ in range(8)]
            for t in ts:
                t.get()
            return backends() >= base + want
        self.wait_until(f"{want} server pool connections", burst, 60, 0)

    def slow_job(self, fid, steps, accum=SLOW, method="lora"):
        return self.create_job(fid, hp(method, max_steps=steps, gradient_accumulation_steps=accum,
                                       checkpoint_interval=1000))

    # ---- cancel and pause within a micro-batch -------------------------------
    def test_1_cancel_stops_within_a_micro_batch(self):
        """gradient_accumulation_steps 1024 (an optimizer step of about 35 s
        here): a cancel ends the job before its first step completes, within
        seconds. Before the fix it ran the whole step first. About 8 s."""
        fid = self.upload_ok()["id"]
        j = self.slow_job(fid, 2, accum=1024)
        self.wait_until("the job to train", lambda: self.count(
            "job_events", f"job_id = '{j['id']}' AND message LIKE 'Training %'"), 60, 0.1)
        t0 = time.time()
        c = self.call("POST", f"/v1/fine_tuning/jobs/{j['id']}/cancel")
        self.assertTrue(c["cancel_requested"], c)
        self.assertEqual(c["status"], "running", c)
        done = self.wait(j["id"], {"cancelled", "succeeded", "failed"}, timeout=120)
        took = time.time() - t0
        self.assertEqual(done["status"], "cancelled", done)
        step = int(self.row(j["id"], "coalesce(step, 0)")[0])
        self.assertEqual(step, 0, "the optimizer step in progress was finished before the cancel")
        self.assertLess(took, 10, f"cancel took {took:.1f} s")
        print(f"figures: cancel -> cancelled in {took:.1f} s, steps completed {step}")

    def test_1b_pause_stops_within_a_micro_batch(self):
        """Pause in the middle of step 2 (a step of several seconds): the
        job is paused at once with a resumable checkpoint of step 1 (the
        partial accumulation of step 2 is dropped), not after finishing
        step 2. About 12 s."""
        fid = self.upload_ok()["id"]
        j = self.slow_job(fid, 3)
        jid = j["id"]
        self.wait_until("step 1's metrics event", lambda: self.metrics_events(jid) >= 1, 120, 0.05)
        t0 = time.time()
        p = self.call("POST", f"/v1/fine_tuning/jobs/{jid}/pause")
        self.assertTrue(p["pause_requested"] or p["status"] == "paused", p)
        done = self.wait(jid, {"paused", "succeeded", "failed", "cancelled"}, timeout=120)
        took = time.time() - t0
        self.assertEqual(done["status"], "paused", done)
        ck = self.call("GET", f"/v1/fine_tuning/jobs/{jid}/checkpoints")["data"]
        self.assertEqual([c["step_number"] for c in ck], [1], ck)
        self.assertEqual(len(self.ckpt_files(jid, "optimizer.safetensors")), 1)
        self.assertLess(took, 5, f"pause took {took:.1f} s")
        print(f"figures: pause -> paused in {took:.1f} s at step 1")
        self.call("POST", f"/v1/fine_tuning/jobs/{jid}/cancel")

    # ---- the last accepted request wins ---------------------------------------
    def test_2_cancel_on_the_last_step_is_honoured(self):
        """Cancel accepted after the worker's last progress write (its last
        look at the flags before the fix): the job ends cancelled, with no
        fine-tuned model, not succeeded. About 16 s."""
        fid = self.upload_ok()["id"]
        j = self.slow_job(fid, 2, method="full")
        jid = j["id"]
        # Step 1 and its metrics event are written; step 2 (the last) runs.
        self.wait_until("step 1's metrics event", lambda: self.metrics_events(jid) >= 1, 120, 0.05)
        lock = EventLock(S)
        try:
            # The worker writes step 2's progress, then waits on its event.
            self.wait_until("the last step's progress", lambda: self.row(jid, "step")[0] == "2",
                            120, 0.05)
            cancel = Call(S, "POST", f"/v1/fine_tuning/jobs/{jid}/cancel")
            self.wait_until("the cancel to commit",
                            lambda: self.row(jid, "cancel_requested")[0] == "t", 30, 0.05)
        finally:
            lock.release()
        st, _, c = cancel.get()
        self.assertEqual(st, 200, c)
        self.assertEqual((c["status"], c["cancel_requested"]), ("running", True), c)
        done = self.wait(jid, {"cancelled", "succeeded", "failed"}, timeout=120)
        self.assertEqual(done["status"], "cancelled", done)
        self.assertIsNone(done.get("fine_tuned_model"), done)
        self.assertEqual(self.count("models", f"job_id = '{jid}' AND kind = 'fine_tuned'"), 0)
        self.assertFalse(os.path.exists(os.path.join(self.out_dir(jid), "merged")),
                         "a cancelled job left its export behind")

    def test_3_pause_then_resume_before_the_pause_took_effect(self):
        """Pause, the worker sees it, resume answers 200 running before the
        worker stopped: the job goes on and succeeds (before the fix it
        ended paused). About 20 s."""
        fid = self.upload_ok()["id"]
        j = self.slow_job(fid, 3)
        jid = j["id"]
        self.wait_until("step 1's metrics event", lambda: self.metrics_events(jid) >= 1, 120, 0.05)
        self.warm_pool()
        lock = EventLock(S)
        try:
            # The rescuers (server and the worker's keeper thread) insert
            # their events in the same statement: wait until both wait, so
            # only the worker's training thread can see the pause (with its
            # progress write at the end of step 2, then it waits too).
            self.wait_until("the rescuers to wait on the lock", lambda: int(S.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'WITH r AS (UPDATE jobs%'")) >= 2, 30, 0.05)
            pause = Call(S, "POST", f"/v1/fine_tuning/jobs/{jid}/pause")
            self.wait_until("the pause to commit",
                            lambda: self.row(jid, "pause_requested")[0] == "t", 30, 0.05)
            # The next UPDATE of the row is the worker's progress write (it
            # returns the flags): it has seen pause_requested.
            x0 = self.row(jid, "xmin")[0]
            self.wait_until("the worker to see the pause", lambda: self.row(jid, "xmin")[0] != x0,
                            30, 0.05)
            resume = Call(S, "POST", f"/v1/fine_tuning/jobs/{jid}/resume")
            self.wait_until("the resume to commit",
                            lambda: self.row(jid, "pause_requested")[0] == "f", 30, 0.05)
        finally:
            lock.release()
        self.assertEqual(pause.get()[0], 200, pause.result)
        st, _, r = resume.get()
        self.assertEqual(st, 200, r)
        self.assertEqual((r["status"], r["pause_requested"]), ("running", False), r)
        done = self.wait(jid, {"paused", "succeeded", "failed", "cancelled"}, timeout=180)
        self.assertEqual(done["status"], "succeeded", done)
        msgs = S.psql(f"SELECT message FROM job_events WHERE job_id = '{jid}' ORDER BY seq")
        self.assertIn("Resumed before the pause took effect", msgs)

    # ---- retention --------------------------------------------------------------
    def test_4_checkpoint_retention(self):
        """A full fine-tune with 8+ checkpoints: while paused at most 2 keep
        their optimizer state; once ended (cancelled while paused: by the
        server) none does, every checkpoint keeps its weights (and stays
        listed and downloadable), and the checkpoint directory holds about
        one model's size per checkpoint (before: three, for every
        checkpoint). A 5-step job with the default interval checkpoints at
        its end only and keeps no optimizer state once it succeeded. About
        12 s."""
        fid = self.upload_ok()["id"]
        j = self.create_job(fid, hp("full", max_steps=2000, checkpoint_interval=5))
        jid = j["id"]
        self.wait_until("8 checkpoints", lambda: self.count("checkpoints", f"job_id = '{jid}'") >= 8,
                        120, 0.05)
        self.call("POST", f"/v1/fine_tuning/jobs/{jid}/pause")
        self.wait(jid, {"paused"}, timeout=60)
        states = self.ckpt_files(jid, "optimizer.safetensors") + self.ckpt_files(jid, "state.safetensors")
        self.assertLessEqual(len(states), 2, states)
        self.assertGreaterEqual(len(states), 1, states)
        # cancelled while paused: the server ends it (no worker involved)
        c = self.call("POST", f"/v1/fine_tuning/jobs/{jid}/cancel")
        self.assertEqual(c["status"], "cancelled", c)
        states = self.ckpt_files(jid, "optimizer.safetensors") + self.ckpt_files(jid, "state.safetensors")
        self.assertEqual(states, [], "an ended job keeps resumable training state")
        weights = self.ckpt_files(jid, "weights.safetensors")
        n = self.count("checkpoints", f"job_id = '{jid}'")
        self.assertEqual(len(weights), n)
        model_bytes = os.path.getsize(os.path.join(S.model_path, "model.safetensors"))
        d = os.path.join(self.out_dir(jid), "checkpoints")
        used = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
        self.assertLessEqual(used, n * model_bytes * 1.2 + 65536, (used, n, model_bytes))
        ck = self.call("GET", f"/v1/fine_tuning/jobs/{jid}/checkpoints")["data"][0]
        files = self.call("GET", f"/v1/models/{ck['fine_tuned_model_checkpoint']}/files")
        names = [f.get("name") or f.get("filename") or f.get("id") for f in files["data"]]
        self.assertIn("weights.safetensors", " ".join(map(str, names)), files)
        print(f"figures: {n} checkpoints, {used} bytes, model {model_bytes} bytes")

        # default interval: a 5-step job writes one checkpoint, not five; the
        # worker drops its optimizer state when it succeeds
        j = self.create_job(fid, hp("full", max_steps=5))
        self.assertEqual(self.wait(j["id"], {"succeeded", "failed", "cancelled"})["status"], "succeeded")
        self.assertEqual(self.count("checkpoints", f"job_id = '{j['id']}'"), 1)
        self.assertEqual(self.ckpt_files(j["id"], "optimizer.safetensors"), [])
        self.assertEqual(len(self.ckpt_files(j["id"], "weights.safetensors")), 1)

    # ---- SIGTERM (last: it stops the module's worker) ---------------------------
    def test_9_sigterm_exits_within_10s_dropping_the_step(self):
        """SIGTERM in the middle of a 35 s optimizer step: the worker hands
        the job back and exits within 10 s, without finishing the step or
        writing a checkpoint; the job resumes elsewhere. About 15 s."""
        fid = self.upload_ok()["id"]
        j = self.slow_job(fid, 2, accum=1024)
        jid = j["id"]
        self.wait_until("the job to train", lambda: self.count(
            "job_events", f"job_id = '{jid}' AND message LIKE 'Training %'"), 60, 0.1)
        pid = S.pid("worker")
        t0 = time.time()
        os.kill(pid, signal.SIGTERM)
        try:
            self.wait_until("the worker to exit", lambda: dead(pid), 10, 0.05)
        finally:
            if not dead(pid):
                os.kill(pid, signal.SIGKILL)
        took = time.time() - t0
        status, step = self.row(jid, "status, coalesce(step, 0)")
        self.assertEqual((status, step), ("queued", "0"))
        self.assertEqual(self.ckpt_files(jid, "DONE"), [])
        print(f"figures: SIGTERM -> exit in {took:.1f} s")
        # another worker takes it over; cancel it there (it would run ~70 s)
        S.start_worker("lifecycle-replacement")
        self.wait(jid, {"running"}, timeout=60)
        self.call("POST", f"/v1/fine_tuning/jobs/{jid}/cancel")
        self.wait(jid, {"cancelled"}, timeout=60)


if __name__ == "__main__":
    unittest.main()
