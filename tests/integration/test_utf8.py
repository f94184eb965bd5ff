"""Bytes that are not UTF-8 where the API takes text (found with the fuzz
targets of tests/fuzz/, see docs/RELIABILITY.md "Fuzzing"): PostgreSQL
(UTF8) and jansson refuse them, which used to give a 500 (ids, cursors,
Idempotency-Key, upload file names) or a 400 with an empty body (a JSON
parse error quoting the raw byte). Now: a 400 with the error envelope, or
the bytes replaced in what is stored."""
import unittest

from common import StackTest
from common import setUpModule, tearDownModule  # noqa: E402,F401 (one stack for the module)


def multipart(filename):
    b = b"----dtutf8boundary"
    body = (b"--" + b + b"\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            b"--" + b + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename +
            b"\"\r\nContent-Type: application/jsonl\r\n\r\n{\"text\": \"ok\"}\n\r\n--" + b + b"--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=" + b.decode()}


class Utf8(StackTest):
    def test_path_and_query_must_be_utf8(self):
        for path in ("/v1/files/file-%FF", "/v1/files?after=%FF", "/v1/fine_tuning/jobs/ftjob-%C3",
                     "/v1/fine_tuning/jobs/ftjob-%ED%A0%80/events", "/v1/models/%C0%AF",
                     "/v1/fine_tuning/jobs?metadata[k%FF]=v"):
            e = self.err("GET", path, want=400)
            self.assertEqual(e["code"], "invalid_request", e)
        # valid UTF-8 that names nothing is still a 404
        self.err("GET", "/v1/files/file-%C3%A9", want=404)

    def test_idempotency_key_must_be_utf8(self):
        body = {"model": "tiny-gpt2", "training_file": "file-none"}
        e = self.err("POST", "/v1/fine_tuning/jobs", body, want=400, param="Idempotency-Key",
                     headers={"Idempotency-Key": "k\xff".encode("latin-1").decode("latin-1")})
        self.assertIn("UTF-8", e["message"])

    def test_json_error_quoting_a_raw_byte_has_a_body(self):
        e = self.err("POST", "/v1/fine_tuning/jobs", b'{"model": "\\\xd9"}', want=400,
                     headers={"Content-Type": "application/json"})
        self.assertEqual(e["code"], "invalid_json", e)

    def test_upload_filename_not_utf8_is_cleaned(self):
        body, h = multipart(b"caf\xe9 \xc3.jsonl")
        st, _, f = self.s.api("POST", "/v1/files", body, headers=h)
        self.assertEqual(st, 200, f)
        self.assertEqual(f["filename"], "caf_ _.jsonl", f)
        self.assertEqual(f["status"], "processed", f)
        body, h = multipart("caf\u00e9.jsonl".encode())
        st, _, f = self.s.api("POST", "/v1/files", body, headers=h)
        self.assertEqual((st, f["filename"]), (200, "caf\u00e9.jsonl"), f)


if __name__ == "__main__":
    unittest.main()
