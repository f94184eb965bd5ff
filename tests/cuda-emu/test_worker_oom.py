"""A worker on the emulated CUDA device whose device memory runs out: the
job fails with an out-of-memory error that names the settings to lower, the
worker stays up, and its next job succeeds (tests/cuda-emu/run; BUILD must
be an emulator build: make BUILD=build-emu CUDA_EMU=1 all).

The stack is the integration tests' (tests/harness): its CPU worker is
stopped and a `deltatune-worker --device cuda` started in its place with
EMU_FAIL_MALLOC=N, so the Nth device allocation of its life fails, once."""
import os
import signal
import sys
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack, TINY_ID, TRAIN_ROWS  # noqa: E402

FAIL_AT = 20  # during the model's setup of the first job


class WorkerOutOfDeviceMemory(unittest.TestCase):
    def test_job_fails_worker_survives_next_job_succeeds(self):
        build = os.path.abspath(os.environ.get("BUILD", os.path.join(ROOT, "build-emu")))
        with Stack(model="tiny", build=build, env={"EMU_FAIL_MALLOC": str(FAIL_AT)}) as s:
            os.kill(s.pid("worker"), signal.SIGTERM)  # the CPU worker scripts/up started
            time.sleep(1)
            w = s.start_worker("emu-cuda-0", extra=["--device", "cuda"])
            st, _, f = s.upload(TRAIN_ROWS)
            self.assertEqual(st, 200, f)
            hp = {"seq_len": 32, "batch_size": 2, "max_steps": 2}
            body = {"model": TINY_ID, "training_file": f["id"],
                    "method": {"type": "delta_lora", "delta_lora": {"hyperparameters": hp}}}
            st, _, j1 = s.api("POST", "/v1/fine_tuning/jobs", body)
            self.assertEqual(st, 200, j1)
            j1 = s.wait_job(j1["id"], ("failed", "succeeded"), timeout=300)
            log = s.log("emu-cuda-0")
            self.assertEqual(j1["status"], "failed", log[-3000:])
            msg = (j1.get("error") or {}).get("message", "")
            self.assertIn("memory", msg.lower(), j1)
            self.assertIn("batch_size", msg, j1)  # it names what to lower
            self.assertIsNone(w.poll(), "the worker exited:\n" + log[-3000:])
            st, _, j2 = s.api("POST", "/v1/fine_tuning/jobs", body)
            self.assertEqual(st, 200, j2)
            j2 = s.wait_job(j2["id"], ("failed", "succeeded"), timeout=600)
            self.assertEqual(j2["status"], "succeeded", s.log("emu-cuda-0")[-3000:])
            print(f"\n  job 1: {msg}\n  job 2: {j2['status']} on the same worker")
            w.send_signal(signal.SIGTERM)
            w.wait(timeout=60)


if __name__ == "__main__":
    unittest.main()
