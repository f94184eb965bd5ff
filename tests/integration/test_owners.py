"""Two owners on one stack: owner B sees none of owner A's files, jobs or
models (404 on every route, as if they did not exist, and nothing of A's is
changed); revoked, malformed and missing keys are 401."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import StackTest, start_stack, hp, TINY_ID  # noqa: E402

S = None
A = {}  # what owner A made: file, job, paused job, model, ckpt, key B


def _setup():
    global S
    S = start_stack()
    StackTest.s = S
    t = StackTest()
    f = t.upload_ok()
    j = t.create_job(f["id"], hp(max_steps=4), suffix="mine")
    j = t.wait(j["id"], {"succeeded", "failed", "cancelled"})
    if j["status"] != "succeeded":
        raise RuntimeError(f"setup job did not succeed: {j}")
    # A second, long job, paused (queued or running when paused) so that
    # pause/resume/cancel have a live target.
    q = t.create_job(f["id"], hp(max_steps=100000))
    st, _, b = S.api("POST", f"/v1/fine_tuning/jobs/{q['id']}/pause")
    if st != 200:
        raise RuntimeError(f"pause of the new job: {st} {b}")
    q = t.wait(q["id"], {"paused", "succeeded", "failed", "cancelled"})
    if q["status"] != "paused":
        raise RuntimeError(f"setup job did not pause: {q}")
    ck = S.api("GET", f"/v1/fine_tuning/jobs/{j['id']}/checkpoints")[2]["data"][0]
    A.update(file=f["id"], job=j["id"], paused=q["id"], model=j["fine_tuned_model"],
             ckpt=ck["fine_tuned_model_checkpoint"], owner=j["organization_id"],
             keyb=S.new_key("bob"))


def setUpModule():
    try:
        _setup()
    except BaseException:
        tearDownModule()  # not called by unittest when setUpModule fails
        raise


def tearDownModule():
    if S:
        S.stop()


class Owners(StackTest):
    def routes(self):
        f, j, p, m, c = A["file"], A["job"], A["paused"], A["model"], A["ckpt"]
        r = [("GET", f"/v1/files/{f}"), ("GET", f"/v1/files/{f}/content"), ("DELETE", f"/v1/files/{f}")]
        for jid in (j, p):
            r += [("GET", f"/v1/fine_tuning/jobs/{jid}"), ("GET", f"/v1/fine_tuning/jobs/{jid}/events"),
                  ("GET", f"/v1/fine_tuning/jobs/{jid}/events?stream=true"),
                  ("GET", f"/v1/fine_tuning/jobs/{jid}/checkpoints"),
                  ("POST", f"/v1/fine_tuning/jobs/{jid}/cancel"), ("POST", f"/v1/fine_tuning/jobs/{jid}/pause"),
                  ("POST", f"/v1/fine_tuning/jobs/{jid}/resume")]
        for mid in (m, c):
            r += [("GET", f"/v1/models/{mid}"), ("GET", f"/v1/models/{mid}/files"),
                  ("GET", f"/v1/models/{mid}/files/config.json"),
                  ("GET", f"/v1/models/{mid}/files/model.safetensors"),
                  ("GET", f"/v1/models/{mid}/archive"), ("DELETE", f"/v1/models/{mid}")]
        return r

    def test_other_owner_gets_404_everywhere(self):
        kb = A["keyb"]
        for method, path in self.routes():
            with self.subTest(route=f"{method} {path}"):
                self.err(method, path, want=404, key=kb, headers={"Range": "bytes=0-3"})
        # Nothing of A's shows in B's lists.
        for path in ("/v1/files", "/v1/fine_tuning/jobs"):
            self.assertEqual(self.call("GET", path, key=kb)["data"], [], path)
        ids = [x["id"] for x in self.call("GET", "/v1/models", key=kb)["data"]]
        self.assertEqual(ids, [TINY_ID])
        # B cannot train on A's file or from A's model.
        self.err("POST", "/v1/fine_tuning/jobs", {"model": TINY_ID, "training_file": A["file"]},
                 key=kb, param="training_file")
        fb = self.upload_ok(key=kb)
        self.err("POST", "/v1/fine_tuning/jobs", {"model": A["model"], "training_file": fb["id"]},
                 key=kb, param="model")
        self.err("POST", "/v1/fine_tuning/jobs", {"model": TINY_ID, "training_file": fb["id"],
                                                  "validation_file": A["file"]}, key=kb, param="validation_file")
        # And A's things are untouched: the same answers as before.
        self.assertEqual(self.call("GET", f"/v1/files/{A['file']}")["id"], A["file"])
        self.assertEqual(self.call("GET", f"/v1/fine_tuning/jobs/{A['job']}")["status"], "succeeded")
        self.assertEqual(self.call("GET", f"/v1/fine_tuning/jobs/{A['paused']}")["status"], "paused")
        self.assertEqual(self.call("GET", f"/v1/models/{A['model']}")["id"], A["model"])
        self.assertEqual(self.call("GET", f"/v1/models/{A['ckpt']}")["id"], A["ckpt"])
        # A does not see B's file.
        self.err("GET", f"/v1/files/{fb['id']}", want=404)
        # B's job on its own file works.
        jb = self.create_job(fb["id"], hp(max_steps=1), key=kb)
        self.assertEqual(jb["organization_id"], "bob")
        self.err("GET", f"/v1/fine_tuning/jobs/{jb['id']}", want=404)
        self.call("POST", f"/v1/fine_tuning/jobs/{jb['id']}/cancel", key=kb)

    def test_keys(self):
        kc = self.s.new_key("carol")
        self.assertEqual(self.call("GET", "/v1/files", key=kc)["data"], [])
        prefix = kc.split("-")[1]
        self.s.cli("keys", "revoke", prefix)
        # The server caches key lookups for 5 s (api/auth.c): revocation
        # takes effect within that.
        self.wait_until("the revoked key to be refused",
                        lambda: self.s.api("GET", "/v1/files", key=kc)[0] == 401, timeout=30)
        e = self.err("GET", "/v1/files", want=401, key=kc)
        self.assertEqual(e["type"], "authentication_error")
        routes = [("GET", "/v1/files"), ("POST", "/v1/files"), ("GET", "/v1/fine_tuning/jobs"),
                  ("POST", "/v1/fine_tuning/jobs"), ("GET", "/v1/models"), ("GET", f"/v1/models/{TINY_ID}"),
                  ("GET", f"/v1/models/{TINY_ID}/files"), ("GET", f"/v1/fine_tuning/jobs/{A['job']}"),
                  ("POST", f"/v1/fine_tuning/jobs/{A['paused']}/cancel"), ("DELETE", f"/v1/models/{A['model']}"),
                  ("DELETE", f"/v1/files/{A['file']}")]
        bad_keys = {"revoked": {"Authorization": f"Bearer {kc}"},
                    "none": {},
                    "wrong secret": {"Authorization": f"Bearer {kc[:-4]}AAAA"},
                    "garbage": {"Authorization": "Bearer not-a-key"},
                    "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
                    "empty": {"Authorization": "Bearer "}}
        for name, h in bad_keys.items():
            for method, path in routes:
                with self.subTest(key=name, route=f"{method} {path}"):
                    self.err(method, path, want=401, key=False, headers=h)
        # Nothing changed for A.
        self.assertEqual(self.call("GET", f"/v1/fine_tuning/jobs/{A['paused']}")["status"], "paused")
        self.assertEqual(self.call("GET", f"/v1/models/{A['model']}")["id"], A["model"])
        self.assertEqual(self.call("GET", f"/v1/files/{A['file']}")["id"], A["file"])
        # Another owner's valid key still works.
        self.call("GET", "/v1/files", key=A["keyb"])


if __name__ == "__main__":
    unittest.main()
