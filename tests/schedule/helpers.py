"""A small scheduled job for the scheduling tests: a real python model over Parquet files, with a gate that
holds its later shards while a file ``hold`` exists beside the job (so a test can act mid-run), and that
drops a new input file during the run while a file ``drop`` exists."""

from __future__ import annotations

import datetime as dt
import sqlite3
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from infermill.ledger import TriggerRecord, open_ledger
from tests.conftest import write_parquet_files

GATED = '''
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).parent


class Scorer:
    def setup(self):
        self.weights = np.array([0.5, 1.0, -0.25])

    def predict(self, batch):
        if (HERE / "drop").exists():
            (HERE / "drop").rename(HERE / "dropped")
            import pyarrow.compute as pc

            table = pq.read_table(HERE / "data" / "part-000.parquet").slice(0, 10)
            ids = pc.add(table.column("customer_id"), 100_000)
            pq.write_table(table.set_column(0, "customer_id", ids), HERE / "data" / "late.parquet")
        self.calls = getattr(self, "calls", 0) + 1
        deadline = time.monotonic() + 120
        # Batches after this process's first shard (two calls of 500 rows) wait while the test holds them
        # (it removes `hold` to let them go).
        while self.calls > 2 and (HERE / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"score": batch["f0"] * self.weights[0] + batch["f1"] * self.weights[1] + batch["f2"] * self.weights[2]}
'''

T0 = dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.UTC).timestamp()
"""00:30 UTC, before the first 02:00 due time of ``0 2 * * *``."""
DAY = 86_400.0


def scheduled_job(
    folder: Path, schedule: str, *, rows: int = 3_000, files: int = 3, extra: str = ""
) -> tuple[Path, pa.Table]:
    """Write the data, the gated model and a job file with ``[schedule]`` ``schedule``; return the job file
    and the input table."""
    (folder / "scorer.py").write_text(GATED)
    table = write_parquet_files(folder / "data", rows, files)
    job = folder / "job.toml"
    job.write_text(textwrap.dedent(f"""\
        name = "scores"
        [input]
        path = "data/*.parquet"
        id_column = "customer_id"
        shard_rows = 1000
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        features = ["f0", "f1", "f2"]
        outputs = ["score"]
        [batch]
        size = 500
        [output]
        path = "out"
        [runtime]
        grace_seconds = 30
        lease_seconds = 5
        {extra}
        [schedule]
        """) + textwrap.dedent(schedule))
    return job, table


def triggers(job: Path, kind: str | None = None) -> list[TriggerRecord]:
    ledger = open_ledger(str(job.parent / ".infermill" / "scores.sqlite"), job="scores")
    try:
        return [t for t in ledger.triggers(kind) if kind is not None or t.kind != "skipped"]
    finally:
        ledger.close()


def shards_committed(job: Path) -> int:
    path = job.parent / ".infermill" / "scores.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM shards WHERE state = 'committed'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0, log: Path | None = None) -> None:
    """Wait until ``condition()`` holds (polling: the condition lives in another process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            shown = f"; log:\n{log.read_text(errors='replace')[-3000:]}" if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}{shown}")
        time.sleep(0.05)

