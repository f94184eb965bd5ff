#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<name>/
(standard library only; deterministic). The committed seeds are its output,
copies of small test fixtures, and regress_* files: inputs that found a bug
(kept by hand, never overwritten here). Rerun after changing it:

    python3 tests/fuzz/make_seeds.py
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def fixture(target, name, rel):
    src = os.path.join(ROOT, rel)
    if os.path.exists(src):
        d = os.path.join(OUT, target)
        os.makedirs(d, exist_ok=True)
        shutil.copyfile(src, os.path.join(d, name))


# ---- json: job-create bodies ------------------------------------------------
def j(o):
    return json.dumps(o)


base = {"model": "tiny-gpt2", "training_file": "file-abc"}
jobs = {
    "minimal": base,
    "delta": dict(base, method={"type": "delta_lora", "delta_lora": {"hyperparameters": {
        "rank": 8, "alpha": 16, "lambda": 0.5, "n_epochs": 1, "start_step": -1,
        "target_modules": ["q", "v", "c_attn"], "lr_scheduler": "cosine"}}}),
    "lora": dict(base, method={"type": "lora", "lora": {"hyperparameters": {
        "rank": "auto", "batch_size": 2, "learning_rate": 1e-3, "seq_len": 64,
        "target_modules": "q_proj,k_proj, v_proj", "warmup_steps": 3}}}),
    "full": dict(base, method={"type": "full", "full": {"hyperparameters": {
        "weight_decay": 0.1, "max_grad_norm": 0, "gradient_accumulation_steps": 4,
        "max_steps": 10, "checkpoint_interval": 5, "eval_interval": 2, "seed": 7}}}),
    "supervised": dict(base, method={"type": "supervised", "supervised": {"hyperparameters": {
        "learning_rate_multiplier": 2.5, "n_epochs": "auto"}}}, suffix="my-model_1",
        validation_file="file-val", seed=123, metadata={"team": "a", "run": "42"},
        integrations=[]),
    "legacy": dict(base, hyperparameters={"n_epochs": 2, "batch_size": "auto",
                                          "learning_rate_multiplier": 0.5}),
    "bad_types": dict(base, method={"type": "lora", "lora": {"hyperparameters": {
        "rank": 1.5, "alpha": "x", "lambda": 1}}}),
    "bad_range": dict(base, seed=-1, suffix="no spaces!", metadata={"k" * 65: "v"}),
    "unknown": dict(base, surprise=1, method={"type": "dpo"}),
}
for k, v in jobs.items():
    put("json", k + ".json", j(v))
put("json", "dup_keys.json", '{"model":"a","model":"b","training_file":"f"}')
put("json", "floats.json", '{"model":"m","training_file":"f","seed":9007199254740992.0,'
    '"hyperparameters":{"learning_rate":1e-300,"n_epochs":1e308,"batch_size":-0.0}}')
put("json", "not_object.json", '[1, "two", null, true, {"a": {}}]')
put("json", "nul.json", '{"model":"a\\u0000b","training_file":"f","metadata":{"x":"\\u0000"}}')

# ---- jsonl: training files ------------------------------------------------------
rows = [
    {"text": "Hello world, the end."},
    {"prompt": "Translate: cat", "completion": " chat"},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hi <|im_end|> there"},
                  {"role": "assistant", "content": "Hello!"},
                  {"role": "assistant", "content": "masked", "weight": 0}]},
    {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
     "tools": [], "parallel_tool_calls": False},
    {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5]},
    {"input_ids": [10, 20, 30]},
]
put("jsonl", "good.jsonl", "\n".join(j(r) for r in rows) + "\n")
put("jsonl", "bom_crlf.jsonl", "\ufeff" + "\r\n".join(j(r) for r in rows[:3]) + "\r\n\r\n   \n")
put("jsonl", "bad_lines.jsonl", "\n".join([
    j({"prompt": "a", "completion": "b"}), "not json", j({"prompt": "a"}),
    j({"messages": "x"}), j({"text": 5}), j({"text": "a", "extra": 1}),
    '{"text": "a", "text": "b"}', j({"messages": [{"role": "robot", "content": "x"}]}),
    j({"messages": [{"role": "assistant", "content": "x", "weight": 2}]}),
    j({"input_ids": [1, -5, 99999999]}), j({"input_ids": [1, 2], "labels": [1]}),
    j({"input_ids": []}), j([1, 2]), "", "{}"]) + "\nlast line without newline")
