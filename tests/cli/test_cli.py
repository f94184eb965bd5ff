"""The `deltatune` client commands (cli/client*.c) against a real stack:
jobs create/list/get/cancel/pause/resume/follow, files upload/list, models
list/download, speaking only the HTTP API with DELTATUNE_URL and
DELTATUNE_API_KEY. One stack (tests/harness/stack.py, tiny-gpt2) for the
module. Python standard library only.

    make test-cli                     # or:
    BUILD=build python3 -m unittest discover -s tests/cli -p 'test_*.py' -v
"""
import hashlib
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack, TRAIN_ROWS, TINY_ID  # noqa: E402
import tiny_model  # noqa: E402

BUILD = os.path.abspath(os.environ.get("BUILD", os.path.join(ROOT, "build")))
CLI = os.path.join(BUILD, "deltatune")
# Exit statuses (cli/client_internal.h).
OK, ERROR, USAGE, FAILED, CANCELLED = 0, 1, 2, 3, 4
# Fast jobs on the tiny model.
FAST = ["--seq-len", "32", "--batch-size", "2"]

S = None        # the module's stack
TMP = None      # a scratch directory inside the stack's run directory
_done_job = {}  # the one succeeded job the download tests share


def setUpModule():
    global S, TMP
    for b in ("deltatune", "deltatune-server", "deltatune-worker"):
        if not os.access(os.path.join(BUILD, b), os.X_OK):
            raise unittest.SkipTest(f"{BUILD}/{b} is missing: run 'make all' first")
    S = Stack(model="tiny", build=BUILD).start()
    TMP = tempfile.mkdtemp(prefix="cli-", dir=S.run)


def tearDownModule():
    if S:
        S.stop()


def cli(*args, env=None, timeout=180, check=None):
    """Runs build/deltatune with the stack's URL and key (not a terminal).
    Returns the CompletedProcess; check=N asserts the exit status."""
    e = dict(S.env)
    e.update(env or {})
    r = subprocess.run([CLI, *args], env=e, cwd=TMP, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check is not None and r.returncode != check:
        raise AssertionError(f"deltatune {' '.join(args)} exited {r.returncode}, not {check}\n"
                             f"stdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}")
    return r


def write(name, text):
    p = os.path.join(TMP, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def json_lines(text):
    return [json.loads(l) for l in text.splitlines() if l.startswith("{")]


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 16), b""):
            h.update(b)
    return h.hexdigest()


def succeeded_job():
    """One job trained to the end with `jobs create --follow` (shared)."""
    if not _done_job:
        data = write("train.jsonl", TRAIN_ROWS)
        r = cli("jobs", "create", "--model", TINY_ID, "--training-file", data,
                "--max-steps", "4", *FAST, "--suffix", "cli", "--follow", check=OK)
        _done_job["run"] = r
        _done_job["job"] = json_lines(r.stdout)[-1]
    return _done_job["job"]


def model_files(model_id):
    st, _, b = S.api("GET", "/v1/models/" + urlq(model_id) + "/files")
    assert st == 200, b
    return {f["name"]: f for f in b["data"]}


def urlq(s):
    import urllib.parse
    return urllib.parse.quote(s, safe="")


