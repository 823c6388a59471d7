"""Print each request's reply (or error) by custom_id, as you would with the Batch API's files.

    python read_results.py
"""

import json
from pathlib import Path

here = Path(__file__).resolve().parent
results = {}
for path in sorted((here / "out").glob("part-*.jsonl")) + sorted((here / "out" / "_errors").glob("part-*.jsonl")):
    for line in path.read_text().splitlines():
        item = json.loads(line)
        if item["error"] is None:
            body = item["response"]["body"]
            results[item["custom_id"]] = f"{body['choices'][0]['message']['content']!r} ({body['usage']})"
        else:
            results[item["custom_id"]] = f"error {item['error']['code']}: {item['error']['message'].splitlines()[0]}"
for line in (here / "batch_input.jsonl").read_text().splitlines():
    custom_id = json.loads(line)["custom_id"]
    print(f"{custom_id}: {results[custom_id]}")
