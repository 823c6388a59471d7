"""PartialBatchError: a model call that answered some rows and failed others. The engine keeps the answers,
retries, bisects or dead-letters only the failed rows, each by its own error, and writes in input order."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import infermill
from tests.conftest import read_output, write_job

MODEL = '''
import numpy as np
from infermill.errors import ItemError, PartialBatchError, TransientError


class Model:
    """score = 2x. x ending in 3: always a timeout; ending in 5: a bad row; 7: a timeout on its first call."""

    def __init__(self, log):
        self.log = log
        self.seen = set()

    def predict(self, batch):
        xs = [int(x) for x in batch["x"]]
        with open(self.log, "a") as fh:
            fh.write(" ".join(map(str, xs)) + "\\n")
        errors = {}
        for i, x in enumerate(xs):
            if x % 10 == 3 or (x == 7 and x not in self.seen):
                errors[i] = TransientError(f"row {x} timed out")
            elif x % 10 == 5:
                errors[i] = ItemError(f"row {x} is bad")
            self.seen.add(x)
        if not errors:
            return {"score": np.array(xs) * 2.0}
        answered = [x for i, x in enumerate(xs) if i not in errors]
        raise PartialBatchError(f"{len(errors)} rows failed", result={"score": np.array(answered) * 2.0}, errors=errors)
'''


def test_answers_are_kept_and_each_failed_row_has_its_own_error(tmp_path: Path) -> None:
    n = 30
    (tmp_path / "model.py").write_text(MODEL)
    pq.write_table(pa.table({"id": list(range(n)), "x": list(range(n))}), tmp_path / "in.parquet")
    job = write_job(tmp_path / "job.toml", f"""
        [input]
        path = "in.parquet"
        id_column = "id"
        [model]
        kind = "python"
        entrypoint = "model.py:Model"
        features = ["x"]
        outputs = ["score"]
        options = {{log = "{tmp_path / 'calls.txt'}"}}
        [batch]
        size = 10
        [retry]
        max_attempts = 3
        backoff_seconds = 0.001
        max_backoff_seconds = 0.01
        [output]
        path = "out"
    """)
    result = infermill.run(job, progress="off")
    assert (result.rows_succeeded, result.rows_failed) == (24, 6)
    out = read_output(tmp_path / "out")
    good = [x for x in range(n) if x % 10 not in (3, 5)]
    assert out.column("id").to_pylist() == good  # input order, although row 7 was answered by a later call
    assert out.column("score").to_pylist() == [2.0 * x for x in good]

    errors = pq.read_table(next((tmp_path / "out" / "_errors").rglob("*.parquet"))).sort_by("id").to_pylist()
    assert [(e["id"], e["_error_class"], e["_error_kind"], e["_attempts"]) for e in errors] == [
        (x, "TransientError", "transient", 3) if x % 10 == 3 else (x, "ItemError", "item", 1)
        for x in (3, 5, 13, 15, 23, 25)
    ]
    assert [e["_error_message"] for e in errors] == [
        f"row {x} timed out" if x % 10 == 3 else f"row {x} is bad" for x in (3, 5, 13, 15, 23, 25)
    ]

    calls = [[int(x) for x in line.split()] for line in (tmp_path / "calls.txt").read_text().splitlines()]
    sent: dict[int, int] = {}
    for call in calls:
        for x in call:
            sent[x] = sent.get(x, 0) + 1
    # Answered rows are never asked again; the failed ones are retried together, not with their batch.
    assert {x: c for x, c in sent.items() if c != 1} == {3: 3, 7: 2, 13: 3, 23: 3}
    assert calls[:3] == [list(range(10)), [3, 7], [3]]