put("jsonl", "long_row.jsonl", j({"text": "the " * 300}) + "\n" +
    j({"input_ids": list(range(200))}) + "\n")
put("jsonl", "utf8.jsonl", j({"text": "\u00e9t\u00e9 \U0001f600 \u4e2d\u6587"}) + "\n" +
    '{"text": "bad \\ud800 surrogate"}\n' + '{"text": "raw \xff byte"}\n')
put("jsonl", "empty.jsonl", "")

# ---- multipart: Content-Type line + body ---------------------------------------------
def multipart(parts, boundary="----dtfuzz"):
    out = b""
    for name, value, filename in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        disp = 'Content-Disposition: form-data; name="%s"' % name
        if filename is not None:
            disp += '; filename="%s"' % filename
        out += disp.encode() + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/jsonl\r\n"
        out += b"\r\n" + (value if isinstance(value, bytes) else value.encode()) + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n"
    return b"multipart/form-data; boundary=" + boundary.encode() + b"\n" + out


good = ("\n".join(j(r) for r in rows[:3]) + "\n").encode()
put("multipart", "good", multipart([("purpose", "fine-tune", None), ("file", good, "train.jsonl")]))
put("multipart", "expires", multipart([("purpose", "fine-tune", None),
                                        ("expires_after[anchor]", "created_at", None),
                                        ("expires_after[seconds]", "3600", None),
                                        ("file", good, "dir/a\x01b.jsonl")]))
put("multipart", "bad_lines", multipart([("file", b"not json\n{\"text\": 5}\n", "t.jsonl"),
                                          ("purpose", "fine-tune", None)]))
put("multipart", "two_files", multipart([("purpose", "fine-tune", None),
                                          ("file", good, "a.jsonl"), ("file", good, "b.jsonl")]))
put("multipart", "unknown_field", multipart([("purpose", "assistants", None),
                                              ("surprise", "1", None),
                                              ("expires_after[anchor]", "now", None)]))
put("multipart", "no_file", multipart([("purpose", "fine-tune", None)], boundary="x"))
put("multipart", "urlencoded", b"application/x-www-form-urlencoded\npurpose=fine-tune&file=%7B%7D")
put("multipart", "truncated", multipart([("purpose", "fine-tune", None),
                                          ("file", good, "t.jsonl")])[:-30])