class CreateAndFollow(unittest.TestCase):
    def test_create_follow_succeeds_with_exit_0_and_json_lines(self):
        job = succeeded_job()
        r = _done_job["run"]
        first = r.stdout.splitlines()[0]
        self.assertTrue(first.startswith("ftjob-"), r.stdout[:300])
        self.assertEqual(job["object"], "fine_tuning.job")
        self.assertEqual(job["id"], first)
        self.assertEqual(job["status"], "succeeded", job)
        self.assertTrue(job["fine_tuned_model"].startswith("ft:" + TINY_ID), job)
        events = [e for e in json_lines(r.stdout) if e.get("object") == "fine_tuning.job.event"]
        metrics = [e for e in events if e.get("type") == "metrics"]
        self.assertTrue(metrics, r.stdout[:2000])
        self.assertEqual(metrics[-1]["data"]["step"], 4)
        self.assertEqual(metrics[-1]["data"]["total_steps"], 4)
        # The local file was uploaded first and named on stderr.
        self.assertIn("uploaded", r.stderr)

    def test_follow_on_a_terminal_draws_a_progress_bar(self):
        job = succeeded_job()
        master, slave = pty.openpty()
        p = subprocess.Popen([CLI, "jobs", "follow", job["id"]], env=S.env, cwd=TMP,
                             stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        out = b""
        end = time.time() + 60
        while time.time() < end:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        os.close(master)
        rc = p.wait(timeout=30)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        text = out.decode(errors="replace")
        self.assertEqual(rc, OK, text + err)
        self.assertIn("4/4", text)
        self.assertIn("loss", text)
        self.assertIn("tok/s", text)
        self.assertIn("ETA", text)
        self.assertIn("succeeded", text)
        self.assertIn(job["fine_tuned_model"], text)
        self.assertNotIn('{"id"', text)  # no JSON lines on a terminal

    def test_failing_job_exits_3_with_its_error(self):
        # A registered model whose weights then vanish: the worker fails it.
        d = os.path.join(TMP, "broken-model")
        tiny_model.write(d)
        cli("models", "add", "--id", "broken-tiny", "--path", d, check=OK)
        os.remove(os.path.join(d, "model.safetensors"))
        data = write("train-f.jsonl", TRAIN_ROWS)
        r = cli("jobs", "create", "--model", "broken-tiny", "--training-file", data,
                "--max-steps", "2", *FAST, "--follow")
        self.assertEqual(r.returncode, FAILED, r.stdout[-2000:] + r.stderr)
        job = json_lines(r.stdout)[-1]
        self.assertEqual(job["status"], "failed")
        self.assertIn("failed", r.stderr)
        self.assertIn(job["error"]["message"], r.stderr)
        self.assertNotEqual(r.returncode, OK)

    def test_cancelled_job_ends_follow_with_exit_4(self):
        f = cli("files", "upload", write("train-c.jsonl", TRAIN_ROWS), check=OK).stdout.strip()
        jid = cli("jobs", "create", "--model", TINY_ID, "--training-file", f,
                  "--max-steps", "100000", *FAST, check=OK).stdout.strip()
        self.assertTrue(jid.startswith("ftjob-"), jid)
        p = subprocess.Popen([CLI, "jobs", "follow", jid], env=S.env, cwd=TMP,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            S.wait_job(jid, {"running"}, timeout=120)
            r = cli("jobs", "cancel", jid, check=OK)
            self.assertIn(jid, r.stdout)
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, CANCELLED, out[-2000:] + err)
        self.assertEqual(json_lines(out)[-1]["status"], "cancelled")
        self.assertIn("cancelled", err)
        # A finished job can't be cancelled again: the API's 409, exit 1.
        r = cli("jobs", "cancel", jid)
        self.assertEqual(r.returncode, ERROR)
        self.assertIn("HTTP 409", r.stderr)


class FollowWithoutStream(unittest.TestCase):
    def test_follow_polls_when_the_stream_is_refused(self):
        """With this key's 8 event streams open, the server answers 429;
        follow polls the job instead and still ends with its outcome."""
        import http.client
        done = succeeded_job()
        f = cli("files", "upload", write("train-s.jsonl", TRAIN_ROWS), check=OK).stdout.strip()
        jid = cli("jobs", "create", "--model", TINY_ID, "--training-file", f,
                  "--max-steps", "100000", *FAST, check=OK).stdout.strip()
        host, port = S.url.split("//")[1].split(":")
        conns = []
        try:
            S.wait_job(jid, {"running"}, timeout=120)
            for _ in range(8):
                c = http.client.HTTPConnection(host, int(port), timeout=30)
                c.request("GET", f"/v1/fine_tuning/jobs/{jid}/events?stream=true",
                          headers={"Authorization": "Bearer " + S.key})
                conns.append(c)
                self.assertEqual(c.getresponse().status, 200)
            r = cli("jobs", "follow", done["id"], timeout=120)
            self.assertEqual(r.returncode, OK, r.stderr)
            self.assertIn("polling", r.stderr)
            self.assertEqual(json_lines(r.stdout)[-1]["status"], "succeeded")
        finally:
            for c in conns:
                c.close()
            cli("jobs", "cancel", jid)
        S.wait_job(jid, {"cancelled"}, timeout=120)


class Jobs(unittest.TestCase):
    def test_list_and_get(self):
        job = succeeded_job()
        r = cli("jobs", "list", check=OK)
        self.assertIn(job["id"], r.stdout)
        self.assertIn("succeeded", r.stdout)
        self.assertIn("4/4", r.stdout)
        lst = json.loads(cli("jobs", "list", "--json", "--limit", "100", check=OK).stdout)
        self.assertIn(job["id"], [j["id"] for j in lst["data"]])
        got = json.loads(cli("jobs", "get", job["id"], check=OK).stdout)
        self.assertEqual(got["id"], job["id"])
        self.assertEqual(got["status"], "succeeded")

    def test_get_unknown_job_is_404(self):
        r = cli("jobs", "get", "ftjob-000000000000000000000000")
        self.assertEqual(r.returncode, ERROR)
        self.assertIn("HTTP 404", r.stderr)
        self.assertIn("error:", r.stderr)

    def test_bad_hyperparameter_names_the_param(self):
        f = cli("files", "upload", write("train-h.jsonl", TRAIN_ROWS), check=OK).stdout.strip()
        r = cli("jobs", "create", "--model", TINY_ID, "--training-file", f, "--rank", "100000")
        self.assertEqual(r.returncode, ERROR, r.stderr)
        self.assertIn("HTTP 400", r.stderr)
        self.assertIn("[param: method.delta_lora.hyperparameters.rank]", r.stderr)

    def test_pause_and_resume(self):
        f = cli("files", "upload", write("train-p.jsonl", TRAIN_ROWS), check=OK).stdout.strip()
        jid = cli("jobs", "create", "--model", TINY_ID, "--training-file", f,
                  "--max-steps", "100000", *FAST, "--metadata", "case=pause", check=OK).stdout.strip()
        try:
            S.wait_job(jid, {"running"}, timeout=120)
            r = cli("jobs", "pause", jid, check=OK)
            self.assertRegex(r.stdout, jid + r" (paused|running \(pause requested\))")
            S.wait_job(jid, {"paused"}, timeout=120)
            r = cli("jobs", "resume", jid, "--json", check=OK)
            self.assertEqual(json.loads(r.stdout)["status"], "queued")
            lst = cli("jobs", "list", "--metadata", "case=pause", "--json", check=OK).stdout
            self.assertEqual([j["id"] for j in json.loads(lst)["data"]], [jid])
        finally:
            cli("jobs", "cancel", jid)
        S.wait_job(jid, {"cancelled"}, timeout=120)


class Files(unittest.TestCase):
    def test_upload_and_list(self):
        p = write("mine.jsonl", TRAIN_ROWS)
        r = cli("files", "upload", p, check=OK)
        fid = r.stdout.strip()
        self.assertTrue(fid.startswith("file-"), r.stdout)
        self.assertIn("processed", r.stderr)
        r = cli("files", "list", check=OK)
        row = [l for l in r.stdout.splitlines() if l.startswith(fid)]
        self.assertEqual(len(row), 1, r.stdout)
        self.assertIn("mine.jsonl", row[0])
        self.assertIn(str(len(TRAIN_ROWS.encode())), row[0])
        lst = json.loads(cli("files", "list", "--json", check=OK).stdout)
        f = [x for x in lst["data"] if x["id"] == fid][0]
        self.assertEqual(f["sha256"], hashlib.sha256(TRAIN_ROWS.encode()).hexdigest())

    def test_upload_with_bad_lines_is_an_error_naming_them(self):
        p = write("bad.jsonl", '{"text": "fine"}\nnot json\n{"prompt": 3}\n')
        r = cli("files", "upload", p)
        self.assertEqual(r.returncode, ERROR, r.stdout + r.stderr)
        self.assertIn("bad.jsonl:2", r.stderr)
        self.assertIn("bad.jsonl:3", r.stderr)
        self.assertIn("status \"error\"", r.stderr)

    def test_upload_of_a_missing_file(self):
        r = cli("files", "upload", os.path.join(TMP, "nope.jsonl"))
        self.assertEqual(r.returncode, ERROR)
        self.assertIn("nope.jsonl", r.stderr)
        self.assertIn("No such file", r.stderr)


class Models(unittest.TestCase):
    def test_list_through_the_api_and_the_admin_listing(self):
        r = cli("models", "list", check=OK)
        self.assertRegex(r.stdout, TINY_ID + r"\s+base")
        lst = json.loads(cli("models", "list", "--json", check=OK).stdout)
        self.assertIn(TINY_ID, [m["id"] for m in lst["data"]])
        # --admin (or no API key) is the operator's database listing.
        r = cli("models", "list", "--admin", check=OK)
        self.assertIn(TINY_ID, r.stdout)
        r = cli("models", "list", env={"DELTATUNE_API_KEY": ""}, check=OK)
        self.assertIn(TINY_ID, r.stdout)

    def test_download_whole_model_checks_sha256(self):
        job = succeeded_job()
        out = os.path.join(TMP, "dl-all")
        r = cli("models", "download", job["fine_tuned_model"], "-o", out, check=OK)
        files = model_files(job["fine_tuned_model"])
        self.assertIn("model.safetensors", files)
        got = [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs]
        self.assertEqual(sorted(got), sorted(files))
        for name, f in files.items():
            self.assertEqual(sha256_file(os.path.join(out, name)), f["sha256"], name)
            self.assertIn(name, r.stdout)
        # Again: everything is present, nothing is fetched.
        r = cli("models", "download", job["fine_tuned_model"], "-o", out, "--json", check=OK)
        self.assertEqual({x["status"] for x in json_lines(r.stdout)}, {"present"})

    def test_download_of_a_checkpoint_and_its_merged_model(self):
        """A checkpoint with an hf export lists merged/ and adapter/ files:
        a whole download puts them in DIR/merged/ and DIR/adapter/;
        --merged fetches only the merged model, into DIR, as the directory
        transformers loads. Before the export --merged says how to build
        it. About 5 s."""
        job = succeeded_job()
        st, _, b = S.api("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")
        self.assertEqual(st, 200, b)
        ck = b["data"][0]["fine_tuned_model_checkpoint"]
        r = cli("models", "download", ck, "--merged", "-o", os.path.join(TMP, "nope"),
                check=ERROR)
        self.assertIn('"format": "hf"', r.stderr)
        st, _, x = S.api("POST", f"/v1/models/{urlq(ck)}/exports", {"format": "hf"})
        self.assertEqual(st, 202, x)
        end = time.time() + 120
        while x["status"] not in ("succeeded", "failed"):
            self.assertLess(time.time(), end, x)
            time.sleep(0.2)
            st, _, x = S.api("GET", f"/v1/models/{urlq(ck)}/exports/{x['id']}")
        self.assertEqual(x["status"], "succeeded", x)
        files = model_files(ck)
        merged = {n for n in files if n.startswith("merged/")}
        self.assertIn("merged/model.safetensors", merged)
        out = os.path.join(TMP, "dl-ckpt")
        cli("models", "download", ck, "-o", out, check=OK)
        got = [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs]
        self.assertEqual(sorted(got), sorted(files))
        for name, f in files.items():
            self.assertEqual(sha256_file(os.path.join(out, name)), f["sha256"], name)
        out = os.path.join(TMP, "dl-ckpt-merged")
        r = cli("models", "download", ck, "--merged", "-o", out, "--json", check=OK)
        self.assertEqual(sorted(x["name"] for x in json_lines(r.stdout)), sorted(merged))
        self.assertEqual(sorted(os.listdir(out)), sorted(n[len("merged/"):] for n in merged))
        for n in merged:
            self.assertEqual(sha256_file(os.path.join(out, n[len("merged/"):])),
                             files[n]["sha256"], n)
        r = cli("models", "download", ck, "--merged", "--adapter", "-o", out, check=USAGE)
        self.assertIn("--merged", r.stderr)

    def test_download_resumes_after_the_process_is_killed(self):
        job = succeeded_job()
        out = os.path.join(TMP, "dl-kill")
        part = os.path.join(out, "model.safetensors.part")
        p = subprocess.Popen([CLI, "models", "download", job["fine_tuned_model"],
                              "model.safetensors", "-o", out, "--limit-rate", "400k"],
                             env=S.env, cwd=TMP, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            end = time.time() + 60
            while time.time() < end and p.poll() is None:
                if os.path.exists(part) and os.path.getsize(part) >= 256 * 1024:
                    break
                time.sleep(0.05)
            self.assertIsNone(p.poll(), "the throttled download ended before it was killed")
            p.send_signal(signal.SIGKILL)
            p.wait()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        total = model_files(job["fine_tuned_model"])["model.safetensors"]
        have = os.path.getsize(part)
        self.assertGreater(have, 0)
        self.assertLess(have, total["bytes"])
        self.assertFalse(os.path.exists(os.path.join(out, "model.safetensors")))
        r = cli("models", "download", job["fine_tuned_model"], "model.safetensors", "-o", out,
                check=OK)
        self.assertIn("resuming at byte", r.stderr)
        self.assertIn("resumed", r.stdout)
        self.assertEqual(sha256_file(os.path.join(out, "model.safetensors")), total["sha256"])
        self.assertFalse(os.path.exists(part))

    def test_download_resumes_a_truncated_part_file(self):
        st, _, body = S.api("GET", "/v1/models/" + TINY_ID + "/files/vocab.json", raw=True)
        self.assertEqual(st, 200)
        out = os.path.join(TMP, "dl-part")
        os.makedirs(out)
        with open(os.path.join(out, "vocab.json.part"), "wb") as f:
            f.write(body[:len(body) // 3])
        r = cli("models", "download", TINY_ID, "vocab.json", "-o", out, "--json", check=OK)
        self.assertIn(f"resuming at byte {len(body) // 3}", r.stderr)
        line = json_lines(r.stdout)[0]
        self.assertEqual(line["status"], "resumed")
        self.assertEqual(sha256_file(os.path.join(out, "vocab.json")),
                         hashlib.sha256(body).hexdigest())
        self.assertEqual(line["sha256"], hashlib.sha256(body).hexdigest())

    def test_a_corrupt_part_file_is_detected_and_downloaded_again(self):
        st, _, body = S.api("GET", "/v1/models/" + TINY_ID + "/files/merges.txt", raw=True)
        self.assertEqual(st, 200)
        out = os.path.join(TMP, "dl-corrupt")
        os.makedirs(out)
        with open(os.path.join(out, "merges.txt.part"), "wb") as f:
            f.write(b"x" * 1000)
        r = cli("models", "download", TINY_ID, "merges.txt", "-o", out, check=OK)
        self.assertIn("does not match its sha256", r.stderr)
        self.assertEqual(sha256_file(os.path.join(out, "merges.txt")),
                         hashlib.sha256(body).hexdigest())

    def test_download_of_an_unknown_file_or_model(self):
        r = cli("models", "download", TINY_ID, "nope.bin", "-o", os.path.join(TMP, "dl-x"))
        self.assertEqual(r.returncode, ERROR)
        self.assertIn('no file "nope.bin"', r.stderr)
        r = cli("models", "download", "no-such-model", "-o", os.path.join(TMP, "dl-y"))
        self.assertEqual(r.returncode, ERROR)
        self.assertIn("HTTP 404", r.stderr)


class Errors(unittest.TestCase):
    def test_bad_key_is_a_clear_error(self):
        for args in (("jobs", "list"), ("files", "list"), ("models", "download", TINY_ID)):
            r = cli(*args, "--api-key", "dt-bogus-0000000000")
            self.assertEqual(r.returncode, ERROR, args)
            self.assertIn("HTTP 401", r.stderr, args)
            self.assertIn("authentication_error", r.stderr, args)
            self.assertIn("error:", r.stderr, args)

    def test_no_key_is_a_usage_error(self):
        r = cli("jobs", "list", env={"DELTATUNE_API_KEY": ""})
        self.assertEqual(r.returncode, USAGE)
        self.assertIn("DELTATUNE_API_KEY", r.stderr)

    def test_unreachable_server_names_the_url(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        url = f"http://127.0.0.1:{port}"
        r = cli("jobs", "list", "--url", url)
        self.assertEqual(r.returncode, ERROR)
        self.assertIn(f"cannot reach {url}/v1/fine_tuning/jobs", r.stderr)

    def test_every_subcommand_has_help(self):
        for args in (("jobs",), ("jobs", "create"), ("jobs", "list"), ("jobs", "get"),
                     ("jobs", "cancel"), ("jobs", "pause"), ("jobs", "resume"),
                     ("jobs", "follow"), ("files",), ("files", "upload"), ("files", "list"),
                     ("models",), ("models", "list"), ("models", "download")):
            r = cli(*args, "--help")
            self.assertEqual(r.returncode, OK, args)
            self.assertIn("usage: deltatune", r.stdout, args)

    def test_bad_usage_exits_2(self):
        self.assertEqual(cli("jobs", "create", "--model", TINY_ID).returncode, USAGE)
        self.assertEqual(cli("jobs", "list", "--bogus").returncode, USAGE)
        self.assertEqual(cli("jobs", "frobnicate").returncode, USAGE)
        self.assertEqual(cli("jobs", "create", "--model", "m", "--training-file", "f",
                             "--method", "dora").returncode, USAGE)



def gaps_follow_content(test, text, header_cols):
    """Each named left-aligned column is exactly as wide as its widest cell
    (or its header): one space, then the next column begins."""
    lines = [l for l in text.splitlines() if l.strip()]
    header = lines[0]
    for col in header_cols:
        s = header.index(col)
        ends, nexts = [], []
        for l in lines:
            cell = l[s:].split(" ", 1)[0]
            e = s + len(cell)
            ends.append(e)
            rest = l[e:]
            nexts.append(e + len(rest) - len(rest.lstrip(" ")))
        test.assertEqual(min(nexts), max(ends) + 1,
                         f"column {col}: padding does not follow the content:\n{text}")


class SmallerThings(unittest.TestCase):
    """files/models delete, --url/--api-key before the command, floats as
    the server prints them, table widths that follow the content."""

    def test_files_delete(self):
        """Deleted, then 404; a file an unfinished job uses is a 409 naming
        the job. About 5 s."""
        fid = cli("files", "upload", write("del.jsonl", TRAIN_ROWS), check=OK).stdout.strip()
        r = cli("files", "delete", fid, check=OK)
        self.assertEqual(r.stdout.strip(), "deleted " + fid)
        self.assertNotIn(fid, cli("files", "list", check=OK).stdout)
        r = cli("files", "delete", fid)
        self.assertEqual(r.returncode, ERROR, r.stderr)
        self.assertIn("HTTP 404", r.stderr)
        self.assertEqual(cli("files", "delete").returncode, USAGE)
        # In use by a job that has not ended: 409 with the API's message.
        fid = cli("files", "upload", write("del2.jsonl", TRAIN_ROWS), check=OK).stdout.strip()
        jid = cli("jobs", "create", "--model", TINY_ID, "--training-file", fid,
                  "--max-steps", "100000", *FAST, check=OK).stdout.strip()
        try:
            r = cli("files", "delete", fid)
            self.assertEqual(r.returncode, ERROR, r.stdout + r.stderr)
            self.assertIn("HTTP 409", r.stderr)
            self.assertIn(jid, r.stderr)
        finally:
            cli("jobs", "cancel", jid)
        S.wait_job(jid, {"cancelled"}, timeout=120)
        r = cli("files", "delete", fid, "--json", check=OK)
        self.assertEqual(json.loads(r.stdout), {"id": fid, "object": "file", "deleted": True})

    def test_models_delete(self):
        """A fine-tuned model is deleted (then 404); a base model is a 403;
        one an unfinished job builds on is a 409. About 25 s."""
        f = cli("files", "upload", write("mdel.jsonl", TRAIN_ROWS), check=OK).stdout.strip()
        r = cli("jobs", "create", "--model", TINY_ID, "--training-file", f, "--max-steps", "2",
                *FAST, "--suffix", "del", "--follow", check=OK)
        model = json_lines(r.stdout)[-1]["fine_tuned_model"]
        r = cli("models", "delete", TINY_ID)
        self.assertEqual(r.returncode, ERROR, r.stdout + r.stderr)
        self.assertIn("HTTP 403", r.stderr)
        jid = cli("jobs", "create", "--model", model, "--training-file", f,
                  "--max-steps", "100000", *FAST, check=OK).stdout.strip()
        try:
            r = cli("models", "delete", model)
            self.assertEqual(r.returncode, ERROR, r.stdout + r.stderr)
            self.assertIn("HTTP 409", r.stderr)
            self.assertIn(jid, r.stderr)
        finally:
            cli("jobs", "cancel", jid)
        S.wait_job(jid, {"cancelled"}, timeout=120)
        r = cli("models", "delete", model, check=OK)
        self.assertEqual(r.stdout.strip(), "deleted " + model)
        ids = [l.split()[0] for l in cli("models", "list", check=OK).stdout.splitlines()[1:]]
        self.assertNotIn(model, ids)
        r = cli("models", "delete", model)
        self.assertEqual(r.returncode, ERROR)
        self.assertIn("HTTP 404", r.stderr)

    def test_url_and_key_before_the_command(self):
        """--url/--api-key before the group or the subcommand, with nothing in
        the environment. About 1 s."""
        bare = {"DELTATUNE_API_KEY": "", "DELTATUNE_URL": "http://127.0.0.1:9"}
        g = ["--url", S.url, "--api-key=" + S.key]
        for args in ([*g, "jobs", "list"], ["jobs", *g, "list"], [*g, "files", "list"],
                     ["files", *g, "list", "--json"], [*g, "models", "list"],
                     ["models", *g, "list"]):
            with self.subTest(args=args):
                r = cli(*args, env=bare)
                self.assertEqual(r.returncode, OK, r.stderr)
        r = cli("models", *g, "list", env=bare, check=OK)
        self.assertRegex(r.stdout, TINY_ID + r"\s+base")  # the API's listing, not --admin

    def test_floats_are_printed_as_the_server_prints_them(self):
        """0.0002, not 0.00020000000000000001, in `jobs get` and --json.
        About 3 s."""
        f = cli("files", "upload", write("lr.jsonl", TRAIN_ROWS), check=OK).stdout.strip()
        jid = cli("jobs", "create", "--model", TINY_ID, "--training-file", f, "--learning-rate", "0.0002",
                  "--max-steps", "100000", *FAST, check=OK).stdout.strip()
        try:
            st, _, api = S.api("GET", "/v1/fine_tuning/jobs/" + jid)
            self.assertEqual(st, 200, api)
            for args in (("jobs", "get", jid), ("jobs", "get", jid, "--json"),
                         ("jobs", "list", "--json")):
                with self.subTest(args=args):
                    out = cli(*args, check=OK).stdout
                    self.assertIn("0.0002", out)
                    self.assertNotIn("0.00020000000000000001", out)
                    self.assertNotRegex(out, r"\d\.\d{16,}")
                    if args[1] == "get":  # the same document (progress may move on)
                        self.assertEqual(json.loads(out)["method"], api["method"])
                        self.assertEqual(json.loads(out)["hyperparameters"],
                                         api["hyperparameters"])
            pretty = cli("jobs", "get", jid, check=OK).stdout
            self.assertTrue(pretty.startswith('{\n  "'), pretty[:80])
        finally:
            cli("jobs", "cancel", jid)
        S.wait_job(jid, {"cancelled"}, timeout=120)

    def test_column_widths_follow_the_content(self):
        """jobs/files/models list pad each column to its widest cell, not a
        fixed width. About 10 s (shares the trained job)."""
        job = succeeded_job()
        r = cli("jobs", "list", check=OK)
        self.assertIn(job["id"], r.stdout)
        gaps_follow_content(self, r.stdout, ["ID", "STATUS", "STEP", "MODEL"])
        r = cli("files", "list", check=OK)
        gaps_follow_content(self, r.stdout, ["ID", "STATUS"])
        r = cli("models", "list", check=OK)
        self.assertIn(job["fine_tuned_model"], r.stdout)
        gaps_follow_content(self, r.stdout, ["ID", "KIND", "OWNER"])

    def test_readme_curl_examples_run(self):
        """The README's curl block (upload scripts/demo-data.jsonl, create a
        job on it) runs as written against the stack, the model swapped for
        the tiny one. About 3 s."""
        import re
        with open(os.path.join(ROOT, "README.md")) as fh:
            block = [b for b in re.findall(r"```sh\n(.*?)```", fh.read(), re.S)
                     if "demo-data.jsonl" in b and "/v1/fine_tuning/jobs" in b]
        self.assertEqual(len(block), 1, "one curl block with upload and job creation")
        work = tempfile.mkdtemp(prefix="readme-", dir=TMP)
        os.symlink(os.path.join(ROOT, "scripts"), os.path.join(work, "scripts"))
        script = "set -e\n" + block[0].replace("SmolLM2-135M-Instruct", TINY_ID)
        r = subprocess.run(["bash", "-c", script], env=S.env, cwd=work, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        job = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertTrue(job.get("id", "").startswith("ftjob-"), r.stdout)
        with open(os.path.join(work, "file.json")) as fh:
            self.assertEqual(job["training_file"], json.load(fh)["id"])
        cli("jobs", "cancel", job["id"])
        S.wait_job(job["id"], {"cancelled", "failed", "succeeded"}, timeout=120)

    def test_delete_commands_have_help(self):
        """About 1 s."""
        for args in (("files", "delete"), ("models", "delete")):
            r = cli(*args, "--help", check=OK)
            self.assertIn("usage: deltatune " + " ".join(args), r.stdout)
            self.assertIn("409", r.stdout)


class Chat(unittest.TestCase):
    """`deltatune chat MODEL`: streamed answers from a serving worker."""

    @classmethod
    def setUpClass(cls):
        cls.serving = S.start_worker("cli-serve", extra=("--serve",))
        end = time.time() + 30
        while S.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND "
                     "status = 'serving'") != "1":
            if time.time() > end:
                raise AssertionError("the serving worker did not register")
            time.sleep(0.2)

    @classmethod
    def tearDownClass(cls):
        cls.serving.send_signal(signal.SIGTERM)
        cls.serving.wait(30)

    def api_answer(self, messages, model=TINY_ID):
        st, _, b = S.api("POST", "/v1/chat/completions", {
            "model": model, "messages": messages, "temperature": 0, "max_tokens": 8})
        self.assertEqual(st, 200, b)
        return b["choices"][0]["message"]["content"]

    def test_one_shot_prompt_prints_the_answer(self):
        """--prompt: the greedy answer the API gives, on stdout, exit 0;
        with --system the system message is sent first."""
        msgs = [{"role": "user", "content": "name : Place 1"}]
        r = cli("chat", TINY_ID, "--prompt", "name : Place 1", "--max-tokens", "8", check=OK)
        self.assertEqual(r.stdout, self.api_answer(msgs) + "\n")
        r = cli("chat", TINY_ID, "--system", "Be brief.", "--prompt", "name : Place 1",
                "--max-tokens", "8", check=OK)
        self.assertEqual(r.stdout, self.api_answer(
            [{"role": "system", "content": "Be brief."}] + msgs) + "\n")
        r = cli("chat", TINY_ID, "--prompt", "hi", "--max-tokens", "3", "--json", check=OK)
        self.assertEqual(json.loads(r.stdout)["object"], "chat.completion")

    def test_interactive_keeps_the_conversation(self):
        """Lines on stdin are turns; the second is sent after the first
        question and its answer, as the API would answer it."""
        fine = succeeded_job()["fine_tuned_model"]
        r = subprocess.run([CLI, "chat", fine, "--max-tokens", "8"], env=S.env, cwd=TMP,
                           input="name : Place 1\nfood : French\n", stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=120)
        self.assertEqual(r.returncode, OK, r.stderr)
        a1 = self.api_answer([{"role": "user", "content": "name : Place 1"}], fine)
        a2 = self.api_answer([{"role": "user", "content": "name : Place 1"},
                              {"role": "assistant", "content": a1},
                              {"role": "user", "content": "food : French"}], fine)
        self.assertEqual(r.stdout, a1 + "\n" + a2 + "\n")

    def test_errors_name_the_problem(self):
        """An unknown model: exit 1 with the API's message; no model: usage."""
        r = cli("chat", "no-such-model", "--prompt", "hi", check=ERROR)
        self.assertIn("no-such-model", r.stderr)
        self.assertIn("model", r.stderr)
        r = cli("chat", check=USAGE)
        self.assertIn("name the model", r.stderr)
        r = cli("chat", TINY_ID, "--temperature", "9", check=USAGE)
        self.assertIn("--temperature", r.stderr)


if __name__ == "__main__":
    unittest.main()
