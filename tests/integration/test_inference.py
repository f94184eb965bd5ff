"""Chat and completions served by inference workers (issue 17):
POST /v1/chat/completions and POST /v1/completions on a real stack with one
serving worker (deltatune-worker --serve) that only this file starts.

Base and fine-tuned model, stream and not; greedy decoding deterministic and
equal to transformers' greedy generate on the downloaded merged model (fp32,
CPU; skipped with a message where .venv lacks torch); bad input on every
field; owner isolation; no serving worker -> 503; no worker taking the
request in time -> 503 with Retry-After; a client that disconnects cancels
its request (the worker log says it stopped early); a serving worker killed
mid-stream -> an error chunk, not a hang; and SmolLM2-135M-Instruct's chat
greedy output equals transformers' (apply_chat_template + generate). About
3 minutes on this machine (SmolLM2 and transformers take 2 of them)."""
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, start_stack, hp, TINY_ID, ROOT  # noqa: E402

S = None
QUEUE_WAIT = 3      # DELTATUNE_INFER_QUEUE_WAIT for this stack
SILENCE = 3         # DELTATUNE_INFER_SILENCE
TORCH_PY = os.path.join(ROOT, ".venv", "bin", "python")
CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"
MSGS = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "name : Place 1 | food : French"}]


def setUpModule():
    global S
    S = start_stack(env={"DELTATUNE_INFER_QUEUE_WAIT": str(QUEUE_WAIT),
                         "DELTATUNE_INFER_SILENCE": str(SILENCE)})
    StackTest.s = S


def tearDownModule():
    if S:
        S.stop()


def sse_events(body):
    """The data: payloads of an SSE body (bytes), in order."""
    out = []
    for block in body.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(line[6:])
    return out


