"""README.md and `make up` as a new user meets them: the Python example
imports what it uses, the example dataset is named and exists, curl
examples cover upload and job creation, every `|` in a shell example is a
pipe into a real command, and `make up` installs what it needs first (as
the test targets do). No stack; Python standard library only.

    BUILD=build python3 -m unittest tests.cli.test_readme -v
"""
import ast
import builtins
import os
import re
import shlex
import shutil
import subprocess
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def blocks(lang):
    """The README's fenced code blocks of one language, in order."""
    return re.findall(r"```" + lang + r"\n(.*?)```", readme(), re.S)


def sh_commands(block):
    """The commands of a sh block: continuation lines joined, comments off."""
    out, cur = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    return [c for c in out if c.strip()]


def pipeline_heads(cmd):
    """The first word of each command a pipe feeds, or None when the line
    does not parse as shell."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars="|&;()<>")
    lex.commenters = "#"
    lex.whitespace_split = True
    try:
        toks = list(lex)
    except ValueError:
        return None
    return [toks[i + 1] if i + 1 < len(toks) else "" for i, t in enumerate(toks) if t == "|"]


class Readme(unittest.TestCase):
    def test_python_example_imports_what_it_uses(self):
        """Every name the Python examples read is imported, assigned or a
        builtin (`os` needs `import os`). About 0.1 s."""
        py = blocks("python")
        self.assertTrue(py)
        for src in py:
            tree = ast.parse(src)
            bound = set(dir(builtins))
            for n in ast.walk(tree):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    bound |= {(a.asname or a.name).split(".")[0] for a in n.names}
                elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    bound.add(n.id)
            used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                    and isinstance(n.ctx, ast.Load)}
            self.assertEqual(used - bound, set(), src)

    def test_example_dataset_is_named_and_exists(self):
        """About 0.1 s."""
        self.assertTrue("scripts/demo-data.jsonl" in readme(), "README does not name scripts/demo-data.jsonl")
        self.assertTrue(os.path.getsize(os.path.join(ROOT, "scripts", "demo-data.jsonl")) > 0)

    def test_curl_examples_for_upload_and_job_creation(self):
        """About 0.1 s."""
        cmds = [c for b in blocks("sh") for c in sh_commands(b) if "curl " in c]
        self.assertTrue([c for c in cmds if "/v1/files" in c and "-F file=@" in c], cmds)
        self.assertTrue([c for c in cmds if "/v1/fine_tuning/jobs" in c and " -d " in c
                         and '"training_file"' in c], cmds)

    def test_every_pipe_feeds_a_real_command(self):
        """`a | b` in a shell example means a pipe: b is a command (on PATH
        or a file of the repository, e.g. build/deltatune), not an
        alternative such as `keys revoke`. About 0.1 s."""
        for b in blocks("sh"):
            for cmd in sh_commands(b):
                heads = pipeline_heads(cmd)
                self.assertIsNotNone(heads, cmd)
                for h in heads:
                    with self.subTest(line=cmd):
                        real = shutil.which(h) or h.startswith(("build/", "scripts/", "./"))
                        self.assertTrue(real, f"'| {h}' is not a command: {cmd}")


class MakeUp(unittest.TestCase):
    def test_make_up_installs_what_it_needs_first(self):
        """`make -n up` runs scripts/install-deps before building and
        starting the stack, as `make test` does. About 3 s."""
        r = subprocess.run(["make", "-n", "--no-print-directory", "up"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:])
        lines = r.stdout.splitlines()
        # The commands make would run (not its notes that mention them).
        deps = [i for i, l in enumerate(lines) if re.match(r"(\S*/)?scripts/install-deps\s*$", l)]
        up = [i for i, l in enumerate(lines) if re.match(r"(\S*/)?scripts/up\s*$", l)]
        self.assertTrue(deps, r.stdout[-2000:])
        self.assertTrue(up, r.stdout[-2000:])
        self.assertLess(deps[0], up[-1])


if __name__ == "__main__":
    unittest.main()