# ---- query: raw requests ------------------------------------------------------
reqs = [
    "GET /v1/files?limit=10&order=asc&after=file-1&purpose=fine-tune HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v1/files?limit=0&order=sideways HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v1/files/file-abc/content HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\n\r\n",
    "DELETE /v1/files/file-abc HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v1/fine_tuning/jobs?limit=5&metadata[team]=a&metadata[run]=%20x HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v1/fine_tuning/jobs?metadata[" + "k" * 70 + "]=v HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v1/fine_tuning/jobs/ftjob-1/events?limit=3&after=ftevent-2&stream=false HTTP/1.1\r\n"
    "Host: x\r\nLast-Event-ID: ftevent-9\r\n\r\n",
    "GET /v1/fine_tuning/jobs/ftjob-1/events?stream=true HTTP/1.1\r\nHost: x\r\n"
    "Last-Event-ID: ftevent-x\r\n\r\n",
    "GET /v1/fine_tuning/jobs/ftjob-1/checkpoints?limit=101 HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /v1/fine_tuning/jobs/ftjob-1/cancel HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "POST /v1/fine_tuning/jobs/ftjob-1/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    "GET /v1/models/tiny-gpt2/files/model.safetensors HTTP/1.1\r\nHost: x\r\n"
    "Range: bytes=-100\r\nIf-None-Match: W/\"abc\", \"def\"\r\nIf-Range: \"abc\"\r\n\r\n",
    "GET /v1/models/ft%3Atiny%2Fx/archive HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v1/models?limit=2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "PUT /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /static/app.js?v=1 HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /healthz HTTP/1.0\r\n\r\n",
    "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v1//files/../x?%zz=&&=& HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    "Content-Length: 45\r\n\r\n{\"model\":\"tiny-gpt2\",\"training_file\":\"f-1\"}",
    "POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5\r\n{\"a\":\r\n3\r\n1}\n\r\n0\r\n\r\n",
]
# Every /v1 route needs an Authorization header; the harness's auth hook
# accepts any key (fuzz_http.h). req00 is also kept without one (401).
AUTH = "Host: x\r\nAuthorization: Bearer dt-fuzz-0123456789\r\n"
for i, r in enumerate(reqs):
    put("query", "req%02d" % i, r.replace("Host: x\r\n", AUTH, 1) if " /v1/" in r else r)
put("query", "no_auth", reqs[0])
put("query", "range_lines", "Range: bytes=5-\nRange: bytes=1-2,3-4\nbytes=99999999999999999999-1\n"
    "If-None-Match: W/\"3f2a\"\nlimit 100\n")

# ---- safetensors ------------------------------------------------------------------
def safetensors(tensors, metadata=None, pad=True):
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-30, 65504)
put("safetensors", "mixed.safetensors", safetensors([
    ("a.weight", "F32", [2, 3], f32),
    ("b", "F16", [4], struct.pack("<4H", 0x3c00, 0x7c00, 0x0001, 0xfbff)),
    ("c", "BF16", [2, 1, 1], struct.pack("<2H", 0x3f80, 0x7fc0)),
    ("scalar", "F32", [], struct.pack("<f", 7)),
    ("empty", "F32", [0, 4], b""),
], metadata={"format": "pt"}))
put("safetensors", "unsupported.safetensors", safetensors([("i", "I64", [1], b"\0" * 8)]))
put("safetensors", "gap.safetensors", safetensors([("a", "F32", [1], b"\0" * 8)]))
put("safetensors", "tiny.safetensors", b"\x02\0\0\0\0\0\0\0{}")

# ---- gguf -------------------------------------------------------------------
def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gkv(key, typ, val):
    out = gstr(key) + struct.pack("<I", typ)
    if typ == 8:
        out += gstr(val)
    elif typ == 9:
        et, items = val
        out += struct.pack("<IQ", et, len(items))
        for it in items:
            out += gstr(it) if et == 8 else struct.pack({4: "<I", 5: "<i", 6: "<f", 7: "<?",
                                                        0: "<B", 10: "<Q", 11: "<q", 12: "<d"}[et], it)
    else:
        out += struct.pack({0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
                            7: "<?", 10: "<Q", 11: "<q", 12: "<d"}[typ], val)
    return out


def gguf(kvs, tensors, align=32, version=3):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for kv in kvs:
        out += kv
    data, infos = b"", b""
    for name, dims, gt, raw in tensors:
        data += b"\0" * (-len(data) % align)
        infos += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", gt, len(data))
        data += raw
    out += infos
    out += b"\0" * (-len(out) % align)
    return out + data


toks = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "h", "e", "l", "o", "he", "ll", "hell",
        "\u0120", "\u0120w", "w", "r", "d", "!"]
kvs = [gkv("general.architecture", 8, "llama"), gkv("general.alignment", 4, 32),
       gkv("llama.block_count", 4, 1), gkv("llama.rope.freq_base", 6, 10000.0),
       gkv("tokenizer.ggml.model", 8, "gpt2"), gkv("tokenizer.ggml.pre", 8, "smollm"),
       gkv("tokenizer.ggml.tokens", 9, (8, toks)),
       gkv("tokenizer.ggml.token_type", 9, (5, [3, 3, 3] + [1] * (len(toks) - 3))),
       gkv("tokenizer.ggml.merges", 9, (8, ["h e", "l l", "he ll", "\u0120 w"])),
       gkv("tokenizer.ggml.bos_token_id", 4, 0), gkv("tokenizer.ggml.eos_token_id", 4, 2),
       gkv("tokenizer.chat_template", 8, "{% for m in messages %}{{m.content}}{% endfor %}"),
       gkv("misc.flags", 9, (7, [True, False])), gkv("misc.f64", 12, 2.5),
       gkv("misc.i64s", 9, (11, [-1, 2**40])), gkv("misc.nested", 9, (12, [1.5, -0.25]))]
