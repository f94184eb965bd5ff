"""scripts/paper-e2e: the Delta-LoRA paper's GPT-2 Medium E2E recipe as a
`deltatune train` command line. --smoke runs it for 5 steps on a random,
scaled-down GPT-2 Medium-shaped model with our tokenizer (about 5 s of CPU;
up to ~25 s of wall time on this shared machine); --dry-run prints the full
recipe. No stack needed. Python standard library only.

    BUILD=build python3 -m unittest tests.cli.test_paper_e2e -v
"""
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.abspath(os.environ.get("BUILD", os.path.join(ROOT, "build")))
SCRIPT = os.path.join(ROOT, "scripts", "paper-e2e")


def run(*args):
    env = dict(os.environ, BUILD=BUILD)
    return subprocess.run([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=300)


class PaperE2E(unittest.TestCase):
    def setUp(self):
        if not os.access(os.path.join(BUILD, "deltatune"), os.X_OK):
            raise unittest.SkipTest(f"{BUILD}/deltatune is missing: run 'make all' first")
        if not os.path.exists(os.path.join(ROOT, ".cache", "gpt2-tokenizer", "vocab.json")):
            raise unittest.SkipTest(".cache/gpt2-tokenizer is missing: run scripts/install-deps")

    def test_smoke_runs_the_recipe_for_five_steps(self):
        """About 5 s of CPU (25 s wall on a busy machine)."""
        r = run("--smoke")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        steps = [l for l in r.stdout.splitlines() if l.startswith("step ")]
        self.assertEqual(len(steps), 5, r.stdout)
        self.assertIn("--label-smoothing 0.1", r.stdout)
        self.assertIn("--lambda 2", r.stdout)
        self.assertIn("paper-e2e --smoke: ok", r.stdout)

    def test_dry_run_prints_the_papers_settings(self):
        """Under a second."""
        with tempfile.TemporaryDirectory() as d:
            train = os.path.join(d, "train.txt")
            with open(train, "w") as f:
                f.write("name : A | area : city centre||A is in the city centre .\n"
                        "no separator on this line\n"
                        "name : B||B .\n")
            r = run("--model", os.path.join(d, "gpt2-medium"), "--train", train,
                    "--out", os.path.join(d, "out"), "--dry-run")
            self.assertEqual(r.returncode, 0, r.stderr)
            cmd = r.stdout.split()
            for flag, v in (("--method", "delta_lora"), ("--rank", "4"), ("--alpha", "32"),
                            ("--lambda", "2"), ("--start-step", "501"), ("--lr", "2e-4"),
                            ("--epochs", "5"), ("--warmup-steps", "500"),
                            ("--label-smoothing", "0.1"), ("--target-modules", "q,v")):
                self.assertEqual(cmd[cmd.index(flag) + 1], v, flag)
            self.assertNotIn("--lora-dropout", cmd)
            self.assertNotIn("--model-dropout", cmd)  # GPT-2's config.json's
            self.assertIn("2 training rows", r.stderr)
            with open(os.path.join(d, "out", "e2e-train.jsonl")) as f:
                rows = f.read().splitlines()
            self.assertEqual(rows[0], '{"prompt": "name : A | area : city centre ||", '
                                      '"completion": " A is in the city centre .<|endoftext|>"}')


if __name__ == "__main__":
    unittest.main()
