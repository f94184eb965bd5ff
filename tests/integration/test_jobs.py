"""The job lifecycle over HTTP on one stack: upload, create, train, progress,
events, checkpoints, the fine-tuned model and its downloads (files, Range,
ETag, archive); lora and full; cancel, pause/resume; pagination, metadata
filters and idempotency; the default seq_len on a short-context model."""
import io
import json
import os
import tarfile
import tempfile
import threading
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, hp, sha256, TRAIN_ROWS, TINY_ID  # noqa: E402
from common import setUpModule, tearDownModule  # noqa: E402,F401 (one stack for the module)
import tiny_model  # noqa: E402


class Lifecycle(StackTest):
    def test_delta_lora_job_end_to_end(self):
        f = self.upload_ok()
        self.assertRegex(f["id"], r"^file-[0-9a-f]+$")
        self.assertEqual(f["bytes"], len(TRAIN_ROWS.encode()))
        self.assertEqual(f["sha256"], sha256(TRAIN_ROWS.encode()))
        self.assertEqual(f["lines"], 32)
        _, content = self.call("GET", f"/v1/files/{f['id']}/content", raw=True)
        self.assertEqual(content, TRAIN_ROWS.encode())

        v = self.upload_ok(TRAIN_ROWS[:TRAIN_ROWS.index("\n", 400) + 1], filename="valid.jsonl")
        j = self.create_job(f["id"], hp(max_steps=30, checkpoint_interval=10), suffix="life",
                            metadata={"test": "lifecycle"}, validation_file=v["id"])
        self.assertEqual(j["validation_file"], v["id"])
        self.assertRegex(j["id"], r"^ftjob-[0-9a-f]+$")
        self.assertEqual(j["object"], "fine_tuning.job")
        self.assertIn(j["status"], ("validating_files", "queued", "running"))
        self.assertIsNone(j["fine_tuned_model"])
        self.assertEqual(j["method"]["type"], "delta_lora")
        self.assertEqual(j["metadata"], {"test": "lifecycle"})
        self.assertEqual(j["user_provided_suffix"], "life")
        owner = j["organization_id"]

        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        self.assertIsNone(j["error"])
        self.assertIsInstance(j["finished_at"], int)
        p = j["progress"]
        self.assertEqual(p["step"], 30, p)
        self.assertEqual(p["total_steps"], 30, p)
        self.assertGreater(p["epoch"], 0)
        self.assertIsInstance(p["train_loss"], float)
        self.assertGreater(p["train_loss"], 0)
        self.assertIsInstance(p["valid_loss"], float)
        self.assertGreater(p["valid_loss"], 0)
        self.assertIn("tokens_per_second", p)
        self.assertIn("eta_seconds", p)
        self.assertIsInstance(j["trained_tokens"], int)
        self.assertGreater(j["trained_tokens"], 0)
        model = j["fine_tuned_model"]
        self.assertEqual(model, f"ft:{TINY_ID}:{owner}:life:{j['id']}")

        # Events: newest first, both kinds, the metrics ones carry numbers.
        events, pages = self.list_all(f"/v1/fine_tuning/jobs/{j['id']}/events", 7)
        self.assertGreater(pages, 1)
        ids = [int(e["id"].split("-")[1]) for e in events]
        self.assertEqual(ids, sorted(ids, reverse=True))
        self.assertEqual(len(set(ids)), len(ids))
        metrics = [e for e in events if e["type"] == "metrics"]
        # Metrics events are rate-limited, but the first and last steps are there.
        self.assertGreaterEqual(len(metrics), 2, [e["message"] for e in events])
        self.assertEqual(metrics[-1]["data"]["step"], 1)
        last = metrics[0]["data"]
        self.assertEqual(last["step"], 30)
        self.assertEqual(last["total_steps"], 30)
        for k in ("train_loss", "tokens_per_second", "learning_rate", "grad_norm", "trained_tokens"):
            self.assertIsInstance(last[k], (int, float), (k, last))
        self.assertGreater(last["tokens_per_second"], 0)
        self.assertEqual(last["trained_tokens"], j["trained_tokens"])
        # How the job fits: the engine's peak device memory and whether the
        # worker's estimate turned activation checkpointing on (it fits).
        self.assertGreater(last["peak_device_bytes"], 0, last)
        self.assertIs(last["activation_checkpointing"], False, last)
        msgs = [e["message"] for e in events if e["type"] == "message"]
        self.assertTrue(any(model in m for m in msgs), msgs)
        self.assertTrue(any(m.startswith("Activation checkpointing off; peak device memory")
                            for m in msgs), msgs)
        for e in events:
            self.assertEqual(e["object"], "fine_tuning.job.event")
            self.assertIn(e["level"], ("info", "warn", "error"))

        # The same events as a stream: oldest first, then the end.
        self.check_stream(j["id"], events)

        # Checkpoints: newest step first, each a model id under the job's.
        ck = self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")
        steps = [c["step_number"] for c in ck["data"]]
        self.assertEqual(steps, [30, 20, 10], ck)
        for c in ck["data"]:
            self.assertEqual(c["fine_tuning_job_id"], j["id"])
            self.assertEqual(c["fine_tuned_model_checkpoint"], f"{model}:ckpt-step-{c['step_number']}")
            self.assertIn("train_loss", c["metrics"])
            self.assertIn("valid_loss", c["metrics"])
        page = self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints?limit=2")
        self.assertEqual([c["step_number"] for c in page["data"]], [30, 20])
        self.assertTrue(page["has_more"])
        page = self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints?limit=2&after={page['data'][-1]['id']}")
        self.assertEqual([c["step_number"] for c in page["data"]], [10])
        self.assertFalse(page["has_more"])

        # The model is listed, retrievable, and its files download intact.
        models = {m["id"]: m for m in self.call("GET", "/v1/models")["data"]}
        self.assertIn(TINY_ID, models)
        self.assertEqual(models[TINY_ID]["kind"], "base")
        self.assertIn(model, models)
        self.assertEqual(models[model]["kind"], "fine_tuned")
        self.assertEqual(models[model]["owned_by"], owner)
        self.assertEqual(models[model]["job"], j["id"])
        # As with OpenAI, checkpoints are not in the list ...
        self.assertNotIn(f"{model}:ckpt-step-10", models)
        m = self.call("GET", f"/v1/models/{model}")
        self.assertEqual((m["id"], m["object"], m["parent"]), (model, "model", TINY_ID))
        self.check_model_files(model)
        # ... but a checkpoint answers by its id, with its files.
        self.assertEqual(self.call("GET", f"/v1/models/{model}:ckpt-step-10")["id"],
                         f"{model}:ckpt-step-10")
        files = self.call("GET", f"/v1/models/{model}:ckpt-step-10/files")["data"]
        self.assertTrue(files)

    def check_stream(self, job_id, events):
        path = f"/v1/fine_tuning/jobs/{job_id}/events?stream=true"
        hd, b = self.call("GET", path, raw=True, timeout=60)
        self.assertTrue(hd["content-type"].startswith("text/event-stream"), hd)
        blocks = [x for x in b.decode().split("\n\n") if "data: " in x]  # no retry:, comments
        got = []
        for blk in blocks[:-1]:
            fields = dict(line.split(": ", 1) for line in blk.splitlines() if not line.startswith(":"))
            self.assertNotIn("event", fields, blk)
            ev = json.loads(fields["data"])
            self.assertEqual(fields["id"], ev["id"])
            got.append(ev)
        self.assertEqual(got, events[::-1])
        self.assertIn("event: end", blocks[-1])
        self.assertEqual(json.loads(blocks[-1].split("data: ", 1)[1])["status"], "succeeded")
        # Only what follows Last-Event-ID.
        mid = events[len(events) // 2]["id"]
        hd, b = self.call("GET", path, raw=True, timeout=60, headers={"Last-Event-ID": mid})
        ids = [l[4:] for l in b.decode().splitlines() if l.startswith("id: ")]
        self.assertEqual(ids, [e["id"] for e in events[:len(events) // 2][::-1]])

    def check_model_files(self, model):
        files = {x["name"]: x for x in self.call("GET", f"/v1/models/{model}/files")["data"]}
        self.assertIn("config.json", files)
        self.assertIn("model.safetensors", files)
        blobs = {}
        for name, x in files.items():
            self.assertEqual(x["object"], "model.file")
            self.assertRegex(x["sha256"], r"^[0-9a-f]{64}$")
            hd, b = self.call("GET", f"/v1/models/{model}/files/{name}", raw=True)
            self.assertEqual(len(b), x["bytes"], name)
            self.assertEqual(sha256(b), x["sha256"], name)
            self.assertEqual(int(hd["content-length"]), x["bytes"])
            blobs[name] = (hd, b)

        # Range requests on the weights.
        name, (hd, full) = "model.safetensors", blobs["model.safetensors"]
        path = f"/v1/models/{model}/files/{name}"
        etag = hd.get("etag")
        self.assertTrue(etag, hd)
        self.assertEqual(hd.get("accept-ranges"), "bytes")
        n = len(full)
        for rng, lo, hi in (("bytes=0-99", 0, 99), ("bytes=100-", 100, n - 1), ("bytes=-16", n - 16, n - 1),
                            (f"bytes={n - 10}-{n + 50}", n - 10, n - 1)):
            rh, b = self.call("GET", path, raw=True, want=206, headers={"Range": rng})
            self.assertEqual(b, full[lo:hi + 1], rng)
            self.assertEqual(rh.get("content-range"), f"bytes {lo}-{hi}/{n}", rng)
            self.assertEqual(int(rh["content-length"]), hi - lo + 1)
        st, rh, _ = self.s.api("GET", path, raw=True, headers={"Range": f"bytes={n}-"})
        self.assertEqual(st, 416)
        self.assertEqual(rh.get("content-range"), f"bytes */{n}")
        # A syntactically invalid Range is ignored (RFC 9110 14.2): the whole file.
        for junk in ("bytes=5-2", "bytes=x-1", "bytes=1", "bytes=0-1 junk"):
            st, rh, b = self.s.api("GET", path, raw=True, headers={"Range": junk})
            self.assertEqual((st, len(b)), (200, n), junk)
        # ETag revalidation and If-Range.
        st, rh, b = self.s.api("GET", path, raw=True, headers={"If-None-Match": etag})
        self.assertEqual((st, b), (304, b""))
        st, _, b = self.s.api("GET", path, raw=True, headers={"If-None-Match": '"other"'})
        self.assertEqual(st, 200)
        self.assertEqual(b, full)
        st, _, b = self.s.api("GET", path, raw=True, headers={"Range": "bytes=0-3", "If-Range": etag})
        self.assertEqual((st, b), (206, full[:4]))
        st, _, b = self.s.api("GET", path, raw=True, headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
        self.assertEqual((st, len(b)), (200, n))
        # Unknown and hostile names.
        for bad in ("nope.bin", "..%2F..%2Fconfig.json", "%2Fetc%2Fpasswd", ".."):
            st, _, _ = self.s.api("GET", f"/v1/models/{model}/files/{bad}")
            self.assertEqual(st, 404, bad)

        # The archive: a tar of the same files under one directory.
        hd, tar = self.call("GET", f"/v1/models/{model}/archive", raw=True)
        self.assertIn("tar", hd.get("content-type", ""))
        top = model.replace(":", "_").replace("/", "_")
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as t:
            members = {mm.name: mm for mm in t.getmembers() if mm.isfile()}
            self.assertEqual(set(members), {f"{top}/{x}" for x in files}, members)
            for x, meta in files.items():
                data = t.extractfile(members[f"{top}/{x}"]).read()
                self.assertEqual(sha256(data), meta["sha256"], x)
            cfg = t.extractfile(members[f"{top}/config.json"]).read()
        self.assertIn(b"gpt2", cfg)

    def test_lora_and_full_succeed(self):
        f = self.upload_ok()
        for method in ("lora", "full"):
            with self.subTest(method=method):
                j = self.create_job(f["id"], hp(method, max_steps=4), suffix=method)
                self.assertEqual(j["method"]["type"], method)
                j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
                self.assertEqual(j["status"], "succeeded", j)
                self.assertEqual(j["progress"]["step"], 4)
                self.assertTrue(j["fine_tuned_model"].startswith(f"ft:{TINY_ID}:"), j)
                self.assertTrue(j["fine_tuned_model"].endswith(f":{method}:{j['id']}"), j)
                files = {x["name"]: x for x in self.call("GET", f"/v1/models/{j['fine_tuned_model']}/files")["data"]}
                self.assertIn("model.safetensors", files)
                hd, b = self.call("GET", f"/v1/models/{j['fine_tuned_model']}/files/config.json", raw=True)
                self.assertEqual(sha256(b), files["config.json"]["sha256"])

    def test_supervised_and_legacy_hyperparameters_run_delta_lora(self):
        f = self.upload_ok()
        j = self.create_job(f["id"], {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
                            want=200)
        self.assertIn(j["method"]["type"], ("supervised", "delta_lora"))
        self.call("POST", f"/v1/fine_tuning/jobs/{j['id']}/cancel")
        j2 = self.s.api("POST", "/v1/fine_tuning/jobs", {"model": TINY_ID, "training_file": f["id"],
                                                         "hyperparameters": {"n_epochs": 1, "batch_size": 8}})
        self.assertEqual(j2[0], 200, j2)
        self.assertEqual(j2[2]["hyperparameters"]["batch_size"], 8)
        self.call("POST", f"/v1/fine_tuning/jobs/{j2[2]['id']}/cancel")
        self.wait(j["id"], {"cancelled"})
        self.wait(j2[2]["id"], {"cancelled"})


class Control(StackTest):
    def test_cancel_running_and_queued(self):
        f = self.upload_ok()
        a = self.create_job(f["id"], hp(max_steps=100000, checkpoint_interval=50))
        self.wait_until("job A running a few steps", lambda: self.call(
            "GET", f"/v1/fine_tuning/jobs/{a['id']}")["progress"]["step"] >= 3)
        run = self.call("GET", f"/v1/fine_tuning/jobs/{a['id']}")
        self.assertEqual(run["status"], "running", run)
        p = run["progress"]
        self.assertEqual(p["total_steps"], 100000, p)
        self.assertGreater(p["tokens_per_second"], 0, p)
        self.assertIsInstance(p["train_loss"], float, p)
        self.assertGreater(p["eta_seconds"], 0, p)
        self.assertIsInstance(run["estimated_finish"], int, run)
        self.assertEqual(run["attempt"], 1)
        b = self.create_job(f["id"], hp(max_steps=5))
        self.assertEqual(b["status"], "queued")  # the only worker is busy
        # A queued job: paused, resumed, then cancelled at once.
        b = self.call("POST", f"/v1/fine_tuning/jobs/{b['id']}/pause")
        self.assertEqual(b["status"], "paused")
        b = self.call("POST", f"/v1/fine_tuning/jobs/{b['id']}/resume")
        self.assertEqual(b["status"], "queued")
        h = {"Idempotency-Key": "cancel-b"}
        st1, _, b1 = self.s.api("POST", f"/v1/fine_tuning/jobs/{b['id']}/cancel", headers=h)
        st2, h2, b2 = self.s.api("POST", f"/v1/fine_tuning/jobs/{b['id']}/cancel", headers=h)
        self.assertEqual((st1, st2), (200, 200), (b1, b2))
        self.assertEqual(b2, b1)
        self.assertEqual(h2.get("idempotent-replayed"), "true")
        b = b1
        self.assertEqual(b["status"], "cancelled")
        self.err("POST", f"/v1/fine_tuning/jobs/{b['id']}/cancel", want=409)
        self.err("POST", f"/v1/fine_tuning/jobs/{b['id']}/resume", want=409)
        # The running job stops within a step.
        a = self.call("POST", f"/v1/fine_tuning/jobs/{a['id']}/cancel")
        self.assertTrue(a["status"] == "cancelled" or a["cancel_requested"], a)
        a = self.wait(a["id"], {"cancelled", "succeeded", "failed"}, timeout=60)
        self.assertEqual(a["status"], "cancelled", a)
        self.assertIsNone(a["fine_tuned_model"])
        self.assertLess(a["progress"]["step"], 100000)
        self.err("POST", f"/v1/fine_tuning/jobs/{a['id']}/cancel", want=409)
        self.err("POST", f"/v1/fine_tuning/jobs/{a['id']}/pause", want=409)
        b = self.call("GET", f"/v1/fine_tuning/jobs/{b['id']}")
        self.assertEqual((b["status"], b["attempt"]), ("cancelled", 0), b)
        # The worker is free again: a new job runs.
        c = self.create_job(f["id"], hp(max_steps=2))
        c = self.wait(c["id"], {"succeeded", "failed"})
        self.assertEqual(c["status"], "succeeded", c)
        # No suffix: the id keeps its five parts.
        self.assertRegex(c["fine_tuned_model"], rf"^ft:{TINY_ID}:{c['organization_id']}::{c['id']}$")

    def test_pause_resume_continues_from_checkpoint(self):
        f = self.upload_ok()
        total = 150
        j = self.create_job(f["id"], hp(max_steps=total, checkpoint_interval=10))
        self.wait_until("12 steps", lambda: self.call(
            "GET", f"/v1/fine_tuning/jobs/{j['id']}")["progress"]["step"] >= 12)
        p = self.call("POST", f"/v1/fine_tuning/jobs/{j['id']}/pause")
        self.assertTrue(p["status"] == "paused" or p["pause_requested"], p)
        p = self.wait(j["id"], {"paused", "succeeded", "failed"}, timeout=60)
        self.assertEqual(p["status"], "paused", p)
        self.err("POST", f"/v1/fine_tuning/jobs/{j['id']}/pause", want=409)
        ck = self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")["data"]
        self.assertTrue(ck, "a paused job has a checkpoint")
        paused_at = ck[0]["step_number"]
        self.assertGreaterEqual(paused_at, 10)
        self.assertLess(paused_at, total)
        r = self.call("POST", f"/v1/fine_tuning/jobs/{j['id']}/resume")
        self.assertEqual(r["status"], "queued")
        self.err("POST", f"/v1/fine_tuning/jobs/{j['id']}/resume", want=409)
        done = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["progress"]["step"], total)
        self.assertEqual(done["attempt"], 2)
        events, _ = self.list_all(f"/v1/fine_tuning/jobs/{j['id']}/events", 1000)
        msgs = [e["message"] for e in events]
        self.assertTrue(any(f"Resuming from the checkpoint at step {paused_at}" in m for m in msgs), msgs[:40])
        # The second attempt did not redo the steps before the checkpoint.
        steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
        self.assertEqual(min(s for s in steps if s > paused_at), paused_at + 1)
        self.assertLessEqual(steps.count(1), 1)
        # The same job without the pause gives the same weights (one thread,
        # same seed: resume reproduces an uninterrupted run).
        twin = self.create_job(f["id"], hp(max_steps=total, checkpoint_interval=10))
        twin = self.wait(twin["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(twin["status"], "succeeded", twin)

        def weights(m):
            return {x["name"]: x["sha256"] for x in self.call("GET", f"/v1/models/{m}/files")["data"]}
        self.assertEqual(weights(done["fine_tuned_model"])["model.safetensors"],
                         weights(twin["fine_tuned_model"])["model.safetensors"])


class Listing(StackTest):
    def test_files_pagination(self):
        made = [self.upload_ok(filename=f"page{i}.jsonl")["id"] for i in range(3)]
        everything, _ = self.list_all("/v1/files", 1000)
        items, pages = self.list_all("/v1/files", 2)
        self.assertEqual([x["id"] for x in items], [x["id"] for x in everything])
        self.assertEqual(pages, max(1, (len(everything) + 1) // 2))
        ids = [x["id"] for x in items]
        # Newest first by default; the three new ones lead, newest first.
        self.assertEqual(ids[:3], made[::-1])
        asc = self.call("GET", "/v1/files?order=asc&limit=10000")["data"]
        self.assertEqual([x["id"] for x in asc], ids[::-1])
        page = self.call("GET", f"/v1/files?limit=1&after={made[1]}")
        self.assertEqual([x["id"] for x in page["data"]], [made[0]])

    def test_jobs_pagination_and_metadata_filter(self):
        f = self.upload_ok()
        made = []
        for i in range(3):
            j = self.create_job(f["id"], hp(max_steps=1), metadata={"batch": "p7", "i": str(i)})
            made.append(j["id"])
        other = self.create_job(f["id"], hp(max_steps=1), metadata={"batch": "other"})["id"]
        q = "/v1/fine_tuning/jobs?metadata%5Bbatch%5D=p7"
        page = self.call("GET", q + "&limit=2")
        self.assertEqual([x["id"] for x in page["data"]], made[:0:-1])
        self.assertTrue(page["has_more"])
        page = self.call("GET", q + f"&limit=2&after={page['data'][-1]['id']}")
        self.assertEqual([x["id"] for x in page["data"]], [made[0]])
        self.assertFalse(page["has_more"])
        page = self.call("GET", q + "&metadata%5Bi%5D=1")
        self.assertEqual([x["id"] for x in page["data"]], [made[1]])
        page = self.call("GET", "/v1/fine_tuning/jobs?metadata%5Bbatch%5D=nothing")
        self.assertEqual((page["data"], page["has_more"]), ([], False))
        items, pages = self.list_all("/v1/fine_tuning/jobs", 1)
        ids = [x["id"] for x in items]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(ids[:4], [other] + made[::-1])
        self.assertEqual(pages, len(ids))
        for jid in made + [other]:
            self.wait(jid, {"succeeded", "failed", "cancelled"})

    def test_idempotency(self):
        f = self.upload_ok()
        body = {"model": TINY_ID, "training_file": f["id"], "method": hp(max_steps=1),
                "metadata": {"idem": "k1"}}
        before = self.count("jobs")
        st1, h1, j1 = self.s.api("POST", "/v1/fine_tuning/jobs", body, headers={"Idempotency-Key": "idem-k1"})
        self.assertEqual(st1, 200, j1)
        st2, h2, j2 = self.s.api("POST", "/v1/fine_tuning/jobs", body, headers={"Idempotency-Key": "idem-k1"})
        self.assertEqual(st2, 200, j2)
        self.assertEqual(j2["id"], j1["id"])
        self.assertEqual(j2, j1)
        self.assertEqual(h2.get("idempotent-replayed"), "true", h2)
        self.assertEqual(self.count("jobs"), before + 1)
        listed = self.call("GET", "/v1/fine_tuning/jobs?metadata%5Bidem%5D=k1")["data"]
        self.assertEqual([x["id"] for x in listed], [j1["id"]])
        other = dict(body, suffix="different")
        self.err("POST", "/v1/fine_tuning/jobs", other, want=422, headers={"Idempotency-Key": "idem-k1"})
        self.assertEqual(self.count("jobs"), before + 1)
        # Another key is another job.
        st3, _, j3 = self.s.api("POST", "/v1/fine_tuning/jobs", body, headers={"Idempotency-Key": "idem-k2"})
        self.assertEqual(st3, 200, j3)
        self.assertNotEqual(j3["id"], j1["id"])
        self.assertEqual(self.count("jobs"), before + 2)
        # Uploads honour the key too.
        files_before = self.count("files")
        boundary = "----dtidem"
        mp = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
              f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"i.jsonl\"\r\n\r\n"
              + TRAIN_ROWS + f"\r\n--{boundary}--\r\n").encode()
        hdr = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Idempotency-Key": "idem-up"}
        a = self.s.api("POST", "/v1/files", mp, headers=hdr)
        b = self.s.api("POST", "/v1/files", mp, headers=hdr)
        self.assertEqual((a[0], b[0]), (200, 200), (a, b))
        self.assertEqual(a[2]["id"], b[2]["id"])
        self.assertEqual(self.count("files"), files_before + 1)
        # Racing requests with one key make one job: each answer is that
        # job or 409 (still in progress).
        n = self.count("jobs")
        race = dict(body, metadata={"idem": "race"})
        out = []
        ts = [threading.Thread(target=lambda: out.append(self.s.api(
            "POST", "/v1/fine_tuning/jobs", race, headers={"Idempotency-Key": "idem-race"})))
              for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        ok = {b["id"] for st, _, b in out if st == 200}
        self.assertEqual(len(ok), 1, out)
        self.assertTrue(all(st in (200, 409) for st, _, _ in out), [st for st, _, _ in out])
        self.assertEqual(self.count("jobs"), n + 1)
        for jid in (j1["id"], j3["id"], ok.pop()):
            self.wait(jid, {"succeeded", "failed", "cancelled"})


class Deleting(StackTest):
    def test_delete_file_and_model(self):
        f = self.upload_ok()
        j = self.create_job(f["id"], hp(max_steps=2), suffix="del")
        # A file that a queued or running job uses cannot go.
        st, _, b = self.s.api("DELETE", f"/v1/files/{f['id']}")
        if self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}")["status"] in ("queued", "running"):
            self.assertEqual(st, 409, b)
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        n = self.count("files")
        d = self.call("DELETE", f"/v1/files/{f['id']}")
        self.assertEqual((d["id"], d["deleted"]), (f["id"], True))
        self.err("GET", f"/v1/files/{f['id']}", want=404)
        self.err("GET", f"/v1/files/{f['id']}/content", want=404)
        self.err("DELETE", f"/v1/files/{f['id']}", want=404)
        self.assertNotIn(f["id"], [x["id"] for x in self.call("GET", "/v1/files?limit=10000")["data"]])
        self.assertEqual(self.count("files"), n - 1)
        # The job's model: deleted with its files; the job stays.
        m = j["fine_tuned_model"]
        d = self.call("DELETE", f"/v1/models/{m}")
        self.assertEqual((d["id"], d["deleted"]), (m, True))
        for path in (f"/v1/models/{m}", f"/v1/models/{m}/files", f"/v1/models/{m}/files/config.json",
                     f"/v1/models/{m}/archive"):
            self.err("GET", path, want=404)
        self.assertNotIn(m, [x["id"] for x in self.call("GET", "/v1/models")["data"]])
        self.err("DELETE", f"/v1/models/{TINY_ID}", want=403)
        self.assertEqual(self.call("GET", f"/v1/fine_tuning/jobs/{j['id']}")["status"], "succeeded")


class ShortContext(StackTest):
    def test_default_seq_len_fits_the_model(self):
        """The default seq_len (256) is clamped to a model with 64 positions;
        an explicit seq_len beyond them fails the job with a clear error."""
        d = os.path.join(tempfile.mkdtemp(prefix="dt-pos64-", dir=self.s.run), "tiny-pos64")
        old = tiny_model.POS
        tiny_model.POS = 64
        try:
            tiny_model.write(d)
        finally:
            tiny_model.POS = old
        self.s.cli("models", "add", "--id", "tiny-pos64", "--path", d)
        f = self.upload_ok()
        j = self.s.api("POST", "/v1/fine_tuning/jobs", {"model": "tiny-pos64", "training_file": f["id"],
                       "method": {"type": "lora", "lora": {"hyperparameters": {"max_steps": 2, "batch_size": 2}}}})
        self.assertEqual(j[0], 200, j)
        done = self.wait(j[2]["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(done["status"], "succeeded", done)
        st, _, j = self.s.api("POST", "/v1/fine_tuning/jobs", {"model": "tiny-pos64", "training_file": f["id"],
                              "method": {"type": "lora", "lora": {"hyperparameters": {"max_steps": 2, "seq_len": 128}}}})
        if st == 400:
            self.assertIn("seq_len", j["error"]["param"])
            return
        self.assertEqual(st, 200, j)
        done = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(done["status"], "failed", done)
        self.assertIn("seq_len", done["error"]["message"])
        self.assertIn("64", done["error"]["message"])
        self.assertTrue(done["error"]["param"].endswith("seq_len"), done["error"])


if __name__ == "__main__":
    unittest.main()