q8 = struct.pack("<H", 0x3c00) + bytes(range(32))
q4_0 = struct.pack("<H", 0x3c00) + bytes(range(16))
q4_1 = struct.pack("<HH", 0x3c00, 0xbc00) + bytes(range(16))
tens = [("f32", [3, 2], 0, struct.pack("<6f", *range(6))),
        ("f16", [4], 1, struct.pack("<4H", 0x3c00, 0x4000, 0x7bff, 0x8001)),
        ("bf16", [2], 30, struct.pack("<2H", 0x3f80, 0xff80)),
        ("q8_0", [32], 8, q8), ("q4_0", [32], 2, q4_0), ("q4_1", [32, 1], 3, q4_1)]
put("gguf", "small.gguf", gguf(kvs, tens))
put("gguf", "meta_only.gguf", gguf(kvs[4:12], [], version=2))
put("gguf", "unsupported_type.gguf", gguf(kvs[:1], [("k", [256], 12, b"\0" * 144)]))
fixture("gguf", "quant.gguf", "tests/fixtures/tensorfile/quant.gguf")
fixture("gguf", "tiny_llama.gguf", "tests/fixtures/tensorfile/tiny_llama.gguf")

# ---- chat_template: the model templates of tests/fixtures/chat/ ---------------
for _name in ("llama3_1", "llama3_1_official", "qwen3", "gemma3", "llama2", "mistral",
              "smollm2", "chatml_generation", "features"):
    fixture("chat_template", _name + ".jinja", "tests/fixtures/chat/%s.jinja" % _name)

# ---- tokenizer: selector byte + parts split by "\n@@\n" --------------------------------
SEP = b"\n@@\n"
vocab = {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120a": 4, "<|endoftext|>": 5}
tj = {"version": "1.0", "added_tokens": [{"id": 5, "content": "<|endoftext|>", "special": True},
                                         {"id": 6, "content": "<|im_start|>", "special": True},
                                         {"id": 7, "content": "<tool>", "special": False}],
      "normalizer": None,
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
          {"type": "Digits", "individual_digits": True},
          {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]},
      "model": {"type": "BPE", "vocab": vocab, "merges": ["a b", ["\u0120", "a"]],
                "ignore_merges": False, "unk_token": None}}
cfg = {"bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|im_start|>",
       "chat_template": [{"name": "default", "template": "{{x}}"}]}
put("tokenizer", "json", b"\x00" + j(tj).encode() + SEP + j(cfg).encode())
put("tokenizer", "json_special", b"\x04" + j(tj).encode() + SEP + b"{}" + SEP + b"ab <|endoftext|> 123")
put("tokenizer", "vocab_merges", b"\x01" + j(vocab).encode() + SEP + b"#version: 0.2\na b\n\u0120 a\r\n".decode().encode() + SEP +
    j({"bos_token_id": 5, "eos_token_id": 99}).encode())
put("tokenizer", "encoder_bpe", b"\x06" + j(vocab).encode() + SEP + b"a b\n" + SEP +
    j({"eos_token": "<|endoftext|>"}).encode())
put("tokenizer", "config_json", b"\x03" + j(dict(tj, pre_tokenizer={"type": "ByteLevel"})).encode() + SEP +
    j({"bos_token_id": 0, "eos_token_id": 1}).encode() + SEP + j({"bos_token": "a"}).encode())
tdir = os.path.join(ROOT, "tests/fixtures/tokenizer")
if os.path.isdir(tdir):
    for d in sorted(os.listdir(tdir)):
        p = os.path.join(tdir, d)
        if not os.path.isdir(p):
            continue
        if os.path.exists(os.path.join(p, "tokenizer.json")):
            body = b"\x00" + open(os.path.join(p, "tokenizer.json"), "rb").read()
        else:
            body = b"\x01" + open(os.path.join(p, "vocab.json"), "rb").read() + SEP + \
                open(os.path.join(p, "merges.txt"), "rb").read()
            if os.path.exists(os.path.join(p, "tokenizer_config.json")):
                body += SEP + open(os.path.join(p, "tokenizer_config.json"), "rb").read()
        put("tokenizer", "fixture_" + d, body)
print("seeds written to", OUT)
