"""Browser tests of the dashboard (server/static/) against a real stack.

Headless Debian chromium driven by Playwright for Python (tests/browser/setup
installs both; `make test-browser` runs the tests/browser/test_*.py files;
browser_case.py is their shared base). Screenshots of every page go to
$BUILD/browser-artifacts/. Every page is checked for console errors;
the only ones allowed are the HTTP errors a step provokes on purpose (a
refused key, another owner's job, a refused event stream).
"""
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from browser_case import ART, T, BrowserCase, expect  # noqa: E402
from stack import TRAIN_ROWS  # noqa: E402

BAD_ROWS = ('{"prompt": "a", "completion": "b"}\n'
            '{"prompt": 5, "completion": "b"}\n'
            'not json at all\n'
            '{"text": "fine"}\n')


def long_job(s, key=None, file_id=None, steps=100000):
    if file_id is None:
        st, _, f = s.upload(TRAIN_ROWS, key=key)
        assert st == 200, f
        file_id = f["id"]
    st, _, j = s.api("POST", "/v1/fine_tuning/jobs", {
        "model": s.model_id, "training_file": file_id,
        "method": {"type": "delta_lora", "delta_lora": {"hyperparameters": {
            "max_steps": steps, "batch_size": 2, "seq_len": 32}}}}, key=key)
    assert st == 200, j
    return j