class Inference(StackTest):
    serving = None   # the serving worker's Popen
    delay = 0

    @classmethod
    def serve(cls, delay=0):
        """A live serving worker with the given per-token delay (restarted
        when another delay is asked for or it died)."""
        p = cls.serving
        if p and p.poll() is None and cls.delay == delay:
            return p
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        cls.delay = delay
        cls.serving = S.start_worker("serve-1", extra=("--serve", "--token-delay-ms", str(delay)))
        end = time.time() + 30
        while int(S.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND status = "
                         "'serving'")) < 1:
            if time.time() > end:
                raise AssertionError("the serving worker did not register:\n" + S.log("serve-1"))
            time.sleep(0.2)
        return cls.serving

    def stop_serving(self):
        p = type(self).serving
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(30)

    def stream(self, path, body, key=None):
        """POST with stream: true; returns (status, headers, [data payloads])."""
        body = dict(body, stream=True)
        st, hd, b = self.s.api("POST", path, body, key=key, raw=True, timeout=60)
        return st, hd, sse_events(b) if st == 200 else json.loads(b)

    def chat_text(self, events):
        """The text of chat.completion.chunk events; checks their shape."""
        self.assertEqual(events[-1], "[DONE]", events)
        chunks = [json.loads(e) for e in events[:-1]]
        text = ""
        for c in chunks:
            self.assertEqual(c["object"], "chat.completion.chunk", c)
            self.assertTrue(c["id"].startswith("chatcmpl-"), c)
            for ch in c["choices"]:
                text += ch["delta"].get("content") or ""
        self.assertEqual(chunks[0]["choices"][0]["delta"]["role"], "assistant", chunks[0])
        finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        self.assertEqual(len(finals), 1, chunks)
        return text, finals[0]["choices"][0]["finish_reason"], chunks

    # ---- both endpoints on the base model ------------------------------------------
    def test_chat_non_stream_and_stream_agree_greedy(self):
        """Greedy chat: the same answer twice (deterministic), and streamed
        chunks join to the same text, with [DONE] and usage on request."""
        self.serve()
        body = {"model": TINY_ID, "messages": MSGS, "temperature": 0, "max_tokens": 12}
        a = self.call("POST", CHAT, body)
        b = self.call("POST", CHAT, body)
        self.assertEqual(a["object"], "chat.completion", a)
        self.assertEqual(a["choices"][0]["message"]["role"], "assistant", a)
        text = a["choices"][0]["message"]["content"]
        self.assertEqual(text, b["choices"][0]["message"]["content"])
        self.assertIn(a["choices"][0]["finish_reason"], ("stop", "length"), a)
        u = a["usage"]
        self.assertGreater(u["prompt_tokens"], 5, a)
        self.assertLessEqual(u["completion_tokens"], 12, a)
        self.assertEqual(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"], a)
        if a["choices"][0]["finish_reason"] == "length":
            self.assertEqual(u["completion_tokens"], 12, a)

        st, hd, ev = self.stream(CHAT, dict(body, stream_options={"include_usage": True}))
        self.assertEqual(st, 200, ev)
        self.assertTrue(hd["content-type"].startswith("text/event-stream"), hd)
        s_text, finish, chunks = self.chat_text(ev)
        self.assertEqual(s_text, text)
        self.assertEqual(finish, a["choices"][0]["finish_reason"])
        self.assertEqual(chunks[-1]["choices"], [], chunks[-1])
        self.assertEqual(chunks[-1]["usage"], u, chunks[-1])

    def test_chat_logprobs_greedy_and_streamed(self):
        """logprobs: true, top_logprobs 3: one entry per generated token,
        its bytes joined are the answer; greedy picks the most likely
        token (entry = its first top_logprob); top_logprobs sorted; the
        streamed chunks carry the same entries."""
        self.serve()
        body = {"model": TINY_ID, "messages": MSGS, "temperature": 0, "max_tokens": 10,
                "logprobs": True, "top_logprobs": 3}
        a = self.call("POST", CHAT, body)
        content = a["choices"][0]["logprobs"]["content"]
        self.assertEqual(len(content), a["usage"]["completion_tokens"], a)
        joined = b"".join(bytes(e["bytes"]) for e in content).decode("utf-8", "replace")
        self.assertEqual(joined, a["choices"][0]["message"]["content"])
        for e in content:
            self.assertLessEqual(e["logprob"], 0)
            top = e["top_logprobs"]
            self.assertEqual(len(top), 3, e)
            self.assertEqual([t["logprob"] for t in top],
                             sorted((t["logprob"] for t in top), reverse=True))
            self.assertEqual((e["token"], e["logprob"]), (top[0]["token"], top[0]["logprob"]))
        st, _, ev = self.stream(CHAT, body)
        self.assertEqual(st, 200, ev)
        streamed = []
        for c in (json.loads(x) for x in ev[:-1]):
            lp = c["choices"][0]["logprobs"] if c["choices"] else None
            streamed += lp["content"] if lp else []
        self.assertEqual(streamed, content)
        plain = self.call("POST", CHAT, dict(body, logprobs=False, top_logprobs=None))
        self.assertIsNone(plain["choices"][0]["logprobs"], plain)

    def test_completions_logprobs_legacy_form(self):
        """/v1/completions logprobs = N: OpenAI's legacy form (tokens,
        token_logprobs, top_logprobs as {token: logprob} with N entries,
        text_offset counted from the prompt's start); the tokens joined are
        the text; greedy picks the most likely; streamed chunks carry the
        same; logprobs 0 gives the chosen tokens only; absent gives null."""
        self.serve()
        prompt = "name : Place 2 | food :"
        body = {"model": TINY_ID, "prompt": prompt, "temperature": 0, "max_tokens": 8,
                "logprobs": 2}
        a = self.call("POST", COMPL, body)
        ch = a["choices"][0]
        lp = ch["logprobs"]
        n = a["usage"]["completion_tokens"]
        self.assertTrue(n > 0, a)
        for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            self.assertEqual(len(lp[k]), n, (k, lp))
        self.assertEqual("".join(lp["tokens"]), ch["text"])
        off = len(prompt)
        for tok, x, top, o in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                  lp["text_offset"]):
            self.assertEqual(o, off)
            off += len(tok)
            self.assertLessEqual(x, 0)
            self.assertTrue(1 <= len(top) <= 2, top)
            self.assertAlmostEqual(max(top.values()), x, places=5)
        st, _, ev = self.stream(COMPL, body)
        self.assertEqual(st, 200, ev)
        merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for c in (json.loads(x) for x in ev[:-1]):
            part = c["choices"][0]["logprobs"] if c["choices"] else None
            for k in merged:
                merged[k] += part[k] if part else []
        self.assertEqual(merged, lp)
        zero = self.call("POST", COMPL, dict(body, logprobs=0))["choices"][0]["logprobs"]
        self.assertEqual(zero["tokens"], lp["tokens"])
        self.assertEqual(zero["top_logprobs"], [{}] * n)
        plain = self.call("POST", COMPL, dict(body, logprobs=None))
        self.assertIsNone(plain["choices"][0]["logprobs"], plain)

    def test_completions_non_stream_and_stream(self):
        """/v1/completions: text_completion, and the same text streamed."""
        self.serve()
        body = {"model": TINY_ID, "prompt": "name : Place 2 | food :", "temperature": 0,
                "max_tokens": 9}
        a = self.call("POST", COMPL, body)
        self.assertEqual(a["object"], "text_completion", a)
        self.assertTrue(a["id"].startswith("cmpl-"), a)
        text = a["choices"][0]["text"]
        st, _, ev = self.stream(COMPL, body)
        self.assertEqual(st, 200, ev)
        self.assertEqual(ev[-1], "[DONE]")
        chunks = [json.loads(e) for e in ev[:-1]]
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks), text)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"],
                         a["choices"][0]["finish_reason"])
        self.assertNotIn("usage", chunks[0])  # only with stream_options.include_usage

    def test_stop_string_cuts_the_text(self):
        """A stop string found in the greedy output ends it there, with
        finish_reason stop and the string itself left out."""
        self.serve()
        body = {"model": TINY_ID, "prompt": "name : Place 3 | food :", "temperature": 0,
                "max_tokens": 16}
        full = self.call("POST", COMPL, body)["choices"][0]["text"]
        self.assertGreater(len(full), 4, full)
        stop = full[2:4]
        cut = full[:full.index(stop)]
        a = self.call("POST", COMPL, dict(body, stop=[stop, "never-in-it"]))
        self.assertEqual(a["choices"][0]["text"], cut, (full, stop))
        self.assertEqual(a["choices"][0]["finish_reason"], "stop", a)
        st, _, ev = self.stream(COMPL, dict(body, stop=stop))
        self.assertEqual("".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1]), cut)

    def test_sampling_seed_is_reproducible(self):
        """temperature > 0 with a seed: the same seed, the same text."""
        self.serve()
        body = {"model": TINY_ID, "prompt": "name :", "temperature": 1.5, "top_p": 0.9,
                "seed": 7, "max_tokens": 12}
        a = self.call("POST", COMPL, body)["choices"][0]["text"]
        b = self.call("POST", COMPL, body)["choices"][0]["text"]
        self.assertEqual(a, b)

    # ---- continuous batching ------------------------------------------------------
    def serve_log_done(self, since):
        """The serve.done records of serve-1's log after offset `since`."""
        out = []
        for line in self.s.log("serve-1")[since:].splitlines():
            if '"serve.done"' in line:
                rec = json.loads(line)
                out.append(rec.get("fields", rec))
        return out

    def concurrent(self, bodies):
        """The bodies streamed at once (threads); [(path, body, text, finish)]."""
        import threading
        res = [None] * len(bodies)

        def one(i, path, body):
            st, _, ev = self.stream(path, body)
            res[i] = (st, ev)
        ts = [threading.Thread(target=one, args=(i, p, b)) for i, (p, b) in enumerate(bodies)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        out = []
        for (path, body), (st, ev) in zip(bodies, res):
            self.assertEqual(st, 200, ev)
            if path == CHAT:
                text, finish, _ = self.chat_text(ev)
            else:
                self.assertEqual(ev[-1], "[DONE]", ev)
                chunks = [json.loads(e) for e in ev[:-1]]
                text = "".join(c["choices"][0]["text"] for c in chunks)
                finish = chunks[-1]["choices"][0]["finish_reason"]
            out.append((text, finish))
        return out

    def test_concurrent_streams_are_batched_and_equal_sequential(self):
        """Four streaming requests at once (prompts of different lengths,
        chat and completions, greedy and seeded sampling) finish with the
        answers each gives alone, and the worker decoded them together: its
        serve.done records say each ran in a batch of more than one, one of
        four."""
        self.serve(delay=30)
        bodies = [
            (CHAT, {"model": TINY_ID, "messages": MSGS, "temperature": 0, "max_tokens": 20}),
            (COMPL, {"model": TINY_ID, "prompt": "name :", "temperature": 0,
                     "max_tokens": 24}),
            (COMPL, {"model": TINY_ID, "prompt": "name : Place 7 | food : Indian | area :",
                     "temperature": 0, "max_tokens": 16}),
            (COMPL, {"model": TINY_ID, "prompt": "name : Place 2", "temperature": 1.2,
                     "top_p": 0.9, "seed": 11, "max_tokens": 20}),
        ]
        alone = [self.concurrent([b])[0] for b in bodies]
        for text, _ in alone:
            self.assertTrue(text, alone)
        log0 = len(self.s.log("serve-1"))
        together = self.concurrent(bodies)
        self.assertEqual(together, alone)
        done = self.wait_until("four serve.done records",
                               lambda: (lambda d: d if len(d) == 4 else None)(
                                   self.serve_log_done(log0)), timeout=10)
        sizes = sorted(d["max_batch"] for d in done)
        self.assertGreaterEqual(sizes[0], 2, done)
        self.assertEqual(sizes[-1], 4, done)

    def test_concurrent_requests_on_two_models_each_batched_per_model(self):
        """Requests on the base and a full fine-tune (its own weights) at
        once: each group is decoded on its own model (the answers equal
        those given alone, no batch holds more than its group) and both
        groups finish."""
        ft = self.fully_fine_tuned()
        self.serve(delay=20)
        bodies = [(COMPL, {"model": m, "prompt": p, "temperature": 0, "max_tokens": 12})
                  for m in (TINY_ID, ft) for p in ("name :", "name : Place 4 | food :")]
        alone = [self.concurrent([b])[0] for b in bodies]
        log0 = len(self.s.log("serve-1"))
        self.assertEqual(self.concurrent(bodies), alone)
        done = self.wait_until("four serve.done records",
                               lambda: (lambda d: d if len(d) == 4 else None)(
                                   self.serve_log_done(log0)), timeout=10)
        self.assertTrue(all(d["max_batch"] <= 2 for d in done), done)

    def test_base_and_its_adapter_fine_tune_batch_together(self):
        """Requests on the base and its Delta-LoRA fine-tune (an adapter over
        the shared base) at once run in one batch that mixes them, each with
        the answer it gives alone."""
        ft = self.fine_tuned()
        self.serve(delay=20)
        bodies = [(COMPL, {"model": m, "prompt": p, "temperature": 0, "max_tokens": 12})
                  for m in (TINY_ID, ft) for p in ("name :", "name : Place 4 | food :")]
        alone = [self.concurrent([b])[0] for b in bodies]
        log0 = len(self.s.log("serve-1"))
        self.assertEqual(self.concurrent(bodies), alone)
        done = self.wait_until("four serve.done records",
                               lambda: (lambda d: d if len(d) == 4 else None)(
                                   self.serve_log_done(log0)), timeout=10)
        self.assertEqual(max(d["max_batch"] for d in done), 4, done)

    def metrics(self):
        st, _, b = self.s.api("GET", "/metrics", key=False, raw=True)
        self.assertEqual(st, 200)
        out = {}
        for line in b.decode().splitlines():
            if line.startswith("deltatune_inference_"):
                k, v = line.split()
                out[k] = float(v)
        return out

    def test_metrics_count_requests_tokens_and_waits(self):
        """/metrics: requests, tokens, queue wait and time to first token
        grow with a served request; the open gauge is back to 0."""
        self.serve()
        m0 = self.metrics()
        a = self.call("POST", COMPL, {"model": TINY_ID, "prompt": "name :", "temperature": 0,
                                      "max_tokens": 10, "stop": "never"})
        m1 = self.metrics()
        self.assertEqual(m1["deltatune_inference_requests_total"],
                         m0["deltatune_inference_requests_total"] + 1)
        grown = m1["deltatune_inference_tokens_total"] - m0["deltatune_inference_tokens_total"]
        self.assertGreaterEqual(grown, 1)
        self.assertLessEqual(grown, a["usage"]["completion_tokens"])
        for k in ("queue_wait_seconds", "time_to_first_token_seconds"):
            self.assertEqual(m1[f"deltatune_inference_{k}_count"],
                             m0[f"deltatune_inference_{k}_count"] + 1, k)
            self.assertGreater(m1[f"deltatune_inference_{k}_sum"],
                               m0[f"deltatune_inference_{k}_sum"], k)
        self.wait_until("no request in flight",
                        lambda: self.metrics()["deltatune_inference_open"] == 0, timeout=5)

    # ---- bad input -------------------------------------------------------------
    def test_bad_input_names_the_field(self):
        """Each bad field is a 400 naming it; no-op values are accepted."""
        self.serve()
        base = {"model": TINY_ID, "messages": MSGS, "max_tokens": 2}
        bad = [
            ({"messages": MSGS}, "model"),
            ({"model": 5, "messages": MSGS}, "model"),
            ({"model": TINY_ID}, "messages"),
            (dict(base, messages=[]), "messages"),
            (dict(base, messages="hi"), "messages"),
            (dict(base, messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
            (dict(base, messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
            (dict(base, messages=[{"role": "user"}]), "messages[0].content"),
            (dict(base, messages=[{"role": "user", "content": 3}]), "messages[0].content"),
            (dict(base, messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
             "messages[0].content[0].type"),
            (dict(base, messages=[{"role": "user", "content": "x", "colour": 1}]),
             "messages[0].colour"),
            (dict(base, max_tokens=0), "max_tokens"),
            (dict(base, max_tokens="5"), "max_tokens"),
            (dict(base, max_tokens=10**7), "max_tokens"),
            (dict(base, max_completion_tokens=-1), "max_completion_tokens"),
            (dict(base, temperature=2.5), "temperature"),
            (dict(base, temperature="hot"), "temperature"),
            (dict(base, top_p=1.5), "top_p"),
            (dict(base, seed=1.5), "seed"),
            (dict(base, stop=5), "stop"),
            (dict(base, stop=["a", ""]), "stop[1]"),
            (dict(base, stop=["a", "b", "c", "d", "e"]), "stop"),
            (dict(base, stream="yes"), "stream"),
            (dict(base, stream_options={"include_usage": True}), "stream_options"),
            (dict(base, n=2), "n"),
            (dict(base, logprobs="yes"), "logprobs"),
            (dict(base, top_logprobs=3), "top_logprobs"),  # without logprobs: true
            (dict(base, logprobs=True, top_logprobs=21), "top_logprobs"),
            (dict(base, frequency_penalty=0.5), "frequency_penalty"),
            (dict(base, presence_penalty=-1), "presence_penalty"),
            (dict(base, logit_bias={"50256": -100}), "logit_bias"),
            (dict(base, tools=[{"type": "function"}]), "tools"),
            (dict(base, response_format={"type": "json_object"}), "response_format.type"),
            (dict(base, user=5), "user"),
            (dict(base, colour="blue"), "colour"),
        ]
        for body, param in bad:
            with self.subTest(param=param, body=body):
                self.err("POST", CHAT, body, 400, param)
        pbase = {"model": TINY_ID, "prompt": "hi", "max_tokens": 2}
        for body, param in [({"model": TINY_ID}, "prompt"),
                            (dict(pbase, prompt=""), "prompt"),
                            (dict(pbase, prompt=["a", "b"]), "prompt"),
                            (dict(pbase, prompt=7), "prompt"),
                            (dict(pbase, echo=True), "echo"),
                            (dict(pbase, suffix="x"), "suffix"),
                            (dict(pbase, best_of=3), "best_of"),
                            (dict(pbase, logprobs=6), "logprobs"),
                            (dict(pbase, logprobs=-1), "logprobs"),
                            (dict(pbase, logprobs=True), "logprobs"),
                            (dict(pbase, messages=MSGS), "messages")]:
            with self.subTest(param=param, body=body):
                self.err("POST", COMPL, body, 400, param)
        # a prompt longer than the model's context (256 positions)
        self.err("POST", COMPL, dict(pbase, prompt="word " * 400), 400, "prompt")
        self.err("POST", COMPL, dict(pbase, prompt="a b", max_tokens=300), 400, "max_tokens")
        self.err("POST", CHAT, dict(base, model="no-such-model"), 404, "model")
        # values that change nothing are accepted, as common clients send them
        ok = self.call("POST", CHAT, dict(base, n=1, user="u1", frequency_penalty=0,
                                          presence_penalty=0, logit_bias={}, logprobs=False,
                                          tools=[], tool_choice="none", store=False,
                                          response_format={"type": "text"}, seed=None,
                                          stop=None, metadata={"a": "b"},
                                          messages=[{"role": "developer", "content": "x"},
                                                    {"role": "user", "content": [
                                                        {"type": "text", "text": "hi"}]}]))
        self.assertEqual(ok["object"], "chat.completion", ok)

    # ---- fine-tuned model, owners, transformers ------------------------------------
    def fine_tuned(self):
        if getattr(type(self), "ft", None):
            return type(self).ft
        f = self.upload_ok()
        j = self.create_job(f["id"], hp("delta_lora", max_steps=3, export_dtype="float32"))
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        type(self).ft = j["fine_tuned_model"]
        return type(self).ft

    def fully_fine_tuned(self):
        if getattr(type(self), "full", None):
            return type(self).full
        f = self.upload_ok()
        j = self.create_job(f["id"], hp("full", max_steps=2, export_dtype="float32"))
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        type(self).full = j["fine_tuned_model"]
        return type(self).full

    def lora_fine_tuned(self):
        """A LoRA fine-tune trained hard enough to change the greedy text."""
        if getattr(type(self), "lora", None):
            return type(self).lora
        f = self.upload_ok()
        j = self.create_job(f["id"], hp("lora", max_steps=8, learning_rate=0.05,
                                        export_dtype="float32"))
        j = self.wait(j["id"], {"succeeded", "failed", "cancelled"})
        self.assertEqual(j["status"], "succeeded", j)
        type(self).lora = j["fine_tuned_model"]
        return type(self).lora

    def test_fine_tuned_model_shares_the_base_weights(self):
        """A Delta-LoRA and a LoRA fine-tune load as their adapters beside
        their base, which stays loaded once: the worker's serve.load records
        say each fine-tune runs on the base, holds only the adapter's bytes,
        and the resident total is the base plus the adapters. Their greedy
        answers are the merged models' (deltatune generate on the downloaded
        merged directory), and a full fine-tune (no adapter) loads its own
        weights."""
        ft = self.fine_tuned()
        lora = self.lora_fine_tuned()
        full = self.fully_fine_tuned()
        self.stop_serving()
        p = S.start_worker("serve-share", extra=("--serve",))
        try:
            end = time.time() + 30
            while S.psql("SELECT count(*) FROM workers WHERE id = 'serve-share' AND "
                         "status = 'serving'") != "1":
                self.assertLess(time.time(), end, S.log("serve-share"))
                time.sleep(0.2)
            prompt = "name : Place 5 | food : Thai\n"
            answers = {}
            for model in (TINY_ID, ft, lora, full):
                answers[model] = self.call("POST", COMPL, {"model": model, "prompt": prompt,
                                                           "temperature": 0, "logprobs": 0,
                                                           "max_tokens": 24})
            log = S.log("serve-share")
            loads = [json.loads(l) for l in log.splitlines() if '"serve.load"' in l]
            self.assertEqual(len(loads), 4, log)
            base, ad1, ad2, own = loads
            self.assertIsNone(base.get("base"), base)
            for ad in (ad1, ad2):
                self.assertEqual(ad["base"], base["model"], ad)
                self.assertLess(ad["bytes"] * 20, base["bytes"], ad)
            self.assertEqual(ad2["resident_bytes"], base["bytes"] + ad1["bytes"] + ad2["bytes"])
            self.assertIsNone(own.get("base"), own)
            self.assertGreater(own["bytes"], ad1["bytes"] * 20, own)
            self.assertNotIn("serve.adapter_failed", log)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        for m in (ft, lora):
            ref = self.merged_greedy(m, prompt)
            a = answers[m]
            self.assertEqual(a["choices"][0]["text"], ref["text"], (m, a, ref))
            self.assertEqual(a["usage"]["completion_tokens"], ref["completion_tokens"])
            # the adapter acts (3 Delta-LoRA steps move the tiny model's
            # probabilities, if not its greedy text; the LoRA run its text)
            self.assertNotEqual(a["choices"][0]["logprobs"]["token_logprobs"],
                                answers[TINY_ID]["choices"][0]["logprobs"]["token_logprobs"])
        self.assertNotEqual(answers[lora]["choices"][0]["text"],
                            answers[TINY_ID]["choices"][0]["text"])
        self.serve()

    def merged_greedy(self, model, prompt):
        """deltatune generate's greedy answer on model's downloaded merged files."""
        with tempfile.TemporaryDirectory() as d:
            for f in self.call("GET", f"/v1/models/{model}/files")["data"]:
                if "/" in f["name"]:
                    continue
                _, blob = self.call("GET", f"/v1/models/{model}/files/{f['name']}", raw=True)
                with open(os.path.join(d, f["name"]), "wb") as out:
                    out.write(blob)
            pf = os.path.join(d, "prompts.jsonl")
            with open(pf, "w") as out:
                out.write(json.dumps(prompt) + "\n")
            r = subprocess.run([os.path.join(S.build, "deltatune"), "generate", "--model", d,
                                "--prompts-file", pf, "--max-tokens", "24", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            return json.loads(r.stdout.strip().splitlines()[-1])

    def test_fine_tuned_model_both_endpoints_and_owner_isolation(self):
        """The ft: model answers chat and completions, stream and not;
        another owner gets 404 naming model."""
        self.serve()
        ft = self.fine_tuned()
        a = self.call("POST", CHAT, {"model": ft, "messages": MSGS, "temperature": 0,
                                     "max_tokens": 6})
        self.assertEqual(a["model"], ft)
        st, _, ev = self.stream(CHAT, {"model": ft, "messages": MSGS, "temperature": 0,
                                       "max_tokens": 6})
        self.assertEqual(st, 200, ev)
        self.assertEqual(self.chat_text(ev)[0], a["choices"][0]["message"]["content"])
        c = self.call("POST", COMPL, {"model": ft, "prompt": "name :", "max_tokens": 4})
        self.assertEqual(c["model"], ft)
        st, _, ev = self.stream(COMPL, {"model": ft, "prompt": "name :", "max_tokens": 4})
        self.assertEqual(st, 200, ev)
        self.assertEqual(ev[-1], "[DONE]")
        other = self.s.new_key("inference-other-owner")
        for path, body in ((CHAT, {"model": ft, "messages": MSGS}),
                           (COMPL, {"model": ft, "prompt": "x"})):
            self.err("POST", path, body, 404, "model", key=other)
            self.err("POST", path, dict(body, stream=True), 404, "model", key=other)

    def test_greedy_equals_transformers_on_merged_model(self):
        """32 greedy tokens of the fine-tuned model (fp32 on the CPU) equal
        transformers' greedy generate on its downloaded merged directory."""
        self.serve()
        ft = self.fine_tuned()
        prompt = "name : Place 5 | food : Thai\n"
        a = self.call("POST", COMPL, {"model": ft, "prompt": prompt, "temperature": 0,
                                      "max_tokens": 32})
        ok = os.path.exists(TORCH_PY) and subprocess.run(
            [TORCH_PY, "-c", "import torch, transformers"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL).returncode == 0
        if not ok:
            self.skipTest(f"comparing with transformers needs {TORCH_PY} with torch and "
                          "transformers (scripts/make-venv)")
        with tempfile.TemporaryDirectory() as d:
            for f in self.call("GET", f"/v1/models/{ft}/files")["data"]:
                if "/" in f["name"]:
                    continue
                _, blob = self.call("GET", f"/v1/models/{ft}/files/{f['name']}", raw=True)
                with open(os.path.join(d, f["name"]), "wb") as out:
                    out.write(blob)
            code = ("import sys, json, torch, transformers as t\n"
                    "torch.set_num_threads(1)\n"
                    "d, prompt = sys.argv[1], sys.argv[2]\n"
                    "tok = t.AutoTokenizer.from_pretrained(d)\n"
                    "m = t.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)\n"
                    "ids = tok(prompt, return_tensors='pt').input_ids\n"
                    "out = m.generate(ids, max_new_tokens=32, do_sample=False,\n"
                    "                 eos_token_id=tok.eos_token_id, pad_token_id=0)\n"
                    "new = out[0][ids.shape[1]:].tolist()\n"
                    "print(json.dumps({'n': len(new), 'text': tok.decode(new)}))\n")
            r = subprocess.run([TORCH_PY, "-c", code, d, prompt], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            ref = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(a["usage"]["completion_tokens"], 32, a)
        self.assertEqual(ref["n"], 32, ref)
        self.assertEqual(a["choices"][0]["text"], ref["text"])

    def test_models_stay_loaded_least_recently_used_first_out(self):
        """A serving worker whose --memory-limit holds one tiny model: the
        base model, its Delta-LoRA fine-tune (an adapter beside the base:
        nothing evicted), a full fine-tune (its own weights: the adapter and
        then the base go), the base again (the full fine-tune goes); the log
        says so; asked twice in a row, a model is not loaded again. A limit
        below one model: 503 naming model."""
        ft = self.fine_tuned()
        full = self.fully_fine_tuned()
        self.stop_serving()
        p = S.start_worker("serve-lru", extra=("--serve", "--memory-limit", "12M"))
        try:
            end = time.time() + 30
            while S.psql("SELECT count(*) FROM workers WHERE id = 'serve-lru' AND "
                         "status = 'serving'") != "1":
                self.assertLess(time.time(), end, S.log("serve-lru"))
                time.sleep(0.2)
            for model in (TINY_ID, TINY_ID, ft, full, TINY_ID):
                self.call("POST", COMPL, {"model": model, "prompt": "name :", "max_tokens": 2})
            log = S.log("serve-lru")
            loads = [json.loads(l) for l in log.splitlines() if '"serve.load"' in l]
            evicts = [l for l in log.splitlines() if '"serve.evict"' in l]
            # the second base request reuses it
            self.assertEqual(len(loads), 4, log)
            self.assertEqual([bool(x.get("base")) for x in loads], [False, True, False, False],
                             log)
            self.assertEqual(len(evicts), 3, log)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        p = S.start_worker("serve-small", extra=("--serve", "--memory-limit", "2M"))
        try:
            end = time.time() + 30
            while S.psql("SELECT count(*) FROM workers WHERE id = 'serve-small' AND "
                         "status = 'serving'") != "1":
                self.assertLess(time.time(), end, S.log("serve-small"))
                time.sleep(0.2)
            e = self.err("POST", CHAT, {"model": TINY_ID, "messages": MSGS}, 503, "model")
            self.assertEqual(e["code"], "model_too_large", e)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        self.serve()

    # ---- workers: none, busy, killed; clients that go away -------------------------------
    def test_no_serving_worker_is_503(self):
        """With no live serving worker: 503 saying so, with Retry-After."""
        self.stop_serving()
        try:
            for path, body in ((CHAT, {"model": TINY_ID, "messages": MSGS}),
                               (COMPL, {"model": TINY_ID, "prompt": "x", "stream": True})):
                st, hd, b = self.s.api("POST", path, body)
                self.assertEqual(st, 503, b)
                self.assertIn("no serving worker", b["error"]["message"])
                self.assertIn("retry-after", hd)
        finally:
            self.serve()

    def test_request_no_worker_takes_in_time_is_503_and_dropped(self):
        """A stopped (SIGSTOP) worker takes nothing: after the queue wait
        the client gets 503 with Retry-After, and the worker, once it runs
        again, drops the request instead of answering nobody."""
        p = self.serve()
        p.send_signal(signal.SIGSTOP)
        try:
            t0 = time.time()
            st, hd, b = self.s.api("POST", COMPL, {"model": TINY_ID, "prompt": "x",
                                                   "max_tokens": 3})
            waited = time.time() - t0
        finally:
            p.send_signal(signal.SIGCONT)
        self.assertEqual(st, 503, b)
        self.assertEqual(b["error"]["code"], "no_worker_available", b)
        self.assertIn("retry-after", hd)
        self.assertGreaterEqual(waited, QUEUE_WAIT - 0.5)
        self.assertLess(waited, QUEUE_WAIT + 5)
        self.wait_until("the worker to drop the stale request",
                        lambda: "cancelled before it started" in self.s.log("serve-1"),
                        timeout=20)

    def open_stream(self, body):
        """A raw streaming request; returns (connection, response)."""
        u = urllib.parse.urlparse(self.s.url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        c.request("POST", COMPL, json.dumps(dict(body, stream=True)),
                  {"Authorization": "Bearer " + self.s.key, "Content-Type": "application/json"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        return c, r

    def test_client_disconnect_cancels_generation(self):
        """A client that closes its stream after two chunks: the worker
        stops long before max_tokens (its log says after how many)."""
        self.serve(delay=40)
        cancelled0 = self.metrics()["deltatune_inference_cancelled_total"]
        log0 = len(self.s.log("serve-1"))
        c, r = self.open_stream({"model": TINY_ID, "prompt": "name :", "max_tokens": 200,
                                 "temperature": 0})
        got = 0
        while got < 2:
            line = r.readline()
            self.assertTrue(line, "the stream ended early")
            got += line.startswith(b"data: ")
        c.sock.close()
        c.close()
        t0 = time.time()
        line = self.wait_until("the worker to stop the request",
                               lambda: [l for l in self.s.log("serve-1")[log0:].splitlines()
                                        if "serve.cancelled" in l], timeout=20)
        self.assertLess(time.time() - t0, 5, "cancel took too long")
        n = int(line[0].split("cancelled after ")[1].split()[0])
        self.assertLess(n, 100, line)  # 200 tokens would take 8 s
        self.assertIn("chat.cancelled", self.s.log("server"))
        self.assertEqual(self.metrics()["deltatune_inference_cancelled_total"], cancelled0 + 1)

    def test_client_disconnect_cancels_a_non_streamed_request(self):
        """A client that sends a (non-streamed) request and closes its
        connection before the answer: the worker stops early too."""
        self.serve(delay=40)
        cancelled0 = self.metrics()["deltatune_inference_cancelled_total"]
        log0 = len(self.s.log("serve-1"))
        u = urllib.parse.urlparse(self.s.url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        c.request("POST", COMPL, json.dumps({"model": TINY_ID, "prompt": "name :",
                                             "max_tokens": 200, "temperature": 0}),
                  {"Authorization": "Bearer " + self.s.key, "Content-Type": "application/json"})
        time.sleep(1)  # the worker is generating (8 s for 200 tokens)
        c.sock.close()
        c.close()
        line = self.wait_until("the worker to stop the request",
                               lambda: [l for l in self.s.log("serve-1")[log0:].splitlines()
                                        if "serve.cancelled" in l], timeout=20)
        n = int(line[0].split("cancelled after ")[1].split()[0])
        self.assertLess(n, 100, line)
        self.assertEqual(self.metrics()["deltatune_inference_cancelled_total"], cancelled0 + 1)

    def test_worker_killed_mid_stream_gives_error_chunk(self):
        """SIGKILL of the serving worker mid-stream: the stream ends with an
        error chunk within the silence timeout, not a hang."""
        p = self.serve(delay=40)
        c, r = self.open_stream({"model": TINY_ID, "prompt": "name :", "max_tokens": 200,
                                 "temperature": 0})
        got = 0
        while got < 3:
            line = r.readline()
            self.assertTrue(line, "the stream ended early")
            got += line.startswith(b"data: ")
        p.kill()
        p.wait()
        t0 = time.time()
        rest = r.read()  # ends: the server closes the stream
        c.close()
        self.assertLess(time.time() - t0, SILENCE + 5)
        events = sse_events(rest)
        self.assertTrue(events, rest)
        last = json.loads(events[-1])
        self.assertEqual(last["error"]["code"], "worker_lost", last)
        self.assertNotIn("[DONE]", events)
        self.serve()


HF_CHAT = """import os, sys, json, torch, transformers as t
torch.set_num_threads(1)
path, msgs = sys.argv[1], json.loads(sys.argv[2])
d, f = os.path.dirname(path), os.path.basename(path)
tok = t.AutoTokenizer.from_pretrained(d, gguf_file=f)
m = t.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
if not torch.is_tensor(ids):
    ids = ids["input_ids"]
out = m.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=tok.eos_token_id)
new = out[0][ids.shape[1]:].tolist()
if new and new[-1] == tok.eos_token_id:
    new = new[:-1]
print(json.dumps({"prompt_tokens": ids.shape[1], "n": len(new),
                  "text": tok.decode(new, skip_special_tokens=True)}))
"""


class SmolLM2Greedy(unittest.TestCase):
    def test_chat_greedy_equals_transformers_on_smollm2(self):
        """SmolLM2-135M-Instruct (the GGUF, dequantized to fp32 by both):
        the chat prompt has as many tokens as transformers'
        apply_chat_template(add_generation_prompt=True), and 32 greedy
        tokens are the same text as its greedy generate. 70-120 s here."""
        sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
        from stack import Stack
        s = Stack(model="smollm2")
        if not os.path.exists(s.model_path):
            self.skipTest(f"{s.model_path} is missing (scripts/install-deps)")
        ok = os.path.exists(TORCH_PY) and subprocess.run(
            [TORCH_PY, "-c", "import torch, transformers, gguf"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL).returncode == 0
        if not ok:
            self.skipTest(f"comparing with transformers needs {TORCH_PY} with torch, "
                          "transformers and gguf (scripts/make-venv)")
        msgs = [{"role": "system", "content": "You are a storyteller."},
                {"role": "user", "content": "Tell me a long story about a cat and a boat."}]
        s.start()
        try:
            s.start_worker("smol-serve", extra=("--serve",))
            end = time.time() + 30
            while s.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND "
                         "status = 'serving'") != "1":
                self.assertLess(time.time(), end, s.log("smol-serve"))
                time.sleep(0.3)
            st, _, a = s.api("POST", CHAT, {"model": s.model_id, "messages": msgs,
                                            "temperature": 0, "max_tokens": 32}, timeout=300)
            self.assertEqual(st, 200, a)
        finally:
            s.stop()
        r = subprocess.run([TORCH_PY, "-c", HF_CHAT, s.model_path, json.dumps(msgs)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        ref = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(a["usage"]["prompt_tokens"], ref["prompt_tokens"])
        self.assertEqual(a["usage"]["completion_tokens"], ref["n"])
        self.assertEqual(ref["n"], 32, ref)
        self.assertEqual(a["choices"][0]["message"]["content"], ref["text"])


class UpStartsAServingWorker(unittest.TestCase):
    def test_scripts_up_serves_chat_and_the_rate_limit_applies(self):
        """scripts/up (make up) starts a serving worker beside the training
        worker by default: chat works with no worker started by the test;
        the per-key rate limit (1/s, burst 2 here) answers 429 beyond it."""
        sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
        from stack import Stack
        s = Stack(model="tiny", env={"DELTATUNE_SERVE_WORKERS": "1", "DELTATUNE_RATE_LIMIT": "1",
                                     "DELTATUNE_RATE_BURST": "2"})
        s.start()
        try:
            end = time.time() + 30
            while s.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND "
                         "status = 'serving'") != "1":
                self.assertLess(time.time(), end, s.log("serve"))
                time.sleep(0.3)
            time.sleep(2.5)  # the bucket refills after the readiness checks
            body = {"model": TINY_ID, "messages": MSGS, "max_tokens": 3}
            codes = [s.api("POST", CHAT, body)[0] for _ in range(3)]
            self.assertEqual(codes[:2], [200, 200], codes)
            self.assertEqual(codes[2], 429, codes)
        finally:
            s.stop()


if __name__ == "__main__":
    unittest.main()
