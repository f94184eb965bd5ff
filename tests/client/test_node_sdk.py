"""The official OpenAI Node SDK (tests/client/node, `npm ci` by
tests/client/setup) against a real deltatune stack: this starts the stack and
runs tests/client/node/sdk.test.mjs with `node --test`.

    tests/client/setup
    BUILD=build python3 -m unittest discover -s tests/client -p 'test_node_sdk.py' -v
"""
import os
import shutil
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack, TRAIN_ROWS, TINY_ID  # noqa: E402

NODE_DIR = os.path.join(HERE, "node")
SDK = os.path.join(NODE_DIR, "node_modules", "openai", "package.json")


@unittest.skipUnless(shutil.which("node"), "node is not installed")
@unittest.skipUnless(os.path.exists(SDK), "the Node SDK is not installed: run tests/client/setup")
class NodeSDK(unittest.TestCase):
    def test_node_sdk_suite(self):
        with Stack(model="tiny") as s:
            # one serving worker for chat and completions (issue 17)
            s.start_worker("node-serve", extra=("--serve",))
            end = time.time() + 30
            while s.psql("SELECT count(*) FROM workers WHERE kind = 'serve' AND "
                         "status = 'serving'") != "1":
                self.assertLess(time.time(), end, "the serving worker did not register")
                time.sleep(0.2)
            env = dict(os.environ, DT_URL=s.url, DT_KEY=s.key, DT_OTHER_KEY=s.new_key("client-node-other"),
                       DT_MODEL=TINY_ID, DT_TRAIN=TRAIN_ROWS)
            r = subprocess.run(["node", "--test", "--test-reporter=spec", "sdk.test.mjs"], cwd=NODE_DIR,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=300)
        print("\n" + r.stdout.rstrip(), file=sys.stderr)
        self.assertEqual(r.returncode, 0, "node --test sdk.test.mjs failed (output above)")


if __name__ == "__main__":
    unittest.main()
