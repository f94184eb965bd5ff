"""Schemathesis against the running service's OpenAPI contract
(GET /v1/openapi.json, built from api/openapi.yaml).

A real stack (tests/harness/stack.py, tiny model) with one uploaded training
file; then the schemathesis CLI (from .venv-schema, tests/schema/setup) runs
(a) every operation, property-based (examples, coverage, fuzzing phases) and
(b) the stateful phase (state machine over the contract's OpenAPI links),
with the checks not_a_server_error, response_schema_conformance,
status_code_conformance and content_type_conformance. Each run writes a
JUnit XML report; the test parses it and fails, printing what failed, when
schemathesis reports any failure or error. Bounded: fixed seed, a few
examples per operation.
"""
import os
import subprocess
import sys
import tempfile
import time
import unittest
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack  # noqa: E402

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
MAX_EXAMPLES = os.environ.get("SCHEMA_MAX_EXAMPLES", "20")
SEED = os.environ.get("SCHEMA_SEED", "20261124")
ST = os.path.join(os.path.dirname(sys.executable), "schemathesis")
TRAIN = "".join('{"messages":[{"role":"user","content":"hi %d"},{"role":"assistant","content":"hello %d"}]}\n'
                % (i, i) for i in range(12))


def junit_failures(path):
    """[(testcase name, message)] for every failure/error in a JUnit report."""
    out = []
    root = ET.parse(path).getroot()
    for tc in root.iter("testcase"):
        for tag in ("failure", "error"):
            for el in tc.findall(tag):
                out.append((tc.get("name"), (el.get("message") or "") + "\n" + (el.text or "")))
    return out


class SchemathesisTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Stack(model="tiny")
        cls.s.start()
        st, _, body = cls.s.upload(TRAIN)
        if st != 200:
            cls.s.stop()
            raise RuntimeError(f"upload failed: {st} {body}")
        cls.tmp = tempfile.mkdtemp(prefix="dt-schema-")
        # a serving worker, so that chat and completion requests are answered
        # (without one they are 503s, which not_a_server_error counts)
        cls.s.start_worker("schema-serve", extra=("--serve",))
        end = time.time() + 30
        while cls.s.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND "
                         "status = 'serving'") != "1" and time.time() < end:
            time.sleep(0.2)

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def run_schemathesis(self, name, phases):
        report = os.path.join(self.tmp, name + ".xml")
        cmd = [ST, "run", self.s.url + "/v1/openapi.json",
               "-H", f"Authorization: Bearer {self.s.key}",
               "--url", self.s.url,
               "--checks", CHECKS, "--phases", phases,
               "--max-examples", MAX_EXAMPLES, "--seed", SEED,
               "--workers", "1", "--request-timeout", "30",
               "--report", "junit", "--report-junit-path", report,
               "--no-color"]
        t0 = time.time()
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        print(f"\n[{name}] schemathesis rc={r.returncode} in {time.time() - t0:.1f}s\n"
              + r.stdout[-6000:], file=sys.stderr)
        self.assertTrue(os.path.exists(report), f"no JUnit report written:\n{r.stdout[-4000:]}")
        fails = junit_failures(report)
        ncases = sum(1 for _ in ET.parse(report).getroot().iter("testcase"))
        self.assertGreater(ncases, 0, "schemathesis tested no operation")
        if fails:
            self.fail(f"schemathesis {name}: {len(fails)} failing operation(s):\n" +
                      "\n".join(f"--- {n}\n{m.strip()[:3000]}" for n, m in fails))
        self.assertEqual(r.returncode, 0, r.stdout[-4000:])
        # the server must still be up and serving after the run
        st, _, _ = self.s.api("GET", "/v1/models")
        self.assertEqual(st, 200)

    def test_a_every_operation(self):
        self.run_schemathesis("operations", "examples,coverage,fuzzing")

    def test_b_stateful_links(self):
        self.run_schemathesis("stateful", "stateful")


if __name__ == "__main__":
    unittest.main()
