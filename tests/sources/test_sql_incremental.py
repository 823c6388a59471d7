"""Incremental runs over a SQL table (PostgreSQL, a real server from tests/postgres.py, and SQLite): a rerun
scores only the rows above the last run's highest key and, with ``[input] cursor``, recomputes the key
ranges holding a row written since the last run's high-water mark; killed at any point and resumed, the
output always equals a run from scratch over the table as it is now."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import infermill
from infermill.errors import SpecError
from infermill.sources import open_source
from infermill.sources.base import Fragment, Shard
from tests.conftest import read_output
from tests.postgres import PostgresServer
from tests.sources.test_sql_source import Db, _cli_run, _descriptors, _spec, sql_job


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    """``items(id, f0, name, updated_at)``, ids 0, 2, .. 998; ``updated_at`` a timestamp on PostgreSQL and
    an integer on SQLite (any orderable type will do). The URL is absolute: several job folders read it."""
    if request.param == "sqlite":
        db = Db("sqlite", f"sqlite:///{tmp_path / 'data.db'}", tmp_path / "data.db")
        db.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, f0 DOUBLE PRECISION, name TEXT, updated_at INTEGER)")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        db = Db("postgresql", server.create_database())
        db.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, f0 DOUBLE PRECISION, name TEXT, "
                   "updated_at TIMESTAMPTZ)")
    _insert(db, range(0, 1000, 2), 0)
    return db


def _stamp(db: Db, round_: int) -> str:
    """SQL for the cursor value of a write in round ``round_``: later rounds write higher values."""
    if db.dialect == "sqlite":
        return str(round_)
    return f"TIMESTAMPTZ '2026-12-01 00:00:00+00' + INTERVAL '{round_} hours'"


def _insert(db: Db, ids: Any, round_: int) -> None:
    db.execute(f"INSERT INTO items VALUES ({db.ph}, {db.ph}, {db.ph}, {_stamp(db, round_)})",
               [(i, i * 0.5, f"n{i}") for i in ids])


def _update(db: Db, ids: list[int], round_: int) -> None:
    db.execute(f"UPDATE items SET f0 = f0 + 1000, name = name || '-r{round_}', updated_at = {_stamp(db, round_)} "
               f"WHERE id IN ({', '.join(str(i) for i in ids)})")


def _job(folder: Path, db: Db, *, cursor: bool) -> Path:
    folder.mkdir(exist_ok=True)
    keys = 'table = "items"' + ('\ncursor = "updated_at"' if cursor else "")
    return sql_job(folder, db.url, input_keys=keys, shard_rows=100, batch=40)


def _rows(folder: Path) -> list[dict[str, Any]]:
    return sorted(read_output(folder / "out").to_pylist(), key=lambda r: int(r["_row_id"]))


def _from_scratch(tmp_path: Path, db: Db, name: str) -> list[dict[str, Any]]:
    """The output of a new job over the table as it is now."""
    folder = tmp_path / name
    job = _job(folder, db, cursor=False)
    assert infermill.run(job, progress="off").state == "complete"
    return _rows(folder)


def _table_now(db: Db) -> list[tuple[Any, ...]]:
    return db.execute("SELECT id, f0, name FROM items ORDER BY id")


@pytest.mark.parametrize("cursor", [False, True], ids=["key", "cursor"])
def test_three_rounds_of_new_and_updated_rows_killed_each_time_equal_a_run_from_scratch(
    table: Db, tmp_path: Path, cursor: bool
) -> None:
    job = _job(tmp_path / "inc", table, cursor=cursor)
    assert infermill.run(job, progress="off").rows_succeeded == 500
    # A kill after the new plan is in the ledger, and after the first and second commits of a round.
    faults = ["after_replan", "after_commit:1", "after_commit:2"]
    for round_, fault in enumerate(faults, start=1):
        _insert(table, range(1000 * round_, 1000 * round_ + 150), 2 * round_)  # above the highest key
        if cursor:
            # Rows updated in three ranges, and one inserted into a gap below the highest key.
            _update(table, [2 * round_, 300 + 2 * round_, 1000 * round_ - 2], 2 * round_)
            _insert(table, [501 + 2 * round_], 2 * round_)
        killed = _cli_run(job, fault)
        assert killed.returncode == -9, killed.stderr
        # More writes before the resume: into shards that are pending now, and above them.
        _insert(table, range(1000 * round_ + 150, 1000 * round_ + 160), 2 * round_ + 1)
        if cursor:
            _update(table, [1000 * round_ + 4, 2 * round_ + 100], 2 * round_ + 1)
        result = infermill.run(job, progress="off")
        assert result.state == "complete", result.message
        out = _rows(tmp_path / "inc")
        assert out == _from_scratch(tmp_path, table, f"scratch{round_}")
        assert [(int(r["_row_id"]), r["name"]) for r in out] == [(r[0], r[2]) for r in _table_now(table)]
        manifest = json.loads((tmp_path / "inc" / "out" / "_manifest.json").read_text())
        assert sum(f["rows"] for f in manifest["files"]) == len(out)  # the manifest: the whole output
    assert infermill.status(job)["input_changes"] == []


def test_a_run_with_no_new_rows_does_nothing_and_says_so(
    table: Db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path / "inc", table, cursor=True)
    infermill.run(job, progress="off")
    planned = _descriptors(tmp_path / "inc")
    capsys.readouterr()
    again = infermill.run(job, progress="log")
    assert again.already_complete and again.rows_this_run == 0 and again.input_changes is None
    assert _descriptors(tmp_path / "inc") == planned
    err = capsys.readouterr().err
    assert "input: no new rows above key 998 and no row with updated_at > " in err
    assert "nothing to do: the job is already complete" in again.message


def test_the_high_water_marks_are_reported_before_they_are_used(
    table: Db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path / "inc", table, cursor=True)
    infermill.run(job, progress="off")
    marks = [json.loads(json.loads(d)["fragments"][0]["file_fingerprint"]) for d in _descriptors(tmp_path / "inc")]
    assert {json.dumps(m["key"]) for m in marks} == {"[998]"} and len({json.dumps(m["cursor"]) for m in marks}) == 1
    _insert(table, range(2000, 2120), 1)
    _update(table, [10, 12, 450], 1)
    capsys.readouterr()
    result = infermill.run(job, progress="log")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "input: " in line]
    assert "input: 120 new row(s) above key 998 (the last run's highest): they will be scored" in lines[0]
    assert "input: 3 row(s) with updated_at > " in lines[1]
    assert "(the last run's high-water mark), in 2 key range(s): those ranges will be recomputed" in lines[1]
    assert "plan: 3 shards kept, 2 removed, 4 new" in err
    assert err.index("input: 120 new row(s)") < err.index("rows/s")  # reported before any work
    assert result.input_changes is not None and len(result.input_changes.described) == 2
    assert result.rows_this_run == 200 + 120  # two ranges of 100 recomputed, and the new rows
    descriptors = _descriptors(tmp_path / "inc")
    newest = json.loads(json.loads(descriptors[-1])["fragments"][0]["file_fingerprint"])
    assert newest["key"] == [2119] and newest["cursor"] != marks[0]["cursor"]  # the new marks, in the ledger


def test_full_recomputes_everything(table: Db, tmp_path: Path) -> None:
    job = _job(tmp_path / "inc", table, cursor=False)
    infermill.run(job, progress="off")
    _update(table, [4, 600], 1)  # without a cursor, updates are not seen by a rerun
    assert infermill.run(job, progress="off").already_complete
    assert _rows(tmp_path / "inc") != _from_scratch(tmp_path, table, "scratch1")
    full = infermill.run(job, full=True, progress="off")
    assert full.rows_this_run == 500
    assert _rows(tmp_path / "inc") == _from_scratch(tmp_path, table, "scratch2")


def test_deleted_rows_stay_until_their_range_is_recomputed(table: Db, tmp_path: Path) -> None:
    job = _job(tmp_path / "inc", table, cursor=True)
    infermill.run(job, progress="off")
    table.execute("DELETE FROM items WHERE id IN (20, 420)")
    _update(table, [410], 1)  # in the range of 420: [400, 600)
    before = infermill.status(job)["input_changes"]
    assert len(before) == 3 and "1 row(s) with updated_at > " in before[2]
    assert "the next `infermill run` recomputes their key ranges" in before[2]
    infermill.run(job, progress="off")
    ids = {int(r["_row_id"]) for r in _rows(tmp_path / "inc")}
    assert 20 in ids and 420 not in ids and len(ids) == 499
    changes = infermill.status(job)["input_changes"]
    assert len(changes) == 1 and "key [-inf, 200)): 1 row(s) deleted from its key range" in changes[0]
    infermill.run(job, full=True, progress="off")
    assert _rows(tmp_path / "inc") == _from_scratch(tmp_path, table, "scratch")


def test_composite_key_query_picks_up_rows_above_its_last_key(tmp_path: Path) -> None:
    db = Db("sqlite", f"sqlite:///{tmp_path / 'data.db'}", tmp_path / "data.db")
    db.execute("CREATE TABLE events (user_id INTEGER, day TEXT, f0 REAL, PRIMARY KEY (user_id, day))")
    insert = f"INSERT INTO events VALUES ({db.ph}, {db.ph}, {db.ph})"
    db.execute(insert, [(u, f"2026-01-{d:02d}", u + d / 100) for u in range(10) for d in range(1, 11)])
    keys = 'query = "SELECT * FROM events"\nkey = ["user_id", "day"]'
    (tmp_path / "inc").mkdir()
    job = sql_job(tmp_path / "inc", db.url, input_keys=keys, shard_rows=30, keep='["user_id", "day"]')
    infermill.run(job, progress="off")
    # Days after the last key of user 9, and a new user: above (9, "2026-01-10"); a day of user 3 is not.
    db.execute(insert, [(9, "2026-01-11", 1.0), (10, "2026-01-01", 2.0), (3, "2026-01-11", 3.0)])
    result = infermill.run(job, progress="off")
    assert result.rows_this_run == 2 and result.input_changes is not None
    assert "2 new row(s) above key (9, '2026-01-10')" in result.input_changes.described[0]
    out = {(r["user_id"], r["day"]) for r in read_output(tmp_path / "inc" / "out").to_pylist()}
    assert len(out) == 102 and (10, "2026-01-01") in out and (3, "2026-01-11") not in out


def test_a_plan_without_high_water_marks_is_kept_as_it_is(tmp_path: Path) -> None:
    db = Db("sqlite", f"sqlite:///{tmp_path / 'data.db'}", tmp_path / "data.db")
    db.items(range(10))
    source = open_source(_spec(db.url, tmp_path, table="items", shard_rows=5))
    # As planned before the marks were kept: the last range open-ended, reading every row above.
    old = [Shard(ordinal=i, fragments=(Fragment(path=db.url, relpath=json.dumps(b), start=0, stop=5, rows=5,
                                                file_fingerprint="0123456789abcdef"),))
           for i, b in enumerate([{"lo": None, "hi": [5]}, {"lo": [5], "hi": None}])]
    delta = source.plan_delta(old, 2)
    assert delta is not None and delta.keep == tuple(old) and not delta.add and not delta.drop and delta.empty


@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_sql_sink_gets_updated_rows_replaced(tmp_path: Path, mode: str) -> None:
    db = Db("sqlite", f"sqlite:///{tmp_path / 'data.db'}", tmp_path / "data.db")
    db.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, f0 DOUBLE PRECISION, name TEXT, updated_at INTEGER)")
    _insert(db, range(0, 1000, 2), 0)
    out_url = f"sqlite:///{tmp_path / 'out.db'}"

    def job(folder: Path, cursor: bool) -> Path:
        path = _job(folder, db, cursor=cursor)
        text = path.read_text().replace('path = "out"', f'url = "{out_url}"\ntable = "{folder.name}"\n'
                                                         f'format = "sql"\nmode = "{mode}"\nkey = "_row_id"')
        path.write_text(text)
        return path

    inc = job(tmp_path / "inc", True)
    infermill.run(inc, progress="off")
    _insert(db, range(1000, 1100), 1)
    _update(db, [6, 700], 1)
    assert _cli_run(inc, "after_commit:2").returncode == -9
    assert infermill.run(inc, progress="off").state == "complete"
    infermill.run(job(tmp_path / "scratch", False), progress="off")
    conn = sqlite3.connect(tmp_path / "out.db")
    try:
        got, want = (conn.execute(f"SELECT _row_id, name, score FROM {t} ORDER BY CAST(_row_id AS INTEGER)").fetchall()
                     for t in ("inc", "scratch"))
    finally:
        conn.close()
    assert got == want and len(got) == 600 and ("6", "n6-r1", pytest.approx((3 + 1000) * 2)) in got


def test_a_cursor_given_later_recomputes_every_range_once(tmp_path: Path) -> None:
    db = Db("sqlite", f"sqlite:///{tmp_path / 'data.db'}", tmp_path / "data.db")
    db.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, f0 DOUBLE PRECISION, name TEXT, updated_at INTEGER)")
    _insert(db, range(0, 1000, 2), 0)
    job = _job(tmp_path / "inc", db, cursor=False)
    infermill.run(job, progress="off")
    _update(db, [8], 1)  # written before the job has a mark: only a recompute of every range finds it
    job.write_text(job.read_text().replace('table = "items"', 'table = "items"\ncursor = "updated_at"'))
    first = infermill.run(job, progress="off")  # not a changed spec: the cursor only decides what reruns do
    assert first.rows_this_run == 500 and first.input_changes is not None
    assert "500 row(s) with updated_at set, and no high-water mark of it" in first.input_changes.described[0]
    assert _rows(tmp_path / "inc") == _from_scratch(tmp_path, db, "scratch")
    assert infermill.run(job, progress="off").already_complete


def test_the_cursor_must_be_a_plain_column_name(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="invalid SQL cursor column"):
        _spec("sqlite:///data.db", tmp_path, table="items", cursor='updated_at"; DROP TABLE items; --')
