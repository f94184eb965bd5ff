"""The shared base of the browser tests (tests/browser/test_*.py): a real
stack (tests/harness/stack.py), headless Debian chromium driven by
Playwright for Python (tests/browser/setup installs both), and the checks
every page gets: console errors, requests off the server's origin, a
visible focus ring. Screenshots go to $BUILD/browser-artifacts/.
"""
import os
import re
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack  # noqa: E402

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover
    expect = sync_playwright = None

CHROMIUM = os.environ.get("DELTATUNE_CHROMIUM", "/usr/bin/chromium")
BUILD = os.path.abspath(os.environ.get("BUILD", os.path.join(ROOT, "build")))
ART = os.path.join(BUILD, "browser-artifacts")
T = 90_000  # ms: generous; the machine is shared


@unittest.skipIf(sync_playwright is None, "playwright is not installed: run tests/browser/setup")
@unittest.skipUnless(os.path.exists(CHROMIUM), f"no chromium at {CHROMIUM}: run tests/browser/setup")
class BrowserCase(unittest.TestCase):
    """One stack and one browser per class; stack_env reaches the stack."""
    stack_env = None

    @classmethod
    def setUpClass(cls):
        expect.set_options(timeout=T)
        os.makedirs(ART, exist_ok=True)
        cls.s = Stack(build=BUILD, env=cls.stack_env)
        cls.s.start()
        try:
            cls.pw = sync_playwright().start()
            cls.browser = cls.pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        except Exception:
            cls.s.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.browser.close()
            cls.pw.stop()
        finally:
            cls.s.stop()

    def open(self, signed_in=True, **ctx):
        """A fresh context and page; console errors collected in self.errors."""
        context = self.browser.new_context(accept_downloads=True, **ctx)
        self.addCleanup(context.close)
        page = context.new_page()
        page.set_default_timeout(T)
        self.errors = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        # Air-gapped: every request the page makes goes to the server itself.
        origin = self.s.url.rstrip("/")
        page.on("request", lambda r: r.url.startswith(("http:", "https:", "ws:", "wss:"))
                and not r.url.startswith(origin + "/")
                and self.errors.append(f"request off the server's origin: {r.url}"))
        if signed_in:
            page.goto(self.s.url + "/")
            page.fill("#key", self.s.key)
            page.click("button[type=submit]")
            expect(page.locator("#jobs-table, #no-jobs")).to_be_visible()
        return page

    def shot(self, page, name):
        page.screenshot(path=os.path.join(ART, name + ".png"), full_page=True)

    def no_console_errors(self, allowed=()):
        bad = [e for e in self.errors if not any(re.search(a, e) for a in allowed)]
        self.assertEqual(bad, [], "console errors")
        self.errors.clear()

    def assert_focus_visible(self, page):
        style, width = page.evaluate(
            "() => { const c = getComputedStyle(document.activeElement);"
            " return [c.outlineStyle, parseFloat(c.outlineWidth)]; }")
        self.assertNotEqual(style, "none", "the focused element shows no focus ring")
        self.assertGreater(width, 0)
