"""The official `openai` Python SDK against a real deltatune stack, unchanged
but for base_url and api_key: files, fine-tuning jobs (delta_lora through
`method`, OpenAI's `supervised`, legacy `hyperparameters`), retrieve, list
with auto-pagination, cancel, events, checkpoints, models, the SDK's typed
errors, and the merged model downloaded through the REST API (loaded with
transformers when .venv/bin/python has it; skipped otherwise).

    tests/client/setup                 # .venv-client with the pinned openai
    BUILD=build .venv-client/bin/python -m unittest discover -s tests/client -p 'test_python_sdk.py' -v
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack, TRAIN_ROWS, TINY_ID  # noqa: E402

try:
    import openai
    from openai import OpenAI
except ImportError:  # run tests/client/setup
    openai = None

TORCH_PY = os.path.join(ROOT, ".venv", "bin", "python")
TERMINAL = {"succeeded", "failed", "cancelled"}
# Small, fast jobs on the tiny model: one epoch of 32 rows, batch 8.
SMALL = {"n_epochs": 1, "batch_size": 8}


def strict(obj):
    """Validates an object the SDK built leniently (as it does by default)
    against the SDK's own types, as `_strict_response_validation` would:
    every field OpenAI defines must have OpenAI's type. Our own method types
    (delta_lora, lora, full: a documented extension) are checked as
    `supervised` with OpenAI's three hyperparameters."""
    d = obj.to_dict(mode="json")
    m = d.get("method")
    if isinstance(m, dict) and m.get("type") in ("delta_lora", "lora", "full"):
        hp = ((m.get(m["type"]) or {}).get("hyperparameters") or {})
        d["method"] = {"type": "supervised", "supervised": {"hyperparameters": {
            k: v for k, v in hp.items() if k in ("batch_size", "learning_rate_multiplier", "n_epochs")}}}
    type(obj).model_validate(d)
    return obj


def cancel_quietly(client, job_id):
    """Cancels a job that may have finished already (409)."""
    try:
        client.fine_tuning.jobs.cancel(job_id)
    except openai.ConflictError:
        pass


def wait(client, job_id, statuses, timeout=120):
    end = time.time() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if time.time() > end:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
        time.sleep(0.3)


@unittest.skipIf(openai is None, "the openai SDK is not importable: run tests/client/setup "
                                 "and use .venv-client/bin/python")
