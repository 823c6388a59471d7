"""Hostile and malformed input: bad rows become dead letters of class ``input`` and the rest of the shard
is scored; encodings; compressed files; memory stays bounded on a 200 MB line and a decompression bomb."""

from __future__ import annotations

import gzip
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import infermill
from infermill.errors import InputError, JobFailedError
from infermill.sources import text
from tests.conftest import read_output, run_cli, write_job

TEXT_MODEL = '''
import numpy as np


class Model:
    """score = 2 * x + the length of the text."""

    def predict(self, batch):
        return {"score": np.asarray(batch["x"], dtype=float) * 2 + np.array([len(t) for t in batch["text"]])}
'''

ROWS = 3_000
BAD = {
    17: b'{"id": 17, "x": 1.0, "text": \n',  # bad JSON
    400: b'{"id": 400, "x": 1.0, "text": "caf\xe9"}\n',  # invalid UTF-8
    1_234: b'{"id": 1234, "x": "twelve", "text": "a"}\n',  # a value that does not fit the column
    2_999: b"[1, 2, 3]\n",  # not an object
}


def jsonl_input(path: Path) -> None:
    with path.open("wb") as out:
        for i in range(ROWS):
            out.write(BAD.get(i) or json.dumps({"id": i, "x": float(i), "text": f"row {i} é"}).encode() + b"\n")


def csv_input(path: Path) -> None:
    bad = {
        17: b"17,1.0,a,surplus\n",  # too many fields
        400: b"400,1.0,caf\xe9\n",  # invalid UTF-8
        1_234: b"1234,twelve,a\n",  # not a number
        2_999: b"2999,3.0,\xff\xfe\n",
    }
    with path.open("wb") as out:
        out.write(b"id,x,text\n")
        for i in range(ROWS):
            out.write(bad.get(i) or f"{i},{float(i)},row {i} é\n".encode())


def text_job(job_dir: Path, data: str, extra: str = "shard_bytes = 40000", batch: str = "") -> Path:
    (job_dir / "model.py").write_text(TEXT_MODEL)
    return write_job(
        job_dir / "job.toml",
        f"""
        name = "bad-input"
        [input]
        path = "{data}"
        id_column = "id"
        {extra}
        [model]
        kind = "python"
        entrypoint = "model.py:Model"
        features = ["x", "text"]
        outputs = ["score"]
        [batch]
        size = 100
        {batch}
        [output]
        path = "out"
        keep = ["text"]
        """,
    )


def dead_items(job: Path) -> list[dict[str, Any]]:
    ledger = job.parent / ".infermill" / "bad-input.sqlite"
    with sqlite3.connect(ledger) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM items WHERE state = 'dead' ORDER BY item_id").fetchall()
    return [dict(r) for r in rows]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("window", [False, True])
