#!/usr/bin/env python3
"""e2e-to-chat.py: E2E NLG (valid.txt, "meaning representation||reference"
per line) -> OpenAI chat JSONL, one row per distinct meaning representation,
N rows spread evenly over the file (it is sorted by restaurant name).

    scripts/e2e-to-chat.py ../shared/data/e2e/valid.txt 200 > out.jsonl

scripts/demo-data.jsonl is this script's output for the E2E validation set
(Novikova et al. 2017, CC BY-SA 4.0); see scripts/demo-data.NOTICE."""
import json
import sys

path, n = sys.argv[1], int(sys.argv[2])
first = {}
with open(path, encoding="utf-8") as f:
    for line in f:
        if "||" not in line:
            continue
        mr, ref = (s.strip() for s in line.split("||", 1))
        first.setdefault(mr, ref)
order = list(first)
for i in range(min(n, len(order))):
    mr = order[(i * len(order)) // n]
    row = {"messages": [{"role": "user", "content": mr},
                        {"role": "assistant", "content": first[mr]}]}
    print(json.dumps(row, ensure_ascii=False))