def deref(doc, schema):
    """The schema at a local $ref of the contract, followed to its end."""
    while "$ref" in schema:
        node = doc
        for part in schema["$ref"][2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


def contract_hyperparameters(doc, method):
    """{name: schema} of the create-job request's hyperparameters for method:
    CreateJob -> method (Method) -> METHOD.hyperparameters (Hyperparameters)."""
    create = deref(doc, doc["paths"]["/v1/fine_tuning/jobs"]["post"]["requestBody"]
                   ["content"]["application/json"]["schema"])
    m = deref(doc, create["properties"]["method"])
    return deref(doc, deref(doc, m["properties"][method])["properties"]["hyperparameters"])["properties"]


def numeric(doc, schema):
    """The integer or number alternative of a hyperparameter's schema, or None."""
    schema = deref(doc, schema)
    for alt in [schema] + [deref(doc, a) for a in schema.get("oneOf", [])]:
        if alt.get("type") in ("integer", "number"):
            return alt
    return None


class Dashboard(BrowserCase):
    @classmethod
    def setUpClass(cls):
        shutil.rmtree(ART, ignore_errors=True)
        super().setUpClass()

    # ---- helpers ---------------------------------------------------------------
    def status_badge(self, page, status):
        expect(page.locator("#job-status .badge")).to_have_text(status.replace("_", " "), timeout=T)

    def chart_points(self, page, series="train"):
        return page.evaluate(
            "(s) => { const p = document.querySelector(`#loss-chart polyline.s-${s}`);"
            " return p ? p.getAttribute('points').trim().split(/\\s+/).length : 0; }", series)

    def wait_points(self, page, more_than, timeout=T / 1000):
        end = time.time() + timeout
        while time.time() < end:
            n = self.chart_points(page)
            if n > more_than:
                return n
            time.sleep(0.2)
        self.fail(f"the loss chart did not grow past {more_than} points in {timeout}s")

    # ---- tests ------------------------------------------------------------------
    def test_wrong_key_is_refused(self):
        page = self.open(signed_in=False)
        page.goto(self.s.url + "/")
        expect(page.locator("#key")).to_be_focused()
        page.fill("#key", "dt-AAAAAAAA-notarealsecretnotarealsecret00")
        page.keyboard.press("Enter")
        expect(page.locator("#key-error")).to_contain_text("refused")
        expect(page.locator("#key")).to_have_attribute("aria-invalid", "true")
        self.assertTrue(page.locator("#nav").is_hidden())
        self.assertIsNone(page.evaluate("sessionStorage.getItem('deltatune.key')"))
        self.shot(page, "01-signin-refused")
        self.no_console_errors(allowed=[r"status of 401"])
        # the right key works, and is kept in this tab only
        page.fill("#key", self.s.key)
        page.keyboard.press("Enter")
        expect(page.locator("#nav")).to_be_visible()
        self.assertEqual(page.evaluate("sessionStorage.getItem('deltatune.key')"), self.s.key)
        self.assertIsNone(page.evaluate("localStorage.getItem('deltatune.key')"))
        page.click("#signout")
        expect(page.locator("#key")).to_be_visible()
        self.assertIsNone(page.evaluate("sessionStorage.getItem('deltatune.key')"))
        self.no_console_errors()

    def test_another_owners_job_cannot_be_opened(self):
        other = self.s.new_key("mallory")
        job = long_job(self.s, key=other, steps=3)
        page = self.open()
        page.goto(f"{self.s.url}/#/jobs/{job['id']}")
        expect(page.locator("h1")).to_have_text("Job not found")
        expect(page.locator("#jobs-table")).to_have_count(0)
        self.shot(page, "06-other-owner-job")
        self.no_console_errors(allowed=[r"status of 404"])
        # nor listed, nor streamed
        page.goto(self.s.url + "/#/jobs")
        expect(page.locator("#jobs-table, #no-jobs")).to_be_visible()
        expect(page.locator(f"tr[data-job='{job['id']}']")).to_have_count(0)
        st, _, _ = self.s.api("GET", f"/v1/fine_tuning/jobs/{job['id']}/events?stream=true")
        self.assertEqual(st, 404)
        self.no_console_errors()

    def test_jobs_list_pages(self):
        key = self.s.new_key("pager")
        st, _, f = self.s.upload(TRAIN_ROWS, key=key)
        self.assertEqual(st, 200, f)
        ids = []
        for _ in range(25):
            j = long_job(self.s, key=key, file_id=f["id"], steps=3)
            self.s.api("POST", f"/v1/fine_tuning/jobs/{j['id']}/cancel", key=key)
            ids.append(j["id"])
        ids.reverse()  # newest first, as the API lists them
        page = self.open(signed_in=False)
        page.goto(self.s.url + "/")
        page.fill("#key", key)
        page.keyboard.press("Enter")
        rows = page.locator("#jobs-table tbody tr")
        expect(rows).to_have_count(20)
        self.assertEqual([rows.nth(i).get_attribute("data-job") for i in range(20)], ids[:20])
        self.shot(page, "13-jobs-page-1")
        page.click("#next-page")
        expect(rows).to_have_count(5)
        self.assertEqual([rows.nth(i).get_attribute("data-job") for i in range(5)], ids[20:])
        expect(page.locator("#next-page")).to_have_count(0)
        self.shot(page, "14-jobs-page-2")
        page.click("text=« First page")
        expect(rows).to_have_count(20)
        self.assertEqual(rows.nth(0).get_attribute("data-job"), ids[0])
        self.no_console_errors()

    def test_form_bounds_come_from_the_served_contract(self):
        s = self.s
        st, _, doc = s.api("GET", "/v1/openapi.json", key=False)
        self.assertEqual(st, 200)
        hps = contract_hyperparameters(doc, "delta_lora")
        page = self.open()
        page.goto(s.url + "/#/new")
        form = page.locator("#new-job")
        expect(form).to_have_attribute("data-limits", "contract")
        # every numeric field shows the contract's bounds, and none it lacks
        fields = page.eval_on_selector_all(
            "#new-job input[id^=hp-]",
            "els => els.map(e => [e.name, e.dataset.minimum ?? null, e.dataset.maximum ?? null])")
        checked = 0
        for name, lo, hi in fields:
            num = numeric(doc, hps[name]) if name in hps else None
            if num is None:
                self.assertEqual((lo, hi), (None, None), name)
                continue
            self.assertEqual(None if lo is None else float(lo), num.get("minimum"), f"{name} minimum")
            self.assertEqual(None if hi is None else float(hi), num.get("maximum"), f"{name} maximum")
            checked += 1
        self.assertGreaterEqual(checked, 15)
        # the client-side messages say the contract's numbers
        rank = numeric(doc, hps["rank"])
        self.assertEqual(rank["type"], "integer")
        want = f"rank must be an integer between {rank['minimum']} and {rank['maximum']}"
        expect(page.locator("#hp-rank-range")).to_have_text(want.replace("rank must be ", ""))
        page.fill("#hp-rank", str(rank["maximum"] + 1))
        page.click("#new-job button[type=submit]")
        expect(page.locator("#hp-rank-error")).to_have_text(want)
        page.fill("#hp-rank", str(rank["maximum"]))
        page.locator("#hp-rank").dispatch_event("change")
        expect(page.locator("#hp-rank-error")).to_have_text("")
        lr = numeric(doc, hps["learning_rate"])
        self.assertTrue(lr.get("exclusiveMinimum"))
        page.fill("#hp-learning_rate", str(lr["minimum"]))
        page.locator("#hp-learning_rate").dispatch_event("change")
        expect(page.locator("#hp-learning_rate-error")).to_have_text(
            f"learning_rate must be a number > {lr['minimum']} and <= {lr['maximum']}")
        self.no_console_errors()

        # a contract with other bounds: the form follows it, not a copy of its own
        changed = json.loads(json.dumps(doc))
        hp2 = contract_hyperparameters(changed, "delta_lora")
        numeric(changed, hp2["rank"])["maximum"] = 64
        numeric(changed, hp2["seq_len"])["minimum"] = 16
        page2 = self.open()
        page2.route(re.compile(r".*/v1/openapi\.json$"), lambda r: r.fulfill(
            status=200, content_type="application/json", body=json.dumps(changed)))
        page2.goto(s.url + "/#/new")
        expect(page2.locator("#new-job")).to_have_attribute("data-limits", "contract")
        expect(page2.locator("#hp-rank")).to_have_attribute("data-maximum", "64")
        expect(page2.locator("#hp-seq_len")).to_have_attribute("data-minimum", "16")
        page2.fill("#hp-rank", "65")
        page2.fill("#hp-seq_len", "8")
        page2.click("#new-job button[type=submit]")
        expect(page2.locator("#hp-rank-error")).to_have_text("rank must be an integer between 1 and 64")
        expect(page2.locator("#hp-seq_len-error")).to_have_text(
            f"seq_len must be an integer between 16 and {numeric(doc, hps['seq_len'])['maximum']}")
        self.no_console_errors()

    def test_form_works_without_the_contract(self):
        s = self.s
        st, _, f = s.upload(TRAIN_ROWS)
        self.assertEqual(st, 200, f)
        page = self.open()
        page.route(re.compile(r".*/v1/openapi\.json$"), lambda r: r.fulfill(
            status=503, content_type="application/json",
            body='{"error":{"message":"unavailable","type":"server_error","param":null,"code":"unavailable"}}'))
        page.goto(s.url + "/#/new")
        expect(page.locator("#new-job")).to_have_attribute("data-limits", "unavailable")
        expect(page.locator("#limits-note")).to_contain_text("/v1/openapi.json")
        self.assertIsNone(page.get_attribute("#hp-rank", "data-maximum"))
        expect(page.locator("#hp-rank-range")).to_be_hidden()
        expect(page.locator("#training_file")).to_contain_text(f["id"])
        page.select_option("#training_file", f["id"])
        expect(page.locator("#model")).to_have_value(s.model_id)
        n_jobs = len(s.api("GET", "/v1/fine_tuning/jobs?limit=100")[2]["data"])
        # no bounds here: the server's 400 names the field, shown under it
        page.fill("#hp-rank", "100000")
        page.click("#new-job button[type=submit]")
        expect(page.locator("#hp-rank-error")).to_contain_text("rank")
        expect(page.locator("#hp-rank")).to_be_focused()
        self.assertEqual(len(s.api("GET", "/v1/fine_tuning/jobs?limit=100")[2]["data"]), n_jobs)
        self.shot(page, "15-new-job-without-contract")
        self.no_console_errors(allowed=[r"status of 503", r"status of 400"])

    def test_new_job_with_packing(self):
        """The form's packing checkbox (off by default, for every method):
        checked, the request carries hyperparameters.packing true, and the
        job object and the job page say packing is on."""
        s = self.s
        st, _, f = s.upload(TRAIN_ROWS)
        self.assertEqual(st, 200, f)
        page = self.open()
        page.goto(s.url + "/#/new")
        expect(page.locator("#new-job")).to_have_attribute("data-limits", "contract")
        box = page.locator("#hp-packing")
        expect(box).not_to_be_checked()
        expect(page.locator("#hp-packing-hint")).to_contain_text("within each row")
        expect(page.locator("#training_file")).to_contain_text(f["id"])
        page.select_option("#training_file", f["id"])
        expect(page.locator("#model")).to_have_value(s.model_id)
        page.select_option("#method", "lora")
        expect(page.locator("#hp-packing-field")).to_be_visible()
        page.fill("#hp-max_steps", "3")
        page.fill("#hp-batch_size", "2")
        page.fill("#hp-seq_len", "32")
        page.click("label[for=hp-packing]")  # the label toggles the box
        expect(box).to_be_checked()
        self.shot(page, "16-new-job-packing")
        with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/fine_tuning/jobs")) as req:
            page.click("#new-job button[type=submit]")
        sent = req.value.post_data_json
        self.assertIs(sent["method"]["lora"]["hyperparameters"]["packing"], True, sent)
        page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
        job = page.url.split("#/jobs/")[1]
        st, _, j = s.api("GET", f"/v1/fine_tuning/jobs/{job}")
        self.assertEqual(st, 200, j)
        self.assertIs(j["method"]["lora"]["hyperparameters"]["packing"], True, j)
        expect(page.locator("#hyperparameters tr", has_text="Packing").locator("td")).to_have_text("true")
        self.no_console_errors()
        s.api("POST", f"/v1/fine_tuning/jobs/{job}/cancel")  # free the worker (409 if it is done)

    def test_dashboard_end_to_end(self):
        s = self.s
        page = self.open()
        self.shot(page, "02-jobs-empty")

        # ---- new job: validation errors by line, client-side limits ----
        page.click("nav a[data-nav=new]")
        expect(page.locator("#hp-rank")).to_have_value("8")
        expect(page.locator("#hp-alpha")).to_have_value("16")
        expect(page.locator("#hp-lambda")).to_have_value("0.5")
        expect(page.locator("#hp-learning_rate")).to_have_value("0.0002")
        expect(page.locator("#hp-n_epochs")).to_have_value("3")
        expect(page.locator("#hp-seed")).to_have_value("42")
        page.set_input_files("#upload", files=[{"name": "bad.jsonl", "mimeType": "application/jsonl",
                                                "buffer": BAD_ROWS.encode()}])
        errs = page.locator("#upload-errors li")
        expect(errs).to_have_count(2)
        self.assertIn("2", errs.nth(0).text_content())
        self.assertIn("3", errs.nth(1).text_content())
        expect(page.locator("#upload")).to_have_attribute("aria-invalid", "true")
        self.shot(page, "03-new-job-bad-file")
        page.set_input_files("#upload", files=[{"name": "train.jsonl", "mimeType": "application/jsonl",
                                                "buffer": TRAIN_ROWS.encode()}])
        expect(page.locator("#upload-ok")).to_contain_text("32 lines")
        expect(page.locator("#training_file")).to_have_value(re.compile(r"^file-"))
        expect(page.locator("#model")).to_have_value(s.model_id)
        n_jobs = len(s.api("GET", "/v1/fine_tuning/jobs?limit=100")[2]["data"])
        expect(page.locator("#new-job")).to_have_attribute("data-limits", "contract")
        page.fill("#hp-rank", "0")
        page.fill("#hp-learning_rate", "0")
        page.click("#new-job button[type=submit]")
        expect(page.locator("#hp-rank-error")).to_contain_text("between 1 and 256")
        expect(page.locator("#hp-learning_rate-error")).to_contain_text("> 0")
        expect(page.locator("#hp-learning_rate")).to_be_focused()  # the first field at fault
        self.assertEqual(len(s.api("GET", "/v1/fine_tuning/jobs?limit=100")[2]["data"]), n_jobs,
                         "an invalid form must not reach the API")
        self.shot(page, "04-new-job-invalid-fields")
        # method switch hides what does not apply
        page.select_option("#method", "full")
        expect(page.locator("#hp-rank-field")).to_be_hidden()
        page.select_option("#method", "delta_lora")
        expect(page.locator("#hp-lambda-field")).to_be_visible()
        page.fill("#hp-rank", "4")
        page.fill("#hp-learning_rate", "0.001")
        page.fill("#hp-max_steps", "100000")
        page.fill("#hp-batch_size", "2")
        page.fill("#hp-seq_len", "32")
        page.fill("#suffix", "web")
        page.click("#new-job button[type=submit]")
        page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
        job_a = page.url.split("#/jobs/")[1]

        # ---- the loss chart grows live ----
        self.status_badge(page, "running")
        expect(page.locator("#hyperparameters")).to_contain_text("delta_lora")
        expect(page.locator("#hyperparameters")).to_contain_text("1.00e-3")
        # the box left unchecked: the job has the default, packing false
        expect(page.locator("#hyperparameters tr", has_text="Packing").locator("td")).to_have_text("false")
        n1 = self.wait_points(page, 1)
        n2 = self.wait_points(page, n1)
        self.assertGreater(n2, n1)
        expect(page.locator("#live-mode")).to_have_text("● live")
        self.assertGreater(page.locator("#events li").count(), 2)
        self.assertGreater(page.evaluate(
            "document.querySelector('#lr-chart polyline.s-lr').getAttribute('points').length"), 0)
        self.shot(page, "05-job-running")
        self.no_console_errors()

        # ---- the fallback: no stream, polling still grows the chart ----
        page2 = page.context.new_page()
        page2.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page2.route(re.compile(r".*/events\?stream=true$"), lambda r: r.fulfill(
            status=429, content_type="application/json",
            body='{"error":{"message":"too many","type":"rate_limit_error","param":null,"code":"too_many_streams"}}'))
        page2.goto(f"{s.url}/#/jobs/{job_a}")  # a new tab: sign in again, then the job
        page2.fill("#key", s.key)
        page2.keyboard.press("Enter")
        page2.wait_for_url(re.compile(f"#/jobs/{job_a}$"))
        expect(page2.locator("#live-mode")).to_contain_text("polling")
        m1 = self.wait_points(page2, 0)
        self.wait_points(page2, m1)
        page2.close()
        self.no_console_errors(allowed=[r"status of 429"])

        # ---- a second job, queued behind A: cancelled from its page ----
        job_b = long_job(s, steps=50)["id"]
        page.goto(f"{s.url}/#/jobs/{job_b}")
        self.status_badge(page, "queued")
        page.click("#btn-cancel")
        self.status_badge(page, "cancelled")
        expect(page.locator("#toast")).to_contain_text("Cancel")
        expect(page.locator("#btn-cancel")).to_be_disabled()
        self.shot(page, "07-job-cancelled")

        # ---- A: pause (a checkpoint), resume, cancel ----
        page.goto(f"{s.url}/#/jobs/{job_a}")
        self.status_badge(page, "running")
        # the action buttons are reached by Tab, show focus, have names
        for name in ("cancel", "pause", "resume"):
            self.assertRegex(page.evaluate(
                "(id) => { const b = document.getElementById(id);"
                " return (b.getAttribute('aria-label') || b.textContent).trim(); }", f"btn-{name}"),
                name.capitalize())
        page.locator("main a[href='#/jobs']").first.focus()  # "« Jobs", above the buttons
        for _ in range(10):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "btn-pause":
                break
        else:
            self.fail("Tab never reached the Pause button")
        self.assert_focus_visible(page)
        page.keyboard.press("Enter")
        expect(page.locator("#toast")).to_contain_text("Pause")
        self.status_badge(page, "paused")
        ck = page.locator("#checkpoints-table tbody tr").first
        expect(ck).to_be_visible()
        expect(ck.locator("td[data-label='Training loss']")).to_have_text(re.compile(r"\d"))
        with page.expect_download() as dl:
            ck.locator("button", has_text="Download").click()
        self.assertTrue(dl.value.suggested_filename.endswith(".tar"))
        with open(dl.value.path(), "rb") as f:
            self.assertEqual(f.read(512)[257:262], b"ustar")
        expect(page.locator("#btn-resume")).to_be_enabled()
        page.click("#btn-resume")
        expect(page.locator("#job-status .badge")).to_have_text(re.compile("queued|running"))
        self.status_badge(page, "running")
        page.click("#btn-cancel")
        self.status_badge(page, "cancelled")
        self.shot(page, "08-job-paused-resumed-cancelled")
        self.no_console_errors()

        # ---- a job that succeeds: merged files with sha256, download ----
        job_c = long_job(s, steps=4)["id"]
        s.wait_job(job_c, {"succeeded"}, timeout=120)
        page.goto(f"{s.url}/#/jobs/{job_c}")
        self.status_badge(page, "succeeded")
        row = page.locator("#model-files tr[data-file='config.json']")
        expect(row).to_be_visible()
        model = s.api("GET", f"/v1/fine_tuning/jobs/{job_c}")[2]["fine_tuned_model"]
        files = {f["name"]: f for f in s.api("GET", f"/v1/models/{model}/files")[2]["data"]}
        self.assertIn(files["config.json"]["sha256"], row.text_content())
        expect(page.locator("#loss-chart polyline.s-train")).to_have_count(1)
        with page.expect_download() as dl:
            row.locator("button").click()
        path = dl.value.path()
        self.assertEqual(dl.value.suggested_filename, "config.json")
        with open(path, "rb") as f:
            got = f.read()
        st, _, want = s.api("GET", f"/v1/models/{model}/files/config.json", raw=True)
        self.assertEqual(st, 200)
        self.assertEqual(got, want)
        # "merged" and "adapter" downloads (a delta_lora job has both): the
        # merged .tar holds the model without adapter/, the adapter .tar only
        # the adapter's files, at the top of its directory, sha256 as listed
        for part in ("merged", "adapter"):
            with page.expect_download() as dl:
                page.locator(f"#model-files button[data-part='{part}']").click()
            self.assertTrue(dl.value.suggested_filename.endswith(f"-{part}.tar"),
                            dl.value.suggested_filename)
            with tarfile.open(dl.value.path()) as tf:
                got = {m.name.split("/", 1)[1]: hashlib.sha256(tf.extractfile(m).read()).hexdigest()
                       for m in tf.getmembers() if m.isfile()}
            want = {n[len("adapter/"):] if part == "adapter" else n: f["sha256"]
                    for n, f in files.items() if n.startswith("adapter/") == (part == "adapter")}
            self.assertEqual(got, want, part)
            self.assertIn("adapter_config.json" if part == "adapter" else "config.json", got)
        self.shot(page, "09-job-succeeded-files")
        self.no_console_errors()

        # ---- jobs list: every column, the status filter ----
        page.goto(f"{s.url}/#/jobs")
        for j in (job_a, job_b, job_c):
            expect(page.locator(f"tr[data-job='{j}']")).to_be_visible()
        expect(page.locator(f"tr[data-job='{job_c}'] [role=progressbar]")).to_have_attribute("aria-valuenow", "100")
        self.shot(page, "10-jobs")
        page.select_option("#status-filter", "cancelled")
        expect(page.locator("#jobs-table tbody tr")).to_have_count(2)
        expect(page.locator(f"tr[data-job='{job_c}']")).to_have_count(0)
        page.select_option("#status-filter", "succeeded")
        expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
        self.no_console_errors()

        # ---- models: base and fine-tuned; a base model file downloads ----
        page.click("nav a[data-nav=models]")
        expect(page.locator(f"tr[data-model='{s.model_id}']")).to_be_visible()
        expect(page.locator(f"tr[data-model='{model}']")).to_be_visible()
        page.locator(f"tr[data-model='{s.model_id}'] button").click()
        base_row = page.locator(".model-files tr[data-file='config.json']").first
        expect(base_row).to_be_visible()
        with page.expect_download() as dl:
            page.locator(".model-files button", has_text="Download all").first.click()
        self.assertTrue(dl.value.suggested_filename.endswith(".tar"))
        with open(dl.value.path(), "rb") as f:
            self.assertEqual(f.read(512)[257:262], b"ustar")
        self.shot(page, "11-models")
        self.no_console_errors()

        # ---- phone width: no sideways scrolling; keyboard reaches the controls ----
        page.set_viewport_size({"width": 375, "height": 740})
        overflow = "[document.scrollingElement.scrollWidth, innerWidth]"
        for i, route in enumerate(("#/jobs", f"#/jobs/{job_c}", "#/new", "#/models")):
            page.goto(f"{s.url}/{route}")
            page.wait_for_timeout(300)
            expect(page.locator("main h1").first).to_be_visible()
            sw, iw = page.evaluate(overflow)
            self.assertEqual(iw, 375)
            self.assertLessEqual(sw, iw, f"{route} scrolls sideways at phone width")
            self.shot(page, f"12-phone-{i}-{('jobs', 'job', 'new', 'models')[i]}")
        # the sign-in page too, in a new context (which starts signed out)
        signin = self.open(signed_in=False, viewport={"width": 375, "height": 740})
        signin.goto(s.url + "/")
        expect(signin.locator("#key")).to_be_visible()
        sw, iw = signin.evaluate(overflow)
        self.assertLessEqual(sw, iw, "the sign-in page scrolls sideways at phone width")
        self.assertIsNone(signin.evaluate("sessionStorage.getItem('deltatune.key')"))
        self.shot(signin, "12-phone-4-signin")
        page.goto(f"{s.url}/#/jobs")
        page.reload()  # a first load: Tab starts at the top of the page
        expect(page.locator("#jobs-table")).to_be_visible()
        page.keyboard.press("Tab")
        reached = []
        for _ in range(20):
            reached.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
            if reached[-1] == "status-filter":
                break
            page.keyboard.press("Tab")
        self.assertIn("Skip to content", reached)
        self.assertIn("Models", reached)
        self.assertEqual(reached[-1], "status-filter", reached)
        page.keyboard.press("Tab")
        self.assertEqual(page.evaluate("document.activeElement.textContent.trim()"), "New job")
        # on to the first job row's link: focus is visible and it has a name
        for _ in range(10):
            page.keyboard.press("Tab")
            if page.evaluate("(document.activeElement.getAttribute('href') || '').startsWith('#/jobs/ftjob-')"):
                break
        else:
            self.fail("Tab never reached a job row link")
        self.assert_focus_visible(page)
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
        expect(page.locator("#job-status .badge")).to_be_visible()
        page.goto(f"{s.url}/#/jobs")
        expect(page.locator("#jobs-table")).to_be_visible()
        page.keyboard.press("Tab")
        for _ in range(20):
            if page.evaluate("document.activeElement.textContent.trim()") == "New job":
                break
            page.keyboard.press("Tab")
        page.keyboard.press("Enter")  # "New job"
        expect(page.locator("#new-job")).to_be_visible()
        self.no_console_errors()


if __name__ == "__main__":
    unittest.main(verbosity=2)
