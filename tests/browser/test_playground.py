"""Browser test of the dashboard's Playground (server/static/playground.js)
against a real stack on the tiny model, with a fine-tuned model trained in
setUpClass and two serving workers (deltatune-worker --serve; each takes
one request at a time) that only this test starts, after it has seen the
page show the API's 503 "no serving worker". The workers pause after each
token (--token-delay-ms) so that a stream is seen growing, Stop can land
mid-answer, and both sides of compare mode are seen streaming together.

Checked: the streamed answer appears in more than one step, each a prefix
of the next, and ends equal to the API's non-streamed answer to the same
request at temperature 0; Stop cancels the generation on the server (its
cancel counter grows); compare mode defaults to the fine-tuned model and
its base and shows both answers, each equal to its model's API answer; a
job's and the models page's "Try it" links open their model; a
checkpoint's "Try it" on the job page opens it, its 400 model_not_ready is
shown with "Build merged model", which (pressed from the keyboard) starts
the hf export, shows its progress and re-sends the message once, whose
answer streams and equals the API's; an export that fails (a checkpoint
whose DONE marker is hidden) shows the worker's reason and sends nothing;
the history goes with the next message; Enter sends, Shift+Enter does not,
Esc stops; every control has a label; no sideways scrolling at phone
width. About 25 s on this machine.
"""
import json
import os
import re
import signal
import sys
import time
import unittest
from urllib.parse import unquote

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from browser_case import BrowserCase, expect  # noqa: E402
from stack import TRAIN_ROWS  # noqa: E402

CHAT = "/v1/chat/completions"
SYSTEM = "You are terse."
PROMPT = "name : Place 1 | food : French"
TOKEN_DELAY_MS = 30

# Records, in the page, every text the last answer of each panel shows
# (window.__seen[panel]) and the most answers seen streaming at once, and
# among them the most that already showed text (window.__both).
OBSERVE = """() => {
  window.__seen = {a: [], b: []};
  window.__both = {streaming: 0, withText: 0};
  const root = document.getElementById('pg-panels');
  const look = () => {
    for (const name of ['a', 'b']) {
      const li = root.querySelector(`#pg-panel-${name} li.assistant:last-child`);
      const seen = window.__seen[name];
      if (li) {
        const t = li.querySelector('.text').textContent;
        if (seen[seen.length - 1] !== t) seen.push(t);
      }
    }
    const live = [...root.querySelectorAll('li.assistant[data-state=streaming]')];
    const withText = live.filter((li) => li.querySelector('.text').textContent !== '').length;
    window.__both.streaming = Math.max(window.__both.streaming, live.length);
    window.__both.withText = Math.max(window.__both.withText, withText);
  };
  new MutationObserver(look).observe(root, {subtree: true, childList: true, characterData: true,
                                            attributes: true});
}"""


