"""Fault tests against real processes (tests/harness/stack.py): worker
kill -9 and resume, a stale worker fenced after SIGSTOP/SIGCONT, Redis
flushed / restarted / down, PostgreSQL restarted during a POST and down
during training, checkpoint writes on a full disk and crashed writes, the
server restarted in the middle of an upload, and many workers racing for
jobs. Nothing is simulated by editing rows or timestamps: leases expire in
real time (short settings below).

    make test-fault              (BUILD=build-x make test-fault for another build)
    BUILD=build python3 -m unittest discover -s tests/fault -v

Each test prints one "figures:" line (timings, steps) that
docs/RELIABILITY.md quotes. Python standard library only.
"""
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack, TRAIN_ROWS  # noqa: E402

BUILD = os.path.abspath(os.environ.get("BUILD", os.path.join(ROOT, "build")))
LEASE = 5
FAST_ENV = {"DELTATUNE_LEASE_SECONDS": str(LEASE), "DELTATUNE_RESCUE_INTERVAL": "1",
            "DELTATUNE_POLL_INTERVAL_MS": "500", "DELTATUNE_LOG_LEVEL": "info"}


def figures(name, **kw):
    print(f"\nfigures: {name}: " + ", ".join(f"{k}={v}" for k, v in kw.items()),
          file=sys.stderr, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def wait_for(what, cond, timeout=60, every=0.1):
    end = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def read_response(c):
    """Reads one HTTP response from socket c: (status, lower-case headers, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            raise AssertionError(f"connection closed before a response: {buf!r:.200}")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hd = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    if status == 100:
        return status, hd, rest
    n = int(hd.get("content-length", "0"))
    while len(rest) < n:
        d = c.recv(65536)
        if not d:
            break
        rest += d
    return status, hd, rest[:n]


def upload_request(s, content, key, boundary="----dtidem"):
    """(request head, body) of a multipart POST /v1/files with an
    Idempotency-Key that asks for "100 Continue" before sending its body."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
            f"Content-Type: application/jsonl\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.key}\r\n"
            f"Idempotency-Key: {key}\r\nExpect: 100-continue\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def upload_expect(s, content, key, timeout=30):
    """Sends the head, and the body only after "100 Continue". Returns
    (status, headers, parsed body, whether the body was sent)."""
    head, body = upload_request(s, content, key)
    c = socket.create_connection(("127.0.0.1", int(s.ports["HTTP_PORT"])), timeout=timeout)
    try:
        c.sendall(head)
        st, hd, b = read_response(c)
        sent = st == 100
        if sent:
            c.sendall(body)
            st, hd, b = read_response(c)
        return st, hd, json.loads(b) if b else None, sent
    finally:
        c.close()


def job_body(file_id, steps, ckpt, seed=7, **extra):
    h = {"seq_len": 32, "batch_size": 2, "max_steps": steps, "checkpoint_interval": ckpt,
         "rank": 4, "alpha": 8}
    h.update(extra)
    return {"model": "tiny-gpt2", "training_file": file_id, "seed": seed,
            "method": {"type": "delta_lora", "delta_lora": {"hyperparameters": h}}}


class FaultTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        for b in ("deltatune", "deltatune-server", "deltatune-worker"):
            if not os.access(os.path.join(BUILD, b), os.X_OK):
                raise unittest.SkipTest(f"{BUILD}/{b} is missing: run 'make all' first")

    # ---- helpers -------------------------------------------------------------
    def stack(self, env=None, **kw):
        e = dict(FAST_ENV)
        e.update(env or {})
        s = Stack(model="tiny", env=e, build=BUILD, **kw)
        s.start()
        self.addCleanup(s.stop)
        return s

    def upload(self, s):
        st, _, f = s.upload(TRAIN_ROWS)
        self.assertEqual(st, 200, f)
        return f["id"]

    def create(self, s, body, headers=None, want=200):
        st, hd, j = s.api("POST", "/v1/fine_tuning/jobs", body, headers=headers)
        self.assertEqual(st, want, j)
        return j

    def row(self, s, job_id, cols="status, attempt"):
        return s.psql(f"SELECT {cols} FROM jobs WHERE id = '{job_id}'").split("|")

    def step(self, s, job_id):
        v = s.psql(f"SELECT coalesce(step, 0) FROM jobs WHERE id = '{job_id}'")
        return int(v or 0)

    def out_dir(self, s, job_id):
        rel = s.psql(f"SELECT output_dir FROM jobs WHERE id = '{job_id}'")
        return rel if rel.startswith("/") else os.path.join(s.run, "artifacts", rel)

    def merged_sha(self, s, job_id):
        return sha256_file(os.path.join(self.out_dir(s, job_id), "merged", "model.safetensors"))

    def events(self, s, job_id):
        return s.psql(f"SELECT message FROM job_events WHERE job_id = '{job_id}' ORDER BY seq").splitlines()

    def ckpt_dirs(self, s, job_id):
        d = os.path.join(self.out_dir(s, job_id), "checkpoints")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def done_steps(self, s, job_id):
        d = os.path.join(self.out_dir(s, job_id), "checkpoints")
        return sorted(int(n[5:13]) for n in self.ckpt_dirs(s, job_id)
                      if len(n) == 13 and os.path.exists(os.path.join(d, n, "DONE")))

    def pg(self, s, action):
        """Stops PostgreSQL (pg_ctl -m fast) or starts it again via scripts/up."""
        if action == "stop":
            pgbin = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
            cmd = [os.path.join(pgbin, "pg_ctl"), "-D", os.path.join(s.run, "pg", "data"),
                   "-m", "fast", "-w", "stop"]
            if os.getuid() == 0:
                cmd = ["runuser", "-u", "postgres", "--"] + cmd
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        else:
            self.up(s)

    def redis_stop(self, s):
        s.redis("shutdown", "nosave")
        ping = ["redis-cli", "-p", s.ports["REDIS_PORT"], "ping"]
        wait_for("Redis to stop", lambda: subprocess.run(
            ping, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip() != "PONG", 20)

    def up(self, s):
        """scripts/up again: starts what is not running (same ports), keeps the rest."""
        r = subprocess.run([os.path.join(ROOT, "scripts", "up")], env=s.env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(r.returncode, 0, r.stdout)

    # ---- 1. kill -9 a worker: resume byte-identical ------------------------------
    def test_1_kill9_worker_resumes_byte_identical(self):
        # two threads: OpenMP and OpenBLAS split work, yet the result is fixed
        s = self.stack(threads=2)
        fid = self.upload(s)
        steps, ckpt = 200, 10
        ref = self.create(s, job_body(fid, steps, ckpt))
        t0 = time.time()
        s.wait_job(ref["id"], {"succeeded"}, timeout=300)
        ref_secs = time.time() - t0
        ref_sha = self.merged_sha(s, ref["id"])

        job = self.create(s, job_body(fid, steps, ckpt))
        jid = job["id"]
        wait_for("two checkpoints", lambda: len(self.done_steps(s, jid)) >= 2 and
                 self.step(s, jid) >= 2 * ckpt + 3, 300, 0.05)
        s.signal("worker", signal.SIGKILL)
        reported = self.step(s, jid)
        done = self.done_steps(s, jid)
        self.assertLess(reported, steps, "the job ended before the kill; raise steps")
        last = done[-1]
        # A crash inside a checkpoint write leaves debris: a half-written
        # directory (no DONE) and temp files of a newer step. They must be
        # ignored: the resume starts at the newest complete checkpoint.
        cdir = os.path.join(self.out_dir(s, jid), "checkpoints")
        bad = os.path.join(cdir, f"step-{last + 1:08d}")
        os.makedirs(bad, exist_ok=True)
        with open(os.path.join(bad, "state.safetensors"), "wb") as f:
            f.write(b"\x00garbage")
        part = os.path.join(cdir, f"step-{last + 2:08d}.partial.999999")
        os.makedirs(part, exist_ok=True)
        with open(os.path.join(part, "state.safetensors.tmp"), "wb") as f:
            f.write(b"half")
        self.assertEqual(self.row(s, jid)[0], "running")

        t1 = time.time()
        s.start_worker("fault-w2")
        fin = s.wait_job(jid, {"succeeded", "failed"}, timeout=300)
        self.assertEqual(fin["status"], "succeeded", fin)
        resumed_secs = time.time() - t1
        self.assertEqual(self.row(s, jid), ["succeeded", "2"])
        ev = self.events(s, jid)
        self.assertIn(f"Resuming from the checkpoint at step {last}", ev)
        self.assertEqual(sum("New fine-tuned model created" in m for m in ev), 1, ev)
        self.assertEqual(sum(m.startswith("The job has successfully completed") for m in ev), 1, ev)
        self.assertEqual(s.psql(f"SELECT count(*) FROM models WHERE kind = 'fine_tuned' AND "
                                f"id = '{fin['fine_tuned_model']}'"), "1")
        self.assertEqual(self.merged_sha(s, jid), ref_sha,
                         "the resumed run's merged model differs from the uninterrupted run")
        figures("kill -9 worker", steps=steps, threads=2, last_reported_step=reported, resumed_from=last,
                lease_s=LEASE, uninterrupted_s=f"{ref_secs:.1f}",
                kill_to_succeeded_s=f"{resumed_secs:.1f}", sha256=ref_sha[:16])

    # ---- 2. SIGSTOP past the lease: the stale worker is fenced --------------------
    def test_2_sigstop_stale_worker_is_fenced(self):
        s = self.stack(env={"DELTATUNE_LEASE_SECONDS": "8"})
        fid = self.upload(s)
        # few checkpoints: the stop rarely lands inside a checkpoint write
        job = self.create(s, job_body(fid, 300, 100))
        jid = job["id"]
        wait_for("training", lambda: self.step(s, jid) >= 20, 300, 0.05)
        w1 = s.pid("worker")
        os.kill(w1, signal.SIGSTOP)
        stopped = time.time()
        try:
            w2 = s.start_worker("fault-w2")
            wait_for("the second worker's claim",
                     lambda: self.row(s, jid) == ["running", "2"], 60, 0.05)
            os.kill(w2.pid, signal.SIGSTOP)
            took = time.time() - stopped
            snap = (self.events(s, jid), s.psql(f"SELECT step FROM checkpoints WHERE job_id = '{jid}' "
                                                "ORDER BY step"), self.ckpt_dirs(s, jid))
            os.kill(w1, signal.SIGCONT)
            wait_for("the stale worker to give up", lambda: "job.abandoned" in s.log("worker"), 20)
            after = (self.events(s, jid), s.psql(f"SELECT step FROM checkpoints WHERE job_id = '{jid}' "
                                                 "ORDER BY step"), self.ckpt_dirs(s, jid))
            self.assertEqual(self.row(s, jid), ["running", "2"])
        finally:
            os.kill(w1, signal.SIGCONT)
            os.kill(w2.pid, signal.SIGCONT)
        self.assertEqual(after[0], snap[0], "the stale worker wrote events")
        self.assertEqual(after[1], snap[1], "the stale worker wrote checkpoint rows")
        self.assertEqual(after[2], snap[2], "the stale worker wrote checkpoint files")
        self.assertIn("job.lease_lost", s.log("worker"))
        fin = s.wait_job(jid, {"succeeded", "failed"}, timeout=300)
        self.assertEqual(fin["status"], "succeeded", fin)
        self.assertEqual(self.row(s, jid), ["succeeded", "2"])
        figures("SIGSTOP past lease", lease_s=8, stop_to_reclaim_s=f"{took:.1f}",
                stale_writes=0)

    # ---- 3. Redis flushed, restarted, down -------------------------------------
    def test_3_redis_flush_restart_down(self):
        s = self.stack()
        fid = self.upload(s)
        body = job_body(fid, 4, 4)
        # FLUSHALL after the wake-up was pushed and before any worker popped
        # it (the only worker is stopped and its blocked BRPOP connection
        # killed, so Redis cannot hand it the id): the wake-up is lost.
        w = s.pid("worker")
        os.kill(w, signal.SIGSTOP)
        try:
            s.redis("client", "kill", "type", "normal")
            a = self.create(s, body)
            # the server's publish (or, if its connection was the one
            # killed, its reconciler's) puts the id in the list
            wait_for("the wake-up in Redis", lambda: s.redis("llen", "deltatune:jobs") == "1", 20)
            self.assertEqual(s.redis("flushall"), "OK")
            self.assertEqual(s.redis("llen", "deltatune:jobs"), "0")
        finally:
            os.kill(w, signal.SIGCONT)
        t = time.time()
        wait_for("the flushed job to start", lambda: self.row(s, a["id"])[0] != "queued", 30)
        flush_start = time.time() - t
        self.assertLess(flush_start, 10)
        # Restart (AOF kept) and down for a while: POST works throughout.
        self.redis_stop(s)
        b = self.create(s, body)
        t = time.time()
        wait_for("a job created while Redis is down to start",
                 lambda: self.row(s, b["id"])[0] != "queued", 30)
        down_start = time.time() - t
        c = self.create(s, body)
        time.sleep(8)  # down for a while (same mechanism as a longer outage)
        self.up(s)
        self.assertEqual(s.redis("ping"), "PONG")
        d = self.create(s, body)
        for j in (a, b, c, d):
            self.assertEqual(s.wait_job(j["id"], {"succeeded", "failed"}, 120)["status"], "succeeded")
        # restarted with its data gone (FLUSHALL + restart): still nothing lost
        s.redis("flushall")
        self.redis_stop(s)
        e = self.create(s, body)
        self.up(s)
        self.assertEqual(s.wait_job(e["id"], {"succeeded", "failed"}, 120)["status"], "succeeded")
        self.assertEqual(s.psql("SELECT count(*) FROM jobs WHERE status <> 'succeeded'"), "0")
        figures("Redis", flushall_to_start_s=f"{flush_start:.1f}",
                down_to_start_s=f"{down_start:.1f}", poll_ms=500, jobs_lost=0)

    # ---- 4. PostgreSQL restarted during POST, down during training ------------------
    def test_4_postgres_restart_and_outage(self):
        s = self.stack(env={"DELTATUNE_LEASE_SECONDS": "30"})
        fid = self.upload(s)
        body = job_body(fid, 4, 4)
        key = "fault-idem-1"
        self.pg(s, "stop")
        st, hd, b = s.api("POST", "/v1/fine_tuning/jobs", body, headers={"Idempotency-Key": key})
        self.assertEqual(st, 503, b)
        self.assertIn("retry-after", hd)
        self.pg(s, "start")
        ok = None
        for _ in range(60):  # the client retries with the same key
            st, hd, ok = s.api("POST", "/v1/fine_tuning/jobs", body, headers={"Idempotency-Key": key})
            if st != 503:
                break
            time.sleep(float(hd.get("retry-after", "1")) / 5)
        self.assertEqual(st, 200, ok)
        st, _, again = s.api("POST", "/v1/fine_tuning/jobs", body, headers={"Idempotency-Key": key})
        self.assertEqual((st, again["id"]), (200, ok["id"]))
        self.assertEqual(s.psql("SELECT count(*) FROM jobs"), "1")

        # A restart while POSTs are in flight: every key ends as one job.
        keys = [f"fault-idem-r{i}" for i in range(6)]
        got = {}

        def client(k):
            for _ in range(200):
                try:
                    st, _, j = s.api("POST", "/v1/fine_tuning/jobs", body, headers={"Idempotency-Key": k},
                                     timeout=10)
                except OSError:
                    st = 0
                if st == 200:
                    got[k] = j["id"]
                    return
                time.sleep(0.25)
        ts = [threading.Thread(target=client, args=(k,)) for k in keys]
        self.pg(s, "stop")
        for t in ts:
            t.start()
        time.sleep(1)
        self.pg(s, "start")
        for t in ts:
            t.join(120)
        self.assertEqual(sorted(got), keys)
        self.assertEqual(s.psql("SELECT count(*) FROM jobs"), str(1 + len(keys)))

        # Down during training for less than a lease: the attempt continues.
        for j in [ok["id"], *got.values()]:
            s.wait_job(j, {"succeeded", "failed"}, 120)
        long = self.create(s, job_body(fid, 400, 100))
        wait_for("training", lambda: self.step(s, long["id"]) >= 20, 120, 0.05)
        t = time.time()
        self.pg(s, "stop")
        time.sleep(8)
        self.pg(s, "start")
        outage = time.time() - t
        fin = s.wait_job(long["id"], {"succeeded", "failed"}, 300)
        self.assertEqual(fin["status"], "succeeded", fin)
        self.assertEqual(self.row(s, long["id"]), ["succeeded", "1"])
        figures("PostgreSQL", post_503_then_one_job=True, outage_s=f"{outage:.1f}", lease_s=30,
                attempts=1)

    # ---- 5. checkpoint writes: disk full, crashed writes ----------------------------
    def test_5_disk_full_checkpoint(self):
        if os.getuid() != 0:
            self.skipTest("mounting a small tmpfs for the artifact root needs root")
        run = tempfile.mkdtemp(prefix="dt-fault-full-")
        os.chmod(run, 0o755)
        self.addCleanup(lambda: shutil.rmtree(run, ignore_errors=True))
        art = os.path.join(run, "artifacts")
        os.makedirs(art)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", art],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode:
            self.skipTest(f"mount -t tmpfs not permitted here: {r.stdout.strip()}")
        self.addCleanup(lambda: subprocess.run(["umount", "-l", art]))
        s = self.stack(run_dir=run)
        fid = self.upload(s)
        job = self.create(s, job_body(fid, 300, 20))
        jid = job["id"]
        wait_for("a checkpoint", lambda: self.done_steps(s, jid), 120, 0.05)
        filler = os.path.join(art, "filler")
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fin = s.wait_job(jid, {"succeeded", "failed"}, 300)
        self.assertEqual(fin["status"], "failed", fin)
        err = fin.get("error") or {}
        self.assertIn("No space left on device", err.get("message", ""), fin)
        cdir = os.path.join(self.out_dir(s, jid), "checkpoints")
        left = [n for n in os.listdir(cdir) if "partial" in n or n.endswith(".tmp")]
        self.assertEqual(left, [], "temp files left after the failed write")
        done = self.done_steps(s, jid)
        self.assertTrue(done)
        os.unlink(filler)
        # The previous checkpoint is intact: its weights parse to the end. The
        # job has ended (failed), so retention left no optimizer state to
        # resume from (docs/RELIABILITY.md, multi-tenant); the engine's resume
        # from a complete checkpoint is tests/unit/test_train.c's.
        ck = os.path.join(cdir, f"step-{done[-1]:08d}")
        with open(os.path.join(ck, "weights.safetensors"), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            hdr = json.loads(f.read(n))
            body = len(f.read())
        end = max(v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__")
        self.assertEqual(end, body, "the last complete checkpoint's weights are cut short")
        self.assertEqual(glob.glob(os.path.join(cdir, "*", "optimizer.safetensors")), [],
                         "an ended job keeps optimizer state")
        figures("disk full", tmpfs_mb=64, last_good_checkpoint=done[-1],
                error=err.get("code"))

    # ---- 6. server restarted in the middle of an upload -----------------------------
    def test_6_server_restart_mid_upload(self):
        s = self.stack(env={"DELTATUNE_CONNECTION_TIMEOUT": "3"})
        files = os.path.join(s.run, "artifacts", "files")
        boundary = "----dtfault"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
                f"Content-Type: application/jsonl\r\n\r\n").encode()
        chunk = (TRAIN_ROWS * 200).encode()
        total = len(head) + 10 * len(chunk)
        c = socket.create_connection(("127.0.0.1", int(s.ports["HTTP_PORT"])), timeout=10)
        c.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.key}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                   f"Content-Length: {total}\r\n\r\n").encode() + head + chunk)
        tmp = wait_for("the upload's temp file",
                       lambda: glob.glob(os.path.join(files, ".upload-*.tmp")), 30)
        pid = s.pid("server")
        s.signal("server", signal.SIGKILL)
        c.close()
        wait_for("the server to die", lambda: dead(pid), 20)
        os.unlink(os.path.join(s.run, "server.pid"))  # it may linger as a zombie
        t = time.time()
        self.up(s)  # the server again, same port
        wait_for("the partial upload to be removed", lambda: not any(map(os.path.exists, tmp)), 60)
        gone = time.time() - t
        st, _, f = s.upload(TRAIN_ROWS)
        self.assertEqual(st, 200, f)
        self.assertEqual(f.get("status", "processed"), "processed", f)
        self.assertEqual(s.psql("SELECT count(*) FROM files"), "1")
        self.assertEqual(glob.glob(os.path.join(files, ".upload-*")), [])
        figures("server restart mid-upload", partial_bytes=len(head) + len(chunk),
                restart_to_removed_s=f"{gone:.1f}", files=1)

    # ---- 7. workers race for jobs ----------------------------------------------------
    def test_7_claim_race(self):
        # The race under test is between claims (FOR UPDATE SKIP LOCKED), not
        # lease expiry (tests 1 and 2): a 30 s lease, since four workers on
        # two busy cores can miss a 5 s one (a CI run on 2026-12-04 saw one
        # job in 16 at attempt 2 with the 5 s lease; not yet explained).
        s = self.stack(workers=4, env={"DELTATUNE_LEASE_SECONDS": "30"})
        fid = self.upload(s)
        n = 16
        ids = [self.create(s, job_body(fid, 2, 2, seed=i))["id"] for i in range(n)]
        for j in ids:
            self.assertEqual(s.wait_job(j, {"succeeded", "failed"}, 300)["status"], "succeeded")
        self.assertEqual(s.psql("SELECT count(*) FROM jobs WHERE attempt = 1 AND status = 'succeeded'"),
                         str(n))
        logs = s.log("worker") + "".join(s.log(f"test-worker-{i}") for i in range(1, 4))
        claims = {j: logs.count(f"{j} attempt ") - logs.count(f"{j} attempt 1: lease lost")
                  for j in ids}
        self.assertEqual({j: c for j, c in claims.items() if c != 1}, {}, "jobs claimed twice")
        per = {w: sum(s.log(w).count(f"{j} attempt 1 (") for j in ids)
               for w in ["worker"] + [f"test-worker-{i}" for i in range(1, 4)]}
        self.assertEqual(sum(per.values()), n)
        figures("claim race", jobs=n, workers=4, claims_per_worker=per, trained_twice=0)


    # ---- 8. Idempotency-Key: the server dies mid-request -------------------------------
    def test_8_idempotency_key_of_a_killed_request_is_reclaimed(self):
        """The server is killed (-9) while a POST /v1/files with an
        Idempotency-Key is in progress; after the restart, a retry with the
        same key succeeds once the key's lease (2 x connection timeout = 6 s)
        has run out: 409s before that, each sent before the body, then 200,
        then a replay. (Before: the key stayed "in progress" for 24 h, every
        retry a 409 after its whole body.) About 25 s."""
        s = self.stack(env={"DELTATUNE_CONNECTION_TIMEOUT": "3"})
        lease = 6
        key = "retry-after-crash-1"
        # big enough that the request is still in progress (its body, or its
        # validation) when the test sees its record
        content = TRAIN_ROWS.encode() * 12000  # ~ 30 MB
        head, body = upload_request(s, content, key)
        c = socket.create_connection(("127.0.0.1", int(s.ports["HTTP_PORT"])), timeout=30)

        def send():
            try:
                c.sendall(head.replace(b"Expect: 100-continue\r\n", b"") + body)
            except OSError:
                pass  # the server died under it
        t = threading.Thread(target=send)
        t.start()
        q = f"SELECT status FROM idempotency_keys WHERE key = '{key}'"
        wait_for("the request's idempotency record", lambda: s.psql(q) == "0", 60, every=0.02)
        pid = s.pid("server")
        s.signal("server", signal.SIGKILL)
        t.join()
        c.close()
        wait_for("the server to die", lambda: dead(pid), 20)
        killed = time.time()
        self.assertEqual(s.psql(q), "0", "the kill came after the request finished")
        os.unlink(os.path.join(s.run, "server.pid"))
        self.up(s)
        tries = []
        while True:
            st, hd, b, sent = upload_expect(s, content, key)
            tries.append(st)
            if st != 409:
                break
            self.assertFalse(sent, "a 409 came after the body was sent")
            self.assertEqual((b["error"]["code"], hd.get("x-should-retry")),
                             ("idempotency_key_in_progress", "true"), b)
            self.assertLess(time.time() - killed, lease + 15,
                            f"still 409 {time.time() - killed:.1f} s after the kill: {tries}")
            time.sleep(0.5)
        took = time.time() - killed
        self.assertEqual(st, 200, b)
        self.assertEqual(b["status"], "processed", b)
        self.assertEqual(s.psql("SELECT count(*) FROM files"), "1")
        st, hd, again, _ = upload_expect(s, content, key)
        self.assertEqual((st, hd.get("idempotent-replayed"), again["id"]), (200, "true", b["id"]))
        self.assertEqual(s.psql("SELECT count(*) FROM files"), "1")
        figures("idempotency key after a server kill", lease_s=lease, retries_409=len(tries) - 1,
                kill_to_success_s=f"{took:.1f}")

    def test_8b_idempotency_duplicate_in_flight_gets_409_before_its_body(self):
        """While a POST /v1/files with an Idempotency-Key is still sending its
        body, a second request with the key gets 409 (x-should-retry: true)
        on its headers alone, without sending or being asked for its body;
        the first then completes normally. (Before: the duplicate's body was
        read whole first.) About 8 s."""
        s = self.stack()
        key = "dup-in-flight-1"
        head, body = upload_request(s, TRAIN_ROWS.encode() * 10, key)
        first = socket.create_connection(("127.0.0.1", int(s.ports["HTTP_PORT"])), timeout=30)
        first.sendall(head.replace(b"Expect: 100-continue\r\n", b"") + body[:100])
        files = os.path.join(s.run, "artifacts", "files")
        wait_for("the first upload's temp file (its headers handled)",
                 lambda: glob.glob(os.path.join(files, ".upload-*.tmp")), 10, every=0.02)
        dup = socket.create_connection(("127.0.0.1", int(s.ports["HTTP_PORT"])), timeout=10)
        dup.sendall(head.replace(b"Expect: 100-continue\r\n", b""))  # no body at all
        try:
            st, hd, b = read_response(dup)
        except socket.timeout:
            self.fail("no answer to the duplicate's headers: the server waits for its body")
        dup.close()
        b = json.loads(b)
        self.assertEqual((st, b["error"]["code"], hd.get("x-should-retry")),
                         (409, "idempotency_key_in_progress", "true"), b)
        first.sendall(body[100:])
        st, hd, f = read_response(first)
        first.close()
        self.assertEqual(st, 200, f)
        self.assertEqual(json.loads(f)["status"], "processed")
        self.assertEqual(s.psql("SELECT count(*) FROM files"), "1")
        self.assertEqual(s.psql(f"SELECT status FROM idempotency_keys WHERE key = '{key}'"), "200")
        # a client that goes away mid-body lets its key go at once (no lease wait)
        head, body = upload_request(s, TRAIN_ROWS.encode(), "gone-mid-body")
        gone = socket.create_connection(("127.0.0.1", int(s.ports["HTTP_PORT"])), timeout=10)
        gone.sendall(head.replace(b"Expect: 100-continue\r\n", b"") + body[:100])
        q = "SELECT count(*) FROM idempotency_keys WHERE key = 'gone-mid-body'"
        wait_for("the record of the upload in flight", lambda: s.psql(q) == "1", 10, every=0.02)
        gone.close()
        wait_for("the record of the abandoned upload to go", lambda: s.psql(q) == "0", 5)
        figures("idempotency duplicate in flight", duplicate_status=409, body_sent=0)


if __name__ == "__main__":
    unittest.main()
