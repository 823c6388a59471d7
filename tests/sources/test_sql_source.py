"""``[input] format = "sql"``: PostgreSQL (a real server, tests/postgres.py) and SQLite tables and queries read
in key-range shards, through the real engine and CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import infermill
from infermill.errors import InputError, JobChangedError, SpecError
from infermill.redact import mask_url
from infermill.sources import open_source
from infermill.spec import InputSpec, JobSpec, ModelSpec, OutputSpec
from infermill.sql._ident import quote_ident, validate_ident
from infermill.sql._url import parse_url
from infermill.testing.sources import SourceConformance, source_spec
from tests.conftest import read_output, run_cli, write_job
from tests.postgres import PostgresServer

SECRET = "s3cret-pw"
INJECTION = 'scores"; DROP TABLE x; --'

SCORER = """
class Scorer:
    def predict(self, batch):
        return {"score": batch["f0"] * 2}
"""

# Inserts two rows the first time it is called (mid-run): key 1, inside the first shard's range, whose
# cursor is already open, and key 10**9, in the last shard's range, not read yet.
INSERTER = """
import os
import psycopg

class Scorer:
    def predict(self, batch):
        flag = os.environ["SQL_TEST_FLAG"]
        if not os.path.exists(flag):
            open(flag, "w").close()
            with psycopg.connect(os.environ["SQL_TEST_URL"], autocommit=True) as conn:
                conn.execute("INSERT INTO items VALUES (1, 1.0, 'early'), (1000000000, 1.0, 'late')")
        return {"score": batch["f0"] * 2}
"""


# Fails on rows named "bad" until SQL_TEST_FIXED is set: they are dead-lettered, for `infermill retry`.
PICKY = """
import os

class Scorer:
    def predict(self, batch):
        if not os.environ.get("SQL_TEST_FIXED") and "bad" in list(batch["name"]):
            raise ValueError("a bad row")
        return {"score": batch["f0"] * 2}
