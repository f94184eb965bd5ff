"""A real deltatune stack for tests: its own PostgreSQL, Redis, server and
worker(s), started by scripts/up in a temporary run directory, on free ports.
Python standard library only.

    from stack import Stack
    with Stack(model="tiny") as s:           # or Stack(workers=2, env={...})
        st, hdrs, body = s.api("GET", "/v1/models")
        key2 = s.new_key("other-owner")
        s.wait_job(job_id, {"succeeded"})

model="tiny" registers the 2-layer random GPT-2 of tests/harness/tiny_model.py
under the id "tiny-gpt2" (trains in well under a second a step);
model="smollm2" the real SmolLM2-135M-Instruct GGUF. Every DELTATUNE_*
setting in env reaches the server and the workers (e.g. a short
DELTATUNE_LEASE_SECONDS for fault tests). Set DELTATUNE_TEST_KEEP=1 to keep
the run directory (logs) after the test.
"""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import tiny_model  # noqa: E402

TINY_ID = "tiny-gpt2"
SMOLLM2_ID = "SmolLM2-135M-Instruct"


class Stack:
    def __init__(self, model="tiny", workers=1, env=None, build=None, threads=1, run_dir=None):
        self.build = os.path.abspath(build or os.environ.get("BUILD", os.path.join(ROOT, "build")))
        self.run = run_dir or tempfile.mkdtemp(prefix="dt-stack-", dir=os.environ.get("TMPDIR", "/tmp"))
        os.chmod(self.run, 0o755)  # PostgreSQL runs as `postgres` when we are root
        if model == "tiny":
            self.model_path = tiny_model.write(os.path.join(ROOT, ".cache", "tiny-gpt2"))
            self.model_id = TINY_ID
        else:
            self.model_path = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
            self.model_id = SMOLLM2_ID
        self.env = dict(os.environ)
        self.env.update({"DELTATUNE_RUN_DIR": self.run, "BUILD": self.build,
                         "DELTATUNE_BASE_MODEL": self.model_path,
                         "DELTATUNE_BASE_MODEL_ID": self.model_id,
                         "DELTATUNE_WORKER_THREADS": str(threads),
                         "DELTATUNE_POLL_INTERVAL_MS": "500",
                         # serving workers are started by the tests that need
                         # them (start_worker(..., extra=("--serve",)))
                         "DELTATUNE_SERVE_WORKERS": "0",
                         "OMP_WAIT_POLICY": "passive"})
        self.env.update(env or {})
        self.n_workers = workers
        self.workers = {}  # worker id -> Popen
        self.threads = threads

    # ---- lifecycle ---------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        r = subprocess.run([os.path.join(ROOT, "scripts", "up")], env=self.env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode:
            self.stop(keep=True)
            raise RuntimeError(f"scripts/up failed (run dir {self.run}):\n{r.stdout}")
        with open(os.path.join(self.run, "env")) as f:
            for line in f:
                if line.startswith("export "):
                    k, v = line[7:].strip().split("=", 1)
                    self.env[k] = v
        self.url = self.env["DELTATUNE_URL"]
        self.key = self.env["DELTATUNE_API_KEY"]
        with open(os.path.join(self.run, "ports")) as f:
            self.ports = dict(l.strip().split("=") for l in f if "=" in l)
        for i in range(1, self.n_workers):
            self.start_worker(f"test-worker-{i}")
        return self

    def stop(self, keep=False):
        for p in self.workers.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run([os.path.join(ROOT, "scripts", "down")], env=self.env, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if keep or os.environ.get("DELTATUNE_TEST_KEEP"):
            print(f"stack: run directory kept: {self.run}", file=sys.stderr)
        else:
            shutil.rmtree(self.run, ignore_errors=True)

    def log(self, name="server"):
        try:
            with open(os.path.join(self.run, "logs", name + ".log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # ---- processes ---------------------------------------------------------
    def pid(self, name):
        """PID of "server", "worker" (the one scripts/up started), "redis", "postgres"."""
        with open(os.path.join(self.run, name + ".pid")) as f:
            return int(f.read().split()[0])

    def start_worker(self, worker_id, extra=()):
        log = open(os.path.join(self.run, "logs", worker_id + ".log"), "ab")
        wrap = shlex.split(self.env.get("DELTATUNE_WRAP", ""))  # e.g. valgrind (scripts/up)
        p = subprocess.Popen([*wrap, os.path.join(self.build, "deltatune-worker"), "--device", "cpu",
                              "--worker-id", worker_id, "--threads", str(self.threads), *extra],
                             env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.workers[worker_id] = p
        return p

    def signal(self, name, sig=signal.SIGKILL):
        os.kill(self.pid(name), sig)

    def cli(self, *args, check=True, input=None):
        """Runs build/deltatune with the stack's configuration."""
        r = subprocess.run([os.path.join(self.build, "deltatune"), *args], env=self.env, cwd=ROOT,
                           input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and r.returncode:
            raise RuntimeError(f"deltatune {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r

    def new_key(self, owner):
        return self.cli("keys", "create", "--owner", owner).stdout.strip().splitlines()[-1]

    def psql(self, sql):
        r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", self.ports["PG_PORT"], "-U", "postgres",
                            "-d", "deltatune", "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode:
            raise RuntimeError(f"psql: {r.stderr}")
        return r.stdout.strip()

    def redis(self, *args):
        return subprocess.run(["redis-cli", "-p", self.ports["REDIS_PORT"], *args],
                              stdout=subprocess.PIPE, text=True).stdout.strip()

    # ---- HTTP --------------------------------------------------------------
    def api(self, method, path, body=None, key=None, headers=None, raw=False, timeout=30):
        """Returns (status, headers dict with lower-case names, parsed JSON or bytes).
        body: dict/list (sent as JSON) or bytes. key=False sends no Authorization."""
        h = {} if headers is None else dict(headers)
        if key is not False:
            h.setdefault("Authorization", "Bearer " + (key or self.key))
        data = None
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data = bytes(body)
            else:
                data = json.dumps(body).encode()
                h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                st, hd, b = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            st, hd, b = e.code, e.headers, e.read()
        hd = {k.lower(): v for k, v in hd.items()}
        if not raw and hd.get("content-type", "").startswith("application/json") and b:
            b = json.loads(b)
        return st, hd, b

    def upload(self, content, filename="train.jsonl", purpose="fine-tune", key=None):
        """POST /v1/files as multipart/form-data. Returns (status, headers, body)."""
        boundary = "----dtboundary7d93b1"
        if isinstance(content, str):
            content = content.encode()
        parts = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
                 f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                 f"Content-Type: application/jsonl\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        return self.api("POST", "/v1/files", parts, key=key,
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def wait_job(self, job_id, statuses, timeout=120, key=None):
        end = time.time() + timeout
        while True:
            st, _, job = self.api("GET", f"/v1/fine_tuning/jobs/{job_id}", key=key)
            if st == 200 and job["status"] in statuses:
                return job
            if time.time() > end:
                raise TimeoutError(f"job {job_id} not in {statuses} after {timeout}s: {job}\n"
                                   f"worker log:\n{self.log('worker')[-3000:]}")
            time.sleep(0.3)


TRAIN_ROWS = "".join(json.dumps({"prompt": f"name : Place {i} | food : {f}\n",
                                 "completion": f" Place {i} serves {f} food."}) + "\n"
                     for i, f in enumerate(["Italian", "French", "Indian", "English", "Chinese",
                                            "Japanese", "Thai", "Greek"] * 4))