def test_bad_rows_are_input_dead_letters_and_the_rest_is_scored(
    tmp_path: Path, fmt: str, window: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Types come from the first 4 KiB: "twelve" in row 1,234 is then a value that does not fit (in a sample, a
    # CSV column with a word in it is a string column).
    monkeypatch.setattr(text, "SAMPLE_BYTES", 4096)
    (jsonl_input if fmt == "jsonl" else csv_input)(tmp_path / f"data.{fmt}")
    job = text_job(tmp_path, f"data.{fmt}", batch="sort_window = 700" if window else "")
    result = infermill.run(job)
    assert result.state == "complete"
    assert (result.rows_succeeded, result.rows_failed) == (ROWS - 4, 4)

    out = read_output(tmp_path / "out")  # readable: no invalid UTF-8 was written
    assert sorted(out.column("id").to_pylist()) == [i for i in range(ROWS) if i not in BAD]
    assert all(t.startswith("row ") for t in out.column("text").to_pylist())

    report = infermill.failures(job)
    assert [(g["error_class"], g["error_kind"], g["count"]) for g in report["groups"]] == [("InputError", "input", 4)]
    dead = dead_items(job)
    assert len({d["message"].split("the row at byte ")[1].split(":")[0] for d in dead}) == 4
    assert all(f"data.{fmt}: the row at byte" in d["message"] for d in dead)
    # Ids: parsed from the row where it can be, else the file and byte offset.
    ids = {d["item_id"] for d in dead}
    if fmt == "csv":
        assert ids == {"17", "400", "1234", "2999"}
    else:
        assert {"400", "1234"} < ids and sum(i.startswith("data.jsonl@") for i in ids) == 2

    # A retry does not crash on them: they fail again as input errors until the file is fixed.
    again = infermill.retry(job)
    assert (again.rows_succeeded, again.rows_failed) == (ROWS - 4, 4)
    assert [(g["error_class"], g["count"]) for g in infermill.failures(job)["groups"]] == [("InputError", 4)]
    assert sorted(read_output(tmp_path / "out").column("id").to_pylist()) == [i for i in range(ROWS) if i not in BAD]


def test_row_positions_account_for_every_row(tmp_path: Path) -> None:
    """Dead and scored rows together are every input row once, at their own positions in the shard."""
    jsonl_input(tmp_path / "data.jsonl")
    job = text_job(tmp_path, "data.jsonl")
    infermill.run(job)
    ledger = tmp_path / ".infermill" / "bad-input.sqlite"
    with sqlite3.connect(ledger) as conn:
        shards = conn.execute("SELECT shard_id, rows_out, rows_failed FROM shards ORDER BY ordinal").fetchall()
        dead = conn.execute("SELECT shard_id, row_index FROM items WHERE state = 'dead'").fetchall()
    assert len(shards) > 1 and sum(r[1] + r[2] for r in shards) == ROWS
    # Rows are numbered 0.. in file order, so a row's number is its shard's first number plus its position.
    firsts: dict[str, int] = {}
    offset = 0
    for shard_id, rows_out, rows_failed in shards:
        firsts[shard_id] = offset
        offset += rows_out + rows_failed
    assert sorted(firsts[s] + r for s, r in dead) == sorted(BAD)


def test_non_utf8_header_is_a_clear_input_error(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_bytes("id,x,text,café\n1,1.0,a,b\n".encode("latin-1"))
    job = text_job(tmp_path, "data.csv")
    done = run_cli("run", str(job), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "header line of" in done.stderr and "is not valid utf-8" in done.stderr
    assert 'encoding = "latin-1"' in done.stderr
    assert "unexpected error" not in done.stderr


def test_encoding_latin1(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_bytes("id,x,text\n1,1.0,crème\n2,2.0,ça\n".encode("latin-1"))
    job = text_job(tmp_path, "data.csv", extra='encoding = "latin-1"\nshard_bytes = 40000')
    assert infermill.run(job).rows_succeeded == 2
    assert sorted(read_output(tmp_path / "out").column("text").to_pylist()) == ["crème", "ça"]


def test_compressed_input_runs(tmp_path: Path) -> None:
    jsonl_input(tmp_path / "plain.jsonl")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl.gz").write_bytes(gzip.compress((tmp_path / "plain.jsonl").read_bytes()))
    job = text_job(tmp_path, "data")
    result = infermill.run(job)
    assert (result.rows_succeeded, result.rows_failed) == (ROWS - 4, 4)
    assert all("decompressed byte" in d["message"] for d in dead_items(job))


def write_bomb(path: Path, gib: float = 1.0) -> None:
    """A gzip of ``gib`` GiB of zeros after one good row, written streaming (about 1 MB on disk)."""
    zeros = bytes(8 << 20)
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(b'{"id": 1, "x": 1.0, "text": "a"}\n')
        for _ in range(int(gib * 1024 / 8)):
            out.write(zeros)


def test_decompression_bomb_fails_its_shard_with_a_matching_hint(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text('{"id": 0, "x": 1.0, "text": "a"}\n')
    write_bomb(tmp_path / "data" / "b.jsonl.gz", gib=0.125)
    job = text_job(tmp_path, "data", extra="max_decompressed_bytes = 50_000_000")
    with pytest.raises(JobFailedError) as info:
        infermill.run(job)
    assert "b.jsonl.gz expands to more than 50,000,000 bytes" in info.value.message
    assert "raise [input] max_decompressed_bytes" in (info.value.hint or "")
    assert "fix the cause and rerun" not in str(info.value)
    # Alone, the bomb is found while the column types are inferred: the same words, before any work.
    (tmp_path / "data" / "a.jsonl").unlink()
    with pytest.raises(InputError, match=r"b\.jsonl\.gz expands to more than 50,000,000 bytes"):
        infermill.run(job)


PEAK_RSS_LIMIT = 600 << 20


PEAK_REPORTER = """
import atexit, sys
from infermill.cli import main

def report():
    # VmHWM is the peak of this process's own memory since it started this program; ru_maxrss would also
    # count the pytest process it was forked from (Linux carries that high-water mark across exec).
    with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")))

atexit.register(report)
sys.exit(main(sys.argv[2:]))
"""


def peak_rss_of_run(job: Path, cwd: Path) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run the job in a child process (the real CLI); the child's peak resident memory in bytes."""
    report = cwd / "peak.txt"
    done = subprocess.run(
        [sys.executable, "-c", PEAK_REPORTER, str(report), "run", str(job)],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    kib = int(report.read_text().split()[1])  # "VmHWM:   123456 kB"
    return kib * 1024, done


def test_a_200_mb_line_stays_under_600_mib(tmp_path: Path) -> None:
    piece = b"x" * (8 << 20)
    with (tmp_path / "data.csv").open("wb") as out:
        out.write(b"id,x,text\n1,1.0,a\n2,2.0,")
        for _ in range(25):
            out.write(piece)
        out.write(b"\n3,3.0,c\n")
    job = text_job(tmp_path, "data.csv", extra="")
    started = time.monotonic()
    peak, done = peak_rss_of_run(job, tmp_path)
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    (dead,) = dead_items(job)
    assert "longer than 16,777,216 bytes ([input] max_row_bytes)" in dead["message"]
    assert sorted(pq.read_table(tmp_path / "out").column("id").to_pylist()) == [1, 3]


@pytest.fixture(scope="module")
def gib_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB of zeros after one good row, gzipped to about 1 MB (written once for the tests below)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.jsonl.gz"
    write_bomb(path)
    assert path.stat().st_size < 2 << 20
    return path


def test_a_1_gib_bomb_stays_under_600_mib(tmp_path: Path, gib_bomb: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text('{"id": 0, "x": 1.0, "text": "a"}\n')
    (tmp_path / "data" / "b.jsonl.gz").symlink_to(gib_bomb)
    job = text_job(tmp_path, "data", extra="max_decompressed_bytes = 1_000_000_000")
    peak, done = peak_rss_of_run(job, tmp_path)
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    assert done.returncode == 1, done.stderr
    assert "expands to more than 1,000,000,000 bytes" in done.stderr


def test_a_1_gib_bomb_under_the_default_cap_is_one_long_row(tmp_path: Path, gib_bomb: Path) -> None:
    """Under the default cap (64 GiB) the gigabyte of zeros is read as a stream: one row too long."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "b.jsonl.gz").symlink_to(gib_bomb)
    job = text_job(tmp_path, "data", extra="")
    peak, done = peak_rss_of_run(job, tmp_path)
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    assert done.returncode == 0, done.stderr
    (dead,) = dead_items(job)
    assert "max_row_bytes" in dead["message"]


def test_failures_says_what_to_do_with_input_rows(tmp_path: Path) -> None:
    jsonl_input(tmp_path / "data.jsonl")
    job = text_job(tmp_path, "data.jsonl")
    infermill.run(job)
    done = run_cli("failures", str(job), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "InputError  input" in done.stdout
    assert "then rerun: infermill run JOB (it recomputes the fixed files' shards)" in done.stdout
    assert "infermill retry JOB" not in done.stdout  # a retry reads the same bytes: it cannot help


def test_auto_batch_size_probes_only_readable_rows(tmp_path: Path) -> None:
    jsonl_input(tmp_path / "data.jsonl")
    job = text_job(tmp_path, "data.jsonl")
    job.write_text(job.read_text().replace("size = 100", 'size = "auto"'))
    result = infermill.run(job)
    assert (result.rows_succeeded, result.rows_failed) == (ROWS - 4, 4)