class Playground(BrowserCase):
    stack_env = {"DELTATUNE_INFER_QUEUE_WAIT": "10", "DELTATUNE_INFER_SILENCE": "10"}
    serving = []

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        try:
            s = cls.s
            st, _, f = s.upload(TRAIN_ROWS)
            assert st == 200, f
            st, _, j = s.api("POST", "/v1/fine_tuning/jobs", {
                "model": s.model_id, "training_file": f["id"], "suffix": "pg",
                "method": {"type": "delta_lora", "delta_lora": {"hyperparameters": {
                    "max_steps": 4, "checkpoint_interval": 2, "batch_size": 2, "seq_len": 32}}}})
            assert st == 200, j
            j = s.wait_job(j["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
            assert j["status"] == "succeeded", j
            cls.job = j
            cls.ft = j["fine_tuned_model"]
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for p in cls.serving:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        super().tearDownClass()

    # ---- helpers ---------------------------------------------------------------
    def serve(self, n=2):
        """Starts n serving workers (one request at a time each: compare mode
        needs two to stream both answers at once) and waits until they are
        registered."""
        for i in range(1, n + 1):
            type(self).serving.append(self.s.start_worker(
                f"serve-{i}", extra=("--serve", "--token-delay-ms", str(TOKEN_DELAY_MS))))
        end = time.time() + 30
        while int(self.s.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND "
                              "status = 'serving'")) < n:
            if time.time() > end:
                self.fail("the serving workers did not register:\n" + self.s.log("serve-1"))
            time.sleep(0.2)

    def serve_logs(self):
        return self.s.log("serve-1") + self.s.log("serve-2")

    def api_answer(self, model, max_tokens):
        """The API's non-streamed answer to SYSTEM + PROMPT at temperature 0."""
        st, _, b = self.s.api("POST", CHAT, {
            "model": model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": PROMPT}]}, timeout=60)
        self.assertEqual(st, 200, b)
        return b["choices"][0]["message"]["content"]

    def cancelled_total(self):
        st, _, b = self.s.api("GET", "/metrics", key=False, raw=True)
        self.assertEqual(st, 200)
        m = re.search(rb"^deltatune_inference_cancelled_total (\S+)$", b, re.M)
        self.assertIsNotNone(m, "no cancel counter in /metrics")
        return float(m.group(1))

    def answer(self, page, panel="a"):
        """The text of the panel's last answer, exactly (whitespace kept)."""
        return page.evaluate(
            "(p) => document.querySelector(`#pg-panel-${p} li.assistant:last-child .text`).textContent",
            panel)

    def send(self, page, text):
        page.fill("#pg-input", text)
        page.focus("#pg-input")
        page.keyboard.press("Enter")

    def assert_grew(self, seen, final, what):
        """seen (the texts an answer showed, in order) grew in more than one
        step, each a prefix of the next, to final."""
        steps = [t for t in seen if t]
        self.assertGreater(len(steps), 1, f"{what}: the answer did not stream: {steps}")
        for a, b in zip(steps, steps[1:]):
            self.assertTrue(b.startswith(a), f"{what}: {b!r} does not extend {a!r}")
        self.assertEqual(steps[-1], final, what)

    # ---- the test ----------------------------------------------------------------
    def test_playground_streams_stops_compares_and_opens_from_a_job(self):
        s = self.s
        page = self.open()
        page.click("nav a[data-nav=playground]")
        expect(page.locator("nav a[data-nav=playground]")).to_have_attribute("aria-current", "page")
        # the newest fine-tuned model is chosen; base and fine-tuned are offered
        expect(page.locator("#pg-model")).to_have_value(self.ft)
        expect(page.locator(f"#pg-model option[value='{s.model_id}']")).to_have_count(1)
        expect(page.locator("#pg-panel-b")).to_be_hidden()
        # every control has a label
        self.assertEqual(page.evaluate(
            "[...document.querySelectorAll('main input, main select, main textarea')]"
            ".filter((e) => !e.labels.length).map((e) => e.id)"), [])

        # ---- no serving worker: the API's 503 is shown, the message kept ----
        self.send(page, "hello")
        alert = page.locator("#pg-panel-a li.assistant[data-state=error] [role=alert]")
        expect(alert).to_contain_text("HTTP 503")
        expect(alert).to_contain_text("no serving worker")
        expect(page.locator("#pg-input")).to_have_value("hello")
        expect(page.locator("#pg-send")).to_be_enabled()
        self.shot(page, "pg-01-no-serving-worker")
        self.no_console_errors(allowed=[r"status of 503"])

        # ---- a bad setting is named under its field; nothing is sent ----
        page.fill("#pg-temperature", "3")
        page.click("#pg-send")
        expect(page.locator("#pg-temperature-error")).to_contain_text("between 0 and 2")
        expect(page.locator("#pg-temperature")).to_be_focused()
        expect(page.locator("#pg-panel-a li.user")).to_have_count(1)

        # ---- streaming: grows in steps to the API's greedy answer ----
        self.serve()
        page.click("#pg-clear")
        expect(page.locator("#pg-panel-a li")).to_have_count(0)
        page.fill("#pg-system", SYSTEM)
        page.fill("#pg-temperature", "0")
        page.fill("#pg-max_tokens", "24")
        # Shift+Enter is a new line, not a send
        page.fill("#pg-input", "")
        page.focus("#pg-input")
        page.keyboard.type("a")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("b")
        expect(page.locator("#pg-input")).to_have_value("a\nb")
        expect(page.locator("#pg-panel-a li")).to_have_count(0)
        page.evaluate(OBSERVE)
        self.send(page, PROMPT)
        expect(page.locator("#pg-temperature-error")).to_have_text("")
        expect(page.locator("#pg-stop")).to_be_enabled()
        done = page.locator("#pg-panel-a li.assistant[data-state=done]")
        expect(done).to_have_count(1)
        final = self.answer(page)
        self.assertTrue(final, "an empty answer")
        self.assert_grew(page.evaluate("window.__seen.a"), final, "single")
        self.assertEqual(final, self.api_answer(self.ft, 24))
        expect(done.locator(".meta")).to_contain_text(re.compile(r"\d+ tokens? .*tokens/s"))
        expect(page.locator("#pg-panel-a li.user .text")).to_have_text(PROMPT)
        expect(page.locator("#pg-stop")).to_be_disabled()
        expect(page.locator("#pg-input")).to_have_value("")
        expect(page.locator("#pg-input")).to_be_focused()
        self.shot(page, "pg-02-streamed")
        self.no_console_errors()

        # ---- Stop: the answer ends where it was, the server cancels ----
        cancelled = self.cancelled_total()
        page.fill("#pg-max_tokens", "150")  # 4.5 s of tokens; the context is 256
        with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(CHAT)) as req:
            self.send(page, "Tell me more.")
        # the conversation so far goes with the next message
        self.assertEqual(json.loads(req.value.post_data), {
            "model": self.ft, "stream": True, "stream_options": {"include_usage": True},
            "temperature": 0, "max_tokens": 150,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": PROMPT},
                         {"role": "assistant", "content": final},
                         {"role": "user", "content": "Tell me more."}]})
        streaming = page.locator("#pg-panel-a li.assistant[data-state=streaming] .text")
        expect(streaming).not_to_have_text("")
        page.click("#pg-stop")
        stopped = page.locator("#pg-panel-a li.assistant[data-state=stopped]")
        expect(stopped).to_have_count(1)
        expect(stopped.locator(".meta")).to_have_text("Stopped.")
        expect(page.locator("#pg-send")).to_be_enabled()
        end = time.time() + 20
        while self.cancelled_total() < cancelled + 1:
            self.assertLess(time.time(), end, "the server did not cancel the stopped request")
            time.sleep(0.2)
        self.assertIn("serve.cancelled", self.serve_logs())
        # Esc in the message box stops too
        self.send(page, "And more.")
        expect(streaming).not_to_have_text("")
        page.keyboard.press("Escape")
        expect(stopped).to_have_count(2)
        expect(page.locator("#pg-stop")).to_be_disabled()
        self.no_console_errors()

        # ---- compare: the fine-tuned model and its base, side by side ----
        page.fill("#pg-max_tokens", "24")
        page.fill("#pg-temperature", "0")
        page.check("#pg-compare")
        expect(page.locator("#pg-panel-b")).to_be_visible()
        expect(page.locator("#pg-model-b")).to_have_value(s.model_id)
        self.assertIn(f"compare={s.model_id}", page.url)
        page.click("#pg-clear")
        page.evaluate(OBSERVE)
        self.send(page, PROMPT)
        for p in ("a", "b"):
            expect(page.locator(f"#pg-panel-{p} li.assistant[data-state=done]")).to_have_count(1)
        seen = page.evaluate("window.__seen")
        self.assert_grew(seen["a"], self.answer(page, "a"), "compare, fine-tuned")
        self.assert_grew(seen["b"], self.answer(page, "b"), "compare, base")
        self.assertEqual(self.answer(page, "a"), self.api_answer(self.ft, 24))
        self.assertEqual(self.answer(page, "b"), self.api_answer(s.model_id, 24))
        both = page.evaluate("window.__both")
        self.assertEqual(both["withText"], 2, f"the two answers did not stream at once: {both}")
        self.shot(page, "pg-03-compare")
        # no sideways scrolling at phone width, compare mode included
        page.set_viewport_size({"width": 375, "height": 740})
        page.wait_for_timeout(300)
        sw, iw = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
        self.assertLessEqual(sw, iw, "the playground scrolls sideways at phone width")
        self.shot(page, "pg-04-phone")
        page.set_viewport_size({"width": 1280, "height": 800})
        self.no_console_errors()

        # ---- "Try it" on a job's page: its model, then one of its checkpoints ----
        page.goto(f"{s.url}/#/jobs/{self.job['id']}")
        expect(page.locator("#job-status .badge")).to_have_text("succeeded")
        page.click(f"#model-files a[data-try='{self.ft}']")
        page.wait_for_url(re.compile(r"#/playground\?"))
        expect(page.locator("#pg-model")).to_have_value(self.ft)
        expect(page.locator("#pg-panel-b")).to_be_hidden()
        self.no_console_errors()

        # ---- a checkpoint's "Try it": not ready, then Build, then the answer ----
        st, _, cks = s.api("GET", f"/v1/fine_tuning/jobs/{self.job['id']}/checkpoints")
        self.assertEqual(st, 200, cks)
        by_step = sorted(cks["data"], key=lambda c: c["step_number"])
        self.assertEqual(len(by_step), 2, cks)
        ck, bad = (c["fine_tuned_model_checkpoint"] for c in by_step)
        chats = []
        page.on("request", lambda r: r.method == "POST" and r.url.endswith(CHAT)
                and chats.append(json.loads(r.post_data)))
        # the later checkpoint cannot be merged (its DONE marker is gone): its
        # export fails, and the page says why
        ckdir = os.path.join(s.run, "artifacts", s.psql(f"SELECT path FROM models WHERE id = '{bad}'"))
        os.rename(os.path.join(ckdir, "DONE"), os.path.join(ckdir, "DONE.hidden"))
        self.addCleanup(os.rename, os.path.join(ckdir, "DONE.hidden"), os.path.join(ckdir, "DONE"))
        page.goto(f"{s.url}/#/jobs/{self.job['id']}")
        expect(page.locator("#checkpoints-table a[data-try]")).to_have_count(2)
        page.click(f"#checkpoints-table a[data-try='{bad}']")
        page.wait_for_url(re.compile(r"#/playground\?"))
        expect(page.locator("#pg-model")).to_have_value(bad)
        self.send(page, PROMPT)
        not_ready = page.locator("#pg-panel-a li.assistant[data-state=not_ready]")
        build = not_ready.locator("button[data-action=build-merged]")
        expect(build).to_be_enabled()
        build.click()
        failed = not_ready.locator(".build-failed[role=alert]")
        expect(failed).to_contain_text(f"The merged model could not be built: checkpoint {bad} is not complete")
        expect(build).to_be_enabled()
        expect(not_ready).to_have_count(1)
        expect(page.locator("#pg-panel-a li.assistant[data-state=done]")).to_have_count(0)
        self.assertEqual(len(chats), 1, "a failed export re-sent the message")
        self.shot(page, "pg-05-checkpoint-build-failed")

        # the earlier one: its "Try it" on the job's page opens it in the
        # playground; the API's 400 model_not_ready is shown with a Build
        # button, which (by keyboard) starts the hf export, shows its
        # progress and re-sends the message, whose answer streams and equals
        # the API's for the built checkpoint
        page.goto(f"{s.url}/#/jobs/{self.job['id']}")
        try_ck = page.locator(f"#checkpoints-table a[data-try='{ck}']")
        expect(try_ck).to_have_attribute("aria-label", f"Try {ck} in the playground")
        try_ck.click()
        page.wait_for_url(re.compile(r"#/playground\?"))
        expect(page.locator("#pg-model")).to_have_value(ck)
        expect(page.locator("#pg-model optgroup[label=Checkpoints] option")).to_have_count(1)
        page.fill("#pg-system", SYSTEM)
        page.fill("#pg-temperature", "0")
        page.fill("#pg-max_tokens", "12")
        st, _, b = s.api("POST", CHAT, {
            "model": ck, "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": PROMPT}]}, timeout=60)
        self.assertEqual((st, b["error"]["code"]), (400, "model_not_ready"), b)
        page.evaluate(OBSERVE)
        # every text the build's status line shows, in order (read from the
        # mutation records: the last one is replaced by the answer at once)
        page.evaluate("""() => {
          window.__build = [];
          new MutationObserver((records) => {
            for (const m of records)
              if (m.target.classList && m.target.classList.contains('build-status'))
                for (const n of m.addedNodes) window.__build.push(n.textContent);
          }).observe(document.getElementById('pg-panels'), {subtree: true, childList: true});
        }""")
        chats.clear()
        self.send(page, PROMPT)
        expect(not_ready.locator("[role=alert]")).to_have_text(f"HTTP 400: {b['error']['message']}")
        expect(build).to_have_text("Build merged model")
        expect(build).to_have_attribute("aria-label", f"Build the merged model of {ck}")
        expect(page.locator("#pg-input")).to_have_value(PROMPT)
        self.shot(page, "pg-06-checkpoint-not-ready")
        build.focus()
        self.assert_focus_visible(page)
        with page.expect_request(lambda r: r.method == "POST" and "/exports" in r.url) as req:
            page.keyboard.press("Enter")
        self.assertEqual(unquote(req.value.url), f"{s.url.rstrip('/')}/v1/models/{ck}/exports")
        self.assertEqual(json.loads(req.value.post_data), {"format": "hf"})
        done = page.locator("#pg-panel-a li.assistant[data-state=done]")
        expect(done).to_have_count(1)
        expect(not_ready).to_have_count(0)
        progress = page.evaluate("window.__build")
        self.assertTrue(any(re.match(r"Building the merged model: (queued|running)", t) for t in progress),
                        progress)
        self.assertEqual(progress[-1], "Built; sending the message again…", progress)
        st, _, xs = s.api("GET", f"/v1/models/{ck}/exports")
        self.assertEqual(st, 200, xs)
        self.assertEqual([(x["format"], x["status"]) for x in xs["data"]], [("hf", "succeeded")], xs)
        # the same request again, once
        self.assertEqual(len(chats), 2, chats)
        self.assertEqual(chats[0], chats[1])
        final = self.answer(page)
        self.assertTrue(final, "an empty answer")
        self.assert_grew(page.evaluate("window.__seen.a"), final, "checkpoint")
        self.assertEqual(final, self.api_answer(ck, 12))
        expect(page.locator("#pg-panel-a li.user")).to_have_count(1)
        expect(page.locator("#pg-input")).to_have_value("")
        expect(page.locator("#pg-input")).to_be_focused()
        # the answer is in the history of the next message
        with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(CHAT)) as req:
            self.send(page, "Tell me more.")
        self.assertEqual(json.loads(req.value.post_data)["messages"][1:], [
            {"role": "user", "content": PROMPT}, {"role": "assistant", "content": final},
            {"role": "user", "content": "Tell me more."}])
        expect(done).to_have_count(2)
        self.shot(page, "pg-07-checkpoint-built")
        self.no_console_errors(allowed=[r"status of 400"])
        # the models page offers "Try it" for base and fine-tuned models
        page.click("nav a[data-nav=models]")
        page.click(f"tr[data-model='{s.model_id}'] a[data-try]")
        expect(page.locator("#pg-model")).to_have_value(s.model_id)
        self.no_console_errors()


if __name__ == "__main__":
    unittest.main(verbosity=2)
