"""Per-item fault tolerance: bisection, dead letters, transient retries, OOM splits, budgets, retry runs."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import infermill
from infermill.cli import main
from infermill.engine.breaker import FailureStreak
from infermill.engine.scoring import DeadItem
from infermill.errors import JobFailedError, ModelFailedError, SpecError
from infermill.models.python import PythonModel
from tests.conftest import read_output, write_job

ROWS = 10_000
POISON_KINDS = ("NaNError", "TypeError", "UnicodeDecodeError", "OversizeError", "RuntimeError")

PICKY_MODEL = '''
import os
import numpy as np
from infermill import ItemError


class NaNError(ItemError):
    pass


class OversizeError(ItemError):
    pass


class Picky:
    """Refuses NaN, non-numeric text, invalid UTF-8, oversize values and rows flagged to explode."""

    def predict(self, batch):
        if np.isnan(batch["x"]).any():
            raise NaNError("x is NaN; the model needs a number")
        values = []
        for text in batch["v"]:
            if not text.replace(".", "", 1).lstrip("-").isdigit():
                raise TypeError(f"expected a number as text, got {text!r}")
            values.append(float(text))
        for raw in batch["text"]:
            raw.decode("utf-8")
            if len(raw) > 1000:
                raise OversizeError(f"text of {len(raw)} bytes is over the 1000-byte limit")
        if os.environ.get("PICKY_FIXED") != "1" and batch["explode"].any():
            raise RuntimeError("the model exploded on this row")
        return {"score": batch["x"] * 2 + np.array(values)}
'''


def poisoned_table() -> tuple[pa.Table, dict[int, str]]:
    """10,000 rows; 100 poisoned per kind (500 in all), spread over the input."""
    rng = np.random.default_rng(7)
    ids = np.arange(ROWS, dtype=np.int64)
    x = rng.normal(size=ROWS)
    v = [f"{i % 50}.5" for i in range(ROWS)]
    text = [f"document {i}".encode() for i in range(ROWS)]
    explode = np.zeros(ROWS, dtype=bool)
    poisoned: dict[int, str] = {}
    rows = rng.choice(ROWS, size=500, replace=False)
    for n, row in enumerate(rows):
        kind = POISON_KINDS[n % 5]
        poisoned[int(row)] = kind
        if kind == "NaNError":
            x[row] = np.nan
        elif kind == "TypeError":
            v[row] = "twelve"
        elif kind == "UnicodeDecodeError":
            text[row] = b"\xff\xfe bad \xc3\x28"
        elif kind == "OversizeError":
            text[row] = b"y" * 5_000
        else:
            explode[row] = True
    table = pa.table({"id": ids, "x": x, "v": v, "text": pa.array(text, pa.binary()), "explode": explode})
    return table, poisoned


def picky_job(directory: Path, extra: str = "", batch: int = 512) -> tuple[Path, pa.Table, dict[int, str]]:
    table, poisoned = poisoned_table()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table.slice(0, 6_000), directory / "data" / "a.parquet", row_group_size=1_000)
    pq.write_table(table.slice(6_000), directory / "data" / "b.parquet", row_group_size=1_000)
    (directory / "picky.py").write_text(PICKY_MODEL)
    job = write_job(
        directory / "job.toml",
        f"""
        name = "picky"
        [input]
        path = "data/"
        id_column = "id"
        shard_rows = 2000
        [model]
        kind = "python"
        entrypoint = "picky.py:Picky"
        features = ["x", "v", "text", "explode"]
        outputs = ["score"]
        [batch]
        size = {batch}
        [output]
        path = "out"
        """ + textwrap.dedent(extra),
    )
    return job, table, poisoned


def dead_letters(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "_errors").glob("part-*.parquet"))])


def test_500_poisoned_rows_of_10000(tmp_path: Path) -> None:
    job, table, poisoned = picky_job(tmp_path)
    result = infermill.run(job, progress="off")
    assert result.state == "complete"
    assert (result.rows_succeeded, result.rows_failed) == (9_500, 500)
    out = read_output(tmp_path / "out")
    errors = dead_letters(tmp_path / "out")
    assert out.num_rows == 9_500 and errors.num_rows == 500
    scored_ids = set(out.column("id").to_pylist())
    dead_ids = set(errors.column("id").to_pylist())
    assert scored_ids.isdisjoint(dead_ids)
    assert scored_ids | dead_ids == set(range(ROWS))
    assert dead_ids == set(poisoned)
    # Every dead letter carries the error class its poison causes, its input values and a traceback.
    by_id = {r["id"]: r for r in errors.to_pylist()}
    for row, kind in poisoned.items():
        assert by_id[row]["_error_class"] == kind, (row, by_id[row]["_error_message"])
        assert by_id[row]["_error_kind"] == "item"
        assert "Traceback" in by_id[row]["_error_traceback"]
    assert set(errors.column_names) >= {"x", "v", "text", "explode", "_attempts", "_row"}
    # Good rows are scored exactly as a clean model would.
    good = table.filter(pc.invert(pc.is_in(table.column("id"), pa.array(sorted(poisoned)))))
    expected = good.column("x").to_numpy() * 2 + np.array([float(t) for t in good.column("v").to_pylist()])
    np.testing.assert_allclose(out.sort_by("id").column("score").to_numpy(), expected)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert (manifest["rows_total"], manifest["rows_failed"]) == (9_500, 500)
    # The ledger knows each dead item, grouped by class.
    groups = {g["error_class"]: g["count"] for g in infermill.failures(job)["groups"]}
    assert groups == dict.fromkeys(POISON_KINDS, 100)


def test_failures_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job, _, _ = picky_job(tmp_path)
    assert main(["run", str(job), "-q"]) == 0
    capsys.readouterr()
    assert main(["failures", str(job)]) == 0
    out = capsys.readouterr().out
    assert "picky: 500 dead-lettered items" in out
    for kind in POISON_KINDS:
        assert kind in out
    assert main(["failures", str(job), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows_failed"] == 500 and len(info["items"]) == 20
    assert main(["status", str(job), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["state"], status["rows_succeeded"], status["rows_failed"]) == ("complete", 9_500, 500)


def test_error_budget_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job, _, _ = picky_job(tmp_path, "[errors]\nmax_failed_rows = 499\n")
    assert main(["run", str(job), "-q"]) == 1
    err = capsys.readouterr().err
    assert "error budget exceeded" in err and "more than errors.max_failed_rows = 499" in err
    assert not (tmp_path / "out" / "_manifest.json").exists()
    assert infermill.status(job)["state"] == "failed"
    # Nothing changed, so a rerun fails the same way rather than claiming success.
    assert main(["run", str(job), "-q"]) == 1


def test_error_budget_fraction(tmp_path: Path) -> None:
    job, _, _ = picky_job(tmp_path, "[errors]\nmax_failed_fraction = 0.04\n")
    with pytest.raises(JobFailedError, match=r"more than errors.max_failed_fraction = 0.04"):
        infermill.run(job, progress="off")
    job.write_text(job.read_text().replace("0.04", "0.05"))  # the budget is not part of the fingerprint
    assert infermill.run(job, progress="off").rows_failed == 500


def test_no_input_values_in_dead_letters_when_asked(tmp_path: Path) -> None:
    job, _, _ = picky_job(tmp_path, "[errors]\ninclude_input = false\n")
    infermill.run(job, progress="off")
    errors = dead_letters(tmp_path / "out")
    assert "x" not in errors.column_names and "text" not in errors.column_names


def test_retry_merges_fixed_items_without_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, table, poisoned = picky_job(tmp_path)
    infermill.run(job, progress="off")
    # Keyed by shard: a retry commits a shard's file under its own attempt's name (part-00001-a2.parquet).
    before = {p.name.split("-a")[0]: pq.read_table(p) for p in (tmp_path / "out").glob("part-*.parquet")}
    monkeypatch.setenv("PICKY_FIXED", "1")  # the "fixed model": rows flagged to explode now score
    result = infermill.retry(job)
    assert (result.rows_succeeded, result.rows_failed) == (9_600, 400)
    out = read_output(tmp_path / "out")
    ids = out.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 9_600
    fixed = {r for r, k in poisoned.items() if k == "RuntimeError"}
    assert fixed <= set(ids)
    # Each rewritten file is still in input order.
    for path in (tmp_path / "out").glob("part-*.parquet"):
        file_ids = pq.read_table(path).column("id").to_pylist()
        assert file_ids == sorted(file_ids)
        assert set(file_ids) >= set(before[path.name.split("-a")[0]].column("id").to_pylist())
    dead_ids = set(dead_letters(tmp_path / "out").column("id").to_pylist())
    assert dead_ids == set(poisoned) - fixed
    groups = {g["error_class"]: g["count"] for g in infermill.failures(job)["groups"]}
    assert "RuntimeError" not in groups and sum(groups.values()) == 400
    db = sqlite3.connect(tmp_path / ".infermill" / "picky.sqlite")
    assert db.execute("SELECT COUNT(*) FROM items WHERE state = 'resolved'").fetchone()[0] == 100
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert (manifest["rows_total"], manifest["rows_failed"]) == (9_600, 400)
    # A second retry changes nothing: the remaining items fail again, nothing is duplicated.
    again = infermill.retry(job)
    assert (again.rows_succeeded, again.rows_failed) == (9_600, 400)
    assert read_output(tmp_path / "out").num_rows == 9_600


def test_retry_cli_with_nothing_to_retry(parquet_job, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job()
    assert main(["run", str(job), "-q"]) == 0
    assert main(["retry", str(job)]) == 0
    assert "nothing to retry" in capsys.readouterr().out


FLAKY_MODEL = '''
import random
from infermill import TransientError


class Flaky:
    def setup(self):
        self.rng = random.Random(42)
        self.calls = 0

    def predict(self, batch):
        self.calls += 1
        if self.rng.random() < 0.2:
            raise TransientError("model server busy (simulated)")
        return {"score": batch["f0"] + batch["f1"]}
'''


def test_transient_failures_are_retried_until_every_item_scores(parquet_job, job_dir: Path) -> None:
    job, table = parquet_job(rows=20_000, batch=500, extra="[retry]\nmax_attempts = 8\nbackoff_seconds = 0.001\n")
    (job_dir / "flaky.py").write_text(FLAKY_MODEL)
    job.write_text(job.read_text().replace("scorer.py:Scorer", "flaky.py:Flaky"))
    result = infermill.run(job, progress="off")
    assert (result.rows_succeeded, result.rows_failed) == (20_000, 0)
    out = read_output(job_dir / "out").sort_by("customer_id")
    np.testing.assert_allclose(
        out.column("score").to_numpy(), table.column("f0").to_numpy() + table.column("f1").to_numpy()
    )
    db = sqlite3.connect(job_dir / ".infermill" / "scores.sqlite")
    retries = sum(json.loads(s)["retries"] for (s,) in db.execute("SELECT stats FROM shards"))
    assert retries > 0


def test_transient_errors_past_max_attempts_are_dead_lettered(parquet_job, job_dir: Path) -> None:
    (job_dir / "down.py").write_text(
        "from infermill import TransientError\n"
        "def predict(batch):\n    raise TransientError('connection refused (simulated)')\n"
    )
    job, _ = parquet_job(rows=2_000, files=1, shard_rows=1_000,
                         extra="[retry]\nmax_attempts = 2\nbackoff_seconds = 0.001\n")
    job.write_text(job.read_text().replace("scorer.py:Scorer", "down.py:predict"))
    # Two batches: too few to stop early as a model failure, so every row is dead-lettered; then, no row
    # having been scored and no budget set, the job is failed rather than complete.
    with pytest.raises(JobFailedError, match="no row was scored: all 2,000 rows failed"):
        infermill.run(job, progress="off")
    assert infermill.status(job)["rows_failed"] == 2_000
    errors = dead_letters(job_dir / "out")
    assert set(errors.column("_error_kind").to_pylist()) == {"transient"}
    assert set(errors.column("_attempts").to_pylist()) == {2}


OOM_MODEL = '''
class Big:
    """Runs out of memory on batches over 64 rows, and on row 1234 whatever the batch."""

    def predict(self, batch):
        if len(batch["f0"]) > 64 or 1234 in batch["customer_id"]:
            raise MemoryError("cannot allocate (simulated)")
        return {"score": batch["f0"] * 0.5 + batch["f1"] - batch["f2"] * 0.25}
'''


def test_oom_splits_batches_and_grows_back(parquet_job, job_dir: Path) -> None:
    job, table = parquet_job(rows=8_000, files=2, shard_rows=2_000, batch=512)
    (job_dir / "big.py").write_text(OOM_MODEL)
    job.write_text(
        job.read_text()
        .replace("scorer.py:Scorer", "big.py:Big")
        .replace('features = ["f0", "f1", "f2"]', 'features = ["customer_id", "f0", "f1", "f2"]')
    )
    result = infermill.run(job, progress="off")
    assert (result.rows_succeeded, result.rows_failed) == (7_999, 1)
    out = read_output(job_dir / "out").sort_by("customer_id")
    clean = table.filter(pc.not_equal(table.column("customer_id"), 1234))
    assert out.column("customer_id").equals(clean.column("customer_id"))
    f0, f1, f2 = (clean.column(c).to_numpy() for c in ("f0", "f1", "f2"))
    np.testing.assert_allclose(out.column("score").to_numpy(), f0 * 0.5 + f1 - f2 * 0.25)
    db = sqlite3.connect(job_dir / ".infermill" / "scores.sqlite")
    stats = [json.loads(s) for (s,) in db.execute("SELECT stats FROM shards ORDER BY ordinal")]
    assert stats[0]["oom_splits"] >= 3  # 512 -> 256 -> 128 -> 64
    # The size grows back after a run of good calls, meets the limit again and splits again.
    assert all(s["oom_splits"] >= 1 for s in stats[1:])
    assert all(s["min_batch"] <= 64 for s in stats)
    (dead,) = dead_letters(job_dir / "out").to_pylist()
    assert (dead["customer_id"], dead["_error_kind"], dead["_error_class"]) == (1234, "oom", "MemoryError")


def test_fatal_model_error_stops_the_job(parquet_job, job_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (job_dir / "locked.py").write_text(
        "def predict(batch):\n    raise PermissionError('credentials refused by the feature store')\n"
    )
    job, _ = parquet_job()
    job.write_text(job.read_text().replace("scorer.py:Scorer", "locked.py:predict"))
    assert main(["run", str(job), "-q"]) == 1
    assert "credentials refused by the feature store" in capsys.readouterr().err
    assert infermill.status(job)["state"] == "failed"
    assert not list((job_dir / "out").glob("_errors/*"))


BROKEN_MODELS = {
    # An environment problem: every call fails the same way, and as an item error each batch is bisected.
    "import": (
        "def predict(batch):\n"
        "    _count()\n"
        "    import not_installed_lib  # noqa: F401\n",
        "ModuleNotFoundError", "No module named 'not_installed_lib'",
    ),
    # A model server answering 503 to everything: retried, then the whole batch is dead-lettered.
    "server": (
        "from infermill import TransientError\n"
        "def predict(batch):\n"
        "    _count()\n"
        "    raise TransientError('model server answered 503 Service Unavailable')\n",
        "TransientError", "model server answered 503 Service Unavailable",
    ),
}
COUNTING = "import os\ndef _count():\n    with open(os.environ['CALLS_FILE'], 'a') as f:\n        f.write('.')\n"


def broken_job(parquet_job, job_dir: Path, model: str, extra: str = "", workers: int = 1) -> Path:
    """20,000 rows in 40 batches of 500 (5 shards of 4,000 rows), scored by a model that fails every call."""
    job, _ = parquet_job(rows=20_000, files=4, shard_rows=4_000, batch=500, workers=workers,
                         extra="[retry]\nmax_attempts = 2\nbackoff_seconds = 0.001\n" + extra)
    (job_dir / "broken.py").write_text(COUNTING + BROKEN_MODELS[model][0])
    job.write_text(job.read_text().replace("scorer.py:Scorer", "broken.py:predict"))
    return job


@pytest.mark.parametrize(("workers", "lanes"), [(1, 1), (1, 3), (2, 1)], ids=["inline", "lanes", "processes"])
@pytest.mark.parametrize("model", sorted(BROKEN_MODELS))
def test_a_model_failing_every_row_stops_early_as_a_model_failure(
    parquet_job, job_dir: Path, monkeypatch: pytest.MonkeyPatch, model: str, workers: int, lanes: int
) -> None:
    calls = job_dir / "calls.txt"
    monkeypatch.setenv("CALLS_FILE", str(calls))
    monkeypatch.setattr(PythonModel, "lanes", lambda self: lanes)  # batches scored side by side, handed on in order
    job = broken_job(parquet_job, job_dir, model, workers=workers)
    with pytest.raises(ModelFailedError) as info:
        infermill.run(job, progress="off")
    _, error_class, message = BROKEN_MODELS[model]
    # The model's error crosses the worker process boundary with its class and message.
    assert (info.value.error_class, info.value.error_message) == (error_class, message)
    assert f"every row of 3 consecutive batches (1,500 rows) failed with the same error, {error_class}: {message}" in (
        str(info.value)
    )
    assert isinstance(info.value, JobFailedError) and info.value.exit_code == 1
    # Stopped after about 3 batches per worker (and the batches its other lanes had in hand), not after
    # bisecting all 40 (39,960 calls) or retrying them (80). A batch with none queued behind it may be cut
    # into one piece per lane (idle lanes), each piece called and retried on its own.
    per_batch = 999 if model == "import" else 2
    assert len(calls.read_text()) <= (4 + lanes) * per_batch * workers * lanes
    assert not (job_dir / "out" / "_manifest.json").exists()
    status = infermill.status(job)
    assert status["state"] == "failed"
    assert "model failure" in status["last_run"]["message"]


def test_model_failure_keeps_committed_shards_and_a_rerun_resumes(
    parquet_job, job_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job, table = parquet_job(rows=20_000, files=4, shard_rows=4_000, batch=500)
    # The model's server goes down after the first two shards (ids 0-7,999) were scored.
    (job_dir / "down.py").write_text(
        "import os\n"
        "def predict(batch):\n"
        "    if os.environ.get('SERVER_UP') != '1' and batch['customer_id'].max() >= 8_000:\n"
        "        raise RuntimeError('model server returned HTTP 500: internal error')\n"
        "    return {'score': batch['f0'] * 0.5 + batch['f1'] - batch['f2'] * 0.25}\n"
    )
    job.write_text(
        job.read_text()
        .replace("scorer.py:Scorer", "down.py:predict")
        .replace('features = ["f0", "f1", "f2"]', 'features = ["customer_id", "f0", "f1", "f2"]')
    )
    assert main(["run", str(job), "-q"]) == 1
    err = capsys.readouterr().err
    assert (
        "error: model failure: every row of 3 consecutive batches (1,500 rows) failed with the same error, "
        "RuntimeError: model server returned HTTP 500: internal error"
    ) in err
    assert f"hint: fix the model and rerun the same command: committed shards are kept (`infermill validate {job}`" \
        in err
    status = infermill.status(job)
    assert (status["state"], status["shards_committed"], status["rows_succeeded"]) == ("failed", 2, 8_000)
    assert status["rows_failed"] == 0  # the broken shard's dead letters were not committed
    assert not (job_dir / "out" / "_manifest.json").exists()
    monkeypatch.setenv("SERVER_UP", "1")  # the fix
    assert main(["run", str(job), "-q"]) == 0
    out = read_output(job_dir / "out").sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(20_000))
    assert infermill.status(job)["rows_failed"] == 0


def test_model_failure_message_names_the_error_and_a_command_that_reproduces_it(
    parquet_job, job_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALLS_FILE", str(job_dir / "calls.txt"))
    job = broken_job(parquet_job, job_dir, "import")
    assert main(["run", str(job), "-q"]) == 1
    err = capsys.readouterr().err
    assert (
        "error: model failure: every row of 3 consecutive batches (1,500 rows) failed with the same error, "
        "ModuleNotFoundError: No module named 'not_installed_lib'; stopped rather than dead-letter the whole input"
    ) in err
    assert f"hint: fix the model and rerun the same command: committed shards are kept (`infermill validate {job}`" \
        in err
    assert "stop_after_identical_batch_failures = 0" in err
    assert main(["validate", str(job)]) == 2
    assert "ModuleNotFoundError: No module named 'not_installed_lib'" in capsys.readouterr().err


def test_zero_disables_the_model_failure_stop(parquet_job, job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLS_FILE", str(job_dir / "calls.txt"))
    job = broken_job(
        parquet_job, job_dir, "server",
        extra="[errors]\nstop_after_identical_batch_failures = 0\nmax_failed_fraction = 1.0\n",
    )
    result = infermill.run(job, progress="off")
    assert (result.state, result.rows_succeeded, result.rows_failed) == ("complete", 0, 20_000)
    assert (job_dir / "out" / "_manifest.json").exists()  # a budget that accepts every failure was set


def test_a_job_in_which_no_row_succeeded_fails(
    parquet_job, job_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each row fails with its own message: bad data as far as the engine can tell, so no early stop.
    (job_dir / "strict.py").write_text(
        "import os\n"
        "from infermill import ItemError\n"
        "def predict(batch):\n"
        "    if os.environ.get('STRICT_FIXED') != '1':\n"
        "        raise ItemError(f'customer {batch[\"customer_id\"][0]} has no contract')\n"
        "    return {'score': batch['f0'] * 0.5 + batch['f1'] - batch['f2'] * 0.25}\n"
    )
    job, _ = parquet_job(rows=2_000, files=2, shard_rows=1_000, batch=250)
    job.write_text(
        job.read_text()
        .replace("scorer.py:Scorer", "strict.py:predict")
        .replace('features = ["f0", "f1", "f2"]', 'features = ["customer_id", "f0", "f1", "f2"]')
    )
    assert main(["run", str(job), "-q"]) == 1
    err = capsys.readouterr().err
    assert "error: no row was scored: all 2,000 rows failed; 2,000 with ItemError, e.g. customer 0 has no " \
        "contract" in err
    assert f"hint: fix the model or data, then run `infermill retry {job}`" in err
    assert not (job_dir / "out" / "_manifest.json").exists()
    status = infermill.status(job)
    assert (status["state"], status["shards_committed"], status["rows_failed"]) == ("failed", 2, 2_000)
    # Nothing changed, so a rerun fails the same way rather than claiming success.
    assert main(["run", str(job), "-q"]) == 1
    assert "no row was scored" in capsys.readouterr().err
    # So does a retry with the model still broken...
    assert main(["retry", str(job)]) == 1
    assert "no row was scored" in capsys.readouterr().err
    assert not (job_dir / "out" / "_manifest.json").exists()
    # ...and the hint's command, once the model is fixed, completes the job.
    monkeypatch.setenv("STRICT_FIXED", "1")
    assert main(["retry", str(job)]) == 0
    assert read_output(job_dir / "out").num_rows == 2_000
    assert infermill.status(job)["state"] == "complete"


def _dead(rows: int, message: str = "boom", error_class: str = "RuntimeError") -> list[DeadItem]:
    return [DeadItem(row, "item", error_class, message, "", 1) for row in range(rows)]


def test_failure_streak_counts_only_identical_whole_batch_failures() -> None:
    streak = FailureStreak(limit=3)
    assert streak.observe(100, _dead(100)) is None
    assert streak.observe(100, _dead(99)) is None  # one row scored: the streak starts over
    assert streak.observe(100, _dead(100)) is None
    assert streak.observe(100, _dead(100)) is None
    assert streak.observe(100, _dead(100, "other message")) is None  # another error: a new streak
    assert streak.observe(100, _dead(100, "other message")) is None
    assert streak.observe(0, []) is None  # an empty batch neither counts nor breaks the streak
    mixed = _dead(50) + [DeadItem(row, "item", "RuntimeError", "bang", "", 1) for row in range(50, 100)]
    assert streak.observe(100, mixed) is None  # bad rows failing in different ways: data, not the model
    assert streak.observe(10, _dead(10)) is None
    assert streak.observe(10, _dead(10)) is None
    error = streak.observe(10, _dead(10))
    assert isinstance(error, ModelFailedError)
    assert (error.error_class, error.error_message) == ("RuntimeError", "boom")
    assert "every row of 3 consecutive batches (30 rows)" in error.message
    disabled = FailureStreak(limit=0)
    assert all(disabled.observe(10, _dead(10)) is None for _ in range(10))


def test_stop_after_identical_batch_failures_key(tmp_path: Path) -> None:
    base = {"input": {"path": "in.parquet"}, "model": {"kind": "python", "entrypoint": "m.py:f"},
            "output": {"path": "out"}}
    spec = infermill.JobSpec.from_dict(base, base_dir=str(tmp_path))
    assert spec.errors.stop_after_identical_batch_failures == 3
    tuned = infermill.JobSpec.from_dict(
        {**base, "errors": {"stop_after_identical_batch_failures": 0}}, base_dir=str(tmp_path)
    )
    # Like the budgets, it decides when to give up, not what a row's result is: editing it never forces
    # a restart.
    assert tuned.fingerprint() == spec.fingerprint()
    with pytest.raises(SpecError, match="'errors.stop_after_identical_batch_failures' must not be negative"):
        infermill.JobSpec.from_dict({**base, "errors": {"stop_after_identical_batch_failures": -1}},
                                    base_dir=str(tmp_path))
