"""Progress: totals and ETAs, estimated from bytes for CSV and JSONL and refined as shards commit."""

from __future__ import annotations

import io
import re
from pathlib import Path

import infermill
from infermill.observe.estimate import RowEstimate, sample_rows_per_byte
from infermill.observe.progress import ProgressReporter
from infermill.sources import open_source
from infermill.testing.sources import source_spec
from tests.conftest import write_job, write_parquet_files


def _csv(path: Path, short: int, long: int) -> int:
    """``short`` rows of a few bytes, then ``long`` rows of about 200: a first sample misjudges the rest."""
    with path.open("w") as fh:
        fh.write("customer_id,f0,f1,f2\n")
        for i in range(short):
            fh.write(f"{i},0.5,1,2\n")
        for i in range(short, short + long):
            fh.write(f"{i},{'1' * 60}.5,{'2' * 60},{'3' * 60}\n")
    return short + long


def test_the_estimate_is_refined_by_every_commit_and_exact_at_the_end(tmp_path: Path) -> None:
    rows = _csv(tmp_path / "data.csv", 3_000, 3_000)
    source = open_source(source_spec(str(tmp_path / "data.csv"), shard_bytes=100_000))
    shards = source.plan()
    assert len(shards) > 3 and all(s.rows is None for s in shards)
    estimate = RowEstimate.of_plan(shards, {}, sample=lambda: sample_rows_per_byte(source, shards[0]))
    assert estimate is not None and not estimate.exact
    first = estimate.total()
    assert first is not None and first > 2 * rows  # the head of the file has short rows only
    errors = []
    for shard in reversed(shards):  # long rows first: the estimate must come down towards the truth
        count = sum(batch.num_rows for batch in source.read(shard, 1_000))
        estimate.commit(shard.shard_id, count)
        total = estimate.total()
        assert total is not None
        errors.append(abs(total - rows))
    assert errors[0] < abs(first - rows)
    assert estimate.exact and estimate.total() == rows == errors[-1] + rows


def test_rows_committed_by_an_earlier_run_count_before_anything_is_sampled(tmp_path: Path) -> None:
    rows = _csv(tmp_path / "data.csv", 0, 2_000)
    source = open_source(source_spec(str(tmp_path / "data.csv"), shard_bytes=50_000))
    shards = source.plan()
    done = {shards[0].shard_id: sum(b.num_rows for b in source.read(shards[0], 1_000))}
    estimate = RowEstimate.of_plan(shards, done, sample=lambda: 1 / 0)  # never needed: a shard is known
    assert estimate is not None
    total = estimate.total()
    assert total is not None and abs(total - rows) < 0.05 * rows


def test_parquet_needs_no_estimate(tmp_path: Path) -> None:
    write_parquet_files(tmp_path / "data", 1_000, 2)
    shards = open_source(source_spec(str(tmp_path / "data"))).plan()
    assert RowEstimate.of_plan(shards, {}) is None  # the footers give the exact total


def test_a_log_line_shows_an_estimated_total_and_eta() -> None:
    stream = io.StringIO()
    estimate = RowEstimate({"a": 1_000, "b": 1_000}, {}, sample=lambda: 0.5)
    reporter = ProgressReporter(
        job="j", rows_total=None, shards_total=2, mode="log", interval=0.0, stream=stream, estimate=estimate
    )
    reporter.advance(400)
    reporter.shard_done("a", 400)
    reporter.advance(600)
    reporter.shard_done("b", 600)
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[j] 400/~1,000 rows, ")  # 0.5 rows per byte of the sample
    assert re.search(r"ETA \d+:\d\d:\d\d$", lines[0])
    assert lines[1].startswith("[j] 400/~800 rows, ")  # 400 rows in a's 1,000 bytes: b holds ~400 more
    assert lines[2].startswith("[j] 1,000/~1,000 rows, ")  # never less than the rows already done
    assert lines[3].startswith("[j] 1,000/1,000 rows, ") and lines[3].endswith("ETA -")


def test_a_csv_run_reports_a_total_and_an_eta(job_dir: Path, capsys) -> None:
    rows = _csv(job_dir / "data.csv", 4_000, 0)
    job = write_job(job_dir / "job.toml", """
        name = "scores"
        [input]
        path = "data.csv"
        id_column = "customer_id"
        shard_bytes = 20000
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        outputs = ["score"]
        [batch]
        size = 500
        [output]
        path = "out"
        [runtime]
        progress_interval = 0
        """)
    result = infermill.run(job, progress="log")
    assert result.rows_succeeded == rows
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[scores] ")]
    assert len(lines) > 4
    assert all(re.match(r"\[scores\] [\d,]+/~?[\d,]+ rows, ", line) for line in lines), lines
    assert re.search(r"/~[\d,]+ rows, .* ETA \d+:\d\d:\d\d$", lines[0]), lines[0]
    assert lines[-1].startswith(f"[scores] {rows:,}/{rows:,} rows, ")


def test_the_bar_gets_the_estimated_total() -> None:
    stream = io.StringIO()
    estimate = RowEstimate({"a": 1_000, "b": 1_000}, {}, sample=lambda: 0.5)
    reporter = ProgressReporter(job="j", rows_total=None, shards_total=2, mode="bar", stream=stream, estimate=estimate)
    reporter.advance(400)
    reporter.shard_done("a", 400)
    reporter.advance(600)
    reporter.shard_done("b", 600)
    reporter.close()
    assert re.search(r"100% 1,000/1,000 rows .* shards 2/2", stream.getvalue())


def test_no_rows_per_byte_guess_from_compressed_bytes(tmp_path: Path) -> None:
    import gzip
    import random

    rng = random.Random(3)
    lines = "".join(f"{rng.getrandbits(128):032x}\n" for _ in range(5_000))  # compresses poorly: many b"\n"
    (tmp_path / "data.csv.gz").write_bytes(gzip.compress(f"k\n{lines}".encode()))
    source = open_source(source_spec(str(tmp_path / "data.csv.gz")))
    assert sample_rows_per_byte(source, source.plan()[0]) is None
