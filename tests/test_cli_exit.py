"""The ``infermill`` process ends without tearing the interpreter down (``cli.exit_fast``), yet does every
observable part of a normal exit: non-daemon threads finish, ``atexit`` handlers run, output is flushed,
and the exit code is the command's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import read_output, write_job

SCORER = '''
import atexit
import threading
import time
from pathlib import Path

MARKS = Path(__file__).with_name("marks.txt")


class _Teardown:
    def __init__(self):
        # Kept on the instance: module globals may already be None when teardown reaches this object.
        self.path, self.open = str(MARKS), open

    def __del__(self):
        with self.open(self.path, "a") as fh:
            fh.write("teardown\\n")


KEEP = _Teardown()  # finalized only when the interpreter tears its modules down


def _late_write():
    time.sleep(0.3)  # still running when the command returns
    with open(MARKS, "a") as fh:
        fh.write("thread\\n")


@atexit.register
def _at_exit():
    with open(MARKS, "a") as fh:
        fh.write("atexit\\n")


class Scorer:
    def setup(self):
        threading.Thread(target=_late_write, daemon=False).start()

    def predict(self, batch):
        return {"score": batch["x"]}
'''


def _job(tmp_path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "scorer.py").write_text(SCORER)
    pq.write_table(pa.table({"id": list(range(10)), "x": [float(i) for i in range(10)]}), tmp_path / "in.parquet")
    return write_job(
        tmp_path / "job.toml",
        """
        [input]
        path = "in.parquet"
        id_column = "id"
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        features = ["x"]
        outputs = ["score"]
        [output]
        path = "out"
        """,
    )


def _run(job: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infermill", "run", str(job)], cwd=job.parent, capture_output=True, text=True,
        timeout=120, env={**os.environ, **env},
    )


def test_run_exits_without_teardown_but_with_threads_atexit_and_output(tmp_path: Path) -> None:
    done = _run(_job(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "complete: 10 rows" in done.stdout  # printed last, flushed before the process ended
    assert len(read_output(tmp_path / "out")) == 10
    # The model's thread finished and its atexit handler ran, in that order; its module was not torn down.
    assert (tmp_path / "marks.txt").read_text().splitlines() == ["thread", "atexit"]


def test_full_exit_on_request(tmp_path: Path) -> None:
    done = _run(_job(tmp_path), INFERMILL_FULL_EXIT="1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "marks.txt").read_text().splitlines() == ["thread", "atexit", "teardown"]


def test_exit_code_is_the_commands(tmp_path: Path) -> None:
    job = _job(tmp_path)
    job.write_text(job.read_text().replace('kind = "python"', 'kind = "no-such-kind"'))
    done = _run(job)
    assert done.returncode == 2
    assert "no-such-kind" in done.stderr