class PythonSDK(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stack = Stack(model="tiny").start()
        try:
            cls._setup()
        except BaseException:
            cls.stack.stop()
            raise

    @classmethod
    def _setup(cls):
        s = cls.stack
        # The SDK's defaults (2 retries on 408/409/429/5xx and connection
        # errors), as a user has them; only base_url and api_key are ours.
        cls.client = OpenAI(base_url=s.url + "/v1", api_key=s.key)
        cls.other = OpenAI(base_url=s.url + "/v1", api_key=s.new_key("client-sdk-other"))
        cls.file = cls.client.files.create(file=("train.jsonl", io.BytesIO(TRAIN_ROWS.encode())),
                                           purpose="fine-tune")
        # The main job: Delta-LoRA through `method`, as the README shows it.
        cls.job = cls.client.fine_tuning.jobs.create(
            model=TINY_ID, training_file=cls.file.id, suffix="sdk-py",
            metadata={"suite": "python-sdk"},
            method={"type": "delta_lora", "delta_lora": {"hyperparameters": {
                "rank": 4, "alpha": 8, "lambda": 0.5, **SMALL}}})
        cls.done = wait(cls.client, cls.job.id, TERMINAL)
        # One serving worker for chat and completions (issue 17).
        s.start_worker("sdk-serve", extra=("--serve",))
        end = time.time() + 30
        while s.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND "
                     "status = 'serving'") != "1":
            if time.time() > end:
                raise RuntimeError("the serving worker did not register")
            time.sleep(0.2)

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def test_strict_check_can_fail(self):
        # strict() is what catches shape drift: a job with a null created_at
        # (the SDK declares an int) must not pass it.
        d = self.done.to_dict(mode="json")
        d["created_at"] = None
        broken = type(self.done).construct(**d)
        with self.assertRaises(Exception):
            strict(broken)

    def test_file_object(self):
        f = strict(self.file)
        self.assertTrue(f.id.startswith("file-"), f.id)
        self.assertEqual(f.object, "file")
        self.assertEqual(f.purpose, "fine-tune")
        self.assertEqual(f.filename, "train.jsonl")
        self.assertEqual(f.bytes, len(TRAIN_ROWS.encode()))
        self.assertIn(f.status, ("uploaded", "processed"))
        got = strict(self.client.files.retrieve(f.id))
        self.assertEqual((got.id, got.bytes), (f.id, f.bytes))
        self.assertEqual(self.client.files.content(f.id).read(), TRAIN_ROWS.encode())
        self.assertIn(f.id, [strict(x).id for x in self.client.files.list()])
        extra = self.client.files.create(file=("extra.jsonl", io.BytesIO(b'{"text": "hi"}\n')),
                                         purpose="fine-tune")
        listed = [x.id for x in self.client.files.list(purpose="fine-tune", order="asc", limit=1)]
        self.assertEqual(listed[-2:], [f.id, extra.id])
        gone = strict(self.client.files.delete(extra.id))
        self.assertEqual((gone.id, gone.deleted), (extra.id, True))
        with self.assertRaises(openai.NotFoundError):
            self.client.files.retrieve(extra.id)
        with self.assertRaises(openai.NotFoundError):
            self.other.files.retrieve(f.id)

    def test_delta_lora_job_succeeds(self):
        job = strict(self.job)
        self.assertTrue(job.id.startswith("ftjob-"), job.id)
        self.assertEqual(job.object, "fine_tuning.job")
        self.assertEqual(job.model, TINY_ID)
        self.assertEqual(job.training_file, self.file.id)
        self.assertIn(job.status, ("validating_files", "queued", "running"))
        self.assertEqual(job.method.type, "delta_lora")
        self.assertEqual(job.metadata, {"suite": "python-sdk"})
        done = strict(self.done)
        self.assertEqual(done.status, "succeeded", done.error)
        self.assertIsInstance(done.finished_at, int)
        self.assertGreaterEqual(done.finished_at, done.created_at)
        self.assertTrue(done.fine_tuned_model.startswith(f"ft:{TINY_ID}:"), done.fine_tuned_model)
        self.assertIn("sdk-py", done.fine_tuned_model)
        self.assertGreater(done.trained_tokens or 0, 0)
        self.assertEqual(done.hyperparameters.n_epochs, 1)
        self.assertEqual(done.hyperparameters.batch_size, 8)
        # Our extension fields pass through the SDK's models as extras.
        self.assertEqual(done.method.delta_lora["hyperparameters"]["rank"]
                         if isinstance(done.method.delta_lora, dict)
                         else done.method.delta_lora.hyperparameters.rank, 4)
        self.assertEqual(done.model_extra.get("progress", {}).get("step"),
                         done.model_extra.get("progress", {}).get("total_steps"))

    def test_supervised_and_legacy_hyperparameters(self):
        sup = self.client.fine_tuning.jobs.create(
            model=TINY_ID, training_file=self.file.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 2}}})
        legacy = self.client.fine_tuning.jobs.create(
            model=TINY_ID, training_file=self.file.id,
            hyperparameters={"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": "auto"})
        for j in (sup, legacy):
            strict(j)
            self.assertEqual(j.object, "fine_tuning.job")
            self.assertEqual(j.hyperparameters.n_epochs, 1)
            self.assertEqual(j.hyperparameters.batch_size, 8)
        self.assertEqual(sup.hyperparameters.learning_rate_multiplier, 2)
        # Both map onto the default method; let them finish.
        for j in (sup, legacy):
            d = strict(wait(self.client, j.id, TERMINAL))
            self.assertEqual(d.status, "succeeded", d.error)
            self.assertIsNotNone(d.fine_tuned_model)
        # models.delete: a fine-tuned model goes; a base model is 403.
        gone = strict(self.client.models.delete(d.fine_tuned_model))
        self.assertEqual((gone.id, gone.deleted), (d.fine_tuned_model, True))
        with self.assertRaises(openai.NotFoundError):
            self.client.models.retrieve(d.fine_tuned_model)
        with self.assertRaises(openai.PermissionDeniedError):
            self.client.models.delete(TINY_ID)

    def test_retrieve_and_list_autopaginate(self):
        ids = {self.job.id}
        for _ in range(3):
            ids.add(self.client.fine_tuning.jobs.create(
                model=TINY_ID, training_file=self.file.id, hyperparameters=SMALL,
                metadata={"suite": "python-sdk-list"}).id)
        got = self.client.fine_tuning.jobs.retrieve(self.job.id)
        self.assertEqual(got.id, self.job.id)
        page = self.client.fine_tuning.jobs.list(limit=2)
        self.assertEqual(len(page.data), 2)
        self.assertTrue(page.has_more)
        seen = [strict(j).id for j in self.client.fine_tuning.jobs.list(limit=2)]  # auto-pagination
        self.assertEqual(len(seen), len(set(seen)), "a job came twice across pages")
        self.assertTrue(ids <= set(seen), ids - set(seen))
        # Newest first.
        created = [j.created_at for j in self.client.fine_tuning.jobs.list(limit=2)]
        self.assertEqual(created, sorted(created, reverse=True))
        # metadata[k]=v filters, as the SDK encodes it.
        tagged = {j.id for j in self.client.fine_tuning.jobs.list(metadata={"suite": "python-sdk-list"})}
        self.assertEqual(tagged, ids - {self.job.id})
        # The other owner sees none of them.
        self.assertFalse(ids & {j.id for j in self.other.fine_tuning.jobs.list()})
        for i in ids - {self.job.id}:
            cancel_quietly(self.client, i)

    def test_cancel(self):
        j = self.client.fine_tuning.jobs.create(
            model=TINY_ID, training_file=self.file.id,
            method={"type": "lora", "lora": {"hyperparameters": {"n_epochs": 100, "batch_size": 1}}})
        c = strict(self.client.fine_tuning.jobs.cancel(j.id))
        self.assertEqual(c.id, j.id)
        self.assertIn(c.status, ("cancelled", "running", "queued"))
        self.assertEqual(wait(self.client, j.id, TERMINAL).status, "cancelled")
        # Cancelling a finished job: 409, which the SDK maps to ConflictError,
        # with x-should-retry: false so that it does not retry it twice first.
        with self.assertRaises(openai.ConflictError) as cm:
            self.client.fine_tuning.jobs.cancel(j.id)
        self.assertEqual(cm.exception.status_code, 409)
        self.assertEqual(cm.exception.response.headers.get("x-should-retry"), "false")
        self.assertEqual(cm.exception.code, "invalid_state")

    def test_pause_resume(self):
        j = self.client.fine_tuning.jobs.create(
            model=TINY_ID, training_file=self.file.id,
            method={"type": "lora", "lora": {"hyperparameters": {"n_epochs": 100, "batch_size": 1}}})
        p = self.client.fine_tuning.jobs.pause(j.id)
        self.assertEqual(p.id, j.id)
        # "paused" is ours (the SDK's enum lacks it); the SDK passes it through.
        self.assertEqual(wait(self.client, j.id, {"paused"} | TERMINAL).status, "paused")
        r = self.client.fine_tuning.jobs.resume(j.id)
        self.assertIn(r.status, ("queued", "running"))
        self.client.fine_tuning.jobs.cancel(j.id)
        self.assertEqual(wait(self.client, j.id, TERMINAL).status, "cancelled")

    def test_idempotency_key(self):
        h = {"Idempotency-Key": f"client-sdk-{time.time_ns()}"}
        a = self.client.fine_tuning.jobs.create(model=TINY_ID, training_file=self.file.id,
                                                hyperparameters=SMALL, extra_headers=h)
        b = self.client.fine_tuning.jobs.with_raw_response.create(
            model=TINY_ID, training_file=self.file.id, hyperparameters=SMALL, extra_headers=h)
        self.assertEqual(b.headers.get("idempotent-replayed"), "true")
        self.assertEqual(b.parse().id, a.id)
        with self.assertRaises(openai.UnprocessableEntityError):
            self.client.fine_tuning.jobs.create(model=TINY_ID, training_file=self.file.id,
                                                hyperparameters={"n_epochs": 2}, extra_headers=h)
        cancel_quietly(self.client, a.id)

    def test_events(self):
        events = self.client.fine_tuning.jobs.list_events(self.job.id, limit=100)
        self.assertTrue(events.data)
        for e in events.data:
            strict(e)
            self.assertEqual(e.object, "fine_tuning.job.event")
            self.assertIn(e.level, ("info", "warn", "error"))
            self.assertIsInstance(e.message, str)
        created = [e.created_at for e in events.data]
        self.assertEqual(created, sorted(created, reverse=True))
        self.assertTrue(any(e.type == "metrics" for e in events.data))
        # Auto-pagination over events, two at a time, gives the same events.
        paged = [e.id for e in self.client.fine_tuning.jobs.list_events(self.job.id, limit=2)]
        self.assertEqual(paged, [e.id for e in events.data])

    def test_checkpoints(self):
        cps = list(self.client.fine_tuning.jobs.checkpoints.list(self.job.id))
        self.assertTrue(cps)
        for c in cps:
            strict(c)
            self.assertEqual(c.object, "fine_tuning.job.checkpoint")
            self.assertEqual(c.fine_tuning_job_id, self.job.id)
            self.assertGreater(c.step_number, 0)
            self.assertTrue(c.fine_tuned_model_checkpoint)
            self.assertIsNotNone(c.metrics)
        steps = [c.step_number for c in cps]
        self.assertEqual(steps, sorted(steps, reverse=True))

    def test_models(self):
        ids = [strict(m).id for m in self.client.models.list()]
        self.assertIn(TINY_ID, ids)
        self.assertIn(self.done.fine_tuned_model, ids)
        base = strict(self.client.models.retrieve(TINY_ID))
        self.assertEqual((base.id, base.object), (TINY_ID, "model"))
        self.assertIsInstance(base.created, int)
        ft = strict(self.client.models.retrieve(self.done.fine_tuned_model))
        self.assertEqual(ft.id, self.done.fine_tuned_model)
        self.assertEqual(ft.object, "model")
        self.assertTrue(ft.owned_by)
        with self.assertRaises(openai.NotFoundError):
            self.client.models.retrieve("no-such-model")
        with self.assertRaises(openai.NotFoundError):
            self.other.models.retrieve(self.done.fine_tuned_model)

    def test_errors(self):
        with self.assertRaises(openai.NotFoundError) as cm:
            self.other.fine_tuning.jobs.retrieve(self.job.id)
        self.assertEqual(cm.exception.status_code, 404)
        with self.assertRaises(openai.NotFoundError):
            self.other.fine_tuning.jobs.cancel(self.job.id)
        with self.assertRaises(openai.NotFoundError):
            self.other.fine_tuning.jobs.list_events(self.job.id)
        bad = OpenAI(base_url=self.stack.url + "/v1", api_key="dt-nope-nope")
        with self.assertRaises(openai.AuthenticationError) as cm:
            bad.models.list()
        self.assertEqual(cm.exception.status_code, 401)
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.fine_tuning.jobs.create(
                model=TINY_ID, training_file=self.file.id,
                method={"type": "delta_lora", "delta_lora": {"hyperparameters": {"rank": 0}}})
        self.assertEqual(cm.exception.status_code, 400)
        self.assertEqual(cm.exception.param, "method.delta_lora.hyperparameters.rank")
        self.assertIn("rank", cm.exception.message)
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.fine_tuning.jobs.create(model=TINY_ID, training_file=self.file.id,
                                                hyperparameters={"n_epochs": 0})
        self.assertEqual(cm.exception.param, "hyperparameters.n_epochs")
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.fine_tuning.jobs.create(model=TINY_ID, training_file="file-nope")
        self.assertEqual(cm.exception.param, "training_file")

    def test_chat_completions_with_and_without_stream(self):
        """client.chat.completions.create on the base model and the job's
        fine-tuned model, plain and streamed: the SDK's own types, strictly;
        greedy streamed text equals the plain answer; usage on request."""
        for model in (TINY_ID, self.done.fine_tuned_model):
            msgs = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "name : Place 1 | food : French"}]
            c = strict(self.client.chat.completions.create(
                model=model, messages=msgs, temperature=0, max_tokens=8, seed=1, user="u"))
            self.assertEqual(c.model, model)
            self.assertEqual(c.choices[0].message.role, "assistant")
            self.assertIn(c.choices[0].finish_reason, ("stop", "length"))
            self.assertEqual(c.usage.total_tokens, c.usage.prompt_tokens + c.usage.completion_tokens)
            chunks = list(self.client.chat.completions.create(
                model=model, messages=msgs, temperature=0, max_tokens=8, stream=True,
                stream_options={"include_usage": True}))
            for ch in chunks:
                strict(ch)
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            self.assertEqual(text, c.choices[0].message.content)
            self.assertEqual(chunks[-1].usage.completion_tokens, c.usage.completion_tokens)
        lp = strict(self.client.chat.completions.create(
            model=TINY_ID, messages=msgs, temperature=0, max_tokens=4, logprobs=True,
            top_logprobs=2))
        self.assertEqual(len(lp.choices[0].logprobs.content), lp.usage.completion_tokens)
        self.assertEqual(len(lp.choices[0].logprobs.content[0].top_logprobs), 2)
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model=TINY_ID, messages=msgs, n=2)
        self.assertEqual(e.exception.body["param"], "n")
        with self.assertRaises(openai.NotFoundError):
            self.other.chat.completions.create(model=self.done.fine_tuned_model, messages=msgs)

    def test_completions_with_and_without_stream(self):
        """client.completions.create, plain and streamed, base and fine-tuned."""
        for model in (TINY_ID, self.done.fine_tuned_model):
            c = strict(self.client.completions.create(model=model, prompt="name : Place",
                                                      temperature=0, max_tokens=6))
            self.assertEqual(c.object, "text_completion")
            chunks = list(self.client.completions.create(model=model, prompt="name : Place",
                                                         temperature=0, max_tokens=6,
                                                         stream=True))
            # The SDK types stream chunks as Completion, whose finish_reason
            # is not nullable, though OpenAI's own chunks carry null until
            # the last: only the last chunk is checked strictly.
            strict(chunks[-1])
            self.assertTrue(all(ch.object == "text_completion" for ch in chunks))
            self.assertEqual(chunks[-1].choices[0].finish_reason, c.choices[0].finish_reason)
            self.assertEqual("".join(ch.choices[0].text for ch in chunks), c.choices[0].text)
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=TINY_ID, prompt="x", echo=True)
        self.assertEqual(e.exception.body["param"], "echo")

    def test_download_merged_model(self):
        model = self.done.fine_tuned_model
        # Our extension, called through the SDK's own HTTP client and auth.
        files = self.client.get(f"/models/{model}/files", cast_to=object)
        self.assertEqual(files["object"], "list")
        names = {f["name"]: f for f in files["data"]}
        for n in ("config.json", "model.safetensors"):
            self.assertIn(n, names)
        base = {f["name"]: f for f in self.client.get(f"/models/{TINY_ID}/files", cast_to=object)["data"]}
        self.assertNotEqual(names["model.safetensors"]["sha256"], base["model.safetensors"]["sha256"],
                            "the merged weights are the base model's: Delta-LoRA moved nothing")
        with tempfile.TemporaryDirectory(prefix="dt-client-") as d:
            for name, meta in names.items():
                body = self.client.get(f"/models/{model}/files/{name}", cast_to=bytes)
                self.assertEqual(len(body), meta["bytes"], name)
                self.assertEqual(hashlib.sha256(body).hexdigest(), meta["sha256"], name)
                # adapter/... files (a delta_lora fine-tune's PEFT adapter) go
                # to their subdirectory, as `models download` puts them
                os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
                with open(os.path.join(d, name), "wb") as f:
                    f.write(body)
            with open(os.path.join(d, "config.json")) as f:
                self.assertEqual(json.load(f)["model_type"], "gpt2")
            self.generate_with_transformers(d)

    def generate_with_transformers(self, d):
        ok = os.path.exists(TORCH_PY) and subprocess.run(
            [TORCH_PY, "-c", "import torch, transformers"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL).returncode == 0
        if not ok:
            print(f"\n  skip: loading the merged model with transformers needs {TORCH_PY} with "
                  "torch and transformers (scripts/make-venv)", file=sys.stderr)
            return
        code = ("import sys, torch, transformers as t\n"
                "d = sys.argv[1]\n"
                "tok = t.AutoTokenizer.from_pretrained(d)\n"
                "m = t.AutoModelForCausalLM.from_pretrained(d)\n"
                "ids = tok('name : Place 1 | food : French', return_tensors='pt').input_ids\n"
                "out = m.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)\n"
                "assert out.shape[1] == ids.shape[1] + 5, out.shape\n"
                "assert torch.isfinite(m(ids).logits).all()\n"
                "print('generated:', repr(tok.decode(out[0][ids.shape[1]:])))\n")
        r = subprocess.run([TORCH_PY, "-c", code, d], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:])
        print("\n  transformers " + r.stdout.strip().splitlines()[-1], file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