"""


class Db:
    """A test database: its URL and a way to run SQL on it outside infermill."""

    def __init__(self, dialect: str, url: str, path: Path | None = None) -> None:
        self.dialect, self.url, self.path = dialect, url, path

    @property
    def ph(self) -> str:
        return "?" if self.dialect == "sqlite" else "%s"

    def execute(self, sql: str, rows: Sequence[Sequence[Any]] | None = None) -> list[tuple[Any, ...]]:
        if self.dialect == "sqlite":
            assert self.path is not None
            conn = sqlite3.connect(self.path)
            try:
                cur = conn.executemany(sql, rows) if rows is not None else conn.execute(sql)
                out = cur.fetchall()
                conn.commit()
                return out
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg, pg.cursor() as cur:
            if rows is not None:
                cur.executemany(sql, rows)
                return []
            cur.execute(sql)
            return cur.fetchall() if cur.description else []

    def items(self, ids: Sequence[int]) -> None:
        """Table ``items(id, f0, name)`` with the given ids."""
        self.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, f0 DOUBLE PRECISION, name TEXT)")
        self.execute(f"INSERT INTO items VALUES ({self.ph}, {self.ph}, {self.ph})",
                     [(i, i * 0.5, f"n{i}") for i in ids])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        return Db("sqlite", "sqlite:///data.db", tmp_path / "data.db")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return Db("postgresql", server.create_database())


@pytest.fixture
def pg(postgres_server: PostgresServer) -> Db:
    return Db("postgresql", postgres_server.create_database())


def sql_job(folder: Path, db_url: str, *, input_keys: str = 'table = "items"', shard_rows: int = 250,
            workers: int = 1, batch: int = 50, model: str = SCORER, keep: str = '["name"]',
            features: str = '["f0"]') -> Path:
    (folder / "scorer.py").write_text(model)
    return write_job(folder / "job.toml", f"""
        name = "sq"
        [input]
        url = "{db_url}"
        {input_keys}
        shard_rows = {shard_rows}
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        features = {features}
        outputs = ["score"]
        [batch]
        size = {batch}
        [output]
        path = "out"
        keep = {keep}
        [runtime]
        workers = {workers}
        """)


def _spec(db_url: str, base: Path, **keys: Any) -> JobSpec:
    return JobSpec(
        input=InputSpec(url=db_url, **keys),
        model=ModelSpec(kind="python", entrypoint="scorer.py:Scorer"),
        output=OutputSpec(path="out"),
        base_dir=str(base),
    )


def _by_id(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: int(r["_row_id"]))


# -- URLs and identifiers ------------------------------------------------------------------------------
def test_url_password_is_masked_and_kept_out_of_display() -> None:
    url = parse_url("postgresql://app:p@ss:w@db.example:5432/shop")
    assert url.dialect == "postgresql"
    assert url.display == "postgresql://app:***@db.example:5432/shop"
    assert "p@ss" not in repr(url)
    assert mask_url("postgres://u:x@h/db") == "postgres://u:***@h/db"
    assert mask_url("sqlite:///data.db") == "sqlite:///data.db"


def test_password_env_supplies_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQL_TEST_PW", SECRET)
    url = parse_url("postgresql://app@db/shop", "SQL_TEST_PW")
    assert url.connect_kwargs["password"] == SECRET and SECRET not in url.display
    monkeypatch.delenv("SQL_TEST_PW")
    with pytest.raises(SpecError, match="SQL_TEST_PW") as info:
        parse_url("postgresql://app@db/shop", "SQL_TEST_PW")
    assert "export SQL_TEST_PW" in (info.value.hint or "")


def test_sqlite_url_is_relative_to_the_job_folder(tmp_path: Path) -> None:
    assert parse_url("sqlite:///data/x.db", base_dir=str(tmp_path)).connect_kwargs["database"] == str(
        tmp_path / "data" / "x.db"
    )
    assert parse_url("sqlite:////abs/x.db").connect_kwargs["database"] == "/abs/x.db"


def test_identifiers_are_validated_and_quoted() -> None:
    assert quote_ident("public.scores") == '"public"."scores"'
    for bad in (INJECTION, "a.b.c", "1abc", "", "x y"):
        with pytest.raises(SpecError) as info:
            validate_ident(bad)
        assert repr(bad) in info.value.message


# -- the job spec --------------------------------------------------------------------------------------
def test_format_is_inferred_from_the_url(tmp_path: Path) -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db", "sqlite:///data.db"):
        assert _spec(url, tmp_path, table="items").input_format() == "sql"


def test_table_or_query_exactly_one(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="exactly one"):
        _spec("sqlite:///data.db", tmp_path)
    with pytest.raises(SpecError, match="exactly one"):
        _spec("sqlite:///data.db", tmp_path, table="items", query="SELECT 1")


def test_snapshot_needs_postgresql(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="snapshot"):
        _spec("sqlite:///data.db", tmp_path, table="items", consistency="snapshot")


def test_fingerprint_ignores_the_password_and_the_fetch_size(tmp_path: Path) -> None:
    one = _spec(f"postgresql://u:{SECRET}@h/db", tmp_path, table="items")
    two = _spec("postgresql://u:rotated@h/db", tmp_path, table="items", fetch_rows=5)
    assert one.fingerprint() == two.fingerprint()
    assert one.fingerprint() != _spec("postgresql://u@h/other", tmp_path, table="items").fingerprint()
    assert SECRET not in json.dumps(one.to_dict(redact=True))


def test_injection_named_table_is_refused(db: Db, tmp_path: Path) -> None:
    db.items(range(10))
    db.execute("CREATE TABLE x (a INTEGER)")
    job = sql_job(tmp_path, db.url, input_keys=f"table = '{INJECTION}'")
    with pytest.raises(SpecError) as info:
        infermill.run(job, progress="off")
    assert repr(INJECTION) in info.value.message
    with pytest.raises(SpecError, match="key column"):
        _spec(db.url, tmp_path, table="items", key=INJECTION)
    assert db.execute("SELECT count(*) FROM x") == [(0,)]  # still there


def test_odd_column_names_are_quoted(db: Db, tmp_path: Path) -> None:
    db.execute('CREATE TABLE odd (id INTEGER PRIMARY KEY, "we""ird; col" TEXT)')
    db.execute(f"INSERT INTO odd VALUES ({db.ph}, {db.ph})", [(1, "a"), (2, "b")])
    source = open_source(_spec(db.url, tmp_path, table="odd", shard_rows=1))
    rows = [r for s in source.plan() for b in source.read(s, 10) for r in b.to_pylist()]
    assert rows == [
        {"id": 1, 'we"ird; col': "a", "_row_id": "1"}, {"id": 2, 'we"ird; col': "b", "_row_id": "2"}
    ]


# -- planning ------------------------------------------------------------------------------------------
def test_null_key_is_refused_with_the_values(db: Db, tmp_path: Path) -> None:
    db.execute("CREATE TABLE items (id INTEGER, day TEXT, f0 REAL)")
    db.execute(f"INSERT INTO items VALUES ({db.ph}, {db.ph}, {db.ph})",
               [(1, "a", 1.0), (None, "b", 2.0), (3, None, 3.0)])
    source = open_source(_spec(db.url, tmp_path, table="items", key=["id", "day"]))
    with pytest.raises(InputError) as info:
        source.plan()
    assert "NULL in 2 row(s)" in info.value.message
    assert "(None, 'b')" in info.value.message and "(3, None)" in info.value.message
    assert info.value.hint


def test_duplicate_key_is_refused_with_the_values(db: Db, tmp_path: Path) -> None:
    db.execute("CREATE TABLE items (id INTEGER, f0 REAL)")
    db.execute(f"INSERT INTO items VALUES ({db.ph}, {db.ph})", [(1, 0.0), (7, 0.0), (7, 1.0), (9, 0.0), (9, 0.0),
                                                                 (9, 1.0)])
    with pytest.raises(InputError) as info:
        open_source(_spec(db.url, tmp_path, table="items")).plan()
    assert "not unique: 7 (2 rows), 9 (3 rows)" in info.value.message


def test_shards_are_half_open_key_ranges(db: Db, tmp_path: Path) -> None:
    db.items(range(0, 2000, 2))  # 1000 rows, even ids
    source = open_source(_spec(db.url, tmp_path, table="items", shard_rows=300))
    shards = source.plan()
    ranges = [json.loads(s.fragments[0].relpath) for s in shards]
    # The last range is closed at the highest key when planned: rows inserted above it are the next run's.
    assert ranges == [{"lo": None, "hi": [600]}, {"lo": [600], "hi": [1200]}, {"lo": [1200], "hi": [1800]},
                      {"lo": [1800], "hi": None, "le": [1998]}]
    assert [s.rows for s in shards] == [300, 300, 300, 100]
    assert source.plan() == shards  # deterministic
    read = [[r["id"] for b in source.read(s, 64) for r in b.to_pylist()] for s in shards]
    assert [len(r) for r in read] == [300, 300, 300, 100]
    assert [i for r in read for i in r] == list(range(0, 2000, 2))
    assert all(b.num_rows <= 64 for s in shards for b in source.read(s, 64))


def test_a_dense_integer_key_is_cut_where_an_ordered_scan_would_cut_it(db: Db, tmp_path: Path) -> None:
    """Ids 5..1004, inserted out of order: the bounds are every 300th key, computed from the count, min and
    max; a gap (id 6 deleted) makes the key sparse, and the ordered scan finds the bounds."""
    db.items(list(reversed(range(5, 1005))))
    source = open_source(_spec(db.url, tmp_path, table="items", shard_rows=300))
    shards = source.plan()
    assert [json.loads(s.fragments[0].relpath) for s in shards] == [
        {"lo": None, "hi": [305]}, {"lo": [305], "hi": [605]}, {"lo": [605], "hi": [905]},
        {"lo": [905], "hi": None, "le": [1004]}]  # the last range closed at the highest key (incremental runs)
    assert [s.rows for s in shards] == [300, 300, 300, 100]
    read = [[r["id"] for b in source.read(s, 128) for r in b.to_pylist()] for s in shards]
    assert [len(r) for r in read] == [300, 300, 300, 100]
    db.execute("DELETE FROM items WHERE id = 6")
    sparse = open_source(_spec(db.url, tmp_path, table="items", shard_rows=300)).plan()
    assert [json.loads(s.fragments[0].relpath) for s in sparse] == [
        {"lo": None, "hi": [306]}, {"lo": [306], "hi": [606]}, {"lo": [606], "hi": [906]},
        {"lo": [906], "hi": None, "le": [1004]}]
    assert [s.rows for s in sparse] == [300, 300, 300, 99]


@pytest.mark.postgres
def test_planning_a_dense_integer_key_reads_no_key_in_order(pg: Db, tmp_path: Path) -> None:
    """A sequence in the query's WHERE counts the rows planning visits: the repeated-key check and one
    count/min/max pass (the NULL check tests the key first, which stops there), not a third, ordered pass
    over every key (3,000 visits before), then one row for the highest key."""
    pg.items(list(reversed(range(1000))))
    pg.execute("CREATE SEQUENCE visits")
    source = open_source(_spec(pg.url, tmp_path, query="SELECT * FROM items WHERE nextval('visits') > 0",
                               shard_rows=300))
    assert len(source.plan()) == 4
    # + 1: the highest key, which closes the last range (incremental runs), read backwards through the index.
    assert pg.execute("SELECT last_value FROM visits") == [(2 * 1000 + 1,)]


def test_query_source_and_composite_key(db: Db, tmp_path: Path) -> None:
    db.execute("CREATE TABLE events (user_id INTEGER, day TEXT, f0 REAL, PRIMARY KEY (user_id, day))")
    rows = [(u, f"2026-01-{d:02d}", u + d / 100) for u in range(30) for d in range(1, 11)]
    db.execute(f"INSERT INTO events VALUES ({db.ph}, {db.ph}, {db.ph})", rows)
    job = sql_job(
        tmp_path, db.url, shard_rows=70, keep='["user_id", "day"]',
        input_keys='query = "SELECT * FROM events WHERE user_id < 25;"\nkey = ["user_id", "day"]',
    )
    result = infermill.run(job, progress="off")
    assert result.rows_succeeded == 250 and infermill.status(job)["shards_total"] == 4
    out = read_output(tmp_path / "out").to_pylist()
    assert sorted((r["user_id"], r["day"]) for r in out) == [(u, d) for u, d, _ in rows if u < 25]
    assert all(json.loads(r["_row_id"]) == [r["user_id"], r["day"]] for r in out)
    assert all(r["score"] == pytest.approx(2 * (r["user_id"] + int(r["day"][-2:]) / 100)) for r in out)


@pytest.mark.slow
def test_million_rows_four_shards_two_workers_equal_select_star(tmp_path: Path) -> None:
    db = Db("sqlite", "sqlite:///data.db", tmp_path / "data.db")
    n = 1_000_000
    conn = sqlite3.connect(db.path)  # type: ignore[arg-type]
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, f0 REAL, name TEXT)")
    # ids with gaps and out of insertion order: ranges are of keys, not of positions
    conn.executemany("INSERT INTO items VALUES (?, ?, ?)", ((i * 3 + 7, i * 0.25, f"n{i}") for i in reversed(range(n))))
    conn.commit()
    conn.close()
    job = sql_job(tmp_path, db.url, shard_rows=250_000, workers=2, batch=20_000)
    result = infermill.run(job, progress="off")
    assert result.rows_succeeded == n and infermill.status(job)["shards_total"] == 4
    out = read_output(tmp_path / "out").sort_by("_row_id")
    star = db.execute("SELECT id, f0, name FROM items ORDER BY CAST(id AS TEXT)")
    assert out.column("_row_id").to_pylist() == [str(r[0]) for r in star]
    assert out.column("name").to_pylist() == [r[2] for r in star]
    assert out.column("score").to_pylist() == [r[1] * 2 for r in star]


# -- resume --------------------------------------------------------------------------------------------
def _cli_run(job: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"INFERMILL_FAULT": fault} if fault else {}
    return run_cli("run", str(job), "--progress", "off", env=env)  # type: ignore[no-any-return]


def _descriptors(folder: Path) -> list[str]:
    conn = sqlite3.connect(folder / ".infermill" / "sq.sqlite")
    try:
        return [r[0] for r in conn.execute("SELECT descriptor FROM shards ORDER BY ordinal")]
    finally:
        conn.close()


def test_vacuum_full_between_a_killed_run_and_the_resume_changes_nothing(db: Db, tmp_path: Path) -> None:
    db.items(range(1000))
    clean_dir, crash_dir = tmp_path / "clean", tmp_path / "crash"
    clean_dir.mkdir()
    crash_dir.mkdir()
    if db.dialect == "sqlite":  # both jobs read the one database file
        assert db.path is not None
        url = f"sqlite:///{db.path}"
    else:
        url = db.url
    clean = sql_job(clean_dir, url)
    assert _cli_run(clean).returncode == 0
    crash = sql_job(crash_dir, url)
    killed = _cli_run(crash, "after_commit:2")
    assert killed.returncode == -9, killed.stderr
    planned = _descriptors(crash_dir)
    # Rows move physically (new ctids / rowids), and the key ranges keep their rows.
    db.execute("UPDATE items SET name = name")
    db.execute("DELETE FROM items WHERE id >= 500")
    db.execute(f"INSERT INTO items VALUES ({db.ph}, {db.ph}, {db.ph})",
               [(i, i * 0.5, f"n{i}") for i in range(500, 1000)])
    db.execute("VACUUM FULL" if db.dialect == "postgresql" else "VACUUM")
    resumed = _cli_run(crash)
    assert resumed.returncode == 0, resumed.stderr
    assert _descriptors(crash_dir) == planned  # never planned again
    assert _by_id(read_output(crash_dir / "out")) == _by_id(read_output(clean_dir / "out"))
    assert infermill.status(crash)["input_changes"] == []


def test_resume_keeps_the_plan_when_rows_were_added(db: Db, tmp_path: Path) -> None:
    db.items(range(0, 2000, 2))
    job = sql_job(tmp_path, db.url)
    assert _cli_run(job, "after_commit:1").returncode == -9
    planned = _descriptors(tmp_path)
    # Enough new rows that a new plan would cut other ranges: the resume must not make one. The one row
    # above the highest key planned (1998) gets a shard of its own.
    db.execute(f"INSERT INTO items VALUES ({db.ph}, {db.ph}, {db.ph})", [(i, 0.0, "new") for i in range(1, 2000, 2)])
    resumed = _cli_run(job)
    assert resumed.returncode == 0, resumed.stderr
    now = _descriptors(tmp_path)
    assert now[:4] == planned and len(now) == 5
    assert json.loads(json.loads(now[4])["fragments"][0]["relpath"]) == {"lo": None, "hi": None, "gt": [1998],
                                                                         "le": [1999]}
    out = read_output(tmp_path / "out")
    # The first shard committed before the inserts; the three others read their ranges as they are now.
    assert out.num_rows == 250 + (2000 - 500)
    changes = infermill.status(job)["input_changes"]
    assert len(changes) == 1 and "250 row(s) inserted into its key range" in changes[0]


def _picky_job(db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db.items(range(0, 2000, 2))
    db.execute("UPDATE items SET name = 'bad' WHERE id = 1400")  # in the third shard, [1000, 1500)
    monkeypatch.delenv("SQL_TEST_FIXED", raising=False)
    job = sql_job(tmp_path, db.url, model=PICKY, features='["f0", "name"]')
    assert infermill.run(job, progress="off").rows_failed == 1
    return job


def test_retry_keeps_the_plan_when_rows_were_added(db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _picky_job(db, tmp_path, monkeypatch)
    # Rows added past the end: a new plan would cut eight ranges, none of the four the job ran with.
    db.execute(f"INSERT INTO items VALUES ({db.ph}, {db.ph}, {db.ph})", [(i, 0.0, "new") for i in range(2000, 4000)])
    monkeypatch.setenv("SQL_TEST_FIXED", "1")
    result = infermill.retry(job)
    assert result.rows_failed == 0 and result.rows_succeeded == 1000
    out = {r["_row_id"]: r for r in read_output(tmp_path / "out").to_pylist()}
    assert len(out) == 1000 and out["1400"]["score"] == 1400.0


def test_retry_refuses_when_rows_moved_inside_the_dead_items_range(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _picky_job(db, tmp_path, monkeypatch)
    # A row inserted before the dead one in its key range: the dead row's place now holds another row.
    db.execute(f"INSERT INTO items VALUES ({db.ph}, {db.ph}, {db.ph})", [(1001, 0.0, "new")])
    monkeypatch.setenv("SQL_TEST_FIXED", "1")
    with pytest.raises(JobChangedError, match="other rows now"):
        infermill.retry(job)


# -- consistency ---------------------------------------------------------------------------------------
def test_key_range_mode_reports_rows_inserted_into_committed_ranges(db: Db, tmp_path: Path) -> None:
    db.items(range(10, 1010))
    job = sql_job(tmp_path, db.url)
    assert infermill.run(job, progress="off").rows_succeeded == 1000
    assert infermill.status(job)["input_changes"] == []
    db.execute(f"INSERT INTO items VALUES ({db.ph}, {db.ph}, {db.ph})",
               [(1, 0.0, "a"), (2, 0.0, "b"), (5000, 0.0, "c")])
    db.execute("DELETE FROM items WHERE id = 600")
    changes = infermill.status(job)["input_changes"]
    assert len(changes) == 3
    assert "key [-inf, 260)): 2 row(s) inserted into its key range after it committed (250 read, 252 now)" in changes[0]
    assert "key [510, 760)): 1 row(s) deleted from" in changes[1]
    # Above the last range (closed at the highest key when planned): new rows, for the next run.
    assert changes[2].startswith("1 new row(s) above key 1009") and "next `infermill run` scores them" in changes[2]
    shown = run_cli("status", str(job))
    assert shown.returncode == 0 and shown.stdout.count("changed: shard") == 2
    assert "--restart" in shown.stdout


@pytest.mark.postgres
def test_key_range_mode_leaves_rows_inserted_mid_run_above_the_last_key_to_the_next_run(
    pg: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.items(range(10, 1010))
    monkeypatch.setenv("SQL_TEST_URL", pg.url)
    monkeypatch.setenv("SQL_TEST_FLAG", str(tmp_path / "inserted"))
    job = sql_job(tmp_path, pg.url, model=INSERTER)
    infermill.run(job, progress="off")
    names = {r["name"] for r in read_output(tmp_path / "out").to_pylist()}
    # The last range was closed at the highest key when planned (1009): "late" is above it.
    assert not names & {"late", "early"} and len(names) == 1000
    changes = infermill.status(job)["input_changes"]
    assert len(changes) == 2 and "1 row(s) inserted" in changes[0] and "[-inf, 260)" in changes[0]
    assert changes[1].startswith("1 new row(s) above key 1009")
    again = infermill.run(job, progress="off")
    assert again.rows_this_run == 1 and again.input_changes is not None
    names = {r["name"] for r in read_output(tmp_path / "out").to_pylist()}
    assert "late" in names and "early" not in names and len(names) == 1001


@pytest.mark.postgres
@pytest.mark.parametrize("workers", [1, 2])
def test_snapshot_mode_ignores_rows_inserted_mid_run(
    pg: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    pg.items(range(10, 1010))
    monkeypatch.setenv("SQL_TEST_URL", pg.url)
    monkeypatch.setenv("SQL_TEST_FLAG", str(tmp_path / "inserted"))
    job = sql_job(
        tmp_path, pg.url, model=INSERTER,
        input_keys='table = "items"\nconsistency = "snapshot"\nsnapshot_warn_seconds = 0.001', workers=workers,
    )
    infermill.run(job, progress="log")
    assert (tmp_path / "inserted").exists()
    names = {r["name"] for r in read_output(tmp_path / "out").to_pylist()}
    assert len(names) == 1000 and not names & {"early", "late"}
    assert "the PostgreSQL snapshot of this run has been held" in capsys.readouterr().err
    # The snapshot was released with the run: no transaction of ours is left open.
    open_ = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'")
    assert open_ == [(0,)]


# -- PostgreSQL specifics ------------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_types_map_to_arrow(pg: Db, tmp_path: Path) -> None:
    pg.execute("""
        CREATE TABLE t (id INTEGER PRIMARY KEY, big BIGINT, small SMALLINT, r REAL, d DOUBLE PRECISION,
                        n NUMERIC(10, 3), s TEXT, v VARCHAR(10), b BOOLEAN, ts TIMESTAMPTZ, dt DATE, j JSONB,
                        e REAL[], e8 FLOAT8[], u UUID)
    """)
    pg.execute("""
        INSERT INTO t VALUES (1, 9000000000, 7, 1.5, 2.25, 3.125, 'x', 'y', true, '2026-01-02 03:04:05+00',
                              '2026-01-02', '{"a": [1, 2]}', '{0.5, 1.5}', '{1, 2}',
                              '00000000-0000-0000-0000-000000000001'),
                             (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
    """)
    source = open_source(_spec(pg.url, tmp_path, table="t", id_column="id"))
    schema = source.schema()
    assert [str(f.type) for f in schema] == [
        "int32", "int64", "int16", "float", "double", "double", "string", "string", "bool",
        "timestamp[us, tz=UTC]", "date32[day]", "string", "list<item: float>", "list<item: double>", "string",
    ]
    rows = [r for s in source.plan() for b in source.read(s, 10) for r in b.to_pylist()]
    first = rows[0]
    assert first["n"] == 3.125 and first["b"] is True and first["e"] == [0.5, 1.5] and first["e8"] == [1.0, 2.0]
    assert json.loads(first["j"]) == {"a": [1, 2]} and first["u"] == "00000000-0000-0000-0000-000000000001"
    assert first["ts"].isoformat() == "2026-01-02T03:04:05+00:00" and str(first["dt"]) == "2026-01-02"
    assert all(v is None for k, v in rows[1].items() if k != "id")


@pytest.mark.postgres
def test_postgres_shard_streams_in_pages_with_exact_values(pg: Db, tmp_path: Path) -> None:
    """A shard of plain columns under a single key streams in pages: one query per batch whose values are
    whole columns (mid-read, the reading backend's last statement is a page's), not a COPY's message per
    row; every value reads as the row path reads it, by the pages and by binary COPY alike: NaN,
    infinities, -0.0, NULL apart from the empty string, quotes, commas, newlines, non-ASCII text, booleans,
    smallint limits, float4 rounding; the synthetic id is the key as text."""
    import math

    import psycopg

    pg.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, f DOUBLE PRECISION, r REAL, s TEXT, v VARCHAR(20), "
               "b BOOLEAN, i SMALLINT)")
    special = [
        (1, math.nan, 1.5, "", "", True, -32768), (2, math.inf, None, None, None, False, 32767),
        (3, -math.inf, 0.1, 'a,"b"\nc\r\n', "\\N", None, None), (4, 0.1 + 0.2, math.nan, "é ✓", "NULL", True, 0),
        (5, 5e-324, 3.4e38, " x ", "t", False, 1), (6, -0.0, -math.inf, "\\", '""', True, -1),
    ]
    pg.execute("INSERT INTO t VALUES (%s, %s, %s, %s, %s, %s, %s)",
               special + [(i, i / 3, i / 7, f"s{i}", f"v{i}", i % 2 == 0, i % 100) for i in range(7, 3000)])
    source = open_source(_spec(pg.url, tmp_path, table="t", shard_rows=100_000))
    (shard,) = source.plan()
    reading = source.read(shard, 100)
    batches = [next(reading)]
    with psycopg.connect(pg.url, autocommit=True) as conn:
        active = [(str(r[0]), str(r[1])) for r in conn.execute(
            "SELECT state, query FROM pg_stat_activity WHERE datname = current_database() AND pid <> "
            "pg_backend_pid() AND backend_type = 'client backend'").fetchall()]
    assert len(active) == 1 and active[0][0] == "idle in transaction" and active[0][1].startswith(
        "SELECT count(*), max(_infermill_k), string_agg("), active
    batches += list(reading)
    assert [b.num_rows for b in batches] == [100] * 29 + [99]
    # The batch size bounds the rows held at once (fetch_rows is the cursor's round trip).
    assert {b.num_rows for b in source.read(shard, 70)} == {70, 59}
    got = pa.Table.from_batches(batches)
    names = ["id", "f", "r", "s", "v", "b", "i"]
    with psycopg.connect(pg.url) as conn:
        rows = conn.execute("SELECT id, f, r, s, v, b, i FROM t ORDER BY id").fetchall()
        copied = pa.Table.from_batches(list(source.db.copy_batches(  # type: ignore[union-attr]
            conn, "SELECT id, f, r, s, v, b, i FROM t ORDER BY id", [], got.schema.remove(7), 1000)))
    expected = {name: pa.array([r[i] for r in rows], got.schema.field(name).type) for i, name in enumerate(names)}
    for name, column in expected.items():
        assert [repr(v) for v in got.column(name).to_pylist()] == [repr(v) for v in column.to_pylist()], name
        assert [repr(v) for v in copied.column(name).to_pylist()] == [repr(v) for v in column.to_pylist()], name
    assert got.column("_row_id").to_pylist() == [str(r[0]) for r in rows]


@pytest.mark.postgres
def test_pages_of_a_shard_see_one_snapshot(pg: Db, tmp_path: Path) -> None:
    """Rows inserted, updated or deleted in a shard's range while its pages are read are not seen (one
    REPEATABLE READ transaction, as one COPY statement is), in key order, each row once."""
    pg.items(range(0, 2000, 2))
    source = open_source(_spec(pg.url, tmp_path, table="items", shard_rows=100_000))
    (shard,) = source.plan()
    reading = source.read(shard, 100)
    batches = [next(reading)]
    pg.execute("DELETE FROM items WHERE id = 500")
    pg.execute("UPDATE items SET name = 'changed' WHERE id = 700")
    pg.execute("INSERT INTO items VALUES (901, 1, 'new')")
    batches += list(reading)
    assert len(batches) == 10
    got = pa.Table.from_batches(batches)
    assert got.column("id").to_pylist() == list(range(0, 2000, 2))
    assert got.column("name").to_pylist() == [f"n{i}" for i in range(0, 2000, 2)]


@pytest.mark.postgres
def test_pages_stop_at_the_text_budget(pg: Db, tmp_path: Path) -> None:
    """A page ends at the row that brings its texts to the page's byte budget (so that joined texts stay
    far below PostgreSQL's 1 GB per value), and the next page starts right after it: every row once, in
    key order, NULLs and all."""
    pg.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, body TEXT, n INTEGER)")
    pg.execute("INSERT INTO docs SELECT lpad(g::text, 4, '0'), CASE WHEN g % 7 = 0 THEN NULL ELSE "
               "repeat('é', g % 50) END, g FROM generate_series(1, 600) g")
    schema = pa.schema([("id", pa.string()), ("body", pa.string()), ("n", pa.int32())])
    with psycopg_connect(pg.url) as conn:
        batches = list(open_source(_spec(pg.url, tmp_path, table="docs", key="id")).db.paged_batches(
            conn, '"docs"', ['"id"', '"body"', '"n"'], '"id"', "", [], schema, 200, page_bytes=1000) or [])
    got = pa.Table.from_batches(batches)
    assert got.column("n").to_pylist() == list(range(1, 601))
    assert got.column("body").to_pylist() == [None if g % 7 == 0 else "é" * (g % 50) for g in range(1, 601)]
    for batch in batches:
        sizes = [len(i.encode()) + len((b or "").encode()) for i, b in zip(batch.column("id").to_pylist(),
                                                                         batch.column("body").to_pylist(), strict=True)]
        assert sum(sizes[:-1]) < 1000 <= sum(sizes) or (batch is batches[-1] and sum(sizes) < 1000), sizes
    total = sum(len(f"{g:04d}") + (0 if g % 7 == 0 else 2 * (g % 50)) for g in range(1, 601))
    assert len(batches) >= total // 1000


def psycopg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url)


def _reading_statement(pg: Db, source: Any, shard: Any) -> tuple[str, list[pa.RecordBatch]]:
    """The statement the reading backend runs once a shard's first batch is out, and all the batches."""
    import psycopg

    reading = source.read(shard, 100)
    batches = [next(reading)]
    with psycopg.connect(pg.url, autocommit=True) as conn:
        (active,) = [str(r[0]) for r in conn.execute(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'").fetchall()]
    return active, batches + list(reading)


@pytest.mark.postgres
def test_postgres_plain_columns_stream_as_binary_copy(pg: Db, tmp_path: Path) -> None:
    """Booleans, integers, floats and text-like columns stream in binary COPY format (no float text on
    either side), NULLs and all; a column of another COPY-able type (uuid) makes the shard CSV."""
    pg.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, i INTEGER, s SMALLINT, r REAL, f DOUBLE PRECISION, "
               "b BOOLEAN, t TEXT, v VARCHAR(9), c CHAR(3), n NAME, j JSON, u UUID)")
    pg.execute("INSERT INTO t SELECT g, g - 500, (g % 300)::smallint, g / 7.0, g / 3.0, g % 2 = 0, 'é' || g, "
               "'v' || g, 'c', 'n' || g, json_build_object('g', g), NULL FROM generate_series(1, 1000) g")
    pg.execute("INSERT INTO t (id) VALUES (0)")  # NULL in every other column
    plain = ["id", "i", "s", "r", "f", "b", "t", "v", "c", "n", "j"]
    source = open_source(_spec(pg.url, tmp_path, table="t", shard_rows=100_000, columns=plain))
    (shard,) = source.plan()
    statement, batches = _reading_statement(pg, source, shard)
    assert statement.startswith("COPY (SELECT") and statement.endswith("(FORMAT binary)"), statement
    got = pa.Table.from_batches(batches).select(plain)
    rows = pg.execute(f"SELECT {', '.join(plain[:-1])}, j::text FROM t ORDER BY id")
    for i, name in enumerate(plain):  # as the row path reads them (real: the float32 psycopg's float rounds to)
        expected = pa.array([r[i] for r in rows], got.schema.field(name).type)
        assert got.column(name).to_pylist() == expected.to_pylist(), name
    assert got.column("c").to_pylist()[1] == "c  " and got.column("t").to_pylist()[1] == "é1"
    with_uuid = open_source(_spec(pg.url, tmp_path, table="t", shard_rows=100_000, columns=[*plain, "u"]))
    statement, _ = _reading_statement(pg, with_uuid, with_uuid.plan()[0])
    assert statement.endswith("(FORMAT csv)"), statement


@pytest.mark.postgres
def test_large_postgres_table_is_cut_at_sampled_keys(pg: Db, tmp_path: Path) -> None:
    pg.items(range(0, 60_000, 3))
    pg.execute("ANALYZE items")
    source = open_source(_spec(pg.url, tmp_path, table="items", shard_rows=5_000, sample_above_rows=10_000))
    shards = source.plan()
    assert 2 <= len(shards) <= 4 and all(s.rows is None for s in shards)  # sizes estimated, not counted
    read = [[r["id"] for b in source.read(s, 4096) for r in b.to_pylist()] for s in shards]
    assert [i for ids in read for i in ids] == list(range(0, 60_000, 3))  # every row once, in key order
    # Without the statistics' guarantee (no unique index), every key is scanned and counted instead.
    pg.execute("ALTER TABLE items DROP CONSTRAINT items_pkey")
    counted = open_source(_spec(pg.url, tmp_path, table="items", shard_rows=5_000, sample_above_rows=10_000)).plan()
    assert [s.rows for s in counted] == [5_000] * 4


@pytest.mark.postgres
def test_postgres_rows_stream_through_a_server_side_cursor(pg: Db, tmp_path: Path) -> None:
    pg.items(range(5000))
    pg.execute("ALTER TABLE items ADD COLUMN at TIMESTAMPTZ")  # a type the COPY path does not read
    source = open_source(_spec(pg.url, tmp_path, table="items", shard_rows=10_000, fetch_rows=100))
    (shard,) = source.plan()
    batches: Iterator[pa.RecordBatch] = source.read(shard, 1000)
    first = next(batches)
    assert first.num_rows == 100  # one fetch, not the shard
    active = pg.execute("SELECT query FROM pg_stat_activity WHERE query LIKE 'FETCH%infermill_read%'")
    assert len(active) == 1
    assert sum(b.num_rows for b in batches) == 4900


@pytest.mark.postgres
def test_password_is_masked_in_errors_status_and_ledger(
    postgres_server: PostgresServer, pg: Db, tmp_path: Path
) -> None:
    pg.items(range(100))
    # The test server trusts loopback connections: the password is accepted and ignored, as a secret that
    # must never be echoed.
    secret_url = pg.url.replace(f"://{postgres_server.user}@", f"://{postgres_server.user}:{SECRET}@")
    assert SECRET in secret_url
    job = sql_job(tmp_path, secret_url)
    done = run_cli("run", str(job))
    assert done.returncode == 0, done.stderr
    shown = run_cli("status", str(job), "--json")
    assert shown.returncode == 0 and SECRET not in shown.stdout + done.stdout + done.stderr
    for path in (tmp_path / ".infermill").iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in (tmp_path / "out" / "_manifest.json").read_text()
    # A table that does not exist, and a server that is not there: the errors name the URL, masked.
    (tmp_path / "missing").mkdir()
    (tmp_path / "down").mkdir()
    missing = run_cli("run", str(sql_job(tmp_path / "missing", secret_url, input_keys='table = "nope"')))
    assert missing.returncode != 0 and "nope" in missing.stderr
    assert SECRET not in missing.stdout + missing.stderr
    dead = secret_url.replace(f":{postgres_server.port}/", ":1/")
    down = run_cli("run", str(sql_job(tmp_path / "down", dead)))
    assert down.returncode != 0 and "cannot connect to postgresql://" in down.stderr
    assert ":***@" in down.stderr and SECRET not in down.stdout + down.stderr


@pytest.mark.postgres
def test_password_env_names_the_variable(
    postgres_server: PostgresServer, pg: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.items(range(100))
    job = sql_job(tmp_path, pg.url, input_keys='table = "items"\npassword_env = "SQL_TEST_PW"')
    monkeypatch.delenv("SQL_TEST_PW", raising=False)
    missing = run_cli("run", str(job))
    assert missing.returncode != 0 and "SQL_TEST_PW" in missing.stderr
    monkeypatch.setenv("SQL_TEST_PW", SECRET)
    assert infermill.run(job, progress="off").rows_succeeded == 100


# -- the shipped source conformance suite ---------------------------------------------------------------
class TestSqliteConformance(SourceConformance):
    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        tmp_path.mkdir(parents=True, exist_ok=True)
        path = tmp_path / "data.db"
        names = list(rows[0])
        types = {bool: "BOOLEAN", int: "INTEGER", float: "REAL", str: "TEXT"}
        conn = sqlite3.connect(path)
        columns = ", ".join(f'"{n}" {types[type(rows[0][n])]}' for n in names)
        conn.execute(f"CREATE TABLE t ({columns})")
        conn.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(names))})",
                         [tuple(r[n] for n in names) for r in rows])
        conn.commit()
        conn.close()
        # A SQL source reads in key order: the suite's rows ascend in "key" (or, without it, in "x").
        key = "key" if "key" in names else "x"
        return source_spec("", url=f"sqlite:///{path}", table="t", key=key, shard_rows=10, **input_options)


def test_validate_names_the_table_not_a_file_count(tmp_path: Path) -> None:
    db = Db("sqlite", "sqlite:///data.db", tmp_path / "data.db")
    db.items(range(1, 601))
    proc = run_cli("validate", str(sql_job(tmp_path, db.url)))
    assert proc.returncode == 0, proc.stderr
    assert "input:    sql, 3 shards, 600 rows" in proc.stdout
