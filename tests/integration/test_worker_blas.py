"""The worker picks the same BLAS kernels as `deltatune train` (issue 14).

gpu/cpu_tune.c re-executes a program with OPENBLAS_CORETYPE=SkylakeX when
the CPU has AVX-512 and OpenBLAS chose its Haswell or Zen kernels (as
Debian's 0.3.21 does on AMD Zen 4/5). `deltatune-worker` calls it at start,
before any thread, and logs the kernels in use ("worker.blas"). These tests
start the worker alone (its database unreachable: only its first log lines
matter) and read that line:

- as this machine runs it: the logged kernels are those the rule gives for
  this CPU and this OpenBLAS (asked through ctypes in a clean environment);
- with OpenBLAS made to report Haswell (an LD_PRELOAD shim over
  openblas_get_corename, built here with cc): the worker re-executes itself
  in place (same pid) and runs SkylakeX. Needs AVX-512 and a C compiler;
  skipped, saying which is missing, otherwise;
- OPENBLAS_CORETYPE and DT_NO_BLAS_TUNE set by the user are kept.

Python standard library only; BUILD picks the build directory.
"""
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.abspath(os.environ.get("BUILD", os.path.join(ROOT, "build")))
WORKER = os.path.join(BUILD, "deltatune-worker")
AVX512 = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def openblas_path():
    """The libopenblas the worker loads (from ldd), or None."""
    out = subprocess.run(["ldd", WORKER], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "libopenblas" in line and "=>" in line:
            return line.split("=>")[1].split()[0]
    return None


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "DT_NO_BLAS_TUNE", "DT_BLAS_TUNED", "LD_PRELOAD")}
    env.update(extra)
    return env


def worker_lines(env, want=("worker.blas", "worker.start"), timeout=20):
    """Starts the worker, returns (pid, {event: msg}) for the events in want."""
    p = subprocess.Popen([WORKER, "--database-url", "postgres://127.0.0.1:1/none",
                          "--log-level", "info"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    seen = {}
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and not all(w in seen for w in want):
            line = p.stdout.readline()
            if not line:
                break
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") in want:
                seen[rec["event"]] = rec.get("msg", "")
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    return p.pid, seen


class WorkerBlasTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(WORKER, os.X_OK):
            raise unittest.SkipTest(f"{WORKER} is missing: run 'make all' first")
        cls.lib = openblas_path()
        if not cls.lib:
            raise unittest.SkipTest("the worker is not linked against libopenblas")

    def own_core(self):
        """OpenBLAS's own choice on this CPU (a child with a clean env)."""
        code = ("import ctypes,sys; L=ctypes.CDLL(sys.argv[1]); "
                "L.openblas_get_corename.restype=ctypes.c_char_p; "
                "print(L.openblas_get_corename().decode())")
        import sys
        return subprocess.run([sys.executable, "-c", code, self.lib], env=clean_env(),
                              capture_output=True, text=True, check=True).stdout.strip()

    def test_logs_the_kernels_the_rule_picks_on_this_cpu(self):
        own = self.own_core()
        avx = all(f in cpu_flags() for f in AVX512)
        tuned = avx and own.lower() in ("haswell", "zen")
        _, seen = worker_lines(clean_env())
        self.assertIn("worker.blas", seen, "no worker.blas line at start")
        if tuned:
            self.assertEqual(seen["worker.blas"],
                             "OpenBLAS kernels SkylakeX (chosen by re-executed)")
        else:
            self.assertEqual(seen["worker.blas"], f"OpenBLAS kernels {own} (chosen by OpenBLAS)")

    def test_reexecutes_in_place_when_openblas_picks_avx2_kernels(self):
        missing = [f for f in AVX512 if f not in cpu_flags()]
        if missing:
            self.skipTest(f"this CPU lacks {', '.join(missing)}: the worker keeps "
                          "OpenBLAS's kernels here (no re-exec to test)")
        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc:
            self.skipTest("no C compiler for the openblas_get_corename shim")
        with open(WORKER, "rb") as f:
            if b"__asan_init" in f.read():
                self.skipTest("an AddressSanitizer build (make test-asan-integration): ASan "
                              "must be the first library loaded, so the LD_PRELOAD shim "
                              "cannot be used; the plain build runs this test")
        with tempfile.TemporaryDirectory() as d:
            src, so = os.path.join(d, "shim.c"), os.path.join(d, "shim.so")
            with open(src, "w") as f:
                f.write('#include <stdlib.h>\n'
                        '/* OpenBLAS as Debian 0.3.21 behaves on Zen 4/5: Haswell\n'
                        ' * unless OPENBLAS_CORETYPE says otherwise. */\n'
                        'char *openblas_get_corename(void) {\n'
                        '    char *t = getenv("OPENBLAS_CORETYPE");\n'
                        '    return t ? t : "Haswell";\n'
                        '}\n')
            subprocess.run([cc, "-shared", "-fPIC", "-o", so, src], check=True)
            pid, seen = worker_lines(clean_env(LD_PRELOAD=so))
        self.assertEqual(seen.get("worker.blas"),
                         "OpenBLAS kernels SkylakeX (chosen by re-executed)", seen)
        # exec, not a child: the worker's default id ends with its pid, which
        # is the pid this test started.
        self.assertRegex(seen.get("worker.start", ""), rf"^worker \S+-{pid} on ")

    def test_user_settings_are_kept(self):
        _, seen = worker_lines(clean_env(OPENBLAS_CORETYPE="Haswell"))
        self.assertEqual(seen.get("worker.blas"),
                         "OpenBLAS kernels Haswell (chosen by OPENBLAS_CORETYPE)")
        own = self.own_core()
        _, seen = worker_lines(clean_env(DT_NO_BLAS_TUNE="1"))
        self.assertEqual(seen.get("worker.blas"),
                         f"OpenBLAS kernels {own} (chosen by DT_NO_BLAS_TUNE)")


if __name__ == "__main__":
    unittest.main()
